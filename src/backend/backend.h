/* Compute backends: one set of model code, run on the CPU or on a GPU.
 *
 * Model code (clip, unet, vae) calls the vf_be_* functions below on opaque
 * device buffers; a backend is a vtable (vf_backend_ops) plus its state. The
 * CPU backend wraps backend/cpu/ops.h in float32; the CUDA backend lives in a
 * separately built libvramfit-cuda.so that the core loads at run time
 * (backend_cuda_loader.c), so the core and the CLI build and run without
 * CUDA. The vtable is therefore also an ABI: it is versioned, plain C, and
 * the plugin never calls into the core (it reports failures through
 * last_error(), which the wrappers turn into vf_error messages).
 *
 * Why this shape:
 * - Buffers hold the backend's COMPUTE dtype (vf_be_dtype: F32 on the CPU,
 *   F16 or BF16 on CUDA, fp32 accumulation inside every kernel). Weights are
 *   materialised in that dtype too, so ops never convert on the hot path.
 *   Host data crosses only through upload/download, which convert.
 * - Feature maps (images, latents, UNet/VAE activations, logically
 *   (B,C,H,W)) are stored in the backend's layout (vf_be_fm_layout): NCHW on
 *   the CPU (the PyTorch order the reference fixtures use), NHWC on CUDA (the
 *   tensor-core order: a 1x1 conv or proj_in is a plain GEMM, no transposes).
 *   Every op that depends on the layout takes logical (B,C,H,W) dims and is
 *   a backend op (conv2d, groupnorm, upsample, concat, fm<->tokens), so model
 *   code never sees the layout. Token sequences are (B,L,C) everywhere, with
 *   attention heads interleaved in C as (B,L,H,D).
 * - Conv weights are logically (OC,C,KH,KW); their stored order is the
 *   backend's filter layout (vf_be_filter_layout: OIHW on the CPU, OHWI on
 *   CUDA). The residency manager converts when it builds a block's device or
 *   pinned copy (vf_be_upload_conv_weight, or vf_conv_weight_to_ohwi on the
 *   host for streamed copies). All other weights are stored as in the file.
 * - Ops are queued on the backend's compute stream and return at once on
 *   CUDA; a launch error is returned by the op, an asynchronous fault by the
 *   next download / sync / event_sync. Raw copies go on a separate copy
 *   stream; events order the two (copy-compute overlap for streamed blocks).
 * - Buffers come from vf_be_alloc for now; the arena (mem/arena.h) will carve
 *   them from one reservation: any pointer inside an allocation, offset with
 *   vf_be_at, is a valid buffer argument. Kernel workspaces (cuBLASLt, cuDNN,
 *   attention fallback) are owned by the backend and reported by mem_info.
 *
 * Aliasing: unless an op says otherwise, outputs must not overlap inputs.
 */
#ifndef VF_BACKEND_BACKEND_H
#define VF_BACKEND_BACKEND_H

#include "vramfit.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Device memory of a backend, in its compute dtype. Never dereferenced by the
 * core (on the CPU it happens to be host memory). */
typedef struct vf_dbuf vf_dbuf;
typedef struct vf_bevent vf_bevent;
typedef struct vf_backend vf_backend;

typedef enum vf_backend_kind { VF_BACKEND_CPU = 0, VF_BACKEND_CUDA } vf_backend_kind;
typedef enum vf_fm_layout { VF_LAYOUT_NCHW = 0, VF_LAYOUT_NHWC } vf_fm_layout;
typedef enum vf_filter_layout { VF_FILTER_OIHW = 0, VF_FILTER_OHWI } vf_filter_layout;
/* Fused activations (applied in fp32 before the single rounding to the compute dtype). */
typedef enum vf_act {
    VF_ACT_NONE = 0,
    VF_ACT_SILU,        /* x * sigmoid(x)               */
    VF_ACT_GELU,        /* exact (erf) GELU             */
    VF_ACT_GELU_TANH,   /* tanh approximation           */
    VF_ACT_QUICK_GELU   /* x * sigmoid(1.702 x) (CLIP)  */
} vf_act;
/* EXPAND (ABI 5): a third stream on which packed weights are expanded ahead
 * of the compute that reads them (vf_be_dequant_on); the CPU has one order. */
