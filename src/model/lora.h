/* LoRA files: parse one, map its keys onto a model's weights, add its deltas.
 *
 * A LoRA is a set of low-rank factor pairs, each for one linear or conv weight
 * W (OC, IC[, kh, kw]) of a model: down (r, IC[, kh, kw]) and up (OC, r[, 1, 1]),
 * and optionally a scalar alpha. Applied at strength s it turns W into
 *   W + s * scale * up @ down          (conv factors flattened to (r, IC*kh*kw))
 * with scale = alpha / r (kohya's rule; alpha 0 counts as r) and, without an
 * alpha, the diffusers/PEFT adapter metadata's lora_alpha (alpha_pattern,
 * use_rslora: alpha / sqrt(r)) or else 1.
 *
 * Names, in the two families people download:
 *   kohya   lora_unet_<module>, lora_te_<module> (SD1.5's CLIP-L),
 *           lora_te1_<module> / lora_te2_<module> (SDXL's two encoders), each
 *           with .lora_down.weight, .lora_up.weight and .alpha, where <module>
 *           is the module path with '.' turned into '_'. UNet modules use
 *           diffusers paths (down_blocks_0_attentions_0_...) or, from SDXL
 *           trainers, the original Stability layout (input_blocks_4_1_...),
 *           which is mapped through the single-file key map (io/keymap.h).
 *   PEFT    unet.<module>.lora_A.weight / .lora_B.weight, text_encoder.*,
 *           text_encoder_2.* (as diffusers' save_lora_weights writes them),
 *           and the older diffusers names (.lora.down.weight, attention
 *           processors' .processor.to_q_lora.down.weight).
 * Because '_' is ambiguous, kohya names are not parsed: the underscore form of
 * every weight of the model is built and the key is looked up in that table.
 * Text encoder paths may lack the "text_model." level (transformers 5 drops it
 * from CLIPTextModel's module paths).
 *
 * The factors are read and checked (pairs complete, shapes against the model's
 * weights, finite) when the LoRA is loaded, and kept as stored (the pool sizes
 * a LoRA by its stored bytes); deltas are computed in float32 with OpenBLAS
 * when a weight is converted (see vf_lora_apply), so nothing is precomputed
 * per model and removing a LoRA is dropping it.
 */
#ifndef VF_MODEL_LORA_H
#define VF_MODEL_LORA_H

#include "model/blocks.h"
#include "model/unet.h"
#include "vramfit.h"

typedef struct vf_lora vf_lora;

/* What a LoRA is matched against. */
typedef struct vf_lora_target {
    vf_arch arch;
    const vf_blocklist *bl[VF_COMPONENT_COUNT];  /* bound lists; NULL: component absent */
    /* The UNet's config, for original-layout kohya names; NULL: those names
     * stay unmatched. */
    const vf_unet_config *unet;
} vf_lora_target;

/* Reads path and binds it to t's weights. Errors: VF_ERR_FORMAT for a malformed
 * file, a factor without its partner (naming the key) or a LoRA none of whose
 * keys matches a weight ("is it for another architecture?"); VF_ERR_SHAPE
 * naming the key, its shape and the weight's; VF_ERR_NONFINITE naming the
 * tensor; VF_ERR_UNSUPPORTED for LyCORIS / DoRA / LoCon-Tucker tensors. Keys
 * that match no weight are counted (vf_lora_get_info) and otherwise ignored. */
vf_status vf_lora_load(const char *path, const vf_lora_target *t, vf_lora **out);
void vf_lora_free(vf_lora *l);
/* Fills the counts of out (keys, matched, unmatched, weights, rank, bytes);
 * id and strength are left as they are. */
void vf_lora_get_info(const vf_lora *l, vf_lora_info *out);

/* Adds strength * scale * up @ down of every factor pair of l for weight wi of
 * component c (spec = that weight, w its float32 data) to w; *applied counts
 * the pairs added. A strength of 0 adds nothing (w keeps its bits). */
vf_status vf_lora_apply(const vf_lora *l, vf_component c, int wi, const vf_wspec *spec, float strength,
                        float *w, int *applied);

#endif
