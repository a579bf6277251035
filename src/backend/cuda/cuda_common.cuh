/* Shared state and helpers of the CUDA backend (libvramfit-cuda.so).
 *
 * One cuda_be per vf_backend: the device, a compute stream and a copy stream
 * (both non-blocking, ordered by events), the cuBLAS(Lt) handles with their
 * workspace, the optional cuDNN (loaded with dlopen so that a machine without
 * it still gets the backend, with im2col convolutions), and growing scratch
 * buffers for transfers and fallbacks. Kernels are templated on the element
 * type (half or bfloat16) and dispatched on the backend's compute dtype.
 * Everything runs on the compute stream in issue order, so scratch buffers
 * need no further synchronisation between ops.
 *
 * This library never calls into the core: failures are a vf_status plus a
 * message in be->err (see backend/backend.h).
 */
#ifndef VF_CUDA_COMMON_CUH
#define VF_CUDA_COMMON_CUH

#include "backend/backend.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

struct cuda_conv_state;             /* cuda_conv.cu   */
struct cuda_gemm_cache;             /* cuda_gemm.cu   */

typedef struct cuda_buf {
    void *p;
    size_t bytes;
} cuda_buf;

typedef struct cuda_be {
    int device;
    vf_dtype dtype;
    cudaDeviceProp prop;
    cudaStream_t compute, copy, expand; /* expand: packed weights ahead of compute */
    cudaEvent_t order;              /* internal: compute -> copy ordering     */
    cublasLtHandle_t lt;
    cublasHandle_t blas;
    void *lt_ws;                    /* cuBLASLt workspace                     */
    size_t lt_ws_bytes;
    struct cuda_gemm_cache *gemm;
    struct cuda_conv_state *conv;
    cuda_buf xfer;                  /* upload / download staging (device)     */
    cuda_buf scratch;               /* im2col, attention fallback, stats      */
    cuda_buf scratch2;
    uint64_t alloc_bytes;           /* vf_be_alloc bytes asked for so far      */
    cudaMemPool_t pool;             /* vf_be_alloc's stream-ordered pool       */
    vf_be_allocator ext;            /* the memory manager's arena, when set     */
    int has_ext;
    int attn_wgmma;                 /* the sm_90a flash kernel is usable      */
    int attn_mode;                  /* 0 best, 1 mma.sync only, 2 chunked     */
    int attn_variant;               /* wgmma flash variant ($VF_FLASH_VARIANT) */
    char err[512];
} cuda_be;

/* Sets the message and returns st. */
static inline vf_status be_fail(cuda_be *be, vf_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(be->err, sizeof be->err, fmt, ap);
    va_end(ap);
    return st;
}

static inline vf_status cu_check(cuda_be *be, cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return VF_OK;
    return be_fail(be, e == cudaErrorMemoryAllocation ? VF_ERR_BUDGET : VF_ERR_DEVICE, "%s: %s (%s)",
                   what, cudaGetErrorString(e), cudaGetErrorName(e));
}

/* After a kernel launch. */
static inline vf_status launched(cuda_be *be, const char *what)
{
    return cu_check(be, cudaGetLastError(), what);
}

#define VF_TRY(expr)                     \
    do {                                 \
        vf_status vf_try_st_ = (expr);   \
        if (vf_try_st_ != VF_OK)         \
            return vf_try_st_;           \
    } while (0)

#define CU_TRY(be, expr, what)                              \
    do {                                                    \
        vf_status cu_st_ = cu_check((be), (expr), (what));   \
        if (cu_st_ != VF_OK)                                \
            return cu_st_;                                  \
    } while (0)

