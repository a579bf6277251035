/* Monitor (see monitor.h).
 *
 * Counters, the scope stack and the stage table sit under one mutex: updates
 * come at block granularity (an arena allocation, a block conversion), not per
 * kernel, so a lock is cheap next to what it guards and keeps every open
 * scope's peak exact. The cache registry has its own lock, because a drop
 * function updates the counters: clear_cache holds the registry lock, never
 * the counter lock, while it calls them.
 */
#include "mem/monitor.h"
#include "core/alloc.h"
#include "core/error.h"
#include "mem/device.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

typedef struct scope {
    char name[VF_MON_NAME_CAP];
    uint64_t start[VF_MON_COUNT];
    uint64_t peak[VF_MON_COUNT];
    double t0;
} scope;

typedef struct cache_entry {
    void *owner;
    vf_cache_drop_fn drop;
} cache_entry;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t g_cur[VF_MON_COUNT], g_peak[VF_MON_COUNT];
static scope g_scopes[VF_MON_MAX_DEPTH];
static int g_depth;
static vf_mon_stage g_stages[VF_MON_MAX_STAGES];
static int g_nstages;

static pthread_mutex_t g_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static cache_entry *g_caches;
static int g_ncaches, g_cache_cap;

void vf_monitor_add(vf_mon_counter c, int64_t delta)
{
    if ((int)c < 0 || c >= VF_MON_COUNT || delta == 0)
        return;
    pthread_mutex_lock(&g_lock);
    uint64_t v = g_cur[c];
    /* A release never takes a counter below zero, whatever the caller's books say. */
    v = delta < 0 && (uint64_t)(-delta) > v ? 0 : v + (uint64_t)delta;
    g_cur[c] = v;
    if (v > g_peak[c])
        g_peak[c] = v;
    for (int i = 0; i < g_depth; i++)
        if (v > g_scopes[i].peak[c])
            g_scopes[i].peak[c] = v;
    pthread_mutex_unlock(&g_lock);
}

void vf_monitor_current(uint64_t out[VF_MON_COUNT])
{
    pthread_mutex_lock(&g_lock);
    memcpy(out, g_cur, sizeof g_cur);
    pthread_mutex_unlock(&g_lock);
}

void vf_monitor_peak(uint64_t out[VF_MON_COUNT])
{
    pthread_mutex_lock(&g_lock);
    memcpy(out, g_peak, sizeof g_peak);
    pthread_mutex_unlock(&g_lock);
}

void vf_monitor_reset_peak(void)
{
    pthread_mutex_lock(&g_lock);
    memcpy(g_peak, g_cur, sizeof g_cur);
    pthread_mutex_unlock(&g_lock);
}

vf_status vf_monitor_track_begin(const char *name)
{
    if (!name)
        name = "";
    pthread_mutex_lock(&g_lock);
    if (g_depth >= VF_MON_MAX_DEPTH) {
        pthread_mutex_unlock(&g_lock);
        return vf_error(VF_ERR_INVALID_ARG, "track_usage '%s': more than %d nested scopes", name,
                        VF_MON_MAX_DEPTH);
    }
    scope *s = &g_scopes[g_depth++];
    snprintf(s->name, sizeof s->name, "%s", name);
    memcpy(s->start, g_cur, sizeof g_cur);
    memcpy(s->peak, g_cur, sizeof g_cur);
    s->t0 = vf_device_now();
    pthread_mutex_unlock(&g_lock);
    return VF_OK;
}

vf_status vf_monitor_track_end(vf_mon_stage *out)
{
    pthread_mutex_lock(&g_lock);
    if (g_depth == 0) {
        pthread_mutex_unlock(&g_lock);
        return vf_error(VF_ERR_INVALID_ARG, "track_usage end without a matching begin");
    }
    scope *s = &g_scopes[--g_depth];
    if (g_nstages == VF_MON_MAX_STAGES) {
        memmove(g_stages, g_stages + 1, sizeof g_stages[0] * (VF_MON_MAX_STAGES - 1));
        g_nstages--;
    }
    vf_mon_stage *st = &g_stages[g_nstages++];
    memcpy(st->name, s->name, sizeof st->name);
    memcpy(st->start, s->start, sizeof st->start);
    memcpy(st->peak, s->peak, sizeof st->peak);
    memcpy(st->end, g_cur, sizeof st->end);
    st->seconds = vf_device_now() - s->t0;
    if (out)
        *out = *st;
    pthread_mutex_unlock(&g_lock);
    return VF_OK;
}

