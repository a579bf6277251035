/* Synthesized models (pipeline/synth.h) and the streaming safetensors writer.
 *
 * Tiny presets are written for real (every shape then goes through
 * vf_model_open, which checks it against the architecture); the full presets
 * are only counted, from the same tensor lists the writer uses, because
 * writing 7 GB under ASan would take minutes.
 */
#include "core/alloc.h"
#include "core/dtype.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "pipeline/synth.h"
#include "test.h"
#include "test_tmp.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* The published parameter counts (text encoders with CLIP's 49408 tokens). */
#define SDXL_UNET 2567463684ull
#define SD15_UNET 859520964ull
#define CLIP_L 123060480ull
#define CLIP_G 694659840ull
#define VAE_ALL 83653863ull
#define CLIP_VOCAB 49408

static uint64_t numel(const int64_t *shape, int ndim)
{
    uint64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= (uint64_t)shape[d];
    return n;
}

static void test_full_counts(void)
{
    uint64_t p[VF_COMPONENT_COUNT];
    CHECK_OK(vf_synth_count(VF_ARCH_SDXL, VF_SYNTH_FULL, CLIP_VOCAB, p));
    CHECK_MSG(p[VF_COMPONENT_UNET] == SDXL_UNET, "sdxl unet %llu", (unsigned long long)p[VF_COMPONENT_UNET]);
    CHECK_MSG(p[VF_COMPONENT_TEXT_ENCODER] == CLIP_L, "clip-l %llu", (unsigned long long)p[VF_COMPONENT_TEXT_ENCODER]);
    CHECK_MSG(p[VF_COMPONENT_TEXT_ENCODER_2] == CLIP_G, "clip-g %llu", (unsigned long long)p[VF_COMPONENT_TEXT_ENCODER_2]);
    CHECK_MSG(p[VF_COMPONENT_VAE] == VAE_ALL, "vae %llu", (unsigned long long)p[VF_COMPONENT_VAE]);

    CHECK_OK(vf_synth_count(VF_ARCH_SD15, VF_SYNTH_FULL, CLIP_VOCAB, p));
    CHECK_MSG(p[VF_COMPONENT_UNET] == SD15_UNET, "sd15 unet %llu", (unsigned long long)p[VF_COMPONENT_UNET]);
    CHECK(p[VF_COMPONENT_TEXT_ENCODER] == CLIP_L);
    CHECK(p[VF_COMPONENT_TEXT_ENCODER_2] == 0);
    CHECK(p[VF_COMPONENT_VAE] == VAE_ALL);

    /* As written: the text encoders have the small vocabulary's rows. */
    int32_t v = vf_synth_vocab_size();
    CHECK(v > 512 + 100 && v < 4096);
    CHECK_OK(vf_synth_count(VF_ARCH_SDXL, VF_SYNTH_FULL, 0, p));
    CHECK(p[VF_COMPONENT_TEXT_ENCODER] == CLIP_L - (uint64_t)(CLIP_VOCAB - v) * 768);
    CHECK(p[VF_COMPONENT_TEXT_ENCODER_2] == CLIP_G - (uint64_t)(CLIP_VOCAB - v) * 1280);
    CHECK(p[VF_COMPONENT_UNET] == SDXL_UNET);
}

/* The vocabulary has the shape the header promises and a few hundred merges. */
static void test_vocab(void)
{
    int32_t v = vf_synth_vocab_size();
    int m = vf_synth_merge_count();
    CHECK_MSG(m >= 200 && m <= 1000, "%d merges", m);
    CHECK(v <= 512 + m + 2);
    CHECK(v > 512 + m / 2);
    CHECK(vf_synth_vocab_size() == v); /* deterministic */
}

/* Every stored tensor is one the lists describe, with its shape and dtype, and
 * the lists' tensors are all stored; returns the stored parameter count. */
