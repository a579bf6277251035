/* The public model handle: open a checkpoint, check it whole, describe it.
 *
 * Opening does everything that can fail cheaply and early: the checkpoint's
 * headers are read, and every present component is described from its config
 * and bound to the stored tensors, so a missing or wrong-shape tensor anywhere
 * is an error here, naming the tensor, before any weight is read. What costs
 * memory or time (converting weights, parsing vocabularies) waits for the stage
 * that needs it; see pipeline/model.h.
 *
 * Tokenizers: a diffusers folder has its own; a single file has none, so they
 * come from options->tokenizer_dir, from tokenizer/ next to the file, or from
 * the Hugging Face cache (pipeline/tokenizer_find.h), in that order. The
 * same folder, when it holds component configs, also stands in for config_dir:
 * a diffusers folder of the same model is the usual thing to point at.
 *
 * Where components compute and how their weights are placed (device, plan,
 * arena) is pipeline/memory.c's; opening only creates the device, and with
 * EAGER loading loads what the plan keeps.
 */
#include "pipeline/model.h"
#include "core/alloc.h"
#include "core/error.h"
#include "io/json.h"
#include "model/unet.h"
#include "model/vae.h"
#include "pipeline/tokenizer.h"
#include "pipeline/tokenizer_find.h"

#include <stdio.h>
#include <string.h>

void vf_model_options_init(vf_model_options *o)
{
    if (o)
        memset(o, 0, sizeof *o);
}

const char *vf_arch_name(vf_arch a)
{
    switch (a) {
    case VF_ARCH_SD15: return "sd15";
    case VF_ARCH_SDXL: return "sdxl";
    default: return "unknown";
    }
}

const char *vf_component_name(vf_component c)
{
    switch (c) {
    case VF_COMPONENT_TEXT_ENCODER: return "text_encoder";
    case VF_COMPONENT_TEXT_ENCODER_2: return "text_encoder_2";
    case VF_COMPONENT_UNET: return "unet";
    case VF_COMPONENT_VAE: return "vae";
    default: return "unknown";
    }
}

vf_arch vf_model_arch(const vf_model *m) { return m ? m->arch : VF_ARCH_UNKNOWN; }

/* 1 when dir/sub/file is a regular file (0 also when the path cannot be built). */
static int has_file(const char *dir, const char *sub, const char *file)
{
    char *a = vf_path_join(dir, sub);
    char *b = a ? vf_path_join(a, file) : NULL;
    int yes = b && vf_is_file(b);
    vf_free(a);
    vf_free(b);
    return yes;
}

/* The directory part of path, "." when it has none. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return vf_strdup(".");
    return vf_strndup(path, slash == path ? 1 : (size_t)(slash - path));
}

/* Sets m->tokenizer_root (see model.h); NULL is not an error here. */
static vf_status resolve_tokenizer_root(vf_model *m, int single, const vf_model_options *o)
{
    const char *given = o->tokenizer_dir;
    if (given && !vf_is_dir(given) && !vf_is_file(given))
        return vf_error(VF_ERR_NOT_FOUND, "tokenizer '%s' does not exist", given);
    m->tokenizer_search = single && !given;
    if (given || !single) {
        m->tokenizer_root = vf_strdup(given ? given : m->path);
        return m->tokenizer_root ? VF_OK : vf_error_prefix(VF_ERR_NO_MEMORY, "%s", m->path);
    }
    char *d = dir_of(m->path);
    char *t = d ? vf_path_join(d, "tokenizer") : NULL;
    if (!t) {
        vf_free(d);
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", m->path);
    }
    if (vf_is_dir(t))
        m->tokenizer_root = d;
    else
        vf_free(d);
    vf_free(t);
    return VF_OK;
}

/* config_dir for single files: the option, else the tokenizer folder when it
 * holds component configs, else none (the checkpoint uses published defaults). */
static vf_status resolve_config_dir(const vf_model *m, int single, const vf_model_options *o,
                                    const char **out)
{
    *out = NULL;
    if (o->config_dir && !vf_is_dir(o->config_dir))
        return vf_error(VF_ERR_NOT_FOUND, "config folder '%s' does not exist", o->config_dir);
    if (o->config_dir) {
        *out = o->config_dir;
        return VF_OK;
    }
    const char *r = m->tokenizer_root;
    if (single && r && vf_is_dir(r) &&
        (has_file(r, "text_encoder", "config.json") || has_file(r, "unet", "config.json")))
        *out = r;
    return VF_OK;
}

static vf_status describe(vf_model *m, vf_component c)
{
    const cJSON *cfg = vf_checkpoint_config(m->ck, c);
    vf_blocklist *bl = &m->bl[c];
    switch (c) {
    case VF_COMPONENT_TEXT_ENCODER:
    case VF_COMPONENT_TEXT_ENCODER_2:
        VF_TRY(vf_clip_config_parse(cfg, c, &m->clip[c]));
        return vf_clip_describe(cfg, c, bl);
    case VF_COMPONENT_UNET:
        return vf_unet_describe(cfg, m->arch, bl);
    case VF_COMPONENT_VAE:
        return vf_vae_describe(cfg, bl);
    default:
        return vf_error(VF_ERR_INTERNAL, "component %d", (int)c);
    }
}

