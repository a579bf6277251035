/* Prompt syntax (pipeline/prompt.h) against AUTOMATIC1111's algorithm.
 *
 * tests/data/prompt/a1111_cases.json and encode_cases.safetensors come from
 * tools/make_prompt_fixtures.py, a Python re-implementation of A1111's
 * parse_prompt_attention, tokenize_line, "Original" emphasis and
 * pad_cond_uncond run with transformers' text encoders. Parse weights must match
 * Python's doubles exactly; windows id for id; embeddings within 1e-4 relative
 * error (float32 means). Without the shared tree (tokenizers, tiny models) the
 * parser tests still run, and the window tests run on a synthesized vocabulary.
 */
#include "core/alloc.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "pipeline/prompt.h"
#include "pipeline/synth.h"
#include "test.h"

#include <cjson/cJSON.h>
#include <ftw.h>
#include <limits.h>
#include <stdint.h>
#include <unistd.h>

static cJSON *load_cases(void)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/prompt/a1111_cases.json", vf_test_data());
    cJSON *j = NULL;
    CHECK_OK(vf_json_load(path, &j));
    return j;
}

static vf_status parse_str(const char *s, vf_prompt_fragments *f)
{
    return vf_prompt_parse(s, strlen(s), f);
}

/* ---- parser ------------------------------------------------------------------- */

static void test_parse_fixture(void)
{
    cJSON *j = load_cases();
    const cJSON *cases = cJSON_GetObjectItem(j, "parse"), *c;
    int n = 0;
    cJSON_ArrayForEach(c, cases) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        const cJSON *want = cJSON_GetObjectItem(c, "fragments");
        vf_prompt_fragments f;
        CHECK_OK(parse_str(text, &f));
        CHECK_MSG((int)f.n == cJSON_GetArraySize(want), "'%s': %zu fragments, want %d", text, f.n,
                  cJSON_GetArraySize(want));
        for (size_t i = 0; i < f.n && (int)i < cJSON_GetArraySize(want); i++) {
            const cJSON *w = cJSON_GetArrayItem(want, (int)i);
            const char *wt = cJSON_GetArrayItem(w, 0)->valuestring;
            double ww = cJSON_GetArrayItem(w, 1)->valuedouble;
            CHECK_MSG(strcmp(f.items[i].text, wt) == 0 && f.items[i].len == strlen(wt),
                      "'%s' fragment %zu: '%s', want '%s'", text, i, f.items[i].text, wt);
            CHECK_MSG(f.items[i].weight == ww, "'%s' fragment %zu: weight %.17g, want %.17g", text, i,
                      f.items[i].weight, ww);
        }
        vf_prompt_fragments_free(&f);
        n++;
    }
    CHECK(n >= 60);
    cJSON_Delete(j);
}

/* Where Python's float() raises, we return an error naming the weight. */
static void test_parse_errors(void)
{
    cJSON *j = load_cases();
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "parse_errors")) {
        vf_prompt_fragments f;
        CHECK(parse_str(c->valuestring, &f) == VF_ERR_INVALID_ARG);
        CHECK_MSG(strstr(vf_last_error(), "weight") && strstr(vf_last_error(), "byte"), "%s", vf_last_error());
        CHECK(f.n == 0 && f.items == NULL);
        n++;
    }
    CHECK(n == 5);
    cJSON_Delete(j);
}

