/* The CPU backend: backend/cpu/ops.h behind the vf_backend_ops vtable.
 *
 * "Device" memory is host memory (vf_malloc), the compute dtype is float32,
 * feature maps are NCHW and conv filters OIHW, so every op is the reference
 * kernel itself; what this file adds is the vtable glue and the few fusions
 * the contract promises (residual add, time-embedding add before GroupNorm,
 * strided attention operands), done the simple way with a temporary.
 * Copies are synchronous, so events are just host timestamps.
 */
#include "backend/backend.h"
#include "backend/cpu/ops.h"
#include "core/alloc.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/quant.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

typedef struct cpu_be {
    char err[512];
} cpu_be;

typedef struct cpu_event {
    double t;
} cpu_event;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* Keeps the core's message for last_error() (the wrapper re-formats it). */
static vf_status keep(cpu_be *c, vf_status st)
{
    if (st != VF_OK)
        snprintf(c->err, sizeof c->err, "%s", vf_last_error());
    return st;
}

static float *tmp_f(cpu_be *c, size_t n, const char *what)
{
    float *p = vf_malloc((n ? n : 1) * sizeof(float));
    if (!p)
        snprintf(c->err, sizeof c->err, "out of host memory for %s (%zu floats)", what, n);
    return p;
}

static void cpu_destroy(void *impl) { vf_free(impl); }
static const char *cpu_last_error(void *impl) { return ((cpu_be *)impl)->err; }

static void cpu_mem_info(void *impl, uint64_t *total, uint64_t *free, uint64_t *workspace)
{
    *total = *free = *workspace = 0;
}

static vf_status cpu_alloc(void *impl, size_t bytes, void **p)
{
    *p = vf_malloc(bytes);
    return *p ? VF_OK : keep(impl, VF_ERR_NO_MEMORY);
}

static void cpu_free(void *impl, void *p) { vf_free(p); }

static vf_status cpu_upload(void *impl, void *dst, const void *src, vf_dtype src_dtype, size_t n)
{
    vf_convert_to_f32(dst, src, src_dtype, n);
    return VF_OK;
}

static vf_status cpu_download(void *impl, float *dst, const void *src, size_t n)
{
    memmove(dst, src, n * sizeof(float));
    return VF_OK;
}

static vf_status cpu_upload_fm(void *impl, void *dst, const float *src, int B, int C, int H, int W)
{
    memmove(dst, src, (size_t)B * C * H * W * sizeof(float));
    return VF_OK;
}

static vf_status cpu_download_fm(void *impl, float *dst, const void *src, int B, int C, int H, int W)
{
    memmove(dst, src, (size_t)B * C * H * W * sizeof(float));
    return VF_OK;
}

static vf_status cpu_upload_conv_weight(void *impl, void *dst, const void *src, vf_dtype src_dtype,
                                        int OC, int C, int KH, int KW)
{
    vf_convert_to_f32(dst, src, src_dtype, (size_t)OC * C * KH * KW);
    return VF_OK;
}

static vf_status cpu_h2d_async(void *impl, void *dst, const void *src, size_t bytes)
{
    memmove(dst, src, bytes);
    return VF_OK;
}

/* Host memory both sides: the same copy as h2d. */
static vf_status cpu_d2h(void *impl, void *dst, const void *src, size_t bytes)
{
    return cpu_h2d_async(impl, dst, src, bytes);
}

static vf_status cpu_copy(void *impl, void *dst, const void *src, size_t bytes)
{
    memmove(dst, src, bytes);
    return VF_OK;
}

static vf_status cpu_sync(void *impl) { return VF_OK; }

static vf_status cpu_event_create(void *impl, void **ev)
{
    *ev = vf_calloc(1, sizeof(cpu_event));
    return *ev ? VF_OK : keep(impl, VF_ERR_NO_MEMORY);
}

static void cpu_event_destroy(void *impl, void *ev) { vf_free(ev); }

