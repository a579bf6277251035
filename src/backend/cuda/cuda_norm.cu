/* GroupNorm (+ SiLU, + the resnet's time-embedding add) on NHWC feature maps
 * and LayerNorm on token rows.
 *
 * Statistics are fp32 sums of (v - K) and (v - K)^2 with K one sample of the
 * same group or row: the shift removes the cancellation that plain sum /
 * sum-of-squares suffers when the mean is large against the spread, and,
 * unlike Welford, partial sums from many blocks just add. GroupNorm is three
 * launches: partial sums over pixel slices (enough blocks to fill the GPU
 * even at batch 1 with 32 groups; where C is a multiple of 8, every block
 * reads whole pixels in 16-byte vectors for all groups at once), a tiny
 * deterministic merge per group, and
 * one fused normalise + affine + SiLU pass in 16-byte vectors. The time
 * embedding add (x + cb[b, c]) is applied on the fly in both passes, so the
 * sum is never written out.
 */
#include "cuda_common.cuh"

#include <stdlib.h>
#include <string.h>

namespace {

template <typename T> struct alignas(16) vec8 {
    T v[8];
};

__device__ __forceinline__ void warp_sum2(float &a, float &b)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, o);
        b += __shfl_xor_sync(0xffffffffu, b, o);
    }
}

/* Block-wide sums of two values (blockDim.x a multiple of 32, <= 1024). */
__device__ __forceinline__ void block_sum2(float &a, float &b)
{
    __shared__ float sa[32], sb[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    warp_sum2(a, b);
    __syncthreads();
    if (lane == 0) {
        sa[w] = a;
        sb[w] = b;
    }
    __syncthreads();
    a = lane < nw ? sa[lane] : 0.0f;
    b = lane < nw ? sb[lane] : 0.0f;
    warp_sum2(a, b);
}

template <typename T>
/* xb is batch item b's (HW,C) map. */
__device__ __forceinline__ float gn_load(const T *xb, const T *cb, size_t b, int C, size_t p, int c)
{
    float v = elem<T>::to_f(xb[p * C + c]);
    if (cb)
        v += elem<T>::to_f(cb[b * C + c]);
    return v;
}

// x is (B,HW,C); part is (B,G,S,2): sums of (v-K), (v-K)^2 over slice s of group g
template <typename T>
__global__ void k_gn_partial(float *part, const T *x, const T *cb, int HW, int C, int G, int S)
{
    int s = blockIdx.x, g = blockIdx.y, b = blockIdx.z, cpg = C / G;
    const T *xb = x + (size_t)b * HW * C;
    size_t n = (size_t)HW * cpg;
    size_t per = (n + S - 1) / S, e0 = (size_t)s * per, e1 = e0 + per < n ? e0 + per : n;
    float K = gn_load(xb, cb, b, C, 0, g * cpg);
    float s1 = 0.0f, s2 = 0.0f;
    for (size_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
        size_t p = e / cpg;
        int c = g * cpg + (int)(e % cpg);
        float d = gn_load(xb, cb, b, C, p, c) - K;
        s1 += d;
        s2 += d * d;
    }
    block_sum2(s1, s2);
    if (threadIdx.x == 0) {
        float *o = part + (((size_t)b * G + g) * S + s) * 2;
        o[0] = s1;
        o[1] = s2;
    }
}

// x is (B,HW,C) with C % 8 == 0; part as k_gn_partial. Coalesced: the block's
// threads are R rows of V = C/8 lanes, lane v reading channels 8v..8v+7 of
// pixels r, r+R, ... of slice s, so one pass over the slice reads whole
// pixels for every group at once (k_gn_partial reads each group's few
// channels of every pixel: C/cpg strided passes over the same lines). Per
// channel sums go through shared memory and are added per group in a fixed
// order, so the result is deterministic.
template <typename T>
__global__ void k_gn_partial8(float *part, const T *x, const T *cb, int HW, int C, int G, int S)
{
    extern __shared__ float sh[]; /* R * C * 2 */
    int V = C / 8, R = blockDim.x / V, t = threadIdx.x, v = t % V, r = t / V;
    int s = blockIdx.x, b = blockIdx.z, cpg = C / G, c0 = v * 8;
    const T *xb = x + (size_t)b * HW * C;
    float K[8], add[8], s1[8], s2[8];
#pragma unroll
    for (int j = 0; j < 8; j++) {
        int c = c0 + j;
        K[j] = gn_load(xb, cb, b, C, 0, (c / cpg) * cpg);
        add[j] = cb ? elem<T>::to_f(cb[(size_t)b * C + c]) : 0.0f;
        s1[j] = s2[j] = 0.0f;
    }
    size_t per = ((size_t)HW + S - 1) / S, p0 = (size_t)s * per, p1 = p0 + per < (size_t)HW ? p0 + per : HW;
    if (r < R) {
        for (size_t p = p0 + r; p < p1; p += R) {
            vec8<T> a = ((const vec8<T> *)(xb + p * C))[v];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float d = elem<T>::to_f(a.v[j]) + add[j] - K[j];
                s1[j] += d;
                s2[j] += d * d;
            }
        }
#pragma unroll
        for (int j = 0; j < 8; j++) {
            sh[((size_t)r * C + c0 + j) * 2] = s1[j];
            sh[((size_t)r * C + c0 + j) * 2 + 1] = s2[j];
        }
    }
    __syncthreads();
    for (int g = t; g < G; g += blockDim.x) {
        float a1 = 0.0f, a2 = 0.0f;
        for (int rr = 0; rr < R; rr++)
            for (int c = g * cpg; c < (g + 1) * cpg; c++) {
                a1 += sh[((size_t)rr * C + c) * 2];
                a2 += sh[((size_t)rr * C + c) * 2 + 1];
            }
        float *o = part + (((size_t)b * G + g) * S + s) * 2;
        o[0] = a1;
        o[1] = a2;
    }
}