static void test_parse_rejects(void)
{
    vf_prompt_fragments f;
    CHECK(vf_prompt_parse("a\xff", 2, &f) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "UTF-8") != NULL);
    CHECK(vf_prompt_parse("a\0b", 3, &f) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "NUL") != NULL);
    CHECK(vf_prompt_parse(NULL, 1, &f) == VF_ERR_INVALID_ARG);
    CHECK(vf_prompt_parse("x", 1, NULL) == VF_ERR_INVALID_ARG);
    /* NULL with length 0 is the empty prompt. */
    CHECK_OK(vf_prompt_parse(NULL, 0, &f));
    CHECK(f.n == 1 && f.items[0].len == 0 && f.items[0].weight == 1.0);
    vf_prompt_fragments_free(&f);

    /* Nesting: 256 open brackets of a kind are fine, 257 are not. */
    char deep[600];
    memset(deep, '(', 256);
    strcpy(deep + 256, "a");
    CHECK_OK(parse_str(deep, &f));
    CHECK(f.n == 1 && f.items[0].weight > 1e10 && isfinite(f.items[0].weight));
    vf_prompt_fragments_free(&f);
    memset(deep, '[', 257);
    strcpy(deep + 257, "a");
    CHECK(parse_str(deep, &f) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "'['") != NULL);

    /* Weights that overflow, directly or by nesting. */
    char big[700] = "(a:1";
    memset(big + 4, '0', 400);
    strcpy(big + 404, ")");
    CHECK(parse_str(big, &f) == VF_ERR_INVALID_ARG);
    /* 1e300 twice: each weight is finite, their product is not. */
    char e300[310] = "1";
    memset(e300 + 1, '0', 300);
    e300[301] = 0;
    snprintf(big, sizeof big, "((a:%s):%s)", e300, e300);
    CHECK(parse_str(big, &f) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "not finite") != NULL);
    /* A finite double past FLT_MAX would make the float32 embeddings inf
     * (found by fuzz_prompt; the input is kept in tests/fuzz/regressions). */
    CHECK(parse_str("(a:1000000000000000000000000000000000000000)", &f) == VF_ERR_INVALID_ARG); /* 1e39 */
    CHECK(strstr(vf_last_error(), "float32") != NULL);
}

/* A deterministic fuzz loop: random strings over the syntax's alphabet never
 * crash, and every success satisfies the list's invariants. */
static void test_parse_random(void)
{
    static const char alpha[] = "()[]\\:.+-0123456789 ,aBREAK\t";
    static const char *const multi[] = {"\xc3\xa9", "\xe3\x80\x80", "\xe2\x80\x83", "\xf0\x9f\x98\x80"};
    uint64_t s = 0x9e3779b97f4a7c15ull;
    int ok = 0, err = 0;
    char buf[256];
    for (int iter = 0; iter < 20000; iter++) {
        size_t n = 0, len;
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        len = (s >> 33) % 64;
        while (n < len) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            unsigned r = (unsigned)(s >> 33);
            if (r % 10 == 0) {
                const char *m = multi[(r / 10) % 4];
                memcpy(buf + n, m, strlen(m));
                n += strlen(m);
            } else if (r % 97 == 1) {
                buf[n++] = (char)(r >> 8); /* any byte: invalid UTF-8 sometimes */
            } else {
                buf[n++] = alpha[(r / 10) % (sizeof alpha - 1)];
            }
        }
        vf_prompt_fragments f;
        if (vf_prompt_parse(buf, n, &f) != VF_OK) {
            err++;
            CHECK(f.n == 0);
            continue;
        }
        ok++;
        int good = f.n >= 1;
        size_t total = 0;
        for (size_t i = 0; good && i < f.n; i++) {
            good = strlen(f.items[i].text) == f.items[i].len && isfinite(f.items[i].weight) &&
                   (i == 0 || f.items[i].weight != f.items[i - 1].weight) &&
                   vf_utf8_valid(f.items[i].text, f.items[i].len);
            total += f.items[i].len;
        }
        CHECK_MSG(good && total <= n + 5 * f.n, "case %d '%.*s'", iter, (int)n, buf);
        vf_prompt_fragments_free(&f);
    }
    CHECK(ok > 15000 && err > 0);
}

static void test_parse_plain(void)
{
    vf_prompt_fragments f;
    CHECK_OK(vf_prompt_parse_plain("(a:1.2) BREAK \\(", 16, &f));
    CHECK(f.n == 1 && strcmp(f.items[0].text, "(a:1.2) BREAK \\(") == 0 && f.items[0].weight == 1.0);
    vf_prompt_fragments_free(&f);
    CHECK(vf_prompt_parse_plain("\xc0\x80", 2, &f) == VF_ERR_INVALID_ARG);
}

