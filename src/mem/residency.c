/* Residency (see residency.h).
 *
 * CPU path: each block's weights are converted to float32 into one allocation
 * per block on first acquire. With keep_resident (the default) they stay for
 * the life of the residency, so a UNet converts its weights once, not once per
 * step; without it they are dropped at release, so peak host memory is one
 * block. This path does no copies and no bookkeeping beyond host bytes: it is
 * the CPU backend's hot path and stays as it was.
 *
 * Device path: a block's float32 image has the CPU path's layout (weights back
 * to back in declaration order), so the same bytes land in the arena and the
 * kernels see identical inputs. Resident blocks own an arena extent from
 * creation. Streamed blocks are served by the ring: the stream is the list of
 * streamed blocks in execution order, taken cyclically; `cur` is the stream
 * position of the block acquired last. Prefetch walks the stream from cur and
 * gives each block that is not in a slot a slot that is empty or holds a
 * released block needed later than it (the block needed furthest in the
 * future goes first, which in a cyclic order is the one just released). Each
 * queued copy is followed by a recorded event; acquire waits on it. A failed
 * copy empties its slot, so the next acquire copies again.
 *
 * Packed (quantized) weights expand into one of two scratch slots before
 * their block computes. When a block is acquired, the next resident block in
 * execution order is expanded into the other slot on the device's expand
 * stream, so that its memory-bound expansion overlaps this block's GEMMs
 * rather than preceding its own (expand_ahead).
 *
 * Host memory is counted per residency and reported to the monitor; the
 * residency registers with the monitor so clear_cache can drop conversions.
 */
#include "mem/residency.h"
#include "core/alloc.h"
#include "backend/backend.h"
#include "core/dtype.h"
#include "core/quant.h"
#include "mem/monitor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Blocks holding packed weights at once (each expands into its own scratch). */
#define SCRATCH_SLOTS 2

typedef struct block_state {
    float *data;          /* CPU: all weights of the block, back to back */
    const float **ptrs;   /* nw pointers to where the weights are now    */
    uint64_t bytes;       /* CPU: bytes of data                          */
    int acquired;
    /* device path */
    vf_tier home;
    uint64_t img;         /* bytes of the block's image (its weights in the image dtype) */
    uint64_t off;         /* resident: arena offset                      */
    int has_off, loaded;
    void *host;           /* HOST/PINNED: the float32 host copy          */
    int host_ready;       /* converted                                   */
    int host_borrowed;    /* host is a store entry, not ours             */
    int slot;             /* streamed: ring slot holding it, or -1       */
    int spos;             /* streamed: position in the stream, or -1     */
    int trace_at;         /* trace entry of the open acquire, or -1      */
    int npacked;          /* weights stored packed (opt.quant)           */
    int scr;              /* scratch slot holding their expansion, or -1 */
} block_state;

typedef struct scratch {
    uint64_t off;
    void *dev;
    int users, has_off;
    int ahead;            /* block expanded into it before its acquire, or -1 */
    vf_event *ready;      /* after that expansion, on the expand stream     */
    vf_event *freed;      /* after the compute that last read the slot      */
} scratch;

typedef struct slot {
    uint64_t off;
    void *dev;
    int block;            /* -1: empty                                   */
    int users;
    int pending;          /* a copy into it may be in flight             */
    int has_off;
    vf_event *start, *done;
    vf_event *freed;      /* after the compute that last read the slot   */
    void *bounce;         /* pinned, for DISK-home blocks                */
} slot;

struct vf_residency {
    const vf_checkpoint *ck;
    const vf_blocklist *bl;
    vf_residency_options opt;
    block_state *blocks;
    uint64_t host_bytes, host_peak;
    int registered;
    /* device path */
    vf_device *dev;
    vf_arena *arena;
    int *stream;          /* streamed blocks in execution order          */
    int *next;            /* the block acquired after each one           */
    int nstream, cur;
    slot *slots;
    int nslots;
    uint64_t slot_bytes;
    const float **slot_ptrs; /* nslots * maxw pointers                   */
    int maxw;
    vf_event *sync_ev;
    int ntrace;
    scratch scr[SCRATCH_SLOTS]; /* packed weights expanded for compute     */
    int no_ahead;         /* $VF_EXPAND_AHEAD=0: expand at acquire only  */
    uint64_t scr_bytes;
};

static uint64_t drop_cache_cb(void *owner) { return vf_residency_drop_cache(owner); }

void vf_residency_options_init(vf_residency_options *o)
{
    memset(o, 0, sizeof *o);
    o->keep_resident = 1;
    o->ring_depth = 2;
}

static int on_device(const vf_residency *r) { return r->dev != NULL; }

static void host_add(vf_residency *r, int64_t delta)
{
    r->host_bytes += (uint64_t)delta;
    if (r->host_bytes > r->host_peak)
        r->host_peak = r->host_bytes;
    vf_monitor_add(VF_MON_HOST, delta);
}

/* Weights of a device image start on this boundary (vectorised kernels,
 * cuBLASLt); float32 images for CPU kernels stay packed as they always were. */
#define IMAGE_ALIGN 256


static uint64_t image_align(vf_dtype dt) { return dt == VF_DTYPE_F32 ? 1 : IMAGE_ALIGN; }

