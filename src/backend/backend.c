/* Backend dispatch: the vf_be_* wrappers model code calls.
 *
 * Each wrapper validates its arguments once, here, so that backends (the CPU
 * one and the CUDA plugin) may assume sane dims, then calls the vtable and
 * turns a failure into a vf_error message "<backend> <op>: <backend's
 * message>". The plugin cannot call vf_error itself (it does not link the
 * core), which is why errors cross the ABI as a status plus last_error().
 */
#include "backend/backend.h"

#include "core/alloc.h"
#include "core/dtype.h"
#include "core/error.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

typedef struct prof_entry {
    const char *label;
    void *a, *b;                    /* events around the op                    */
} prof_entry;

typedef struct prof {
    int on;
    prof_entry *e;
    int n, cap;
} prof;

static void prof_free(vf_backend *be);

struct vf_backend {
    const vf_backend_ops *ops;
    void *impl;
    vf_backend_info info;
    size_t esize;
    void *dl;                       /* the plugin's dlopen handle, or NULL     */
    uint64_t h2d, d2h;              /* host link bytes (vf_be_link_bytes)      */
    prof prof;                      /* the op profiler                         */
};

void vf_backend_options_init(vf_backend_options *o)
{
    memset(o, 0, sizeof *o);
    o->kind = VF_BACKEND_CPU;
    o->dtype = VF_DTYPE_COUNT;      /* the kind's default                      */
}

static int ops_complete(const vf_backend_ops *ops)
{
    /* Every entry is a function pointer after abi and size. */
    const unsigned char *p = (const unsigned char *)ops + offsetof(vf_backend_ops, destroy);
    const unsigned char *end = (const unsigned char *)ops + sizeof *ops;
    for (; p + sizeof(void (*)(void)) <= end; p += sizeof(void (*)(void))) {
        void (*fn)(void);
        memcpy(&fn, p, sizeof fn);
        if (!fn)
            return 0;
    }
    return 1;
}

static vf_status open_backend(const vf_backend_options *o, vf_backend *be)
{
    vf_backend_open_args a = {VF_BACKEND_ABI, o->dtype, o->device};
    vf_backend_open_fn open = vf_backend_cpu_open;
    char err[512] = "";
    const char *what = "CPU backend";
    if (o->kind == VF_BACKEND_CUDA) {
        what = "CUDA backend unavailable";
        if (a.dtype == VF_DTYPE_COUNT)
            a.dtype = VF_DTYPE_F16;
        VF_TRY(vf_backend_cuda_load(o->library, &open, &be->dl));
    } else if (a.dtype == VF_DTYPE_COUNT) {
        a.dtype = VF_DTYPE_F32;
    }
    vf_status st = open(&a, &be->ops, &be->impl, &be->info, err, sizeof err);
    if (st != VF_OK)
        return vf_error(st, "%s: %s", what, err[0] ? err : "unknown failure");
    if (!be->ops || be->ops->abi != VF_BACKEND_ABI || be->ops->size != sizeof(vf_backend_ops) ||
        !ops_complete(be->ops)) {
        if (be->ops && be->ops->destroy)
            be->ops->destroy(be->impl);
        be->ops = NULL;
        return vf_error(VF_ERR_DEVICE, "%s: the library's vtable does not match this vramfit (ABI %d)",
                        what, VF_BACKEND_ABI);
    }
    be->esize = vf_dtype_size(be->info.dtype);
    return VF_OK;
}

vf_status vf_backend_create(const vf_backend_options *o, vf_backend **out)
{
    vf_backend_options def;
    *out = NULL;
    if (!o) {
        vf_backend_options_init(&def);
        o = &def;
    }
    if (o->kind != VF_BACKEND_CPU && o->kind != VF_BACKEND_CUDA)
        return vf_error(VF_ERR_INVALID_ARG, "backend: unknown kind %d", (int)o->kind);
    vf_backend *be = vf_calloc(1, sizeof *be);
    if (!be)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "backend");
    vf_status st = open_backend(o, be);
    if (st != VF_OK) {
        if (be->dl)
            dlclose(be->dl);
        vf_free(be);
        return st;
    }
    *out = be;
    return VF_OK;
}

