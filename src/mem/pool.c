/* The model pool: registered models, the tier each one is in, eviction by policy.
 *
 * The pool is small (tens of models), so it is an array searched linearly, and
 * every figure (bytes per tier) is summed from the models when needed rather than
 * cached: there is no counter that can drift from the models it describes.
 *
 * A load is planned whole before anything moves. Planning works on a scratch
 * tier per model (plan), demoting victims in the plan one at a time, as the
 * policy picks them, until the model fits; then the mover carries the victims'
 * demotions out in the order they were chosen, and finally the model's own
 * promotion. So a load that cannot fit fails before any state changes, and a
 * mover failure is undone by promoting the victims back (see mem/pool.h).
 * Victims leave the device before the model arrives, and the model's host copy is
 * still counted while victims are placed, because that is the order in which
 * real memory is freed and filled.
 *
 * With a device (options.pipeline) a checkpoint's moves go to the pipeline's
 * data path (pipeline/hold.c): the pool opens the model on its first load,
 * keeps it open until the pool is freed, and each move makes the weights be
 * in the new tier; a test's mover (mem/pool.h) handles everything else.
 *
 * Sizes come from the headers at registration (vf_model_open binds every block
 * list, so a checkpoint's size is exactly the tensors inference uses), with no
 * lock held; only the final insertion takes the lock, so reading headers never
 * blocks other threads' loads.
 */
#include "mem/pool.h"
#include "core/alloc.h"
#include "core/error.h"
#include "io/json.h"
#include "io/safetensors.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define ID_MAX 255

typedef struct pool_model {
    char *id;
    char *path;                   /* NULL for a model registered by size      */
    char *config;                 /* its config folder (registry), or NULL    */
    vf_model *model;              /* opened on its first move (with a device) */
    vf_pool_kind kind;
    uint64_t comp[VF_COMPONENT_COUNT];
    uint64_t bytes;
    vf_tier tier;
    uint64_t uses, last_use;
    /* Scratch of one load: the planned tier, the tier before the load, and the
     * order in which it was chosen as a victim (0: not a victim). */
    vf_tier plan, orig;
    int seq;
} pool_model;

struct vf_pool {
    pthread_mutex_t mu;
    vf_pool_options opt;
    vf_pool_mover mover;
    int weights;                  /* a device: checkpoints' weights move      */
    vf_pipeline_options popt;     /* their options (device points at spec)    */
    char *spec;
    pool_model *m;
    size_t n, cap;
    uint64_t clock;               /* logical time of uses                     */
    uint64_t evictions;
};

/* The three capacities, and which tiers count against each. */
enum { CAP_DEVICE, CAP_HOST, CAP_PINNED };

const char *vf_pool_kind_name(vf_pool_kind k)
{
    switch (k) {
    case VF_POOL_CHECKPOINT: return "checkpoint";
    case VF_POOL_LORA: return "lora";
    default: return "?";
    }
}

static const char *cap_name(int cap)
{
    return cap == CAP_DEVICE ? "device" : cap == CAP_HOST ? "host" : "pinned";
}

/* "5.00 GB (5000000000 bytes)": both, so that a message is exact and readable. */
static const char *fmt_size(char *buf, size_t cap, uint64_t n)
{
    if (n == VF_POOL_UNLIMITED)
        snprintf(buf, cap, "unlimited");
    else if (n >= 1000000000u)
        snprintf(buf, cap, "%.2f GB (%" PRIu64 " bytes)", (double)n / 1e9, n);
    else if (n >= 1000000u)
        snprintf(buf, cap, "%.2f MB (%" PRIu64 " bytes)", (double)n / 1e6, n);
    else
        snprintf(buf, cap, "%" PRIu64 " bytes", n);
    return buf;
}

static uint64_t sat_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

static int fits(uint64_t used, uint64_t need, uint64_t cap)
{
    if (cap == VF_POOL_UNLIMITED)
        return 1;
    return need <= cap && used <= cap - need;
}

/* where names the caller or the registry file in messages. */
static vf_status check_id(const char *where, const char *id)
{
    if (!id || !id[0])
        return vf_error(VF_ERR_INVALID_ARG, "%s: empty model id", where);
    size_t n = strnlen(id, ID_MAX + 1);
    if (n > ID_MAX)
        return vf_error(VF_ERR_INVALID_ARG, "%s: model id '%.40s...' is longer than %d bytes", where, id,
                        ID_MAX);
    if (!vf_utf8_valid(id, n))
        return vf_error(VF_ERR_INVALID_ARG, "%s: a model id is not valid UTF-8", where);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (c < 0x20 || c == 0x7f)
            return vf_error(VF_ERR_INVALID_ARG, "%s: model id '%.40s' holds a control character", where,
                            id);
    }
    return VF_OK;
}