static vf_status cpu_record(void *impl, void *ev, vf_stream s)
{
    ((cpu_event *)ev)->t = now_ms();
    return VF_OK;
}

static vf_status cpu_wait(void *impl, vf_stream s, void *ev) { return VF_OK; }
static vf_status cpu_event_sync(void *impl, void *ev) { return VF_OK; }

static vf_status cpu_elapsed_ms(void *impl, void *start, void *end, float *ms)
{
    *ms = (float)(((cpu_event *)end)->t - ((cpu_event *)start)->t);
    return VF_OK;
}

static void act_inplace(float *x, size_t n, vf_act act)
{
    switch (act) {
    case VF_ACT_SILU:
        vf_cpu_silu(x, n);
        break;
    case VF_ACT_GELU:
        vf_cpu_gelu(x, n);
        break;
    case VF_ACT_QUICK_GELU:
        vf_cpu_quick_gelu(x, n);
        break;
    case VF_ACT_GELU_TANH:
        for (size_t i = 0; i < n; i++) {
            float v = x[i];
            x[i] = 0.5f * v * (1.0f + tanhf(0.7978845608f * (v + 0.044715f * v * v * v)));
        }
        break;
    case VF_ACT_NONE:
        break;
    }
}

// x is (M,K), w (N,K), b (N), r and y (M,N)
static vf_status cpu_linear(void *impl, void *y, const void *x, const void *w, const void *b,
                            const void *r, int M, int K, int N, vf_act act)
{
    size_t n = (size_t)M * N;
    if (r && r == y) {
        float *t = tmp_f(impl, n, "linear accumulate");
        if (!t)
            return VF_ERR_NO_MEMORY;
        vf_cpu_linear(t, x, w, b, M, K, N);
        vf_cpu_add(y, t, n);
        vf_free(t);
        return VF_OK;
    }
    vf_cpu_linear(y, x, w, b, M, K, N);
    if (r)
        vf_cpu_add(y, r, n);
    act_inplace(y, n, act);
    return VF_OK;
}

// x is (B,C,H,W), w (OC,C,KH,KW), b (OC), r and y (B,OC,OH,OW)
static vf_status cpu_conv2d(void *impl, void *y, const void *x, const void *w, const void *b, const void *r,
                            int B, int C, int H, int W, int OC, int KH, int KW, int stride, int pad)
{
    size_t n = (size_t)B * OC * ((H + 2 * pad - KH) / stride + 1) * ((W + 2 * pad - KW) / stride + 1);
    float *out = y;
    vf_status st;
    if (r && r == y) {
        out = tmp_f(impl, n, "conv2d accumulate");
        if (!out)
            return VF_ERR_NO_MEMORY;
    }
    st = keep(impl, vf_cpu_conv2d(out, x, w, b, B, C, H, W, OC, KH, KW, stride, pad));
    if (st == VF_OK && r)
        vf_cpu_add(y, out == y ? r : out, n);
    if (out != y)
        vf_free(out);
    return st;
}

// x, y are (B,C,HW); cb is (B,C)
static vf_status cpu_groupnorm(void *impl, void *y, const void *x, const void *gamma, const void *beta,
                               const void *cb, int B, int C, int HW, int G, float eps, int silu)
{
    const float *src = x;
    if (cb) {
        const float *xf = x, *cf = cb;
        float *yf = y;
        for (size_t bc = 0; bc < (size_t)B * C; bc++)
            for (int i = 0; i < HW; i++)
                yf[bc * HW + i] = xf[bc * HW + i] + cf[bc];
        src = y;
    }
    vf_cpu_groupnorm(y, src, gamma, beta, B, C, HW, G, eps, silu);
    return VF_OK;
}

static vf_status cpu_layernorm(void *impl, void *y, const void *x, const void *gamma, const void *beta,
                               int rows, int C, float eps)
{
    vf_cpu_layernorm(y, x, gamma, beta, rows, C, eps);
    return VF_OK;
}

