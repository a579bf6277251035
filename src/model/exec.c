/* Model execution contexts (see exec.h). */
#include "model/exec.h"

#include "core/error.h"

#include <string.h>

vf_status vf_exec_acquire(const vf_exec *x, int b, const vf_dbuf **w, int cap)
{
    if (!x || !x->bl || !x->res || b < 0 || b >= x->bl->nblocks)
        return vf_error(VF_ERR_INTERNAL, "exec: block %d is outside the block list, or no residency", b);
    const vf_block *blk = &x->bl->blocks[b];
    if (blk->nw > cap)
        return vf_error(VF_ERR_INTERNAL, "exec: block '%s' has %d weights, more than %d", blk->name, blk->nw,
                        cap);
    const float *const *fw;
    VF_TRY(vf_residency_acquire(x->res, b, &fw));
    /* The residency's image is the backend's: host float32 on the CPU, device
     * addresses in the compute dtype on CUDA. Either way, a backend buffer. */
    for (int i = 0; i < blk->nw; i++)
        w[i] = (const vf_dbuf *)fw[i];
    return VF_OK;
}

void vf_exec_release(const vf_exec *x, int b)
{
    if (x && x->res)
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

