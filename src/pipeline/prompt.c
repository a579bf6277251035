/* Prompt syntax (see prompt.h): A1111's parse_prompt_attention, its
 * tokenize_line chunking and its "Original" emphasis, written from its
 * published algorithm.
 *
 * The parser is a scanner over A1111's regular expression re_attention, whose
 * alternatives are tried in order at each position:
 *   \( \) \[ \] \\   an escaped character (literal)
 *   \                a lone backslash (contributes "")
 *   ( [              open
 *   :\s*([+-]?[.\d]+)\s*\)   a weight closing a '('
 *   ) ]              close
 *   [^\\()\[\]:]+    text
 *   :                text
 * All the special characters are ASCII, so the scanner works on bytes and
 * decodes UTF-8 only where Python's \s and \b need a character class.
 *
 * Fragments are appended in order into one text buffer, and merging only ever
 * joins neighbours, so every fragment stays one contiguous span of it until the
 * final copy gives each its NUL.
 */
#include "pipeline/prompt.h"
#include "core/alloc.h"
#include "core/error.h"
#include "io/json.h"

#include <float.h>
#include <locale.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <utf8proc.h>

#define ROUND_MULT 1.1
#define SQUARE_MULT (1.0 / 1.1)
#define MAX_WEIGHT_CHARS 512

/* ---- syntax names ------------------------------------------------------------ */

static const char *const g_syntax_names[VF_PROMPT_SYNTAX_COUNT] = {"a1111", "plain", "diffusers"};

const char *vf_prompt_syntax_name(vf_prompt_syntax s)
{
    return (int)s >= 0 && s < VF_PROMPT_SYNTAX_COUNT ? g_syntax_names[s] : "?";
}

vf_status vf_prompt_syntax_parse(const char *name, vf_prompt_syntax *out)
{
    for (int i = 0; name && out && i < VF_PROMPT_SYNTAX_COUNT; i++) {
        if (strcasecmp(name, g_syntax_names[i]) == 0) {
            *out = (vf_prompt_syntax)i;
            return VF_OK;
        }
    }
    return vf_error(VF_ERR_INVALID_ARG, "prompt syntax '%s': use a1111, plain or diffusers",
                    name ? name : "(null)");
}

/* ---- Python's character classes -------------------------------------------------- */

/* The code point at s[i] (valid UTF-8) and its length in *n. */
static uint32_t decode_at(const char *s, size_t len, size_t i, size_t *n)
{
    utf8proc_int32_t cp = 0;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(len - i), &cp);
    *n = k > 0 ? (size_t)k : 1;
    return k > 0 ? (uint32_t)cp : 0xFFFD;
}

/* The code point ending at s[i-1] (valid UTF-8, i > 0). */
static uint32_t decode_before(const char *s, size_t len, size_t i)
{
    size_t j = i - 1, n;
    while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80)
        j--;
    return decode_at(s, len, j, &n);
}

/* str.isspace(), which is what re's \s matches in a str pattern. */
static int py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* re's \w for str: alphanumeric (letters and numbers) or '_'. */
static int py_word(uint32_t c)
{
    if (c < 0x80)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
        return 1;
    default:
        return 0;
    }
}

/* The end of the run of \s starting at i. */
static size_t skip_space(const char *s, size_t len, size_t i)
{
    size_t n;
    while (i < len && py_space(decode_at(s, len, i, &n)))
        i += n;
    return i;
}

/* ---- fragment list under construction ------------------------------------------ */

typedef struct frag {
    size_t off, len;              /* span of the builder's text               */
    double w;
} frag;

typedef struct builder {
    char *text;
    size_t tlen, tcap;
    frag *f;
    size_t n, cap;
    size_t round[VF_PROMPT_MAX_DEPTH], square[VF_PROMPT_MAX_DEPTH];
    int nround, nsquare;
} builder;

static vf_status push(builder *b, const char *s, size_t len, double w)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 16;
        frag *f = vf_realloc(b->f, cap * sizeof *f);
        if (!f)
            return vf_error_prefix(VF_ERR_NO_MEMORY, "prompt: fragments");
        b->f = f;
        b->cap = cap;
    }
    /* The text never outgrows the input (see vf_prompt_parse), sized up front. */
    if (b->tlen + len > b->tcap)
        return vf_error(VF_ERR_INTERNAL, "prompt: fragment text overflow");
    memcpy(b->text + b->tlen, s, len);
    b->f[b->n++] = (frag){b->tlen, len, w};
    b->tlen += len;
    return VF_OK;
}