void vf_backend_free(vf_backend *be)
{
    if (!be)
        return;
    if (be->ops) {
        prof_free(be);
        be->ops->destroy(be->impl);
    }
    if (be->dl)
        dlclose(be->dl);
    vf_free(be);
}

const vf_backend_info *vf_be_info(const vf_backend *be) { return &be->info; }
vf_dtype vf_be_dtype(const vf_backend *be) { return be->info.dtype; }
size_t vf_be_esize(const vf_backend *be) { return be->esize; }
vf_fm_layout vf_be_fm_layout(const vf_backend *be) { return be->info.fm_layout; }
int vf_be_fm_is_tokens(const vf_backend *be) { return be->info.fm_layout == VF_LAYOUT_NHWC; }

void vf_be_mem_info(vf_backend *be, uint64_t *total, uint64_t *free, uint64_t *workspace)
{
    uint64_t t = 0, f = 0, w = 0;
    be->ops->mem_info(be->impl, &t, &f, &w);
    if (total)
        *total = t;
    if (free)
        *free = f;
    if (workspace)
        *workspace = w;
}

void vf_be_mem_stats_get(vf_backend *be, vf_be_mem_stats *s, int reset_peak)
{
    memset(s, 0, sizeof *s);
    be->ops->mem_stats(be->impl, s, reset_peak ? 1 : 0);
}

void vf_be_link_bytes(const vf_backend *be, uint64_t *h2d, uint64_t *d2h)
{
    if (h2d)
        *h2d = be->h2d;
    if (d2h)
        *d2h = be->d2h;
}

/* ---- argument checks ----------------------------------------------------------- */

static vf_status fail(vf_backend *be, vf_status st, const char *op)
{
    const char *m = be->ops->last_error(be->impl);
    return vf_error(st, "%s backend: %s: %s", be->info.name, op, m && m[0] ? m : "failed");
}

/* Op calls: with the profiler on (vf_be_profile_begin) each is bracketed by
 * two events on the compute stream, under label. */