// stats is (B,G,2): mean, rstd
template <typename T>
__global__ void k_gn_final(float *stats, const float *part, const T *x, const T *cb, int HW, int C, int G, int S,
                           int B, float eps)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= B * G)
        return;
    int b = i / G, g = i % G, cpg = C / G;
    float K = gn_load(x + (size_t)b * HW * C, cb, b, C, 0, g * cpg);
    double s1 = 0.0, s2 = 0.0, n = (double)HW * cpg;
    for (int s = 0; s < S; s++) {
        s1 += part[((size_t)i * S + s) * 2];
        s2 += part[((size_t)i * S + s) * 2 + 1];
    }
    double m = s1 / n, var = s2 / n - m * m;
    stats[i * 2] = (float)(K + m);
    stats[i * 2 + 1] = (float)(1.0 / sqrt((var > 0 ? var : 0.0) + (double)eps));
}

template <typename T>
__device__ __forceinline__ float gn_apply1(float v, int c, int b, int G, int cpg, const float *stats,
                                           const T *gamma, const T *beta, int silu)
{
    const float *st = stats + ((size_t)b * G + c / cpg) * 2;
    float y = (v - st[0]) * st[1] * elem<T>::to_f(gamma[c]) + elem<T>::to_f(beta[c]);
    return silu ? y / (1.0f + __expf(-y)) : y;
}

template <typename T>
__global__ void k_gn_apply(T *y, const T *x, const T *cb, const float *stats, const T *gamma, const T *beta,
                           int B, int HW, int C, int G, int silu)
{
    size_t n = (size_t)B * HW * C;
    int cpg = C / G;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(i % C), b = (int)(i / ((size_t)HW * C));
        float v = elem<T>::to_f(x[i]);
        if (cb)
            v += elem<T>::to_f(cb[(size_t)b * C + c]);
        y[i] = elem<T>::from_f(gn_apply1(v, c, b, G, cpg, stats, gamma, beta, silu));
    }
}