static int find(const vf_pool *p, const char *id)
{
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->m[i].id, id) == 0)
            return (int)i;
    return -1;
}

static vf_status not_found(const char *id)
{
    return vf_error(VF_ERR_NOT_FOUND, "model pool: no model '%s' is registered", id);
}

static void entry_free(pool_model *e)
{
    vf_model_close(e->model);
    vf_free(e->id);
    vf_free(e->path);
    vf_free(e->config);
    e->id = e->path = e->config = NULL;
    e->model = NULL;
}

/* ---- sizes from headers ------------------------------------------------------ */

static vf_status size_checkpoint(const char *path, const char *config, uint64_t comp[VF_COMPONENT_COUNT])
{
    vf_model_options o;
    vf_model_options_init(&o);
    o.config_dir = config;
    vf_model *m;
    VF_TRY(vf_model_open(path, &o, &m));
    vf_status st = VF_OK;
    for (int c = 0; c < VF_COMPONENT_COUNT && st == VF_OK; c++) {
        vf_component_info ci;
        st = vf_model_component_info(m, (vf_component)c, &ci);
        comp[c] = st == VF_OK ? ci.bytes : 0;
    }
    vf_model_close(m);
    return st;
}

static vf_status size_lora(const char *path, uint64_t *total)
{
    vf_st_file *f;
    VF_TRY(vf_st_open(path, &f));
    size_t n = vf_st_count(f);
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++)
        sum = sat_add(sum, vf_st_at(f, i)->nbytes);
    vf_st_close(f);
    if (n == 0)
        return vf_error(VF_ERR_FORMAT, "%s: a LoRA file with no tensors", path);
    *total = sum;
    return VF_OK;
}

/* Sizes the model and fills *e (owning copies of id and path), on disk. */
static vf_status make_entry(const char *id, const char *path, const char *config, vf_pool_kind kind,
                            pool_model *e)
{
    memset(e, 0, sizeof *e);
    uint64_t total = 0;
    vf_status st;
    if (kind == VF_POOL_LORA) {
        st = size_lora(path, &total);
    } else {
        st = size_checkpoint(path, config, e->comp);
        for (int c = 0; c < VF_COMPONENT_COUNT; c++)
            total = sat_add(total, e->comp[c]);
    }
    if (st != VF_OK)
        return st;
    e->id = vf_strdup(id);
    e->path = vf_strdup(path);
    e->config = config ? vf_strdup(config) : NULL;
    if (!e->id || !e->path || (config && !e->config)) {
        entry_free(e);
        return VF_ERR_NO_MEMORY;
    }
    e->kind = kind;
    e->bytes = total;
    e->tier = e->plan = e->orig = VF_TIER_DISK;
    return VF_OK;
}

/* Appends es[0..n), taking ownership, unless an id is taken. Called locked. */
static vf_status append_locked(vf_pool *p, pool_model *es, size_t n, const char *where)
{
    for (size_t i = 0; i < n; i++)
        if (find(p, es[i].id) >= 0)
            return vf_error(VF_ERR_INVALID_ARG, "%s: model '%s' is already registered", where, es[i].id);
    if (p->n + n > p->cap) {
        size_t want = p->cap ? p->cap * 2 : 8, bytes;
        if (want < p->n + n)
            want = p->n + n;
        if (vf_mul_overflow(want, sizeof *p->m, &bytes))
            return vf_error(VF_ERR_NO_MEMORY, "%s: too many models (%zu)", where, want);
        pool_model *grown = vf_realloc(p->m, bytes);
        if (!grown)
            return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", where);
        p->m = grown;
        p->cap = want;
    }
    memcpy(p->m + p->n, es, n * sizeof *es);
    p->n += n;
    return VF_OK;
}

static vf_status append(vf_pool *p, pool_model *es, size_t n, const char *where)
{
    pthread_mutex_lock(&p->mu);
    vf_status st = append_locked(p, es, n, where);
    pthread_mutex_unlock(&p->mu);
    return st;
}

