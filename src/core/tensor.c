/* Plain tensors (see tensor.h). */
#include "core/tensor.h"
#include "core/alloc.h"
#include "core/dtype.h"
#include "core/error.h"

#include <stdio.h>
#include <string.h>

int64_t vf_shape_numel(const int64_t *shape, int ndim)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || __builtin_mul_overflow(n, shape[i], &n))
            return -1;
    }
    return n;
}

int vf_shape_nbytes(const int64_t *shape, int ndim, vf_dtype t, uint64_t *out)
{
    int64_t n = vf_shape_numel(shape, ndim);
    uint64_t b;
    if (n < 0 || __builtin_mul_overflow((uint64_t)n, (uint64_t)vf_dtype_size(t), &b))
        return -1;
    *out = b;
    return 0;
}

const char *vf_shape_str(const int64_t *shape, int ndim, char *buf, size_t cap)
{
    size_t at = 0;
    at += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && at < cap; i++)
        at += (size_t)snprintf(buf + at, cap - at, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (at < cap)
        snprintf(buf + at, cap - at, "]");
    return buf;
}

int vf_shape_eq(const int64_t *a, int na, const int64_t *b, int nb)
{
    return na == nb && memcmp(a, b, sizeof(int64_t) * (size_t)na) == 0;
}

vf_status vf_tensor_alloc_f32(vf_tensor *t, int ndim, const int64_t *shape)
{
    memset(t, 0, sizeof *t);
    if (ndim < 0 || ndim > VF_MAX_DIMS)
        return vf_error(VF_ERR_INVALID_ARG, "tensor rank %d out of range", ndim);
    int64_t n = vf_shape_numel(shape, ndim);
    size_t bytes;
    if (n < 0 || vf_mul_overflow((size_t)n, sizeof(float), &bytes))
        return vf_error(VF_ERR_INVALID_ARG, "tensor size overflows");
    t->data = vf_calloc(1, bytes);
    if (!t->data)
        return VF_ERR_NO_MEMORY;
    t->dtype = VF_DTYPE_F32;
    t->ndim = ndim;
    memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
    t->owns_data = 1;
    return VF_OK;
}

void vf_tensor_free(vf_tensor *t)
{
    if (t && t->owns_data)
        vf_free(t->data);
    if (t)
        memset(t, 0, sizeof *t);
}