static void test_syntax_names(void)
{
    vf_prompt_syntax s;
    CHECK_OK(vf_prompt_syntax_parse("A1111", &s));
    CHECK(s == VF_PROMPT_SYNTAX_A1111);
    CHECK_OK(vf_prompt_syntax_parse("plain", &s));
    CHECK(s == VF_PROMPT_SYNTAX_PLAIN);
    CHECK_OK(vf_prompt_syntax_parse("diffusers", &s));
    CHECK(s == VF_PROMPT_SYNTAX_DIFFUSERS);
    CHECK(vf_prompt_syntax_parse("compel", &s) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "compel") && strstr(vf_last_error(), "plain"));
    CHECK(strcmp(vf_prompt_syntax_name(VF_PROMPT_SYNTAX_PLAIN), "plain") == 0);
    CHECK(strcmp(vf_prompt_syntax_name((vf_prompt_syntax)7), "?") == 0);
}

/* ---- emphasis ------------------------------------------------------------------- */

static void test_emphasis(void)
{
    enum { D = 6 };
    float z[VF_CONTEXT_LEN * D], w[VF_CONTEXT_LEN];
    double want[VF_CONTEXT_LEN * D], before = 0, after = 0;
    for (int i = 0; i < VF_CONTEXT_LEN * D; i++) {
        z[i] = (float)sin(0.37 * i) + 0.2f;
        before += z[i];
    }
    for (int t = 0; t < VF_CONTEXT_LEN; t++)
        w[t] = t == 3 ? 1.5f : t == 4 ? 0.5f : t == 10 ? 1.21f : 1.0f;
    for (int i = 0; i < VF_CONTEXT_LEN * D; i++) {
        want[i] = (double)z[i] * w[i / D];
        after += want[i];
    }
    for (int i = 0; i < VF_CONTEXT_LEN * D; i++)
        want[i] *= before / after;
    vf_prompt_emphasis(z, D, w);
    double got_mean = 0, max_err = 0;
    for (int i = 0; i < VF_CONTEXT_LEN * D; i++) {
        got_mean += z[i];
        max_err = fmax(max_err, fabs(z[i] - want[i]));
    }
    CHECK_MSG(max_err < 1e-5, "max err %g", max_err);
    CHECK(fabs(got_mean - before) < 1e-3 * fabs(before));
    /* All weights 1: bit-identical. */
    float a[VF_CONTEXT_LEN * D], b[VF_CONTEXT_LEN * D], ones[VF_CONTEXT_LEN];
    for (int i = 0; i < VF_CONTEXT_LEN * D; i++)
        a[i] = b[i] = (float)cos(1.3 * i);
    for (int t = 0; t < VF_CONTEXT_LEN; t++)
        ones[t] = 1.0f;
    vf_prompt_emphasis(a, D, ones);
    CHECK(memcmp(a, b, sizeof a) == 0);
}

/* ---- windows ---------------------------------------------------------------------- */

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

/* A synthesized tokenizer (byte-level vocabulary) in a temp dir. */
static vf_tokenizer *synth_tokenizer(char *dir, const char *pad)
{
    strcpy(dir, "/tmp/vf_prompt_XXXXXX");
    vf_tokenizer *t = NULL;
    if (!mkdtemp(dir))
        return NULL;
    CHECK_OK(vf_synth_write_tokenizer(dir, pad));
    CHECK_OK(vf_tokenizer_load(dir, &t));
    return t;
}

