/* CLIP text encoders, the model handle and prompt encoding against the diffusers
 * reference fixtures (../shared/reference): both architectures, both layouts,
 * plus the ways opening a model must fail (wrong shape, missing tensor, no
 * tokenizer) and allocation failure at every step of open + encode. */
#include "core/alloc.h"
#include "core/error.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "pipeline/model.h"
#include "test.h"

#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TOL 1e-4

/* Formats a path into dst (PATH_MAX bytes). */
static char *fmt_path(char *dst, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, PATH_MAX, fmt, ap);
    va_end(ap);
    return dst;
}

/* a/b in one of 8 rotating buffers: valid for the next 7 calls. */
static char *path2(const char *a, const char *b)
{
    static char buf[8][PATH_MAX];
    static int k;
    return fmt_path(buf[k++ % 8], "%s/%s", a, b);
}

/* A reference tensor as float32 (the reference file is all F32); NULL when absent. */
static float *ref_tensor(vf_st_file *f, const char *name, size_t *numel)
{
    const vf_st_tensor *t = vf_st_find(f, name);
    CHECK_MSG(t != NULL, "reference tensor %s", name);
    if (!t || t->dtype != VF_DTYPE_F32)
        return NULL;
    float *d = malloc(t->nbytes);
    if (d && vf_st_read(f, t, 0, d, t->nbytes) != VF_OK) {
        free(d);
        return NULL;
    }
    *numel = t->nbytes / sizeof(float);
    return d;
}

/* Compares, and prints the measured error whether it passes or not. */
static void compare(const char *what, const float *got, vf_st_file *ref, const char *name, size_t n)
{
    size_t rn = 0;
    float *want = ref_tensor(ref, name, &rn);
    CHECK_MSG(want && rn == n, "%s: reference %s has %zu values, expected %zu", what, name, rn, n);
    if (want && rn == n) {
        double ma = 0, mr = 0;
        for (size_t i = 0; i < n; i++) {
            double d = fabs((double)got[i] - want[i]);
            ma = d > ma ? d : ma;
            mr = fabs(want[i]) > mr ? fabs(want[i]) : mr;
        }
        printf("  %-34s %-24s max rel err %.3g\n", what, name, mr > 0 ? ma / mr : ma);
        CHECK_CLOSE(name, got, want, n, TOL);
    }
    free(want);
}

typedef struct ref_prompts {
    cJSON *json;
    const char *prompt, *negative;
} ref_prompts;

static int load_prompts(const char *dir, ref_prompts *p)
{
    memset(p, 0, sizeof *p);
    if (vf_json_load(path2(dir, "reference.json"), &p->json) != VF_OK)
        return 0;
    p->prompt = vf_json_str(p->json, "prompt", NULL, NULL);
    p->negative = vf_json_str(p->json, "negative_prompt", NULL, NULL);
    return p->prompt && p->negative;
}

/* Opens name's diffusers folder or single file (configs and tokenizers from the folder). */
static vf_status open_ref(const char *shared, const char *name, int single, vf_model **m)
{
    char dir[PATH_MAX], diff[PATH_MAX], file[PATH_MAX];
    fmt_path(dir, "%s/reference/%s", shared, name);
    fmt_path(diff, "%s/diffusers", dir);
    fmt_path(file, "%s/%s.safetensors", dir, name);
    vf_model_options o;
    vf_model_options_init(&o);
    if (single)
        o.tokenizer_dir = o.config_dir = diff;
    return vf_model_open(single ? file : diff, &o, m);
}

static void check_parity(const char *name, int single, vf_arch arch)
{
    SKIP_WITHOUT_SHARED(shared);
    char dir[PATH_MAX], what[PATH_MAX];
    fmt_path(dir, "%s/reference/%s", shared, name);
    ref_prompts p;
    vf_st_file *ref = NULL;
    vf_model *m = NULL;
    vf_embeddings *e = NULL;
    CHECK(load_prompts(dir, &p));
    CHECK_OK(vf_st_open(path2(dir, "reference.safetensors"), &ref));
    CHECK_OK(open_ref(shared, name, single, &m));
    if (!p.prompt || !ref || !m)
        goto out;
    CHECK(vf_model_arch(m) == arch);
    CHECK_OK(vf_encode_prompt(m, p.prompt, p.negative, &e));
    if (!e)
        goto out;
    int D = arch == VF_ARCH_SDXL ? 32 : 16;
    CHECK(e->seq_len == 77 && e->dim == D && e->pooled_dim == (arch == VF_ARCH_SDXL ? 16 : 0));
    fmt_path(what, "%s %s", name, single ? "single file" : "diffusers");
    compare(what, e->prompt, ref, "prompt_embeds", 77 * (size_t)D);
    compare(what, e->negative, ref, "negative_prompt_embeds", 77 * (size_t)D);
    if (arch == VF_ARCH_SDXL) {
        compare(what, e->pooled, ref, "pooled_prompt_embeds", 16);
        compare(what, e->negative_pooled, ref, "negative_pooled_prompt_embeds", 16);
    } else {
        CHECK(e->pooled == NULL && e->negative_pooled == NULL);
    }
out:
    vf_embeddings_free(e);
    vf_model_close(m);
    vf_st_close(ref);
    cJSON_Delete(p.json);
}

