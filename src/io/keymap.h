/* Key maps: stored tensor names to the canonical (diffusers) names.
 *
 * The original Stability single-file layouts (SD1.5 "ldm" and SDXL "sgm") name
 * the same weights differently from diffusers, and number the UNet's blocks as
 * one flat list whose meaning depends on layers_per_block and the number of
 * levels. These functions are pure string work, separate from file handling,
 * so that each rule can be unit-tested on synthetic names:
 *
 *   vf_sd_layout_build() looks at all keys once and works out the block
 *   structure (which flat input/output block is which level and index);
 *   vf_keymap_sd() then maps one key at a time using that structure.
 *
 * A mapped key may be a view of the stored tensor rather than a rename: the
 * OpenCLIP fused in_proj becomes three row slices (q, k, v), the OpenCLIP
 * text_projection is stored transposed, and VAE attention 1x1 convs become
 * linears. The view kind travels with the result; checkpoint.c builds the
 * vf_ckpt_tensor from it.
 *
 * keymap_config.c infers diffusers-style configs from canonical shapes.
 */
#ifndef VF_IO_KEYMAP_H
#define VF_IO_KEYMAP_H

#include "io/checkpoint.h"
#include "vramfit.h"

#include <cjson/cJSON.h>
#include <stddef.h>

#define VF_KEYMAP_NAME_MAX 256
#define VF_UNET_MAX_BLOCKS 64

typedef enum vf_keymap_kind {
    VF_KEYMAP_UNKNOWN = 0, /* not a name this layout knows: ignored, counted       */
    VF_KEYMAP_IGNORED,     /* known, unused by inference (schedule buffers, EMA)   */
    VF_KEYMAP_MAPPED
} vf_keymap_kind;

typedef enum vf_keymap_view {
    VF_VIEW_PLAIN = 0,  /* canonical = stored                                    */
    VF_VIEW_ROWS3,      /* name[p] = rows [p*R/3, (p+1)*R/3) of the stored tensor */
    VF_VIEW_TRANSPOSE,  /* canonical = stored^T (2-D)                             */
    VF_VIEW_LINEAR      /* a 4-D [O,I,1,1] 1x1 conv presented as [O,I]; 2-D as is */
} vf_keymap_view;

typedef struct vf_keymap_result {
    vf_keymap_kind kind;
    vf_component comp;
    vf_keymap_view view;
    int n; /* canonical names: 1, or 3 for VF_VIEW_ROWS3 */
    char name[3][VF_KEYMAP_NAME_MAX];
} vf_keymap_result;

/* Where each flat block of an original-layout UNet goes in diffusers. Levels
 * and indices are -1 for absent blocks. */
typedef struct vf_sd_layout {
    int unet_levels;        /* 0 when the file has no UNet                     */
    int unet_layers;        /* resnets per down level (layers_per_block)       */
    signed char in_level[VF_UNET_MAX_BLOCKS];
    signed char in_idx[VF_UNET_MAX_BLOCKS];   /* resnet index; -1 for a downsampler */
    signed char out_level[VF_UNET_MAX_BLOCKS];
    signed char out_idx[VF_UNET_MAX_BLOCKS];  /* resnet index; -1: no resnet here   */
    signed char out_attn_sub[VF_UNET_MAX_BLOCKS]; /* output_blocks.I.<sub>: attention */
    signed char out_up_sub[VF_UNET_MAX_BLOCKS];   /* output_blocks.I.<sub>: upsampler */
    int vae_levels;         /* 0 when the file has no VAE                      */
} vf_sd_layout;

/* VF_ARCH_SDXL when conditioner.embedders.1.model.* is present, VF_ARCH_SD15 for
 * cond_stage_model.transformer.*, else VF_ARCH_UNKNOWN. */
vf_arch vf_keymap_detect_arch(const char *const *keys, size_t n);

/* An empty layout: no blocks, every index -1. */
void vf_sd_layout_reset(vf_sd_layout *lay);
/* Works out the UNet / VAE block structure from all keys of a single file.
 * what names the file in errors. */
vf_status vf_sd_layout_build(const char *what, const char *const *keys, size_t n, vf_sd_layout *lay);

/* Maps one key of a single-file checkpoint. */
void vf_keymap_sd(const vf_sd_layout *lay, const char *key, vf_keymap_result *r);

/* Maps one key of a diffusers component file: names pass through, except
 * text_model.embeddings.position_ids (ignored) and the older VAE attention
 * names (query/key/value/proj_attn) and 1x1-conv shapes. */
void vf_keymap_diffusers(vf_component c, const char *key, vf_keymap_result *r);

/* ---- configs (keymap_config.c) ------------------------------------------------ */

/* A diffusers-style config for component c inferred from the canonical shapes
 * of ck (which must be complete for that component); what shapes cannot tell
 * comes from the published defaults of ck's architecture. */
vf_status vf_keymap_infer_config(const vf_checkpoint *ck, vf_component c, cJSON **out);

/* Checks that a given config agrees with the shapes: every shape-derived key
 * present in cfg must equal the inferred one. path names cfg in errors. */
vf_status vf_keymap_check_config(const vf_checkpoint *ck, vf_component c, const cJSON *cfg,
                                 const char *path);

#endif
