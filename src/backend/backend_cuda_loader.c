/* Finding and loading libvramfit-cuda.so at run time.
 *
 * The CUDA backend is a separate shared library so that the core and the CLI
 * build and run where CUDA is absent: nothing here links against CUDA, and a
 * missing library, driver or symbol becomes "CUDA backend unavailable: why"
 * instead of a loader failure at start-up. Search order: the explicit path,
 * $VF_CUDA_LIB, the dynamic loader's own search (LD_LIBRARY_PATH, rpath,
 * ld.so.cache), then the directory of the core library or program and its
 * parent (test programs in the build tree) and ../lib, which is where the
 * build and `make install` put it.
 */
#include "backend/backend.h"
#include "core/error.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define VF_CUDA_LIB_NAME "libvramfit-cuda.so"
/* Never unloaded: the CUDA runtime and cuBLAS keep process-wide state (and
 * static destructors) that do not survive being unmapped; dlclose only drops
 * the reference. */
#define VF_DL_FLAGS (RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE)

/* dlopen with the loader's message kept in why (first failure wins). */
static void *try_open(const char *path, char *why, size_t cap)
{
    void *h = dlopen(path, VF_DL_FLAGS);
    if (!h && !why[0]) {
        const char *e = dlerror();
        if (!e)
            e = path;
        size_t n = strlen(e) < cap - 1 ? strlen(e) : cap - 1;
        memcpy(why, e, n);
        why[n] = '\0';
    }
    return h;
}

/* Writes the directory of path (up to the last '/') into dir; 0 if none. */
static int dir_of(const char *path, char *dir, size_t cap)
{
    const char *slash = path ? strrchr(path, '/') : NULL;
    if (!slash || (size_t)(slash - path) + 1 >= cap)
        return 0;
    memcpy(dir, path, (size_t)(slash - path));
    dir[slash - path] = '\0';
    return 1;
}

static void *open_beside(const char *base, char *why, size_t cap)
{
    static const char *const rel[] = {"", "/..", "/../lib", "/../lib64"};
    char dir[PATH_MAX], path[PATH_MAX + 64];
    void *h = NULL;
    if (!dir_of(base, dir, sizeof dir))
        return NULL;
    for (size_t i = 0; i < sizeof rel / sizeof rel[0] && !h; i++) {
        snprintf(path, sizeof path, "%s%s/%s", dir, rel[i], VF_CUDA_LIB_NAME);
        if (access(path, F_OK) == 0)
            h = try_open(path, why, cap);
    }
    return h;
}

static void *search(char *why, size_t cap)
{
    const char *env = getenv("VF_CUDA_LIB");
    if (env && env[0])
        return try_open(env, why, cap);
    void *h = dlopen(VF_CUDA_LIB_NAME, VF_DL_FLAGS);
    if (h)
        return h;
    /* A library that exists but fails to load (missing libcublasLt...) says
     * more than "not found": keep that message rather than the search miss. */
    Dl_info info;
    if (dladdr((void *)vf_backend_cuda_load, &info) && info.dli_fname && info.dli_fname[0])
        h = open_beside(info.dli_fname, why, cap);
    if (!h) {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n > 0) {
            exe[n] = '\0';
            h = open_beside(exe, why, cap);
        }
    }
    if (!h && !why[0])
        snprintf(why, cap, "%s not found (set VF_CUDA_LIB to its path)", VF_CUDA_LIB_NAME);
    return h;
}

vf_status vf_backend_cuda_load(const char *library, vf_backend_open_fn *open, void **dl)
{
    char why[512] = "";
    void *h;
    *open = NULL;
    *dl = NULL;
    h = library && library[0] ? try_open(library, why, sizeof why) : search(why, sizeof why);
    if (!h)
        return vf_error(VF_ERR_DEVICE, "CUDA backend unavailable: %s", why);
    void *sym = dlsym(h, VF_CUDA_ENTRY);
    if (!sym) {
        dlclose(h);
        return vf_error(VF_ERR_DEVICE, "CUDA backend unavailable: %s has no %s", VF_CUDA_LIB_NAME,
                        VF_CUDA_ENTRY);
    }
    memcpy(open, &sym, sizeof sym);
    *dl = h;
    return VF_OK;
}
