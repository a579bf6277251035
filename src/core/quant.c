/* Quantized weight formats (see quant.h for the layouts and why).
 *
 * Everything here works one row at a time and never allocates (except the
 * roundtrip helper's packed copy), so the streaming checkpoint writer can
 * quantize a tensor of any size in row chunks with a bounded buffer, and the
 * loader can dequantize straight from a mapped file (unaligned reads go
 * through memcpy).
 *
 * Quantizing is row-parallel: a float16 SDXL UNet to Q4 (a least-squares
 * refit per block of 32) is minutes on one core, so vf_quantize hands
 * contiguous runs of rows to threads started for the call (no pool: a few
 * hundred large tensors a model, each far longer than starting 16 threads).
 * Nothing a thread computes depends on another's rows, so the bytes are the
 * same for any thread count. Errors: workers only record the lowest failing
 * row (and stop past it); the calling thread then quantizes that row again,
 * which fails the same way and sets the message there, where the caller
 * reads it (messages are thread-local). Chunk state lives on the stack, so
 * the call still never allocates, and a thread that cannot be started just
 * leaves its rows to the calling thread.
 */
#include "core/quant.h"
#include "core/alloc.h"
#include "core/dtype.h"
#include "core/error.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define F8_MAX 448.0f
#define F16_MAX 65504.0f
#define REFITS 4 /* least-squares refits of a Q4 block's scale and minimum */

int vf_quant_is_packed(vf_dtype fmt)
{
    return fmt == VF_DTYPE_F8_E4M3 || fmt == VF_DTYPE_Q8 || fmt == VF_DTYPE_Q4;
}

static int is_plain(vf_dtype fmt)
{
    return fmt == VF_DTYPE_F32 || fmt == VF_DTYPE_F16 || fmt == VF_DTYPE_BF16;
}

/* Values per padded row. */
static int64_t padded_cols(vf_dtype fmt, int64_t cols)
{
    int64_t g = fmt == VF_DTYPE_F8_E4M3 ? VF_F8_ROW_ALIGN : VF_QUANT_BLOCK;
    return (cols + g - 1) / g * g;
}

int vf_quant_layout(vf_dtype fmt, int64_t cols, size_t *data_row, size_t *scale_row)
{
    if (cols <= 0 || cols > ((int64_t)1 << 40))
        return -1;
    if (is_plain(fmt)) {
        *data_row = (size_t)cols * vf_dtype_size(fmt);
        *scale_row = 0;
        return 0;
    }
    int64_t kp = padded_cols(fmt, cols);
    switch (fmt) {
    case VF_DTYPE_F8_E4M3:
        *data_row = (size_t)kp;
        *scale_row = 4;
        return 0;
    case VF_DTYPE_Q8:
        *data_row = (size_t)kp;
        *scale_row = (size_t)(kp / VF_QUANT_BLOCK) * 2;
        return 0;
    case VF_DTYPE_Q4:
        *data_row = (size_t)kp / 2;
        *scale_row = (size_t)(kp / VF_QUANT_BLOCK) * 4;
        return 0;
    default:
        return -1;
    }
}

size_t vf_quant_packed_bytes(vf_dtype fmt, int64_t rows, int64_t cols)
{
    size_t dr, sr, total;
    if (rows <= 0 || vf_quant_layout(fmt, cols, &dr, &sr) != 0)
        return 0;
    if (__builtin_mul_overflow((size_t)rows, dr + sr, &total) || total > (size_t)INT64_MAX)
        return 0;
    return total;
}

int vf_quant_can(vf_dtype fmt, int ndim, const int64_t *shape)
{
    if (!shape || ndim < 1 || ndim > 4)
        return 0;
    int64_t cols = 1;
    for (int d = 1; d < ndim; d++) {
        if (shape[d] <= 0 || __builtin_mul_overflow(cols, shape[d], &cols))
            return 0;
    }
    if (shape[0] <= 0 || cols >= ((int64_t)1 << 31))
        return 0;
    size_t bytes = vf_quant_packed_bytes(fmt, shape[0], cols);
    if (is_plain(fmt))
        return bytes > 0;
    size_t f16;
    if (ndim < 2 || bytes == 0 || __builtin_mul_overflow((size_t)shape[0] * (size_t)cols, 2, &f16))
        return 0;
    return bytes < f16;
}

