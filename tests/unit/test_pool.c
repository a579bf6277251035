/* The model pool: the issue's scenario under every policy (capacity 5 GB, three
 * 2 GB models, use the first, load a fourth), cases where the policies disagree,
 * the demotion chain DEVICE -> PINNED -> HOST -> DISK, budgets and errors, mover
 * failures undone, allocation failures across registry loading and loads, the
 * registry file with the tiny reference fixtures (exact header sizes, relative
 * paths), and four threads hammering one pool while its capacities must hold.
 *
 * Multi-GB checkpoints cannot be made here, so most models are registered by
 * size through the test hook; a recording mover sees every move the pool makes
 * and checks that each starts where the previous one left the model.
 */
#include "core/alloc.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "mem/pool.h"
#include "test.h"
#include "test_tmp.h"

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#define GB 1000000000ull
#define MB 1000000ull

/* ---- a recording mover ---------------------------------------------------------- */

#define REC_MAX 64

typedef struct rec {
    int calls;
    int fail_at;                  /* the call (1-based) that fails; 0: none    */
    int fail_from;                /* every call from this one fails; 0: none   */
    int mismatches;               /* a move that did not start where we saw the model */
    int yield;                    /* yield the CPU in each move: widens race windows */
    char log[REC_MAX][96];
    int nlog;
    char ids[32][32];
    vf_tier tier[32];
    int nids;
} rec;

static vf_tier *rec_tier(rec *r, const char *id)
{
    for (int i = 0; i < r->nids; i++)
        if (strcmp(r->ids[i], id) == 0)
            return &r->tier[i];
    if (r->nids == 32)
        return NULL;
    snprintf(r->ids[r->nids], sizeof r->ids[0], "%s", id);
    r->tier[r->nids] = VF_TIER_DISK;
    return &r->tier[r->nids++];
}

static const char *tn(vf_tier t)
{
    static const char *n[] = {"disk", "host", "pinned", "device"};
    return (int)t >= 0 && t < VF_TIER_COUNT ? n[t] : "?";
}

static vf_status rec_move(rec *r, const vf_pool_move *mv, int up)
{
    r->calls++;
    if (r->yield)
        sched_yield();
    vf_tier *t = rec_tier(r, mv->id);
    if (!t || *t != mv->from || (up ? mv->to <= mv->from : mv->to >= mv->from))
        r->mismatches++;
    if ((r->fail_at && r->calls == r->fail_at) || (r->fail_from && r->calls >= r->fail_from))
        return vf_error(VF_ERR_DEVICE, "mover: simulated failure moving '%s'", mv->id);
    if (t)
        *t = mv->to;
    if (r->nlog < REC_MAX)
        snprintf(r->log[r->nlog++], sizeof r->log[0], "%s %s->%s", mv->id, tn(mv->from), tn(mv->to));
    return VF_OK;
}

static vf_status rec_promote(void *u, const vf_pool_move *mv) { return rec_move(u, mv, 1); }
static vf_status rec_demote(void *u, const vf_pool_move *mv) { return rec_move(u, mv, 0); }

static void rec_attach(vf_pool *p, rec *r)
{
    memset(r, 0, sizeof *r);
    vf_pool_mover mv = {rec_promote, rec_demote, r};
    CHECK_OK(vf_pool_set_mover(p, &mv));
}

/* The log joined with ", " (for messages and comparisons). */
static const char *rec_joined(const rec *r)
{
    static char buf[REC_MAX * 96];
    buf[0] = 0;
    for (int i = 0; i < r->nlog; i++) {
        if (i)
            strcat(buf, ", ");
        strcat(buf, r->log[i]);
    }
    return buf;
}

#define CHECK_LOG(r, want) CHECK_MSG(strcmp(rec_joined(r), want) == 0, "moves '%s', want '%s'", rec_joined(r), want)

/* ---- helpers -------------------------------------------------------------------- */

static vf_pool *make_pool(uint64_t device, uint64_t host, uint64_t pinned, vf_eviction_policy ev)
{
    vf_pool_options o;
    vf_pool_options_init(&o);
    o.device_capacity = device;
    o.host_capacity = host;
    o.pinned_capacity = pinned;
    o.eviction = ev;
    vf_pool *p = NULL;
    CHECK_OK(vf_pool_create(&o, &p));
    return p;
}

/* A checkpoint of `bytes`, spread over the components as a real one would be. */
static void add(vf_pool *p, const char *id, uint64_t bytes)
{
    uint64_t c[VF_COMPONENT_COUNT] = {0};
    c[VF_COMPONENT_TEXT_ENCODER] = bytes / 10;
    c[VF_COMPONENT_VAE] = bytes / 20;
    c[VF_COMPONENT_UNET] = bytes - c[VF_COMPONENT_TEXT_ENCODER] - c[VF_COMPONENT_VAE];
    CHECK_OK(vf_pool_register_sized(p, id, VF_POOL_CHECKPOINT, c));
}

static vf_tier tier_of(vf_pool *p, const char *id)
{
    vf_pool_model_info mi;
    vf_status st = vf_pool_info(p, id, &mi);
    CHECK_MSG(st == VF_OK, "info '%s': %s", id, vf_last_error());
    return st == VF_OK ? mi.tier : (vf_tier)-1;
}

static int loaded(vf_pool *p, const char *id)
{
    int l = -1;
    CHECK_OK(vf_pool_is_loaded(p, id, &l));
    return l;
}

#define CHECK_TIER(p, id, t) \
    CHECK_MSG(tier_of(p, id) == (t), "'%s' is in %s, want %s", id, tn(tier_of(p, id)), tn(t))

