/* CPU kernels against naive loops written straight from the definitions, on
 * random inputs and odd sizes (chunk and band boundaries included). The naive
 * versions accumulate in double, so the tolerance is float rounding (1e-5). */
#include "backend/cpu/ops.h"
#include "core/alloc.h"
#include "test.h"

static unsigned g_seed = 12345;
static float frand(void)
{
    g_seed = g_seed * 1103515245u + 12345u;
    return ((g_seed >> 8) & 0xffff) / 32768.0f - 1.0f;
}
static float *rnd(size_t n)
{
    float *p = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++)
        p[i] = frand();
    return p;
}

static void test_linear(void)
{
    int M = 7, K = 13, N = 5;
    float *x = rnd((size_t)M * K), *w = rnd((size_t)N * K), *b = rnd(N);
    float y[35], ref[35];
    for (int i = 0; i < M; i++)
        for (int o = 0; o < N; o++) {
            double s = b[o];
            for (int k = 0; k < K; k++)
                s += (double)x[i * K + k] * w[o * K + k];
            ref[i * N + o] = (float)s;
        }
    vf_cpu_linear(y, x, w, b, M, K, N);
    CHECK_CLOSE("linear", y, ref, 35, 1e-5);
    free(x); free(w); free(b);
}

static void naive_conv(float *y, const float *x, const float *w, const float *b, int B, int C, int H,
                       int W, int OC, int KH, int KW, int stride, int pad)
{
    int OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    for (int n = 0; n < B; n++)
        for (int o = 0; o < OC; o++)
            for (int oy = 0; oy < OH; oy++)
                for (int ox = 0; ox < OW; ox++) {
                    double s = b ? b[o] : 0;
                    for (int c = 0; c < C; c++)
                        for (int ky = 0; ky < KH; ky++)
                            for (int kx = 0; kx < KW; kx++) {
                                int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W)
                                    continue;
                                s += (double)x[((n * C + c) * H + iy) * W + ix] *
                                     w[((o * C + c) * KH + ky) * KW + kx];
                            }
                    y[((n * OC + o) * OH + oy) * OW + ox] = (float)s;
                }
}

static void conv_case(int B, int C, int H, int W, int OC, int K, int stride, int pad, int bias)
{
    int OH = (H + 2 * pad - K) / stride + 1, OW = (W + 2 * pad - K) / stride + 1;
    size_t ny = (size_t)B * OC * OH * OW;
    float *x = rnd((size_t)B * C * H * W), *w = rnd((size_t)OC * C * K * K), *b = rnd(OC);
    float *y = malloc(sizeof(float) * ny), *ref = malloc(sizeof(float) * ny);
    naive_conv(ref, x, w, bias ? b : NULL, B, C, H, W, OC, K, K, stride, pad);
    CHECK_OK(vf_cpu_conv2d(y, x, w, bias ? b : NULL, B, C, H, W, OC, K, K, stride, pad));
    CHECK_CLOSE("conv2d", y, ref, ny, 1e-5);
    free(x); free(w); free(b); free(y); free(ref);
}

static void test_conv2d(void)
{
    conv_case(2, 3, 9, 7, 5, 3, 1, 1, 1);   /* same padding, odd size */
    conv_case(1, 4, 8, 8, 6, 3, 2, 1, 1);   /* downsampler: stride 2 */
    conv_case(2, 5, 6, 4, 3, 1, 1, 0, 1);   /* 1x1 fast path */
    conv_case(1, 2, 5, 5, 2, 3, 1, 0, 0);   /* valid, no bias */
}

static void test_conv2d_bands(void)
{
    /* C*9*OW big enough that the 8M-float scratch holds only a few rows */
    conv_case(1, 512, 12, 700, 2, 3, 1, 1, 1);
}

static void test_layernorm_groupnorm(void)
{
    int rows = 3, C = 10;
    float *x = rnd((size_t)rows * C), *g = rnd(C), *bb = rnd(C);
    float y[30], ref[30];
    for (int r = 0; r < rows; r++) {
        double m = 0, v = 0;
        for (int c = 0; c < C; c++) m += x[r * C + c];
        m /= C;
        for (int c = 0; c < C; c++) v += (x[r * C + c] - m) * (x[r * C + c] - m);
        v /= C;
        for (int c = 0; c < C; c++)
            ref[r * C + c] = (float)((x[r * C + c] - m) / sqrt(v + 1e-5) * g[c] + bb[c]);
    }
    vf_cpu_layernorm(y, x, g, bb, rows, C, 1e-5f);
    CHECK_CLOSE("layernorm", y, ref, 30, 1e-5);

    int B = 2, GC = 8, HW = 6, G = 4;
    size_t n = (size_t)B * GC * HW;
    float *gx = rnd(n), *gg = rnd(GC), *gb = rnd(GC);
    float *gy = malloc(sizeof(float) * n), *gref = malloc(sizeof(float) * n);
    for (int b = 0; b < B; b++)
        for (int grp = 0; grp < G; grp++) {
            int cpg = GC / G;
            double m = 0, v = 0;
            for (int c = 0; c < cpg; c++)
                for (int i = 0; i < HW; i++) m += gx[(b * GC + grp * cpg + c) * HW + i];
            m /= cpg * HW;
            for (int c = 0; c < cpg; c++)
                for (int i = 0; i < HW; i++) {
                    double d = gx[(b * GC + grp * cpg + c) * HW + i] - m;
                    v += d * d;
                }
            v /= cpg * HW;
            for (int c = 0; c < cpg; c++)
                for (int i = 0; i < HW; i++) {
                    int ch = grp * cpg + c, at = (b * GC + ch) * HW + i;
                    double t = (gx[at] - m) / sqrt(v + 1e-6) * gg[ch] + gb[ch];
                    gref[at] = (float)(t / (1 + exp(-t)));
                }
        }
    vf_cpu_groupnorm(gy, gx, gg, gb, B, GC, HW, G, 1e-6f, 1);
    CHECK_CLOSE("groupnorm+silu", gy, gref, n, 1e-5);
    free(x); free(g); free(bb); free(gx); free(gg); free(gb); free(gy); free(gref);
}

