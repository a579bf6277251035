/* The backend contract on the CPU: the vf_be_* wrappers and the CPU backend's
 * fusions (residual, accumulate, time-embedding add before GroupNorm, strided
 * attention operands, concat), argument validation, and the CUDA loader's
 * "unavailable" path, which is what every machine without a GPU (CI) takes.
 * Each fused op is compared with the plain reference kernels of ops.h run
 * step by step on the same inputs.
 */
#include "backend/backend.h"
#include "backend/cpu/ops.h"
#include "core/alloc.h"
#include "core/error.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rs = 0x1234567;

static float frand(void)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (float)((rs >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static float *rnd(size_t n)
{
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = frand();
    return p;
}

/* A CPU "device" buffer holding a copy of host data. */
static vf_dbuf *dev(vf_backend *be, const float *h, size_t n)
{
    vf_dbuf *p = NULL;
    if (vf_be_alloc(be, n, &p) != VF_OK)
        return NULL;
    if (h && vf_be_upload(be, p, h, VF_DTYPE_F32, n) != VF_OK) {
        vf_be_free(be, p);
        return NULL;
    }
    return p;
}

static float *get(vf_backend *be, const vf_dbuf *p, size_t n)
{
    float *h = malloc(n * sizeof(float));
    if (vf_be_download(be, h, p, n) != VF_OK) {
        free(h);
        return NULL;
    }
    return h;
}

static void test_info_and_options(void)
{
    vf_backend *be = NULL;
    CHECK_OK(vf_backend_create(NULL, &be));
    CHECK(be != NULL);
    if (!be)
        return;
    const vf_backend_info *i = vf_be_info(be);
    CHECK(i->kind == VF_BACKEND_CPU && i->dtype == VF_DTYPE_F32 && vf_be_esize(be) == 4);
    CHECK(vf_be_fm_layout(be) == VF_LAYOUT_NCHW && !vf_be_fm_is_tokens(be));
    CHECK(i->filter_layout == VF_FILTER_OIHW);
    vf_backend_free(be);

    vf_backend_options o;
    vf_backend_options_init(&o);
    o.dtype = VF_DTYPE_BF16;
    be = (vf_backend *)1;
    CHECK(vf_backend_create(&o, &be) == VF_ERR_UNSUPPORTED);
    CHECK(be == NULL);
    CHECK(strstr(vf_last_error(), "BF16") != NULL);
    vf_backend_free(NULL);
}

static void test_cuda_unavailable(void)
{
    vf_backend_options o;
    vf_backend *be = (vf_backend *)1;
    vf_backend_options_init(&o);
    o.kind = VF_BACKEND_CUDA;
    o.library = "/nonexistent/libvramfit-cuda.so";
    CHECK(vf_backend_create(&o, &be) == VF_ERR_DEVICE);
    CHECK(be == NULL);
    CHECK(strncmp(vf_last_error(), "CUDA backend unavailable: ", 26) == 0);
    CHECK(strstr(vf_last_error(), "/nonexistent/libvramfit-cuda.so") != NULL);

    /* A file that exists but is no library. */
    const char *data = getenv("VF_TESTDATA");
    char path[512];
    snprintf(path, sizeof path, "%s/../unit/test.h", data ? data : "tests/data");
    o.library = path;
    CHECK(vf_backend_create(&o, &be) == VF_ERR_DEVICE);
    CHECK(strncmp(vf_last_error(), "CUDA backend unavailable: ", 26) == 0);
}

static void test_linear_fusions(void)
{
    vf_backend *be;
    CHECK_OK(vf_backend_create(NULL, &be));
    int M = 13, K = 24, N = 10;
    float *x = rnd((size_t)M * K), *w = rnd((size_t)N * K), *b = rnd(N), *r = rnd((size_t)M * N);
    float *want = malloc(sizeof(float) * M * N);
    vf_dbuf *dx = dev(be, x, (size_t)M * K), *dw = dev(be, w, (size_t)N * K), *db = dev(be, b, N);
    vf_dbuf *dr = dev(be, r, (size_t)M * N), *dy = dev(be, NULL, (size_t)M * N);

    /* y = x w^T + b + r */
    CHECK_OK(vf_be_linear(be, dy, dx, dw, db, dr, M, K, N, VF_ACT_NONE));
    vf_cpu_linear(want, x, w, b, M, K, N);
    vf_cpu_add(want, r, (size_t)M * N);
    float *got = get(be, dy, (size_t)M * N);
    CHECK_CLOSE("linear + residual", got, want, (size_t)M * N, 1e-6);
    free(got);

    /* r == y: accumulate */
    CHECK_OK(vf_be_linear(be, dr, dx, dw, db, dr, M, K, N, VF_ACT_NONE));
    got = get(be, dr, (size_t)M * N);
    CHECK_CLOSE("linear accumulate", got, want, (size_t)M * N, 1e-6);
    free(got);

    /* fused activation */
    CHECK_OK(vf_be_linear(be, dy, dx, dw, db, NULL, M, K, N, VF_ACT_GELU));
    vf_cpu_linear(want, x, w, b, M, K, N);
    vf_cpu_gelu(want, (size_t)M * N);
    got = get(be, dy, (size_t)M * N);
    CHECK_CLOSE("linear + gelu", got, want, (size_t)M * N, 1e-6);
    free(got);

    /* validation */
    CHECK(vf_be_linear(be, dy, dx, dw, db, dr, M, K, N, VF_ACT_SILU) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "linear") != NULL);
    CHECK(vf_be_linear(be, dx, dx, dw, db, NULL, M, K, N, VF_ACT_NONE) == VF_ERR_INVALID_ARG);
    CHECK(vf_be_linear(be, dy, dx, dw, db, NULL, 0, K, N, VF_ACT_NONE) == VF_ERR_INVALID_ARG);
    CHECK(vf_be_linear(be, dy, dx, dw, db, NULL, M, K, N, (vf_act)99) == VF_ERR_INVALID_ARG);

    vf_be_free(be, dx);
    vf_be_free(be, dw);
    vf_be_free(be, db);
    vf_be_free(be, dr);
    vf_be_free(be, dy);
    free(x);
    free(w);
    free(b);
    free(r);
    free(want);
    vf_backend_free(be);
}

static void test_conv_and_groupnorm(void)
{
    vf_backend *be;
    CHECK_OK(vf_backend_create(NULL, &be));
    int B = 2, C = 8, H = 5, W = 6, OC = 4, G = 4;
    size_t nx = (size_t)B * C * H * W, ny = (size_t)B * OC * H * W;
    float *x = rnd(nx), *w = rnd((size_t)OC * C * 9), *b = rnd(OC), *r = rnd(ny), *want = malloc(ny * sizeof(float));
    vf_dbuf *dx = dev(be, x, nx), *dw = NULL, *db = dev(be, b, OC), *dr = dev(be, r, ny), *dy = dev(be, NULL, ny);
    CHECK_OK(vf_be_alloc(be, (size_t)OC * C * 9, &dw));
    CHECK_OK(vf_be_upload_conv_weight(be, dw, w, VF_DTYPE_F32, OC, C, 3, 3));
    CHECK_OK(vf_be_conv2d(be, dy, dx, dw, db, dr, B, C, H, W, OC, 3, 3, 1, 1));
    CHECK_OK(vf_cpu_conv2d(want, x, w, b, B, C, H, W, OC, 3, 3, 1, 1));
    vf_cpu_add(want, r, ny);
    float *got = get(be, dy, ny);
    CHECK_CLOSE("conv + residual", got, want, ny, 1e-6);
    free(got);
    CHECK_OK(vf_be_conv2d(be, dr, dx, dw, db, dr, B, C, H, W, OC, 3, 3, 1, 1));
    got = get(be, dr, ny);
    CHECK_CLOSE("conv accumulate", got, want, ny, 1e-6);
    free(got);
    CHECK(vf_be_conv2d(be, dy, dx, dw, db, NULL, B, C, 1, 1, OC, 3, 3, 1, 0) == VF_ERR_INVALID_ARG);

    /* groupnorm with the time-embedding add, in place */
    float *g = rnd(C), *be_ = rnd(C), *cb = rnd((size_t)B * C), *ref = malloc(nx * sizeof(float));
    vf_dbuf *dg = dev(be, g, C), *dbe = dev(be, be_, C), *dcb = dev(be, cb, (size_t)B * C);
    for (size_t bc = 0; bc < (size_t)B * C; bc++)
        for (int i = 0; i < H * W; i++)
            ref[bc * H * W + i] = x[bc * H * W + i] + cb[bc];
    vf_cpu_groupnorm(ref, ref, g, be_, B, C, H * W, G, 1e-5f, 1);
    CHECK_OK(vf_be_groupnorm(be, dx, dx, dg, dbe, dcb, B, C, H * W, G, 1e-5f, 1));
    got = get(be, dx, nx);
    CHECK_CLOSE("groupnorm + temb + silu in place", got, ref, nx, 1e-6);
    free(got);
    CHECK(vf_be_groupnorm(be, dx, dx, dg, dbe, NULL, B, C, H * W, 3, 1e-5f, 1) == VF_ERR_INVALID_ARG);

    float *ohwi = malloc((size_t)OC * C * 9 * sizeof(float));
    vf_conv_weight_to_ohwi(ohwi, w, sizeof(float), OC, C, 3, 3);
    /* element (o, c, kh, kw) lands at ((o*3 + kh)*3 + kw)*C + c */
    CHECK(ohwi[((1 * 3 + 2) * 3 + 0) * C + 5] == w[((1 * C + 5) * 3 + 2) * 3 + 0]);
    CHECK(ohwi[((3 * 3 + 1) * 3 + 2) * C + 7] == w[((3 * C + 7) * 3 + 1) * 3 + 2]);

    vf_be_free(be, dx);
    vf_be_free(be, dw);
    vf_be_free(be, db);
    vf_be_free(be, dr);
    vf_be_free(be, dy);
    vf_be_free(be, dg);
    vf_be_free(be, dbe);
    vf_be_free(be, dcb);
    free(x);
    free(w);
    free(b);
    free(r);
    free(want);
    free(g);
    free(be_);
    free(cb);
    free(ref);
    free(ohwi);
    vf_backend_free(be);
}

static void test_attention_strided(void)
{
    vf_backend *be;
    CHECK_OK(vf_backend_create(NULL, &be));
    int B = 2, L = 9, H = 3, D = 4, hd = H * D;
    size_t n = (size_t)B * L * 3 * hd;
    float *qkv = rnd(n), *q = malloc(sizeof(float) * B * L * hd), *k = malloc(sizeof(float) * B * L * hd);
    float *v = malloc(sizeof(float) * B * L * hd), *want = malloc(sizeof(float) * B * L * hd);
    for (int r = 0; r < B * L; r++)
        for (int c = 0; c < hd; c++) {
            q[r * hd + c] = qkv[(size_t)r * 3 * hd + c];
            k[r * hd + c] = qkv[(size_t)r * 3 * hd + hd + c];
            v[r * hd + c] = qkv[(size_t)r * 3 * hd + 2 * hd + c];
        }
    CHECK_OK(vf_cpu_attention(want, q, k, v, B, L, L, H, D, 1, 0.5f));
    vf_dbuf *dqkv = dev(be, qkv, n), *dout = dev(be, NULL, (size_t)B * L * 2 * hd);
    CHECK_OK(vf_be_attention(be, vf_be_at(be, dout, 1), dqkv, vf_be_cat(be, dqkv, hd), vf_be_cat(be, dqkv, 2 * hd), B, L,
                             L, H, D, 3 * hd, 3 * hd, 3 * hd, 2 * hd, 1, 0.5f));
    float *o = get(be, dout, (size_t)B * L * 2 * hd), *packed = malloc(sizeof(float) * B * L * hd);
    for (int r = 0; r < B * L; r++)
        memcpy(packed + (size_t)r * hd, o + (size_t)r * 2 * hd + 1, sizeof(float) * hd);
    CHECK_CLOSE("strided causal attention", packed, want, (size_t)B * L * hd, 1e-6);
    CHECK(vf_be_attention(be, dout, dqkv, dqkv, dqkv, B, L, L, H, D, hd - 1, 0, 0, 0, 0, 1.0f) == VF_ERR_INVALID_ARG);
    vf_be_free(be, dqkv);
    vf_be_free(be, dout);
    free(qkv);
    free(q);
    free(k);
    free(v);
    free(want);
    free(o);
    free(packed);
    vf_backend_free(be);
}

static void test_small_ops(void)
{
    vf_backend *be;
    CHECK_OK(vf_backend_create(NULL, &be));
    int B = 2, Ca = 3, Cb = 2, HW = 5;
    float *a = rnd((size_t)B * Ca * HW), *b = rnd((size_t)B * Cb * HW);
    vf_dbuf *da = dev(be, a, (size_t)B * Ca * HW), *db = dev(be, b, (size_t)B * Cb * HW);
    vf_dbuf *dy = dev(be, NULL, (size_t)B * (Ca + Cb) * HW);
    CHECK_OK(vf_be_concat(be, dy, da, Ca, db, Cb, B, HW));
    float *y = get(be, dy, (size_t)B * (Ca + Cb) * HW);
    /* batch 1, channel Ca+1 comes from b's channel 1 */
    CHECK(y[(1 * (Ca + Cb) + Ca + 1) * HW + 3] == b[(1 * Cb + 1) * HW + 3]);
    CHECK(y[(1 * (Ca + Cb) + 2) * HW + 4] == a[(1 * Ca + 2) * HW + 4]);
    free(y);

    /* axpby, events, copy, sync */
    CHECK_OK(vf_be_axpby(be, da, da, (size_t)B * Ca * HW, 0.5f, 0.25f));
    y = get(be, da, 1);
    CHECK(fabsf(y[0] - 0.75f * a[0]) < 1e-7f);
    free(y);
    vf_bevent *e0, *e1;
    float ms = -1;
    CHECK_OK(vf_be_event_create(be, &e0));
    CHECK_OK(vf_be_event_create(be, &e1));
    CHECK_OK(vf_be_record(be, e0, VF_STREAM_COMPUTE));
    CHECK_OK(vf_be_copy(be, dy, db, (size_t)B * Cb * HW));
    CHECK_OK(vf_be_record(be, e1, VF_STREAM_COPY));
    CHECK_OK(vf_be_wait(be, VF_STREAM_COMPUTE, e1));
    CHECK_OK(vf_be_event_sync(be, e1));
    CHECK_OK(vf_be_elapsed_ms(be, e0, e1, &ms));
    CHECK(ms >= 0);
    CHECK_OK(vf_be_sync(be));
    vf_be_event_destroy(be, e0);
    vf_be_event_destroy(be, e1);
    y = get(be, dy, (size_t)B * Cb * HW);
    CHECK(memcmp(y, b, sizeof(float) * B * Cb * HW) == 0);
    free(y);

    /* upload converts from F16 */
    uint16_t h[3] = {0x3c00, 0xc000, 0x3800}; /* 1, -2, 0.5 */
    CHECK_OK(vf_be_upload(be, dy, h, VF_DTYPE_F16, 3));
    y = get(be, dy, 3);
    CHECK(y[0] == 1.0f && y[1] == -2.0f && y[2] == 0.5f);
    free(y);
    CHECK(vf_be_upload(be, dy, h, VF_DTYPE_I32, 3) == VF_ERR_INVALID_ARG);

    float t[2] = {10.0f, 999.0f}, want[2 * 16];
    CHECK_OK(vf_be_timestep_embedding(be, dy, t, 2, 16, 1, 0.0f));
    vf_cpu_timestep_embedding(want, t, 2, 16, 1, 0.0f);
    y = get(be, dy, 32);
    CHECK(memcmp(y, want, sizeof want) == 0);
    free(y);

    vf_be_free(be, da);
    vf_be_free(be, db);
    vf_be_free(be, dy);
    free(a);
    free(b);
    vf_backend_free(be);
}

static void test_alloc_failure(void)
{
    vf_backend *be = (vf_backend *)1;
    vf_fault_alloc_fail_at(1);
    CHECK(vf_backend_create(NULL, &be) == VF_ERR_NO_MEMORY);
    CHECK(be == NULL);
    vf_fault_alloc_fail_at(2);
    CHECK(vf_backend_create(NULL, &be) == VF_ERR_NO_MEMORY);
    vf_fault_alloc_fail_at(0);
}

TEST_MAIN(TEST(test_info_and_options), TEST(test_cuda_unavailable), TEST(test_linear_fusions),
          TEST(test_conv_and_groupnorm), TEST(test_attention_strided), TEST(test_small_ops), TEST(test_alloc_failure))