/* Capacities hold and usage equals the sum over the models. */
static void check_invariants(vf_pool *p)
{
    vf_pool_usage u;
    CHECK_OK(vf_pool_get_usage(p, &u));
    CHECK(u.bytes[VF_TIER_DEVICE] <= u.device_capacity);
    CHECK(u.bytes[VF_TIER_HOST] + u.bytes[VF_TIER_PINNED] <= u.host_capacity);
    CHECK(u.bytes[VF_TIER_PINNED] <= u.pinned_capacity);
    uint64_t sum[VF_TIER_COUNT] = {0};
    size_t nloaded = 0;
    for (size_t i = 0; i < vf_pool_count(p); i++) {
        vf_pool_model_info mi;
        CHECK_OK(vf_pool_info_at(p, i, &mi));
        sum[mi.tier] += mi.bytes;
        nloaded += mi.tier != VF_TIER_DISK;
        CHECK(mi.bytes_at[VF_TIER_DISK] == mi.bytes && mi.bytes_at[mi.tier] == mi.bytes);
    }
    for (int t = 0; t < VF_TIER_COUNT; t++)
        CHECK(sum[t] == u.bytes[t]);
    CHECK(nloaded == u.loaded && u.models == vf_pool_count(p));
}

/* Everything the pool reports, for "unchanged" comparisons. */
typedef struct snap {
    size_t n;
    vf_pool_model_info mi[16];
    vf_pool_usage u;
} snap;

static void take(vf_pool *p, snap *s)
{
    memset(s, 0, sizeof *s);
    s->n = vf_pool_count(p);
    for (size_t i = 0; i < s->n && i < 16; i++)
        CHECK_OK(vf_pool_info_at(p, i, &s->mi[i]));
    CHECK_OK(vf_pool_get_usage(p, &s->u));
}

static int same(const snap *a, const snap *b)
{
    if (a->n != b->n || memcmp(&a->u, &b->u, sizeof a->u) != 0)
        return 0;
    for (size_t i = 0; i < a->n && i < 16; i++) {
        const vf_pool_model_info *x = &a->mi[i], *y = &b->mi[i];
        if (strcmp(x->id, y->id) || x->tier != y->tier || x->bytes != y->bytes || x->uses != y->uses ||
            x->last_use != y->last_use)
            return 0;
    }
    return 1;
}

static const vf_eviction_policy all_policies[] = {VF_EVICT_LRU, VF_EVICT_LFU, VF_EVICT_LARGEST};
static const char *policy_names[] = {"lru", "lfu", "largest"};

/* ---- the issue's scenario ----------------------------------------------------------- */

/* As the issue states it: device capacity 5 GB, three 2 GB models, use the first,
 * load a fourth. Three 2 GB models do not fit 5 GB, so the third load already
 * demotes one (the first, least recently used then) to pinned memory; the first is
 * then used; the fourth load demotes the second from the device under every
 * policy (LRU: least recent; LFU: 1 use like the third, and older; LARGEST: all
 * equal, so the least recent). The first stays loaded (pinned), the third on the
 * device. */
static void test_issue_scenario_5gb(void)
{
    for (int k = 0; k < 3; k++) {
        vf_pool *p = make_pool(5 * GB, 8 * GB, VF_POOL_UNLIMITED, all_policies[k]);
        if (!p)
            return;
        rec r;
        rec_attach(p, &r);
        add(p, "m1", 2 * GB);
        add(p, "m2", 2 * GB);
        add(p, "m3", 2 * GB);
        add(p, "m4", 2 * GB);
        CHECK_OK(vf_pool_load(p, "m1", VF_TIER_DEVICE));
        CHECK_OK(vf_pool_load(p, "m2", VF_TIER_DEVICE));
        CHECK_OK(vf_pool_load(p, "m3", VF_TIER_DEVICE));
        CHECK_OK(vf_pool_touch(p, "m1"));
        CHECK_OK(vf_pool_load(p, "m4", VF_TIER_DEVICE));
        printf("  %-7s %s\n", policy_names[k], rec_joined(&r));
        CHECK_LOG(&r, "m1 disk->device, m2 disk->device, m1 device->pinned, m3 disk->device, "
                      "m2 device->pinned, m4 disk->device");
        CHECK_TIER(p, "m1", VF_TIER_PINNED);
        CHECK_TIER(p, "m2", VF_TIER_PINNED);
        CHECK_TIER(p, "m3", VF_TIER_DEVICE);
        CHECK_TIER(p, "m4", VF_TIER_DEVICE);
        CHECK(loaded(p, "m1") == 1 && loaded(p, "m2") == 1);
        vf_pool_usage u;
        CHECK_OK(vf_pool_get_usage(p, &u));
        CHECK(u.bytes[VF_TIER_DEVICE] == 4 * GB && u.bytes[VF_TIER_PINNED] == 4 * GB);
        CHECK(u.evictions == 2 && u.loaded == 4);
        CHECK(r.mismatches == 0);
        check_invariants(p);
        vf_pool_free(p);
    }
}

/* The scenario where the three fit (6 GB): only the fourth load evicts, and it
 * evicts the second under every policy; the others stay on the device. With host
 * room the second is demoted to pinned memory and still loaded; without, it goes
 * back to disk. */
static void test_scenario_three_fit(void)
{
    for (int k = 0; k < 3; k++) {
        for (int host = 0; host < 2; host++) {
            vf_pool *p = make_pool(6 * GB, host ? 8 * GB : 0, VF_POOL_UNLIMITED, all_policies[k]);
            if (!p)
                return;
            rec r;
            rec_attach(p, &r);
            const char *ids[] = {"m1", "m2", "m3", "m4"};
            for (int i = 0; i < 4; i++)
                add(p, ids[i], 2 * GB);
            for (int i = 0; i < 3; i++)
                CHECK_OK(vf_pool_load(p, ids[i], VF_TIER_DEVICE));
            CHECK_OK(vf_pool_touch(p, "m1"));
            CHECK_OK(vf_pool_load(p, "m4", VF_TIER_DEVICE));
            CHECK_LOG(&r, host ? "m1 disk->device, m2 disk->device, m3 disk->device, m2 device->pinned, "
                                 "m4 disk->device"
                               : "m1 disk->device, m2 disk->device, m3 disk->device, m2 device->disk, "
                                 "m4 disk->device");
            CHECK_TIER(p, "m1", VF_TIER_DEVICE);
            CHECK_TIER(p, "m2", host ? VF_TIER_PINNED : VF_TIER_DISK);
            CHECK_TIER(p, "m3", VF_TIER_DEVICE);
            CHECK_TIER(p, "m4", VF_TIER_DEVICE);
            CHECK(loaded(p, "m1") == 1 && loaded(p, "m3") == 1 && loaded(p, "m4") == 1);
            CHECK(loaded(p, "m2") == host);
            CHECK(r.mismatches == 0);
            check_invariants(p);
            vf_pool_free(p);
        }
    }
}

