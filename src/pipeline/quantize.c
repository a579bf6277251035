/* `vramfit quantize`: rewriting a checkpoint with quantized weights (see
 * quantize.h for what is written and why).
 *
 * The checkpoint is opened the ordinary way first, which validates the input
 * and tells, for every stored tensor, the component it belongs to and whether
 * some layout reads it transposed (those stay unpacked: a packed tensor is
 * quantized along its stored rows). Each weight file is then rewritten tensor
 * by tensor in file order through the streaming writer; only a chunk of rows
 * is ever in memory. A folder is copied file by file beside the output and
 * renamed into place; the weight files the checkpoint opened are rewritten,
 * other weight files (unused variants, pickles) are left out, everything else
 * (configs, tokenizer, scheduler, shard indexes) is copied as it is.
 */
#include "pipeline/quantize.h"
#include "core/alloc.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/quant.h"
#include "io/checkpoint.h"
#include "io/json.h"
#include "io/outdir.h"
#include "io/safetensors.h"
#include "model/blocks.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK_ELEMS ((size_t)1 << 20) /* float32 values converted at a time (4 MB)     */
#define COPY_BYTES ((size_t)4 << 20)  /* bytes copied at a time                        */
#define MAX_DEPTH 8                   /* folder levels copied below the model folder   */

void vf_quantize_options_init(vf_quantize_options *o)
{
    memset(o, 0, sizeof *o);
    o->dtype = VF_DTYPE_Q8;
}

static const struct {
    const char *name;
    vf_dtype t;
} g_dtypes[] = {
    {"f16", VF_DTYPE_F16}, {"bf16", VF_DTYPE_BF16}, {"f8", VF_DTYPE_F8_E4M3}, {"q8", VF_DTYPE_Q8},
    {"q4", VF_DTYPE_Q4},
};

vf_status vf_quantize_dtype_parse(const char *name, vf_dtype *out)
{
    for (size_t i = 0; name && i < sizeof g_dtypes / sizeof g_dtypes[0]; i++) {
        if (strcasecmp(name, g_dtypes[i].name) == 0) {
            *out = g_dtypes[i].t;
            return VF_OK;
        }
    }
    return vf_error(VF_ERR_INVALID_ARG, "dtype '%s': expected f16, bf16, f8, q8 or q4", name ? name : "(null)");
}

static vf_status component_bits(const char *s, size_t n, unsigned *mask)
{
    static const struct {
        const char *name;
        unsigned bits;
    } names[] = {
        {"unet", 1u << VF_COMPONENT_UNET},
        {"vae", 1u << VF_COMPONENT_VAE},
        {"text", (1u << VF_COMPONENT_TEXT_ENCODER) | (1u << VF_COMPONENT_TEXT_ENCODER_2)},
        {"text_encoder", 1u << VF_COMPONENT_TEXT_ENCODER},
        {"text_encoder_2", 1u << VF_COMPONENT_TEXT_ENCODER_2},
    };
    while (n > 0 && *s == ' ')
        s++, n--;
    while (n > 0 && s[n - 1] == ' ')
        n--;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strlen(names[i].name) == n && strncmp(s, names[i].name, n) == 0) {
            *mask |= names[i].bits;
            return VF_OK;
        }
    }
    return vf_error(VF_ERR_INVALID_ARG, "components: %s '%.*s' (expected unet, text, text_encoder, "
                    "text_encoder_2 or vae, separated by commas)", n ? "unknown component" : "empty entry",
                    (int)n, s);
}

vf_status vf_quantize_components_parse(const char *list, unsigned *mask)
{
    if (!list || !mask)
        return vf_error(VF_ERR_INVALID_ARG, "components: no list given");
    unsigned m = 0;
    for (const char *p = list;;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        VF_TRY(component_bits(p, n, &m));
        if (!e)
            break;
        p = e + 1;
    }
    *mask = m;
    return VF_OK;
}

/* ---- what happens to each stored tensor ------------------------------------------------- */