/* Windows against the structure A1111 gives, on a vocabulary made here. */
static void test_windows_synth(void)
{
    char dir[64];
    vf_tokenizer *t = synth_tokenizer(dir, "!");
    if (!t)
        return;
    int32_t bos, eos, pad;
    vf_tokenizer_special_ids(t, &bos, &eos, &pad);
    CHECK(pad != eos);
    vf_prompt_windows w;
    /* Short and plain: exactly vf_tokenize_window. */
    int32_t ref[VF_CONTEXT_LEN];
    CHECK_OK(vf_prompt_windows_from_text(t, "a photo of a cat", VF_PROMPT_SYNTAX_A1111, &w));
    CHECK_OK(vf_tokenize_window(t, "a photo of a cat", ref));
    CHECK(w.n == 1 && !w.weighted && memcmp(w.ids, ref, sizeof ref) == 0);
    vf_prompt_windows_free(&w);
    /* BREAK: two windows, each BOS ... EOS pad. */
    CHECK_OK(vf_prompt_windows_from_text(t, "a cat BREAK (a dog:1.5)", VF_PROMPT_SYNTAX_A1111, &w));
    CHECK(w.n == 2 && w.weighted);
    for (int k = 0; k < w.n && k < 2; k++) {
        const int32_t *ids = w.ids + k * VF_CONTEXT_LEN;
        int e = 1;
        while (e < VF_CONTEXT_LEN && ids[e] != eos)
            e++;
        CHECK(ids[0] == bos && e > 1 && e < VF_CONTEXT_LEN && ids[VF_CONTEXT_LEN - 1] == pad);
        CHECK(w.weights[k * VF_CONTEXT_LEN] == 1.0f && w.weights[k * VF_CONTEXT_LEN + e] == 1.0f);
        for (int i = 1; i < e; i++)
            CHECK(w.weights[k * VF_CONTEXT_LEN + i] == (k ? 1.5f : 1.0f));
    }
    /* Padding to more windows appends the window of "". */
    CHECK_OK(vf_prompt_windows_pad(t, &w, 4));
    CHECK_OK(vf_tokenize_window(t, "", ref));
    CHECK(w.n == 4 && memcmp(w.ids + 3 * VF_CONTEXT_LEN, ref, sizeof ref) == 0);
    vf_prompt_windows_free(&w);
    /* DIFFUSERS truncates to one window; A1111 and PLAIN continue. */
    char *longp = vf_malloc(40000);
    longp[0] = 0;
    for (int i = 0; i < 3000; i++)
        strcat(longp, i % 7 ? "xy " : "zq, ");
    CHECK_OK(vf_prompt_windows_from_text(t, longp, VF_PROMPT_SYNTAX_DIFFUSERS, &w));
    CHECK(w.n == 1);
    vf_prompt_windows_free(&w);
    /* 3000 words of 1-2 tokens: over 53 windows is an error that says so. */
    CHECK(vf_prompt_windows_from_text(t, longp, VF_PROMPT_SYNTAX_PLAIN, &w) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "53 windows") != NULL);
    CHECK(w.n == 0 && w.ids == NULL);
    longp[600] = 0;
    CHECK_OK(vf_prompt_windows_from_text(t, longp, VF_PROMPT_SYNTAX_PLAIN, &w));
    CHECK(w.n >= 3 && w.n <= 10);
    vf_prompt_windows_free(&w);
    /* A syntax error surfaces from the parser. */
    CHECK(vf_prompt_windows_from_text(t, "(a:1.2.3)", VF_PROMPT_SYNTAX_A1111, &w) == VF_ERR_INVALID_ARG);
    CHECK_OK(vf_prompt_windows_from_text(t, "(a:1.2.3)", VF_PROMPT_SYNTAX_PLAIN, &w));
    vf_prompt_windows_free(&w);
    vf_free(longp);
    vf_tokenizer_free(t);
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

static vf_tokenizer *shared_tokenizer(const char *shared, const char *name)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/reference/%s", shared,
             strcmp(name, "sd15") == 0 ? "tiny-sd15/diffusers/tokenizer" : "tiny-sdxl/diffusers/tokenizer_2");
    vf_tokenizer *t = NULL;
    CHECK_OK(vf_tokenizer_load(path, &t));
    return t;
}

static int json_ints_equal(const cJSON *a, const int32_t *ids, int n)
{
    if (cJSON_GetArraySize(a) != n)
        return 0;
    for (int i = 0; i < n; i++)
        if (cJSON_GetArrayItem(a, i)->valueint != ids[i])
            return 0;
    return 1;
}

