/* Tile-shape sweep of the flash-attention kernel (src/backend/cuda/flash_kernel.cuh)
 * at the ANCHORS.md shapes, fp16, head dim 64. Each variant's output is
 * compared with the first (the mma.sync kernel, itself checked against the
 * CPU by tests/gpu/test_cuda_ops.c) and timed with CUDA events: median of
 * 100 runs after 20 warm-ups, inputs random normal (never zeros).
 * Build: nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I src bench/flash_bench.cu
 */
#include "backend/cuda/flash_kernel.cuh"
#include "backend/cuda/flash_wgmma.cuh"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#define CK(x)                                                                                   \
    do {                                                                                        \
        cudaError_t e_ = (x);                                                                   \
        if (e_ != cudaSuccess) {                                                                \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                            \
        }                                                                                       \
    } while (0)

typedef void (*launch_fn)(const flash::params &, int B, cudaStream_t s);

template <int DP, int BC, int MT, int NW, bool QREG> void launch(const flash::params &p, int B, cudaStream_t s)
{
    typedef flash::shape<DP, BC, MT, NW> S;
    auto k = flash::attn_fwd<half, DP, BC, MT, NW, QREG>;
    CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, S::SMEM));
    dim3 grid((p.Lq + S::BR - 1) / S::BR, p.H, B);
    k<<<grid, NW * 32, S::SMEM, s>>>(p);
}

template <int NWG, int BC> void launch_wg2(const flash::params &p, int B, cudaStream_t s)
{
    typedef flashwg::shape<NWG, BC, 2> S;
    auto k = flashwg::attn_wg2<half, NWG, BC>;
    CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, S::SMEM));
    dim3 grid((p.Lq + S::BR - 1) / S::BR, p.H, B);
    k<<<grid, NWG * 128, S::SMEM, s>>>(p);
}

template <int NWG, int BC, int ST, int PIPE, int PIN = 1> void launch_wg(const flash::params &p, int B, cudaStream_t s)
{
    typedef flashwg::shape<NWG, BC, ST> S;
    auto k = flashwg::attn_wg<half, NWG, BC, ST, PIPE, PIN>;
    CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, S::SMEM));
    dim3 grid((p.Lq + S::BR - 1) / S::BR, p.H, B);
    k<<<grid, NWG * 128, S::SMEM, s>>>(p);
}

struct variant {
    const char *name;
    launch_fn fn;
};

static const variant variants[] = {
    {"mma DP64 BC64 MT2 NW4", launch<64, 64, 2, 4, true>},
    {"wg2 NWG1 BC128 (lib)", launch_wg2<1, 128>},
    {"wg2 NWG1 BC64", launch_wg2<1, 64>},
    {"wg2 NWG2 BC64", launch_wg2<2, 64>},
    {"wg NWG1 BC128 ST3", launch_wg<1, 128, 3, 0, 0>},
    {"wg-pipe NWG1 BC128 ST3", launch_wg<1, 128, 3, 1, 0>},
    {"wg-pipe NWG1 BC128 ST3 pin", launch_wg<1, 128, 3, 1, 1>},
    {"wg-pipe NWG1 BC64 ST4", launch_wg<1, 64, 4, 1, 0>},
    {"wg-pipe NWG2 BC64 ST4", launch_wg<2, 64, 4, 1, 0>},
    {"wg-pipe NWG2 BC128 ST3", launch_wg<2, 128, 3, 1, 0>},
};

int main()
{
    const int shapes[2][3] = {{2, 10, 4096}, {2, 20, 1024}};
    const int D = 64;
    std::mt19937 gen(1234);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("flash_bench on %s\n", prop.name);
    for (auto &sh : shapes) {
        int B = sh[0], H = sh[1], L = sh[2];
        size_t n = (size_t)B * L * H * D;
        std::vector<half> h(n);
        half *q, *k, *v, *o, *o0;
        CK(cudaMalloc(&q, n * 2));
        CK(cudaMalloc(&k, n * 2));
        CK(cudaMalloc(&v, n * 2));
        CK(cudaMalloc(&o, n * 2));
        CK(cudaMalloc(&o0, n * 2));
        for (half *p : {q, k, v}) {
            for (auto &x : h)
                x = __float2half(nd(gen));
            CK(cudaMemcpy(p, h.data(), n * 2, cudaMemcpyHostToDevice));
        }
        flash::params p;
        p.q = q;
        p.k = k;
        p.v = v;
        p.Lq = p.Lk = L;
        p.H = H;
        p.D = D;
        p.ldq = p.ldk = p.ldv = p.ldo = H * D;
        p.causal = 0;
        p.scale_log2 = 1.4426950408889634f / sqrtf((float)D);
        std::vector<half> ref(n), got(n);
        double flops = 4.0 * B * H * (double)L * L * D;
        for (size_t vi = 0; vi < sizeof variants / sizeof variants[0]; vi++) {
            p.o = vi == 0 ? o0 : o;
            CK(cudaMemset(p.o, 0xff, n * 2));
            variants[vi].fn(p, B, s);
            CK(cudaGetLastError());
            CK(cudaStreamSynchronize(s));
            CK(cudaMemcpy(vi == 0 ? ref.data() : got.data(), p.o, n * 2, cudaMemcpyDeviceToHost));
            double maxd = 0, maxr = 0;
            int nan = 0;
            if (vi > 0) {
                for (size_t i = 0; i < n; i++) {
                    float a = __half2float(got[i]), b = __half2float(ref[i]);
                    if (std::isnan(a))
                        nan = 1;
                    maxd = std::max(maxd, (double)fabsf(a - b));
                    maxr = std::max(maxr, (double)fabsf(b));
                }
            }
            cudaEvent_t e0, e1;
            CK(cudaEventCreate(&e0));
            CK(cudaEventCreate(&e1));
            for (int i = 0; i < 20; i++)
                variants[vi].fn(p, B, s);
            std::vector<float> t(100);
            for (auto &x : t) {
                CK(cudaEventRecord(e0, s));
                variants[vi].fn(p, B, s);
                CK(cudaEventRecord(e1, s));
                CK(cudaEventSynchronize(e1));
                CK(cudaEventElapsedTime(&x, e0, e1));
            }
            std::sort(t.begin(), t.end());
            printf("  B%d H%d L%d D%d  %-30s %.4f ms  %6.1f TFLOP/s  diff vs first %.2e%s\n", B, H, L, D,
                   variants[vi].name, t[50], flops / (t[50] * 1e-3) / 1e12, maxr > 0 ? maxd / maxr : 0.0,
                   nan ? " NaN" : "");
            cudaEventDestroy(e0);
            cudaEventDestroy(e1);
        }
        cudaFree(q);
        cudaFree(k);
        cudaFree(v);
        cudaFree(o);
        cudaFree(o0);
    }
    return 0;
}