static uint64_t check_component(const char *root, vf_arch arch, vf_component c, vf_dtype dtype)
{
    const char *file = c <= VF_COMPONENT_TEXT_ENCODER_2 ? "model.safetensors" : "diffusion_pytorch_model.safetensors";
    char path[1024], cpath[1024];
    snprintf(path, sizeof path, "%s/%s/%s", root, vf_component_name(c), file);
    snprintf(cpath, sizeof cpath, "%s/%s/config.json", root, vf_component_name(c));
    cJSON *cfg = NULL;
    vf_st_file *f = NULL;
    vf_blocklist bl;
    uint64_t total = 0;
    CHECK_OK(vf_json_load(cpath, &cfg));
    CHECK_OK(vf_st_open(path, &f));
    if (!cfg || !f)
        goto out;
    CHECK_OK(vf_synth_describe(cfg, arch, c, &bl));
    CHECK_MSG(vf_st_count(f) == (size_t)bl.nw, "%s: %zu stored, %d described", path, vf_st_count(f), bl.nw);
    for (int i = 0; i < bl.nw; i++) {
        const vf_st_tensor *t = vf_st_find(f, bl.w[i].name);
        CHECK_MSG(t != NULL, "%s: missing %s", path, bl.w[i].name);
        if (!t)
            continue;
        CHECK(t->dtype == dtype);
        CHECK(t->ndim == bl.w[i].ndim);
        for (int d = 0; d < t->ndim && d < 4; d++)
            CHECK(t->shape[d] == bl.w[i].shape[d]);
        total += numel(t->shape, t->ndim);
    }
    CHECK(vf_st_metadata(f, "format") && strcmp(vf_st_metadata(f, "format"), "pt") == 0);
    vf_bl_free(&bl);
out:
    vf_st_close(f);
    cJSON_Delete(cfg);
    return total;
}

static void check_tokenizer(const char *root, const char *sub, int32_t want_pad)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", root, sub);
    vf_tokenizer *t = NULL;
    CHECK_OK(vf_tokenizer_load(dir, &t));
    if (!t)
        return;
    int32_t v = vf_synth_vocab_size(), bos, eos, pad;
    CHECK(vf_tokenizer_vocab_size(t) == v);
    vf_tokenizer_special_ids(t, &bos, &eos, &pad);
    CHECK(bos == v - 2 && eos == v - 1);
    CHECK_MSG(pad == (want_pad < 0 ? eos : want_pad), "%s: pad %d", sub, pad);
    int32_t ids[16];
    size_t n = 0;
    CHECK_OK(vf_tokenize(t, "a red circle", ids, 16, &n));
    /* "a", "red" and "circle" are training words, so one token each: the
     * vocabulary's "a</w>", "red</w>", "circle</w>". */
    CHECK_MSG(n == 5, "%s: %zu ids", sub, n);
    char vpath[1100];
    snprintf(vpath, sizeof vpath, "%s/vocab.json", dir);
    cJSON *vj = NULL;
    CHECK_OK(vf_json_load(vpath, &vj));
    static const char *const words[] = {"a</w>", "red</w>", "circle</w>"};
    for (int i = 0; i < 3 && vj && n == 5; i++) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(vj, words[i]);
        CHECK_MSG(cJSON_IsNumber(id) && id->valueint == ids[i + 1], "%s: %s", sub, words[i]);
    }
    CHECK(cJSON_GetArraySize(vj) == v);
    cJSON_Delete(vj);
    for (size_t i = 0; i < n && i < 16; i++)
        CHECK(ids[i] >= 0 && ids[i] < v);
    CHECK(n >= 2 && ids[0] == bos && ids[n - 1] == eos);
    /* Any text stays inside the vocabulary: bytes, accents, emoji. */
    CHECK_OK(vf_tokenize(t, "Zebra-XYZ caf\xc3\xa9 \xf0\x9f\x99\x82 !!?", ids, 16, &n));
    for (size_t i = 0; i < n && i < 16; i++)
        CHECK(ids[i] >= 0 && ids[i] < v);
    int32_t win[VF_CONTEXT_LEN];
    CHECK_OK(vf_tokenize_window(t, "a red circle", win));
    CHECK(win[VF_CONTEXT_LEN - 1] == pad);
    vf_tokenizer_free(t);
}

