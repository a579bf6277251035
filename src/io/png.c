/* PNG writing and reading with libpng (see png.h).
 *
 * libpng's error handler must not return, so each libpng session lives in one
 * small function that calls setjmp and touches no local variable after it;
 * everything that must be freed after a longjmp (FILE, structs, buffers) is
 * created before that function runs or is kept in a struct owned by its
 * caller, which cleans up on one path whatever happened. Messages from libpng
 * are copied into that struct and become the vf_error text, prefixed by the path.
 */
#include "io/png.h"

#include "core/alloc.h"
#include "core/error.h"
#include "io/json.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#define VF_PNG_MAX_SIDE 65536

typedef struct png_ctx {
    char msg[256];                /* libpng's error message                   */
} png_ctx;

static void on_png_error(png_structp png, png_const_charp msg)
{
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg ? msg : "unknown libpng error");
    png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg)
{
    /* Warnings (e.g. a bad ancillary chunk) are not failures; stay silent. */
}

/* ---- writing ----------------------------------------------------------------- */

static int is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return 0;
    return 1;
}

static vf_status check_key(const char *path, const char *key)
{
    size_t n = strlen(key);
    if (n < 1 || n > 79 || key[0] == ' ' || key[n - 1] == ' ')
        return vf_error(VF_ERR_INVALID_ARG, "%s: PNG text key '%s' must be 1..79 characters",
                        path, key);
    for (size_t i = 0; i < n; i++)
        if (key[i] < 32 || key[i] > 126)
            return vf_error(VF_ERR_INVALID_ARG,
                            "%s: PNG text key '%s' must be printable ASCII", path, key);
    return VF_OK;
}

/* Builds libpng's text array; the strings stay owned by the caller. */
static vf_status make_text(const char *path, const char *const *kv, png_text **out, int *n_out)
{
    int n = 0;
    *out = NULL;
    *n_out = 0;
    if (!kv)
        return VF_OK;
    for (; kv[2 * n]; n++)
        if (!kv[2 * n + 1])
            return vf_error(VF_ERR_INVALID_ARG, "%s: PNG text key '%s' has no value", path,
                            kv[2 * n]);
    if (n == 0)
        return VF_OK;
    png_text *t = vf_calloc((size_t)n, sizeof *t);
    if (!t)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: PNG text chunks", path);
    for (int i = 0; i < n; i++) {
        const char *key = kv[2 * i], *val = kv[2 * i + 1];
        vf_status st = check_key(path, key);
        if (st == VF_OK && !vf_utf8_valid(val, strlen(val)))
            st = vf_error(VF_ERR_INVALID_ARG, "%s: PNG text '%s' is not valid UTF-8", path, key);
        if (st != VF_OK) {
            vf_free(t);
            return st;
        }
        /* libpng does not modify these; its struct just lacks const. */
        t[i].key = (png_charp)(uintptr_t)key;
        t[i].text = (png_charp)(uintptr_t)val;
        t[i].text_length = strlen(val);
        if (is_ascii(val)) {
            t[i].compression = PNG_TEXT_COMPRESSION_NONE;
        } else {
            t[i].compression = PNG_ITXT_COMPRESSION_NONE;
            t[i].itxt_length = t[i].text_length;
            t[i].lang = (png_charp)(uintptr_t)"";
            t[i].lang_key = (png_charp)(uintptr_t)"";
        }
    }
    *out = t;
    *n_out = n;
    return VF_OK;
}

/* The libpng session; returns 0 or 1 after a libpng error (message in ctx). */
static int write_body(png_structp png, png_infop info, FILE *f, const uint8_t *rgb, int w, int h,
                      png_text *text, int ntext)
{
    if (setjmp(png_jmpbuf(png)))
        return 1;
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (ntext > 0)
        png_set_text(png, info, text, ntext);
    png_write_info(png, info);
    for (int y = 0; y < h; y++)
        png_write_row(png, rgb + (size_t)y * w * 3);
    png_write_end(png, info);
    return 0;
}