#define CALLN(be, label, op, ...)                                 \
    do {                                                          \
        int pi_ = prof_start((be), (label));                      \
        vf_status st_ = (be)->ops->op((be)->impl, __VA_ARGS__);   \
        prof_stop((be), pi_);                                     \
        if (st_ != VF_OK)                                         \
            return fail((be), st_, #op);                          \
        return VF_OK;                                             \
    } while (0)
#define CALL(be, op, ...) CALLN(be, #op, op, __VA_ARGS__)
/* Event ops themselves are never profiled. */
#define CALL0(be, op, ...)                                        \
    do {                                                          \
        vf_status st_ = (be)->ops->op((be)->impl, __VA_ARGS__);   \
        if (st_ != VF_OK)                                         \
            return fail((be), st_, #op);                          \
        return VF_OK;                                             \
    } while (0)

/* The op profiler: entries of (label, start event, end event), events reused. */
static int prof_start(vf_backend *be, const char *label)
{
    prof *p = &be->prof;
    if (!p->on)
        return -1;
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 1024;
        prof_entry *e = vf_realloc(p->e, sizeof *e * (size_t)cap);
        if (!e) {
            vf_clear_error();
            return -1;
        }
        memset(e + p->cap, 0, sizeof *e * (size_t)(cap - p->cap));
        p->e = e;
        p->cap = cap;
    }
    prof_entry *e = &p->e[p->n];
    if ((!e->a && be->ops->event_create(be->impl, &e->a) != VF_OK) ||
        (!e->b && be->ops->event_create(be->impl, &e->b) != VF_OK) ||
        be->ops->record(be->impl, e->a, VF_STREAM_COMPUTE) != VF_OK)
        return -1;
    e->label = label;
    return p->n++;
}

static void prof_stop(vf_backend *be, int i)
{
    if (i >= 0)
        (void)be->ops->record(be->impl, be->prof.e[i].b, VF_STREAM_COMPUTE);
}

static void prof_free(vf_backend *be)
{
    for (int i = 0; i < be->prof.cap; i++) {
        if (be->prof.e[i].a)
            be->ops->event_destroy(be->impl, be->prof.e[i].a);
        if (be->prof.e[i].b)
            be->ops->event_destroy(be->impl, be->prof.e[i].b);
    }
    vf_free(be->prof.e);
    memset(&be->prof, 0, sizeof be->prof);
}

void vf_be_profile_begin(vf_backend *be)
{
    be->prof.on = 1;
    be->prof.n = 0;
}

vf_status vf_be_profile_end(vf_backend *be, vf_be_prof_row *rows, int cap, int *nrows)
{
    prof *p = &be->prof;
    int n = 0;
    p->on = 0;
    *nrows = 0;
    VF_TRY(vf_be_sync(be));
    for (int i = 0; i < p->n; i++) {
        float ms = 0;
        if (be->ops->elapsed_ms(be->impl, p->e[i].a, p->e[i].b, &ms) != VF_OK)
            return fail(be, VF_ERR_DEVICE, "profile");
        int r = 0;
        while (r < n && strcmp(rows[r].op, p->e[i].label) != 0)
            r++;
        if (r == n) {
            if (n == cap)
                continue;
            memset(&rows[n], 0, sizeof rows[n]);
            snprintf(rows[n].op, sizeof rows[n].op, "%s", p->e[i].label);
            n++;
        }
        rows[r].calls++;
        rows[r].ms += ms;
    }
    /* by time, largest first (few rows: insertion sort) */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && rows[j].ms > rows[j - 1].ms; j--) {
            vf_be_prof_row t = rows[j];
            rows[j] = rows[j - 1];
            rows[j - 1] = t;
        }
    p->n = 0;
    *nrows = n;
    return VF_OK;
}

static vf_status bad(const char *op, const char *what)
{
    return vf_error(VF_ERR_INVALID_ARG, "backend %s: %s", op, what);
}

/* 1 when every dim is positive and the product fits in size_t elements and bytes. */
static int dims_ok(size_t esize, int n, const int *d)
{
    size_t p = esize ? esize : 1;
    for (int i = 0; i < n; i++) {
        if (d[i] <= 0 || vf_mul_overflow(p, (size_t)d[i], &p))
            return 0;
    }
    return 1;
}

#define DIMS(be, op, ...)                                                  \
    do {                                                                   \
        const int d_[] = {__VA_ARGS__};                                    \
        if (!dims_ok((be)->esize * 4, (int)(sizeof d_ / sizeof d_[0]), d_)) \
            return bad(op, "dims must be positive and not overflow");      \
    } while (0)

#define PTRS(op, ...)                                                      \
    do {                                                                   \
        const void *p_[] = {__VA_ARGS__};                                  \
        for (size_t i_ = 0; i_ < sizeof p_ / sizeof p_[0]; i_++)            \
            if (!p_[i_])                                                   \
                return bad(op, "NULL buffer");                             \
    } while (0)

static int float_dtype(vf_dtype t)
{
    return t == VF_DTYPE_F32 || t == VF_DTYPE_F16 || t == VF_DTYPE_BF16;
}

static int act_ok(vf_act a) { return a >= VF_ACT_NONE && a <= VF_ACT_QUICK_GELU; }

/* ---- memory and transfers ------------------------------------------------------- */

vf_status vf_be_alloc(vf_backend *be, size_t n, vf_dbuf **p)
{
    size_t bytes;
    void *q = NULL;
    *p = NULL;
    if (vf_mul_overflow(n ? n : 1, be->esize, &bytes))
        return bad("alloc", "size overflows");
    vf_status st = be->ops->alloc(be->impl, bytes, &q);
    if (st != VF_OK)
        return vf_error(st, "%s backend: alloc of %zu bytes: %s", be->info.name, bytes,
                        be->ops->last_error(be->impl));
    *p = q;
    return VF_OK;
}