/* A stored tensor as the checkpoint maps it. */
typedef struct src_info {
    const vf_st_tensor *src;
    int comp;
    int transposed;               /* some canonical view reads it transposed */
    int unpacked;                 /* a weight vf_weight_stays_unpacked names */
} src_info;

typedef struct qz {
    const vf_quantize_options *o;
    unsigned mask;
    vf_checkpoint *ck;
    vf_quantize_stats *stats;
    src_info *info;               /* sorted by src pointer */
    size_t ninfo;
    uint64_t by_dtype[VF_DTYPE_COUNT]; /* input float bytes, for source_dtype */
} qz;

static int cmp_src(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const src_info *)a)->src, y = (uintptr_t)((const src_info *)b)->src;
    return x < y ? -1 : x > y;
}

/* Indexes every canonical tensor by the stored tensor it views. */
static vf_status build_info(qz *z)
{
    size_t n = 0;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++)
        n += vf_checkpoint_count(z->ck, (vf_component)c);
    z->info = vf_calloc(n ? n : 1, sizeof *z->info);
    if (!z->info)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "quantize: %zu tensors", n);
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        for (size_t i = 0; i < vf_checkpoint_count(z->ck, (vf_component)c); i++) {
            const vf_ckpt_tensor *t = vf_checkpoint_at(z->ck, (vf_component)c, i);
            z->info[z->ninfo++] =
                (src_info){t->src, c, t->transpose, vf_weight_stays_unpacked((vf_component)c, t->name)};
        }
    }
    qsort(z->info, z->ninfo, sizeof *z->info, cmp_src);
    /* several views of one stored tensor (fused q/k/v): one entry */
    size_t k = 0;
    for (size_t i = 0; i < z->ninfo; i++) {
        if (k && z->info[k - 1].src == z->info[i].src) {
            z->info[k - 1].transposed |= z->info[i].transposed;
            z->info[k - 1].unpacked |= z->info[i].unpacked;
        } else {
            z->info[k++] = z->info[i];
        }
    }
    z->ninfo = k;
    return VF_OK;
}

static const src_info *lookup(const qz *z, const vf_st_tensor *t)
{
    src_info key = {t, 0, 0, 0};
    return bsearch(&key, z->info, z->ninfo, sizeof *z->info, cmp_src);
}

typedef enum act_kind { ACT_COPY = 0, ACT_CONVERT, ACT_PACK } act_kind;

typedef struct tplan {
    act_kind act;
    vf_dtype out;                 /* written dtype (the format for ACT_PACK) */
    int64_t rows, cols;           /* logical (shape[0], rest)                */
} tplan;

static tplan decide(const qz *z, const vf_st_tensor *t)
{
    tplan p = {ACT_COPY, t->dtype, t->ndim ? t->shape[0] : 1, 1};
    for (int d = 1; d < t->ndim; d++)
        p.cols *= t->shape[d];
    const src_info *info = lookup(z, t);
    vf_dtype fmt = z->o->dtype;
    int floaty = t->packed || vf_dtype_is_float(t->dtype);
    if (!info || !(z->mask & (1u << info->comp)) || !floaty || p.rows * p.cols == 0)
        return p;
    if (vf_quant_is_packed(fmt) && !info->transposed && !info->unpacked && vf_quant_can(fmt, t->ndim, t->shape)) {
        if (!(t->packed && t->dtype == fmt))
            p.act = ACT_PACK, p.out = fmt;
    } else if (vf_quant_is_packed(fmt)) {
        if (t->packed)
            p.act = ACT_CONVERT, p.out = VF_DTYPE_F16; /* cannot stay packed in this format */
    } else if (t->packed || t->dtype != fmt) {
        p.act = ACT_CONVERT, p.out = fmt;
    }
    return p;
}

static int writes_packed(const vf_st_tensor *t, const tplan *p)
{
    return p->act == ACT_PACK || (p->act == ACT_COPY && t->packed);
}

