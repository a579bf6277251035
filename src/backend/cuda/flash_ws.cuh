/* Warp-specialised flash attention for Hopper (sm_90a), head dim <= 64.
 *
 * Why another kernel: flashwg::attn_wg2 (one warpgroup of 64 query rows per
 * block, every thread loading K/V with cp.async between two
 * __syncthreads) re-reads the whole of K and V for every 64 query rows: at
 * B2 H10 L4096 that is 1.3 GB out of L2 per call, about 4 TB/s at the
 * measured speed, close to what L2 gives; and the loads, the barriers and
 * both GEMMs sit on every warp's critical path, so a block's tensor-core
 * and exp2 phases only overlap with other blocks'.
 *
 * Shape of this one: NWG consumer warpgroups of 64 query rows each share
 * every K/V tile (BR = 64 * NWG rows read K/V once), and warpgroup 0 is a
 * producer that loads each work tile's Q (double-buffered) and fills an
 * ST-stage ring of K and V tiles ahead of the consumers, so loads never
 * wait on the math. Every buffer has a "full" and an "empty" mbarrier (K
 * and V separately: K is free again as soon as S = Q K^T is done, V only
 * after P V). LOAD = 1: one producer thread issues TMA tensor copies (one
 * instruction per tile; the 128-byte swizzle is done by the copy engine and
 * rows past L / columns past D arrive as zeros); LOAD = 0: the producer
 * warpgroup issues cp.async and the hardware arrives on the barrier when
 * each thread's copies land (no tensor map needed). The producer gives
 * registers back (setmaxnreg) to the consumers. PERS = 1: one block per SM
 * walks the work tiles (m-block, head, batch), so the next tile's Q, K and
 * V load while the current one finishes instead of each block starting
 * cold (one block fills an SM; at L1024 a block lives only a few us).
 *
 * Consumers: OVL = 1 is the FA3 schedule: S_t = Q K_t^T and O += P_{t-1}
 * V_{t-1} are issued together, the softmax of S_t runs on the SM while
 * P_{t-1} V_{t-1} is still on the tensor cores, and O is rescaled once
 * that product has landed. SCHED = 1 passes a token around the consumer
 * warpgroups (named barriers) so that they issue their GEMMs in turn, one
 * warpgroup's exp2 work overlapping the others' tensor-core work instead
 * of all of them contending for the same unit at once. EMU = n computes
 * the exp2 of every n-th group of 8 score columns with a polynomial on the
 * FMA pipe instead of the MUFU unit (at head dim 64 the MUFU unit needs as
 * many cycles per tile as the tensor cores; the polynomial's relative
 * error is 7.5e-5, below fp16's rounding of P).
 *
 * Operand layouts, descriptors and the P-in-registers A operand are those
 * of attn_wg2 (flash_wgmma.cuh), unchanged. Head dims 8..64 (D % 8 == 0)
 * are padded to 64 with zeros. Every mbarrier wait gives up after 4
 * seconds with a fault, so a broken pipeline fails the launch instead of
 * hanging the process. Compile with -Xptxas -v when changing this file:
 * ptxas says (C7512) when it serialises the wgmma pipeline, and the
 * consumers must not spill.
 *
 * launch_variant() is the one entry point, shared by the library
 * (cuda_attention.cu, $VF_FLASH_VARIANT) and bench/flash_bench.cu:
 * variant 0 is attn_wg2, 1..3 are configurations of attn_ws.
 */
#ifndef VF_FLASH_WS_CUH
#define VF_FLASH_WS_CUH

#include "flash_wgmma.cuh"

#include <cuda.h>
#include <cuda_runtime.h>
#include <string.h>

#include <atomic>
#include <type_traits>

namespace flashwg {
#if VF_WG_BODY
/* m64n192k16 for 192-key tiles (S = 96 accumulators per thread) */
template <> __device__ __forceinline__ void wg_ss<half, 192>(float (&d)[96], uint64_t a, uint64_t b, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %98, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n192k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95}, %96, %97, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])
                 : "l"(a), "l"(b), "r"(acc));
}

template <> __device__ __forceinline__ void wg_ss<__nv_bfloat16, 192>(float (&d)[96], uint64_t a, uint64_t b, int acc)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %98, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n192k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95}, %96, %97, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])
                 : "l"(a), "l"(b), "r"(acc));
}
#endif
} // namespace flashwg

