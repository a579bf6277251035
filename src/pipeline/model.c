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
 * come from options->tokenizer_dir or from tokenizer/ next to the file. The
 * same folder, when it holds component configs, also stands in for config_dir:
 * a diffusers folder of the same model is the usual thing to point at.
 */
#include "pipeline/model.h"
#include "core/alloc.h"
#include "core/error.h"
#include "io/json.h"
#include "model/unet.h"
#include "model/vae.h"

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
    return VF_OK;
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
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        vf_residency_free(m->res[c]);
        vf_bl_free(&m->bl[c]);
    }
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

vf_status vf_model_residency(vf_model *m, vf_component c, vf_residency **out)
{
    *out = NULL;
    if (!m->present[c])
        return vf_error(VF_ERR_NOT_FOUND, "%s: no %s component", m->path, vf_component_name(c));
    if (!m->res[c]) {
        vf_status st = vf_residency_create(m->ck, &m->bl[c], NULL, &m->res[c]);
        if (st != VF_OK)
            return vf_error_prefix(st, "%s: %s", m->path, vf_component_name(c));
    }
    *out = m->res[c];
    return VF_OK;
}

/* The path vf_tokenizer_load takes for tokenizer `which` (a new string). */
static vf_status tokenizer_path(const vf_model *m, int which, char **out)
{
    const char *root = m->tokenizer_root, *sub = which ? "tokenizer_2" : "tokenizer";
    *out = NULL;
    if (!root)
        return vf_error(VF_ERR_NOT_FOUND,
                        "%s: no tokenizer found: a single-file checkpoint carries none and there is no "
                        "tokenizer/ folder next to it; pass --tokenizer DIR (tokenizer_dir), a folder "
                        "holding tokenizer/%s, such as the model's diffusers folder",
                        m->path, m->arch == VF_ARCH_SDXL ? " and tokenizer_2/" : "");
    char *p = vf_path_join(root, sub);
    if (!p)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", root);
    if (vf_is_dir(p)) {
        *out = p;
        return VF_OK;
    }
    vf_free(p);
    /* A tokenizer folder or a bpe .txt.gz given directly serves the first tokenizer. */
    if (which == 0 && (vf_is_file(root) || has_file(root, ".", "vocab.json"))) {
        *out = vf_strdup(root);
        return *out ? VF_OK : vf_error_prefix(VF_ERR_NO_MEMORY, "%s", root);
    }
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
        char *p;
        VF_TRY(tokenizer_path(m, which, &p));
        vf_status st = vf_tokenizer_load(p, &m->tok[which]);
        vf_free(p);
        VF_TRY(st);
    }
    *out = m->tok[which];
    return VF_OK;
}
