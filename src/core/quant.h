/* Quantized weight formats: F8_E4M3, Q8 and Q4, packed.
 *
 * A weight of logical shape (OC, C, KH, KW) (a linear weight is (N, K), any
 * >= 2-D weight is (shape[0], rest)) is quantized row by row: a row is the
 * K = C*KH*KW values of one output channel in OIHW order, exactly as stored in
 * a checkpoint. Rows are padded with zeros to a whole number of groups (Kp
 * values) so that every row starts aligned; the padding is never read back.
 *
 * A packed tensor is two planes, data first, so that both start 16-byte
 * aligned whenever the buffer does (the GPU kernel reads them with 16-byte
 * vector loads; scales first would misalign F8's data whenever OC % 4 != 0).
 * Both planes are whole rows, so the packed size is linear in the rows and a
 * row slice (one of a fused q/k/v) is a slice of each plane (vf_quant_layout):
 *
 *   F8_E4M3  Kp = K rounded up to 16. data: rows*Kp e4m3 bytes (OCP "fn":
 *            bias 7, max 448, no infinities); then rows float32 scales,
 *            scale = amax(row)/448, value = scale * e4m3. Quantizing divides
 *            by the scale and rounds to nearest even, saturating at +-448.
 *   Q8       Kp = K rounded up to 32 (blocks of 32 along K). data: rows*Kp
 *            int8 in [-127, 127]; then rows*Kp/32 F16 scales (block b of row
 *            r at r*Kp/32 + b), value = scale * q. The scale starts as
 *            amax(block)/127 rounded to F16, q = round-half-even(x / scale)
 *            clamped; then 16 scales from 0.995 to 1.05 times that each
 *            give codes, the scale is refit to them by least squares
 *            (rounded to F16), and the pair with the least squared error
 *            is kept: 11-12% lower RMS error than amax/127 alone, for the
 *            same bytes (quant.c, q8_block).
 *   Q4       Kp = K rounded up to 32. data: rows*Kp/2 bytes, two values a
 *            byte (even k in the low nibble); then rows*Kp/32 pairs of F16
 *            (d, m): asymmetric, q in [0, 15], value = fmaf(d, q, m). The
 *            pair starts as m = min(block), d = (max - min)/15 and is then
 *            refitted by least squares to its codes (x ~ d q + m, both
 *            rounded to F16, the codes recomputed) while the block's error
 *            falls. Asymmetric over symmetric [-8, 7]: it uses all 16 levels
 *            on every block; on Gaussian blocks of 32 its RMS error is 7.8%
 *            of the values' RMS against 9.7% for symmetric amax/7 (8.6% with
 *            the sign trick), 7.3% after the refits, for 5 bits a weight
 *            instead of 4.5.
 *
 * Every dequantized value is one fp32 operation on exact inputs (a product,
 * or an fmaf), so a GPU kernel doing the same operation produces the same
 * float bit for bit, and its F16/BF16 output is this value rounded once.
 *
 * Which weights are quantized (vf_quant_can): 2-D to 4-D weights whose packed
 * form is smaller than F16; 1-D tensors (biases, norms) never, nor rows so
 * short that the padding and scales outweigh the saving: a K = 16 projection
 * of a tiny test model stays F16 under Q8 (34 bytes a row against 32) while
 * Q4 and F8 take it. Every weight of the real SD1.5 / SDXL UNets but conv_in
 * has K a multiple of 32, so padding costs nothing there. Besides the shape,
 * a model keeps its input and output convolutions unpacked by name
 * (vf_weight_stays_unpacked, model/blocks.h: SD's conv_in among them).
 *
 * F32, F16 and BF16 are accepted as plain formats everywhere here (bytes =
 * numel * size), so callers can treat every storage dtype alike.
 */
#ifndef VF_CORE_QUANT_H
#define VF_CORE_QUANT_H

#include "vramfit.h"

#include <stddef.h>
#include <stdint.h>

#define VF_QUANT_BLOCK 32   /* Q8 / Q4 values per scale                */
#define VF_F8_ROW_ALIGN 16  /* F8 rows are padded to this many bytes  */