typedef enum vf_stream { VF_STREAM_COMPUTE = 0, VF_STREAM_COPY, VF_STREAM_EXPAND } vf_stream;

/* ---- creating a backend ----------------------------------------------------- */

typedef struct vf_backend_options {
    vf_backend_kind kind;    /* default CPU                                          */
    vf_dtype dtype;          /* compute dtype; default F32 on CPU, F16 on CUDA       */
    int device;              /* CUDA device ordinal (default 0)                      */
    const char *library;     /* path of libvramfit-cuda.so; NULL: $VF_CUDA_LIB, then
                                the loader's search path, then beside the program
                                or the core library                                 */
} vf_backend_options;

void vf_backend_options_init(vf_backend_options *o);
/* A CUDA backend that cannot be had (no library, no driver, no device, an ABI
 * mismatch) is VF_ERR_DEVICE with "CUDA backend unavailable: <why>"; nothing
 * is left loaded. The CPU backend supports F32 only (VF_ERR_UNSUPPORTED). */
vf_status vf_backend_create(const vf_backend_options *o, vf_backend **out);
/* Waits for queued work, frees the backend's own memory and unloads it.
 * Buffers from vf_be_alloc must be freed before. NULL is a no-op. */
void vf_backend_free(vf_backend *be);

/* ---- what it is ------------------------------------------------------------- */

typedef struct vf_backend_info {
    vf_backend_kind kind;
    vf_dtype dtype;                 /* compute dtype                             */
    vf_fm_layout fm_layout;
    vf_filter_layout filter_layout;
    char name[32];                  /* "cpu", "cuda"                             */
    char device[128];               /* "NVIDIA H100 80GB HBM3", "cpu"            */
    int cc_major, cc_minor;         /* compute capability (0 on the CPU)         */
    int multiprocessors;
    char features[128];             /* e.g. "cublasLt cudnn-9.14 flash-mma"      */
} vf_backend_info;

const vf_backend_info *vf_be_info(const vf_backend *be);
vf_dtype vf_be_dtype(const vf_backend *be);
size_t vf_be_esize(const vf_backend *be);       /* bytes per element of the compute dtype */
vf_fm_layout vf_be_fm_layout(const vf_backend *be);
/* 1 when a feature map (B,C,H,W) already is its token sequence (B,HW,C) in
 * memory (NHWC): fm_to_tokens / tokens_to_fm may then be skipped. */
int vf_be_fm_is_tokens(const vf_backend *be);
/* Device memory: total and free now (driver), and what the backend itself
 * holds in workspaces. On the CPU total = free = 0. */
void vf_be_mem_info(vf_backend *be, uint64_t *total, uint64_t *free, uint64_t *workspace);

/* What the backend's own allocator holds (vf_be_alloc buffers; on CUDA a
 * stream-ordered pool that keeps what it reserved), now and at most since the
 * last reset. On the CPU every figure is 0 (host memory is the monitor's). */
typedef struct vf_be_mem_stats {
    uint64_t in_use, peak;          /* bytes of live vf_be_alloc buffers        */
    uint64_t reserved, reserved_peak; /* bytes the allocator holds from the driver */
    uint64_t workspace;             /* kernel workspaces (as vf_be_mem_info)    */
} vf_be_mem_stats;
/* reset_peak: start the peaks again from the current figures (after reading). */
void vf_be_mem_stats_get(vf_backend *be, vf_be_mem_stats *s, int reset_peak);
/* Bytes that crossed the host link through upload*, download* and h2d_async
 * since the backend was created (source bytes as given / float32 bytes out). */
void vf_be_link_bytes(const vf_backend *be, uint64_t *h2d, uint64_t *d2h);

/* Op profiler: between begin and end every op is bracketed by two events on
 * the compute stream (device time, some launch overhead added); end waits,
 * sums the times per op label ("linear", "conv3x3+", "conv1x1", "attention",
 * "attention(cross)", "groupnorm", ...) into rows, largest first. */
typedef struct vf_be_prof_row {
    char op[24];
    int calls;
    double ms;
} vf_be_prof_row;
void vf_be_profile_begin(vf_backend *be);
vf_status vf_be_profile_end(vf_backend *be, vf_be_prof_row *rows, int cap, int *n);

