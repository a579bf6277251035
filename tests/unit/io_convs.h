/* The convolutions that read a model's input or write its output: the UNet's
 * conv_in and conv_out, the VAE's encoder.conv_in and decoder.conv_out. In
 * packed formats they stay F16. The tests name them here on their own, not
 * through vf_weight_stays_unpacked, so that they check the library's list.
 * Header-only, like test.h. */
#ifndef VF_TEST_IO_CONVS_H
#define VF_TEST_IO_CONVS_H

#include "vramfit.h"

#include <string.h>

static inline int is_io_conv(vf_component c, const char *name)
{
    static const char *const unet[] = {"conv_in.weight", "conv_out.weight"};
    static const char *const vae[] = {"encoder.conv_in.weight", "decoder.conv_out.weight"};
    const char *const *list = c == VF_COMPONENT_UNET ? unet : c == VF_COMPONENT_VAE ? vae : NULL;
    for (int i = 0; list && i < 2; i++)
        if (strcmp(name, list[i]) == 0)
            return 1;
    return 0;
}

#endif
