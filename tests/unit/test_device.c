/* Devices: the CPU backend is plain host memory; the simulated device keeps
 * its memory cap (context included), copies in queue order on its own thread
 * at the configured bandwidth (pageable slower than pinned), reports a failed
 * copy at the next event, rejects copies outside its regions, and fails the
 * Nth device allocation when asked to. Its usage reaches the monitor.
 */
#include "core/alloc.h"
#include "mem/device.h"
#include "mem/monitor.h"
#include "test.h"

#include <string.h>

static void test_cpu_device(void)
{
    vf_device *d = NULL;
    CHECK_OK(vf_device_cpu_create(&d));
    if (!d)
        return;
    CHECK(vf_device_is_host(d) && vf_device_host_accessible(d));
    CHECK(strcmp(vf_device_name(d), "cpu") == 0);
    uint64_t mon0[VF_MON_COUNT], mon1[VF_MON_COUNT];
    vf_monitor_current(mon0);
    void *base = NULL;
    CHECK_OK(vf_device_reserve(d, 4096, &base));
    CHECK(base && ((uintptr_t)base & 255) == 0);
    vf_monitor_current(mon1);
    CHECK(mon1[VF_MON_DEVICE_RESERVED] == mon0[VF_MON_DEVICE_RESERVED]); /* the host is no device */
    char src[100], back[100];
    for (int i = 0; i < 100; i++)
        src[i] = (char)i;
    vf_event *ev = NULL;
    CHECK_OK(vf_device_event_create(d, &ev));
    CHECK_OK(vf_device_h2d_async(d, (char *)base + 256, src, 100));
    CHECK_OK(vf_device_event_record(d, ev));
    CHECK(vf_device_event_query(d, ev) == 1);
    CHECK_OK(vf_device_event_wait(d, ev));
    CHECK_OK(vf_device_d2h(d, back, (char *)base + 256, 100));
    CHECK(memcmp(src, back, 100) == 0);
    vf_device_event_destroy(d, ev);
    void *p = NULL;
    CHECK_OK(vf_device_pinned_alloc(d, 1000, &p));
    CHECK(vf_device_pinned_bytes(d) == 1000);
    vf_device_pinned_free(d, p, 1000);
    CHECK(vf_device_pinned_bytes(d) == 0);
    vf_device_unreserve(d, base, 4096);
    vf_device_free(d);
}

static vf_device *make_sim(uint64_t memory, uint64_t context, double bw)
{
    vf_sim_options o;
    vf_sim_options_init(&o);
    o.memory = memory;
    o.context_bytes = context;
    o.bandwidth = bw;
    vf_device *d = NULL;
    CHECK_OK(vf_device_sim_create(&o, &d));
    return d;
}

/* The cap holds context + reservations + other users; the monitor sees ours. */
static void test_sim_memory(void)
{
    uint64_t mon0[VF_MON_COUNT], mon1[VF_MON_COUNT];
    vf_monitor_current(mon0);
    vf_device *d = make_sim(1 << 20, 100000, 0);
    if (!d)
        return;
    uint64_t total, free;
    vf_device_mem_info(d, &total, &free);
    CHECK(total == 1 << 20 && free == (1 << 20) - 100000);
    CHECK(vf_device_used(d) == 100000);
    vf_monitor_current(mon1);
    CHECK(mon1[VF_MON_DEVICE_RESERVED] - mon0[VF_MON_DEVICE_RESERVED] == 100000);
    CHECK(mon1[VF_MON_DEVICE_ALLOCATED] - mon0[VF_MON_DEVICE_ALLOCATED] == 100000);

    void *a = NULL, *b = NULL;
    CHECK(vf_device_reserve(d, free + 1, &a) == VF_ERR_DEVICE && a == NULL);
    CHECK_MSG(strstr(vf_last_error(), "out of device memory") && strstr(vf_last_error(), "context 100000"),
              "%s", vf_last_error());
    CHECK_OK(vf_device_reserve(d, 500000, &a));
    CHECK(a && ((uintptr_t)a & 255) == 0);
    memset(a, 0x5a, 500000); /* backed by real memory (ASan checks the bounds) */
    vf_device_mem_info(d, &total, &free);
    CHECK(free == (1 << 20) - 600000);
    /* Another process takes memory: what was free is gone. */
    vf_device_sim_set_external_use(d, 400000);
    vf_device_mem_info(d, &total, &free);
    CHECK(free == (1 << 20) - 1000000);
    CHECK(vf_device_reserve(d, 100000, &b) == VF_ERR_DEVICE);
    CHECK(strstr(vf_last_error(), "other processes 400000") != NULL);
    vf_device_sim_set_external_use(d, 0);
    CHECK_OK(vf_device_reserve(d, 100000, &b));
    CHECK(vf_device_used(d) == 700000 && vf_device_peak(d) == 700000);
    vf_device_unreserve(d, a, 500000);
    CHECK(vf_device_used(d) == 200000 && vf_device_peak(d) == 700000);
    vf_device_unreserve(d, b, 100000);
    vf_device_free(d);
    vf_monitor_current(mon1);
    CHECK(mon1[VF_MON_DEVICE_RESERVED] == mon0[VF_MON_DEVICE_RESERVED]);
    CHECK(mon1[VF_MON_DEVICE_ALLOCATED] == mon0[VF_MON_DEVICE_ALLOCATED]);

    vf_sim_options o;
    vf_sim_options_init(&o);
    o.memory = 10;
    o.context_bytes = 11;
    CHECK(vf_device_sim_create(&o, &d) == VF_ERR_INVALID_ARG && d == NULL);
}