/* ---- scalar codecs --------------------------------------------------------------- */

uint8_t vf_f32_to_f8e4m3(float f)
{
    if (isnan(f))
        return 0x7f;
    uint8_t sign = signbit(f) ? 0x80 : 0;
    float a = fabsf(f);
    if (a >= F8_MAX)
        return sign | 0x7e;
    uint32_t u;
    memcpy(&u, &a, 4);
    int e = (int)((u >> 23) & 0xff) - 127;
    if (e < -6) {
        /* subnormal range: multiples of 2^-9; 8 * 2^-9 is the smallest normal,
         * whose code (0x08) is the same number */
        return sign | (uint8_t)nearbyintf(a * 512.0f);
    }
    uint32_t man = u & 0x7fffff, r = man >> 20, rem = man & 0xfffff;
    if (rem > 0x80000 || (rem == 0x80000 && (r & 1)))
        r++; /* may carry into the exponent: the right result */
    uint32_t code = ((uint32_t)(e + 7) << 3) + r;
    return sign | (uint8_t)(code > 0x7e ? 0x7e : code);
}

static float load_f32(const uint8_t *p)
{
    float f;
    memcpy(&f, p, 4);
    return f;
}

static float load_f16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return vf_f16_to_f32(h);
}

static float load_bf16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return vf_bf16_to_f32(h);
}

static void store_f16(uint8_t *p, float f)
{
    uint16_t h = vf_f32_to_f16(f);
    memcpy(p, &h, 2);
}

/* First non-finite value of a row: its column, or -1. */
static int64_t nonfinite_at(const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return i;
    return -1;
}

/* ---- rows ------------------------------------------------------------------------- */

/* x is one row of K floats; q receives Kp bytes, *scale the row's scale. */
static void f8_row(const float *x, int64_t K, int64_t Kp, uint8_t *q, float *scale)
{
    float amax = 0;
    for (int64_t k = 0; k < K; k++)
        amax = fmaxf(amax, fabsf(x[k]));
    float s = amax / F8_MAX;
    memset(q, 0, (size_t)Kp);
    *scale = s > 0 ? s : 0;
    if (!(s > 0))
        return;
    for (int64_t k = 0; k < K; k++)
        q[k] = vf_f32_to_f8e4m3(x[k] / s);
}

static float f16r(float x) { return vf_f16_to_f32(vf_f32_to_f16(x)); }

/* The scale search of a Q8 block: candidate scales amax/127 * f for f in
 * [Q8_LO, Q8_HI], each giving codes to which the scale is then refit by least
 * squares. Near amax/127 a block's squared rounding error varies by about 16%
 * (its standard deviation) from one scale to the next, so the best of a few
 * nearby scales is worth keeping: 16 candidates lower the RMS weight error by
 * 12% on uniform and 11% on Gaussian blocks (test_error_bounds measures it),
 * at the same 8.5 bits a weight. The format does not change: files quantized
 * before read the same. The loops are branch-free over 32 floats so that the
 * compiler vectorises them (SSE2: 25 M weights a second a core here): rounding
 * adds and subtracts 1.5 * 2^23, which rounds half to even like nearbyintf
 * for |v| < 2^22 (a scale is never far below amax/127, so |v| stays near
 * 127), and the clamp is arithmetic, exact on integers. */
#define Q8_CANDIDATES 16
#define Q8_LO 0.995f
#define Q8_HI 1.05f
#define ROUND_MAGIC 12582912.0f

/* Sums run in LANES partial sums so that the compiler may vectorise them
 * (it keeps the order of a single float sum). */
#define LANES 8

static float lane_sum(const float *acc)
{
    float s = 0;
    for (int l = 0; l < LANES; l++)
        s += acc[l];
    return s;
}

/* Codes of a zero-padded block of 32 for inverse scale inv, as floats;
 * returns sum x q and (through sqq) sum q^2. */
