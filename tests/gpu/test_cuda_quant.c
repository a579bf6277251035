/* GPU dequantization (vf_be_dequant on the CUDA backend) against the CPU's
 * vf_dequantize (src/core/quant.h), every format, F16 and BF16 outputs.
 *
 * Each check quantizes random weights (with an outlier per row) on the host,
 * copies the packed bytes to the GPU through the copy stream as the residency
 * manager will, dequantizes there and compares with the host's dequantized
 * values rounded once to the compute dtype, in the backend's filter layout
 * (OHWI for KxK convolutions). The GPU does the same single fp32 operation
 * per value, so the results must be identical: the check passes only at max
 * abs error 0, and prints max abs and max rel error either way. Shapes cover
 * each kernel: linear weights and 1x1 convs (rows), KxK convs with C a
 * multiple of 32 (the OHWI tile), and the generic one (K not a multiple of
 * 32, C = 4 as SD's conv_in, a 9x9 kernel, unaligned source and destination).
 *
 * --bench (or VF_QUANT_BENCH=1) times SDXL-sized weights: median of 20 calls,
 * as GB/s of packed bytes read plus compute-dtype bytes written.
 *
 * Exit 77 (skipped) when the CUDA backend is unavailable.
 */
#include "backend/backend.h"
#include "core/dtype.h"
#include "core/quant.h"
#include "vramfit.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static vf_backend *G;
static vf_dtype DT;
static int n_fail, n_pass;
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static double urand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return ((rng >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static float nrand(void) { return (float)(sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand())); }

static void must(vf_status st, const char *what)
{
    if (st != VF_OK) {
        fprintf(stderr, "FATAL %s: %s\n", what, vf_last_error());
        exit(1);
    }
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of host memory\n");
        exit(1);
    }
    return p;
}

/* Weights (OC, C, KH, KW): normal * 0.02, one outlier per row. */
static float *weights(int OC, int64_t K)
{
    float *w = xmalloc((size_t)OC * K * sizeof *w);
    for (int64_t i = 0; i < OC * K; i++)
        w[i] = 0.02f * nrand();
    for (int r = 0; r < OC; r++)
        w[r * K + (int64_t)(urand() * K)] = 0.3f * (urand() < 0.5 ? -1 : 1);
    return w;
}

/* The packed bytes on the device at byte offset off; *buf to free. */
static const void *to_device(const void *packed, size_t bytes, size_t off, vf_dbuf **buf)
{
    must(vf_be_alloc(G, (bytes + off) / 2 + 16, buf), "alloc packed");
    char *dst = (char *)*buf + off;
    vf_bevent *ev = NULL;
    must(vf_be_event_create(G, &ev), "event");
    must(vf_be_h2d_async(G, (vf_dbuf *)dst, packed, bytes), "h2d_async");
    must(vf_be_record(G, ev, VF_STREAM_COPY), "record");
    must(vf_be_wait(G, VF_STREAM_COMPUTE, ev), "wait");
    must(vf_be_sync(G), "sync");
    vf_be_event_destroy(G, ev);
    return dst;
}

/* host: the CPU's values in OIHW; want: rounded to DT in the filter layout. */
static float *expected(const float *host, int OC, int C, int KH, int KW)
{
    size_t n = (size_t)OC * C * KH * KW;
    float *want = xmalloc(n * sizeof *want);
    if (KH * KW > 1)
        vf_conv_weight_to_ohwi(want, host, sizeof(float), OC, C, KH, KW);
    else
        memcpy(want, host, n * sizeof *want);
    uint16_t *t = xmalloc(n * 2);
    vf_convert_from_f32(t, DT, want, n);
    vf_convert_to_f32(want, t, DT, n);
    free(t);
    return want;
}

