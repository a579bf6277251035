/* Synthesized models: a small CLIP-style BPE vocabulary of our own (see synth.h).
 *
 * A synthesized folder must carry tokenizer files, and the CLIP vocabulary may
 * not be copied, so one is made here with CLIP's shape: the 256 byte symbols of
 * CLIP's bytes_to_unicode alphabet (in its order), the same with "</w>", one
 * token per merge, then <|startoftext|> and <|endoftext|>. Because every byte
 * has a symbol, any text tokenizes; because every merge result is in the
 * vocabulary, any merge order stays inside it.
 *
 * The merges come from running BPE training on a built-in list of common
 * English and prompt words until every word is one token (pairs counted over
 * the list, ties broken by the pair's text), so they are ordinary merges for
 * letter pairs first and whole words later, and the same on every machine.
 * Building it takes milliseconds, so it is rebuilt where needed, not cached.
 */
#include "core/alloc.h"
#include "core/error.h"
#include "io/json.h"
#include "pipeline/synth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Word list of the training run: lowercase ASCII, space separated. */
static const char g_words[] =
    "a an the and or but of in on at to from with without by for as is are was were be "
    "been it its this that these those there here he she they we you i my your his her "
    "their our not no yes all any some many much more most very one two three four five "
    "first last new old good great small big large little long short high low tall wide "
    "red orange yellow green blue purple pink brown black white gray grey gold silver "
    "dark light bright colorful color colour circle square triangle line shape pattern "
    "photo photograph picture image painting drawing illustration portrait landscape "
    "art artwork style render detailed detail realistic sharp focus beautiful cinematic "
    "man woman person people child girl boy face eyes hair hand smile "
    "cat dog bird horse fish animal tree trees flower flowers forest garden grass leaf "
    "mountain mountains river lake sea ocean beach sky cloud clouds sun moon star stars "
    "night day morning evening sunset sunrise rain snow winter summer spring autumn "
    "city street house building road bridge tower castle room window door wall table "
    "car boat train ship plane robot astronaut space planet earth fire water stone wood "
    "glass metal paper book food apple cup coffee "
    "sitting standing walking running riding flying holding looking wearing "
    "top bottom left right center front back side inside outside above below under over "
    "near far behind between through into onto up down out off "
    "quality best high-quality masterpiece lighting light soft warm cold vivid "
    "background foreground view close wide shot camera lens studio digital oil watercolor";

#define MAX_TOKEN 64
#define MAX_SYMBOLS 32

typedef struct vocab {
    int n, cap;
    char **tok;             /* id -> text                                      */
    int nmerges;
    int (*merge)[2];        /* merge i joins ids merge[i][0] and merge[i][1]   */
} vocab;

/* CLIP's bytes_to_unicode: printable bytes map to themselves (as code points),
 * the others to 256 + n in byte order. order[i] is the byte of vocabulary id i. */
static void byte_alphabet(int cp[256], int order[256])
{
    int n = 0, k = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        if (printable) {
            cp[b] = b;
            order[k++] = b;
        }
    }
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        if (!printable) {
            cp[b] = 256 + n++;
            order[k++] = b;
        }
    }
}

/* UTF-8 of code point c (< 0x800) into s; returns the length. */
static int utf8_put(char *s, int c)
{
    if (c < 0x80) {
        s[0] = (char)c;
        return 1;
    }
    s[0] = (char)(0xC0 | (c >> 6));
    s[1] = (char)(0x80 | (c & 0x3F));
    return 2;
}

static int vocab_add(vocab *v, const char *text)
{
    if (v->n == v->cap) {
        int cap = v->cap ? v->cap * 2 : 1024;
        char **t = vf_realloc(v->tok, (size_t)cap * sizeof *t);
        if (!t)
            return -1;
        v->tok = t;
        v->cap = cap;
    }
    v->tok[v->n] = vf_strdup(text);
    return v->tok[v->n] ? v->n++ : -1;
}

static int vocab_find(const vocab *v, const char *text, int from)
{
    for (int i = from; i < v->n; i++)
        if (strcmp(v->tok[i], text) == 0)
            return i;
    return -1;
}

/* The training words as symbol ids; the last symbol of a word carries </w>. */
typedef struct word {
    int n;
    int sym[MAX_SYMBOLS];
} word;

