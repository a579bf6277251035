/* PNG output (and input, for tests) over libpng.
 *
 * Images are written as 8-bit RGB with the generation parameters in text chunks
 * (tEXt when the value is ASCII, iTXt when it is other UTF-8, so a prompt in any
 * script survives), to "<path>.tmp" first and then renamed, so an interrupted
 * run never leaves a truncated image under the final name. libpng reports
 * errors by longjmp: the handlers here record libpng's message instead of
 * printing it, and every error names the path.
 */
#ifndef VF_IO_PNG_H
#define VF_IO_PNG_H

#include "vramfit.h"

#include <stdint.h>

/* rgb is (h,w,3). text_kv is NULL or a NULL-terminated list of key, value
 * pairs; keys are 1..79 printable ASCII characters, values valid UTF-8. */
vf_status vf_png_write(const char *path, const uint8_t *rgb, int w, int h,
                       const char *const *text_kv);

typedef struct vf_png_image {
    uint8_t *rgb;                 /* (h,w,3), any input format expanded to 8-bit RGB */
    int w, h;
    int ntext;
    char **keys, **values;        /* text chunks, converted to UTF-8          */
} vf_png_image;

/* Reads a PNG; on failure *out is left empty (nothing to free). */
vf_status vf_png_read(const char *path, vf_png_image *out);
/* The first text chunk with this key, or NULL. */
const char *vf_png_text(const vf_png_image *img, const char *key);
void vf_png_image_free(vf_png_image *img);

#endif
