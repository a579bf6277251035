/* Devices: the generic layer and the CPU backend (see device.h).
 *
 * The generic layer is where bookkeeping lives, so that backends only move
 * bytes: it counts context + reserved bytes (and their peak) and pinned
 * bytes, reports them to the monitor, and owns the device-allocation fault
 * counter that tests use to fail the Nth reserve or arena allocation.
 *
 * The CPU backend is "no device": reserve is a host allocation, copies are
 * memcpy done before the call returns, events are complete when recorded.
 * It reports nothing to the monitor as device memory, since there is none.
 */
#include "mem/device.h"
#include "core/alloc.h"
#include "mem/monitor.h"
#include "mem/resources.h"

#include <stdatomic.h>
#include <string.h>
#include <time.h>

struct vf_device {
    const vf_device_ops *ops;
    void *impl;
    uint64_t context;
    _Atomic uint64_t used, peak;   /* context + reserved */
    _Atomic uint64_t pinned;
    _Atomic uint64_t alloc_count, alloc_fail_at;
};

double vf_device_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int reports_device(const vf_device *d) { return d->ops->kind != VF_DEVICE_KIND_CPU; }

vf_status vf_device_new(const vf_device_ops *ops, void *impl, uint64_t context_bytes, vf_device **out)
{
    *out = NULL;
    vf_device *d = vf_calloc(1, sizeof *d);
    if (!d) {
        ops->destroy(impl);
        return vf_error_prefix(VF_ERR_NO_MEMORY, "device '%s'", ops->name);
    }
    d->ops = ops;
    d->impl = impl;
    d->context = context_bytes;
    atomic_store(&d->used, context_bytes);
    atomic_store(&d->peak, context_bytes);
    if (reports_device(d)) {
        vf_monitor_add(VF_MON_DEVICE_RESERVED, (int64_t)context_bytes);
        vf_monitor_add(VF_MON_DEVICE_ALLOCATED, (int64_t)context_bytes);
    }
    *out = d;
    return VF_OK;
}

void *vf_device_impl(vf_device *d) { return d->impl; }

void vf_device_free(vf_device *d)
{
    if (!d)
        return;
    if (reports_device(d)) {
        vf_monitor_add(VF_MON_DEVICE_RESERVED, -(int64_t)atomic_load(&d->used));
        vf_monitor_add(VF_MON_DEVICE_ALLOCATED, -(int64_t)d->context);
    }
    d->ops->destroy(d->impl);
    vf_free(d);
}

const char *vf_device_name(const vf_device *d) { return d->ops->name; }
vf_device_kind vf_device_kind_of(const vf_device *d) { return d->ops->kind; }
int vf_device_is_host(const vf_device *d) { return d->ops->kind == VF_DEVICE_KIND_CPU; }
int vf_device_host_accessible(const vf_device *d) { return d->ops->host_accessible; }
uint64_t vf_device_context_bytes(const vf_device *d) { return d->context; }
uint64_t vf_device_used(const vf_device *d) { return atomic_load(&d->used); }
uint64_t vf_device_peak(const vf_device *d) { return atomic_load(&d->peak); }
uint64_t vf_device_pinned_bytes(const vf_device *d) { return atomic_load(&d->pinned); }
uint64_t vf_device_alloc_count(const vf_device *d) { return atomic_load(&d->alloc_count); }

void vf_device_mem_info(vf_device *d, uint64_t *total, uint64_t *free)
{
    d->ops->mem_info(d->impl, total, free);
}

void vf_device_fault_alloc_fail_at(vf_device *d, uint64_t nth)
{
    atomic_store(&d->alloc_fail_at, nth ? atomic_load(&d->alloc_count) + nth : 0);
}

vf_status vf_device_alloc_check(vf_device *d, uint64_t bytes, const char *what)
{
    uint64_t n = atomic_fetch_add(&d->alloc_count, 1) + 1;
    if (n != atomic_load(&d->alloc_fail_at))
        return VF_OK;
    return vf_error(VF_ERR_DEVICE, "%s: device allocation of %llu bytes for %s failed (injected fault)",
                    d->ops->name, (unsigned long long)bytes, what ? what : "?");
}

