/* libvramfit-cuda.so: the CUDA backend's entry point, memory, transfers,
 * streams and events, and its vf_backend_ops table.
 *
 * vf_cuda_backend_open is the only exported symbol: the core dlopens this
 * library and calls it (backend/backend_cuda_loader.c), so every failure on
 * the way (no driver, no device, a device this build has no code for, a
 * library that cannot initialise) comes back as a status and a sentence,
 * with everything already created torn down again. A tiny probe kernel is
 * launched at open: "no kernel image for this device" is found then, not
 * in the middle of a generation.
 *
 * Two non-blocking streams: compute (every op, in issue order) and copy
 * (h2d_async: weight streaming). Ordering between them is by events only.
 *
 * vf_be_alloc / vf_be_free are stream-ordered (cudaMallocFromPoolAsync /
 * cudaFreeAsync on the compute stream) from a pool of our own that keeps
 * what it reserved (release threshold: never): model code frees activations
 * right after their last reader is queued, and the next allocation reuses
 * that memory in stream order without synchronising the device, as a plan
 * from lifetimes would. The pool's used / reserved high-water marks are the
 * backend's peak (mem_stats). A buffer used on the copy stream must be
 * freed only after an event from that stream was waited on by compute.
 */
#include "cuda_common.cuh"

#include <stdlib.h>
#include <string.h>

namespace {

__global__ void k_probe(int *p)
{
    if (p)
        *p = 1;
}

void be_destroy(cuda_be *be)
{
    if (!be)
        return;
    cudaSetDevice(be->device);
    if (be->compute)
        cudaStreamSynchronize(be->compute);
    if (be->copy)
        cudaStreamSynchronize(be->copy);
    if (be->expand)
        cudaStreamSynchronize(be->expand);
    cuda_conv_free(be);
    cuda_gemm_free(be);
    if (be->xfer.p)
        cudaFree(be->xfer.p);
    if (be->scratch.p)
        cudaFree(be->scratch.p);
    if (be->scratch2.p)
        cudaFree(be->scratch2.p);
    if (be->order)
        cudaEventDestroy(be->order);
    if (be->pool)
        cudaMemPoolDestroy(be->pool);
    if (be->compute)
        cudaStreamDestroy(be->compute);
    if (be->copy)
        cudaStreamDestroy(be->copy);
    if (be->expand)
        cudaStreamDestroy(be->expand);
    free(be);
}

} // namespace

static void cb_destroy(void *impl) { be_destroy((cuda_be *)impl); }
static const char *cb_last_error(void *impl) { return ((cuda_be *)impl)->err; }

static void cb_mem_info(void *impl, uint64_t *total, uint64_t *free_, uint64_t *workspace)
{
    cuda_be *be = (cuda_be *)impl;
    size_t f = 0, t = 0;
    if (cudaMemGetInfo(&f, &t) != cudaSuccess)
        f = t = 0;
    *total = t;
    *free_ = f;
    *workspace = be->lt_ws_bytes + be->xfer.bytes + be->scratch.bytes + be->scratch2.bytes + cuda_conv_workspace(be);
}

static vf_status cb_alloc(void *impl, size_t bytes, void **p)
{
    cuda_be *be = (cuda_be *)impl;
    VF_TRY(pool_get(be, bytes, p, "alloc"));
    be->alloc_bytes += bytes;
    return VF_OK;
}

static void cb_free(void *impl, void *p)
{
    /* Stream-ordered: work queued on p before this still sees it. */
    pool_put((cuda_be *)impl, p);
}

static void cb_set_allocator(void *impl, const vf_be_allocator *a)
{
    cuda_be *be = (cuda_be *)impl;
    be->has_ext = a != NULL;
    if (a)
        be->ext = *a;
}

