/* Execution context of model code: which backend computes, where weights come from.
 *
 * Model code (clip, unet, vae) is written once against backend/backend.h and
 * reaches a block's weights only through vf_exec_acquire / vf_exec_release, so
 * the same forward runs on the CPU (float32, NCHW) and on CUDA (f16/bf16, NHWC).
 * The weights come from the memory manager's residency (mem/residency.h),
 * whose block image is the backend's own format: float32 host memory used in
 * place on the CPU (bit for bit the reference path), device memory in the
 * compute dtype and filter layout on CUDA (resident in the arena, or a ring
 * slot filled on the copy stream).
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

typedef struct vf_exec {
    vf_backend *be;               /* the backend computing; never NULL in use   */
    const vf_blocklist *bl;       /* the component's bound block list            */
    vf_residency *res;            /* the component's weights                     */
} vf_exec;

/* w[0 .. bl->blocks[b].nw) receive block b's weights as backend buffers, in
 * declaration order, valid until the matching release. cap is w's length. */
vf_status vf_exec_acquire(const vf_exec *x, int b, const vf_dbuf **w, int cap);
void vf_exec_release(const vf_exec *x, int b);

/* The legacy entry points' context: a new CPU backend (float32) over res.
 * *owned receives the backend, which the caller frees with vf_backend_free. */
vf_status vf_exec_cpu(vf_exec *x, vf_residency *res, const vf_blocklist *bl, vf_backend **owned);

#endif