void vf_be_free(vf_backend *be, vf_dbuf *p)
{
    if (p)
        be->ops->free(be->impl, p);
}

vf_status vf_be_reserve(vf_backend *be, size_t bytes, void **p)
{
    *p = NULL;
    vf_status st = be->ops->reserve(be->impl, bytes ? bytes : 1, p);
    if (st != VF_OK)
        return vf_error(st, "%s backend: reserving %zu bytes: %s", be->info.name, bytes,
                        be->ops->last_error(be->impl));
    return VF_OK;
}

void vf_be_set_allocator(vf_backend *be, const vf_be_allocator *a) { be->ops->set_allocator(be->impl, a); }

void vf_be_unreserve(vf_backend *be, void *p)
{
    if (p)
        be->ops->unreserve(be->impl, p);
}

vf_status vf_be_pinned_alloc(vf_backend *be, size_t bytes, void **p)
{
    *p = NULL;
    vf_status st = be->ops->pinned_alloc(be->impl, bytes ? bytes : 1, p);
    if (st != VF_OK)
        return vf_error(st, "%s backend: page-locking %zu host bytes: %s", be->info.name, bytes,
                        be->ops->last_error(be->impl));
    return VF_OK;
}

void vf_be_pinned_free(vf_backend *be, void *p)
{
    if (p)
        be->ops->pinned_free(be->impl, p);
}

vf_status vf_be_dequant(vf_backend *be, vf_dbuf *dst, const void *src, vf_dtype fmt, int OC, int C, int KH,
                        int KW)
{
    PTRS("dequant", dst, src);
    if (fmt != VF_DTYPE_F8_E4M3 && fmt != VF_DTYPE_Q8 && fmt != VF_DTYPE_Q4)
        return bad("dequant", "format must be F8_E4M3, Q8 or Q4");
    if (OC <= 0 || C <= 0 || KH <= 0 || KW <= 0)
        return bad("dequant", "dims must be positive");
    CALL(be, dequant, dst, src, fmt, OC, C, KH, KW);
}

vf_status vf_be_dequant_on(vf_backend *be, vf_stream s, vf_dbuf *dst, const void *src, vf_dtype fmt, int OC,
                           int C, int KH, int KW)
{
    PTRS("dequant_on", dst, src);
    if (fmt != VF_DTYPE_F8_E4M3 && fmt != VF_DTYPE_Q8 && fmt != VF_DTYPE_Q4)
        return bad("dequant_on", "format must be F8_E4M3, Q8 or Q4");
    if (OC <= 0 || C <= 0 || KH <= 0 || KW <= 0)
        return bad("dequant_on", "dims must be positive");
    if (s != VF_STREAM_COMPUTE && s != VF_STREAM_COPY && s != VF_STREAM_EXPAND)
        return bad("dequant_on", "no such stream");
    CALL0(be, dequant_on, s, dst, src, fmt, OC, C, KH, KW);
}

vf_dbuf *vf_be_at(const vf_backend *be, vf_dbuf *p, size_t n)
{
    return (vf_dbuf *)((char *)p + n * be->esize);
}

const vf_dbuf *vf_be_cat(const vf_backend *be, const vf_dbuf *p, size_t n)
{
    return (const vf_dbuf *)((const char *)p + n * be->esize);
}

vf_status vf_be_upload(vf_backend *be, vf_dbuf *dst, const void *src, vf_dtype src_dtype, size_t n)
{
    PTRS("upload", dst, src);
    if (!float_dtype(src_dtype))
        return bad("upload", "source dtype must be F32, F16 or BF16");
    if (n == 0)
        return VF_OK;
    be->h2d += n * vf_dtype_size(src_dtype);
    CALL(be, upload, dst, src, src_dtype, n);
}