static void out_spec(const vf_st_tensor *t, const tplan *p, vf_st_write_tensor *w)
{
    memset(w, 0, sizeof *w);
    w->name = t->name;
    if (writes_packed(t, p)) {
        w->dtype = VF_DTYPE_U8;
        w->ndim = 1;
        w->shape[0] = p->act == ACT_PACK ? (int64_t)vf_quant_packed_bytes(p->out, p->rows, p->cols)
                                         : (int64_t)t->nbytes;
        return;
    }
    w->dtype = p->out;
    w->ndim = t->ndim;
    memcpy(w->shape, t->shape, sizeof w->shape);
}

/* ---- metadata ------------------------------------------------------------------------------- */

#define DTYPE_KEY "vramfit.dtype."
#define SHAPE_KEY "vramfit.shape."

/* key/value list: format, vramfit.format, vramfit.source_dtype, then two pairs
 * per packed tensor; strings in one allocation (*arena). */
static vf_status build_meta(vf_st_file *in, const tplan *plans, vf_dtype source, const char ***meta,
                            char **arena)
{
    size_t n = vf_st_count(in), npacked = 0, chars = 0;
    for (size_t i = 0; i < n; i++) {
        const vf_st_tensor *t = vf_st_at(in, i);
        if (!writes_packed(t, &plans[i]))
            continue;
        npacked++;
        chars += 2 * (strlen(t->name) + sizeof DTYPE_KEY) + 16 + 4 * 24;
    }
    *meta = vf_calloc(2 * (3 + 2 * npacked) + 1, sizeof **meta);
    *arena = vf_malloc(chars + 1);
    if (!*meta || !*arena)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: metadata", vf_st_path(in));
    const char **m = *meta;
    char *at = *arena;
    size_t k = 0;
    m[k++] = "format", m[k++] = "pt";
    m[k++] = "vramfit.format", m[k++] = "1";
    m[k++] = "vramfit.source_dtype", m[k++] = vf_dtype_name(source);
    for (size_t i = 0; i < n; i++) {
        const vf_st_tensor *t = vf_st_at(in, i);
        if (!writes_packed(t, &plans[i]))
            continue;
        vf_dtype fmt = plans[i].act == ACT_PACK ? plans[i].out : t->dtype;
        m[k++] = at;
        at += sprintf(at, DTYPE_KEY "%s", t->name) + 1;
        m[k++] = vf_dtype_name(fmt);
        m[k++] = at;
        at += sprintf(at, SHAPE_KEY "%s", t->name) + 1;
        m[k++] = at;
        at += sprintf(at, "[");
        for (int d = 0; d < t->ndim; d++)
            at += sprintf(at, d ? ", %lld" : "%lld", (long long)t->shape[d]);
        at += sprintf(at, "]") + 1;
    }
    m[k] = NULL;
    return VF_OK;
}

/* The float dtype most of a file's weight bytes are in. */
static vf_dtype file_source_dtype(qz *z, vf_st_file *in)
{
    uint64_t by[VF_DTYPE_COUNT] = {0};
    for (size_t i = 0; i < vf_st_count(in); i++) {
        const vf_st_tensor *t = vf_st_at(in, i);
        if (t->packed || vf_dtype_is_float(t->dtype)) {
            by[t->dtype] += t->nbytes;
            z->by_dtype[t->dtype] += t->nbytes;
        }
    }
    int best = VF_DTYPE_F32;
    for (int d = 0; d < VF_DTYPE_COUNT; d++)
        if (by[d] > by[best])
            best = d;
    return (vf_dtype)best;
}

/* ---- writing one tensor ----------------------------------------------------------------------- */

static vf_status write_copy(vf_st_file *in, const vf_st_tensor *t, vf_st_writer *w)
{
    size_t cap = t->nbytes < COPY_BYTES ? (size_t)t->nbytes : COPY_BYTES;
    unsigned char *buf = vf_malloc(cap ? cap : 1);
    if (!buf)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: tensor '%s'", vf_st_path(in), t->name);
    vf_status st = VF_OK;
    for (uint64_t off = 0; off < t->nbytes && st == VF_OK; off += cap) {
        size_t n = t->nbytes - off < cap ? (size_t)(t->nbytes - off) : cap;
        st = vf_st_read(in, t, off, buf, n);
        if (st == VF_OK)
            st = vf_st_writer_write(w, buf, n);
    }
    vf_free(buf);
    return st;
}

