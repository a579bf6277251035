/* Residency on the CPU backend (see residency.h).
 *
 * Each block's weights are converted to float32 into one allocation per block
 * on first acquire. With keep_resident (the default) they stay for the life of
 * the residency, so a UNet converts its weights once, not once per step; without
 * it they are dropped at release, so peak host memory is one block. Host bytes
 * are counted so the monitor can report current and peak use.
 */
#include "mem/residency.h"
#include "core/alloc.h"

#include <string.h>

typedef struct block_state {
    float *data;          /* all weights of the block, back to back */
    const float **ptrs;   /* nw pointers into data                 */
    uint64_t bytes;
    int acquired;
} block_state;

struct vf_residency {
    const vf_checkpoint *ck;
    const vf_blocklist *bl;
    vf_residency_options opt;
    block_state *blocks;
    uint64_t host_bytes, host_peak;
};

void vf_residency_options_init(vf_residency_options *o)
{
    memset(o, 0, sizeof *o);
    o->keep_resident = 1;
}

vf_status vf_residency_create(const vf_checkpoint *ck, const vf_blocklist *bl,
                              const vf_residency_options *o, vf_residency **out)
{
    *out = NULL;
    vf_residency *r = vf_calloc(1, sizeof *r);
    if (!r)
        return VF_ERR_NO_MEMORY;
    r->blocks = vf_calloc((size_t)(bl->nblocks ? bl->nblocks : 1), sizeof(block_state));
    if (!r->blocks) {
        vf_free(r);
        return VF_ERR_NO_MEMORY;
    }
    r->ck = ck;
    r->bl = bl;
    if (o)
        r->opt = *o;
    else
        vf_residency_options_init(&r->opt);
    *out = r;
    return VF_OK;
}

static void drop(vf_residency *r, block_state *s)
{
    r->host_bytes -= s->bytes;
    vf_free(s->data);
    vf_free(s->ptrs);
    s->data = NULL;
    s->ptrs = NULL;
    s->bytes = 0;
}

void vf_residency_free(vf_residency *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->bl->nblocks; i++)
        drop(r, &r->blocks[i]);
    vf_free(r->blocks);
    vf_free(r);
}

static vf_status materialise(vf_residency *r, int b)
{
    const vf_block *blk = &r->bl->blocks[b];
    block_state *s = &r->blocks[b];
    vf_status st = VF_OK;
    size_t total = 0;
    for (int j = 0; j < blk->nw; j++) {
        const vf_wspec *w = &r->bl->w[blk->first_w + j];
        if (!w->t)
            return vf_error(VF_ERR_INTERNAL, "weight '%s' used before binding", w->name);
        total += (size_t)vf_shape_numel(w->shape, w->ndim);
    }
    s->data = vf_malloc(sizeof(float) * (total ? total : 1));
    s->ptrs = s->data ? vf_malloc(sizeof(float *) * (size_t)(blk->nw ? blk->nw : 1)) : NULL;
    if (!s->ptrs) {
        st = VF_ERR_NO_MEMORY;
        goto fail;
    }
    size_t at = 0;
    for (int j = 0; j < blk->nw; j++) {
        const vf_wspec *w = &r->bl->w[blk->first_w + j];
        st = vf_checkpoint_read_f32(r->ck, w->t, s->data + at);
        if (st != VF_OK)
            goto fail;
        s->ptrs[j] = s->data + at;
        at += (size_t)vf_shape_numel(w->shape, w->ndim);
    }
    s->bytes = sizeof(float) * total;
    r->host_bytes += s->bytes;
    if (r->host_bytes > r->host_peak)
        r->host_peak = r->host_bytes;
    return VF_OK;
fail:
    vf_free(s->data);
    vf_free(s->ptrs);
    s->data = NULL;
    s->ptrs = NULL;
    return vf_error_prefix(st, "loading block '%s'", blk->name);
}

vf_status vf_residency_acquire(vf_residency *r, int b, const float *const **w)
{
    *w = NULL;
    if (b < 0 || b >= r->bl->nblocks)
        return vf_error(VF_ERR_INTERNAL, "block %d out of range", b);
    block_state *s = &r->blocks[b];
    if (!s->data)
        VF_TRY(materialise(r, b));
    s->acquired++;
    *w = s->ptrs;
    return VF_OK;
}

void vf_residency_release(vf_residency *r, int b)
{
    if (b < 0 || b >= r->bl->nblocks)
        return;
    block_state *s = &r->blocks[b];
    if (s->acquired > 0)
        s->acquired--;
    if (s->acquired == 0 && !r->opt.keep_resident)
        drop(r, s);
}

uint64_t vf_residency_host_bytes(const vf_residency *r) { return r->host_bytes; }
uint64_t vf_residency_host_peak(const vf_residency *r) { return r->host_peak; }
