/* The simulated device (see device.h): a GPU's memory rules and copy engine,
 * with the CPU doing the arithmetic.
 *
 * Memory: a cap, a context overhead taken from it at creation, regions reserved
 * as host allocations (so kernels can read them), and optional bytes held by
 * "another process". Reserving past what is free fails like cudaMalloc does.
 *
 * Copies: a FIFO of operations served by one copy-engine thread, which is what
 * makes prefetch observable: a copy runs while the caller computes. Each copy
 * takes bytes / bandwidth seconds (the engine sleeps out the rest after the
 * memcpy); copies from pageable memory run pageable_slowdown times slower, and
 * a host buffer counts as pinned when it came from pinned_alloc. Events are
 * records in the same FIFO: an event completes when the engine reaches it,
 * with the time it did and the error of any copy since the previous record.
 *
 * Device-side pointers of every copy are checked against the reserved
 * regions, so a residency bug that would corrupt GPU memory is an error here.
 * The engine thread never allocates (tests count allocations to inject
 * faults, and a second thread would make the count nondeterministic).
 */
#include "core/alloc.h"
#include "core/quant.h"
#include "mem/device.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#define MSG_CAP 256

typedef struct sim_event {
    unsigned gen, done_gen;  /* records issued / completed                */
    int inflight;            /* queued records that point at this event   */
    vf_status status;
    char msg[MSG_CAP];
    double time;
} sim_event;

enum { OP_COPY, OP_RECORD };

typedef struct sim_op {
    struct sim_op *next;
    int kind;
    void *dst;
    const void *src;
    uint64_t n;
    double bandwidth;        /* bytes/s, 0: unthrottled                   */
    int fail;                /* injected fault                             */
    uint64_t seq;
    sim_event *ev;
    unsigned gen;
} sim_op;

typedef struct span {
    char *base;              /* what the user sees                         */
    void *raw;               /* what was allocated                         */
    uint64_t bytes;
} span;

typedef struct span_list {
    span *v;
    int n, cap;
} span_list;

typedef struct sim {
    vf_sim_options opt;
    pthread_mutex_t lock;
    pthread_cond_t work, done;
    pthread_t thread;
    int stop, busy;
    sim_op *head, *tail;
    vf_status pend_st;       /* first failure since the last record       */
    char pend_msg[MSG_CAP];
    uint64_t reserved, external, pinned;
    span_list regions, pins; /* pins sorted by base                        */
    uint64_t copies, copied_bytes, fail_copy_at;
} sim;

/* ---- spans -------------------------------------------------------------------- */

static vf_status span_add(span_list *l, span s, int sorted)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 8;
        span *v = vf_realloc(l->v, sizeof *v * (size_t)cap);
        if (!v)
            return VF_ERR_NO_MEMORY;
        l->v = v;
        l->cap = cap;
    }
    int at = l->n;
    while (sorted && at > 0 && l->v[at - 1].base > s.base)
        at--;
    memmove(l->v + at + 1, l->v + at, sizeof *l->v * (size_t)(l->n - at));
    l->v[at] = s;
    l->n++;
    return VF_OK;
}

static int span_find(const span_list *l, const void *base)
{
    for (int i = 0; i < l->n; i++)
        if (l->v[i].base == base)
            return i;
    return -1;
}

static span span_take(span_list *l, int i)
{
    span s = l->v[i];
    memmove(l->v + i, l->v + i + 1, sizeof *l->v * (size_t)(l->n - i - 1));
    l->n--;
    return s;
}

/* 1 when [p, p+n) lies inside one span; pins are sorted, regions are few. */
static int span_covers(const span_list *l, const void *p, uint64_t n, int sorted)
{
    const char *c = p;
    int lo = 0, hi = l->n;
    if (sorted) {
        while (hi - lo > 1) {
            int mid = (lo + hi) / 2;
            if (l->v[mid].base <= c)
                lo = mid;
            else
                hi = mid;
        }
        hi = lo + 1 < l->n ? lo + 1 : l->n;
    }
    for (int i = lo; i < hi; i++) {
        const span *s = &l->v[i];
        if (c >= s->base && (uint64_t)(c - s->base) <= s->bytes && n <= s->bytes - (uint64_t)(c - s->base))
            return 1;
    }
    return 0;
}

/* ---- copy engine ------------------------------------------------------------------ */