static uint64_t align_up(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

/* Bytes of w in an image of dtype dt whose quantizable weights are packed in q. */
static uint64_t weight_image_bytes(const vf_wspec *w, vf_dtype dt, vf_dtype q)
{
    int64_t numel = vf_shape_numel(w->shape, w->ndim);
    if (vf_wspec_packed(q, w))
        return align_up(vf_quant_packed_bytes(q, w->shape[0], numel / w->shape[0]), IMAGE_ALIGN);
    return align_up((uint64_t)numel * vf_dtype_size(dt), image_align(dt));
}

/* Weights are packed in device images only: the CPU path rounds them in place. */
static vf_dtype image_quant(const vf_residency *r) { return r->dev ? r->opt.quant : VF_DTYPE_F32; }

/* Bytes of w expanded for compute (its packed form dequantized). */
static uint64_t weight_expanded_bytes(const vf_wspec *w, vf_dtype dt)
{
    return align_up((uint64_t)vf_shape_numel(w->shape, w->ndim) * vf_dtype_size(dt), IMAGE_ALIGN);
}

uint64_t vf_residency_block_stored_bytes(const vf_blocklist *bl, int b, vf_dtype dt, vf_dtype q)
{
    const vf_block *blk = &bl->blocks[b];
    uint64_t n = 0;
    for (int j = 0; j < blk->nw; j++)
        n += weight_image_bytes(&bl->w[blk->first_w + j], dt, q);
    return n;
}

uint64_t vf_residency_block_image_bytes(const vf_blocklist *bl, int b, vf_dtype dt)
{
    return vf_residency_block_stored_bytes(bl, b, dt, VF_DTYPE_F32);
}

/* Scratch bytes block b needs to expand its packed weights (0: none). */
static uint64_t block_expanded_bytes(const vf_blocklist *bl, int b, vf_dtype dt, vf_dtype q)
{
    const vf_block *blk = &bl->blocks[b];
    uint64_t n = 0;
    for (int j = 0; j < blk->nw; j++)
        if (vf_wspec_packed(q, &bl->w[blk->first_w + j]))
            n += weight_expanded_bytes(&bl->w[blk->first_w + j], dt);
    return n;
}

uint64_t vf_residency_block_f32_bytes(const vf_blocklist *bl, int b)
{
    return vf_residency_block_image_bytes(bl, b, VF_DTYPE_F32);
}

void vf_residency_plan_bytes_ex(const vf_blocklist *bl, const vf_tier *home, int depth, vf_dtype dt, vf_dtype q,
                                uint64_t *resident, uint64_t *ring)
{
    uint64_t res = 0, largest = 0, expand_most = 0;
    int streamed = 0;
    for (int b = 0; b < bl->nblocks; b++) {
        uint64_t e = block_expanded_bytes(bl, b, dt, q);
        expand_most = e > expand_most ? e : expand_most;
        uint64_t f = vf_residency_block_stored_bytes(bl, b, dt, q);
        if (!home || home[b] == VF_TIER_DEVICE) {
            res += vf_arena_round(f);
        } else {
            largest = f > largest ? f : largest;
            streamed = 1;
        }
    }
    *resident = res + (expand_most ? SCRATCH_SLOTS * vf_arena_round(expand_most) : 0);
    *ring = streamed ? (uint64_t)(depth > 0 ? depth : 1) * vf_arena_round(largest) : 0;
}

void vf_residency_plan_bytes(const vf_blocklist *bl, const vf_tier *home, int depth, uint64_t *resident,
                             uint64_t *ring)
{
    vf_residency_plan_bytes_ex(bl, home, depth, VF_DTYPE_F32, VF_DTYPE_F32, resident, ring);
}

/* Weight w read as float32 into f (patched), then written to dst in the
 * image's dtype and filter layout. tmp holds w's numel elements of the image
 * dtype when a layout change needs them. */
static vf_status convert_weight(vf_residency *r, const vf_wspec *w, void *dst, float *f, void *tmp)
{
    size_t n = (size_t)vf_shape_numel(w->shape, w->ndim), esz = vf_dtype_size(r->opt.image_dtype);
    int ohwi = r->opt.image_ohwi && w->ndim == 4 && w->shape[2] * w->shape[3] > 1;
    vf_dtype q = r->opt.quant;
    if (r->dev && vf_wspec_packed(q, w)) {
        /* the device image holds it packed: a `vramfit quantize` file's bytes
         * as they are, else quantized here (after the patch: LoRAs included) */
        if (!r->opt.patch && w->t->packed && w->t->dtype == q)
            return vf_checkpoint_read_raw(r->ck, w->t, dst);
        VF_TRY(vf_checkpoint_read_f32(r->ck, w->t, f));
        if (r->opt.patch)
            VF_TRY(r->opt.patch(r->opt.patch_ctx, w, f));
        vf_status st = vf_quantize(q, f, w->shape[0], (int64_t)n / w->shape[0], dst);
        return st == VF_OK ? VF_OK : vf_error_prefix(st, "quantizing '%s' to %s", w->name, vf_dtype_name(q));
    }
    /* Stored as the image wants it (an f16 checkpoint on an f16 device): the
     * bytes as they are, no float32 round trip. */
    if (!r->opt.patch && f != dst && w->t->dtype == r->opt.image_dtype && !w->t->transpose &&
        w->t->nbytes == n * esz) {
        if (!ohwi)
            return vf_checkpoint_read_raw(r->ck, w->t, dst);
        VF_TRY(vf_checkpoint_read_raw(r->ck, w->t, tmp));
        vf_conv_weight_to_ohwi(dst, tmp, esz, (int)w->shape[0], (int)w->shape[1], (int)w->shape[2],
                               (int)w->shape[3]);
        return VF_OK;
    }
    VF_TRY(vf_checkpoint_read_f32(r->ck, w->t, f));
    if (r->opt.patch)
        VF_TRY(r->opt.patch(r->opt.patch_ctx, w, f));
    if (!r->dev && q != VF_DTYPE_F32 && !(vf_quant_is_packed(q) && w->unpacked))
        VF_TRY(vf_quant_roundtrip(q, f, w->ndim, w->shape)); /* the CPU computes what a device would */
    if (f == dst && !ohwi)
        return VF_OK;
    vf_convert_from_f32(ohwi ? tmp : dst, r->opt.image_dtype, f, n);
    if (ohwi)
        vf_conv_weight_to_ohwi(dst, tmp, esz, (int)w->shape[0], (int)w->shape[1], (int)w->shape[2],
                               (int)w->shape[3]);
    return VF_OK;
}

/* Converts block b's weights into dst (its image: weights in declaration
 * order, each in the image dtype and layout) and points ptrs at them. */
static vf_status convert(vf_residency *r, int b, void *dst, const float **ptrs)
{
    const vf_block *blk = &r->bl->blocks[b];
    vf_dtype dt = r->opt.image_dtype, q = image_quant(r);
    int direct = dt == VF_DTYPE_F32 && !r->opt.image_ohwi && !(r->dev && vf_quant_is_packed(q));
    size_t most = 0;
    for (int j = 0; j < blk->nw; j++) {
        const vf_wspec *w = &r->bl->w[blk->first_w + j];
        if (!w->t)
            return vf_error(VF_ERR_INTERNAL, "weight '%s' used before binding", w->name);
        size_t n = (size_t)vf_shape_numel(w->shape, w->ndim);
        most = n > most ? n : most;
    }
    float *f = NULL;
    void *tmp = NULL;
    if (dst && !direct) {
        f = vf_malloc(sizeof(float) * (most ? most : 1));
        tmp = f ? vf_malloc(sizeof(float) * (most ? most : 1)) : NULL;
        if (!tmp) {
            vf_free(f);
            return VF_ERR_NO_MEMORY;
        }
    }
    vf_status st = VF_OK;
    uint64_t at = 0;
    for (int j = 0; j < blk->nw && st == VF_OK; j++) {
        const vf_wspec *w = &r->bl->w[blk->first_w + j];
        char *wd = dst ? (char *)dst + at : NULL;
        if (wd)
            st = convert_weight(r, w, wd, direct ? (float *)wd : f, tmp);
        if (ptrs)
            ptrs[j] = (const float *)wd;
        at += weight_image_bytes(w, dt, q);
    }
    vf_free(f);
    vf_free(tmp);
    return st;
}

/* Points ptrs at the weights of block b laid out from base (no data read). */
static void point(const vf_residency *r, int b, const void *base, const float **ptrs)
{
    const vf_block *blk = &r->bl->blocks[b];
    uint64_t at = 0;
    for (int j = 0; j < blk->nw; j++) {
        const vf_wspec *w = &r->bl->w[blk->first_w + j];
        ptrs[j] = (const float *)((const char *)base + at);
        at += weight_image_bytes(w, r->opt.image_dtype, image_quant(r));
    }
}

/* ---- CPU path --------------------------------------------------------------------- */

static void drop(vf_residency *r, block_state *s)
{
    if (s->data)
        host_add(r, -(int64_t)s->bytes);
    vf_free(s->data);
    vf_free(s->ptrs);
    s->data = NULL;
    s->ptrs = NULL;
    s->bytes = 0;
}

static vf_status materialise(vf_residency *r, int b)
{
    const vf_block *blk = &r->bl->blocks[b];
    block_state *s = &r->blocks[b];
    vf_status st = VF_OK;
    size_t total = 0;
    for (int j = 0; j < blk->nw; j++) {
        const vf_wspec *w = &r->bl->w[blk->first_w + j];
        if (!w->t)
            return vf_error(VF_ERR_INTERNAL, "weight '%s' used before binding", w->name);
        total += (size_t)vf_shape_numel(w->shape, w->ndim);
    }
    s->data = vf_malloc(sizeof(float) * (total ? total : 1));
    s->ptrs = s->data ? vf_malloc(sizeof(float *) * (size_t)(blk->nw ? blk->nw : 1)) : NULL;
    if (!s->ptrs) {
        st = VF_ERR_NO_MEMORY;
        goto fail;
    }
    st = convert(r, b, s->data, s->ptrs);
    if (st != VF_OK)
        goto fail;
    s->bytes = sizeof(float) * total;
    host_add(r, (int64_t)s->bytes);
    return VF_OK;
fail:
    vf_free(s->data);
    vf_free(s->ptrs);
    s->data = NULL;
    s->ptrs = NULL;
    return vf_error_prefix(st, "loading block '%s'", blk->name);
}

static vf_status cpu_acquire(vf_residency *r, int b, const float *const **w)
{
    block_state *s = &r->blocks[b];
    if (!s->data)
        VF_TRY(materialise(r, b));
    s->acquired++;
    *w = s->ptrs;
    return VF_OK;
}

static void cpu_release(vf_residency *r, int b)
{
    block_state *s = &r->blocks[b];
    if (s->acquired > 0)
        s->acquired--;
    if (s->acquired == 0 && !r->opt.keep_resident)
        drop(r, s);
}

/* ---- device path: host copies and the copy stream ------------------------------------ */

/* Waits for everything queued so far; the status of a failed copy is dropped
 * (whoever waits on its own event sees it; this is for teardown). */
static void sync_all(vf_residency *r)
{
    if (vf_device_ahead_fence(r->dev, r->sync_ev) == VF_OK)
        (void)vf_device_event_wait(r->dev, r->sync_ev);
    if (vf_device_compute_fence(r->dev, r->sync_ev) == VF_OK)
        (void)vf_device_event_wait(r->dev, r->sync_ev);
    if (vf_device_event_record(r->dev, r->sync_ev) == VF_OK)
        (void)vf_device_event_wait(r->dev, r->sync_ev);
    else
        vf_device_drain(r->dev); /* no event: wait for the copy queue itself */
}

static void free_host_copy(vf_residency *r, block_state *s)
{
    s->host_ready = 0;
    if (s->host_borrowed) {
        s->host = NULL;
        s->host_borrowed = 0;
        return;
    }
    if (!s->host)
        return;
    if (s->home == VF_TIER_PINNED)
        vf_device_pinned_free(r->dev, s->host, s->img);
    else
        vf_free(s->host);
    s->host = NULL;
    host_add(r, -(int64_t)s->img);
}

/* Takes the host memory of block b's copy: pinned memory is a budgeted
 * resource, taken at creation so that a plan that lacks it fails there;
 * pageable memory is taken on first use. */
static vf_status alloc_host(vf_residency *r, int b)
{
    block_state *s = &r->blocks[b];
    vf_status st;
    if (s->home == VF_TIER_PINNED) {
        st = vf_device_pinned_alloc(r->dev, s->img, &s->host);
    } else {
        s->host = s->img <= SIZE_MAX ? vf_malloc((size_t)(s->img ? s->img : 1)) : NULL;
        st = s->host ? VF_OK : VF_ERR_NO_MEMORY;
    }
    if (st != VF_OK)
        return vf_error_prefix(st, "host copy of block '%s'", r->bl->blocks[b].name);
    host_add(r, (int64_t)s->img);
    return VF_OK;
}

/* The store's image of block b in this residency's format, or NULL;
 * *pinned (may be NULL) says whether it is page-locked. */
static const void *stored(const vf_residency *r, int b, int *pinned)
{
    if (!r->opt.store)
        return NULL;
    vf_store_format f = {r->opt.image_dtype, r->opt.image_ohwi, image_quant(r)};
    return vf_host_store_get(r->opt.store, r->opt.store_comp, b, &f, r->blocks[b].img, pinned);
}

/* Block b's image into dst: from the store when it holds it, else converted. */
static vf_status fill_image(vf_residency *r, int b, void *dst)
{
    const void *src = stored(r, b, NULL);
    if (!src)
        return convert(r, b, dst, NULL);
    memcpy(dst, src, (size_t)r->blocks[b].img);
    return VF_OK;
}

/* The HOST/PINNED host copy of block b, made once. */
static vf_status ensure_host(vf_residency *r, int b)
{
    block_state *s = &r->blocks[b];
    if (s->host_ready || s->home == VF_TIER_DISK)
        return VF_OK;
    if (!s->host && s->home == VF_TIER_HOST && stored(r, b, NULL)) {
        s->host = (void *)stored(r, b, NULL); /* pageable either way: borrowed as it is */
        s->host_borrowed = 1;
        s->host_ready = 1;
        return VF_OK;
    }
    if (!s->host)
        VF_TRY(alloc_host(r, b));
    vf_status st = fill_image(r, b, s->host);
    if (st != VF_OK)
        return vf_error_prefix(st, "host copy of block '%s'", r->bl->blocks[b].name);
    s->host_ready = 1;
    return VF_OK;
}

/* Copies resident block b into its arena extent (synchronously, once). */
static vf_status load_resident(vf_residency *r, int b)
{
    block_state *s = &r->blocks[b];
    if (s->loaded)
        return VF_OK;
    void *dev = vf_arena_ptr(r->arena, s->off);
    const void *src = stored(r, b, NULL);
    void *tmp = src || s->img > SIZE_MAX ? NULL : vf_malloc((size_t)(s->img ? s->img : 1));
    vf_status st = src || tmp ? VF_OK : VF_ERR_NO_MEMORY;
    if (st == VF_OK && !src)
        st = convert(r, b, tmp, NULL);
    if (st == VF_OK)
        st = vf_device_h2d(r->dev, dev, src ? src : tmp, s->img);
    vf_free(tmp);
    /* the device holds it now: the store keeps what the device does not */
    if (st == VF_OK && src)
        vf_host_store_drop(r->opt.store, r->opt.store_comp, b);
    if (st != VF_OK)
        return vf_error_prefix(st, "loading block '%s' onto %s", r->bl->blocks[b].name,
                               vf_device_name(r->dev));
    point(r, b, dev, s->ptrs);
    s->loaded = 1;
    return VF_OK;
}

/* ---- device path: the ring ------------------------------------------------------------- */

/* How far ahead of cur in the stream block b is needed (1 = next). */
static int distance(const vf_residency *r, int b)
{
    int d = (r->blocks[b].spos - r->cur + r->nstream) % r->nstream;
    return d ? d : r->nstream;
}

static void empty_slot(vf_residency *r, slot *sl)
{
    if (sl->block >= 0)
        r->blocks[sl->block].slot = -1;
    sl->block = -1;
}

/* Queues the copy of streamed block b into slot k (empty or holding a released block). */
static vf_status issue(vf_residency *r, int b, int k)
{
    slot *sl = &r->slots[k];
    block_state *s = &r->blocks[b];
    /* A DISK block is staged in the slot's bounce buffer, which an earlier copy
     * may still be reading. */
    if (s->home == VF_TIER_DISK)
        (void)vf_device_event_wait(r->dev, sl->done);
    empty_slot(r, sl);
    const void *src = s->host;
    if (s->home == VF_TIER_DISK && stored(r, b, NULL)) {
        src = stored(r, b, NULL);
    } else if (s->home == VF_TIER_DISK) {
        VF_TRY(convert(r, b, sl->bounce, NULL));
        src = sl->bounce;
    } else {
        VF_TRY(ensure_host(r, b));
        src = s->host;
    }
    /* The slot's last reader may still be computing (asynchronous devices). */
    vf_status st = vf_device_copy_after(r->dev, sl->freed);
    if (st == VF_OK && r->opt.trace)
        st = vf_device_event_record(r->dev, sl->start);
    if (st == VF_OK)
        st = vf_device_h2d_async(r->dev, sl->dev, src, s->img);
    if (st == VF_OK)
        st = vf_device_event_record(r->dev, sl->done);
    if (st != VF_OK) {
        /* A copy may be queued without its event: drain it before the slot is reused. */
        sync_all(r);
        sl->pending = 0;
        return vf_error_prefix(st, "streaming block '%s'", r->bl->blocks[b].name);
    }
    sl->block = b;
    sl->pending = 1;
    s->slot = k;
    return VF_OK;
}

/* A slot for block b, which is needed `need` positions ahead: an empty one,
 * else the released one whose block is needed last, if later than b. -1: none. */
static int victim(const vf_residency *r, int need)
{
    int best = -1, best_d = need;
    for (int k = 0; k < r->nslots; k++) {
        const slot *sl = &r->slots[k];
        if (sl->block < 0)
            return k;
        if (sl->users > 0)
            continue;
        int d = distance(r, sl->block);
        if (d > best_d) {
            best = k;
            best_d = d;
        }
    }
    return best;
}

/* Fills the ring with the blocks that follow cur. */
static vf_status prefetch(vf_residency *r)
{
    if (r->nstream == 0 || r->cur < 0)
        return VF_OK;
    for (int k = 1; k < r->nstream; k++) {
        int b = r->stream[(r->cur + k) % r->nstream];
        if (r->blocks[b].slot >= 0)
            continue;
        int v = victim(r, k);
        if (v < 0)
            break;
        VF_TRY(issue(r, b, v));
    }
    return VF_OK;
}

static void trace_begin(vf_residency *r, int b, const slot *sl, int waited)
{
    block_state *s = &r->blocks[b];
    s->trace_at = -1;
    if (!r->opt.trace || r->ntrace >= r->opt.trace_cap)
        return;
    vf_residency_trace *t = &r->opt.trace[r->ntrace];
    memset(t, 0, sizeof *t);
    t->block = b;
    if (sl && waited) {
        t->copy_start = vf_device_event_time(r->dev, sl->start);
        t->copy_end = vf_device_event_time(r->dev, sl->done);
    }
    t->compute_start = vf_device_now();
    s->trace_at = r->ntrace++;
}

/* How expand_into reaches a block's scratch slot. */
typedef enum expand_mode { EXPAND_COMPUTE, EXPAND_AHEAD, EXPAND_POINT } expand_mode;

/* Block b's packed weights into its scratch slot (s->scr): queued on the
 * compute stream, queued on the expand stream, or only pointed at (already
 * expanded); ptrs (pointing into its image) are redirected. */
static vf_status expand_into(vf_residency *r, int b, const float **ptrs, expand_mode mode)
{
    const vf_block *blk = &r->bl->blocks[b];
    uint64_t at = 0;
    for (int j = 0; j < blk->nw; j++) {
        const vf_wspec *w = &r->bl->w[blk->first_w + j];
        if (!vf_wspec_packed(r->opt.quant, w))
            continue;
        int64_t numel = vf_shape_numel(w->shape, w->ndim);
        int four = w->ndim == 4, OC = (int)w->shape[0];
        int C = four ? (int)w->shape[1] : (int)(numel / w->shape[0]);
        int KH = four ? (int)w->shape[2] : 1, KW = four ? (int)w->shape[3] : 1;
        void *dst = (char *)r->scr[r->blocks[b].scr].dev + at;
        vf_status st = VF_OK;
        if (mode == EXPAND_COMPUTE)
            st = vf_device_dequant(r->dev, dst, ptrs[j], r->opt.quant, OC, C, KH, KW);
        else if (mode == EXPAND_AHEAD)
            st = vf_device_ahead_dequant(r->dev, dst, ptrs[j], r->opt.quant, OC, C, KH, KW);
        if (st != VF_OK)
            return vf_error_prefix(st, "expanding '%s'", w->name);
        ptrs[j] = dst;
        at += weight_expanded_bytes(w, r->opt.image_dtype);
    }
    return VF_OK;
}

/* A scratch slot nobody holds, or -1. */
static int free_scratch(const vf_residency *r)
{
    for (int k = 0; k < SCRATCH_SLOTS; k++)
        if (!r->scr[k].users)
            return k;
    return -1;
}

/* A scratch slot for an expansion on the compute stream: a free one, else one
 * holding a block expanded ahead that was not acquired after all (compute
 * waits for that expansion before writing over it). -1: none. */
static int take_scratch(vf_residency *r)
{
    int k = free_scratch(r);
    if (k >= 0)
        return k;
    for (k = 0; k < SCRATCH_SLOTS; k++) {
        scratch *x = &r->scr[k];
        if (x->ahead < 0 || r->blocks[x->ahead].acquired)
            continue;
        if (vf_device_compute_wait(r->dev, x->ready) != VF_OK) {
            vf_clear_error();
            sync_all(r);
        }
        r->blocks[x->ahead].scr = -1;
        x->ahead = -1;
        x->users = 0;
        return k;
    }
    return -1;
}

/* Block b's packed weights expanded for compute; ptrs are redirected. When
 * they were expanded ahead (expand_ahead), compute only waits for that. */
static vf_status expand(vf_residency *r, int b, const float **ptrs)
{
    block_state *s = &r->blocks[b];
    const vf_block *blk = &r->bl->blocks[b];
    if (!s->npacked)
        return VF_OK;
    if (s->scr >= 0 && r->scr[s->scr].ahead == b) {
        scratch *x = &r->scr[s->scr];
        x->ahead = -1;
        vf_status st = vf_device_compute_wait(r->dev, x->ready);
        if (st != VF_OK)
            return vf_error_prefix(st, "block '%s': its expansion", blk->name);
        return expand_into(r, b, ptrs, EXPAND_POINT);
    }
    if (s->scr < 0) {
        int k = take_scratch(r);
        if (k < 0)
            return vf_error(VF_ERR_BUDGET, "block '%s': more than %d blocks with quantized weights in use at once",
                            blk->name, SCRATCH_SLOTS);
        s->scr = k;
        r->scr[k].users = 1;
    }
    return expand_into(r, b, ptrs, EXPAND_COMPUTE);
}

/* Queues the expansion of resident block n (the next to be acquired) on the
 * device's expand stream, so that it runs while the current block computes
 * instead of before the next one: on the GPU the expansion is memory-bound
 * and the GEMMs are not, so the two overlap. Streamed blocks are left to
 * their acquire (their bytes are still on the link, which then bounds the
 * step anyway). Best effort: whatever fails here, n expands at its acquire,
 * which reports the failure if it recurs. */
static void expand_ahead(vf_residency *r, int n)
{
    block_state *s = n >= 0 && !r->no_ahead ? &r->blocks[n] : NULL;
    if (!s || !s->npacked || s->acquired || s->scr >= 0 || s->home != VF_TIER_DEVICE || s->spos >= 0)
        return;
    int k = free_scratch(r);
    if (k < 0)
        return;
    scratch *x = &r->scr[k];
    vf_status st = load_resident(r, n);
    if (st == VF_OK) {
        point(r, n, vf_arena_ptr(r->arena, s->off), s->ptrs);
        st = vf_device_ahead_wait(r->dev, x->freed);
    }
    if (st == VF_OK) {
        s->scr = k;
        x->users = 1;
        x->ahead = n;
        st = expand_into(r, n, s->ptrs, EXPAND_AHEAD);
        if (st == VF_OK)
            st = vf_device_ahead_fence(r->dev, x->ready);
        if (st != VF_OK) {
            sync_all(r); /* nothing queued may still write the slot */
            s->scr = -1;
            x->users = 0;
            x->ahead = -1;
        }
    }
    if (st != VF_OK)
        vf_clear_error();
}

/* The block's scratch slot is free again once the compute queued so far
 * (its last reader) is done; an expansion ahead into it waits for that. */
static void scratch_done(vf_residency *r, block_state *s)
{
    if (s->scr < 0)
        return;
    scratch *x = &r->scr[s->scr];
    x->users = 0;
    x->ahead = -1;
    s->scr = -1;
    if (vf_device_compute_fence(r->dev, x->freed) != VF_OK) {
        vf_clear_error();
        sync_all(r);
    }
}

static vf_status stream_acquire(vf_residency *r, int b, const float *const **w)
{
    block_state *s = &r->blocks[b];
    r->cur = s->spos;
    if (s->slot < 0) {
        /* Out of order (or the first block): take the slot needed last. */
        int v = victim(r, 0);
        if (v < 0)
            return vf_error(VF_ERR_BUDGET,
                            "block '%s': all %d ring slots hold acquired blocks (raise the ring depth)",
                            r->bl->blocks[b].name, r->nslots);
        VF_TRY(issue(r, b, v));
    }
    slot *sl = &r->slots[s->slot];
    sl->users++;
    vf_status st = prefetch(r);
    int waited = sl->pending;
    if (st == VF_OK && sl->pending) {
        st = vf_device_compute_wait(r->dev, sl->done);
        sl->pending = 0;
    }
    if (st != VF_OK) {
        sl->users--;
        if (sl->users == 0)
            empty_slot(r, sl);
        return vf_error_prefix(st, "streaming block '%s'", r->bl->blocks[b].name);
    }
    const float **ptrs = r->slot_ptrs + (size_t)s->slot * (size_t)r->maxw;
    if (s->acquired == 0) {
        point(r, b, sl->dev, ptrs);
        if ((st = expand(r, b, ptrs)) != VF_OK) {
            scratch_done(r, s);
            sl->users--;
            return st;
        }
    }
    s->acquired++;
    expand_ahead(r, r->next[b]);
    trace_begin(r, b, sl, waited);
    *w = ptrs;
    return VF_OK;
}

static vf_status device_acquire(vf_residency *r, int b, const float *const **w)
{
    block_state *s = &r->blocks[b];
    if (s->spos >= 0)
        return stream_acquire(r, b, w);
    VF_TRY(load_resident(r, b));
    if (s->npacked && s->acquired == 0) {
        point(r, b, vf_arena_ptr(r->arena, s->off), s->ptrs);
        vf_status st = expand(r, b, s->ptrs);
        if (st != VF_OK) {
            scratch_done(r, s);
            return st;
        }
    }
    s->acquired++;
    expand_ahead(r, r->next[b]);
    trace_begin(r, b, NULL, 0);
    *w = s->ptrs;
    return VF_OK;
}

static void device_release(vf_residency *r, int b)
{
    block_state *s = &r->blocks[b];
    if (s->acquired == 0)
        return;
    s->acquired--;
    if (s->acquired == 0)
        scratch_done(r, s);
    if (s->trace_at >= 0 && s->acquired == 0) {
        r->opt.trace[s->trace_at].compute_end = vf_device_now();
        s->trace_at = -1;
    }
    if (s->spos < 0 || s->slot < 0)
        return;
    slot *sl = &r->slots[s->slot];
    if (sl->users > 0)
        sl->users--;
    if (sl->users == 0 && vf_device_compute_fence(r->dev, sl->freed) != VF_OK)
        vf_clear_error(); /* the next copy into the slot then waits for nothing; sync reports it */
    /* The freed slot starts receiving the next block now, while the caller
     * works between blocks. A failure here is met again, and reported, by the
     * acquire that needs the block. */
    if (sl->users == 0 && prefetch(r) != VF_OK)
        vf_clear_error();
}

/* ---- device path: setup ----------------------------------------------------------------- */

static vf_status check_options(const vf_blocklist *bl, const vf_residency_options *o)
{
    if (!o->arena || vf_arena_device(o->arena) != o->device)
        return vf_error(VF_ERR_INVALID_ARG, "residency on %s: needs an arena over that device",
                        vf_device_name(o->device));
    if (vf_device_host_accessible(o->device) && (o->image_dtype != VF_DTYPE_F32 || o->image_ohwi))
        return vf_error(VF_ERR_UNSUPPORTED, "residency on %s: CPU kernels read float32 OIHW weights",
                        vf_device_name(o->device));
    for (int b = 0; o->home && b < bl->nblocks; b++)
        if ((int)o->home[b] < 0 || o->home[b] >= VF_TIER_COUNT)
            return vf_error(VF_ERR_INVALID_ARG, "residency: block '%s': home tier %d is not a tier",
                            bl->blocks[b].name, (int)o->home[b]);
    if (o->ring_depth < 1)
        return vf_error(VF_ERR_INVALID_ARG, "residency: ring depth %d (at least 1)", o->ring_depth);
    return VF_OK;
}

/* The stream: streamed blocks in execution order (order checked to be a permutation). */
static vf_status build_stream(vf_residency *r)
{
    const vf_blocklist *bl = r->bl;
    const int *order = r->opt.order;
    r->stream = vf_malloc(sizeof(int) * (size_t)(bl->nblocks ? bl->nblocks : 1));
    r->next = vf_malloc(sizeof(int) * (size_t)(bl->nblocks ? bl->nblocks : 1));
    if (!r->stream || !r->next)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "residency: stream");
    for (int i = 0; i < bl->nblocks; i++) {
        int b = order ? order[i] : i;
        if (b < 0 || b >= bl->nblocks || r->blocks[b].spos != -1)
            return vf_error(VF_ERR_INVALID_ARG,
                            "residency: execution order entry %d (block %d) is out of range or repeated", i,
                            b);
        r->blocks[b].spos = -2; /* seen */
        if (r->blocks[b].home != VF_TIER_DEVICE)
            r->stream[r->nstream++] = b;
    }
    for (int b = 0; b < bl->nblocks; b++)
        r->blocks[b].spos = -1;
    for (int i = 0; i < bl->nblocks; i++)
        r->next[order ? order[i] : i] = order ? order[(i + 1) % bl->nblocks] : (i + 1) % bl->nblocks;
    for (int i = 0; i < r->nstream; i++)
        r->blocks[r->stream[i]].spos = i;
    return VF_OK;
}