vf_status vf_be_download(vf_backend *be, float *dst, const vf_dbuf *src, size_t n)
{
    PTRS("download", dst, src);
    if (n == 0)
        return VF_OK;
    be->d2h += n * sizeof(float);
    CALL(be, download, dst, src, n);
}

vf_status vf_be_upload_fm(vf_backend *be, vf_dbuf *dst, const float *src, int B, int C, int H, int W)
{
    PTRS("upload_fm", dst, src);
    DIMS(be, "upload_fm", B, C, H, W);
    be->h2d += (uint64_t)B * C * H * W * sizeof(float);
    CALL(be, upload_fm, dst, src, B, C, H, W);
}

vf_status vf_be_download_fm(vf_backend *be, float *dst, const vf_dbuf *src, int B, int C, int H, int W)
{
    PTRS("download_fm", dst, src);
    DIMS(be, "download_fm", B, C, H, W);
    be->d2h += (uint64_t)B * C * H * W * sizeof(float);
    CALL(be, download_fm, dst, src, B, C, H, W);
}

vf_status vf_be_upload_conv_weight(vf_backend *be, vf_dbuf *dst, const void *src, vf_dtype src_dtype,
                                   int OC, int C, int KH, int KW)
{
    PTRS("upload_conv_weight", dst, src);
    DIMS(be, "upload_conv_weight", OC, C, KH, KW);
    if (!float_dtype(src_dtype))
        return bad("upload_conv_weight", "source dtype must be F32, F16 or BF16");
    be->h2d += (uint64_t)OC * C * KH * KW * vf_dtype_size(src_dtype);
    CALL(be, upload_conv_weight, dst, src, src_dtype, OC, C, KH, KW);
}

vf_status vf_be_h2d_async(vf_backend *be, vf_dbuf *dst, const void *src, size_t bytes)
{
    PTRS("h2d_async", dst, src);
    if (bytes == 0)
        return VF_OK;
    be->h2d += bytes;
    CALL(be, h2d_async, dst, src, bytes);
}

vf_status vf_be_d2h(vf_backend *be, void *dst, const vf_dbuf *src, size_t bytes)
{
    PTRS("d2h", dst, src);
    if (bytes == 0)
        return VF_OK;
    be->d2h += bytes;
    CALL(be, d2h, dst, src, bytes);
}

vf_status vf_be_copy(vf_backend *be, vf_dbuf *dst, const vf_dbuf *src, size_t n)
{
    size_t bytes;
    PTRS("copy", dst, src);
    if (vf_mul_overflow(n, be->esize, &bytes))
        return bad("copy", "size overflows");
    if (n == 0 || dst == src)
        return VF_OK;
    CALL(be, copy, dst, src, bytes);
}

vf_status vf_be_sync(vf_backend *be)
{
    vf_status st = be->ops->sync(be->impl);
    return st == VF_OK ? VF_OK : fail(be, st, "sync");
}

/* ---- events ------------------------------------------------------------------------- */

vf_status vf_be_event_create(vf_backend *be, vf_bevent **ev)
{
    void *e = NULL;
    *ev = NULL;
    vf_status st = be->ops->event_create(be->impl, &e);
    if (st != VF_OK)
        return fail(be, st, "event_create");
    *ev = e;
    return VF_OK;
}

void vf_be_event_destroy(vf_backend *be, vf_bevent *ev)
{
    if (ev)
        be->ops->event_destroy(be->impl, ev);
}

vf_status vf_be_record(vf_backend *be, vf_bevent *ev, vf_stream s)
{
    PTRS("record", ev);
    CALL0(be, record, ev, s);
}

vf_status vf_be_wait(vf_backend *be, vf_stream s, vf_bevent *ev)
{
    PTRS("wait", ev);
    CALL0(be, wait, s, ev);
}