static void attention_case(int B, int Lq, int Lk, int H, int D, int causal)
{
    size_t HD = (size_t)H * D, nq = (size_t)B * Lq * HD, nk = (size_t)B * Lk * HD;
    float *q = rnd(nq), *k = rnd(nk), *v = rnd(nk);
    float *o = malloc(sizeof(float) * nq), *ref = malloc(sizeof(float) * nq);
    double *s = malloc(sizeof(double) * (size_t)Lk);
    float scale = 1.0f / sqrtf((float)D);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < Lq; i++) {
                double mx = -1e300, sum = 0;
                int n = causal ? i + 1 : Lk;
                for (int j = 0; j < n; j++) {
                    double d = 0;
                    for (int e = 0; e < D; e++)
                        d += (double)q[(b * Lq + i) * HD + h * D + e] * k[(b * Lk + j) * HD + h * D + e];
                    s[j] = d * scale;
                    if (s[j] > mx) mx = s[j];
                }
                for (int j = 0; j < n; j++) { s[j] = exp(s[j] - mx); sum += s[j]; }
                for (int e = 0; e < D; e++) {
                    double acc = 0;
                    for (int j = 0; j < n; j++) acc += s[j] / sum * v[(b * Lk + j) * HD + h * D + e];
                    ref[(b * Lq + i) * HD + h * D + e] = (float)acc;
                }
            }
    CHECK_OK(vf_cpu_attention(o, q, k, v, B, Lq, Lk, H, D, causal, scale));
    CHECK_CLOSE("attention", o, ref, nq, 1e-5);
    free(q); free(k); free(v); free(o); free(ref); free(s);
}

static void test_attention(void)
{
    attention_case(2, 9, 9, 3, 4, 1);    /* CLIP: causal self-attention */
    attention_case(2, 16, 77, 2, 8, 0);  /* cross-attention */
    attention_case(1, 5, 300000, 1, 2, 0); /* Lk so long that a chunk is a single query */
}

static void test_activations_and_resample(void)
{
    float x[4] = {-2.0f, -0.5f, 0.0f, 1.5f}, y[4];
    memcpy(y, x, sizeof x);
    vf_cpu_gelu(y, 4);
    for (int i = 0; i < 4; i++)
        CHECK(fabsf(y[i] - (float)(0.5 * x[i] * (1 + erf(x[i] / sqrt(2.0))))) < 1e-6f);
    memcpy(y, x, sizeof x);
    vf_cpu_quick_gelu(y, 4);
    for (int i = 0; i < 4; i++)
        CHECK(fabsf(y[i] - (float)(x[i] / (1 + exp(-1.702 * x[i])))) < 1e-6f);
    float gx[4] = {2.0f, 3.0f, 1.0f, -1.0f}, gy[2]; /* one row, inner 2: h=(2,3) gate=(1,-1) */
    vf_cpu_geglu(gy, gx, 1, 2);
    CHECK(fabsf(gy[0] - 2.0f * 0.8413447f) < 1e-5f && fabsf(gy[1] - 3.0f * -0.1586553f) < 1e-5f);
    float img[4] = {1, 2, 3, 4}, up[16];
    vf_cpu_upsample_nearest2x(up, img, 1, 1, 2, 2);
    CHECK(up[0] == 1 && up[1] == 1 && up[4] == 1 && up[2] == 2 && up[15] == 4 && up[10] == 4);
    float nhwc[4], back[4];
    vf_cpu_nchw_to_nhwc(nhwc, img, 1, 2, 2); /* C=2, HW=2: (c0: 1,2; c1: 3,4) */
    CHECK(nhwc[0] == 1 && nhwc[1] == 3 && nhwc[2] == 2 && nhwc[3] == 4);
    vf_cpu_nhwc_to_nchw(back, nhwc, 1, 2, 2);
    CHECK(memcmp(back, img, sizeof img) == 0);
    float t = 999.0f, emb[8];
    vf_cpu_timestep_embedding(emb, &t, 1, 8, 1, 0.0f);
    /* flip_sin_to_cos: cos first; freq_i = 10000^(-i/4) */
    for (int i = 0; i < 4; i++) {
        double arg = 999.0 * pow(10000.0, -i / 4.0);
        CHECK(fabs(emb[i] - cos(arg)) < 2e-4 && fabs(emb[4 + i] - sin(arg)) < 2e-4);
    }
}

TEST_MAIN(TEST(test_linear), TEST(test_conv2d), TEST(test_conv2d_bands), TEST(test_layernorm_groupnorm),
          TEST(test_attention), TEST(test_activations_and_resample))