static float q8_try(const float *restrict x, float inv, float *restrict q, float *restrict sqq)
{
    float axq[LANES] = {0}, aqq[LANES] = {0};
    for (int i = 0; i < VF_QUANT_BLOCK; i += LANES) {
        for (int l = 0; l < LANES; l++) {
            /* round, then clamp to +-127 without a branch (exact on integers) */
            float v = (x[i + l] * inv + ROUND_MAGIC) - ROUND_MAGIC;
            v = 0.5f * (fabsf(v + 127.0f) - fabsf(v - 127.0f));
            q[i + l] = v;
            axq[l] += x[i + l] * v;
            aqq[l] += v * v;
        }
    }
    *sqq = lane_sum(aqq);
    return lane_sum(axq);
}

/* Squared error of d q against x over a zero-padded block of 32. */
static float q8_sse(const float *x, const float *q, float d)
{
    float acc[LANES] = {0};
    for (int i = 0; i < VF_QUANT_BLOCK; i += LANES) {
        for (int l = 0; l < LANES; l++) {
            float r = x[i + l] - d * q[i + l];
            acc[l] += r * r;
        }
    }
    return lane_sum(acc);
}

/* One Q8 block of n <= 32 values: q gets 32 bytes, sc the F16 scale. Starts
 * from amax/127 (every value within half a step) and keeps a searched scale
 * only when it lowers the block's squared error. */
static vf_status q8_block(const float *x, int n, int8_t *q, uint8_t *sc)
{
    float amax = 0;
    for (int i = 0; i < n; i++)
        amax = fmaxf(amax, fabsf(x[i]));
    float d = f16r(amax / 127.0f);
    if (isinf(d))
        return vf_error(VF_ERR_INVALID_ARG, "magnitude %g is past the range of a Q8 block scale (F16)",
                        (double)amax);
    float xb[VF_QUANT_BLOCK] = {0}, best[VF_QUANT_BLOCK], cand[VF_QUANT_BLOCK], sqq;
    memcpy(xb, x, (size_t)n * sizeof *x);
    q8_try(xb, d > 0 ? 1.0f / d : 0.0f, best, &sqq);
    float be = q8_sse(xb, best, d);
    for (int k = 0; k < Q8_CANDIDATES && be > 0; k++) {
        float f = Q8_LO + (Q8_HI - Q8_LO) * (float)k / (Q8_CANDIDATES - 1);
        float sxq = q8_try(xb, 127.0f / (amax * f), cand, &sqq);
        float dk = sqq > 0 ? f16r(sxq / sqq) : 0.0f;
        if (!(dk > 0) || isinf(dk))
            continue;
        float e = q8_sse(xb, cand, dk);
        if (e < be) {
            be = e, d = dk;
            memcpy(best, cand, sizeof best);
        }
    }
    memset(q, 0, VF_QUANT_BLOCK);
    for (int i = 0; i < n; i++)
        q[i] = (int8_t)best[i];
    store_f16(sc, d);
    return VF_OK;
}

/* Q4 codes of a block for the (F16-exact) pair (d, m); returns the squared
 * error of fmaf(d, q, m), what dequantizing computes. */
static double q4_codes(const float *x, int n, float d, float m, uint8_t *c)
{
    double sse = 0;
    float inv = d != 0 ? 1.0f / d : 0.0f;
    for (int i = 0; i < n; i++) {
        float v = nearbyintf((x[i] - m) * inv);
        v = v > 15 ? 15 : v < 0 ? 0 : v;
        c[i] = (uint8_t)v;
        double e = (double)x[i] - (double)fmaf(d, v, m);
        sse += e * e;
    }
    return sse;
}

/* One Q4 block of n <= 32 values: q gets 16 bytes, dm the F16 pair (d, m).
 * Starts from m = min, d = (max - min)/15, then refits (d, m) by least
 * squares to the codes (x ~ d q + m), kept while the error falls. */
