/* Monitor: current and peak per counter, per-scope peaks (nested scopes each
 * see their own), the stage table, and clear_cache reaching every registered
 * cache; the public API (vramfit.h) reads the same figures.
 */
#include "mem/arena.h"
#include "mem/monitor.h"
#include "test.h"

#include <string.h>

static void test_counters_and_scopes(void)
{
    uint64_t c0[VF_MON_COUNT], c[VF_MON_COUNT], p[VF_MON_COUNT];
    vf_monitor_current(c0);
    vf_monitor_reset_peak();
    vf_monitor_clear_stages();

    CHECK_OK(vf_monitor_track_begin("outer"));
    vf_monitor_add(VF_MON_HOST, 1000);
    vf_monitor_add(VF_MON_DEVICE_ALLOCATED, 500);
    CHECK_OK(vf_monitor_track_begin("inner"));
    vf_monitor_add(VF_MON_HOST, 300);
    vf_monitor_add(VF_MON_HOST, -800);
    vf_mon_stage inner;
    CHECK_OK(vf_monitor_track_end(&inner));
    CHECK(strcmp(inner.name, "inner") == 0);
    CHECK(inner.start[VF_MON_HOST] == c0[VF_MON_HOST] + 1000);
    CHECK(inner.peak[VF_MON_HOST] == c0[VF_MON_HOST] + 1300);
    CHECK(inner.end[VF_MON_HOST] == c0[VF_MON_HOST] + 500);
    CHECK(inner.peak[VF_MON_DEVICE_ALLOCATED] == c0[VF_MON_DEVICE_ALLOCATED] + 500);
    vf_monitor_add(VF_MON_DEVICE_ALLOCATED, 2000);
    vf_monitor_add(VF_MON_DEVICE_ALLOCATED, -2500);
    vf_mon_stage outer;
    CHECK_OK(vf_monitor_track_end(&outer));
    CHECK(outer.peak[VF_MON_HOST] == c0[VF_MON_HOST] + 1300);
    CHECK(outer.peak[VF_MON_DEVICE_ALLOCATED] == c0[VF_MON_DEVICE_ALLOCATED] + 2500);
    CHECK(outer.seconds >= 0 && outer.seconds >= inner.seconds);

    /* Later scopes do not see earlier peaks. */
    CHECK_OK(vf_monitor_track_begin("later"));
    vf_monitor_add(VF_MON_DEVICE_ALLOCATED, 10);
    vf_mon_stage later;
    CHECK_OK(vf_monitor_track_end(&later));
    CHECK(later.peak[VF_MON_DEVICE_ALLOCATED] == c0[VF_MON_DEVICE_ALLOCATED] + 10);

    vf_monitor_current(c);
    vf_monitor_peak(p);
    CHECK(c[VF_MON_HOST] == c0[VF_MON_HOST] + 500 && p[VF_MON_HOST] == c0[VF_MON_HOST] + 1300);
    CHECK(p[VF_MON_DEVICE_ALLOCATED] == c0[VF_MON_DEVICE_ALLOCATED] + 2500);
    vf_monitor_reset_peak();
    vf_monitor_peak(p);
    CHECK(p[VF_MON_HOST] == c[VF_MON_HOST]);

    /* The stage table: ended scopes in the order they ended. */
    CHECK(vf_monitor_stage_count() == 3);
    CHECK(strcmp(vf_monitor_stage_at(0)->name, "inner") == 0);
    CHECK(strcmp(vf_monitor_stage_at(2)->name, "later") == 0);
    CHECK(vf_monitor_stage_at(3) == NULL && vf_monitor_stage_at(-1) == NULL);

    /* Counters never go below zero; mismatched end is an error. */
    vf_monitor_add(VF_MON_HOST, -(int64_t)(c[VF_MON_HOST] + 12345));
    vf_monitor_current(c);
    CHECK(c[VF_MON_HOST] == 0);
    CHECK(vf_monitor_track_end(NULL) == VF_ERR_INVALID_ARG);
    int opened = 0;
    while (vf_monitor_track_begin("deep") == VF_OK)
        opened++;
    CHECK(opened == VF_MON_MAX_DEPTH);
    CHECK(strstr(vf_last_error(), "nested") != NULL);
    while (opened-- > 0)
        CHECK_OK(vf_monitor_track_end(NULL));
    /* The table keeps the last VF_MON_MAX_STAGES. */
    CHECK(vf_monitor_stage_count() == 3 + VF_MON_MAX_DEPTH);
    for (int i = 0; i < VF_MON_MAX_STAGES; i++) {
        CHECK_OK(vf_monitor_track_begin("many"));
        CHECK_OK(vf_monitor_track_end(NULL));
    }
    CHECK(vf_monitor_stage_count() == VF_MON_MAX_STAGES);
    vf_monitor_clear_stages();
    CHECK(vf_monitor_stage_count() == 0);
}