static void check(vf_dtype fmt, int OC, int C, int KH, int KW, size_t src_off, size_t dst_off)
{
    int64_t K = (int64_t)C * KH * KW;
    size_t n = (size_t)OC * K, bytes = vf_quant_packed_bytes(fmt, OC, K);
    float *w = weights(OC, K), *host = xmalloc(n * sizeof *host), *got = xmalloc(n * sizeof *got);
    void *packed = xmalloc(bytes);
    must(vf_quantize(fmt, w, OC, K, packed), "quantize");
    must(vf_dequantize(fmt, packed, OC, K, host), "dequantize");
    float *want = expected(host, OC, C, KH, KW);
    vf_dbuf *buf = NULL, *out = NULL;
    const void *src = to_device(packed, bytes, src_off, &buf);
    must(vf_be_alloc(G, n + 8, &out), "alloc out");
    vf_dbuf *dst = vf_be_at(G, out, dst_off);
    vf_status st = vf_be_dequant(G, dst, src, fmt, OC, C, KH, KW);
    if (st == VF_OK)
        st = vf_be_download(G, got, dst, n);
    double ma = 0, mr = 0;
    size_t worst = 0;
    for (size_t i = 0; st == VF_OK && i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (d > ma || d != d) {
            ma = d != d ? INFINITY : d;
            worst = i;
        }
        mr = fabs(want[i]) > mr ? fabs(want[i]) : mr;
    }
    int ok = st == VF_OK && ma == 0;
    printf("%s %-4s %-7s (%d,%d,%d,%d)%s%s: max abs err %.3g, max rel err %.3g%s\n", ok ? "ok  " : "FAIL",
           vf_dtype_name(DT), vf_dtype_name(fmt), OC, C, KH, KW, src_off ? " src+2" : "", dst_off ? " dst+1" : "", ma,
           mr > 0 ? ma / mr : ma, st != VF_OK ? vf_last_error() : "");
    if (!ok && st == VF_OK)
        printf("     first worst at %zu: got %.8g want %.8g\n", worst, got[worst], want[worst]);
    ok ? n_pass++ : n_fail++;
    vf_be_free(G, out);
    vf_be_free(G, buf);
    free(w);
    free(host);
    free(got);
    free(want);
    free(packed);
}

static void run_checks(void)
{
    static const vf_dtype fmts[] = {VF_DTYPE_F8_E4M3, VF_DTYPE_Q8, VF_DTYPE_Q4};
    static const int shapes[][4] = {
        {320, 1280, 1, 1},  /* linear: the rows kernel                    */
        {77, 768, 1, 1},    /* rows not a multiple of anything            */
        {64, 32, 1, 1},     /* a 1x1 conv                                 */
        {640, 320, 3, 3},   /* KxK conv, C % 128 == 0: OHWI tile of 64    */
        {96, 96, 3, 3},     /* tile of 32                                 */
        {32, 128, 5, 5},    /* tile of 128 over 25 taps                   */
        {320, 4, 3, 3},     /* conv_in: C = 4 -> generic                  */
        {5, 48, 3, 3},      /* C % 32 != 0 -> generic                     */
        {3, 37, 1, 1},      /* K padded -> generic                        */
        {8, 64, 9, 9},      /* 81 taps: tile does not fit -> generic      */
    };
    for (size_t f = 0; f < sizeof fmts / sizeof fmts[0]; f++) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            const int *d = shapes[s];
            int64_t sh[4] = {d[0], d[1], d[2], d[3]};
            if (!vf_quant_can(fmts[f], 4, sh)) {
                printf("skip %-4s %-7s (%d,%d,%d,%d): not stored in this format\n", vf_dtype_name(DT),
                       vf_dtype_name(fmts[f]), d[0], d[1], d[2], d[3]);
                continue;
            }
            check(fmts[f], d[0], d[1], d[2], d[3], 0, 0);
        }
        check(fmts[f], 320, 1280, 1, 1, 2, 0); /* unaligned source */
        check(fmts[f], 640, 320, 3, 3, 0, 1);  /* unaligned destination */
        check(fmts[f], 640, 320, 3, 3, 2, 1);
    }
    /* the wrapper refuses what is not a packed format */
    vf_dbuf *b = NULL;
    must(vf_be_alloc(G, 64, &b), "alloc");
    vf_status st = vf_be_dequant(G, b, vf_be_at(G, b, 32), VF_DTYPE_F16, 1, 32, 1, 1);
    printf("%s non-packed format refused: %s\n", st == VF_ERR_INVALID_ARG ? "ok  " : "FAIL", vf_last_error());
    st == VF_ERR_INVALID_ARG ? n_pass++ : n_fail++;
    vf_be_free(G, b);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

