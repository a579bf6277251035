/* Noise schedulers that reproduce diffusers' timesteps, sigmas and step math.
 *
 * One handle holds a fully computed schedule for a given number of steps, so the
 * denoising loop is plain indexing:
 *
 *     vf_scheduler_create(config, sampler, steps, &s);
 *     latents = randn(rng) * vf_scheduler_init_noise_sigma(s);
 *     for (i = 0; i < vf_scheduler_steps(s); i++) {
 *         x = copy of latents; vf_scheduler_scale_model_input(s, i, x, n);
 *         eps = unet(x, vf_scheduler_timestep(s, i), ...);   (with guidance)
 *         vf_scheduler_step(s, i, eps, latents, n, rng);
 *     }
 *
 * Supported (everything else a config asks for is VF_ERR_UNSUPPORTED naming the key):
 *   EulerDiscreteScheduler           spacing leading/trailing/linspace, steps_offset,
 *                                    linear interpolation, Karras or exponential
 *                                    sigmas, final sigma zero or sigma_min
 *   EulerAncestralDiscreteScheduler  draws its noise from the caller's vf_rng
 *   DDIMScheduler                    eta 0, set_alpha_to_one, clip_sample
 *   DPMSolverMultistepScheduler      dpmsolver++, order 1 or 2, midpoint or heun,
 *                                    Karras or exponential sigmas, lower_order_final,
 *                                    euler_at_final, lambda_min_clipped
 *   PNDMScheduler                    skip_prk_steps (PLMS, Stable Diffusion 1.x's
 *                                    published default), set_alpha_to_one; its
 *                                    schedule has steps + 1 model calls
 * Common keys: num_train_timesteps, beta_start, beta_end, beta_schedule (linear,
 * scaled_linear, squaredcos_cap_v2), prediction_type (epsilon, v_prediction,
 * sample; Euler ancestral and PNDM have no "sample", as in diffusers), timestep_spacing,
 * steps_offset, rescale_betas_zero_snr. Unknown keys are ignored, as diffusers does.
 *
 * The arithmetic follows diffusers operation by operation in the same precision
 * (float32 tensor math, float64 where numpy computes). Timesteps and sigmas agree
 * to within one float32 rounding and a step to ~1e-7 relative: torch's float sqrt,
 * log and exp (MKL on x86-64) are not correctly rounded, this code's are, so the
 * last bit of some values differs.
 */
#ifndef VF_PIPELINE_SCHEDULER_H
#define VF_PIPELINE_SCHEDULER_H

#include "pipeline/rng.h"
#include "vramfit.h"

#include <cjson/cJSON.h>
#include <stddef.h>

typedef struct vf_scheduler vf_scheduler;

/* config is a parsed scheduler_config.json, or NULL for Stable Diffusion's
 * published defaults (EulerDiscreteScheduler, scaled_linear 0.00085..0.012,
 * 1000 train steps, steps_offset 1, leading, epsilon). sampler overrides the
 * config's class (VF_SAMPLER_DEFAULT keeps it). steps is 1..num_train_timesteps
 * (else VF_ERR_INVALID_ARG naming "steps"; also when the spacing makes DDIM/PNDM
 * timesteps fall outside the training range or DPM++ sigmas repeat). Wrong value
 * types are VF_ERR_FORMAT
 * and unsupported classes or options VF_ERR_UNSUPPORTED, both naming the key. */
vf_status vf_scheduler_create(const cJSON *config, vf_sampler sampler, int steps,
                              vf_scheduler **out);
void vf_scheduler_free(vf_scheduler *s);

/* The sampler actually used (never VF_SAMPLER_DEFAULT) and its diffusers class. */
vf_sampler vf_scheduler_kind(const vf_scheduler *s);
const char *vf_scheduler_class(const vf_scheduler *s);

int vf_scheduler_steps(const vf_scheduler *s);
/* The UNet's timestep input for step i (0 <= i < steps), as diffusers passes it. */
/* The number of model calls (steps of the loop): the requested steps, except
 * PNDM (steps + 1) and trailing spacings where numpy's arange yields one extra. */
float vf_scheduler_timestep(const vf_scheduler *s, int i);
/* sigmas[i] for 0 <= i <= steps (the last is the final sigma). Sigma-based
 * schedulers (Euler, Euler ancestral, DPM++) return their schedule; DDIM and
 * PNDM, which have none, return sqrt((1 - alphabar) / alphabar) at timestep i and
 * 0 at i = steps. */
float vf_scheduler_sigma(const vf_scheduler *s, int i);
/* The factor the initial noise is multiplied by. */
float vf_scheduler_init_noise_sigma(const vf_scheduler *s);

/* x is (n,): the UNet input for step i, scaled in place (Euler: x / sqrt(sigma^2 + 1);
 * DDIM, DPM++, PNDM: unchanged). */
void vf_scheduler_scale_model_input(const vf_scheduler *s, int i, float *x, size_t n);

/* model_out and latents are (n,), the same n at every step. Advances latents in
 * place from step i to i + 1. Steps must be taken in order 0, 1, ... (DPM++ and
 * PNDM keep previous model outputs inside the handle; after the last step, or
 * vf_scheduler_reset(), the next call starts a new run at step 0). rng is required by Euler ancestral (it draws n normals per
 * step, as diffusers' step(generator=...) does) and ignored by the others. */
vf_status vf_scheduler_step(vf_scheduler *s, int i, const float *model_out, float *latents,
                            size_t n, vf_rng *rng);
/* Forgets the stepping state so that the schedule can be run again from step 0. */
void vf_scheduler_reset(vf_scheduler *s);

#endif