/* Copies land in order; events complete after what was queued before them. */
static void test_sim_copies(void)
{
    vf_device *d = make_sim(1 << 24, 0, 0);
    if (!d)
        return;
    enum { N = 1 << 16 };
    char *base = NULL;
    CHECK_OK(vf_device_reserve(d, 4 * N, (void **)&base));
    char *src = malloc(4 * N), *back = malloc(4 * N);
    for (int i = 0; i < 4 * N; i++)
        src[i] = (char)(i * 7 + 3);
    vf_event *ev = NULL;
    CHECK_OK(vf_device_event_create(d, &ev));
    CHECK(vf_device_event_query(d, ev) == 1); /* never recorded: complete */
    CHECK_OK(vf_device_event_wait(d, ev));
    for (int k = 0; k < 4; k++)
        CHECK_OK(vf_device_h2d_async(d, base + k * N, src + k * N, N));
    /* The same bytes twice: the later copy wins, as on a stream. */
    memset(back, 0, N);
    CHECK_OK(vf_device_h2d_async(d, base, back, 16));
    CHECK_OK(vf_device_event_record(d, ev));
    CHECK_OK(vf_device_event_wait(d, ev));
    CHECK(vf_device_event_time(d, ev) > 0);
    CHECK_OK(vf_device_d2h(d, back, base, 4 * N));
    CHECK(memcmp(back + 16, src + 16, 4 * N - 16) == 0);
    CHECK(back[0] == 0 && back[15] == 0);
    CHECK(vf_device_sim_copies(d) == 6);
    CHECK(vf_device_sim_copied_bytes(d) == 2ull * 4 * N + 16);

    /* Outside every region: refused when queued. */
    CHECK(vf_device_h2d_async(d, base + 4 * N - 8, src, 16) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "outside every reserved region") != NULL);
    CHECK(vf_device_d2h_async(d, back, src, 16) == VF_ERR_INVALID_ARG);

    /* A failed copy is reported by the next event, and only by it. */
    vf_event *ev2 = NULL;
    CHECK_OK(vf_device_event_create(d, &ev2));
    vf_device_sim_fail_copy_at(d, 2);
    CHECK_OK(vf_device_h2d_async(d, base, src, 64));
    CHECK_OK(vf_device_h2d_async(d, base + 64, src, 64));
    CHECK_OK(vf_device_event_record(d, ev));
    CHECK_OK(vf_device_h2d_async(d, base + 128, src, 64));
    CHECK_OK(vf_device_event_record(d, ev2));
    CHECK(vf_device_event_wait(d, ev) == VF_ERR_DEVICE);
    CHECK_MSG(strstr(vf_last_error(), "injected") != NULL, "%s", vf_last_error());
    CHECK_OK(vf_device_event_wait(d, ev2));
    vf_device_sim_fail_copy_at(d, 0);
    CHECK_OK(vf_device_h2d(d, base, src, 64));
    vf_device_event_destroy(d, ev);
    vf_device_event_destroy(d, ev2);
    vf_device_event_destroy(d, NULL);
    vf_device_unreserve(d, base, 4 * N);
    free(src);
    free(back);
    vf_device_free(d);
}

/* Throttled: a copy takes bytes / bandwidth, eight times that from pageable
 * memory, and the caller is not blocked while it runs. */
