/* CLIP tokenizer: every case of the shared tokenizer_cases.json and of
 * tests/data/tokenizer_extra_cases.json (made by tools/gen_tokenizer_cases.py
 * with HF's slow CLIPTokenizer) must give HF's ids exactly, from the diffusers
 * folders and from OpenAI's .gz; the tiny pipelines' reference ids too. Then
 * BPE corner cases on a synthetic vocabulary, malformed files, bad prompts,
 * 1 MiB prompts, the cache bound and allocation failures at every step.
 */
#include "core/alloc.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "pipeline/tokenizer.h"
#include "test.h"
#include "test_tmp.h"

#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define BOS 49406
#define EOS 49407

/* ---- helpers ------------------------------------------------------------------ */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static char g_path[4096];

static const char *ref_path(const char *shared, const char *rel)
{
    snprintf(g_path, sizeof g_path, "%s/reference/%s", shared, rel);
    return g_path;
}

static vf_tokenizer *load_ref(const char *shared, const char *rel)
{
    vf_tokenizer *t = NULL;
    CHECK_OK(vf_tokenizer_load(ref_path(shared, rel), &t));
    return t;
}

/* Parses a JSON file of any top-level kind. */
static cJSON *json_file(const char *path)
{
    char *text = NULL;
    size_t len = 0;
    CHECK_OK(vf_read_file(path, 64u << 20, &text, &len));
    cJSON *j = text ? cJSON_ParseWithLength(text, len) : NULL;
    CHECK_MSG(j != NULL, "%s does not parse", path);
    vf_free(text);
    return j;
}

static size_t ids_from_json(const cJSON *a, int32_t *out, size_t cap)
{
    size_t n = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, a)
    {
        if (n < cap)
            out[n] = (int32_t)v->valuedouble;
        n++;
    }
    return n;
}

