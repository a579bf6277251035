/* safetensors reading and writing (see safetensors.h).
 *
 * Opening is two phases so that nothing half-checked is ever used: the header is
 * parsed and every entry validated into a table of our own (names copied into one
 * string arena, the cJSON tree freed), then the table is checked as a whole
 * (duplicate names, offsets tiling the data buffer exactly). Only then is the file
 * mapped. Three sorts of n entries cost nothing next to reading the weights, and
 * they give both orders the API promises: file order for vf_st_at, name order for
 * the bsearch in vf_st_find.
 *
 * Reads re-check the file's current size with fstat before touching the mapping,
 * because a mapped page past a shrunken end of file raises SIGBUS. A truncation
 * racing between that fstat and the copy can still fault; closing that window
 * would need a process-wide signal handler, which a library must not install.
 * The same fstat compares the modification time with the one at open: a file
 * rewritten in place (same size, other bytes) would otherwise feed a model a mix
 * of old and new weights, so every read of a changed file is refused until it is
 * opened again. A file replaced by rename is not changed for us: the open
 * descriptor keeps the old one.
 *
 * The writer builds the header text itself (not with cJSON) so that every
 * allocation goes through vf_malloc and offsets print as exact integers, and it
 * writes to "<path>.tmp" then renames, so a failed write never leaves a torn file.
 */
#include "io/safetensors.h"
#include "core/alloc.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/quant.h"
#include "io/json.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define META_KEY "__metadata__"
/* Largest integer a JSON number (a double in cJSON) holds exactly. */
#define MAX_EXACT_INT 9007199254740992.0

struct vf_st_file {
    char *path;
    int fd;
    uint64_t file_size;
    struct timespec mtime;   /* at open: a later one means changed in place */
    uint64_t data_start; /* 8 + header length */
    const unsigned char *map; /* whole file, or NULL when reading with pread */
    size_t map_len;
    size_t n;
    vf_st_tensor *tensors;   /* file order */
    vf_st_tensor **by_name;  /* sorted by name */
    size_t n_meta;
    const char **meta;       /* key, value, key, value, ... */
    char *arena;             /* every name, key and value */
};

static atomic_int g_no_mmap;

void vf_st_fault_no_mmap(int on) { atomic_store(&g_no_mmap, on); }

int vf_st_is_mapped(const vf_st_file *f) { return f && f->map != NULL; }

/* ---- low-level file access ------------------------------------------------- */

/* Reads exactly n bytes at pos; returns 0, or -1 with errno (0 for end of file). */
static int pread_full(int fd, void *dst, uint64_t n, uint64_t pos)
{
    unsigned char *d = dst;
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : (size_t)n;
        ssize_t r = pread(fd, d, chunk, (off_t)pos);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = 0;
            return -1;
        }
        d += r;
        pos += (uint64_t)r;
        n -= (uint64_t)r;
    }
    return 0;
}

static int write_full(int fd, const void *src, size_t n)
{
    const unsigned char *s = src;
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : n;
        ssize_t w = write(fd, s, chunk);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static uint64_t load_le64(const unsigned char *b)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | b[i];
    return v;
}

static void store_le64(unsigned char *b, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
}

/* ---- header parsing --------------------------------------------------------- */

/* cJSON stops after the first value; safetensors (serde_json in the reference)
 * allows only whitespace after it. text is known to parse, so finding the end of
 * the top-level object only needs to track strings and brace depth. */
static int only_space_after_object(const char *s, size_t n)
{
    size_t i = 0;
    int depth = 0, in_str = 0;
    while (i < n && s[i] != '{')
        i++;
    for (; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if ((c == '}' || c == ']') && --depth == 0) {
            break;
        }
    }
    for (i++; i < n; i++) {
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
            return 0;
    }
    return 1;
}

/* A JSON number that is a non-negative integer represented exactly. */
static int json_uint(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return 0;
    double d = v->valuedouble;
    if (!(d >= 0) || d > MAX_EXACT_INT || floor(d) != d)
        return 0;
    *out = (uint64_t)d;
    return 1;
}

/* Counts tensors, checks __metadata__ and sizes the string arena. */
static vf_status scan_entries(const char *path, const cJSON *root, size_t *n_tensors,
                              size_t *n_meta, size_t *arena_len)
{
    int seen_meta = 0;
    *n_tensors = *n_meta = *arena_len = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, META_KEY) != 0) {
            (*n_tensors)++;
            *arena_len += strlen(e->string) + 1;
            continue;
        }
        if (seen_meta++)
            return vf_error(VF_ERR_FORMAT, "%s: " META_KEY " appears twice", path);
        if (!cJSON_IsObject(e))
            return vf_error(VF_ERR_FORMAT, "%s: " META_KEY " is not an object", path);
        for (const cJSON *m = e->child; m; m = m->next) {
            if (!cJSON_IsString(m))
                return vf_error(VF_ERR_FORMAT, "%s: " META_KEY " value '%s' is not a string",
                                path, m->string);
            for (const cJSON *p = e->child; p != m; p = p->next) {
                if (strcmp(p->string, m->string) == 0)
                    return vf_error(VF_ERR_FORMAT, "%s: " META_KEY " key '%s' appears twice",
                                    path, m->string);
            }
            (*n_meta)++;
            *arena_len += strlen(m->string) + strlen(m->valuestring) + 2;
        }
    }
    return VF_OK;
}