static vf_status setup_resident(vf_residency *r)
{
    for (int b = 0; b < r->bl->nblocks; b++) {
        block_state *s = &r->blocks[b];
        int pinned = 0;
        const void *img = s->home == VF_TIER_PINNED ? stored(r, b, &pinned) : NULL;
        if (img && pinned) {
            s->host = (void *)img; /* the store's page-locked image is the host copy */
            s->host_borrowed = 1;
            s->host_ready = 1;
        } else if (s->home == VF_TIER_PINNED) {
            VF_TRY(alloc_host(r, b));
        }
        if (s->home != VF_TIER_DEVICE)
            continue;
        int nw = r->bl->blocks[b].nw;
        s->ptrs = vf_malloc(sizeof(float *) * (size_t)(nw ? nw : 1));
        if (!s->ptrs)
            return vf_error_prefix(VF_ERR_NO_MEMORY, "residency: block '%s'", r->bl->blocks[b].name);
        char what[300];
        snprintf(what, sizeof what, "block '%s'", r->bl->blocks[b].name);
        VF_TRY(vf_arena_alloc(r->arena, s->img, what, &s->off));
        s->has_off = 1;
    }
    return VF_OK;
}

static vf_status setup_ring(vf_residency *r)
{
    int any_disk = 0;
    for (int i = 0; i < r->nstream; i++) {
        const block_state *s = &r->blocks[r->stream[i]];
        r->slot_bytes = s->img > r->slot_bytes ? s->img : r->slot_bytes;
        any_disk |= s->home == VF_TIER_DISK;
        int nw = r->bl->blocks[r->stream[i]].nw;
        r->maxw = nw > r->maxw ? nw : r->maxw;
    }
    if (r->nstream == 0)
        return VF_OK;
    r->nslots = r->opt.ring_depth;
    r->slots = vf_calloc((size_t)r->nslots, sizeof *r->slots);
    r->slot_ptrs = vf_calloc((size_t)r->nslots * (size_t)(r->maxw ? r->maxw : 1), sizeof(float *));
    if (!r->slots || !r->slot_ptrs)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "residency: ring");
    for (int k = 0; k < r->nslots; k++)
        r->slots[k].block = -1;
    for (int k = 0; k < r->nslots; k++) {
        slot *sl = &r->slots[k];
        char what[64];
        snprintf(what, sizeof what, "ring slot %d of %d", k + 1, r->nslots);
        VF_TRY(vf_arena_alloc(r->arena, r->slot_bytes, what, &sl->off));
        sl->has_off = 1;
        sl->dev = vf_arena_ptr(r->arena, sl->off);
        VF_TRY(vf_device_event_create(r->dev, &sl->done));
        VF_TRY(vf_device_event_create(r->dev, &sl->freed));
        if (r->opt.trace)
            VF_TRY(vf_device_event_create(r->dev, &sl->start));
        if (any_disk) {
            VF_TRY(vf_device_pinned_alloc(r->dev, r->slot_bytes, &sl->bounce));
            host_add(r, (int64_t)r->slot_bytes);
        }
    }
    return VF_OK;
}

