/* Synthesized models: the folder and the weights (see synth.h).
 *
 * Weights are generated and written in chunks of CHUNK elements through the
 * streaming safetensors writer, so memory is two small buffers whatever the
 * model's size. Element j of a tensor is a pure function of (seed, component,
 * tensor name, j): a splitmix64 finaliser over a counter, 24 of whose bits
 * make a uniform value (layer weights and biases), or whose four 16-bit lanes
 * summed make an approximately normal one (the Irwin-Hall sum of four
 * uniforms, scaled to unit variance: embedding tables). Integer hashing
 * plus one float multiply is exact on every IEEE machine, so a seed gives the
 * same bytes everywhere; and it is a few nanoseconds per value, so the 2.6 G
 * parameters of SDXL's UNet cost less time than writing them.
 *
 * The folder is assembled in DIR.tmp-XXXXXX beside DIR and renamed at the end:
 * a failure removes the temporary folder and leaves DIR as it was.
 */
#include "pipeline/synth.h"
#include "core/alloc.h"
#include "core/dtype.h"
#include "core/error.h"
#include "io/json.h"
#include "io/outdir.h"
#include "io/safetensors.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK (1 << 16) /* elements generated per write */

void vf_synth_options_init(vf_synth_options *o)
{
    if (!o)
        return;
    memset(o, 0, sizeof *o);
    o->arch = VF_ARCH_SDXL;
    o->dtype = VF_DTYPE_F16;
    o->preset = VF_SYNTH_FULL;
}

/* ---- values ------------------------------------------------------------------------- */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* FNV-1a over "component/name", mixed with the seed: one stream per tensor. */
static uint64_t tensor_key(uint64_t seed, const char *comp, const char *name)
{
    uint64_t h = 0xCBF29CE484222325ull;
    for (const char *p = comp; *p; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001B3ull;
    h = (h ^ '/') * 0x100000001B3ull;
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001B3ull;
    return mix64(h ^ mix64(seed));
}

typedef enum fill_kind { FILL_ZERO, FILL_ONE, FILL_NORMAL, FILL_UNIFORM } fill_kind;

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* fan_in of a weight: the product of all but its first dim. */
static double fan_in_of(const vf_wspec *w)
{
    double fan_in = 1;
    for (int d = 1; d < w->ndim; d++)
        fan_in *= (double)w->shape[d];
    return fan_in;
}

/* The weight beside bias b ("x.bias" -> "x.weight"), or NULL. */
static const vf_wspec *weight_of_bias(const vf_blocklist *bl, const vf_wspec *b)
{
    size_t n = strlen(b->name) - strlen("bias");
    for (int i = 0; i < bl->nw; i++) {
        const char *name = bl->w[i].name;
        if (strncmp(name, b->name, n) == 0 && strcmp(name + n, "weight") == 0)
            return &bl->w[i];
    }
    return NULL;
}

/* What PyTorch's layers start from, as diffusers' from_config builds them:
 * linear and convolution weights and biases uniform in +-1/sqrt(fan_in)
 * (kaiming_uniform with a = sqrt(5)), norm scales 1 and shifts 0; embedding
 * tables normal(0, 0.02) (CLIP's). *bound is the uniform bound or the std.
 * (Until 2026-11-27 weights were normal(0, 1/sqrt(fan_in)) and biases 0: a
 * random UNet that amplified weight errors about eightfold, where diffusers'
 * own random SDXL amplifies them about threefold; bench/RESULTS.md.) */
static fill_kind tensor_fill(const vf_blocklist *bl, const vf_wspec *w, double *bound)
{
    if (ends_with(w->name, ".bias")) {
        const vf_wspec *wt = weight_of_bias(bl, w);
        if (!wt || wt->ndim < 2)
            return FILL_ZERO;
        *bound = 1.0 / sqrt(fan_in_of(wt));
        return FILL_UNIFORM;
    }
    if (w->ndim == 1)
        return FILL_ONE;
    if (ends_with(w->name, "token_embedding.weight") || ends_with(w->name, "position_embedding.weight")) {
        *bound = 0.02;
        return FILL_NORMAL;
    }
    *bound = 1.0 / sqrt(fan_in_of(w));
    return FILL_UNIFORM;
}

// out is (n): values j0 .. j0+n-1 of the stream key, approximately normal(0, std)
static void gen_normal(uint64_t key, uint64_t j0, size_t n, double std, float *out)
{
    /* Four uniform 16-bit lanes sum to mean 2*65535 and variance 4*(65536^2-1)/12. */
    const float scale = (float)(std * sqrt(3.0) / 65536.0);
    uint64_t ctr = key + (j0 + 1) * 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < n; i++, ctr += 0x9E3779B97F4A7C15ull) {
        uint64_t r = mix64(ctr);
        int32_t s = (int32_t)(r & 0xFFFF) + (int32_t)((r >> 16) & 0xFFFF) +
                    (int32_t)((r >> 32) & 0xFFFF) + (int32_t)(r >> 48) - 131070;
        out[i] = (float)s * scale;
    }
}