static void test_sd15_diffusers(void) { check_parity("tiny-sd15", 0, VF_ARCH_SD15); }
static void test_sd15_single_file(void) { check_parity("tiny-sd15", 1, VF_ARCH_SD15); }
static void test_sdxl_diffusers(void) { check_parity("tiny-sdxl", 0, VF_ARCH_SDXL); }
static void test_sdxl_single_file(void) { check_parity("tiny-sdxl", 1, VF_ARCH_SDXL); }

/* The encoders alone, on the reference's own token ids: separates CLIP from the
 * tokenizer when the parity tests fail. */
static void test_sdxl_forward_on_reference_ids(void)
{
    SKIP_WITHOUT_SHARED(shared);
    vf_st_file *ref = NULL;
    vf_model *m = NULL;
    float *fl = NULL, *fg = NULL, hl[77 * 16], hg[77 * 16], cat[77 * 32], pooled[16];
    size_t nl = 0, ng = 0;
    CHECK_OK(vf_st_open(path2(shared, "reference/tiny-sdxl/reference.safetensors"), &ref));
    CHECK_OK(open_ref(shared, "tiny-sdxl", 0, &m));
    if (!ref || !m)
        goto out;
    fl = ref_tensor(ref, "ids_l", &nl);
    fg = ref_tensor(ref, "ids_g", &ng);
    if (!fl || !fg || nl != 77 || ng != 77)
        goto out;
    int32_t il[77], ig[77];
    for (int t = 0; t < 77; t++) {
        il[t] = (int32_t)fl[t];
        ig[t] = (int32_t)fg[t];
    }
    vf_residency *rl, *rg;
    CHECK_OK(vf_model_residency(m, VF_COMPONENT_TEXT_ENCODER, &rl));
    CHECK_OK(vf_model_residency(m, VF_COMPONENT_TEXT_ENCODER_2, &rg));
    CHECK_OK(vf_clip_forward(rl, &m->bl[0], &m->clip[0], il, NULL, hl, NULL));
    CHECK_OK(vf_clip_forward(rg, &m->bl[1], &m->clip[1], ig, NULL, hg, pooled));
    for (int t = 0; t < 77; t++) {
        memcpy(cat + t * 32, hl + t * 16, sizeof(float) * 16);
        memcpy(cat + t * 32 + 16, hg + t * 16, sizeof(float) * 16);
    }
    compare("tiny-sdxl forward(ids)", cat, ref, "prompt_embeds", 77 * 32);
    compare("tiny-sdxl forward(ids)", pooled, ref, "pooled_prompt_embeds", 16);
    /* hidden_states[-2] needs neither CLIP-L's last layer nor its final LayerNorm:
     * only the embeddings and layer 0 may have been converted. */
    uint64_t layer = 4 * (16 * 16 + 16) + 4 * 16 + (64 * 16 + 64) + (16 * 64 + 16);
    CHECK(vf_residency_host_bytes(rl) == 4 * ((49408 + 77) * 16 + layer));
    CHECK(vf_residency_host_bytes(rg) == 4 * ((49408 + 77) * 16 + 2 * layer + 2 * 16 + 16 * 16));
    /* An id outside the vocabulary is the caller's error, not a read out of bounds. */
    il[5] = 49408;
    CHECK(vf_clip_forward(rl, &m->bl[0], &m->clip[0], il, NULL, hl, NULL) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "49408") != NULL);
    /* CLIP-L has no projection, so no pooled output. */
    CHECK(vf_clip_forward(rl, &m->bl[0], &m->clip[0], ig, NULL, NULL, pooled) == VF_ERR_INVALID_ARG);
out:
    free(fl);
    free(fg);
    vf_model_close(m);
    vf_st_close(ref);
}

