/* Quantized weights: the formats (exact packed sizes, known codes, rounding,
 * saturation, zeros, non-finite input, odd shapes, row slices), the UNet
 * output error of every storage dtype on the reference fixtures (float32 CPU,
 * one UNet call as test_unet.c makes it), checkpoints holding quantized
 * tensors (written by vf_quantize_checkpoint, read back through every loader
 * path) and allocation failures over quantizing and dequantizing.
 */
#include "backend/backend.h"
#include "core/alloc.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/quant.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "mem/residency.h"
#include "model/blocks.h"
#include "model/unet.h"
#include "pipeline/quantize.h"
#include "test.h"
#include "io_convs.h"
#include "test_tmp.h"

#include <math.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------ */

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

static float uniform(void)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g_rng >> 40) + 0.5) / 16777216.0f;
}

static float gauss(void)
{
    float u = uniform(), v = uniform();
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

static float *random_matrix(int64_t rows, int64_t cols, float sigma)
{
    float *x = malloc((size_t)(rows * cols) * sizeof *x);
    for (int64_t i = 0; i < rows * cols; i++)
        x[i] = sigma * gauss();
    return x;
}

/* Quantizes and dequantizes x; returns the dequantized copy (NULL on failure). */
static float *roundtrip(vf_dtype fmt, const float *x, int64_t rows, int64_t cols)
{
    size_t bytes = vf_quant_packed_bytes(fmt, rows, cols);
    CHECK(bytes > 0);
    void *p = malloc(bytes ? bytes : 1);
    float *y = malloc((size_t)(rows * cols) * sizeof *y);
    vf_status st = vf_quantize(fmt, x, rows, cols, p);
    CHECK_OK(st);
    if (st == VF_OK)
        CHECK_OK(st = vf_dequantize(fmt, p, rows, cols, y));
    free(p);
    if (st != VF_OK) {
        free(y);
        return NULL;
    }
    return y;
}

static const vf_dtype g_packed[] = {VF_DTYPE_F8_E4M3, VF_DTYPE_Q8, VF_DTYPE_Q4};

/* ---- formats ------------------------------------------------------------------ */

static void test_packed_sizes(void)
{
    /* SDXL conv (1280, 1280, 3, 3): K = 11520 */
    CHECK(vf_quant_packed_bytes(VF_DTYPE_Q8, 1280, 11520) == 1280u * (11520 + 360 * 2));
    CHECK(vf_quant_packed_bytes(VF_DTYPE_Q4, 1280, 11520) == 1280u * (5760 + 360 * 4));
    CHECK(vf_quant_packed_bytes(VF_DTYPE_F8_E4M3, 1280, 11520) == 1280u * (11520 + 4));
    CHECK(vf_quant_packed_bytes(VF_DTYPE_F16, 1280, 11520) == 1280u * 11520 * 2);
    CHECK(vf_quant_packed_bytes(VF_DTYPE_F32, 3, 5) == 60);
    /* padding: K = 36 (conv_in) -> 64 for the blocks, 48 for F8 */
    CHECK(vf_quant_packed_bytes(VF_DTYPE_Q8, 320, 36) == 320u * (64 + 4));
    CHECK(vf_quant_packed_bytes(VF_DTYPE_Q4, 320, 36) == 320u * (32 + 8));
    CHECK(vf_quant_packed_bytes(VF_DTYPE_F8_E4M3, 320, 36) == 320u * (48 + 4));
    /* invalid */
    CHECK(vf_quant_packed_bytes(VF_DTYPE_Q8, 0, 32) == 0);
    CHECK(vf_quant_packed_bytes(VF_DTYPE_Q8, 4, 0) == 0);
    CHECK(vf_quant_packed_bytes(VF_DTYPE_I8, 4, 32) == 0);
    CHECK(vf_quant_packed_bytes(VF_DTYPE_Q8, INT64_MAX / 2, 1 << 20) == 0);
    size_t dr, sr;
    CHECK(vf_quant_layout(VF_DTYPE_Q4, 40, &dr, &sr) == 0 && dr == 32 && sr == 8);
    CHECK(vf_quant_layout(VF_DTYPE_Q8, 40, &dr, &sr) == 0 && dr == 64 && sr == 4);
    CHECK(vf_quant_layout(VF_DTYPE_F8_E4M3, 40, &dr, &sr) == 0 && dr == 48 && sr == 4);
    CHECK(vf_quant_layout(VF_DTYPE_BOOL, 40, &dr, &sr) != 0);
    /* which weights are quantized */
    int64_t conv[4] = {320, 4, 3, 3}, lin[2] = {1280, 320}, bias[1] = {1280}, k16[2] = {32, 16};
    int64_t k4[4] = {4, 4, 1, 1}, zero[2] = {0, 32}, wide[2] = {2, (int64_t)1 << 31};
    for (size_t i = 0; i < 3; i++) {
        vf_dtype f = g_packed[i];
        CHECK(vf_quant_can(f, 4, conv) && vf_quant_can(f, 2, lin));
        CHECK(!vf_quant_can(f, 1, bias) && !vf_quant_can(f, 4, k4) && !vf_quant_can(f, 2, zero));
        CHECK(!vf_quant_can(f, 2, wide) && !vf_quant_can(f, 0, lin) && !vf_quant_can(f, 2, NULL));
    }
    /* K = 16: Q8 would pad to a 32-block and grow (34 bytes a row > 32); Q4 and F8 still save */
    CHECK(!vf_quant_can(VF_DTYPE_Q8, 2, k16) && vf_quant_can(VF_DTYPE_Q4, 2, k16));
    CHECK(vf_quant_can(VF_DTYPE_F8_E4M3, 2, k16));
    CHECK(vf_quant_can(VF_DTYPE_F16, 1, bias) && !vf_quant_can(VF_DTYPE_I8, 2, lin));
    CHECK(vf_quant_is_packed(VF_DTYPE_Q4) && !vf_quant_is_packed(VF_DTYPE_F16));
}

static void test_f8_codes(void)
{
    static const struct {
        float x;
        uint8_t code;
    } known[] = {
        {0.0f, 0x00},       {-0.0f, 0x80},        {1.0f, 0x38},         {-2.0f, 0xc0},
        {448.0f, 0x7e},     {-448.0f, 0xfe},      {500.0f, 0x7e},       {1e30f, 0x7e},
        {464.0f, 0x7e},     {0.001953125f, 0x01}, {0.0009765625f, 0x00}, {0.0029296875f, 0x02},
        {0.015625f, 0x08},  {1.0625f, 0x38},      {1.1875f, 0x3a},      {1.07f, 0x39},
        {0.013671875f, 0x07}, {240.0f, 0x77},     {256.0f, 0x78},       {-0.2f, 0xa5},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        CHECK_MSG(vf_f32_to_f8e4m3(known[i].x) == known[i].code, "%g -> 0x%02x, want 0x%02x",
                  (double)known[i].x, vf_f32_to_f8e4m3(known[i].x), known[i].code);
    CHECK(vf_f32_to_f8e4m3(NAN) == 0x7f);
    /* every finite code is a fixed point of decode -> encode */
    int bad = 0;
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7f) == 0x7f)
            continue;
        bad += vf_f32_to_f8e4m3(vf_f8e4m3_to_f32((uint8_t)c)) != c;
    }
    CHECK(bad == 0);
    /* round to nearest: encode(x) is never further from x than a neighbour code */
    for (int i = 0; i < 20000; i++) {
        float x = (uniform() - 0.5f) * 900.0f * (i % 3 == 0 ? 0.001f : 1.0f);
        float y = vf_f8e4m3_to_f32(vf_f32_to_f8e4m3(x));
        uint8_t c = vf_f32_to_f8e4m3(x);
        for (int d = -1; d <= 1; d += 2) {
            int n = (c & 0x7f) + d;
            if (n < 0 || n > 0x7e)
                continue;
            float z = vf_f8e4m3_to_f32((uint8_t)((c & 0x80) | n));
            if (fabsf(x - z) < fabsf(x - y))
                bad++;
        }
    }
    CHECK(bad == 0);
}

/* Known values come back exactly: integers in a block whose amax is 127 (Q8),
 * 16 levels on a 0..15 ramp (Q4), and e4m3 values in a row whose amax is 448. */
