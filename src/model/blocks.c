/* Block lists (see blocks.h): describe, then bind to a checkpoint. Describing
 * records errors stickily in bl->st so model code can declare dozens of weights
 * without checking each call; vf_bl_bind reports the first one. */
#include "model/blocks.h"
#include "core/alloc.h"
#include "core/dtype.h"
#include "core/quant.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int vf_weight_stays_unpacked(vf_component c, const char *name)
{
    static const char *const unet[] = {"conv_in.weight", "conv_out.weight"};
    static const char *const vae[] = {"encoder.conv_in.weight", "decoder.conv_out.weight"};
    const char *const *list = c == VF_COMPONENT_UNET ? unet : c == VF_COMPONENT_VAE ? vae : NULL;
    for (int i = 0; list && name && i < 2; i++)
        if (strcmp(name, list[i]) == 0)
            return 1;
    return 0;
}

int vf_wspec_packed(vf_dtype fmt, const vf_wspec *w)
{
    return vf_quant_is_packed(fmt) && !w->unpacked && vf_quant_can(fmt, w->ndim, w->shape);
}

void vf_bl_init(vf_blocklist *bl, vf_component comp)
{
    memset(bl, 0, sizeof *bl);
    bl->comp = comp;
}

void vf_bl_free(vf_blocklist *bl)
{
    if (!bl)
        return;
    for (int i = 0; i < bl->nblocks; i++)
        vf_free(bl->blocks[i].name);
    for (int i = 0; i < bl->nw; i++)
        vf_free(bl->w[i].name);
    vf_free(bl->blocks);
    vf_free(bl->w);
    memset(bl, 0, sizeof *bl);
}

static int grow(void **p, int *cap, int need, size_t elem)
{
    if (need <= *cap)
        return 0;
    int ncap = *cap ? *cap * 2 : 16;
    while (ncap < need)
        ncap *= 2;
    void *q = vf_realloc(*p, (size_t)ncap * elem);
    if (!q)
        return -1;
    *p = q;
    *cap = ncap;
    return 0;
}

int vf_bl_block(vf_blocklist *bl, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    if (bl->st != VF_OK)
        return -1;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (grow((void **)&bl->blocks, &bl->bcap, bl->nblocks + 1, sizeof(vf_block))) {
        bl->st = VF_ERR_NO_MEMORY;
        return -1;
    }
    vf_block *b = &bl->blocks[bl->nblocks];
    memset(b, 0, sizeof *b);
    b->name = vf_strdup(name);
    if (!b->name) {
        bl->st = VF_ERR_NO_MEMORY;
        return -1;
    }
    b->first_w = bl->nw;
    return bl->nblocks++;
}

int vf_bl_weight(vf_blocklist *bl, const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2,
                 int64_t d3)
{
    if (bl->st != VF_OK)
        return -1;
    if (bl->nblocks == 0 || ndim < 1 || ndim > 4) {
        bl->st = vf_error(VF_ERR_INTERNAL, "weight '%s' declared outside a block or with rank %d",
                          name, ndim);
        return -1;
    }
    vf_block *b = &bl->blocks[bl->nblocks - 1];
    if (grow((void **)&bl->w, &bl->wcap, bl->nw + 1, sizeof(vf_wspec))) {
        bl->st = VF_ERR_NO_MEMORY;
        return -1;
    }
    vf_wspec *w = &bl->w[bl->nw];
    memset(w, 0, sizeof *w);
    size_t lp = strlen(b->name), ln = strlen(name);
    w->name = vf_malloc(lp + ln + 2);
    if (!w->name) {
        bl->st = VF_ERR_NO_MEMORY;
        return -1;
    }
    if (lp)
        snprintf(w->name, lp + ln + 2, "%s.%s", b->name, name);
    else
        memcpy(w->name, name, ln + 1);
    int64_t d[4] = {d0, d1, d2, d3};
    w->ndim = ndim;
    memcpy(w->shape, d, sizeof(int64_t) * (size_t)ndim);
    w->unpacked = vf_weight_stays_unpacked(bl->comp, w->name);
    bl->nw++;
    return b->nw++;
}

vf_status vf_bl_bind(vf_blocklist *bl, const vf_checkpoint *ck)
{
    char want[96], got[96];
    if (bl->st != VF_OK)
        return vf_error_prefix(bl->st, "describing %s", vf_component_name(bl->comp));
    if (!vf_checkpoint_has(ck, bl->comp))
        return vf_error(VF_ERR_NOT_FOUND, "%s: no %s component", vf_checkpoint_path(ck),
                        vf_component_name(bl->comp));
    for (int i = 0; i < bl->nblocks; i++) {
        vf_block *b = &bl->blocks[i];
        b->bytes = b->params = 0;
        for (int j = b->first_w; j < b->first_w + b->nw; j++) {
            vf_wspec *w = &bl->w[j];
            const vf_ckpt_tensor *t = vf_checkpoint_find(ck, bl->comp, w->name);
            if (!t)
                return vf_error(VF_ERR_NOT_FOUND, "%s: %s: missing tensor '%s' (shape %s)",
                                vf_checkpoint_path(ck), vf_component_name(bl->comp), w->name,
                                vf_shape_str(w->shape, w->ndim, want, sizeof want));
            if (!vf_shape_eq(t->shape, t->ndim, w->shape, w->ndim))
                return vf_error(VF_ERR_SHAPE, "%s: %s: tensor '%s' has shape %s, the architecture needs %s",
                                t->file ? vf_st_path(t->file) : vf_checkpoint_path(ck),
                                vf_component_name(bl->comp), w->name,
                                vf_shape_str(t->shape, t->ndim, got, sizeof got),
                                vf_shape_str(w->shape, w->ndim, want, sizeof want));
            if (!vf_dtype_is_float(t->dtype) && !t->packed)
                return vf_error(VF_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s, not a float type",
                                vf_checkpoint_path(ck), w->name, vf_dtype_name(t->dtype));
            w->t = t;
            b->bytes += t->nbytes;
            b->params += (uint64_t)vf_shape_numel(t->shape, t->ndim);
        }
    }
    return VF_OK;
}

uint64_t vf_bl_bytes(const vf_blocklist *bl)
{
    uint64_t n = 0;
    for (int i = 0; i < bl->nblocks; i++)
        n += bl->blocks[i].bytes;
    return n;
}

uint64_t vf_bl_params(const vf_blocklist *bl)
{
    uint64_t n = 0;
    for (int i = 0; i < bl->nblocks; i++)
        n += bl->blocks[i].params;
    return n;
}
