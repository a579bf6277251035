/* PyTorch-compatible CPU generator (see rng.h for the algorithm and why).
 *
 * The float Box-Muller kernel is written one rounding at a time: every product
 * that PyTorch's AVX2 build fuses into the following add is an explicit fmaf(),
 * every other product feeds something that cannot be contracted, so the result
 * does not depend on this file's compiler flags (-ffp-contract, -mfma).
 */
#include "pipeline/rng.h"
#include "core/alloc.h"
#include "core/error.h"

#include <math.h>
#include <string.h>

#define MT_N 624
#define MT_M 397

struct vf_rng {
    uint32_t state[MT_N];
    int next;                 /* index of the next state word to temper     */
    int has_cached_normal;    /* the double path's second Box-Muller value  */
    double cached_normal;
};

/* ---- mt19937 ------------------------------------------------------------- */

void vf_rng_seed(vf_rng *r, uint64_t seed)
{
    r->state[0] = (uint32_t)(seed & 0xffffffffu);
    for (uint32_t j = 1; j < MT_N; j++) {
        uint32_t p = r->state[j - 1];
        r->state[j] = 1812433253u * (p ^ (p >> 30)) + j;
    }
    r->next = MT_N;
    r->has_cached_normal = 0;
    r->cached_normal = 0;
}

static void mt_twist(vf_rng *r)
{
    for (int k = 0; k < MT_N; k++) {
        uint32_t y = (r->state[k] & 0x80000000u) | (r->state[(k + 1) % MT_N] & 0x7fffffffu);
        uint32_t v = r->state[(k + MT_M) % MT_N] ^ (y >> 1);
        if (y & 1u)
            v ^= 0x9908b0dfu;
        r->state[k] = v;
    }
    r->next = 0;
}