/* ---- the policies where they disagree ------------------------------------------------ */

/* Loads sizes[i] GB/10 models a, b, c (in order), runs the touches, then loads d
 * (dsize) and returns the mover's log of that last load. */
static void run_case(vf_eviction_policy ev, uint64_t cap, const uint64_t sizes[4], const char *before,
                     char *out, size_t outcap)
{
    vf_pool *p = make_pool(cap, 0, 0, ev);
    if (!p)
        return;
    rec r;
    rec_attach(p, &r);
    const char *ids[] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++)
        add(p, ids[i], sizes[i]);
    /* before: "L" loads the next model, a letter touches it */
    int next = 0;
    for (const char *s = before; *s; s++) {
        if (*s == 'L') {
            CHECK_OK(vf_pool_load(p, ids[next++], VF_TIER_DEVICE));
        } else {
            char id[2] = {*s, 0};
            CHECK_OK(vf_pool_touch(p, id));
        }
    }
    int skip = r.nlog;
    CHECK_OK(vf_pool_load(p, "d", VF_TIER_DEVICE));
    out[0] = 0;
    for (int i = skip; i < r.nlog; i++) {
        if (i > skip)
            strncat(out, ", ", outcap - strlen(out) - 1);
        strncat(out, r.log[i], outcap - strlen(out) - 1);
    }
    CHECK(r.mismatches == 0);
    check_invariants(p);
    vf_pool_free(p);
}

static void check_case(vf_eviction_policy ev, uint64_t cap, const uint64_t sizes[4], const char *before,
                       const char *want)
{
    char got[512];
    run_case(ev, cap, sizes, before, got, sizeof got);
    CHECK_MSG(strcmp(got, want) == 0, "%s after '%s': moves '%s', want '%s'", policy_names[ev], before, got,
              want);
}

static void test_policies_disagree(void)
{
    const uint64_t two[4] = {2 * GB, 2 * GB, 2 * GB, 2 * GB};
    /* a used most but longest ago; b and c used twice, b older: LRU drops a, LFU b. */
    const char *hist = "LaaaLLbc";
    check_case(VF_EVICT_LRU, 6 * GB, two, hist, "a device->disk, d disk->device");
    check_case(VF_EVICT_LFU, 6 * GB, two, hist, "b device->disk, d disk->device");
    check_case(VF_EVICT_LARGEST, 6 * GB, two, hist, "a device->disk, d disk->device");

    /* 1 + 2 + 1.5 GB loaded, 1 GB more needs 0.5 GB: LARGEST drops b (2 GB), the
     * others a (least recent, and all used once). */
    const uint64_t mixed[4] = {1 * GB, 2 * GB, 1500 * MB, 1 * GB};
    check_case(VF_EVICT_LRU, 5 * GB, mixed, "LLL", "a device->disk, d disk->device");
    check_case(VF_EVICT_LFU, 5 * GB, mixed, "LLL", "a device->disk, d disk->device");
    check_case(VF_EVICT_LARGEST, 5 * GB, mixed, "LLL", "b device->disk, d disk->device");

    /* Several victims: 1 + 1 + 2 GB loaded, 3 GB more. LRU drops a then b, or c
     * alone once a and b were used after it; LARGEST and LFU (a and b used twice)
     * drop c alone. */
    const uint64_t multi[4] = {1 * GB, 1 * GB, 2 * GB, 3 * GB};
    check_case(VF_EVICT_LRU, 5 * GB, multi, "LLLab", "c device->disk, d disk->device");
    check_case(VF_EVICT_LRU, 5 * GB, multi, "LLL", "a device->disk, b device->disk, d disk->device");
    check_case(VF_EVICT_LFU, 5 * GB, multi, "LLLab", "c device->disk, d disk->device");
    check_case(VF_EVICT_LARGEST, 5 * GB, multi, "LLL", "c device->disk, d disk->device");
}

/* ---- demotion through the tiers ------------------------------------------------------- */

