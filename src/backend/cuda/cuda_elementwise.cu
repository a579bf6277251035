/* Element-wise and data-movement kernels of the CUDA backend: activations,
 * GEGLU, add, axpby, bias/residual epilogues, NHWC concat and upsampling,
 * the timestep embedding, and the dtype / layout conversions of uploads and
 * downloads.
 *
 * All of these are memory-bound: each moves every byte once, in 16-byte
 * vectors (8 elements) when the pointers and sizes allow it, with fp32
 * arithmetic and one rounding at the store. Grid-stride loops keep the
 * launch size bounded for any tensor.
 */
#include "cuda_common.cuh"

#include <math.h>

namespace {

template <typename T> struct alignas(16) vec8 {
    T v[8];
};

inline bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

template <typename T>
__global__ void k_act(T *x, size_t n, int act)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = elem<T>::from_f(act_apply(elem<T>::to_f(x[i]), act));
}

template <typename T>
__global__ void k_act8(T *x, size_t n8, int act)
{
    vec8<T> *p = (vec8<T> *)x;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n8; i += (size_t)gridDim.x * blockDim.x) {
        vec8<T> a = p[i];
#pragma unroll
        for (int j = 0; j < 8; j++)
            a.v[j] = elem<T>::from_f(act_apply(elem<T>::to_f(a.v[j]), act));
        p[i] = a;
    }
}

// x is (rows, 2*inner), y is (rows, inner)
template <typename T>
__global__ void k_geglu(T *y, const T *x, size_t rows, int inner)
{
    size_t n = rows * (size_t)inner;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / inner, c = i % inner;
        const T *h = x + r * 2 * inner;
        y[i] = elem<T>::from_f(elem<T>::to_f(h[c]) * act_apply(elem<T>::to_f(h[inner + c]), VF_ACT_GELU));
    }
}

template <typename T>
__global__ void k_geglu8(T *y, const T *x, size_t rows, int inner8)
{
    size_t n = rows * (size_t)inner8;
    const vec8<T> *xv = (const vec8<T> *)x;
    vec8<T> *yv = (vec8<T> *)y;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / inner8, c = i % inner8;
        vec8<T> h = xv[r * 2 * inner8 + c], g = xv[r * 2 * inner8 + inner8 + c], o;
#pragma unroll
        for (int j = 0; j < 8; j++)
            o.v[j] = elem<T>::from_f(elem<T>::to_f(h.v[j]) * act_apply(elem<T>::to_f(g.v[j]), VF_ACT_GELU));
        yv[i] = o;
    }
}

/* y = alpha y + beta x (add is alpha = beta = 1). */
template <typename T>
__global__ void k_axpby(T *y, const T *x, size_t n, float alpha, float beta)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = elem<T>::from_f(alpha * elem<T>::to_f(y[i]) + beta * elem<T>::to_f(x[i]));
}

template <typename T>
__global__ void k_axpby8(T *y, const T *x, size_t n8, float alpha, float beta)
{
    vec8<T> *yv = (vec8<T> *)y;
    const vec8<T> *xv = (const vec8<T> *)x;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n8; i += (size_t)gridDim.x * blockDim.x) {
        vec8<T> a = yv[i], b = xv[i];
#pragma unroll
        for (int j = 0; j < 8; j++)
            a.v[j] = elem<T>::from_f(alpha * elem<T>::to_f(a.v[j]) + beta * elem<T>::to_f(b.v[j]));
        yv[i] = a;
    }
}

// y is (rows, N); b is (N) or NULL; r is (rows, N) or NULL
template <typename T>
__global__ void k_bias_res(T *y, const T *b, const T *r, size_t rows, int N)
{
    size_t n = rows * (size_t)N;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = elem<T>::to_f(y[i]);
        if (b)
            v += elem<T>::to_f(b[i % N]);
        if (r)
            v += elem<T>::to_f(r[i]);
        y[i] = elem<T>::from_f(v);
    }
}

// a (B*HW, Ca), b (B*HW, Cb) -> y (B*HW, Ca+Cb)   (NHWC channel concat)
template <typename T>
__global__ void k_concat(T *y, const T *a, int Ca, const T *b, int Cb, size_t pix)
{
    int C = Ca + Cb;
    size_t n = pix * (size_t)C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t p = i / C;
        int c = (int)(i % C);
        y[i] = c < Ca ? a[p * Ca + c] : b[p * Cb + (c - Ca)];
    }
}

