/* GPU parity of the CUDA backend against the CPU backend, op by op, and the
 * kernel benchmarks of bench/gpu.sh (--bench).
 *
 * Every check draws fresh random inputs (a new seed per check), rounds them
 * to the GPU's compute dtype on the host so both backends see the same
 * values, poisons both outputs with NaN, runs the op through the vf_be_* API
 * on the CUDA backend and on the CPU (float32) backend, and compares with
 * the parity measure max|gpu - cpu| / max|cpu|: 3e-3 for fp16, 1e-2 for
 * bf16 (fp32 accumulation everywhere; see main() for why not the other way
 * round). Every error is printed. Both dtypes
 * run, and convolutions run on every conv path the machine has (cuDNN when
 * it loads, im2col always).
 *
 * Exit 77 (skipped) when the CUDA backend is unavailable: no library, no
 * driver or no GPU, which is every CI machine.
 */
#include "backend/backend.h"
#include "core/alloc.h"
#include "core/dtype.h"
#include "vramfit.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static vf_backend *G, *C;
static vf_dtype DT;
static double TOL;
static int n_fail, n_pass;
static uint64_t seed = 0x9e3779b97f4a7c15ull;
static const char *conv_mode = "";
static char attn_tag[8] = "";  /* " v2": the wgmma flash variant under test */

/* ---- random inputs ----------------------------------------------------------------- */

static uint64_t rng_state;