typedef struct fake_cache {
    uint64_t held;
    int calls;
} fake_cache;

static uint64_t fake_drop(void *owner)
{
    fake_cache *c = owner;
    uint64_t n = c->held;
    c->held = 0;
    c->calls++;
    vf_monitor_add(VF_MON_HOST, -(int64_t)n); /* drop functions update the counters */
    return n;
}

static void test_clear_cache(void)
{
    fake_cache a = {100, 0}, b = {20, 0};
    vf_monitor_add(VF_MON_HOST, 120);
    CHECK_OK(vf_monitor_register_cache(&a, fake_drop));
    CHECK_OK(vf_monitor_register_cache(&b, fake_drop));
    CHECK(vf_clear_cache() == 120);
    CHECK(a.calls == 1 && b.calls == 1 && a.held == 0);
    vf_monitor_unregister_cache(&a);
    b.held = 5;
    CHECK(vf_monitor_clear_cache() == 5);
    CHECK(a.calls == 1 && b.calls == 2);
    vf_monitor_unregister_cache(&b);
    vf_monitor_unregister_cache(&b); /* unknown: ignored */
    CHECK(vf_monitor_clear_cache() == 0);
}

/* The public figures follow a device arena. */
static void test_public_api(void)
{
    vf_sim_options o;
    vf_sim_options_init(&o);
    o.memory = 1 << 20;
    o.context_bytes = 4096;
    vf_device *d = NULL;
    vf_arena *a = NULL;
    vf_memory_usage cur0, cur, peak;
    vf_get_memory_usage(&cur0, NULL);
    vf_reset_peak_usage();
    CHECK_OK(vf_track_usage_begin("denoise"));
    CHECK_OK(vf_device_sim_create(&o, &d));
    if (!d)
        return;
    CHECK_OK(vf_arena_create(d, 65536, &a));
    uint64_t x = 0, y = 0;
    if (a) {
        CHECK_OK(vf_arena_alloc(a, 10000, "x", &x));
        CHECK_OK(vf_arena_alloc(a, 20000, "y", &y));
        vf_arena_release(a, x);
    }
    vf_get_memory_usage(&cur, &peak);
    CHECK(cur.device_reserved - cur0.device_reserved == 4096 + 65536);
    CHECK(cur.device_allocated - cur0.device_allocated == 4096 + vf_arena_round(20000));
    CHECK(peak.device_allocated - cur0.device_allocated == 4096 + vf_arena_round(10000) + vf_arena_round(20000));
    CHECK(vf_get_peak_vram_usage() == peak.device_allocated);
    vf_arena_free(a);
    vf_device_free(d);
    vf_memory_usage sp;
    CHECK_OK(vf_track_usage_end(&sp));
    CHECK(sp.device_allocated == peak.device_allocated && sp.device_reserved == peak.device_reserved);
    int n = vf_usage_stage_count();
    char name[16];
    vf_memory_usage st;
    CHECK(n >= 1);
    CHECK_OK(vf_usage_stage(n - 1, name, sizeof name, &st));
    CHECK(strcmp(name, "denoise") == 0 && st.device_allocated == sp.device_allocated);
    CHECK(vf_usage_stage(n, name, sizeof name, &st) == VF_ERR_INVALID_ARG);
    vf_get_memory_usage(&cur, NULL);
    CHECK(cur.device_reserved == cur0.device_reserved && cur.device_allocated == cur0.device_allocated);
}

TEST_MAIN(TEST(test_counters_and_scopes), TEST(test_clear_cache), TEST(test_public_api))
