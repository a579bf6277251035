/* Host allocation with a fault-injection hook.
 *
 * All library allocations of any size go through vf_malloc/vf_calloc/vf_realloc
 * so that tests can make the Nth one fail (vf_fault_alloc_fail_at) and check that
 * every error path reports and leaks nothing. On failure these return NULL and set
 * the error message to VF_ERR_NO_MEMORY naming the byte count; callers add context.
 */
#ifndef VF_CORE_ALLOC_H
#define VF_CORE_ALLOC_H

#include <stddef.h>
#include <stdint.h>

void *vf_malloc(size_t n);
void *vf_calloc(size_t count, size_t size);
void *vf_realloc(void *p, size_t n);
void vf_free(void *p);
char *vf_strdup(const char *s);
char *vf_strndup(const char *s, size_t n);
/* Multiplies with overflow check; returns 0 and sets *out on success. */
int vf_mul_overflow(size_t a, size_t b, size_t *out);

/* Test hooks: the nth allocation from now (1 = the next) fails; 0 disables. */
void vf_fault_alloc_fail_at(uint64_t nth);
/* How many allocations have been made since the process started. */
uint64_t vf_fault_alloc_count(void);

#endif