/* Ids 0..255 are the byte symbols (in alphabet order), 256..511 the same + </w>. */
static int parse_words(const int byte_id[256], word **out, int *nout)
{
    int cap = 0;
    for (const char *p = g_words; *p; p++)
        cap += *p == ' ';
    word *w = vf_calloc((size_t)cap + 1, sizeof *w);
    if (!w)
        return -1;
    int n = 0;
    for (const char *p = g_words; *p;) {
        size_t len = strcspn(p, " ");
        if (len > 0 && len <= MAX_SYMBOLS) {
            for (size_t i = 0; i < len; i++)
                w[n].sym[i] = byte_id[(unsigned char)p[i]] + (i + 1 == len ? 256 : 0);
            w[n++].n = (int)len;
        }
        p += len + (p[len] == ' ');
    }
    *out = w;
    *nout = n;
    return 0;
}

typedef struct pair {
    int a, b;
} pair;

static int cmp_pair(const void *x, const void *y)
{
    const pair *p = x, *q = y;
    return p->a != q->a ? (p->a < q->a ? -1 : 1) : (p->b > q->b) - (p->b < q->b);
}

/* The most frequent adjacent pair over all words, ties to the smaller text
 * (first symbol, then second); 0 when no word has two symbols left. ps has
 * room for every adjacent pair. */
static int best_pair(const vocab *v, const word *w, int nw, pair *ps, int *pa, int *pb)
{
    int np = 0, best = 0;
    for (int i = 0; i < nw; i++)
        for (int j = 0; j + 1 < w[i].n; j++)
            ps[np++] = (pair){w[i].sym[j], w[i].sym[j + 1]};
    qsort(ps, (size_t)np, sizeof *ps, cmp_pair);
    for (int i = 0; i < np;) {
        int k = i;
        while (k < np && ps[k].a == ps[i].a && ps[k].b == ps[i].b)
            k++;
        int count = k - i, cmp = 0;
        if (count == best) {
            cmp = strcmp(v->tok[ps[i].a], v->tok[*pa]);
            cmp = cmp ? cmp : strcmp(v->tok[ps[i].b], v->tok[*pb]);
        }
        if (count > best || cmp < 0) {
            best = count;
            *pa = ps[i].a;
            *pb = ps[i].b;
        }
        i = k;
    }
    return best;
}

static void apply_merge(word *w, int nw, int a, int b, int id)
{
    for (int i = 0; i < nw; i++) {
        int k = 0;
        for (int j = 0; j < w[i].n; j++) {
            if (j + 1 < w[i].n && w[i].sym[j] == a && w[i].sym[j + 1] == b) {
                w[i].sym[k++] = id;
                j++;
            } else {
                w[i].sym[k++] = w[i].sym[j];
            }
        }
        w[i].n = k;
    }
}

/* Trains merges until every word is one token. */
static vf_status train(vocab *v, word *w, int nw)
{
    int a = 0, b = 0, cap = 0;
    for (int i = 0; i < nw; i++)
        cap += w[i].n - 1;
    v->merge = vf_calloc((size_t)cap + 1, sizeof *v->merge);
    pair *ps = vf_calloc((size_t)cap + 1, sizeof *ps);
    vf_status st = v->merge && ps ? VF_OK : VF_ERR_NO_MEMORY;
    while (st == VF_OK && best_pair(v, w, nw, ps, &a, &b) > 0) {
        char text[2 * MAX_TOKEN];
        snprintf(text, sizeof text, "%s%s", v->tok[a], v->tok[b]);
        int id = vocab_find(v, text, 512);
        if (id < 0)
            id = vocab_add(v, text);
        if (id < 0) {
            st = VF_ERR_NO_MEMORY;
            break;
        }
        v->merge[v->nmerges][0] = a;
        v->merge[v->nmerges][1] = b;
        v->nmerges++;
        apply_merge(w, nw, a, b, id);
    }
    vf_free(ps);
    return st;
}

static vf_status build(vocab *v)
{
    int cp[256], order[256], byte_id[256];
    byte_alphabet(cp, order);
    for (int suffix = 0; suffix < 2; suffix++) {
        for (int i = 0; i < 256; i++) {
            char text[16];
            int len = utf8_put(text, cp[order[i]]);
            strcpy(text + len, suffix ? "</w>" : "");
            if (vocab_add(v, text) < 0)
                return VF_ERR_NO_MEMORY;
            byte_id[order[i]] = i;
        }
    }
    word *w = NULL;
    int nw = 0;
    if (parse_words(byte_id, &w, &nw) != 0)
        return VF_ERR_NO_MEMORY;
    vf_status st = train(v, w, nw);
    vf_free(w);
    if (st == VF_OK && (vocab_add(v, "<|startoftext|>") < 0 || vocab_add(v, "<|endoftext|>") < 0))
        st = VF_ERR_NO_MEMORY;
    return st;
}

static void vocab_free(vocab *v)
{
    for (int i = 0; i < v->n; i++)
        vf_free(v->tok[i]);
    vf_free(v->tok);
    vf_free(v->merge);
    memset(v, 0, sizeof *v);
}