static void print_ids(const char *what, const int32_t *ids, size_t n)
{
    fprintf(stderr, "  %s:", what);
    for (size_t i = 0; i < n && i < 40; i++)
        fprintf(stderr, " %d", (int)ids[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

#define MAX_IDS 4096

/* t must give want (untruncated, with BOS/EOS) for text, and the window HF
 * derives from it: BOS, the first 75 tokens, EOS, pad. Returns 1 when equal. */
static int check_text(vf_tokenizer *t, const char *text, const int32_t *want, size_t nwant,
                      int32_t pad, const char *label)
{
    static int32_t got[MAX_IDS];
    int32_t win[VF_CONTEXT_LEN], wwin[VF_CONTEXT_LEN];
    size_t n = 0, k = 0;
    CHECK_OK(vf_tokenize(t, text, got, MAX_IDS, &n));
    int ok = n == nwant && memcmp(got, want, n * sizeof *got) == 0;
    CHECK_MSG(ok, "%s: untruncated ids differ for \"%.60s\" (%zu vs %zu ids)", label, text, n,
              nwant);
    if (!ok) {
        print_ids("got ", got, n);
        print_ids("want", want, nwant);
    }
    wwin[k++] = BOS;
    for (size_t i = 1; i + 1 < nwant && k < VF_CONTEXT_LEN - 1; i++)
        wwin[k++] = want[i];
    wwin[k++] = EOS;
    while (k < VF_CONTEXT_LEN)
        wwin[k++] = pad;
    CHECK_OK(vf_tokenize_window(t, text, win));
    int wok = memcmp(win, wwin, sizeof win) == 0;
    CHECK_MSG(wok, "%s: window differs for \"%.60s\"", label, text);
    return ok && wok;
}

static void write_gz(const char *path, const char *text, size_t n)
{
    gzFile f = gzopen(path, "wb");
    CHECK(f != NULL);
    if (!f)
        return;
    CHECK(gzwrite(f, text, (unsigned)n) == (int)n);
    gzclose(f);
}

/* A small vocabulary in HF's layout: printable ASCII c and "c</w>" (ids 0..187),
 * extra strings, then <|startoftext|> and <|endoftext|>. */
static void write_vocab(const char *path, const char *const *extra, int nextra)
{
    cJSON *o = cJSON_CreateObject();
    int id = 0;
    char s[8];
    for (int w = 0; w < 2; w++) {
        for (int c = 33; c < 127; c++) {
            snprintf(s, sizeof s, "%c%s", c, w ? "</w>" : "");
            cJSON_AddNumberToObject(o, s, id++);
        }
    }
    for (int i = 0; i < nextra; i++)
        cJSON_AddNumberToObject(o, extra[i], id++);
    cJSON_AddNumberToObject(o, "<|startoftext|>", id++);
    cJSON_AddNumberToObject(o, "<|endoftext|>", id++);
    char *text = cJSON_PrintUnformatted(o);
    write_text(path, text);
    free(text);
    cJSON_Delete(o);
}

/* The synthetic tokenizer the BPE and fault tests share. Ranks: 0 "b c</w>",
 * 1 "ab a", 2 "a b", 3 "a a", 4 "aa a</w>", 5 "x y", 6 "ab ab". */
#define SYN_NEXTRA 7
static const char *const SYN_EXTRA[SYN_NEXTRA] = {"aba", "ab", "aa", "aaa</w>", "bc</w>", "xy", "abab"};
static const char SYN_MERGES[] =
    "#version: 0.2\nb c</w>\nab a\na b\na a\naa a</w>\nx y\nab ab\n";

static int32_t syn_id(const char *s)
{
    if (s[0] && !s[1])
        return s[0] - 33;
    if (s[0] && strcmp(s + 1, "</w>") == 0)
        return 94 + s[0] - 33;
    for (int i = 0; i < SYN_NEXTRA; i++)
        if (strcmp(SYN_EXTRA[i], s) == 0)
            return 188 + i;
    if (strcmp(s, "<|startoftext|>") == 0)
        return 188 + SYN_NEXTRA;
    return strcmp(s, "<|endoftext|>") == 0 ? 188 + SYN_NEXTRA + 1 : -1;
}

static void write_synthetic(tmpd *d)
{
    write_vocab(tmp_path(d, "vocab.json"), SYN_EXTRA, SYN_NEXTRA);
    write_text(tmp_path(d, "merges.txt"), SYN_MERGES);
}

/* ---- the reference cases -------------------------------------------------------- */

static void run_reference_cases(vf_tokenizer *t, const cJSON *cases, const char *label)
{
    static int32_t want[MAX_IDS];
    int32_t want_win[VF_CONTEXT_LEN], win[VF_CONTEXT_LEN];
    int n = 0, good = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases)
    {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        size_t nw = ids_from_json(cJSON_GetObjectItem(c, "ids_untruncated"), want, MAX_IDS);
        CHECK(ids_from_json(cJSON_GetObjectItem(c, "ids"), want_win, VF_CONTEXT_LEN) == 77);
        good += check_text(t, text, want, nw, EOS, label);
        CHECK_OK(vf_tokenize_window(t, text, win));
        CHECK_MSG(memcmp(win, want_win, sizeof win) == 0, "%s: window != \"ids\" for \"%.40s\"",
                  label, text);
        n++;
    }
    printf("  %s: %d/%d reference cases exact\n", label, good, n);
    CHECK(n >= 13);
}

static void test_reference_cases(void)
{
    SKIP_WITHOUT_SHARED(shared);
    cJSON *cases = json_file(ref_path(shared, "tokenizer_cases.json"));
    vf_tokenizer *dir = load_ref(shared, "tiny-sd15/diffusers/tokenizer");
    vf_tokenizer *gz = load_ref(shared, "clip/bpe_simple_vocab_16e6.txt.gz");
    if (cases && dir && gz) {
        run_reference_cases(dir, cases, "vocab.json");
        run_reference_cases(gz, cases, ".gz");
    }
    vf_tokenizer_free(dir);
    vf_tokenizer_free(gz);
    cJSON_Delete(cases);
}

static void run_extra(vf_tokenizer *t, const cJSON *cases, const char *key, int32_t pad,
                      const char *label)
{
    static int32_t want[MAX_IDS];
    int n = 0, good = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases)
    {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        size_t nw = ids_from_json(cJSON_GetObjectItem(c, key), want, MAX_IDS);
        CHECK(nw <= MAX_IDS);
        good += check_text(t, text, want, nw, pad, label);
        n++;
    }
    printf("  %s: %d/%d extra cases exact\n", label, good, n);
    CHECK(n > 300);
}

static void test_extra_cases(void)
{
    SKIP_WITHOUT_SHARED(shared);
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_extra_cases.json", vf_test_data());
    cJSON *doc = json_file(path);
    const cJSON *cases = doc ? cJSON_GetObjectItem(doc, "cases") : NULL;
    vf_tokenizer *dir = load_ref(shared, "tiny-sd15/diffusers/tokenizer");
    vf_tokenizer *gz = load_ref(shared, "clip/bpe_simple_vocab_16e6.txt.gz");
    vf_tokenizer *t2 = load_ref(shared, "tiny-sdxl/diffusers/tokenizer_2");
    if (cases && dir && gz && t2) {
        run_extra(dir, cases, "ids", EOS, "sd15 tokenizer");
        run_extra(gz, cases, "ids", EOS, ".gz");
        run_extra(t2, cases, "ids_2", 0, "sdxl tokenizer_2");
    }
    vf_tokenizer_free(dir);
    vf_tokenizer_free(gz);
    vf_tokenizer_free(t2);
    cJSON_Delete(doc);
}

/* ids stored as F32 [1,77] in a reference.safetensors. */
static void check_reference_ids(const char *st_path, const char *key, vf_tokenizer *t,
                                const char *prompt)
{
    vf_st_file *f = NULL;
    float want[VF_CONTEXT_LEN];
    int32_t got[VF_CONTEXT_LEN];
    CHECK_OK(vf_st_open(st_path, &f));
    if (!f)
        return;
    const vf_st_tensor *x = vf_st_find(f, key);
    CHECK_MSG(x && x->dtype == VF_DTYPE_F32 && x->nbytes == sizeof want, "%s: %s", st_path, key);
    if (x && x->nbytes == sizeof want) {
        CHECK_OK(vf_st_read(f, x, 0, want, sizeof want));
        CHECK_OK(vf_tokenize_window(t, prompt, got));
        int same = 1;
        for (int i = 0; i < VF_CONTEXT_LEN; i++)
            same &= (float)got[i] == want[i];
        CHECK_MSG(same, "%s: %s differs", st_path, key);
        printf("  %s %s: %d %d %d ... %d %d (exact: %s)\n", strstr(st_path, "tiny-"), key,
               (int)got[0], (int)got[1], (int)got[2], (int)got[75], (int)got[76],
               same ? "yes" : "no");
    }
    vf_st_close(f);
}

static void test_pipeline_reference_ids(void)
{
    SKIP_WITHOUT_SHARED(shared);
    char st[4096];
    cJSON *rj = json_file(ref_path(shared, "tiny-sdxl/reference.json"));
    const char *prompt = rj ? cJSON_GetObjectItem(rj, "prompt")->valuestring : NULL;
    CHECK(prompt && strcmp(prompt, "a photo of a cat wearing a tiny hat") == 0);
    vf_tokenizer *l = load_ref(shared, "tiny-sdxl/diffusers/tokenizer");
    vf_tokenizer *g = load_ref(shared, "tiny-sdxl/diffusers/tokenizer_2");
    vf_tokenizer *s = load_ref(shared, "tiny-sd15/diffusers/tokenizer");
    if (prompt && l && g && s) {
        snprintf(st, sizeof st, "%s", ref_path(shared, "tiny-sdxl/reference.safetensors"));
        check_reference_ids(st, "ids_l", l, prompt);
        check_reference_ids(st, "ids_g", g, prompt);
        snprintf(st, sizeof st, "%s", ref_path(shared, "tiny-sd15/reference.safetensors"));
        check_reference_ids(st, "ids", s, prompt);
    }
    vf_tokenizer_free(l);
    vf_tokenizer_free(g);
    vf_tokenizer_free(s);
    cJSON_Delete(rj);
}

static void test_special_ids_and_load_time(void)
{
    SKIP_WITHOUT_SHARED(shared);
    static const struct {
        const char *rel;
        int32_t pad;
    } cases[] = {{"tiny-sd15/diffusers/tokenizer", EOS},
                 {"tiny-sdxl/diffusers/tokenizer", EOS},
                 {"tiny-sdxl/diffusers/tokenizer_2", 0},
                 {"clip/bpe_simple_vocab_16e6.txt.gz", EOS}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double t0 = now_ms();
        vf_tokenizer *t = load_ref(shared, cases[i].rel);
        double ms = now_ms() - t0;
        int32_t bos = -9, eos = -9, pad = -9;
        vf_tokenizer_special_ids(t, &bos, &eos, &pad);
        CHECK(bos == BOS && eos == EOS && pad == cases[i].pad);
        CHECK(vf_tokenizer_vocab_size(t) == 49408);
        printf("  %s: loaded in %.0f ms (pad %d)\n", cases[i].rel, ms, (int)pad);
        /* Well under a second in a release build; sanitizers cost a few times. */
        CHECK_MSG(ms < 3000, "loading took %.0f ms", ms);
        vf_tokenizer_free(t);
    }
}

/* ---- BPE semantics on a synthetic vocabulary --------------------------------------- */

static void expect_syn(vf_tokenizer *t, const char *text, const char *const *syms, int n)
{
    int32_t want[16], got[16];
    size_t ng = 0;
    want[0] = syn_id("<|startoftext|>");
    for (int i = 0; i < n; i++)
        want[i + 1] = syn_id(syms[i]);
    want[n + 1] = syn_id("<|endoftext|>");
    CHECK_OK(vf_tokenize(t, text, got, 16, &ng));
    int ok = ng == (size_t)n + 2 && memcmp(got, want, ng * sizeof *got) == 0;
    CHECK_MSG(ok, "synthetic BPE of \"%s\"", text);
    if (!ok) {
        print_ids("got ", got, ng);
        print_ids("want", want, (size_t)n + 2);
    }
}

static void test_bpe_semantics(void)
{
    tmpd d;
    if (!tmp_open(&d, "tok"))
        return;
    write_synthetic(&d);
    vf_tokenizer *t = NULL;
    CHECK_OK(vf_tokenizer_load(d.dir, &t));
    if (t) {
        CHECK(vf_tokenizer_vocab_size(t) == 188 + SYN_NEXTRA + 2);
        /* HF merges every occurrence of the best pair in one pass before looking
         * at the pairs that creates: "a b a b x" -> "ab ab x" -> "abab x",
         * although the new pair (ab, a) outranks (a, b) and would give "aba b x". */
        expect_syn(t, "ababx", (const char *const[]){"abab", "x</w>"}, 2);
        /* Then (ab, a) before (ab, ab): "ab ab ab a b</w>" -> "ab ab aba b</w>". */
        expect_syn(t, "abababab", (const char *const[]){"abab", "aba", "b</w>"}, 3);
        expect_syn(t, "aaaaaaaaaaa", (const char *const[]){"aa", "aa", "aa", "aa", "aaa</w>"}, 5);
        /* Left to right, no overlap: (a a a a</w>) -> (aa a a</w>); then nothing.
         * These expectations come from HF's CLIPTokenizer.bpe run on this vocabulary. */
        expect_syn(t, "aaaa", (const char *const[]){"aa", "a", "a</w>"}, 3);
        expect_syn(t, "aaa", (const char *const[]){"aaa</w>"}, 1);
        /* Rank order, not position: (b c</w>) before (a b). */
        expect_syn(t, "abc", (const char *const[]){"a", "bc</w>"}, 2);
        expect_syn(t, "xy xyz", (const char *const[]){"x", "y</w>", "xy", "z</w>"}, 4);
        expect_syn(t, "a!", (const char *const[]){"a</w>", "!</w>"}, 2);
        /* A byte symbol missing from the vocabulary becomes the unk id. */
        int32_t ids[8];
        size_t n = 0;
        CHECK_OK(vf_tokenize(t, "\xc3\xa9", ids, 8, &n));
        CHECK(n == 4 && ids[1] == syn_id("<|endoftext|>") && ids[2] == ids[1]);
    }
    vf_tokenizer_free(t);
    tmp_close(&d);
}

/* The .gz layout: ids are bytes, bytes + </w>, merges, specials. */
static void test_gz_synthetic(void)
{
    tmpd d;
    if (!tmp_open(&d, "tok"))
        return;
    static const char merges[] = "\"bpe_simple_vocab_16e6.txt#version: 0.2\nh e\nl l\nhe ll\nhell o</w>\n";
    write_gz(tmp_path(&d, "bpe.txt.gz"), merges, strlen(merges));
    vf_tokenizer *t = NULL;
    CHECK_OK(vf_tokenizer_load(d.path, &t));
    if (t) {
        int32_t ids[8], bos, eos, pad;
        size_t n = 0;
        vf_tokenizer_special_ids(t, &bos, &eos, &pad);
        CHECK(bos == 516 && eos == 517 && pad == 517 && vf_tokenizer_vocab_size(t) == 518);
        CHECK_OK(vf_tokenize(t, "Hello hi!", ids, 8, &n));
        /* hello</w> = merge 3 (id 515); h = 'h' - 33; i</w> = 256 + 'i' - 33. */
        CHECK(n == 6 && ids[1] == 515 && ids[2] == 'h' - 33 && ids[3] == 256 + 'i' - 33 &&
              ids[4] == 256 + '!' - 33);
    }
    vf_tokenizer_free(t);
    tmp_close(&d);
}

/* ---- arguments, prompts and limits --------------------------------------------- */

static void test_arguments(void)
{
    tmpd d;
    if (!tmp_open(&d, "tok"))
        return;
    write_synthetic(&d);
    vf_tokenizer *t = NULL;
    int32_t ids[VF_CONTEXT_LEN];
    size_t n = 7;
    CHECK(vf_tokenizer_load(NULL, &t) == VF_ERR_INVALID_ARG && !t);
    CHECK(vf_tokenizer_load(d.dir, NULL) == VF_ERR_INVALID_ARG);
    CHECK(vf_tokenizer_load_files(NULL, "m", NULL, &t) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "vocab_json") != NULL);
    CHECK(vf_tokenizer_load_files("v", NULL, NULL, &t) == VF_ERR_INVALID_ARG);
    CHECK_OK(vf_tokenizer_load(d.dir, &t));
    CHECK(vf_tokenize(NULL, "a", ids, 4, &n) == VF_ERR_INVALID_ARG && n == 0);
    CHECK(strstr(vf_last_error(), "tokenizer") != NULL);
    CHECK(vf_tokenize(t, NULL, ids, 4, &n) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "prompt") != NULL);
    CHECK(vf_tokenize(t, "a", NULL, 4, &n) == VF_ERR_INVALID_ARG);
    CHECK(vf_tokenize(t, "a", ids, 4, NULL) == VF_ERR_INVALID_ARG);
    CHECK(vf_tokenize_window(NULL, "a", ids) == VF_ERR_INVALID_ARG);
    CHECK(vf_tokenize_window(t, NULL, ids) == VF_ERR_INVALID_ARG);
    CHECK(vf_tokenize_window(t, "a", NULL) == VF_ERR_INVALID_ARG);
    /* cap: the count is always the full one, only cap ids are written. */
    CHECK_OK(vf_tokenize(t, "a b c d", NULL, 0, &n));
    CHECK(n == 6);
    for (int i = 0; i < 4; i++)
        ids[i] = -5;
    CHECK_OK(vf_tokenize(t, "a b c d", ids, 2, &n));
    CHECK(n == 6 && ids[0] == syn_id("<|startoftext|>") && ids[1] == syn_id("a</w>") &&
          ids[2] == -5);
    vf_tokenizer_special_ids(NULL, NULL, NULL, NULL);
    vf_tokenizer_free(NULL);
    vf_tokenizer_free(t);
    tmp_close(&d);
}