namespace flashws {

using flashwg::pin;
using flashwg::sdesc;
#if VF_WG_BODY
using flashwg::fence_async_smem;
using flashwg::wg_commit;
using flashwg::wg_fence;
using flashwg::wg_rs;
using flashwg::wg_ss;
using flashwg::wg_wait;
#endif

struct params {
    CUtensorMap tq, tk, tv;         /* LOAD == 1: Q, K, V as (D, H, L, B)  */
    flash::params a;
    int B;
};

#if VF_WG_BODY
__device__ __forceinline__ uint32_t su32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(uint32_t b, unsigned count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(b), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t b)
{
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(b) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t b, unsigned bytes)
{
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(b),
                 "r"(bytes)
                 : "memory");
}
/* Arrives once every cp.async this thread issued so far has landed. */
__device__ __forceinline__ void mbar_cp_arrive(uint32_t b)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(b) : "memory");
}
__device__ __forceinline__ bool mbar_try(uint32_t b, unsigned parity)
{
    unsigned ok;
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(ok)
                 : "r"(b), "r"(parity)
                 : "memory");
    return ok != 0;
}
__device__ __forceinline__ uint64_t gtimer()
{
    uint64_t t;
    asm volatile("mov.u64 %0, %globaltimer;\n" : "=l"(t));
    return t;
}
/* Waits for the phase of the given parity to complete. After 4 s it stores
 * to address 0: the launch fails with an illegal address instead of
 * hanging. (Not __trap(): a trap makes ptxas ignore the setmaxnreg
 * budgets, and the consumers then spill and serialise their wgmma.) */
__device__ __forceinline__ void mbar_wait(uint32_t b, unsigned parity)
{
    if (mbar_try(b, parity))
        return;
    const uint64_t t0 = gtimer();
    for (unsigned i = 1;; i++) {
        if (mbar_try(b, parity))
            return;
        if ((i & 255u) == 0 && gtimer() - t0 > 4000000000ull)
            asm volatile("st.volatile.global.u32 [%0], %1;\n" ::"l"(0ull), "r"(0) : "memory");
    }
}
__device__ __forceinline__ void tma_load(void *dst, const CUtensorMap *map, int c0, int c1, int c2, int c3,
                                         uint32_t bar)
{
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, "
                 "%4, %5}], [%6];\n" ::"r"(su32(dst)),
                 "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
                 : "memory");
}
__device__ __forceinline__ void named_sync(int id, int n)
{
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int n)
{
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
template <int N> __device__ __forceinline__ void reg_dealloc() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N> __device__ __forceinline__ void reg_alloc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }

/* 2^x on the FMA pipe for x <= 0: x = j + f with j the nearest integer
 * (1.5 * 2^23 added rounds it into the low mantissa bits), 2^f for
 * |f| <= 1/2 by a degree-3 polynomial (relative error 7.5e-5, 2^f in
 * [0.7, 1.42]), and j added to the exponent field. x is clamped at -125 so
 * that the exponent stays normal: a masked score (-inf) gives 2^-125 instead
 * of 0, which vanishes next to the row maximum's 1 (every row the kernel
 * stores has at least one unmasked key). */
__device__ __forceinline__ float ex2_poly(float x)
{
    x = fmaxf(x, -125.0f);
    const float t = x + 12582912.0f;
    const float f = x - (t - 12582912.0f);
    float p = fmaf(0.0551716648f, f, 0.242611125f);
    p = fmaf(p, f, 0.693260968f);
    p = fmaf(p, f, 0.999928057f);
    return __int_as_float(__float_as_int(p) + (__float_as_int(t) << 23));
}
#endif

/* rows x 64 tile (128-byte rows, swizzled as in flashwg::load_sw) by the
 * 128 threads of one warpgroup, t = the thread's index in it. */
template <typename T, int ROWS>
__device__ __forceinline__ void load_rows(unsigned char *s, const T *g, long long ld, int r0, int lim, int D, int t)
{
#pragma unroll
    for (int i = t; i < ROWS * 8; i += 128) {
        const int r = i >> 3, c = i & 7;
        const bool ok = r0 + r < lim && c * 8 < D;
        const T *src = ok ? g + (long long)(r0 + r) * ld + c * 8 : g;
        flash::cp_async16(s + r * 128 + ((c ^ (r & 7)) << 4), src, ok);
    }
}

/* Masks tile k0's scores, updates the running max m and turns s into
 * P = 2^(s * sl2 - m); corr gets the factor for the old O and l, sum the
 * new row sums (of this thread's columns). Written as one pass per row,
 * as softmax_tile in flash_wgmma.cuh (splitting it costs a fifth of the
 * speed there); max and sum go through NP partial chains for ILP. */
