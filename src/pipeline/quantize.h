/* Writing quantized (or F16 / BF16) checkpoints: `vramfit quantize`.
 *
 * vf_quantize_checkpoint() reads any checkpoint vramfit loads and writes the
 * same layout back: a diffusers folder (configs, tokenizer and scheduler files
 * copied, each weight file rewritten under its own name, shard indexes kept)
 * or a single .safetensors file with the original keys. Stored tensors keep
 * their names, so every key map that reads the input reads the output; what
 * changes is how weights are stored (see io/safetensors.h for the metadata and
 * core/quant.h for the packed formats):
 *   F16 / BF16   every float tensor of the chosen components converted;
 *   F8 / Q8 / Q4 every weight vf_quant_can() accepts packed; the rest (biases,
 *                norms, short rows, a tensor some layout reads transposed,
 *                the input and output convolutions vf_weight_stays_unpacked
 *                names) keeps its stored dtype, so nothing loses precision it
 *                need not.
 * Tensors inference does not use and components not chosen are copied as they
 * are. An input that is already quantized is dequantized and quantized again.
 *
 * Memory stays bounded however large the model: tensors stream through the
 * streaming safetensors writer in row chunks of at most a few MB (a packed
 * tensor also holds its scale plane, 1/16 of its bytes for Q8, until its data
 * plane is written). A folder is assembled beside OUTPUT and renamed into place
 * at the end, a file is written to OUTPUT.tmp and renamed: a failure leaves
 * nothing behind. OUTPUT must not exist unless force is set; force replaces a
 * file, or a folder that holds a model (model_index.json), never anything else.
 */
#ifndef VF_PIPELINE_QUANTIZE_H
#define VF_PIPELINE_QUANTIZE_H

#include "vramfit.h"

#include <stdint.h>

/* Called after each tensor written; file is the output file being written. */
typedef void (*vf_quantize_progress_fn)(void *user, const char *file, uint64_t done_bytes, uint64_t total_bytes);

typedef struct vf_quantize_options {
    vf_dtype dtype;             /* F16, BF16, F8_E4M3, Q8 (default) or Q4     */
    unsigned components;        /* bits 1u << vf_component; 0: every component */
    int force;                  /* replace an existing OUTPUT (see above)     */
    const char *config_dir;     /* configs for a single-file INPUT, as vf_checkpoint_open */
    vf_quantize_progress_fn progress;
    void *user;
} vf_quantize_options;

typedef struct vf_quantize_stats {
    uint64_t tensors;           /* tensors written                            */
    uint64_t packed;            /* of which stored packed (F8 / Q8 / Q4)      */
    uint64_t converted;         /* of which converted to another float dtype  */
    uint64_t bytes_in, bytes_out; /* tensor data bytes read / written         */
    uint64_t files;             /* weight files written                       */
    uint64_t copied_files;      /* other files copied (configs, tokenizer...) */
    vf_dtype source_dtype;      /* the float dtype most input bytes were in   */
} vf_quantize_stats;

void vf_quantize_options_init(vf_quantize_options *o);

/* "f16", "bf16", "f8", "q8", "q4" (any case) -> the storage dtype;
 * VF_ERR_INVALID_ARG naming the text otherwise. */
vf_status vf_quantize_dtype_parse(const char *name, vf_dtype *out);
/* "unet,text,vae" (also text_encoder, text_encoder_2; "text" is both) -> a
 * component mask; VF_ERR_INVALID_ARG naming an unknown or empty entry. */
vf_status vf_quantize_components_parse(const char *list, unsigned *mask);

/* Writes output from input (see above). stats may be NULL. */
vf_status vf_quantize_checkpoint(const char *input, const char *output, const vf_quantize_options *o,
                                 vf_quantize_stats *stats);

#endif
