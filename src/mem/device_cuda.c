/* The CUDA device: the memory manager's vf_device over a CUDA compute backend.
 *
 * The arena, the residency manager and the staging ring are the same code on
 * the simulated device and here; this file only maps the device contract onto
 * the backend's raw operations (backend/backend.h, ABI 5): reserve is one
 * cudaMalloc, copies go on the backend's copy stream, events are CUDA events,
 * pinned memory is cudaHostAlloc. It talks to the plugin only through the
 * vf_be_* wrappers, so the core still builds and runs without CUDA.
 *
 * What differs from the simulated device is that kernels run asynchronously:
 * the host queues block i's compute and moves on. So the residency's ordering
 * points become stream ordering (compute_wait / compute_fence / copy_after):
 * compute waits on the device for a block's copy, and a copy into a ring slot
 * waits for the compute that last read the slot. Packed weights of the next
 * block expand on a third stream (ahead_*) while this block computes. The
 * host blocks only where it must (a pinned bounce buffer it is about to
 * refill, teardown).
 *
 * Event completion times are not observable from the host without blocking,
 * so event_time is 0 here (traces of copy/compute overlap are a simulated
 * device feature; on the GPU, overlap shows up as step time, which the
 * benchmark measures).
 */
#include "backend/backend.h"
#include "core/alloc.h"
#include "core/error.h"
#include "mem/device.h"

#include <string.h>

typedef struct cuda_dev {
    vf_backend *be;
} cuda_dev;

/* A vf_event is a backend event; recorded says whether waiting means anything. */
typedef struct cuda_event {
    vf_bevent *ev;
    int recorded;
} cuda_event;

static vf_backend *be_of(void *impl) { return ((cuda_dev *)impl)->be; }

static void cd_destroy(void *impl) { vf_free(impl); }

static void cd_mem_info(void *impl, uint64_t *total, uint64_t *free)
{
    uint64_t ws;
    vf_be_mem_info(be_of(impl), total, free, &ws);
}

static vf_status cd_reserve(void *impl, uint64_t bytes, void **base)
{
    return vf_be_reserve(be_of(impl), (size_t)bytes, base);
}

static void cd_unreserve(void *impl, void *base) { vf_be_unreserve(be_of(impl), base); }

static vf_status cd_copy_async(void *impl, void *dst, const void *src, uint64_t n, int to_device)
{
    if (!to_device) /* synchronous: only demotions copy back, never a hot path */
        return vf_be_d2h(be_of(impl), dst, (const vf_dbuf *)src, (size_t)n);
    return vf_be_h2d_async(be_of(impl), (vf_dbuf *)dst, src, (size_t)n);
}

static vf_status cd_event_create(void *impl, vf_event **out)
{
    cuda_event *e = vf_calloc(1, sizeof *e);
    if (!e)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "cuda device event");
    vf_status st = vf_be_event_create(be_of(impl), &e->ev);
    if (st != VF_OK) {
        vf_free(e);
        return st;
    }
    *out = (vf_event *)e;
    return VF_OK;
}

static vf_status cd_event_wait(void *impl, vf_event *ev)
{
    cuda_event *e = (cuda_event *)ev;
    return e->recorded ? vf_be_event_sync(be_of(impl), e->ev) : VF_OK;
}

static void cd_event_destroy(void *impl, vf_event *ev)
{
    cuda_event *e = (cuda_event *)ev;
    (void)cd_event_wait(impl, ev);
    vf_be_event_destroy(be_of(impl), e->ev);
    vf_free(e);
}

static vf_status record_on(void *impl, vf_event *ev, vf_stream s)
{
    cuda_event *e = (cuda_event *)ev;
    VF_TRY(vf_be_record(be_of(impl), e->ev, s));
    e->recorded = 1;
    return VF_OK;
}

static vf_status cd_event_record(void *impl, vf_event *ev) { return record_on(impl, ev, VF_STREAM_COPY); }

/* A query that cannot block: only "never recorded" is known complete. The
 * residency uses queries for bookkeeping only, so saying "not yet" is safe. */
