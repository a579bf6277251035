/* Quantized weights on the GPU: packed F8_E4M3 / Q8 / Q4 tensors (src/core/quant.h)
 * expanded to the compute dtype right after their copy, so the host link and the
 * arena carry the quantized bytes.
 *
 * The packed layout (rows of K = C*KH*KW values in OIHW order, padded to Kp;
 * a data plane, then a scale plane) is restated here because the plugin never
 * calls into the core; quant.h is the authority and test_cuda_quant checks
 * the two agree bit for bit. Every value is the same single fp32 operation
 * the CPU does (s * e4m3, d * q, fmaf(d, q, m)), rounded once to F16/BF16.
 *
 * Three kernels, all one pass over the packed bytes with 16-byte loads:
 * - rows: the output is the packed order (linear weights, 1x1 convs): thread t
 *   reads data bytes [16t, 16t+16) and writes its 16 (Q8, F8) or 32 (Q4)
 *   values with 16-byte stores; the scale it needs is one 2- or 4-byte load
 *   that neighbouring threads share through the cache.
 * - ohwi: KxK convolutions, whose filter layout on this backend is OHWI
 *   (cuda_upload_conv_weight): a thread block takes one output channel and a
 *   tile of CT input channels, whose CT*KH*KW values are contiguous in the
 *   packed row; it dequantizes them into shared memory with 16-byte loads and
 *   writes them back transposed, KH*KW runs of CT channels with 16-byte stores.
 * - any: one thread per output value with byte loads, for what the others
 *   do not take (rows padded past K, C not a multiple of 32, unaligned
 *   pointers, huge kernels). Correct everywhere, and only small weights of
 *   real models (conv_in: C = 4) land here.
 */
#include "cuda_common.cuh"

namespace {

enum { FMT_F8 = 0, FMT_Q8 = 1, FMT_Q4 = 2 };

/* quant.h: data-plane bytes and scale-plane bytes of one row of K values. */
void layout(int fmt, int64_t K, size_t *dr, size_t *sr)
{
    int64_t g = fmt == FMT_F8 ? 16 : 32;
    int64_t kp = (K + g - 1) / g * g;
    *dr = fmt == FMT_Q4 ? (size_t)kp / 2 : (size_t)kp;
    *sr = fmt == FMT_F8 ? 4 : fmt == FMT_Q8 ? (size_t)(kp / 32) * 2 : (size_t)(kp / 32) * 4;
}

__device__ __forceinline__ float f8e4m3(uint32_t b)
{
    uint32_t sign = (b & 0x80u) << 24, e = (b >> 3) & 15u, m = b & 7u;
    if (e == 15u && m == 7u)
        return __int_as_float(0x7fc00000);
    float r = e == 0 ? (float)m * 0.001953125f : __int_as_float((int)(((e + 120u) << 23) | (m << 20)));
    return __int_as_float(__float_as_int(r) | (int)sign);
}

__device__ __forceinline__ float half_at(const uint8_t *p)
{
    return __half2float(__ushort_as_half(*reinterpret_cast<const unsigned short *>(p)));
}

/* Unaligned-safe loads for the generic kernel. */
__device__ __forceinline__ float half_bytes(const uint8_t *p)
{
    return __half2float(__ushort_as_half((unsigned short)(p[0] | (p[1] << 8))));
}

__device__ __forceinline__ float f32_bytes(const uint8_t *p)
{
    return __int_as_float((int)((uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                                ((uint32_t)p[3] << 24)));
}

template <typename T> __device__ __forceinline__ uint32_t pack2(float a, float b);
template <> __device__ __forceinline__ uint32_t pack2<half>(float a, float b)
{
    __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t *>(&h);
}
template <> __device__ __forceinline__ uint32_t pack2<bf16>(float a, float b)
{
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t *>(&h);
}

/* 8 values to 8 elements at a 16-byte aligned dst. */
template <typename T> __device__ __forceinline__ void store8(T *dst, const float *v)
{
    uint4 u = make_uint4(pack2<T>(v[0], v[1]), pack2<T>(v[2], v[3]), pack2<T>(v[4], v[5]), pack2<T>(v[6], v[7]));
    *reinterpret_cast<uint4 *>(dst) = u;
}

/* The values of one 16-byte data load at value index k of row r (k a multiple
 * of 16, of 32 for Q4): 16 values (F8, Q8) or 32 (Q4). scales is the scale
 * plane; spr its entries (blocks) per row. */
template <int FMT>
__device__ __forceinline__ void decode16(uint4 q, const uint8_t *scales, size_t r, size_t k, size_t spr, float *v)
{
    uint32_t w[4] = {q.x, q.y, q.z, q.w};
    if (FMT == FMT_F8) {
        float s = *reinterpret_cast<const float *>(scales + r * 4);
#pragma unroll
        for (int i = 0; i < 16; i++)
            v[i] = s * f8e4m3((w[i / 4] >> (8 * (i % 4))) & 0xffu);
    } else if (FMT == FMT_Q8) {
        float d = half_at(scales + (r * spr + k / 32) * 2);
#pragma unroll
        for (int i = 0; i < 16; i++)
            v[i] = d * (float)(int8_t)((w[i / 4] >> (8 * (i % 4))) & 0xffu);
    } else {
        const uint8_t *dm = scales + (r * spr + k / 32) * 4;
        float d = half_at(dm), m = half_at(dm + 2);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            uint32_t b = (w[i / 4] >> (8 * (i % 4))) & 0xffu;
            v[2 * i] = __fmaf_rn(d, (float)(b & 15u), m);
            v[2 * i + 1] = __fmaf_rn(d, (float)(b >> 4), m);
        }
    }
}

/* Output in packed order; K == Kp (K a multiple of 32), src and dst 16-byte
 * aligned. groups = 16-byte loads in the data plane, gpr of them per row. */
template <typename T, int FMT>
__global__ void k_dequant_rows(T *__restrict__ dst, const uint8_t *__restrict__ src, size_t groups, size_t gpr,
                               size_t scale_off, size_t spr)
{
    const int per = FMT == FMT_Q4 ? 32 : 16;
    const uint8_t *scales = src + scale_off;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < groups; t += (size_t)gridDim.x * blockDim.x) {
        uint4 q = __ldg(reinterpret_cast<const uint4 *>(src) + t);
        size_t r = t / gpr, k = (t % gpr) * per;
        float v[32];
        decode16<FMT>(q, scales, r, k, spr, v);
        T *out = dst + t * per;
#pragma unroll
        for (int i = 0; i < per; i += 8)
            store8<T>(out + i, v + i);
    }
}