/* Fails early on a taken id, before the headers are read. */
static vf_status check_free_id(vf_pool *p, const char *id, const char *where)
{
    pthread_mutex_lock(&p->mu);
    int taken = find(p, id) >= 0;
    pthread_mutex_unlock(&p->mu);
    return taken ? vf_error(VF_ERR_INVALID_ARG, "%s: model '%s' is already registered", where, id) : VF_OK;
}

/* ---- creation and registration ------------------------------------------------ */

void vf_pool_options_init(vf_pool_options *o)
{
    if (!o)
        return;
    memset(o, 0, sizeof *o);
    o->device_capacity = VF_POOL_UNLIMITED;
    o->host_capacity = VF_POOL_UNLIMITED;
    o->pinned_capacity = VF_POOL_UNLIMITED;
    o->eviction = VF_EVICT_LRU;
}

vf_status vf_pool_create(const vf_pool_options *o, vf_pool **out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_pool_create: out is NULL");
    *out = NULL;
    vf_pool_options def;
    if (!o) {
        vf_pool_options_init(&def);
        o = &def;
    }
    if ((int)o->eviction < 0 || o->eviction >= VF_EVICT_COUNT)
        return vf_error(VF_ERR_INVALID_ARG, "vf_pool_create: eviction policy %d is not lru, lfu or largest",
                        (int)o->eviction);
    vf_pool *p = vf_calloc(1, sizeof *p);
    if (!p)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "vf_pool_create");
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        vf_free(p);
        return vf_error(VF_ERR_INTERNAL, "vf_pool_create: cannot create the pool's lock");
    }
    p->opt = *o;
    p->opt.pipeline = NULL;
    if (o->pipeline) {
        p->weights = 1;
        p->popt = *o->pipeline;
        p->spec = vf_strdup(o->pipeline->device ? o->pipeline->device : "cpu");
        p->popt.device = p->spec;
        p->opt.pipeline = &p->popt;
        if (!p->spec) {
            pthread_mutex_destroy(&p->mu);
            vf_free(p);
            return vf_error_prefix(VF_ERR_NO_MEMORY, "vf_pool_create");
        }
    }
    *out = p;
    return VF_OK;
}

void vf_pool_free(vf_pool *p)
{
    if (!p)
        return;
    /* The mover may hold memory for loaded models; it is told to let it go.
     * A failure cannot be reported from here. */
    for (size_t i = 0; i < p->n; i++) {
        pool_model *m = &p->m[i];
        vf_pool_move mv = {m->id, m->path, m->kind, m->bytes, m->tier, VF_TIER_DISK};
        if (!m->model && m->tier != VF_TIER_DISK && p->mover.demote) /* an open model: closed below */
            (void)p->mover.demote(p->mover.user, &mv);
    }
    for (size_t i = 0; i < p->n; i++)
        entry_free(&p->m[i]);
    vf_free(p->m);
    vf_free(p->spec);
    pthread_mutex_destroy(&p->mu);
    vf_free(p);
}

static vf_status register_one(vf_pool *p, const char *id, const char *path, vf_pool_kind kind)
{
    const char *where = "model pool";
    if (!p)
        return vf_error(VF_ERR_INVALID_ARG, "vf_pool_register: pool is NULL");
    VF_TRY(check_id(where, id));
    if (!path || !path[0])
        return vf_error(VF_ERR_INVALID_ARG, "%s: model '%s': no path", where, id);
    VF_TRY(check_free_id(p, id, where));
    pool_model e;
    vf_status st = make_entry(id, path, NULL, kind, &e);
    if (st != VF_OK)
        return vf_error_prefix(st, "%s: model '%s'", where, id);
    st = append(p, &e, 1, where);
    if (st != VF_OK)
        entry_free(&e);
    return st;
}

vf_status vf_pool_register(vf_pool *p, const char *id, const char *path)
{
    return register_one(p, id, path, VF_POOL_CHECKPOINT);
}

vf_status vf_pool_register_lora(vf_pool *p, const char *id, const char *path)
{
    return register_one(p, id, path, VF_POOL_LORA);
}