static vf_status q4_block(const float *x, int n, uint8_t *q, uint8_t *dm)
{
    float mn = x[0], mx = x[0];
    for (int i = 1; i < n; i++) {
        mn = fminf(mn, x[i]);
        mx = fmaxf(mx, x[i]);
    }
    float m = f16r(mn), d = f16r((mx - m) / 15.0f);
    if (isinf(m) || isinf(d))
        return vf_error(VF_ERR_INVALID_ARG, "values %g .. %g are past the range of a Q4 block scale (F16)",
                        (double)mn, (double)mx);
    uint8_t c[VF_QUANT_BLOCK] = {0}, cand[VF_QUANT_BLOCK];
    double best = q4_codes(x, n, d, m, c);
    for (int it = 0; it < REFITS && d != 0; it++) {
        double sq = 0, sqq = 0, sx = 0, sxq = 0;
        for (int i = 0; i < n; i++) {
            sq += c[i];
            sqq += (double)c[i] * c[i];
            sx += x[i];
            sxq += (double)x[i] * c[i];
        }
        double det = n * sqq - sq * sq;
        if (!(det > 0))
            break;
        double dd = (n * sxq - sq * sx) / det;
        float d1 = f16r((float)dd), m1 = f16r((float)((sx - dd * sq) / n));
        if ((d1 == d && m1 == m) || !(d1 > 0) || isinf(d1) || isinf(m1))
            break;
        double e = q4_codes(x, n, d1, m1, cand);
        if (!(e < best))
            break;
        best = e;
        d = d1, m = m1;
        memcpy(c, cand, (size_t)n);
    }
    store_f16(dm, d);
    store_f16(dm + 2, m);
    memset(q, 0, VF_QUANT_BLOCK / 2);
    for (int i = 0; i < n; i++)
        q[i / 2] |= (uint8_t)(i & 1 ? c[i] << 4 : c[i]);
    return VF_OK;
}

/* Row r of a Q8 / Q4 tensor: blocks along K, the last one partly padding. */
static vf_status block_row(vf_dtype fmt, const float *x, int64_t K, uint8_t *data, uint8_t *scales)
{
    for (int64_t k0 = 0, b = 0; k0 < K; k0 += VF_QUANT_BLOCK, b++) {
        int n = (int)(K - k0 < VF_QUANT_BLOCK ? K - k0 : VF_QUANT_BLOCK);
        vf_status st = fmt == VF_DTYPE_Q8 ? q8_block(x + k0, n, (int8_t *)data + k0, scales + 2 * b)
                                          : q4_block(x + k0, n, data + k0 / 2, scales + 4 * b);
        if (st != VF_OK)
            return vf_error_prefix(st, "column %lld", (long long)k0);
    }
    return VF_OK;
}

static vf_status plain_row(vf_dtype fmt, const float *x, int64_t K, uint8_t *dst)
{
    vf_convert_from_f32(dst, fmt, x, (size_t)K);
    if (fmt != VF_DTYPE_F16 && fmt != VF_DTYPE_BF16)
        return VF_OK;
    for (int64_t k = 0; k < K; k++) {
        float back = fmt == VF_DTYPE_F16 ? load_f16(dst + 2 * k) : load_bf16(dst + 2 * k);
        if (isinf(back))
            return vf_error(VF_ERR_INVALID_ARG, "column %lld: %g is past the range of %s", (long long)k,
                            (double)x[k], vf_dtype_name(fmt));
    }
    return VF_OK;
}

/* ---- rows in parallel --------------------------------------------------------------- */

/* What every row of one vf_quantize call shares. */
typedef struct {
    vf_dtype fmt;
    const float *src;
    int64_t rows, cols, kp;
    size_t dr, sr;
    uint8_t *data, *scales;
    atomic_llong first_bad; /* lowest failing row found so far; rows when none */
} qjob;

/* Rows [r0, r1) of a job, on a thread of its own when started. */
typedef struct {
    qjob *job;
    int64_t r0, r1;
    pthread_t tid;
    int started;
} qchunk;

static atomic_int g_forced_threads;  /* vf_quant_set_threads; 0 = automatic */
static atomic_int g_spawn_fail_at;   /* vf_quant_fault_spawn_at */

