/* The host store (see host_store.h).
 *
 * Entries are indexed by component, then by block (an array per component,
 * grown to the largest block seen): a residency looks its block up on every
 * acquire that needs host bytes, so lookup is O(1) and nothing is hashed.
 */
#include "mem/host_store.h"
#include "core/alloc.h"
#include "core/error.h"
#include "mem/monitor.h"
#include "vramfit.h"

#include <string.h>

typedef struct entry {
    void *p;
    uint64_t bytes;
    vf_store_format f;
    int pinned;
    int ready;                    /* committed                                 */
} entry;

struct vf_host_store {
    vf_device *dev;               /* pinned memory's source, or NULL           */
    int pinned;
    entry *e[VF_COMPONENT_COUNT];
    int n[VF_COMPONENT_COUNT];
    uint64_t bytes, pinned_bytes;
    int entries;
};

static int can_pin(const vf_host_store *s) { return s->dev && !vf_device_is_host(s->dev); }

vf_status vf_host_store_create(vf_device *dev, vf_host_store **out)
{
    *out = vf_calloc(1, sizeof **out);
    if (!*out)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "host store");
    (*out)->dev = dev;
    return VF_OK;
}

static entry *slot_of(const vf_host_store *s, int comp, int block)
{
    if (comp < 0 || comp >= VF_COMPONENT_COUNT || block < 0 || block >= s->n[comp])
        return NULL;
    return &s->e[comp][block];
}

static void entry_release(vf_host_store *s, entry *e)
{
    if (!e->p)
        return;
    if (e->pinned)
        vf_device_pinned_free(s->dev, e->p, e->bytes);
    else
        vf_free(e->p);
    s->bytes -= e->bytes;
    if (e->pinned)
        s->pinned_bytes -= e->bytes;
    s->entries--;
    vf_monitor_add(VF_MON_HOST, -(int64_t)e->bytes);
    memset(e, 0, sizeof *e);
}

void vf_host_store_clear(vf_host_store *s)
{
    if (!s)
        return;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++)
        for (int b = 0; b < s->n[c]; b++)
            entry_release(s, &s->e[c][b]);
}

void vf_host_store_free(vf_host_store *s)
{
    if (!s)
        return;
    vf_host_store_clear(s);
    for (int c = 0; c < VF_COMPONENT_COUNT; c++)
        vf_free(s->e[c]);
    vf_free(s);
}

static int same_format(const vf_store_format *a, const vf_store_format *b)
{
    return a->image == b->image && !a->ohwi == !b->ohwi && a->quant == b->quant;
}

const void *vf_host_store_get(const vf_host_store *s, int comp, int block, const vf_store_format *f,
                              uint64_t bytes, int *pinned)
{
    const entry *e = s ? slot_of(s, comp, block) : NULL;
    if (!e || !e->ready || e->bytes != bytes || !same_format(&e->f, f))
        return NULL;
    if (pinned)
        *pinned = e->pinned;
    return e->p;
}

/* Grows component comp's array to hold block. */
static vf_status grow(vf_host_store *s, int comp, int block)
{
    if (block < s->n[comp])
        return VF_OK;
    int want = block + 1 > 2 * s->n[comp] ? block + 1 : 2 * s->n[comp];
    entry *g = vf_realloc(s->e[comp], sizeof(entry) * (size_t)want);
    if (!g)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "host store");
    memset(g + s->n[comp], 0, sizeof(entry) * (size_t)(want - s->n[comp]));
    s->e[comp] = g;
    s->n[comp] = want;
    return VF_OK;
}

/* Memory of the store's current kind. */
static vf_status take(vf_host_store *s, uint64_t bytes, int pinned, void **p)
{
    if (pinned)
        return vf_device_pinned_alloc(s->dev, bytes ? bytes : 1, p);
    *p = bytes <= SIZE_MAX ? vf_malloc((size_t)(bytes ? bytes : 1)) : NULL;
    return *p ? VF_OK : VF_ERR_NO_MEMORY;
}