/* Buffers of one converted tensor: a chunk of rows in float32, as read, and as written. */
typedef struct chunk {
    int64_t rows;                 /* rows per chunk                       */
    float *f32;
    unsigned char *raw, *out;
    unsigned char *scales;        /* ACT_PACK: the whole scale plane      */
    size_t in_dr, in_sr;          /* packed input layout                  */
    size_t out_dr, out_sr;        /* packed output layout                 */
} chunk;

static void chunk_free(chunk *c)
{
    vf_free(c->f32);
    vf_free(c->raw);
    vf_free(c->out);
    vf_free(c->scales);
}

static vf_status chunk_alloc(chunk *c, const vf_st_tensor *t, const tplan *p, const char *path)
{
    memset(c, 0, sizeof *c);
    c->rows = (int64_t)(CHUNK_ELEMS / (size_t)p->cols);
    if (c->rows < 1)
        c->rows = 1;
    if (c->rows > p->rows)
        c->rows = p->rows;
    size_t n = (size_t)(c->rows * p->cols), raw = n * 8;
    if (t->packed) {
        vf_quant_layout(t->dtype, p->cols, &c->in_dr, &c->in_sr);
        size_t need = (size_t)c->rows * (c->in_dr + c->in_sr);
        raw = need > raw ? need : raw;
    }
    c->f32 = vf_malloc(n * sizeof *c->f32);
    c->raw = vf_malloc(raw);
    c->out = vf_malloc(vf_quant_packed_bytes(p->out, c->rows, p->cols));
    int ok = c->f32 && c->raw && c->out;
    if (ok && p->act == ACT_PACK) {
        vf_quant_layout(p->out, p->cols, &c->out_dr, &c->out_sr);
        c->scales = vf_malloc((size_t)p->rows * c->out_sr);
        ok = c->scales != NULL;
    }
    if (!ok) {
        chunk_free(c);
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: tensor '%s'", path, t->name);
    }
    return VF_OK;
}

/* Rows [r0, r0+n) of stored tensor t as float32 in c->f32. */
static vf_status read_rows(vf_st_file *in, const vf_st_tensor *t, const tplan *p, chunk *c, int64_t r0, int64_t n)
{
    if (t->packed) {
        VF_TRY(vf_st_read(in, t, (uint64_t)r0 * c->in_dr, c->raw, (uint64_t)n * c->in_dr));
        VF_TRY(vf_st_read(in, t, (uint64_t)p->rows * c->in_dr + (uint64_t)r0 * c->in_sr, c->raw + n * c->in_dr,
                          (uint64_t)n * c->in_sr));
        return vf_dequantize(t->dtype, c->raw, n, p->cols, c->f32);
    }
    size_t es = vf_dtype_size(t->dtype), cnt = (size_t)(n * p->cols);
    VF_TRY(vf_st_read(in, t, (uint64_t)r0 * (uint64_t)p->cols * es, c->raw, cnt * es));
    vf_convert_to_f32(c->f32, c->raw, t->dtype, cnt);
    return VF_OK;
}

/* A NaN or infinity in the chunk, named by its row and column in the tensor. */
static vf_status check_finite(const char *path, const vf_st_tensor *t, const tplan *p, const chunk *c, int64_t r0,
                              int64_t n)
{
    size_t cnt = (size_t)(n * p->cols);
    for (size_t i = 0; i < cnt; i++) {
        float v = c->f32[i];
        if (v - v != 0)
            return vf_error(VF_ERR_NONFINITE, "%s: tensor '%s': %s at row %lld, column %lld", path, t->name,
                            v != v ? "NaN" : "infinity", (long long)(r0 + (int64_t)i / p->cols),
                            (long long)((int64_t)i % p->cols));
    }
    return VF_OK;
}