static void device_teardown(vf_residency *r)
{
    if (r->sync_ev)
        sync_all(r);
    for (int k = 0; r->slots && k < r->nslots; k++) {
        slot *sl = &r->slots[k];
        if (sl->has_off)
            vf_arena_release(r->arena, sl->off);
        vf_device_event_destroy(r->dev, sl->start);
        vf_device_event_destroy(r->dev, sl->done);
        vf_device_event_destroy(r->dev, sl->freed);
        if (sl->bounce) {
            vf_device_pinned_free(r->dev, sl->bounce, r->slot_bytes);
            host_add(r, -(int64_t)r->slot_bytes);
        }
    }
    for (int b = 0; b < r->bl->nblocks; b++) {
        block_state *s = &r->blocks[b];
        if (s->has_off)
            vf_arena_release(r->arena, s->off);
        free_host_copy(r, s);
        vf_free(s->ptrs);
        s->ptrs = NULL;
    }
    for (int k = 0; k < SCRATCH_SLOTS; k++) {
        if (r->scr[k].has_off)
            vf_arena_release(r->arena, r->scr[k].off);
        vf_device_event_destroy(r->dev, r->scr[k].ready);
        vf_device_event_destroy(r->dev, r->scr[k].freed);
    }
    vf_device_event_destroy(r->dev, r->sync_ev);
    vf_free(r->slots);
    vf_free(r->slot_ptrs);
    vf_free(r->stream);
    vf_free(r->next);
}

