/* Synthesized models: complete diffusers folders with deterministic random weights.
 *
 * Benchmarks and demos need SD1.5 / SDXL models at the real shapes without a
 * download, and the README's main job needs a small one it can make in a second.
 * vf_synth() writes model_index.json, every component's config.json (the
 * published SD1.5 / SDXL-base configs, or tiny ones like the reference
 * fixtures), scheduler_config.json, tokenizer files of a small vocabulary made
 * here (never the CLIP one), and weights whose names and shapes are exactly what
 * the model code describes (clip.h, unet.h, vae.h) plus the VAE encoder, so that
 * diffusers itself can load the folder.
 *
 * Weights stream to disk chunk by chunk from a counter-based generator, so
 * memory stays small for a 5 GB UNet and the bytes depend only on the seed,
 * the tensor's name and the dtype, never on the machine or the order of work.
 * Values: as PyTorch initialises the layers when diffusers builds a model
 * from its config: linear and convolution weights and biases uniform in
 * +-1/sqrt(fan_in), norm scales 1 and shifts 0; embedding tables normal(0,
 * 0.02) (a sum of four uniforms, bounded at 3.5 sigma). Activations stay
 * finite through a full forward in f16.
 *
 * The folder is built in DIR.tmp-XXXXXX and renamed into place at the end, so a
 * failure (a full disk) leaves nothing behind but the error.
 *
 * The split: synth.c writes folders and weights, synth_config.c builds the
 * configs and counts parameters, synth_vocab.c makes the tokenizer files.
 */
#ifndef VF_PIPELINE_SYNTH_H
#define VF_PIPELINE_SYNTH_H

#include "model/blocks.h"
#include "vramfit.h"

#include <cjson/cJSON.h>
#include <stdint.h>

typedef enum vf_synth_preset {
    VF_SYNTH_FULL = 0, /* the published architecture, for benchmarks          */
    VF_SYNTH_TINY      /* tiny channels, 64x64 images: a demo made in a second */
} vf_synth_preset;

/* Called after each chunk written; file is relative to the output folder. */
typedef void (*vf_synth_progress_fn)(void *user, const char *file, uint64_t done_bytes,
                                     uint64_t total_bytes);

typedef struct vf_synth_options {
    vf_arch arch;                /* VF_ARCH_SD15 or VF_ARCH_SDXL (default SDXL) */
    vf_dtype dtype;              /* F32, F16 (default) or BF16                  */
    vf_synth_preset preset;      /* default VF_SYNTH_FULL                       */
    uint64_t seed;               /* default 0                                   */
    int force;                   /* replace an existing model folder            */
    vf_synth_progress_fn progress;
    void *user;
} vf_synth_options;

void vf_synth_options_init(vf_synth_options *o);
/* "full" / "tiny" and back (VF_ERR_INVALID_ARG naming the text). */
const char *vf_synth_preset_name(vf_synth_preset p);
vf_status vf_synth_preset_parse(const char *name, vf_synth_preset *out);

/* Writes the folder outdir. outdir must not exist, or be an empty directory;
 * with o->force it may also be an earlier model folder (one holding
 * model_index.json), which is replaced whole. Anything else is refused: force
 * never deletes a folder that does not look like a model. */
vf_status vf_synth(const vf_synth_options *o, const char *outdir);

/* Parameters per component as vf_synth would write them (VAE: encoder included),
 * from the block lists, without writing. vocab is the text encoders' vocabulary
 * size; 0 means the synthesized vocabulary's (vf_synth_vocab_size()), 49408 gives
 * the published models' counts. Absent components count 0. */
vf_status vf_synth_count(vf_arch arch, vf_synth_preset preset, int32_t vocab,
                         uint64_t params[VF_COMPONENT_COUNT]);

/* ---- internal, between synth*.c and for tests ----------------------------------- */

/* vf_convert_from_f32 for F32/F16/BF16 with the same results, faster on the
 * random values synthesis makes. dst is suitably aligned. */
void vf_synth_convert(void *dst, vf_dtype t, const float *src, size_t n);

/* The synthesized vocabulary: the 256 byte symbols, the same with "</w>", the
 * merges, then <|startoftext|> and <|endoftext|> (the last two ids). */
int32_t vf_synth_vocab_size(void);
int vf_synth_merge_count(void);
/* Writes vocab.json, merges.txt and tokenizer_config.json into dir; pad is the
 * pad token ("<|endoftext|>", or "!" for SDXL's tokenizer_2). */
vf_status vf_synth_write_tokenizer(const char *dir, const char *pad);

/* The config.json of component c for vocabulary size vocab: *config parsed (a
 * new object), *text (when text is not NULL; free with cJSON_free) the file's
 * contents, where floats are written as floats (1.0), as transformers insists. */
vf_status vf_synth_config(vf_arch arch, vf_synth_preset preset, vf_component c, int32_t vocab,
                          vf_dtype dtype, cJSON **config, char **text);
/* model_index.json and scheduler/scheduler_config.json (new objects, to print). */
vf_status vf_synth_model_index(vf_arch arch, cJSON **out);
vf_status vf_synth_scheduler_config(vf_arch arch, cJSON **out);
/* Every tensor of component c, described from its config: the model code's
 * block list, and for the VAE the encoder and quant_conv after it (as blocks
 * "encoder..." and "quant_conv"). bl is initialised here; free it with vf_bl_free. */
vf_status vf_synth_describe(const cJSON *config, vf_arch arch, vf_component c, vf_blocklist *bl);

#endif