static void test_known_values(void)
{
    float x[2][32], y[2][32];
    uint8_t buf[256];
    for (int k = 0; k < 32; k++) {
        x[0][k] = k == 31 ? 127.0f : (float)(k * 8 - 127);
        x[1][k] = (float)(k % 16) * 0.5f - 2.0f;
    }
    CHECK_OK(vf_quantize(VF_DTYPE_Q8, &x[0][0], 2, 32, buf));
    CHECK_OK(vf_dequantize(VF_DTYPE_Q8, buf, 2, 32, &y[0][0]));
    CHECK(memcmp(x[0], y[0], sizeof x[0]) == 0);
    CHECK((int8_t)buf[0] == -127 && (int8_t)buf[31] == 127);
    uint16_t h;
    memcpy(&h, buf + 64, 2);
    CHECK(vf_f16_to_f32(h) == 1.0f);
    CHECK_OK(vf_quantize(VF_DTYPE_Q4, &x[1][0], 1, 32, buf));
    CHECK_OK(vf_dequantize(VF_DTYPE_Q4, buf, 1, 32, &y[1][0]));
    CHECK(memcmp(x[1], y[1], sizeof x[1]) == 0);
    CHECK(buf[0] == 0x10 && buf[7] == 0xfe); /* nibbles 0,1 and 14,15 */
    memcpy(&h, buf + 16, 2);
    CHECK(vf_f16_to_f32(h) == 0.5f);
    memcpy(&h, buf + 18, 2);
    CHECK(vf_f16_to_f32(h) == -2.0f);
    float f8[16] = {448, -448, 1, -1, 0.5f, 3.25f, 0.001953125f, 0, 240, -13, 7, 0.125f, 2, 4, 8, 16};
    float g8[16];
    CHECK_OK(vf_quantize(VF_DTYPE_F8_E4M3, f8, 1, 16, buf));
    CHECK_OK(vf_dequantize(VF_DTYPE_F8_E4M3, buf, 1, 16, g8));
    CHECK(memcmp(f8, g8, sizeof f8) == 0);
    float s;
    memcpy(&s, buf + 16, 4);
    CHECK(s == 1.0f && buf[0] == 0x7e && buf[1] == 0xfe);
}

static void test_zeros_and_saturation(void)
{
    float z[3 * 40] = {0}, y[3 * 40];
    uint8_t buf[1024];
    for (size_t i = 0; i < 3; i++) {
        memset(buf, 0xAB, sizeof buf);
        for (int k = 0; k < 120; k++)
            y[k] = 1.0f;
        CHECK_OK(vf_quantize(g_packed[i], z, 3, 40, buf));
        size_t n = vf_quant_packed_bytes(g_packed[i], 3, 40);
        int nonzero = 0;
        for (size_t b = 0; b < n; b++)
            nonzero += buf[b] != 0;
        CHECK_MSG(nonzero == 0, "%s: zeros pack to %d nonzero bytes", vf_dtype_name(g_packed[i]), nonzero);
        CHECK_OK(vf_dequantize(g_packed[i], buf, 3, 40, y));
        for (int k = 0; k < 120; k++)
            CHECK(y[k] == 0.0f);
    }
    /* Q8: amax/127 rounded down to F16 puts amax just past 127 steps: clamped,
     * never -128; the largest value still comes back within half a step. */
    float x[32];
    for (int k = 0; k < 32; k++)
        x[k] = (k & 1 ? -1.0f : 1.0f) * (k == 5 ? 100.37f : 0.37f * (float)k);
    CHECK_OK(vf_quantize(VF_DTYPE_Q8, x, 1, 32, buf));
    int minus128 = 0;
    for (int k = 0; k < 32; k++)
        minus128 += (int8_t)buf[k] == -128;
    CHECK(minus128 == 0 && ((int8_t)buf[5] == -127));
    CHECK_OK(vf_dequantize(VF_DTYPE_Q8, buf, 1, 32, y));
    uint16_t h;
    memcpy(&h, buf + 32, 2);
    CHECK(fabsf(y[5] - x[5]) <= 0.5f * vf_f16_to_f32(h) + 1e-3f);
    /* F8: the row's amax maps to 448 exactly */
    for (int k = 0; k < 32; k++)
        x[k] = 3.0f * gauss();
    x[7] = -50.0f;
    CHECK_OK(vf_quantize(VF_DTYPE_F8_E4M3, x, 1, 32, buf));
    CHECK(buf[7] == 0xfe);
    CHECK_OK(vf_dequantize(VF_DTYPE_F8_E4M3, buf, 1, 32, y));
    CHECK(fabsf(y[7] + 50.0f) < 1e-5f);
}

static void test_nonfinite(void)
{
    float x[2 * 64];
    uint8_t buf[1024];
    for (int k = 0; k < 128; k++)
        x[k] = 0.1f * (float)k;
    static const vf_dtype all[] = {VF_DTYPE_F8_E4M3, VF_DTYPE_Q8, VF_DTYPE_Q4, VF_DTYPE_F16, VF_DTYPE_BF16,
                                   VF_DTYPE_F32};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        x[64 + 37] = NAN;
        CHECK(vf_quantize(all[i], x, 2, 64, buf) == VF_ERR_NONFINITE);
        CHECK_MSG(strstr(vf_last_error(), "NaN at row 1, column 37") != NULL, "%s", vf_last_error());
        x[64 + 37] = -INFINITY;
        CHECK(vf_quantize(all[i], x, 2, 64, buf) == VF_ERR_NONFINITE);
        CHECK(strstr(vf_last_error(), "infinity") != NULL);
        x[64 + 37] = 1.0f;
    }
    /* the in-place roundtrip leaves a refused weight untouched */
    int64_t shape[2] = {2, 64};
    x[3] = NAN;
    CHECK(vf_quant_roundtrip(VF_DTYPE_Q8, x, 2, shape) == VF_ERR_NONFINITE);
    CHECK(vf_quant_roundtrip(VF_DTYPE_F16, x, 2, shape) == VF_ERR_NONFINITE);
    CHECK(isnan(x[3]) && x[4] == 0.4f);
    x[3] = 1e6f;
    CHECK(vf_quant_roundtrip(VF_DTYPE_F16, x, 2, shape) == VF_ERR_INVALID_ARG);
    CHECK(x[3] == 1e6f && x[4] == 0.4f && strstr(vf_last_error(), "F16"));
    CHECK(vf_quantize(VF_DTYPE_F16, x, 2, 64, buf) == VF_ERR_INVALID_ARG);
    CHECK_OK(vf_quantize(VF_DTYPE_BF16, x, 2, 64, buf));
    /* a Q8 scale past F16: the magnitude is named */
    x[3] = 1e7f;
    CHECK(vf_quantize(VF_DTYPE_Q8, x, 2, 64, buf) == VF_ERR_INVALID_ARG);
    CHECK_MSG(strstr(vf_last_error(), "row 0") && strstr(vf_last_error(), "column 0"), "%s", vf_last_error());
    /* bad arguments */
    CHECK(vf_quantize(VF_DTYPE_I8, x, 2, 64, buf) == VF_ERR_INVALID_ARG);
    CHECK(vf_quantize(VF_DTYPE_Q8, NULL, 2, 64, buf) == VF_ERR_INVALID_ARG);
    CHECK(vf_dequantize(VF_DTYPE_Q8, buf, 0, 64, x) == VF_ERR_INVALID_ARG);
}

/* Random weights in odd shapes: every block within its format's bound, the
 * padding of partial blocks invisible, and the typical error reported. The
 * bound of a block: its first guess (scale amax/127, or the min..max range in
 * 15 steps) puts every value within half a step, plus the F16 rounding of the
 * scale; the least-squares refits are kept only when they lower the block's
 * squared error, so the block's error is at most n (step/2)^2 and no value is
 * off by more than sqrt(n) step/2. F8: half an e4m3 ulp, 1/16 of the value. */
static int block_ok(vf_dtype f, const float *x, const float *y, int64_t n)
{
    float amax = 0, mn = INFINITY, mx = -INFINITY;
    double sse = 0;
    for (int64_t j = 0; j < n; j++) {
        amax = fmaxf(amax, fabsf(x[j]));
        mn = fminf(mn, x[j]);
        mx = fmaxf(mx, x[j]);
        sse += (double)(x[j] - y[j]) * (x[j] - y[j]);
    }
    double half = f == VF_DTYPE_Q8 ? amax / 127.0 * 0.5 * 1.002 : (mx - mn) / 15.0 * 0.5 * 1.01 + fabsf(mn) * 0.0005;
    double worst = 0;
    for (int64_t j = 0; j < n; j++)
        worst = fmax(worst, fabs((double)x[j] - y[j]));
    return sse <= (double)n * half * half + 1e-18 && worst <= sqrt((double)n) * half + 1e-9;
}