/* Row r: its bytes in both planes, or the error of its first bad value. */
static vf_status quant_row(const qjob *j, int64_t r)
{
    const float *x = j->src + r * j->cols;
    int64_t bad = nonfinite_at(x, j->cols);
    if (bad >= 0)
        return vf_error(VF_ERR_NONFINITE, "%s at row %lld, column %lld", isnan(x[bad]) ? "NaN" : "infinity",
                        (long long)r, (long long)bad);
    vf_status st = VF_OK;
    float s;
    uint8_t *data = j->data + (size_t)r * j->dr;
    if (is_plain(j->fmt)) {
        st = plain_row(j->fmt, x, j->cols, data);
    } else if (j->fmt == VF_DTYPE_F8_E4M3) {
        f8_row(x, j->cols, j->kp, data, &s);
        memcpy(j->scales + (size_t)r * 4, &s, 4);
    } else {
        st = block_row(j->fmt, x, j->cols, data, j->scales + (size_t)r * j->sr);
    }
    return st == VF_OK ? VF_OK : vf_error_prefix(st, "row %lld", (long long)r);
}

static void lower_first_bad(qjob *j, int64_t r)
{
    long long cur = atomic_load(&j->first_bad);
    while (r < cur && !atomic_compare_exchange_weak(&j->first_bad, &cur, (long long)r))
        ;
}

/* Stops at its first failing row, or once a lower row has failed elsewhere:
 * rows past the first failure are never needed. The lowest failing row is
 * always reached, since every row before it succeeds. */
static void run_chunk(qchunk *c)
{
    qjob *j = c->job;
    for (int64_t r = c->r0; r < c->r1; r++) {
        if (r > atomic_load_explicit(&j->first_bad, memory_order_relaxed))
            return;
        if (quant_row(j, r) != VF_OK) {
            lower_first_bad(j, r);
            return;
        }
    }
}

static void *chunk_main(void *arg)
{
    run_chunk(arg);
    return NULL;
}

static int spawn(qchunk *c)
{
    int k = atomic_load(&g_spawn_fail_at);
    if (k > 0 && atomic_fetch_sub(&g_spawn_fail_at, 1) == 1)
        return 0;
    return pthread_create(&c->tid, NULL, chunk_main, c) == 0;
}

/* n balanced contiguous chunks; chunk 0, and every chunk from the first
 * thread that fails to start on, run on the calling thread. */
static void run_parallel(qjob *j, int n)
{
    qchunk c[VF_QUANT_MAX_THREADS];
    int64_t base = j->rows / n, extra = j->rows % n;
    for (int i = 0; i < n; i++) {
        c[i].job = j;
        c[i].r0 = i * base + (i < extra ? i : extra);
        c[i].r1 = c[i].r0 + base + (i < extra);
        c[i].started = 0;
    }
    for (int i = 1; i < n && spawn(&c[i]); i++)
        c[i].started = 1;
    for (int i = 0; i < n; i++)
        if (!c[i].started)
            run_chunk(&c[i]);
    for (int i = 1; i < n; i++)
        if (c[i].started)
            pthread_join(c[i].tid, NULL);
}

/* CPUs this process may run on (its affinity mask), else those online. */
static int usable_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 && n < VF_QUANT_MAX_THREADS ? (int)n : n > 0 ? VF_QUANT_MAX_THREADS : 1;
}

/* VF_QUANT_THREADS when it is a whole number >= 1 (capped), else 0. */
static int env_threads(void)
{
    const char *s = getenv("VF_QUANT_THREADS");
    if (!s || !*s)
        return 0;
    char *end;
    int saved = errno;
    errno = 0;
    long v = strtol(s, &end, 10);
    int ok = errno == 0 && *end == '\0' && v >= 1;
    errno = saved;
    if (!ok)
        return 0;
    return v > VF_QUANT_MAX_THREADS ? VF_QUANT_MAX_THREADS : (int)v;
}