static void multiply_range(builder *b, size_t start, double m)
{
    for (size_t p = start; p < b->n; p++)
        b->f[p].w *= m;
}

/* re.split(r"\s*\bBREAK\b\s*", s): the parts as weight-1 fragments with a
 * ("BREAK", -1) marker between each two. Leftmost matches: a match may start
 * at the first character of a whitespace run (\s* is greedy), and a run whose
 * end is not BREAK holds no match at all, so the scan skips runs whole. */
static vf_status push_text(builder *b, const char *s, size_t len)
{
    size_t part = 0, i = 0, n;
    while (i < len) {
        size_t j = skip_space(s, len, i);
        int ok = j + 5 <= len && memcmp(s + j, "BREAK", 5) == 0;
        ok = ok && (j == 0 || !py_word(decode_before(s, len, j)));
        ok = ok && (j + 5 == len || !py_word(decode_at(s, len, j + 5, &n)));
        if (!ok) {
            if (j == i) {
                (void)decode_at(s, len, i, &n);
                j = i + n;
            }
            i = j;
            continue;
        }
        VF_TRY(push(b, s + part, i - part, 1.0));
        VF_TRY(push(b, "BREAK", 5, -1.0));
        i = part = skip_space(s, len, j + 5);
    }
    return push(b, s + part, len - part, 1.0);
}

/* ---- the scanner ----------------------------------------------------------------- */

/* Length of a weight token ":\s*([+-]?[.\d]+)\s*\)" at s[i] (s[i] == ':'), 0 if
 * none; the number's span in *num, *numlen. */
static size_t weight_token(const char *s, size_t len, size_t i, size_t *num, size_t *numlen)
{
    size_t j = skip_space(s, len, i + 1), k = j;
    if (k < len && (s[k] == '+' || s[k] == '-'))
        k++;
    size_t d = k;
    while (k < len && (s[k] == '.' || (s[k] >= '0' && s[k] <= '9')))
        k++;
    if (k == d)
        return 0;
    size_t e = skip_space(s, len, k);
    if (e >= len || s[e] != ')')
        return 0;
    *num = j;
    *numlen = k - j;
    return e + 1 - i;
}

/* Python's float() of [+-]?[.0-9]+: at least one digit and at most one dot. */
static vf_status parse_weight(const char *s, size_t n, size_t at, double *out)
{
    size_t digits = 0, dots = 0;
    for (size_t i = 0; i < n; i++) {
        digits += s[i] >= '0' && s[i] <= '9';
        dots += s[i] == '.';
    }
    if (!digits || dots > 1)
        return vf_error(VF_ERR_INVALID_ARG, "prompt: weight '%.*s' at byte %zu is not a number",
                        (int)(n < 64 ? n : 64), s, at);
    if (n > MAX_WEIGHT_CHARS)
        return vf_error(VF_ERR_INVALID_ARG, "prompt: weight at byte %zu has more than %d characters", at,
                        MAX_WEIGHT_CHARS);
    char buf[MAX_WEIGHT_CHARS + 1];
    memcpy(buf, s, n);
    buf[n] = 0;
    /* The "C" locale's decimal point whatever the host program set. */
    locale_t c = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (!c)
        return vf_error(VF_ERR_NO_MEMORY, "prompt: no C locale for a weight");
    double v = strtod_l(buf, NULL, c);
    freelocale(c);
    if (!isfinite(v))
        return vf_error(VF_ERR_INVALID_ARG, "prompt: weight '%.*s' at byte %zu is out of range",
                        (int)(n < 64 ? n : 64), s, at);
    *out = v;
    return VF_OK;
}

static vf_status open_bracket(builder *b, char c, size_t at)
{
    int *depth = c == '(' ? &b->nround : &b->nsquare;
    if (*depth >= VF_PROMPT_MAX_DEPTH)
        return vf_error(VF_ERR_INVALID_ARG, "prompt: more than %d '%c' open at byte %zu",
                        VF_PROMPT_MAX_DEPTH, c, at);
    (c == '(' ? b->round : b->square)[(*depth)++] = b->n;
    return VF_OK;
}