static void test_error_bounds(void)
{
    static const int64_t shapes[][2] = {{1, 1}, {3, 37}, {5, 32}, {7, 100}, {64, 1152}, {2, 4097}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t R = shapes[s][0], K = shapes[s][1];
        float *x = random_matrix(R, K, 0.05f);
        x[0] = 0.3f; /* one outlier per tensor */
        for (size_t i = 0; i < 3; i++) {
            vf_dtype f = g_packed[i];
            float *y = roundtrip(f, x, R, K);
            if (!y)
                continue;
            int bad = 0;
            double se = 0, sx = 0;
            for (int64_t r = 0; r < R; r++) {
                const float *xr = x + r * K, *yr = y + r * K;
                float amax = 0;
                for (int64_t k = 0; k < K; k++) {
                    amax = fmaxf(amax, fabsf(xr[k]));
                    se += (double)(xr[k] - yr[k]) * (xr[k] - yr[k]);
                    sx += (double)xr[k] * xr[k];
                }
                for (int64_t k0 = 0; k0 < K && f != VF_DTYPE_F8_E4M3; k0 += 32)
                    bad += !block_ok(f, xr + k0, yr + k0, K - k0 < 32 ? K - k0 : 32);
                for (int64_t k = 0; k < K && f == VF_DTYPE_F8_E4M3; k++)
                    bad += fabsf(xr[k] - yr[k]) > fmaxf(fabsf(xr[k]) / 16.0f, amax / 448.0f * 0.000977f) * 1.0001f;
            }
            CHECK_MSG(bad == 0, "%s %lldx%lld: %d blocks past the bound", vf_dtype_name(f), (long long)R,
                      (long long)K, bad);
            if (R * K >= 4096)
                printf("%s %lldx%lld gaussian: rms rel error %.4f\n", vf_dtype_name(f), (long long)R,
                       (long long)K, sqrt(se / sx));
            /* Q8's scale search: amax/127 alone gives 0.53% on Gaussian blocks, the search 0.48% */
            if (R * K >= 4096 && f == VF_DTYPE_Q8)
                CHECK_MSG(sqrt(se / sx) <= 0.0050, "Q8 %lldx%lld: rms rel error %.4f > 0.0050", (long long)R,
                          (long long)K, sqrt(se / sx));
            free(y);
        }
        free(x);
    }
}

/* A row slice of a packed tensor, cut with vf_quant_layout, is the packed
 * form of those rows (what a view of a fused q/k/v tensor reads). */
static void test_row_slices(void)
{
    int64_t R = 9, K = 72;
    float *x = random_matrix(R, K, 1.0f);
    for (size_t i = 0; i < 3; i++) {
        vf_dtype f = g_packed[i];
        size_t all = vf_quant_packed_bytes(f, R, K), part = vf_quant_packed_bytes(f, 3, K), dr, sr;
        CHECK(all == 3 * part);
        CHECK(vf_quant_layout(f, K, &dr, &sr) == 0);
        uint8_t *a = malloc(all), *b = malloc(part), *cut = malloc(part);
        CHECK_OK(vf_quantize(f, x, R, K, a));
        CHECK_OK(vf_quantize(f, x + 3 * K, 3, K, b));
        memcpy(cut, a + 3 * dr, 3 * dr);
        memcpy(cut + 3 * dr, a + R * dr + 3 * sr, 3 * sr);
        CHECK(memcmp(cut, b, part) == 0);
        free(a);
        free(b);
        free(cut);
    }
    free(x);
}

static void test_roundtrip_in_place(void)
{
    int64_t conv[4] = {8, 4, 3, 3}, bias[1] = {8};
    float *w = random_matrix(8, 36, 0.1f);
    float *want = roundtrip(VF_DTYPE_Q8, w, 8, 36);
    float *b = random_matrix(1, 8, 0.1f), b0[8];
    memcpy(b0, b, sizeof b0);
    CHECK_OK(vf_quant_roundtrip(VF_DTYPE_Q8, w, 4, conv));
    CHECK(want && memcmp(w, want, 8 * 36 * sizeof *w) == 0);
    CHECK_OK(vf_quant_roundtrip(VF_DTYPE_Q8, b, 1, bias)); /* 1-D: untouched */
    CHECK(memcmp(b, b0, sizeof b0) == 0);
    CHECK_OK(vf_quant_roundtrip(VF_DTYPE_F32, b, 1, bias));
    CHECK(memcmp(b, b0, sizeof b0) == 0);
    CHECK_OK(vf_quant_roundtrip(VF_DTYPE_BF16, b, 1, bias));
    for (int i = 0; i < 8; i++)
        CHECK(b[i] == vf_bf16_to_f32(vf_f32_to_bf16(b0[i])));
    CHECK(vf_quant_roundtrip(VF_DTYPE_I8, b, 1, bias) == VF_ERR_INVALID_ARG);
    /* the packed copy is the one allocation: failing it changes nothing */
    memcpy(w, want, 8 * 36 * sizeof *w);
    vf_fault_alloc_fail_at(1);
    vf_status st = vf_quant_roundtrip(VF_DTYPE_Q4, w, 4, conv);
    vf_fault_alloc_fail_at(0);
    CHECK(st == VF_ERR_NO_MEMORY && memcmp(w, want, 8 * 36 * sizeof *w) == 0);
    free(w);
    free(want);
    free(b);
}

/* ---- threads ------------------------------------------------------------------------ */

static const vf_dtype g_all_out[] = {VF_DTYPE_F16, VF_DTYPE_BF16, VF_DTYPE_F8_E4M3, VF_DTYPE_Q8, VF_DTYPE_Q4,
                                     VF_DTYPE_F32};

/* Rows of very different scales (as a weight's channels are), a zero row and
 * an outlier, so that every row packs differently. */
static float *awkward_matrix(int64_t rows, int64_t cols)
{
    float *x = random_matrix(rows, cols, 1.0f);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < cols; k++)
            x[r * cols + k] = r == rows / 2 && rows > 2 ? 0.0f : x[r * cols + k] * ldexpf(1.0f, (int)(r % 9) - 6);
    x[rows * cols - 1] = 40.0f;
    return x;
}

/* vf_quantize with threads forced to n (0: automatic); dst pre-filled with
 * fill so that an unwritten byte shows. */
static uint8_t *quantize_with(int n, vf_dtype f, const float *x, int64_t R, int64_t K, int fill)
{
    size_t bytes = vf_quant_packed_bytes(f, R, K);
    uint8_t *p = malloc(bytes);
    memset(p, fill, bytes);
    vf_quant_set_threads(n);
    vf_status st = vf_quantize(f, x, R, K, p);
    vf_quant_set_threads(0);
    CHECK_MSG(st == VF_OK, "%s %lldx%lld, %d threads: %s", vf_dtype_name(f), (long long)R, (long long)K, n,
              vf_last_error());
    return p;
}

/* Any thread count gives one thread's bytes, for every format and for shapes
 * with fewer rows than threads, rows not a multiple of the chunks, and
 * partial blocks. */
static void test_threads_identical(void)
{
    static const int64_t shapes[][2] = {{1, 16}, {3, 40}, {1031, 16}, {1027, 40}, {3, 4101}, {1029, 4099}};
    static const int threads[] = {2, 3, 7, 64, 0};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t R = shapes[s][0], K = shapes[s][1];
        float *x = awkward_matrix(R, K);
        for (size_t f = 0; f < sizeof g_all_out / sizeof g_all_out[0]; f++) {
            vf_dtype fmt = g_all_out[f];
            size_t bytes = vf_quant_packed_bytes(fmt, R, K);
            uint8_t *one = quantize_with(1, fmt, x, R, K, 0xAB);
            for (size_t t = 0; t < sizeof threads / sizeof threads[0]; t++) {
                if (R * K > 100000 && threads[t] > 3 && fmt != VF_DTYPE_Q4)
                    continue; /* the big shape: a few counts suffice but Q4, the refit */
                uint8_t *many = quantize_with(threads[t], fmt, x, R, K, 0xCD);
                CHECK_MSG(memcmp(one, many, bytes) == 0, "%s %lldx%lld: %d threads differ from one",
                          vf_dtype_name(fmt), (long long)R, (long long)K, threads[t]);
                free(many);
            }
            free(one);
        }
        free(x);
    }
    /* automatic mode on the big shape does go parallel when the CPUs allow */
    printf("  automatic: %d threads for 1029 x 4099 on this machine\n", vf_quant_threads(1029, 4099));
}

/* The message (and status) of the lowest failing row, whichever thread
 * meets it first: the same text as one thread gives. */
static void expect_first_error(vf_dtype f, const float *x, int64_t R, int64_t K, int n, vf_status want,
                               const char *says)
{
    uint8_t *buf = malloc(vf_quant_packed_bytes(f, R, K));
    char single[512];
    vf_quant_set_threads(1);
    vf_status st1 = vf_quantize(f, x, R, K, buf);
    snprintf(single, sizeof single, "%s", vf_last_error());
    vf_quant_set_threads(n);
    vf_clear_error();
    vf_status stn = vf_quantize(f, x, R, K, buf);
    vf_quant_set_threads(0);
    CHECK_MSG(st1 == want && stn == want, "%s: %s / %s", vf_dtype_name(f), vf_status_str(st1), vf_status_str(stn));
    CHECK_MSG(strstr(single, says) != NULL, "%s: one thread says '%s'", vf_dtype_name(f), single);
    CHECK_MSG(strcmp(single, vf_last_error()) == 0, "%s, %d threads: '%s', one thread: '%s'", vf_dtype_name(f), n,
              vf_last_error(), single);
    free(buf);
}