vf_status vf_device_reserve(vf_device *d, uint64_t bytes, void **base)
{
    *base = NULL;
    VF_TRY(vf_device_alloc_check(d, bytes, "the arena"));
    VF_TRY(d->ops->reserve(d->impl, bytes, base));
    uint64_t used = atomic_fetch_add(&d->used, bytes) + bytes;
    uint64_t peak = atomic_load(&d->peak);
    while (used > peak && !atomic_compare_exchange_weak(&d->peak, &peak, used))
        ;
    if (reports_device(d))
        vf_monitor_add(VF_MON_DEVICE_RESERVED, (int64_t)bytes);
    return VF_OK;
}

void vf_device_unreserve(vf_device *d, void *base, uint64_t bytes)
{
    if (!base)
        return;
    d->ops->unreserve(d->impl, base);
    atomic_fetch_sub(&d->used, bytes);
    if (reports_device(d))
        vf_monitor_add(VF_MON_DEVICE_RESERVED, -(int64_t)bytes);
}

vf_status vf_device_h2d_async(vf_device *d, void *dst, const void *src, uint64_t n)
{
    return d->ops->copy_async(d->impl, dst, src, n, 1);
}

vf_status vf_device_d2h_async(vf_device *d, void *dst, const void *src, uint64_t n)
{
    return d->ops->copy_async(d->impl, dst, src, n, 0);
}

void vf_device_drain(vf_device *d)
{
    if (d->ops->drain)
        d->ops->drain(d->impl);
}

/* Queues a copy and waits for it through a private event. */
static vf_status copy_sync(vf_device *d, void *dst, const void *src, uint64_t n, int to_device)
{
    vf_event *ev = NULL;
    VF_TRY(d->ops->event_create(d->impl, &ev));
    vf_status st = d->ops->copy_async(d->impl, dst, src, n, to_device);
    int queued = st == VF_OK;
    if (st == VF_OK)
        st = d->ops->event_record(d->impl, ev);
    if (st == VF_OK)
        st = d->ops->event_wait(d->impl, ev);
    if (st != VF_OK && queued)
        vf_device_drain(d); /* the caller may free src or dst as soon as we return */
    d->ops->event_destroy(d->impl, ev);
    return st;
}

vf_status vf_device_h2d(vf_device *d, void *dst, const void *src, uint64_t n)
{
    return copy_sync(d, dst, src, n, 1);
}

vf_status vf_device_d2h(vf_device *d, void *dst, const void *src, uint64_t n)
{
    return copy_sync(d, dst, src, n, 0);
}

vf_status vf_device_event_create(vf_device *d, vf_event **ev)
{
    *ev = NULL;
    return d->ops->event_create(d->impl, ev);
}

void vf_device_event_destroy(vf_device *d, vf_event *ev)
{
    if (ev)
        d->ops->event_destroy(d->impl, ev);
}

vf_status vf_device_event_record(vf_device *d, vf_event *ev) { return d->ops->event_record(d->impl, ev); }
vf_status vf_device_event_wait(vf_device *d, vf_event *ev) { return d->ops->event_wait(d->impl, ev); }
int vf_device_event_query(vf_device *d, vf_event *ev) { return d->ops->event_query(d->impl, ev); }
double vf_device_event_time(vf_device *d, vf_event *ev) { return d->ops->event_time(d->impl, ev); }

vf_status vf_device_compute_wait(vf_device *d, vf_event *ev)
{
    return d->ops->compute_wait ? d->ops->compute_wait(d->impl, ev) : d->ops->event_wait(d->impl, ev);
}

vf_status vf_device_compute_fence(vf_device *d, vf_event *ev)
{
    return d->ops->compute_fence ? d->ops->compute_fence(d->impl, ev) : VF_OK;
}

vf_status vf_device_copy_after(vf_device *d, vf_event *ev)
{
    return d->ops->copy_after ? d->ops->copy_after(d->impl, ev) : VF_OK;
}

vf_status vf_device_dequant(vf_device *d, void *dst, const void *src, vf_dtype fmt, int OC, int C, int KH, int KW)
{
    if (!d->ops->dequant)
        return vf_error(VF_ERR_UNSUPPORTED, "%s: quantized weights are not supported on this device", d->ops->name);
    return d->ops->dequant(d->impl, dst, src, fmt, OC, C, KH, KW);
}

vf_status vf_device_ahead_wait(vf_device *d, vf_event *ev)
{
    return d->ops->ahead_wait ? d->ops->ahead_wait(d->impl, ev) : VF_OK;
}

vf_status vf_device_ahead_dequant(vf_device *d, void *dst, const void *src, vf_dtype fmt, int OC, int C, int KH,
                                  int KW)
{
    if (!d->ops->ahead_dequant)
        return vf_device_dequant(d, dst, src, fmt, OC, C, KH, KW);
    return d->ops->ahead_dequant(d->impl, dst, src, fmt, OC, C, KH, KW);
}