static void cb_mem_stats(void *impl, vf_be_mem_stats *s, int reset_peak)
{
    cuda_be *be = (cuda_be *)impl;
    uint64_t v[4] = {0, 0, 0, 0};
    const cudaMemPoolAttr a[4] = {cudaMemPoolAttrUsedMemCurrent, cudaMemPoolAttrUsedMemHigh,
                                  cudaMemPoolAttrReservedMemCurrent, cudaMemPoolAttrReservedMemHigh};
    for (int i = 0; i < 4; i++)
        cudaMemPoolGetAttribute(be->pool, a[i], &v[i]);
    s->in_use = v[0];
    s->peak = v[1];
    s->reserved = v[2];
    s->reserved_peak = v[3];
    s->workspace = be->lt_ws_bytes + be->xfer.bytes + be->scratch.bytes + be->scratch2.bytes + cuda_conv_workspace(be);
    if (reset_peak) {
        uint64_t zero = 0;
        cudaMemPoolSetAttribute(be->pool, cudaMemPoolAttrUsedMemHigh, &zero);
        cudaMemPoolSetAttribute(be->pool, cudaMemPoolAttrReservedMemHigh, &zero);
    }
}

static vf_status cb_upload(void *impl, void *dst, const void *src, vf_dtype t, size_t n)
{
    return cuda_upload_convert((cuda_be *)impl, dst, src, t, n);
}

static vf_status cb_download(void *impl, float *dst, const void *src, size_t n)
{
    return cuda_download_f32((cuda_be *)impl, dst, src, n);
}

static vf_status cb_h2d_async(void *impl, void *dst, const void *src, size_t bytes)
{
    cuda_be *be = (cuda_be *)impl;
    return cu_check(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, be->copy), "h2d copy");
}

static vf_status cb_d2h(void *impl, void *dst, const void *src, size_t bytes)
{
    cuda_be *be = (cuda_be *)impl;
    CU_TRY(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, be->compute), "d2h copy");
    return cu_check(be, cudaStreamSynchronize(be->compute), "d2h copy");
}

static vf_status cb_copy(void *impl, void *dst, const void *src, size_t bytes)
{
    cuda_be *be = (cuda_be *)impl;
    return cu_check(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, be->compute), "device copy");
}

static vf_status cb_sync(void *impl)
{
    cuda_be *be = (cuda_be *)impl;
    CU_TRY(be, cudaStreamSynchronize(be->copy), "copy stream");
    CU_TRY(be, cudaStreamSynchronize(be->expand), "expand stream");
    CU_TRY(be, cudaStreamSynchronize(be->compute), "compute stream");
    return cu_check(be, cudaGetLastError(), "device");
}

static vf_status cb_event_create(void *impl, void **ev)
{
    cuda_be *be = (cuda_be *)impl;
    cudaEvent_t e;
    CU_TRY(be, cudaEventCreate(&e), "cudaEventCreate");
    *ev = (void *)e;
    return VF_OK;
}

static void cb_event_destroy(void *impl, void *ev) { cudaEventDestroy((cudaEvent_t)ev); }


static vf_status cb_record(void *impl, void *ev, vf_stream s)
{
    cuda_be *be = (cuda_be *)impl;
    return cu_check(be, cudaEventRecord((cudaEvent_t)ev, stream_of(be, s)), "cudaEventRecord");
}

static vf_status cb_wait(void *impl, vf_stream s, void *ev)
{
    cuda_be *be = (cuda_be *)impl;
    return cu_check(be, cudaStreamWaitEvent(stream_of(be, s), (cudaEvent_t)ev, 0), "cudaStreamWaitEvent");
}

static vf_status cb_event_sync(void *impl, void *ev)
{
    cuda_be *be = (cuda_be *)impl;
    return cu_check(be, cudaEventSynchronize((cudaEvent_t)ev), "cudaEventSynchronize");
}

static vf_status cb_elapsed_ms(void *impl, void *a, void *b, float *ms)
{
    cuda_be *be = (cuda_be *)impl;
    return cu_check(be, cudaEventElapsedTime(ms, (cudaEvent_t)a, (cudaEvent_t)b), "cudaEventElapsedTime");
}

static vf_status cb_reserve(void *impl, size_t bytes, void **p)
{
    cuda_be *be = (cuda_be *)impl;
    CU_TRY(be, cudaMalloc(p, bytes), "cudaMalloc");
    return VF_OK;
}

