/* Arena: best fit with coalescing checked against a brute-force model over
 * random allocation sequences; fragmentation (enough free bytes, no extent
 * large enough) reported as such; peaks; a device-backed arena's region,
 * fault hook and monitor figures; host allocation failures leave it intact.
 */
#include "core/alloc.h"
#include "mem/arena.h"
#include "mem/monitor.h"
#include "test.h"

#include <string.h>

#define U VF_ARENA_ALIGN

static void test_basics(void)
{
    vf_arena *a = NULL;
    CHECK_OK(vf_arena_create(NULL, 10 * U + 100, &a)); /* rounded down */
    if (!a)
        return;
    CHECK(vf_arena_size(a) == 10 * U && vf_arena_used(a) == 0 && vf_arena_largest_free(a) == 10 * U);
    CHECK(vf_arena_round(0) == U && vf_arena_round(1) == U && vf_arena_round(U) == U &&
          vf_arena_round(U + 1) == 2 * U);
    uint64_t o1, o2, o3, o4;
    CHECK_OK(vf_arena_alloc(a, 1, "one", &o1));
    CHECK_OK(vf_arena_alloc(a, U + 1, "two", &o2));
    CHECK_OK(vf_arena_alloc(a, 0, "zero", &o3));
    CHECK(o1 == 0 && o2 == U && o3 == 3 * U);
    CHECK(vf_arena_used(a) == 4 * U && vf_arena_count(a) == 3 && vf_arena_ptr(a, o1) == NULL);
    /* Too large: BUDGET naming the request, the largest free and the total free. */
    CHECK(vf_arena_alloc(a, 7 * U, "block 'big'", &o4) == VF_ERR_BUDGET);
    CHECK_MSG(strstr(vf_last_error(), "block 'big'") && strstr(vf_last_error(), "asked 1792") &&
                  strstr(vf_last_error(), "largest free 1536") && strstr(vf_last_error(), "total free 1536"),
              "%s", vf_last_error());
    vf_arena_release(a, o2);
    vf_arena_release(a, o2);     /* twice: ignored */
    vf_arena_release(a, 5 * U);  /* not an allocation: ignored */
    vf_arena_release(a, 1);      /* not an offset: ignored */
    CHECK(vf_arena_used(a) == 2 * U && vf_arena_count(a) == 2 && vf_arena_peak(a) == 4 * U);
    /* Best fit: the 2-unit hole, not the 6-unit tail. */
    CHECK_OK(vf_arena_alloc(a, U, "fit", &o4));
    CHECK(o4 == U);
    vf_arena_reset_peak(a);
    CHECK(vf_arena_peak(a) == 3 * U);
    vf_arena_free(a); /* with live allocations */

    CHECK_OK(vf_arena_create(NULL, 100, &a)); /* smaller than one unit: empty */
    CHECK(vf_arena_size(a) == 0);
    CHECK(vf_arena_alloc(a, 1, "x", &o1) == VF_ERR_BUDGET);
    vf_arena_free(a);
    vf_arena_free(NULL);
}

/* Free bytes in plenty, but scattered: the message says so; coalescing heals it. */
static void test_fragmentation(void)
{
    vf_arena *a = NULL;
    CHECK_OK(vf_arena_create(NULL, 8 * U, &a));
    if (!a)
        return;
    uint64_t o[8];
    for (int i = 0; i < 8; i++)
        CHECK_OK(vf_arena_alloc(a, U, "unit", &o[i]));
    for (int i = 0; i < 8; i += 2)
        vf_arena_release(a, o[i]);
    uint64_t x;
    CHECK(vf_arena_alloc(a, 2 * U, "pair", &x) == VF_ERR_BUDGET);
    CHECK_MSG(strstr(vf_last_error(), "largest free 256, total free 1024") != NULL, "%s", vf_last_error());
    /* Freeing o[3] joins o[2], o[3], o[4] into one 3-unit extent. */
    vf_arena_release(a, o[3]);
    CHECK(vf_arena_largest_free(a) == 3 * U);
    CHECK_OK(vf_arena_alloc(a, 3 * U, "triple", &x));
    CHECK(x == o[2]);
    /* Everything freed in any order ends as one extent. */
    vf_arena_release(a, x);
    for (int i = 1; i < 8; i += 2)
        vf_arena_release(a, o[i]);
    CHECK(vf_arena_largest_free(a) == 8 * U && vf_arena_used(a) == 0 && vf_arena_count(a) == 0);
    vf_arena_free(a);
}

