/* Convolutions of the CUDA backend, NHWC activations and OHWI filters.
 *
 * Two paths ($VF_CUDA_CONV = cudnn | cudnn-find | im2col forces one; by
 * default each shape takes whichever measured faster at its first use):
 * - cuDNN, loaded with dlopen ("libcudnn.so.9") rather than linked, so that
 *   a machine with the driver and cuBLAS but no cuDNN still gets the backend.
 *   The legacy descriptor API is enough for fixed-shape forward convolutions;
 *   descriptors and the algorithm (heuristic, or measured with FindEx in
 *   "cudnn-find" mode) are cached per shape.
 * - im2col + cuBLASLt: the NHWC patch matrix (rows = output pixels, columns
 *   = KH*KW*C in filter order) is built in row chunks of bounded size and
 *   multiplied with the OHWI filter as a linear layer, so bias and residual
 *   come fused from the GEMM epilogue.
 * 1x1 stride-1 convolutions are a plain GEMM on either path (an NHWC map is a
 * token matrix).
 */
#include "cuda_common.cuh"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#if defined(VF_HAVE_CUDNN)
#include <cudnn.h>
#endif

#define CONV_CACHE 96
#define IM2COL_BYTES ((size_t)96 << 20)
#define CUDNN_WS_MAX ((size_t)512 << 20)

enum { CONV_IM2COL = 0, CONV_CUDNN, CONV_CUDNN_FIND, CONV_AUTO };

#if defined(VF_HAVE_CUDNN)
#define CUDNN_FUNCS(X)                                                                                          \
    X(cudnnCreate) X(cudnnDestroy) X(cudnnSetStream) X(cudnnGetErrorString) X(cudnnGetVersion)                 \
    X(cudnnCreateTensorDescriptor) X(cudnnSetTensor4dDescriptor) X(cudnnDestroyTensorDescriptor)               \
    X(cudnnCreateFilterDescriptor) X(cudnnSetFilter4dDescriptor) X(cudnnDestroyFilterDescriptor)               \
    X(cudnnCreateConvolutionDescriptor) X(cudnnSetConvolution2dDescriptor) X(cudnnSetConvolutionMathType)      \
    X(cudnnDestroyConvolutionDescriptor) X(cudnnGetConvolutionForwardAlgorithm_v7)                             \
    X(cudnnFindConvolutionForwardAlgorithmEx) X(cudnnGetConvolutionForwardWorkspaceSize)                       \
    X(cudnnConvolutionForward)

struct conv_key {
    int B, C, H, W, OC, KH, KW, stride, pad;
};

struct conv_entry {
    conv_key k;
    int used;
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t cd;
    cudnnConvolutionFwdAlgo_t algo;
    size_t ws;
    int im2col;                     /* auto mode measured im2col faster        */
};
#endif

struct cuda_conv_state {
    int mode;
#if defined(VF_HAVE_CUDNN)
    void *dl;
#define DECL(f) decltype(&::f) f;
    CUDNN_FUNCS(DECL)
#undef DECL
    cudnnHandle_t h;
    conv_entry e[CONV_CACHE];
    int next;
    cuda_buf ws;
#endif
};

namespace {

// x (B,H,W,C) -> col rows [m0, m0+rows) of (B*OH*OW, KH*KW*C); C counted in units U
template <typename U>
__global__ void k_im2col(U *col, const U *x, int C, int H, int W, int KH, int KW, int stride, int pad, int OH,
                         int OW, size_t m0, size_t rows)
{
    size_t Kc = (size_t)KH * KW * C, n = rows * Kc;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t m = m0 + i / Kc;
        int k = (int)(i % Kc), c = k % C, kk = k / C, kw = kk % KW, kh = kk / KW;
        int ox = (int)(m % OW);
        size_t t = m / OW;
        int oy = (int)(t % OH);
        size_t b = t / OH;
        int iy = oy * stride - pad + kh, ix = ox * stride - pad + kw;
        U v;
        memset(&v, 0, sizeof v);
        if (iy >= 0 && iy < H && ix >= 0 && ix < W)
            v = x[((b * H + iy) * W + ix) * C + c];
        col[i] = v;
    }
}

} // namespace