template <int NB, int EMU, int NP>
__device__ __forceinline__ void softmax_ws(float (&s)[NB * 4], float (&m)[2], float (&corr)[2], float (&sum)[2],
                                           int Lk, int causal, float sl2, int k0, int row0, int qd, bool need_mask)
{
#if VF_WG_BODY
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        const int row = row0 + hr * 8;
        float mx[NP];
#pragma unroll
        for (int i = 0; i < NP; i++)
            mx[i] = -INFINITY;
#pragma unroll
        for (int j = 0; j < NB; j++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                float x = s[4 * j + 2 * hr + e];
                if (need_mask) {
                    const int key = k0 + j * 8 + qd * 2 + e;
                    x = key >= Lk || (causal && key > row) ? -INFINITY : x;
                    s[4 * j + 2 * hr + e] = x;
                }
                mx[j % NP] = fmaxf(mx[j % NP], x);
            }
        }
        float mxx = mx[0];
#pragma unroll
        for (int i = 1; i < NP; i++)
            mxx = fmaxf(mxx, mx[i]);
        mxx = fmaxf(mxx, __shfl_xor_sync(0xffffffffu, mxx, 1));
        mxx = fmaxf(mxx, __shfl_xor_sync(0xffffffffu, mxx, 2));
        const float mnew = fmaxf(m[hr], mxx * sl2);
        const float base = mnew == -INFINITY ? 0.0f : mnew;
        corr[hr] = flash::ex2(m[hr] - base);
        m[hr] = mnew;
        float sm[NP];
#pragma unroll
        for (int i = 0; i < NP; i++)
            sm[i] = 0.0f;
#pragma unroll
        for (int j = 0; j < NB; j++) {
            const bool poly = EMU > 0 && j % (EMU > 0 ? EMU : 1) == EMU - 1;
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const float x = fmaf(s[4 * j + 2 * hr + e], sl2, -base);
                const float pv = poly ? ex2_poly(x) : flash::ex2(x);
                s[4 * j + 2 * hr + e] = pv;
                sm[j % NP] += pv;
            }
        }
        float tot = sm[0];
#pragma unroll
        for (int i = 1; i < NP; i++)
            tot += sm[i];
        sum[hr] = tot;
    }
#endif
}

template <int NWG, int BC, int ST> struct shape {
    static const int BR = NWG * 64;
    static const int QB = BR * 128;                            /* bytes of one Q tile      */
    static const int KB = BC * 128;                            /* bytes of one K or V tile */
    static const int SMEM = 2 * QB + 2 * ST * KB + (4 * ST + 4) * 8 + 1024;  /* + alignment slack */
};

/* Registers: the kernel starts at 64K / threads each; the producer drops to
 * PREG and the consumers take what it frees (multiples of 8). */
template <int NWG, int LOAD> struct regs {
    static const int START = (65536 / ((NWG + 1) * 128)) / 8 * 8 > 255 ? 248 : (65536 / ((NWG + 1) * 128)) / 8 * 8;
    static const int PREG = LOAD ? 24 : (NWG >= 3 ? 32 : 40);
    static const int C0 = START + (START - PREG) / NWG / 8 * 8;
    static const int CREG = C0 > 240 ? 240 : C0;
};