static void test_threads_first_error(void)
{
    int64_t R = 1000, K = 64; /* 4 threads: chunks of 250 rows */
    float *x = random_matrix(R, K, 0.1f);
    for (size_t f = 0; f < sizeof g_all_out / sizeof g_all_out[0]; f++) {
        x[900 * K + 5] = NAN;       /* chunk 3, met first when chunk 0 is slow */
        x[10 * K + 7] = -INFINITY;  /* chunk 0 */
        expect_first_error(g_all_out[f], x, R, K, 4, VF_ERR_NONFINITE, "infinity at row 10, column 7");
        x[10 * K + 7] = 0.0f;
        x[250 * K + 3] = NAN;       /* first row of chunk 1 */
        x[249 * K + 60] = INFINITY; /* last row of chunk 0 */
        expect_first_error(g_all_out[f], x, R, K, 4, VF_ERR_NONFINITE, "infinity at row 249, column 60");
        x[249 * K + 60] = 0.0f;
        expect_first_error(g_all_out[f], x, R, K, 4, VF_ERR_NONFINITE, "NaN at row 250, column 3");
        expect_first_error(g_all_out[f], x, R, K, 64, VF_ERR_NONFINITE, "NaN at row 250, column 3");
        x[250 * K + 3] = 0.0f;
        x[900 * K + 5] = 0.0f;
    }
    /* a range error early (chunk 1) against a NaN late (chunk 3) */
    x[999 * K + 1] = NAN;
    x[260 * K + 40] = 1e7f;
    expect_first_error(VF_DTYPE_Q8, x, R, K, 4, VF_ERR_INVALID_ARG, "row 260: column 32: magnitude");
    expect_first_error(VF_DTYPE_Q4, x, R, K, 4, VF_ERR_INVALID_ARG, "row 260: column 32: values");
    expect_first_error(VF_DTYPE_F16, x, R, K, 4, VF_ERR_INVALID_ARG, "row 260: column 40: 1e+07 is past");
    expect_first_error(VF_DTYPE_BF16, x, R, K, 4, VF_ERR_NONFINITE, "NaN at row 999, column 1");
    free(x);
}

/* A thread that cannot start leaves its rows to the calling thread: the
 * same bytes, the same first error, nothing leaked. */
static void test_threads_spawn_failure(void)
{
    int64_t R = 301, K = 72;
    float *x = awkward_matrix(R, K);
    uint8_t *one = quantize_with(1, VF_DTYPE_Q4, x, R, K, 0xAB);
    size_t bytes = vf_quant_packed_bytes(VF_DTYPE_Q4, R, K);
    for (int k = 1; k <= 6; k++) {
        vf_quant_fault_spawn_at(k);
        uint8_t *many = quantize_with(6, VF_DTYPE_Q4, x, R, K, 0xCD);
        vf_quant_fault_spawn_at(0);
        CHECK_MSG(memcmp(one, many, bytes) == 0, "thread %d failing to start: bytes differ", k);
        free(many);
    }
    x[290 * K + 3] = NAN;
    x[120 * K + 9] = NAN;
    vf_quant_fault_spawn_at(2);
    expect_first_error(VF_DTYPE_Q4, x, R, K, 6, VF_ERR_NONFINITE, "NaN at row 120, column 9");
    vf_quant_fault_spawn_at(0);
    free(one);
    free(x);
}

/* How many threads: forced, from VF_QUANT_THREADS, automatic, and never for
 * small tensors unless forced. */
static void test_threads_count(void)
{
    const char *was = getenv("VF_QUANT_THREADS");
    char *saved = was ? strdup(was) : NULL;
    unsetenv("VF_QUANT_THREADS");
    int cpus = vf_quant_threads(1280, 11520);
    CHECK(cpus >= 1 && cpus <= VF_QUANT_AUTO_THREADS);
    CHECK(vf_quant_threads(100, 100) == 1 && vf_quant_threads(1, 1 << 22) == 1);
    setenv("VF_QUANT_THREADS", "3", 1);
    CHECK(vf_quant_threads(1280, 11520) == 3);
    CHECK(vf_quant_threads(4, 65535) == 1);       /* under VF_QUANT_PAR_MIN values */
    CHECK(vf_quant_threads(2, 1 << 17) == 2);     /* VF_QUANT_PAR_MIN values, 2 rows */
    setenv("VF_QUANT_THREADS", "8", 1);
    CHECK(vf_quant_threads(1024, 256) == 4);      /* at least VF_QUANT_PAR_MIN / 4 values a thread */
    CHECK(vf_quant_threads(5, 1 << 20) == 5);     /* no more threads than rows */
    setenv("VF_QUANT_THREADS", "1", 1);
    CHECK(vf_quant_threads(1280, 11520) == 1);
    setenv("VF_QUANT_THREADS", "1000", 1);
    CHECK(vf_quant_threads(1280, 11520) == VF_QUANT_MAX_THREADS);
    static const char *const invalid[] = {"", "0", "-2", "abc", "3x", " ", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        setenv("VF_QUANT_THREADS", invalid[i], 1);
        CHECK_MSG(vf_quant_threads(1280, 11520) == cpus, "VF_QUANT_THREADS='%s' is not ignored", invalid[i]);
    }
    vf_quant_set_threads(5);
    CHECK(vf_quant_threads(10, 16) == 5 && vf_quant_threads(3, 16) == 3 && vf_quant_threads(1, 16) == 1);
    vf_quant_set_threads(1000);
    CHECK(vf_quant_threads(1000, 16) == VF_QUANT_MAX_THREADS);
    vf_quant_set_threads(0);
    CHECK(vf_quant_threads(1280, 11520) == cpus);
    if (saved)
        setenv("VF_QUANT_THREADS", saved, 1);
    else
        unsetenv("VF_QUANT_THREADS");
    free(saved);
}

/* ---- checkpoints ------------------------------------------------------------------- */

static vf_status quantize_to(const char *in, const char *out, vf_dtype fmt, const char *config_dir)
{
    vf_quantize_options o;
    vf_quantize_options_init(&o);
    o.dtype = fmt;
    o.config_dir = config_dir;
    return vf_quantize_checkpoint(in, out, &o, NULL);
}

/* Every canonical tensor of the quantized checkpoint q against the original a:
 * packed exactly when the format takes its shape (and it is not read
 * transposed, nor an input or output convolution), nbytes the packed size,
 * the packed bytes those of quantizing the original, and read_f32 the
 * original's quantize-dequantize, bit for bit. *nkept counts the input and
 * output convolutions a packed format left as stored. */
static void compare_checkpoints(const vf_checkpoint *a, const vf_checkpoint *q, vf_dtype fmt, int *npacked,
                                int *nkept)
{
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        CHECK(vf_checkpoint_count(a, (vf_component)c) == vf_checkpoint_count(q, (vf_component)c));
        for (size_t i = 0; i < vf_checkpoint_count(a, (vf_component)c); i++) {
            const vf_ckpt_tensor *ta = vf_checkpoint_at(a, (vf_component)c, i);
            const vf_ckpt_tensor *tq = vf_checkpoint_find(q, (vf_component)c, ta->name);
            CHECK_MSG(tq != NULL, "%s missing", ta->name);
            if (!tq)
                continue;
            CHECK(vf_shape_eq(ta->shape, ta->ndim, tq->shape, tq->ndim));
            int64_t rows = ta->shape[0], cols = 1, n = vf_shape_numel(ta->shape, ta->ndim);
            for (int d = 1; d < ta->ndim; d++)
                cols *= ta->shape[d];
            int want_packed = vf_quant_is_packed(fmt) && !ta->transpose && vf_quant_can(fmt, ta->ndim, ta->shape) &&
                              !is_io_conv((vf_component)c, ta->name);
            *nkept += vf_quant_is_packed(fmt) && is_io_conv((vf_component)c, ta->name) && !tq->packed &&
                      tq->dtype == ta->dtype;
            CHECK_MSG(tq->packed == want_packed, "%s: packed %d", ta->name, tq->packed);
            float *fa = malloc((size_t)n * sizeof *fa + 4), *fq = malloc((size_t)n * sizeof *fq + 4);
            CHECK_OK(vf_checkpoint_read_f32(a, ta, fa));
            CHECK_OK(vf_checkpoint_read_f32(q, tq, fq));
            if (tq->packed) {
                (*npacked)++;
                size_t bytes = vf_quant_packed_bytes(fmt, rows, cols);
                CHECK(tq->dtype == fmt && tq->nbytes == bytes);
                unsigned char *raw = malloc(bytes), *want = malloc(bytes);
                CHECK_OK(vf_checkpoint_read_raw(q, tq, raw));
                CHECK_OK(vf_quantize(fmt, fa, rows, cols, want));
                CHECK_MSG(memcmp(raw, want, bytes) == 0, "%s: packed bytes differ", ta->name);
                free(raw);
                free(want);
            } else if (!vf_quant_is_packed(fmt) && vf_dtype_is_float(ta->dtype)) {
                CHECK(tq->dtype == fmt);
            } else {
                CHECK(tq->dtype == ta->dtype && tq->nbytes == ta->nbytes);
            }
            CHECK_OK(vf_quant_roundtrip(tq->packed ? fmt : vf_quant_is_packed(fmt) ? VF_DTYPE_F32 : fmt, fa,
                                        ta->ndim, ta->shape));
            CHECK_MSG(memcmp(fa, fq, (size_t)n * sizeof *fa) == 0, "%s: values differ", ta->name);
            free(fa);
            free(fq);
        }
    }
}