static void sleep_until(double t)
{
    struct timespec ts;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L)
        ts.tv_nsec = 999999999L;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void run_copy(sim *s, sim_op *op)
{
    double t0 = vf_device_now();
    if (!op->fail && op->n)
        memcpy(op->dst, op->src, (size_t)op->n);
    if (op->bandwidth > 0)
        sleep_until(t0 + (double)op->n / op->bandwidth);
    if (!op->fail)
        return;
    pthread_mutex_lock(&s->lock);
    if (s->pend_st == VF_OK) {
        s->pend_st = VF_ERR_DEVICE;
        snprintf(s->pend_msg, sizeof s->pend_msg,
                 "sim: copy %llu (%llu bytes) failed (injected fault)", (unsigned long long)op->seq,
                 (unsigned long long)op->n);
    }
    pthread_mutex_unlock(&s->lock);
}

static void run_record(sim *s, sim_op *op)
{
    pthread_mutex_lock(&s->lock);
    sim_event *ev = op->ev;
    ev->time = vf_device_now();
    ev->done_gen = op->gen;
    ev->status = s->pend_st;
    memcpy(ev->msg, s->pend_msg, sizeof ev->msg);
    s->pend_st = VF_OK;
    s->pend_msg[0] = '\0';
    ev->inflight--;
    pthread_cond_broadcast(&s->done);
    pthread_mutex_unlock(&s->lock);
}

static void *engine(void *arg)
{
    sim *s = arg;
    /* Sleeps end on time (the default 50 us slack adds up over many copies). */
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    for (;;) {
        pthread_mutex_lock(&s->lock);
        while (!s->head && !s->stop)
            pthread_cond_wait(&s->work, &s->lock);
        sim_op *op = s->head;
        if (op) {
            s->head = op->next;
            if (!s->head)
                s->tail = NULL;
            s->busy = 1;
        }
        pthread_mutex_unlock(&s->lock);
        if (!op)
            return NULL;
        if (op->kind == OP_COPY)
            run_copy(s, op);
        else
            run_record(s, op);
        vf_free(op);
        pthread_mutex_lock(&s->lock);
        s->busy = 0;
        pthread_cond_broadcast(&s->done);
        pthread_mutex_unlock(&s->lock);
    }
}

/* Freeing device or pinned memory waits for the copy engine to go idle, as
 * cudaFree and cudaFreeHost synchronize: a queued copy may still use it. */
static void drain_locked(sim *s)
{
    while (s->head || s->busy)
        pthread_cond_wait(&s->done, &s->lock);
}

static void sim_drain(void *impl)
{
    sim *s = impl;
    pthread_mutex_lock(&s->lock);
    drain_locked(s);
    pthread_mutex_unlock(&s->lock);
}

/* Appends op under the lock and wakes the engine. */
static void enqueue_locked(sim *s, sim_op *op)
{
    op->next = NULL;
    if (s->tail)
        s->tail->next = op;
    else
        s->head = op;
    s->tail = op;
    pthread_cond_signal(&s->work);
}

/* ---- vtable ------------------------------------------------------------------------ */

static void sim_destroy(void *impl)
{
    sim *s = impl;
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->stop = 1;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    for (int i = 0; i < s->regions.n; i++)
        vf_free(s->regions.v[i].raw);
    for (int i = 0; i < s->pins.n; i++)
        vf_free(s->pins.v[i].raw);
    vf_free(s->regions.v);
    vf_free(s->pins.v);
    pthread_cond_destroy(&s->work);
    pthread_cond_destroy(&s->done);
    pthread_mutex_destroy(&s->lock);
    vf_free(s);
}

static uint64_t free_locked(const sim *s)
{
    uint64_t held = s->opt.context_bytes + s->reserved + s->external;
    return held >= s->opt.memory ? 0 : s->opt.memory - held;
}

static void sim_mem_info(void *impl, uint64_t *total, uint64_t *free)
{
    sim *s = impl;
    pthread_mutex_lock(&s->lock);
    *total = s->opt.memory;
    *free = free_locked(s);
    pthread_mutex_unlock(&s->lock);
}

static vf_status sim_reserve(void *impl, uint64_t bytes, void **base)
{
    sim *s = impl;
    vf_status st = VF_OK;
    pthread_mutex_lock(&s->lock);
    uint64_t avail = free_locked(s);
    if (bytes > avail || bytes > SIZE_MAX - 512) {
        st = vf_error(VF_ERR_DEVICE,
                      "sim: out of device memory: asked %llu bytes, %llu free of %llu (context %llu, "
                      "reserved %llu, other processes %llu)",
                      (unsigned long long)bytes, (unsigned long long)avail,
                      (unsigned long long)s->opt.memory, (unsigned long long)s->opt.context_bytes,
                      (unsigned long long)s->reserved, (unsigned long long)s->external);
        goto done;
    }
    span r = {NULL, vf_malloc((size_t)bytes + 256), bytes};
    if (!r.raw) {
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "sim: backing %llu device bytes", (unsigned long long)bytes);
        goto done;
    }
    r.base = (char *)(((uintptr_t)r.raw + 255) & ~(uintptr_t)255);
    if (span_add(&s->regions, r, 0) != VF_OK) {
        vf_free(r.raw);
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "sim: reserving a region");
        goto done;
    }
    s->reserved += bytes;
    *base = r.base;