template <typename T, int NWG, int BC, int ST, int LOAD, int OVL, int SCHED, int EMU, int PERS>
__global__ void __launch_bounds__((NWG + 1) * 128, 1) attn_ws(const __grid_constant__ params P)
{
#if VF_WG_BODY
    typedef shape<NWG, BC, ST> S;
    typedef regs<NWG, LOAD> R;
    const int BR = S::BR, KB = S::KB, QB = S::QB, NB = BC / 8;
    constexpr int NP = NWG >= 3 ? 2 : 4;  /* softmax partial chains: 4 spill at 160 registers */
    static_assert(BC % 16 == 0 && ST >= 2 && NWG >= 2 && NWG <= 3, "unsupported attn_ws shape");
    extern __shared__ unsigned char raw[];
    unsigned char *sq = (unsigned char *)(((uintptr_t)raw + 1023) & ~(uintptr_t)1023);  /* 2 Q buffers */
    unsigned char *sk = sq + 2 * QB, *sv = sk + ST * KB;
    const uint32_t bars = su32(sv + ST * KB);
    /* fullK[ST], fullV[ST], emptyK[ST], emptyV[ST], fullQ[2], emptyQ[2] */
#define FULLK(i) (bars + 8u * (unsigned)(i))
#define FULLV(i) (bars + 8u * (unsigned)(ST + (i)))
#define EMPTYK(i) (bars + 8u * (unsigned)(2 * ST + (i)))
#define EMPTYV(i) (bars + 8u * (unsigned)(3 * ST + (i)))
#define FULLQ(i) (bars + 8u * (unsigned)(4 * ST + (i)))
#define EMPTYQ(i) (bars + 8u * (unsigned)(4 * ST + 2 + (i)))
    const int tid = threadIdx.x, wgi = tid >> 7;
    const int Lq = P.a.Lq, Lk = P.a.Lk, H = P.a.H, D = P.a.D, causal = P.a.causal;
    /* Work tiles: (m-block, head, batch), m-block fastest so that the blocks
     * at work together share K and V in L2. PERS: a grid of at most one
     * block per SM walks them; otherwise each block has its own. */
    const int nmb = (Lq + BR - 1) / BR, total = nmb * H * P.B;
    const int w0 = PERS ? (int)blockIdx.x : (int)(blockIdx.x + nmb * (blockIdx.y + H * blockIdx.z));
    const int wstep = PERS ? (int)gridDim.x : total;

    if (tid == 0) {
#pragma unroll
        for (int i = 0; i < ST; i++) {
            mbar_init(FULLK(i), LOAD ? 1 : 128);
            mbar_init(FULLV(i), LOAD ? 1 : 128);
            mbar_init(EMPTYK(i), NWG * 4);
            mbar_init(EMPTYV(i), NWG * 4);
        }
#pragma unroll
        for (int i = 0; i < 2; i++) {
            mbar_init(FULLQ(i), LOAD ? 1 : 128);
            mbar_init(EMPTYQ(i), NWG * 4);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        fence_async_smem();
    }
    __syncthreads();

    if (wgi == 0) {
        /* ---- producer: Q of each work tile, then its K/V tiles into the ring ---- */
        reg_dealloc<R::PREG>();
        if (LOAD) {
            if (tid != 0)
                return;
            asm volatile("prefetch.tensormap [%0];\n" ::"l"((uint64_t)&P.tq) : "memory");
            asm volatile("prefetch.tensormap [%0];\n" ::"l"((uint64_t)&P.tk) : "memory");
            asm volatile("prefetch.tensormap [%0];\n" ::"l"((uint64_t)&P.tv) : "memory");
        }
        int slot = 0, kc = 0, qi = 0;
        unsigned ph = 1;  /* parity of the empty phase to wait for (the slot's previous use) */
        for (int w = w0; w < total; w += wstep, qi++) {
            const int mb = w % nmb, h = (w / nmb) % H, b = w / (nmb * H), q0 = mb * BR;
            int nt = (Lk + BC - 1) / BC;
            if (causal) {
                const int last = (q0 + BR - 1) / BC + 1;
                nt = last < nt ? last : nt;
            }
            const int qb = qi & 1;
            if (qi >= 2)
                mbar_wait(EMPTYQ(qb), ((qi >> 1) - 1) & 1);
            if (LOAD) {
                mbar_expect_tx(FULLQ(qb), QB);
                tma_load(sq + qb * QB, &P.tq, 0, h, q0, b, FULLQ(qb));
            } else {
                const T *qg = (const T *)P.a.q + (long long)b * Lq * P.a.ldq + (long long)h * D;
                load_rows<T, BR>(sq + qb * QB, qg, P.a.ldq, q0, Lq, D, tid);
                mbar_cp_arrive(FULLQ(qb));
            }
            const T *kg = (const T *)P.a.k + (long long)b * Lk * P.a.ldk + (long long)h * D;
            const T *vg = (const T *)P.a.v + (long long)b * Lk * P.a.ldv + (long long)h * D;
            for (int t = 0; t < nt; t++, kc++) {
                if (kc >= ST)
                    mbar_wait(EMPTYK(slot), ph);
                if (LOAD) {
                    mbar_expect_tx(FULLK(slot), KB);
                    tma_load(sk + slot * KB, &P.tk, 0, h, t * BC, b, FULLK(slot));
                } else {
                    load_rows<T, BC>(sk + slot * KB, kg, P.a.ldk, t * BC, Lk, D, tid);
                    mbar_cp_arrive(FULLK(slot));
                }
                if (kc >= ST)
                    mbar_wait(EMPTYV(slot), ph);
                if (LOAD) {
                    mbar_expect_tx(FULLV(slot), KB);
                    tma_load(sv + slot * KB, &P.tv, 0, h, t * BC, b, FULLV(slot));
                } else {
                    load_rows<T, BC>(sv + slot * KB, vg, P.a.ldv, t * BC, Lk, D, tid);
                    mbar_cp_arrive(FULLV(slot));
                }
                if (++slot == ST) {
                    slot = 0;
                    ph ^= 1u;
                }
            }
        }
        return;
    }

    /* ---- consumers ---- */
    reg_alloc<R::CREG>();
    const int wg = wgi - 1, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, qd = lane & 3;
    const float sl2 = P.a.scale_log2;
    /* The GEMM-issue token: warpgroup w waits on barrier 8 + w, passes to the next. */
    const int tok = 8 + wg, tok_next = 8 + (wg + 1 == NWG ? 0 : wg + 1);
    if (SCHED && NWG > 1 && wg == NWG - 1)
        named_arrive(8, 256);

#define WS_WAIT_FULL(bar, par)     \
    do {                           \
        mbar_wait((bar), (par));   \
        if (!LOAD)                 \
            fence_async_smem();    \
    } while (0)
#define WS_TOKEN_WAIT()                \
    do {                               \
        if (SCHED && NWG > 1)          \
            named_sync(tok, 256);      \
    } while (0)
#define WS_TOKEN_PASS()                \
    do {                               \
        if (SCHED && NWG > 1)          \
            named_arrive(tok_next, 256); \
    } while (0)
#define WS_RELEASE(bar)         \
    do {                        \
        if (lane == 0)          \
            mbar_arrive(bar);   \
    } while (0)
#define WS_S_GEMM(kt)                                                             \
    do {                                                                          \
        _Pragma("unroll") for (int ks = 0; ks < 4; ks++)                          \
            wg_ss<T, BC>(s, sdesc(qw + ks * 32), sdesc((kt) + ks * 32), ks);      \
    } while (0)
#define WS_PV_GEMM(vt)                                                            \
    do {                                                                          \
        _Pragma("unroll") for (int kb = 0; kb < BC / 16; kb++)                    \
            wg_rs<T, 64>(o, pa[kb], sdesc((vt) + kb * 2048));                     \
    } while (0)
#define WS_PACK()                                                                 \
    do {                                                                          \
        _Pragma("unroll") for (int kb = 0; kb < BC / 16; kb++) {                  \
            pa[kb][0] = flash::mma<T>::pack(s[8 * kb + 0], s[8 * kb + 1]);        \
            pa[kb][1] = flash::mma<T>::pack(s[8 * kb + 2], s[8 * kb + 3]);        \
            pa[kb][2] = flash::mma<T>::pack(s[8 * kb + 4], s[8 * kb + 5]);        \
            pa[kb][3] = flash::mma<T>::pack(s[8 * kb + 6], s[8 * kb + 7]);        \
        }                                                                         \
    } while (0)
#define WS_RESCALE()                                                              \
    do {                                                                          \
        _Pragma("unroll") for (int hr = 0; hr < 2; hr++) {                        \
            l[hr] = l[hr] * corr[hr] + sum[hr];                                   \
            _Pragma("unroll") for (int j = 0; j < 8; j++) {                       \
                o[4 * j + 2 * hr] *= corr[hr];                                    \
                o[4 * j + 2 * hr + 1] *= corr[hr];                                \
            }                                                                     \
        }                                                                         \
    } while (0)

    float o[32], s[BC / 2];
    unsigned pa[BC / 16][4];
#pragma unroll
    for (int i = 0; i < BC / 2; i++)
        s[i] = 0.0f;
    int slot = 0, qi = 0;
    unsigned ph = 0;  /* slot and full-phase parity of the next K/V tile */
    for (int w = w0; w < total; w += wstep, qi++) {
        const int mb = w % nmb, h = (w / nmb) % H, b = w / (nmb * H), q0 = mb * BR;
        int nt = (Lk + BC - 1) / BC;
        if (causal) {
            const int last = (q0 + BR - 1) / BC + 1;
            nt = last < nt ? last : nt;
        }
        const int rbase = q0 + wg * 64 + warp * 16;
        const int qb = qi & 1;
        const unsigned char *qw = sq + qb * QB + wg * 64 * 128;
        float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, corr[2], sum[2];
#pragma unroll
        for (int i = 0; i < 32; i++)
            o[i] = 0.0f;
        WS_WAIT_FULL(FULLQ(qb), (qi >> 1) & 1);
        if (OVL) {
            /* tile 0: S_0 and its softmax */
            int cs = slot;
            unsigned cph = ph;
            if (++slot == ST) {
                slot = 0;
                ph ^= 1u;
            }
            WS_WAIT_FULL(FULLK(cs), cph);
            WS_TOKEN_WAIT();
            pin(s);
            wg_fence();
            WS_S_GEMM(sk + cs * KB);
            wg_commit();
            WS_TOKEN_PASS();
            wg_wait<0>();
            pin(s);
            WS_RELEASE(EMPTYK(cs));
            softmax_ws<NB, EMU, NP>(s, m, corr, sum, Lk, causal, sl2, 0, rbase + g, qd,
                                BC > Lk || (causal && BC - 1 > rbase));
            l[0] = sum[0];
            l[1] = sum[1];
            int vs = cs;
            unsigned vph = cph;
            /* tile t: S_t and P_{t-1} V_{t-1} on the tensor cores, then the softmax of S_t */
            for (int t = 1; t < nt; t++) {
                WS_PACK();
                cs = slot;
                cph = ph;
                if (++slot == ST) {
                    slot = 0;
                    ph ^= 1u;
                }
                WS_WAIT_FULL(FULLK(cs), cph);
                WS_WAIT_FULL(FULLV(vs), vph);
                WS_TOKEN_WAIT();
                pin(s);
                pin(o);
                pin(pa);
                wg_fence();
                WS_S_GEMM(sk + cs * KB);
                wg_commit();
                WS_PV_GEMM(sv + vs * KB);
                wg_commit();
                WS_TOKEN_PASS();
                wg_wait<1>();
                pin(s);
                WS_RELEASE(EMPTYK(cs));
                const int k0 = t * BC;
                softmax_ws<NB, EMU, NP>(s, m, corr, sum, Lk, causal, sl2, k0, rbase + g, qd,
                                    k0 + BC > Lk || (causal && k0 + BC - 1 > rbase));
                wg_wait<0>();
                pin(o);
                pin(pa);
                WS_RELEASE(EMPTYV(vs));
                WS_RESCALE();
                vs = cs;
                vph = cph;
            }
            WS_PACK();
            WS_WAIT_FULL(FULLV(vs), vph);
            WS_TOKEN_WAIT();
            pin(o);
            pin(pa);
            wg_fence();
            WS_PV_GEMM(sv + vs * KB);
            wg_commit();
            WS_TOKEN_PASS();
            wg_wait<0>();
            pin(o);
            WS_RELEASE(EMPTYV(vs));
        } else {
            for (int t = 0; t < nt; t++) {
                const int cs = slot;
                const unsigned cph = ph;
                if (++slot == ST) {
                    slot = 0;
                    ph ^= 1u;
                }
                WS_WAIT_FULL(FULLK(cs), cph);
                WS_TOKEN_WAIT();
                pin(s);
                wg_fence();
                WS_S_GEMM(sk + cs * KB);
                wg_commit();
                WS_TOKEN_PASS();
                wg_wait<0>();
                pin(s);
                WS_RELEASE(EMPTYK(cs));
                const int k0 = t * BC;
                softmax_ws<NB, EMU, NP>(s, m, corr, sum, Lk, causal, sl2, k0, rbase + g, qd,
                                    k0 + BC > Lk || (causal && k0 + BC - 1 > rbase));
                WS_RESCALE();
                WS_PACK();
                WS_WAIT_FULL(FULLV(cs), cph);
                WS_TOKEN_WAIT();
                pin(o);
                pin(pa);
                wg_fence();
                WS_PV_GEMM(sv + cs * KB);
                wg_commit();
                WS_TOKEN_PASS();
                wg_wait<0>();
                pin(o);
                WS_RELEASE(EMPTYV(cs));
            }
        }
        /* every GEMM of this work tile has read its Q */
        WS_RELEASE(EMPTYQ(qb));

        T *og = (T *)P.a.o + (long long)b * Lq * P.a.ldo + (long long)h * D;
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            float tot = l[hr];
            tot += __shfl_xor_sync(0xffffffffu, tot, 1);
            tot += __shfl_xor_sync(0xffffffffu, tot, 2);
            const float inv = tot > 0.0f ? 1.0f / tot : 0.0f;
            const int row = rbase + g + hr * 8;
            if (row >= Lq)
                continue;
            T *orow = og + (long long)row * P.a.ldo;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int d = j * 8 + qd * 2;
                if (d < D)
                    *(unsigned *)(orow + d) =
                        flash::mma<T>::pack(o[4 * j + 2 * hr] * inv, o[4 * j + 2 * hr + 1] * inv);
            }
        }
    }
    /* warpgroup NWG-1 passed the token once more than warpgroup 0 took it */
    if (SCHED && NWG > 1 && wg == 0)
        named_sync(8, 256);