static vf_status cpu_act(void *impl, void *x, size_t n, vf_act act)
{
    act_inplace(x, n, act);
    return VF_OK;
}

static vf_status cpu_geglu(void *impl, void *y, const void *x, int rows, int inner)
{
    vf_cpu_geglu(y, x, rows, inner);
    return VF_OK;
}

static vf_status cpu_add(void *impl, void *y, const void *a, size_t n)
{
    vf_cpu_add(y, a, n);
    return VF_OK;
}

static vf_status cpu_axpby(void *impl, void *y, const void *x, size_t n, float alpha, float beta)
{
    float *yf = y;
    const float *xf = x;
    for (size_t i = 0; i < n; i++)
        yf[i] = alpha * yf[i] + beta * xf[i];
    return VF_OK;
}

/* Rows of `cols` floats with stride ld -> dense (rows, cols), or back. */
static void repack(float *dst, size_t ldd, const float *src, size_t lds, size_t rows, size_t cols)
{
    for (size_t i = 0; i < rows; i++)
        memcpy(dst + i * ldd, src + i * lds, cols * sizeof(float));
}

// q (B,Lq,H,D) with stride ldq, k and v (B,Lk,H,D) with ldk / ldv, o (B,Lq,H,D) with ldo
static vf_status cpu_attention(void *impl, void *o, const void *q, const void *k, const void *v, int B,
                               int Lq, int Lk, int H, int D, int ldq, int ldk, int ldv, int ldo,
                               int causal, float scale)
{
    size_t hd = (size_t)H * D, nq = (size_t)B * Lq, nk = (size_t)B * Lk;
    if (ldq == (int)hd && ldk == (int)hd && ldv == (int)hd && ldo == (int)hd)
        return keep(impl, vf_cpu_attention(o, q, k, v, B, Lq, Lk, H, D, causal, scale));
    float *tq = tmp_f(impl, nq * hd, "attention q"), *tk = tmp_f(impl, nk * hd, "attention k");
    float *tv = tmp_f(impl, nk * hd, "attention v"), *to = tmp_f(impl, nq * hd, "attention o");
    vf_status st = VF_ERR_NO_MEMORY;
    if (!tq || !tk || !tv || !to)
        goto done;
    repack(tq, hd, q, (size_t)ldq, nq, hd);
    repack(tk, hd, k, (size_t)ldk, nk, hd);
    repack(tv, hd, v, (size_t)ldv, nk, hd);
    st = keep(impl, vf_cpu_attention(to, tq, tk, tv, B, Lq, Lk, H, D, causal, scale));
    if (st == VF_OK)
        repack(o, (size_t)ldo, to, hd, nq, hd);
done:
    vf_free(tq);
    vf_free(tk);
    vf_free(tv);
    vf_free(to);
    return st;
}

static vf_status cpu_upsample2x(void *impl, void *y, const void *x, int B, int C, int H, int W)
{
    vf_cpu_upsample_nearest2x(y, x, B, C, H, W);
    return VF_OK;
}

// a (B,Ca,HW), b (B,Cb,HW) -> y (B,Ca+Cb,HW)
static vf_status cpu_concat(void *impl, void *y, const void *a, int Ca, const void *b, int Cb, int B,
                            int HW)
{
    size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW;
    for (int i = 0; i < B; i++) {
        float *dst = (float *)y + (size_t)i * (na + nb);
        memmove(dst, (const float *)a + (size_t)i * na, na * sizeof(float));
        memmove(dst + na, (const float *)b + (size_t)i * nb, nb * sizeof(float));
    }
    return VF_OK;
}

static vf_status cpu_fm_to_tokens(void *impl, void *y, const void *x, int B, int C, int HW)
{
    vf_cpu_nchw_to_nhwc(y, x, B, C, HW);
    return VF_OK;
}