vf_status vf_pool_register_sized(vf_pool *p, const char *id, vf_pool_kind kind,
                                 const uint64_t bytes[VF_COMPONENT_COUNT])
{
    const char *where = "model pool";
    if (!p || !bytes)
        return vf_error(VF_ERR_INVALID_ARG, "vf_pool_register_sized: pool or sizes are NULL");
    VF_TRY(check_id(where, id));
    if ((int)kind < 0 || kind >= VF_POOL_KIND_COUNT)
        return vf_error(VF_ERR_INVALID_ARG, "%s: model '%s': kind %d", where, id, (int)kind);
    pool_model e;
    memset(&e, 0, sizeof e);
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (e.bytes > UINT64_MAX - bytes[c])
            return vf_error(VF_ERR_INVALID_ARG, "%s: model '%s': sizes overflow", where, id);
        e.bytes += bytes[c];
        e.comp[c] = kind == VF_POOL_LORA ? 0 : bytes[c];
    }
    e.id = vf_strdup(id);
    if (!e.id)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: model '%s'", where, id);
    e.kind = kind;
    e.tier = e.plan = e.orig = VF_TIER_DISK;
    vf_status st = append(p, &e, 1, where);
    if (st != VF_OK)
        entry_free(&e);
    return st;
}

/* ---- the registry file ---------------------------------------------------------- */

/* The folder of path ("." when it has none), against which relative paths resolve. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return vf_strdup(".");
    return vf_strndup(path, slash == path ? 1 : (size_t)(slash - path));
}

static char *resolve(const char *dir, const char *path)
{
    return path[0] == '/' ? vf_strdup(path) : vf_path_join(dir, path);
}

/* Reads one "models" entry: a path string or {"path", "kind", "config"}. */
static vf_status parse_entry_fields(const char *file, const cJSON *item, const char **path,
                                    const char **config, vf_pool_kind *kind)
{
    const char *id = item->string;
    *path = *config = NULL;
    *kind = VF_POOL_CHECKPOINT;
    if (cJSON_IsString(item)) {
        *path = item->valuestring;
        return VF_OK;
    }
    if (!cJSON_IsObject(item))
        return vf_error(VF_ERR_FORMAT, "%s: model '%s': expected a path or an object with \"path\"", file, id);
    for (const cJSON *k = item->child; k; k = k->next)
        if (strcmp(k->string, "path") && strcmp(k->string, "kind") && strcmp(k->string, "config"))
            return vf_error(VF_ERR_FORMAT, "%s: model '%s': unknown key '%s' (expected path, kind, config)",
                            file, id, k->string);
    int bad = 0;
    *path = vf_json_str(item, "path", NULL, &bad);
    const char *k = vf_json_str(item, "kind", NULL, &bad);
    *config = vf_json_str(item, "config", NULL, &bad);
    if (bad)
        return vf_error(VF_ERR_FORMAT, "%s: model '%s': path, kind and config must be strings", file, id);
    if (k && strcmp(k, "lora") == 0)
        *kind = VF_POOL_LORA;
    else if (k && strcmp(k, "checkpoint") != 0)
        return vf_error(VF_ERR_FORMAT, "%s: model '%s': kind '%s' is not checkpoint or lora", file, id, k);
    return VF_OK;
}

static vf_status parse_entry(const char *file, const char *dir, const cJSON *item, pool_model *e)
{
    const char *id = item->string, *path, *config;
    vf_pool_kind kind;
    memset(e, 0, sizeof *e);
    VF_TRY(check_id(file, id));
    VF_TRY(parse_entry_fields(file, item, &path, &config, &kind));
    if (!path || !path[0])
        return vf_error(VF_ERR_FORMAT, "%s: model '%s': no \"path\"", file, id);
    char *rp = resolve(dir, path);
    char *rc = config && rp ? resolve(dir, config) : NULL;
    vf_status st = VF_ERR_NO_MEMORY;
    if (rp && (!config || rc))
        st = make_entry(id, rp, rc, kind, e);
    vf_free(rp);
    vf_free(rc);
    return st == VF_OK ? VF_OK : vf_error_prefix(st, "%s: model '%s'", file, id);
}

/* A duplicate key in "models" (cJSON keeps both), checked before headers are read. */
static vf_status check_duplicates(const char *file, const cJSON *models)
{
    for (const cJSON *a = models->child; a; a = a->next)
        for (const cJSON *b = models->child; b != a; b = b->next)
            if (a->string && b->string && strcmp(a->string, b->string) == 0)
                return vf_error(VF_ERR_FORMAT, "%s: model '%s' is listed twice", file, a->string);
    return VF_OK;
}