#undef WS_WAIT_FULL
#undef WS_TOKEN_WAIT
#undef WS_TOKEN_PASS
#undef WS_RELEASE
#undef WS_S_GEMM
#undef WS_PV_GEMM
#undef WS_PACK
#undef WS_RESCALE
#undef FULLK
#undef FULLV
#undef EMPTYK
#undef EMPTYV
#undef FULLQ
#undef EMPTYQ
#endif
}

/* ---- host side ------------------------------------------------------------------------ */

typedef CUresult (*encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                              const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                              CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

/* cuTensorMapEncodeTiled through the runtime (no link against libcuda). */
static inline encode_fn tensor_map_encoder()
{
    static const encode_fn fn = []() -> encode_fn {
        void *f = NULL;
        cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) !=
                cudaSuccess ||
            q != cudaDriverEntryPointSuccess)
            return NULL;
        return (encode_fn)f;
    }();
    return fn;
}

/* x is (B, L, H, D) with row stride ld elements, seen as the 4-d tensor
 * (D, H, L, B); a box is `rows` rows x 64 columns of one head, 128-byte
 * swizzled (the layout load_rows writes). Rows past L and columns past D
 * read as zeros. */
template <typename T>
static inline bool tensor_map(CUtensorMap *map, const void *x, int B, int L, int H, int D, long long ld, int rows)
{
    encode_fn enc = tensor_map_encoder();
    if (!enc || L < 1)
        return false;
    const cuuint64_t dim[4] = {(cuuint64_t)D, (cuuint64_t)H, (cuuint64_t)L, (cuuint64_t)B};
    const cuuint64_t stride[3] = {(cuuint64_t)D * 2, (cuuint64_t)ld * 2, (cuuint64_t)L * ld * 2};
    const cuuint32_t box[4] = {64, 1, (cuuint32_t)rows, 1};
    const cuuint32_t es[4] = {1, 1, 1, 1};
    const CUtensorMapDataType dt =
        std::is_same<T, half>::value ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    return enc(map, dt, 4, (void *)x, dim, stride, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
               CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/* How often a TMA variant had no tensor map and ran its cp.async twin (this
 * translation unit; bench/flash_bench.cu reports it). */
static inline std::atomic<int> &tma_fallbacks()
{
    static std::atomic<int> n{0};
    return n;
}

/* Multiprocessors of the current device (the persistent grid). */
static inline int sm_count()
{
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n < 1)
        return 132;
    return n;
}

/* One attn_ws configuration. cudaErrorNotSupported: no tensor map for these
 * operands (the caller falls back); other errors come from the launch. */
template <typename T, int NWG, int BC, int ST, int LOAD, int OVL, int SCHED, int EMU, int PERS>
static cudaError_t launch_ws(const flash::params &a, int B, cudaStream_t stream)
{
    typedef shape<NWG, BC, ST> S;
    params P;
    memset(&P, 0, sizeof P);
    P.a = a;
    P.B = B;
    if (LOAD && (!tensor_map<T>(&P.tq, a.q, B, a.Lq, a.H, a.D, a.ldq, S::BR) ||
                 !tensor_map<T>(&P.tk, a.k, B, a.Lk, a.H, a.D, a.ldk, BC) ||
                 !tensor_map<T>(&P.tv, a.v, B, a.Lk, a.H, a.D, a.ldv, BC)))
        return cudaErrorNotSupported;
    auto kern = attn_ws<T, NWG, BC, ST, LOAD, OVL, SCHED, EMU, PERS>;
    /* The register hand-over assumes the kernel starts at R::START per
     * thread; with fewer, the consumers' setmaxnreg.inc would wait forever. */
    static const cudaError_t attr = [&]() {
        cudaFuncAttributes fa;
        cudaError_t e = cudaFuncGetAttributes(&fa, kern);
        if (e == cudaSuccess && fa.numRegs != regs<NWG, LOAD>::START)
            e = cudaErrorInvalidKernelImage;
        if (e == cudaSuccess)
            e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, S::SMEM);
        return e;
    }();
    if (attr != cudaSuccess)
        return attr;
    const unsigned nmb = (unsigned)((a.Lq + S::BR - 1) / S::BR);
    dim3 grid(nmb, (unsigned)a.H, (unsigned)B);
    if (PERS) {
        const long long total = (long long)nmb * a.H * B, n = sm_count();
        grid = dim3((unsigned)(total < n ? total : n), 1, 1);
    }
    kern<<<grid, (NWG + 1) * 128, S::SMEM, stream>>>(P);
    return cudaGetLastError();
}

