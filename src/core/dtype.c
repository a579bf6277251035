/* Element types (see dtype.h). The half-precision conversions are the bit-exact
 * IEEE ones (subnormals, infinities and NaN preserved) so that f16 checkpoints
 * reproduce PyTorch's float32 upcast exactly. */
#include "core/dtype.h"

#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
    int is_float;
} g_types[VF_DTYPE_COUNT] = {
    [VF_DTYPE_F32] = {"F32", 4, 1},     [VF_DTYPE_F16] = {"F16", 2, 1},
    [VF_DTYPE_BF16] = {"BF16", 2, 1},   [VF_DTYPE_F8_E4M3] = {"F8_E4M3", 1, 1},
    [VF_DTYPE_F8_E5M2] = {"F8_E5M2", 1, 1}, [VF_DTYPE_I8] = {"I8", 1, 0},
    [VF_DTYPE_U8] = {"U8", 1, 0},       [VF_DTYPE_I16] = {"I16", 2, 0},
    [VF_DTYPE_I32] = {"I32", 4, 0},     [VF_DTYPE_I64] = {"I64", 8, 0},
    [VF_DTYPE_F64] = {"F64", 8, 1},     [VF_DTYPE_BOOL] = {"BOOL", 1, 0},
    /* packed formats: no per-element size, never read from a safetensors header */
    [VF_DTYPE_Q8] = {"Q8", 0, 0},       [VF_DTYPE_Q4] = {"Q4", 0, 0},
};

const char *vf_dtype_name(vf_dtype t)
{
    return (unsigned)t < VF_DTYPE_COUNT ? g_types[t].name : "?";
}

size_t vf_dtype_size(vf_dtype t) { return (unsigned)t < VF_DTYPE_COUNT ? g_types[t].size : 0; }

int vf_dtype_is_float(vf_dtype t) { return (unsigned)t < VF_DTYPE_COUNT && g_types[t].is_float; }

int vf_dtype_parse(const char *s, vf_dtype *out)
{
    for (int i = 0; i < VF_DTYPE_COUNT; i++) {
        if (g_types[i].size && strcmp(s, g_types[i].name) == 0) {
            *out = (vf_dtype)i;
            return 0;
        }
    }
    return -1;
}

static float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

float vf_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f)
        return bits_to_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        float v = ldexpf((float)man, -24);
        return sign ? -v : v;
    }
    return bits_to_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t vf_f32_to_f16(float f)
{
    uint32_t u = f32_to_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t exp = (u >> 23) & 0xff, man = u & 0x7fffff;
    if (exp == 0xff)
        return sign | 0x7c00 | (man ? 0x200 | (uint16_t)(man >> 13) : 0);
    int e = (int)exp - 127 + 15;
    if (e >= 0x1f)
        return sign | 0x7c00;
    if (e <= 0) {
        if (e < -10)
            return sign;
        man |= 0x800000;
        int shift = 14 - e;
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1)))
            half++;
        return sign | (uint16_t)half;
    }
    uint32_t half = ((uint32_t)e << 10) | (man >> 13), rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1)))
        half++; /* may carry into the exponent, which is the right result */
    return sign | (uint16_t)half;
}

float vf_bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

uint16_t vf_f32_to_bf16(float f)
{
    uint32_t u = f32_to_bits(f);
    if ((u & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float vf_f8e4m3_to_f32(uint8_t v)
{
    int sign = v & 0x80, exp = (v >> 3) & 0xf, man = v & 7;
    float r;
    if (exp == 0xf && man == 7)
        return NAN;
    if (exp == 0)
        r = ldexpf((float)man, -9);
    else
        r = ldexpf(1.0f + man / 8.0f, exp - 7);
    return sign ? -r : r;
}

float vf_f8e5m2_to_f32(uint8_t v) { return vf_f16_to_f32((uint16_t)v << 8); }

void vf_convert_to_f32(float *dst, const void *src, vf_dtype t, size_t n)
{
    const uint8_t *s = src;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        double d;
        switch (t) {
        case VF_DTYPE_F32: memcpy(&dst[i], s + 4 * i, 4); break;
        case VF_DTYPE_F16: memcpy(&h, s + 2 * i, 2); dst[i] = vf_f16_to_f32(h); break;
        case VF_DTYPE_BF16: memcpy(&h, s + 2 * i, 2); dst[i] = vf_bf16_to_f32(h); break;
        case VF_DTYPE_F8_E4M3: dst[i] = vf_f8e4m3_to_f32(s[i]); break;
        case VF_DTYPE_F8_E5M2: dst[i] = vf_f8e5m2_to_f32(s[i]); break;
        case VF_DTYPE_F64: memcpy(&d, s + 8 * i, 8); dst[i] = (float)d; break;
        default: dst[i] = 0.0f; break;
        }
    }
}

void vf_convert_from_f32(void *dst, vf_dtype t, const float *src, size_t n)
{
    uint8_t *d = dst;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        switch (t) {
        case VF_DTYPE_F32: memcpy(d + 4 * i, &src[i], 4); break;
        case VF_DTYPE_F16: h = vf_f32_to_f16(src[i]); memcpy(d + 2 * i, &h, 2); break;
        case VF_DTYPE_BF16: h = vf_f32_to_bf16(src[i]); memcpy(d + 2 * i, &h, 2); break;
        default: break;
        }
    }
}