static vf_status conv_im2col(cuda_be *be, void *y, const void *x, const void *w, const void *b, const void *r, int B,
                             int C, int H, int W, int OC, int KH, int KW, int stride, int pad);

#if defined(VF_HAVE_CUDNN)
static vf_status dnn_check(cuda_be *be, cudnnStatus_t s, const char *what)
{
    if (s == CUDNN_STATUS_SUCCESS)
        return VF_OK;
    return be_fail(be, VF_ERR_DEVICE, "%s: %s", what, be->conv->cudnnGetErrorString(s));
}

#define DNN_TRY(be, expr, what)                              \
    do {                                                     \
        vf_status dnn_st_ = dnn_check((be), (expr), (what));  \
        if (dnn_st_ != VF_OK)                                \
            return dnn_st_;                                  \
    } while (0)

static void dnn_unload(cuda_conv_state *s)
{
    for (int i = 0; i < CONV_CACHE; i++) {
        conv_entry *e = &s->e[i];
        if (e->x)
            s->cudnnDestroyTensorDescriptor(e->x);
        if (e->y)
            s->cudnnDestroyTensorDescriptor(e->y);
        if (e->w)
            s->cudnnDestroyFilterDescriptor(e->w);
        if (e->cd)
            s->cudnnDestroyConvolutionDescriptor(e->cd);
        memset(e, 0, sizeof *e);
    }
    if (s->h)
        s->cudnnDestroy(s->h);
    if (s->ws.p)
        cudaFree(s->ws.p);
    if (s->dl)
        dlclose(s->dl);
    s->h = NULL;
    s->dl = NULL;
    s->ws.p = NULL;
    s->ws.bytes = 0;
}

/* 0 when cuDNN is usable; otherwise why in why. */
static int dnn_load(cuda_be *be, cuda_conv_state *s, char *why, size_t cap)
{
    s->dl = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_LOCAL);
    if (!s->dl) {
        snprintf(why, cap, "%s", dlerror());
        return -1;
    }
