/* Devices: where blocks compute and where their weights sit while they do.
 *
 * A vf_device is a backend vtable behind one opaque handle, so that the arena,
 * the residency manager and the pool run the same code on every backend:
 *   CPU        no device at all: "device" memory is host memory, copies are
 *              plain memcpy and finish at once; budgets mean nothing.
 *   SIMULATED  a CPU "device" with its own memory cap, a context overhead
 *              counted against it, explicit host<->device copies performed by
 *              a copy-engine thread throttled to a configured bandwidth, and
 *              events to wait for them. Kernels still run on the calling
 *              thread and read the device memory directly. It exists so that
 *              machines without a GPU (CI) test the streaming logic for real.
 *   CUDA       issue 4: the same vtable from a separately loaded library.
 *
 * The shape follows CUDA on purpose: one reserved region per arena (cudaMalloc
 * once), copies queued in order on one copy stream (cudaMemcpyAsync), events
 * recorded on that stream and waited on from the host (cudaEventRecord /
 * cudaEventSynchronize), page-locked host memory (cudaHostAlloc). A failed
 * asynchronous copy is reported by the wait on the next event recorded after
 * it, as CUDA reports asynchronous errors.
 *
 * Device allocations (reserve, and arena allocations through
 * vf_device_alloc_check) share one fault counter per device, so a test can
 * make the Nth of them fail and check that nothing leaks. Usage is reported
 * to the monitor (mem/monitor.h): context + reserved bytes.
 */
#ifndef VF_MEM_DEVICE_H
#define VF_MEM_DEVICE_H

#include "core/error.h"
#include "vramfit.h"

#include <stdint.h>

typedef struct vf_device vf_device;
typedef struct vf_event vf_event;

typedef enum vf_device_kind {
    VF_DEVICE_KIND_CPU = 0,
    VF_DEVICE_KIND_SIM,
    VF_DEVICE_KIND_CUDA
} vf_device_kind;

/* ---- backend contract ---------------------------------------------------------
 * Every entry is required. Pointers returned by reserve are device addresses:
 * the core only offsets them, and dereferences them only when host_accessible. */
typedef struct vf_device_ops {
    const char *name;
    vf_device_kind kind;
    int host_accessible;          /* CPU kernels may read device memory     */
    void (*destroy)(void *impl);
    void (*mem_info)(void *impl, uint64_t *total, uint64_t *free);
    vf_status (*reserve)(void *impl, uint64_t bytes, void **base);
    void (*unreserve)(void *impl, void *base);
    /* Queues a copy of n bytes on the copy stream (to_device: host -> device). */
    vf_status (*copy_async)(void *impl, void *dst, const void *src, uint64_t n, int to_device);
    vf_status (*event_create)(void *impl, vf_event **ev);
    void (*event_destroy)(void *impl, vf_event *ev);
    vf_status (*event_record)(void *impl, vf_event *ev);
    vf_status (*event_wait)(void *impl, vf_event *ev);
    int (*event_query)(void *impl, vf_event *ev);
    double (*event_time)(void *impl, vf_event *ev);
    vf_status (*pinned_alloc)(void *impl, uint64_t bytes, void **p);
    void (*pinned_free)(void *impl, void *p);
    /* Optional: devices whose kernels run asynchronously (CUDA). NULL means the
     * host orders everything (CPU, sim: compute is done when the call returns).
     * compute_wait: compute queued later waits for ev, the host does not block;
     * compute_fence: record ev after the compute queued so far;
     * copy_after: copies queued later wait for ev (a slot's last reader). */
    vf_status (*compute_wait)(void *impl, vf_event *ev);
    vf_status (*compute_fence)(void *impl, vf_event *ev);
    vf_status (*copy_after)(void *impl, vf_event *ev);
    /* Optional: expands a packed weight (core/quant.h) in device memory into
     * the device's compute image (sim: float32 OIHW; CUDA: the backend's dtype
     * and filter layout), ordered with compute. */
    vf_status (*dequant)(void *impl, void *dst, const void *src, vf_dtype fmt, int OC, int C, int KH, int KW);
    /* Optional (NULL: copies are synchronous): returns once every queued
     * copy has finished, without allocating, so that a caller whose event
     * could not be recorded still never frees memory a copy reads. */
    void (*drain)(void *impl);
    /* Optional (NULL: dequant at once, no ordering needed): a third stream
     * on which the next block's packed weights expand while this one computes.
     * ahead_wait: expansions queued later wait for ev; ahead_dequant: dequant
     * queued there; ahead_fence: record ev after the expansions queued so far. */
    vf_status (*ahead_wait)(void *impl, vf_event *ev);
    vf_status (*ahead_dequant)(void *impl, void *dst, const void *src, vf_dtype fmt, int OC, int C, int KH, int KW);
    vf_status (*ahead_fence)(void *impl, vf_event *ev);
} vf_device_ops;