/* One re_attention match at s[i]; *adv receives its length. */
static vf_status scan_one(builder *b, const char *s, size_t len, size_t i, size_t *adv)
{
    char c = s[i];
    *adv = 1;
    if (c == '\\') {
        int esc = i + 1 < len && s[i + 1] && strchr("()[]\\", s[i + 1]);
        *adv = esc ? 2 : 1;
        return push(b, s + i + 1, esc ? 1 : 0, 1.0);
    }
    if (c == '(' || c == '[')
        return open_bracket(b, c, i);
    if (c == ':') {
        size_t num = 0, numlen = 0, n = weight_token(s, len, i, &num, &numlen);
        if (n && b->nround) {
            double w;
            VF_TRY(parse_weight(s + num, numlen, num, &w));
            multiply_range(b, b->round[--b->nround], w);
            *adv = n;
            return VF_OK;
        }
        *adv = n ? n : 1;
        return push_text(b, s + i, *adv);
    }
    if (c == ')' && b->nround) {
        multiply_range(b, b->round[--b->nround], ROUND_MULT);
        return VF_OK;
    }
    if (c == ']' && b->nsquare) {
        multiply_range(b, b->square[--b->nsquare], SQUARE_MULT);
        return VF_OK;
    }
    if (c == ')' || c == ']')
        return push_text(b, s + i, 1);
    size_t j = i;
    while (j < len && !strchr("\\()[]:", s[j]))
        j++;
    *adv = j - i;
    return push_text(b, s + i, j - i);
}

/* Unclosed brackets, the empty case, the merge of equal neighbours. */
static vf_status finish_list(builder *b)
{
    for (int k = 0; k < b->nround; k++)
        multiply_range(b, b->round[k], ROUND_MULT);
    for (int k = 0; k < b->nsquare; k++)
        multiply_range(b, b->square[k], SQUARE_MULT);
    if (b->n == 0)
        VF_TRY(push(b, "", 0, 1.0));
    size_t o = 0;
    for (size_t i = 1; i < b->n; i++) {
        if (b->f[i].w == b->f[o].w)
            b->f[o].len += b->f[i].len;   /* neighbours: adjacent spans */
        else
            b->f[++o] = b->f[i];
    }
    b->n = o + 1;
    /* Embeddings are float32: a weight past FLT_MAX would turn them to inf. */
    for (size_t i = 0; i < b->n; i++)
        if (!isfinite(b->f[i].w) || fabs(b->f[i].w) > FLT_MAX)
            return vf_error(VF_ERR_INVALID_ARG,
                            "prompt: the weight of fragment %zu ('%.*s') is not finite in float32",
                            i, (int)(b->f[i].len < 64 ? b->f[i].len : 64), b->text + b->f[i].off);
    return VF_OK;
}

/* The builder's fragments as the public list (texts NUL-terminated). */
static vf_status export_list(const builder *b, vf_prompt_fragments *out)
{
    out->items = vf_calloc(b->n, sizeof *out->items);
    out->text = out->items ? vf_malloc(b->tlen + b->n) : NULL;
    if (!out->text) {
        vf_prompt_fragments_free(out);
        return vf_error_prefix(VF_ERR_NO_MEMORY, "prompt: fragments");
    }
    char *p = out->text;
    for (size_t i = 0; i < b->n; i++) {
        memcpy(p, b->text + b->f[i].off, b->f[i].len);
        p[b->f[i].len] = 0;
        out->items[i] = (vf_prompt_fragment){p, b->f[i].len, b->f[i].w};
        p += b->f[i].len + 1;
    }
    out->n = b->n;
    return VF_OK;
}

static vf_status check_input(const char *data, size_t len)
{
    if (!data && len)
        return vf_error(VF_ERR_INVALID_ARG, "prompt: NULL text");
    if (len > VF_PROMPT_MAX_BYTES)
        return vf_error(VF_ERR_INVALID_ARG, "prompt: %zu bytes, more than the %zu-byte limit", len,
                        VF_PROMPT_MAX_BYTES);
    const char *nul = len ? memchr(data, 0, len) : NULL;
    if (nul)
        return vf_error(VF_ERR_INVALID_ARG, "prompt: NUL byte at byte %zu", (size_t)(nul - data));
    if (len && !vf_utf8_valid(data, len))
        return vf_error(VF_ERR_INVALID_ARG, "prompt: not valid UTF-8");
    return VF_OK;
}

