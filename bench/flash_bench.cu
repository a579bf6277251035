/* Flash-attention variants on Hopper: correctness first, then speed.
 *
 * Every entry is first checked against a plain fp32 reference kernel
 * (scores, softmax and P V in fp32 from the same fp16/bf16 inputs) on
 * ragged, cross, causal, padded-head-dim and strided (fused qkv, column
 * slice output) shapes plus the timed shapes, printing max abs / max
 * relative error (max|a - ref| / max|ref|) and PASS or FAIL (3e-3 fp16,
 * 1e-2 bf16, as tests/gpu/test_cuda_ops.c), then timed with CUDA events
 * after 20 warm-ups, random normal inputs: median of 100 single launches
 * (the method of test_cuda_ops --bench and bench/sdpa_bench.py) and median
 * of 30 groups of 10 queued launches (the kernel alone: the TMA variants
 * encode tensor maps on the host at every call, which a single launch per
 * event pair exposes and a pipeline hides).
 *
 * Entries 0..3 are the library's $VF_FLASH_VARIANT values, launched through
 * flashws::dispatch exactly as cuda_attention.cu does (fp16 and bf16);
 * the others are extra attn_ws configurations (fp16) that show which knob
 * pays, so that a better one can be promoted to a variant.
 *
 *   flash_bench              all entries in one process, then a summary
 *   flash_bench --only N     entry N alone (a faulting entry kills its
 *                            CUDA context; bench/gpu.sh reruns entries one
 *                            by one if the full run fails)
 *   flash_bench --count      number of entries
 *
 * Build: nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I src bench/flash_bench.cu
 */
#include "backend/cuda/flash_ws.cuh"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

typedef cudaError_t (*launch_fn)(const flash::params &, int B, cudaStream_t s);

template <typename T, int V> cudaError_t lib_variant(const flash::params &p, int B, cudaStream_t s)
{
    return flashws::dispatch<T>(V, true, p, B, s);
}

template <typename T, int NWG, int BC, int ST, int LOAD, int OVL, int SCHED, int EMU, int PERS>
cudaError_t ws(const flash::params &p, int B, cudaStream_t s)
{
    return flashws::launch_ws<T, NWG, BC, ST, LOAD, OVL, SCHED, EMU, PERS>(p, B, s);
}

struct entry {
    char name[96];
    launch_fn f16, b16;  /* b16 may be NULL */
    int max_d;           /* head dims it takes */
};

static std::vector<entry> entries()
{
    std::vector<entry> v;
    auto add = [&](const char *name, launch_fn a, launch_fn b) {
        entry e;
        snprintf(e.name, sizeof e.name, "%s", name);
        e.f16 = a;
        e.b16 = b;
        e.max_d = b ? 128 : 64;  /* the library dispatch takes up to 128, a bare kernel 64 */
        v.push_back(e);
    };
    char nm[96];
    const launch_fn lf[5] = {lib_variant<half, 0>, lib_variant<half, 1>, lib_variant<half, 2>, lib_variant<half, 3>,
                             lib_variant<half, 4>};
    const launch_fn lb[5] = {lib_variant<__nv_bfloat16, 0>, lib_variant<__nv_bfloat16, 1>,
                             lib_variant<__nv_bfloat16, 2>, lib_variant<__nv_bfloat16, 3>,
                             lib_variant<__nv_bfloat16, 4>};
    static_assert(flashws::NVARIANTS == 5, "list every library variant here");
    for (int i = 0; i < 5; i++) {
        snprintf(nm, sizeof nm, "v%d: %s", i, flashws::variant_name(i));
        add(nm, lf[i], lb[i]);
    }
    /* knobs, one at a time around v1 (warpgroups, keys per tile, stages,
     * loader, overlap, token, poly exp2) and around v2 (persistent) */
    add("x: ws NWG2 BC128 ST3 TMA ovl tok", ws<half, 2, 128, 3, 1, 1, 1, 0, 0>, NULL);
    add("x: ws NWG2 BC128 ST2 TMA ovl -", ws<half, 2, 128, 2, 1, 1, 0, 0, 0>, NULL);
    add("x: ws NWG2 BC128 ST2 TMA - tok", ws<half, 2, 128, 2, 1, 0, 1, 0, 0>, NULL);
    add("x: ws NWG2 BC128 ST2 cp.async ovl tok", ws<half, 2, 128, 2, 0, 1, 1, 0, 0>, NULL);
    add("x: ws NWG2 BC128 ST2 TMA ovl tok poly1/2", ws<half, 2, 128, 2, 1, 1, 1, 2, 0>, NULL);
    add("x: ws NWG2 BC128 ST2 TMA ovl tok poly1/8", ws<half, 2, 128, 2, 1, 1, 1, 8, 0>, NULL);
    add("x: ws NWG2 BC192 ST2 TMA ovl tok", ws<half, 2, 192, 2, 1, 1, 1, 0, 0>, NULL);
    add("x: ws NWG2 BC128 ST2 TMA ovl tok persistent", ws<half, 2, 128, 2, 1, 1, 1, 0, 1>, NULL);
    add("x: ws NWG2 BC128 ST4 TMA ovl tok persistent", ws<half, 2, 128, 4, 1, 1, 1, 0, 1>, NULL);
    add("x: ws NWG2 BC128 ST3 cp.async ovl tok persistent", ws<half, 2, 128, 3, 0, 1, 1, 0, 1>, NULL);
    add("x: ws NWG2 BC192 ST3 TMA ovl tok persistent", ws<half, 2, 192, 3, 1, 1, 1, 0, 1>, NULL);
    add("x: ws NWG3 BC128 ST2 TMA ovl tok", ws<half, 3, 128, 2, 1, 1, 1, 0, 0>, NULL);
    add("x: ws NWG3 BC128 ST2 TMA ovl -", ws<half, 3, 128, 2, 1, 1, 0, 0, 0>, NULL);
    add("x: ws NWG3 BC128 ST2 TMA - tok", ws<half, 3, 128, 2, 1, 0, 1, 0, 0>, NULL);
    add("x: ws NWG3 BC128 ST3 TMA ovl tok persistent", ws<half, 3, 128, 3, 1, 1, 1, 0, 1>, NULL);
    add("x: ws NWG3 BC128 ST3 TMA ovl tok persistent poly1/4", ws<half, 3, 128, 3, 1, 1, 1, 4, 1>, NULL);
    add("x: mma.sync DP64 BC64 MT2 NW4 (portable)", flashws::launch_mma<half, 64, 64, 2, 4, true>, NULL);
    return v;
}

