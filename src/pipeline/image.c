/* Saving a generated image: the public face of the PNG writer.
 *
 * The CLI writes PNGs through src/io/png.h, which is internal; bindings
 * (Python's Image.save) and C users need the same file with the same text
 * chunks without reaching into io/. This is that one call: the image's rgb
 * plane, an optional "parameters" chunk (the AUTOMATIC1111-style generation
 * record other tools read) and a "Software" chunk naming vramfit's version.
 * The writer itself goes through a temporary file and a rename, so a failure
 * never leaves a truncated PNG under the final name.
 */
#include "core/error.h"
#include "io/png.h"

#include <stdio.h>

vf_status vf_image_save_png(const vf_image *img, const char *path, const char *parameters)
{
    if (!img || !img->rgb)
        return vf_error(VF_ERR_INVALID_ARG, "vf_image_save_png: %s", !img ? "image is NULL"
                                                                           : "image has no rgb plane");
    if (!path || !path[0])
        return vf_error(VF_ERR_INVALID_ARG, "vf_image_save_png: path is %s", !path ? "NULL" : "empty");
    if (img->width <= 0 || img->height <= 0)
        return vf_error(VF_ERR_INVALID_ARG, "vf_image_save_png: %s: image size %dx%d", path, img->width,
                        img->height);
    char software[64];
    snprintf(software, sizeof software, "vramfit %s", vf_version());
    const char *kv[] = {"parameters", parameters, "Software", software, NULL};
    const char *const *text = parameters ? kv : kv + 2;
    return vf_png_write(path, img->rgb, img->width, img->height, text);
}