/* Builds the vocabulary (a few milliseconds); free it with vocab_free. */
static vf_status get_vocab(vocab *v)
{
    memset(v, 0, sizeof *v);
    vf_status st = build(v);
    if (st == VF_OK)
        return VF_OK;
    vocab_free(v);
    return vf_error(st, "synth: cannot build the tokenizer vocabulary");
}

int32_t vf_synth_vocab_size(void)
{
    vocab v;
    if (get_vocab(&v) != VF_OK)
        return 0;
    int32_t n = v.n;
    vocab_free(&v);
    return n;
}

int vf_synth_merge_count(void)
{
    vocab v;
    if (get_vocab(&v) != VF_OK)
        return 0;
    int n = v.nmerges;
    vocab_free(&v);
    return n;
}

/* ---- files ------------------------------------------------------------------------ */

static vf_status write_text(const char *dir, const char *name, const char *text, size_t len)
{
    char *path = vf_path_join(dir, name);
    if (!path)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s/%s", dir, name);
    vf_status st = VF_OK;
    FILE *f = fopen(path, "wb");
    if (!f) {
        st = vf_error(VF_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    } else {
        int bad = fwrite(text, 1, len, f) != len;
        int err = errno;
        if (fclose(f) != 0 && !bad) {
            bad = 1;
            err = errno;
        }
        if (bad)
            st = vf_error(VF_ERR_IO, "%s: write failed: %s", path, strerror(err));
    }
    vf_free(path);
    return st;
}

static vf_status write_json(const char *dir, const char *name, cJSON *j)
{
    char *text = j ? cJSON_Print(j) : NULL;
    vf_status st = text ? write_text(dir, name, text, strlen(text))
                        : vf_error(VF_ERR_NO_MEMORY, "%s/%s: out of memory", dir, name);
    cJSON_free(text);
    return st;
}

static vf_status write_vocab_json(const char *dir, const vocab *v)
{
    cJSON *o = cJSON_CreateObject();
    int bad = !o;
    for (int i = 0; i < v->n && !bad; i++)
        bad = !cJSON_AddNumberToObject(o, v->tok[i], i);
    vf_status st = bad ? vf_error(VF_ERR_NO_MEMORY, "%s/vocab.json: out of memory", dir)
                       : write_json(dir, "vocab.json", o);
    cJSON_Delete(o);
    return st;
}

static vf_status write_merges(const char *dir, const vocab *v)
{
    size_t cap = 32;
    for (int i = 0; i < v->nmerges; i++)
        cap += strlen(v->tok[v->merge[i][0]]) + strlen(v->tok[v->merge[i][1]]) + 2;
    char *text = vf_malloc(cap);
    if (!text)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s/merges.txt", dir);
    size_t len = (size_t)snprintf(text, cap, "#version: 0.2\n");
    for (int i = 0; i < v->nmerges; i++)
        len += (size_t)snprintf(text + len, cap - len, "%s %s\n", v->tok[v->merge[i][0]],
                                v->tok[v->merge[i][1]]);
    vf_status st = write_text(dir, "merges.txt", text, len);
    vf_free(text);
    return st;
}

static vf_status write_tokenizer_config(const char *dir, const char *pad)
{
    cJSON *o = cJSON_CreateObject();
    int bad = !o;
    bad = bad || !cJSON_AddNumberToObject(o, "model_max_length", 77);
    bad = bad || !cJSON_AddStringToObject(o, "pad_token", pad);
    bad = bad || !cJSON_AddStringToObject(o, "bos_token", "<|startoftext|>");
    bad = bad || !cJSON_AddStringToObject(o, "eos_token", "<|endoftext|>");
    bad = bad || !cJSON_AddStringToObject(o, "unk_token", "<|endoftext|>");
    bad = bad || !cJSON_AddBoolToObject(o, "do_lower_case", 1);
    bad = bad || !cJSON_AddStringToObject(o, "tokenizer_class", "CLIPTokenizer");
    vf_status st = bad ? vf_error(VF_ERR_NO_MEMORY, "%s/tokenizer_config.json: out of memory", dir)
                       : write_json(dir, "tokenizer_config.json", o);
    cJSON_Delete(o);
    return st;
}

vf_status vf_synth_write_tokenizer(const char *dir, const char *pad)
{
    vocab v;
    VF_TRY(get_vocab(&v));
    vf_status st = write_vocab_json(dir, &v);
    if (st == VF_OK)
        st = write_merges(dir, &v);
    if (st == VF_OK)
        st = write_tokenizer_config(dir, pad);
    vocab_free(&v);
    return st;
}