/* Both layouts, every format: what is written loads back exactly. */
static void test_checkpoint_roundtrip(void)
{
    SKIP_WITHOUT_SHARED(shared);
    char *root = tmp_scratch("quant");
    if (!root)
        return;
    static const vf_dtype fmts[] = {VF_DTYPE_F8_E4M3, VF_DTYPE_Q8, VF_DTYPE_Q4, VF_DTYPE_F16, VF_DTYPE_BF16};
    static const char *const models[] = {"tiny-sd15", "tiny-sdxl"};
    for (size_t m = 0; m < 2; m++) {
        char dir[1024], file[1024];
        snprintf(dir, sizeof dir, "%s/reference/%s/diffusers", shared, models[m]);
        snprintf(file, sizeof file, "%s/reference/%s/%s.safetensors", shared, models[m], models[m]);
        for (size_t f = 0; f < sizeof fmts / sizeof fmts[0]; f++) {
            for (int single = 0; single < 2; single++) {
                char out[1100];
                snprintf(out, sizeof out, "%s/%s-%s%s", root, models[m], vf_dtype_name(fmts[f]),
                         single ? ".safetensors" : "");
                const char *in = single ? file : dir, *cfg = single ? dir : NULL;
                CHECK_OK(quantize_to(in, out, fmts[f], cfg));
                vf_checkpoint *a = NULL, *q = NULL;
                CHECK_OK(vf_checkpoint_open(in, cfg, &a));
                CHECK_OK(vf_checkpoint_open(out, cfg, &q));
                int npacked = 0, nkept = 0;
                if (a && q)
                    compare_checkpoints(a, q, fmts[f], &npacked, &nkept);
                CHECK(vf_quant_is_packed(fmts[f]) == (npacked > 0));
                /* UNet conv_in, conv_out, VAE encoder.conv_in, decoder.conv_out */
                CHECK_MSG(nkept == (vf_quant_is_packed(fmts[f]) ? 4 : 0), "%s: %d input/output convolutions kept",
                          vf_dtype_name(fmts[f]), nkept);
                if (q && single)
                    CHECK(vf_checkpoint_is_single_file(q));
                vf_checkpoint_close(a);
                vf_checkpoint_close(q);
            }
        }
    }
    /* the folder carries what the pipeline needs besides weights */
    char p[1100];
    snprintf(p, sizeof p, "%s/tiny-sdxl-Q8/tokenizer_2/vocab.json", root);
    CHECK(access(p, R_OK) == 0);
    snprintf(p, sizeof p, "%s/tiny-sdxl-Q8/scheduler/scheduler_config.json", root);
    CHECK(access(p, R_OK) == 0);
    /* quantizing a quantized checkpoint again: Q8 -> Q4 dequantizes first */
    char q8[1100], q4[1100];
    snprintf(q8, sizeof q8, "%s/tiny-sd15-Q8", root);
    snprintf(q4, sizeof q4, "%s/again-Q4", root);
    CHECK_OK(quantize_to(q8, q4, VF_DTYPE_Q4, NULL));
    vf_checkpoint *a = NULL;
    CHECK_OK(vf_checkpoint_open(q4, NULL, &a));
    const vf_ckpt_tensor *t = a ? vf_checkpoint_find(a, VF_COMPONENT_UNET, "down_blocks.0.resnets.0.conv1.weight") : NULL;
    CHECK(t && t->packed && t->dtype == VF_DTYPE_Q4);
    t = a ? vf_checkpoint_find(a, VF_COMPONENT_UNET, "conv_in.weight") : NULL;
    CHECK(t && !t->packed && t->dtype == VF_DTYPE_F16);
    vf_checkpoint_close(a);
    vf_remove_tree(root);
}

/* ---- UNet output error per storage dtype ------------------------------------------------- */

static float *ref_tensor(vf_st_file *f, const char *name)
{
    const vf_st_tensor *t = vf_st_find(f, name);
    CHECK_MSG(t != NULL, "reference tensor %s missing", name);
    if (!t)
        return NULL;
    float *p = malloc(t->nbytes);
    CHECK_OK(vf_st_read(f, t, 0, p, t->nbytes));
    return p;
}

/* One UNet call's inputs (as test_unet.c passes them). */
typedef struct unet_in {
    float *sample, *ctx, *text, *ids;
    float ts[8];
    int B, H, W;
} unet_in;

static void unet_in_free(unet_in *in)
{
    free(in->sample);
    free(in->ctx);
    free(in->text);
    free(in->ids);
}

/* The first UNet call of a reference file (negative and positive prompt). */
static void unet_in_ref(vf_st_file *rf, const vf_unet_config *cfg, unet_in *in)
{
    memset(in, 0, sizeof *in);
    const vf_st_tensor *s = vf_st_find(rf, "unet0_sample");
    float *t1 = ref_tensor(rf, "unet0_timestep");
    in->sample = ref_tensor(rf, "unet0_sample");
    in->ctx = ref_tensor(rf, "unet0_encoder_hidden_states");
    in->text = cfg->text_time ? ref_tensor(rf, "unet0_text_embeds") : NULL;
    in->ids = cfg->text_time ? ref_tensor(rf, "unet0_time_ids") : NULL;
    in->B = s ? (int)s->shape[0] : 0;
    in->H = s ? (int)s->shape[2] : 0;
    in->W = s ? (int)s->shape[3] : 0;
    for (int b = 0; b < in->B && b < 8 && t1; b++)
        in->ts[b] = t1[0]; /* the pipeline broadcasts one timestep */
    free(t1);
}

/* One UNet call with weights stored as fmt (F32: as the checkpoint holds
 * them) into out. keep: keep converted weights (small models). */
static vf_status unet_call(const vf_checkpoint *ck, const vf_blocklist *bl, const vf_unet_config *cfg,
                           const unet_in *in, vf_dtype fmt, int keep, float *out)
{
    vf_residency_options ro;
    vf_residency_options_init(&ro);
    ro.quant = fmt; /* quantize on load, as the pipeline does */
    ro.keep_resident = keep;
    vf_residency *res = NULL;
    vf_status st = vf_residency_create(ck, bl, &ro, &res);
    if (st == VF_OK)
        st = vf_unet_forward(res, bl, cfg, in->sample, in->B, in->H, in->W, in->ts, in->ctx, 77, in->text, in->ids, out);
    vf_residency_free(res);
    return st;
}

/* max|got - want| / max|want|; also the max abs and the RMS-based error. */
static double max_rel(const float *got, const float *want, size_t n, double *max_abs, double *rms_rel)
{
    double ma = 0, mr = 0, se = 0, sw = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        ma = d > ma || d != d ? d : ma;
        mr = fabs(want[i]) > mr ? fabs(want[i]) : mr;
        se += d * d;
        sw += (double)want[i] * want[i];
    }
    *max_abs = ma;
    *rms_rel = sw > 0 ? sqrt(se / sw) : sqrt(se);
    return mr > 0 ? ma / mr : ma;
}

/* Tolerances on max|out - out_f32| / max|out_f32| (the parity measure; the
 * RMS-based figure is printed too). Measured on both fixtures (random,
 * untrained weights; F16 in the files; quantized on load as the pipeline
 * does, so conv_in and conv_out stay F16):
 *   F16  0: the fixtures' weights are F16 values already, so rounding through
 *        F16 changes nothing (an exact check of the roundtrip path);
 *   BF16 3e-2 (measured 0.52% / 0.77%): 8 bits of mantissa per weight;
 *   Q8   1e-2 (0.57% / 0.74%; 0.85% / 0.99% before Q8's scale search and
 *        the F16 convolutions), the bound;
 *   F8   8e-2 (7.1% / 4.9%; RMS 5.2% / 5.5%): NOT the 1e-2. With
 *        one scale per row the scale only places the row in e4m3's range;
 *        every weight keeps e4m3's 3 mantissa bits, an RMS error of 2.6% of
 *        the weight (measured on Gaussian rows above, independent of the
 *        scale), and the UNet output error is about twice its weights' (Q8's
 *        0.48% weight error gives 0.7-0.8%). No choice of per-row scale
 *        changes that; finer scales or keeping most layers in F16 would.
 *   Q4   0.25 (8.6% / 10.9%): 4 bits (7.3% RMS weight error); the bound is
 *        about twice what is measured, so a broken format (swapped nibbles,
 *        a lost minimum: errors of order 1) still fails. */
/* Every storage dtype against the checkpoint's own values on one UNet call;
 * the tolerances as above. */
