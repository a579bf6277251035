/* The flash-attention forward kernel (a template, instantiated by
 * cuda_attention.cu and by bench/flash_bench.cu to compare tile shapes).
 *
 * One block computes BR = NW * MT * 16 query rows of one (batch, head)
 * against all keys, BC keys at a time, with online softmax: the score tile
 * S = Q K^T lives only in registers (mma.sync m16n8k16, fp16/bf16 operands,
 * fp32 accumulators), is rescaled by the running row maximum, converted to
 * the A operand of P V in registers (the accumulator layout of one m16n8
 * tile pair is the A fragment layout), and never touches memory. K and V
 * tiles are double-buffered in shared memory with cp.async so the next
 * tile's loads overlap this tile's math; rows are padded by 16 bytes so that
 * ldmatrix reads 8 rows without bank conflicts. Each warp owns MT m-tiles so
 * every K/V fragment read from shared memory feeds MT mma instructions
 * (shared-memory bandwidth, not the tensor cores, bounds a one-tile warp).
 *
 * Head dims: D % 8 == 0 and D <= DP (DP % 16 == 0); columns D..DP are
 * zero-filled on load and not stored. Rows past Lq / keys past Lk are
 * zero-filled and masked; causal masks key j > query i and skips key tiles
 * entirely above the diagonal.
 */
#ifndef VF_FLASH_KERNEL_CUH
#define VF_FLASH_KERNEL_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace flash {

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool pred)
{
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    int sz = pred ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(sz));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm4(unsigned (&r)[4], const void *p)
{
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}
__device__ __forceinline__ void ldsm4t(unsigned (&r)[4], const void *p)
{
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

template <typename T> struct mma;
template <> struct mma<half> {
    static __device__ __forceinline__ void run(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1)
    {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi)
    {
        __half2 h = __floats2half2_rn(lo, hi);
        return *(unsigned *)&h;
    }
};
template <> struct mma<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1)
    {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi)
    {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *(unsigned *)&h;
    }
};

__device__ __forceinline__ float ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

struct params {
    const void *q, *k, *v;
    void *o;
    int Lq, Lk, H, D;
    long long ldq, ldk, ldv, ldo;
    int causal;
    float scale_log2;               /* softmax scale * log2(e)                */
};

template <int DP, int BC, int MT, int NW> struct shape {
    static const int BR = NW * MT * 16;
    static const int SP = DP + 8;   /* padded smem row, elements              */
    static const int SMEM = (BR + 4 * BC) * SP * 2;
};

/* rows x DP tile from global rows [r0, r0+rows) (valid below lim) into smem. */
template <typename T, int DP, int ROWS, int NT>
__device__ __forceinline__ void load_tile(T *s, const T *g, long long ld, int r0, int lim, int D)
{
    const int CH = DP / 8, SP = DP + 8;
    for (int i = threadIdx.x; i < ROWS * CH; i += NT) {
        int r = i / CH, c = i % CH;
        bool ok = r0 + r < lim && c * 8 < D;
        const T *src = ok ? g + (long long)(r0 + r) * ld + c * 8 : g;
        cp_async16(s + r * SP + c * 8, src, ok);
    }
}

