/* Model execution contexts and the backend weight cache (see exec.h).
 *
 * The cache uploads a block as one backend allocation holding all its
 * weights, each at an offset rounded up to 128 elements (256 bytes in f16:
 * cuBLASLt and the vector loads of the kernels want aligned operands). The
 * stored bytes go to the backend as they are and are converted there
 * (vf_be_upload), so an f16 checkpoint crosses the host link once at 2 bytes a
 * parameter; only tensors the checkpoint stores transposed or in a non-float
 * dtype are converted to float32 on the host first. 4-D weights take
 * vf_be_upload_conv_weight, which puts them in the backend's filter layout.
 */
#include "model/exec.h"

#include "core/alloc.h"
#include "core/dtype.h"
#include "core/error.h"
#include "io/safetensors.h"

#include <string.h>

#define WC_ALIGN 128 /* elements */

typedef struct wc_block {
    vf_dbuf *buf;                 /* one allocation for the block, or NULL      */
    const vf_dbuf **w;            /* nw pointers into buf                        */
} wc_block;

struct vf_wcache {
    vf_backend *be;
    const vf_checkpoint *ck;
    const vf_blocklist *bl;
    wc_block *blk;                /* bl->nblocks                                 */
    uint64_t bytes, uploaded;
};

vf_status vf_exec_acquire(const vf_exec *x, int b, const vf_dbuf **w, int cap)
{
    if (!x || !x->bl || b < 0 || b >= x->bl->nblocks)
        return vf_error(VF_ERR_INTERNAL, "exec: block %d is outside the block list", b);
    const vf_block *blk = &x->bl->blocks[b];
    if (blk->nw > cap)
        return vf_error(VF_ERR_INTERNAL, "exec: block '%s' has %d weights, more than %d", blk->name, blk->nw,
                        cap);
    if (x->wc) {
        VF_TRY(vf_wcache_load(x->wc, b));
        memcpy(w, x->wc->blk[b].w, sizeof *w * (size_t)blk->nw);
        return VF_OK;
    }
    if (vf_be_info(x->be)->kind != VF_BACKEND_CPU)
        return vf_error(VF_ERR_INTERNAL, "exec: block '%s': a %s backend needs a weight cache", blk->name,
                        vf_be_info(x->be)->name);
    const float *const *fw;
    VF_TRY(vf_residency_acquire(x->res, b, &fw));
    /* On the CPU backend a buffer is its host float32 memory. */
    for (int i = 0; i < blk->nw; i++)
        w[i] = (const vf_dbuf *)fw[i];
    return VF_OK;
}

void vf_exec_release(const vf_exec *x, int b)
{
    if (x && !x->wc && x->res)
        vf_residency_release(x->res, b);
}

vf_status vf_exec_cpu(vf_exec *x, vf_residency *res, const vf_blocklist *bl, vf_backend **owned)
{
    memset(x, 0, sizeof *x);
    *owned = NULL;
    VF_TRY(vf_backend_create(NULL, owned));
    x->be = *owned;
    x->bl = bl;
    x->res = res;
    return VF_OK;
}

/* ---- weight cache ------------------------------------------------------------ */

vf_status vf_wcache_create(vf_backend *be, const vf_checkpoint *ck, const vf_blocklist *bl, vf_wcache **out)
{
    *out = NULL;
    if (!be || !ck || !bl)
        return vf_error(VF_ERR_INVALID_ARG, "weight cache: backend, checkpoint or block list is NULL");
    vf_wcache *wc = vf_calloc(1, sizeof *wc);
    if (!wc)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "weight cache");
    wc->blk = vf_calloc(bl->nblocks ? (size_t)bl->nblocks : 1, sizeof *wc->blk);
    if (!wc->blk) {
        vf_free(wc);
        return vf_error_prefix(VF_ERR_NO_MEMORY, "weight cache of %s", vf_component_name(bl->comp));
    }
    wc->be = be;
    wc->ck = ck;
    wc->bl = bl;
    *out = wc;
    return VF_OK;
}

void vf_wcache_free(vf_wcache *wc)
{
    if (!wc)
        return;
    for (int b = 0; b < wc->bl->nblocks; b++) {
        vf_be_free(wc->be, wc->blk[b].buf);
        vf_free(wc->blk[b].w);
    }
    vf_free(wc->blk);
    vf_free(wc);
}