static vf_status parse(const char *data, size_t len, int plain, vf_prompt_fragments *out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_prompt_parse: out is NULL");
    memset(out, 0, sizeof *out);
    VF_TRY(check_input(data, len));
    /* Output text is never longer than the input: escapes shrink, "BREAK"
     * markers replace at least the five bytes "BREAK". */
    builder *b = vf_calloc(1, sizeof *b);
    if (b) {
        b->tcap = len;
        b->text = vf_malloc(len ? len : 1);
    }
    if (!b || !b->text) {
        if (b)
            vf_free(b->text);
        vf_free(b);
        return vf_error_prefix(VF_ERR_NO_MEMORY, "prompt: %zu bytes", len);
    }
    vf_status st = VF_OK;
    if (plain) {
        st = push(b, data, len, 1.0);
    } else {
        for (size_t i = 0, adv = 0; st == VF_OK && i < len; i += adv)
            st = scan_one(b, data, len, i, &adv);
    }
    if (st == VF_OK)
        st = finish_list(b);
    if (st == VF_OK)
        st = export_list(b, out);
    vf_free(b->text);
    vf_free(b->f);
    vf_free(b);
    return st;
}

vf_status vf_prompt_parse(const char *data, size_t len, vf_prompt_fragments *out)
{
    return parse(data, len, 0, out);
}

vf_status vf_prompt_parse_plain(const char *data, size_t len, vf_prompt_fragments *out)
{
    return parse(data, len, 1, out);
}

void vf_prompt_fragments_free(vf_prompt_fragments *f)
{
    if (!f)
        return;
    vf_free(f->items);
    vf_free(f->text);
    memset(f, 0, sizeof *f);
}

int vf_prompt_fragment_is_break(const vf_prompt_fragment *f)
{
    return f && f->weight == -1.0 && f->len == 5 && memcmp(f->text, "BREAK", 5) == 0;
}

/* ---- windows ----------------------------------------------------------------------- */

typedef struct chunker {
    vf_tokenizer *t;
    int32_t bos, eos, pad, comma;
    int32_t tok[VF_PROMPT_CHUNK];
    float w[VF_PROMPT_CHUNK];
    int len;
    int last_comma;
    vf_prompt_windows *out;
    int cap;                      /* windows allocated in out                 */
} chunker;

static vf_status grow_windows(vf_prompt_windows *w, int *cap, int need)
{
    if (need <= *cap)
        return VF_OK;
    if (need > VF_PROMPT_MAX_WINDOWS)
        return vf_error(VF_ERR_INVALID_ARG,
                        "prompt: longer than %d windows of %d tokens (%d tokens); shorten it",
                        VF_PROMPT_MAX_WINDOWS, VF_PROMPT_CHUNK, VF_PROMPT_MAX_WINDOWS * VF_PROMPT_CHUNK);
    int c = *cap ? 2 * *cap : 2;
    c = c < need ? need : c > VF_PROMPT_MAX_WINDOWS ? VF_PROMPT_MAX_WINDOWS : c;
    int32_t *ids = vf_realloc(w->ids, sizeof *ids * VF_CONTEXT_LEN * (size_t)c);
    if (ids)
        w->ids = ids;
    float *wt = ids ? vf_realloc(w->weights, sizeof *wt * VF_CONTEXT_LEN * (size_t)c) : NULL;
    if (!wt)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "prompt: windows");
    w->weights = wt;
    *cap = c;
    return VF_OK;
}

