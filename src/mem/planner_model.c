/* The planner's view of a model: block lists plus the configs shapes cannot tell.
 *
 * Kept apart from the model handle so that the planner runs on block lists
 * described from configs alone (the tests plan real SDXL sizes without the
 * 5 GB file), and on an open model by borrowing its bound lists.
 */
#include "core/error.h"
#include "io/json.h"
#include "mem/planner.h"
#include "pipeline/model.h"

#include <string.h>

static vf_status parse_configs(vf_arch arch, const cJSON *const cfg[VF_COMPONENT_COUNT],
                               vf_plan_model *pm)
{
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (!pm->bl[c])
            continue;
        if (!cfg[c])
            return vf_error(VF_ERR_INVALID_ARG, "plan: %s has blocks but no config",
                            vf_component_name((vf_component)c));
        if (c == VF_COMPONENT_UNET)
            VF_TRY(vf_unet_config_parse(cfg[c], arch, &pm->unet));
        else if (c == VF_COMPONENT_VAE)
            VF_TRY(vf_vae_config_parse(cfg[c], &pm->vae));
        else
            VF_TRY(vf_clip_config_parse(cfg[c], (vf_component)c, &pm->clip[c]));
    }
    return VF_OK;
}

/* sample_size (an int, or [height, width]) in latent pixels, times the VAE scale. */
static void default_size(const cJSON *unet, int scale, vf_arch arch, int *w, int *h)
{
    const cJSON *s = unet ? cJSON_GetObjectItemCaseSensitive(unet, "sample_size") : NULL;
    int lh = arch == VF_ARCH_SDXL ? 128 : 64, lw = lh;
    if (cJSON_IsNumber(s) && s->valuedouble >= 1 && s->valuedouble * scale <= VF_MAX_IMAGE_SIDE) {
        lh = lw = (int)s->valuedouble;
    } else if (cJSON_IsArray(s) && cJSON_GetArraySize(s) == 2) {
        const cJSON *a = cJSON_GetArrayItem(s, 0), *b = cJSON_GetArrayItem(s, 1);
        if (cJSON_IsNumber(a) && cJSON_IsNumber(b) && a->valuedouble >= 1 && b->valuedouble >= 1 &&
            a->valuedouble * scale <= VF_MAX_IMAGE_SIDE && b->valuedouble * scale <= VF_MAX_IMAGE_SIDE) {
            lh = (int)a->valuedouble;
            lw = (int)b->valuedouble;
        }
    }
    *w = lw * scale;
    *h = lh * scale;
}

vf_status vf_plan_model_from_configs(vf_arch arch, const cJSON *const cfg[VF_COMPONENT_COUNT],
                                     const vf_blocklist *const bl[VF_COMPONENT_COUNT],
                                     vf_plan_model *pm)
{
    memset(pm, 0, sizeof *pm);
    pm->arch = arch;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++)
        pm->bl[c] = bl[c];
    VF_TRY(parse_configs(arch, cfg, pm));
    int scale = 8, bad = 0;
    if (pm->bl[VF_COMPONENT_VAE]) {
        scale = vf_vae_scale(&pm->vae);
        /* diffusers' AutoencoderKL defaults force_upcast to true. */
        pm->vae_force_upcast = vf_json_bool(cfg[VF_COMPONENT_VAE], "force_upcast", 1, &bad);
        if (bad)
            return vf_error(VF_ERR_FORMAT, "vae config: force_upcast must be a boolean");
    }
    if (scale != 8)
        return vf_error(VF_ERR_UNSUPPORTED, "plan: VAE scale %d (the planner assumes 8)", scale);
    default_size(cfg[VF_COMPONENT_UNET], scale, arch, &pm->default_width, &pm->default_height);
    return VF_OK;
}

vf_status vf_plan_model_from(const vf_model *m, vf_plan_model *pm)
{
    const cJSON *cfg[VF_COMPONENT_COUNT];
    const vf_blocklist *bl[VF_COMPONENT_COUNT];
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        cfg[c] = m->present[c] ? vf_checkpoint_config(m->ck, (vf_component)c) : NULL;
        bl[c] = m->present[c] ? &m->bl[c] : NULL;
    }
    vf_status st = vf_plan_model_from_configs(m->arch, cfg, bl, pm);
    return st == VF_OK ? VF_OK : vf_error_prefix(st, "%s", m->path);
}
