/* CLIP BPE tokenizer, reproducing Hugging Face's slow CLIPTokenizer (transformers
 * 4.x, as diffusers runs it where ftfy is not installed) id for id.
 *
 * The text path, in HF's order, because each step changes what the next sees:
 *   1. The raw text is split on the added tokens (the bos, eos, unk and pad
 *      strings, exact match). SDXL's tokenizer_2 pads with "!", so there every
 *      "!" of a prompt becomes id 0 rather than part of a "!!!" token.
 *   2. Each other piece goes through BasicTokenizer: drop NUL, U+FFFD and
 *      category C except \t\n\r; whitespace to ' '; spaces around CJK
 *      ideographs; NFC; split on Python whitespace; str.lower() per word (full
 *      mapping: U+0130 -> "i\u0307", and the final-sigma rule).
 *   3. CLIP's regex splits each word into pre-tokens. HF compiles it with
 *      IGNORECASE, so "'ſ" is a contraction and U+0345 matches no branch.
 *   4. A pre-token's UTF-8 bytes map through bytes_to_unicode, the last symbol
 *      gets "</w>", BPE merges by rank, and each symbol is looked up (unknown
 *      symbols give the unk id).
 * Unicode classes come from utf8proc (Unicode 15) where Python 3.11 has 14; only
 * characters assigned in 15 can differ.
 *
 * Symbols are interned vocabulary strings (an index per distinct string), so a
 * merge is a pair of ints in a hash table and BPE never builds strings. BPE uses
 * a heap keyed (rank, position) and applies all occurrences of one rank per pass,
 * left to right, which is exactly Python's loop but O(n log n): a 1 MiB word
 * costs a second, not hours. Results are cached per pre-token in fixed-size
 * tables allocated at load, emptied when full, so tokenizing never grows them.
 */
#include "pipeline/tokenizer.h"
#include "core/alloc.h"
#include "core/error.h"
#include "io/json.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <utf8proc.h>
#include <zlib.h>

#define BOS_DEFAULT "<|startoftext|>"
#define EOS_DEFAULT "<|endoftext|>"
#define EOW "</w>"
#define EOW_LEN 4
#define MAX_ADDED 4
#define MAX_ADDED_LEN 256
#define MAX_CONTENT (VF_CONTEXT_LEN - 2)
#define FILE_CAP ((size_t)64 << 20)
#define CACHE_SLOTS (1u << 15)
#define CACHE_ENTRIES (1u << 14)
#define CACHE_KEY_BYTES (1u << 19)
#define CACHE_IDS (1u << 17)
#define CACHE_MAX_KEY 128
#define SYM_UNKNOWN (-1) /* a byte symbol absent from the vocabulary */
#define SYM_DEAD (-2)    /* merged into its left neighbour */
#define NFC_OPTS (UTF8PROC_STABLE | UTF8PROC_COMPOSE)

typedef struct tok_sym {
    uint32_t off, len, hash;
    int32_t id;
} tok_sym;

typedef struct cache_ent {
    uint32_t key_off, key_len, ids_off, ids_len, hash;
} cache_ent;

typedef struct added_tok {
    char text[MAX_ADDED_LEN + 1];
    size_t len;
    int32_t id;
} added_tok;

struct vf_tokenizer {
    char *arena; /* the vocabulary strings, back to back */
    size_t arena_len, arena_cap;
    tok_sym *syms;
    uint32_t nsyms, syms_cap;
    int32_t *slots; /* string hash: symbol index, -1 empty */
    uint32_t nslots;
    uint64_t *mkeys; /* merges: (a << 32 | b) -> (rank << 32 | merged symbol) */
    uint64_t *mvals;
    uint32_t mslots;
    int32_t byte_sym[256], byte_end_sym[256];
    int32_t bos, eos, pad, unk;
    int32_t start_id, end_id; /* what the pre-tokens <|startoftext|> / <|endoftext|> give */
    int32_t vocab_size;
    added_tok added[MAX_ADDED];
    int nadded;
    int32_t *cslots;
    cache_ent *cents;
    uint32_t ncents;
    char *ckeys;
    uint32_t ckeys_len;
    int32_t *cids;
    uint32_t cids_len;
};

typedef struct merge_line {
    const char *a, *b;
    uint32_t alen, blen;
    size_t lineno;
} merge_line;

typedef struct vec32 {
    int32_t *v;
    size_t n, cap;
} vec32;

/* Per-call working memory, grown as pieces need it and freed at the end. */
typedef struct scratch {
    char *u8;
    size_t u8_cap;
    utf8proc_int32_t *nf;
    size_t nf_cap;
    uint32_t *lw;
    size_t lw_cap;
    unsigned char *pb;
    size_t pb_cap;
    int32_t *sym, *nxt, *prv, *bat;
    size_t bpe_cap;
    uint64_t *heap; /* 3 * bpe_cap */
    vec32 out;
    size_t limit; /* stop once this many content ids exist */
} scratch;

/* ---- hashing and tables ----------------------------------------------------- */