// out is (n): values j0 .. j0+n-1 of the stream key, uniform in (-bound, bound)
static void gen_uniform(uint64_t key, uint64_t j0, size_t n, double bound, float *out)
{
    /* 24 random bits u give the odd integer 2u + 1 - 2^24, exact in float32,
     * times one constant: the same bytes on every IEEE machine. */
    const float scale = (float)(bound / 16777216.0);
    uint64_t ctr = key + (j0 + 1) * 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < n; i++, ctr += 0x9E3779B97F4A7C15ull) {
        int32_t u = (int32_t)(mix64(ctr) >> 40);
        out[i] = (float)(2 * u + 1 - 16777216) * scale;
    }
}

/* ---- narrowing ------------------------------------------------------------------------ */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* f32 -> f16, round to nearest even, with the results of vf_f32_to_f16 but no
 * data-dependent branches (random mantissas made those mispredict half the
 * time, so that narrowing cost 4x generating the value); every case is
 * computed and the right one selected, which the compiler can vectorise. */
static uint16_t to_f16(float f)
{
    uint32_t u = f32_bits(f), sign = (u >> 16) & 0x8000, a = u & 0x7FFFFFFF;
    float g;
    memcpy(&g, &a, 4);
    /* Below 2^-14: adding 0.5 (whose ulp is 2^-24, the f16 subnormal step)
     * makes the FPU round the subnormal mantissa into the low bits. */
    uint32_t sub = f32_bits(g + 0.5f) - 0x3F000000u;
    /* Normal: rebias the exponent ((15 - 127) << 23) and round the 13 dropped
     * bits to even; a carry out of the mantissa lands in the exponent, which
     * is the right result. */
    uint32_t nor = (a + 0xC8000FFFu + ((a >> 13) & 1)) >> 13;
    uint32_t r = a < 0x38800000u ? sub : nor;
    r = a >= 0x477FF000u ? 0x7C00u : r;                         /* 65520 and up: inf */
    r = a > 0x7F800000u ? 0x7E00u | ((a & 0x7FFFFF) >> 13) : r; /* NaN, as vf_f32_to_f16 */
    return (uint16_t)(sign | r);
}

static uint16_t to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFF) > 0x7F800000u)
        return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

void vf_synth_convert(void *dst, vf_dtype t, const float *src, size_t n)
{
    uint16_t *h = dst;
    if (t == VF_DTYPE_F16) {
        for (size_t i = 0; i < n; i++)
            h[i] = to_f16(src[i]);
    } else if (t == VF_DTYPE_BF16) {
        for (size_t i = 0; i < n; i++)
            h[i] = to_bf16(src[i]);
    } else {
        vf_convert_from_f32(dst, t, src, n);
    }
}

/* ---- one component ------------------------------------------------------------------ */

typedef struct synth_ctx {
    const vf_synth_options *o;
    const char *root;            /* the temporary folder being filled */
    int32_t vocab;
    float *f32;                  /* CHUNK floats                      */
    unsigned char *bytes;        /* CHUNK elements of the output type */
} synth_ctx;

typedef struct progress {
    const synth_ctx *x;
    const char *file;
    uint64_t done, total;
} progress;

static vf_status write_tensor(const synth_ctx *x, vf_st_writer *w, const char *comp, const vf_blocklist *bl,
                              const vf_wspec *ws, progress *pr)
{
    uint64_t numel = 1;
    for (int d = 0; d < ws->ndim; d++)
        numel *= (uint64_t)ws->shape[d];
    double bound = 0;
    fill_kind kind = tensor_fill(bl, ws, &bound);
    uint64_t key = tensor_key(x->o->seed, comp, ws->name);
    size_t esz = vf_dtype_size(x->o->dtype);
    for (uint64_t j = 0; j < numel; j += CHUNK) {
        size_t n = numel - j < CHUNK ? (size_t)(numel - j) : CHUNK;
        if (kind == FILL_NORMAL) {
            gen_normal(key, j, n, bound, x->f32);
        } else if (kind == FILL_UNIFORM) {
            gen_uniform(key, j, n, bound, x->f32);
        } else {
            for (size_t i = 0; i < n; i++)
                x->f32[i] = kind == FILL_ONE ? 1.0f : 0.0f;
        }
        vf_synth_convert(x->bytes, x->o->dtype, x->f32, n);
        VF_TRY(vf_st_writer_write(w, x->bytes, n * esz));
    }
    pr->done += numel * esz;
    if (x->o->progress)
        x->o->progress(x->o->user, pr->file, pr->done, pr->total);
    return VF_OK;
}