int vf_monitor_stage_count(void)
{
    pthread_mutex_lock(&g_lock);
    int n = g_nstages;
    pthread_mutex_unlock(&g_lock);
    return n;
}

const vf_mon_stage *vf_monitor_stage_at(int i)
{
    pthread_mutex_lock(&g_lock);
    const vf_mon_stage *s = i >= 0 && i < g_nstages ? &g_stages[i] : NULL;
    pthread_mutex_unlock(&g_lock);
    return s;
}

void vf_monitor_clear_stages(void)
{
    pthread_mutex_lock(&g_lock);
    g_nstages = 0;
    pthread_mutex_unlock(&g_lock);
}

vf_status vf_monitor_register_cache(void *owner, vf_cache_drop_fn drop)
{
    vf_status st = VF_OK;
    pthread_mutex_lock(&g_cache_lock);
    if (g_ncaches == g_cache_cap) {
        int cap = g_cache_cap ? 2 * g_cache_cap : 16;
        cache_entry *c = vf_realloc(g_caches, sizeof *c * (size_t)cap);
        if (!c) {
            st = vf_error_prefix(VF_ERR_NO_MEMORY, "monitor: registering a cache");
            goto done;
        }
        g_caches = c;
        g_cache_cap = cap;
    }
    g_caches[g_ncaches].owner = owner;
    g_caches[g_ncaches].drop = drop;
    g_ncaches++;
done:
    pthread_mutex_unlock(&g_cache_lock);
    return st;
}

void vf_monitor_unregister_cache(void *owner)
{
    pthread_mutex_lock(&g_cache_lock);
    for (int i = 0; i < g_ncaches; i++) {
        if (g_caches[i].owner != owner)
            continue;
        g_caches[i] = g_caches[--g_ncaches];
        break;
    }
    /* The registry's memory goes with its last user, so a process that
     * closed everything holds nothing (leak checkers agree). */
    if (g_ncaches == 0) {
        vf_free(g_caches);
        g_caches = NULL;
        g_cache_cap = 0;
    }
    pthread_mutex_unlock(&g_cache_lock);
}

uint64_t vf_monitor_clear_cache(void)
{
    uint64_t freed = 0;
    pthread_mutex_lock(&g_cache_lock);
    for (int i = 0; i < g_ncaches; i++)
        freed += g_caches[i].drop(g_caches[i].owner);
    pthread_mutex_unlock(&g_cache_lock);
    return freed;
}

/* ---- public API (vramfit.h) --------------------------------------------------------- */

static void to_usage(const uint64_t v[VF_MON_COUNT], vf_memory_usage *u)
{
    u->device_reserved = v[VF_MON_DEVICE_RESERVED];
    u->device_allocated = v[VF_MON_DEVICE_ALLOCATED];
    u->host = v[VF_MON_HOST];
}

vf_status vf_track_usage_begin(const char *stage) { return vf_monitor_track_begin(stage); }

vf_status vf_track_usage_end(vf_memory_usage *peak)
{
    vf_mon_stage s;
    VF_TRY(vf_monitor_track_end(&s));
    if (peak)
        to_usage(s.peak, peak);
    return VF_OK;
}

int vf_usage_stage_count(void) { return vf_monitor_stage_count(); }

vf_status vf_usage_stage(int i, char *name, size_t cap, vf_memory_usage *peak)
{
    vf_status st = VF_OK;
    pthread_mutex_lock(&g_lock);
    if (i < 0 || i >= g_nstages) {
        st = vf_error(VF_ERR_INVALID_ARG, "vf_usage_stage: index %d, %d stages recorded", i, g_nstages);
        goto done;
    }
    if (name && cap)
        snprintf(name, cap, "%s", g_stages[i].name);
    if (peak)
        to_usage(g_stages[i].peak, peak);
done:
    pthread_mutex_unlock(&g_lock);
    return st;
}

void vf_get_memory_usage(vf_memory_usage *current, vf_memory_usage *peak)
{
    uint64_t v[VF_MON_COUNT];
    if (current) {
        vf_monitor_current(v);
        to_usage(v, current);
    }
    if (peak) {
        vf_monitor_peak(v);
        to_usage(v, peak);
    }
}

uint64_t vf_get_peak_vram_usage(void)
{
    uint64_t v[VF_MON_COUNT];
    vf_monitor_peak(v);
    return v[VF_MON_DEVICE_ALLOCATED];
}

void vf_reset_peak_usage(void) { vf_monitor_reset_peak(); }
uint64_t vf_clear_cache(void) { return vf_monitor_clear_cache(); }
