/* The PyTorch-compatible generator: every value must be bit-identical to what
 * torch.randn / torch.rand gave for the same seed (tests/data/sched/randn.json,
 * written by tools/make_sched_fixtures.py), including the small-n double path
 * and its cached Box-Muller partner, the recomputed tail of the n >= 16 path, a
 * 4x128x128 latent (hashed), and the reference pipelines' initial latents.
 */
#include "core/alloc.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "pipeline/rng.h"
#include "test.h"

#include <inttypes.h>
#include <stdint.h>

static cJSON *load_fixture(void)
{
    char path[1024];
    cJSON *j = NULL;
    snprintf(path, sizeof path, "%s/sched/randn.json", vf_test_data());
    CHECK_OK(vf_json_load(path, &j));
    return j;
}

/* Seeds are stored as decimal strings: they exceed a double's integer range. */
static uint64_t seed_of(const cJSON *o)
{
    const cJSON *s = cJSON_GetObjectItem(o, "seed");
    return cJSON_IsString(s) ? strtoull(s->valuestring, NULL, 10) : 0;
}

/* Reads a JSON array of numbers as float32; returns the count (capped at cap). */
static size_t json_floats(const cJSON *arr, float *out, size_t cap)
{
    size_t n = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
    {
        if (n < cap)
            out[n] = (float)v->valuedouble;
        n++;
    }
    return n;
}

/* Number of values whose bits differ; prints the first. */
static size_t bit_mismatches(const char *what, const float *got, const float *want, size_t n)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0) {
            if (!bad)
                fprintf(stderr, "%s: first mismatch at %zu: got %.9g want %.9g\n", what, i, got[i],
                        want[i]);
            bad++;
        }
    }
    return bad;
}

static void test_mt19937_reference_output(void)
{
    /* The 10000th output of the standard mt19937 seeded 5489 (C++11 [rand.predef]). */
    vf_rng *r = NULL;
    CHECK_OK(vf_rng_create(5489, &r));
    if (!r)
        return;
    uint32_t first = vf_rng_u32(r), v = first;
    for (int i = 1; i < 10000; i++)
        v = vf_rng_u32(r);
    CHECK(first == 3499211612u);
    CHECK(v == 4123659995u);
    vf_rng_seed(r, 5489);
    uint64_t w = vf_rng_u64(r);
    CHECK(w >> 32 == 3499211612u); /* random64: first draw is the high word */
    vf_rng_free(r);
}

static void test_randn_cases(void)
{
    cJSON *j = load_fixture();
    if (!j)
        return;
    const cJSON *c;
    int ncases = 0;
    float got[128], want[128];
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases"))
    {
        size_t n = (size_t)cJSON_GetObjectItem(c, "n")->valuedouble;
        CHECK(json_floats(cJSON_GetObjectItem(c, "values"), want, 128) == n);
        vf_rng *r = NULL;
        CHECK_OK(vf_rng_create(seed_of(c), &r));
        if (!r || n > 128)
            break;
        vf_rng_randn(r, got, n);
        char what[96];
        snprintf(what, sizeof what, "randn seed %" PRIu64 " n %zu", seed_of(c), n);
        CHECK_MSG(bit_mismatches(what, got, want, n) == 0, "%s", what);
        vf_rng_free(r);
        ncases++;
    }
    CHECK(ncases >= 50);
    cJSON_Delete(j);
}

static uint64_t fnv1a64(const float *x, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &x[i], 4);
        for (int k = 0; k < 4; k++) { /* little-endian bytes, as numpy wrote them */
            h ^= (b >> (8 * k)) & 0xff;
            h *= 0x100000001b3ull;
        }
    }
    return h;
}

static void test_randn_big_latent(void)
{
    cJSON *j = load_fixture();
    if (!j)
        return;
    const cJSON *big = cJSON_GetObjectItem(j, "big");
    size_t n = (size_t)cJSON_GetObjectItem(big, "n")->valuedouble;
    float first[64], last[64];
    CHECK(n == 4 * 128 * 128);
    CHECK(json_floats(cJSON_GetObjectItem(big, "first"), first, 64) == 64);
    CHECK(json_floats(cJSON_GetObjectItem(big, "last"), last, 64) == 64);
    float *x = vf_malloc(n * sizeof(float));
    vf_rng *r = NULL;
    CHECK_OK(vf_rng_create(seed_of(big), &r));
    if (x && r) {
        vf_rng_randn(r, x, n);
        CHECK(bit_mismatches("big first", x, first, 64) == 0);
        CHECK(bit_mismatches("big last", x + n - 64, last, 64) == 0);
        char hex[17];
        snprintf(hex, sizeof hex, "%016" PRIx64, fnv1a64(x, n));
        const char *want = cJSON_GetObjectItem(big, "fnv1a64")->valuestring;
        CHECK_MSG(strcmp(hex, want) == 0, "hash %s, want %s", hex, want);
    }
    vf_rng_free(r);
    vf_free(x);
    cJSON_Delete(j);
}