static vf_status registry_models(const char *file, const cJSON *root, const cJSON **out)
{
    for (const cJSON *k = root->child; k; k = k->next)
        if (strcmp(k->string, "models") != 0)
            return vf_error(VF_ERR_FORMAT, "%s: unknown key '%s' (a registry holds \"models\")", file,
                            k->string);
    const cJSON *models = cJSON_GetObjectItemCaseSensitive(root, "models");
    if (!cJSON_IsObject(models))
        return vf_error(VF_ERR_FORMAT, "%s: expected an object \"models\" mapping ids to paths", file);
    VF_TRY(check_duplicates(file, models));
    *out = models;
    return VF_OK;
}

vf_status vf_pool_load_registry(vf_pool *p, const char *path)
{
    if (!p || !path || !path[0])
        return vf_error(VF_ERR_INVALID_ARG, "vf_pool_load_registry: pool or path missing");
    cJSON *root = NULL;
    const cJSON *models = NULL;
    char *dir = NULL;
    pool_model *es = NULL;
    size_t n = 0;
    vf_status st = vf_json_load(path, &root);
    if (st == VF_OK)
        st = registry_models(path, root, &models);
    if (st != VF_OK)
        goto done;
    for (const cJSON *it = models->child; it && st == VF_OK; it = it->next)
        st = check_free_id(p, it->string, path);
    if (st != VF_OK)
        goto done;
    size_t count = (size_t)cJSON_GetArraySize(models);
    dir = dir_of(path);
    es = vf_calloc(count ? count : 1, sizeof *es);
    if (!dir || !es) {
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
        goto done;
    }
    for (const cJSON *it = models->child; it && st == VF_OK; it = it->next) {
        st = parse_entry(path, dir, it, &es[n]);
        if (st == VF_OK)
            n++;
    }
    if (st == VF_OK)
        st = append(p, es, n, path);
    if (st == VF_OK)
        n = 0; /* the pool owns them now */
done:
    for (size_t i = 0; i < n; i++)
        entry_free(&es[i]);
    vf_free(es);
    vf_free(dir);
    cJSON_Delete(root);
    return st;
}

/* ---- planning a load ---------------------------------------------------------- */

static int counts_against(vf_tier t, int cap)
{
    switch (cap) {
    case CAP_DEVICE: return t == VF_TIER_DEVICE;
    case CAP_HOST: return t == VF_TIER_HOST || t == VF_TIER_PINNED;
    default: return t == VF_TIER_PINNED;
    }
}

static uint64_t capacity(const vf_pool *p, int cap)
{
    return cap == CAP_DEVICE ? p->opt.device_capacity
           : cap == CAP_HOST ? p->opt.host_capacity
                             : p->opt.pinned_capacity;
}

static uint64_t planned_use(const vf_pool *p, int cap)
{
    uint64_t used = 0;
    for (size_t i = 0; i < p->n; i++)
        if (counts_against(p->m[i].plan, cap))
            used = sat_add(used, p->m[i].bytes);
    return used;
}

/* 1 when a goes before b; ties go to the least recently used. */
static int evict_before(const vf_pool *p, const pool_model *a, const pool_model *b)
{
    if (p->opt.eviction == VF_EVICT_LFU && a->uses != b->uses)
        return a->uses < b->uses;
    if (p->opt.eviction == VF_EVICT_LARGEST && a->bytes != b->bytes)
        return a->bytes > b->bytes;
    return a->last_use < b->last_use;
}

static int pick_victim(const vf_pool *p, int cap, size_t self)
{
    int best = -1;
    for (size_t i = 0; i < p->n; i++) {
        if (i == self || !counts_against(p->m[i].plan, cap))
            continue;
        if (best < 0 || evict_before(p, &p->m[i], &p->m[best]))
            best = (int)i;
    }
    return best;
}

/* Where a victim pushed out of capacity cap goes, given the plan so far. */
static vf_tier demote_to(const vf_pool *p, int cap, const pool_model *v)
{
    if (cap == CAP_HOST)
        return VF_TIER_DISK;
    if (cap == CAP_PINNED)
        return VF_TIER_HOST;
    if (!fits(planned_use(p, CAP_HOST), v->bytes, p->opt.host_capacity))
        return VF_TIER_DISK;
    if (fits(planned_use(p, CAP_PINNED), v->bytes, p->opt.pinned_capacity))
        return VF_TIER_PINNED;
    return VF_TIER_HOST;
}