/* The components must belong together. A UNet from another model (SDXL's in an
 * SD1.5 folder, say) binds to its own weights without complaint and would only
 * fail after the prompt was encoded, with a message about embeddings; here the
 * message can say which components disagree. */
static vf_status check_components(const vf_model *m)
{
    if (!m->present[VF_COMPONENT_UNET])
        return VF_OK;
    vf_unet_config u;
    vf_status st = vf_unet_config_parse(vf_checkpoint_config(m->ck, VF_COMPONENT_UNET), m->arch, &u);
    if (st != VF_OK)
        return vf_error_prefix(st, "%s", m->path);
    int xl = m->arch == VF_ARCH_SDXL;
    if (u.text_time != xl)
        return vf_error(VF_ERR_SHAPE,
                        "%s: the unet %s SDXL's text_time conditioning but the pipeline is %s (a unet of the "
                        "other architecture?)", m->path, u.text_time ? "has" : "lacks", xl ? "SDXL" : "SD1.5");
    int width = 0;
    for (int i = 0; i < 2; i++)
        if (m->present[i ? VF_COMPONENT_TEXT_ENCODER_2 : VF_COMPONENT_TEXT_ENCODER] && (xl || i == 0))
            width += m->clip[i].hidden;
    if (width && width != u.cross_dim)
        return vf_error(VF_ERR_SHAPE,
                        "%s: the unet cross-attends to %d-wide text states but the text encoder%s give%s %d "
                        "(components of different models?)", m->path, u.cross_dim, xl ? "s" : "",
                        xl ? "" : "s", width);
    if (xl && m->present[VF_COMPONENT_TEXT_ENCODER_2] && m->clip[1].proj_dim != u.pooled_dim)
        return vf_error(VF_ERR_SHAPE,
                        "%s: the unet takes %d-wide pooled text embeddings but text_encoder_2 projects to %d "
                        "(components of different models?)", m->path, u.pooled_dim, m->clip[1].proj_dim);
    if (!m->present[VF_COMPONENT_VAE])
        return VF_OK;
    vf_vae_config v;
    st = vf_vae_config_parse(vf_checkpoint_config(m->ck, VF_COMPONENT_VAE), &v);
    if (st != VF_OK)
        return vf_error_prefix(st, "%s", m->path);
    if (v.latent_channels != u.out_channels)
        return vf_error(VF_ERR_SHAPE, "%s: the vae decodes %d latent channels but the unet makes %d "
                        "(components of different models?)", m->path, v.latent_channels, u.out_channels);
    return VF_OK;
}

static vf_status open_components(vf_model *m)
{
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (!vf_checkpoint_has(m->ck, (vf_component)c))
            continue;
        m->present[c] = 1;
        vf_status st = describe(m, (vf_component)c);
        if (st != VF_OK)
            return vf_error_prefix(st, "%s", m->path);
        VF_TRY(vf_bl_bind(&m->bl[c], m->ck));
    }
    return check_components(m);
}

vf_status vf_model_open(const char *path, const vf_model_options *o, vf_model **out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_model_open: out is NULL");
    *out = NULL;
    if (!path || !path[0])
        return vf_error(VF_ERR_INVALID_ARG, "vf_model_open: no model path");
    vf_model_options def;
    if (!o) {
        vf_model_options_init(&def);
        o = &def;
    }
    vf_model *m = vf_calloc(1, sizeof *m);
    if (!m)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
    for (int c = 0; c < VF_COMPONENT_COUNT; c++)
        vf_bl_init(&m->bl[c], (vf_component)c);
    vf_status st = VF_ERR_NO_MEMORY;
    const char *config_dir = NULL;
    int single = !vf_is_dir(path);
    m->path = vf_strdup(path);
    if (!m->path)
        goto fail;
    st = resolve_tokenizer_root(m, single, o);
    if (st == VF_OK)
        st = resolve_config_dir(m, single, o, &config_dir);
    if (st == VF_OK)
        st = vf_checkpoint_open(path, single ? config_dir : NULL, &m->ck);
    if (st != VF_OK)
        goto fail;
    m->arch = vf_checkpoint_arch(m->ck);
    st = open_components(m);
    if (st == VF_OK)
        st = vf_model_backend_open(m, o);
    if (st == VF_OK)
        st = vf_mm_open(m, o->pipeline);
    if (st == VF_OK && m->mm.opt.loading == VF_LOADING_EAGER)
        st = vf_model_load(m);
    if (st != VF_OK)
        goto fail;
    *out = m;
    return VF_OK;
fail:
    vf_model_close(m);
    return st;
}

