/* The model pool's internal side: the mover interface and test hooks.
 *
 * The pool (public API in vramfit.h, "model pool") decides where each model
 * should be; a mover makes it so. Keeping the data movement behind two callbacks
 * keeps the pool's logic pure: it plans a load completely (victims, their
 * destinations) before anything moves, then asks the mover to demote each victim
 * and to promote the model, so a test can record the calls and a real residency
 * layer (host copies, pinned buffers, device arena) can plug in later without the
 * policy changing. Without a mover the pool only keeps the accounting.
 *
 * The mover is called with the pool's lock held, one move at a time, so it sees
 * moves in the order the accounting makes them; it must not call back into the
 * pool. A move's from and to may skip tiers (DEVICE to DISK on unload). When a
 * mover call fails, the load is undone: the victims already demoted are promoted
 * back, newest first; a victim whose promotion back fails too stays where the
 * data is (the accounting follows the data, and every capacity still holds).
 */
#ifndef VF_MEM_POOL_H
#define VF_MEM_POOL_H

#include "vramfit.h"

typedef struct vf_pool_move {
    const char *id;
    const char *path;             /* NULL for a model registered by size        */
    vf_pool_kind kind;
    uint64_t bytes;
    vf_tier from, to;
} vf_pool_move;

typedef struct vf_pool_mover {
    /* to > from: a load. On failure set the error (vf_error) and return it. */
    vf_status (*promote)(void *user, const vf_pool_move *mv);
    /* to < from: an eviction or an unload. */
    vf_status (*demote)(void *user, const vf_pool_move *mv);
    void *user;
} vf_pool_mover;

/* Plugs a mover in (NULL: accounting only). VF_ERR_INVALID_ARG while any model
 * is loaded, since the new mover would not know where its data is. */
vf_status vf_pool_set_mover(vf_pool *p, const vf_pool_mover *mv);

/* Test hook: registers a model of the given component sizes without a file
 * (multi-GB checkpoints cannot be made in tests). bytes is VF_COMPONENT_COUNT
 * sizes for a checkpoint; a LoRA's size is their sum. */
vf_status vf_pool_register_sized(vf_pool *p, const char *id, vf_pool_kind kind,
                                 const uint64_t bytes[VF_COMPONENT_COUNT]);

/* The data path of a pool with a device, implemented by the pipeline
 * (pipeline/hold.c) so that the pool needs nothing of a model's insides:
 * open a checkpoint with the pool's pipeline options, move its weights
 * between tiers (vf_model_hold), and let its stages call back into the pool
 * (hook(pool, id) before each stage, except while the pool moves it). */
vf_status vf_pool_open_model(const char *path, const char *config, const vf_pipeline_options *o, vf_model **out);
vf_status vf_pool_hold_model(vf_model *m, vf_tier from, vf_tier to);
void vf_pool_attach_model(vf_model *m, vf_status (*hook)(void *pool, const char *id), void *pool, const char *id);

#endif
