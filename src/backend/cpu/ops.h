/* CPU kernels: the float32 reference backend.
 *
 * Layouts are the PyTorch ones so that every stage can be compared with tensors
 * dumped from diffusers: images and feature maps are (B,C,H,W) row-major,
 * token sequences are (B,L,C) with attention heads interleaved in C as
 * (B,L,H,D). GEMMs go to OpenBLAS; everything else is plain loops over
 * contiguous memory. Functions that need scratch memory allocate it bounded
 * (chunked) and return a vf_status; the others cannot fail.
 * One op family per file: gemm.c, norm.c, act.c, attention.c, conv.c, resample.c.
 */
#ifndef VF_CPU_OPS_H
#define VF_CPU_OPS_H

#include "vramfit.h"

#include <stddef.h>

/* y (M,N) = x (M,K) @ w(N,K)^T + b(N); b may be NULL. y must not alias x. */
void vf_cpu_linear(float *y, const float *x, const float *w, const float *b, int M, int K, int N);
/* c (M,N) = alpha * a (M,K) @ b (K,N) + beta * c; plain row-major GEMM. */
void vf_cpu_gemm(float *c, const float *a, const float *b, int M, int K, int N, float alpha, float beta);

/* x is (rows,C); normalises each row; y may alias x. */
void vf_cpu_layernorm(float *y, const float *x, const float *gamma, const float *beta, int rows, int C,
                      float eps);
/* x is (B,C,HW), G groups; optional SiLU after the affine; y may alias x. */
void vf_cpu_groupnorm(float *y, const float *x, const float *gamma, const float *beta, int B, int C,
                      int HW, int G, float eps, int silu);

/* In-place activations on n values. */
void vf_cpu_silu(float *x, size_t n);
void vf_cpu_gelu(float *x, size_t n);        /* exact (erf) GELU              */
void vf_cpu_quick_gelu(float *x, size_t n);  /* x * sigmoid(1.702 x)          */
/* x is (rows, 2*inner): y (rows, inner) = x[:, :inner] * gelu(x[:, inner:]). */
void vf_cpu_geglu(float *y, const float *x, int rows, int inner);
/* y[i] += a[i] */
void vf_cpu_add(float *y, const float *a, size_t n);

/* q is (B,Lq,H*D), k and v are (B,Lk,H*D), out is (B,Lq,H*D).
 * softmax(q k^T * scale [+ causal mask]) v, computed in chunks of queries so
 * that scratch memory is O(chunk * Lk), never O(Lq * Lk). */
vf_status vf_cpu_attention(float *out, const float *q, const float *k, const float *v, int B, int Lq,
                           int Lk, int H, int D, int causal, float scale);

/* x is (B,C,H,W), w is (OC,C,KH,KW), b is (OC) or NULL, y is (B,OC,OH,OW) with
 * OH = (H + 2*pad - KH)/stride + 1. im2col in row chunks + sgemm. */
vf_status vf_cpu_conv2d(float *y, const float *x, const float *w, const float *b, int B, int C, int H,
                        int W, int OC, int KH, int KW, int stride, int pad);

/* x is (B,C,H,W) -> y (B,C,2H,2W), nearest neighbour. */
void vf_cpu_upsample_nearest2x(float *y, const float *x, int B, int C, int H, int W);
/* x (B,C,HW) -> y (B,HW,C) and back. */
void vf_cpu_nchw_to_nhwc(float *y, const float *x, int B, int C, int HW);
void vf_cpu_nhwc_to_nchw(float *y, const float *x, int B, int C, int HW);
/* Sinusoidal timestep embedding as diffusers' get_timestep_embedding:
 * out is (B,dim) from t (B); half = dim/2, freq_i = exp(-ln(10000) i / (half - shift)). */
void vf_cpu_timestep_embedding(float *out, const float *t, int B, int dim, int flip_sin_to_cos,
                               float downscale_freq_shift);

#endif