template <typename T, int DP, int BC, int MT, int NW, bool QREG>
__global__ void __launch_bounds__(NW * 32) attn_fwd(params p)
{
    typedef shape<DP, BC, MT, NW> S;
    const int BR = S::BR, SP = S::SP, KS = DP / 16, NT = BC / 8, DT = DP / 8, NTH = NW * 32;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *sq = (T *)smem_raw, *sk = sq + BR * SP, *sv = sk + 2 * BC * SP;

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, qd = lane & 3;
    const int q0 = blockIdx.x * BR, h = blockIdx.y, b = blockIdx.z;
    const T *qg = (const T *)p.q + (long long)b * p.Lq * p.ldq + (long long)h * p.D;
    const T *kg = (const T *)p.k + (long long)b * p.Lk * p.ldk + (long long)h * p.D;
    const T *vg = (const T *)p.v + (long long)b * p.Lk * p.ldv + (long long)h * p.D;
    T *og = (T *)p.o + (long long)b * p.Lq * p.ldo + (long long)h * p.D;

    int ntiles = (p.Lk + BC - 1) / BC;
    if (p.causal) {
        int last = (q0 + BR - 1) / BC + 1;
        ntiles = last < ntiles ? last : ntiles;
    }

    load_tile<T, DP, BR, NTH>(sq, qg, p.ldq, q0, p.Lq, p.D);
    load_tile<T, DP, BC, NTH>(sk, kg, p.ldk, 0, p.Lk, p.D);
    load_tile<T, DP, BC, NTH>(sv, vg, p.ldv, 0, p.Lk, p.D);
    cp_commit();

    float o[MT][DT][4];
    float m[MT][2], l[MT][2];
    unsigned qf[QREG ? MT : 1][QREG ? KS : 1][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int j = 0; j < DT; j++)
            o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.0f;
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.0f;
    }
    const int wrow = warp * MT * 16;  /* first smem row of this warp */
    const int mi = lane >> 3, rr = lane & 7;

    for (int t = 0; t < ntiles; t++) {
        const int buf = t & 1;
        if (t + 1 < ntiles) {
            load_tile<T, DP, BC, NTH>(sk + (buf ^ 1) * BC * SP, kg, p.ldk, (t + 1) * BC, p.Lk, p.D);
            load_tile<T, DP, BC, NTH>(sv + (buf ^ 1) * BC * SP, vg, p.ldv, (t + 1) * BC, p.Lk, p.D);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        const T *kt = sk + buf * BC * SP, *vt = sv + buf * BC * SP;
        if (QREG && t == 0) {
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int ks = 0; ks < KS; ks++)
                    ldsm4(qf[QREG ? mt : 0][QREG ? ks : 0],
                          sq + (wrow + mt * 16 + rr + (mi & 1) * 8) * SP + ks * 16 + (mi >> 1) * 8);
        }

        /* S = Q K^T */
        float s[MT][NT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int j = 0; j < NT; j++)
                s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            unsigned qa[QREG ? 1 : MT][4];
            if (!QREG) {
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
                    ldsm4(qa[QREG ? 0 : mt], sq + (wrow + mt * 16 + rr + (mi & 1) * 8) * SP + ks * 16 + (mi >> 1) * 8);
            }
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                unsigned kb[4];
                ldsm4(kb, kt + (np * 16 + rr + (mi >> 1) * 8) * SP + ks * 16 + (mi & 1) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    const unsigned(&a)[4] = QREG ? qf[QREG ? mt : 0][QREG ? ks : 0] : qa[QREG ? 0 : mt];
                    mma<T>::run(s[mt][2 * np], a, kb[0], kb[1]);
                    mma<T>::run(s[mt][2 * np + 1], a, kb[2], kb[3]);
                }
            }
        }

        /* mask, online softmax (base 2), rescale O */
        const int k0 = t * BC;
        const bool need_mask = k0 + BC > p.Lk || (p.causal && k0 + BC - 1 > q0 + wrow);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
#pragma unroll
            for (int hr = 0; hr < 2; hr++) {
                const int row = q0 + wrow + mt * 16 + g + hr * 8;
                float mx = -INFINITY;
#pragma unroll
                for (int j = 0; j < NT; j++) {
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        float x = s[mt][j][hr * 2 + e] * p.scale_log2;
                        if (need_mask) {
                            int key = k0 + j * 8 + qd * 2 + e;
                            if (key >= p.Lk || (p.causal && key > row))
                                x = -INFINITY;
                        }
                        s[mt][j][hr * 2 + e] = x;
                        mx = fmaxf(mx, x);
                    }
                }
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float mnew = fmaxf(m[mt][hr], mx);
                const float base = mnew == -INFINITY ? 0.0f : mnew;
                const float corr = ex2(m[mt][hr] - base);
                m[mt][hr] = mnew;
                float sum = 0.0f;
#pragma unroll
                for (int j = 0; j < NT; j++) {
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        float pv = ex2(s[mt][j][hr * 2 + e] - base);
                        s[mt][j][hr * 2 + e] = pv;
                        sum += pv;
                    }
                }
                l[mt][hr] = l[mt][hr] * corr + sum;
#pragma unroll
                for (int j = 0; j < DT; j++) {
                    o[mt][j][hr * 2] *= corr;
                    o[mt][j][hr * 2 + 1] *= corr;
                }
            }
        }

        /* O += P V */
#pragma unroll
        for (int kb = 0; kb < BC / 16; kb++) {
            unsigned pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                pa[mt][0] = mma<T>::pack(s[mt][2 * kb][0], s[mt][2 * kb][1]);
                pa[mt][1] = mma<T>::pack(s[mt][2 * kb][2], s[mt][2 * kb][3]);
                pa[mt][2] = mma<T>::pack(s[mt][2 * kb + 1][0], s[mt][2 * kb + 1][1]);
                pa[mt][3] = mma<T>::pack(s[mt][2 * kb + 1][2], s[mt][2 * kb + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < DP / 16; dp++) {
                unsigned vb[4];
                ldsm4t(vb, vt + (kb * 16 + rr + (mi & 1) * 8) * SP + dp * 16 + (mi >> 1) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma<T>::run(o[mt][2 * dp], pa[mt], vb[0], vb[1]);
                    mma<T>::run(o[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
                }
            }
        }
        __syncthreads();
    }

    /* O / l, rounded once, stored */
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            float sum = l[mt][hr];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
            const int row = q0 + wrow + mt * 16 + g + hr * 8;
            if (row >= p.Lq)
                continue;
            T *orow = og + (long long)row * p.ldo;
#pragma unroll
            for (int j = 0; j < DT; j++) {
                int d = j * 8 + qd * 2;
                if (d < p.D) {
                    unsigned v2 = mma<T>::pack(o[mt][j][hr * 2] * inv, o[mt][j][hr * 2 + 1] * inv);
                    *(unsigned *)(orow + d) = v2;
                }
            }
        }
    }
}

} // namespace flash

#endif
