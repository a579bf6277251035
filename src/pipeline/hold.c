/* Holding a model in a tier: the model pool's data path.
 *
 * The pool (mem/pool.c) decides which tier each model should be in; this is
 * what makes the weights be there. The HOST and PINNED tiers are the model's
 * host store (mem/host_store.h): every block's image exactly as the device
 * takes it, so promotion to DEVICE is copies at link speed and no checkpoint
 * read, and demotion from DEVICE copies the resident blocks back instead of
 * throwing them away. Residencies read the store whenever it matches their
 * format, so nothing here changes how a stage runs, only where its bytes come
 * from.
 *
 * The store's memory kind changes only while no residency exists (residencies
 * borrow its entries as host copies), which is why demotion fills the store
 * first, frees the device, and then moves the entries to pageable memory.
 */
#include "core/error.h"
#include "mem/pool.h"
#include "pipeline/model.h"

#include <stdio.h>

static int has_device(const vf_model *m) { return m->mm.dev && !vf_device_is_host(m->mm.dev); }

/* Every present component's images into the store, from the live device
 * residencies where they have them. */
static vf_status fill(vf_model *m)
{
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (!m->present[c])
            continue;
        vf_residency_options o;
        vf_mm_device_options(m, (vf_component)c, &o);
        vf_residency *live = m->mm.comp[c].on_device ? m->res[c] : NULL;
        vf_status st = vf_residency_store_fill(m->ck, &m->bl[c], &o, live);
        if (st != VF_OK)
            return vf_error_prefix(st, "%s: %s", m->path, vf_component_name((vf_component)c));
    }
    return VF_OK;
}

/* The store keeps what the device does not hold. */
static void trim(vf_model *m)
{
    for (int c = 0; c < VF_COMPONENT_COUNT; c++)
        if (m->mm.comp[c].on_device)
            vf_residency_store_trim(m->res[c]);
}

/* Back to `from` after a failed move to a host tier. */
static void restore(vf_model *m, vf_tier from)
{
    char saved[1024];
    snprintf(saved, sizeof saved, "%s", vf_last_error());
    if (from == VF_TIER_DISK)
        vf_model_unload(m);
    else if (from == VF_TIER_DEVICE)
        trim(m); /* the device was not released: the move failed before */
    else
        (void)vf_host_store_set_pinned(m->mm.store, from == VF_TIER_PINNED);
    vf_error(VF_OK, "%s", saved);
}

static vf_status hold_host(vf_model *m, vf_tier from, int pinned)
{
    vf_host_store *store;
    VF_TRY(vf_mm_store(m, &store));
    int was = vf_host_store_pinned(store);
    vf_host_store_prefer_pinned(store, pinned); /* new entries straight into the right memory */
    vf_status st = fill(m);
    if (st == VF_OK) {
        vf_mm_release_device(m);
        st = vf_host_store_set_pinned(store, pinned);
    }
    if (st != VF_OK) {
        vf_host_store_prefer_pinned(store, was);
        restore(m, from);
    }
    return st;
}

static vf_status hold_device(vf_model *m)
{
    vf_status st = vf_model_load(m);
    if (st != VF_OK) {
        /* the store keeps what was not loaded yet; blocks already copied to
         * the device had left it and are read from the checkpoint next time */
        vf_mm_release_device(m);
        return st;
    }
    trim(m);
    return VF_OK;
}

vf_status vf_model_hold(vf_model *m, vf_tier from, vf_tier tier)
{
    if (tier == VF_TIER_DISK) {
        vf_model_unload(m);
        return VF_OK;
    }
    if (!has_device(m)) {
        if (tier == VF_TIER_DEVICE)
            return vf_error(VF_ERR_UNSUPPORTED, "%s: the model is on the cpu: it has no device tier "
                            "(open the pool with a device such as \"cuda\" or \"sim\")", m->path);
        return vf_model_load(m);
    }
    if (tier == VF_TIER_DEVICE)
        return hold_device(m);
    return hold_host(m, from, tier == VF_TIER_PINNED);
}

uint64_t vf_model_held_host_bytes(const vf_model *m) { return vf_host_store_bytes(m->mm.store); }

/* ---- for the model pool (mem/pool.h) ---- */

vf_status vf_pool_open_model(const char *path, const char *config, const vf_pipeline_options *o, vf_model **out)
{
    vf_model_options mo;
    vf_model_options_init(&mo);
    mo.config_dir = config;
    mo.pipeline = o;
    return vf_model_open(path, &mo, out);
}

vf_status vf_pool_hold_model(vf_model *m, vf_tier from, vf_tier to)
{
    m->pool_busy++;
    vf_status st = vf_model_hold(m, from, to);
    m->pool_busy--;
    return st;
}

void vf_pool_attach_model(vf_model *m, vf_status (*hook)(void *pool, const char *id), void *pool, const char *id)
{
    m->pool_hook = hook;
    m->pool = pool;
    m->pool_id = id;
}