/* Plans demotions until need more bytes fit capacity cap, never of model self. */
static vf_status plan_room(vf_pool *p, int cap, uint64_t need, size_t self, int *nseq)
{
    while (!fits(planned_use(p, cap), need, capacity(p, cap))) {
        int v = pick_victim(p, cap, self);
        if (v < 0)
            return vf_error(VF_ERR_INTERNAL, "model pool: nothing left to evict from %s memory", cap_name(cap));
        p->m[v].plan = demote_to(p, cap, &p->m[v]);
        p->m[v].seq = ++*nseq;
    }
    return VF_OK;
}

static vf_status check_alone(const vf_pool *p, const pool_model *m, int cap)
{
    uint64_t c = capacity(p, cap);
    if (m->bytes <= c)
        return VF_OK;
    char a[64], b[64];
    return vf_error(VF_ERR_BUDGET, "model pool: model '%s' needs %s but the %s capacity is %s", m->id,
                    fmt_size(a, sizeof a, m->bytes), cap_name(cap), fmt_size(b, sizeof b, c));
}

/* m->tier < to here. */
static vf_status plan_load(vf_pool *p, size_t i, vf_tier to, int *nseq)
{
    pool_model *m = &p->m[i];
    if (to == VF_TIER_DEVICE) {
        VF_TRY(check_alone(p, m, CAP_DEVICE));
        VF_TRY(plan_room(p, CAP_DEVICE, m->bytes, i, nseq));
    } else {
        VF_TRY(check_alone(p, m, CAP_HOST));
        if (to == VF_TIER_PINNED)
            VF_TRY(check_alone(p, m, CAP_PINNED));
        /* Host room first: victims of the pinned step then only move within host. */
        if (m->tier == VF_TIER_DISK)
            VF_TRY(plan_room(p, CAP_HOST, m->bytes, i, nseq));
        if (to == VF_TIER_PINNED)
            VF_TRY(plan_room(p, CAP_PINNED, m->bytes, i, nseq));
    }
    m->plan = to;
    return VF_OK;
}

/* ---- carrying a plan out -------------------------------------------------------- */

static vf_status pool_hook(void *pool, const char *id);

/* The tier a model is generated from: the device, or host memory on the cpu. */
static vf_tier top_tier(const vf_pool *p)
{
    return strncasecmp(p->spec, "cpu", 3) == 0 ? VF_TIER_HOST : VF_TIER_DEVICE;
}

/* The weights of checkpoint m into tier to (pipeline/hold.c), the model
 * opened first when this is its first move. */
static vf_status hold(vf_pool *p, pool_model *m, vf_tier to)
{
    if (!m->model) {
        VF_TRY(vf_pool_open_model(m->path, m->config, &p->popt, &m->model));
        vf_pool_attach_model(m->model, pool_hook, p, m->id);
    }
    return vf_pool_hold_model(m->model, m->tier, to);
}

static vf_status move(vf_pool *p, pool_model *m, vf_tier to)
{
    if (m->tier == to)
        return VF_OK;
    vf_pool_move mv = {m->id, m->path, m->kind, m->bytes, m->tier, to};
    vf_status (*fn)(void *, const vf_pool_move *) = to > m->tier ? p->mover.promote : p->mover.demote;
    vf_status st = VF_OK;
    if (p->weights && m->kind == VF_POOL_CHECKPOINT && m->path)
        st = hold(p, m, to);
    else if (fn)
        st = fn(p->mover.user, &mv);
    if (st == VF_OK)
        m->tier = to;
    return st;
}

static pool_model *victim(vf_pool *p, int seq)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->m[i].seq == seq)
            return &p->m[i];
    return NULL;
}

/* Promotes victims 1..done back, newest first, keeping the failure's message. */
static void undo(vf_pool *p, int done)
{
    char saved[1024];
    snprintf(saved, sizeof saved, "%s", vf_last_error());
    for (int k = done; k >= 1; k--) {
        pool_model *v = victim(p, k);
        (void)move(p, v, v->orig);
    }
    vf_error(VF_OK, "%s", saved);
}