/* ---- memory and transfers ----------------------------------------------------- */

/* n elements of the compute dtype (n = 0 gives a valid 1-element buffer). */
vf_status vf_be_alloc(vf_backend *be, size_t n, vf_dbuf **p);
void vf_be_free(vf_backend *be, vf_dbuf *p);
/* p + n elements (the buffer of a sub-range: a row chunk, one batch item). */
vf_dbuf *vf_be_at(const vf_backend *be, vf_dbuf *p, size_t n);
const vf_dbuf *vf_be_cat(const vf_backend *be, const vf_dbuf *p, size_t n);

/* Host -> device, n elements of src_dtype (F32, F16 or BF16) converted to the
 * compute dtype, flat order. Ordered before every compute op queued after it;
 * src may be reused when it returns. */
vf_status vf_be_upload(vf_backend *be, vf_dbuf *dst, const void *src, vf_dtype src_dtype, size_t n);
/* Device -> host float32, flat; waits for all compute queued before. */
vf_status vf_be_download(vf_backend *be, float *dst, const vf_dbuf *src, size_t n);
/* Feature maps: host (B,C,H,W) float32 <-> device feature map in fm layout. */
vf_status vf_be_upload_fm(vf_backend *be, vf_dbuf *dst, const float *src, int B, int C, int H, int W);
vf_status vf_be_download_fm(vf_backend *be, float *dst, const vf_dbuf *src, int B, int C, int H, int W);
/* A conv weight: host (OC,C,KH,KW) of src_dtype -> device, in the backend's filter layout. */
vf_status vf_be_upload_conv_weight(vf_backend *be, vf_dbuf *dst, const void *src, vf_dtype src_dtype,
                                   int OC, int C, int KH, int KW);
/* Raw bytes (already in the compute dtype and layout) on the COPY stream,
 * asynchronous: src must stay valid, and compute must wait (event recorded on
 * the copy stream, vf_be_wait on the compute stream) before using dst. Pinned
 * src streams at full link speed; pageable src is staged by the driver. */
vf_status vf_be_h2d_async(vf_backend *be, vf_dbuf *dst, const void *src, size_t bytes);
/* Raw bytes device -> host, after the compute queued so far; returns when dst
 * holds them (the memory manager copying resident weights back to the host). */
vf_status vf_be_d2h(vf_backend *be, void *dst, const vf_dbuf *src, size_t bytes);
/* Device -> device, n elements, on the compute stream. */
vf_status vf_be_copy(vf_backend *be, vf_dbuf *dst, const vf_dbuf *src, size_t n);
/* Waits for everything queued on both streams; reports asynchronous faults. */
vf_status vf_be_sync(vf_backend *be);

/* ---- events (ordering and device timing) ------------------------------------ */

vf_status vf_be_event_create(vf_backend *be, vf_bevent **ev);
void vf_be_event_destroy(vf_backend *be, vf_bevent *ev);
vf_status vf_be_record(vf_backend *be, vf_bevent *ev, vf_stream s);
/* Stream s waits (on the device, the host does not block) for ev. */
vf_status vf_be_wait(vf_backend *be, vf_stream s, vf_bevent *ev);
/* The host blocks until ev completed. */
vf_status vf_be_event_sync(vf_backend *be, vf_bevent *ev);
/* Milliseconds between two completed events (device clock). */
vf_status vf_be_elapsed_ms(vf_backend *be, vf_bevent *start, vf_bevent *end, float *ms);

/* ---- compute (compute stream; dims are logical, layouts as described above) --- */

/* x is (M,K), w is (N,K), b is (N) or NULL, r is (M,N) or NULL, y is (M,N):
 * y = act(x w^T + b) + r. act and r are not combined (one or the other);
 * r may be y itself (accumulate: y += x w^T + b). */
vf_status vf_be_linear(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, const vf_dbuf *w, const vf_dbuf *b,
                       const vf_dbuf *r, int M, int K, int N, vf_act act);