static void test_demotion_chain(void)
{
    /* device 4 GB, host 4 GB of which 2 GB may be pinned, 2 GB models */
    vf_pool *p = make_pool(4 * GB, 4 * GB, 2 * GB, VF_EVICT_LRU);
    if (!p)
        return;
    rec r;
    rec_attach(p, &r);
    const char *ids[] = {"A", "B", "C", "D", "E", "F"};
    for (int i = 0; i < 6; i++)
        add(p, ids[i], 2 * GB);
    CHECK_OK(vf_pool_load(p, "A", VF_TIER_DEVICE));
    CHECK_OK(vf_pool_load(p, "B", VF_TIER_DEVICE));
    CHECK_OK(vf_pool_load(p, "C", VF_TIER_DEVICE)); /* A: device -> pinned (room there)      */
    CHECK_OK(vf_pool_load(p, "D", VF_TIER_DEVICE)); /* B: pinned full, host has room -> host */
    CHECK_OK(vf_pool_load(p, "E", VF_TIER_DEVICE)); /* C: host full -> disk                  */
    CHECK_LOG(&r, "A disk->device, B disk->device, A device->pinned, C disk->device, B device->host, "
                  "D disk->device, C device->disk, E disk->device");
    CHECK_TIER(p, "A", VF_TIER_PINNED);
    CHECK_TIER(p, "B", VF_TIER_HOST);
    CHECK_TIER(p, "C", VF_TIER_DISK);
    vf_pool_usage u;
    CHECK_OK(vf_pool_get_usage(p, &u));
    CHECK(u.bytes[VF_TIER_DEVICE] == 4 * GB && u.bytes[VF_TIER_PINNED] == 2 * GB &&
          u.bytes[VF_TIER_HOST] == 2 * GB && u.bytes[VF_TIER_DISK] == 4 * GB && u.evictions == 3);
    check_invariants(p);

    /* Host pressure: F into host memory pushes the least recent of A and B to disk. */
    r.nlog = 0;
    CHECK_OK(vf_pool_load(p, "F", VF_TIER_HOST));
    CHECK_LOG(&r, "A pinned->disk, F disk->host");
    /* Promotions within host memory; pinned pressure pushes F back to pageable. */
    r.nlog = 0;
    CHECK_OK(vf_pool_load(p, "F", VF_TIER_PINNED));
    CHECK_OK(vf_pool_load(p, "B", VF_TIER_PINNED));
    CHECK_LOG(&r, "F host->pinned, F pinned->host, B host->pinned");
    check_invariants(p);
    /* B onto the device: D (least recent there) has no host room left -> disk;
     * then B leaves pinned memory. */
    r.nlog = 0;
    CHECK_OK(vf_pool_load(p, "B", VF_TIER_DEVICE));
    CHECK_LOG(&r, "D device->disk, B pinned->device");
    CHECK_OK(vf_pool_get_usage(p, &u));
    CHECK(u.bytes[VF_TIER_DEVICE] == 4 * GB && u.bytes[VF_TIER_PINNED] == 0 &&
          u.bytes[VF_TIER_HOST] == 2 * GB);
    /* A load never demotes: B asked for host stays on the device, counting a use. */
    vf_pool_model_info before, after;
    CHECK_OK(vf_pool_info(p, "B", &before));
    r.nlog = 0;
    CHECK_OK(vf_pool_load(p, "B", VF_TIER_HOST));
    CHECK_OK(vf_pool_info(p, "B", &after));
    CHECK(after.tier == VF_TIER_DEVICE && after.uses == before.uses + 1 && after.last_use > before.last_use);
    CHECK(r.nlog == 0);
    /* Unload: back to disk, history kept; a second unload is a no-op. */
    CHECK_OK(vf_pool_unload(p, "B"));
    CHECK_OK(vf_pool_unload(p, "B"));
    CHECK_LOG(&r, "B device->disk");
    CHECK_OK(vf_pool_info(p, "B", &after));
    CHECK(after.tier == VF_TIER_DISK && after.uses == before.uses + 1);
    CHECK(after.bytes_at[VF_TIER_DEVICE] == 0 && after.bytes_at[VF_TIER_DISK] == 2 * GB);
    CHECK(loaded(p, "B") == 0);
    CHECK(r.mismatches == 0);
    check_invariants(p);
    vf_pool_free(p);
}

/* ---- budgets and errors -------------------------------------------------------------- */

static int has(const char *needle)
{
    int yes = strstr(vf_last_error(), needle) != NULL;
    if (!yes)
        fprintf(stderr, "  message '%s' lacks '%s'\n", vf_last_error(), needle);
    return yes;
}

static void test_budget_and_errors(void)
{
    vf_pool *p = make_pool(5 * GB, 3 * GB, 1 * GB, VF_EVICT_LRU);
    if (!p)
        return;
    rec r;
    rec_attach(p, &r);
    add(p, "big", 6 * GB);
    add(p, "m", 2 * GB);
    add(p, "n", 2 * GB);
    CHECK_OK(vf_pool_load(p, "m", VF_TIER_DEVICE));
    snap s0, s1;
    take(p, &s0);
    int calls = r.calls;

    CHECK(vf_pool_load(p, "big", VF_TIER_DEVICE) == VF_ERR_BUDGET);
    CHECK(has("'big'") && has("6.00 GB (6000000000 bytes)") && has("device capacity is 5.00 GB"));
    CHECK(vf_pool_load(p, "big", VF_TIER_HOST) == VF_ERR_BUDGET);
    CHECK(has("'big'") && has("host capacity is 3.00 GB"));
    CHECK(vf_pool_load(p, "n", VF_TIER_PINNED) == VF_ERR_BUDGET);
    CHECK(has("'n'") && has("2.00 GB") && has("pinned capacity is 1.00 GB"));
    take(p, &s1);
    CHECK(same(&s0, &s1) && r.calls == calls);

    /* unknown ids name themselves */
    vf_pool_model_info mi;
    int l;
    CHECK(vf_pool_load(p, "nope", VF_TIER_DEVICE) == VF_ERR_NOT_FOUND && has("'nope'"));
    CHECK(vf_pool_unload(p, "nope") == VF_ERR_NOT_FOUND && has("'nope'"));
    CHECK(vf_pool_touch(p, "nope") == VF_ERR_NOT_FOUND && has("'nope'"));
    CHECK(vf_pool_is_loaded(p, "nope", &l) == VF_ERR_NOT_FOUND && has("'nope'"));
    CHECK(vf_pool_info(p, "nope", &mi) == VF_ERR_NOT_FOUND && has("'nope'"));
    CHECK(vf_pool_info_at(p, 3, &mi) == VF_ERR_INVALID_ARG);

    /* arguments */
    CHECK(vf_pool_load(p, "m", VF_TIER_DISK) == VF_ERR_INVALID_ARG && has("'m'"));
    CHECK(vf_pool_load(p, "m", (vf_tier)7) == VF_ERR_INVALID_ARG);
    uint64_t c[VF_COMPONENT_COUNT] = {1, 2, 3, 4};
    CHECK(vf_pool_register_sized(p, "m", VF_POOL_CHECKPOINT, c) == VF_ERR_INVALID_ARG &&
          has("'m' is already registered"));
    CHECK(vf_pool_register_sized(p, "", VF_POOL_CHECKPOINT, c) == VF_ERR_INVALID_ARG);
    CHECK(vf_pool_register_sized(p, "a\tb", VF_POOL_CHECKPOINT, c) == VF_ERR_INVALID_ARG);
    CHECK(vf_pool_register_sized(p, "\xff\xfe", VF_POOL_CHECKPOINT, c) == VF_ERR_INVALID_ARG);
    char longid[300];
    memset(longid, 'x', sizeof longid - 1);
    longid[sizeof longid - 1] = 0;
    CHECK(vf_pool_register_sized(p, longid, VF_POOL_CHECKPOINT, c) == VF_ERR_INVALID_ARG);
    uint64_t huge[VF_COMPONENT_COUNT] = {UINT64_MAX, 1, 0, 0};
    CHECK(vf_pool_register_sized(p, "huge", VF_POOL_CHECKPOINT, huge) == VF_ERR_INVALID_ARG);
    CHECK(vf_pool_register(p, "x", NULL) == VF_ERR_INVALID_ARG && has("'x'"));
    CHECK(vf_pool_register(p, "x", "/nonexistent/model") != VF_OK && has("'x'") && has("/nonexistent/model"));
    CHECK(vf_pool_register_lora(p, "y", "/nonexistent/l.safetensors") != VF_OK && has("'y'"));
    CHECK(vf_pool_count(p) == 3);
    vf_pool_mover mv = {rec_promote, rec_demote, &r};
    CHECK(vf_pool_set_mover(p, &mv) == VF_ERR_INVALID_ARG && has("'m' is loaded"));
    take(p, &s1);
    CHECK(same(&s0, &s1));

    vf_pool_options o;
    vf_pool_options_init(&o);
    CHECK(o.device_capacity == VF_POOL_UNLIMITED && o.eviction == VF_EVICT_LRU);
    o.eviction = (vf_eviction_policy)9;
    vf_pool *q = NULL;
    CHECK(vf_pool_create(&o, &q) == VF_ERR_INVALID_ARG && q == NULL);
    CHECK(strcmp(vf_pool_kind_name(VF_POOL_LORA), "lora") == 0);
    vf_pool_free(p);
}