static vf_status run_plan(vf_pool *p, size_t i, int nseq)
{
    pool_model *m = &p->m[i];
    vf_status st = VF_OK;
    int done = 0;
    for (; done < nseq; done++) {
        pool_model *v = victim(p, done + 1);
        vf_tier from = v->tier;
        st = move(p, v, v->plan);
        if (st != VF_OK) {
            vf_error_prefix(st, "model pool: loading '%s': evicting '%s' from %s to %s", m->id, v->id,
                            vf_tier_name(from), vf_tier_name(v->plan));
            break;
        }
    }
    if (st == VF_OK) {
        vf_tier from = m->tier;
        st = move(p, m, m->plan);
        if (st == VF_OK) {
            p->evictions += (uint64_t)nseq;
            return VF_OK;
        }
        vf_error_prefix(st, "model pool: loading '%s' from %s to %s", m->id, vf_tier_name(from),
                        vf_tier_name(m->plan));
    }
    undo(p, done);
    return st;
}

static void use(vf_pool *p, pool_model *m)
{
    m->uses++;
    m->last_use = ++p->clock;
}

static vf_status load_locked(vf_pool *p, size_t i, vf_tier to)
{
    pool_model *m = &p->m[i];
    if (m->tier >= to) {
        use(p, m);
        return VF_OK;
    }
    for (size_t k = 0; k < p->n; k++) {
        p->m[k].plan = p->m[k].orig = p->m[k].tier;
        p->m[k].seq = 0;
    }
    int nseq = 0;
    vf_status st = plan_load(p, i, to, &nseq);
    if (st == VF_OK)
        st = run_plan(p, i, nseq);
    if (st == VF_OK)
        use(p, m);
    for (size_t k = 0; k < p->n; k++) {
        p->m[k].plan = p->m[k].tier;
        p->m[k].seq = 0;
    }
    return st;
}

/* ---- the calls ------------------------------------------------------------------ */

vf_status vf_pool_set_mover(vf_pool *p, const vf_pool_mover *mv)
{
    if (!p)
        return vf_error(VF_ERR_INVALID_ARG, "vf_pool_set_mover: pool is NULL");
    vf_status st = VF_OK;
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n && st == VF_OK; i++)
        if (p->m[i].tier != VF_TIER_DISK)
            st = vf_error(VF_ERR_INVALID_ARG, "model pool: cannot change the mover while '%s' is loaded",
                          p->m[i].id);
    if (st == VF_OK) {
        if (mv)
            p->mover = *mv;
        else
            memset(&p->mover, 0, sizeof p->mover);
    }
    pthread_mutex_unlock(&p->mu);
    return st;
}

vf_status vf_pool_load(vf_pool *p, const char *id, vf_tier tier)
{
    if (!p || !id)
        return vf_error(VF_ERR_INVALID_ARG, "vf_pool_load: pool or id is NULL");
    if (tier <= VF_TIER_DISK || tier >= VF_TIER_COUNT)
        return vf_error(VF_ERR_INVALID_ARG,
                        "vf_pool_load: model '%s': tier %d is not host, pinned or device (vf_pool_unload "
                        "returns a model to disk)",
                        id, (int)tier);
    pthread_mutex_lock(&p->mu);
    int i = find(p, id);
    vf_status st = i < 0 ? not_found(id) : load_locked(p, (size_t)i, tier);
    pthread_mutex_unlock(&p->mu);
    return st;
}

/* A stage of a generation with a pool's model: back to the top tier first. */
static vf_status pool_hook(void *pool, const char *id)
{
    vf_pool *p = pool;
    return vf_pool_load(p, id, top_tier(p));
}