static void unet_quality_of(const char *dir, const char *config_dir, const char *name, const unet_in *given,
                            vf_st_file *rf, const double *tols, const double *rms_tols)
{
    static const vf_dtype fmts[] = {VF_DTYPE_F16, VF_DTYPE_BF16, VF_DTYPE_F8_E4M3, VF_DTYPE_Q8, VF_DTYPE_Q4};
    vf_checkpoint *ck = NULL;
    vf_unet_config cfg;
    vf_blocklist bl;
    unet_in in;
    memset(&in, 0, sizeof in);
    vf_bl_init(&bl, VF_COMPONENT_UNET);
    CHECK_OK(vf_checkpoint_open(dir, config_dir, &ck));
    vf_status st = ck ? vf_unet_config_parse(vf_checkpoint_config(ck, VF_COMPONENT_UNET), vf_checkpoint_arch(ck), &cfg)
                      : VF_ERR_IO;
    if (st == VF_OK)
        st = vf_unet_describe_config(&cfg, &bl);
    if (st == VF_OK)
        st = vf_bl_bind(&bl, ck);
    CHECK_OK(st);
    if (st == VF_OK && rf)
        unet_in_ref(rf, &cfg, &in);
    const unet_in *x = given ? given : &in;
    size_t n = (size_t)x->B * 4 * x->H * x->W;
    int keep = given == NULL;
    float *base = calloc(n + 1, sizeof *base), *got = calloc(n + 1, sizeof *got);
    if (st == VF_OK && n)
        CHECK_OK(st = unet_call(ck, &bl, &cfg, x, VF_DTYPE_F32, keep, base));
    for (size_t i = 0; st == VF_OK && n && i < sizeof fmts / sizeof fmts[0]; i++) {
        CHECK_OK(unet_call(ck, &bl, &cfg, x, fmts[i], keep, got));
        double ma, rms, rel = max_rel(got, base, n, &ma, &rms);
        printf("%s UNet output, weights %-7s: max abs err %.3g, max rel err %.3g (tol %.2g), rms rel err %.3g",
               name, vf_dtype_name(fmts[i]), ma, rel, tols[i], rms);
        if (rms_tols)
            printf(" (tol %.2g)", rms_tols[i]);
        printf("\n");
        CHECK_MSG(rel <= tols[i], "%s %s: max abs err %.3g, max rel err %.3g > %.2g", name, vf_dtype_name(fmts[i]),
                  ma, rel, tols[i]);
        if (rms_tols)
            CHECK_MSG(rms <= rms_tols[i], "%s %s: rms rel err %.3g > %.2g", name, vf_dtype_name(fmts[i]), rms,
                      rms_tols[i]);
    }
    free(base);
    free(got);
    unet_in_free(&in);
    vf_bl_free(&bl);
    vf_checkpoint_close(ck);
}

static void unet_quality(const char *shared, const char *model)
{
    static const double tols[] = {0.0, 3e-2, 8e-2, 1e-2, 0.25};
    char dir[1024], ref[1024];
    snprintf(dir, sizeof dir, "%s/reference/%s/diffusers", shared, model);
    snprintf(ref, sizeof ref, "%s/reference/%s/reference.safetensors", shared, model);
    vf_st_file *rf = NULL;
    CHECK_OK(vf_st_open(ref, &rf));
    if (rf)
        unet_quality_of(dir, NULL, model, NULL, rf, tols, NULL);
    vf_st_close(rf);
}

static void test_unet_quality_sd15(void)
{
    SKIP_WITHOUT_SHARED(shared);
    unet_quality(shared, "tiny-sd15");
}

static void test_unet_quality_sdxl(void)
{
    SKIP_WITHOUT_SHARED(shared);
    unet_quality(shared, "tiny-sdxl");
}

/* The issue's own measure, opt in (VF_QUANT_SDXL = a folder from `vramfit
 * synth --arch sdxl`, the published shapes; 5.5 GB of RAM, about nine minutes
 * on two cores in a Release build): one UNet call at a 32x32 latent, batch 1,
 * random conditioning, for each of two draws of the inputs (seed and
 * timestep), each storage dtype against the file's F16 values in float32.
 * The "relative error" is read as ||out - ref|| / ||ref|| (RMS rel);
 * max|out - ref| / max|ref| is bounded too. Measured (2026-11-27; Q8 with its
 * scale search, conv_in and conv_out F16), RMS rel / max rel at t=500 and
 * t=150: BF16 0.50% / 0.54%, 0.48% / 0.44%; F8 6.1% / 5.9%, 6.5% / 7.9%;
 * Q8 0.89% / 1.01%, 0.85% / 1.10%; Q4 13% / 14%, 13% / 12% (before the
 * search and the F16 convolutions, one draw: Q8 1.04% / 1.15%). F8 cannot
 * meet 1e-2: e4m3's 3 mantissa bits are 2.6% RMS per weight, and a random
 * UNet roughly triples weight errors (Q8: 0.34% per weight, under 0.9% at
 * the output). The bounds for BF16, F8 and Q4 are about 1.5 times what was
 * measured; Q8's are the 1e-2 on the RMS measure and 1.2e-2 on the
 * max measure, which one element of the output decides. */
static void test_unet_quality_synth_sdxl(void)
{
    const char *dir = getenv("VF_QUANT_SDXL");
    if (!dir) {
        printf("skip (set VF_QUANT_SDXL to a synthesized SDXL folder)\n");
        return;
    }
    static const double tols[] = {0.0, 1e-2, 0.12, 1.2e-2, 0.25}, rms_tols[] = {0.0, 1e-2, 0.1, 1e-2, 0.2};
    static const struct {
        uint64_t seed;
        float t;
    } draws[] = {{0x5EED0001ull, 500.0f}, {0x5EED0002ull, 150.0f}};
    for (size_t d = 0; d < sizeof draws / sizeof draws[0]; d++) {
        unet_in in;
        memset(&in, 0, sizeof in);
        g_rng = draws[d].seed;
        in.B = 1, in.H = in.W = 32;
        in.ts[0] = draws[d].t;
        in.sample = random_matrix(4, 32 * 32, 1.0f);
        in.ctx = random_matrix(77, 2048, 1.0f);
        in.text = random_matrix(1, 1280, 1.0f);
        in.ids = malloc(6 * sizeof *in.ids);
        static const float ids[6] = {256, 256, 0, 0, 256, 256};
        memcpy(in.ids, ids, sizeof ids);
        char name[64];
        snprintf(name, sizeof name, "synthesized SDXL, t=%g", (double)draws[d].t);
        unet_quality_of(dir, NULL, name, &in, NULL, tols, rms_tols);
        unet_in_free(&in);
    }
}

/* ---- errors ------------------------------------------------------------------------------ */

/* The command's arguments and targets: each refusal names what is wrong and
 * leaves nothing behind. */
static void test_errors(void)
{
    SKIP_WITHOUT_SHARED(shared);
    char *root = tmp_scratch("quant");
    if (!root)
        return;
    char dir[1024], out[1100], p[1200];
    snprintf(dir, sizeof dir, "%s/reference/tiny-sd15/diffusers", shared);
    vf_dtype t;
    unsigned mask = 0;
    CHECK(vf_quantize_dtype_parse("Q8", &t) == VF_OK && t == VF_DTYPE_Q8);
    CHECK(vf_quantize_dtype_parse("f8", &t) == VF_OK && t == VF_DTYPE_F8_E4M3);
    CHECK(vf_quantize_dtype_parse("int8", &t) == VF_ERR_INVALID_ARG && strstr(vf_last_error(), "'int8'"));
    CHECK(vf_quantize_components_parse("unet, text", &mask) == VF_OK &&
          mask == (1u << VF_COMPONENT_UNET | 1u << VF_COMPONENT_TEXT_ENCODER | 1u << VF_COMPONENT_TEXT_ENCODER_2));
    CHECK(vf_quantize_components_parse("unet,clip", &mask) == VF_ERR_INVALID_ARG &&
          strstr(vf_last_error(), "unknown component 'clip'"));
    CHECK(vf_quantize_components_parse("unet,,vae", &mask) == VF_ERR_INVALID_ARG &&
          strstr(vf_last_error(), "empty entry"));
    /* unreadable input */
    snprintf(out, sizeof out, "%s/out", root);
    snprintf(p, sizeof p, "%s/absent", root);
    CHECK(quantize_to(p, out, VF_DTYPE_Q8, NULL) == VF_ERR_NOT_FOUND && strstr(vf_last_error(), p));
    snprintf(p, sizeof p, "%s/junk.safetensors", root);
    FILE *f = fopen(p, "w");
    fputs("not a safetensors file", f);
    fclose(f);
    CHECK(quantize_to(p, out, VF_DTYPE_Q8, NULL) == VF_ERR_FORMAT && strstr(vf_last_error(), p));
    remove(p);
    /* a dtype that is no storage format */
    CHECK(quantize_to(dir, out, VF_DTYPE_I8, NULL) == VF_ERR_INVALID_ARG && strstr(vf_last_error(), "I8"));
    /* an existing output: refused without force; force replaces a model, never other folders */
    CHECK_OK(quantize_to(dir, out, VF_DTYPE_Q8, NULL));
    CHECK(quantize_to(dir, out, VF_DTYPE_Q4, NULL) == VF_ERR_INVALID_ARG && strstr(vf_last_error(), "--force") &&
          strstr(vf_last_error(), out));
    vf_quantize_options o;
    vf_quantize_options_init(&o);
    o.dtype = VF_DTYPE_Q4;
    o.force = 1;
    CHECK_OK(vf_quantize_checkpoint(dir, out, &o, NULL));
    snprintf(p, sizeof p, "%s/other", root);
    mkdir(p, 0755);
    snprintf(out, sizeof out, "%s/other/keep.txt", root);
    fclose(fopen(out, "w"));
    CHECK(vf_quantize_checkpoint(dir, p, &o, NULL) == VF_ERR_INVALID_ARG && strstr(vf_last_error(), "refusing"));
    CHECK(access(out, F_OK) == 0);
    CHECK(vf_quantize_checkpoint(dir, dir, &o, NULL) == VF_ERR_INVALID_ARG);
    /* a single file's output is a file: a folder there is refused, a file needs force */
    char file[1024];
    snprintf(file, sizeof file, "%s/reference/tiny-sd15/tiny-sd15.safetensors", shared);
    o.config_dir = dir;
    CHECK(vf_quantize_checkpoint(file, p, &o, NULL) == VF_ERR_INVALID_ARG && strstr(vf_last_error(), "not a file"));
    CHECK(vf_quantize_checkpoint(file, out, &o, NULL) == VF_OK); /* force: replaces keep.txt */
    o.force = 0;
    CHECK(vf_quantize_checkpoint(file, out, &o, NULL) == VF_ERR_INVALID_ARG);
    CHECK(vf_quantize_checkpoint(file, file, &o, NULL) == VF_ERR_INVALID_ARG);
    /* nothing half-written beside the outputs */
    CHECK_MSG(count_entries(root) == 2, "%d entries", count_entries(root));
    vf_remove_tree(root);
}

