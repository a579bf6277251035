/* LoRAs on an open model: the public calls, the residency patch, invalidation.
 *
 * The model keeps an ordered list of parsed LoRAs (model/lora.h) with their
 * strengths. Nothing is merged ahead of time: every residency the model
 * creates gets a patch callback (vf_model_lora_patch, called where
 * pipeline/memory.c creates residencies) that adds the LoRAs' deltas to each
 * weight right after it is read as float32, before it is kept, copied to the
 * device or quantized. So the LoRAs reach every placement the memory manager
 * chooses, and a change to the list (add, remove, strength) only has to drop
 * what was converted (vf_model_unload): the next stage converts again from the
 * checkpoint, which the patch never touches. With no LoRA at a nonzero
 * strength no patch is installed at all, so those weights are the
 * checkpoint's bit for bit.
 *
 * An add is all or nothing: the file is parsed and checked whole against the
 * model's weights into a new vf_lora first, and the list changes only once
 * nothing can fail any more.
 */
#include "core/alloc.h"
#include "core/error.h"
#include "model/lora.h"
#include "pipeline/model.h"

#include <math.h>
#include <string.h>

typedef struct model_lora {
    int id;
    float strength;
    vf_lora *lora;
} model_lora;

/* The patch callback's context: one per component. */
typedef struct patch_ctx {
    vf_model *m;
    vf_component c;
} patch_ctx;

struct vf_lora_set {
    model_lora *v;
    int n, cap;
    int next_id;
    patch_ctx ctx[VF_COMPONENT_COUNT];
};

static int any_active(const vf_model *m)
{
    const struct vf_lora_set *s = m->loras;
    for (int i = 0; s && i < s->n; i++)
        if (s->v[i].strength != 0.0f)
            return 1;
    return 0;
}

/* Adds every active LoRA's pairs for the weight to w, then checks w is finite. */
static vf_status patch(void *user, const vf_wspec *spec, float *w)
{
    const patch_ctx *x = user;
    const vf_model *m = x->m;
    const vf_blocklist *bl = &m->bl[x->c];
    if (spec < bl->w || spec >= bl->w + bl->nw)
        return vf_error(VF_ERR_INTERNAL, "LoRA patch: weight '%s' is not one of the %s's", spec->name,
                        vf_component_name(x->c));
    int wi = (int)(spec - bl->w), applied = 0;
    const struct vf_lora_set *s = m->loras;
    for (int i = 0; i < s->n; i++) {
        if (s->v[i].strength == 0.0f)
            continue;
        vf_status st = vf_lora_apply(s->v[i].lora, x->c, wi, spec, s->v[i].strength, w, &applied);
        if (st != VF_OK)
            return vf_error_prefix(st, "applying LoRA to '%s'", spec->name);
    }
    if (!applied)
        return VF_OK;
    size_t n = (size_t)vf_shape_numel(spec->shape, spec->ndim);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(w[i]))
            return vf_error(VF_ERR_NONFINITE, "weight '%s' of the %s is %g at %zu once the LoRAs are added "
                            "(strengths too large?)", spec->name, vf_component_name(x->c), (double)w[i], i);
    return VF_OK;
}

void vf_model_lora_patch(vf_model *m, vf_component c, vf_residency_options *o)
{
    if (!m || !o || (unsigned)c >= VF_COMPONENT_COUNT || !any_active(m))
        return;
    patch_ctx *x = &m->loras->ctx[c];
    x->m = m;
    x->c = c;
    o->patch = patch;
    o->patch_ctx = x;
}

void vf_model_loras_free(vf_model *m)
{
    if (!m || !m->loras)
        return;
    for (int i = 0; i < m->loras->n; i++)
        vf_lora_free(m->loras->v[i].lora);
    vf_free(m->loras->v);
    vf_free(m->loras);
    m->loras = NULL;
}

/* ---- helpers --------------------------------------------------------------------------- */

static vf_status check_strength(const char *fn, float strength)
{
    if (!isfinite(strength))
        return vf_error(VF_ERR_INVALID_ARG, "%s: strength %g is not a finite number", fn, (double)strength);
    return VF_OK;
}

static int find_id(const vf_model *m, int id)
{
    for (int i = 0; m->loras && i < m->loras->n; i++)
        if (m->loras->v[i].id == id)
            return i;
    return -1;
}

static void fill_info(const model_lora *ml, vf_lora_info *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    out->id = ml->id;
    out->strength = ml->strength;
    vf_lora_get_info(ml->lora, out);
}

/* The weights converted so far no longer match the LoRA list: drop them. */
static void invalidate(vf_model *m)
{
    vf_model_unload(m);
}

/* Room for one more LoRA (the list itself made on first use). */
static vf_status reserve_one(vf_model *m)
{
    if (!m->loras) {
        m->loras = vf_calloc(1, sizeof *m->loras);
        if (!m->loras)
            return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: LoRA list", m->path);
    }
    struct vf_lora_set *s = m->loras;
    if (s->n < s->cap)
        return VF_OK;
    int cap = s->cap ? s->cap * 2 : 4;
    model_lora *v = vf_realloc(s->v, sizeof *v * (size_t)cap);
    if (!v)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: LoRA list", m->path);
    s->v = v;
    s->cap = cap;
    return VF_OK;
}

