/* Residency: where a block's weights are when the block runs.
 *
 * The only way model code reaches weights. acquire() materialises block b's
 * weights on its compute device in its compute dtype and returns them in
 * declaration order; release() says the block is done. On the CPU backend the
 * home tier is HOST: weights are converted to float32 on first acquire and kept
 * (or dropped at release when keep_resident is off, trading time for memory).
 * The memory manager replaces this policy (tiers, streaming, quantized storage)
 * without model code changing.
 *
 * On a device (options.device other than the CPU) every block has a home tier:
 *   DEVICE          resident: a place in the arena is taken at creation, the
 *                   weights are copied there on first acquire (or by
 *                   vf_residency_load) and stay for the residency's life.
 *   PINNED / HOST   streamed from a float32 host copy converted once, on
 *                   first use (or by vf_residency_load); PINNED memory is
 *                   budgeted (the device's pinned limit) and taken at
 *                   creation; HOST is pageable, slower to copy on a real link
 *   DISK            streamed from the checkpoint through a pinned bounce
 *                   buffer per slot, when RAM cannot hold a host copy
 * Streamed blocks pass through a staging ring of ring_depth slots in the arena,
 * each the size of the largest streamed block. When block i is acquired, the
 * slots not in use already hold or are receiving the next streamed blocks in
 * execution order (i+1 .. i+depth-1, wrapping round to the start for the next
 * call), queued on the copy stream; acquire waits only for block i's copy, and
 * release hands i's slot to the next block at once. A slot keeps its block
 * until it is needed, so a ring as large as the streamed set copies each
 * block once. Everything in the arena is taken at creation: a placement that
 * does not fit is VF_ERR_BUDGET there, never halfway through a run.
 *
 * On the simulated device weights are float32 in device memory (CPU kernels
 * compute there). On CUDA the image is the compute dtype and the pointers
 * acquire hands out are device addresses (backend buffers), never read by
 * the host; kernels run asynchronously there, so the ordering points are
 * stream waits: compute waits for a block's copy on the device, and a copy
 * into a ring slot waits for the compute that last read the slot. A residency
 * is used by one thread at a time.
 */
#ifndef VF_MEM_RESIDENCY_H
#define VF_MEM_RESIDENCY_H

#include "mem/arena.h"
#include "mem/device.h"
#include "mem/host_store.h"
#include "model/blocks.h"

typedef struct vf_residency vf_residency;

/* One acquire of a block, for observing prefetch (times on vf_device_now()). */
typedef struct vf_residency_trace {
    int block;
    double copy_start, copy_end;        /* its copy into the ring; 0: no copy waited on */
    double compute_start, compute_end;  /* acquire returned / release called             */
} vf_residency_trace;

/* Called on every weight right after it is read as float32, before it goes
 * anywhere (host copy, arena, ring): LoRAs merge here, so resident, streamed
 * and quantized blocks all get them, and a residency created without the
 * patch reads the checkpoint's bytes unchanged. w has spec->shape. */
typedef vf_status (*vf_weight_patch_fn)(void *ctx, const vf_wspec *spec, float *w);

typedef struct vf_residency_options {
    vf_weight_patch_fn patch;     /* NULL: weights as stored                              */
    /* The image of a block on a device (the arena, the ring, host copies):
     * F32 OIHW for CPU kernels (the CPU and the simulated device); the CUDA
     * backend's compute dtype (F16/BF16) with conv filters OHWI there. Each
     * weight of a non-F32 image starts on a 256-byte boundary. */
    vf_dtype image_dtype;         /* default F32                                          */
    int image_ohwi;
    /* Quantized storage: weights vf_quant_can packs (core/quant.h), except
     * those vf_weight_stays_unpacked names (model/blocks.h), are held in
     * this format (F8_E4M3, Q8, Q4) in the device image, the host copies and
     * the ring (what the arena holds and the link carries) and expanded into
     * one of two scratch slots in the arena right before use. On the CPU path
     * they are rounded through it (vf_quant_roundtrip), so the CPU computes
     * what a device would. F16/BF16 there: rounding; F32 (default): none. */
    vf_dtype quant;
    void *patch_ctx;
    int keep_resident;            /* CPU: keep converted weights after release (default 1) */
    /* Device placement. device NULL or a CPU device: the CPU path above, and
     * the fields below are ignored. */
    vf_device *device;
    vf_arena *arena;              /* on device: required, over the same device            */
    const vf_tier *home;          /* nblocks entries; NULL: every block DEVICE            */
    int ring_depth;               /* ring slots when a block streams (default 2, >= 1)   */
    const int *order;             /* execution order, a permutation of the blocks;
                                     NULL: block-list order                               */
    vf_residency_trace *trace;    /* NULL, or trace_cap entries filled per acquire        */
    int trace_cap;
    /* Device path: block images held across residencies (mem/host_store.h),
     * read before the checkpoint when they match this residency's format:
     * resident blocks are copied to the arena from them, HOST copies and DISK
     * blocks stream from them, and a PINNED home uses a pinned entry as its
     * host copy (a pageable one is copied into its own). NULL: none. */
    vf_host_store *store;
    int store_comp;               /* the component the blocks belong to (the store's key) */
} vf_residency_options;