static char *arena_put(char **at, const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = *at;
    memcpy(d, s, n);
    *at += n;
    return d;
}

static vf_status parse_shape(const char *path, const char *name, const cJSON *sh, vf_st_tensor *t)
{
    if (!cJSON_IsArray(sh))
        return vf_error(VF_ERR_FORMAT, "%s: tensor '%s': shape is not an array", path, name);
    int nd = cJSON_GetArraySize(sh);
    if (nd > VF_MAX_DIMS)
        return vf_error(VF_ERR_FORMAT,
                        "%s: tensor '%s': shape has %d dimensions, at most %d allowed", path, name,
                        nd, VF_MAX_DIMS);
    int i = 0;
    for (const cJSON *d = sh->child; d; d = d->next, i++) {
        uint64_t v;
        if (!json_uint(d, &v))
            return vf_error(VF_ERR_FORMAT,
                            "%s: tensor '%s': shape dimension %d is not an integer in [0, 2^53]",
                            path, name, i);
        t->shape[i] = (int64_t)v;
    }
    t->ndim = nd;
    if (vf_shape_nbytes(t->shape, nd, t->dtype, &t->nbytes) != 0) {
        char buf[256];
        return vf_error(VF_ERR_FORMAT, "%s: tensor '%s': shape %s of %s overflows the byte size",
                        path, name, vf_shape_str(t->shape, nd, buf, sizeof buf),
                        vf_dtype_name(t->dtype));
    }
    return VF_OK;
}

/* Fills t from one header entry; t->name is already set. */
static vf_status parse_tensor(const char *path, const cJSON *e, uint64_t data_len, vf_st_tensor *t)
{
    const char *name = t->name;
    if (!cJSON_IsObject(e))
        return vf_error(VF_ERR_FORMAT, "%s: tensor '%s': entry is not an object", path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!dt || !sh || !off)
        return vf_error(VF_ERR_FORMAT, "%s: tensor '%s': missing \"%s\"", path, name,
                        !dt ? "dtype" : !sh ? "shape" : "data_offsets");
    if (!cJSON_IsString(dt))
        return vf_error(VF_ERR_FORMAT, "%s: tensor '%s': dtype is not a string", path, name);
    if (vf_dtype_parse(dt->valuestring, &t->dtype) != 0)
        return vf_error(VF_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", path, name,
                        dt->valuestring);
    VF_TRY(parse_shape(path, name, sh, t));
    uint64_t b, end;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || !json_uint(off->child, &b) ||
        !json_uint(off->child->next, &end))
        return vf_error(VF_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets is not a pair of non-negative integers",
                        path, name);
    if (end < b)
        return vf_error(VF_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", path,
                        name, (unsigned long long)b, (unsigned long long)end);
    if (end - b != t->nbytes) {
        char buf[256];
        return vf_error(VF_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets [%llu, %llu] do not match shape %s of %s "
                        "(%llu bytes)",
                        path, name, (unsigned long long)b, (unsigned long long)end,
                        vf_shape_str(t->shape, t->ndim, buf, sizeof buf), vf_dtype_name(t->dtype),
                        (unsigned long long)t->nbytes);
    }
    if (end > data_len)
        return vf_error(VF_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the data "
                        "(%llu bytes; file truncated?)",
                        path, name, (unsigned long long)b, (unsigned long long)end,
                        (unsigned long long)data_len);
    t->offset = b;
    return VF_OK;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const vf_st_tensor *)a)->name, ((const vf_st_tensor *)b)->name);
}

static int cmp_name_ptr(const void *a, const void *b)
{
    return strcmp((*(vf_st_tensor *const *)a)->name, (*(vf_st_tensor *const *)b)->name);
}

/* Metadata pairs (key, value) by key. */
static int cmp_meta(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Zero-sized tensors sort before a tensor starting at the same offset. */
static int cmp_offset(const void *a, const void *b)
{
    const vf_st_tensor *x = a, *y = b;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes)
        return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* The tensors, sorted by offset, must tile [0, data_len) exactly. */
static vf_status check_tiling(const char *path, const vf_st_tensor *ts, size_t n, uint64_t data_len)
{
    uint64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const vf_st_tensor *t = &ts[i];
        unsigned long long b = t->offset, e = t->offset + t->nbytes;
        if (t->offset < at)
            return vf_error(VF_ERR_FORMAT,
                            "%s: tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s' "
                            "(which ends at %llu)",
                            path, t->name, b, e, ts[i - 1].name, (unsigned long long)at);
        if (t->offset > at)
            return vf_error(VF_ERR_FORMAT,
                            "%s: tensor '%s': data_offsets [%llu, %llu] leave a gap of %llu bytes "
                            "after %s%s%s",
                            path, t->name, b, e, (unsigned long long)(t->offset - at),
                            i ? "tensor '" : "the start of the data", i ? ts[i - 1].name : "",
                            i ? "'" : "");
        at = t->offset + t->nbytes;
    }
    if (at != data_len)
        return vf_error(VF_ERR_FORMAT,
                        "%s: the tensors cover %llu of the %llu data bytes (%llu trailing bytes)",
                        path, (unsigned long long)at, (unsigned long long)data_len,
                        (unsigned long long)(data_len - at));
    return VF_OK;
}