static vf_status device_setup(vf_residency *r)
{
    const vf_blocklist *bl = r->bl;
    VF_TRY(check_options(bl, &r->opt));
    r->dev = r->opt.device;
    r->arena = r->opt.arena;
    r->cur = -1;
    for (int b = 0; b < bl->nblocks; b++) {
        block_state *s = &r->blocks[b];
        s->home = r->opt.home ? r->opt.home[b] : VF_TIER_DEVICE;
        s->img = vf_residency_block_stored_bytes(bl, b, r->opt.image_dtype, r->opt.quant);
        s->scr = -1;
        uint64_t e = block_expanded_bytes(bl, b, r->opt.image_dtype, r->opt.quant);
        r->scr_bytes = e > r->scr_bytes ? e : r->scr_bytes;
        for (int j = 0; j < bl->blocks[b].nw; j++)
            s->npacked += vf_wspec_packed(r->opt.quant, &bl->w[bl->blocks[b].first_w + j]);
        s->slot = -1;
        s->spos = -1;
        s->trace_at = -1;
    }
    VF_TRY(vf_device_event_create(r->dev, &r->sync_ev));
    VF_TRY(build_stream(r));
    VF_TRY(setup_ring(r));
    for (int k = 0; k < SCRATCH_SLOTS; k++)
        r->scr[k].ahead = -1;
    /* A diagnostics switch: A/B benchmarks, and the GPU test that the two
     * orders give the same bits. */
    const char *env = getenv("VF_EXPAND_AHEAD");
    r->no_ahead = env && strcmp(env, "0") == 0;
    for (int k = 0; r->scr_bytes && k < SCRATCH_SLOTS; k++) {
        VF_TRY(vf_arena_alloc(r->arena, r->scr_bytes, "quantized weights' expansion", &r->scr[k].off));
        r->scr[k].has_off = 1;
        r->scr[k].dev = vf_arena_ptr(r->arena, r->scr[k].off);
        VF_TRY(vf_device_event_create(r->dev, &r->scr[k].ready));
        VF_TRY(vf_device_event_create(r->dev, &r->scr[k].freed));
    }
    return setup_resident(r);
}