static vf_status write_file(const char *path, const char *tmp, const uint8_t *rgb, int w, int h,
                            png_text *text, int ntext)
{
    png_ctx ctx = {{0}};
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return vf_error(VF_ERR_IO, "%s: cannot create '%s': %s", path, tmp, strerror(errno));
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &ctx, on_png_error,
                                              on_png_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    vf_status st = VF_OK;
    if (!info)
        st = vf_error(VF_ERR_NO_MEMORY, "%s: cannot create the libpng writer", path);
    else if (write_body(png, info, f, rgb, w, h, text, ntext))
        st = vf_error(VF_ERR_IO, "%s: libpng: %s", path, ctx.msg);
    png_destroy_write_struct(png ? &png : NULL, info ? &info : NULL);
    if (fclose(f) != 0 && st == VF_OK)
        st = vf_error(VF_ERR_IO, "%s: writing '%s': %s", path, tmp, strerror(errno));
    return st;
}

vf_status vf_png_write(const char *path, const uint8_t *rgb, int w, int h,
                       const char *const *text_kv)
{
    if (!path || !*path)
        return vf_error(VF_ERR_INVALID_ARG, "png: no output path");
    if (!rgb || w < 1 || h < 1 || w > VF_PNG_MAX_SIDE || h > VF_PNG_MAX_SIDE)
        return vf_error(VF_ERR_INVALID_ARG, "%s: cannot write a %dx%d image", path, w, h);
    png_text *text;
    int ntext;
    VF_TRY(make_text(path, text_kv, &text, &ntext));
    size_t n = strlen(path);
    char *tmp = vf_malloc(n + 5);
    if (!tmp) {
        vf_free(text);
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
    }
    memcpy(tmp, path, n);
    memcpy(tmp + n, ".tmp", 5);
    vf_status st = write_file(path, tmp, rgb, w, h, text, ntext);
    if (st == VF_OK && rename(tmp, path) != 0)
        st = vf_error(VF_ERR_IO, "%s: cannot rename '%s' to it: %s", path, tmp, strerror(errno));
    if (st != VF_OK)
        remove(tmp);
    vf_free(tmp);
    vf_free(text);
    return st;
}

/* ---- reading ----------------------------------------------------------------- */

/* What a read session builds; freed by its caller whatever happened. */
typedef struct read_state {
    png_ctx ctx;
    uint8_t *rgb;
    png_bytep *rows;
    png_uint_32 w, h;
    const char *err;              /* our own error inside the session        */
    vf_status err_st;
} read_state;

static int read_body(png_structp png, png_infop info, FILE *f, read_state *s)
{
    if (setjmp(png_jmpbuf(png)))
        return 1;
    png_init_io(png, f);
    png_set_sig_bytes(png, 8);
    png_set_user_limits(png, VF_PNG_MAX_SIDE, VF_PNG_MAX_SIDE);
    png_read_info(png, info);
    png_set_expand(png);
    png_set_strip_16(png);
    png_set_strip_alpha(png);
    png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    s->w = png_get_image_width(png, info);
    s->h = png_get_image_height(png, info);
    if (png_get_rowbytes(png, info) != (size_t)s->w * 3) {
        s->err = "unexpected row size after expanding to 8-bit RGB";
        s->err_st = VF_ERR_UNSUPPORTED;
        return 1;
    }
    s->rgb = vf_malloc((size_t)s->w * s->h * 3);
    s->rows = vf_malloc((size_t)s->h * sizeof *s->rows);
    if (!s->rgb || !s->rows) {
        s->err = "out of memory for the pixels";
        s->err_st = VF_ERR_NO_MEMORY;
        return 1;
    }
    for (png_uint_32 y = 0; y < s->h; y++)
        s->rows[y] = s->rgb + (size_t)y * s->w * 3;
    png_read_image(png, s->rows);
    png_read_end(png, info);
    return 0;
}