static vf_status load_for(vf_model *m, const char *path, vf_lora **out)
{
    vf_lora_target t;
    vf_unet_config u;
    memset(&t, 0, sizeof t);
    t.arch = m->arch;
    /* LoRAs patch the text encoders and the UNet; the VAE is no target. */
    for (int c = 0; c < VF_COMPONENT_COUNT; c++)
        t.bl[c] = m->present[c] && c != VF_COMPONENT_VAE ? &m->bl[c] : NULL;
    if (m->present[VF_COMPONENT_UNET] &&
        vf_unet_config_parse(vf_checkpoint_config(m->ck, VF_COMPONENT_UNET), m->arch, &u) == VF_OK)
        t.unet = &u;
    vf_clear_error();
    return vf_lora_load(path, &t, out);
}

/* ---- public ------------------------------------------------------------------------------ */

vf_status vf_model_add_lora(vf_model *m, const char *path, float strength, vf_lora_info *out)
{
    if (out)
        memset(out, 0, sizeof *out);
    if (!m || !path || !path[0])
        return vf_error(VF_ERR_INVALID_ARG, "vf_model_add_lora: no model or no path");
    VF_TRY(check_strength("vf_model_add_lora", strength));
    vf_lora *l;
    VF_TRY(load_for(m, path, &l));
    vf_status st = reserve_one(m);
    if (st != VF_OK) {
        vf_lora_free(l);
        return st;
    }
    struct vf_lora_set *s = m->loras;
    model_lora *ml = &s->v[s->n++];
    ml->id = ++s->next_id;
    ml->strength = strength;
    ml->lora = l;
    if (strength != 0.0f)
        invalidate(m);
    fill_info(ml, out);
    return VF_OK;
}

vf_status vf_model_add_pool_lora(vf_model *m, vf_pool *p, const char *id, float strength, vf_lora_info *out)
{
    if (out)
        memset(out, 0, sizeof *out);
    if (!m || !p || !id)
        return vf_error(VF_ERR_INVALID_ARG, "vf_model_add_pool_lora: no model, pool or id");
    VF_TRY(check_strength("vf_model_add_pool_lora", strength));
    vf_pool_model_info pi;
    VF_TRY(vf_pool_info(p, id, &pi));
    if (pi.kind != VF_POOL_LORA)
        return vf_error(VF_ERR_INVALID_ARG, "pool model '%s' is a %s, not a LoRA", id, vf_pool_kind_name(pi.kind));
    int was_loaded = pi.tier != VF_TIER_DISK;
    VF_TRY(vf_pool_load(p, id, VF_TIER_HOST));
    vf_status st = vf_model_add_lora(m, pi.path, strength, out);
    if (st != VF_OK && !was_loaded)
        (void)vf_pool_unload(p, id);   /* the error of the add is the one to report */
    if (st != VF_OK)
        return vf_error_prefix(st, "pool LoRA '%s'", id);
    return VF_OK;
}

vf_status vf_model_set_lora_strength(vf_model *m, int id, float strength)
{
    if (!m)
        return vf_error(VF_ERR_INVALID_ARG, "vf_model_set_lora_strength: model is NULL");
    VF_TRY(check_strength("vf_model_set_lora_strength", strength));
    int i = find_id(m, id);
    if (i < 0)
        return vf_error(VF_ERR_NOT_FOUND, "%s: no LoRA with id %d", m->path, id);
    model_lora *ml = &m->loras->v[i];
    if (ml->strength == strength)
        return VF_OK;
    ml->strength = strength;
    invalidate(m);
    return VF_OK;
}

vf_status vf_model_remove_lora(vf_model *m, int id)
{
    if (!m)
        return vf_error(VF_ERR_INVALID_ARG, "vf_model_remove_lora: model is NULL");
    int i = find_id(m, id);
    if (i < 0)
        return vf_error(VF_ERR_NOT_FOUND, "%s: no LoRA with id %d", m->path, id);
    struct vf_lora_set *s = m->loras;
    int active = s->v[i].strength != 0.0f;
    vf_lora_free(s->v[i].lora);
    memmove(&s->v[i], &s->v[i + 1], sizeof *s->v * (size_t)(s->n - i - 1));
    s->n--;
    if (active)
        invalidate(m);
    return VF_OK;
}

void vf_model_clear_loras(vf_model *m)
{
    if (!m || !m->loras)
        return;
    int active = any_active(m);
    for (int i = 0; i < m->loras->n; i++)
        vf_lora_free(m->loras->v[i].lora);
    m->loras->n = 0;
    if (active)
        invalidate(m);
}

size_t vf_model_lora_count(const vf_model *m)
{
    return m && m->loras ? (size_t)m->loras->n : 0;
}

vf_status vf_model_lora_at(const vf_model *m, size_t i, vf_lora_info *out)
{
    if (!m || !out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_model_lora_at: model or output is NULL");
    if (i >= vf_model_lora_count(m))
        return vf_error(VF_ERR_INVALID_ARG, "vf_model_lora_at: index %zu of %zu LoRAs", i, vf_model_lora_count(m));
    fill_info(&m->loras->v[i], out);
    return VF_OK;
}
