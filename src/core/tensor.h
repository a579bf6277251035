/* A plain tensor: dtype, shape, and data the tensor may or may not own.
 *
 * The engine's activations on the CPU are contiguous float32 row-major tensors;
 * this struct is deliberately small (no strides, no refcounts) because layout
 * decisions belong to the planner, not to a tensor library.
 */
#ifndef VF_CORE_TENSOR_H
#define VF_CORE_TENSOR_H

#include "vramfit.h"

#include <stdint.h>

#define VF_MAX_DIMS 8

typedef struct vf_tensor {
    vf_dtype dtype;
    int ndim;
    int64_t shape[VF_MAX_DIMS];
    void *data;
    int owns_data;
} vf_tensor;

/* Product of the shape; -1 when it overflows int64. */
int64_t vf_shape_numel(const int64_t *shape, int ndim);
/* Byte size of numel elements of t; returns 0 on success, -1 on overflow. */
int vf_shape_nbytes(const int64_t *shape, int ndim, vf_dtype t, uint64_t *out);
/* Formats "[a, b, c]" into buf. */
const char *vf_shape_str(const int64_t *shape, int ndim, char *buf, size_t cap);
/* 1 when the shapes are equal. */
int vf_shape_eq(const int64_t *a, int na, const int64_t *b, int nb);

/* Allocates a zeroed float32 tensor of the given shape. */
vf_status vf_tensor_alloc_f32(vf_tensor *t, int ndim, const int64_t *shape);
void vf_tensor_free(vf_tensor *t);

#endif
