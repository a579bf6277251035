/* Host allocation wrappers with one global failure counter for fault injection.
 * The counter is atomic so that threaded tests can use it. */
#include "core/alloc.h"
#include "core/error.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static _Atomic uint64_t g_count;
static _Atomic uint64_t g_fail_at;  /* absolute allocation number that fails; 0 = never */

static int should_fail(void)
{
    uint64_t n = atomic_fetch_add(&g_count, 1) + 1;
    uint64_t f = atomic_load(&g_fail_at);
    return f != 0 && n == f;
}

void vf_fault_alloc_fail_at(uint64_t nth)
{
    atomic_store(&g_fail_at, nth ? atomic_load(&g_count) + nth : 0);
}

uint64_t vf_fault_alloc_count(void) { return atomic_load(&g_count); }

static void *oom(size_t n)
{
    vf_error(VF_ERR_NO_MEMORY, "out of host memory allocating %zu bytes", n);
    return NULL;
}

void *vf_malloc(size_t n)
{
    if (should_fail())
        return oom(n);
    void *p = malloc(n ? n : 1);
    return p ? p : oom(n);
}

void *vf_calloc(size_t count, size_t size)
{
    size_t n;
    if (vf_mul_overflow(count, size, &n))
        return oom(SIZE_MAX);
    if (should_fail())
        return oom(n);
    void *p = calloc(count ? count : 1, size ? size : 1);
    return p ? p : oom(n);
}

void *vf_realloc(void *p, size_t n)
{
    if (should_fail())
        return oom(n);
    void *q = realloc(p, n ? n : 1);
    return q ? q : oom(n);
}

void vf_free(void *p) { free(p); }

char *vf_strndup(const char *s, size_t n)
{
    char *d = vf_malloc(n + 1);
    if (!d)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *vf_strdup(const char *s) { return vf_strndup(s, strlen(s)); }

int vf_mul_overflow(size_t a, size_t b, size_t *out)
{
    return __builtin_mul_overflow(a, b, out);
}
