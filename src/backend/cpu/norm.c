/* Normalisations. Statistics are accumulated in double: the reference is
 * PyTorch in float32, whose reductions are pairwise, and double keeps our error
 * well below the 1e-4 parity tolerance at any channel count. */
#include "backend/cpu/ops.h"

#include <math.h>

// x and y are (rows,C); gamma and beta are (C)
void vf_cpu_layernorm(float *y, const float *x, const float *gamma, const float *beta, int rows, int C,
                      float eps)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * C;
        float *yr = y + (size_t)r * C;
        double mean = 0, var = 0;
        for (int c = 0; c < C; c++)
            mean += xr[c];
        mean /= C;
        for (int c = 0; c < C; c++)
            var += (xr[c] - mean) * (xr[c] - mean);
        var /= C;
        float inv = (float)(1.0 / sqrt(var + eps));
        float m = (float)mean;
        for (int c = 0; c < C; c++)
            yr[c] = (xr[c] - m) * inv * gamma[c] + beta[c];
    }
}

// x and y are (B,C,HW); gamma and beta are (C); G divides C
void vf_cpu_groupnorm(float *y, const float *x, const float *gamma, const float *beta, int B, int C,
                      int HW, int G, float eps, int silu)
{
    int cpg = C / G;
    size_t n = (size_t)cpg * HW;
    for (int b = 0; b < B; b++) {
        for (int g = 0; g < G; g++) {
            size_t base = ((size_t)b * C + (size_t)g * cpg) * HW;
            const float *xg = x + base;
            double mean = 0, var = 0;
            for (size_t i = 0; i < n; i++)
                mean += xg[i];
            mean /= (double)n;
            for (size_t i = 0; i < n; i++)
                var += (xg[i] - mean) * (xg[i] - mean);
            var /= (double)n;
            float inv = (float)(1.0 / sqrt(var + eps));
            float m = (float)mean;
            for (int c = 0; c < cpg; c++) {
                int ch = g * cpg + c;
                float s = inv * gamma[ch], t = beta[ch] - m * s;
                const float *xc = xg + (size_t)c * HW;
                float *yc = y + base + (size_t)c * HW;
                for (int i = 0; i < HW; i++) {
                    float v = xc[i] * s + t;
                    yc[i] = silu ? v / (1.0f + expf(-v)) : v;
                }
            }
        }
    }
}
