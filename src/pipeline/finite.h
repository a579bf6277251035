/* Non-finite values in stage outputs: detected where they appear, reported by name.
 *
 * A NaN in a checkpoint's weights (a bad conversion, a broken fine-tune) or an
 * overflow in compute (SDXL's VAE in float16 is the classic) turns every pixel
 * into NaN, which quantizes to a black image that looks like a result. So the
 * pipeline checks each stage's output (text encoder states, every UNet output
 * and the latents after every step, the VAE output), a pass over a few
 * megabytes at most, and stops with VF_ERR_NONFINITE naming the stage and step.
 * On that error path only, the component's stored weights are scanned, so that
 * the message can also name the first tensor holding NaN or infinity, or say
 * that the weights are finite (then the compute overflowed).
 */
#ifndef VF_PIPELINE_FINITE_H
#define VF_PIPELINE_FINITE_H

#include "core/error.h"
#include "pipeline/model.h"

#include <stddef.h>

/* How many of x[0..n) are NaN or infinite (by their bits: immune to fast-math). */
size_t vf_count_nonfinite(const float *x, size_t n);

/* The first stored tensor of component c with a NaN or infinite value:
 * *name receives its name (NULL when every float tensor is finite). Reads the
 * weights in small chunks; VF_OK unless a read fails. */
vf_status vf_find_nonfinite_weight(const vf_model *m, vf_component c, const char **name);

/* Checks x[0..n), the output of component c at `where` (e.g. "denoise step 3:
 * unet output"); VF_OK when finite, else VF_ERR_NONFINITE with a message naming
 * the model, where, the count, and the culprit weight when c's weights hold one
 * (c < 0: no component to blame, e.g. the sampler's arithmetic). */
vf_status vf_check_finite(const vf_model *m, int c, const float *x, size_t n, const char *where);

#endif