/* Windows id for id and weight for weight against the A1111 re-implementation. */
static void test_windows_fixture(void)
{
    const char *shared = vf_test_shared();
    if (!shared) {
        printf("  skipped: ../shared/reference not found (set VF_SHARED)\n");
        return;
    }
    vf_tokenizer *tok[2] = {shared_tokenizer(shared, "sd15"), shared_tokenizer(shared, "sdxl_2")};
    cJSON *j = load_cases();
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "windows")) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        vf_tokenizer *t = tok[strcmp(cJSON_GetObjectItem(c, "tokenizer")->valuestring, "sd15") != 0];
        vf_prompt_syntax syn;
        CHECK_OK(vf_prompt_syntax_parse(cJSON_GetObjectItem(c, "syntax")->valuestring, &syn));
        const cJSON *ids = cJSON_GetObjectItem(c, "ids"), *ws = cJSON_GetObjectItem(c, "weights");
        vf_prompt_windows w;
        CHECK_OK(vf_prompt_windows_from_text(t, text, syn, &w));
        CHECK_MSG(w.n == cJSON_GetArraySize(ids), "'%.40s': %d windows, want %d", text, w.n,
                  cJSON_GetArraySize(ids));
        CHECK_MSG(w.token_count == cJSON_GetObjectItem(c, "token_count")->valueint, "'%.40s': %d tokens", text,
                  w.token_count);
        for (int k = 0; k < w.n && k < cJSON_GetArraySize(ids); k++) {
            CHECK_MSG(json_ints_equal(cJSON_GetArrayItem(ids, k), w.ids + k * VF_CONTEXT_LEN, VF_CONTEXT_LEN),
                      "'%.40s' window %d ids", text, k);
            const cJSON *wk = cJSON_GetArrayItem(ws, k);
            for (int i = 0; i < VF_CONTEXT_LEN; i++)
                CHECK_MSG(w.weights[k * VF_CONTEXT_LEN + i] == (float)cJSON_GetArrayItem(wk, i)->valuedouble,
                          "'%.40s' window %d weight %d", text, k, i);
        }
        vf_prompt_windows_free(&w);
        n++;
    }
    CHECK(n >= 19);
    cJSON_Delete(j);
    vf_tokenizer_free(tok[0]);
    vf_tokenizer_free(tok[1]);
}

/* ---- encoding ------------------------------------------------------------------------ */

static float *read_tensor(vf_st_file *f, const char *name, size_t *n)
{
    const vf_st_tensor *t = vf_st_find(f, name);
    *n = 0;
    if (!t || t->dtype != VF_DTYPE_F32) {
        CHECK_MSG(0, "fixture tensor %s missing", name);
        return NULL;
    }
    float *v = malloc(t->nbytes);
    CHECK_OK(vf_st_read(f, t, 0, v, t->nbytes));
    *n = t->nbytes / sizeof(float);
    return v;
}

static vf_model *open_tiny(const char *shared, const char *name)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/reference/%s/diffusers", shared, name);
    vf_model *m = NULL;
    CHECK_OK(vf_model_open(dir, NULL, &m));
    return m;
}

static void compare(vf_st_file *f, const char *cname, const char *key, const float *got, size_t n)
{
    char name[128], what[160];
    snprintf(name, sizeof name, "%s.%s", cname, key);
    size_t wn;
    float *want = read_tensor(f, name, &wn);
    CHECK_MSG(want && wn == n, "%s: %zu values, want %zu", name, n, wn);
    snprintf(what, sizeof what, "%s", name);
    if (want && wn == n && CHECK_CLOSE(what, got, want, n, 1e-4)) {
        double m = 0, r = 0;
        for (size_t i = 0; i < n; i++) {
            m = fmax(m, fabs(got[i] - want[i]));
            r = fmax(r, fabs(want[i]));
        }
        printf("  %-44s max rel err %.2g\n", name, r > 0 ? m / r : m);
    }
    free(want);
}

/* Whole prompts through the tiny models: windows, emphasis, padding, pooled. */
static void test_encode_fixture(void)
{
    const char *shared = vf_test_shared();
    if (!shared) {
        printf("  skipped: ../shared/reference not found (set VF_SHARED)\n");
        return;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/prompt/encode_cases.safetensors", vf_test_data());
    vf_st_file *f = NULL;
    CHECK_OK(vf_st_open(path, &f));
    cJSON *j = load_cases();
    vf_model *m[2] = {open_tiny(shared, "tiny-sd15"), open_tiny(shared, "tiny-sdxl")};
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "encode")) {
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        int xl = strcmp(cJSON_GetObjectItem(c, "model")->valuestring, "tiny-sdxl") == 0;
        vf_embeddings *e = NULL;
        CHECK_OK(vf_encode_prompt(m[xl], cJSON_GetObjectItem(c, "prompt")->valuestring,
                                  cJSON_GetObjectItem(c, "negative")->valuestring, &e));
        if (!e)
            continue;
        CHECK(e->seq_len == cJSON_GetObjectItem(c, "seq_len")->valueint);
        size_t L = (size_t)e->seq_len * e->dim;
        compare(f, name, "prompt_embeds", e->prompt, L);
        compare(f, name, "negative_prompt_embeds", e->negative, L);
        if (xl) {
            compare(f, name, "pooled_prompt_embeds", e->pooled, (size_t)e->pooled_dim);
            compare(f, name, "negative_pooled_prompt_embeds", e->negative_pooled, (size_t)e->pooled_dim);
        }
        vf_embeddings_free(e);
        n++;
    }
    CHECK(n == 4);
    vf_model_close(m[0]);
    vf_model_close(m[1]);
    cJSON_Delete(j);
    vf_st_close(f);
}