static void test_bad_prompts(void)
{
    tmpd d;
    if (!tmp_open(&d, "tok"))
        return;
    write_synthetic(&d);
    vf_tokenizer *t = NULL;
    CHECK_OK(vf_tokenizer_load(d.dir, &t));
    static const char *const bad[] = {"a\x80z", "\xc3", "\xc0\xaf", "\xed\xa0\x80", "ok \xf8\x88\x80\x80\x80",
                                      "\xf4\x90\x80\x80"};
    int32_t ids[VF_CONTEXT_LEN];
    size_t n = 9;
    for (size_t i = 0; t && i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(vf_tokenize(t, bad[i], ids, VF_CONTEXT_LEN, &n) == VF_ERR_INVALID_ARG && n == 0);
        CHECK(strstr(vf_last_error(), "prompt") && strstr(vf_last_error(), "UTF-8"));
        CHECK(vf_tokenize_window(t, bad[i], ids) == VF_ERR_INVALID_ARG);
    }
    /* Exactly the limit is accepted, one byte more is not. */
    size_t cap = VF_TOKENIZER_MAX_PROMPT;
    char *big = malloc(cap + 2);
    memset(big, 'a', cap + 1);
    big[cap + 1] = '\0';
    CHECK(t && vf_tokenize(t, big, NULL, 0, &n) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "prompt") && strstr(vf_last_error(), "limit"));
    CHECK(t && vf_tokenize_window(t, big, ids) == VF_ERR_INVALID_ARG);
    big[cap] = '\0';
    double t0 = now_ms();
    CHECK_OK(vf_tokenize(t, big, NULL, 0, &n));
    /* 2^20 - 1 "a" and one "a</w>": "a a" pairs them left to right, leaving
     * 2^19 - 1 "aa", one "a" and the "a</w>" ("aa a</w>" never applies). */
    CHECK(n == cap / 2 + 3);
    printf("  one 1 MiB word (synthetic BPE): %.0f ms\n", now_ms() - t0);
    free(big);
    vf_tokenizer_free(t);
    tmp_close(&d);
}