done:
    pthread_mutex_unlock(&s->lock);
    return st;
}

static void sim_unreserve(void *impl, void *base)
{
    sim *s = impl;
    pthread_mutex_lock(&s->lock);
    drain_locked(s);
    int i = span_find(&s->regions, base);
    if (i >= 0) {
        span r = span_take(&s->regions, i);
        s->reserved -= r.bytes;
        vf_free(r.raw);
    }
    pthread_mutex_unlock(&s->lock);
}

static vf_status sim_copy_async(void *impl, void *dst, const void *src, uint64_t n, int to_device)
{
    sim *s = impl;
    sim_op *op = vf_calloc(1, sizeof *op);
    if (!op)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "sim: queueing a copy");
    vf_status st = VF_OK;
    const void *dev = to_device ? dst : src, *host = to_device ? src : dst;
    pthread_mutex_lock(&s->lock);
    if (n && !span_covers(&s->regions, dev, n, 0)) {
        st = vf_error(VF_ERR_INVALID_ARG, "sim: copy of %llu bytes %s %p is outside every reserved region",
                      (unsigned long long)n, to_device ? "to" : "from", dev);
        goto done;
    }
    op->kind = OP_COPY;
    op->dst = dst;
    op->src = src;
    op->n = n;
    op->bandwidth = s->opt.bandwidth;
    if (op->bandwidth > 0 && !span_covers(&s->pins, host, n, 1))
        op->bandwidth /= s->opt.pageable_slowdown > 1 ? s->opt.pageable_slowdown : 1;
    op->seq = ++s->copies;
    op->fail = op->seq == s->fail_copy_at;
    s->copied_bytes += n;
    enqueue_locked(s, op);
    op = NULL;
done:
    pthread_mutex_unlock(&s->lock);
    vf_free(op);
    return st;
}

static vf_status sim_event_create(void *impl, vf_event **ev)
{
    sim_event *e = vf_calloc(1, sizeof *e);
    if (!e)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "sim: event");
    *ev = (vf_event *)e;
    return VF_OK;
}

static void sim_event_destroy(void *impl, vf_event *ev)
{
    sim *s = impl;
    sim_event *e = (sim_event *)ev;
    pthread_mutex_lock(&s->lock);
    while (e->inflight > 0)
        pthread_cond_wait(&s->done, &s->lock);
    pthread_mutex_unlock(&s->lock);
    vf_free(e);
}

static vf_status sim_event_record(void *impl, vf_event *ev)
{
    sim *s = impl;
    sim_event *e = (sim_event *)ev;
    sim_op *op = vf_calloc(1, sizeof *op);
    if (!op)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "sim: recording an event");
    pthread_mutex_lock(&s->lock);
    op->kind = OP_RECORD;
    op->ev = e;
    op->gen = ++e->gen;
    e->inflight++;
    enqueue_locked(s, op);
    pthread_mutex_unlock(&s->lock);
    return VF_OK;
}

static vf_status sim_event_wait(void *impl, vf_event *ev)
{
    sim *s = impl;
    sim_event *e = (sim_event *)ev;
    pthread_mutex_lock(&s->lock);
    while (e->done_gen != e->gen)
        pthread_cond_wait(&s->done, &s->lock);
    vf_status st = e->status;
    if (st != VF_OK)
        vf_error(st, "%s", e->msg);
    pthread_mutex_unlock(&s->lock);
    return st;
}

static int sim_event_query(void *impl, vf_event *ev)
{
    sim *s = impl;
    sim_event *e = (sim_event *)ev;
    pthread_mutex_lock(&s->lock);
    int done = e->done_gen == e->gen;
    pthread_mutex_unlock(&s->lock);
    return done;
}

static double sim_event_time(void *impl, vf_event *ev)
{
    sim *s = impl;
    pthread_mutex_lock(&s->lock);
    double t = ((sim_event *)ev)->time;
    pthread_mutex_unlock(&s->lock);
    return t;
}

static vf_status sim_pinned_alloc(void *impl, uint64_t bytes, void **p)
{
    sim *s = impl;
    vf_status st = VF_OK;
    pthread_mutex_lock(&s->lock);
    uint64_t limit = s->opt.pinned_limit;
    if (limit && (s->pinned > limit || bytes > limit - s->pinned)) {
        st = vf_error(VF_ERR_BUDGET, "sim: pinned memory: asked %llu bytes, %llu of %llu in use",
                      (unsigned long long)bytes, (unsigned long long)s->pinned,
                      (unsigned long long)s->opt.pinned_limit);
        goto done;
    }
    span pin = {NULL, bytes <= SIZE_MAX ? vf_malloc((size_t)bytes) : NULL, bytes};
    if (!pin.raw) {
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "sim: pinned buffer");
        goto done;
    }
    pin.base = pin.raw;
    if (span_add(&s->pins, pin, 1) != VF_OK) {
        vf_free(pin.raw);
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "sim: pinned buffer");
        goto done;
    }
    s->pinned += bytes;
    *p = pin.base;