static uint32_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return (uint32_t)(h ^ (h >> 32));
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint32_t pow2_at_least(size_t n)
{
    uint32_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

static vf_status syms_init(vf_tokenizer *t, size_t n)
{
    if (n == 0 || n > (1u << 28))
        return vf_error(VF_ERR_FORMAT, "vocabulary of %zu entries", n);
    t->nslots = pow2_at_least(2 * n);
    t->slots = vf_malloc(t->nslots * sizeof *t->slots);
    t->syms = vf_malloc(n * sizeof *t->syms);
    if (!t->slots || !t->syms)
        return VF_ERR_NO_MEMORY;
    memset(t->slots, 0xff, t->nslots * sizeof *t->slots);
    t->syms_cap = (uint32_t)n;
    return VF_OK;
}

static int32_t sym_find(const vf_tokenizer *t, const char *s, size_t len, uint32_t h)
{
    uint32_t mask = t->nslots - 1;
    for (uint32_t i = h & mask;; i = (i + 1) & mask) {
        int32_t k = t->slots[i];
        if (k < 0)
            return -1;
        const tok_sym *y = &t->syms[k];
        if (y->hash == h && y->len == len && (len == 0 || memcmp(t->arena + y->off, s, len) == 0))
            return k;
    }
}

static int32_t sym_lookup(const vf_tokenizer *t, const char *s, size_t len)
{
    return sym_find(t, s, len, hash_bytes(s, len));
}

static vf_status arena_add(vf_tokenizer *t, const char *s, size_t len, uint32_t *off)
{
    if (len > UINT32_MAX - t->arena_len)
        return vf_error(VF_ERR_FORMAT, "vocabulary strings exceed 4 GiB");
    *off = (uint32_t)t->arena_len;
    if (len == 0)
        return VF_OK; /* an empty token ("" in vocab.json): nothing to copy, arena maybe not yet made */
    if (t->arena_len + len > t->arena_cap) {
        size_t cap = t->arena_cap ? 2 * t->arena_cap : 1 << 16;
        while (cap < t->arena_len + len)
            cap *= 2;
        char *p = vf_realloc(t->arena, cap);
        if (!p)
            return VF_ERR_NO_MEMORY;
        t->arena = p;
        t->arena_cap = cap;
    }
    memcpy(t->arena + t->arena_len, s, len);
    t->arena_len += len;
    return VF_OK;
}

/* Adds s with id, or re-ids it: a later duplicate wins, as in a Python dict. */
static vf_status sym_put(vf_tokenizer *t, const char *s, size_t len, int32_t id)
{
    uint32_t h = hash_bytes(s, len), mask = t->nslots - 1, off = 0;
    int32_t k = sym_find(t, s, len, h);
    if (k >= 0) {
        t->syms[k].id = id;
        return VF_OK;
    }
    if (t->nsyms == t->syms_cap)
        return vf_error(VF_ERR_INTERNAL, "tokenizer symbol table is full");
    VF_TRY(arena_add(t, s, len, &off));
    uint32_t i = h & mask;
    while (t->slots[i] >= 0)
        i = (i + 1) & mask;
    t->syms[t->nsyms] = (tok_sym){off, (uint32_t)len, h, id};
    t->slots[i] = (int32_t)t->nsyms++;
    return VF_OK;
}

static vf_status merges_init(vf_tokenizer *t, size_t n)
{
    t->mslots = pow2_at_least(2 * n);
    t->mkeys = vf_malloc(t->mslots * sizeof *t->mkeys);
    t->mvals = vf_malloc(t->mslots * sizeof *t->mvals);
    if (!t->mkeys || !t->mvals)
        return VF_ERR_NO_MEMORY;
    memset(t->mkeys, 0xff, t->mslots * sizeof *t->mkeys); /* UINT64_MAX: empty */
    return VF_OK;
}

/* Later duplicates win, as in HF's dict(zip(merges, range(n))). */
static void merge_put(vf_tokenizer *t, int32_t a, int32_t b, uint32_t rank, int32_t ab)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint32_t mask = t->mslots - 1;
    uint32_t i = (uint32_t)mix64(key) & mask;
    while (t->mkeys[i] != UINT64_MAX && t->mkeys[i] != key)
        i = (i + 1) & mask;
    t->mkeys[i] = key;
    t->mvals[i] = (uint64_t)rank << 32 | (uint32_t)ab;
}

/* The rank of merging symbols a and b, or -1; *ab receives the result. */
static int64_t merge_rank(const vf_tokenizer *t, int32_t a, int32_t b, int32_t *ab)
{
    if (a < 0 || b < 0 || !t->mkeys)
        return -1;
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint32_t mask = t->mslots - 1;
    for (uint32_t i = (uint32_t)mix64(key) & mask;; i = (i + 1) & mask) {
        if (t->mkeys[i] == UINT64_MAX)
            return -1;
        if (t->mkeys[i] == key) {
            if (ab)
                *ab = (int32_t)(uint32_t)t->mvals[i];
            return (int64_t)(t->mvals[i] >> 32);
        }
    }
}

/* ---- the pre-token cache ------------------------------------------------------ */

static vf_status cache_init(vf_tokenizer *t)
{
    t->cslots = vf_malloc(CACHE_SLOTS * sizeof *t->cslots);
    t->cents = vf_malloc(CACHE_ENTRIES * sizeof *t->cents);
    t->ckeys = vf_malloc(CACHE_KEY_BYTES);
    t->cids = vf_malloc(CACHE_IDS * sizeof *t->cids);
    if (!t->cslots || !t->cents || !t->ckeys || !t->cids)
        return VF_ERR_NO_MEMORY;
    memset(t->cslots, 0xff, CACHE_SLOTS * sizeof *t->cslots);
    return VF_OK;
}

static void cache_reset(vf_tokenizer *t)
{
    memset(t->cslots, 0xff, CACHE_SLOTS * sizeof *t->cslots);
    t->ncents = t->ckeys_len = t->cids_len = 0;
}

static const cache_ent *cache_find(const vf_tokenizer *t, const unsigned char *b, size_t n,
                                   uint32_t h)
{
    for (uint32_t i = h & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
        int32_t k = t->cslots[i];
        if (k < 0)
            return NULL;
        const cache_ent *e = &t->cents[k];
        if (e->hash == h && e->key_len == n && memcmp(t->ckeys + e->key_off, b, n) == 0)
            return e;
    }
}

static void cache_put(vf_tokenizer *t, const unsigned char *b, size_t n, uint32_t h,
                      const int32_t *ids, size_t nids)
{
    if (n > CACHE_MAX_KEY || nids > CACHE_MAX_KEY + 1)
        return;
    if (t->ncents == CACHE_ENTRIES || t->ckeys_len + n > CACHE_KEY_BYTES ||
        t->cids_len + nids > CACHE_IDS)
        cache_reset(t);
    uint32_t i = h & (CACHE_SLOTS - 1);
    while (t->cslots[i] >= 0)
        i = (i + 1) & (CACHE_SLOTS - 1);
    cache_ent *e = &t->cents[t->ncents];
    *e = (cache_ent){t->ckeys_len, (uint32_t)n, t->cids_len, (uint32_t)nids, h};
    memcpy(t->ckeys + t->ckeys_len, b, n);
    memcpy(t->cids + t->cids_len, ids, nids * sizeof *ids);
    t->ckeys_len += (uint32_t)n;
    t->cids_len += (uint32_t)nids;
    t->cslots[i] = (int32_t)t->ncents++;
}

size_t vf_tokenizer_cache_entries(const vf_tokenizer *t) { return t ? t->ncents : 0; }

/* ---- loading ------------------------------------------------------------------ */

/* GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others
 * take 256, 257, ... in byte order. order[k] is the byte of vocabulary id k. */