/* Appends one window: BOS, tok[0..n), EOS, pad... */
static vf_status emit_window(vf_prompt_windows *w, int *cap, int32_t bos, int32_t eos, int32_t pad,
                             const int32_t *tok, const float *wt, int n)
{
    VF_TRY(grow_windows(w, cap, w->n + 1));
    int32_t *ids = w->ids + (size_t)w->n * VF_CONTEXT_LEN;
    float *ws = w->weights + (size_t)w->n * VF_CONTEXT_LEN;
    int i = 0;
    ids[i] = bos;
    ws[i++] = 1.0f;
    for (int k = 0; k < n; k++, i++) {
        ids[i] = tok[k];
        ws[i] = wt[k];
        w->weighted |= wt[k] != 1.0f;
    }
    ids[i] = eos;
    ws[i++] = 1.0f;
    for (; i < VF_CONTEXT_LEN; i++) {
        ids[i] = pad;
        ws[i] = 1.0f;
    }
    w->n++;
    return VF_OK;
}

/* A1111's next_chunk: the current chunk becomes a window, a new one starts. */
static vf_status next_chunk(chunker *c, int is_last)
{
    c->out->token_count += is_last ? c->len : VF_PROMPT_CHUNK;
    VF_TRY(emit_window(c->out, &c->cap, c->bos, c->eos, c->pad, c->tok, c->w, c->len));
    c->len = 0;
    c->last_comma = -1;
    return VF_OK;
}

/* One token of weight w, with A1111's comma backtrack. */
static vf_status add_token(chunker *c, int32_t token, float w)
{
    if (token == c->comma) {
        c->last_comma = c->len;
    } else if (VF_PROMPT_COMMA_BACKTRACK && c->len == VF_PROMPT_CHUNK && c->last_comma != -1 &&
               c->len - c->last_comma <= VF_PROMPT_COMMA_BACKTRACK) {
        int at = c->last_comma + 1, n = c->len - at;
        int32_t rt[VF_PROMPT_CHUNK];
        float rw[VF_PROMPT_CHUNK];
        memcpy(rt, c->tok + at, sizeof *rt * (size_t)n);
        memcpy(rw, c->w + at, sizeof *rw * (size_t)n);
        c->len = at;
        VF_TRY(next_chunk(c, 0));
        memcpy(c->tok, rt, sizeof *rt * (size_t)n);
        memcpy(c->w, rw, sizeof *rw * (size_t)n);
        c->len = n;
    }
    if (c->len == VF_PROMPT_CHUNK)
        VF_TRY(next_chunk(c, 0));
    c->tok[c->len] = token;
    c->w[c->len++] = w;
    return VF_OK;
}

/* Content ids of text (no BOS/EOS) into *ids (grown as needed). */
static vf_status tokenize_fragment(vf_tokenizer *t, const char *text, int32_t **ids, size_t *cap,
                                   size_t *n)
{
    VF_TRY(vf_tokenize(t, text, *ids, *cap, n));
    if (*n > *cap) {
        int32_t *p = vf_realloc(*ids, sizeof *p * *n);
        if (!p)
            return vf_error_prefix(VF_ERR_NO_MEMORY, "prompt: %zu tokens", *n);
        *ids = p;
        *cap = *n;
        VF_TRY(vf_tokenize(t, text, *ids, *cap, n));
    }
    if (*n < 2)
        return vf_error(VF_ERR_INTERNAL, "prompt: tokenizer returned %zu ids", *n);
    return VF_OK;
}

/* The id of ",</w>" as A1111 looks it up: what "," alone tokenizes to; -1 when
 * that is not a single token. */
static vf_status comma_id(vf_tokenizer *t, int32_t *out)
{
    int32_t ids[4];
    size_t n;
    VF_TRY(vf_tokenize(t, ",", ids, 4, &n));
    *out = n == 3 ? ids[1] : -1;
    return VF_OK;
}

static vf_status chunk_fragments(chunker *c, const vf_prompt_fragments *f)
{
    int32_t *ids = NULL;
    size_t cap = 0, n = 0;
    vf_status st = VF_OK;
    for (size_t i = 0; st == VF_OK && i < f->n; i++) {
        const vf_prompt_fragment *fr = &f->items[i];
        if (vf_prompt_fragment_is_break(fr)) {
            st = next_chunk(c, 0);
            continue;
        }
        if (!fr->len)
            continue;
        st = tokenize_fragment(c->t, fr->text, &ids, &cap, &n);
        for (size_t k = 1; st == VF_OK && k + 1 < n; k++)
            st = add_token(c, ids[k], (float)fr->weight);
    }
    if (st == VF_OK && (c->len || c->out->n == 0))
        st = next_chunk(c, 1);
    vf_free(ids);
    return st;
}