/* ---- public ------------------------------------------------------------------------------- */

vf_status vf_residency_create(const vf_checkpoint *ck, const vf_blocklist *bl,
                              const vf_residency_options *o, vf_residency **out)
{
    *out = NULL;
    vf_residency *r = vf_calloc(1, sizeof *r);
    if (!r)
        return VF_ERR_NO_MEMORY;
    r->blocks = vf_calloc((size_t)(bl->nblocks ? bl->nblocks : 1), sizeof(block_state));
    if (!r->blocks) {
        vf_free(r);
        return VF_ERR_NO_MEMORY;
    }
    r->ck = ck;
    r->bl = bl;
    if (o)
        r->opt = *o;
    else
        vf_residency_options_init(&r->opt);
    vf_status st = VF_OK;
    if (r->opt.device && !vf_device_is_host(r->opt.device))
        st = device_setup(r);
    if (st == VF_OK)
        st = vf_monitor_register_cache(r, drop_cache_cb);
    if (st != VF_OK) {
        vf_residency_free(r);
        return st;
    }
    r->registered = 1;
    *out = r;
    return VF_OK;
}

void vf_residency_free(vf_residency *r)
{
    if (!r)
        return;
    if (r->registered)
        vf_monitor_unregister_cache(r);
    if (on_device(r))
        device_teardown(r);
    for (int i = 0; i < r->bl->nblocks; i++)
        drop(r, &r->blocks[i]);
    vf_free(r->blocks);
    vf_free(r);
}