/* Variant 0: flashwg::attn_wg2, one warpgroup, 128 keys per tile. */
template <typename T> static cudaError_t launch_wg2(const flash::params &a, int B, cudaStream_t stream)
{
    typedef flashwg::shape<1, 128, 2> S;
    auto kern = flashwg::attn_wg2<T, 1, 128>;
    static const cudaError_t attr = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, S::SMEM);
    if (attr != cudaSuccess)
        return attr;
    dim3 grid((unsigned)((a.Lq + S::BR - 1) / S::BR), (unsigned)a.H, (unsigned)B);
    kern<<<grid, 128, S::SMEM, stream>>>(a);
    return cudaGetLastError();
}

/* The portable mma.sync kernel of flash_kernel.cuh, one instance. */
template <typename T, int DP, int BC, int MT, int NW, bool QREG>
static cudaError_t launch_mma(const flash::params &a, int B, cudaStream_t stream)
{
    typedef flash::shape<DP, BC, MT, NW> S;
    auto kern = flash::attn_fwd<T, DP, BC, MT, NW, QREG>;
    static const cudaError_t attr = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, S::SMEM);
    if (attr != cudaSuccess)
        return attr;
    dim3 grid((unsigned)((a.Lq + S::BR - 1) / S::BR), (unsigned)a.H, (unsigned)B);
    kern<<<grid, NW * 32, S::SMEM, stream>>>(a);
    return cudaGetLastError();
}