/* Wraps a backend: context_bytes is what the backend holds before any reserve
 * (the CUDA context), reported to the monitor until the device is freed. On
 * failure impl is destroyed through ops->destroy. */
vf_status vf_device_new(const vf_device_ops *ops, void *impl, uint64_t context_bytes, vf_device **out);
void *vf_device_impl(vf_device *d);

/* ---- backends ------------------------------------------------------------------ */

vf_status vf_device_cpu_create(vf_device **out);

typedef struct vf_sim_options {
    uint64_t memory;              /* the device's memory (the cap), bytes         */
    uint64_t context_bytes;       /* held from creation on, counted in the cap    */
    double bandwidth;             /* pinned host<->device bytes/s; 0: unthrottled */
    double pageable_slowdown;     /* copies from pageable memory are this many
                                     times slower (default 8, ANCHORS.md)        */
    uint64_t pinned_limit;        /* page-locked host bytes allowed; 0: no limit  */
} vf_sim_options;

/* memory 8 GiB, context 300 MiB, unthrottled, pageable 8x slower, no pinned limit. */
void vf_sim_options_init(vf_sim_options *o);
vf_status vf_device_sim_create(const vf_sim_options *o, vf_device **out);
/* Test hooks (SIMULATED only): the nth copy queued from now fails (0: none);
 * bytes held by "another process" (a shared GPU), taken from what is free. */
void vf_device_sim_fail_copy_at(vf_device *d, uint64_t nth);
void vf_device_sim_set_external_use(vf_device *d, uint64_t bytes);
/* Copies queued so far, and bytes moved by them. */
uint64_t vf_device_sim_copies(vf_device *d);
uint64_t vf_device_sim_copied_bytes(vf_device *d);

/* ---- use ------------------------------------------------------------------------ */

void vf_device_free(vf_device *d);
const char *vf_device_name(const vf_device *d);
vf_device_kind vf_device_kind_of(const vf_device *d);
/* 1 for the CPU backend: nothing needs copying, weights are used where they are. */
int vf_device_is_host(const vf_device *d);
int vf_device_host_accessible(const vf_device *d);
/* What the device has and what is free now (after context, reservations and,
 * on a shared device, other users). */
void vf_device_mem_info(vf_device *d, uint64_t *total, uint64_t *free);
uint64_t vf_device_context_bytes(const vf_device *d);
/* Context + reserved bytes, now and at most so far. */
uint64_t vf_device_used(const vf_device *d);
uint64_t vf_device_peak(const vf_device *d);

/* One region of bytes (the arena). VF_ERR_DEVICE when it cannot be had.
 * unreserve and pinned_free first wait for queued copies (as cudaFree does). */
vf_status vf_device_reserve(vf_device *d, uint64_t bytes, void **base);
void vf_device_unreserve(vf_device *d, void *base, uint64_t bytes);

/* Copies on the copy stream, in queue order. The async forms return once
 * queued; src (h2d) or dst (d2h) must stay valid until an event recorded
 * after them completes. The sync forms queue, then wait. */
