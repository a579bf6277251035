/* CLIP text encoders (HF CLIPTextModel / CLIPTextModelWithProjection) as block lists.
 *
 * SD1.5 uses CLIP-L's last_hidden_state; SDXL uses hidden_states[-2] of CLIP-L and
 * of OpenCLIP-G plus OpenCLIP-G's projected pooled output. Both are the same
 * pre-LayerNorm transformer, so one description and one forward serve all three
 * uses; the forward skips whatever its caller did not ask for (SDXL's CLIP-L
 * never runs its last layer nor its final LayerNorm).
 *
 * Blocks, in run order (each acquired right before it runs, released after):
 *   text_model.embeddings              token_embedding.weight (V,D), position_embedding.weight (P,D)
 *   text_model.encoder.layers.i        layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc{1,2}
 *   text_model.final_layer_norm        weight, bias
 *   text_projection                    weight (proj, D), no bias (text_encoder_2 only)
 * text_projection is its own block rather than part of the final one because it
 * lives outside the text_model prefix; a block is one prefix.
 */
#ifndef VF_MODEL_CLIP_H
#define VF_MODEL_CLIP_H

#include "mem/residency.h"
#include "model/blocks.h"
#include "model/exec.h"

#include <cjson/cJSON.h>
#include <stdint.h>

typedef struct vf_clip_config {
    int hidden;                   /* D: 768 CLIP-L, 1280 OpenCLIP-G           */
    int intermediate;             /* MLP width                                */
    int layers;
    int heads;
    int max_positions;            /* >= VF_CONTEXT_LEN                        */
    int vocab;
    int quick_gelu;               /* hidden_act quick_gelu (1) or gelu (0)    */
    float eps;                    /* layer_norm_eps                           */
    int proj_dim;                 /* text_projection rows; 0 without one      */
    int32_t eos_token_id;         /* pooled output is taken at its first position */
    int legacy_eos;               /* eos_token_id == 2: pool at argmax(ids) as HF does */
} vf_clip_config;

/* Reads and checks a text encoder config.json. comp is VF_COMPONENT_TEXT_ENCODER
 * (no projection) or VF_COMPONENT_TEXT_ENCODER_2 (with text_projection). */
vf_status vf_clip_config_parse(const cJSON *config, vf_component comp, vf_clip_config *out);
/* Appends the encoder's blocks and weight shapes (see the list above). */
vf_status vf_clip_describe(const cJSON *config, vf_component comp, vf_blocklist *bl);

/* Runs the encoder on one window of VF_CONTEXT_LEN ids.
 * last_hidden (77,D): final_layer_norm(output of the last layer), HF last_hidden_state.
 * penultimate (77,D): output of layer N-2 (the input of the last), HF hidden_states[-2].
 * pooled_proj (proj_dim): text_projection(last_hidden[first EOS position]), HF text_embeds;
 * only for an encoder with a projection.
 * Any output may be NULL; layers and weights nobody needs are not touched. */
vf_status vf_clip_forward(vf_residency *r, const vf_blocklist *bl, const vf_clip_config *cfg,
                          const int32_t ids[VF_CONTEXT_LEN], float *last_hidden, float *penultimate,
                          float *pooled_proj);
/* The same on x's backend and weight source (vf_clip_forward is this on a CPU
 * backend over r); outputs are host float32. */
vf_status vf_clip_forward_ex(const vf_exec *x, const vf_clip_config *cfg, const int32_t ids[VF_CONTEXT_LEN],
                             float *last_hidden, float *penultimate, float *pooled_proj);

#endif