void vf_residency_options_init(vf_residency_options *o);
/* ck, bl and (with a device) the device, arena, home and order arrays must
 * outlive the residency. */
vf_status vf_residency_create(const vf_checkpoint *ck, const vf_blocklist *bl,
                              const vf_residency_options *o, vf_residency **out);
/* Waits for its copies, then frees all it holds (arena space included). */
void vf_residency_free(vf_residency *r);
/* *w receives bl->blocks[b].nw float32 pointers, valid until release. */
vf_status vf_residency_acquire(vf_residency *r, int b, const float *const **w);
void vf_residency_release(vf_residency *r, int b);
/* Host bytes held now / at most so far by converted weights. */
uint64_t vf_residency_host_bytes(const vf_residency *r);
uint64_t vf_residency_host_peak(const vf_residency *r);

/* Loads now what would otherwise load on first use: every resident block into
 * the arena and every HOST/PINNED host copy (EAGER loading). */
vf_status vf_residency_load(vf_residency *r);
/* Frees the conversions that can be made again, except those of acquired
 * blocks: the CPU path's converted weights, and on a device the pageable
 * (HOST) copies of streamed blocks. Device-resident weights stay, and so do
 * PINNED copies: page-locked memory is taken at creation, as part of the
 * plan. Returns the bytes freed. The monitor's clear_cache calls it. */
uint64_t vf_residency_drop_cache(vf_residency *r);
/* Makes the store (o->store, required) hold every block's image in the
 * format o describes: blocks it holds already are skipped; with a live
 * residency of the same blocks and format, its loaded resident blocks are
 * copied back from the device and its host copies are copied; everything else
 * is read and converted from ck. On failure the entries made so far stay
 * (each is complete). */
vf_status vf_residency_store_fill(const vf_checkpoint *ck, const vf_blocklist *bl, const vf_residency_options *o,
                                  vf_residency *live);
/* Copies r's loaded resident blocks back from the device into its store
 * (those it lacks), so that a new residency of the same format, made for a
 * new placement, loads them from there instead of the checkpoint. A resident
 * block loaded from the store leaves it again (the store keeps what the
 * device does not hold). No store: nothing. */
vf_status vf_residency_store_save(vf_residency *r);
/* Before r is freed: hands every block image r holds to its store, the host
 * copies as they are (no copy: the store adopts them, pinned or not) and the
 * loaded resident blocks copied back from the device into pageable memory,
 * so that the next residency of the component loads from there. Blocks the
 * store has already are skipped. No store: nothing. */
vf_status vf_residency_store_keep(vf_residency *r);
/* Drops the store entries of r's loaded resident blocks (the device holds
 * them); entries r borrows as host copies stay. */
void vf_residency_store_trim(vf_residency *r);
/* Arena bytes held (resident blocks + ring). */
uint64_t vf_residency_device_bytes(const vf_residency *r);
/* Acquires recorded in the trace so far. */
int vf_residency_trace_count(const vf_residency *r);

/* The arena bytes a placement takes (each allocation rounded as the arena
 * does): resident blocks, and a ring of depth slots for the streamed ones.
 * home NULL: all DEVICE. */
void vf_residency_plan_bytes(const vf_blocklist *bl, const vf_tier *home, int depth,
                             uint64_t *resident, uint64_t *ring);
/* float32 bytes of block b's weights. */
uint64_t vf_residency_block_f32_bytes(const vf_blocklist *bl, int b);
/* Bytes of block b's image in dtype dt (alignment included). */
uint64_t vf_residency_block_image_bytes(const vf_blocklist *bl, int b, vf_dtype dt);
/* Bytes of block b's image in dtype dt with quantizable weights packed in q. */
uint64_t vf_residency_block_stored_bytes(const vf_blocklist *bl, int b, vf_dtype dt, vf_dtype q);
/* vf_residency_plan_bytes for images of dtype dt, packed weights in q
 * (resident includes the scratch slots that expand them). */
void vf_residency_plan_bytes_ex(const vf_blocklist *bl, const vf_tier *home, int depth, vf_dtype dt, vf_dtype q,
                                uint64_t *resident, uint64_t *ring);

#endif