/* ---- brute-force model -------------------------------------------------------- */

#define NU 512 /* units in the model arena */

typedef struct model {
    int owner[NU]; /* allocation id per unit, -1 free */
    uint64_t used, peak;
} model;

/* Best fit by enumeration: smallest free run that holds need units, lowest start on ties. */
static int model_alloc(model *m, int need, int id)
{
    int best = -1, best_len = NU + 1;
    for (int i = 0; i < NU;) {
        if (m->owner[i] != -1) {
            i++;
            continue;
        }
        int j = i;
        while (j < NU && m->owner[j] == -1)
            j++;
        if (j - i >= need && j - i < best_len) {
            best = i;
            best_len = j - i;
        }
        i = j;
    }
    if (best < 0)
        return -1;
    for (int k = 0; k < need; k++)
        m->owner[best + k] = id;
    m->used += (uint64_t)need * U;
    m->peak = m->used > m->peak ? m->used : m->peak;
    return best;
}

static uint64_t model_largest(const model *m)
{
    int best = 0;
    for (int i = 0; i < NU;) {
        int j = i;
        while (j < NU && m->owner[j] == -1)
            j++;
        best = j - i > best ? j - i : best;
        i = j > i ? j : i + 1;
    }
    return (uint64_t)best * U;
}

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void test_random_vs_model(void)
{
    vf_arena *a = NULL;
    CHECK_OK(vf_arena_create(NULL, (uint64_t)NU * U, &a));
    if (!a)
        return;
    static model m;
    for (int i = 0; i < NU; i++)
        m.owner[i] = -1;
    m.used = m.peak = 0;
    enum { MAXLIVE = 400 };
    uint64_t live_off[MAXLIVE];
    int live_id[MAXLIVE], nlive = 0, next_id = 0, fails = 0, mismatches = 0;
    for (int step = 0; step < 20000 && mismatches < 5; step++) {
        int do_alloc = nlive == 0 || (nlive < MAXLIVE && rnd() % 100 < 55);
        if (do_alloc) {
            /* Mostly small requests, some large, sizes not multiples of the unit. */
            uint64_t bytes = rnd() % 8 ? 1 + rnd() % (4 * U) : 1 + rnd() % (60 * U);
            int need = (int)((bytes + U - 1) / U);
            uint64_t off = 0;
            vf_status st = vf_arena_alloc(a, bytes, "r", &off);
            int want = model_alloc(&m, need, next_id);
            if ((st == VF_OK) != (want >= 0) || (st == VF_OK && off != (uint64_t)want * U)) {
                mismatches++;
                CHECK_MSG(0, "step %d: %llu bytes: arena %s at %llu, model %d", step,
                          (unsigned long long)bytes, vf_status_str(st), (unsigned long long)off, want);
            }
            if (st == VF_OK) {
                live_off[nlive] = off;
                live_id[nlive++] = next_id++;
            } else {
                fails++;
                CHECK(st == VF_ERR_BUDGET);
            }
        } else {
            int k = (int)(rnd() % (uint64_t)nlive);
            vf_arena_release(a, live_off[k]);
            for (int i = 0; i < NU; i++)
                if (m.owner[i] == live_id[k]) {
                    m.owner[i] = -1;
                    m.used -= U;
                }
            live_off[k] = live_off[--nlive];
            live_id[k] = live_id[nlive];
        }
        if (vf_arena_used(a) != m.used || vf_arena_peak(a) != m.peak ||
            vf_arena_largest_free(a) != model_largest(&m) || vf_arena_count(a) != nlive) {
            mismatches++;
            CHECK_MSG(0, "step %d: used %llu/%llu peak %llu/%llu largest %llu/%llu count %d/%d", step,
                      (unsigned long long)vf_arena_used(a), (unsigned long long)m.used,
                      (unsigned long long)vf_arena_peak(a), (unsigned long long)m.peak,
                      (unsigned long long)vf_arena_largest_free(a), (unsigned long long)model_largest(&m),
                      vf_arena_count(a), nlive);
        }
    }
    printf("20000 random steps: %d requests did not fit, final used %llu, peak %llu\n", fails,
           (unsigned long long)vf_arena_used(a), (unsigned long long)vf_arena_peak(a));
    CHECK(fails > 10); /* the sequence did exercise full and fragmented states */
    CHECK(mismatches == 0);
    while (nlive > 0)
        vf_arena_release(a, live_off[--nlive]);
    CHECK(vf_arena_used(a) == 0 && vf_arena_largest_free(a) == (uint64_t)NU * U);
    vf_arena_free(a);
}

