/* Arena (see arena.h).
 *
 * The region is a sorted array of extents that tile it exactly: each extent
 * is free or used, and no two free extents are adjacent (free merges them).
 * Allocation scans for the best fit, freeing finds the extent by binary
 * search. A model has hundreds to a few thousand blocks, so a linear scan and
 * a memmove are cheaper and simpler than a tree; the invariants are what the
 * tests check against a brute-force model. Space for the split that an
 * allocation may need is made before anything changes, so a failed growth
 * leaves the arena as it was.
 */
#include "mem/arena.h"
#include "core/alloc.h"
#include "mem/monitor.h"

#include <string.h>

typedef struct extent {
    uint64_t off, size;
    int used;
} extent;

struct vf_arena {
    vf_device *dev;
    void *base;
    uint64_t size, used, peak;
    extent *v;
    int n, cap, live;
};

uint64_t vf_arena_round(uint64_t bytes)
{
    if (bytes == 0)
        bytes = 1;
    if (bytes > UINT64_MAX - (VF_ARENA_ALIGN - 1))
        return UINT64_MAX & ~(uint64_t)(VF_ARENA_ALIGN - 1);
    return (bytes + VF_ARENA_ALIGN - 1) & ~(uint64_t)(VF_ARENA_ALIGN - 1);
}

static int reports(const vf_arena *a) { return a->dev && !vf_device_is_host(a->dev); }

vf_status vf_arena_create(vf_device *d, uint64_t bytes, vf_arena **out)
{
    *out = NULL;
    vf_arena *a = vf_calloc(1, sizeof *a);
    if (!a)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "arena");
    a->size = bytes & ~(uint64_t)(VF_ARENA_ALIGN - 1);
    a->cap = 16;
    a->v = vf_malloc(sizeof *a->v * (size_t)a->cap);
    if (!a->v) {
        vf_free(a);
        return vf_error_prefix(VF_ERR_NO_MEMORY, "arena");
    }
    if (a->size) {
        a->v[0] = (extent){0, a->size, 0};
        a->n = 1;
    }
    if (d && a->size) {
        vf_status st = vf_device_reserve(d, a->size, &a->base);
        if (st != VF_OK) {
            uint64_t size = a->size;
            vf_free(a->v);
            vf_free(a);
            return vf_error_prefix(st, "arena of %llu bytes", (unsigned long long)size);
        }
    }
    a->dev = d;
    *out = a;
    return VF_OK;
}

void vf_arena_free(vf_arena *a)
{
    if (!a)
        return;
    if (reports(a))
        vf_monitor_add(VF_MON_DEVICE_ALLOCATED, -(int64_t)a->used);
    if (a->dev)
        vf_device_unreserve(a->dev, a->base, a->size);
    vf_free(a->v);
    vf_free(a);
}

static vf_status grow(vf_arena *a)
{
    if (a->n < a->cap)
        return VF_OK;
    int cap = 2 * a->cap;
    extent *v = vf_realloc(a->v, sizeof *v * (size_t)cap);
    if (!v)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "arena: extent table");
    a->v = v;
    a->cap = cap;
    return VF_OK;
}

uint64_t vf_arena_largest_free(const vf_arena *a)
{
    uint64_t m = 0;
    for (int i = 0; i < a->n; i++)
        if (!a->v[i].used && a->v[i].size > m)
            m = a->v[i].size;
    return m;
}

vf_status vf_arena_alloc(vf_arena *a, uint64_t bytes, const char *what, uint64_t *off)
{
    *off = 0;
    uint64_t need = vf_arena_round(bytes);
    int best = -1;
    for (int i = 0; i < a->n; i++) {
        const extent *e = &a->v[i];
        if (!e->used && e->size >= need && (best < 0 || e->size < a->v[best].size))
            best = i;
    }
    if (best < 0)
        return vf_error(VF_ERR_BUDGET,
                        "arena: %s: asked %llu bytes; largest free %llu, total free %llu of %llu",
                        what ? what : "allocation", (unsigned long long)bytes,
                        (unsigned long long)vf_arena_largest_free(a),
                        (unsigned long long)(a->size - a->used), (unsigned long long)a->size);
    if (a->v[best].size > need)
        VF_TRY(grow(a));
    if (a->dev)
        VF_TRY(vf_device_alloc_check(a->dev, need, what));
    extent *e = &a->v[best];
    if (e->size > need) {
        memmove(e + 2, e + 1, sizeof *e * (size_t)(a->n - best - 1));
        e[1] = (extent){e->off + need, e->size - need, 0};
        e->size = need;
        a->n++;
    }
    e->used = 1;
    a->used += need;
    a->live++;
    if (a->used > a->peak)
        a->peak = a->used;
    if (reports(a))
        vf_monitor_add(VF_MON_DEVICE_ALLOCATED, (int64_t)need);
    *off = e->off;
    return VF_OK;
}

/* Removes extent i+1 after folding it into extent i. */
static void merge_next(vf_arena *a, int i)
{
    a->v[i].size += a->v[i + 1].size;
    memmove(a->v + i + 1, a->v + i + 2, sizeof *a->v * (size_t)(a->n - i - 2));
    a->n--;
}

void vf_arena_release(vf_arena *a, uint64_t off)
{
    int lo = 0, hi = a->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (a->v[mid].off == off) {
            lo = mid;
            break;
        }
        if (a->v[mid].off < off)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    if (lo >= a->n || a->v[lo].off != off || !a->v[lo].used)
        return;
    int i = lo;
    uint64_t size = a->v[i].size;
    a->v[i].used = 0;
    a->used -= size;
    a->live--;
    if (i + 1 < a->n && !a->v[i + 1].used)
        merge_next(a, i);
    if (i > 0 && !a->v[i - 1].used)
        merge_next(a, i - 1);
    if (reports(a))
        vf_monitor_add(VF_MON_DEVICE_ALLOCATED, -(int64_t)size);
}

void *vf_arena_ptr(const vf_arena *a, uint64_t off) { return a->base ? (char *)a->base + off : NULL; }
uint64_t vf_arena_size(const vf_arena *a) { return a->size; }
uint64_t vf_arena_used(const vf_arena *a) { return a->used; }
uint64_t vf_arena_peak(const vf_arena *a) { return a->peak; }
void vf_arena_reset_peak(vf_arena *a) { a->peak = a->used; }
int vf_arena_count(const vf_arena *a) { return a->live; }
vf_device *vf_arena_device(const vf_arena *a) { return a->dev; }
