/* The LoRA parity helpers shared by tests/unit/test_lora.c (CPU, sim) and
 * tests/gpu/test_gpu_lora.c (CUDA): the reference's first UNet call and the
 * reference prompt run on a model (whatever its backend and device), and the
 * max relative error the parity bounds are stated in. Header-only. */
#ifndef VF_TEST_LORA_REF_H
#define VF_TEST_LORA_REF_H

#include "io/safetensors.h"
#include "pipeline/model.h"
#include "test.h"

#include <math.h>

/* Tensor name of f as float32 (malloc'd); NULL, and a failed check, when absent. */
static inline float *read_f32(vf_st_file *f, const char *name, size_t *n)
{
    const vf_st_tensor *t = vf_st_find(f, name);
    CHECK_MSG(t && t->dtype == VF_DTYPE_F32, "tensor %s missing or not F32", name);
    if (!t || t->dtype != VF_DTYPE_F32)
        return NULL;
    float *p = malloc(t->nbytes);
    CHECK_OK(vf_st_read(f, t, 0, p, t->nbytes));
    *n = t->nbytes / 4;
    return p;
}

/* The first UNet call of shared/reference/<model>, run on m. NULL on failure. */
static inline float *run_unet_of(vf_model *m, const char *shared, const char *model, size_t *n_out)
{
    char ref[1024];
    snprintf(ref, sizeof ref, "%s/reference/%s/reference.safetensors", shared, model);
    vf_st_file *rf = NULL;
    CHECK_OK(vf_st_open(ref, &rf));
    if (!rf)
        return NULL;
    size_t ns = 0, nt = 0, nc = 0, nx = 0, ni = 0;
    float *sample = read_f32(rf, "unet0_sample", &ns), *t = read_f32(rf, "unet0_timestep", &nt);
    float *ctx = read_f32(rf, "unet0_encoder_hidden_states", &nc), *text = NULL, *ids = NULL, *out = NULL;
    int xl = m->arch == VF_ARCH_SDXL;
    if (xl) {
        text = read_f32(rf, "unet0_text_embeds", &nx);
        ids = read_f32(rf, "unet0_time_ids", &ni);
    }
    vf_unet_config cfg;
    vf_residency *r = NULL;
    if (sample && t && ctx && (!xl || (text && ids))) {
        CHECK_OK(vf_unet_config_parse(vf_checkpoint_config(m->ck, VF_COMPONENT_UNET), m->arch, &cfg));
        const vf_st_tensor *st = vf_st_find(rf, "unet0_sample");
        int B = (int)st->shape[0], H = (int)st->shape[2], W = (int)st->shape[3];
        float ts[2] = {t[0], t[0]};
        out = calloc(ns, sizeof *out);
        vf_status s = vf_model_residency(m, VF_COMPONENT_UNET, &r);
        if (s == VF_OK)
            s = vf_model_run_unet(m, r, &cfg, sample, B, H, W, ts, ctx, (int)(nc / ((size_t)B * cfg.cross_dim)),
                                  text, ids, out);
        CHECK_OK(s);
        vf_model_component_done(m, VF_COMPONENT_UNET);
        if (s != VF_OK) {
            free(out);
            out = NULL;
        }
        *n_out = ns;
    }
    free(sample);
    free(t);
    free(ctx);
    free(text);
    free(ids);
    vf_st_close(rf);
    return out;
}

/* The reference prompt (and negative) encoded by m. */
static inline vf_embeddings *encode(vf_model *m)
{
    vf_embeddings *e = NULL;
    CHECK_OK(vf_encode_prompt_ex(m, "a photo of a cat wearing a tiny hat", "blurry, low quality",
                                 VF_PROMPT_SYNTAX_DIFFUSERS, &e));
    return e;
}

/* Max relative error as CHECK_CLOSE measures it. */
static inline double rel_err(const float *a, const float *b, size_t n)
{
    double ma = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        ma = d > ma ? d : ma;
        mb = fabs(b[i]) > mb ? fabs(b[i]) : mb;
    }
    return mb > 0 ? ma / mb : ma;
}

#endif