static void byte_table(uint32_t cp[256], int order[256])
{
    int k = 0, n = 0;
    for (int b = 0; b < 256; b++) {
        if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) {
            order[k++] = b;
            cp[b] = (uint32_t)b;
        }
    }
    for (int b = 0; b < 256; b++) {
        if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)) {
            order[k++] = b;
            cp[b] = 256u + (uint32_t)n++;
        }
    }
}

static int merge_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f' || c == '\n' ||
           (c >= 0x1c && c <= 0x1f);
}

/* Splits a line on whitespace into up to 3 fields; returns the field count. */
static int split_fields(const char *s, size_t n, const char *f[3], size_t fl[3])
{
    int k = 0;
    size_t i = 0;
    while (k < 3) {
        while (i < n && merge_space(s[i]))
            i++;
        if (i == n)
            break;
        f[k] = s + i;
        while (i < n && !merge_space(s[i]))
            i++;
        fl[k] = (size_t)(s + i - f[k]);
        k++;
    }
    return k;
}

/* The merge lines HF reads: lines [1, 1 + VF_TOKENIZER_MAX_MERGES) of the text,
 * after strip() for merges.txt (strip = 1); the .gz is split without stripping
 * (a final empty piece after the last newline is not a line). */
static vf_status collect_merges(const char *path, const char *text, size_t len, int strip,
                                merge_line **out, size_t *n_out)
{
    const char *p = text, *end = text + len;
    size_t lineno = 1, count = 0;
    *out = NULL;
    *n_out = 0;
    if (strip) {
        for (; p < end && merge_space(*p); p++)
            lineno += *p == '\n';
        while (end > p && merge_space(end[-1]))
            end--;
    }
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl)
        return VF_OK; /* only the header */
    p = nl + 1;
    lineno++;
    for (const char *q = p; count < VF_TOKENIZER_MAX_MERGES; count++) {
        const char *e = memchr(q, '\n', (size_t)(end - q));
        if (!e)
            break;
        q = e + 1;
    }
    merge_line *ml = vf_calloc(count + 1, sizeof *ml);
    if (!ml)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
    size_t k = 0;
    while (k < VF_TOKENIZER_MAX_MERGES) {
        nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end, *f[3];
        size_t fl[3];
        if (!nl && le == p && !strip)
            break;
        if (split_fields(p, (size_t)(le - p), f, fl) != 2 || fl[0] > UINT32_MAX ||
            fl[1] > UINT32_MAX) {
            vf_free(ml);
            return vf_error(VF_ERR_FORMAT,
                            "%s: line %zu: a merge is two symbols separated by a space", path,
                            lineno);
        }
        ml[k++] = (merge_line){f[0], f[1], (uint32_t)fl[0], (uint32_t)fl[1], lineno};
        if (!nl)
            break;
        p = nl + 1;
        lineno++;
    }
    *out = ml;
    *n_out = k;
    return VF_OK;
}

/* Concatenates a merge's two symbols into *buf (grown as needed). */
static vf_status join_merge(const merge_line *m, char **buf, size_t *cap)
{
    size_t n = (size_t)m->alen + m->blen;
    if (n > *cap) {
        char *p = vf_realloc(*buf, n);
        if (!p)
            return VF_ERR_NO_MEMORY;
        *buf = p;
        *cap = n;
    }
    memcpy(*buf, m->a, m->alen);
    memcpy(*buf + m->alen, m->b, m->blen);
    return VF_OK;
}

/* Every part and every result of a merge must be a vocabulary entry. */
static vf_status build_merges(vf_tokenizer *t, const char *path, const merge_line *ml, size_t n)
{
    char *buf = NULL;
    size_t cap = 0;
    vf_status st = merges_init(t, n);
    for (size_t i = 0; st == VF_OK && i < n; i++) {
        const merge_line *m = &ml[i];
        int32_t a = sym_lookup(t, m->a, m->alen), b = sym_lookup(t, m->b, m->blen), ab = -1;
        st = join_merge(m, &buf, &cap);
        if (st != VF_OK)
            break;
        ab = sym_lookup(t, buf, (size_t)m->alen + m->blen);
        if (a < 0 || b < 0 || ab < 0) {
            st = vf_error(VF_ERR_FORMAT,
                          "%s: line %zu: merge '%.*s %.*s': '%.*s' is not in the vocabulary", path,
                          m->lineno, (int)m->alen, m->a, (int)m->blen, m->b,
                          a < 0 ? (int)m->alen : b < 0 ? (int)m->blen : (int)(m->alen + m->blen),
                          a < 0 ? m->a : b < 0 ? m->b : buf);
            break;
        }
        merge_put(t, a, b, (uint32_t)i, ab);
    }
    vf_free(buf);
    if (st == VF_ERR_NO_MEMORY)
        vf_error_prefix(st, "%s", path);
    return st;
}

/* A special token from tokenizer_config.json: a string, or an AddedToken object
 * with "content"; absent or null gives def. */
static vf_status config_token(const char *path, const cJSON *cfg, const char *key,
                              const char *def, const char **out)
{
    const cJSON *v = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, key) : NULL;
    *out = def;
    if (!v || cJSON_IsNull(v))
        return VF_OK;
    if (cJSON_IsObject(v))
        v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (!cJSON_IsString(v) || !v->valuestring[0] || strlen(v->valuestring) > MAX_ADDED_LEN)
        return vf_error(VF_ERR_FORMAT, "%s: \"%s\" is not a token string of 1 to %d bytes", path,
                        key, MAX_ADDED_LEN);
    *out = v->valuestring;
    return VF_OK;
}

static vf_status special_id(const vf_tokenizer *t, const char *where, const char *key,
                            const char *s, int32_t *id)
{
    int32_t k = sym_lookup(t, s, strlen(s));
    if (k < 0)
        return vf_error(VF_ERR_FORMAT, "%s: %s '%s' is not in the vocabulary", where, key, s);
    *id = t->syms[k].id;
    return VF_OK;
}

static void add_added(vf_tokenizer *t, const char *s, int32_t id)
{
    size_t n = strlen(s);
    for (int i = 0; i < t->nadded; i++)
        if (t->added[i].len == n && memcmp(t->added[i].text, s, n) == 0)
            return;
    added_tok *a = &t->added[t->nadded++];
    memcpy(a->text, s, n + 1);
    a->len = n;
    a->id = id;
}

/* What both loaders share once vocabulary and merges exist: special ids, the
 * byte symbols BPE starts from, the cache. where names the config (or vocab). */
