/* Block lists: a model as an ordered list of blocks that own named weights.
 *
 * Model code describes itself once from its config: each block (a CLIP layer, a
 * UNet resnet, a VAE up block...) and the exact shape of every weight it needs.
 * Binding the list to a checkpoint checks every weight before any computation
 * (missing: VF_ERR_NOT_FOUND naming the tensor; wrong shape: VF_ERR_SHAPE naming
 * expected and stored shapes) and records exact byte sizes per block, which is
 * what the planner and the pool work with.
 *
 * Model code never keeps weight pointers across blocks: at run time it calls
 * vf_residency_acquire(block) right before computing the block and release right
 * after (mem/residency.h). Weights are addressed by their index in declaration
 * order within the block, so the hot path does no string work.
 */
#ifndef VF_MODEL_BLOCKS_H
#define VF_MODEL_BLOCKS_H

#include "core/error.h"
#include "io/checkpoint.h"

typedef struct vf_wspec {
    char *name;                   /* full canonical name                     */
    int ndim;
    int64_t shape[4];
    const vf_ckpt_tensor *t;      /* bound tensor, after vf_bl_bind           */
    int unpacked;                 /* stays F16 in packed formats (below)     */
} vf_wspec;

/* 1 when weight `name` (canonical) of component c stays unpacked, in F16,
 * where the others are stored F8 / Q8 / Q4: the convolutions that read a
 * model's input or write its output (UNet conv_in and conv_out, VAE
 * encoder.conv_in and decoder.conv_out). Every later layer computes from
 * conv_in's error and conv_out's reaches the output unaveraged, and the four
 * hold about 0.001% of the weights: on synthesized SDXL, keeping the UNet's
 * two in F16 lowers the Q8 UNet output error from 1.01% to 0.71% (RMS 0.89%
 * to 0.82%) for 46 KB more (bench/RESULTS.md). Quantizers commonly leave a
 * model's first and last layers unquantized for the same reason. */
int vf_weight_stays_unpacked(vf_component c, const char *name);
/* 1 when w is stored packed in fmt: fmt is F8_E4M3, Q8 or Q4, the format
 * takes w's shape (vf_quant_can) and w is not one that stays unpacked. The
 * residency and the planner both count bytes by it. */
int vf_wspec_packed(vf_dtype fmt, const vf_wspec *w);

typedef struct vf_block {
    char *name;                   /* prefix, e.g. "text_model.encoder.layers.0" */
    int first_w, nw;              /* its weights: w[first_w .. first_w+nw)   */
    uint64_t bytes;               /* stored bytes, after binding             */
    uint64_t params;
} vf_block;

typedef struct vf_blocklist {
    vf_component comp;
    vf_block *blocks;
    int nblocks, bcap;
    vf_wspec *w;
    int nw, wcap;
    vf_status st;                 /* first error while describing (sticky)   */
} vf_blocklist;

void vf_bl_init(vf_blocklist *bl, vf_component comp);
void vf_bl_free(vf_blocklist *bl);
/* Starts a new block named by the printf-style prefix; returns its index (or -1
 * after an allocation failure, recorded in bl->st). */
int vf_bl_block(vf_blocklist *bl, const char *fmt, ...) VF_PRINTF(2, 3);
/* Adds a weight to the current block; name is relative to the block prefix
 * (the prefix and a '.' are prepended when the prefix is not empty). Unused
 * trailing dims are ignored. Returns the weight's index within its block. */
int vf_bl_weight(vf_blocklist *bl, const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2,
                 int64_t d3);
/* Looks up every weight in the checkpoint component and checks its shape. */
vf_status vf_bl_bind(vf_blocklist *bl, const vf_checkpoint *ck);
/* Total stored bytes / parameters of the bound list. */
uint64_t vf_bl_bytes(const vf_blocklist *bl);
uint64_t vf_bl_params(const vf_blocklist *bl);

#endif