/* OHWI output of a KxK convolution: block (x, y) = channel tile x of output
 * channel y; ct channels, khw = KH*KW, C a multiple of 32 (so K == Kp and
 * every tile starts on a block boundary), pointers 16-byte aligned. */
template <typename T, int FMT>
__global__ void k_dequant_ohwi(T *__restrict__ dst, const uint8_t *__restrict__ src, int C, int khw, int ct,
                               size_t dr, size_t scale_off, size_t spr)
{
    extern __shared__ __align__(16) float tile[]; /* ct * khw values, in packed order */
    const int per = FMT == FMT_Q4 ? 32 : 16;
    size_t r = blockIdx.y;
    int c0 = blockIdx.x * ct, nvals = ct * khw;
    size_t k0 = (size_t)c0 * khw;
    const uint8_t *row = src + r * dr, *scales = src + scale_off;
    for (int i = threadIdx.x; i < nvals / per; i += blockDim.x) {
        size_t k = k0 + (size_t)i * per;
        uint4 q = __ldg(reinterpret_cast<const uint4 *>(row + (FMT == FMT_Q4 ? k / 2 : k)));
        float v[32];
        decode16<FMT>(q, scales, r, k, spr, v);
        float4 *s = reinterpret_cast<float4 *>(tile + i * per);
#pragma unroll
        for (int j = 0; j < per / 4; j++)
            s[j] = make_float4(v[4 * j], v[4 * j + 1], v[4 * j + 2], v[4 * j + 3]);
    }
    __syncthreads();
    int vecs = ct / 8;
    for (int i = threadIdx.x; i < khw * vecs; i += blockDim.x) {
        int s = i / vecs, c = (i % vecs) * 8;
        float v[8];
#pragma unroll
        for (int j = 0; j < 8; j++)
            v[j] = tile[(c + j) * khw + s];
        store8<T>(dst + (r * khw + s) * (size_t)C + c0 + c, v);
    }
}

/* Anything: one output value per thread, byte loads. ohwi: the output is
 * (OC,KH,KW,C), else (OC, K) in packed order. */
template <typename T, int FMT>
__global__ void k_dequant_any(T *__restrict__ dst, const uint8_t *__restrict__ src, int OC, int C, int khw, int ohwi,
                              size_t dr, size_t scale_off, size_t spr)
{
    size_t K = (size_t)C * khw, n = (size_t)OC * K;
    const uint8_t *scales = src + scale_off;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t r, k;
        if (ohwi) {
            size_t c = i % C, t = i / C;
            k = c * khw + t % khw;
            r = t / khw;
        } else {
            r = i / K;
            k = i % K;
        }
        const uint8_t *row = src + r * dr;
        float v;
        if (FMT == FMT_F8) {
            v = f32_bytes(scales + r * 4) * f8e4m3(row[k]);
        } else if (FMT == FMT_Q8) {
            v = half_bytes(scales + (r * spr + k / 32) * 2) * (float)(int8_t)row[k];
        } else {
            const uint8_t *dm = scales + (r * spr + k / 32) * 4;
            uint32_t b = row[k / 2];
            v = __fmaf_rn(half_bytes(dm), (float)(k & 1 ? b >> 4 : b & 15u), half_bytes(dm + 2));
        }
        dst[i] = elem<T>::from_f(v);
    }
}