static void cb_unreserve(void *impl, void *p)
{
    cuda_be *be = (cuda_be *)impl;
    cudaStreamSynchronize(be->copy);
    cudaStreamSynchronize(be->expand);
    cudaStreamSynchronize(be->compute);
    cudaFree(p);
}

static vf_status cb_pinned_alloc(void *impl, size_t bytes, void **p)
{
    cuda_be *be = (cuda_be *)impl;
    CU_TRY(be, cudaHostAlloc(p, bytes, cudaHostAllocDefault), "cudaHostAlloc");
    return VF_OK;
}

static void cb_pinned_free(void *impl, void *p)
{
    cuda_be *be = (cuda_be *)impl;
    cudaStreamSynchronize(be->copy);
    cudaFreeHost(p);
}

static const vf_backend_ops cuda_ops = {
    VF_BACKEND_ABI,  sizeof(vf_backend_ops), cb_destroy,   cb_last_error,    cb_mem_info,
    cb_alloc,        cb_free,                cb_upload,    cb_download,      cuda_upload_fm,
    cuda_download_fm, cuda_upload_conv_weight, cb_h2d_async, cb_copy,        cb_sync,
    cb_event_create, cb_event_destroy,       cb_record,    cb_wait,          cb_event_sync,
    cb_elapsed_ms,   cuda_linear,            cuda_conv2d,  cuda_groupnorm,   cuda_layernorm,
    cuda_act,        cuda_geglu,             cuda_add,     cuda_axpby,       cuda_attention,
    cuda_upsample2x, cuda_concat,            cuda_fm_copy, cuda_fm_copy,     cuda_timestep_embedding,
    cb_mem_stats,    cb_reserve,             cb_unreserve, cb_pinned_alloc,  cb_pinned_free,
    cuda_dequant,    cb_set_allocator,       cb_d2h,       cuda_dequant_on,
};

/* The driver reserves local memory for every thread the GPU can hold:
 * stack bytes x threads per SM x SMs, 264 MiB of an H100 at the default 1 KiB
 * (bench/ctx_probe.cu), before anything of ours is allocated. Our kernels use
 * at most 32 bytes of stack (ptxas) and the cuBLAS/cuDNN kernels of a whole
 * SDXL run none past 256 (the driver peak stayed at context + arena), so the
 * limit is 256: 198 MiB more for weights under a budget. A kernel that needs
 * more still runs: the driver grows the reservation, which the driver peak
 * shows. $VF_CUDA_STACK sets other bytes, "driver" keeps the driver's. */
static vf_status set_stack_limit(cuda_be *be)
{
    const char *env = getenv("VF_CUDA_STACK");
    size_t bytes = 256;
    if (env && strcmp(env, "driver") == 0)
        return VF_OK;
    if (env && *env) {
        char *end = NULL;
        unsigned long long v = strtoull(env, &end, 10);
        if (!end || *end || v > (1u << 20))
            return be_fail(be, VF_ERR_INVALID_ARG, "VF_CUDA_STACK='%s': expected bytes (at most 1048576) or 'driver'",
                           env);
        bytes = (size_t)v;
    }
    CU_TRY(be, cudaDeviceSetLimit(cudaLimitStackSize, bytes), "cudaDeviceSetLimit(stack)");
    return VF_OK;
}