/* A NaN in a weight names the file, tensor, row and column; no output is left. */
static void test_nonfinite_weight(void)
{
    char *root = tmp_scratch("quant");
    if (!root)
        return;
    char in[256], out[256];
    snprintf(in, sizeof in, "%s/in.safetensors", root);
    snprintf(out, sizeof out, "%s/out.safetensors", root);
    float w[4 * 64];
    for (int i = 0; i < 4 * 64; i++)
        w[i] = 0.01f * (float)i;
    w[2 * 64 + 9] = NAN;
    vf_st_write_tensor t = {"model.diffusion_model.input_blocks.0.0.weight", VF_DTYPE_F32, 2, {4, 64}, w};
    CHECK_OK(vf_st_write(in, &t, 1, NULL));
    /* a file no key map knows is refused before anything is written */
    CHECK(quantize_to(in, out, VF_DTYPE_Q8, NULL) == VF_ERR_UNSUPPORTED);
    CHECK(access(out, F_OK) != 0);
    vf_remove_tree(root);
}

/* Hand-made files whose quantization metadata is inconsistent are refused at
 * open, each error naming the file and tensor. */
static void test_bad_metadata(void)
{
    char *root = tmp_scratch("quant");
    if (!root)
        return;
    char path[256];
    snprintf(path, sizeof path, "%s/q.safetensors", root);
    size_t bytes = vf_quant_packed_bytes(VF_DTYPE_Q8, 4, 64);
    unsigned char *packed = calloc(1, bytes + 16);
    vf_st_write_tensor ts[2] = {{"w", VF_DTYPE_U8, 1, {(int64_t)bytes}, packed},
                                {"b", VF_DTYPE_F16, 1, {4}, packed}};
    static const struct {
        const char *meta[9];
        int ntensors;
        vf_dtype dt;
        int64_t bytes;
        vf_status want;
        const char *says;
    } cases[] = {
        {{"vramfit.format", "1", "vramfit.dtype.w", "Q8", "vramfit.shape.w", "[4, 64]", NULL}, 2, VF_DTYPE_U8, 0, VF_OK, ""},
        {{"vramfit.format", "1", "vramfit.dtype.w", "Q8", "vramfit.shape.w", "[4,16,2,2]", NULL}, 1, VF_DTYPE_U8, 0, VF_OK, ""},
        {{"vramfit.format", "2", NULL}, 1, VF_DTYPE_U8, 0, VF_ERR_UNSUPPORTED, "newer"},
        {{"vramfit.format", "1", "vramfit.dtype.x", "Q8", "vramfit.shape.x", "[4, 64]", NULL}, 1, VF_DTYPE_U8, 0, VF_ERR_FORMAT, "names no tensor"},
        {{"vramfit.format", "1", "vramfit.dtype.w", "Q5", "vramfit.shape.w", "[4, 64]", NULL}, 1, VF_DTYPE_U8, 0, VF_ERR_FORMAT, "'Q5'"},
        {{"vramfit.format", "1", "vramfit.dtype.w", "Q8", NULL}, 1, VF_DTYPE_U8, 0, VF_ERR_FORMAT, "no 'vramfit.shape.w'"},
        {{"vramfit.format", "1", "vramfit.shape.w", "[4, 64]", NULL}, 1, VF_DTYPE_U8, 0, VF_ERR_FORMAT, "has no"},
        {{"vramfit.format", "1", "vramfit.dtype.w", "Q8", "vramfit.shape.w", "[4, 96]", NULL}, 1, VF_DTYPE_U8, 0, VF_ERR_FORMAT, "packs to"},
        {{"vramfit.format", "1", "vramfit.dtype.w", "Q8", "vramfit.shape.w", "[256]", NULL}, 1, VF_DTYPE_U8, 0, VF_ERR_FORMAT, "2 to 4"},
        {{"vramfit.format", "1", "vramfit.dtype.w", "Q8", "vramfit.shape.w", "[4, 0]", NULL}, 1, VF_DTYPE_U8, 0, VF_ERR_FORMAT, "2 to 4"},
        {{"vramfit.format", "1", "vramfit.dtype.w", "Q8", "vramfit.shape.w", "[4, 64", NULL}, 1, VF_DTYPE_U8, 0, VF_ERR_FORMAT, "2 to 4"},
        {{"vramfit.format", "1", "vramfit.dtype.w", "Q8", "vramfit.shape.w", "[4, 64] x", NULL}, 1, VF_DTYPE_U8, 0, VF_ERR_FORMAT, "2 to 4"},
        {{"vramfit.format", "1", "vramfit.dtype.w", "Q8", "vramfit.shape.w", "[1,1,1,1,1]", NULL}, 1, VF_DTYPE_U8, 0, VF_ERR_FORMAT, "2 to 4"},
        {{"vramfit.format", "1", "vramfit.dtype.w", "Q8", "vramfit.shape.w", "[99999999999999999999, 64]", NULL}, 1, VF_DTYPE_U8, 0, VF_ERR_FORMAT, "2 to 4"},
        {{"vramfit.format", "1", "vramfit.dtype.w", "Q8", "vramfit.shape.w", "[4, 64]", NULL}, 1, VF_DTYPE_I8, 0, VF_ERR_FORMAT, "U8"},
        {{"vramfit.format", "1", "vramfit.dtype.w", "Q8", "vramfit.shape.w", "[4, 64]", NULL}, 1, VF_DTYPE_U8, 7, VF_ERR_FORMAT, "packs to"},
        {{"vramfit.dtype.w", "Q8", "vramfit.shape.w", "[4, 64]", NULL}, 1, VF_DTYPE_U8, 0, VF_OK, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ts[0].dtype = cases[i].dt;
        ts[0].shape[0] = cases[i].bytes ? cases[i].bytes : (int64_t)bytes;
        CHECK_OK(vf_st_write(path, ts, (size_t)cases[i].ntensors, cases[i].meta));
        vf_st_file *f = NULL;
        vf_status st = vf_st_open(path, &f);
        CHECK_MSG(st == cases[i].want, "case %zu: %s: %s", i, vf_status_str(st), vf_last_error());
        if (st != VF_OK)
            CHECK_MSG(strstr(vf_last_error(), path) && strstr(vf_last_error(), cases[i].says), "case %zu: %s", i,
                      vf_last_error());
        if (f) {
            const vf_st_tensor *w = vf_st_find(f, "w");
            int meta = cases[i].meta[0] && strcmp(cases[i].meta[0], "vramfit.format") == 0;
            CHECK(w && w->packed == meta && w->nbytes == bytes);
            CHECK(!meta || (w->dtype == VF_DTYPE_Q8 && w->shape[0] == 4));
            CHECK(meta || (w->dtype == VF_DTYPE_U8 && w->ndim == 1)); /* no vramfit.format: bytes as stored */
        }
        vf_st_close(f);
    }
    /* the writer refuses a packed dtype: such tensors are written as U8 bytes */
    vf_st_write_tensor q = {"w", VF_DTYPE_Q8, 2, {4, 64}, packed};
    CHECK(vf_st_write(path, &q, 1, NULL) == VF_ERR_INVALID_ARG && strstr(vf_last_error(), "U8"));
    free(packed);
    vf_remove_tree(root);
}

/* Every failing allocation while quantizing a folder (reading, converting,
 * writing, copying) and while reading its quantized tensors back: a clean
 * NO_MEMORY, nothing leaked (ASan), nothing left on disk. */
static void test_alloc_failures(void)
{
    SKIP_WITHOUT_SHARED(shared);
    char *root = tmp_scratch("quant");
    if (!root)
        return;
    char dir[1024], out[256];
    snprintf(dir, sizeof dir, "%s/reference/tiny-sd15/diffusers", shared);
    snprintf(out, sizeof out, "%s/q", root);
    uint64_t before = vf_fault_alloc_count();
    CHECK_OK(quantize_to(dir, out, VF_DTYPE_Q4, NULL));
    uint64_t total = vf_fault_alloc_count() - before;
    vf_remove_tree(out);
    int failed = 0;
    for (uint64_t k = 1; k <= total; k += 1 + k / 8) {
        vf_fault_alloc_fail_at(k);
        vf_status st = quantize_to(dir, out, VF_DTYPE_Q4, NULL);
        vf_fault_alloc_fail_at(0);
        failed += st != VF_OK;
        CHECK_MSG(st == VF_OK || st == VF_ERR_NO_MEMORY, "allocation %llu: %s", (unsigned long long)k,
                  vf_last_error());
        if (st == VF_OK)
            vf_remove_tree(out);
        CHECK_MSG(count_entries(root) == 0, "allocation %llu: leftovers", (unsigned long long)k);
    }
    CHECK(failed > 10);
    /* dequantizing: every read of a packed tensor */
    CHECK_OK(quantize_to(dir, out, VF_DTYPE_Q8, NULL));
    vf_checkpoint *ck = NULL;
    CHECK_OK(vf_checkpoint_open(out, NULL, &ck));
    const vf_ckpt_tensor *t = ck ? vf_checkpoint_find(ck, VF_COMPONENT_UNET, "down_blocks.1.resnets.0.conv1.weight")
                                 : NULL;
    CHECK(t && t->packed);
    if (t) {
        float *w = malloc((size_t)vf_shape_numel(t->shape, t->ndim) * sizeof *w);
        vf_fault_alloc_fail_at(1);
        CHECK(vf_checkpoint_read_f32(ck, t, w) == VF_ERR_NO_MEMORY && strstr(vf_last_error(), t->src->name));
        vf_fault_alloc_fail_at(0);
        CHECK_OK(vf_checkpoint_read_f32(ck, t, w));
        free(w);
    }
    vf_checkpoint_close(ck);
    vf_remove_tree(root);
}

/* The CPU backend's vf_be_dequant: float32 OIHW, the packed row order. */
static void test_cpu_backend(void)
{
    vf_backend *be = NULL;
    CHECK_OK(vf_backend_create(NULL, &be));
    if (!be)
        return;
    for (size_t i = 0; i < 3; i++) {
        int OC = 6, C = 40, KH = 3, KW = 3;
        int64_t K = (int64_t)C * KH * KW;
        float *w = random_matrix(OC, K, 0.1f), *want = roundtrip(g_packed[i], w, OC, K);
        size_t bytes = vf_quant_packed_bytes(g_packed[i], OC, K);
        vf_dbuf *src = NULL, *dst = NULL;
        CHECK_OK(vf_be_alloc(be, bytes / 4 + 1, &src));
        CHECK_OK(vf_be_alloc(be, (size_t)(OC * K), &dst));
        if (src && dst && want) {
            CHECK_OK(vf_quantize(g_packed[i], w, OC, K, src));
            CHECK_OK(vf_be_dequant(be, dst, src, g_packed[i], OC, C, KH, KW));
            float *got = malloc((size_t)(OC * K) * sizeof *got);
            CHECK_OK(vf_be_download(be, got, dst, (size_t)(OC * K)));
            CHECK(memcmp(got, want, (size_t)(OC * K) * sizeof *got) == 0);
            free(got);
        }
        CHECK(vf_be_dequant(be, dst, src, VF_DTYPE_F16, OC, C, KH, KW) == VF_ERR_INVALID_ARG);
        vf_be_free(be, src);
        vf_be_free(be, dst);
        free(w);
        free(want);
    }
    vf_backend_free(be);
}

/* The demo model's final images with quantized weights against its own
 * float16 weights computed in float32 (issue 6: PSNR on the demo model).
 * Quantize-on-load through the pipeline (dtype policy on the CPU device,
 * which rounds the UNet and text encoder weights through the format exactly
 * as a device stores them). Skips without models/demo. */
static double psnr(const vf_image *a, const vf_image *b)
{
    size_t n = (size_t)a->width * (size_t)a->height * 3;
    double se = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a->pixels[i] - (double)b->pixels[i];
        se += d * d;
    }
    return se > 0 ? 10.0 * log10(1.0 / (se / (double)n)) : 99.0;
}