vf_status vf_pool_model(vf_pool *p, const char *id, vf_model **out)
{
    if (!p || !id || !out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_pool_model: pool, id or output is NULL");
    *out = NULL;
    if (!p->weights)
        return vf_error(VF_ERR_INVALID_ARG, "vf_pool_model: model '%s': the pool has no device "
                        "(vf_pool_options.pipeline) and holds no weights", id);
    pthread_mutex_lock(&p->mu);
    int i = find(p, id);
    vf_status st = i < 0 ? not_found(id) : VF_OK;
    if (st == VF_OK && (p->m[i].kind != VF_POOL_CHECKPOINT || !p->m[i].path))
        st = vf_error(VF_ERR_INVALID_ARG, "vf_pool_model: '%s' is a %s, not a checkpoint file", id,
                      p->m[i].path ? vf_pool_kind_name(p->m[i].kind) : "model registered by size");
    if (st == VF_OK)
        st = load_locked(p, (size_t)i, top_tier(p));
    if (st == VF_OK)
        *out = p->m[i].model;
    pthread_mutex_unlock(&p->mu);
    return st;
}

vf_status vf_pool_unload(vf_pool *p, const char *id)
{
    if (!p || !id)
        return vf_error(VF_ERR_INVALID_ARG, "vf_pool_unload: pool or id is NULL");
    pthread_mutex_lock(&p->mu);
    int i = find(p, id);
    vf_status st = i < 0 ? not_found(id) : VF_OK;
    if (st == VF_OK) {
        vf_tier from = p->m[i].tier;
        st = move(p, &p->m[i], VF_TIER_DISK);
        if (st != VF_OK)
            vf_error_prefix(st, "model pool: unloading '%s' from %s", id, vf_tier_name(from));
    }
    pthread_mutex_unlock(&p->mu);
    return st;
}

vf_status vf_pool_is_loaded(vf_pool *p, const char *id, int *loaded)
{
    if (!p || !id || !loaded)
        return vf_error(VF_ERR_INVALID_ARG, "vf_pool_is_loaded: pool, id or output is NULL");
    *loaded = 0;
    pthread_mutex_lock(&p->mu);
    int i = find(p, id);
    vf_status st = i < 0 ? not_found(id) : VF_OK;
    if (st == VF_OK)
        *loaded = p->m[i].tier > VF_TIER_DISK;
    pthread_mutex_unlock(&p->mu);
    return st;
}

vf_status vf_pool_touch(vf_pool *p, const char *id)
{
    if (!p || !id)
        return vf_error(VF_ERR_INVALID_ARG, "vf_pool_touch: pool or id is NULL");
    pthread_mutex_lock(&p->mu);
    int i = find(p, id);
    vf_status st = i < 0 ? not_found(id) : VF_OK;
    if (st == VF_OK)
        use(p, &p->m[i]);
    pthread_mutex_unlock(&p->mu);
    return st;
}

static void fill_info(const pool_model *m, vf_pool_model_info *o)
{
    memset(o, 0, sizeof *o);
    o->id = m->id;
    o->path = m->path;
    o->kind = m->kind;
    o->tier = m->tier;
    o->bytes = m->bytes;
    o->bytes_at[VF_TIER_DISK] = m->bytes;
    o->bytes_at[m->tier] = m->bytes;
    memcpy(o->component_bytes, m->comp, sizeof o->component_bytes);
    o->uses = m->uses;
    o->last_use = m->last_use;
}

vf_status vf_pool_info(vf_pool *p, const char *id, vf_pool_model_info *out)
{
    if (!p || !id || !out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_pool_info: pool, id or output is NULL");
    pthread_mutex_lock(&p->mu);
    int i = find(p, id);
    vf_status st = i < 0 ? not_found(id) : VF_OK;
    if (st == VF_OK)
        fill_info(&p->m[i], out);
    pthread_mutex_unlock(&p->mu);
    return st;
}

size_t vf_pool_count(vf_pool *p)
{
    if (!p)
        return 0;
    pthread_mutex_lock(&p->mu);
    size_t n = p->n;
    pthread_mutex_unlock(&p->mu);
    return n;
}

vf_status vf_pool_info_at(vf_pool *p, size_t i, vf_pool_model_info *out)
{
    if (!p || !out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_pool_info_at: pool or output is NULL");
    pthread_mutex_lock(&p->mu);
    vf_status st = VF_OK;
    if (i < p->n)
        fill_info(&p->m[i], out);
    else
        st = vf_error(VF_ERR_INVALID_ARG, "vf_pool_info_at: index %zu, the pool holds %zu models", i, p->n);
    pthread_mutex_unlock(&p->mu);
    return st;
}

vf_status vf_pool_get_usage(vf_pool *p, vf_pool_usage *out)
{
    if (!p || !out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_pool_get_usage: pool or output is NULL");
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n; i++) {
        const pool_model *m = &p->m[i];
        out->bytes[m->tier] = sat_add(out->bytes[m->tier], m->bytes);
        out->loaded += m->tier != VF_TIER_DISK;
    }
    out->device_capacity = p->opt.device_capacity;
    out->host_capacity = p->opt.host_capacity;
    out->pinned_capacity = p->opt.pinned_capacity;
    out->models = p->n;
    out->evictions = p->evictions;
    pthread_mutex_unlock(&p->mu);
    return VF_OK;
}