static vf_status finish(vf_tokenizer *t, const cJSON *cfg, const char *where)
{
    const char *bos, *eos, *unk, *pad;
    VF_TRY(config_token(where, cfg, "bos_token", BOS_DEFAULT, &bos));
    VF_TRY(config_token(where, cfg, "eos_token", EOS_DEFAULT, &eos));
    VF_TRY(config_token(where, cfg, "unk_token", EOS_DEFAULT, &unk));
    VF_TRY(config_token(where, cfg, "pad_token", EOS_DEFAULT, &pad));
    VF_TRY(special_id(t, where, "bos_token", bos, &t->bos));
    VF_TRY(special_id(t, where, "eos_token", eos, &t->eos));
    VF_TRY(special_id(t, where, "unk_token", unk, &t->unk));
    VF_TRY(special_id(t, where, "pad_token", pad, &t->pad));
    add_added(t, bos, t->bos);
    add_added(t, eos, t->eos);
    add_added(t, unk, t->unk);
    add_added(t, pad, t->pad);
    int32_t k = sym_lookup(t, BOS_DEFAULT, strlen(BOS_DEFAULT));
    t->start_id = k >= 0 ? t->syms[k].id : t->unk;
    k = sym_lookup(t, EOS_DEFAULT, strlen(EOS_DEFAULT));
    t->end_id = k >= 0 ? t->syms[k].id : t->unk;

    uint32_t cp[256];
    int order[256];
    byte_table(cp, order);
    for (int b = 0; b < 256; b++) {
        char s[8 + EOW_LEN];
        size_t n = (size_t)utf8proc_encode_char((utf8proc_int32_t)cp[b], (utf8proc_uint8_t *)s);
        t->byte_sym[b] = sym_lookup(t, s, n);
        memcpy(s + n, EOW, EOW_LEN);
        t->byte_end_sym[b] = sym_lookup(t, s, n + EOW_LEN);
    }
    int32_t max_id = 0;
    for (uint32_t i = 0; i < t->nsyms; i++)
        if (t->syms[i].id > max_id)
            max_id = t->syms[i].id;
    t->vocab_size = max_id + 1;
    if (cache_init(t) != VF_OK)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", where);
    return VF_OK;
}

static vf_status load_vocab_json(vf_tokenizer *t, const char *path)
{
    cJSON *j = NULL;
    VF_TRY(vf_json_load(path, &j));
    vf_status st = syms_init(t, (size_t)cJSON_GetArraySize(j));
    if (st != VF_OK) {
        st = vf_error_prefix(st, "%s", path);
        goto out;
    }
    for (const cJSON *c = j->child; c; c = c->next) {
        double d = c->valuedouble;
        if (!cJSON_IsNumber(c) || !(d >= 0 && d <= INT32_MAX) || d != (double)(int32_t)d) {
            st = vf_error(VF_ERR_FORMAT, "%s: token '%.64s': id is not an integer in [0, 2^31)",
                          path, c->string);
            goto out;
        }
        st = sym_put(t, c->string, strlen(c->string), (int32_t)d);
        if (st != VF_OK) {
            st = vf_error_prefix(st, "%s", path);
            goto out;
        }
    }
out:
    cJSON_Delete(j);
    return st;
}

static vf_status read_text(const char *path, char **text, size_t *len)
{
    VF_TRY(vf_read_file(path, FILE_CAP, text, len));
    if (vf_utf8_valid(*text, *len))
        return VF_OK;
    vf_free(*text);
    *text = NULL;
    return vf_error(VF_ERR_FORMAT, "%s: not valid UTF-8", path);
}

static vf_status tok_new(vf_tokenizer **out)
{
    *out = vf_calloc(1, sizeof **out);
    return *out ? VF_OK : VF_ERR_NO_MEMORY;
}

vf_status vf_tokenizer_load_files(const char *vocab_json, const char *merges_txt,
                                  const char *config_json, vf_tokenizer **out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_tokenizer_load_files: out is NULL");
    *out = NULL;
    if (!vocab_json || !merges_txt)
        return vf_error(VF_ERR_INVALID_ARG, "vf_tokenizer_load_files: %s is NULL",
                        vocab_json ? "merges_txt" : "vocab_json");
    vf_tokenizer *t = NULL;
    cJSON *cfg = NULL;
    char *text = NULL;
    merge_line *ml = NULL;
    size_t len = 0, nml = 0;
    vf_status st = tok_new(&t);
    if (st == VF_OK)
        st = load_vocab_json(t, vocab_json);
    if (st == VF_OK)
        st = read_text(merges_txt, &text, &len);
    if (st == VF_OK)
        st = collect_merges(merges_txt, text, len, 1, &ml, &nml);
    if (st == VF_OK)
        st = build_merges(t, merges_txt, ml, nml);
    if (st == VF_OK && config_json)
        st = vf_json_load(config_json, &cfg);
    if (st == VF_OK)
        st = finish(t, cfg, config_json ? config_json : vocab_json);
    cJSON_Delete(cfg);
    vf_free(ml);
    vf_free(text);
    if (st != VF_OK) {
        vf_tokenizer_free(t);
        return st == VF_ERR_NO_MEMORY && !t ? vf_error_prefix(st, "%s", vocab_json) : st;
    }
    *out = t;
    return VF_OK;
}

static vf_status read_gz(const char *path, char **data, size_t *len)
{
    gzFile f = gzopen(path, "rb");
    if (!f)
        return vf_error(errno == ENOENT ? VF_ERR_NOT_FOUND : VF_ERR_IO, "%s: cannot open: %s",
                        path, strerror(errno ? errno : ENOMEM));
    vf_status st = VF_OK;
    size_t n = 0, cap = 0;
    char *buf = NULL;
    int err = Z_OK;
    for (;;) {
        if (n + 1 >= cap) {
            if (cap >= FILE_CAP) {
                st = vf_error(VF_ERR_FORMAT, "%s: decompresses to over %zu bytes", path, FILE_CAP);
                goto out;
            }
            cap = cap ? 2 * cap : (size_t)1 << 22;
            char *p = vf_realloc(buf, cap);
            if (!p) {
                st = vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
                goto out;
            }
            buf = p;
        }
        int r = gzread(f, buf + n, (unsigned)(cap - n - 1));
        if (r <= 0) /* end, or an error that gzerror reports below */
            break;
        n += (size_t)r;
    }
    const char *msg = gzerror(f, &err);
    if (err != Z_OK && err != Z_STREAM_END) {
        st = vf_error(VF_ERR_FORMAT, "%s: not a readable gzip file: %s", path, msg);
        goto out;
    }
    buf[n] = '\0';
    if (!vf_utf8_valid(buf, n)) {
        st = vf_error(VF_ERR_FORMAT, "%s: not valid UTF-8", path);
        goto out;
    }
    *data = buf;
    *len = n;
    buf = NULL;
out:
    vf_free(buf);
    gzclose(f);
    return st;
}

