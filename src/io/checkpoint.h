/* Checkpoint layouts mapped to one canonical naming.
 *
 * A checkpoint is a diffusers folder (model_index.json, component folders with
 * config.json and *.safetensors, sharded *.safetensors.index.json, *.fp16 variants)
 * or a single file in the original Stability key layout (SD1.5: model.diffusion_model.*,
 * cond_stage_model.transformer.*, first_stage_model.*; SDXL: conditioner.embedders.{0,1}.*).
 * Either way it is presented as up to four components whose tensors carry the
 * diffusers names of that component (e.g. "text_model.encoder.layers.0.self_attn.q_proj.weight"
 * in text_encoder, "down_blocks.0.resnets.0.conv1.weight" in unet) and the diffusers
 * shapes. Where the original layout differs, a canonical tensor is a view of a
 * stored one: a row slice of a fused tensor (OpenCLIP in_proj), a transpose
 * (OpenCLIP text_projection) or a reshape (VAE attention 1x1 convs as linears).
 *
 * Only headers are read here; vf_checkpoint_read_f32() reads one tensor's bytes.
 * Each component has a diffusers-style config (cJSON) read from config.json or,
 * for single files, inferred from the shapes plus the config_dir/defaults.
 */
#ifndef VF_IO_CHECKPOINT_H
#define VF_IO_CHECKPOINT_H

#include "io/safetensors.h"
#include "vramfit.h"

#include <cjson/cJSON.h>

typedef struct vf_ckpt_tensor {
    const char *name;             /* canonical name within its component     */
    vf_dtype dtype;               /* stored dtype                            */
    int ndim;
    int64_t shape[VF_MAX_DIMS];   /* canonical shape                         */
    uint64_t nbytes;              /* stored bytes of this canonical tensor   */
    vf_st_file *file;
    const vf_st_tensor *src;      /* the stored tensor it is a view of       */
    uint64_t src_offset;          /* byte offset into src (row slices)       */
    int transpose;                /* canonical = src^T (2-D)                 */
    /* 1: a packed quantized tensor (core/quant.h) from a `vramfit quantize`
     * file: dtype is its format (F8_E4M3, Q8 or Q4), shape the logical one,
     * nbytes the packed bytes. A row-slice view's first row is
     * src_offset / nbytes * shape[0] (its bytes are not contiguous in the
     * file: read them with vf_checkpoint_read_raw, never vf_st_read). */
    int packed;
} vf_ckpt_tensor;

typedef struct vf_checkpoint vf_checkpoint;

/* path: a diffusers folder or a .safetensors file. config_dir: NULL or a diffusers
 * folder whose component config.json files are used for single-file checkpoints. */
vf_status vf_checkpoint_open(const char *path, const char *config_dir, vf_checkpoint **out);
void vf_checkpoint_close(vf_checkpoint *ck);

const char *vf_checkpoint_path(const vf_checkpoint *ck);
int vf_checkpoint_is_single_file(const vf_checkpoint *ck);
vf_arch vf_checkpoint_arch(const vf_checkpoint *ck);
int vf_checkpoint_has(const vf_checkpoint *ck, vf_component c);
/* The component's diffusers-style config; never NULL for a present component. */
const cJSON *vf_checkpoint_config(const vf_checkpoint *ck, vf_component c);
/* scheduler_config.json contents, or NULL (the caller uses the architecture's default). */
const cJSON *vf_checkpoint_scheduler_config(const vf_checkpoint *ck);
/* model_index.json's force_zeros_for_empty_prompt (SDXL default 1, SD1.5 0). */
int vf_checkpoint_force_zeros_for_empty_prompt(const vf_checkpoint *ck);

size_t vf_checkpoint_count(const vf_checkpoint *ck, vf_component c);
const vf_ckpt_tensor *vf_checkpoint_at(const vf_checkpoint *ck, vf_component c, size_t i);
/* NULL when absent (no error set). */
const vf_ckpt_tensor *vf_checkpoint_find(const vf_checkpoint *ck, vf_component c, const char *name);
/* The safetensors files opened (weight files and shards, each once), in
 * opening order: what a tool rewriting the checkpoint walks. */
size_t vf_checkpoint_file_count(const vf_checkpoint *ck);
vf_st_file *vf_checkpoint_file(const vf_checkpoint *ck, size_t i);
/* Stored tensors that map to nothing inference uses (position_ids, model_ema.*, ...). */
size_t vf_checkpoint_ignored_count(const vf_checkpoint *ck);

/* Reads a canonical tensor as numel float32 values (converting, slicing,
 * transposing, dequantizing as needed). */
vf_status vf_checkpoint_read_f32(const vf_checkpoint *ck, const vf_ckpt_tensor *t, float *dst);
/* Copies the tensor's stored bytes (t->nbytes) into dst: a packed tensor's
 * packed bytes (gathered for a row-slice view), any other tensor's bytes as
 * stored when it is not a transposed view (VF_ERR_UNSUPPORTED then). */
vf_status vf_checkpoint_read_raw(const vf_checkpoint *ck, const vf_ckpt_tensor *t, void *dst);

#endif