/* The default syntax on a prompt without syntax is today's path, bit for bit;
 * PLAIN's first window of a long prompt without commas is DIFFUSERS' only one. */
static void test_encode_identity(void)
{
    const char *shared = vf_test_shared();
    if (!shared) {
        printf("  skipped: ../shared/reference not found (set VF_SHARED)\n");
        return;
    }
    for (int xl = 0; xl < 2; xl++) {
        vf_model *m = open_tiny(shared, xl ? "tiny-sdxl" : "tiny-sd15");
        vf_embeddings *a = NULL, *b = NULL;
        const char *p = "a photo of a cat wearing a tiny hat", *neg = "blurry, low quality";
        CHECK_OK(vf_encode_prompt(m, p, neg, &a));
        CHECK_OK(vf_encode_prompt_ex(m, p, neg, VF_PROMPT_SYNTAX_DIFFUSERS, &b));
        if (a && b) {
            size_t L = (size_t)a->seq_len * a->dim;
            CHECK(a->seq_len == 77 && b->seq_len == 77);
            CHECK(memcmp(a->prompt, b->prompt, L * sizeof(float)) == 0);
            CHECK(memcmp(a->negative, b->negative, L * sizeof(float)) == 0);
            CHECK(!xl || memcmp(a->pooled, b->pooled, (size_t)a->pooled_dim * sizeof(float)) == 0);
        }
        vf_embeddings_free(a);
        vf_embeddings_free(b);
        char longp[2000] = "";
        for (int i = 0; i < 120; i++)
            strcat(longp, i % 2 ? "tree " : "(house) ");
        CHECK_OK(vf_encode_prompt_ex(m, longp, NULL, VF_PROMPT_SYNTAX_PLAIN, &a));
        CHECK_OK(vf_encode_prompt_ex(m, longp, NULL, VF_PROMPT_SYNTAX_DIFFUSERS, &b));
        if (a && b) {
            CHECK(a->seq_len == 4 * 77 && b->seq_len == 77);
            CHECK(memcmp(a->prompt, b->prompt, (size_t)77 * b->dim * sizeof(float)) == 0);
            CHECK(memcmp(a->prompt + (size_t)77 * b->dim, b->prompt, (size_t)77 * b->dim * sizeof(float)) != 0);
            /* The negative (""; zeros for SDXL's force_zeros) is padded to 4 windows. */
            size_t W = (size_t)77 * a->dim;
            CHECK(memcmp(a->negative, a->negative + 3 * W, W * sizeof(float)) == 0);
        }
        vf_embeddings_free(a);
        vf_embeddings_free(b);
        /* A bad weight in the negative says so. */
        CHECK(vf_encode_prompt(m, "a", "(b:1..2)", &a) == VF_ERR_INVALID_ARG);
        CHECK_MSG(strncmp(vf_last_error(), "negative prompt: weight", 23) == 0, "%s", vf_last_error());
        CHECK(vf_encode_prompt_ex(m, "a", NULL, (vf_prompt_syntax)9, &a) == VF_ERR_INVALID_ARG);
        vf_model_close(m);
    }
}

TEST_MAIN(TEST(test_parse_fixture), TEST(test_parse_errors), TEST(test_parse_rejects), TEST(test_parse_random),
          TEST(test_parse_plain), TEST(test_syntax_names), TEST(test_emphasis), TEST(test_windows_synth),
          TEST(test_windows_fixture), TEST(test_encode_fixture), TEST(test_encode_identity))