static void check_tiny(vf_arch arch)
{
    char *root = tmp_scratch("synth");
    CHECK(root != NULL);
    if (!root)
        return;
    char out[256];
    snprintf(out, sizeof out, "%s/model", root);
    vf_synth_options o;
    vf_synth_options_init(&o);
    o.arch = arch;
    o.preset = VF_SYNTH_TINY;
    CHECK_OK(vf_synth(&o, out));
    CHECK(count_entries(root) == 1); /* no temporary left beside it */

    vf_model *m = NULL;
    CHECK_OK(vf_model_open(out, NULL, &m));
    CHECK(vf_model_arch(m) == arch);
    uint64_t p[VF_COMPONENT_COUNT];
    CHECK_OK(vf_synth_count(arch, VF_SYNTH_TINY, 0, p));
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        vf_component_info info;
        memset(&info, 0, sizeof info);
        if (m)
            CHECK_OK(vf_model_component_info(m, (vf_component)c, &info));
        int want = c != VF_COMPONENT_TEXT_ENCODER_2 || arch == VF_ARCH_SDXL;
        CHECK(info.present == want);
        if (!want) {
            CHECK(p[c] == 0);
            continue;
        }
        uint64_t stored = check_component(out, arch, (vf_component)c, VF_DTYPE_F16);
        CHECK_MSG(stored == p[c], "%s: %llu stored, %llu counted", vf_component_name((vf_component)c),
                  (unsigned long long)stored, (unsigned long long)p[c]);
        /* vramfit uses all but the VAE encoder. */
        if (c != VF_COMPONENT_VAE)
            CHECK(info.params == p[c]);
        else
            CHECK(info.params > 0 && info.params < p[c]);
    }
    vf_model_close(m);
    check_tokenizer(out, "tokenizer", -1);
    if (arch == VF_ARCH_SDXL)
        check_tokenizer(out, "tokenizer_2", 0); /* "!" is id 0, as in CLIP */
    vf_remove_tree(root);
}

static void test_tiny_sd15(void) { check_tiny(VF_ARCH_SD15); }
static void test_tiny_sdxl(void) { check_tiny(VF_ARCH_SDXL); }

/* Reads tensor name of file as floats (n values at most). */
static size_t read_values(const char *file, const char *name, float *dst, size_t cap, int64_t *shape)
{
    vf_st_file *f = NULL;
    size_t n = 0;
    if (vf_st_open(file, &f) != VF_OK)
        return 0;
    const vf_st_tensor *t = vf_st_find(f, name);
    if (t) {
        n = (size_t)numel(t->shape, t->ndim);
        n = n < cap ? n : cap;
        memcpy(shape, t->shape, sizeof t->shape);
        uint16_t *raw = malloc(n * 2 + 2);
        if (raw && t->dtype == VF_DTYPE_F16 && vf_st_read(f, t, 0, raw, n * 2) == VF_OK)
            vf_convert_to_f32(dst, raw, VF_DTYPE_F16, n);
        else
            n = 0;
        free(raw);
    }
    vf_st_close(f);
    return n;
}

static int files_equal(const char *a, const char *b)
{
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int eq = vf_read_file(a, 64u << 20, &x, &nx) == VF_OK && vf_read_file(b, 64u << 20, &y, &ny) == VF_OK &&
             nx == ny && memcmp(x, y, nx) == 0;
    vf_free(x);
    vf_free(y);
    return eq;
}

