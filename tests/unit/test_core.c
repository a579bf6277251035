/* Core pieces: dtype conversions (bit-exact against known encodings), error
 * messages (prefixing, truncation), allocation fault injection, shapes. */
#include "core/alloc.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"
#include "test.h"

#include <stdint.h>

static void test_f16_roundtrip_all(void)
{
    /* every finite f16 survives f16 -> f32 -> f16 exactly */
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
            continue; /* NaN payloads may be canonicalised */
        if (vf_f32_to_f16(vf_f16_to_f32((uint16_t)h)) != h)
            bad++;
    }
    CHECK_MSG(bad == 0, "%d f16 values did not round-trip", bad);
}

static void test_f16_known_values(void)
{
    CHECK(vf_f16_to_f32(0x3c00) == 1.0f);
    CHECK(vf_f16_to_f32(0xc000) == -2.0f);
    CHECK(vf_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(vf_f16_to_f32(0x0001) == 5.9604644775390625e-08f); /* smallest subnormal */
    CHECK(isinf(vf_f16_to_f32(0x7c00)));
    CHECK(isnan(vf_f16_to_f32(0x7e00)));
    CHECK(vf_f32_to_f16(1.0f) == 0x3c00);
    CHECK(vf_f32_to_f16(65520.0f) == 0x7c00);          /* rounds to inf */
    CHECK(vf_f32_to_f16(1.0f + 1.0f / 2048) == 0x3c00); /* tie to even */
    CHECK(vf_f32_to_f16(1.0f + 3.0f / 2048) == 0x3c02);
    CHECK(vf_f32_to_f16(1e-9f) == 0x0000);
}

static void test_bf16_and_f8(void)
{
    CHECK(vf_bf16_to_f32(0x3f80) == 1.0f);
    CHECK(vf_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(vf_f32_to_bf16(1.00390625f) == 0x3f80); /* tie to even (1 + 2^-8) */
    CHECK(vf_f32_to_bf16(1.01171875f) == 0x3f82); /* tie (1 + 3*2^-8) rounds up to even */
    CHECK(vf_f8e4m3_to_f32(0x38) == 1.0f);
    CHECK(vf_f8e4m3_to_f32(0x7e) == 448.0f);
    CHECK(isnan(vf_f8e4m3_to_f32(0x7f)));
    CHECK(vf_f8e5m2_to_f32(0x3c) == 1.0f);
    vf_dtype t;
    CHECK(vf_dtype_parse("BF16", &t) == 0 && t == VF_DTYPE_BF16);
    CHECK(vf_dtype_parse("F17", &t) != 0);
    CHECK(vf_dtype_size(VF_DTYPE_I64) == 8);
}

static void test_convert_arrays(void)
{
    uint16_t h[3] = {0x3c00, 0xc000, 0x3800};
    float f[3];
    vf_convert_to_f32(f, h, VF_DTYPE_F16, 3);
    CHECK(f[0] == 1.0f && f[1] == -2.0f && f[2] == 0.5f);
    uint16_t back[3];
    vf_convert_from_f32(back, VF_DTYPE_F16, f, 3);
    CHECK(memcmp(back, h, sizeof h) == 0);
}

static void test_error_messages(void)
{
    vf_clear_error();
    CHECK(vf_last_error()[0] == '\0');
    CHECK(vf_error(VF_ERR_IO, "%s: bad", "file.bin") == VF_ERR_IO);
    CHECK(strcmp(vf_last_error(), "file.bin: bad") == 0);
    CHECK(vf_error_prefix(VF_ERR_IO, "loading %s", "unet") == VF_ERR_IO);
    CHECK(strcmp(vf_last_error(), "loading unet: file.bin: bad") == 0);
    char big[5000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    vf_error(VF_ERR_FORMAT, "%s", big);
    CHECK(strlen(vf_last_error()) < 4096);
    vf_error_prefix(VF_ERR_FORMAT, "%s", big); /* cut, not overflowed */
    CHECK(strlen(vf_last_error()) < 4096);
    CHECK(strcmp(vf_status_str(VF_ERR_SHAPE), "wrong tensor shape") == 0);
}

static void test_alloc_fault_injection(void)
{
    vf_fault_alloc_fail_at(2);
    void *a = vf_malloc(16);
    void *b = vf_malloc(16);
    void *c = vf_malloc(16);
    CHECK(a != NULL);
    CHECK(b == NULL);
    CHECK(strstr(vf_last_error(), "16 bytes") != NULL);
    CHECK(c != NULL);
    vf_free(a);
    vf_free(c);
    vf_fault_alloc_fail_at(0);
    void *d = vf_calloc(SIZE_MAX / 2, 4); /* overflow: refused, not wrapped */
    CHECK(d == NULL);
}

static void test_shapes(void)
{
    int64_t s[3] = {2, 3, 4};
    CHECK(vf_shape_numel(s, 3) == 24);
    uint64_t nb;
    CHECK(vf_shape_nbytes(s, 3, VF_DTYPE_F16, &nb) == 0 && nb == 48);
    int64_t huge[2] = {(int64_t)1 << 40, (int64_t)1 << 40};
    CHECK(vf_shape_numel(huge, 2) == -1);
    int64_t neg[1] = {-1};
    CHECK(vf_shape_numel(neg, 1) == -1);
    char buf[64];
    CHECK(strcmp(vf_shape_str(s, 3, buf, sizeof buf), "[2, 3, 4]") == 0);
    vf_tensor t;
    CHECK_OK(vf_tensor_alloc_f32(&t, 3, s));
    CHECK(((float *)t.data)[23] == 0.0f);
    vf_tensor_free(&t);
    CHECK(vf_tensor_alloc_f32(&t, 2, huge) == VF_ERR_INVALID_ARG);
}

TEST_MAIN(TEST(test_f16_roundtrip_all), TEST(test_f16_known_values), TEST(test_bf16_and_f8),
          TEST(test_convert_arrays), TEST(test_error_messages), TEST(test_alloc_fault_injection),
          TEST(test_shapes))