void vf_model_close(vf_model *m)
{
    if (!m)
        return;
    vf_mm_close(m);
    vf_model_backend_close(m);
    vf_model_loras_free(m);
    for (int c = 0; c < VF_COMPONENT_COUNT; c++)
        vf_bl_free(&m->bl[c]);
    for (int i = 0; i < 2; i++)
        vf_tokenizer_free(m->tok[i]);
    vf_checkpoint_close(m->ck);
    vf_free(m->tokenizer_root);
    vf_free(m->path);
    vf_free(m);
}

vf_status vf_model_component_info(const vf_model *m, vf_component c, vf_component_info *out)
{
    if (!m || !out || (int)c < 0 || c >= VF_COMPONENT_COUNT)
        return vf_error(VF_ERR_INVALID_ARG, "vf_model_component_info: bad model, component %d or output",
                        (int)c);
    memset(out, 0, sizeof *out);
    if (!m->present[c])
        return VF_OK;
    const vf_blocklist *bl = &m->bl[c];
    out->present = 1;
    out->params = vf_bl_params(bl);
    out->bytes = vf_bl_bytes(bl);
    out->ntensors = bl->nw;
    for (int i = 0; i < bl->nw; i++) {
        const vf_ckpt_tensor *t = bl->w[i].t;
        if (t && (int)t->dtype >= 0 && t->dtype < VF_DTYPE_COUNT)
            out->bytes_by_dtype[t->dtype] += t->nbytes;
    }
    return VF_OK;
}

/* Not beside the file nor given: the Hugging Face cache, or an error that
 * lists every place looked and what to do. */
static vf_status search_cache(const vf_model *m, int which, vf_tok_source *src)
{
    const char *sub = which ? "tokenizer_2" : "tokenizer";
    char looked[1400];
    int found = 0;
    char *d = dir_of(m->path);
    snprintf(looked, sizeof looked, "%s/%s (beside the file)", d ? d : ".", sub);
    vf_free(d);
    VF_TRY(vf_tokenizer_find_cached(m->arch, which, src, &found, looked, sizeof looked));
    if (found)
        return VF_OK;
    int xl = m->arch == VF_ARCH_SDXL;
    return vf_error(VF_ERR_NOT_FOUND,
                    "%s: no %s/ found for this single-file checkpoint (it carries none). Looked in: %s. "
                    "Pass --tokenizer DIR (tokenizer_dir), a folder holding tokenizer/%s such as the model's "
                    "diffusers folder, or fetch one into the cache: huggingface-cli download %s --include %s",
                    m->path, sub, looked, xl ? " and tokenizer_2/" : "",
                    xl ? "stabilityai/stable-diffusion-xl-base-1.0" : "stable-diffusion-v1-5/stable-diffusion-v1-5",
                    xl ? "'tokenizer/*' 'tokenizer_2/*'" : "'tokenizer/*'");
}

/* Where tokenizer `which` comes from (see the top of this file). */
static vf_status tokenizer_source(const vf_model *m, int which, vf_tok_source *src)
{
    const char *root = m->tokenizer_root, *sub = which ? "tokenizer_2" : "tokenizer";
    memset(src, 0, sizeof *src);
    if (!root)
        return search_cache(m, which, src);
    char *p = vf_path_join(root, sub);
    if (!p)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", root);
    if (vf_is_dir(p)) {
        src->path = p;
        return VF_OK;
    }
    vf_free(p);
    /* A tokenizer folder or a bpe .txt.gz given directly serves the first tokenizer. */
    if (which == 0 && (vf_is_file(root) || has_file(root, ".", "vocab.json"))) {
        src->path = vf_strdup(root);
        return src->path ? VF_OK : vf_error_prefix(VF_ERR_NO_MEMORY, "%s", root);
    }
    if (m->tokenizer_search)
        return search_cache(m, which, src);
    return vf_error(VF_ERR_NOT_FOUND, "%s: no %s/ folder for %s; pass --tokenizer DIR (tokenizer_dir), a "
                    "folder holding tokenizer/%s", root, sub, m->path,
                    m->arch == VF_ARCH_SDXL ? " and tokenizer_2/" : "");
}

vf_status vf_model_tokenizer(vf_model *m, int which, vf_tokenizer **out)
{
    *out = NULL;
    if (which < 0 || which > 1)
        return vf_error(VF_ERR_INVALID_ARG, "tokenizer index %d", which);
    if (!m->tok[which]) {
        vf_tok_source src;
        VF_TRY(tokenizer_source(m, which, &src));
        vf_status st = vf_tokenizer_load(src.path, &m->tok[which]);
        if (st == VF_OK && src.pad)
            st = vf_tokenizer_set_pad(m->tok[which], src.pad);
        if (st != VF_OK) {
            vf_tokenizer_free(m->tok[which]);
            m->tok[which] = NULL;
        }
        vf_free(src.path);
        VF_TRY(st);
    }
    *out = m->tok[which];
    return VF_OK;
}
