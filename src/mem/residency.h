/* Residency: where a block's weights are when the block runs.
 *
 * The only way model code reaches weights. acquire() materialises block b's
 * weights on its compute device in its compute dtype and returns them in
 * declaration order; release() says the block is done. On the CPU backend the
 * home tier is HOST: weights are converted to float32 on first acquire and kept
 * (or dropped at release when keep_resident is off, trading time for memory).
 * The memory manager replaces this policy (tiers, streaming, quantized storage)
 * without model code changing.
 */
#ifndef VF_MEM_RESIDENCY_H
#define VF_MEM_RESIDENCY_H

#include "model/blocks.h"

typedef struct vf_residency vf_residency;

typedef struct vf_residency_options {
    int keep_resident;            /* keep converted weights after release (default 1) */
} vf_residency_options;

void vf_residency_options_init(vf_residency_options *o);
/* ck and bl must outlive the residency. */
vf_status vf_residency_create(const vf_checkpoint *ck, const vf_blocklist *bl,
                              const vf_residency_options *o, vf_residency **out);
void vf_residency_free(vf_residency *r);
/* *w receives bl->blocks[b].nw float32 pointers, valid until release. */
vf_status vf_residency_acquire(vf_residency *r, int b, const float *const **w);
void vf_residency_release(vf_residency *r, int b);
/* Host bytes held now / at most so far by converted weights. */
uint64_t vf_residency_host_bytes(const vf_residency *r);
uint64_t vf_residency_host_peak(const vf_residency *r);

#endif
