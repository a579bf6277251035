/* Element types and conversions between them.
 *
 * Compute on the CPU is float32; checkpoints store F32/F16/BF16 (and F8 variants),
 * so the only conversions on the load path are "anything to f32" and back for
 * writing. Conversions are exact (round-to-nearest-even where narrowing).
 */
#ifndef VF_CORE_DTYPE_H
#define VF_CORE_DTYPE_H

#include "vramfit.h"

#include <stddef.h>
#include <stdint.h>

/* Bytes per element. */
size_t vf_dtype_size(vf_dtype t);
/* Parses a safetensors dtype string ("F16"); returns 0 on success. */
int vf_dtype_parse(const char *s, vf_dtype *out);
/* 1 for types that can be converted to float32 for compute. */
int vf_dtype_is_float(vf_dtype t);

float vf_f16_to_f32(uint16_t h);
uint16_t vf_f32_to_f16(float f);
float vf_bf16_to_f32(uint16_t h);
uint16_t vf_f32_to_bf16(float f);
float vf_f8e4m3_to_f32(uint8_t v);
float vf_f8e5m2_to_f32(uint8_t v);

/* dst[i] = (float)src[i] for n elements of a float type (F32, F16, BF16, F8 variants, F64).
 * src may be unaligned (it often points into a mapped file). */
void vf_convert_to_f32(float *dst, const void *src, vf_dtype t, size_t n);
/* Narrows n floats to F32/F16/BF16 into dst. */
void vf_convert_from_f32(void *dst, vf_dtype t, const float *src, size_t n);

#endif