/* OpenAI CLIP's vocabulary: the 256 byte symbols, the same with "</w>", each
 * merge joined, then <|startoftext|> and <|endoftext|>; ids in that order. */
static vf_status gz_vocab(vf_tokenizer *t, const merge_line *ml, size_t n)
{
    uint32_t cp[256];
    int order[256];
    char s[8 + EOW_LEN], *buf = NULL;
    size_t cap = 0;
    int32_t id = 0;
    byte_table(cp, order);
    VF_TRY(syms_init(t, 512 + n + 2));
    for (int pass = 0; pass < 2; pass++) {
        for (int k = 0; k < 256; k++) {
            size_t len = (size_t)utf8proc_encode_char((utf8proc_int32_t)cp[order[k]],
                                                      (utf8proc_uint8_t *)s);
            memcpy(s + len, EOW, EOW_LEN);
            VF_TRY(sym_put(t, s, len + (pass ? EOW_LEN : 0), id++));
        }
    }
    vf_status st = VF_OK;
    for (size_t i = 0; st == VF_OK && i < n; i++) {
        st = join_merge(&ml[i], &buf, &cap);
        if (st == VF_OK)
            st = sym_put(t, buf, (size_t)ml[i].alen + ml[i].blen, id++);
    }
    vf_free(buf);
    VF_TRY(st);
    VF_TRY(sym_put(t, BOS_DEFAULT, strlen(BOS_DEFAULT), id++));
    return sym_put(t, EOS_DEFAULT, strlen(EOS_DEFAULT), id);
}

static vf_status load_gz(const char *path, vf_tokenizer **out)
{
    vf_tokenizer *t = NULL;
    char *text = NULL;
    merge_line *ml = NULL;
    size_t len = 0, nml = 0;
    vf_status st = read_gz(path, &text, &len);
    if (st == VF_OK)
        st = collect_merges(path, text, len, 0, &ml, &nml);
    if (st == VF_OK && ((st = tok_new(&t)) != VF_OK || (st = gz_vocab(t, ml, nml)) != VF_OK))
        st = vf_error_prefix(st, "%s", path);
    if (st == VF_OK)
        st = build_merges(t, path, ml, nml);
    if (st == VF_OK)
        st = finish(t, NULL, path);
    vf_free(ml);
    vf_free(text);
    if (st != VF_OK) {
        vf_tokenizer_free(t);
        return st;
    }
    *out = t;
    return VF_OK;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static vf_status load_dir(const char *dir, vf_tokenizer **out)
{
    char *vocab = vf_path_join(dir, "vocab.json"), *merges = vf_path_join(dir, "merges.txt");
    char *cfg = vf_path_join(dir, "tokenizer_config.json");
    vf_status st = VF_OK;
    if (!vocab || !merges || !cfg)
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "%s", dir);
    else if (!vf_is_file(vocab) || !vf_is_file(merges))
        st = vf_error(VF_ERR_NOT_FOUND, "%s: a tokenizer folder needs vocab.json and merges.txt",
                      dir);
    else
        st = vf_tokenizer_load_files(vocab, merges, vf_is_file(cfg) ? cfg : NULL, out);
    vf_free(vocab);
    vf_free(merges);
    vf_free(cfg);
    return st;
}

vf_status vf_tokenizer_load(const char *path, vf_tokenizer **out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_tokenizer_load: out is NULL");
    *out = NULL;
    if (!path)
        return vf_error(VF_ERR_INVALID_ARG, "vf_tokenizer_load: path is NULL");
    if (vf_is_dir(path))
        return load_dir(path, out);
    if (vf_is_file(path) && ends_with(path, ".gz"))
        return load_gz(path, out);
    if (vf_is_file(path))
        return vf_error(VF_ERR_UNSUPPORTED,
                        "%s: a tokenizer is a folder with vocab.json and merges.txt, or a "
                        "bpe_simple_vocab_16e6.txt.gz", path);
    return vf_error(VF_ERR_NOT_FOUND, "tokenizer '%s' does not exist", path);
}

void vf_tokenizer_free(vf_tokenizer *t)
{
    if (!t)
        return;
    vf_free(t->arena);
    vf_free(t->syms);
    vf_free(t->slots);
    vf_free(t->mkeys);
    vf_free(t->mvals);
    vf_free(t->cslots);
    vf_free(t->cents);
    vf_free(t->ckeys);
    vf_free(t->cids);
    vf_free(t);
}

void vf_tokenizer_special_ids(const vf_tokenizer *t, int32_t *bos, int32_t *eos, int32_t *pad)
{
    if (bos)
        *bos = t ? t->bos : -1;
    if (eos)
        *eos = t ? t->eos : -1;
    if (pad)
        *pad = t ? t->pad : -1;
}

int32_t vf_tokenizer_vocab_size(const vf_tokenizer *t) { return t ? t->vocab_size : 0; }

vf_status vf_tokenizer_set_pad(vf_tokenizer *t, const char *token)
{
    if (!t || !token || !token[0] || strlen(token) > MAX_ADDED_LEN)
        return vf_error(VF_ERR_INVALID_ARG, "vf_tokenizer_set_pad: no tokenizer or a bad token");
    int32_t id;
    VF_TRY(special_id(t, "tokenizer", "pad_token", token, &id));
    int known = 0;
    for (int i = 0; i < t->nadded; i++)
        known |= t->added[i].len == strlen(token) && memcmp(t->added[i].text, token, t->added[i].len) == 0;
    if (!known && t->nadded == MAX_ADDED)
        return vf_error(VF_ERR_UNSUPPORTED, "tokenizer: no room for pad token '%s'", token);
    t->pad = id;
    add_added(t, token, id);
    cache_reset(t); /* pieces cached before may now split on the token */
    return VF_OK;
}

/* ---- Unicode classes, as Python 3 and the regex module see them ----------------- */