static void test_big_prompts(void)
{
    SKIP_WITHOUT_SHARED(shared);
    vf_tokenizer *t = load_ref(shared, "tiny-sd15/diffusers/tokenizer");
    size_t cap = VF_TOKENIZER_MAX_PROMPT, n = 0;
    char *big = malloc(cap + 1);
    int32_t *ids = malloc((cap + 2) * sizeof *ids), win[VF_CONTEXT_LEN];
    for (size_t i = 0; i < cap; i++)
        big[i] = "word "[i % 5];
    big[cap] = '\0';
    double t0 = now_ms();
    CHECK_OK(vf_tokenize(t, big, ids, cap + 2, &n));
    double ms = now_ms() - t0;
    size_t words = (cap + 4) / 5, bad = 0; /* the last one is a lone "w" */
    CHECK(n == words + 2);
    for (size_t i = 1; i + 2 < n && i < words; i++)
        bad += ids[i] != 2653;
    CHECK(bad == 0 && n > 3 && ids[n - 2] == 86 + 256);
    printf("  1 MiB of words: %zu ids in %.0f ms\n", n, ms);
    t0 = now_ms();
    CHECK_OK(vf_tokenize_window(t, big, win));
    printf("  its window: %.1f ms\n", now_ms() - t0);
    CHECK(win[0] == BOS && win[1] == 2653 && win[75] == 2653 && win[76] == EOS);

    /* One 1 MiB word of pseudo-random letters: BPE must stay O(n log n). */
    uint32_t x = 12345;
    for (size_t i = 0; i < cap; i++) {
        x = x * 1103515245u + 12345u;
        big[i] = (char)('a' + (x >> 16) % 26);
    }
    t0 = now_ms();
    CHECK_OK(vf_tokenize(t, big, ids, cap + 2, &n));
    ms = now_ms() - t0;
    printf("  one 1 MiB random word: %zu ids in %.0f ms\n", n, ms);
    CHECK(n > 2 && n < cap && ids[0] == BOS && ids[n - 1] == EOS);
    CHECK_MSG(ms < 60000, "%.0f ms", ms);
    /* The same 300 letters alone and as the start of the word agree up to where
     * the word's merges can reach (a spot check that long words are not cut). */
    big[300] = '\0';
    size_t n300 = 0;
    CHECK_OK(vf_tokenize(t, big, NULL, 0, &n300));
    CHECK(n300 > 40 && n300 < 300);
    free(big);
    free(ids);
    vf_tokenizer_free(t);
}