vf_status vf_residency_acquire(vf_residency *r, int b, const float *const **w)
{
    *w = NULL;
    if (b < 0 || b >= r->bl->nblocks)
        return vf_error(VF_ERR_INTERNAL, "block %d out of range", b);
    return on_device(r) ? device_acquire(r, b, w) : cpu_acquire(r, b, w);
}

void vf_residency_release(vf_residency *r, int b)
{
    if (b < 0 || b >= r->bl->nblocks)
        return;
    if (on_device(r))
        device_release(r, b);
    else
        cpu_release(r, b);
}

vf_status vf_residency_load(vf_residency *r)
{
    for (int b = 0; b < r->bl->nblocks; b++) {
        if (!on_device(r)) {
            if (!r->blocks[b].data)
                VF_TRY(materialise(r, b));
            continue;
        }
        if (r->blocks[b].home == VF_TIER_DEVICE)
            VF_TRY(load_resident(r, b));
        else
            VF_TRY(ensure_host(r, b));
    }
    return VF_OK;
}

uint64_t vf_residency_drop_cache(vf_residency *r)
{
    uint64_t before = r->host_bytes;
    if (on_device(r))
        sync_all(r); /* host copies may be the source of queued copies */
    for (int b = 0; b < r->bl->nblocks; b++) {
        block_state *s = &r->blocks[b];
        if (s->acquired)
            continue;
        if (!on_device(r))
            drop(r, s);
        else if (s->home == VF_TIER_HOST)
            free_host_copy(r, s);
    }
    return before - r->host_bytes;
}