/* The writer's specs for every tensor of bl (names borrowed from bl). */
static vf_st_write_tensor *make_specs(const vf_blocklist *bl, vf_dtype dtype, uint64_t *total)
{
    vf_st_write_tensor *ts = vf_calloc((size_t)bl->nw + 1, sizeof *ts);
    if (!ts)
        return NULL;
    *total = 0;
    for (int i = 0; i < bl->nw; i++) {
        uint64_t numel = 1;
        ts[i].name = bl->w[i].name;
        ts[i].dtype = dtype;
        ts[i].ndim = bl->w[i].ndim;
        for (int d = 0; d < ts[i].ndim; d++) {
            ts[i].shape[d] = bl->w[i].shape[d];
            numel *= (uint64_t)ts[i].shape[d];
        }
        *total += numel * vf_dtype_size(dtype);
    }
    return ts;
}

static vf_status write_weights(const synth_ctx *x, vf_component c, const vf_blocklist *bl,
                               const char *path, const char *rel)
{
    uint64_t total = 0;
    vf_st_write_tensor *ts = make_specs(bl, x->o->dtype, &total);
    if (!ts)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
    char seed[24];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)x->o->seed);
    const char *meta[] = {"format", "pt", "vramfit_synth_seed", seed, NULL};
    vf_st_writer *w = NULL;
    vf_status st = vf_st_writer_open(path, ts, (size_t)bl->nw, meta, &w);
    progress pr = {x, rel, 0, total};
    for (int i = 0; st == VF_OK && i < bl->nw; i++)
        st = write_tensor(x, w, vf_component_name(c), bl, &bl->w[i], &pr);
    if (st == VF_OK)
        st = vf_st_writer_close(w);
    else
        vf_st_writer_abort(w);
    vf_free(ts);
    return st;
}

/* root/a/b as a new string. */
static char *join3(const char *root, const char *a, const char *b)
{
    char *p = vf_path_join(root, a);
    char *q = p && b ? vf_path_join(p, b) : NULL;
    if (!b)
        return p;
    vf_free(p);
    return q;
}

static vf_status make_dir(const char *root, const char *name, char **out)
{
    char *p = join3(root, name, NULL);
    if (!p)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s/%s", root, name);
    if (mkdir(p, 0755) != 0) {
        vf_status st = vf_error(VF_ERR_IO, "%s: cannot create folder: %s", p, strerror(errno));
        vf_free(p);
        return st;
    }
    *out = p;
    return VF_OK;
}

static vf_status write_text_file(const char *path, const char *text)
{
    vf_status st = VF_OK;
    size_t len = strlen(text);
    FILE *f = fopen(path, "wb");
    if (!f) {
        st = vf_error(VF_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    } else {
        int bad = fwrite(text, 1, len, f) != len || fputc('\n', f) == EOF;
        int err = errno;
        if (fclose(f) != 0 && !bad) {
            bad = 1;
            err = errno;
        }
        if (bad)
            st = vf_error(VF_ERR_IO, "%s: write failed: %s", path, strerror(err));
    }
    return st;
}

static vf_status write_json_file(const char *path, const cJSON *j)
{
    char *text = cJSON_Print(j);
    if (!text)
        return vf_error(VF_ERR_NO_MEMORY, "%s: out of memory", path);
    vf_status st = write_text_file(path, text);
    cJSON_free(text);
    return st;
}

/* root/<comp>/config.json and the weights file. */
static vf_status write_component(const synth_ctx *x, vf_component c)
{
    const char *name = vf_component_name(c);
    const char *file = c == VF_COMPONENT_TEXT_ENCODER || c == VF_COMPONENT_TEXT_ENCODER_2
                           ? "model.safetensors"
                           : "diffusion_pytorch_model.safetensors";
    char *dir = NULL, *cfg_path = NULL, *w_path = NULL, *text = NULL, rel[96];
    cJSON *cfg = NULL;
    vf_blocklist bl;
    vf_bl_init(&bl, c);
    snprintf(rel, sizeof rel, "%s/%s", name, file);
    vf_status st = make_dir(x->root, name, &dir);
    if (st == VF_OK)
        st = vf_synth_config(x->o->arch, x->o->preset, c, x->vocab, x->o->dtype, &cfg, &text);
    if (st == VF_OK) {
        cfg_path = join3(dir, "config.json", NULL);
        w_path = join3(dir, file, NULL);
        if (!cfg_path || !w_path)
            st = vf_error_prefix(VF_ERR_NO_MEMORY, "%s", dir);
    }
    if (st == VF_OK)
        st = write_text_file(cfg_path, text);
    if (st == VF_OK)
        st = vf_synth_describe(cfg, x->o->arch, c, &bl);
    if (st == VF_OK)
        st = write_weights(x, c, &bl, w_path, rel);
    vf_bl_free(&bl);
    cJSON_Delete(cfg);
    cJSON_free(text);
    vf_free(dir);
    vf_free(cfg_path);
    vf_free(w_path);
    return st;
}

/* ---- the folder ------------------------------------------------------------------------ */

/* model_index.json, scheduler/, tokenizer/ (and tokenizer_2/). */
static vf_status write_pipeline_files(const synth_ctx *x)
{
    int xl = x->o->arch == VF_ARCH_SDXL;
    cJSON *j = NULL;
    char *p = NULL, *dir = NULL;
    vf_status st = vf_synth_model_index(x->o->arch, &j);
    if (st == VF_OK && !(p = join3(x->root, "model_index.json", NULL)))
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "%s", x->root);
    if (st == VF_OK)
        st = write_json_file(p, j);
    cJSON_Delete(j);
    j = NULL;
    vf_free(p);
    p = NULL;
    if (st == VF_OK)
        st = make_dir(x->root, "scheduler", &dir);
    if (st == VF_OK)
        st = vf_synth_scheduler_config(x->o->arch, &j);
    if (st == VF_OK && !(p = join3(dir, "scheduler_config.json", NULL)))
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "%s", dir);
    if (st == VF_OK)
        st = write_json_file(p, j);
    cJSON_Delete(j);
    vf_free(p);
    vf_free(dir);
    for (int t = 0; t < 1 + xl && st == VF_OK; t++) {
        dir = NULL;
        st = make_dir(x->root, t ? "tokenizer_2" : "tokenizer", &dir);
        if (st == VF_OK)
            st = vf_synth_write_tokenizer(dir, t ? "!" : "<|endoftext|>");
        vf_free(dir);
    }
    return st;
}

