/* A random generator that reproduces PyTorch's CPU generator bit for bit.
 *
 * Diffusers draws the initial latents (and Euler ancestral's per-step noise) with
 * torch.randn(shape, generator=torch.Generator().manual_seed(S)) on the CPU, so
 * "the same seed gives the same image" means reproducing that call exactly:
 *
 *   engine   mt19937 seeded with the low 32 bits of S (PyTorch's mt19937 keeps
 *            the standard init_genrand recurrence), random() = one 32-bit output,
 *            random64() = (first << 32) | second.
 *   uniform  float: (random() & 0xFFFFFF) * 2^-24; double: (random64() & (2^53-1)) * 2^-53.
 *   randn    n >= 16 (float, contiguous): the vectorised Box-Muller of
 *            normal_fill_AVX2: all n uniforms are drawn first; each 16-chunk pairs
 *            u[j] with u[j+8] (radius from 1-u[j], angle 2*pi*u[j+8]); when n is not
 *            a multiple of 16, 16 fresh uniforms are drawn and the last 16 outputs
 *            are recomputed from them. The log, sin and cos are the Cephes-derived
 *            polynomials of ATen's avx_mathfun.h evaluated with fused multiply-adds
 *            exactly where GCC contracts them in PyTorch's AVX2 kernel (x86-64
 *            builds dispatch AVX2 and AVX-512 machines to that kernel), so the
 *            float results are identical, not merely close.
 *            n < 16: the scalar double path (normal_distribution<double>): one
 *            Box-Muller pair per two outputs, the second value cached in the
 *            generator and consumed by the next small draw, as PyTorch does.
 *
 * PyTorch on CPUs without AVX2 (and on aarch64) uses a libm-based normal_fill
 * instead and differs from this in the last bit of some values.
 * Verified against torch 2.x on x86-64 (tests/data/sched/randn.json, made by
 * tools/make_sched_fixtures.py).
 */
#ifndef VF_PIPELINE_RNG_H
#define VF_PIPELINE_RNG_H

#include "vramfit.h"

#include <stddef.h>
#include <stdint.h>

typedef struct vf_rng vf_rng;

/* A generator in the state of torch.Generator().manual_seed(seed). */
vf_status vf_rng_create(uint64_t seed, vf_rng **out);
void vf_rng_free(vf_rng *r);
/* Reseeds in place (manual_seed): also drops the cached normal sample. */
void vf_rng_seed(vf_rng *r, uint64_t seed);

/* The engine's raw outputs: PyTorch's random() and random64(). */
uint32_t vf_rng_u32(vf_rng *r);
uint64_t vf_rng_u64(vf_rng *r);

/* out is (n,): torch.randn(n, generator=g) in float32, bit-exact. */
void vf_rng_randn(vf_rng *r, float *out, size_t n);
/* out is (n,): torch.rand(n, generator=g) in float32, bit-exact. */
void vf_rng_rand(vf_rng *r, float *out, size_t n);

#endif