static void test_component_info(void)
{
    SKIP_WITHOUT_SHARED(shared);
    vf_model *m = NULL;
    CHECK_OK(open_ref(shared, "tiny-sdxl", 0, &m));
    if (!m)
        return;
    vf_component_info ci;
    CHECK_OK(vf_model_component_info(m, VF_COMPONENT_TEXT_ENCODER_2, &ci));
    /* tok (49408x16) + pos (77x16) + 2 layers x (4x(16x16+16) + 4x16 + 64x16+64 + 16x64+16)
     * + final LN (2x16) + projection (16x16); all stored as F16. */
    uint64_t layer = 4 * (16 * 16 + 16) + 4 * 16 + (64 * 16 + 64) + (16 * 64 + 16);
    uint64_t params = 49408 * 16 + 77 * 16 + 2 * layer + 2 * 16 + 16 * 16;
    CHECK(ci.present == 1);
    CHECK_MSG(ci.params == params, "params %llu, expected %llu", (unsigned long long)ci.params,
              (unsigned long long)params);
    CHECK(ci.bytes == 2 * params);
    CHECK(ci.bytes_by_dtype[VF_DTYPE_F16] == 2 * params);
    CHECK(ci.bytes_by_dtype[VF_DTYPE_F32] == 0);
    CHECK(ci.ntensors == 2 + 2 * 16 + 2 + 1);
    CHECK_OK(vf_model_component_info(m, VF_COMPONENT_TEXT_ENCODER, &ci));
    CHECK(ci.present == 1 && ci.params == params - 16 * 16 && ci.ntensors == 2 + 2 * 16 + 2);
    CHECK(vf_model_component_info(m, VF_COMPONENT_COUNT, &ci) == VF_ERR_INVALID_ARG);
    vf_model_close(m);
    CHECK(strcmp(vf_arch_name(VF_ARCH_SDXL), "sdxl") == 0);
    CHECK(strcmp(vf_component_name(VF_COMPONENT_TEXT_ENCODER_2), "text_encoder_2") == 0);
}

/* A scratch model folder: links to tiny-sd15's diffusers parts, with a text
 * encoder rewritten by `edit` (a shape changed or a tensor dropped). */
static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void rm_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* Writes tmp/text_encoder/model.safetensors from src, with tensor `name` given
 * shape [32,32] (reshape) or left out (drop). Returns 1 on success. */
static int write_edited(const char *src, const char *dst, const char *name, int drop)
{
    vf_st_file *f = NULL;
    if (vf_st_open(src, &f) != VF_OK)
        return 0;
    size_t n = vf_st_count(f), k = 0;
    vf_st_write_tensor *ts = calloc(n, sizeof *ts);
    void **bufs = calloc(n, sizeof *bufs);
    int ok = ts && bufs;
    for (size_t i = 0; ok && i < n; i++) {
        const vf_st_tensor *t = vf_st_at(f, i);
        if (drop && strcmp(t->name, name) == 0)
            continue;
        bufs[i] = malloc(t->nbytes ? t->nbytes : 1);
        ok = bufs[i] && vf_st_read(f, t, 0, bufs[i], t->nbytes) == VF_OK;
        vf_st_write_tensor *w = &ts[k++];
        w->name = t->name;
        w->dtype = t->dtype;
        w->ndim = t->ndim;
        memcpy(w->shape, t->shape, sizeof w->shape);
        w->data = bufs[i];
        if (!drop && strcmp(t->name, name) == 0) { /* same bytes, other shape */
            w->ndim = 2;
            w->shape[0] = 32;
            w->shape[1] = 32;
            ok = ok && t->nbytes == 32 * 32 * 2;
        }
    }
    ok = ok && vf_st_write(dst, ts, k, NULL) == VF_OK;
    for (size_t i = 0; bufs && i < n; i++)
        free(bufs[i]);
    free(bufs);
    free(ts);
    vf_st_close(f);
    return ok;
}

static int make_edited_model(const char *shared, char *tmp, const char *name, int drop)
{
    static const char *const links[] = {"model_index.json", "scheduler", "tokenizer", "unet", "vae"};
    char src[PATH_MAX];
    strcpy(tmp, "/tmp/vf_clip_XXXXXX");
    if (!mkdtemp(tmp))
        return 0;
    fmt_path(src, "%s/reference/tiny-sd15/diffusers", shared);
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
        if (symlink(path2(src, links[i]), path2(tmp, links[i])) != 0)
            return 0;
    }
    if (mkdir(path2(tmp, "text_encoder"), 0700) != 0 ||
        symlink(path2(src, "text_encoder/config.json"), path2(tmp, "text_encoder/config.json")) != 0)
        return 0;
    return write_edited(path2(src, "text_encoder/model.safetensors"),
                        path2(tmp, "text_encoder/model.safetensors"), name, drop);
}