template <typename T>
__global__ void k_concat8(T *y, const T *a, int Ca8, const T *b, int Cb8, size_t pix)
{
    int C8 = Ca8 + Cb8;
    size_t n = pix * (size_t)C8;
    vec8<T> *yv = (vec8<T> *)y;
    const vec8<T> *av = (const vec8<T> *)a, *bv = (const vec8<T> *)b;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t p = i / C8;
        int c = (int)(i % C8);
        yv[i] = c < Ca8 ? av[p * Ca8 + c] : bv[p * Cb8 + (c - Ca8)];
    }
}

// x (B,H,W,C) -> y (B,2H,2W,C), in units of `vec` elements (C counted in units)
template <typename U>
__global__ void k_upsample(U *y, const U *x, int B, int C, int H, int W)
{
    size_t n = (size_t)B * 4 * H * W * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(i % C);
        size_t t = i / C;
        int ox = (int)(t % (2 * W));
        t /= 2 * W;
        int oy = (int)(t % (2 * H));
        size_t b = t / (2 * H);
        y[i] = x[((b * H + oy / 2) * W + ox / 2) * C + c];
    }
}

// t is (B) fp32 on the device, out (B,dim)
template <typename T>
__global__ void k_timestep(T *out, const float *t, int B, int dim, int flip, float shift)
{
    int half_ = dim / 2;
    size_t n = (size_t)B * dim;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        int b = (int)(i / dim), j = (int)(i % dim);
        float v = 0.0f;
        if (j < 2 * half_) {
            int f = j % half_;
            /* fp32 as torch computes it: exp(-ln(10000) * i / (half - shift)) */
            float expo = -logf(10000.0f) * (float)f / ((float)half_ - shift);
            float arg = t[b] * expf(expo);
            int first = j < half_;
            v = (first != (flip != 0)) ? sinf(arg) : cosf(arg);
        }
        out[i] = elem<T>::from_f(v);
    }
}

template <typename S> __device__ __forceinline__ float load_f(const S *p, size_t i);
template <> __device__ __forceinline__ float load_f<float>(const float *p, size_t i) { return p[i]; }
template <> __device__ __forceinline__ float load_f<half>(const half *p, size_t i) { return __half2float(p[i]); }
template <> __device__ __forceinline__ float load_f<bf16>(const bf16 *p, size_t i) { return __bfloat162float(p[i]); }

template <typename T, typename S>
__global__ void k_convert(T *y, const S *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = elem<T>::from_f(load_f<S>(x, i));
}

template <typename T>
__global__ void k_to_f32(float *y, const T *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = elem<T>::to_f(x[i]);
}

// x (B,C,HW) fp32 -> y (B,HW,C) T
template <typename T>
__global__ void k_nchw_to_nhwc(T *y, const float *x, int B, int C, int HW)
{
    size_t n = (size_t)B * C * HW;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(i % C);
        size_t t = i / C;
        int p = (int)(t % HW);
        size_t b = t / HW;
        y[i] = elem<T>::from_f(x[(b * C + c) * HW + p]);
    }
}

// x (B,HW,C) T -> y (B,C,HW) fp32
template <typename T>
__global__ void k_nhwc_to_nchw(float *y, const T *x, int B, int C, int HW)
{
    size_t n = (size_t)B * C * HW;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        int p = (int)(i % HW);
        size_t t = i / HW;
        int c = (int)(t % C);
        size_t b = t / C;
        y[i] = elem<T>::to_f(x[(b * HW + p) * C + c]);
    }
}

// src (OC,C,KH,KW) -> dst (OC,KH,KW,C)
template <typename T>
__global__ void k_oihw_to_ohwi(T *dst, const T *src, int OC, int C, int KHW)
{
    size_t n = (size_t)OC * C * KHW;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(i % C);
        size_t t = i / C;
        int k = (int)(t % KHW);
        size_t o = t / KHW;
        dst[i] = src[(o * C + c) * KHW + k];
    }
}

const unsigned TPB = 256;

} // namespace

/* ---- host side ------------------------------------------------------------------------ */

vf_status cuda_act_inplace(cuda_be *be, void *x, size_t n, int act)
{
    if (act == VF_ACT_NONE)
        return VF_OK;
    if (n % 8 == 0 && aligned16(x))
        DISPATCH(be, T, k_act8<T><<<grid_for(n / 8, TPB), TPB, 0, be->compute>>>((T *)x, n / 8, act));
    else
        DISPATCH(be, T, k_act<T><<<grid_for(n, TPB), TPB, 0, be->compute>>>((T *)x, n, act));
    return launched(be, "activation kernel");
}

vf_status cuda_act(void *impl, void *x, size_t n, vf_act act) { return cuda_act_inplace((cuda_be *)impl, x, n, act); }