enum { NVARIANTS = 5 };

/* What $VF_FLASH_VARIANT selects (bench/flash_bench.cu prints the same names). */
static inline const char *variant_name(int v)
{
    switch (v) {
    case 1:
        return "ws NWG2 BC128 ST2 TMA ovl tok";
    case 2:
        return "ws NWG2 BC128 ST3 TMA ovl tok persistent";
    case 3:
        return "ws NWG2 BC128 ST3 TMA ovl tok persistent poly1/4";
    case 4:
        return "by key length: Lk>=2048 ws NWG2 BC192 ST3 persistent, Lk>=512 ws NWG3 BC128 ST3 persistent, else v0";
    default:
        return "wg2 (1 WG, 64 rows, cp.async by all)";
    }
}

/* Runs attn_ws with TMA loads, or where no tensor map can describe the
 * operands, its cp.async twin. */
template <typename T, int NWG, int BC, int ST, int OVL, int SCHED, int EMU, int PERS>
static cudaError_t launch_ws_any(const flash::params &a, int B, cudaStream_t stream)
{
    cudaError_t e = launch_ws<T, NWG, BC, ST, 1, OVL, SCHED, EMU, PERS>(a, B, stream);
    if (e != cudaErrorNotSupported)
        return e;
    tma_fallbacks()++;
    return launch_ws<T, NWG, BC, ST, 0, OVL, SCHED, EMU, PERS>(a, B, stream);
}