static vf_status write_rows(vf_st_file *in, const vf_st_tensor *t, const tplan *p, chunk *c, vf_st_writer *w)
{
    const char *path = vf_st_path(in);
    for (int64_t r0 = 0; r0 < p->rows; r0 += c->rows) {
        int64_t n = p->rows - r0 < c->rows ? p->rows - r0 : c->rows;
        VF_TRY(read_rows(in, t, p, c, r0, n));
        VF_TRY(check_finite(path, t, p, c, r0, n));
        vf_status st = vf_quantize(p->out, c->f32, n, p->cols, c->out);
        if (st != VF_OK)
            return vf_error_prefix(st, "%s: tensor '%s': from row %lld", path, t->name, (long long)r0);
        if (p->act != ACT_PACK) {
            VF_TRY(vf_st_writer_write(w, c->out, vf_quant_packed_bytes(p->out, n, p->cols)));
            continue;
        }
        VF_TRY(vf_st_writer_write(w, c->out, (size_t)n * c->out_dr));
        memcpy(c->scales + (size_t)r0 * c->out_sr, c->out + (size_t)n * c->out_dr, (size_t)n * c->out_sr);
    }
    if (p->act == ACT_PACK)
        VF_TRY(vf_st_writer_write(w, c->scales, (size_t)p->rows * c->out_sr));
    return VF_OK;
}

static vf_status write_tensor(vf_st_file *in, const vf_st_tensor *t, const tplan *p, vf_st_writer *w)
{
    if (p->act == ACT_COPY)
        return write_copy(in, t, w);
    chunk c;
    VF_TRY(chunk_alloc(&c, t, p, vf_st_path(in)));
    vf_status st = write_rows(in, t, p, &c, w);
    chunk_free(&c);
    return st;
}

/* ---- one weight file -------------------------------------------------------------------------- */

static void count(qz *z, const vf_st_tensor *t, const tplan *p, const vf_st_write_tensor *spec)
{
    vf_quantize_stats *s = z->stats;
    uint64_t nb = 0;
    vf_shape_nbytes(spec->shape, spec->ndim, spec->dtype, &nb);
    s->tensors++;
    s->packed += p->act == ACT_PACK;
    s->converted += p->act == ACT_CONVERT;
    s->bytes_in += t->nbytes;
    s->bytes_out += nb;
}

static vf_status write_file(qz *z, vf_st_file *in, const char *outpath)
{
    size_t n = vf_st_count(in);
    tplan *plans = vf_calloc(n ? n : 1, sizeof *plans);
    vf_st_write_tensor *specs = vf_calloc(n ? n : 1, sizeof *specs);
    const char **meta = NULL;
    char *arena = NULL;
    vf_st_writer *w = NULL;
    vf_status st = plans && specs ? VF_OK : vf_error_prefix(VF_ERR_NO_MEMORY, "%s", vf_st_path(in));
    uint64_t total = 0;
    for (size_t i = 0; st == VF_OK && i < n; i++) {
        plans[i] = decide(z, vf_st_at(in, i));
        out_spec(vf_st_at(in, i), &plans[i], &specs[i]);
        uint64_t nb = 0;
        vf_shape_nbytes(specs[i].shape, specs[i].ndim, specs[i].dtype, &nb);
        total += nb;
    }
    if (st == VF_OK)
        st = build_meta(in, plans, file_source_dtype(z, in), &meta, &arena);
    if (st == VF_OK)
        st = vf_st_writer_open(outpath, specs, n, meta, &w);
    for (size_t i = 0; st == VF_OK && i < n; i++) {
        const vf_st_tensor *t = vf_st_at(in, i);
        st = write_tensor(in, t, &plans[i], w);
        if (st != VF_OK)
            break;
        count(z, t, &plans[i], &specs[i]);
        if (z->o->progress)
            z->o->progress(z->o->user, outpath, total - vf_st_writer_remaining(w), total);
    }
    if (st == VF_OK) {
        st = vf_st_writer_close(w);
        z->stats->files += st == VF_OK;
    } else if (w) {
        vf_st_writer_abort(w);
    }
    vf_free(plans);
    vf_free(specs);
    vf_free(meta);
    vf_free(arena);
    return st;
}

/* ---- folders ---------------------------------------------------------------------------------- */

