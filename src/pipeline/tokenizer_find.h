/* Tokenizers for single-file checkpoints, which carry none.
 *
 * A .safetensors checkpoint in the original layout holds weights only, yet
 * most people who have one also have the tokenizer files somewhere: next to it
 * (tokenizer/, tokenizer_2/), or in the Hugging Face cache that diffusers,
 * transformers and ComfyUI-style tools fill. The model code asks here, in order
 * (see pipeline/model.c for the first two steps):
 *   1. --tokenizer DIR (vf_model_options.tokenizer_dir): only there.
 *   2. tokenizer/ (and tokenizer_2/) beside the checkpoint file.
 *   3. the Hugging Face hub cache: the snapshot refs/main names first, then any
 *      other, of the repositories below, the architecture's own first; the
 *      CLIP-L tokenizer (tokenizer/) is the same file in all of them:
 *        tokenizer:   stabilityai/stable-diffusion-xl-base-1.0 tokenizer/,
 *                     runwayml/stable-diffusion-v1-5 tokenizer/,
 *                     stable-diffusion-v1-5/stable-diffusion-v1-5 tokenizer/,
 *                     openai/clip-vit-large-patch14 (top level)
 *        tokenizer_2: stabilityai/stable-diffusion-xl-base-1.0 tokenizer_2/,
 *                     laion/CLIP-ViT-bigG-14-laion2B-39B-b160k (top level; its
 *                     pad token is set to "!", as SDXL's tokenizer_2 pads)
 * Nothing is downloaded. When nothing is found, the error lists every place
 * looked and says what to pass or download.
 */
#ifndef VF_PIPELINE_TOKENIZER_FIND_H
#define VF_PIPELINE_TOKENIZER_FIND_H

#include "vramfit.h"

#include <stddef.h>

/* The hub cache folder as huggingface_hub resolves it: $HF_HUB_CACHE,
 * $HUGGINGFACE_HUB_CACHE, $HF_HOME/hub, $XDG_CACHE_HOME/huggingface/hub,
 * $HOME/.cache/huggingface/hub. A new string; NULL when not even HOME is set
 * (or on allocation failure, with the error set). */
char *vf_hf_hub_cache(void);

typedef struct vf_tok_source {
    char *path;                   /* folder for vf_tokenizer_load (owned)      */
    const char *pad;              /* NULL, or the pad token to set after loading */
} vf_tok_source;

/* Looks for tokenizer `which` (0: tokenizer/, 1: tokenizer_2/) of an arch model
 * in the hub cache. Found: *found = 1 and src filled (free src->path). Either
 * way the places searched are appended to looked (cap bytes, NUL-terminated,
 * "; "-separated). Errors only for allocation failures. */
vf_status vf_tokenizer_find_cached(vf_arch arch, int which, vf_tok_source *src, int *found, char *looked,
                                   size_t cap);

#endif