/* Builds f's tables from the parsed header. */
static vf_status load_entries(vf_st_file *f, const cJSON *root, uint64_t data_len)
{
    size_t n, n_meta, arena_len;
    VF_TRY(scan_entries(f->path, root, &n, &n_meta, &arena_len));
    f->arena = vf_malloc(arena_len);
    f->tensors = vf_calloc(n, sizeof *f->tensors);
    f->by_name = vf_calloc(n, sizeof *f->by_name);
    f->meta = vf_calloc(2 * n_meta, sizeof *f->meta);
    if (!f->arena || !f->tensors || !f->by_name || !f->meta)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: %zu tensors", f->path, n);
    char *at = f->arena;
    size_t i = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, META_KEY) == 0) {
            for (const cJSON *m = e->child; m; m = m->next) {
                f->meta[2 * f->n_meta] = arena_put(&at, m->string);
                f->meta[2 * f->n_meta + 1] = arena_put(&at, m->valuestring);
                f->n_meta++;
            }
            continue;
        }
        f->tensors[i].name = arena_put(&at, e->string);
        VF_TRY(parse_tensor(f->path, e, data_len, &f->tensors[i]));
        i++;
    }
    f->n = n;
    /* Metadata sorted by key: vf_st_metadata is a bsearch (a quantized SDXL
     * UNet carries thousands of keys). Keys are unique (scan_entries). */
    qsort(f->meta, f->n_meta, 2 * sizeof *f->meta, cmp_meta);
    /* Duplicates first: two entries with one name would otherwise be reported as
     * overlapping, which hides the real fault. */
    qsort(f->tensors, n, sizeof *f->tensors, cmp_name);
    for (i = 1; i < n; i++) {
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0)
            return vf_error(VF_ERR_FORMAT, "%s: tensor '%s' appears more than once", f->path,
                            f->tensors[i].name);
    }
    qsort(f->tensors, n, sizeof *f->tensors, cmp_offset);
    VF_TRY(check_tiling(f->path, f->tensors, n, data_len));
    for (i = 0; i < n; i++)
        f->by_name[i] = &f->tensors[i];
    qsort(f->by_name, n, sizeof *f->by_name, cmp_name_ptr);
    return VF_OK;
}

/* Reads and checks the length prefix and the header, and parses it. */
static vf_status read_header(vf_st_file *f, cJSON **root)
{
    unsigned char len8[8];
    char *text = NULL;
    *root = NULL;
    if (f->file_size < 8)
        return vf_error(VF_ERR_FORMAT, "%s: file is %llu bytes, too short for a safetensors header",
                        f->path, (unsigned long long)f->file_size);
    if (pread_full(f->fd, len8, 8, 0) != 0)
        return vf_error(VF_ERR_IO, "%s: cannot read the header length: %s", f->path,
                        errno ? strerror(errno) : "end of file");
    uint64_t hlen = load_le64(len8);
    if (hlen > VF_ST_HEADER_CAP)
        return vf_error(VF_ERR_FORMAT, "%s: header length %llu is over the %u-byte limit", f->path,
                        (unsigned long long)hlen, VF_ST_HEADER_CAP);
    if (hlen > f->file_size - 8)
        return vf_error(VF_ERR_FORMAT,
                        "%s: header length %llu runs past the end of the file (%llu bytes)",
                        f->path, (unsigned long long)hlen, (unsigned long long)f->file_size);
    f->data_start = 8 + hlen;
    text = vf_malloc((size_t)hlen + 1);
    if (!text)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: header", f->path);
    vf_status st = VF_OK;
    if (pread_full(f->fd, text, hlen, 8) != 0) {
        st = vf_error(VF_ERR_IO, "%s: cannot read the header: %s", f->path,
                      errno ? strerror(errno) : "end of file");
        goto out;
    }
    text[hlen] = '\0';
    st = vf_json_parse(text, (size_t)hlen, "header", root);
    if (st != VF_OK) {
        vf_error_prefix(st, "%s", f->path);
        goto out;
    }
    if (!only_space_after_object(text, (size_t)hlen)) {
        cJSON_Delete(*root);
        *root = NULL;
        st = vf_error(VF_ERR_FORMAT, "%s: header: text after the JSON object", f->path);
    }
out:
    vf_free(text);
    return st;
}

/* ---- vramfit's quantized tensors ---------------------------------------------------- */

#define Q_FORMAT_KEY "vramfit.format"
#define Q_DTYPE_PREFIX "vramfit.dtype."
#define Q_SHAPE_PREFIX "vramfit.shape."