/* Successive draws of mixed sizes from one generator. */
static void test_randn_sequence(void)
{
    cJSON *j = load_fixture();
    if (!j)
        return;
    const cJSON *seq = cJSON_GetObjectItem(j, "sequence");
    const cJSON *calls = cJSON_GetObjectItem(seq, "calls");
    const cJSON *vals = cJSON_GetObjectItem(seq, "values");
    vf_rng *r = NULL;
    CHECK_OK(vf_rng_create(seed_of(seq), &r));
    int ncalls = cJSON_GetArraySize(calls);
    CHECK(ncalls == cJSON_GetArraySize(vals) && ncalls >= 8);
    for (int k = 0; r && k < ncalls; k++) {
        size_t n = (size_t)cJSON_GetArrayItem(calls, k)->valuedouble;
        float got[64], want[64];
        CHECK(n <= 64 && json_floats(cJSON_GetArrayItem(vals, k), want, 64) == n);
        vf_rng_randn(r, got, n);
        char what[64];
        snprintf(what, sizeof what, "sequence call %d (n %zu)", k, n);
        CHECK_MSG(bit_mismatches(what, got, want, n) == 0, "%s", what);
    }
    vf_rng_free(r);
    cJSON_Delete(j);
}

static void test_rand_uniform(void)
{
    cJSON *j = load_fixture();
    if (!j)
        return;
    const cJSON *u = cJSON_GetObjectItem(j, "rand");
    float want[64], got[64];
    size_t n = json_floats(cJSON_GetObjectItem(u, "values"), want, 64);
    CHECK(n == 40);
    vf_rng *r = NULL;
    CHECK_OK(vf_rng_create(seed_of(u), &r));
    if (r) {
        vf_rng_rand(r, got, n);
        CHECK(bit_mismatches("rand", got, want, n) == 0);
        for (size_t i = 0; i < n; i++)
            CHECK(got[i] >= 0.0f && got[i] < 1.0f);
    }
    vf_rng_free(r);
    cJSON_Delete(j);
}

/* manual_seed semantics: reseeding drops the cached normal and only the low 32
 * bits of the seed matter. */
static void test_reseed(void)
{
    vf_rng *a = NULL, *b = NULL;
    CHECK_OK(vf_rng_create(42, &a));
    CHECK_OK(vf_rng_create(42 + (UINT64_C(7) << 32), &b));
    if (!a || !b)
        goto out;
    float x1, x2, y1, y2;
    vf_rng_randn(a, &x1, 1); /* leaves the pair's sine cached */
    vf_rng_seed(a, 42);
    vf_rng_randn(a, &x2, 1);
    CHECK(memcmp(&x1, &x2, 4) == 0);
    vf_rng_randn(a, &y1, 1); /* the cached partner */
    vf_rng_randn(b, &y2, 1);
    vf_rng_randn(b, &y2, 1);
    CHECK(memcmp(&y1, &y2, 4) == 0);
    CHECK(x1 != y1);
    float big[32];
    vf_rng_randn(b, big, 32);
    for (int i = 0; i < 32; i++)
        CHECK(isfinite(big[i]) && fabsf(big[i]) < 8);
out:
    vf_rng_free(a);
    vf_rng_free(b);
}

/* The reference pipelines' initial latents (seed 1234, 1x4x8x8) exactly. */
static void check_reference_latents(const char *shared, const char *model)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/reference/%s/reference.safetensors", shared, model);
    vf_st_file *f = NULL;
    CHECK_OK(vf_st_open(path, &f));
    if (!f)
        return;
    const vf_st_tensor *t = vf_st_find(f, "init_latents");
    CHECK(t && t->dtype == VF_DTYPE_F32 && t->nbytes == 256 * sizeof(float));
    float want[256], got[256];
    if (t && t->nbytes == sizeof want) {
        CHECK_OK(vf_st_read(f, t, 0, want, sizeof want));
        vf_rng *r = NULL;
        CHECK_OK(vf_rng_create(1234, &r));
        if (r) {
            vf_rng_randn(r, got, 256);
            CHECK_MSG(bit_mismatches(model, got, want, 256) == 0, "%s init_latents", model);
        }
        vf_rng_free(r);
    }
    vf_st_close(f);
}

static void test_reference_init_latents(void)
{
    const char *shared = vf_test_shared();
    if (!shared) {
        printf("skip test_reference_init_latents: VF_SHARED not set\n");
        return;
    }
    check_reference_latents(shared, "tiny-sd15");
    check_reference_latents(shared, "tiny-sdxl");
}

static void test_alloc_failure(void)
{
    vf_rng *r = (vf_rng *)&r;
    vf_fault_alloc_fail_at(1);
    CHECK(vf_rng_create(1, &r) == VF_ERR_NO_MEMORY);
    vf_fault_alloc_fail_at(0);
    CHECK(r == NULL);
    CHECK(strstr(vf_last_error(), "random generator") != NULL);
}

TEST_MAIN(TEST(test_mt19937_reference_output), TEST(test_randn_cases), TEST(test_randn_big_latent),
          TEST(test_randn_sequence), TEST(test_rand_uniform), TEST(test_reseed),
          TEST(test_reference_init_latents), TEST(test_alloc_failure))
