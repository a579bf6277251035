/* 2-D convolution as im2col + sgemm, in bands of output rows.
 *
 * The full im2col matrix of a 1024x1024 VAE layer would be several GiB, so the
 * output is produced in horizontal bands whose column matrix fits in
 * VF_CONV_SCRATCH floats; each band is one sgemm writing straight into the
 * (OC, OH*OW) output with a leading dimension of OH*OW. 1x1 stride-1 convs skip
 * im2col entirely.
 */
#include "backend/cpu/ops.h"
#include "core/alloc.h"
#include "core/error.h"

#include <cblas.h>
#include <string.h>

#define VF_CONV_SCRATCH (8u << 20) /* floats: 32 MiB */

// col is (C*KH*KW, nrows*OW) for output rows [r0, r0+nrows) of one image x (C,H,W)
static void im2col_band(float *col, const float *x, int C, int H, int W, int KH, int KW, int stride,
                        int pad, int OW, int r0, int nrows)
{
    size_t ncol = (size_t)nrows * OW;
    for (int c = 0; c < C; c++) {
        for (int ky = 0; ky < KH; ky++) {
            for (int kx = 0; kx < KW; kx++) {
                float *dst = col + ((size_t)(c * KH + ky) * KW + kx) * ncol;
                for (int r = 0; r < nrows; r++) {
                    int iy = (r0 + r) * stride - pad + ky;
                    float *d = dst + (size_t)r * OW;
                    if (iy < 0 || iy >= H) {
                        memset(d, 0, sizeof(float) * (size_t)OW);
                        continue;
                    }
                    const float *xr = x + ((size_t)c * H + iy) * W;
                    for (int ox = 0; ox < OW; ox++) {
                        int ix = ox * stride - pad + kx;
                        d[ox] = ix >= 0 && ix < W ? xr[ix] : 0.0f;
                    }
                }
            }
        }
    }
}

static void add_bias(float *y, const float *b, int OC, size_t n)
{
    for (int o = 0; o < OC; o++)
        for (size_t i = 0; i < n; i++)
            y[(size_t)o * n + i] += b[o];
}

// x is (B,C,H,W), w is (OC,C,KH,KW), b is (OC) or NULL, y is (B,OC,OH,OW)
vf_status vf_cpu_conv2d(float *y, const float *x, const float *w, const float *b, int B, int C, int H,
                        int W, int OC, int KH, int KW, int stride, int pad)
{
    int OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    size_t opix = (size_t)OH * OW, K = (size_t)C * KH * KW;
    if (KH == 1 && KW == 1 && stride == 1 && pad == 0) {
        for (int bi = 0; bi < B; bi++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, OC, (int)opix, C, 1.0f, w, C,
                        x + (size_t)bi * C * H * W, (int)opix, 0.0f, y + (size_t)bi * OC * opix,
                        (int)opix);
        goto bias;
    }
    int band = (int)(VF_CONV_SCRATCH / (K * (size_t)OW));
    if (band < 1)
        band = 1;
    if (band > OH)
        band = OH;
    float *col = vf_malloc(sizeof(float) * K * (size_t)band * OW);
    if (!col)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "conv2d column buffer");
    for (int bi = 0; bi < B; bi++) {
        const float *xb = x + (size_t)bi * C * H * W;
        float *yb = y + (size_t)bi * OC * opix;
        for (int r0 = 0; r0 < OH; r0 += band) {
            int nr = OH - r0 < band ? OH - r0 : band;
            im2col_band(col, xb, C, H, W, KH, KW, stride, pad, OW, r0, nr);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, OC, nr * OW, (int)K, 1.0f, w, (int)K,
                        col, nr * OW, 0.0f, yb + (size_t)r0 * OW, (int)opix);
        }
    }
    vf_free(col);
bias:
    if (b)
        for (int bi = 0; bi < B; bi++)
            add_bias(y + (size_t)bi * OC * opix, b, OC, opix);
    return VF_OK;
}