int vf_quant_threads(int64_t rows, int64_t cols)
{
    int64_t numel, n;
    if (rows <= 1 || cols <= 0)
        return 1;
    int forced = atomic_load(&g_forced_threads);
    if (forced > 0) {
        n = forced;
    } else {
        if (__builtin_mul_overflow(rows, cols, &numel))
            numel = INT64_MAX;
        if (numel < VF_QUANT_PAR_MIN)
            return 1;
        n = env_threads();
        if (n == 0) {
            n = usable_cpus();
            n = n > VF_QUANT_AUTO_THREADS ? VF_QUANT_AUTO_THREADS : n;
        }
        if (n > numel / (VF_QUANT_PAR_MIN / 4))
            n = numel / (VF_QUANT_PAR_MIN / 4);
    }
    n = n > rows ? rows : n;
    return n > VF_QUANT_MAX_THREADS ? VF_QUANT_MAX_THREADS : n < 1 ? 1 : (int)n;
}

void vf_quant_set_threads(int n) { atomic_store(&g_forced_threads, n > 0 ? n : 0); }

void vf_quant_fault_spawn_at(int nth) { atomic_store(&g_spawn_fail_at, nth > 0 ? nth : 0); }

vf_status vf_quantize(vf_dtype fmt, const float *src, int64_t rows, int64_t cols, void *dst)
{
    size_t dr, sr;
    if (!src || !dst || rows <= 0 || vf_quant_packed_bytes(fmt, rows, cols) == 0 ||
        vf_quant_layout(fmt, cols, &dr, &sr) != 0)
        return vf_error(VF_ERR_INVALID_ARG, "quantize: %s of %lld x %lld is not a valid format and shape",
                        vf_dtype_name(fmt), (long long)rows, (long long)cols);
    qjob j = {.fmt = fmt, .src = src, .rows = rows, .cols = cols, .kp = padded_cols(fmt, cols), .dr = dr,
              .sr = sr, .data = dst, .scales = (uint8_t *)dst + (size_t)rows * dr};
    atomic_init(&j.first_bad, (long long)rows);
    int n = vf_quant_threads(rows, cols);
    if (n <= 1) {
        for (int64_t r = 0; r < rows; r++)
            VF_TRY(quant_row(&j, r));
        return VF_OK;
    }
    run_parallel(&j, n);
    int64_t bad = (int64_t)atomic_load(&j.first_bad);
    if (bad >= rows)
        return VF_OK;
    vf_status st = quant_row(&j, bad); /* again, for the message on this thread */
    return st != VF_OK ? st
                       : vf_error(VF_ERR_INTERNAL, "quantize: row %lld failed on a worker thread only",
                                  (long long)bad);
}

/* ---- dequantizing ------------------------------------------------------------------ */

static void f8_rows(const uint8_t *src, int64_t rows, int64_t K, size_t dr, float *dst)
{
    float lut[256];
    for (int i = 0; i < 256; i++)
        lut[i] = vf_f8e4m3_to_f32((uint8_t)i);
    const uint8_t *scales = src + (size_t)rows * dr;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *q = src + (size_t)r * dr;
        float s = load_f32(scales + (size_t)r * 4);
        float *y = dst + r * K;
        for (int64_t k = 0; k < K; k++)
            y[k] = s * lut[q[k]];
    }
}

static void q8_rows(const uint8_t *src, int64_t rows, int64_t K, size_t dr, size_t sr, float *dst)
{
    const uint8_t *scales = src + (size_t)rows * dr;
    for (int64_t r = 0; r < rows; r++) {
        const int8_t *q = (const int8_t *)(src + (size_t)r * dr);
        const uint8_t *sc = scales + (size_t)r * sr;
        float *y = dst + r * K;
        for (int64_t k0 = 0; k0 < K; k0 += VF_QUANT_BLOCK) {
            float d = load_f16(sc + 2 * (k0 / VF_QUANT_BLOCK));
            int64_t e = K - k0 < VF_QUANT_BLOCK ? K : k0 + VF_QUANT_BLOCK;
            for (int64_t k = k0; k < e; k++)
                y[k] = d * (float)q[k];
        }
    }
}

