/* Element-wise activations, in place. GELU is the exact erf form that
 * PyTorch's nn.GELU() and F.gelu default to. */
#include "backend/cpu/ops.h"

#include <math.h>

void vf_cpu_silu(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = x[i] / (1.0f + expf(-x[i]));
}

static float gelu1(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }

void vf_cpu_gelu(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = gelu1(x[i]);
}

void vf_cpu_quick_gelu(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
}

// x is (rows, 2*inner), y is (rows, inner); y may not alias x
void vf_cpu_geglu(float *y, const float *x, int rows, int inner)
{
    for (int r = 0; r < rows; r++) {
        const float *h = x + (size_t)r * 2 * inner, *gate = h + inner;
        float *yr = y + (size_t)r * inner;
        for (int i = 0; i < inner; i++)
            yr[i] = h[i] * gelu1(gate[i]);
    }
}

void vf_cpu_add(float *y, const float *a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] += a[i];
}
