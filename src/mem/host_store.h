/* The host store: a model's block images held in host memory across plans.
 *
 * A residency lives as long as one placement: when the model pool pushes a
 * model off the device (or the plan changes) its residencies are freed, and
 * with them every converted weight. The store is what survives: per
 * (component, block) the block's image exactly as a residency would put it
 * on the device (image dtype, filter layout, packed weights, LoRAs merged),
 * in pageable or page-locked memory. A residency created with a store reads
 * from it before it reads the checkpoint, so a model the pool demoted to
 * PINNED comes back at link speed, with no file read and no conversion.
 *
 * Entries carry the format they were made in; a residency asking for another
 * format (a different dtype policy, a LoRA added since) does not match and
 * converts from the checkpoint as it would without a store. The store never
 * fills itself: the pool's data path fills it (vf_residency_store_fill) and
 * clears it. Pinned entries come from the model's device (budgeted there);
 * all bytes are reported to the monitor as host memory. One thread at a time,
 * like the model that owns it.
 */
#ifndef VF_MEM_HOST_STORE_H
#define VF_MEM_HOST_STORE_H

#include "core/dtype.h"
#include "mem/device.h"

#include <stdint.h>

typedef struct vf_host_store vf_host_store;

/* The format of a block image: what a residency's options make of a weight. */
typedef struct vf_store_format {
    vf_dtype image;               /* image dtype (F32, F16, BF16)              */
    int ohwi;                     /* conv filters OHWI                         */
    vf_dtype quant;               /* packed weights' format, F32: none         */
} vf_store_format;

/* dev: where pinned memory comes from (NULL or a CPU device: none). */
vf_status vf_host_store_create(vf_device *dev, vf_host_store **out);
void vf_host_store_free(vf_host_store *s);
/* Frees every entry. */
void vf_host_store_clear(vf_host_store *s);

/* The image of (comp, block) if the store holds it in format f with exactly
 * bytes bytes; NULL otherwise. *pinned (may be NULL) says whether it is
 * page-locked. Valid until the entry is dropped or moved. */
const void *vf_host_store_get(const vf_host_store *s, int comp, int block, const vf_store_format *f,
                              uint64_t bytes, int *pinned);
/* Space for the image of (comp, block), replacing what the store held for it,
 * in pinned memory when the store is pinned. The entry counts only once
 * committed; until then get() does not return it. */
vf_status vf_host_store_alloc(vf_host_store *s, int comp, int block, const vf_store_format *f, uint64_t bytes,
                              void **out);
void vf_host_store_commit(vf_host_store *s, int comp, int block);
void vf_host_store_drop(vf_host_store *s, int comp, int block);
/* Every entry of component comp. Returns the bytes freed. */
uint64_t vf_host_store_drop_component(vf_host_store *s, int comp);
/* Takes p (bytes, from vf_malloc or, pinned, from the store's device) as the
 * committed image of (comp, block) without copying it. On failure p is still
 * the caller's. */
vf_status vf_host_store_adopt(vf_host_store *s, int comp, int block, const vf_store_format *f, void *p,
                              uint64_t bytes, int pinned);

/* New entries pinned (1) or pageable (0); existing entries move to that kind
 * of memory (copied). On failure (pinned memory exhausted) the entries moved
 * so far stay moved, the rest stay where they were, and every entry is valid. */
vf_status vf_host_store_set_pinned(vf_host_store *s, int pinned);
int vf_host_store_pinned(const vf_host_store *s);
/* The kind of memory new entries take, existing ones left where they are
 * (for filling while residencies borrow entries). */
void vf_host_store_prefer_pinned(vf_host_store *s, int pinned);

/* Bytes held, and of those pinned; entries held. */
uint64_t vf_host_store_bytes(const vf_host_store *s);
uint64_t vf_host_store_pinned_bytes(const vf_host_store *s);
int vf_host_store_entries(const vf_host_store *s);

#endif