vf_status vf_prompt_windows_make(vf_tokenizer *t, const vf_prompt_fragments *f, vf_prompt_windows *out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_prompt_windows_make: out is NULL");
    memset(out, 0, sizeof *out);
    if (!t || !f)
        return vf_error(VF_ERR_INVALID_ARG, "vf_prompt_windows_make: %s is NULL", t ? "fragments" : "tokenizer");
    chunker *c = vf_calloc(1, sizeof *c);
    if (!c)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "prompt: windows");
    c->t = t;
    c->out = out;
    c->last_comma = -1;
    vf_tokenizer_special_ids(t, &c->bos, &c->eos, &c->pad);
    vf_status st = comma_id(t, &c->comma);
    if (st == VF_OK)
        st = chunk_fragments(c, f);
    vf_free(c);
    if (st != VF_OK)
        vf_prompt_windows_free(out);
    return st;
}

vf_status vf_prompt_windows_from_text(vf_tokenizer *t, const char *text, vf_prompt_syntax syntax,
                                      vf_prompt_windows *out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_prompt_windows_from_text: out is NULL");
    memset(out, 0, sizeof *out);
    if (!t || !text)
        return vf_error(VF_ERR_INVALID_ARG, "vf_prompt_windows_from_text: %s is NULL", t ? "text" : "tokenizer");
    if (syntax == VF_PROMPT_SYNTAX_DIFFUSERS) {
        int cap = 0;
        VF_TRY(grow_windows(out, &cap, 1));
        vf_status st = vf_tokenize_window(t, text, out->ids);
        for (int i = 0; i < VF_CONTEXT_LEN; i++)
            out->weights[i] = 1.0f;
        out->n = 1;
        if (st != VF_OK)
            vf_prompt_windows_free(out);
        return st;
    }
    if ((int)syntax < 0 || syntax >= VF_PROMPT_SYNTAX_COUNT)
        return vf_error(VF_ERR_INVALID_ARG, "prompt syntax %d is not a vf_prompt_syntax", (int)syntax);
    vf_prompt_fragments f;
    size_t len = strnlen(text, VF_PROMPT_MAX_BYTES + 1);
    VF_TRY(syntax == VF_PROMPT_SYNTAX_PLAIN ? vf_prompt_parse_plain(text, len, &f)
                                            : vf_prompt_parse(text, len, &f));
    vf_status st = vf_prompt_windows_make(t, &f, out);
    vf_prompt_fragments_free(&f);
    return st;
}

vf_status vf_prompt_windows_pad(vf_tokenizer *t, vf_prompt_windows *w, int n)
{
    if (!t || !w)
        return vf_error(VF_ERR_INVALID_ARG, "vf_prompt_windows_pad: %s is NULL", t ? "windows" : "tokenizer");
    int32_t bos, eos, pad;
    vf_tokenizer_special_ids(t, &bos, &eos, &pad);
    int cap = w->n;
    while (w->n < n)
        VF_TRY(emit_window(w, &cap, bos, eos, pad, NULL, NULL, 0));
    return VF_OK;
}

void vf_prompt_windows_free(vf_prompt_windows *w)
{
    if (!w)
        return;
    vf_free(w->ids);
    vf_free(w->weights);
    memset(w, 0, sizeof *w);
}

// z is (77, D), weights (77)
void vf_prompt_emphasis(float *z, int D, const float *weights)
{
    const size_t n = (size_t)VF_CONTEXT_LEN * (size_t)D;
    double before = 0, after = 0;
    for (size_t i = 0; i < n; i++)
        before += z[i];
    for (int t = 0; t < VF_CONTEXT_LEN; t++) {
        float *row = z + (size_t)t * D;
        for (int d = 0; d < D; d++) {
            row[d] *= weights[t];
            after += row[d];
        }
    }
    /* torch: mean() in float32, then a float32 ratio. */
    float om = (float)(before / (double)n), nm = (float)(after / (double)n);
    if (nm == 0.0f)
        return;
    float r = om / nm;
    for (size_t i = 0; i < n; i++)
        z[i] *= r;
}