static void test_cache_bound(void)
{
    tmpd d;
    if (!tmp_open(&d, "tok"))
        return;
    write_synthetic(&d);
    vf_tokenizer *t = NULL;
    CHECK_OK(vf_tokenizer_load(d.dir, &t));
    if (!t) {
        tmp_close(&d);
        return;
    }
    int32_t first[8], again[8];
    size_t n1 = 0, n2 = 0, most = 0;
    CHECK_OK(vf_tokenize(t, "ababx aaaa", first, 8, &n1));
    CHECK(vf_tokenizer_cache_entries(t) == 2);
    /* 40000 distinct words: more than the cache holds, so it empties and refills. */
    char *text = malloc(40000 * 8);
    size_t k = 0;
    for (int i = 0; i < 40000; i++)
        k += (size_t)sprintf(text + k, "%c%c%c%c ", 'a' + i % 26, 'a' + i / 26 % 26,
                             'a' + i / 676 % 26, 'a' + i / 17576 % 26);
    for (int pass = 0; pass < 2; pass++) {
        size_t n = 0;
        CHECK_OK(vf_tokenize(t, text, NULL, 0, &n));
        CHECK(n > 40000);
        if (vf_tokenizer_cache_entries(t) > most)
            most = vf_tokenizer_cache_entries(t);
    }
    CHECK(most > 0 && most <= (1u << 14));
    CHECK_OK(vf_tokenize(t, "ababx aaaa", again, 8, &n2));
    CHECK(n1 == n2 && memcmp(first, again, n1 * sizeof *first) == 0);
    free(text);
    vf_tokenizer_free(t);
    tmp_close(&d);
}