static int is_weight_name(const char *name)
{
    static const char *const ext[] = {".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".pkl", ".msgpack",
                                      ".onnx", ".h5", ".gguf", ".onnx_data"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
        size_t k = strlen(ext[i]);
        if (n >= k && strcmp(name + n - k, ext[i]) == 0)
            return 1;
    }
    return 0;
}

/* The opened weight file that is the file sb describes, or NULL. */
static vf_st_file *opened_file(const qz *z, const struct stat *sb)
{
    for (size_t i = 0; i < vf_checkpoint_file_count(z->ck); i++) {
        vf_st_file *f = vf_checkpoint_file(z->ck, i);
        struct stat fs;
        if (stat(vf_st_path(f), &fs) == 0 && fs.st_dev == sb->st_dev && fs.st_ino == sb->st_ino)
            return f;
    }
    return NULL;
}

static vf_status copy_file(qz *z, const char *src, const char *dst)
{
    unsigned char *buf = vf_malloc(COPY_BYTES);
    if (!buf)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", src);
    vf_status st = VF_OK;
    int in = open(src, O_RDONLY | O_CLOEXEC), out = -1;
    if (in < 0)
        st = vf_error(VF_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    if (st == VF_OK && (out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0)
        st = vf_error(VF_ERR_IO, "%s: cannot create: %s", dst, strerror(errno));
    while (st == VF_OK) {
        ssize_t r = read(in, buf, COPY_BYTES);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            st = vf_error(VF_ERR_IO, "%s: read failed: %s", src, strerror(errno));
        if (r <= 0)
            break;
        for (ssize_t o = 0; st == VF_OK && o < r;) {
            ssize_t k = write(out, buf + o, (size_t)(r - o));
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0)
                st = vf_error(VF_ERR_IO, "%s: write failed: %s", dst, strerror(errno));
            else
                o += k;
        }
    }
    if (out >= 0 && close(out) != 0 && st == VF_OK)
        st = vf_error(VF_ERR_IO, "%s: close failed: %s", dst, strerror(errno));
    if (in >= 0)
        close(in);
    vf_free(buf);
    if (st == VF_OK)
        z->stats->copied_files++;
    return st;
}

static vf_status copy_tree(qz *z, const char *src, const char *dst, const struct stat *skip, int depth);

static vf_status copy_entry(qz *z, const char *src, const char *dst, const char *name, const struct stat *skip,
                            int depth)
{
    struct stat sb;
    if (stat(src, &sb) != 0)
        return vf_error(VF_ERR_IO, "%s: %s", src, strerror(errno));
    if (sb.st_dev == skip->st_dev && sb.st_ino == skip->st_ino)
        return VF_OK; /* the folder being written, inside the input */
    if (S_ISDIR(sb.st_mode)) {
        if (depth >= MAX_DEPTH)
            return VF_OK;
        if (mkdir(dst, 0755) != 0)
            return vf_error(VF_ERR_IO, "%s: cannot create: %s", dst, strerror(errno));
        return copy_tree(z, src, dst, skip, depth + 1);
    }
    if (!S_ISREG(sb.st_mode))
        return VF_OK;
    vf_st_file *f = opened_file(z, &sb);
    if (f)
        return write_file(z, f, dst);
    if (is_weight_name(name))
        return VF_OK; /* a variant or format the checkpoint does not use */
    return copy_file(z, src, dst);
}

static vf_status copy_tree(qz *z, const char *src, const char *dst, const struct stat *skip, int depth)
{
    DIR *d = opendir(src);
    if (!d)
        return vf_error(VF_ERR_IO, "%s: cannot read the folder: %s", src, strerror(errno));
    vf_status st = VF_OK;
    for (struct dirent *e; st == VF_OK && (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue; /* ".", "..", and hidden (.git, .cache) */
        char *s = vf_path_join(src, e->d_name), *t = s ? vf_path_join(dst, e->d_name) : NULL;
        st = t ? copy_entry(z, s, t, e->d_name, skip, depth) : vf_error_prefix(VF_ERR_NO_MEMORY, "%s", src);
        vf_free(s);
        vf_free(t);
    }
    closedir(d);
    return st;
}

/* What OUTPUT is now, and whether it may be written (quantize.h). */
static vf_status check_target(const char *input, const char *output, int folder, int force, vf_outdir_state *state)
{
    struct stat in, out;
    *state = VF_OUTDIR_ABSENT;
    if (stat(output, &out) != 0) {
        if (errno != ENOENT)
            return vf_error(VF_ERR_IO, "%s: %s", output, strerror(errno));
        return VF_OK;
    }
    if (stat(input, &in) == 0 && in.st_dev == out.st_dev && in.st_ino == out.st_ino)
        return vf_error(VF_ERR_INVALID_ARG, "%s: the output is the input; write to another path", output);
    if (!folder) {
        if (!S_ISREG(out.st_mode))
            return vf_error(VF_ERR_INVALID_ARG, "%s: exists and is not a file", output);
        if (!force)
            return vf_error(VF_ERR_INVALID_ARG, "%s: exists (--force replaces it)", output);
        *state = VF_OUTDIR_REPLACE;
        return VF_OK;
    }
    return vf_outdir_check(output, force, state);
}

static vf_status write_folder(qz *z, const char *input, const char *output, vf_outdir_state state)
{
    char *tmp;
    VF_TRY(vf_outdir_temp(output, &tmp));
    struct stat skip;
    vf_status st = stat(tmp, &skip) == 0 ? VF_OK : vf_error(VF_ERR_IO, "%s: %s", tmp, strerror(errno));
    if (st == VF_OK)
        st = copy_tree(z, input, tmp, &skip, 0);
    if (st == VF_OK)
        st = vf_outdir_install(tmp, output, state);
    if (st != VF_OK)
        vf_remove_tree(tmp);
    vf_free(tmp);
    return st;
}

/* ---- the entry point ---------------------------------------------------------------------------- */

static vf_status check_options(const char *input, const char *output, const vf_quantize_options *o)
{
    if (!o)
        return vf_error(VF_ERR_INVALID_ARG, "quantize: options are NULL");
    if (!input || !input[0] || !output || !output[0])
        return vf_error(VF_ERR_INVALID_ARG, "quantize: an input and an output path are required");
    vf_dtype t = o->dtype;
    if (t != VF_DTYPE_F16 && t != VF_DTYPE_BF16 && !vf_quant_is_packed(t))
        return vf_error(VF_ERR_INVALID_ARG, "quantize: dtype %s: expected F16, BF16, F8_E4M3, Q8 or Q4",
                        (unsigned)t < VF_DTYPE_COUNT ? vf_dtype_name(t) : "(invalid)");
    if (o->components >> VF_COMPONENT_COUNT)
        return vf_error(VF_ERR_INVALID_ARG, "quantize: component mask 0x%x names no component", o->components);
    return VF_OK;
}

vf_status vf_quantize_checkpoint(const char *input, const char *output, const vf_quantize_options *o,
                                 vf_quantize_stats *stats)
{
    vf_quantize_stats local;
    if (!stats)
        stats = &local;
    memset(stats, 0, sizeof *stats);
    VF_TRY(check_options(input, output, o));
    qz z;
    memset(&z, 0, sizeof z);
    z.o = o;
    z.stats = stats;
    z.mask = o->components ? o->components : (1u << VF_COMPONENT_COUNT) - 1;
    VF_TRY(vf_checkpoint_open(input, o->config_dir, &z.ck));
    int folder = !vf_checkpoint_is_single_file(z.ck);
    vf_outdir_state state;
    vf_status st = check_target(input, output, folder, o->force, &state);
    if (st == VF_OK)
        st = build_info(&z);
    if (st == VF_OK && folder)
        st = write_folder(&z, input, output, state);
    else if (st == VF_OK)
        st = write_file(&z, vf_checkpoint_file(z.ck, 0), output);
    int best = VF_DTYPE_F32;
    for (int d = 0; d < VF_DTYPE_COUNT; d++)
        if (z.by_dtype[d] > z.by_dtype[best])
            best = d;
    stats->source_dtype = (vf_dtype)best;
    vf_free(z.info);
    vf_checkpoint_close(z.ck);
    return st;
}
