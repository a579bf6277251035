/* Execution context of model code: which backend computes, where weights come from.
 *
 * Model code (clip, unet, vae) is written once against backend/backend.h and
 * reaches a block's weights only through vf_exec_acquire / vf_exec_release, so
 * the same forward runs on the CPU (float32, NCHW) and on CUDA (f16/bf16, NHWC).
 * Two weight sources sit behind that call:
 *
 *   residency   (wc NULL) the memory manager's vf_residency: float32 weights in
 *               host-accessible memory (the CPU, or the simulated device). They
 *               are used in place as CPU-backend buffers, so the CPU path is the
 *               residency contract unchanged and computes bit for bit as before.
 *   weight cache (wc set) vf_wcache: the block's weights materialised as backend
 *               buffers in the compute dtype and filter layout, uploaded from the
 *               checkpoint's stored bytes on first acquire and kept: everything
 *               resident on the GPU (FULL_GPU). This is the seam the memory
 *               manager's device streaming replaces: a residency that hands out
 *               backend buffers from its arena (resident, or a staging-ring slot
 *               filled on the copy stream) plugs in here without model code
 *               changing, and the cache then goes away.
 *
 * A cache belongs to one component and one backend and is used by one thread
 * at a time.
 */
#ifndef VF_MODEL_EXEC_H
#define VF_MODEL_EXEC_H

#include "backend/backend.h"
#include "io/checkpoint.h"
#include "mem/residency.h"
#include "model/blocks.h"

#include <stdint.h>

/* The most weights one block declares (a UNet transformer block has 20). */
#define VF_EXEC_MAX_W 32

typedef struct vf_wcache vf_wcache;

typedef struct vf_exec {
    vf_backend *be;               /* the backend computing; never NULL in use   */
    const vf_blocklist *bl;       /* the component's bound block list            */
    vf_residency *res;            /* weight source when wc is NULL (CPU backend) */
    vf_wcache *wc;                /* backend-resident weights, or NULL           */
} vf_exec;

/* w[0 .. bl->blocks[b].nw) receive block b's weights as backend buffers, in
 * declaration order, valid until the matching release. cap is w's length. */
vf_status vf_exec_acquire(const vf_exec *x, int b, const vf_dbuf **w, int cap);
void vf_exec_release(const vf_exec *x, int b);

/* The legacy entry points' context: a new CPU backend (float32) over res.
 * *owned receives the backend, which the caller frees with vf_backend_free. */
vf_status vf_exec_cpu(vf_exec *x, vf_residency *res, const vf_blocklist *bl, vf_backend **owned);

/* ---- weight cache ------------------------------------------------------------ */

/* An empty cache of bl's blocks for be; ck and bl must outlive it. */
vf_status vf_wcache_create(vf_backend *be, const vf_checkpoint *ck, const vf_blocklist *bl,
                           vf_wcache **out);
/* Frees every uploaded buffer. NULL is a no-op. */
void vf_wcache_free(vf_wcache *wc);
/* Uploads block b now if it is not there yet. */
vf_status vf_wcache_load(vf_wcache *wc, int b);
/* Uploads every block (EAGER, and benchmarks that keep loading out of timings). */
vf_status vf_wcache_load_all(vf_wcache *wc);
/* Backend bytes held by uploaded weights (in the compute dtype). */
uint64_t vf_wcache_bytes(const vf_wcache *wc);
/* Stored bytes read from the checkpoint and sent to the backend so far. */
uint64_t vf_wcache_uploaded(const vf_wcache *wc);

#endif