static void check_bad_model(int drop, vf_status want, const char *tensor)
{
    SKIP_WITHOUT_SHARED(shared);
    char tmp[PATH_MAX];
    vf_model *m = NULL;
    int made = make_edited_model(shared, tmp, tensor, drop);
    CHECK_MSG(made, "building the edited model in %s", tmp);
    if (made) {
        vf_status st = vf_model_open(tmp, NULL, &m);
        CHECK_MSG(st == want, "status %s: %s", vf_status_str(st), vf_last_error());
        CHECK(m == NULL);
        CHECK_MSG(strstr(vf_last_error(), tensor) != NULL, "message '%s' names %s", vf_last_error(), tensor);
        printf("  %s\n", vf_last_error());
    }
    vf_model_close(m);
    rm_tree(tmp);
}

static void test_wrong_shape_at_open(void)
{
    check_bad_model(0, VF_ERR_SHAPE, "text_model.encoder.layers.1.mlp.fc1.weight");
}

static void test_missing_tensor_at_open(void)
{
    check_bad_model(1, VF_ERR_NOT_FOUND, "text_model.encoder.layers.0.self_attn.k_proj.bias");
}

/* A single file with no tokenizer: opening works (inspect needs no tokenizer),
 * encoding fails saying what to pass. */
static void test_single_file_without_tokenizer(void)
{
    SKIP_WITHOUT_SHARED(shared);
    setenv("HF_HUB_CACHE", "/nonexistent/hf-cache", 1); /* no tokenizer there either */
    char file[PATH_MAX], diff[PATH_MAX];
    fmt_path(file, "%s/reference/tiny-sd15/tiny-sd15.safetensors", shared);
    fmt_path(diff, "%s/reference/tiny-sd15/diffusers", shared);
    vf_model_options o;
    vf_model_options_init(&o);
    o.config_dir = diff;
    vf_model *m = NULL;
    vf_embeddings *e = NULL;
    CHECK_OK(vf_model_open(file, &o, &m));
    if (m) {
        vf_status st = vf_encode_prompt(m, "a cat", NULL, &e);
        CHECK(st == VF_ERR_NOT_FOUND);
        CHECK(e == NULL);
        CHECK_MSG(strstr(vf_last_error(), "--tokenizer") && strstr(vf_last_error(), "tiny-sd15.safetensors"),
                  "message: %s", vf_last_error());
    }
    vf_model_close(m);
    /* A tokenizer folder that does not exist is an error at open, naming it. */
    o.tokenizer_dir = "/nonexistent/tokenizers";
    CHECK(vf_model_open(file, &o, &m) == VF_ERR_NOT_FOUND);
    CHECK(strstr(vf_last_error(), "/nonexistent/tokenizers") != NULL);
}

/* A single file with tokenizer/ and component configs beside it needs no options. */
static void test_single_file_finds_neighbours(void)
{
    SKIP_WITHOUT_SHARED(shared);
    static const char *const links[] = {"tokenizer", "text_encoder", "unet", "vae"};
    char tmp[PATH_MAX] = "/tmp/vf_clip_XXXXXX", src[PATH_MAX], dir[PATH_MAX];
    fmt_path(dir, "%s/reference/tiny-sd15", shared);
    fmt_path(src, "%s/diffusers", dir);
    int ok = mkdtemp(tmp) != NULL;
    for (size_t i = 0; ok && i < sizeof links / sizeof links[0]; i++)
        ok = symlink(path2(src, links[i]), path2(tmp, links[i])) == 0;
    ok = ok && symlink(path2(dir, "tiny-sd15.safetensors"), path2(tmp, "model.safetensors")) == 0;
    CHECK(ok);
    vf_model *m = NULL;
    vf_embeddings *e = NULL;
    vf_st_file *ref = NULL;
    ref_prompts p;
    CHECK(load_prompts(dir, &p));
    CHECK_OK(vf_st_open(path2(dir, "reference.safetensors"), &ref));
    if (ok)
        CHECK_OK(vf_model_open(path2(tmp, "model.safetensors"), NULL, &m));
    if (m && p.prompt)
        CHECK_OK(vf_encode_prompt(m, p.prompt, p.negative, &e));
    if (e && ref)
        compare("tiny-sd15 single file, neighbours", e->prompt, ref, "prompt_embeds", 77 * 16);
    vf_embeddings_free(e);
    vf_model_close(m);
    vf_st_close(ref);
    cJSON_Delete(p.json);
    rm_tree(tmp);
}

