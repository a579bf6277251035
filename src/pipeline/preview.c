/* Latent previews: what the image is becoming, without running the VAE.
 *
 * Stable Diffusion's four latent channels are close enough to a linear
 * function of colour that a fixed (4,3) matrix plus a bias gives a recognisable
 * thumbnail for the cost of 12 multiply-adds per latent pixel, where the VAE
 * decoder costs seconds on a CPU. The factors are the ones other tools
 * (ComfyUI's latent_formats, A1111's "Approx cheap") publish per architecture,
 * fitted to raw latents (before division by the VAE's scaling factor). Each
 * latent pixel becomes a scale x scale block: 8 gives the final image's size,
 * so a viewer can show the preview and the result side by side.
 */
#include "core/alloc.h"
#include "core/error.h"
#include "vramfit.h"

#include <math.h>
#include <string.h>

#define MAX_SCALE 64

/* [channel][R,G,B] and the RGB bias. */
static const float g_sd15[4][3] = {
    {0.3512f, 0.2297f, 0.3227f},
    {0.3250f, 0.4974f, 0.2350f},
    {-0.2829f, 0.1762f, 0.2721f},
    {-0.2120f, -0.2616f, -0.7177f},
};
static const float g_sd15_bias[3] = {0.0f, 0.0f, 0.0f};
static const float g_sdxl[4][3] = {
    {0.3651f, 0.4232f, 0.4341f},
    {-0.2533f, -0.0042f, 0.1068f},
    {0.1076f, 0.1111f, -0.0362f},
    {-0.3165f, -0.2492f, -0.2188f},
};
static const float g_sdxl_bias[3] = {0.1084f, -0.0175f, -0.0011f};

static uint8_t to_byte(float v)
{
    float x = (v + 1.0f) * 0.5f;
    if (!(x > 0.0f))              /* NaN too */
        return 0;
    return x >= 1.0f ? 255 : (uint8_t)lrintf(x * 255.0f);
}

// l->data is (B,4,h,w); out->rgb is (h*scale, w*scale, 3) from the first latent
vf_status vf_latents_preview(vf_arch arch, const vf_latents *l, int scale, vf_image **out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_latents_preview: out is NULL");
    *out = NULL;
    if (!l || !l->data || l->batch < 1 || l->height < 1 || l->width < 1)
        return vf_error(VF_ERR_INVALID_ARG, "vf_latents_preview: no latents");
    if (scale < 1 || scale > MAX_SCALE)
        return vf_error(VF_ERR_INVALID_ARG, "vf_latents_preview: scale %d is not in 1..%d", scale, MAX_SCALE);
    if (l->channels != 4)
        return vf_error(VF_ERR_UNSUPPORTED, "vf_latents_preview: %d latent channels (previews know 4)",
                        l->channels);
    if (arch != VF_ARCH_SD15 && arch != VF_ARCH_SDXL)
        return vf_error(VF_ERR_UNSUPPORTED, "vf_latents_preview: no preview factors for architecture '%s'",
                        vf_arch_name(arch));
    if (l->height > VF_MAX_IMAGE_SIDE / scale || l->width > VF_MAX_IMAGE_SIDE / scale)
        return vf_error(VF_ERR_INVALID_ARG, "vf_latents_preview: %dx%d latents at scale %d exceed %d pixels",
                        l->width, l->height, scale, VF_MAX_IMAGE_SIDE);
    const float (*f)[3] = arch == VF_ARCH_SDXL ? g_sdxl : g_sd15;
    const float *bias = arch == VF_ARCH_SDXL ? g_sdxl_bias : g_sd15_bias;
    const int h = l->height, w = l->width, W = w * scale, H = h * scale;
    const size_t hw = (size_t)h * (size_t)w;
    vf_image *img = vf_calloc(1, sizeof *img);
    if (img)
        img->rgb = vf_malloc((size_t)W * (size_t)H * 3);
    if (!img || !img->rgb) {
        vf_free(img);
        return vf_error_prefix(VF_ERR_NO_MEMORY, "preview %dx%d", W, H);
    }
    img->width = W;
    img->height = H;
    for (int y = 0; y < h; y++) {
        for (int x = 0; x < w; x++) {
            size_t at = (size_t)y * w + x;
            uint8_t px[3];
            for (int c = 0; c < 3; c++) {
                float v = bias[c];
                for (int k = 0; k < 4; k++)
                    v += l->data[k * hw + at] * f[k][c];
                px[c] = to_byte(v);
            }
            for (int dy = 0; dy < scale; dy++) {
                uint8_t *row = img->rgb + (((size_t)y * scale + dy) * W + (size_t)x * scale) * 3;
                for (int dx = 0; dx < scale; dx++)
                    memcpy(row + 3 * dx, px, 3);
            }
        }
    }
    *out = img;
    return VF_OK;
}