/* 1 for the packed formats (F8_E4M3, Q8, Q4). */
int vf_quant_is_packed(vf_dtype fmt);
/* Bytes of a packed (or plain) rows x cols tensor; 0 for an unsupported
 * format or non-positive / overflowing dims. */
size_t vf_quant_packed_bytes(vf_dtype fmt, int64_t rows, int64_t cols);
/* The layout of a packed format for rows of cols values: bytes of one row in
 * the data plane and in the scale plane (the scale plane starts at
 * rows * data_row). A row slice [r0, r0+n) of a packed tensor is therefore
 * the data bytes [r0*data_row, (r0+n)*data_row) followed by the scale bytes
 * [rows*data_row + r0*scale_row, ... + n*scale_row). Returns 0 on success. */
int vf_quant_layout(vf_dtype fmt, int64_t cols, size_t *data_row, size_t *scale_row);
/* 1 when a weight of this shape is stored in fmt under a quantized policy:
 * fmt packed, ndim >= 2, every dim positive, cols < 2^31, and the packed
 * form smaller than F16. For F32/F16/BF16: 1 for any valid shape. */
int vf_quant_can(vf_dtype fmt, int ndim, const int64_t *shape);

/* src is (rows, cols) float32 row-major; dst receives vf_quant_packed_bytes
 * bytes (F32/F16/BF16: the plain conversion, F16 values past its range are an
 * error too). A NaN or infinity is VF_ERR_NONFINITE naming its row and
 * column (the caller prefixes the tensor). Never allocates.
 *
 * Large tensors are quantized by several threads (vf_quant_threads), each
 * taking a contiguous run of rows. Rows are independent, so the bytes are
 * those of one thread, and on failure the error is the one of the lowest
 * failing row, exactly as one thread reports it (the calling thread sets it:
 * the message is thread-local). dst is unspecified after an error. */
vf_status vf_quantize(vf_dtype fmt, const float *src, int64_t rows, int64_t cols, void *dst);

#define VF_QUANT_MAX_THREADS 64            /* never more threads than this     */
#define VF_QUANT_AUTO_THREADS 16           /* automatic: at most this many     */
#define VF_QUANT_PAR_MIN ((int64_t)1 << 18) /* automatic: values to go parallel */

/* The threads vf_quantize uses for rows x cols values (at least 1, at most
 * rows). Automatic: 1 below VF_QUANT_PAR_MIN values, else the env
 * VF_QUANT_THREADS (a whole number >= 1, at most VF_QUANT_MAX_THREADS; any
 * other value is ignored) or the CPUs this process may run on, at most
 * VF_QUANT_AUTO_THREADS, and never fewer than VF_QUANT_PAR_MIN / 4 values a
 * thread. vf_quant_set_threads(n > 0) forces n, whatever the size (tests). */
int vf_quant_threads(int64_t rows, int64_t cols);
/* 0 = automatic (the default). Process-wide; set it before quantizing. */
void vf_quant_set_threads(int n);
/* Test hook: the nth thread start from now (1 = the next) fails, as a failing
 * pthread_create does; 0 disables. */
void vf_quant_fault_spawn_at(int nth);
/* The inverse: dst is (rows, cols) float32. src may be unaligned. */
vf_status vf_dequantize(vf_dtype fmt, const void *src, int64_t rows, int64_t cols, float *dst);

/* Quantize-on-load for the float32 CPU path: w (shape, ndim) becomes what a
 * device storing it as fmt would compute with. Packed formats: quantize then
 * dequantize in place when vf_quant_can, else w is left as it is. F16/BF16:
 * every value rounded through that type. F32: nothing. Allocates the packed
 * copy (vf_malloc). */
vf_status vf_quant_roundtrip(vf_dtype fmt, float *w, int ndim, const int64_t *shape);

/* One F8_E4M3 byte from a float, round to nearest even, saturating to
 * +-448 (NaN gives 0x7f). */
uint8_t vf_f32_to_f8e4m3(float f);

#endif