static void account(vf_host_store *s, entry *e)
{
    s->bytes += e->bytes;
    if (e->pinned)
        s->pinned_bytes += e->bytes;
    s->entries++;
    vf_monitor_add(VF_MON_HOST, (int64_t)e->bytes);
}

vf_status vf_host_store_alloc(vf_host_store *s, int comp, int block, const vf_store_format *f, uint64_t bytes,
                              void **out)
{
    *out = NULL;
    if (comp < 0 || comp >= VF_COMPONENT_COUNT || block < 0)
        return vf_error(VF_ERR_INTERNAL, "host store: component %d, block %d", comp, block);
    VF_TRY(grow(s, comp, block));
    entry *e = &s->e[comp][block];
    entry_release(s, e);
    int pinned = s->pinned && can_pin(s);
    vf_status st = take(s, bytes, pinned, &e->p);
    if (st != VF_OK)
        return vf_error_prefix(st, "host store: %llu bytes of %s memory", (unsigned long long)bytes,
                               pinned ? "pinned" : "host");
    e->bytes = bytes;
    e->f = *f;
    e->pinned = pinned;
    account(s, e);
    *out = e->p;
    return VF_OK;
}

void vf_host_store_commit(vf_host_store *s, int comp, int block)
{
    entry *e = slot_of(s, comp, block);
    if (e && e->p)
        e->ready = 1;
}

void vf_host_store_drop(vf_host_store *s, int comp, int block)
{
    entry *e = s ? slot_of(s, comp, block) : NULL;
    if (e)
        entry_release(s, e);
}

uint64_t vf_host_store_drop_component(vf_host_store *s, int comp)
{
    if (!s || comp < 0 || comp >= VF_COMPONENT_COUNT)
        return 0;
    uint64_t before = s->bytes;
    for (int b = 0; b < s->n[comp]; b++)
        entry_release(s, &s->e[comp][b]);
    return before - s->bytes;
}

vf_status vf_host_store_adopt(vf_host_store *s, int comp, int block, const vf_store_format *f, void *p,
                              uint64_t bytes, int pinned)
{
    if (comp < 0 || comp >= VF_COMPONENT_COUNT || block < 0 || (pinned && !can_pin(s)))
        return vf_error(VF_ERR_INTERNAL, "host store: adopting component %d, block %d", comp, block);
    VF_TRY(grow(s, comp, block));
    entry *e = &s->e[comp][block];
    entry_release(s, e);
    e->p = p;
    e->bytes = bytes;
    e->f = *f;
    e->pinned = pinned;
    e->ready = 1;
    account(s, e);
    return VF_OK;
}

/* Moves one entry to pinned or pageable memory. */
static vf_status move_entry(vf_host_store *s, entry *e, int pinned)
{
    void *p;
    VF_TRY(take(s, e->bytes, pinned, &p));
    memcpy(p, e->p, (size_t)e->bytes);
    entry moved = *e;
    moved.p = p;
    moved.pinned = pinned;
    entry_release(s, e);
    *e = moved;
    account(s, e);
    return VF_OK;
}

vf_status vf_host_store_set_pinned(vf_host_store *s, int pinned)
{
    s->pinned = pinned;
    int want = pinned && can_pin(s);
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        for (int b = 0; b < s->n[c]; b++) {
            entry *e = &s->e[c][b];
            if (!e->p || e->pinned == want)
                continue;
            vf_status st = move_entry(s, e, want);
            if (st != VF_OK)
                return vf_error_prefix(st, "host store: moving %llu bytes to %s memory",
                                       (unsigned long long)e->bytes, want ? "pinned" : "host");
        }
    }
    return VF_OK;
}

int vf_host_store_pinned(const vf_host_store *s) { return s->pinned; }
void vf_host_store_prefer_pinned(vf_host_store *s, int pinned) { s->pinned = pinned; }
uint64_t vf_host_store_bytes(const vf_host_store *s) { return s ? s->bytes : 0; }
uint64_t vf_host_store_pinned_bytes(const vf_host_store *s) { return s ? s->pinned_bytes : 0; }
int vf_host_store_entries(const vf_host_store *s) { return s ? s->entries : 0; }
