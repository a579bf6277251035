/* The model's compute backends: which one, and how components reach them.
 *
 * vf_model_options.backend picks the compute backend at open: "cpu" (default;
 * float32, the reference path) or "cuda[:f16|:bf16]" (libvramfit-cuda.so,
 * loaded at run time; a machine without it gets a VF_ERR_DEVICE naming why).
 * The pipeline device "cuda" implies the CUDA backend and the other way round,
 * so that every CUDA run is under the memory manager: weights reach model
 * code through the component's residency (pipeline/memory.c), which hands out
 * backend buffers from the model's arena, resident or streamed through the
 * staging ring. A component the plan keeps on the CPU (CPU_OFFLOAD's text
 * encoders and VAE) computes on a CPU backend made on first need, from a CPU
 * residency, exactly as without a GPU.
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
    const char *spec = o ? o->backend : NULL;
    /* "cuda:bf16" as a device names the backend's dtype too */
    if ((!spec || !spec[0]) && o && o->pipeline && vf_mm_is_cuda_spec(o->pipeline->device))
        spec = o->pipeline->device;
    VF_TRY(parse_backend(spec, &bo));
    vf_status st = vf_backend_create(&bo, &m->be);
    if (st != VF_OK)
        return vf_error_prefix(st, "%s", m->path);
    if (bo.kind == VF_BACKEND_CUDA) {
        /* Everything the process holds on the device before the arena: the
         * CUDA context, library handles, workspaces made at creation (and, on
         * a shared GPU, other processes, which only makes the budget safer). */
        uint64_t total = 0, freeb = 0, ws = 0;
        vf_be_mem_info(m->be, &total, &freeb, &ws);
        m->be_context = total > freeb ? total - freeb : 0;
    }
    return VF_OK;
}

void vf_model_backend_close(vf_model *m)
{
    if (m->be)
        (void)vf_be_sync(m->be);
    vf_backend_free(m->be);
    vf_backend_free(m->cpu_be);
    m->be = NULL;
    m->cpu_be = NULL;
}

vf_status vf_model_exec(vf_model *m, vf_component c, vf_residency *r, vf_exec *x)
{
    memset(x, 0, sizeof *x);
    if (!m->be)
        return vf_error(VF_ERR_INTERNAL, "%s: the model has no compute backend", m->path);
    x->be = m->be;
    x->bl = &m->bl[c];
    x->res = r;
    if (vf_be_info(m->be)->kind == VF_BACKEND_CPU || (m->mm.cuda && m->mm.comp[c].on_device))
        return VF_OK;
    if (!m->cpu_be)
        VF_TRY(vf_backend_create(NULL, &m->cpu_be));
    x->be = m->cpu_be;
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
