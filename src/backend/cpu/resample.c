/* Resampling, layout changes and the sinusoidal timestep embedding: the small
 * data-movement ops between the GEMM-heavy layers. */
#include "backend/cpu/ops.h"

#include <math.h>

// x is (B,C,H,W), y is (B,C,2H,2W)
void vf_cpu_upsample_nearest2x(float *y, const float *x, int B, int C, int H, int W)
{
    size_t planes = (size_t)B * C;
    for (size_t p = 0; p < planes; p++) {
        const float *xp = x + p * H * W;
        float *yp = y + p * 4 * H * W;
        for (int i = 0; i < H; i++) {
            float *r0 = yp + (size_t)(2 * i) * 2 * W, *r1 = r0 + 2 * W;
            for (int j = 0; j < W; j++) {
                float v = xp[(size_t)i * W + j];
                r0[2 * j] = r0[2 * j + 1] = r1[2 * j] = r1[2 * j + 1] = v;
            }
        }
    }
}

// x is (B,C,HW), y is (B,HW,C)
void vf_cpu_nchw_to_nhwc(float *y, const float *x, int B, int C, int HW)
{
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * C * HW;
        float *yb = y + (size_t)b * C * HW;
        for (int c = 0; c < C; c++)
            for (int i = 0; i < HW; i++)
                yb[(size_t)i * C + c] = xb[(size_t)c * HW + i];
    }
}

// x is (B,HW,C), y is (B,C,HW)
void vf_cpu_nhwc_to_nchw(float *y, const float *x, int B, int C, int HW)
{
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * C * HW;
        float *yb = y + (size_t)b * C * HW;
        for (int i = 0; i < HW; i++)
            for (int c = 0; c < C; c++)
                yb[(size_t)c * HW + i] = xb[(size_t)i * C + c];
    }
}

// t is (B), out is (B,dim); matches diffusers get_timestep_embedding (max_period 10000)
void vf_cpu_timestep_embedding(float *out, const float *t, int B, int dim, int flip_sin_to_cos,
                               float downscale_freq_shift)
{
    int half = dim / 2;
    for (int b = 0; b < B; b++) {
        float *o = out + (size_t)b * dim;
        for (int i = 0; i < half; i++) {
            /* float32 as torch computes it: exp(-ln(10000) * i / (half - shift)) */
            float expo = -logf(10000.0f) * (float)i / ((float)half - downscale_freq_shift);
            float arg = t[b] * expf(expo);
            float s = sinf(arg), c = cosf(arg);
            o[i] = flip_sin_to_cos ? c : s;
            o[half + i] = flip_sin_to_cos ? s : c;
        }
        if (dim % 2)
            o[dim - 1] = 0.0f;
    }
}