static void q4_rows(const uint8_t *src, int64_t rows, int64_t K, size_t dr, size_t sr, float *dst)
{
    const uint8_t *scales = src + (size_t)rows * dr;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *q = src + (size_t)r * dr;
        const uint8_t *sc = scales + (size_t)r * sr;
        float *y = dst + r * K;
        for (int64_t k0 = 0; k0 < K; k0 += VF_QUANT_BLOCK) {
            const uint8_t *dm = sc + 4 * (k0 / VF_QUANT_BLOCK);
            float d = load_f16(dm), m = load_f16(dm + 2);
            int64_t e = K - k0 < VF_QUANT_BLOCK ? K : k0 + VF_QUANT_BLOCK;
            for (int64_t k = k0; k < e; k++) {
                int c = k & 1 ? q[k / 2] >> 4 : q[k / 2] & 15;
                y[k] = fmaf(d, (float)c, m);
            }
        }
    }
}

vf_status vf_dequantize(vf_dtype fmt, const void *src, int64_t rows, int64_t cols, float *dst)
{
    size_t dr, sr;
    if (!src || !dst || vf_quant_packed_bytes(fmt, rows, cols) == 0 || vf_quant_layout(fmt, cols, &dr, &sr) != 0)
        return vf_error(VF_ERR_INVALID_ARG, "dequantize: %s of %lld x %lld is not a valid format and shape",
                        vf_dtype_name(fmt), (long long)rows, (long long)cols);
    switch (fmt) {
    case VF_DTYPE_F8_E4M3: f8_rows(src, rows, cols, dr, dst); break;
    case VF_DTYPE_Q8: q8_rows(src, rows, cols, dr, sr, dst); break;
    case VF_DTYPE_Q4: q4_rows(src, rows, cols, dr, sr, dst); break;
    default: vf_convert_to_f32(dst, src, fmt, (size_t)rows * (size_t)cols); break;
    }
    return VF_OK;
}

/* ---- quantize on load ------------------------------------------------------------------ */

static float through(vf_dtype fmt, float x)
{
    return fmt == VF_DTYPE_F16 ? vf_f16_to_f32(vf_f32_to_f16(x)) : vf_bf16_to_f32(vf_f32_to_bf16(x));
}

/* Checks every value first, so that a refused weight is left untouched. */
static vf_status round_through(vf_dtype fmt, float *w, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(w[i]))
            return vf_error(VF_ERR_NONFINITE, "%s at element %lld", isnan(w[i]) ? "NaN" : "infinity",
                            (long long)i);
        if (isinf(through(fmt, w[i])))
            return vf_error(VF_ERR_INVALID_ARG, "element %lld: %g is past the range of %s", (long long)i,
                            (double)w[i], vf_dtype_name(fmt));
    }
    for (int64_t i = 0; i < n; i++)
        w[i] = through(fmt, w[i]);
    return VF_OK;
}

vf_status vf_quant_roundtrip(vf_dtype fmt, float *w, int ndim, const int64_t *shape)
{
    if (!w || !shape || ndim < 1)
        return vf_error(VF_ERR_INVALID_ARG, "quantize on load: no weight or shape");
    int64_t rows = shape[0], cols = 1;
    for (int d = 1; d < ndim; d++)
        cols *= shape[d];
    if (fmt == VF_DTYPE_F32)
        return VF_OK;
    if (fmt == VF_DTYPE_F16 || fmt == VF_DTYPE_BF16)
        return round_through(fmt, w, rows * cols);
    if (!vf_quant_is_packed(fmt))
        return vf_error(VF_ERR_INVALID_ARG, "quantize on load: %s is not a storage format", vf_dtype_name(fmt));
    if (!vf_quant_can(fmt, ndim, shape))
        return VF_OK;
    size_t bytes = vf_quant_packed_bytes(fmt, rows, cols);
    void *packed = vf_malloc(bytes);
    if (!packed)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "quantize on load (%s, %zu bytes)", vf_dtype_name(fmt), bytes);
    vf_status st = vf_quantize(fmt, w, rows, cols, packed);
    if (st == VF_OK)
        st = vf_dequantize(fmt, packed, rows, cols, w);
    vf_free(packed);
    return st;
}