static void bench(vf_dtype fmt, int OC, int C, int KH, int KW, const char *what)
{
    int64_t K = (int64_t)C * KH * KW;
    size_t n = (size_t)OC * K, bytes = vf_quant_packed_bytes(fmt, OC, K);
    float *w = weights(OC, K);
    void *packed = xmalloc(bytes);
    must(vf_quantize(fmt, w, OC, K, packed), "quantize");
    vf_dbuf *buf = NULL, *out = NULL;
    const void *src = to_device(packed, bytes, 0, &buf);
    must(vf_be_alloc(G, n, &out), "alloc out");
    vf_bevent *e0 = NULL, *e1 = NULL;
    must(vf_be_event_create(G, &e0), "event");
    must(vf_be_event_create(G, &e1), "event");
    float t[20];
    for (int i = -3; i < 20; i++) {
        must(vf_be_record(G, e0, VF_STREAM_COMPUTE), "record");
        must(vf_be_dequant(G, out, src, fmt, OC, C, KH, KW), "dequant");
        must(vf_be_record(G, e1, VF_STREAM_COMPUTE), "record");
        must(vf_be_event_sync(G, e1), "sync");
        if (i >= 0)
            must(vf_be_elapsed_ms(G, e0, e1, &t[i]), "elapsed");
    }
    qsort(t, 20, sizeof t[0], cmp_float);
    double ms = (t[9] + t[10]) / 2, moved = (double)bytes + (double)n * vf_be_esize(G);
    printf("bench %-4s %-7s %-28s (%d,%d,%d,%d): %.3f ms, %.0f GB/s (%.1f MB in, %.1f MB out)\n", vf_dtype_name(DT),
           vf_dtype_name(fmt), what, OC, C, KH, KW, ms, moved / (ms * 1e-3) / 1e9, bytes / 1e6,
           n * vf_be_esize(G) / 1e6);
    vf_be_event_destroy(G, e0);
    vf_be_event_destroy(G, e1);
    vf_be_free(G, out);
    vf_be_free(G, buf);
    free(w);
    free(packed);
}

static void run_benches(void)
{
    static const vf_dtype fmts[] = {VF_DTYPE_F8_E4M3, VF_DTYPE_Q8, VF_DTYPE_Q4};
    for (size_t f = 0; f < 3; f++) {
        bench(fmts[f], 1280, 1280, 3, 3, "SDXL resnet conv (OHWI)");
        bench(fmts[f], 10240, 1280, 1, 1, "SDXL GEGLU proj (rows)");
        bench(fmts[f], 1280, 5120, 1, 1, "SDXL ff out (rows)");
        bench(fmts[f], 320, 4, 3, 3, "conv_in (generic)");
    }
}

int main(int argc, char **argv)
{
    int do_bench = (argc > 1 && strcmp(argv[1], "--bench") == 0) || getenv("VF_QUANT_BENCH");
    static const vf_dtype types[2] = {VF_DTYPE_F16, VF_DTYPE_BF16};
    for (int ti = 0; ti < 2; ti++) {
        vf_backend_options o;
        vf_backend_options_init(&o);
        o.kind = VF_BACKEND_CUDA;
        o.dtype = DT = types[ti];
        if (vf_backend_create(&o, &G) != VF_OK) {
            printf("skipped: %s\n", vf_last_error());
            return 77;
        }
        if (ti == 0) {
            const vf_backend_info *info = vf_be_info(G);
            printf("device: %s (cc %d.%d, %d SMs)\n", info->device, info->cc_major, info->cc_minor,
                   info->multiprocessors);
        }
        run_checks();
        if (do_bench)
            run_benches();
        vf_backend_free(G);
        G = NULL;
    }
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