/* Grows b to at least bytes (contents are not kept). */
static inline vf_status buf_reserve(cuda_be *be, cuda_buf *b, size_t bytes, const char *what)
{
    if (b->bytes >= bytes)
        return VF_OK;
    if (b->p) {
        cudaStreamSynchronize(be->compute);
        cudaFree(b->p);
        b->p = NULL;
        b->bytes = 0;
    }
    size_t want = bytes < ((size_t)1 << 20) ? ((size_t)1 << 20) : bytes;
    CU_TRY(be, cudaMalloc(&b->p, want), what);
    b->bytes = want;
    return VF_OK;
}

/* A transient workspace from the stream-ordered pool (cuda_backend.cu): it
 * exists only while the op that takes it runs, in stream order, so it counts
 * in the pool's peak where it is used and nowhere else. */
static inline vf_status pool_get(cuda_be *be, size_t bytes, void **p, const char *what)
{
    if (be->has_ext) {
        vf_status st = be->ext.alloc(be->ext.ctx, bytes ? bytes : 256, p);
        return st == VF_OK ? VF_OK : be_fail(be, st, "%s: %zu bytes do not fit the arena", what, bytes);
    }
    return cu_check(be, cudaMallocFromPoolAsync(p, bytes ? bytes : 256, be->pool, be->compute), what);
}

static inline void pool_put(cuda_be *be, void *p)
{
    if (!p)
        return;
    if (be->has_ext)
        be->ext.free(be->ext.ctx, p);
    else
        cudaFreeAsync(p, be->compute);
}

/* The most one op may take as a kernel workspace. */
static inline size_t ws_limit(const cuda_be *be, size_t dflt)
{
    return be->has_ext && be->ext.workspace_limit && be->ext.workspace_limit < dflt ? be->ext.workspace_limit
                                                                                    : dflt;
}

static inline unsigned grid_for(size_t n, unsigned threads)
{
    size_t g = (n + threads - 1) / threads;
    return (unsigned)(g > 1048576 ? 1048576 : (g ? g : 1));
}

/* ---- element types ------------------------------------------------------------------ */

template <typename T> struct elem;
template <> struct elem<half> {
    static __device__ __forceinline__ float to_f(half v) { return __half2float(v); }
    static __device__ __forceinline__ half from_f(float v) { return __float2half_rn(v); }
    static const cudaDataType_t cuda = CUDA_R_16F;
};
template <> struct elem<__nv_bfloat16> {
    static __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16_rn(v); }
    static const cudaDataType_t cuda = CUDA_R_16BF;
};
typedef __nv_bfloat16 bf16;

static inline cudaDataType_t cuda_dtype(vf_dtype t)
{
    return t == VF_DTYPE_BF16 ? CUDA_R_16BF : (t == VF_DTYPE_F16 ? CUDA_R_16F : CUDA_R_32F);
}

/* Calls fn.template operator()<T>() with T the backend's element type. */
#define DISPATCH(be, T, ...)                 \
    do {                                     \
        if ((be)->dtype == VF_DTYPE_BF16) {  \
            typedef bf16 T;                  \
            __VA_ARGS__;                     \
        } else {                             \
            typedef half T;                  \
            __VA_ARGS__;                     \
        }                                    \
    } while (0)

__device__ __forceinline__ float act_apply(float v, int act)
{
    switch (act) {
    case VF_ACT_SILU:
        return v / (1.0f + __expf(-v));
    case VF_ACT_GELU:
        return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case VF_ACT_GELU_TANH:
        return 0.5f * v * (1.0f + tanhf(0.7978845608f * (v + 0.044715f * v * v * v)));
    case VF_ACT_QUICK_GELU:
        return v / (1.0f + __expf(-1.702f * v));
    default:
        return v;
    }
}

/* ---- entry points between the .cu files ---------------------------------------------- */

/* cuda_gemm.cu: y (M,N) = act(x (M,K) w (N,K)^T + b) + r, r may be y; ldx / ldy 0 = dense. */
vf_status cuda_linear_ex(cuda_be *be, void *y, const void *x, const void *w, const void *b, const void *r,
                         int M, int K, int N, int act, int ldx);