/* o (B, Lq, H, D) fp32 = softmax(scale q k^T) v, one block per (query, head, batch). */
template <typename T>
__global__ void ref_attn(float *o, const T *q, const T *k, const T *v, int Lq, int Lk, int H, int D, long long ldq,
                         long long ldk, long long ldv, int causal, float scale)
{
    extern __shared__ float sh[];
    float *sc = sh, *qs = sh + Lk;
    __shared__ float red[32];
    const int qi = blockIdx.x, h = blockIdx.y, b = blockIdx.z, tid = threadIdx.x, nt = blockDim.x;
    const T *qr = q + ((long long)b * Lq + qi) * ldq + (long long)h * D;
    for (int d = tid; d < D; d += nt)
        qs[d] = (float)qr[d];
    __syncthreads();
    const int n = causal ? (qi + 1 < Lk ? qi + 1 : Lk) : Lk;
    float mx = -INFINITY;
    for (int j = tid; j < n; j += nt) {
        const T *kr = k + ((long long)b * Lk + j) * ldk + (long long)h * D;
        float acc = 0.0f;
        for (int d = 0; d < D; d++)
            acc += qs[d] * (float)kr[d];
        sc[j] = acc * scale;
        mx = fmaxf(mx, sc[j]);
    }
    for (int s = 16; s > 0; s >>= 1)
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, s));
    if ((tid & 31) == 0)
        red[tid >> 5] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int w = 0; w < nt / 32; w++)
        mx = fmaxf(mx, red[w]);
    __syncthreads();
    float sum = 0.0f;
    for (int j = tid; j < n; j += nt) {
        sc[j] = expf(sc[j] - mx);
        sum += sc[j];
    }
    for (int s = 16; s > 0; s >>= 1)
        sum += __shfl_xor_sync(0xffffffffu, sum, s);
    if ((tid & 31) == 0)
        red[tid >> 5] = sum;
    __syncthreads();
    sum = 0.0f;
    for (int w = 0; w < nt / 32; w++)
        sum += red[w];
    for (int d = tid; d < D; d += nt) {
        float acc = 0.0f;
        for (int j = 0; j < n; j++)
            acc += sc[j] * (float)v[((long long)b * Lk + j) * ldv + (long long)h * D + d];
        o[(((long long)b * Lq + qi) * H + h) * D + d] = acc / sum;
    }
}

struct shape {
    int B, Lq, Lk, H, D, causal, strided;
};