/* Launches variant v (0..NVARIANTS-1) for q/k/v/o (B, L, H, D <= 64) on
 * an sm_90a build. */
template <typename T> static cudaError_t launch_variant(int v, const flash::params &a, int B, cudaStream_t stream)
{
    if (a.Lk < 1 || a.Lq < 1)
        v = 0;
    switch (v) {
    case 1:
        return launch_ws_any<T, 2, 128, 2, 1, 1, 0, 0>(a, B, stream);
    case 2:
        return launch_ws_any<T, 2, 128, 3, 1, 1, 0, 1>(a, B, stream);
    case 3:
        return launch_ws_any<T, 2, 128, 3, 1, 1, 4, 1>(a, B, stream);
    case 4:
        /* The fastest configurations of the H100 sweep (bench/RESULTS.md,
         * 2026-11-27): long sequences want wide key tiles, SDXL's L=1024
         * levels a third consumer warpgroup; short (cross) keys keep v0. */
        if (a.Lk >= 2048)
            return launch_ws_any<T, 2, 192, 3, 1, 1, 0, 1>(a, B, stream);
        if (a.Lk >= 512)
            return launch_ws_any<T, 3, 128, 3, 1, 1, 0, 1>(a, B, stream);
        return launch_wg2<T>(a, B, stream);
    default:
        return launch_wg2<T>(a, B, stream);
    }
}

/* The library's flash dispatch (cuda_attention.cu calls it, and
 * bench/flash_bench.cu, so that both run the same code): the wgmma
 * variant for head dims up to 64 where the device has it (wgmma), the
 * mma.sync kernel instantiated for a few padded head dims otherwise.
 * Needs D % 8 == 0, D <= 128 and 16-byte aligned operands and strides. */
template <typename T>
static cudaError_t dispatch(int variant, bool wgmma, const flash::params &a, int B, cudaStream_t stream)
{
    if (wgmma && a.D <= 64)
        return launch_variant<T>(variant, a, B, stream);
    if (a.D <= 32)
        return launch_mma<T, 32, 64, 2, 4, true>(a, B, stream);
    if (a.D <= 64)
        return launch_mma<T, 64, 64, 2, 4, true>(a, B, stream);
    if (a.D <= 96)
        return launch_mma<T, 96, 32, 2, 4, true>(a, B, stream);
    return launch_mma<T, 128, 32, 2, 4, false>(a, B, stream);
}

} // namespace flashws

#endif