/* Over a device: the region is real memory, allocations pass the fault hook
 * and show in the monitor as device allocated. */
static void test_device_arena(void)
{
    vf_sim_options o;
    vf_sim_options_init(&o);
    o.memory = 1 << 20;
    o.context_bytes = 1000;
    vf_device *d = NULL;
    CHECK_OK(vf_device_sim_create(&o, &d));
    if (!d)
        return;
    uint64_t m0[VF_MON_COUNT], m1[VF_MON_COUNT];
    vf_monitor_current(m0);
    vf_arena *a = NULL, *b = NULL;
    CHECK(vf_arena_create(d, (1 << 20), &a) == VF_ERR_DEVICE && a == NULL); /* context + arena > memory */
    CHECK_MSG(strstr(vf_last_error(), "arena of") != NULL, "%s", vf_last_error());
    CHECK_OK(vf_arena_create(d, 64 * U, &a));
    if (!a) {
        vf_device_free(d);
        return;
    }
    CHECK(vf_device_used(d) == 1000 + 64 * U);
    uint64_t x, y;
    CHECK_OK(vf_arena_alloc(a, 3 * U, "x", &x));
    char *p = vf_arena_ptr(a, x);
    CHECK(p != NULL && ((uintptr_t)p & (U - 1)) == 0);
    memset(p, 7, 3 * U);
    vf_monitor_current(m1);
    CHECK(m1[VF_MON_DEVICE_RESERVED] - m0[VF_MON_DEVICE_RESERVED] == 64 * U);
    CHECK(m1[VF_MON_DEVICE_ALLOCATED] - m0[VF_MON_DEVICE_ALLOCATED] == 3 * U);
    vf_device_fault_alloc_fail_at(d, 1);
    CHECK(vf_arena_alloc(a, U, "block 'y'", &y) == VF_ERR_DEVICE);
    CHECK_MSG(strstr(vf_last_error(), "block 'y'") != NULL, "%s", vf_last_error());
    CHECK(vf_arena_used(a) == 3 * U && vf_arena_count(a) == 1);
    CHECK_OK(vf_arena_alloc(a, U, "y", &y));
    /* A second arena takes what is left of the device. */
    CHECK_OK(vf_arena_create(d, (1 << 20) - 1000 - 64 * U, &b));
    vf_arena_free(b);
    vf_arena_free(a);
    vf_monitor_current(m1);
    CHECK(m1[VF_MON_DEVICE_RESERVED] == m0[VF_MON_DEVICE_RESERVED]);
    CHECK(m1[VF_MON_DEVICE_ALLOCATED] == m0[VF_MON_DEVICE_ALLOCATED]);
    CHECK(vf_device_used(d) == 1000);
    vf_device_free(d);
}

/* A host allocation failure (the extent table growing) changes nothing. */
static void test_host_alloc_failures(void)
{
    vf_arena *a = NULL;
    CHECK_OK(vf_arena_create(NULL, 256 * U, &a));
    if (!a)
        return;
    uint64_t off[100];
    int n = 0, failures = 0;
    while (n < 100) {
        uint64_t used = vf_arena_used(a);
        vf_fault_alloc_fail_at(1);
        vf_status st = vf_arena_alloc(a, U, "u", &off[n]);
        vf_fault_alloc_fail_at(0);
        if (st != VF_OK) {
            failures++;
            CHECK(st == VF_ERR_NO_MEMORY && vf_arena_used(a) == used && vf_arena_count(a) == n);
            CHECK_OK(vf_arena_alloc(a, U, "u", &off[n]));
        }
        n++;
    }
    CHECK(failures >= 2); /* the table grew at least twice */
    for (int i = 0; i < n; i++)
        CHECK(off[i] == (uint64_t)i * U);
    vf_arena_free(a);
}

TEST_MAIN(TEST(test_basics), TEST(test_fragmentation), TEST(test_random_vs_model), TEST(test_device_arena),
          TEST(test_host_alloc_failures))