static int cd_event_query(void *impl, vf_event *ev)
{
    (void)impl;
    return !((cuda_event *)ev)->recorded;
}

static double cd_event_time(void *impl, vf_event *ev)
{
    (void)impl, (void)ev;
    return 0;
}

static vf_status cd_pinned_alloc(void *impl, uint64_t bytes, void **p)
{
    return vf_be_pinned_alloc(be_of(impl), (size_t)bytes, p);
}

static void cd_pinned_free(void *impl, void *p) { vf_be_pinned_free(be_of(impl), p); }

static vf_status cd_compute_wait(void *impl, vf_event *ev)
{
    cuda_event *e = (cuda_event *)ev;
    return e->recorded ? vf_be_wait(be_of(impl), VF_STREAM_COMPUTE, e->ev) : VF_OK;
}

static vf_status cd_compute_fence(void *impl, vf_event *ev) { return record_on(impl, ev, VF_STREAM_COMPUTE); }

static vf_status cd_copy_after(void *impl, vf_event *ev)
{
    cuda_event *e = (cuda_event *)ev;
    return e->recorded ? vf_be_wait(be_of(impl), VF_STREAM_COPY, e->ev) : VF_OK;
}

static vf_status cd_dequant(void *impl, void *dst, const void *src, vf_dtype fmt, int OC, int C, int KH, int KW)
{
    return vf_be_dequant(be_of(impl), (vf_dbuf *)dst, src, fmt, OC, C, KH, KW);
}

static vf_status cd_ahead_wait(void *impl, vf_event *ev)
{
    cuda_event *e = (cuda_event *)ev;
    return e->recorded ? vf_be_wait(be_of(impl), VF_STREAM_EXPAND, e->ev) : VF_OK;
}

static vf_status cd_ahead_dequant(void *impl, void *dst, const void *src, vf_dtype fmt, int OC, int C, int KH,
                                  int KW)
{
    return vf_be_dequant_on(be_of(impl), VF_STREAM_EXPAND, (vf_dbuf *)dst, src, fmt, OC, C, KH, KW);
}

static vf_status cd_ahead_fence(void *impl, vf_event *ev) { return record_on(impl, ev, VF_STREAM_EXPAND); }

static void cd_drain(void *impl)
{
    if (vf_be_sync(be_of(impl)) != VF_OK)
        vf_clear_error(); /* a failed sync has nothing left in flight to wait for */
}

static const vf_device_ops cuda_ops = {
    .name = "cuda",
    .kind = VF_DEVICE_KIND_CUDA,
    .host_accessible = 0,
    .destroy = cd_destroy,
    .mem_info = cd_mem_info,
    .reserve = cd_reserve,
    .unreserve = cd_unreserve,
    .copy_async = cd_copy_async,
    .event_create = cd_event_create,
    .event_destroy = cd_event_destroy,
    .event_record = cd_event_record,
    .event_wait = cd_event_wait,
    .event_query = cd_event_query,
    .event_time = cd_event_time,
    .pinned_alloc = cd_pinned_alloc,
    .pinned_free = cd_pinned_free,
    .compute_wait = cd_compute_wait,
    .compute_fence = cd_compute_fence,
    .copy_after = cd_copy_after,
    .dequant = cd_dequant,
    .drain = cd_drain,
    .ahead_wait = cd_ahead_wait,
    .ahead_dequant = cd_ahead_dequant,
    .ahead_fence = cd_ahead_fence,
};

vf_status vf_device_cuda_create(vf_backend *be, uint64_t context_bytes, vf_device **out)
{
    *out = NULL;
    if (!be || vf_be_info(be)->kind != VF_BACKEND_CUDA)
        return vf_error(VF_ERR_INVALID_ARG, "cuda device: needs a CUDA compute backend");
    cuda_dev *d = vf_calloc(1, sizeof *d);
    if (!d)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "cuda device");
    d->be = be;
    return vf_device_new(&cuda_ops, d, context_bytes, out);
}
