/* The UNet (diffusers UNet2DConditionModel) as a block list, on any compute backend.
 *
 * One implementation driven entirely by config.json covers SD1.5 and SDXL:
 * per-level channels, resnets per block, which levels carry cross-attention,
 * head counts, transformer depth, linear vs 1x1-conv projections and SDXL's
 * "text_time" added conditioning. vf_unet_config_parse() turns the JSON into a
 * flat struct once (with errors naming the key); describe() and forward() walk
 * the same structure in the same order, so the block list is exactly the order
 * of execution (which is what a streaming planner wants).
 *
 * Blocks: time_embedding, add_embedding (SDXL), conv_in, every resnet, every
 * Transformer2DModel split as <attn> (norm + proj_in), <attn>.transformer_blocks.k
 * (one per transformer block) and <attn>.proj_out, every down/up sampler conv,
 * then conv_norm_out and conv_out.
 */
#ifndef VF_MODEL_UNET_H
#define VF_MODEL_UNET_H

#include "mem/residency.h"
#include "model/blocks.h"
#include "model/exec.h"
#include "vramfit.h"

#include <cjson/cJSON.h>

#define VF_UNET_MAX_LEVELS 6

typedef struct vf_unet_config {
    int in_channels, out_channels;
    int levels;                            /* len(block_out_channels)               */
    int ch[VF_UNET_MAX_LEVELS];            /* block_out_channels                    */
    /* Down blocks are indexed by level; up block i works at level levels-1-i. */
    int down_layers[VF_UNET_MAX_LEVELS];   /* resnets per down block                */
    int up_layers[VF_UNET_MAX_LEVELS];     /* resnets per up block (layers + 1)     */
    int down_attn[VF_UNET_MAX_LEVELS];     /* 1: CrossAttnDownBlock2D               */
    int up_attn[VF_UNET_MAX_LEVELS];       /* 1: CrossAttnUpBlock2D                 */
    int down_heads[VF_UNET_MAX_LEVELS];    /* attention heads (head dim = C/heads)  */
    int up_heads[VF_UNET_MAX_LEVELS];
    int down_tlayers[VF_UNET_MAX_LEVELS];  /* transformer blocks per Transformer2D  */
    int up_tlayers[VF_UNET_MAX_LEVELS];
    int mid;                               /* 1: UNetMidBlock2DCrossAttn, 0: none   */
    int mid_heads, mid_tlayers;
    int cross_dim;                         /* encoder_hidden_states width           */
    int linear_proj;                       /* proj_in/out Linear [C,C] vs conv [C,C,1,1] */
    int groups;                            /* norm_num_groups                       */
    float norm_eps;                        /* resnets and conv_norm_out             */
    int flip_sin_to_cos;
    float freq_shift;
    int time_in_dim;                       /* sinusoidal width = ch[0]              */
    int temb_dim;                          /* time embedding width (ch[0]*4)        */
    int conv_in_k, conv_out_k;             /* odd kernels, "same" padding           */
    int text_time;                         /* addition_embed_type == "text_time"    */
    int add_time_dim;                      /* addition_time_embed_dim               */
    int add_in_dim;                        /* projection_class_embeddings_input_dim */
    int pooled_dim;                        /* add_in_dim - 6 * add_time_dim         */
} vf_unet_config;

/* Reads a diffusers UNet config.json; unsupported features (class embeddings,
 * scale-shift time conditioning, other block types...) are VF_ERR_UNSUPPORTED
 * and malformed values VF_ERR_FORMAT, each naming the key. */
vf_status vf_unet_config_parse(const cJSON *config, vf_arch arch, vf_unet_config *cfg);

/* Appends every UNet block and weight, with exact shapes, to bl
 * (initialised by the caller with VF_COMPONENT_UNET). */
vf_status vf_unet_describe_config(const vf_unet_config *cfg, vf_blocklist *bl);
/* Parse + describe in one call. */
vf_status vf_unet_describe(const cJSON *config, vf_arch arch, vf_blocklist *bl);

/* One UNet evaluation for a batch of B.
 *   sample      (B, in_channels, H, W); H and W divisible by 2^(levels-1)
 *   timesteps   (B)
 *   context     (B, ctx_len, cross_dim) encoder_hidden_states
 *   text_embeds (B, pooled_dim) and time_ids (B, 6): required when
 *               cfg->text_time (SDXL), ignored otherwise (may be NULL)
 *   out         (B, out_channels, H, W)
 * bl must be the list described from cfg and bound, res created over it. */
vf_status vf_unet_forward(vf_residency *res, const vf_blocklist *bl, const vf_unet_config *cfg,
                          const float *sample, int B, int H, int W, const float *timesteps,
                          const float *context, int ctx_len, const float *text_embeds,
                          const float *time_ids, float *out);
/* The same on x's backend and weight source (vf_unet_forward is this on a
 * CPU backend over res). Inputs and out are host float32 as above; they are
 * uploaded and downloaded around the walk, everything between stays on the
 * backend. */
vf_status vf_unet_forward_ex(const vf_exec *x, const vf_unet_config *cfg, const float *sample, int B, int H,
                             int W, const float *timesteps, const float *context, int ctx_len,
                             const float *text_embeds, const float *time_ids, float *out);

#endif