static vf_image *demo_image(const char *path, vf_dtype_policy pol, const char *prompt, uint64_t seed)
{
    vf_pipeline_options po;
    vf_pipeline_options_init(&po);
    po.dtype_policy = pol;
    vf_model_options o;
    vf_model_options_init(&o);
    o.pipeline = &po;
    vf_model *m = NULL;
    vf_image *img = NULL;
    vf_generate_params p;
    vf_generate_params_init(&p);
    p.prompt = prompt;
    p.seed = seed;
    vf_status st = vf_model_open(path, &o, &m);
    if (st == VF_OK)
        st = vf_generate(m, &p, &img);
    CHECK_MSG(st == VF_OK, "demo model, %s: %s", vf_dtype_policy_name(pol), vf_last_error());
    vf_model_close(m);
    return img;
}

static void test_demo_psnr(void)
{
    char path[4096];
    struct stat sb;
    snprintf(path, sizeof path, "%s/../../models/demo", vf_test_data());
    if (stat(path, &sb) != 0) {
        printf("  (models/demo absent: skipped)\n");
        return;
    }
    static const char *const prompts[] = {"a red circle on a blue background", "two yellow squares",
                                          "a white triangle on a green background", "a black square"};
    /* Bounds on the mean of the four images and on the worst, from what was
     * measured (2026-11-27, Q8 with its scale search, the input and output
     * convolutions F16): Q8 mean 44.7 / worst 40.5 dB, F8 33.3 / 24.7, Q4
     * 20.5 / 11.1. Q4's worst image is not bounded: its errors are large
     * enough to send a trajectory elsewhere, and which image that happens to
     * is chance. Over 20 images (these prompts, seeds 11-15) Q4 ranges from
     * 5.3 to 30 dB; keeping conv_in and conv_out in F16 raised its mean from
     * 18.9 to 19.3 dB there, yet took this test's "a black square" (seed 4)
     * from 28.8 to 11.1 dB (bench/RESULTS.md). */
    static const struct {
        vf_dtype_policy pol;
        double min_mean, min_worst;
    } fmts[] = {{VF_DTYPE_POLICY_Q8, 40.0, 35.0}, {VF_DTYPE_POLICY_F8, 28.0, 22.0}, {VF_DTYPE_POLICY_Q4, 17.0, 0.0}};
    for (size_t f = 0; f < sizeof fmts / sizeof fmts[0]; f++) {
        double worst = 99.0, sum = 0;
        for (int i = 0; i < 4; i++) {
            vf_image *ref = demo_image(path, VF_DTYPE_POLICY_F32, prompts[i], (uint64_t)i + 1);
            vf_image *q = demo_image(path, fmts[f].pol, prompts[i], (uint64_t)i + 1);
            double db = ref && q ? psnr(q, ref) : 0.0;
            worst = db < worst ? db : worst;
            sum += db;
            vf_image_free(ref);
            vf_image_free(q);
        }
        printf("  demo model, %s weights: PSNR against float16 weights: mean %.1f dB, worst %.1f dB\n",
               vf_dtype_policy_name(fmts[f].pol), sum / 4, worst);
        CHECK_MSG(sum / 4 >= fmts[f].min_mean && worst >= fmts[f].min_worst,
                  "%s: PSNR mean %.1f dB, worst %.1f dB; bounds %.1f and %.1f dB", vf_dtype_policy_name(fmts[f].pol),
                  sum / 4, worst, fmts[f].min_mean, fmts[f].min_worst);
    }
}

TEST_MAIN(TEST(test_packed_sizes), TEST(test_f8_codes), TEST(test_known_values), TEST(test_zeros_and_saturation),
          TEST(test_nonfinite), TEST(test_error_bounds), TEST(test_row_slices), TEST(test_roundtrip_in_place), TEST(test_threads_identical),
          TEST(test_threads_first_error), TEST(test_threads_spawn_failure), TEST(test_threads_count), TEST(test_cpu_backend),
          TEST(test_checkpoint_roundtrip), TEST(test_unet_quality_sd15), TEST(test_unet_quality_sdxl),
          TEST(test_unet_quality_synth_sdxl),
          TEST(test_errors), TEST(test_nonfinite_weight), TEST(test_bad_metadata), TEST(test_alloc_failures),
          TEST(test_demo_psnr))
