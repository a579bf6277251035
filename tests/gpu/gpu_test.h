/* What every GPU test needs besides test.h: whether the CUDA backend can be
 * created here, and a skip (77) when it cannot. Header-only, like test.h. */
#ifndef VF_GPU_TEST_H
#define VF_GPU_TEST_H

#include "../unit/test.h"

#include "backend/backend.h"

/* 1 when the CUDA backend opens (printed once: the device and its features). */
static inline int cuda_usable(void)
{
    static int known = -1;
    if (known >= 0)
        return known;
    vf_backend_options o;
    vf_backend *be = NULL;
    vf_backend_options_init(&o);
    o.kind = VF_BACKEND_CUDA;
    known = vf_backend_create(&o, &be) == VF_OK;
    if (known)
        printf("  device: %s (%s)\n", vf_be_info(be)->device, vf_be_info(be)->features);
    else
        printf("SKIP: %s\n", vf_last_error());
    vf_backend_free(be);
    return known;
}

#define SKIP_WITHOUT_CUDA()     \
    do {                        \
        if (!cuda_usable())     \
            exit(77);           \
    } while (0)

#endif