/* ---- mover failures ------------------------------------------------------------------ */

/* device 5 GB with a and b (2 GB each) loaded; c (4 GB) needs both gone. */
static vf_pool *two_loaded(rec *r)
{
    vf_pool *p = make_pool(5 * GB, 8 * GB, VF_POOL_UNLIMITED, VF_EVICT_LRU);
    if (!p)
        return NULL;
    rec_attach(p, r);
    add(p, "a", 2 * GB);
    add(p, "b", 2 * GB);
    add(p, "c", 4 * GB);
    CHECK_OK(vf_pool_load(p, "a", VF_TIER_DEVICE));
    CHECK_OK(vf_pool_load(p, "b", VF_TIER_DEVICE));
    r->nlog = 0;
    return p;
}

static void test_mover_failure_undone(void)
{
    rec r;
    snap s0, s1;
    /* the second demotion fails: a is promoted back */
    vf_pool *p = two_loaded(&r);
    if (!p)
        return;
    take(p, &s0);
    r.fail_at = r.calls + 2;
    CHECK(vf_pool_load(p, "c", VF_TIER_DEVICE) == VF_ERR_DEVICE);
    CHECK(has("simulated failure moving 'b'") && has("loading 'c'"));
    CHECK_LOG(&r, "a device->pinned, a pinned->device");
    take(p, &s1);
    CHECK(same(&s0, &s1) && r.mismatches == 0);
    vf_pool_free(p);

    /* the promotion fails: both victims come back, newest first */
    p = two_loaded(&r);
    take(p, &s0);
    r.fail_at = r.calls + 3;
    CHECK(vf_pool_load(p, "c", VF_TIER_DEVICE) == VF_ERR_DEVICE && has("simulated failure moving 'c'"));
    CHECK_LOG(&r, "a device->pinned, b device->pinned, b pinned->device, a pinned->device");
    take(p, &s1);
    CHECK(same(&s0, &s1) && r.mismatches == 0);
    vf_pool_free(p);

    /* the promotion and the undo fail: the victims stay where their data is */
    p = two_loaded(&r);
    r.fail_from = r.calls + 3;
    CHECK(vf_pool_load(p, "c", VF_TIER_DEVICE) == VF_ERR_DEVICE && has("simulated failure moving 'c'"));
    CHECK_TIER(p, "a", VF_TIER_PINNED);
    CHECK_TIER(p, "b", VF_TIER_PINNED);
    CHECK_TIER(p, "c", VF_TIER_DISK);
    check_invariants(p);
    /* an unload that fails changes nothing */
    r.fail_from = 0;
    CHECK_OK(vf_pool_load(p, "c", VF_TIER_DEVICE));
    take(p, &s0);
    r.fail_at = r.calls + 1;
    CHECK(vf_pool_unload(p, "c") == VF_ERR_DEVICE && has("unloading 'c'"));
    take(p, &s1);
    CHECK(same(&s0, &s1) && r.mismatches == 0);
    r.fail_at = 0;
    vf_pool_free(p);
    /* vf_pool_free told the mover to drop what was loaded */
    CHECK(r.tier[0] == VF_TIER_DISK && r.tier[1] == VF_TIER_DISK && r.tier[2] == VF_TIER_DISK);
}

/* ---- files: temp folders, LoRAs, registries --------------------------------------------- */

/* A kohya-style LoRA of rank 4 on one 8x8 linear: 64 + 64 bytes of f16 and a
 * 4-byte f32 alpha = 132 bytes of tensors. */
#define LORA_BYTES 132u