vf_status cuda_geglu(void *impl, void *y, const void *x, int rows, int inner)
{
    cuda_be *be = (cuda_be *)impl;
    size_t n = (size_t)rows * inner;
    if (inner % 8 == 0 && aligned16(x) && aligned16(y))
        DISPATCH(be, T, k_geglu8<T><<<grid_for(n / 8, TPB), TPB, 0, be->compute>>>((T *)y, (const T *)x, rows, inner / 8));
    else
        DISPATCH(be, T, k_geglu<T><<<grid_for(n, TPB), TPB, 0, be->compute>>>((T *)y, (const T *)x, rows, inner));
    return launched(be, "geglu kernel");
}

vf_status cuda_axpby(void *impl, void *y, const void *x, size_t n, float alpha, float beta)
{
    cuda_be *be = (cuda_be *)impl;
    if (n % 8 == 0 && aligned16(x) && aligned16(y))
        DISPATCH(be, T, k_axpby8<T><<<grid_for(n / 8, TPB), TPB, 0, be->compute>>>((T *)y, (const T *)x, n / 8, alpha, beta));
    else
        DISPATCH(be, T, k_axpby<T><<<grid_for(n, TPB), TPB, 0, be->compute>>>((T *)y, (const T *)x, n, alpha, beta));
    return launched(be, "axpby kernel");
}

vf_status cuda_add(void *impl, void *y, const void *a, size_t n) { return cuda_axpby(impl, y, a, n, 1.0f, 1.0f); }

vf_status cuda_bias_residual(cuda_be *be, void *y, const void *b, const void *r, size_t rows, int N)
{
    if (!b && !r)
        return VF_OK;
    DISPATCH(be, T, k_bias_res<T><<<grid_for(rows * N, TPB), TPB, 0, be->compute>>>((T *)y, (const T *)b, (const T *)r, rows, N));
    return launched(be, "bias kernel");
}

vf_status cuda_concat(void *impl, void *y, const void *a, int Ca, const void *b, int Cb, int B, int HW)
{
    cuda_be *be = (cuda_be *)impl;
    size_t pix = (size_t)B * HW;
    if (Ca % 8 == 0 && Cb % 8 == 0 && aligned16(y) && aligned16(a) && aligned16(b))
        DISPATCH(be, T, k_concat8<T><<<grid_for(pix * (Ca + Cb) / 8, TPB), TPB, 0, be->compute>>>((T *)y, (const T *)a, Ca / 8, (const T *)b, Cb / 8, pix));
    else
        DISPATCH(be, T, k_concat<T><<<grid_for(pix * (Ca + Cb), TPB), TPB, 0, be->compute>>>((T *)y, (const T *)a, Ca, (const T *)b, Cb, pix));
    return launched(be, "concat kernel");
}

vf_status cuda_upsample2x(void *impl, void *y, const void *x, int B, int C, int H, int W)
{
    cuda_be *be = (cuda_be *)impl;
    size_t n = (size_t)B * C * 4 * H * W;
    if (C % 8 == 0 && aligned16(x) && aligned16(y))
        k_upsample<uint4><<<grid_for(n / 8, TPB), TPB, 0, be->compute>>>((uint4 *)y, (const uint4 *)x, B, C / 8, H, W);
    else
        k_upsample<uint16_t><<<grid_for(n, TPB), TPB, 0, be->compute>>>((uint16_t *)y, (const uint16_t *)x, B, C, H, W);
    return launched(be, "upsample kernel");
}

vf_status cuda_fm_copy(void *impl, void *y, const void *x, int B, int C, int HW)
{
    cuda_be *be = (cuda_be *)impl;
    return cu_check(be, cudaMemcpyAsync(y, x, (size_t)B * C * HW * 2, cudaMemcpyDeviceToDevice, be->compute),
                    "feature map copy");
}

vf_status cuda_timestep_embedding(void *impl, void *out, const float *t, int B, int dim, int flip, float shift)
{
    cuda_be *be = (cuda_be *)impl;
    VF_TRY(buf_reserve(be, &be->xfer, (size_t)B * sizeof(float), "timestep staging"));
    CU_TRY(be, cudaMemcpyAsync(be->xfer.p, t, (size_t)B * sizeof(float), cudaMemcpyHostToDevice, be->compute),
           "timestep upload");
    DISPATCH(be, T, k_timestep<T><<<grid_for((size_t)B * dim, TPB), TPB, 0, be->compute>>>((T *)out, (const float *)be->xfer.p, B, dim, flip, shift));
    return launched(be, "timestep kernel");
}