/* ---- malformed files -------------------------------------------------------------- */

typedef struct {
    const char *what;
    const char *vocab;  /* NULL: the synthetic vocab */
    const char *merges; /* NULL: the synthetic merges */
    const char *config; /* NULL: none */
    vf_status want;
    const char *msg; /* a substring of the error */
} bad_case;

static void test_malformed_files(void)
{
    static const bad_case cases[] = {
        {"vocab not JSON", "{\"a\": 1,", NULL, NULL, VF_ERR_FORMAT, "vocab.json"},
        {"vocab not an object", "[1, 2]", NULL, NULL, VF_ERR_FORMAT, "not an object"},
        {"vocab empty", "{}", NULL, NULL, VF_ERR_FORMAT, "vocab.json"},
        {"vocab id a string", "{\"a\": \"1\"}", NULL, NULL, VF_ERR_FORMAT, "token 'a'"},
        {"vocab id fractional", "{\"a\": 1.5}", NULL, NULL, VF_ERR_FORMAT, "token 'a'"},
        {"vocab id negative", "{\"a\": -1}", NULL, NULL, VF_ERR_FORMAT, "token 'a'"},
        {"vocab id too large", "{\"a\": 3e9}", NULL, NULL, VF_ERR_FORMAT, "integer"},
        {"vocab not UTF-8", "{\"\xff\": 1}", NULL, NULL, VF_ERR_FORMAT, "UTF-8"},
        {"merge of one symbol", NULL, "#version: 0.2\na b\nab\n", NULL, VF_ERR_FORMAT, "line 3"},
        {"merge of three symbols", NULL, "#version: 0.2\na b c\n", NULL, VF_ERR_FORMAT, "line 2"},
        {"blank merge line", NULL, "#version: 0.2\na b\n\nx y\n", NULL, VF_ERR_FORMAT, "line 3"},
        {"merge result absent", NULL, "#version: 0.2\nb a\n", NULL, VF_ERR_FORMAT, "'ba' is not"},
        {"merge part absent", NULL, "#version: 0.2\nq\xc3\xa9 a\n", NULL, VF_ERR_FORMAT, "is not in"},
        {"merges not UTF-8", NULL, "#version: 0.2\na \xff\n", NULL, VF_ERR_FORMAT, "UTF-8"},
        {"config not JSON", NULL, NULL, "{pad", VF_ERR_FORMAT, "tokenizer_config.json"},
        {"pad token absent", NULL, NULL, "{\"pad_token\": \"<pad>\"}", VF_ERR_FORMAT, "'<pad>'"},
        {"pad token a number", NULL, NULL, "{\"pad_token\": 5}", VF_ERR_FORMAT, "pad_token"},
        {"bos token empty", NULL, NULL, "{\"bos_token\": \"\"}", VF_ERR_FORMAT, "bos_token"},
        {"vocab lacks <|endoftext|>", "{\"a\": 0, \"<|startoftext|>\": 1}", "#version\n", NULL,
         VF_ERR_FORMAT, "<|endoftext|>"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bad_case *c = &cases[i];
        tmpd d;
        if (!tmp_open(&d, "tok"))
            return;
        write_synthetic(&d);
        if (c->vocab)
            write_text(tmp_path(&d, "vocab.json"), c->vocab);
        if (c->merges)
            write_text(tmp_path(&d, "merges.txt"), c->merges);
        if (c->config)
            write_text(tmp_path(&d, "tokenizer_config.json"), c->config);
        vf_tokenizer *t = (vf_tokenizer *)&d; /* must be reset to NULL */
        vf_status st = vf_tokenizer_load(d.dir, &t);
        CHECK_MSG(st == c->want && t == NULL, "%s: got %s", c->what, vf_status_str(st));
        CHECK_MSG(strstr(vf_last_error(), c->msg) != NULL, "%s: message '%s' lacks '%s'", c->what,
                  vf_last_error(), c->msg);
        CHECK_MSG(strstr(vf_last_error(), d.dir) != NULL, "%s: message '%s' names no file",
                  c->what, vf_last_error());
        vf_tokenizer_free(t);
        tmp_close(&d);
    }
}

static void test_config_and_duplicates(void)
{
    tmpd d;
    if (!tmp_open(&d, "tok"))
        return;
    write_synthetic(&d);
    /* An AddedToken object as pad, as older configs write it: "!" is then an
     * added token, so "a!!" is a, !, ! and the window pads with its id. */
    write_text(tmp_path(&d, "tokenizer_config.json"),
               "{\"pad_token\": {\"__type\": \"AddedToken\", \"content\": \"!\"}, \"bos_token\": null}");
    vf_tokenizer *t = NULL;
    CHECK_OK(vf_tokenizer_load(d.dir, &t));
    if (t) {
        int32_t ids[VF_CONTEXT_LEN], bos, eos, pad;
        size_t n = 0;
        vf_tokenizer_special_ids(t, &bos, &eos, &pad);
        CHECK(pad == 0 && bos == syn_id("<|startoftext|>") && eos == syn_id("<|endoftext|>"));
        CHECK_OK(vf_tokenize(t, "a!!", ids, 8, &n));
        CHECK(n == 5 && ids[1] == syn_id("a</w>") && ids[2] == 0 && ids[3] == 0);
        CHECK_OK(vf_tokenize_window(t, "a", ids));
        CHECK(ids[2] == eos && ids[3] == 0 && ids[76] == 0);
    }
    vf_tokenizer_free(t);
    /* Duplicate ids are fine; a duplicate key takes its last id, as json.load. */
    write_text(tmp_path(&d, "vocab.json"),
               "{\"a</w>\": 7, \"b</w>\": 7, \"a\": 1, \"a\": 2, \"<|startoftext|>\": 3, "
               "\"<|endoftext|>\": 4}");
    write_text(tmp_path(&d, "merges.txt"), "#version: 0.2\n");
    remove(tmp_path(&d, "tokenizer_config.json"));
    t = NULL;
    CHECK_OK(vf_tokenizer_load(d.dir, &t));
    if (t) {
        int32_t ids[8];
        size_t n = 0;
        CHECK_OK(vf_tokenize(t, "a b ab", ids, 8, &n));
        CHECK(n == 6 && ids[1] == 7 && ids[2] == 7 && ids[3] == 2 && ids[4] == 7);
        CHECK(vf_tokenizer_vocab_size(t) == 8);
    }
    vf_tokenizer_free(t);
    tmp_close(&d);
}

static void test_missing_and_gz_errors(void)
{
    tmpd d;
    if (!tmp_open(&d, "tok"))
        return;
    vf_tokenizer *t = NULL;
    CHECK(vf_tokenizer_load(d.dir, &t) == VF_ERR_NOT_FOUND && !t);
    CHECK(strstr(vf_last_error(), d.dir) && strstr(vf_last_error(), "vocab.json"));
    CHECK(vf_tokenizer_load(tmp_path(&d, "nope"), &t) == VF_ERR_NOT_FOUND);
    CHECK(vf_tokenizer_load(tmp_path(&d, "nope.gz"), &t) == VF_ERR_NOT_FOUND);
    write_text(tmp_path(&d, "vocab.json"), "{}");
    CHECK(vf_tokenizer_load(d.dir, &t) == VF_ERR_NOT_FOUND);
    CHECK(vf_tokenizer_load(tmp_path(&d, "vocab.json"), &t) == VF_ERR_UNSUPPORTED && !t);
    CHECK(vf_tokenizer_load_files(tmp_path(&d, "none.json"), "x", NULL, &t) == VF_ERR_NOT_FOUND);

    /* A truncated gzip stream. */
    static char text[20000];
    size_t k = (size_t)snprintf(text, sizeof text, "#version: 0.2\n");
    for (int i = 0; i < 1500; i++)
        k += (size_t)snprintf(text + k, sizeof text - k, "%c %c\n", 'a' + i % 26, 'b' + i % 25);
    write_gz(tmp_path(&d, "full.gz"), text, k);
    FILE *f = fopen(d.path, "rb");
    char buf[4096];
    size_t got = f ? fread(buf, 1, sizeof buf, f) : 0;
    if (f)
        fclose(f);
    CHECK(got > 40);
    FILE *g = fopen(tmp_path(&d, "cut.gz"), "wb");
    if (g) {
        fwrite(buf, 1, got / 2, g);
        fclose(g);
    }
    CHECK(vf_tokenizer_load(d.path, &t) == VF_ERR_FORMAT && !t);
    CHECK(strstr(vf_last_error(), "cut.gz") != NULL);
    /* Bad merge lines and bad UTF-8 inside a good gzip stream. */
    write_gz(tmp_path(&d, "one.gz"), "#v\na b\nc\n", 9);
    CHECK(vf_tokenizer_load(d.path, &t) == VF_ERR_FORMAT && strstr(vf_last_error(), "line 3"));
    write_gz(tmp_path(&d, "utf.gz"), "#v\na \xff\n", 7);
    CHECK(vf_tokenizer_load(d.path, &t) == VF_ERR_FORMAT && strstr(vf_last_error(), "UTF-8"));
    /* Just a header: the 514 base symbols, no merges. */
    write_gz(tmp_path(&d, "empty.gz"), "#version: 0.2\n", 14);
    CHECK_OK(vf_tokenizer_load(d.path, &t));
    CHECK(vf_tokenizer_vocab_size(t) == 514);
    vf_tokenizer_free(t);
    tmp_close(&d);
}

/* ---- allocation failures ------------------------------------------------------------ */

static void fault_sweep_load(const char *path, const char *label)
{
    int failures = 0;
    for (uint64_t k = 1; k < 10000; k++) {
        vf_tokenizer *t = (vf_tokenizer *)&k;
        vf_fault_alloc_fail_at(k);
        vf_status st = vf_tokenizer_load(path, &t);
        vf_fault_alloc_fail_at(0);
        if (st == VF_OK) {
            size_t n = 0;
            CHECK_OK(vf_tokenize(t, "ababx", NULL, 0, &n));
            vf_tokenizer_free(t);
            break;
        }
        failures++;
        CHECK_MSG(st == VF_ERR_NO_MEMORY && t == NULL, "%s: allocation %llu: %s: %s", label,
                  (unsigned long long)k, vf_status_str(st), vf_last_error());
        CHECK_MSG(strstr(vf_last_error(), "memory") != NULL, "%s: '%s'", label, vf_last_error());
    }
    printf("  %s: %d allocation failures, each refused cleanly\n", label, failures);
    CHECK(failures >= 8);
}

/* Fails each allocation of one vf_tokenize (window = 0) or vf_tokenize_window
 * call in turn; each must fail cleanly and leave the tokenizer usable. */
static void fault_sweep_tokenize(const char *dir, int window)
{
    static const char text[] = "ababx aaaa <|endoftext|> a!b \xc3\xa9t\xc3\xa9 \xe4\xb8\xad x";
    int32_t want[32], got[32], wwin[VF_CONTEXT_LEN], win[VF_CONTEXT_LEN];
    size_t nw = 0, n = 0;
    int failures = 0;
    vf_tokenizer *t = NULL;
    CHECK_OK(vf_tokenizer_load(dir, &t));
    CHECK_OK(vf_tokenize(t, text, want, 32, &nw));
    CHECK_OK(vf_tokenize_window(t, text, wwin));
    vf_tokenizer_free(t);
    for (uint64_t k = 1; nw && k < 1000; k++) {
        /* A new tokenizer each time: a cache hit would skip the allocations. */
        vf_tokenizer *u = NULL;
        CHECK_OK(vf_tokenizer_load(dir, &u));
        if (!u)
            break;
        n = 99;
        vf_fault_alloc_fail_at(k);
        vf_status st = window ? vf_tokenize_window(u, text, win) : vf_tokenize(u, text, got, 32, &n);
        vf_fault_alloc_fail_at(0);
        if (st != VF_OK) {
            failures++;
            CHECK_MSG(st == VF_ERR_NO_MEMORY && (window || n == 0), "allocation %llu: %s",
                      (unsigned long long)k, vf_last_error());
        }
        /* Right after a failure, and when nothing failed, the ids are HF's. */
        CHECK_OK(vf_tokenize(u, text, got, 32, &n));
        CHECK(n == nw && memcmp(got, want, n * sizeof *got) == 0);
        CHECK_OK(vf_tokenize_window(u, text, win));
        CHECK(memcmp(win, wwin, sizeof win) == 0);
        vf_tokenizer_free(u);
        if (st == VF_OK)
            break;
    }
    printf("  %s: %d allocation failures, each refused cleanly\n",
           window ? "vf_tokenize_window" : "vf_tokenize", failures);
    CHECK(failures >= 3);
}

static void test_alloc_faults(void)
{
    tmpd d;
    if (!tmp_open(&d, "tok"))
        return;
    write_synthetic(&d);
    write_text(tmp_path(&d, "tokenizer_config.json"), "{\"pad_token\": \"!\"}");
    fault_sweep_load(d.dir, "folder");
    write_gz(tmp_path(&d, "bpe.gz"), SYN_MERGES, strlen(SYN_MERGES));
    fault_sweep_load(d.path, ".gz");

    fault_sweep_tokenize(d.dir, 0);
    fault_sweep_tokenize(d.dir, 1);
    tmp_close(&d);
}

TEST_MAIN(TEST(test_bpe_semantics), TEST(test_gz_synthetic), TEST(test_arguments),
          TEST(test_bad_prompts), TEST(test_cache_bound), TEST(test_malformed_files),
          TEST(test_config_and_duplicates), TEST(test_missing_and_gz_errors),
          TEST(test_alloc_faults), TEST(test_reference_cases), TEST(test_extra_cases),
          TEST(test_pipeline_reference_ids), TEST(test_special_ids_and_load_time),
          TEST(test_big_prompts))