static int cat_in(uint32_t c, int a, int b)
{
    int k = (int)utf8proc_category((utf8proc_int32_t)c);
    return k >= a && k <= b;
}

static int is_L(uint32_t c) { return cat_in(c, UTF8PROC_CATEGORY_LU, UTF8PROC_CATEGORY_LO); }
static int is_N(uint32_t c) { return cat_in(c, UTF8PROC_CATEGORY_ND, UTF8PROC_CATEGORY_NO); }

/* The regex module's \s (White_Space). */
static int re_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

/* str.split()'s whitespace. */
static int py_space(uint32_t c) { return re_space(c) || (c >= 0x1c && c <= 0x1f); }

/* BasicTokenizer's _is_whitespace and _is_control. */
static int bert_space(uint32_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' ||
           utf8proc_category((utf8proc_int32_t)c) == UTF8PROC_CATEGORY_ZS;
}

static int bert_control(uint32_t c)
{
    if (c == '\t' || c == '\n' || c == '\r')
        return 0;
    int k = (int)utf8proc_category((utf8proc_int32_t)c);
    return k == UTF8PROC_CATEGORY_CN || k >= UTF8PROC_CATEGORY_CC;
}

static int is_cjk(uint32_t c)
{
    return (c >= 0x4e00 && c <= 0x9fff) || (c >= 0x3400 && c <= 0x4dbf) ||
           (c >= 0x20000 && c <= 0x2a6df) || (c >= 0x2a700 && c <= 0x2b73f) ||
           (c >= 0x2b740 && c <= 0x2b81f) || (c >= 0x2b820 && c <= 0x2ceaf) ||
           (c >= 0xf900 && c <= 0xfaff) || (c >= 0x2f800 && c <= 0x2fa1f);
}

/* Python's Case_Ignorable: Mn Me Cf Lm Sk and the MidLetter / MidNumLet /
 * Single_Quote word-break characters. */
static int case_ignorable(uint32_t c)
{
    static const uint32_t mid[] = {0x27,   0x2e,   0x3a,   0xb7,   0x387,  0x55f,
                                   0x5f4,  0x2018, 0x2019, 0x2024, 0x2027, 0xfe13,
                                   0xfe52, 0xfe55, 0xff07, 0xff0e, 0xff1a};
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_SK:
        return 1;
    default:
        break;
    }
    for (size_t i = 0; i < sizeof mid / sizeof mid[0]; i++)
        if (c == mid[i])
            return 1;
    return 0;
}

/* Python's Cased: Lu Ll Lt, Other_Lowercase / Other_Uppercase. Checked against
 * Python 3.11 for every assigned code point. */
static int cased(uint32_t c)
{
    utf8proc_int32_t x = (utf8proc_int32_t)c;
    if (cat_in(c, UTF8PROC_CATEGORY_LU, UTF8PROC_CATEGORY_LT) || utf8proc_tolower(x) != x ||
        utf8proc_toupper(x) != x || utf8proc_totitle(x) != x)
        return 1;
    return c == 0xaa || c == 0xba || (c >= 0x1f130 && c <= 0x1f149) ||
           (c >= 0x1f150 && c <= 0x1f169) || (c >= 0x1f170 && c <= 0x1f189);
}

/* Python's str.lower() rule for U+03A3 at w[i]: final sigma after a cased letter
 * (skipping case-ignorables) and not before one. */
static int final_sigma(const utf8proc_int32_t *w, size_t n, size_t i)
{
    size_t j = i;
    uint32_t c = 0;
    int found = 0;
    while (j > 0 && !found) {
        c = (uint32_t)w[--j];
        found = !case_ignorable(c);
    }
    if (!found || !cased(c))
        return 0;
    for (j = i + 1; j < n; j++) {
        c = (uint32_t)w[j];
        if (!case_ignorable(c))
            return !cased(c);
    }
    return 1;
}

/* ---- tokenizing ------------------------------------------------------------------ */

static vf_status grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return VF_OK;
    size_t n = *cap * 2 > need ? *cap * 2 : need, bytes;
    if (vf_mul_overflow(n, elem, &bytes))
        return vf_error(VF_ERR_NO_MEMORY, "tokenizer buffer of %zu elements", n);
    void *q = vf_realloc(*p, bytes);
    if (!q)
        return VF_ERR_NO_MEMORY;
    *p = q;
    *cap = n;
    return VF_OK;
}

#define GROW(ptr, cap, need) grow((void **)&(ptr), &(cap), (need), sizeof *(ptr))

static vf_status emit(scratch *s, int32_t id)
{
    VF_TRY(GROW(s->out.v, s->out.cap, s->out.n + 1));
    s->out.v[s->out.n++] = id;
    return VF_OK;
}

static void heap_push(uint64_t *h, size_t *n, uint64_t key)
{
    size_t i = (*n)++;
    while (i > 0 && h[(i - 1) / 2] > key) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = key;
}

static uint64_t heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && h[c + 1] < h[c])
            c++;
        if (h[c] >= last)
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n)
        h[i] = last;
    return top;
}

/* Pushes the pair starting at symbol position i when it has a rank. */
static void push_pair(const vf_tokenizer *t, scratch *s, size_t *hn, int32_t i)
{
    if (i < 0 || s->nxt[i] < 0)
        return;
    int64_t r = merge_rank(t, s->sym[i], s->sym[s->nxt[i]], NULL);
    if (r >= 0)
        heap_push(s->heap, hn, (uint64_t)r << 32 | (uint32_t)i);
}

/* Merges the pair at position i if it still is the pair of rank r. */
static int merge_at(const vf_tokenizer *t, scratch *s, int32_t i, int64_t r)
{
    int32_t j = s->nxt[i], ab;
    if (s->sym[i] < 0 || j < 0 || merge_rank(t, s->sym[i], s->sym[j], &ab) != r)
        return 0;
    s->sym[i] = ab;
    s->sym[j] = SYM_DEAD;
    s->nxt[i] = s->nxt[j];
    if (s->nxt[j] >= 0)
        s->prv[s->nxt[j]] = i;
    return 1;
}

/* Room for a word of n bytes: symbol lists, the batch, and the heap, which
 * never holds more than the n - 1 first pairs plus two per merge. */