/* SDXL with the negative prompt left out: zeros (force_zeros_for_empty_prompt),
 * while an explicit "" is encoded, as diffusers does. */
static void test_sdxl_negative_zeros(void)
{
    SKIP_WITHOUT_SHARED(shared);
    vf_model *m = NULL;
    vf_embeddings *e = NULL, *e2 = NULL;
    CHECK_OK(open_ref(shared, "tiny-sdxl", 0, &m));
    if (m) {
        CHECK_OK(vf_encode_prompt(m, "a cat", NULL, &e));
        CHECK_OK(vf_encode_prompt(m, "a cat", "", &e2));
    }
    vf_embeddings *e3 = e2;
    if (e && e2) {
        int zero = 1, nonzero = 0;
        for (int i = 0; i < 77 * e->dim; i++) {
            zero &= e->negative[i] == 0.0f;
            nonzero |= e2->negative[i] != 0.0f;
        }
        for (int i = 0; i < e->pooled_dim; i++)
            zero &= e->negative_pooled[i] == 0.0f;
        CHECK(zero);
        CHECK(nonzero);
        CHECK(memcmp(e->prompt, e2->prompt, sizeof(float) * 77 * (size_t)e->dim) == 0);
    }
    CHECK(vf_encode_prompt(m, NULL, NULL, &e2) == VF_ERR_INVALID_ARG && e2 == NULL);
    vf_embeddings_free(e);
    vf_embeddings_free(e3);
    vf_model_close(m);
}

/* Every allocation of open + encode made to fail in turn: each failure is
 * reported, and the sanitizer's leak check at exit sees nothing left. */
static void test_alloc_failures(void)
{
    SKIP_WITHOUT_SHARED(shared);
    char diff[PATH_MAX];
    fmt_path(diff, "%s/reference/tiny-sd15/diffusers", shared);
    /* A clean run first, to know how many allocations there are. */
    uint64_t c0 = vf_fault_alloc_count();
    vf_model *m = NULL;
    vf_embeddings *e = NULL;
    CHECK_OK(vf_model_open(diff, NULL, &m));
    if (m)
        CHECK_OK(vf_encode_prompt(m, "a photo of a cat", "blurry", &e));
    vf_embeddings_free(e);
    vf_model_close(m);
    uint64_t total = vf_fault_alloc_count() - c0;
    int failures = 0, bad = 0;
    for (uint64_t n = 1; n <= total + 1; n++) {
        m = NULL;
        e = NULL;
        vf_fault_alloc_fail_at(n);
        uint64_t before = vf_fault_alloc_count();
        vf_status st = vf_model_open(diff, NULL, &m);
        if (st == VF_OK)
            st = vf_encode_prompt(m, "a photo of a cat", "blurry", &e);
        uint64_t made = vf_fault_alloc_count() - before;
        vf_fault_alloc_fail_at(0);
        vf_embeddings_free(e);
        vf_model_close(m);
        if (made >= n && st == VF_OK)
            bad++; /* the failing allocation happened, yet the call succeeded */
        if (st != VF_OK) {
            failures++;
            if (st != VF_ERR_NO_MEMORY || !vf_last_error()[0]) {
                fprintf(stderr, "  allocation %llu: status %s: %s\n", (unsigned long long)n,
                        vf_status_str(st), vf_last_error());
                bad++;
            }
        }
        if (made < n)
            break; /* n is past the last allocation: the run was clean */
    }
    printf("  %llu allocations, %d injected failures\n", (unsigned long long)total, failures);
    CHECK(total > 0 && failures == (int)total);
    CHECK(bad == 0);
}

TEST_MAIN(TEST(test_sd15_diffusers), TEST(test_sd15_single_file), TEST(test_sdxl_diffusers),
          TEST(test_sdxl_single_file), TEST(test_sdxl_forward_on_reference_ids), TEST(test_component_info),
          TEST(test_wrong_shape_at_open), TEST(test_missing_tensor_at_open),
          TEST(test_single_file_without_tokenizer), TEST(test_single_file_finds_neighbours),
          TEST(test_sdxl_negative_zeros), TEST(test_alloc_failures))