/* Same seed, same bytes; another seed, other bytes; the values as documented. */
static void test_values(void)
{
    char *root = tmp_scratch("synth");
    if (!root)
        return;
    char a[256], b[256], c[256], fa[512], fb[512], fc[512];
    snprintf(a, sizeof a, "%s/a", root);
    snprintf(b, sizeof b, "%s/b", root);
    snprintf(c, sizeof c, "%s/c", root);
    vf_synth_options o;
    vf_synth_options_init(&o);
    o.arch = VF_ARCH_SDXL;
    o.preset = VF_SYNTH_TINY;
    o.seed = 7;
    CHECK_OK(vf_synth(&o, a));
    CHECK_OK(vf_synth(&o, b));
    o.seed = 8;
    CHECK_OK(vf_synth(&o, c));
    snprintf(fa, sizeof fa, "%s/unet/diffusion_pytorch_model.safetensors", a);
    snprintf(fb, sizeof fb, "%s/unet/diffusion_pytorch_model.safetensors", b);
    snprintf(fc, sizeof fc, "%s/unet/diffusion_pytorch_model.safetensors", c);
    CHECK(files_equal(fa, fb));
    CHECK(!files_equal(fa, fc));

    static float v[1 << 16];
    int64_t shape[VF_MAX_DIMS];
    /* down_blocks.2 resnet conv2: (64,64,3,3), fan_in 576. */
    size_t n = read_values(fa, "down_blocks.2.resnets.0.conv2.weight", v, 1 << 16, shape);
    CHECK(n == 64 * 64 * 9);
    double s = 0, s2 = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        s += v[i];
        s2 += (double)v[i] * v[i];
        mx = fabs(v[i]) > mx ? fabs(v[i]) : mx;
    }
    /* uniform in +-1/sqrt(fan_in), as PyTorch initialises a Conv2d: std bound/sqrt(3) */
    double mean = s / (double)n, sd = sqrt(s2 / (double)n - mean * mean), bound = 1 / sqrt(576.0);
    CHECK_MSG(fabs(mean) < 0.05 * bound && fabs(sd * sqrt(3.0) / bound - 1) < 0.03, "mean %g sd %g bound %g", mean,
              sd, bound);
    CHECK_MSG(mx <= bound * (1 + 1e-3) && mx > 0.99 * bound, "max %g bound %g", mx, bound);
    /* its bias: the same bound (the conv's fan_in), not all zero */
    n = read_values(fa, "down_blocks.2.resnets.0.conv2.bias", v, 1 << 16, shape);
    CHECK(n == 64);
    double bmax = 0;
    for (size_t i = 0; i < n; i++)
        bmax = fabs(v[i]) > bmax ? fabs(v[i]) : bmax;
    CHECK_MSG(bmax <= bound * (1 + 1e-3) && bmax > 0.5 * bound, "bias max %g bound %g", bmax, bound);
    /* a norm's shift stays 0 */
    n = read_values(fa, "down_blocks.2.resnets.0.norm1.bias", v, 1 << 16, shape);
    CHECK(n > 0);
    for (size_t i = 0; i < n; i++)
        CHECK(v[i] == 0.0f);
    n = read_values(fa, "down_blocks.2.resnets.0.norm1.weight", v, 1 << 16, shape);
    CHECK(n > 0);
    for (size_t i = 0; i < n; i++)
        CHECK(v[i] == 1.0f);
    vf_remove_tree(root);
}

/* A non-empty target is refused unless --force and it is a model folder. */
static void test_targets(void)
{
    char *root = tmp_scratch("synth");
    if (!root)
        return;
    char out[256], junk[512], other[256], empty[256];
    snprintf(out, sizeof out, "%s/model", root);
    snprintf(other, sizeof other, "%s/other", root);
    snprintf(empty, sizeof empty, "%s/empty", root);
    vf_synth_options o;
    vf_synth_options_init(&o);
    o.arch = VF_ARCH_SD15;
    o.preset = VF_SYNTH_TINY;
    CHECK_OK(vf_synth(&o, out));
    CHECK(vf_synth(&o, out) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), out) && strstr(vf_last_error(), "--force"));
    /* Forced: replaced whole (a stray file goes with the old folder). */
    snprintf(junk, sizeof junk, "%s/stray.txt", out);
    FILE *f = fopen(junk, "w");
    if (f)
        fclose(f);
    o.force = 1;
    o.arch = VF_ARCH_SDXL;
    CHECK_OK(vf_synth(&o, out));
    CHECK(access(junk, F_OK) != 0);
    snprintf(junk, sizeof junk, "%s/text_encoder_2/config.json", out);
    CHECK(access(junk, F_OK) == 0);
    /* Forced over something that is not a model: refused, left alone. */
    mkdir(other, 0755);
    snprintf(junk, sizeof junk, "%s/keep.txt", other);
    f = fopen(junk, "w");
    if (f)
        fclose(f);
    CHECK(vf_synth(&o, other) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "model_index.json") != NULL);
    CHECK(access(junk, F_OK) == 0);
    /* An empty folder is fine, a file is not. */
    mkdir(empty, 0755);
    o.force = 0;
    CHECK_OK(vf_synth(&o, empty));
    CHECK(vf_synth(&o, junk) == VF_ERR_INVALID_ARG);
    CHECK(count_entries(root) == 3); /* model, other, empty: no temporaries */
    /* Bad options. */
    o.dtype = VF_DTYPE_I8;
    CHECK(vf_synth(&o, out) == VF_ERR_INVALID_ARG);
    o.dtype = VF_DTYPE_F16;
    o.arch = VF_ARCH_UNKNOWN;
    CHECK(vf_synth(&o, out) == VF_ERR_INVALID_ARG);
    vf_remove_tree(root);
}

