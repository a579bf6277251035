/* Non-finite stage outputs (see finite.h).
 *
 * The check is on float bits rather than isfinite() so that no compiler flag
 * can optimise it away. The weight scan reads each tensor's stored bytes in
 * chunks through vf_st_read and converts them with the same routine the loader
 * uses, so it sees exactly what compute saw, whatever the stored dtype, at a
 * fixed 256 KiB of memory.
 */
#include "pipeline/finite.h"
#include "core/alloc.h"
#include "core/dtype.h"

#include <stdio.h>
#include <string.h>

#define CHUNK_ELEMS 32768

size_t vf_count_nonfinite(const float *x, size_t n)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &x[i], sizeof b);
        bad += (b & 0x7f800000u) == 0x7f800000u;
    }
    return bad;
}

/* 1 when tensor t holds a non-finite value; buf holds CHUNK_ELEMS floats and
 * raw their stored bytes. */
static vf_status tensor_nonfinite(const vf_ckpt_tensor *t, float *buf, unsigned char *raw, int *yes)
{
    size_t es = vf_dtype_size(t->dtype);
    *yes = 0;
    for (uint64_t at = 0; at < t->nbytes && !*yes; at += (uint64_t)CHUNK_ELEMS * es) {
        uint64_t len = t->nbytes - at < (uint64_t)CHUNK_ELEMS * es ? t->nbytes - at : (uint64_t)CHUNK_ELEMS * es;
        VF_TRY(vf_st_read(t->file, t->src, t->src_offset + at, raw, len));
        vf_convert_to_f32(buf, raw, t->dtype, (size_t)(len / es));
        *yes = vf_count_nonfinite(buf, (size_t)(len / es)) > 0;
    }
    return VF_OK;
}

vf_status vf_find_nonfinite_weight(const vf_model *m, vf_component c, const char **name)
{
    *name = NULL;
    float *buf = vf_malloc(CHUNK_ELEMS * sizeof(float));
    unsigned char *raw = buf ? vf_malloc(CHUNK_ELEMS * 8) : NULL;
    vf_status st = raw ? VF_OK : vf_error_prefix(VF_ERR_NO_MEMORY, "%s: scanning %s weights", m->path,
                                                 vf_component_name(c));
    size_t n = vf_checkpoint_count(m->ck, c);
    for (size_t i = 0; st == VF_OK && i < n && !*name; i++) {
        const vf_ckpt_tensor *t = vf_checkpoint_at(m->ck, c, i);
        int yes = 0;
        if (!vf_dtype_is_float(t->dtype) || vf_dtype_size(t->dtype) > 8 || t->packed)
            continue;
        st = tensor_nonfinite(t, buf, raw, &yes);
        if (st == VF_OK && yes)
            *name = t->name;
    }
    vf_free(raw);
    vf_free(buf);
    return st;
}

vf_status vf_check_finite(const vf_model *m, int c, const float *x, size_t n, const char *where)
{
    size_t bad = vf_count_nonfinite(x, n);
    if (!bad)
        return VF_OK;
    const char *culprit = NULL;
    char blame[512] = "";
    if (c >= 0 && c < VF_COMPONENT_COUNT && m->present[c]) {
        const char *comp = vf_component_name((vf_component)c);
        if (vf_find_nonfinite_weight(m, (vf_component)c, &culprit) != VF_OK)
            snprintf(blame, sizeof blame, "; scanning the %s weights failed: %s", comp, vf_last_error());
        else if (culprit)
            snprintf(blame, sizeof blame, "; %s tensor '%s' holds NaN or infinity (a broken checkpoint)",
                     comp, culprit);
        else
            snprintf(blame, sizeof blame,
                     "; the %s weights are all finite, so the computation overflowed (float16 range?)", comp);
    }
    return vf_error(VF_ERR_NONFINITE, "%s: %s has %zu NaN or infinite values of %zu%s", m->path, where, bad, n,
                    blame);
}