/* "[320, 4, 3, 3]": 2 to 4 positive integers. Returns 0 on success. */
static int parse_quant_shape(const char *s, vf_st_tensor *t)
{
    int nd = 0;
    while (*s == ' ')
        s++;
    if (*s++ != '[')
        return -1;
    for (;;) {
        while (*s == ' ')
            s++;
        if (*s < '1' || *s > '9' || nd == 4)
            return -1;
        int64_t v = 0;
        while (*s >= '0' && *s <= '9') {
            if (v > ((int64_t)1 << 50))
                return -1;
            v = v * 10 + (*s++ - '0');
        }
        t->shape[nd++] = v;
        while (*s == ' ')
            s++;
        if (*s == ']')
            break;
        if (*s++ != ',')
            return -1;
    }
    for (s++; *s == ' '; s++)
        ;
    if (*s || nd < 2)
        return -1;
    for (int d = nd; d < VF_MAX_DIMS; d++)
        t->shape[d] = 0;
    t->ndim = nd;
    return 0;
}

static int has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The value of key prefix+name, without building the key. */
static const char *meta_prefixed(const vf_st_file *f, const char *prefix, const char *name)
{
    size_t lo = 0, hi = f->n_meta, pl = strlen(prefix);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *k = f->meta[2 * mid];
        int c = strncmp(k, prefix, pl);
        if (c == 0)
            c = strcmp(k + pl, name);
        if (c == 0)
            return f->meta[2 * mid + 1];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* One "vramfit.dtype.<name>" entry: checks it and presents the tensor as packed. */
static vf_status apply_quant_entry(vf_st_file *f, const char *name, const char *dtype)
{
    vf_st_tensor *t = (vf_st_tensor *)vf_st_find(f, name);
    const char *shape = meta_prefixed(f, Q_SHAPE_PREFIX, name);
    vf_dtype fmt = VF_DTYPE_COUNT;
    if (!t)
        return vf_error(VF_ERR_FORMAT, "%s: metadata '" Q_DTYPE_PREFIX "%s' names no tensor", f->path, name);
    for (int d = 0; d < VF_DTYPE_COUNT; d++)
        if (vf_quant_is_packed((vf_dtype)d) && strcmp(dtype, vf_dtype_name((vf_dtype)d)) == 0)
            fmt = (vf_dtype)d;
    if (!vf_quant_is_packed(fmt))
        return vf_error(VF_ERR_FORMAT, "%s: tensor '%s': quantized dtype '%s' is not F8_E4M3, Q8 or Q4", f->path,
                        name, dtype);
    if (!shape)
        return vf_error(VF_ERR_FORMAT, "%s: tensor '%s': no '" Q_SHAPE_PREFIX "%s' metadata for its %s bytes",
                        f->path, name, name, dtype);
    if (t->dtype != VF_DTYPE_U8 || t->ndim != 1)
        return vf_error(VF_ERR_FORMAT, "%s: tensor '%s': a quantized tensor is stored as 1-D U8 bytes, not %s",
                        f->path, name, vf_dtype_name(t->dtype));
    vf_st_tensor q = *t;
    if (parse_quant_shape(shape, &q) != 0)
        return vf_error(VF_ERR_FORMAT, "%s: tensor '%s': shape '%s' is not 2 to 4 positive integers like [320, 4]",
                        f->path, name, shape);
    int64_t cols = 1;
    for (int d = 1; d < q.ndim; d++)
        cols *= q.shape[d];
    size_t want = cols < ((int64_t)1 << 31) ? vf_quant_packed_bytes(fmt, q.shape[0], cols) : 0;
    if (want == 0 || want != t->nbytes)
        return vf_error(VF_ERR_FORMAT, "%s: tensor '%s': %llu bytes, but %s of shape %s packs to %zu", f->path,
                        name, (unsigned long long)t->nbytes, dtype, shape, want);
    q.dtype = fmt;
    q.packed = 1;
    *t = q;
    return VF_OK;
}

/* Presents the tensors "vramfit quantize" stored packed (see safetensors.h). */
static vf_status apply_quant_meta(vf_st_file *f)
{
    const char *ver = vf_st_metadata(f, Q_FORMAT_KEY);
    if (!ver)
        return VF_OK;
    if (strcmp(ver, "1") != 0)
        return vf_error(VF_ERR_UNSUPPORTED, "%s: " Q_FORMAT_KEY " '%s' is newer than this vramfit reads (1)",
                        f->path, ver);
    for (size_t i = 0; i < f->n_meta; i++) {
        const char *k = f->meta[2 * i], *v = f->meta[2 * i + 1];
        if (has_prefix(k, Q_DTYPE_PREFIX))
            VF_TRY(apply_quant_entry(f, k + strlen(Q_DTYPE_PREFIX), v));
        else if (has_prefix(k, Q_SHAPE_PREFIX) && !meta_prefixed(f, Q_DTYPE_PREFIX, k + strlen(Q_SHAPE_PREFIX)))
            return vf_error(VF_ERR_FORMAT, "%s: metadata '%s' has no '" Q_DTYPE_PREFIX "%s'", f->path, k,
                            k + strlen(Q_SHAPE_PREFIX));
    }
    return VF_OK;
}

vf_status vf_st_open(const char *path, vf_st_file **out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_st_open: out is NULL");
    *out = NULL;
    if (!path)
        return vf_error(VF_ERR_INVALID_ARG, "vf_st_open: path is NULL");
    vf_st_file *f = vf_calloc(1, sizeof *f);
    if (!f)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
    f->fd = -1;
    cJSON *root = NULL;
    vf_status st = VF_OK;
    f->path = vf_strdup(path);
    if (!f->path) {
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
        goto fail;
    }
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) {
        st = vf_error(errno == ENOENT ? VF_ERR_NOT_FOUND : VF_ERR_IO, "%s: cannot open: %s", path,
                      strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(f->fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = vf_error(VF_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    f->file_size = (uint64_t)sb.st_size;
    f->mtime = sb.st_mtim;
    st = read_header(f, &root);
    if (st != VF_OK)
        goto fail;
    st = load_entries(f, root, f->file_size - f->data_start);
    if (st == VF_OK)
        st = apply_quant_meta(f);
    if (st != VF_OK)
        goto fail;
    cJSON_Delete(root);
    root = NULL;
    /* A failed mapping is not an error: pread serves the same reads. */
    if (!atomic_load(&g_no_mmap) && f->file_size <= SIZE_MAX) {
        void *m = mmap(NULL, (size_t)f->file_size, PROT_READ, MAP_PRIVATE, f->fd, 0);
        if (m != MAP_FAILED) {
            f->map = m;
            f->map_len = (size_t)f->file_size;
        }
    }
    *out = f;
    return VF_OK;
fail:
    cJSON_Delete(root);
    vf_st_close(f);
    return st;
}

void vf_st_close(vf_st_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap((void *)f->map, f->map_len);
    if (f->fd >= 0)
        close(f->fd);
    vf_free(f->tensors);
    vf_free(f->by_name);
    vf_free(f->meta);
    vf_free(f->arena);
    vf_free(f->path);
    vf_free(f);
}

const char *vf_st_path(const vf_st_file *f) { return f->path; }

size_t vf_st_count(const vf_st_file *f) { return f->n; }

const vf_st_tensor *vf_st_at(const vf_st_file *f, size_t i)
{
    return i < f->n ? &f->tensors[i] : NULL;
}

static int cmp_key_tensor(const void *key, const void *elem)
{
    return strcmp(key, (*(vf_st_tensor *const *)elem)->name);
}

const vf_st_tensor *vf_st_find(const vf_st_file *f, const char *name)
{
    if (!f->n || !name)
        return NULL;
    vf_st_tensor *const *p = bsearch(name, f->by_name, f->n, sizeof *f->by_name, cmp_key_tensor);
    return p ? *p : NULL;
}

const char *vf_st_metadata(const vf_st_file *f, const char *key)
{
    if (!key || !f->n_meta)
        return NULL;
    const char *const *p = bsearch(&key, f->meta, f->n_meta, 2 * sizeof *f->meta, cmp_meta);
    return p ? p[1] : NULL;
}

uint64_t vf_st_file_size(const vf_st_file *f) { return f->file_size; }

vf_status vf_st_read(vf_st_file *f, const vf_st_tensor *t, uint64_t off, void *dst, uint64_t n)
{
    if (!f || !t || t < f->tensors || t >= f->tensors + f->n)
        return vf_error(VF_ERR_INVALID_ARG, "%s: vf_st_read: tensor is not one of this file's",
                        f ? f->path : "(null)");
    if (off > t->nbytes || n > t->nbytes - off)
        return vf_error(VF_ERR_INVALID_ARG,
                        "%s: tensor '%s': read of %llu bytes at %llu is past its %llu bytes",
                        f->path, t->name, (unsigned long long)n, (unsigned long long)off,
                        (unsigned long long)t->nbytes);
    if (n == 0)
        return VF_OK;
    if (!dst)
        return vf_error(VF_ERR_INVALID_ARG, "%s: tensor '%s': destination is NULL", f->path,
                        t->name);
    uint64_t pos = f->data_start + t->offset + off;
    struct stat sb;
    if (fstat(f->fd, &sb) != 0)
        return vf_error(VF_ERR_IO, "%s: tensor '%s': fstat: %s", f->path, t->name, strerror(errno));
    if ((uint64_t)sb.st_size < pos + n)
        return vf_error(VF_ERR_IO,
                        "%s: tensor '%s': file changed/truncated since it was opened "
                        "(now %llu bytes, the read needs %llu)",
                        f->path, t->name, (unsigned long long)sb.st_size,
                        (unsigned long long)(pos + n));
    if ((uint64_t)sb.st_size != f->file_size)
        return vf_error(VF_ERR_IO,
                        "%s: tensor '%s': file changed since it was opened (truncated or rewritten: "
                        "%llu bytes then, %llu now); open it again",
                        f->path, t->name, (unsigned long long)f->file_size,
                        (unsigned long long)sb.st_size);
    if (sb.st_mtim.tv_sec != f->mtime.tv_sec || sb.st_mtim.tv_nsec != f->mtime.tv_nsec)
        return vf_error(VF_ERR_IO,
                        "%s: tensor '%s': file changed since it was opened (rewritten in place); "
                        "open it again",
                        f->path, t->name);
    if (f->map) {
        memcpy(dst, f->map + pos, (size_t)n);
        return VF_OK;
    }
    if (pread_full(f->fd, dst, n, pos) != 0)
        return vf_error(VF_ERR_IO, "%s: tensor '%s': read failed: %s", f->path, t->name,
                        errno ? strerror(errno) : "file changed/truncated since it was opened");
    return VF_OK;
}

/* ---- writing ------------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = vf_realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_u64(strbuf *b, uint64_t v)
{
    char tmp[24];
    sb_put(b, tmp, (size_t)snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v));
}

/* Appends s as a JSON string literal (s is valid UTF-8). */
static void sb_json_str(strbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            sb_put(b, esc, 2);
        } else if (c < 0x20) {
            sb_put(b, esc, (size_t)snprintf(esc, sizeof esc, "\\u%04x", c));
        } else {
            sb_put(b, s, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Rejects what would make an unreadable file: bad names, duplicates, shapes. */
static vf_status check_write_args(const char *path, const vf_st_write_tensor *ts, size_t n,
                                  const char *const *meta, int need_data, uint64_t *total)
{
    *total = 0;
    for (size_t i = 0; meta && meta[i]; i += 2) {
        if (!meta[i + 1])
            return vf_error(VF_ERR_INVALID_ARG, "%s: metadata key '%s' has no value", path,
                            meta[i]);
        if (!vf_utf8_valid(meta[i], strlen(meta[i])) ||
            !vf_utf8_valid(meta[i + 1], strlen(meta[i + 1])))
            return vf_error(VF_ERR_INVALID_ARG, "%s: metadata '%s' is not valid UTF-8", path,
                            meta[i]);
    }
    for (size_t i = 0; i < n; i++) {
        const vf_st_write_tensor *t = &ts[i];
        uint64_t nb;
        if (!t->name || !vf_utf8_valid(t->name, strlen(t->name)) || strcmp(t->name, META_KEY) == 0)
            return vf_error(VF_ERR_INVALID_ARG, "%s: tensor %zu: invalid name '%s'", path, i,
                            t->name ? t->name : "(null)");
        if ((unsigned)t->dtype < VF_DTYPE_COUNT && vf_dtype_size(t->dtype) == 0)
            return vf_error(VF_ERR_INVALID_ARG, "%s: tensor '%s': %s is not a safetensors dtype (packed tensors "
                            "are written as U8 bytes)", path, t->name, vf_dtype_name(t->dtype));
        if ((unsigned)t->dtype >= VF_DTYPE_COUNT || t->ndim < 0 || t->ndim > VF_MAX_DIMS ||
            vf_shape_nbytes(t->shape, t->ndim, t->dtype, &nb) != 0 ||
            __builtin_add_overflow(*total, nb, total))
            return vf_error(VF_ERR_INVALID_ARG, "%s: tensor '%s': invalid dtype or shape", path,
                            t->name);
        if (need_data && nb > 0 && !t->data)
            return vf_error(VF_ERR_INVALID_ARG, "%s: tensor '%s': data is NULL", path, t->name);
    }
    if (n < 2)
        return VF_OK;
    const char **names = vf_calloc(n, sizeof *names);
    if (!names)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
    for (size_t i = 0; i < n; i++)
        names[i] = ts[i].name;
    qsort(names, n, sizeof *names, cmp_str_ptr);
    vf_status st = VF_OK;
    for (size_t i = 1; i < n && st == VF_OK; i++) {
        if (strcmp(names[i - 1], names[i]) == 0)
            st = vf_error(VF_ERR_INVALID_ARG, "%s: tensor '%s' given twice", path, names[i]);
    }
    vf_free(names);
    return st;
}

/* The header text, space-padded to a multiple of 8 bytes. */
static vf_status build_header(const char *path, const vf_st_write_tensor *ts, size_t n,
                              const char *const *meta, strbuf *b)
{
    sb_str(b, "{");
    if (meta && meta[0]) {
        sb_json_str(b, META_KEY);
        sb_str(b, ":{");
        for (size_t i = 0; meta[i]; i += 2) {
            sb_str(b, i ? "," : "");
            sb_json_str(b, meta[i]);
            sb_str(b, ":");
            sb_json_str(b, meta[i + 1]);
        }
        sb_str(b, "}");
    }
    uint64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const vf_st_write_tensor *t = &ts[i];
        uint64_t nb;
        vf_shape_nbytes(t->shape, t->ndim, t->dtype, &nb);
        sb_str(b, (i || (meta && meta[0])) ? "," : "");
        sb_json_str(b, t->name);
        sb_str(b, ":{\"dtype\":\"");
        sb_str(b, vf_dtype_name(t->dtype));
        sb_str(b, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            sb_str(b, d ? "," : "");
            sb_u64(b, (uint64_t)t->shape[d]);
        }
        sb_str(b, "],\"data_offsets\":[");
        sb_u64(b, at);
        sb_str(b, ",");
        sb_u64(b, at + nb);
        sb_str(b, "]}");
        at += nb;
    }
    sb_str(b, "}");
    while (!b->failed && b->len % 8 != 0)
        sb_str(b, " ");
    if (b->failed)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: header", path);
    if (b->len > VF_ST_HEADER_CAP)
        return vf_error(VF_ERR_INVALID_ARG, "%s: header of %zu bytes is over the %u-byte limit",
                        path, b->len, VF_ST_HEADER_CAP);
    return VF_OK;
}

static vf_status write_body(const char *path, int fd, const strbuf *hdr,
                            const vf_st_write_tensor *ts, size_t n)
{
    unsigned char len8[8];
    store_le64(len8, hdr->len);
    if (write_full(fd, len8, 8) != 0 || write_full(fd, hdr->p, hdr->len) != 0)
        return vf_error(VF_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    for (size_t i = 0; i < n; i++) {
        uint64_t nb;
        vf_shape_nbytes(ts[i].shape, ts[i].ndim, ts[i].dtype, &nb);
        if (nb > SIZE_MAX)
            return vf_error(VF_ERR_INVALID_ARG, "%s: tensor '%s' too large", path, ts[i].name);
        if (nb && write_full(fd, ts[i].data, (size_t)nb) != 0)
            return vf_error(VF_ERR_IO, "%s: tensor '%s': write failed: %s", path, ts[i].name,
                            strerror(errno));
    }
    if (fsync(fd) != 0)
        return vf_error(VF_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
    return VF_OK;
}

vf_status vf_st_write(const char *path, const vf_st_write_tensor *ts, size_t n,
                      const char *const *meta)
{
    if (!path)
        return vf_error(VF_ERR_INVALID_ARG, "vf_st_write: path is NULL");
    if (n > 0 && !ts)
        return vf_error(VF_ERR_INVALID_ARG, "%s: vf_st_write: tensors are NULL", path);
    uint64_t total;
    VF_TRY(check_write_args(path, ts, n, meta, 1, &total));
    strbuf hdr = {0};
    char *tmp = NULL;
    vf_status st = build_header(path, ts, n, meta, &hdr);
    if (st != VF_OK)
        goto out;
    size_t plen = strlen(path);
    tmp = vf_malloc(plen + 5);
    if (!tmp) {
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
        goto out;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        st = vf_error(VF_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        goto out;
    }
    st = write_body(path, fd, &hdr, ts, n);
    if (close(fd) != 0 && st == VF_OK)
        st = vf_error(VF_ERR_IO, "%s: close failed: %s", path, strerror(errno));
    if (st == VF_OK && rename(tmp, path) != 0)
        st = vf_error(VF_ERR_IO, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
    if (st != VF_OK)
        unlink(tmp);
out:
    vf_free(tmp);
    vf_free(hdr.p);
    return st;
}

/* ---- streaming writer ----------------------------------------------------------
 *
 * For files too large to hold in memory (a synthesized SDXL UNet is 5 GB): the
 * header is written from the specs at open, then the caller supplies the data
 * bytes in file order, in pieces of any size. The writer remembers where each
 * tensor ends so that a failed write names the tensor it was in. Like
 * vf_st_write it writes "<path>.tmp" and renames only after a complete, synced
 * file; abort (or a failed close) unlinks the temporary. */

struct vf_st_writer {
    char *path, *tmp;
    int fd;
    uint64_t total, written;
    size_t n, cur;      /* tensors; the one the next byte belongs to */
    uint64_t *ends;     /* ends[i]: data offset just past tensor i   */
    char **names;       /* copies, for messages                      */
    char *arena;
    vf_status failed;   /* sticky: the first write error             */
};

static void writer_free(vf_st_writer *w)
{
    vf_free(w->path);
    vf_free(w->tmp);
    vf_free(w->ends);
    vf_free(w->names);
    vf_free(w->arena);
    vf_free(w);
}

/* Copies the names and cumulative ends of the specs into w. */
static vf_status writer_index(vf_st_writer *w, const vf_st_write_tensor *ts, size_t n)
{
    size_t chars = 0;
    for (size_t i = 0; i < n; i++)
        chars += strlen(ts[i].name) + 1;
    w->ends = vf_calloc(n ? n : 1, sizeof *w->ends);
    w->names = vf_calloc(n ? n : 1, sizeof *w->names);
    w->arena = vf_malloc(chars ? chars : 1);
    if (!w->ends || !w->names || !w->arena)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", w->path);
    char *at = w->arena;
    uint64_t end = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t nb;
        vf_shape_nbytes(ts[i].shape, ts[i].ndim, ts[i].dtype, &nb);
        end += nb;
        w->ends[i] = end;
        w->names[i] = arena_put(&at, ts[i].name);
    }
    w->n = n;
    w->total = end;
    return VF_OK;
}

static vf_status writer_create(vf_st_writer *w, const strbuf *hdr)
{
    size_t plen = strlen(w->path);
    w->tmp = vf_malloc(plen + 5);
    if (!w->tmp)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", w->path);
    memcpy(w->tmp, w->path, plen);
    memcpy(w->tmp + plen, ".tmp", 5);
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0)
        return vf_error(VF_ERR_IO, "%s: cannot create: %s", w->tmp, strerror(errno));
    unsigned char len8[8];
    store_le64(len8, hdr->len);
    if (write_full(w->fd, len8, 8) != 0 || write_full(w->fd, hdr->p, hdr->len) != 0)
        return vf_error(VF_ERR_IO, "%s: header write failed: %s", w->path, strerror(errno));
    return VF_OK;
}

vf_status vf_st_writer_open(const char *path, const vf_st_write_tensor *ts, size_t n,
                            const char *const *meta, vf_st_writer **out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_st_writer_open: out is NULL");
    *out = NULL;
    if (!path)
        return vf_error(VF_ERR_INVALID_ARG, "vf_st_writer_open: path is NULL");
    if (n > 0 && !ts)
        return vf_error(VF_ERR_INVALID_ARG, "%s: vf_st_writer_open: tensors are NULL", path);
    uint64_t total;
    VF_TRY(check_write_args(path, ts, n, meta, 0, &total));
    vf_st_writer *w = vf_calloc(1, sizeof *w);
    if (!w)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
    w->fd = -1;
    strbuf hdr = {0};
    vf_status st = VF_OK;
    w->path = vf_strdup(path);
    if (!w->path)
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
    if (st == VF_OK)
        st = writer_index(w, ts, n);
    if (st == VF_OK)
        st = build_header(path, ts, n, meta, &hdr);
    if (st == VF_OK)
        st = writer_create(w, &hdr);
    vf_free(hdr.p);
    if (st != VF_OK) {
        vf_st_writer_abort(w);
        return st;
    }
    *out = w;
    return VF_OK;
}

/* The name of the tensor holding data byte pos (the last one past the end). */
static const char *writer_tensor_at(vf_st_writer *w, uint64_t pos)
{
    while (w->cur + 1 < w->n && w->ends[w->cur] <= pos)
        w->cur++;
    return w->n ? w->names[w->cur] : "(none)";
}

vf_status vf_st_writer_write(vf_st_writer *w, const void *bytes, size_t n)
{
    if (!w)
        return vf_error(VF_ERR_INVALID_ARG, "vf_st_writer_write: writer is NULL");
    if (w->failed != VF_OK)
        return vf_error(w->failed, "%s: an earlier write failed", w->path);
    if (n > w->total - w->written) {
        w->failed = VF_ERR_INVALID_ARG;
        return vf_error(VF_ERR_INVALID_ARG, "%s: %zu bytes written past the declared %llu data bytes",
                        w->path, (size_t)(n - (w->total - w->written)), (unsigned long long)w->total);
    }
    if (n > 0 && !bytes)
        return vf_error(VF_ERR_INVALID_ARG, "%s: vf_st_writer_write: bytes are NULL", w->path);
    if (n > 0 && write_full(w->fd, bytes, n) != 0) {
        int err = errno;
        w->failed = VF_ERR_IO;
        return vf_error(VF_ERR_IO, "%s: tensor '%s': write failed: %s", w->path,
                        writer_tensor_at(w, w->written), strerror(err));
    }
    w->written += n;
    return VF_OK;
}

uint64_t vf_st_writer_remaining(const vf_st_writer *w)
{
    return w ? w->total - w->written : 0;
}

vf_status vf_st_writer_close(vf_st_writer *w)
{
    if (!w)
        return vf_error(VF_ERR_INVALID_ARG, "vf_st_writer_close: writer is NULL");
    vf_status st = VF_OK;
    if (w->failed != VF_OK)
        st = vf_error(w->failed, "%s: not written: an earlier write failed", w->path);
    else if (w->written != w->total)
        st = vf_error(VF_ERR_INVALID_ARG, "%s: tensor '%s': only %llu of %llu data bytes written",
                      w->path, writer_tensor_at(w, w->written), (unsigned long long)w->written,
                      (unsigned long long)w->total);
    else if (fsync(w->fd) != 0)
        st = vf_error(VF_ERR_IO, "%s: fsync failed: %s", w->path, strerror(errno));
    if (st != VF_OK) {
        vf_st_writer_abort(w);
        return st;
    }
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0)
        st = vf_error(VF_ERR_IO, "%s: close failed: %s", w->path, strerror(errno));
    if (st == VF_OK && rename(w->tmp, w->path) != 0)
        st = vf_error(VF_ERR_IO, "%s: cannot rename %s into place: %s", w->path, w->tmp,
                      strerror(errno));
    if (st != VF_OK)
        unlink(w->tmp);
    writer_free(w);
    return st;
}

void vf_st_writer_abort(vf_st_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0) {
        close(w->fd);
        unlink(w->tmp);
    }
    writer_free(w);
}