static vf_status bpe_reserve(scratch *s, size_t n)
{
    if (n <= s->bpe_cap)
        return VF_OK;
    int32_t **arrays[] = {&s->sym, &s->nxt, &s->prv, &s->bat};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) {
        size_t cap = s->bpe_cap;
        VF_TRY(grow((void **)arrays[i], &cap, n, sizeof(int32_t)));
    }
    size_t cap = s->bpe_cap;
    VF_TRY(grow((void **)&s->heap, &cap, n, 3 * sizeof(uint64_t)));
    s->bpe_cap = cap;
    return VF_OK;
}

/* BPE of one pre-token's bytes b[0..n): appends its ids to s->out. Symbols are
 * a linked list over byte positions (sym, nxt, prv); the heap holds
 * (rank << 32 | position of the pair's left symbol). */
static vf_status bpe(const vf_tokenizer *t, scratch *s, const unsigned char *b, size_t n)
{
    if (n > INT32_MAX / 3)
        return vf_error(VF_ERR_INVALID_ARG, "prompt: a word of %zu bytes is too long", n);
    VF_TRY(bpe_reserve(s, n));
    for (size_t i = 0; i < n; i++) {
        s->sym[i] = i + 1 < n ? t->byte_sym[b[i]] : t->byte_end_sym[b[i]];
        s->nxt[i] = i + 1 < n ? (int32_t)i + 1 : -1;
        s->prv[i] = (int32_t)i - 1;
    }
    size_t hn = 0;
    for (size_t i = 0; i + 1 < n; i++)
        push_pair(t, s, &hn, (int32_t)i);
    while (hn) {
        /* All occurrences of the best pair, left to right, before any pair the
         * merges create: one pass of HF's while loop. */
        int64_t r = (int64_t)(s->heap[0] >> 32);
        size_t nb = 0, nm = 0;
        while (hn && (int64_t)(s->heap[0] >> 32) == r) {
            int32_t pos = (int32_t)(uint32_t)heap_pop(s->heap, &hn);
            if (nb == 0 || s->bat[nb - 1] != pos) /* a pair can be pushed twice */
                s->bat[nb++] = pos;
        }
        for (size_t k = 0; k < nb; k++)
            if (merge_at(t, s, s->bat[k], r))
                s->bat[nm++] = s->bat[k];
        for (size_t k = 0; k < nm; k++) {
            push_pair(t, s, &hn, s->prv[s->bat[k]]);
            push_pair(t, s, &hn, s->bat[k]);
        }
    }
    for (int32_t i = 0; i >= 0; i = s->nxt[i])
        VF_TRY(emit(s, s->sym[i] >= 0 ? t->syms[s->sym[i]].id : t->unk));
    return VF_OK;
}

static vf_status pretoken(vf_tokenizer *t, scratch *s, const uint32_t *w, size_t n)
{
    size_t nb = 0;
    VF_TRY(GROW(s->pb, s->pb_cap, 4 * n));
    for (size_t i = 0; i < n; i++)
        nb += (size_t)utf8proc_encode_char((utf8proc_int32_t)w[i], s->pb + nb);
    if (nb == strlen(BOS_DEFAULT) && memcmp(s->pb, BOS_DEFAULT, nb) == 0)
        return emit(s, t->start_id);
    if (nb == strlen(EOS_DEFAULT) && memcmp(s->pb, EOS_DEFAULT, nb) == 0)
        return emit(s, t->end_id);
    uint32_t h = hash_bytes(s->pb, nb);
    const cache_ent *e = nb <= CACHE_MAX_KEY ? cache_find(t, s->pb, nb, h) : NULL;
    if (e) {
        for (uint32_t i = 0; i < e->ids_len; i++)
            VF_TRY(emit(s, t->cids[e->ids_off + i]));
        return VF_OK;
    }
    size_t start = s->out.n;
    VF_TRY(bpe(t, s, s->pb, nb));
    cache_put(t, s->pb, nb, h, s->out.v + start, s->out.n - start);
    return VF_OK;
}

/* Case-insensitive as HF's regex: after lowercasing only U+017F still folds to
 * an ASCII letter of the pattern. */
static size_t match_lit(const uint32_t *w, size_t n, const char *lit)
{
    size_t k = strlen(lit);
    if (k > n)
        return 0;
    for (size_t i = 0; i < k; i++)
        if (w[i] != (unsigned char)lit[i] && !(lit[i] == 's' && w[i] == 0x17f))
            return 0;
    return k;
}

/* U+0345 folds to a letter, so under IGNORECASE it is in no branch. */
static int re_other(uint32_t c) { return !re_space(c) && !is_L(c) && !is_N(c) && c != 0x345; }

/* The length of CLIP's regex match at w[0], 0 for none:
 * <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ */
static size_t re_match(const uint32_t *w, size_t n)
{
    static const char *const lits[] = {"<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re",
                                       "'ve", "'m", "'ll", "'d"};
    size_t k = 0;
    for (size_t i = 0; i < sizeof lits / sizeof lits[0]; i++)
        if ((k = match_lit(w, n, lits[i])) != 0)
            return k;
    if (is_L(w[0])) {
        for (k = 1; k < n && is_L(w[k]);)
            k++;
        return k;
    }
    if (is_N(w[0]))
        return 1;
    if (re_other(w[0])) {
        for (k = 1; k < n && re_other(w[k]);)
            k++;
        return k;
    }
    return 0;
}

/* One whitespace-free word of NFC text: str.lower(), then the regex. */
static vf_status word(vf_tokenizer *t, scratch *s, const utf8proc_int32_t *w, size_t n)
{
    size_t m = 0;
    VF_TRY(GROW(s->lw, s->lw_cap, 2 * n));
    for (size_t i = 0; i < n; i++) {
        if (w[i] == 0x130) {
            s->lw[m++] = 'i';
            s->lw[m++] = 0x307;
        } else if (w[i] == 0x3a3) {
            s->lw[m++] = final_sigma(w, n, i) ? 0x3c2 : 0x3c3;
        } else {
            s->lw[m++] = (uint32_t)utf8proc_tolower(w[i]);
        }
    }
    for (size_t i = 0; i < m && s->out.n < s->limit;) {
        size_t k = re_match(s->lw + i, m - i);
        if (k == 0) {
            i++;
            continue;
        }
        VF_TRY(pretoken(t, s, s->lw + i, k));
        i += k;
    }
    return VF_OK;
}