#define LOAD(f)                                                       \
    if (!(*(void **)&s->f = dlsym(s->dl, #f))) {                      \
        snprintf(why, cap, "libcudnn.so.9 has no %s", #f);            \
        return -1;                                                    \
    }
    CUDNN_FUNCS(LOAD)
#undef LOAD
    cudnnStatus_t st = s->cudnnCreate(&s->h);
    if (st != CUDNN_STATUS_SUCCESS) {
        s->h = NULL;
        snprintf(why, cap, "cudnnCreate: %s", s->cudnnGetErrorString(st));
        return -1;
    }
    s->cudnnSetStream(s->h, be->compute);
    return 0;
}

static vf_status entry_build(cuda_be *be, conv_entry *e, const conv_key *k, const void *x, const void *w)
{
    cuda_conv_state *s = be->conv;
    cudnnDataType_t dt = be->dtype == VF_DTYPE_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
    int OH = (k->H + 2 * k->pad - k->KH) / k->stride + 1, OW = (k->W + 2 * k->pad - k->KW) / k->stride + 1;
    DNN_TRY(be, s->cudnnCreateTensorDescriptor(&e->x), "tensor descriptor");
    DNN_TRY(be, s->cudnnCreateTensorDescriptor(&e->y), "tensor descriptor");
    DNN_TRY(be, s->cudnnCreateFilterDescriptor(&e->w), "filter descriptor");
    DNN_TRY(be, s->cudnnCreateConvolutionDescriptor(&e->cd), "convolution descriptor");
    DNN_TRY(be, s->cudnnSetTensor4dDescriptor(e->x, CUDNN_TENSOR_NHWC, dt, k->B, k->C, k->H, k->W), "input shape");
    DNN_TRY(be, s->cudnnSetTensor4dDescriptor(e->y, CUDNN_TENSOR_NHWC, dt, k->B, k->OC, OH, OW), "output shape");
    DNN_TRY(be, s->cudnnSetFilter4dDescriptor(e->w, dt, CUDNN_TENSOR_NHWC, k->OC, k->C, k->KH, k->KW), "filter shape");
    DNN_TRY(be, s->cudnnSetConvolution2dDescriptor(e->cd, k->pad, k->pad, k->stride, k->stride, 1, 1,
                                                   CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
            "convolution");
    DNN_TRY(be, s->cudnnSetConvolutionMathType(e->cd, CUDNN_TENSOR_OP_MATH), "math type");
    cudnnConvolutionFwdAlgoPerf_t perf[16];
    int n = 0;
    if (s->mode == CONV_CUDNN_FIND) {
        size_t ybytes = (size_t)k->B * k->OC * OH * OW * 2;
        VF_TRY(buf_reserve(be, &be->scratch2, ybytes, "cuDNN find output"));
        VF_TRY(buf_reserve(be, &s->ws, CUDNN_WS_MAX, "cuDNN workspace"));
        DNN_TRY(be, s->cudnnFindConvolutionForwardAlgorithmEx(s->h, e->x, x, e->w, w, e->cd, e->y, be->scratch2.p, 16,
                                                              &n, perf, s->ws.p, s->ws.bytes),
                "cudnnFindConvolutionForwardAlgorithmEx");
    } else {
        DNN_TRY(be, s->cudnnGetConvolutionForwardAlgorithm_v7(s->h, e->x, e->w, e->cd, e->y, 16, &n, perf),
                "cudnnGetConvolutionForwardAlgorithm_v7");
    }
    for (int i = 0; i < n; i++) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > ws_limit(be, CUDNN_WS_MAX))
            continue;
        e->algo = perf[i].algo;
        e->ws = perf[i].memory;
        DNN_TRY(be, s->cudnnSetConvolutionMathType(e->cd, perf[i].mathType), "math type");
        e->k = *k;
        e->used = 1;
        return VF_OK;
    }
    return be_fail(be, VF_ERR_UNSUPPORTED, "cuDNN has no algorithm for this convolution");
}

static void entry_clear(cuda_conv_state *s, conv_entry *e)
{
    if (e->x)
        s->cudnnDestroyTensorDescriptor(e->x);
    if (e->y)
        s->cudnnDestroyTensorDescriptor(e->y);
    if (e->w)
        s->cudnnDestroyFilterDescriptor(e->w);
    if (e->cd)
        s->cudnnDestroyConvolutionDescriptor(e->cd);
    memset(e, 0, sizeof *e);
}

static vf_status cudnn_run(cuda_be *be, conv_entry *e, void *y, const void *x, const void *w, float beta)
{
    cuda_conv_state *s = be->conv;
    float alpha = 1.0f;
    void *ws = NULL;
    if (e->ws)
        VF_TRY(pool_get(be, e->ws, &ws, "cuDNN workspace"));
    cudnnStatus_t ds = s->cudnnConvolutionForward(s->h, &alpha, e->x, x, e->w, w, e->cd, e->algo, ws, e->ws, &beta,
                                                  e->y, y);
    pool_put(be, ws);
    DNN_TRY(be, ds, "cudnnConvolutionForward");
    return VF_OK;
}

/* Auto mode, first use of a shape: times cuDNN's choice against im2col +
 * cuBLASLt on this shape (best of 3 after a warm-up) and keeps the faster.
 * One synchronisation per shape, never again. The trials write into out, the
 * convolution's own output when that is overwritten afterwards anyway (no
 * accumulation), so that timing a large shape (the VAE's full-resolution
 * maps) does not leave an output-sized scratch buffer behind. */
static vf_status pick_path(cuda_be *be, conv_entry *e, void *out, const void *x, const void *w, const conv_key *k)
{
    int OH = (k->H + 2 * k->pad - k->KH) / k->stride + 1, OW = (k->W + 2 * k->pad - k->KW) / k->stride + 1;
    if (!out) {
        VF_TRY(buf_reserve(be, &be->scratch2, (size_t)k->B * k->OC * OH * OW * 2, "convolution timing output"));
        out = be->scratch2.p;
    }
    cudaEvent_t ev[2];
    float best[2] = {1e30f, 1e30f};
    CU_TRY(be, cudaEventCreate(&ev[0]), "event");
    if (cudaEventCreate(&ev[1]) != cudaSuccess) {
        cudaEventDestroy(ev[0]);
        return be_fail(be, VF_ERR_DEVICE, "cudaEventCreate failed");
    }
    /* A path that fails on this shape (no cuBLASLt algorithm for an odd
     * output width such as the VAE's 3 channels, no cuDNN kernel) is not
     * chosen; the shape fails only when both do. */
    vf_status pst[2] = {VF_OK, VF_OK};
    for (int path = 0; path < 2; path++) {
        for (int rep = 0; rep < 4 && pst[path] == VF_OK; rep++) {
            cudaEventRecord(ev[0], be->compute);
            vf_status st = path == 0 ? cudnn_run(be, e, out, x, w, 0.0f)
                                     : conv_im2col(be, out, x, w, NULL, NULL, k->B, k->C, k->H, k->W, k->OC, k->KH,
                                                   k->KW, k->stride, k->pad);
            cudaEventRecord(ev[1], be->compute);
            float ms = 0.0f;
            if (st == VF_OK)
                st = cu_check(be, cudaEventSynchronize(ev[1]), "convolution timing");
            if (st == VF_OK && cudaEventElapsedTime(&ms, ev[0], ev[1]) == cudaSuccess && rep > 0 && ms < best[path])
                best[path] = ms;
            pst[path] = st;
        }
    }
    cudaEventDestroy(ev[0]);
    cudaEventDestroy(ev[1]);
    if (pst[0] != VF_OK && pst[1] != VF_OK)
        return pst[1];
    e->im2col = pst[0] != VF_OK || (pst[1] == VF_OK && best[1] < best[0]);
    return VF_OK;
}

static vf_status conv_cudnn(cuda_be *be, void *y, const void *x, const void *w, const void *b, const void *r,
                            const conv_key *k)
{
    cuda_conv_state *s = be->conv;
    conv_entry *e = NULL;
    for (int i = 0; i < CONV_CACHE && !e; i++)
        if (s->e[i].used && memcmp(&s->e[i].k, k, sizeof *k) == 0)
            e = &s->e[i];
    if (!e) {
        e = &s->e[s->next];
        s->next = (s->next + 1) % CONV_CACHE;
        entry_clear(s, e);
        vf_status st = entry_build(be, e, k, x, w);
        if (st == VF_OK && s->mode == CONV_AUTO)
            st = pick_path(be, e, r == y ? NULL : y, x, w, k);
        if (st != VF_OK) {
            entry_clear(s, e);
            return st;
        }
    }
    if (e->im2col)
        return conv_im2col(be, y, x, w, b, r, k->B, k->C, k->H, k->W, k->OC, k->KH, k->KW, k->stride, k->pad);
    int OH = (k->H + 2 * k->pad - k->KH) / k->stride + 1, OW = (k->W + 2 * k->pad - k->KW) / k->stride + 1;
    size_t rows = (size_t)k->B * OH * OW;
    if (r && r != y)
        CU_TRY(be, cudaMemcpyAsync(y, r, rows * k->OC * 2, cudaMemcpyDeviceToDevice, be->compute), "residual copy");
    VF_TRY(cudnn_run(be, e, y, x, w, r ? 1.0f : 0.0f));
    return cuda_bias_residual(be, y, b, NULL, rows, k->OC);
}
#endif

vf_status cuda_conv_init(cuda_be *be, char *features, size_t cap)
{
    be->conv = (cuda_conv_state *)calloc(1, sizeof(cuda_conv_state));
    if (!be->conv)
        return be_fail(be, VF_ERR_NO_MEMORY, "out of host memory for the convolution state");
    const char *env = getenv("VF_CUDA_CONV");
    be->conv->mode = CONV_IM2COL;
#if defined(VF_HAVE_CUDNN)
    char why[256] = "";
    if (env && strcmp(env, "im2col") == 0) {
        snprintf(features, cap, "conv:im2col");
        return VF_OK;
    }
    if (dnn_load(be, be->conv, why, sizeof why) != 0) {
        dnn_unload(be->conv);
        snprintf(features, cap, "conv:im2col (no cuDNN: %.120s)", why);
        return VF_OK;
    }
    be->conv->mode = !env ? CONV_AUTO
                          : strcmp(env, "cudnn-find") == 0 ? CONV_CUDNN_FIND
                          : strcmp(env, "cudnn") == 0      ? CONV_CUDNN
                                                           : CONV_AUTO;
    size_t v = be->conv->cudnnGetVersion();
    static const char *const names[] = {"", "", "-find", "+im2col-auto"};
    snprintf(features, cap, "conv:cudnn-%zu.%zu%s", v / 10000, (v / 100) % 100, names[be->conv->mode]);
#else
    (void)env;
    snprintf(features, cap, "conv:im2col (built without cuDNN)");
#endif
    return VF_OK;
}

size_t cuda_conv_workspace(const cuda_be *be)
{
#if defined(VF_HAVE_CUDNN)
    return be->conv ? be->conv->ws.bytes : 0;
#else
    (void)be;
    return 0;
#endif
}

void cuda_conv_free(cuda_be *be)
{
    if (!be->conv)
        return;
#if defined(VF_HAVE_CUDNN)
    dnn_unload(be->conv);
#endif
    free(be->conv);
    be->conv = NULL;
}

// x is (B,H,W,C), w (OC,KH,KW,C), b (OC), r and y (B,OH,OW,OC)
static vf_status conv_im2col(cuda_be *be, void *y, const void *x, const void *w, const void *b, const void *r, int B,
                             int C, int H, int W, int OC, int KH, int KW, int stride, int pad)
{
    int OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    size_t M = (size_t)B * OH * OW, Kc = (size_t)KH * KW * C;
    size_t chunk = IM2COL_BYTES / (Kc * 2);
    chunk = chunk < 64 ? 64 : (chunk / 64) * 64;
    if (chunk > M)
        chunk = M;
    void *col = NULL;
    VF_TRY(pool_get(be, chunk * Kc * 2, &col, "im2col buffer"));
    bool vec = C % 8 == 0 && ((uintptr_t)x & 15u) == 0;
    auto run = [&]() -> vf_status {
    for (size_t m0 = 0; m0 < M; m0 += chunk) {
        size_t rows = M - m0 < chunk ? M - m0 : chunk;
        if (vec)
            k_im2col<uint4><<<grid_for(rows * Kc / 8, 256), 256, 0, be->compute>>>(
                (uint4 *)col, (const uint4 *)x, C / 8, H, W, KH, KW, stride, pad, OH, OW, m0, rows);
        else
            k_im2col<uint16_t><<<grid_for(rows * Kc, 256), 256, 0, be->compute>>>(
                (uint16_t *)col, (const uint16_t *)x, C, H, W, KH, KW, stride, pad, OH, OW, m0, rows);
        VF_TRY(launched(be, "im2col kernel"));
        char *yc = (char *)y + m0 * OC * 2;
        const char *rc = r ? (const char *)r + m0 * OC * 2 : NULL;
        VF_TRY(cuda_linear_ex(be, yc, col, w, b, rc, (int)rows, (int)Kc, OC, VF_ACT_NONE, 0));
    }
    return VF_OK;
    };
    vf_status st = run();
    pool_put(be, col);
    return st;
}

vf_status cuda_conv2d(void *impl, void *y, const void *x, const void *w, const void *b, const void *r, int B, int C,
                      int H, int W, int OC, int KH, int KW, int stride, int pad)
{
    cuda_be *be = (cuda_be *)impl;
    if (KH == 1 && KW == 1 && stride == 1 && pad == 0)
        return cuda_linear_ex(be, y, x, w, b, r, B * H * W, C, OC, VF_ACT_NONE, 0);
#if defined(VF_HAVE_CUDNN)
    if (be->conv->mode != CONV_IM2COL) {
        conv_key k = {B, C, H, W, OC, KH, KW, stride, pad};
        return conv_cudnn(be, y, x, w, b, r, &k);
    }
#endif
    return conv_im2col(be, y, x, w, b, r, B, C, H, W, OC, KH, KW, stride, pad);
}