static vf_status write_all(const vf_synth_options *o, const char *root)
{
    synth_ctx x = {o, root, vf_synth_vocab_size(), NULL, NULL};
    if (x.vocab == 0)
        return VF_ERR_NO_MEMORY; /* the message is set */
    x.f32 = vf_malloc(CHUNK * sizeof(float));
    x.bytes = vf_malloc(CHUNK * vf_dtype_size(o->dtype));
    vf_status st = x.f32 && x.bytes ? VF_OK : vf_error_prefix(VF_ERR_NO_MEMORY, "synth");
    if (st == VF_OK)
        st = write_pipeline_files(&x);
    for (int c = 0; c < VF_COMPONENT_COUNT && st == VF_OK; c++) {
        if (c == VF_COMPONENT_TEXT_ENCODER_2 && o->arch != VF_ARCH_SDXL)
            continue;
        st = write_component(&x, (vf_component)c);
    }
    vf_free(x.f32);
    vf_free(x.bytes);
    return st;
}

static vf_status check_options(const vf_synth_options *o, const char *outdir)
{
    if (!o)
        return vf_error(VF_ERR_INVALID_ARG, "synth: options are NULL");
    if (!outdir || !outdir[0])
        return vf_error(VF_ERR_INVALID_ARG, "synth: no output folder given");
    if (o->arch != VF_ARCH_SD15 && o->arch != VF_ARCH_SDXL)
        return vf_error(VF_ERR_INVALID_ARG, "synth: arch must be sd15 or sdxl");
    if (o->dtype != VF_DTYPE_F32 && o->dtype != VF_DTYPE_F16 && o->dtype != VF_DTYPE_BF16)
        return vf_error(VF_ERR_INVALID_ARG, "synth: dtype %s: expected F32, F16 or BF16",
                        (unsigned)o->dtype < VF_DTYPE_COUNT ? vf_dtype_name(o->dtype) : "(invalid)");
    if (o->preset != VF_SYNTH_FULL && o->preset != VF_SYNTH_TINY)
        return vf_error(VF_ERR_INVALID_ARG, "synth: preset must be full or tiny");
    return VF_OK;
}

vf_status vf_synth(const vf_synth_options *o, const char *outdir)
{
    VF_TRY(check_options(o, outdir));
    vf_outdir_state state;
    char *tmp;
    VF_TRY(vf_outdir_check(outdir, o->force, &state));
    VF_TRY(vf_outdir_temp(outdir, &tmp));
    vf_status st = write_all(o, tmp);
    if (st == VF_OK)
        st = vf_outdir_install(tmp, outdir, state);
    if (st != VF_OK)
        vf_remove_tree(tmp);
    vf_free(tmp);
    return st;
}