/* Host src of src_dtype -> staging -> dst in the compute dtype. */
vf_status cuda_upload_convert(cuda_be *be, void *dst, const void *src, vf_dtype src_dtype, size_t n)
{
    size_t es = src_dtype == VF_DTYPE_F32 ? 4 : 2;
    if (src_dtype == be->dtype)
        return cu_check(be, cudaMemcpyAsync(dst, src, n * es, cudaMemcpyHostToDevice, be->compute), "upload");
    VF_TRY(buf_reserve(be, &be->xfer, n * es, "upload staging"));
    CU_TRY(be, cudaMemcpyAsync(be->xfer.p, src, n * es, cudaMemcpyHostToDevice, be->compute), "upload");
    unsigned g = grid_for(n, TPB);
    if (src_dtype == VF_DTYPE_F32)
        DISPATCH(be, T, k_convert<T, float><<<g, TPB, 0, be->compute>>>((T *)dst, (const float *)be->xfer.p, n));
    else if (src_dtype == VF_DTYPE_F16)
        DISPATCH(be, T, k_convert<T, half><<<g, TPB, 0, be->compute>>>((T *)dst, (const half *)be->xfer.p, n));
    else
        DISPATCH(be, T, k_convert<T, bf16><<<g, TPB, 0, be->compute>>>((T *)dst, (const bf16 *)be->xfer.p, n));
    return launched(be, "upload conversion kernel");
}

vf_status cuda_download_f32(cuda_be *be, float *dst, const void *src, size_t n)
{
    VF_TRY(buf_reserve(be, &be->xfer, n * sizeof(float), "download staging"));
    DISPATCH(be, T, k_to_f32<T><<<grid_for(n, TPB), TPB, 0, be->compute>>>((float *)be->xfer.p, (const T *)src, n));
    VF_TRY(launched(be, "download conversion kernel"));
    CU_TRY(be, cudaMemcpyAsync(dst, be->xfer.p, n * sizeof(float), cudaMemcpyDeviceToHost, be->compute), "download");
    return cu_check(be, cudaStreamSynchronize(be->compute), "download (an earlier kernel may have failed)");
}

vf_status cuda_upload_fm(void *impl, void *dst, const float *src, int B, int C, int H, int W)
{
    cuda_be *be = (cuda_be *)impl;
    size_t n = (size_t)B * C * H * W;
    VF_TRY(buf_reserve(be, &be->xfer, n * sizeof(float), "upload staging"));
    CU_TRY(be, cudaMemcpyAsync(be->xfer.p, src, n * sizeof(float), cudaMemcpyHostToDevice, be->compute), "upload");
    DISPATCH(be, T, k_nchw_to_nhwc<T><<<grid_for(n, TPB), TPB, 0, be->compute>>>((T *)dst, (const float *)be->xfer.p, B, C, H * W));
    return launched(be, "NCHW to NHWC kernel");
}

vf_status cuda_download_fm(void *impl, float *dst, const void *src, int B, int C, int H, int W)
{
    cuda_be *be = (cuda_be *)impl;
    size_t n = (size_t)B * C * H * W;
    VF_TRY(buf_reserve(be, &be->xfer, n * sizeof(float), "download staging"));
    DISPATCH(be, T, k_nhwc_to_nchw<T><<<grid_for(n, TPB), TPB, 0, be->compute>>>((float *)be->xfer.p, (const T *)src, B, C, H * W));
    VF_TRY(launched(be, "NHWC to NCHW kernel"));
    CU_TRY(be, cudaMemcpyAsync(dst, be->xfer.p, n * sizeof(float), cudaMemcpyDeviceToHost, be->compute), "download");
    return cu_check(be, cudaStreamSynchronize(be->compute), "download (an earlier kernel may have failed)");
}

vf_status cuda_upload_conv_weight(void *impl, void *dst, const void *src, vf_dtype src_dtype, int OC, int C,
                                  int KH, int KW)
{
    cuda_be *be = (cuda_be *)impl;
    size_t n = (size_t)OC * C * KH * KW;
    if (KH == 1 && KW == 1)
        return cuda_upload_convert(be, dst, src, src_dtype, n);
    VF_TRY(buf_reserve(be, &be->scratch2, n * 2, "conv weight staging"));
    VF_TRY(cuda_upload_convert(be, be->scratch2.p, src, src_dtype, n));
    DISPATCH(be, T, k_oihw_to_ohwi<T><<<grid_for(n, TPB), TPB, 0, be->compute>>>((T *)dst, (const T *)be->scratch2.p, OC, C, KH * KW));
    return launched(be, "filter layout kernel");
}