/* BasicTokenizer's clean and CJK spacing of p[0..n) into s->u8; returns bytes. */
static vf_status clean(scratch *s, const char *p, size_t n, size_t *len)
{
    size_t m = 0;
    VF_TRY(GROW(s->u8, s->u8_cap, 2 * n + 8));
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)p + i,
                                              (utf8proc_ssize_t)(n - i), &c);
        if (k <= 0)
            return vf_error(VF_ERR_INVALID_ARG, "prompt: not valid UTF-8 at byte %zu", i);
        i += (size_t)k;
        uint32_t u = (uint32_t)c;
        if (u == 0 || u == 0xfffd || bert_control(u))
            continue;
        if (bert_space(u)) {
            s->u8[m++] = ' ';
        } else if (is_cjk(u)) {
            s->u8[m++] = ' ';
            m += (size_t)utf8proc_encode_char(c, (utf8proc_uint8_t *)s->u8 + m);
            s->u8[m++] = ' ';
        } else {
            m += (size_t)utf8proc_encode_char(c, (utf8proc_uint8_t *)s->u8 + m);
        }
    }
    *len = m;
    return VF_OK;
}

/* A piece of text between added tokens. */
static vf_status piece(vf_tokenizer *t, scratch *s, const char *p, size_t n)
{
    size_t m = 0;
    if (n == 0)
        return VF_OK;
    VF_TRY(clean(s, p, n, &m));
    if (m == 0)
        return VF_OK;
    const utf8proc_uint8_t *u = (const utf8proc_uint8_t *)s->u8;
    utf8proc_ssize_t need = utf8proc_decompose(u, (utf8proc_ssize_t)m, NULL, 0, NFC_OPTS);
    if (need < 0)
        return vf_error(VF_ERR_INTERNAL, "prompt: NFC: %s", utf8proc_errmsg(need));
    VF_TRY(GROW(s->nf, s->nf_cap, (size_t)need + 1));
    utf8proc_ssize_t got = utf8proc_decompose(u, (utf8proc_ssize_t)m, s->nf, need, NFC_OPTS);
    if (got >= 0)
        got = utf8proc_normalize_utf32(s->nf, got, NFC_OPTS);
    if (got < 0)
        return vf_error(VF_ERR_INTERNAL, "prompt: NFC: %s", utf8proc_errmsg(got));
    size_t nf = (size_t)got;
    for (size_t i = 0; i < nf && s->out.n < s->limit;) {
        if (py_space((uint32_t)s->nf[i])) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < nf && !py_space((uint32_t)s->nf[j]))
            j++;
        VF_TRY(word(t, s, s->nf + i, j - i));
        i = j;
    }
    return VF_OK;
}

/* The added token starting at p (the longest), or NULL. */
static const added_tok *added_at(const vf_tokenizer *t, const char *p, size_t n)
{
    const added_tok *best = NULL;
    for (int i = 0; i < t->nadded; i++) {
        const added_tok *a = &t->added[i];
        if (a->len <= n && a->text[0] == p[0] && memcmp(a->text, p, a->len) == 0 &&
            (!best || a->len > best->len))
            best = a;
    }
    return best;
}

/* Content ids of text into s->out (no BOS/EOS), stopping early at s->limit. */
static vf_status tokenize_text(vf_tokenizer *t, scratch *s, const char *text, size_t len)
{
    size_t i = 0;
    while (s->out.n < s->limit) {
        const added_tok *hit = NULL;
        size_t j = i;
        for (; j < len && !hit; j++)
            hit = added_at(t, text + j, len - j);
        if (hit)
            j--;
        VF_TRY(piece(t, s, text + i, j - i));
        if (!hit)
            break;
        if (s->out.n < s->limit)
            VF_TRY(emit(s, hit->id));
        i = j + hit->len;
    }
    return VF_OK;
}

static void scratch_free(scratch *s)
{
    vf_free(s->u8);
    vf_free(s->nf);
    vf_free(s->lw);
    vf_free(s->pb);
    vf_free(s->sym);
    vf_free(s->nxt);
    vf_free(s->prv);
    vf_free(s->bat);
    vf_free(s->heap);
    vf_free(s->out.v);
}

static vf_status run(vf_tokenizer *t, const char *utf8, scratch *s)
{
    size_t len = strnlen(utf8, VF_TOKENIZER_MAX_PROMPT + 1);
    if (len > VF_TOKENIZER_MAX_PROMPT)
        return vf_error(VF_ERR_INVALID_ARG, "prompt: longer than the %zu-byte limit",
                        VF_TOKENIZER_MAX_PROMPT);
    if (!vf_utf8_valid(utf8, len))
        return vf_error(VF_ERR_INVALID_ARG, "prompt: not valid UTF-8");
    return tokenize_text(t, s, utf8, len);
}

vf_status vf_tokenize(vf_tokenizer *t, const char *utf8, int32_t *ids, size_t cap, size_t *n_out)
{
    if (n_out)
        *n_out = 0;
    if (!t || !utf8 || !n_out || (!ids && cap))
        return vf_error(VF_ERR_INVALID_ARG, "vf_tokenize: %s is NULL",
                        !t ? "tokenizer" : !utf8 ? "prompt" : !n_out ? "n_out" : "ids");
    scratch s = {0};
    s.limit = SIZE_MAX;
    vf_status st = run(t, utf8, &s);
    if (st == VF_OK) {
        size_t n = s.out.n + 2;
        for (size_t i = 0; i < n && i < cap; i++)
            ids[i] = i == 0 ? t->bos : i == n - 1 ? t->eos : s.out.v[i - 1];
        *n_out = n;
    }
    scratch_free(&s);
    return st;
}

vf_status vf_tokenize_window(vf_tokenizer *t, const char *utf8, int32_t ids[VF_CONTEXT_LEN])
{
    if (!t || !utf8 || !ids)
        return vf_error(VF_ERR_INVALID_ARG, "vf_tokenize_window: %s is NULL",
                        !t ? "tokenizer" : !utf8 ? "prompt" : "ids");
    scratch s = {0};
    s.limit = MAX_CONTENT;
    vf_status st = run(t, utf8, &s);
    if (st == VF_OK) {
        size_t n = s.out.n < MAX_CONTENT ? s.out.n : MAX_CONTENT, i = 0;
        ids[i++] = t->bos;
        for (size_t k = 0; k < n; k++)
            ids[i++] = s.out.v[k];
        ids[i++] = t->eos;
        while (i < VF_CONTEXT_LEN)
            ids[i++] = t->pad;
    }
    scratch_free(&s);
    return st;
}