/* tEXt/zTXt hold Latin-1, iTXt UTF-8; out is always UTF-8. */
static char *text_to_utf8(const png_text *t, const char *s, size_t n)
{
    if (t->compression == PNG_ITXT_COMPRESSION_NONE || t->compression == PNG_ITXT_COMPRESSION_zTXt)
        return vf_strndup(s, n);
    char *o = vf_malloc(2 * n + 1), *p = o;
    if (!o)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            *p++ = (char)c;
        } else {
            *p++ = (char)(0xC0 | (c >> 6));
            *p++ = (char)(0x80 | (c & 0x3F));
        }
    }
    *p = 0;
    return o;
}

static vf_status collect_text(const char *path, png_structp png, png_infop info, vf_png_image *img)
{
    png_textp t = NULL;
    int n = png_get_text(png, info, &t, NULL);
    if (n <= 0)
        return VF_OK;
    img->keys = vf_calloc((size_t)n, sizeof *img->keys);
    img->values = vf_calloc((size_t)n, sizeof *img->values);
    if (!img->keys || !img->values)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: text chunks", path);
    for (int i = 0; i < n; i++) {
        size_t len = t[i].compression >= PNG_ITXT_COMPRESSION_NONE ? t[i].itxt_length
                                                                    : t[i].text_length;
        img->keys[i] = text_to_utf8(&t[i], t[i].key, strlen(t[i].key));
        img->values[i] = text_to_utf8(&t[i], t[i].text ? t[i].text : "", t[i].text ? len : 0);
        img->ntext = i + 1;
        if (!img->keys[i] || !img->values[i])
            return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: text chunk %d", path, i);
    }
    return VF_OK;
}

static vf_status read_file(const char *path, FILE *f, vf_png_image *img)
{
    read_state s;
    memset(&s, 0, sizeof s);
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &s.ctx, on_png_error,
                                             on_png_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    vf_status st = VF_OK;
    if (!info)
        st = vf_error(VF_ERR_NO_MEMORY, "%s: cannot create the libpng reader", path);
    else if (read_body(png, info, f, &s))
        st = vf_error(s.err ? s.err_st : VF_ERR_FORMAT, "%s: %s", path, s.err ? s.err : s.ctx.msg);
    if (st == VF_OK) {
        img->rgb = s.rgb;
        img->w = (int)s.w;
        img->h = (int)s.h;
        s.rgb = NULL;
        st = collect_text(path, png, info, img);
    }
    png_destroy_read_struct(png ? &png : NULL, info ? &info : NULL, NULL);
    vf_free(s.rgb);
    vf_free(s.rows);
    return st;
}

vf_status vf_png_read(const char *path, vf_png_image *out)
{
    vf_png_image img;
    unsigned char sig[8];
    memset(&img, 0, sizeof img);
    memset(out, 0, sizeof *out);
    if (!path)
        return vf_error(VF_ERR_INVALID_ARG, "png: no input path");
    FILE *f = fopen(path, "rb");
    if (!f)
        return vf_error(VF_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    vf_status st = VF_OK;
    if (fread(sig, 1, 8, f) != 8 || png_sig_cmp(sig, 0, 8) != 0)
        st = vf_error(VF_ERR_FORMAT, "%s: not a PNG file", path);
    else
        st = read_file(path, f, &img);
    fclose(f);
    if (st != VF_OK) {
        vf_png_image_free(&img);
        return st;
    }
    *out = img;
    return VF_OK;
}

const char *vf_png_text(const vf_png_image *img, const char *key)
{
    for (int i = 0; i < img->ntext; i++)
        if (strcmp(img->keys[i], key) == 0)
            return img->values[i];
    return NULL;
}

void vf_png_image_free(vf_png_image *img)
{
    if (!img)
        return;
    for (int i = 0; i < img->ntext; i++) {
        vf_free(img->keys[i]);
        vf_free(img->values[i]);
    }
    vf_free(img->keys);
    vf_free(img->values);
    vf_free(img->rgb);
    memset(img, 0, sizeof *img);
}