vf_status vf_device_ahead_fence(vf_device *d, vf_event *ev)
{
    return d->ops->ahead_fence ? d->ops->ahead_fence(d->impl, ev) : VF_OK;
}

vf_status vf_device_pinned_alloc(vf_device *d, uint64_t bytes, void **p)
{
    *p = NULL;
    VF_TRY(d->ops->pinned_alloc(d->impl, bytes, p));
    atomic_fetch_add(&d->pinned, bytes);
    return VF_OK;
}

void vf_device_pinned_free(vf_device *d, void *p, uint64_t bytes)
{
    if (!p)
        return;
    d->ops->pinned_free(d->impl, p);
    atomic_fetch_sub(&d->pinned, bytes);
}

/* ---- CPU backend ------------------------------------------------------------------ */

/* The CPU backend's events only remember when they were recorded. */
typedef struct cpu_event {
    double time;
} cpu_event;

/* Regions keep the malloc'ed pointer just below the aligned base. */
static vf_status cpu_reserve(void *impl, uint64_t bytes, void **base)
{
    if (bytes > SIZE_MAX - 512)
        return vf_error(VF_ERR_DEVICE, "cpu: cannot reserve %llu bytes", (unsigned long long)bytes);
    char *raw = vf_malloc((size_t)bytes + 512);
    if (!raw)
        return vf_error_prefix(VF_ERR_DEVICE, "cpu: reserving %llu bytes", (unsigned long long)bytes);
    uintptr_t a = ((uintptr_t)raw + sizeof(void *) + 255) & ~(uintptr_t)255;
    ((void **)a)[-1] = raw;
    *base = (void *)a;
    return VF_OK;
}

static void cpu_unreserve(void *impl, void *base) { vf_free(((void **)base)[-1]); }

static void cpu_destroy(void *impl) {}

static void cpu_mem_info(void *impl, uint64_t *total, uint64_t *free)
{
    vf_ram_info ram;
    memset(&ram, 0, sizeof ram);
    if (vf_detect_ram_at(NULL, &ram) != VF_OK)
        vf_clear_error();
    *total = ram.total;
    *free = ram.available;
}

static vf_status cpu_copy_async(void *impl, void *dst, const void *src, uint64_t n, int to_device)
{
    if (n)
        memcpy(dst, src, (size_t)n);
    return VF_OK;
}

static vf_status cpu_event_create(void *impl, vf_event **ev)
{
    *ev = vf_calloc(1, sizeof(cpu_event));
    return *ev ? VF_OK : vf_error_prefix(VF_ERR_NO_MEMORY, "cpu: event");
}

static void cpu_event_destroy(void *impl, vf_event *ev) { vf_free(ev); }

static vf_status cpu_event_record(void *impl, vf_event *ev)
{
    ((cpu_event *)ev)->time = vf_device_now();
    return VF_OK;
}

static vf_status cpu_event_wait(void *impl, vf_event *ev) { return VF_OK; }
static int cpu_event_query(void *impl, vf_event *ev) { return 1; }
static double cpu_event_time(void *impl, vf_event *ev) { return ((cpu_event *)ev)->time; }

static vf_status cpu_pinned_alloc(void *impl, uint64_t bytes, void **p)
{
    *p = bytes <= SIZE_MAX ? vf_malloc((size_t)bytes) : NULL;
    return *p ? VF_OK : vf_error_prefix(VF_ERR_NO_MEMORY, "cpu: pinned buffer");
}

static void cpu_pinned_free(void *impl, void *p) { vf_free(p); }

static const vf_device_ops cpu_ops = {
    .name = "cpu",
    .kind = VF_DEVICE_KIND_CPU,
    .host_accessible = 1,
    .destroy = cpu_destroy,
    .mem_info = cpu_mem_info,
    .reserve = cpu_reserve,
    .unreserve = cpu_unreserve,
    .copy_async = cpu_copy_async,
    .event_create = cpu_event_create,
    .event_destroy = cpu_event_destroy,
    .event_record = cpu_event_record,
    .event_wait = cpu_event_wait,
    .event_query = cpu_event_query,
    .event_time = cpu_event_time,
    .pinned_alloc = cpu_pinned_alloc,
    .pinned_free = cpu_pinned_free,
};

vf_status vf_device_cpu_create(vf_device **out) { return vf_device_new(&cpu_ops, NULL, 0, out); }