static const shape check_shapes[] = {
    {2, 300, 300, 5, 64, 0, 0},    {2, 256, 77, 10, 64, 0, 0},  {1, 77, 77, 12, 64, 1, 0},
    {1, 1000, 1000, 2, 64, 1, 0},  {2, 200, 200, 8, 40, 0, 0},  {3, 129, 200, 2, 48, 0, 0},
    {1, 70, 90, 3, 8, 0, 0},       {2, 333, 333, 4, 64, 0, 1},  {1, 77, 77, 20, 64, 1, 1},
    {1, 150, 150, 4, 128, 0, 0},   {2, 1024, 1024, 20, 64, 0, 0}, {2, 4096, 4096, 10, 64, 0, 0},
};
static const shape time_shapes[] = {
    {2, 4096, 4096, 10, 64, 0, 0}, {2, 1024, 1024, 20, 64, 0, 0}, {2, 4096, 77, 10, 64, 0, 0},
    {2, 1024, 77, 20, 64, 0, 0},
};

/* Device buffers of one problem: strided = q, k, v column slices of one
 * fused (B*L, 3*H*D) buffer and o a slice of (B*L, 2*H*D) at column 8. */
template <typename T> struct problem {
    shape s;
    T *qkv = NULL, *q = NULL, *k = NULL, *v = NULL, *obuf = NULL, *o = NULL;
    float *ref = NULL;
    size_t on = 0;  /* elements of obuf */
    long long ldq, ldk, ldv, ldo;

    explicit problem(const shape &sh, std::mt19937 &gen) : s(sh)
    {
        std::normal_distribution<float> nd(0.0f, 1.0f);
        const int hd = s.H * s.D;
        if (s.strided) {
            size_t n = (size_t)s.B * s.Lq * 3 * hd;
            std::vector<T> h(n);
            for (auto &x : h)
                x = (T)nd(gen);
            CK(cudaMalloc(&qkv, n * sizeof(T)));
            CK(cudaMemcpy(qkv, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
            q = qkv;
            k = qkv + hd;
            v = qkv + 2 * hd;
            ldq = ldk = ldv = 3 * hd;
            on = (size_t)s.B * s.Lq * 2 * hd;
            CK(cudaMalloc(&obuf, on * sizeof(T)));
            o = obuf + 8;
            ldo = 2 * hd;
        } else {
            T **ptr[3] = {&q, &k, &v};
            for (int i = 0; i < 3; i++) {
                size_t n = (size_t)s.B * (i == 0 ? s.Lq : s.Lk) * hd;
                std::vector<T> h(n);
                for (auto &x : h)
                    x = (T)nd(gen);
                CK(cudaMalloc(ptr[i], n * sizeof(T)));
                CK(cudaMemcpy(*ptr[i], h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
            }
            ldq = ldk = ldv = ldo = hd;
            on = (size_t)s.B * s.Lq * hd;
            CK(cudaMalloc(&obuf, on * sizeof(T)));
            o = obuf;
        }
    }
    ~problem()
    {
        cudaFree(qkv ? qkv : q);
        if (!qkv) {
            cudaFree(k);
            cudaFree(v);
        }
        cudaFree(obuf);
        cudaFree(ref);
    }
    flash::params params() const
    {
        flash::params p;
        p.q = q;
        p.k = k;
        p.v = v;
        p.o = o;
        p.Lq = s.Lq;
        p.Lk = s.Lk;
        p.H = s.H;
        p.D = s.D;
        p.ldq = ldq;
        p.ldk = ldk;
        p.ldv = ldv;
        p.ldo = ldo;
        p.causal = s.causal;
        p.scale_log2 = 1.4426950408889634f / sqrtf((float)s.D);
        return p;
    }
    void reference()
    {
        size_t n = (size_t)s.B * s.Lq * s.H * s.D;
        CK(cudaMalloc(&ref, n * sizeof(float)));
        size_t smem = (size_t)(s.Lk + s.D) * sizeof(float);
        CK(cudaFuncSetAttribute(ref_attn<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        ref_attn<T><<<dim3(s.Lq, s.H, s.B), 128, smem>>>(ref, q, k, v, s.Lq, s.Lk, s.H, s.D, ldq, ldk, ldv, s.causal,
                                                        1.0f / sqrtf((float)s.D));
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
    }
};

static float to_f(half x) { return __half2float(x); }
static float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

/* Runs fn once on a NaN-poisoned output and compares with the reference. */
template <typename T> static bool check(launch_fn fn, const char *ename, const char *tname, problem<T> &pb, cudaStream_t st)
{
    const shape &s = pb.s;
    CK(cudaMemset(pb.obuf, 0xff, pb.on * sizeof(T)));
    cudaError_t e = fn(pb.params(), s.B, st);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(st);
    char sname[96];
    snprintf(sname, sizeof sname, "B%d Lq%d Lk%d H%d D%d%s%s", s.B, s.Lq, s.Lk, s.H, s.D, s.causal ? " causal" : "",
             s.strided ? " qkv-strided" : "");
    if (e == cudaErrorNotSupported) {
        printf("CHECK %-46s %s %-40s no tensor map for this shape (not run)\n", ename, tname, sname);
        fflush(stdout);
        return true;
    }
    if (e != cudaSuccess) {
        printf("CHECK %-46s %s %-40s launch failed: %s FAIL\n", ename, tname, sname, cudaGetErrorString(e));
        fflush(stdout);
        CK(cudaDeviceSynchronize());  /* a fault poisons the context: stop here */
        return false;
    }
    std::vector<T> got(pb.on);
    size_t n = (size_t)s.B * s.Lq * s.H * s.D;
    std::vector<float> ref(n);
    CK(cudaMemcpy(got.data(), pb.obuf, pb.on * sizeof(T), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(ref.data(), pb.ref, n * sizeof(float), cudaMemcpyDeviceToHost));
    const int hd = s.H * s.D;
    const size_t rows = (size_t)s.B * s.Lq;
    double maxd = 0, maxr = 0;
    long bad = 0, clobbered = 0;
    for (size_t r = 0; r < rows; r++) {
        const T *gr = got.data() + r * pb.ldo + (s.strided ? 8 : 0);
        for (int c = 0; c < hd; c++) {
            float a = to_f(gr[c]), b = ref[r * hd + c];
            if (!std::isfinite(a))
                bad++;
            else
                maxd = std::max(maxd, (double)fabsf(a - b));
            maxr = std::max(maxr, (double)fabsf(b));
        }
        if (s.strided) {  /* the columns around the slice must still be the poison */
            const T *row = got.data() + r * pb.ldo;
            for (int c = 0; c < (int)pb.ldo; c++)
                if ((c < 8 || c >= 8 + hd) && std::isfinite(to_f(row[c])))
                    clobbered++;
        }
    }
    const double rel = maxr > 0 ? maxd / maxr : 0.0, tol = std::is_same<T, half>::value ? 3e-3 : 1e-2;
    const bool ok = bad == 0 && clobbered == 0 && rel <= tol;
    printf("CHECK %-46s %s %-40s max abs %.2e rel %.2e%s%s %s\n", ename, tname, sname, maxd, rel,
           bad ? " NON-FINITE" : "", clobbered ? " WROTE-OUTSIDE" : "", ok ? "PASS" : "FAIL");
    fflush(stdout);
    return ok;
}

/* Median ms of one call: single = one launch between two events (the
 * method of test_cuda_ops --bench and bench/sdpa_bench.py, which counts the
 * host's launch work while the GPU waits), queued = 10 launches between
 * two events, / 10 (the kernel alone, the host running ahead as in a
 * pipeline). 0: no tensor map for this shape; -1: the launch failed. */
template <typename T> static float time_ms(launch_fn fn, problem<T> &pb, cudaStream_t st, float *queued)
{
    const flash::params p = pb.params();
    *queued = 0.0f;
    cudaError_t first = fn(p, pb.s.B, st);
    if (first == cudaErrorNotSupported)
        return 0.0f;
    if (first != cudaSuccess) {
        printf("TIME  launch failed: %s\n", cudaGetErrorString(first));
        CK(cudaDeviceSynchronize());
        return -1.0f;
    }
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < 20; i++)
        CK(fn(p, pb.s.B, st));
    std::vector<float> t(100), q(30);
    for (auto &x : t) {
        CK(cudaEventRecord(e0, st));
        CK(fn(p, pb.s.B, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&x, e0, e1));
    }
    for (auto &x : q) {
        CK(cudaEventRecord(e0, st));
        for (int i = 0; i < 10; i++)
            CK(fn(p, pb.s.B, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&x, e0, e1));
        x /= 10.0f;
    }
    std::sort(t.begin(), t.end());
    std::sort(q.begin(), q.end());
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    *queued = q[15];
    return t[50];
}

struct result {
    bool ok = true;
    float ms[2][sizeof time_shapes / sizeof time_shapes[0]] = {};   /* single launch */
    float mq[2][sizeof time_shapes / sizeof time_shapes[0]] = {};   /* queued        */
};

template <typename T> static void run_entry(const entry &en, launch_fn fn, const char *tname, cudaStream_t st, result &res, int ti)
{
    std::mt19937 gen(1234);
    const int fb0 = flashws::tma_fallbacks();
    for (const shape &s : check_shapes) {
        if (s.D > en.max_d)
            continue;
        problem<T> pb(s, gen);
        pb.reference();
        res.ok = check<T>(fn, en.name, tname, pb, st) && res.ok;
    }
    for (size_t i = 0; i < sizeof time_shapes / sizeof time_shapes[0]; i++) {
        const shape &s = time_shapes[i];
        problem<T> pb(s, gen);
        float mq = 0.0f, ms = time_ms<T>(fn, pb, st, &mq);
        res.ms[ti][i] = ms;
        res.mq[ti][i] = mq;
        if (ms <= 0.0f) {
            printf("TIME  %-46s %s B%d H%d Lq%d Lk%d D%d  %s (not timed)\n", en.name, tname, s.B, s.H, s.Lq, s.Lk,
                   s.D, ms == 0.0f ? "no tensor map for this shape" : "launch failed");
            res.ms[ti][i] = res.mq[ti][i] = 0.0f;
            continue;
        }
        double flops = 4.0 * s.B * s.H * (double)s.Lq * s.Lk * s.D;
        printf("TIME  %-46s %s B%d H%d Lq%d Lk%d D%d  single %.4f ms %6.1f TFLOP/s  queued %.4f ms %6.1f TFLOP/s\n",
               en.name, tname, s.B, s.H, s.Lq, s.Lk, s.D, ms, flops / (ms * 1e-3) / 1e12, mq,
               flops / (mq * 1e-3) / 1e12);
        fflush(stdout);
    }
    if (flashws::tma_fallbacks() != fb0)
        printf("NOTE  %-46s %s %d calls had no tensor map and ran the cp.async twin\n", en.name, tname,
               flashws::tma_fallbacks() - fb0);
}

int main(int argc, char **argv)
{
    const std::vector<entry> all = entries();
    int only = -1;
    if (argc > 1 && strcmp(argv[1], "--count") == 0) {
        printf("%d\n", (int)all.size());
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "--only") == 0)
        only = atoi(argv[2]);
    if (argc > 1 && (only < -1 || only >= (int)all.size() || (only < 0 && argc > 1))) {
        fprintf(stderr, "usage: flash_bench [--only N (0..%d) | --count]\n", (int)all.size() - 1);
        return 2;
    }
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("flash_bench on %s (cc %d.%d, %d SMs)\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
    if (prop.major != 9) {
        printf("skipped: the wgmma kernels need a compute capability 9.0 GPU\n");
        return 77;
    }
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    std::vector<result> res(all.size());
    for (size_t i = 0; i < all.size(); i++) {
        if (only >= 0 && (int)i != only)
            continue;
        run_entry<half>(all[i], all[i].f16, "f16 ", st, res[i], 0);
        if (all[i].b16)
            run_entry<__nv_bfloat16>(all[i], all[i].b16, "bf16", st, res[i], 1);
    }
    if (only >= 0)
        return res[only].ok ? 0 : 1;
    printf("\nSUMMARY fp16, fastest first by queued time (10 launches per event pair); x = entry 0's time / "
           "this entry's;\nsingle = one launch per event pair (the test_cuda_ops / sdpa_bench method); FAIL = a "
           "correctness check failed\n");
    for (size_t si = 0; si < sizeof time_shapes / sizeof time_shapes[0]; si++) {
        const shape &s = time_shapes[si];
        double flops = 4.0 * s.B * s.H * (double)s.Lq * s.Lk * s.D;
        std::vector<size_t> ord;
        for (size_t i = 0; i < all.size(); i++)
            if (res[i].mq[0][si] > 0.0f)
                ord.push_back(i);
        std::sort(ord.begin(), ord.end(), [&](size_t a, size_t b) { return res[a].mq[0][si] < res[b].mq[0][si]; });
        printf("  B%d H%d Lq%d Lk%d D%d:\n", s.B, s.H, s.Lq, s.Lk, s.D);
        for (size_t i : ord)
            printf("    %2zu %-46s queued %.4f ms %6.1f TFLOP/s x%.2f | single %.4f ms %6.1f TFLOP/s x%.2f%s\n", i,
                   all[i].name, res[i].mq[0][si], flops / (res[i].mq[0][si] * 1e-3) / 1e12,
                   res[0].mq[0][si] / res[i].mq[0][si], res[i].ms[0][si],
                   flops / (res[i].ms[0][si] * 1e-3) / 1e12, res[0].ms[0][si] / res[i].ms[0][si],
                   res[i].ok ? "" : "  FAIL");
    }
    bool ok = true;
    for (const result &r : res)
        ok = ok && r.ok;
    printf("flash_bench: %s\n", ok ? "all checks passed" : "SOME CHECKS FAILED");
    return ok ? 0 : 1;
}