static void test_sim_bandwidth(void)
{
    const double bw = 20e6; /* 20 MB/s: 1 MB takes 50 ms */
    vf_device *d = make_sim(1 << 24, 0, bw);
    if (!d)
        return;
    const uint64_t n = 1000000;
    char *base = NULL, *pinned = NULL, *pageable = calloc(1, n / 8);
    CHECK_OK(vf_device_reserve(d, n, (void **)&base));
    CHECK_OK(vf_device_pinned_alloc(d, n, (void **)&pinned));
    if (!base || !pinned)
        return;
    memset(pinned, 1, n);
    vf_event *ev = NULL;
    CHECK_OK(vf_device_event_create(d, &ev));
    double t0 = vf_device_now();
    CHECK_OK(vf_device_h2d_async(d, base, pinned, n));
    CHECK_OK(vf_device_event_record(d, ev));
    double queued = vf_device_now() - t0;
    CHECK(vf_device_event_query(d, ev) == 0);
    CHECK_OK(vf_device_event_wait(d, ev));
    double took = vf_device_now() - t0;
    printf("pinned 1 MB at 20 MB/s: queued in %.2f ms, done in %.1f ms\n", queued * 1e3, took * 1e3);
    CHECK(queued < 0.02);
    CHECK(took >= 0.05 && took < 0.5);
    /* n/8 bytes from pageable memory take as long as n pinned bytes. */
    t0 = vf_device_now();
    CHECK_OK(vf_device_h2d(d, base, pageable, n / 8));
    double tp = vf_device_now() - t0;
    printf("pageable 125 kB: %.1f ms\n", tp * 1e3);
    CHECK(tp >= 0.05 && tp < 0.5);
    /* A pointer inside a pinned buffer is pinned too. */
    t0 = vf_device_now();
    CHECK_OK(vf_device_h2d(d, base, pinned + n / 2, n / 8));
    CHECK(vf_device_now() - t0 < 0.04);
    /* Freeing the device waits for what is queued. */
    CHECK_OK(vf_device_h2d_async(d, base, pinned, n / 4));
    vf_device_event_destroy(d, ev);
    vf_device_pinned_free(d, pinned, n);
    vf_device_unreserve(d, base, n);
    vf_device_free(d);
    free(pageable);
}

static void test_sim_pinned_limit(void)
{
    vf_sim_options o;
    vf_sim_options_init(&o);
    o.memory = 1 << 20;
    o.context_bytes = 0;
    o.pinned_limit = 10000;
    vf_device *d = NULL;
    CHECK_OK(vf_device_sim_create(&o, &d));
    if (!d)
        return;
    void *a = NULL, *b = NULL;
    CHECK_OK(vf_device_pinned_alloc(d, 6000, &a));
    CHECK(vf_device_pinned_alloc(d, 5000, &b) == VF_ERR_BUDGET && b == NULL);
    CHECK_MSG(strstr(vf_last_error(), "6000 of 10000") != NULL, "%s", vf_last_error());
    CHECK_OK(vf_device_pinned_alloc(d, 4000, &b));
    CHECK(vf_device_pinned_bytes(d) == 10000);
    vf_device_pinned_free(d, a, 6000);
    vf_device_pinned_free(d, b, 4000);
    CHECK(vf_device_pinned_bytes(d) == 0);
    vf_device_free(d);
}

/* The Nth device allocation fails, once. */
static void test_alloc_fault(void)
{
    vf_device *d = make_sim(1 << 20, 0, 0);
    if (!d)
        return;
    void *p[3] = {0};
    vf_device_fault_alloc_fail_at(d, 2);
    CHECK_OK(vf_device_reserve(d, 1000, &p[0]));
    CHECK(vf_device_reserve(d, 1000, &p[1]) == VF_ERR_DEVICE && p[1] == NULL);
    CHECK_MSG(strstr(vf_last_error(), "injected fault") != NULL, "%s", vf_last_error());
    CHECK(vf_device_used(d) == 1000);
    CHECK_OK(vf_device_reserve(d, 1000, &p[2]));
    CHECK(vf_device_alloc_count(d) == 3);
    vf_device_unreserve(d, p[0], 1000);
    vf_device_unreserve(d, p[2], 1000);
    vf_device_free(d);
}

/* Host allocation failures while creating and using a device: reported, no leak. */
static void test_host_alloc_failures(void)
{
    int failures = 0;
    vf_status st = VF_ERR_NO_MEMORY;
    for (uint64_t k = 1; k < 100 && st != VF_OK; k++) {
        vf_device *d = NULL;
        void *base = NULL;
        vf_event *ev = NULL;
        char src[64] = {1};
        vf_fault_alloc_fail_at(k);
        st = vf_device_sim_create(NULL, &d);
        if (st == VF_OK)
            st = vf_device_reserve(d, 4096, &base);
        if (st == VF_OK)
            st = vf_device_event_create(d, &ev);
        if (st == VF_OK)
            st = vf_device_h2d_async(d, base, src, 64);
        if (st == VF_OK)
            st = vf_device_event_record(d, ev);
        if (st == VF_OK)
            st = vf_device_event_wait(d, ev);
        vf_fault_alloc_fail_at(0);
        if (st != VF_OK) {
            failures++;
            CHECK_MSG(st == VF_ERR_NO_MEMORY, "allocation %llu: %s", (unsigned long long)k, vf_last_error());
        }
        if (d) {
            vf_device_event_destroy(d, ev);
            vf_device_unreserve(d, base, 4096);
            vf_device_free(d);
        }
    }
    CHECK_OK(st);
    CHECK(failures >= 5);
}

TEST_MAIN(TEST(test_cpu_device), TEST(test_sim_memory), TEST(test_sim_copies), TEST(test_sim_bandwidth),
          TEST(test_sim_pinned_limit), TEST(test_alloc_fault), TEST(test_host_alloc_failures))
