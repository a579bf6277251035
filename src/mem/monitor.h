/* Monitor: how much memory the process holds, now, at most, and per stage.
 *
 * One process-wide set of counters, fed by the pieces that own memory rather
 * than measured after the fact, so a peak is exact and attributable:
 *   device reserved   context + regions reserved on devices (what the driver
 *                     sees; the budget applies to this)
 *   device allocated  context + bytes allocated inside arenas (weights, ring,
 *                     activations: the useful figure, like PyTorch's
 *                     max_memory_allocated)
 *   host              host bytes held for weights: f32 conversions, pinned
 *                     copies, bounce buffers
 * The CPU backend reports no device bytes. Scopes (track_begin/end, nestable)
 * record the peak of each counter between begin and end; ended scopes are
 * kept as a per-stage table until cleared. Caches (residency managers)
 * register a drop function so clear_cache() can free every conversion that
 * can be rebuilt from the checkpoint. All of it is thread-safe.
 */
#ifndef VF_MEM_MONITOR_H
#define VF_MEM_MONITOR_H

#include "vramfit.h"

typedef enum vf_mon_counter {
    VF_MON_DEVICE_RESERVED = 0,
    VF_MON_DEVICE_ALLOCATED,
    VF_MON_HOST,
    VF_MON_COUNT
} vf_mon_counter;

void vf_monitor_add(vf_mon_counter c, int64_t delta);
/* Current and peak (since start or the last reset) of every counter. */
void vf_monitor_current(uint64_t out[VF_MON_COUNT]);
void vf_monitor_peak(uint64_t out[VF_MON_COUNT]);
/* Peaks restart from the current values. */
void vf_monitor_reset_peak(void);

#define VF_MON_MAX_DEPTH 16
#define VF_MON_MAX_STAGES 64
#define VF_MON_NAME_CAP 64

typedef struct vf_mon_stage {
    char name[VF_MON_NAME_CAP];
    uint64_t start[VF_MON_COUNT];  /* values at begin                         */
    uint64_t peak[VF_MON_COUNT];   /* highest values between begin and end    */
    uint64_t end[VF_MON_COUNT];    /* values at end                           */
    double seconds;
} vf_mon_stage;

/* Opens a scope (VF_ERR_INVALID_ARG past VF_MON_MAX_DEPTH nested scopes). */
vf_status vf_monitor_track_begin(const char *name);
/* Closes the innermost scope; *out (may be NULL) receives it, and it is
 * appended to the stage table (the oldest entry drops out when full). */
vf_status vf_monitor_track_end(vf_mon_stage *out);
int vf_monitor_stage_count(void);
/* NULL past the end. The pointer is valid until the next end or clear. */
const vf_mon_stage *vf_monitor_stage_at(int i);
void vf_monitor_clear_stages(void);

/* A cache: drop(owner) frees what can be rebuilt and returns the bytes freed. */
typedef uint64_t (*vf_cache_drop_fn)(void *owner);
vf_status vf_monitor_register_cache(void *owner, vf_cache_drop_fn drop);
void vf_monitor_unregister_cache(void *owner);
/* Calls every registered drop; returns the bytes freed. Not to be called while
 * a registered owner is in use on another thread. */
uint64_t vf_monitor_clear_cache(void);

#endif
