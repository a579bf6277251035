/* The model's compute backend: which one, and how components reach it.
 *
 * vf_model_options.backend picks it at open: "cpu" (default; float32, the
 * reference path, weights through the memory manager's residency) or
 * "cuda[:f16|:bf16]" (libvramfit-cuda.so, loaded at run time; a machine
 * without it gets a VF_ERR_DEVICE naming why). Off the CPU each component's
 * weights live in a backend weight cache (model/exec.h), uploaded block by
 * block on first use and kept until the model closes: everything resident,
 * FULL_GPU. The memory manager's device streaming replaces the cache through
 * the residency (the seam is vf_exec_acquire); until then, budgets and
 * offload strategies do not apply to the CUDA backend's weights.
 *
 * Stage code calls the vf_model_run_* wrappers below instead of the model
 * functions, so a stage is the same on every backend.
 */
#include "core/alloc.h"
#include "core/error.h"
#include "pipeline/model.h"

#include <string.h>

static vf_status parse_backend(const char *spec, vf_backend_options *o)
{
    vf_backend_options_init(o);
    if (!spec || !spec[0] || strcmp(spec, "cpu") == 0)
        return VF_OK;
    if (strncmp(spec, "cuda", 4) != 0 || (spec[4] != '\0' && spec[4] != ':'))
        return vf_error(VF_ERR_INVALID_ARG, "backend '%s': expected cpu, cuda, cuda:f16 or cuda:bf16", spec);
    o->kind = VF_BACKEND_CUDA;
    o->dtype = VF_DTYPE_F16;
    if (spec[4] == '\0' || strcmp(spec + 5, "f16") == 0 || strcmp(spec + 5, "fp16") == 0)
        return VF_OK;
    if (strcmp(spec + 5, "bf16") == 0) {
        o->dtype = VF_DTYPE_BF16;
        return VF_OK;
    }
    return vf_error(VF_ERR_INVALID_ARG, "backend '%s': compute dtype must be f16 or bf16", spec);
}

vf_status vf_model_backend_open(vf_model *m, const vf_model_options *o)
{
    vf_backend_options bo;
    VF_TRY(parse_backend(o ? o->backend : NULL, &bo));
    vf_status st = vf_backend_create(&bo, &m->be);
    if (st != VF_OK)
        return vf_error_prefix(st, "%s", m->path);
    return VF_OK;
}

void vf_model_backend_close(vf_model *m)
{
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        vf_wcache_free(m->wc[c]);
        m->wc[c] = NULL;
    }
    if (m->be)
        (void)vf_be_sync(m->be);
    vf_backend_free(m->be);
    m->be = NULL;
}

vf_status vf_model_exec(vf_model *m, vf_component c, vf_residency *r, vf_exec *x)
{
    memset(x, 0, sizeof *x);
    if (!m->be)
        return vf_error(VF_ERR_INTERNAL, "%s: the model has no compute backend", m->path);
    x->be = m->be;
    x->bl = &m->bl[c];
    x->res = r;
    if (vf_be_info(m->be)->kind == VF_BACKEND_CPU)
        return VF_OK;
    if (!m->wc[c])
        VF_TRY(vf_wcache_create(m->be, m->ck, &m->bl[c], &m->wc[c]));
    x->wc = m->wc[c];
    return VF_OK;
}

vf_status vf_model_load_backend(vf_model *m)
{
    if (!m->be || vf_be_info(m->be)->kind == VF_BACKEND_CPU)
        return VF_OK;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        vf_exec x;
        if (!m->present[c])
            continue;
        VF_TRY(vf_model_exec(m, (vf_component)c, NULL, &x));
        vf_status st = vf_wcache_load_all(x.wc);
        if (st != VF_OK)
            return vf_error_prefix(st, "%s: %s", m->path, vf_component_name((vf_component)c));
    }
    return VF_OK;
}

vf_status vf_model_run_clip(vf_model *m, vf_component c, vf_residency *r, const int32_t *ids, float *last_hidden,
                            float *penultimate, float *pooled_proj)
{
    vf_exec x;
    VF_TRY(vf_model_exec(m, c, r, &x));
    return vf_clip_forward_ex(&x, &m->clip[c == VF_COMPONENT_TEXT_ENCODER_2 ? 1 : 0], ids, last_hidden,
                              penultimate, pooled_proj);
}

vf_status vf_model_run_unet(vf_model *m, vf_residency *r, const vf_unet_config *cfg, const float *sample, int B,
                            int H, int W, const float *timesteps, const float *context, int ctx_len,
                            const float *text_embeds, const float *time_ids, float *out)
{
    vf_exec x;
    VF_TRY(vf_model_exec(m, VF_COMPONENT_UNET, r, &x));
    return vf_unet_forward_ex(&x, cfg, sample, B, H, W, timesteps, context, ctx_len, text_embeds, time_ids, out);
}

vf_status vf_model_run_vae(vf_model *m, vf_residency *r, const vf_vae_config *cfg, const float *latents, int B,
                           int h, int w, float *image)
{
    vf_exec x;
    VF_TRY(vf_model_exec(m, VF_COMPONENT_VAE, r, &x));
    return vf_vae_decode_ex(&x, cfg, latents, B, h, w, image);
}

vf_backend *vf_model_backend(vf_model *m) { return m ? m->be : NULL; }

uint64_t vf_model_backend_weight_bytes(const vf_model *m)
{
    uint64_t n = 0;
    for (int c = 0; m && c < VF_COMPONENT_COUNT; c++)
        n += vf_wcache_bytes(m->wc[c]);
    return n;
}