vf_status vf_device_h2d_async(vf_device *d, void *dst, const void *src, uint64_t n);
vf_status vf_device_d2h_async(vf_device *d, void *dst, const void *src, uint64_t n);
vf_status vf_device_h2d(vf_device *d, void *dst, const void *src, uint64_t n);
/* Waits for every queued copy (the fallback when an event fails). */
void vf_device_drain(vf_device *d);
vf_status vf_device_d2h(vf_device *d, void *dst, const void *src, uint64_t n);

vf_status vf_device_event_create(vf_device *d, vf_event **ev);
/* Waits for the event's pending record, if any, then frees it. NULL is a no-op. */
void vf_device_event_destroy(vf_device *d, vf_event *ev);
/* Completes when every copy queued before it has finished. */
vf_status vf_device_event_record(vf_device *d, vf_event *ev);
/* Blocks until complete; returns the failure of any copy since the previous
 * record (VF_ERR_DEVICE with the backend's message). An event never recorded
 * is complete. */
vf_status vf_device_event_wait(vf_device *d, vf_event *ev);
/* 1 when complete. */
int vf_device_event_query(vf_device *d, vf_event *ev);
/* When it completed, on the vf_device_now() clock (0 if never). */
double vf_device_event_time(vf_device *d, vf_event *ev);

/* Ordering with asynchronous compute (no-ops, or a host wait for
 * compute_wait, on devices that compute synchronously): before using a block
 * copied under ev, compute waits for ev; after the last use of a ring slot,
 * a fence is recorded on compute and the next copy into the slot waits for it. */
vf_status vf_device_compute_wait(vf_device *d, vf_event *ev);
vf_status vf_device_compute_fence(vf_device *d, vf_event *ev);
vf_status vf_device_copy_after(vf_device *d, vf_event *ev);
/* A packed weight (OC,C,KH,KW) of format fmt at src -> its compute image at dst. */
vf_status vf_device_dequant(vf_device *d, void *dst, const void *src, vf_dtype fmt, int OC, int C, int KH, int KW);
/* The same, queued ahead of compute (see ahead_* above); where the device has
 * no third stream it runs at once and the wait and fence do nothing. Compute
 * that reads dst waits for a fence recorded after it (vf_device_compute_wait). */
vf_status vf_device_ahead_wait(vf_device *d, vf_event *ev);
vf_status vf_device_ahead_dequant(vf_device *d, void *dst, const void *src, vf_dtype fmt, int OC, int C, int KH,
                                  int KW);
vf_status vf_device_ahead_fence(vf_device *d, vf_event *ev);

/* CUDA: the device of a CUDA compute backend (backend/backend.h), which must
 * outlive it. context_bytes: device memory held before any reserve (the CUDA
 * context and library handles, measured at open). Copies go on the backend's
 * copy stream and events are CUDA events; reserve is one cudaMalloc. */
struct vf_backend;
vf_status vf_device_cuda_create(struct vf_backend *be, uint64_t context_bytes, vf_device **out);

/* Page-locked host memory (the only source that streams at full link speed).
 * VF_ERR_BUDGET past the backend's pinned limit. */
vf_status vf_device_pinned_alloc(vf_device *d, uint64_t bytes, void **p);
void vf_device_pinned_free(vf_device *d, void *p, uint64_t bytes);
uint64_t vf_device_pinned_bytes(const vf_device *d);

/* Device allocation fault hook: the nth device allocation from now (reserve or
 * an arena allocation) fails with VF_ERR_DEVICE; 0 disables. */
void vf_device_fault_alloc_fail_at(vf_device *d, uint64_t nth);
/* Called by the arena for each allocation: counts it and fails when due. */
vf_status vf_device_alloc_check(vf_device *d, uint64_t bytes, const char *what);
uint64_t vf_device_alloc_count(const vf_device *d);

/* Monotonic seconds. */
double vf_device_now(void);

#endif