vf_status vf_be_event_sync(vf_backend *be, vf_bevent *ev)
{
    PTRS("event_sync", ev);
    CALL0(be, event_sync, ev);
}

vf_status vf_be_elapsed_ms(vf_backend *be, vf_bevent *start, vf_bevent *end, float *ms)
{
    PTRS("elapsed_ms", start, end, ms);
    CALL0(be, elapsed_ms, start, end, ms);
}

/* ---- compute ----------------------------------------------------------------------- */

vf_status vf_be_linear(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, const vf_dbuf *w, const vf_dbuf *b,
                       const vf_dbuf *r, int M, int K, int N, vf_act act)
{
    PTRS("linear", y, x, w);
    DIMS(be, "linear", M, K);
    DIMS(be, "linear", M, N);
    DIMS(be, "linear", N, K);
    if (!act_ok(act))
        return bad("linear", "unknown activation");
    if (r && act != VF_ACT_NONE)
        return bad("linear", "a residual and an activation cannot be fused together");
    if ((const void *)y == (const void *)x)
        return bad("linear", "y must not alias x");
    CALL(be, linear, y, x, w, b, r, M, K, N, act);
}

vf_status vf_be_conv2d(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, const vf_dbuf *w, const vf_dbuf *b,
                       const vf_dbuf *r, int B, int C, int H, int W, int OC, int KH, int KW, int stride,
                       int pad)
{
    PTRS("conv2d", y, x, w);
    DIMS(be, "conv2d", B, C, H, W);
    DIMS(be, "conv2d", OC, C, KH, KW);
    if (stride <= 0 || pad < 0 || H + 2 * pad < KH || W + 2 * pad < KW)
        return bad("conv2d", "stride, padding and kernel size leave no output");
    int OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    DIMS(be, "conv2d", B, OC, OH, OW);
    if ((const void *)y == (const void *)x || (r && (const void *)r == (const void *)x))
        return bad("conv2d", "y and r must not alias x");
    CALLN(be, KH == 1 && KW == 1 ? "conv1x1" : "conv3x3+", conv2d, y, x, w, b, r, B, C, H, W, OC, KH, KW,
          stride, pad);
}

vf_status vf_be_groupnorm(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, const vf_dbuf *gamma,
                          const vf_dbuf *beta, const vf_dbuf *cb, int B, int C, int HW, int G, float eps,
                          int silu)
{
    PTRS("groupnorm", y, x, gamma, beta);
    DIMS(be, "groupnorm", B, C, HW);
    if (G <= 0 || C % G != 0)
        return bad("groupnorm", "the group count must divide the channels");
    CALL(be, groupnorm, y, x, gamma, beta, cb, B, C, HW, G, eps, silu ? 1 : 0);
}

vf_status vf_be_layernorm(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, const vf_dbuf *gamma,
                          const vf_dbuf *beta, int rows, int C, float eps)
{
    PTRS("layernorm", y, x, gamma, beta);
    DIMS(be, "layernorm", rows, C);
    CALL(be, layernorm, y, x, gamma, beta, rows, C, eps);
}

vf_status vf_be_act(vf_backend *be, vf_dbuf *x, size_t n, vf_act act)
{
    PTRS("act", x);
    if (!act_ok(act))
        return bad("act", "unknown activation");
    if (n == 0 || act == VF_ACT_NONE)
        return VF_OK;
    CALL(be, act, x, n, act);
}

vf_status vf_be_geglu(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, int rows, int inner)
{
    PTRS("geglu", y, x);
    DIMS(be, "geglu", rows, inner, 2);
    CALL(be, geglu, y, x, rows, inner);
}

vf_status vf_be_add(vf_backend *be, vf_dbuf *y, const vf_dbuf *a, size_t n)
{
    PTRS("add", y, a);
    if (n == 0)
        return VF_OK;
    CALL(be, add, y, a, n);
}

vf_status vf_be_axpby(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, size_t n, float alpha, float beta)
{
    PTRS("axpby", y, x);
    if (n == 0)
        return VF_OK;
    CALL(be, axpby, y, x, n, alpha, beta);
}