/* A disk that fills up (a file size limit) fails naming the file, and leaves
 * nothing behind. */
static void test_write_failure(void)
{
    char *root = tmp_scratch("synth");
    if (!root)
        return;
    char out[256];
    snprintf(out, sizeof out, "%s/model", root);
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 1 << 20; /* the tiny SDXL UNet is 4 MB */
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    vf_synth_options o;
    vf_synth_options_init(&o);
    o.arch = VF_ARCH_SDXL;
    o.preset = VF_SYNTH_TINY;
    vf_status st = vf_synth(&o, out);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    CHECK(st == VF_ERR_IO);
    CHECK_MSG(strstr(vf_last_error(), "unet/diffusion_pytorch_model.safetensors") != NULL, "%s", vf_last_error());
    CHECK(strstr(vf_last_error(), "tensor '") != NULL);
    CHECK(count_entries(root) == 0);
    vf_remove_tree(root);
}

/* Every failing allocation is reported and leaks nothing, files included. */
static void test_alloc_failures(void)
{
    char *root = tmp_scratch("synth");
    if (!root)
        return;
    char out[256];
    snprintf(out, sizeof out, "%s/model", root);
    vf_synth_options o;
    vf_synth_options_init(&o);
    o.arch = VF_ARCH_SDXL;
    o.preset = VF_SYNTH_TINY;
    uint64_t before = vf_fault_alloc_count();
    CHECK_OK(vf_synth(&o, out));
    uint64_t total = vf_fault_alloc_count() - before;
    vf_remove_tree(out);
    int failed = 0;
    for (uint64_t k = 1; k <= total; k += 1 + k / 4) {
        vf_fault_alloc_fail_at(k);
        vf_status st = vf_synth(&o, out);
        vf_fault_alloc_fail_at(0);
        failed += st != VF_OK;
        if (st == VF_OK)
            vf_remove_tree(out);
        CHECK_MSG(count_entries(root) == 0, "allocation %llu: leftovers", (unsigned long long)k);
    }
    CHECK(failed > 10);
    vf_remove_tree(root);
}

/* The fast narrowing agrees bit for bit with the library's reference one. */
static void test_convert(void)
{
    enum { N = 1 << 16 };
    static float src[N];
    static uint16_t a[N], b[N];
    static const uint32_t edges[] = {0, 0x80000000u, 0x33000000u, 0x33000001u, 0x337FFFFFu, 0x38800000u,
                                     0x387FFFFFu, 0x38FFF000u, 0x477FEFFFu, 0x477FF000u, 0x477FE000u,
                                     0x7F800000u, 0xFF800000u, 0x7FC00000u, 0x7F801234u, 0x3F800FFFu,
                                     0x3F801000u, 0x3F803000u, 0x3F7FFFFFu, 0x00000001u};
    int bad16 = 0, bad_bf = 0;
    uint64_t x = 12345;
    for (int round = 0; round < 64; round++) {
        for (int i = 0; i < N; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            uint32_t u = (uint32_t)(x >> 32);
            if (round % 2) /* dense near the f16 range: exponents 96..150 */
                u = (u & 0x807FFFFFu) | ((96u + (uint32_t)(x >> 26) % 55u) << 23);
            if (round == 0 && i < (int)(sizeof edges / sizeof edges[0]))
                u = edges[i];
            memcpy(&src[i], &u, 4);
        }
        vf_synth_convert(a, VF_DTYPE_F16, src, N);
        vf_convert_from_f32(b, VF_DTYPE_F16, src, N);
        for (int i = 0; i < N; i++)
            bad16 += a[i] != b[i];
        vf_synth_convert(a, VF_DTYPE_BF16, src, N);
        vf_convert_from_f32(b, VF_DTYPE_BF16, src, N);
        for (int i = 0; i < N; i++)
            bad_bf += a[i] != b[i];
    }
    CHECK_MSG(bad16 == 0, "%d f16 values differ", bad16);
    CHECK_MSG(bad_bf == 0, "%d bf16 values differ", bad_bf);
}

/* ---- the streaming writer ------------------------------------------------------- */