vf_status cuda_gemm_init(cuda_be *be);
vf_status cuda_linear(void *impl, void *y, const void *x, const void *w, const void *b, const void *r, int M, int K,
                      int N, vf_act act);
void cuda_gemm_free(cuda_be *be);
/* Elementwise epilogue used when cuBLASLt cannot fuse: y = act(y). */
vf_status cuda_act_inplace(cuda_be *be, void *x, size_t n, int act);

/* cuda_conv.cu */
vf_status cuda_conv_init(cuda_be *be, char *features, size_t cap);
void cuda_conv_free(cuda_be *be);
/* Bytes of the cuDNN workspace held now. */
size_t cuda_conv_workspace(const cuda_be *be);
vf_status cuda_conv2d(void *impl, void *y, const void *x, const void *w, const void *b, const void *r, int B,
                      int C, int H, int W, int OC, int KH, int KW, int stride, int pad);

/* cuda_norm.cu */
vf_status cuda_groupnorm(void *impl, void *y, const void *x, const void *gamma, const void *beta,
                         const void *cb, int B, int C, int HW, int G, float eps, int silu);
vf_status cuda_layernorm(void *impl, void *y, const void *x, const void *gamma, const void *beta, int rows,
                         int C, float eps);

/* cuda_attention.cu: picks the attention kernels ($VF_CUDA_ATTN = mma | chunked forces one). */
vf_status cuda_attention_init(cuda_be *be, char *features, size_t cap);
vf_status cuda_attention(void *impl, void *o, const void *q, const void *k, const void *v, int B, int Lq,
                         int Lk, int H, int D, int ldq, int ldk, int ldv, int ldo, int causal, float scale);

/* cuda_elementwise.cu: bias (+ residual) over rows of N channels: y = y + b + r. */
vf_status cuda_bias_residual(cuda_be *be, void *y, const void *b, const void *r, size_t rows, int N);
vf_status cuda_act(void *impl, void *x, size_t n, vf_act act);
vf_status cuda_geglu(void *impl, void *y, const void *x, int rows, int inner);
vf_status cuda_axpby(void *impl, void *y, const void *x, size_t n, float alpha, float beta);
vf_status cuda_add(void *impl, void *y, const void *a, size_t n);
vf_status cuda_concat(void *impl, void *y, const void *a, int Ca, const void *b, int Cb, int B, int HW);
vf_status cuda_upsample2x(void *impl, void *y, const void *x, int B, int C, int H, int W);
/* fm <-> tokens in NHWC: a copy. */
vf_status cuda_fm_copy(void *impl, void *y, const void *x, int B, int C, int HW);
vf_status cuda_timestep_embedding(void *impl, void *out, const float *t, int B, int dim, int flip, float shift);
vf_status cuda_upload_convert(cuda_be *be, void *dst, const void *src, vf_dtype src_dtype, size_t n);
vf_status cuda_download_f32(cuda_be *be, float *dst, const void *src, size_t n);
vf_status cuda_upload_fm(void *impl, void *dst, const float *src, int B, int C, int H, int W);
vf_status cuda_download_fm(void *impl, float *dst, const void *src, int B, int C, int H, int W);
vf_status cuda_upload_conv_weight(void *impl, void *dst, const void *src, vf_dtype src_dtype, int OC, int C,
                                  int KH, int KW);
/* cuda_quant.cu: a packed quantized weight -> compute dtype, filter layout. */
/* The CUDA stream behind a backend stream. */
static inline cudaStream_t stream_of(cuda_be *be, vf_stream s)
{
    return s == VF_STREAM_COPY ? be->copy : s == VF_STREAM_EXPAND ? be->expand : be->compute;
}

vf_status cuda_dequant(void *impl, void *dst, const void *src, vf_dtype fmt, int OC, int C, int KH, int KW);
vf_status cuda_dequant_on(void *impl, vf_stream s, void *dst, const void *src, vf_dtype fmt, int OC, int C, int KH,
                          int KW);

#endif
