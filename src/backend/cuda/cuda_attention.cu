/* Attention of the CUDA backend.
 *
 * On Hopper (a build with sm_90a code), head dims up to 64 run one of the
 * wgmma flash kernels (flash_wgmma.cuh, flash_ws.cuh), chosen by
 * $VF_FLASH_VARIANT (0..4, see flashws::variant_name; unset: the default
 * below) so that one GPU run can time every variant through the library.
 * Otherwise head dims up to 128 (multiples of 8, 16-byte aligned operands)
 * run the mma.sync flash kernel of flash_kernel.cuh, instantiated for a
 * few padded head dims (D is rounded up to the next instance; the padding
 * is zero-filled in shared memory and costs math, not memory traffic).
 * flashws::dispatch holds that choice so that bench/flash_bench.cu runs the
 * very same code. Everything else (the VAE's single 512-wide head, odd
 * strides) takes the chunked path: per batch item and chunk of queries,
 * S = scale Q K^T for all heads in one strided batched GEMM (fp32 scores),
 * a row softmax kernel writes P in the compute dtype, and O = P V is a
 * second batched GEMM written straight into the strided output. Its
 * workspace is bounded (ATTN_WS), never O(Lq * Lk).
 */
#include "cuda_common.cuh"
#include "flash_kernel.cuh"
#include "flash_wgmma.cuh"
#include "flash_ws.cuh"

#include <stdlib.h>
#include <string.h>

#include <math.h>

/* $VF_FLASH_VARIANT when unset: the measured-fastest wgmma variant. */
#define VF_FLASH_DEFAULT_VARIANT 4

#define ATTN_WS ((size_t)64 << 20)

namespace {

template <typename T> vf_status flash_dispatch(cuda_be *be, const flash::params &p, int B)
{
    CU_TRY(be, flashws::dispatch<T>(be->attn_variant, be->attn_wgmma != 0, p, B, be->compute),
           "flash attention kernel");
    return VF_OK;
}

// s is (rows, Lk) fp32 scores of queries q0.. (row r is query q0 + r % cq); p gets softmax rows in T
template <typename T>
__global__ void k_softmax(T *pout, const float *s, int Lk, int cq, int q0, int causal)
{
    __shared__ float red[32];
    const float *row = s + (size_t)blockIdx.x * Lk;
    T *prow = pout + (size_t)blockIdx.x * Lk;
    int n = Lk;
    if (causal) {
        int q = q0 + (int)(blockIdx.x % cq);
        n = q + 1 < Lk ? q + 1 : Lk;
    }
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        mx = fmaxf(mx, row[j]);
    for (int o = 16; o > 0; o >>= 1)
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if ((threadIdx.x & 31) == 0)
        red[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++)
        mx = fmaxf(mx, red[w]);
    __syncthreads();
    float sum = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        sum += __expf(row[j] - mx);
    for (int o = 16; o > 0; o >>= 1)
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if ((threadIdx.x & 31) == 0)
        red[threadIdx.x >> 5] = sum;
    __syncthreads();
    sum = 0.0f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++)
        sum += red[w];
    float inv = 1.0f / sum;
    for (int j = threadIdx.x; j < Lk; j += blockDim.x)
        prow[j] = elem<T>::from_f(j < n ? __expf(row[j] - mx) * inv : 0.0f);
}

vf_status blas_check(cuda_be *be, cublasStatus_t s, const char *what)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return VF_OK;
    return be_fail(be, VF_ERR_DEVICE, "%s: %s", what, cublasGetStatusString(s));
}