static size_t numel_of(const vf_wspec *s)
{
    size_t n = 1;
    for (int d = 0; d < s->ndim; d++)
        n *= (size_t)s->shape[d];
    return n;
}

static size_t round_up(size_t n) { return (n + WC_ALIGN - 1) / WC_ALIGN * WC_ALIGN; }

/* One weight's stored bytes to dst (n elements), converted by the backend. */
static vf_status upload_one(vf_wcache *wc, const vf_wspec *s, vf_dbuf *dst, size_t n)
{
    const vf_ckpt_tensor *t = s->t;
    void *host = NULL;
    vf_dtype dt = t->dtype;
    vf_status st;
    int raw = !t->transpose && (dt == VF_DTYPE_F32 || dt == VF_DTYPE_F16 || dt == VF_DTYPE_BF16);
    if (raw) {
        host = vf_malloc(t->nbytes ? t->nbytes : 1);
        st = host ? vf_st_read(t->file, t->src, t->src_offset, host, t->nbytes) : VF_ERR_NO_MEMORY;
    } else {
        dt = VF_DTYPE_F32;
        host = vf_malloc(n * sizeof(float));
        st = host ? vf_checkpoint_read_f32(wc->ck, t, host) : VF_ERR_NO_MEMORY;
    }
    if (st == VF_OK && s->ndim == 4)
        st = vf_be_upload_conv_weight(wc->be, dst, host, dt, (int)s->shape[0], (int)s->shape[1],
                                      (int)s->shape[2], (int)s->shape[3]);
    else if (st == VF_OK)
        st = vf_be_upload(wc->be, dst, host, dt, n);
    if (st == VF_OK)
        wc->uploaded += raw ? t->nbytes : n * sizeof(float);
    vf_free(host);
    if (st != VF_OK)
        return vf_error_prefix(st, "weight cache: tensor '%s'", s->name);
    return VF_OK;
}

vf_status vf_wcache_load(vf_wcache *wc, int b)
{
    if (b < 0 || b >= wc->bl->nblocks)
        return vf_error(VF_ERR_INTERNAL, "weight cache: block %d is outside the block list", b);
    wc_block *k = &wc->blk[b];
    if (k->w)
        return VF_OK;
    const vf_block *blk = &wc->bl->blocks[b];
    size_t total = 0;
    for (int i = 0; i < blk->nw; i++) {
        const vf_wspec *s = &wc->bl->w[blk->first_w + i];
        if (!s->t)
            return vf_error(VF_ERR_INTERNAL, "weight cache: tensor '%s' is not bound", s->name);
        total += round_up(numel_of(s));
    }
    const vf_dbuf **w = vf_calloc(blk->nw ? (size_t)blk->nw : 1, sizeof *w);
    vf_dbuf *buf = NULL;
    vf_status st = w ? vf_be_alloc(wc->be, total, &buf) : VF_ERR_NO_MEMORY;
    size_t off = 0;
    for (int i = 0; st == VF_OK && i < blk->nw; i++) {
        const vf_wspec *s = &wc->bl->w[blk->first_w + i];
        size_t n = numel_of(s);
        vf_dbuf *dst = vf_be_at(wc->be, buf, off);
        st = upload_one(wc, s, dst, n);
        w[i] = dst;
        off += round_up(n);
    }
    if (st != VF_OK) {
        vf_be_free(wc->be, buf);
        vf_free(w);
        return vf_error_prefix(st, "block '%s'", blk->name);
    }
    k->buf = buf;
    k->w = w;
    wc->bytes += (uint64_t)total * vf_be_esize(wc->be);
    return VF_OK;
}

vf_status vf_wcache_load_all(vf_wcache *wc)
{
    for (int b = 0; b < wc->bl->nblocks; b++)
        VF_TRY(vf_wcache_load(wc, b));
    return vf_be_sync(wc->be);
}

uint64_t vf_wcache_bytes(const vf_wcache *wc) { return wc ? wc->bytes : 0; }
uint64_t vf_wcache_uploaded(const vf_wcache *wc) { return wc ? wc->uploaded : 0; }