uint32_t vf_rng_u32(vf_rng *r)
{
    if (r->next >= MT_N)
        mt_twist(r);
    uint32_t y = r->state[r->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

uint64_t vf_rng_u64(vf_rng *r)
{
    uint64_t hi = vf_rng_u32(r);
    uint64_t lo = vf_rng_u32(r);
    return (hi << 32) | lo;
}

vf_status vf_rng_create(uint64_t seed, vf_rng **out)
{
    *out = NULL;
    vf_rng *r = vf_malloc(sizeof *r);
    if (!r)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "random generator");
    vf_rng_seed(r, seed);
    *out = r;
    return VF_OK;
}

void vf_rng_free(vf_rng *r) { vf_free(r); }

/* ---- uniforms ------------------------------------------------------------ */

static float uniform_f32(vf_rng *r)
{
    return (float)(vf_rng_u32(r) & 0xffffffu) * (1.0f / 16777216.0f);
}

static double uniform_f64(vf_rng *r)
{
    return (double)(vf_rng_u64(r) & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

void vf_rng_rand(vf_rng *r, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = uniform_f32(r);
}

/* ---- avx_mathfun's log and sincos, one lane at a time -------------------- */

static float bits_to_f(uint32_t b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static uint32_t f_to_bits(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

/* Natural log for x in (0, 1]: exponent split, Cephes polynomial on the mantissa. */
static float cephes_logf(float x)
{
    if (!(x >= 1.17549435e-38f)) /* max with the smallest normal, as the kernel */
        x = 1.17549435e-38f;
    uint32_t b = f_to_bits(x);
    int32_t ex = (int32_t)(b >> 23) - 0x7f;
    x = bits_to_f((b & ~0x7f800000u) | 0x3f000000u); /* mantissa in [0.5, 1) */
    float e = (float)ex + 1.0f;
    int below = x < 0.707106781186547524f;
    float tmp = below ? x : 0.0f;
    x = x - 1.0f;
    e = e - (below ? 1.0f : 0.0f);
    x = x + tmp;

    float z = x * x;
    float y = 7.0376836292e-2f;
    y = fmaf(y, x, -1.1514610310e-1f);
    y = fmaf(y, x, 1.1676998740e-1f);
    y = fmaf(y, x, -1.2420140846e-1f);
    y = fmaf(y, x, 1.4249322787e-1f);
    y = fmaf(y, x, -1.6668057665e-1f);
    y = fmaf(y, x, 2.0000714765e-1f);
    y = fmaf(y, x, -2.4999993993e-1f);
    y = fmaf(y, x, 3.3333331174e-1f);
    y = y * x;
    float eq1 = e * -2.12194440e-4f;
    y = fmaf(y, z, eq1);
    y = fmaf(-z, 0.5f, y);
    x = x + y;
    return fmaf(e, 0.693359375f, x);
}

/* sin and cos of x >= 0 (x < 2*pi here): octant reduction in three parts. */
static void cephes_sincosf(float x, float *s, float *c)
{
    uint32_t sign_sin = f_to_bits(x) & 0x80000000u;
    x = fabsf(x);
    int32_t j = (int32_t)(x * 1.27323954473516f); /* truncation, as cvttps */
    j = (j + 1) & ~1;
    float y = (float)j;
    sign_sin ^= ((uint32_t)j & 4u) << 29;
    uint32_t sign_cos = (~(uint32_t)(j - 2) & 4u) << 29;
    int poly_sin = (j & 2) == 0;

    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);

    float z = x * x;
    float yc = 2.443315711809948e-5f;
    yc = fmaf(yc, z, -1.388731625493765e-3f);
    yc = fmaf(yc, z, 4.166664568298827e-2f);
    yc = yc * z;
    float half_z = z * 0.5f;
    yc = fmaf(yc, z, -half_z);
    yc = yc + 1.0f;

    float ys = -1.9515295891e-4f;
    ys = fmaf(ys, z, 8.3321608736e-3f);
    ys = fmaf(ys, z, -1.6666654611e-1f);
    ys = ys * z;
    ys = fmaf(ys, x, x);

    /* The kernel selects with masks and adds the rejected lane as +0. */
    float sin_from_s = poly_sin ? ys : 0.0f;
    float sin_from_c = poly_sin ? 0.0f : yc;
    float cos_s = ys - sin_from_s;
    float cos_c = yc - sin_from_c;
    float sv = sin_from_c + sin_from_s;
    float cv = cos_c + cos_s;
    *s = bits_to_f(f_to_bits(sv) ^ sign_sin);
    *c = bits_to_f(f_to_bits(cv) ^ sign_cos);
}

/* d is (16,): uniforms in, normals out; pairs d[j] (radius) with d[j+8] (angle). */
static void normal_fill_16(float *d)
{
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float u2 = d[j + 8];
        float radius = sqrtf(-2.0f * cephes_logf(u1));
        float theta = 6.28318548f * u2; /* (float)(2 * pi) */
        float s, c;
        cephes_sincosf(theta, &s, &c);
        d[j] = radius * c + 0.0f; /* fmadd(n, std = 1, mean = 0) */
        d[j + 8] = radius * s + 0.0f;
    }
}

/* One sample of normal_distribution<double>: Box-Muller with a cached partner. */
static double normal_f64(vf_rng *r)
{
    if (r->has_cached_normal) {
        r->has_cached_normal = 0;
        return r->cached_normal + 0.0;
    }
    double u1 = uniform_f64(r);
    double u2 = uniform_f64(r);
    double radius = sqrt(-2.0 * log1p(-u2));
    double theta = 2.0 * 3.14159265358979323846 * u1;
    r->cached_normal = radius * sin(theta);
    r->has_cached_normal = 1;
    return radius * cos(theta) + 0.0;
}

void vf_rng_randn(vf_rng *r, float *out, size_t n)
{
    if (n < 16) {
        for (size_t i = 0; i < n; i++)
            out[i] = (float)normal_f64(r);
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = uniform_f32(r);
    for (size_t i = 0; i + 16 <= n; i += 16)
        normal_fill_16(out + i);
    if (n % 16 != 0) {
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++)
            tail[i] = uniform_f32(r);
        normal_fill_16(tail);
    }
}