/* Block b's image into dst taken from a live residency when it has it:
 * 1 when copied, 0 when it has nothing for b. */
static int copy_from_live(vf_residency *live, int b, void *dst, vf_status *st)
{
    block_state *s = &live->blocks[b];
    *st = VF_OK;
    if (s->home == VF_TIER_DEVICE && s->loaded) {
        *st = vf_device_d2h(live->dev, dst, vf_arena_ptr(live->arena, s->off), s->img);
        return 1;
    }
    if (s->host && s->host_ready) {
        memcpy(dst, s->host, (size_t)s->img);
        return 1;
    }
    return 0;
}

/* Block b's image copied from live when it holds it, else converted by r (from its checkpoint). */
static vf_status image_from(vf_residency *r, vf_residency *live, int b, void *dst)
{
    vf_status st;
    if (live && copy_from_live(live, b, dst, &st))
        return st;
    return convert(r, b, dst, NULL);
}

/* Block b's image (image_from) into a new committed entry of store s; none on failure. */
static vf_status store_block(vf_host_store *s, int comp, const vf_store_format *f, uint64_t img, int b,
                             vf_residency *r, vf_residency *live)
{
    void *dst;
    VF_TRY(vf_host_store_alloc(s, comp, b, f, img, &dst));
    vf_status st = image_from(r, live, b, dst);
    if (st != VF_OK) {
        vf_host_store_drop(s, comp, b);
        return vf_error_prefix(st, "keeping block '%s' in host memory", r->bl->blocks[b].name);
    }
    vf_host_store_commit(s, comp, b);
    return VF_OK;
}

vf_status vf_residency_store_fill(const vf_checkpoint *ck, const vf_blocklist *bl, const vf_residency_options *o,
                                  vf_residency *live)
{
    if (!o->store || !o->device || vf_device_is_host(o->device))
        return vf_error(VF_ERR_INTERNAL, "residency: filling a store needs a store and a device");
    /* A residency that is never set up: what convert() needs of one. */
    vf_residency tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.ck = ck;
    tmp.bl = bl;
    tmp.opt = *o;
    tmp.dev = o->device;
    vf_store_format f = {o->image_dtype, o->image_ohwi, o->quant};
    if (live && (live->bl != bl || !live->dev || live->opt.image_dtype != f.image ||
                 !live->opt.image_ohwi != !f.ohwi || live->opt.quant != f.quant))
        live = NULL;
    for (int b = 0; b < bl->nblocks; b++) {
        uint64_t img = vf_residency_block_stored_bytes(bl, b, f.image, f.quant);
        if (!vf_host_store_get(o->store, o->store_comp, b, &f, img, NULL))
            VF_TRY(store_block(o->store, o->store_comp, &f, img, b, &tmp, live));
    }
    return VF_OK;
}

vf_status vf_residency_store_save(vf_residency *r)
{
    if (!r || !r->opt.store || !on_device(r))
        return VF_OK;
    vf_store_format f = {r->opt.image_dtype, r->opt.image_ohwi, image_quant(r)};
    for (int b = 0; b < r->bl->nblocks; b++) {
        block_state *s = &r->blocks[b];
        if (s->home == VF_TIER_DEVICE && s->loaded && !stored(r, b, NULL))
            VF_TRY(store_block(r->opt.store, r->opt.store_comp, &f, s->img, b, r, r));
    }
    return VF_OK;
}

vf_status vf_residency_store_keep(vf_residency *r)
{
    if (!r || !r->opt.store || !on_device(r))
        return VF_OK;
    vf_store_format f = {r->opt.image_dtype, r->opt.image_ohwi, image_quant(r)};
    for (int b = 0; b < r->bl->nblocks; b++) {
        block_state *s = &r->blocks[b];
        if (s->host_borrowed || !s->host || !s->host_ready || stored(r, b, NULL))
            continue;
        int pinned = s->home == VF_TIER_PINNED;
        VF_TRY(vf_host_store_adopt(r->opt.store, r->opt.store_comp, b, &f, s->host, s->img, pinned));
        host_add(r, -(int64_t)s->img); /* the store counts it now */
        s->host_borrowed = 1;
    }
    return vf_residency_store_save(r);
}

void vf_residency_store_trim(vf_residency *r)
{
    if (!r || !r->opt.store || !on_device(r))
        return;
    for (int b = 0; b < r->bl->nblocks; b++) {
        const block_state *s = &r->blocks[b];
        if (s->home == VF_TIER_DEVICE && s->loaded)
            vf_host_store_drop(r->opt.store, r->opt.store_comp, b);
    }
}

uint64_t vf_residency_host_bytes(const vf_residency *r) { return r->host_bytes; }
uint64_t vf_residency_host_peak(const vf_residency *r) { return r->host_peak; }
int vf_residency_trace_count(const vf_residency *r) { return r->ntrace; }

uint64_t vf_residency_device_bytes(const vf_residency *r)
{
    if (!on_device(r))
        return 0;
    uint64_t n = (uint64_t)r->nslots * vf_arena_round(r->slot_bytes);
    for (int b = 0; b < r->bl->nblocks; b++)
        if (r->blocks[b].has_off)
            n += vf_arena_round(r->blocks[b].img);
    return n;
}