template <typename T>
__global__ void k_gn_apply8(T *y, const T *x, const T *cb, const float *stats, const T *gamma, const T *beta,
                            int B, int HW, int C, int G, int silu)
{
    size_t n8 = (size_t)B * HW * C / 8;
    int cpg = C / G;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n8; i += (size_t)gridDim.x * blockDim.x) {
        size_t e = i * 8;
        int c0 = (int)(e % C), b = (int)(e / ((size_t)HW * C));
        vec8<T> a = ((const vec8<T> *)x)[i], o;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float v = elem<T>::to_f(a.v[j]);
            if (cb)
                v += elem<T>::to_f(cb[(size_t)b * C + c0 + j]);
            o.v[j] = elem<T>::from_f(gn_apply1(v, c0 + j, b, G, cpg, stats, gamma, beta, silu));
        }
        ((vec8<T> *)y)[i] = o;
    }
}

// x, y are (rows, C): one warp per row
template <typename T>
__global__ void k_layernorm(T *y, const T *x, const T *gamma, const T *beta, int rows, int C, float eps)
{
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows)
        return;
    const T *xr = x + (size_t)row * C;
    T *yr = y + (size_t)row * C;
    float K = elem<T>::to_f(xr[0]), s1 = 0.0f, s2 = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float d = elem<T>::to_f(xr[c]) - K;
        s1 += d;
        s2 += d * d;
    }
    warp_sum2(s1, s2);
    float m = s1 / C, var = s2 / C - m * m;
    float rstd = rsqrtf((var > 0.0f ? var : 0.0f) + eps), mean = K + m;
    for (int c = lane; c < C; c += 32)
        yr[c] = elem<T>::from_f((elem<T>::to_f(xr[c]) - mean) * rstd * elem<T>::to_f(gamma[c]) +
                                elem<T>::to_f(beta[c]));
}

template <typename T>
__global__ void k_layernorm8(T *y, const T *x, const T *gamma, const T *beta, int rows, int C, float eps)
{
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31, C8 = C / 8;
    if (row >= rows)
        return;
    const vec8<T> *xr = (const vec8<T> *)(x + (size_t)row * C);
    vec8<T> *yr = (vec8<T> *)(y + (size_t)row * C);
    float K = elem<T>::to_f(x[(size_t)row * C]), s1 = 0.0f, s2 = 0.0f;
    for (int c = lane; c < C8; c += 32) {
        vec8<T> a = xr[c];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float d = elem<T>::to_f(a.v[j]) - K;
            s1 += d;
            s2 += d * d;
        }
    }
    warp_sum2(s1, s2);
    float m = s1 / C, var = s2 / C - m * m;
    float rstd = rsqrtf((var > 0.0f ? var : 0.0f) + eps), mean = K + m;
    for (int c = lane; c < C8; c += 32) {
        vec8<T> a = xr[c], g = ((const vec8<T> *)gamma)[c], bt = ((const vec8<T> *)beta)[c], o;
#pragma unroll
        for (int j = 0; j < 8; j++)
            o.v[j] = elem<T>::from_f((elem<T>::to_f(a.v[j]) - mean) * rstd * elem<T>::to_f(g.v[j]) +
                                     elem<T>::to_f(bt.v[j]));
        yr[c] = o;
    }
}

inline bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

} // namespace