static vf_status open_device(cuda_be *be, const vf_backend_open_args *a, vf_backend_info *info)
{
    int n = 0;
    CU_TRY(be, cudaGetDeviceCount(&n), "no usable CUDA driver or device");
    if (a->device < 0 || a->device >= n)
        return be_fail(be, VF_ERR_DEVICE, "device %d requested, %d present", a->device, n);
    be->device = a->device;
    CU_TRY(be, cudaSetDevice(be->device), "cudaSetDevice");
    CU_TRY(be, cudaGetDeviceProperties(&be->prop, be->device), "cudaGetDeviceProperties");
    if (be->prop.major < 8)
        return be_fail(be, VF_ERR_UNSUPPORTED, "%s has compute capability %d.%d; 8.0 or newer is needed",
                       be->prop.name, be->prop.major, be->prop.minor);
    VF_TRY(set_stack_limit(be));
    CU_TRY(be, cudaStreamCreateWithFlags(&be->compute, cudaStreamNonBlocking), "compute stream");
    CU_TRY(be, cudaStreamCreateWithFlags(&be->copy, cudaStreamNonBlocking), "copy stream");
    CU_TRY(be, cudaStreamCreateWithFlags(&be->expand, cudaStreamNonBlocking), "expand stream");
    CU_TRY(be, cudaEventCreateWithFlags(&be->order, cudaEventDisableTiming), "event");
    cudaMemPoolProps pp;
    memset(&pp, 0, sizeof pp);
    pp.allocType = cudaMemAllocationTypePinned;
    pp.location.type = cudaMemLocationTypeDevice;
    pp.location.id = be->device;
    CU_TRY(be, cudaMemPoolCreate(&be->pool, &pp), "cudaMemPoolCreate");
    uint64_t keep = ~(uint64_t)0;
    CU_TRY(be, cudaMemPoolSetAttribute(be->pool, cudaMemPoolAttrReleaseThreshold, &keep), "memory pool threshold");
    k_probe<<<1, 1, 0, be->compute>>>(NULL);
    CU_TRY(be, cudaGetLastError(), "probe kernel (this build has no code for the device?)");
    CU_TRY(be, cudaStreamSynchronize(be->compute), "probe kernel");
    VF_TRY(cuda_gemm_init(be));
    char conv[160] = "", attn[48] = "";
    VF_TRY(cuda_conv_init(be, conv, sizeof conv));
    VF_TRY(cuda_attention_init(be, attn, sizeof attn));
    int rt = 0, drv = 0;
    cudaRuntimeGetVersion(&rt);
    cudaDriverGetVersion(&drv);
    memset(info, 0, sizeof *info);
    info->kind = VF_BACKEND_CUDA;
    info->dtype = a->dtype;
    info->fm_layout = VF_LAYOUT_NHWC;
    info->filter_layout = VF_FILTER_OHWI;
    snprintf(info->name, sizeof info->name, "cuda");
    snprintf(info->device, sizeof info->device, "%.127s", be->prop.name);
    info->cc_major = be->prop.major;
    info->cc_minor = be->prop.minor;
    info->multiprocessors = be->prop.multiProcessorCount;
    snprintf(info->features, sizeof info->features, "cudart-%d driver-%d cublasLt %.24s %.60s", rt, drv, attn, conv);
    return VF_OK;
}

extern "C" __attribute__((visibility("default"))) vf_status
vf_cuda_backend_open(const vf_backend_open_args *a, const vf_backend_ops **ops, void **impl, vf_backend_info *info,
                     char *err, size_t cap)
{
    *ops = NULL;
    *impl = NULL;
    if (!a || a->abi != VF_BACKEND_ABI) {
        snprintf(err, cap, "ABI mismatch: the core speaks %d, this library %d", a ? a->abi : -1, VF_BACKEND_ABI);
        return VF_ERR_DEVICE;
    }
    if (a->dtype != VF_DTYPE_F16 && a->dtype != VF_DTYPE_BF16) {
        snprintf(err, cap, "compute dtype %d is not supported (F16 or BF16)", (int)a->dtype);
        return VF_ERR_UNSUPPORTED;
    }
    cuda_be *be = (cuda_be *)calloc(1, sizeof(cuda_be));
    if (!be) {
        snprintf(err, cap, "out of host memory");
        return VF_ERR_NO_MEMORY;
    }
    be->dtype = a->dtype;
    vf_status st = open_device(be, a, info);
    if (st != VF_OK) {
        snprintf(err, cap, "%s", be->err);
        be_destroy(be);
        return st;
    }
    *ops = &cuda_ops;
    *impl = be;
    return VF_OK;
}
