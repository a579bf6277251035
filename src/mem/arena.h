/* Arena: every device byte the process uses, carved from one region.
 *
 * The region is reserved once, at creation (context + arena <= budget), and
 * never grows: resident weights, the staging ring, activations and workspaces
 * are offsets into it. A request that does not fit is VF_ERR_BUDGET with what
 * was asked, the largest free extent and the total free, so a planner (or a
 * person) can see whether it is size or fragmentation. Offsets are aligned to
 * VF_ARENA_ALIGN; allocation is best fit (smallest free extent that holds
 * the request, lowest offset on ties) with coalescing of neighbours on free,
 * which keeps long-lived blocks packed and the ring reusable.
 *
 * With a device the region is vf_device_reserve'd, every allocation passes
 * the device's fault hook, and allocated bytes are reported to the monitor as
 * device allocated. Without one (NULL) it is an offset allocator only, for
 * planning and tests: vf_arena_ptr() then returns NULL.
 */
#ifndef VF_MEM_ARENA_H
#define VF_MEM_ARENA_H

#include "mem/device.h"

#define VF_ARENA_ALIGN 256u

typedef struct vf_arena vf_arena;

/* bytes is rounded down to the alignment. */
vf_status vf_arena_create(vf_device *d, uint64_t bytes, vf_arena **out);
/* Frees the region, and with it any allocation still live. */
void vf_arena_free(vf_arena *a);

/* *off receives the offset of at least `bytes` (0 counts as 1) bytes. what
 * names the request in errors ("block 'conv_in'"). */
vf_status vf_arena_alloc(vf_arena *a, uint64_t bytes, const char *what, uint64_t *off);
/* Frees an allocation; an offset that is not one is ignored. */
void vf_arena_release(vf_arena *a, uint64_t off);
/* The device address of an offset (NULL without a device). */
void *vf_arena_ptr(const vf_arena *a, uint64_t off);

/* The bytes an allocation of `bytes` takes (rounded up to the alignment). */
uint64_t vf_arena_round(uint64_t bytes);
uint64_t vf_arena_size(const vf_arena *a);
uint64_t vf_arena_used(const vf_arena *a);
uint64_t vf_arena_peak(const vf_arena *a);
void vf_arena_reset_peak(vf_arena *a);
uint64_t vf_arena_largest_free(const vf_arena *a);
int vf_arena_count(const vf_arena *a);          /* live allocations          */
vf_device *vf_arena_device(const vf_arena *a);

#endif