static double urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return ((rng_state >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static float nrand(void) { return (float)(sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand())); }

static void fresh_seed(void)
{
    seed += 0x9e3779b97f4a7c15ull;
    rng_state = seed | 1;
}

static void die_oom(void)
{
    fprintf(stderr, "out of host memory\n");
    exit(1);
}

/* n normal values * scale + offset, rounded to the GPU dtype. */
static float *rnd(size_t n, float scale, float offset)
{
    float *h = malloc(n * sizeof(float));
    uint16_t *t = malloc(n * sizeof(uint16_t));
    if (!h || !t)
        die_oom();
    for (size_t i = 0; i < n; i++)
        h[i] = nrand() * scale + offset;
    vf_convert_from_f32(t, DT, h, n);
    vf_convert_to_f32(h, t, DT, n);
    free(t);
    return h;
}

typedef struct pair {
    vf_dbuf *g, *c;
    size_t n;
} pair;

static void must(vf_status st, const char *what)
{
    if (st != VF_OK) {
        fprintf(stderr, "FATAL %s: %s\n", what, vf_last_error());
        exit(1);
    }
}

static pair alloc_pair(size_t n)
{
    pair p = {NULL, NULL, n};
    must(vf_be_alloc(G, n, &p.g), "gpu alloc");
    must(vf_be_alloc(C, n, &p.c), "cpu alloc");
    return p;
}

static void free_pair(pair *p)
{
    vf_be_free(G, p->g);
    vf_be_free(C, p->c);
}

/* A flat input. */
static pair in_flat(size_t n, float scale, float offset)
{
    pair p = alloc_pair(n);
    float *h = rnd(n, scale, offset);
    must(vf_be_upload(G, p.g, h, VF_DTYPE_F32, n), "upload");
    must(vf_be_upload(C, p.c, h, VF_DTYPE_F32, n), "upload");
    free(h);
    return p;
}

/* A feature map input (B,C,H,W). */
static pair in_fm(int B, int Cc, int H, int W, float scale, float offset)
{
    size_t n = (size_t)B * Cc * H * W;
    pair p = alloc_pair(n);
    float *h = rnd(n, scale, offset);
    must(vf_be_upload_fm(G, p.g, h, B, Cc, H, W), "upload_fm");
    must(vf_be_upload_fm(C, p.c, h, B, Cc, H, W), "upload_fm");
    free(h);
    return p;
}

static pair in_convw(int OC, int Cc, int KH, int KW)
{
    size_t n = (size_t)OC * Cc * KH * KW;
    pair p = alloc_pair(n);
    float *h = rnd(n, 1.0f / sqrtf((float)(Cc * KH * KW)), 0.0f);
    must(vf_be_upload_conv_weight(G, p.g, h, VF_DTYPE_F32, OC, Cc, KH, KW), "upload_conv_weight");
    must(vf_be_upload_conv_weight(C, p.c, h, VF_DTYPE_F32, OC, Cc, KH, KW), "upload_conv_weight");
    free(h);
    return p;
}

/* An output, both sides poisoned with NaN. */
static pair out_buf(size_t n)
{
    pair p = alloc_pair(n);
    float *h = malloc(n * sizeof(float));
    if (!h)
        die_oom();
    for (size_t i = 0; i < n; i++)
        h[i] = NAN;
    must(vf_be_upload(G, p.g, h, VF_DTYPE_F32, n), "poison");
    must(vf_be_upload(C, p.c, h, VF_DTYPE_F32, n), "poison");
    free(h);
    return p;
}

/* Compares; fm != 0 reads both as (B,C,H,W) feature maps. */
static void compare(const char *name, pair *p, int fm, int B, int Cc, int H, int W)
{
    float *a = malloc(p->n * sizeof(float)), *b = malloc(p->n * sizeof(float));
    if (!a || !b)
        die_oom();
    vf_status s1 = fm ? vf_be_download_fm(G, a, p->g, B, Cc, H, W) : vf_be_download(G, a, p->g, p->n);
    if (s1 != VF_OK) {
        printf("FAIL %-44s %s %s: download: %s\n", name, vf_dtype_name(DT), conv_mode, vf_last_error());
        n_fail++;
        free(a);
        free(b);
        return;
    }
    must(fm ? vf_be_download_fm(C, b, p->c, B, Cc, H, W) : vf_be_download(C, b, p->c, p->n), "download");
    double max_abs = 0, max_ref = 0;
    size_t nan = 0;
    for (size_t i = 0; i < p->n; i++) {
        if (isnan(a[i]) || isnan(b[i])) {
            nan++;
            continue;
        }
        double d = fabs((double)a[i] - b[i]);
        max_abs = d > max_abs ? d : max_abs;
        max_ref = fabs(b[i]) > max_ref ? fabs(b[i]) : max_ref;
    }
    double rel = max_ref > 0 ? max_abs / max_ref : max_abs;
    int ok = nan == 0 && rel <= TOL;
    printf("%s %-44s %s %-11s max rel err %.3e (max abs %.3e, max|ref| %.3g)%s\n", ok ? "ok  " : "FAIL", name,
           vf_dtype_name(DT), conv_mode, rel, max_abs, max_ref, nan ? " NaN/unwritten outputs" : "");
    if (ok)
        n_pass++;
    else
        n_fail++;
    free(a);
    free(b);
}

static void expect_ok(vf_status st, const char *name)
{
    if (st != VF_OK) {
        printf("FAIL %-44s %s: %s\n", name, vf_dtype_name(DT), vf_last_error());
        n_fail++;
    }
}

#define BOTH(name, call_g, call_c)       \
    do {                                 \
        expect_ok((call_g), name " (gpu)"); \
        expect_ok((call_c), name " (cpu)"); \
    } while (0)

/* ---- checks -------------------------------------------------------------------------- */

static void check_linear(int M, int K, int N, int bias, vf_act act, int resid)
{
    char name[96];
    snprintf(name, sizeof name, "linear %dx%dx%d%s act%d%s", M, K, N, bias ? " bias" : "", (int)act,
             resid == 1 ? " +r" : (resid == 2 ? " y+=" : ""));
    fresh_seed();
    pair x = in_flat((size_t)M * K, 1.0f, 0.0f), w = in_flat((size_t)N * K, 1.0f / sqrtf((float)K), 0.0f);
    pair b = in_flat((size_t)N, 0.5f, 0.0f), y = resid == 2 ? in_flat((size_t)M * N, 1.0f, 0.0f) : out_buf((size_t)M * N);
    pair r = in_flat((size_t)M * N, 1.0f, 0.0f);
    const vf_dbuf *rg = resid == 1 ? r.g : (resid == 2 ? y.g : NULL), *rc = resid == 1 ? r.c : (resid == 2 ? y.c : NULL);
    BOTH("linear", vf_be_linear(G, y.g, x.g, w.g, bias ? b.g : NULL, rg, M, K, N, act),
         vf_be_linear(C, y.c, x.c, w.c, bias ? b.c : NULL, rc, M, K, N, act));
    compare(name, &y, 0, 0, 0, 0, 0);
    free_pair(&x);
    free_pair(&w);
    free_pair(&b);
    free_pair(&y);
    free_pair(&r);
}

static void check_conv(int B, int Cc, int H, int W, int OC, int k, int stride, int pad, int resid)
{
    char name[96];
    int OH = (H + 2 * pad - k) / stride + 1, OW = (W + 2 * pad - k) / stride + 1;
    snprintf(name, sizeof name, "conv %dx%dx%dx%d->%d k%d s%d%s", B, Cc, H, W, OC, k, stride,
             resid == 1 ? " +r" : (resid == 2 ? " y+=" : ""));
    fresh_seed();
    pair x = in_fm(B, Cc, H, W, 1.0f, 0.0f), w = in_convw(OC, Cc, k, k), b = in_flat((size_t)OC, 0.5f, 0.0f);
    pair y = resid == 2 ? in_fm(B, OC, OH, OW, 1.0f, 0.0f) : out_buf((size_t)B * OC * OH * OW);
    pair r = in_fm(B, OC, OH, OW, 1.0f, 0.0f);
    const vf_dbuf *rg = resid == 1 ? r.g : (resid == 2 ? y.g : NULL), *rc = resid == 1 ? r.c : (resid == 2 ? y.c : NULL);
    BOTH("conv2d", vf_be_conv2d(G, y.g, x.g, w.g, b.g, rg, B, Cc, H, W, OC, k, k, stride, pad),
         vf_be_conv2d(C, y.c, x.c, w.c, b.c, rc, B, Cc, H, W, OC, k, k, stride, pad));
    compare(name, &y, 1, B, OC, OH, OW);
    free_pair(&x);
    free_pair(&w);
    free_pair(&b);
    free_pair(&y);
    free_pair(&r);
}

static void check_groupnorm(int B, int Cc, int H, int W, int Gr, int silu, int cb, float offset)
{
    char name[96];
    snprintf(name, sizeof name, "groupnorm %dx%dx%dx%d G%d%s%s off%g", B, Cc, H, W, Gr, silu ? " silu" : "",
             cb ? " +temb" : "", offset);
    fresh_seed();
    pair x = in_fm(B, Cc, H, W, 2.0f, offset), g = in_flat((size_t)Cc, 1.0f, 1.0f), be = in_flat((size_t)Cc, 0.5f, 0.0f);
    pair t = in_flat((size_t)B * Cc, 1.0f, 0.0f), y = out_buf((size_t)B * Cc * H * W);
    BOTH("groupnorm",
         vf_be_groupnorm(G, y.g, x.g, g.g, be.g, cb ? t.g : NULL, B, Cc, H * W, Gr, 1e-5f, silu),
         vf_be_groupnorm(C, y.c, x.c, g.c, be.c, cb ? t.c : NULL, B, Cc, H * W, Gr, 1e-5f, silu));
    compare(name, &y, 1, B, Cc, H, W);
    /* in place */
    BOTH("groupnorm in place", vf_be_groupnorm(G, x.g, x.g, g.g, be.g, NULL, B, Cc, H * W, Gr, 1e-6f, silu),
         vf_be_groupnorm(C, x.c, x.c, g.c, be.c, NULL, B, Cc, H * W, Gr, 1e-6f, silu));
    snprintf(name, sizeof name, "groupnorm in place %dx%dx%dx%d", B, Cc, H, W);
    compare(name, &x, 1, B, Cc, H, W);
    free_pair(&x);
    free_pair(&g);
    free_pair(&be);
    free_pair(&t);
    free_pair(&y);
}

static void check_layernorm(int rows, int Cc, float offset)
{
    char name[96];
    snprintf(name, sizeof name, "layernorm %dx%d off%g", rows, Cc, offset);
    fresh_seed();
    pair x = in_flat((size_t)rows * Cc, 1.5f, offset), g = in_flat((size_t)Cc, 1.0f, 1.0f), b = in_flat((size_t)Cc, 0.5f, 0.0f);
    pair y = out_buf((size_t)rows * Cc);
    BOTH("layernorm", vf_be_layernorm(G, y.g, x.g, g.g, b.g, rows, Cc, 1e-5f),
         vf_be_layernorm(C, y.c, x.c, g.c, b.c, rows, Cc, 1e-5f));
    compare(name, &y, 0, 0, 0, 0, 0);
    free_pair(&x);
    free_pair(&g);
    free_pair(&b);
    free_pair(&y);
}

static void check_elementwise(size_t n)
{
    char name[96];
    for (int a = VF_ACT_SILU; a <= VF_ACT_QUICK_GELU; a++) {
        fresh_seed();
        pair x = in_flat(n, 3.0f, 0.0f);
        BOTH("act", vf_be_act(G, x.g, n, (vf_act)a), vf_be_act(C, x.c, n, (vf_act)a));
        snprintf(name, sizeof name, "act %d n=%zu", a, n);
        compare(name, &x, 0, 0, 0, 0, 0);
        free_pair(&x);
    }
    fresh_seed();
    pair y = in_flat(n, 1.0f, 0.0f), x = in_flat(n, 1.0f, 0.0f);
    BOTH("add", vf_be_add(G, y.g, x.g, n), vf_be_add(C, y.c, x.c, n));
    snprintf(name, sizeof name, "add n=%zu", n);
    compare(name, &y, 0, 0, 0, 0, 0);
    BOTH("axpby", vf_be_axpby(G, y.g, x.g, n, 0.75f, -7.5f), vf_be_axpby(C, y.c, x.c, n, 0.75f, -7.5f));
    snprintf(name, sizeof name, "axpby n=%zu", n);
    compare(name, &y, 0, 0, 0, 0, 0);
    free_pair(&x);
    free_pair(&y);
}

static void check_geglu(int rows, int inner)
{
    char name[96];
    snprintf(name, sizeof name, "geglu %dx%d", rows, inner);
    fresh_seed();
    pair x = in_flat((size_t)rows * 2 * inner, 2.0f, 0.0f), y = out_buf((size_t)rows * inner);
    BOTH("geglu", vf_be_geglu(G, y.g, x.g, rows, inner), vf_be_geglu(C, y.c, x.c, rows, inner));
    compare(name, &y, 0, 0, 0, 0, 0);
    free_pair(&x);
    free_pair(&y);
}

/* fused: q, k, v are column slices of one (B, L, 3*H*D) projection */
static void check_attention(int B, int Lq, int Lk, int H, int D, int causal, int fused)
{
    char name[96];
    int hd = H * D;
    snprintf(name, sizeof name, "attention B%d Lq%d Lk%d H%d D%d%s%s%s", B, Lq, Lk, H, D, causal ? " causal" : "",
             fused ? " qkv-strided" : "", attn_tag);
    fresh_seed();
    float scale = 1.0f / sqrtf((float)D);
    if (fused) {
        /* the output is a column slice too, at a 16-byte aligned offset */
        const int OFF = 8;
        pair qkv = in_flat((size_t)B * Lq * 3 * hd, 1.5f, 0.0f), o = out_buf((size_t)B * Lq * 2 * hd);
        BOTH("attention",
             vf_be_attention(G, vf_be_at(G, o.g, OFF), qkv.g, vf_be_cat(G, qkv.g, hd), vf_be_cat(G, qkv.g, 2 * hd),
                             B, Lq, Lq, H, D, 3 * hd, 3 * hd, 3 * hd, 2 * hd, causal, scale),
             vf_be_attention(C, vf_be_at(C, o.c, OFF), qkv.c, vf_be_cat(C, qkv.c, hd), vf_be_cat(C, qkv.c, 2 * hd),
                             B, Lq, Lq, H, D, 3 * hd, 3 * hd, 3 * hd, 2 * hd, causal, scale));
        /* only the written columns: rows of 2hd where [OFF, OFF+hd) is set */
        float *a = malloc(o.n * sizeof(float)), *b = malloc(o.n * sizeof(float));
        if (!a || !b)
            die_oom();
        must(vf_be_download(G, a, o.g, o.n), "download");
        must(vf_be_download(C, b, o.c, o.n), "download");
        size_t rows = (size_t)B * Lq, k = 0;
        pair packed = alloc_pair(rows * hd);
        float *pa = malloc(rows * hd * sizeof(float)), *pb = malloc(rows * hd * sizeof(float));
        if (!pa || !pb)
            die_oom();
        for (size_t r = 0; r < rows; r++)
            for (int c = 0; c < hd; c++, k++) {
                pa[k] = a[r * 2 * hd + OFF + c];
                pb[k] = b[r * 2 * hd + OFF + c];
            }
        /* untouched neighbours must still be the poison */
        int kept = isnan(a[0]) && isnan(a[OFF - 1]) && isnan(a[OFF + hd]);
        must(vf_be_upload(G, packed.g, pa, VF_DTYPE_F32, rows * hd), "upload");
        must(vf_be_upload(C, packed.c, pb, VF_DTYPE_F32, rows * hd), "upload");
        if (!kept) {
            printf("FAIL %-44s wrote outside its strided output\n", name);
            n_fail++;
        }
        compare(name, &packed, 0, 0, 0, 0, 0);
        free(a);
        free(b);
        free(pa);
        free(pb);
        free_pair(&packed);
        free_pair(&qkv);
        free_pair(&o);
        return;
    }
    pair q = in_flat((size_t)B * Lq * hd, 1.5f, 0.0f), k = in_flat((size_t)B * Lk * hd, 1.5f, 0.0f);
    pair v = in_flat((size_t)B * Lk * hd, 1.0f, 0.0f), o = out_buf((size_t)B * Lq * hd);
    BOTH("attention", vf_be_attention(G, o.g, q.g, k.g, v.g, B, Lq, Lk, H, D, 0, 0, 0, 0, causal, scale),
         vf_be_attention(C, o.c, q.c, k.c, v.c, B, Lq, Lk, H, D, 0, 0, 0, 0, causal, scale));
    compare(name, &o, 0, 0, 0, 0, 0);
    free_pair(&q);
    free_pair(&k);
    free_pair(&v);
    free_pair(&o);
}

static void check_layout_ops(int B, int Ca, int Cb, int H, int W)
{
    char name[96];
    int HW = H * W;
    fresh_seed();
    pair a = in_fm(B, Ca, H, W, 1.0f, 0.0f), b = in_fm(B, Cb, H, W, 1.0f, 0.0f);
    pair y = out_buf((size_t)B * (Ca + Cb) * HW), u = out_buf((size_t)B * Ca * 4 * HW);
    pair t = out_buf((size_t)B * Ca * HW), f = out_buf((size_t)B * Ca * HW);
    BOTH("concat", vf_be_concat(G, y.g, a.g, Ca, b.g, Cb, B, HW), vf_be_concat(C, y.c, a.c, Ca, b.c, Cb, B, HW));
    snprintf(name, sizeof name, "concat %d+%d %dx%d", Ca, Cb, H, W);
    compare(name, &y, 1, B, Ca + Cb, H, W);
    BOTH("upsample", vf_be_upsample2x(G, u.g, a.g, B, Ca, H, W), vf_be_upsample2x(C, u.c, a.c, B, Ca, H, W));
    snprintf(name, sizeof name, "upsample2x %dx%dx%dx%d", B, Ca, H, W);
    compare(name, &u, 1, B, Ca, 2 * H, 2 * W);
    BOTH("fm_to_tokens", vf_be_fm_to_tokens(G, t.g, a.g, B, Ca, HW), vf_be_fm_to_tokens(C, t.c, a.c, B, Ca, HW));
    snprintf(name, sizeof name, "fm_to_tokens %dx%dx%d", B, Ca, HW);
    compare(name, &t, 0, 0, 0, 0, 0);
    BOTH("tokens_to_fm", vf_be_tokens_to_fm(G, f.g, t.g, B, Ca, HW), vf_be_tokens_to_fm(C, f.c, t.c, B, Ca, HW));
    snprintf(name, sizeof name, "tokens_to_fm round trip %dx%dx%d", B, Ca, HW);
    compare(name, &f, 1, B, Ca, H, W);
    free_pair(&a);
    free_pair(&b);
    free_pair(&y);
    free_pair(&u);
    free_pair(&t);
    free_pair(&f);
}

static void check_timestep(int B, int dim, int flip, float shift)
{
    char name[96];
    float t[4] = {999.0f, 0.3125f, 517.77f, 1.0f};
    snprintf(name, sizeof name, "timestep_embedding B%d dim%d flip%d", B, dim, flip);
    pair o = out_buf((size_t)B * dim);
    BOTH("timestep", vf_be_timestep_embedding(G, o.g, t, B, dim, flip, shift),
         vf_be_timestep_embedding(C, o.c, t, B, dim, flip, shift));
    compare(name, &o, 0, 0, 0, 0, 0);
    free_pair(&o);
}

/* Raw bytes on the copy stream, made visible to compute by an event. */
static void check_streams(size_t n)
{
    fresh_seed();
    float *h = rnd(n, 1.0f, 0.0f);
    uint16_t *raw = malloc(n * 2);
    if (!raw)
        die_oom();
    vf_convert_from_f32(raw, DT, h, n);
    pair y = in_flat(n, 1.0f, 0.0f), x = alloc_pair(n);
    vf_bevent *ev = NULL;
    must(vf_be_event_create(G, &ev), "event");
    expect_ok(vf_be_h2d_async(G, x.g, raw, n * 2), "h2d_async");
    expect_ok(vf_be_record(G, ev, VF_STREAM_COPY), "record");
    expect_ok(vf_be_wait(G, VF_STREAM_COMPUTE, ev), "wait");
    expect_ok(vf_be_add(G, y.g, x.g, n), "add after copy");
    must(vf_be_upload(C, x.c, h, VF_DTYPE_F32, n), "upload");
    expect_ok(vf_be_add(C, y.c, x.c, n), "add");
    expect_ok(vf_be_sync(G), "sync");
    compare("h2d_async on the copy stream + event + add", &y, 0, 0, 0, 0, 0);
    vf_be_event_destroy(G, ev);
    free_pair(&x);
    free_pair(&y);
    free(h);
    free(raw);
}

static void check_errors(void)
{
    pair x = alloc_pair(64);
    vf_status st = vf_be_linear(G, x.g, x.g, x.g, NULL, NULL, 8, 8, 8, VF_ACT_NONE);
    int ok1 = st == VF_ERR_INVALID_ARG;
    st = vf_be_attention(G, x.g, x.g, x.g, x.g, 1, 2, 2, 2, 8, 8, 0, 0, 0, 0, 1.0f);
    int ok2 = st == VF_ERR_INVALID_ARG;
    printf("%s invalid arguments rejected (aliasing, stride < H*D): %d %d\n", ok1 && ok2 ? "ok  " : "FAIL", ok1, ok2);
    ok1 && ok2 ? n_pass++ : n_fail++;
    free_pair(&x);
}

static void run_attention_checks(void)
{
    check_attention(2, 300, 300, 5, 64, 0, 0);
    check_attention(2, 256, 77, 10, 64, 0, 0);
    check_attention(1, 77, 77, 12, 64, 1, 0);
    check_attention(1, 77, 77, 20, 64, 1, 1);
    check_attention(2, 200, 200, 8, 40, 0, 0);
    check_attention(2, 130, 77, 8, 80, 0, 0);
    check_attention(1, 150, 150, 4, 128, 0, 0);
    check_attention(1, 70, 90, 3, 8, 0, 0);
    check_attention(1, 100, 100, 2, 96, 1, 0);
    check_attention(1, 160, 77, 8, 160, 0, 0);
    check_attention(1, 256, 256, 1, 512, 0, 0);
    check_attention(1, 50, 50, 3, 20, 1, 0);
    check_attention(2, 40, 40, 3, 20, 0, 1);
    check_attention(1, 1000, 1000, 2, 64, 1, 0);
    check_attention(3, 129, 200, 2, 48, 0, 0);
}

static void run_checks(void)
{
    check_linear(333, 320, 640, 1, VF_ACT_NONE, 0);
    check_linear(77, 768, 3072, 1, VF_ACT_QUICK_GELU, 0);
    check_linear(200, 1280, 640, 1, VF_ACT_GELU, 0);
    check_linear(128, 320, 1280, 1, VF_ACT_SILU, 0);
    check_linear(96, 256, 512, 1, VF_ACT_GELU_TANH, 0);
    check_linear(64, 512, 256, 0, VF_ACT_GELU_TANH, 0);
    check_linear(300, 640, 640, 0, VF_ACT_NONE, 0);
    check_linear(257, 640, 320, 1, VF_ACT_NONE, 1);
    check_linear(256, 1024, 320, 1, VF_ACT_NONE, 2);
    check_linear(3, 77, 5, 1, VF_ACT_NONE, 0);
    check_linear(2, 2816, 1280, 1, VF_ACT_SILU, 0);

    check_conv(2, 32, 24, 20, 64, 3, 1, 1, 0);
    check_conv(2, 64, 16, 16, 64, 3, 1, 1, 2);
    check_conv(1, 64, 17, 15, 32, 3, 2, 1, 0);
    check_conv(2, 4, 16, 16, 64, 3, 1, 1, 0);
    check_conv(2, 64, 12, 12, 4, 3, 1, 1, 0);
    check_conv(2, 96, 12, 12, 64, 1, 1, 0, 1);
    check_conv(1, 128, 16, 16, 128, 3, 1, 1, 1);

    check_groupnorm(2, 320, 24, 24, 32, 1, 1, 0.0f);
    check_groupnorm(2, 320, 24, 24, 32, 0, 0, 0.0f);
    check_groupnorm(1, 128, 33, 31, 32, 1, 0, 8.0f);
    check_groupnorm(2, 640, 8, 8, 32, 1, 1, 0.0f);
    check_groupnorm(1, 36, 10, 10, 12, 1, 0, 0.0f);

    check_layernorm(500, 640, 0.0f);
    check_layernorm(77, 1280, 4.0f);
    check_layernorm(33, 100, 0.0f);

    check_elementwise(100000);
    check_elementwise(12345);
    check_geglu(300, 1280);
    check_geglu(31, 100);

    run_attention_checks();

    check_layout_ops(2, 64, 32, 12, 10);
    check_layout_ops(1, 4, 3, 7, 9);
    check_timestep(4, 320, 1, 0.0f);
    check_timestep(2, 257, 0, 1.0f);
    check_streams(1 << 20);
    check_errors();
}

/* ---- benchmarks --------------------------------------------------------------------- */

static int cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

typedef vf_status (*bench_fn)(void *ctx);

/* Median device time of reps runs after warm runs, each between two events. */
static float time_ms(bench_fn fn, void *ctx, int warm, int reps)
{
    vf_bevent *e0, *e1;
    float *t = calloc((size_t)reps, sizeof(float)), med;
    must(vf_be_event_create(G, &e0), "event");
    must(vf_be_event_create(G, &e1), "event");
    for (int i = 0; i < warm; i++)
        must(fn(ctx), "warm-up");
    must(vf_be_sync(G), "sync");
    for (int i = 0; i < reps; i++) {
        must(vf_be_record(G, e0, VF_STREAM_COMPUTE), "record");
        must(fn(ctx), "bench");
        must(vf_be_record(G, e1, VF_STREAM_COMPUTE), "record");
        must(vf_be_event_sync(G, e1), "event sync");
        must(vf_be_elapsed_ms(G, e0, e1, &t[i]), "elapsed");
    }
    qsort(t, (size_t)reps, sizeof(float), cmp_f);
    med = t[reps / 2];
    vf_be_event_destroy(G, e0);
    vf_be_event_destroy(G, e1);
    free(t);
    return med;
}

typedef struct attn_ctx {
    vf_dbuf *q, *k, *v, *o;
    int B, L, Lk, H, D, causal;
} attn_ctx;

static vf_status run_attn(void *p)
{
    attn_ctx *c = p;
    return vf_be_attention(G, c->o, c->q, c->k, c->v, c->B, c->L, c->Lk, c->H, c->D, 0, 0, 0, 0, c->causal,
                           1.0f / sqrtf((float)c->D));
}

static vf_dbuf *dev_rand(size_t n, float scale)
{
    vf_dbuf *p;
    float *h = rnd(n, scale, 0.0f);
    must(vf_be_alloc(G, n, &p), "alloc");
    must(vf_be_upload(G, p, h, VF_DTYPE_F32, n), "upload");
    free(h);
    return p;
}

static void bench_attention(int B, int H, int L, int Lk, int D, int causal)
{
    attn_ctx c = {NULL, NULL, NULL, NULL, B, L, Lk, H, D, causal};
    fresh_seed();
    c.q = dev_rand((size_t)B * L * H * D, 1.0f);
    c.k = dev_rand((size_t)B * Lk * H * D, 1.0f);
    c.v = dev_rand((size_t)B * Lk * H * D, 1.0f);
    must(vf_be_alloc(G, (size_t)B * L * H * D, &c.o), "alloc");
    float ms = time_ms(run_attn, &c, 20, 100);
    double flops = 4.0 * B * H * (double)L * Lk * D * (causal ? 0.5 : 1.0);
    printf("BENCH attention %s B%d H%d L%d Lk%d D%d%s%s: %.4f ms  %.1f TFLOP/s\n", vf_dtype_name(DT), B, H, L, Lk, D,
           causal ? " causal" : "", attn_tag, ms, flops / (ms * 1e-3) / 1e12);
    vf_be_free(G, c.q);
    vf_be_free(G, c.k);
    vf_be_free(G, c.v);
    vf_be_free(G, c.o);
}

typedef struct gemm_ctx {
    vf_dbuf *x, *w, *b, *y;
    int M, K, N;
} gemm_ctx;

static vf_status run_gemm(void *p)
{
    gemm_ctx *c = p;
    return vf_be_linear(G, c->y, c->x, c->w, c->b, NULL, c->M, c->K, c->N, VF_ACT_NONE);
}

static void bench_gemm(int M, int K, int N)
{
    gemm_ctx c = {NULL, NULL, NULL, NULL, M, K, N};
    fresh_seed();
    c.x = dev_rand((size_t)M * K, 1.0f);
    c.w = dev_rand((size_t)N * K, 0.05f);
    c.b = dev_rand((size_t)N, 0.1f);
    must(vf_be_alloc(G, (size_t)M * N, &c.y), "alloc");
    float ms = time_ms(run_gemm, &c, 5, 30);
    printf("BENCH linear %s M%d K%d N%d (+bias): %.4f ms  %.1f TFLOP/s\n", vf_dtype_name(DT), M, K, N, ms,
           2.0 * M * (double)K * N / (ms * 1e-3) / 1e12);
    vf_be_free(G, c.x);
    vf_be_free(G, c.w);
    vf_be_free(G, c.b);
    vf_be_free(G, c.y);
}

typedef struct conv_ctx {
    vf_dbuf *x, *w, *b, *y;
    int B, C, H, W, OC, k;
} conv_ctx;

static vf_status run_conv(void *p)
{
    conv_ctx *c = p;
    return vf_be_conv2d(G, c->y, c->x, c->w, c->b, NULL, c->B, c->C, c->H, c->W, c->OC, c->k, c->k, 1, c->k / 2);
}

static void bench_conv(int B, int Cc, int H, int W, int OC, int k)
{
    conv_ctx c = {NULL, NULL, NULL, NULL, B, Cc, H, W, OC, k};
    fresh_seed();
    c.x = dev_rand((size_t)B * Cc * H * W, 1.0f);
    c.w = dev_rand((size_t)OC * Cc * k * k, 0.05f);
    c.b = dev_rand((size_t)OC, 0.1f);
    must(vf_be_alloc(G, (size_t)B * OC * H * W, &c.y), "alloc");
    float ms = time_ms(run_conv, &c, 5, 30);
    printf("BENCH conv %s %-10s B%d C%d %dx%d OC%d k%d: %.4f ms  %.1f TFLOP/s\n", vf_dtype_name(DT), conv_mode, B, Cc,
           H, W, OC, k, ms, 2.0 * B * (double)H * W * OC * Cc * k * k / (ms * 1e-3) / 1e12);
    vf_be_free(G, c.x);
    vf_be_free(G, c.w);
    vf_be_free(G, c.b);
    vf_be_free(G, c.y);
}

typedef struct gn_ctx {
    vf_dbuf *x, *g, *b, *y;
    int B, C, HW;
} gn_ctx;

static vf_status run_gn(void *p)
{
    gn_ctx *c = p;
    return vf_be_groupnorm(G, c->y, c->x, c->g, c->b, NULL, c->B, c->C, c->HW, 32, 1e-5f, 1);
}

static void bench_groupnorm(int B, int Cc, int HW)
{
    gn_ctx c = {NULL, NULL, NULL, NULL, B, Cc, HW};
    fresh_seed();
    c.x = dev_rand((size_t)B * Cc * HW, 1.0f);
    c.g = dev_rand((size_t)Cc, 1.0f);
    c.b = dev_rand((size_t)Cc, 1.0f);
    must(vf_be_alloc(G, (size_t)B * Cc * HW, &c.y), "alloc");
    float ms = time_ms(run_gn, &c, 5, 50);
    printf("BENCH groupnorm+silu %s B%d C%d HW%d: %.4f ms  %.0f GB/s (2 reads + 1 write)\n", vf_dtype_name(DT), B, Cc,
           HW, ms, 3.0 * 2 * B * (double)Cc * HW / (ms * 1e-3) / 1e9);
    vf_be_free(G, c.x);
    vf_be_free(G, c.g);
    vf_be_free(G, c.b);
    vf_be_free(G, c.y);
}

static void run_benches(int full)
{
    bench_attention(2, 10, 4096, 4096, 64, 0);
    bench_attention(2, 20, 1024, 1024, 64, 0);
    if (!full)
        return;
    bench_attention(2, 10, 4096, 77, 64, 0);
    bench_attention(1, 8, 4096, 4096, 40, 0);
    bench_attention(1, 1, 16384, 16384, 512, 0);
    bench_gemm(8192, 8192, 8192);
    bench_gemm(8192, 640, 5120);
    bench_gemm(32768, 320, 320);
    bench_groupnorm(2, 320, 16384);
}

static void bench_convs(void)
{
    bench_conv(2, 320, 128, 128, 320, 3);
    bench_conv(2, 640, 64, 64, 640, 3);
    bench_conv(2, 1280, 32, 32, 1280, 3);
    bench_conv(1, 256, 512, 512, 256, 3);
}

/* ---- main ----------------------------------------------------------------------------- */

static vf_status open_gpu(vf_dtype t, vf_backend **out)
{
    vf_backend_options o;
    vf_backend_options_init(&o);
    o.kind = VF_BACKEND_CUDA;
    o.dtype = t;
    return vf_backend_create(&o, out);
}

/* Every wgmma flash variant ($VF_FLASH_VARIANT, src/backend/cuda/flash_ws.cuh)
 * through the library: the attention checks, and with --bench the SDXL
 * attention shapes, tagged " vN". Skipped where the device has no wgmma path. */
#define FLASH_VARIANTS 5  /* flashws::NVARIANTS */

static void run_flash_variants(int checks, int bench)
{
    const char *env = getenv("VF_FLASH_VARIANT");
    char keep[16] = "";
    if (env)
        snprintf(keep, sizeof keep, "%s", env);
    conv_mode = "";
    for (int v = 0; v < FLASH_VARIANTS; v++) {
        char val[8];
        snprintf(val, sizeof val, "%d", v);
        setenv("VF_FLASH_VARIANT", val, 1);
        must(open_gpu(DT, &G), "cuda backend");
        if (strstr(vf_be_info(G)->features, "wgmma")) {
            snprintf(attn_tag, sizeof attn_tag, " v%d", v);
            if (checks)
                run_attention_checks();
            if (bench) {
                bench_attention(2, 10, 4096, 4096, 64, 0);
                bench_attention(2, 20, 1024, 1024, 64, 0);
                bench_attention(2, 10, 4096, 77, 64, 0);
            }
            attn_tag[0] = '\0';
        }
        vf_backend_free(G);
        G = NULL;
    }
    if (env)
        setenv("VF_FLASH_VARIANT", keep, 1);
    else
        unsetenv("VF_FLASH_VARIANT");
}

int main(int argc, char **argv)
{
    int bench = argc > 1 && strcmp(argv[1], "--bench") == 0;
    int checks = !(argc > 1 && strcmp(argv[1], "--bench-only") == 0);
    vf_dtype types[2] = {VF_DTYPE_F16, VF_DTYPE_BF16};
    if (argc > 1 && strcmp(argv[1], "--bench-only") == 0)
        bench = 1;
    vf_backend *probe = NULL;
    if (open_gpu(VF_DTYPE_F16, &probe) != VF_OK) {
        printf("skipped: %s\n", vf_last_error());
        return 77;
    }
    const vf_backend_info *info = vf_be_info(probe);
    printf("device: %s (cc %d.%d, %d SMs); %s\n", info->device, info->cc_major, info->cc_minor, info->multiprocessors,
           info->features);
    vf_backend_free(probe);
    must(vf_backend_create(NULL, &C), "cpu backend");

    for (int ti = 0; ti < 2; ti++) {
        DT = types[ti];
        /* fp16 3e-3, bf16 1e-2: one rounding of an output near max|ref| to
         * bf16 can alone be 2^-8 = 3.9e-3 of it, so bf16 cannot be held to
         * 3e-3 op by op; fp16 (measured below 1e-3) is held tighter instead. */
        TOL = DT == VF_DTYPE_F16 ? 3e-3 : 1e-2;
        /* cuDNN (if it loads) first, then im2col for the convolutions */
        static const char *const modes[2] = {NULL, "im2col"};
        for (int mi = 0; mi < 2; mi++) {
            /* the second pass also forces the portable (mma.sync) attention */
            if (modes[mi]) {
                setenv("VF_CUDA_CONV", modes[mi], 1);
                setenv("VF_CUDA_ATTN", "mma", 1);
            } else {
                unsetenv("VF_CUDA_CONV");
                unsetenv("VF_CUDA_ATTN");
            }
            must(open_gpu(DT, &G), "cuda backend");
            const char *f = vf_be_info(G)->features;
            conv_mode = strstr(f, "conv:cudnn") ? (strstr(f, "wgmma") ? "cudnn,wg" : "cudnn")
                                                 : (mi == 1 ? "im2col,mma" : "im2col");
            printf("backend %s: %s\n", vf_dtype_name(DT), f);
            if (mi == 0 && checks) {
                run_checks();
            } else if (checks) {
                run_attention_checks();
                check_conv(2, 32, 24, 20, 64, 3, 1, 1, 0);
                check_conv(2, 64, 16, 16, 64, 3, 1, 1, 2);
                check_conv(1, 64, 17, 15, 32, 3, 2, 1, 0);
                check_conv(2, 4, 16, 16, 64, 3, 1, 1, 0);
                check_conv(2, 96, 12, 12, 64, 1, 1, 0, 1);
                check_conv(1, 128, 16, 16, 128, 3, 1, 1, 1);
            }
            if (bench) {
                if (mi == 0)
                    run_benches(1);
                bench_convs();
            }
            vf_backend_free(G);
            G = NULL;

        }
        unsetenv("VF_CUDA_CONV");
        unsetenv("VF_CUDA_ATTN");
        run_flash_variants(checks, bench);
    }
    unsetenv("VF_CUDA_CONV");
    vf_backend_free(C);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