done:
    pthread_mutex_unlock(&s->lock);
    return st;
}

static void sim_pinned_free(void *impl, void *p)
{
    sim *s = impl;
    pthread_mutex_lock(&s->lock);
    drain_locked(s);
    int i = span_find(&s->pins, p);
    if (i >= 0) {
        span pin = span_take(&s->pins, i);
        s->pinned -= pin.bytes;
        vf_free(pin.raw);
    }
    pthread_mutex_unlock(&s->lock);
}

/* Kernels run on the calling thread here, so expanding a packed weight is the
 * CPU reference itself (float32, OIHW: what CPU kernels read). */
static vf_status sim_dequant(void *impl, void *dst, const void *src, vf_dtype fmt, int OC, int C, int KH, int KW)
{
    (void)impl;
    return vf_dequantize(fmt, src, OC, (int64_t)C * KH * KW, dst);
}

static const vf_device_ops sim_ops = {
    .name = "sim",
    .kind = VF_DEVICE_KIND_SIM,
    .host_accessible = 1,
    .destroy = sim_destroy,
    .mem_info = sim_mem_info,
    .reserve = sim_reserve,
    .unreserve = sim_unreserve,
    .copy_async = sim_copy_async,
    .event_create = sim_event_create,
    .event_destroy = sim_event_destroy,
    .event_record = sim_event_record,
    .event_wait = sim_event_wait,
    .event_query = sim_event_query,
    .event_time = sim_event_time,
    .pinned_alloc = sim_pinned_alloc,
    .pinned_free = sim_pinned_free,
    .dequant = sim_dequant,
    .drain = sim_drain,
};

/* ---- public --------------------------------------------------------------------------- */

void vf_sim_options_init(vf_sim_options *o)
{
    memset(o, 0, sizeof *o);
    o->memory = 8ull << 30;
    o->context_bytes = 300ull << 20;
    o->pageable_slowdown = 8;
}

vf_status vf_device_sim_create(const vf_sim_options *o, vf_device **out)
{
    *out = NULL;
    vf_sim_options opt;
    if (o)
        opt = *o;
    else
        vf_sim_options_init(&opt);
    if (opt.context_bytes > opt.memory || opt.bandwidth < 0 || opt.pageable_slowdown < 0)
        return vf_error(VF_ERR_INVALID_ARG,
                        "sim: context %llu bytes larger than memory %llu, or a negative bandwidth",
                        (unsigned long long)opt.context_bytes, (unsigned long long)opt.memory);
    sim *s = vf_calloc(1, sizeof *s);
    if (!s)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "sim: device");
    s->opt = opt;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->done, NULL);
    if (pthread_create(&s->thread, NULL, engine, s) != 0) {
        pthread_cond_destroy(&s->work);
        pthread_cond_destroy(&s->done);
        pthread_mutex_destroy(&s->lock);
        vf_free(s);
        return vf_error(VF_ERR_DEVICE, "sim: cannot start the copy engine thread");
    }
    return vf_device_new(&sim_ops, s, opt.context_bytes, out);
}

static sim *as_sim(vf_device *d)
{
    return d && vf_device_kind_of(d) == VF_DEVICE_KIND_SIM ? vf_device_impl(d) : NULL;
}

void vf_device_sim_fail_copy_at(vf_device *d, uint64_t nth)
{
    sim *s = as_sim(d);
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->fail_copy_at = nth ? s->copies + nth : 0;
    pthread_mutex_unlock(&s->lock);
}

void vf_device_sim_set_external_use(vf_device *d, uint64_t bytes)
{
    sim *s = as_sim(d);
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->external = bytes;
    pthread_mutex_unlock(&s->lock);
}

uint64_t vf_device_sim_copies(vf_device *d)
{
    sim *s = as_sim(d);
    if (!s)
        return 0;
    pthread_mutex_lock(&s->lock);
    uint64_t n = s->copies;
    pthread_mutex_unlock(&s->lock);
    return n;
}

uint64_t vf_device_sim_copied_bytes(vf_device *d)
{
    sim *s = as_sim(d);
    if (!s)
        return 0;
    pthread_mutex_lock(&s->lock);
    uint64_t n = s->copied_bytes;
    pthread_mutex_unlock(&s->lock);
    return n;
}