/* x is (B,C,H,W) fm, w is (OC,C,KH,KW) in filter layout, b is (OC) or NULL,
 * r is (B,OC,OH,OW) fm or NULL (may be y: accumulate), y is (B,OC,OH,OW) fm
 * with OH = (H + 2 pad - KH) / stride + 1: y = conv(x) + b + r. */
vf_status vf_be_conv2d(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, const vf_dbuf *w, const vf_dbuf *b,
                       const vf_dbuf *r, int B, int C, int H, int W, int OC, int KH, int KW, int stride,
                       int pad);

/* x, y are (B,C,H*W) fm, gamma and beta (C), cb (B,C) or NULL, G divides C:
 * y = [silu](groupnorm(x + cb[:, :, None])). cb fuses the resnet's time
 * embedding add. y may alias x. */
vf_status vf_be_groupnorm(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, const vf_dbuf *gamma,
                          const vf_dbuf *beta, const vf_dbuf *cb, int B, int C, int HW, int G, float eps,
                          int silu);
/* x, y are (rows,C); gamma, beta (C); y may alias x. */
vf_status vf_be_layernorm(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, const vf_dbuf *gamma,
                          const vf_dbuf *beta, int rows, int C, float eps);
/* In place on n elements. */
vf_status vf_be_act(vf_backend *be, vf_dbuf *x, size_t n, vf_act act);
/* x is (rows, 2*inner), y (rows, inner): y = x[:, :inner] * gelu(x[:, inner:]). */
vf_status vf_be_geglu(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, int rows, int inner);
/* y += a, n elements. */
vf_status vf_be_add(vf_backend *be, vf_dbuf *y, const vf_dbuf *a, size_t n);
/* y = alpha y + beta x, n elements (guidance, scheduler updates). */
vf_status vf_be_axpby(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, size_t n, float alpha, float beta);

/* q is (B,Lq,H,D) with ldq elements between consecutive tokens (0: H*D), k
 * and v (B,Lk,H,D) with ldk / ldv, o (B,Lq,H,D) with ldo:
 * o = softmax(q k^T scale [+ causal mask, key j <= query i]) v, fp32 softmax.
 * Strides let q, k, v be column slices of one fused QKV projection. No score
 * matrix is materialised on CUDA for D <= 128 (flash); larger D goes through
 * a chunked GEMM + softmax path with a bounded workspace. */
vf_status vf_be_attention(vf_backend *be, vf_dbuf *o, const vf_dbuf *q, const vf_dbuf *k,
                          const vf_dbuf *v, int B, int Lq, int Lk, int H, int D, int ldq, int ldk,
                          int ldv, int ldo, int causal, float scale);

/* x is (B,C,H,W) fm -> y (B,C,2H,2W) fm, nearest. */
vf_status vf_be_upsample2x(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, int B, int C, int H, int W);
/* a (B,Ca,HW) fm, b (B,Cb,HW) fm -> y (B,Ca+Cb,HW) fm (torch.cat(dim=1)). */
vf_status vf_be_concat(vf_backend *be, vf_dbuf *y, const vf_dbuf *a, int Ca, const vf_dbuf *b, int Cb,
                       int B, int HW);
/* fm (B,C,HW) <-> tokens (B,HW,C). A copy where vf_be_fm_is_tokens. */
vf_status vf_be_fm_to_tokens(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, int B, int C, int HW);
vf_status vf_be_tokens_to_fm(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, int B, int C, int HW);
/* t is B host floats; out (B,dim) as diffusers' get_timestep_embedding
 * (computed in fp32 from the exact t, rounded once). */
vf_status vf_be_timestep_embedding(vf_backend *be, vf_dbuf *out, const float *t, int B, int dim,
                                   int flip_sin_to_cos, float downscale_freq_shift);

/* ---- the memory manager's raw memory (mem/device_cuda.c) ---------------------- */

/* Where buffers and kernel workspaces come from once the memory manager owns
 * the device: every vf_be_alloc and every transient workspace an op takes is
 * carved from the model's arena through alloc/free (host code in the core,
 * called from the op that needs it; frees happen in issue order, which is
 * stream order since all compute is on one stream). workspace_limit caps what
 * one op may take as workspace (cuDNN algorithms needing more are skipped; 0:
 * the backend's default). Set it only while no vf_be_alloc buffer is live;
 * NULL returns to the backend's own pool. */