vf_status vf_be_attention(vf_backend *be, vf_dbuf *o, const vf_dbuf *q, const vf_dbuf *k,
                          const vf_dbuf *v, int B, int Lq, int Lk, int H, int D, int ldq, int ldk,
                          int ldv, int ldo, int causal, float scale)
{
    PTRS("attention", o, q, k, v);
    DIMS(be, "attention", B, Lq, H, D);
    DIMS(be, "attention", B, Lk, H, D);
    int hd = H * D;
    ldq = ldq ? ldq : hd;
    ldk = ldk ? ldk : hd;
    ldv = ldv ? ldv : hd;
    ldo = ldo ? ldo : hd;
    if (ldq < hd || ldk < hd || ldv < hd || ldo < hd)
        return bad("attention", "a token stride is smaller than H*D");
    DIMS(be, "attention", B, Lq, ldq);
    DIMS(be, "attention", B, Lk, ldk > ldv ? ldk : ldv);
    DIMS(be, "attention", B, Lq, ldo);
    CALLN(be, Lq == Lk ? "attention" : "attention(cross)", attention, o, q, k, v, B, Lq, Lk, H, D, ldq, ldk,
          ldv, ldo, causal ? 1 : 0, scale);
}

vf_status vf_be_upsample2x(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, int B, int C, int H, int W)
{
    PTRS("upsample2x", y, x);
    DIMS(be, "upsample2x", B, C, H, W, 4);
    CALL(be, upsample2x, y, x, B, C, H, W);
}

vf_status vf_be_concat(vf_backend *be, vf_dbuf *y, const vf_dbuf *a, int Ca, const vf_dbuf *b, int Cb,
                       int B, int HW)
{
    PTRS("concat", y, a, b);
    DIMS(be, "concat", B, Ca, HW);
    DIMS(be, "concat", B, Cb, HW);
    if (Ca > INT32_MAX - Cb)
        return bad("concat", "channel count overflows");
    DIMS(be, "concat", B, Ca + Cb, HW);
    CALL(be, concat, y, a, Ca, b, Cb, B, HW);
}

vf_status vf_be_fm_to_tokens(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, int B, int C, int HW)
{
    PTRS("fm_to_tokens", y, x);
    DIMS(be, "fm_to_tokens", B, C, HW);
    CALL(be, fm_to_tokens, y, x, B, C, HW);
}

vf_status vf_be_tokens_to_fm(vf_backend *be, vf_dbuf *y, const vf_dbuf *x, int B, int C, int HW)
{
    PTRS("tokens_to_fm", y, x);
    DIMS(be, "tokens_to_fm", B, C, HW);
    CALL(be, tokens_to_fm, y, x, B, C, HW);
}

vf_status vf_be_timestep_embedding(vf_backend *be, vf_dbuf *out, const float *t, int B, int dim,
                                   int flip_sin_to_cos, float downscale_freq_shift)
{
    PTRS("timestep_embedding", out, t);
    DIMS(be, "timestep_embedding", B, dim);
    if (dim < 2)
        return bad("timestep_embedding", "dim must be at least 2");
    CALL(be, timestep_embedding, out, t, B, dim, flip_sin_to_cos, downscale_freq_shift);
}

// src is (OC,C,KH,KW), dst (OC,KH,KW,C); elements of esize bytes
void vf_conv_weight_to_ohwi(void *dst, const void *src, size_t esize, int OC, int C, int KH, int KW)
{
    const char *s = src;
    char *d = dst;
    size_t khw = (size_t)KH * KW;
    for (int o = 0; o < OC; o++)
        for (int c = 0; c < C; c++)
            for (size_t k = 0; k < khw; k++)
                memcpy(d + (((size_t)o * khw + k) * C + c) * esize,
                       s + (((size_t)o * C + c) * khw + k) * esize, esize);
}