// x, y are (B,HW,C); gamma, beta (C); cb (B,C) or NULL
vf_status cuda_groupnorm(void *impl, void *y, const void *x, const void *gamma, const void *beta, const void *cb,
                         int B, int C, int HW, int G, float eps, int silu)
{
    cuda_be *be = (cuda_be *)impl;
    int cpg = C / G;
    size_t n = (size_t)HW * cpg;
    long want = (4L * be->prop.multiProcessorCount + (long)B * G - 1) / ((long)B * G);
    long maxs = (long)(n / 1024) > 1 ? (long)(n / 1024) : 1;
    int S = (int)(want < 1 ? 1 : (want > maxs ? maxs : want));
    /* The coalesced statistics kernel where the vectors fit ($VF_CUDA_GN=legacy: never). */
    int V = C / 8, R = V > 0 && V <= 1024 ? (512 / V > 0 ? 512 / V : 1) : 0;
    const char *env = getenv("VF_CUDA_GN");
    int vec = C % 8 == 0 && R > 0 && (size_t)R * C <= 6144 && aligned16(x) && (!cb || aligned16(cb)) &&
              !(env && strcmp(env, "legacy") == 0);
    if (vec) {
        long want8 = (4L * be->prop.multiProcessorCount + B - 1) / B;
        long max8 = (long)HW / (4L * R) > 1 ? (long)HW / (4L * R) : 1;
        S = (int)(want8 > max8 ? max8 : want8);
    }
    size_t part_bytes = (size_t)B * G * S * 2 * sizeof(float), stats_bytes = (size_t)B * G * 2 * sizeof(float);
    VF_TRY(buf_reserve(be, &be->scratch, part_bytes + stats_bytes + 256, "groupnorm statistics"));
    float *part = (float *)be->scratch.p;
    float *stats = (float *)((char *)be->scratch.p + ((part_bytes + 255) & ~(size_t)255));
    dim3 g1((unsigned)S, (unsigned)G, (unsigned)B);
    if (vec) {
        dim3 g8((unsigned)S, 1, (unsigned)B);
        size_t shb = (size_t)R * C * 2 * sizeof(float);
        DISPATCH(be, T, k_gn_partial8<T><<<g8, V * R, shb, be->compute>>>(part, (const T *)x, (const T *)cb, HW, C, G, S));
    } else {
        DISPATCH(be, T, k_gn_partial<T><<<g1, 256, 0, be->compute>>>(part, (const T *)x, (const T *)cb, HW, C, G, S));
    }
    VF_TRY(launched(be, "groupnorm statistics kernel"));
    DISPATCH(be, T, k_gn_final<T><<<(B * G + 127) / 128, 128, 0, be->compute>>>(stats, part, (const T *)x, (const T *)cb, HW, C, G, S, B, eps));
    VF_TRY(launched(be, "groupnorm merge kernel"));
    size_t total = (size_t)B * HW * C;
    if (C % 8 == 0 && aligned16(x) && aligned16(y))
        DISPATCH(be, T, k_gn_apply8<T><<<grid_for(total / 8, 256), 256, 0, be->compute>>>((T *)y, (const T *)x, (const T *)cb, stats, (const T *)gamma, (const T *)beta, B, HW, C, G, silu));
    else
        DISPATCH(be, T, k_gn_apply<T><<<grid_for(total, 256), 256, 0, be->compute>>>((T *)y, (const T *)x, (const T *)cb, stats, (const T *)gamma, (const T *)beta, B, HW, C, G, silu));
    return launched(be, "groupnorm kernel");
}

// x, y are (rows, C); gamma, beta (C)
vf_status cuda_layernorm(void *impl, void *y, const void *x, const void *gamma, const void *beta, int rows, int C,
                         float eps)
{
    cuda_be *be = (cuda_be *)impl;
    unsigned blocks = (unsigned)((rows + 7) / 8);
    if (C % 8 == 0 && aligned16(x) && aligned16(y) && aligned16(gamma) && aligned16(beta))
        DISPATCH(be, T, k_layernorm8<T><<<blocks, 256, 0, be->compute>>>((T *)y, (const T *)x, (const T *)gamma, (const T *)beta, rows, C, eps));
    else
        DISPATCH(be, T, k_layernorm<T><<<blocks, 256, 0, be->compute>>>((T *)y, (const T *)x, (const T *)gamma, (const T *)beta, rows, C, eps));
    return launched(be, "layernorm kernel");
}