static void write_lora(const char *path)
{
    static uint16_t down[32], up[32];
    static float alpha = 4.0f;
    vf_st_write_tensor ts[3] = {
        {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight", VF_DTYPE_F16, 2, {4, 8}, down},
        {"lora_unet_mid_block_attentions_0_proj_in.lora_up.weight", VF_DTYPE_F16, 2, {8, 4}, up},
        {"lora_unet_mid_block_attentions_0_proj_in.alpha", VF_DTYPE_F32, 0, {0}, &alpha},
    };
    CHECK_OK(vf_st_write(path, ts, 3, NULL));
}

/* ---- registry files -------------------------------------------------------------------- */

static void expect_registry_error(vf_pool *p, tmpd *t, const char *name, const char *json, const char *word)
{
    const char *path = tmp_path(t, name);
    char file[512];
    snprintf(file, sizeof file, "%s", path);
    if (json)
        write_text(file, json);
    size_t n = vf_pool_count(p);
    vf_status st = vf_pool_load_registry(p, file);
    CHECK_MSG(st != VF_OK, "%s loaded", name);
    CHECK_MSG(strstr(vf_last_error(), file) != NULL, "%s: message '%s' does not name the file", name,
              vf_last_error());
    if (word)
        CHECK_MSG(strstr(vf_last_error(), word) != NULL, "%s: message '%s' lacks '%s'", name, vf_last_error(),
                  word);
    CHECK(vf_pool_count(p) == n);
}

static void test_registry_errors(void)
{
    tmpd t;
    if (!tmp_open(&t, "pool"))
        return;
    write_lora(tmp_path(&t, "l1.safetensors"));
    vf_pool *p = make_pool(GB, GB, GB, VF_EVICT_LRU);
    if (!p)
        return;
    add(p, "taken", GB);
    expect_registry_error(p, &t, "missing.json", NULL, NULL);
    expect_registry_error(p, &t, "notjson.json", "{\"models\": ", NULL);
    expect_registry_error(p, &t, "toplevel.json", "{\"model\": {}}", "'model'");
    expect_registry_error(p, &t, "array.json", "{\"models\": []}", "\"models\"");
    expect_registry_error(p, &t, "number.json", "{\"models\": {\"a\": 5}}", "'a'");
    expect_registry_error(p, &t, "typo.json", "{\"models\": {\"a\": {\"pth\": \"l1.safetensors\"}}}", "'pth'");
    expect_registry_error(p, &t, "nopath.json", "{\"models\": {\"a\": {\"kind\": \"lora\"}}}", "'a'");
    expect_registry_error(p, &t, "emptypath.json", "{\"models\": {\"a\": \"\"}}", "'a'");
    expect_registry_error(p, &t, "kind.json", "{\"models\": {\"a\": {\"path\": \"l1.safetensors\", \"kind\": \"vae\"}}}",
                          "'vae'");
    expect_registry_error(p, &t, "kindtype.json", "{\"models\": {\"a\": {\"path\": \"l1.safetensors\", \"kind\": 1}}}",
                          "'a'");
    expect_registry_error(p, &t, "twice.json",
                          "{\"models\": {\"a\": {\"path\": \"l1.safetensors\", \"kind\": \"lora\"},"
                          " \"a\": {\"path\": \"l1.safetensors\", \"kind\": \"lora\"}}}",
                          "'a' is listed twice");
    expect_registry_error(p, &t, "taken.json", "{\"models\": {\"taken\": {\"path\": \"l1.safetensors\", \"kind\": \"lora\"}}}",
                          "'taken' is already registered");
    expect_registry_error(p, &t, "badid.json", "{\"models\": {\"a\\u0001\": \"l1.safetensors\"}}", NULL);
    /* all or nothing: the good entry is not registered either */
    expect_registry_error(p, &t, "partial.json",
                          "{\"models\": {\"good\": {\"path\": \"l1.safetensors\", \"kind\": \"lora\"},"
                          " \"bad\": {\"path\": \"nothere.safetensors\", \"kind\": \"lora\"}}}",
                          "'bad'");
    expect_registry_error(p, &t, "notckpt.json", "{\"models\": {\"lora-as-model\": \"l1.safetensors\"}}",
                          "'lora-as-model'");
    int l;
    CHECK(vf_pool_is_loaded(p, "good", &l) == VF_ERR_NOT_FOUND);

    /* a good one, relative to the registry's folder whatever the working directory */
    CHECK(mkdir(tmp_path(&t, "sub"), 0700) == 0);
    write_text(tmp_path(&t, "good.json"),
               "{\"models\": {\"l1\": {\"path\": \"l1.safetensors\", \"kind\": \"lora\"}, \"empty\": {\"path\": "
               "\"sub/../l1.safetensors\", \"kind\": \"lora\"}}}");
    CHECK_OK(vf_pool_load_registry(p, tmp_path(&t, "good.json")));
    vf_pool_model_info mi;
    memset(&mi, 0, sizeof mi);
    CHECK_OK(vf_pool_info(p, "l1", &mi));
    char want[512];
    snprintf(want, sizeof want, "%s/l1.safetensors", t.dir);
    CHECK(mi.path && strcmp(mi.path, want) == 0 && mi.kind == VF_POOL_LORA && mi.bytes == LORA_BYTES);
    CHECK(mi.component_bytes[VF_COMPONENT_UNET] == 0 && mi.tier == VF_TIER_DISK && mi.uses == 0);
    CHECK(vf_pool_count(p) == 3);
    vf_pool_free(p);
    tmp_close(&t);
}

/* ---- allocation failures ----------------------------------------------------------------- */

/* Fails each allocation of one vf_pool_load_registry in turn: every failure is
 * clean and registers nothing; then it succeeds. */
static void registry_alloc_loop(vf_pool *p, const char *file, size_t adds)
{
    size_t n0 = vf_pool_count(p);
    int failures = 0;
    for (uint64_t k = 1; k < 100000; k++) {
        vf_fault_alloc_fail_at(k);
        vf_status st = vf_pool_load_registry(p, file);
        vf_fault_alloc_fail_at(0);
        if (st == VF_OK)
            break;
        failures++;
        CHECK_MSG(vf_last_error()[0] != 0, "allocation %d: no message", (int)k);
        CHECK_MSG(vf_pool_count(p) == n0, "allocation %d: %zu models after a failure", (int)k, vf_pool_count(p));
        if (vf_pool_count(p) != n0)
            return;
    }
    printf("  %s: %d allocations failed in turn, each cleanly\n", file, failures);
    CHECK(failures > 0);
    CHECK(vf_pool_count(p) == n0 + adds);
}

static void test_alloc_failures(void)
{
    tmpd t;
    if (!tmp_open(&t, "pool"))
        return;
    write_lora(tmp_path(&t, "l1.safetensors"));
    write_lora(tmp_path(&t, "l2.safetensors"));
    write_text(tmp_path(&t, "reg.json"), "{\"models\": {\"l1\": {\"path\": \"l1.safetensors\", \"kind\": \"lora\"},"
                                         " \"l2\": {\"path\": \"l2.safetensors\", \"kind\": \"lora\"}}}");
    vf_pool *p = make_pool(5 * GB, 8 * GB, VF_POOL_UNLIMITED, VF_EVICT_LRU);
    if (!p)
        return;
    add(p, "m1", 2 * GB);
    registry_alloc_loop(p, tmp_path(&t, "reg.json"), 2);

    /* registering by size and by path */
    uint64_t c[VF_COMPONENT_COUNT] = {GB, 0, GB, 0};
    for (uint64_t k = 1; k < 100; k++) {
        vf_fault_alloc_fail_at(k);
        vf_status st = vf_pool_register_sized(p, "m2", VF_POOL_CHECKPOINT, c);
        vf_fault_alloc_fail_at(0);
        if (st == VF_OK)
            break;
        CHECK(st == VF_ERR_NO_MEMORY && vf_pool_count(p) == 3);
    }
    CHECK(vf_pool_count(p) == 4);
    for (uint64_t k = 1; k < 1000; k++) {
        vf_fault_alloc_fail_at(k);
        vf_status st = vf_pool_register_lora(p, "l3", tmp_path(&t, "l2.safetensors"));
        vf_fault_alloc_fail_at(0);
        if (st == VF_OK)
            break;
        CHECK(st == VF_ERR_NO_MEMORY && vf_pool_count(p) == 4);
    }
    CHECK(vf_pool_count(p) == 5);

    /* a load with an eviction: whichever allocation fails, the load either
     * completes or leaves the pool exactly as it was */
    add(p, "m3", 2 * GB);
    add(p, "m4", 2 * GB);
    CHECK_OK(vf_pool_load(p, "m1", VF_TIER_DEVICE));
    CHECK_OK(vf_pool_load(p, "m2", VF_TIER_DEVICE));
    snap s0, s1;
    take(p, &s0);
    vf_status st = VF_ERR_INTERNAL;
    for (uint64_t k = 1; k < 100 && st != VF_OK; k++) {
        vf_fault_alloc_fail_at(k);
        st = vf_pool_load(p, "m3", VF_TIER_DEVICE);
        vf_fault_alloc_fail_at(0);
        take(p, &s1);
        CHECK(st == VF_OK || same(&s0, &s1));
    }
    CHECK_OK(st);
    CHECK_TIER(p, "m1", VF_TIER_PINNED);
    CHECK_TIER(p, "m3", VF_TIER_DEVICE);
    check_invariants(p);
    vf_pool_free(p);
    tmp_close(&t);
}

/* ---- the reference fixtures: exact sizes from headers ----------------------------------------- */

/* Stored bytes of the tensors inference uses, summed over the fixtures' headers
 * by a separate script (every tensor of the text encoders and UNet; the VAE's
 * decoder and post_quant_conv, not its encoder). */
static const uint64_t sd15_bytes[VF_COMPONENT_COUNT] = {1596704, 0, 1920328, 320398};
static const uint64_t sdxl_bytes[VF_COMPONENT_COUNT] = {1596704, 1597216, 4022856, 320398};

static uint64_t sum4(const uint64_t b[VF_COMPONENT_COUNT])
{
    return b[0] + b[1] + b[2] + b[3];
}

static void check_sizes(vf_pool *p, const char *id, const uint64_t want[VF_COMPONENT_COUNT])
{
    vf_pool_model_info mi;
    CHECK_OK(vf_pool_info(p, id, &mi));
    for (int c = 0; c < VF_COMPONENT_COUNT; c++)
        CHECK_MSG(mi.component_bytes[c] == want[c], "%s %s: %llu bytes, want %llu", id,
                  vf_component_name((vf_component)c), (unsigned long long)mi.component_bytes[c],
                  (unsigned long long)want[c]);
    CHECK(mi.bytes == sum4(want) && mi.kind == VF_POOL_CHECKPOINT);
    /* and what vf_model_component_info says */
    vf_model *m = NULL;
    vf_model_options o;
    vf_model_options_init(&o);
    CHECK_OK(vf_model_open(mi.path, &o, &m));
    for (int c = 0; c < VF_COMPONENT_COUNT && m; c++) {
        vf_component_info ci;
        CHECK_OK(vf_model_component_info(m, (vf_component)c, &ci));
        CHECK(ci.bytes == mi.component_bytes[c]);
    }
    vf_model_close(m);
}

static void test_registry_fixtures(void)
{
    const char *shared = vf_test_shared();
    if (!shared) {
        printf("  skipped: ../shared/reference not found (set VF_SHARED)\n");
        return;
    }
    tmpd t;
    if (!tmp_open(&t, "pool"))
        return;
    char target[512];
    snprintf(target, sizeof target, "%s/reference", shared);
    CHECK(symlink(target, tmp_path(&t, "ref")) == 0);
    write_text(tmp_path(&t, "models.json"),
               "{\"models\": {\n"
               "  \"sdxl\": {\"path\": \"ref/tiny-sdxl/diffusers\", \"kind\": \"checkpoint\"},\n"
               "  \"sd15\": \"ref/tiny-sd15/diffusers\",\n"
               "  \"sd15-single\": {\"path\": \"ref/tiny-sd15/tiny-sd15.safetensors\",\n"
               "                    \"config\": \"ref/tiny-sd15/diffusers\"}}}\n");
    for (int k = 0; k < 3; k++) {
        /* room for sdxl and sd15 exactly: the single file is a third model of sd15's size */
        vf_pool *p = make_pool(sum4(sdxl_bytes) + sum4(sd15_bytes), 0, 0, all_policies[k]);
        if (!p)
            break;
        rec r;
        rec_attach(p, &r);
        CHECK_OK(vf_pool_load_registry(p, tmp_path(&t, "models.json")));
        CHECK(vf_pool_count(p) == 3);
        if (k == 0) {
            check_sizes(p, "sd15", sd15_bytes);
            check_sizes(p, "sdxl", sdxl_bytes);
            vf_pool_model_info a, b;
            memset(&a, 0, sizeof a);
            memset(&b, 0, sizeof b);
            CHECK_OK(vf_pool_info(p, "sd15-single", &a));
            CHECK_OK(vf_pool_info(p, "sd15", &b));
            CHECK(memcmp(a.component_bytes, b.component_bytes, sizeof a.component_bytes) == 0);
            char want[512];
            snprintf(want, sizeof want, "%s/ref/tiny-sd15/diffusers", t.dir);
            CHECK(b.path && strcmp(b.path, want) == 0);
        }
        CHECK_OK(vf_pool_load(p, "sdxl", VF_TIER_DEVICE));
        CHECK_OK(vf_pool_load(p, "sd15", VF_TIER_DEVICE));
        CHECK_OK(vf_pool_touch(p, "sdxl"));
        CHECK_OK(vf_pool_load(p, "sd15-single", VF_TIER_DEVICE));
        /* LRU and LFU (sdxl used twice) drop sd15; LARGEST drops sdxl */
        const char *gone = all_policies[k] == VF_EVICT_LARGEST ? "sdxl" : "sd15";
        const char *kept = all_policies[k] == VF_EVICT_LARGEST ? "sd15" : "sdxl";
        CHECK_TIER(p, gone, VF_TIER_DISK);
        CHECK_TIER(p, kept, VF_TIER_DEVICE);
        CHECK_TIER(p, "sd15-single", VF_TIER_DEVICE);
        check_invariants(p);
        vf_pool_free(p);
    }

    /* programmatic registration, and allocation failures across a registry that
     * reads real checkpoint headers */
    vf_pool *p = make_pool(VF_POOL_UNLIMITED, VF_POOL_UNLIMITED, VF_POOL_UNLIMITED, VF_EVICT_LRU);
    char path[600];
    snprintf(path, sizeof path, "%s/tiny-sdxl/diffusers", target);
    CHECK_OK(vf_pool_register(p, "xl", path));
    check_sizes(p, "xl", sdxl_bytes);
    write_text(tmp_path(&t, "one.json"), "{\"models\": {\"sd15\": \"ref/tiny-sd15/diffusers\"}}");
    registry_alloc_loop(p, tmp_path(&t, "one.json"), 1);
    check_sizes(p, "sd15", sd15_bytes);
    vf_pool_free(p);
    tmp_close(&t);
}

/* ---- threads ------------------------------------------------------------------------------ */

#define NTHREADS 4
#define NMODELS 8

typedef struct worker {
    vf_pool *p;
    unsigned seed;
    int ops;
    int failures;                 /* calls that should have succeeded */
    int violations;               /* a usage snapshot over a capacity  */
} worker;

static const char *tids[NMODELS] = {"t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"};

static void *work(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < w->ops; i++) {
        const char *id = tids[rand_r(&w->seed) % NMODELS];
        int op = rand_r(&w->seed) % 8;
        vf_status st = VF_OK;
        if (op < 4) {
            st = vf_pool_load(w->p, id, (vf_tier)(VF_TIER_HOST + rand_r(&w->seed) % 3));
        } else if (op == 4) {
            st = vf_pool_unload(w->p, id);
        } else if (op == 5) {
            st = vf_pool_touch(w->p, id);
        } else if (op == 6) {
            int l;
            st = vf_pool_is_loaded(w->p, id, &l);
        } else {
            vf_pool_usage u;
            st = vf_pool_get_usage(w->p, &u);
            if (u.bytes[VF_TIER_DEVICE] > u.device_capacity ||
                u.bytes[VF_TIER_HOST] + u.bytes[VF_TIER_PINNED] > u.host_capacity ||
                u.bytes[VF_TIER_PINNED] > u.pinned_capacity)
                w->violations++;
        }
        if (st != VF_OK)
            w->failures++;
    }
    return NULL;
}