const unsigned TPB = 256;

/* The largest channel tile (128, 64 or 32 channels) dividing C whose values
 * fit 16 KB of shared memory; 0 when none does. */
int ohwi_tile(int C, int khw)
{
    for (int ct = 128; ct >= 32; ct /= 2)
        if (C % ct == 0 && (size_t)ct * khw * sizeof(float) <= 16384)
            return ct;
    return 0;
}

template <typename T, int FMT>
vf_status launch(cuda_be *be, cudaStream_t st, void *dst, const void *src, int OC, int C, int KH, int KW)
{
    int khw = KH * KW;
    size_t K = (size_t)C * khw, dr, sr;
    layout(FMT, (int64_t)K, &dr, &sr);
    size_t scale_off = (size_t)OC * dr, spr = sr / (FMT == FMT_Q4 ? 4 : 2);
    int aligned = ((uintptr_t)src % 16 == 0) && ((uintptr_t)dst % 16 == 0);
    T *d = (T *)dst;
    const uint8_t *s = (const uint8_t *)src;
    int ct = khw > 1 ? ohwi_tile(C, khw) : 0;
    if (khw == 1 && aligned && K % 32 == 0) {
        size_t per = FMT == FMT_Q4 ? 32 : 16, groups = (size_t)OC * K / per;
        k_dequant_rows<T, FMT><<<grid_for(groups, TPB), TPB, 0, st>>>(d, s, groups, K / per, scale_off, spr);
    } else if (khw > 1 && aligned && C % 32 == 0 && ct && OC <= 65535) {
        dim3 grid((unsigned)(C / ct), (unsigned)OC);
        size_t smem = (size_t)ct * khw * sizeof(float);
        k_dequant_ohwi<T, FMT><<<grid, 128, smem, st>>>(d, s, C, khw, ct, dr, scale_off, spr);
    } else {
        size_t n = (size_t)OC * K;
        k_dequant_any<T, FMT><<<grid_for(n, TPB), TPB, 0, st>>>(d, s, OC, C, khw, khw > 1, dr, scale_off,
                                                                          spr);
    }
    return launched(be, "dequant kernel");
}

template <typename T>
vf_status dispatch(cuda_be *be, cudaStream_t st, void *dst, const void *src, int fmt, int OC, int C, int KH, int KW)
{
    switch (fmt) {
    case FMT_F8: return launch<T, FMT_F8>(be, st, dst, src, OC, C, KH, KW);
    case FMT_Q8: return launch<T, FMT_Q8>(be, st, dst, src, OC, C, KH, KW);
    default: return launch<T, FMT_Q4>(be, st, dst, src, OC, C, KH, KW);
    }
}

vf_status dequant_on(cuda_be *be, cudaStream_t st, void *dst, const void *src, vf_dtype fmt, int OC, int C, int KH,
                     int KW)
{
    int f = fmt == VF_DTYPE_F8_E4M3 ? FMT_F8 : fmt == VF_DTYPE_Q8 ? FMT_Q8 : fmt == VF_DTYPE_Q4 ? FMT_Q4 : -1;
    /* no vf_dtype_name here: the plugin links nothing of the core */
    if (f < 0)
        return be_fail(be, VF_ERR_UNSUPPORTED, "dtype %d is not a quantized format (F8_E4M3, Q8 or Q4)", (int)fmt);
    if ((int64_t)C * KH * KW >= ((int64_t)1 << 31))
        return be_fail(be, VF_ERR_UNSUPPORTED, "quantized weight rows of %lld values are too long",
                       (long long)C * KH * KW);
    DISPATCH(be, T, return dispatch<T>(be, st, dst, src, f, OC, C, KH, KW));
    return VF_OK;
}

} // namespace

vf_status cuda_dequant_on(void *impl, vf_stream s, void *dst, const void *src, vf_dtype fmt, int OC, int C, int KH,
                          int KW)
{
    cuda_be *be = (cuda_be *)impl;
    return dequant_on(be, stream_of(be, s), dst, src, fmt, OC, C, KH, KW);
}

vf_status cuda_dequant(void *impl, void *dst, const void *src, vf_dtype fmt, int OC, int C, int KH, int KW)
{
    return cuda_dequant_on(impl, VF_STREAM_COMPUTE, dst, src, fmt, OC, C, KH, KW);
}