// q (B,Lq,H,D) stride ldq, k/v (B,Lk,H,D) strides ldk/ldv, o (B,Lq,H,D) stride ldo
vf_status attention_chunked(cuda_be *be, void *o, const void *q, const void *k, const void *v, int B, int Lq, int Lk,
                            int H, int D, int ldq, int ldk, int ldv, int ldo, int causal, float scale)
{
    size_t per_q = (size_t)H * Lk * (sizeof(float) + 2);
    size_t cq = ATTN_WS / per_q;
    if (cq < 1)
        cq = 1;
    if (cq > (size_t)Lq)
        cq = (size_t)Lq;
    size_t sbytes = (size_t)H * cq * Lk * sizeof(float);
    void *ws = NULL;
    VF_TRY(pool_get(be, sbytes + (size_t)H * cq * Lk * 2 + 256, &ws, "attention workspace"));
    float *S = (float *)ws;
    void *P = (char *)ws + ((sbytes + 255) & ~(size_t)255);
    cudaDataType_t t = cuda_dtype(be->dtype);
    const float zero = 0.0f, one = 1.0f;
    auto run = [&]() -> vf_status {
    for (int b = 0; b < B; b++) {
        for (int q0 = 0; q0 < Lq; q0 += (int)cq) {
            int n = Lq - q0 < (int)cq ? Lq - q0 : (int)cq;
            const char *qb = (const char *)q + ((size_t)b * Lq + q0) * ldq * 2;
            const char *kb = (const char *)k + (size_t)b * Lk * ldk * 2;
            const char *vb = (const char *)v + (size_t)b * Lk * ldv * 2;
            char *ob = (char *)o + ((size_t)b * Lq + q0) * ldo * 2;
            VF_TRY(blas_check(be,
                              cublasGemmStridedBatchedEx(be->blas, CUBLAS_OP_T, CUBLAS_OP_N, Lk, n, D, &scale, kb, t, ldk,
                                                         D, qb, t, ldq, D, &zero, S, CUDA_R_32F, Lk,
                                                         (long long)Lk * n, H, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                              "attention scores GEMM"));
            DISPATCH(be, T, k_softmax<T><<<(unsigned)(H * n), 256, 0, be->compute>>>((T *)P, S, Lk, n, q0, causal));
            VF_TRY(launched(be, "softmax kernel"));
            VF_TRY(blas_check(be,
                              cublasGemmStridedBatchedEx(be->blas, CUBLAS_OP_N, CUBLAS_OP_N, D, n, Lk, &one, vb, t, ldv, D,
                                                         P, t, Lk, (long long)Lk * n, &zero, ob, t, ldo, D, H,
                                                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                              "attention output GEMM"));
        }
    }
    return VF_OK;
    };
    vf_status st = run();
    pool_put(be, ws);
    return st;
}

inline bool a16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

} // namespace

vf_status cuda_attention(void *impl, void *o, const void *q, const void *k, const void *v, int B, int Lq, int Lk,
                         int H, int D, int ldq, int ldk, int ldv, int ldo, int causal, float scale)
{
    cuda_be *be = (cuda_be *)impl;
    bool flash_ok = D % 8 == 0 && D <= 128 && a16(o) && a16(q) && a16(k) && a16(v) && ldq % 8 == 0 &&
                    ldk % 8 == 0 && ldv % 8 == 0 && ldo % 8 == 0 && be->attn_mode != 2;
    if (!flash_ok)
        return attention_chunked(be, o, q, k, v, B, Lq, Lk, H, D, ldq, ldk, ldv, ldo, causal, scale);
    flash::params p;
    p.q = q;
    p.k = k;
    p.v = v;
    p.o = o;
    p.Lq = Lq;
    p.Lk = Lk;
    p.H = H;
    p.D = D;
    p.ldq = ldq;
    p.ldk = ldk;
    p.ldv = ldv;
    p.ldo = ldo;
    p.causal = causal;
    p.scale_log2 = scale * 1.4426950408889634f;
    if (be->dtype == VF_DTYPE_BF16)
        return flash_dispatch<bf16>(be, p, B);
    return flash_dispatch<half>(be, p, B);
}

vf_status cuda_attention_init(cuda_be *be, char *features, size_t cap)
{
    const char *env = getenv("VF_CUDA_ATTN");
    int *flag = NULL, have = 0;
    be->attn_mode = env && strcmp(env, "mma") == 0 ? 1 : (env && strcmp(env, "chunked") == 0 ? 2 : 0);
    if (be->prop.major == 9 && be->prop.minor == 0) {
        /* Only a build with sm_90a code has the wgmma body: ask the device. */
        CU_TRY(be, cudaMalloc(&flag, sizeof(int)), "attention probe");
        flashwg::probe<<<1, 1, 0, be->compute>>>(flag);
        cudaError_t e = cudaGetLastError();
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(&have, flag, sizeof(int), cudaMemcpyDeviceToHost, be->compute);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(be->compute);
        cudaFree(flag);
        CU_TRY(be, e, "attention probe");
    }
    be->attn_wgmma = have && be->attn_mode == 0;
    const char *var = getenv("VF_FLASH_VARIANT");
    be->attn_variant = VF_FLASH_DEFAULT_VARIANT;
    if (var && *var) {
        char *end = NULL;
        long v = strtol(var, &end, 10);
        if (*end != '\0' || v < 0 || v >= flashws::NVARIANTS)
            return be_fail(be, VF_ERR_INVALID_ARG, "VF_FLASH_VARIANT=%s: expected 0..%d", var, flashws::NVARIANTS - 1);
        be->attn_variant = (int)v;
    }
    if (be->attn_mode == 2)
        snprintf(features, cap, "attn:chunked");
    else if (be->attn_wgmma)
        snprintf(features, cap, "attn:flash-wgmma-v%d+mma", be->attn_variant);
    else
        snprintf(features, cap, "attn:flash-mma");
    return VF_OK;
}