typedef struct vf_be_allocator {
    vf_status (*alloc)(void *ctx, size_t bytes, void **p);
    void (*free)(void *ctx, void *p);
    void *ctx;
    size_t workspace_limit;
} vf_be_allocator;
void vf_be_set_allocator(vf_backend *be, const vf_be_allocator *a);

/* One plain device allocation of bytes (the arena's region: cudaMalloc, not the
 * stream-ordered pool), and its release (waits for queued work first). */
vf_status vf_be_reserve(vf_backend *be, size_t bytes, void **p);
void vf_be_unreserve(vf_backend *be, void *p);
/* Page-locked host memory (cudaHostAlloc; malloc on the CPU). */
vf_status vf_be_pinned_alloc(vf_backend *be, size_t bytes, void **p);
void vf_be_pinned_free(vf_backend *be, void *p);

/* A quantized weight, on the compute stream: src is the device copy of a
 * packed tensor of format fmt (VF_DTYPE_F8_E4M3, VF_DTYPE_Q8 or VF_DTYPE_Q4,
 * logical (OC,C,KH,KW), packed in that order as src/core/quant.h describes),
 * dst receives OC*C*KH*KW elements of the compute dtype in the backend's filter
 * layout (a linear weight is KH = KW = 1). src may be anywhere in device
 * memory (an arena slot), dst must not overlap it. */
vf_status vf_be_dequant(vf_backend *be, vf_dbuf *dst, const void *src, vf_dtype fmt, int OC, int C, int KH,
                        int KW);

/* The same on stream s (ABI 5): VF_STREAM_EXPAND lets the expansion of the
 * next block run beside the compute of this one; the caller orders it with
 * events (vf_be_record / vf_be_wait). Not profiled (the profiler times the
 * compute stream). */
vf_status vf_be_dequant_on(vf_backend *be, vf_stream s, vf_dbuf *dst, const void *src, vf_dtype fmt, int OC,
                           int C, int KH, int KW);

/* Host helper: (OC,C,KH,KW) -> (OC,KH,KW,C), esize-byte elements. */
void vf_conv_weight_to_ohwi(void *dst, const void *src, size_t esize, int OC, int C, int KH, int KW);

/* ---- the plugin contract -------------------------------------------------------
 * A backend fills a vf_backend_ops (every entry required) and an info. All
 * entries take the backend's impl first. Status codes are vramfit's; on
 * failure last_error(impl) gives the backend's message for the latest failure
 * (the wrappers above prefix it with the op's name). Dims were validated by
 * the wrappers (positive, products fit size_t, G divides C, ...). */
#define VF_BACKEND_ABI 5