static void test_writer(void)
{
    char *root = tmp_scratch("synth");
    if (!root)
        return;
    char path[256], tmp[512];
    snprintf(path, sizeof path, "%s/w.safetensors", root);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    vf_st_write_tensor ts[3] = {
        {"a", VF_DTYPE_F32, 2, {3, 5}, NULL},
        {"b", VF_DTYPE_F16, 1, {7}, NULL},
        {"c", VF_DTYPE_F32, 0, {0}, NULL},
    };
    unsigned char data[60 + 14 + 4];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (unsigned char)(i * 37 + 1);
    const char *meta[] = {"format", "pt", NULL};
    vf_st_writer *w = NULL;
    CHECK_OK(vf_st_writer_open(path, ts, 3, meta, &w));
    CHECK(access(tmp, F_OK) == 0 && access(path, F_OK) != 0);
    CHECK(vf_st_writer_remaining(w) == sizeof data);
    /* Pieces that straddle tensor boundaries. */
    CHECK_OK(vf_st_writer_write(w, data, 7));
    CHECK_OK(vf_st_writer_write(w, data + 7, 60));
    CHECK_OK(vf_st_writer_write(w, data + 67, 0));
    CHECK_OK(vf_st_writer_write(w, data + 67, sizeof data - 67));
    CHECK(vf_st_writer_remaining(w) == 0);
    CHECK_OK(vf_st_writer_close(w));
    CHECK(access(tmp, F_OK) != 0);
    vf_st_file *f = NULL;
    CHECK_OK(vf_st_open(path, &f));
    if (f) {
        CHECK(vf_st_count(f) == 3);
        const vf_st_tensor *b = vf_st_find(f, "b");
        unsigned char got[14];
        CHECK(b && b->nbytes == 14);
        if (b) {
            CHECK_OK(vf_st_read(f, b, 0, got, 14));
            CHECK(memcmp(got, data + 60, 14) == 0);
        }
        const vf_st_tensor *c = vf_st_find(f, "c");
        CHECK(c && c->ndim == 0 && c->nbytes == 4);
        CHECK(strcmp(vf_st_metadata(f, "format"), "pt") == 0);
        vf_st_close(f);
    }
    unlink(path);

    /* Too few bytes: close fails naming the tensor, nothing is left. */
    CHECK_OK(vf_st_writer_open(path, ts, 3, NULL, &w));
    CHECK_OK(vf_st_writer_write(w, data, 61));
    CHECK(vf_st_writer_close(w) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "'b'") != NULL);
    CHECK(access(tmp, F_OK) != 0 && access(path, F_OK) != 0);
    /* Too many: refused, and the writer stays failed. */
    CHECK_OK(vf_st_writer_open(path, ts, 3, NULL, &w));
    CHECK(vf_st_writer_write(w, data, sizeof data + 1) == VF_ERR_INVALID_ARG);
    CHECK(vf_st_writer_write(w, data, 1) != VF_OK);
    CHECK(vf_st_writer_close(w) != VF_OK);
    CHECK(access(tmp, F_OK) != 0 && access(path, F_OK) != 0);
    /* Abort removes the temporary. */
    CHECK_OK(vf_st_writer_open(path, ts, 3, NULL, &w));
    vf_st_writer_abort(w);
    vf_st_writer_abort(NULL);
    CHECK(access(tmp, F_OK) != 0 && access(path, F_OK) != 0);
    /* Bad specs: duplicate names. */
    ts[1].name = "a";
    w = (vf_st_writer *)1;
    CHECK(vf_st_writer_open(path, ts, 3, NULL, &w) == VF_ERR_INVALID_ARG && w == NULL);
    /* A folder that does not exist: the error names the file. */
    ts[1].name = "b";
    snprintf(path, sizeof path, "%s/missing/w.safetensors", root);
    CHECK(vf_st_writer_open(path, ts, 3, NULL, &w) == VF_ERR_IO);
    CHECK(strstr(vf_last_error(), "missing/w.safetensors") != NULL);
    vf_remove_tree(root);
}

TEST_MAIN(TEST(test_full_counts), TEST(test_vocab), TEST(test_tiny_sd15), TEST(test_tiny_sdxl),
          TEST(test_values), TEST(test_targets), TEST(test_write_failure), TEST(test_alloc_failures),
          TEST(test_convert), TEST(test_writer))