static vf_status cpu_tokens_to_fm(void *impl, void *y, const void *x, int B, int C, int HW)
{
    vf_cpu_nhwc_to_nchw(y, x, B, C, HW);
    return VF_OK;
}

static vf_status cpu_timestep_embedding(void *impl, void *out, const float *t, int B, int dim, int flip,
                                        float shift)
{
    vf_cpu_timestep_embedding(out, t, B, dim, flip, shift);
    return VF_OK;
}

static void cpu_mem_stats(void *impl, vf_be_mem_stats *s, int reset_peak)
{
    memset(s, 0, sizeof *s);
}

static vf_status cpu_pinned_alloc(void *impl, size_t bytes, void **p) { return cpu_alloc(impl, bytes, p); }

/* src is a packed (OC, C*KH*KW) tensor (core/quant.h), dst (OC,C,KH,KW)
 * float32: OIHW is the packed row order, so this is plain dequantizing. */
static vf_status cpu_dequant(void *impl, void *dst, const void *src, vf_dtype fmt, int OC, int C, int KH,
                             int KW)
{
    return keep(impl, vf_dequantize(fmt, src, OC, (int64_t)C * KH * KW, dst));
}

/* One order on the CPU: every stream is the caller's thread. */
static vf_status cpu_dequant_on(void *impl, vf_stream s, void *dst, const void *src, vf_dtype fmt, int OC, int C,
                                int KH, int KW)
{
    (void)s;
    return cpu_dequant(impl, dst, src, fmt, OC, C, KH, KW);
}

/* Host memory is the monitor's business on the CPU: buffers stay vf_malloc. */
static void cpu_set_allocator(void *impl, const vf_be_allocator *a) { (void)impl, (void)a; }

static const vf_backend_ops cpu_ops = {
    VF_BACKEND_ABI, sizeof(vf_backend_ops), cpu_destroy, cpu_last_error, cpu_mem_info, cpu_alloc,
    cpu_free, cpu_upload, cpu_download, cpu_upload_fm, cpu_download_fm, cpu_upload_conv_weight,
    cpu_h2d_async, cpu_copy, cpu_sync, cpu_event_create, cpu_event_destroy, cpu_record, cpu_wait,
    cpu_event_sync, cpu_elapsed_ms, cpu_linear, cpu_conv2d, cpu_groupnorm, cpu_layernorm, cpu_act,
    cpu_geglu, cpu_add, cpu_axpby, cpu_attention, cpu_upsample2x, cpu_concat, cpu_fm_to_tokens,
    cpu_tokens_to_fm, cpu_timestep_embedding, cpu_mem_stats, cpu_alloc, cpu_free, cpu_pinned_alloc,
    cpu_free, cpu_dequant, cpu_set_allocator, cpu_d2h, cpu_dequant_on,
};

vf_status vf_backend_cpu_open(const vf_backend_open_args *a, const vf_backend_ops **ops, void **impl,
                              vf_backend_info *info, char *err, size_t cap)
{
    if (a->dtype != VF_DTYPE_F32) {
        snprintf(err, cap, "compute dtype %s is not supported (F32 only)", vf_dtype_name(a->dtype));
        return VF_ERR_UNSUPPORTED;
    }
    cpu_be *c = vf_calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, cap, "%s", vf_last_error());
        return VF_ERR_NO_MEMORY;
    }
    memset(info, 0, sizeof *info);
    info->kind = VF_BACKEND_CPU;
    info->dtype = VF_DTYPE_F32;
    info->fm_layout = VF_LAYOUT_NCHW;
    info->filter_layout = VF_FILTER_OIHW;
    snprintf(info->name, sizeof info->name, "cpu");
    snprintf(info->device, sizeof info->device, "cpu");
    snprintf(info->features, sizeof info->features, "openblas");
    *ops = &cpu_ops;
    *impl = c;
    return VF_OK;
}