typedef struct vf_backend_ops {
    int abi;                        /* VF_BACKEND_ABI                           */
    size_t size;                    /* sizeof(vf_backend_ops)                   */
    void (*destroy)(void *impl);
    const char *(*last_error)(void *impl);
    void (*mem_info)(void *impl, uint64_t *total, uint64_t *free, uint64_t *workspace);

    vf_status (*alloc)(void *impl, size_t bytes, void **p);
    void (*free)(void *impl, void *p);
    vf_status (*upload)(void *impl, void *dst, const void *src, vf_dtype src_dtype, size_t n);
    vf_status (*download)(void *impl, float *dst, const void *src, size_t n);
    vf_status (*upload_fm)(void *impl, void *dst, const float *src, int B, int C, int H, int W);
    vf_status (*download_fm)(void *impl, float *dst, const void *src, int B, int C, int H, int W);
    vf_status (*upload_conv_weight)(void *impl, void *dst, const void *src, vf_dtype src_dtype, int OC,
                                    int C, int KH, int KW);
    vf_status (*h2d_async)(void *impl, void *dst, const void *src, size_t bytes);
    vf_status (*copy)(void *impl, void *dst, const void *src, size_t bytes);
    vf_status (*sync)(void *impl);

    vf_status (*event_create)(void *impl, void **ev);
    void (*event_destroy)(void *impl, void *ev);
    vf_status (*record)(void *impl, void *ev, vf_stream s);
    vf_status (*wait)(void *impl, vf_stream s, void *ev);
    vf_status (*event_sync)(void *impl, void *ev);
    vf_status (*elapsed_ms)(void *impl, void *start, void *end, float *ms);

    vf_status (*linear)(void *impl, void *y, const void *x, const void *w, const void *b, const void *r,
                        int M, int K, int N, vf_act act);
    vf_status (*conv2d)(void *impl, void *y, const void *x, const void *w, const void *b, const void *r,
                        int B, int C, int H, int W, int OC, int KH, int KW, int stride, int pad);
    vf_status (*groupnorm)(void *impl, void *y, const void *x, const void *gamma, const void *beta,
                           const void *cb, int B, int C, int HW, int G, float eps, int silu);
    vf_status (*layernorm)(void *impl, void *y, const void *x, const void *gamma, const void *beta,
                           int rows, int C, float eps);
    vf_status (*act)(void *impl, void *x, size_t n, vf_act act);
    vf_status (*geglu)(void *impl, void *y, const void *x, int rows, int inner);
    vf_status (*add)(void *impl, void *y, const void *a, size_t n);
    vf_status (*axpby)(void *impl, void *y, const void *x, size_t n, float alpha, float beta);
    vf_status (*attention)(void *impl, void *o, const void *q, const void *k, const void *v, int B,
                           int Lq, int Lk, int H, int D, int ldq, int ldk, int ldv, int ldo, int causal,
                           float scale);
    vf_status (*upsample2x)(void *impl, void *y, const void *x, int B, int C, int H, int W);
    vf_status (*concat)(void *impl, void *y, const void *a, int Ca, const void *b, int Cb, int B, int HW);
    vf_status (*fm_to_tokens)(void *impl, void *y, const void *x, int B, int C, int HW);
    vf_status (*tokens_to_fm)(void *impl, void *y, const void *x, int B, int C, int HW);
    vf_status (*timestep_embedding)(void *impl, void *out, const float *t, int B, int dim,
                                    int flip_sin_to_cos, float downscale_freq_shift);
    /* ABI 2 */
    void (*mem_stats)(void *impl, vf_be_mem_stats *s, int reset_peak);
    /* ABI 3: the memory manager's raw memory and quantized weights */
    vf_status (*reserve)(void *impl, size_t bytes, void **p);
    void (*unreserve)(void *impl, void *p);
    vf_status (*pinned_alloc)(void *impl, size_t bytes, void **p);
    void (*pinned_free)(void *impl, void *p);
    vf_status (*dequant)(void *impl, void *dst, const void *src, vf_dtype fmt, int OC, int C, int KH,
                         int KW);
    void (*set_allocator)(void *impl, const vf_be_allocator *a);
    /* ABI 4: raw device -> host bytes (weights demoted to host memory) */
    vf_status (*d2h)(void *impl, void *dst, const void *src, size_t bytes);
    /* ABI 5: dequant on a given stream (VF_STREAM_EXPAND) */
    vf_status (*dequant_on)(void *impl, vf_stream s, void *dst, const void *src, vf_dtype fmt, int OC, int C,
                            int KH, int KW);
} vf_backend_ops;

/* What the CPU backend and the plugin provide. */
typedef struct vf_backend_open_args {
    int abi;                        /* VF_BACKEND_ABI                           */
    vf_dtype dtype;
    int device;
} vf_backend_open_args;

/* The symbol libvramfit-cuda.so exports (VF_CUDA_ENTRY): on failure it
 * returns a status and writes why into err (cap bytes), holding nothing. */
#define VF_CUDA_ENTRY "vf_cuda_backend_open"
typedef vf_status (*vf_backend_open_fn)(const vf_backend_open_args *a, const vf_backend_ops **ops,
                                        void **impl, vf_backend_info *info, char *err, size_t cap);

/* Core internals (backend.c, cpu/backend_cpu.c, backend_cuda_loader.c). */
vf_status vf_backend_cpu_open(const vf_backend_open_args *a, const vf_backend_ops **ops, void **impl,
                              vf_backend_info *info, char *err, size_t cap);
/* Loads the plugin (library NULL: default search); *dl receives the dlopen handle. */
vf_status vf_backend_cuda_load(const char *library, vf_backend_open_fn *open, void **dl);

#ifdef __cplusplus
}
#endif

#endif
