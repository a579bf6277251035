/* The VAE (diffusers AutoencoderKL) decoder, as a block list, on any compute backend.
 *
 * The decoder turns latents (B,4,h,w) into an image (B,3,S*h,S*w) in [-1,1],
 * S = 2^(levels-1) (8 for SD1.5 and SDXL). Its weights are small (~50M params)
 * but its activations are not: at 1024x1024 one 128-channel feature map is
 * 512 MB. So images are decoded one at a time, every buffer is freed as soon as
 * its last reader has run, and the mid-block attention is chunked over queries.
 *
 * Blocks, in run order (each acquired right before it runs, released after):
 *   post_quant_conv                      (when use_post_quant_conv)
 *   decoder.conv_in
 *   decoder.mid_block.resnets.0
 *   decoder.mid_block.attentions.0       (when mid_block_add_attention)
 *   decoder.mid_block.resnets.1
 *   decoder.up_blocks.i.resnets.j        (layers_per_block+1 per level)
 *   decoder.up_blocks.i.upsamplers.0     (all levels but the last)
 *   decoder                              (conv_norm_out + conv_out)
 * Encoder weights (encoder.*, quant_conv) are not described: decoding never
 * needs them and unused tensors are fine.
 *
 * Tiled decoding (a later issue) plugs in at vf_vae_decode_one(): it decodes one
 * latent (C,h,w) of any size, so a tiler calls it on overlapping latent tiles and
 * blends the outputs, without the per-block code changing.
 */
#ifndef VF_MODEL_VAE_H
#define VF_MODEL_VAE_H

#include "mem/residency.h"
#include "model/blocks.h"
#include "model/exec.h"

#include <cjson/cJSON.h>
#include <stdint.h>

#define VF_VAE_MAX_LEVELS 8
#define VF_VAE_MAX_LATENT_CHANNELS 16

typedef struct vf_vae_config {
    int latent_channels;          /* 4                                        */
    int out_channels;             /* 3                                        */
    int nlevels;                  /* len(block_out_channels)                  */
    int block_out_channels[VF_VAE_MAX_LEVELS];
    int layers_per_block;
    int norm_num_groups;
    float norm_eps;               /* 1e-6, fixed by diffusers' Decoder         */
    double scaling_factor;        /* 0.18215 SD1.5, 0.13025 SDXL              */
    double shift_factor;          /* 0 when null                              */
    int has_latents_mean_std;     /* latents_mean and latents_std both given  */
    double latents_mean[VF_VAE_MAX_LATENT_CHANNELS];
    double latents_std[VF_VAE_MAX_LATENT_CHANNELS];
    int use_post_quant_conv;
    int mid_attention;            /* mid_block_add_attention                  */
} vf_vae_config;

/* Reads and checks the VAE config.json (AutoencoderKL). */
vf_status vf_vae_config_parse(const cJSON *config, vf_vae_config *out);
/* Appends the decoder's blocks and weight shapes (see the list above). */
vf_status vf_vae_describe(const cJSON *config, vf_blocklist *bl);
/* Pixels per latent along each axis: 2^(nlevels-1). */
int vf_vae_scale(const vf_vae_config *cfg);

/* latents is (B,C,h,w) exactly as the sampler leaves them (NOT yet divided by
 * the scaling factor): this function applies z = latents / scaling_factor +
 * shift_factor (or latents * std / scaling_factor + mean when the config has
 * latents_mean/latents_std), as the diffusers pipelines do before vae.decode.
 * image is (B,out_channels,S*h,S*w) in about [-1,1], S = vf_vae_scale(). */
vf_status vf_vae_decode(vf_residency *r, const vf_blocklist *bl, const vf_vae_config *cfg,
                        const float *latents, int B, int h, int w, float *image);
/* z is one already-scaled latent (C,h,w); image is (out_channels,S*h,S*w).
 * The seam for tiled decoding. */
vf_status vf_vae_decode_one(vf_residency *r, const vf_blocklist *bl, const vf_vae_config *cfg,
                            const float *z, int h, int w, float *image);
/* The same two on x's backend and weight source (the forms above are these on
 * a CPU backend over r); host float32 in and out, everything between on the
 * backend. */
vf_status vf_vae_decode_ex(const vf_exec *x, const vf_vae_config *cfg, const float *latents, int B, int h, int w,
                           float *image);
vf_status vf_vae_decode_one_ex(const vf_exec *x, const vf_vae_config *cfg, const float *z, int h, int w,
                               float *image);

/* decoded is (B,3,H,W) in [-1,1]. img01 (B,H,W,3) receives (x/2+0.5).clamp(0,1)
 * and rgb (B,H,W,3) receives round_half_even(img01 * 255) as uint8, the
 * diffusers postprocess + numpy_to_pil. Either output may be NULL. */
void vf_image_from_decoded(const float *decoded, int B, int H, int W, float *img01, uint8_t *rgb);

#endif