static void test_threads(void)
{
    for (int k = 0; k < 3; k++) {
        vf_pool *p = make_pool(5 * GB, 6 * GB, 3 * GB, all_policies[k]);
        if (!p)
            return;
        rec r;
        rec_attach(p, &r);
        r.yield = 1;
        for (int i = 0; i < NMODELS; i++)
            add(p, tids[i], (uint64_t)(1 + i % 3) * GB);
        pthread_t th[NTHREADS];
        worker w[NTHREADS];
        for (int i = 0; i < NTHREADS; i++) {
            w[i] = (worker){p, 1234u + 77u * (unsigned)i + (unsigned)k, 3000, 0, 0};
            CHECK(pthread_create(&th[i], NULL, work, &w[i]) == 0);
        }
        int failures = 0, violations = 0;
        for (int i = 0; i < NTHREADS; i++) {
            pthread_join(th[i], NULL);
            failures += w[i].failures;
            violations += w[i].violations;
        }
        vf_pool_usage u;
        CHECK_OK(vf_pool_get_usage(p, &u));
        printf("  %-7s %d moves, %llu evictions, %zu loaded at the end\n", policy_names[k], r.calls,
               (unsigned long long)u.evictions, u.loaded);
        CHECK(failures == 0 && violations == 0 && r.mismatches == 0);
        CHECK(u.evictions > 0);
        check_invariants(p);
        /* the mover's view of every model is the pool's */
        for (int i = 0; i < NMODELS; i++) {
            vf_tier *seen = rec_tier(&r, tids[i]);
            CHECK(seen && *seen == tier_of(p, tids[i]));
        }
        vf_pool_free(p);
    }
}

TEST_MAIN(TEST(test_issue_scenario_5gb), TEST(test_scenario_three_fit), TEST(test_policies_disagree),
          TEST(test_demotion_chain), TEST(test_budget_and_errors), TEST(test_mover_failure_undone),
          TEST(test_registry_errors), TEST(test_alloc_failures), TEST(test_registry_fixtures),
          TEST(test_threads))
