/* The library from several threads (issue 8, "concurrency"); meant to run under
 * ThreadSanitizer (tools/tsan.sh), and an ordinary test otherwise.
 *
 *  - One pool, five threads: four load, unload, touch, query (is_loaded, info,
 *    info_at over every index, usage) at random, so loads evict all the time,
 *    while the fifth registers new models (the pool's table grows under the
 *    readers). Capacities must hold in every snapshot, every info must be
 *    self-consistent, and the end state must match the pool's invariants.
 *  - Generation on two models at once, one per thread (a vf_model is one
 *    thread's at a time; the process-wide parts, i.e. error messages, the
 *    memory monitor, allocation counters and backends, are shared): each
 *    thread's images must equal the single-threaded run's bit for bit.
 */
#include "test.h"

#include "mem/pool.h"

#include <pthread.h>
#include <stdint.h>

#define GB (1ull << 30)
#define NWORKERS 4
#define NBASE 6
#define NEXTRA 24

static const uint64_t k_sizes[3] = {1 * GB, 2 * GB, 3 * GB / 2};

typedef struct worker {
    vf_pool *p;
    unsigned seed;
    int ops;
    int failures, violations;
} worker;

static void id_of(int i, char *buf, size_t n) { snprintf(buf, n, "model-%02d", i); }

static int info_ok(const vf_pool_model_info *in)
{
    if (!in->id || (int)in->tier < VF_TIER_DISK || in->tier >= VF_TIER_COUNT) /* path: NULL when sized */
        return 0;
    if (in->bytes_at[VF_TIER_DISK] != in->bytes)
        return 0;
    for (int t = VF_TIER_HOST; t < VF_TIER_COUNT; t++)
        if (in->bytes_at[t] != (t == (int)in->tier ? in->bytes : 0))
            return 0;
    return in->last_use == 0 || in->uses > 0;
}

static void *work(void *arg)
{
    worker *w = arg;
    char id[32];
    for (int i = 0; i < w->ops; i++) {
        id_of((int)(rand_r(&w->seed) % NBASE), id, sizeof id);
        int op = (int)(rand_r(&w->seed) % 10);
        vf_status st = VF_OK;
        if (op < 4) {
            st = vf_pool_load(w->p, id, (vf_tier)(VF_TIER_HOST + rand_r(&w->seed) % 3));
            /* a model that alone exceeds a capacity is refused; none here does */
        } else if (op == 4) {
            st = vf_pool_unload(w->p, id);
        } else if (op == 5) {
            st = vf_pool_touch(w->p, id);
        } else if (op == 6) {
            vf_pool_model_info in;
            st = vf_pool_info(w->p, id, &in);
            w->violations += st == VF_OK && (!info_ok(&in) || strcmp(in.id, id) != 0);
        } else if (op == 7) {
            size_t n = vf_pool_count(w->p);
            for (size_t k = 0; k < n && st == VF_OK; k++) {
                vf_pool_model_info in;
                st = vf_pool_info_at(w->p, k, &in);
                w->violations += st == VF_OK && !info_ok(&in);
            }
        } else if (op == 8) {
            int l = -1;
            st = vf_pool_is_loaded(w->p, id, &l);
            w->violations += l != 0 && l != 1;
        } else {
            vf_pool_usage u;
            st = vf_pool_get_usage(w->p, &u);
            w->violations += u.bytes[VF_TIER_DEVICE] > u.device_capacity ||
                             u.bytes[VF_TIER_HOST] + u.bytes[VF_TIER_PINNED] > u.host_capacity ||
                             u.bytes[VF_TIER_PINNED] > u.pinned_capacity || u.loaded > u.models;
        }
        w->failures += st != VF_OK;
    }
    return NULL;
}

typedef struct registrar {
    vf_pool *p;
    int failures;
} registrar;

static void *register_more(void *arg)
{
    registrar *r = arg;
    for (int i = NBASE; i < NBASE + NEXTRA; i++) {
        char id[32];
        id_of(i, id, sizeof id);
        uint64_t bytes[VF_COMPONENT_COUNT] = {0};
        bytes[VF_COMPONENT_UNET] = k_sizes[i % 3];
        r->failures += vf_pool_register_sized(r->p, id, VF_POOL_CHECKPOINT, bytes) != VF_OK;
        /* and use it at once, from this thread */
        r->failures += vf_pool_load(r->p, id, VF_TIER_HOST) != VF_OK;
    }
    return NULL;
}

static void test_pool_threads(void)
{
    for (int pol = 0; pol < VF_EVICT_COUNT; pol++) {
        vf_pool_options o;
        vf_pool_options_init(&o);
        o.device_capacity = 4 * GB;
        o.host_capacity = 6 * GB;
        o.pinned_capacity = 3 * GB;
        o.eviction = (vf_eviction_policy)pol;
        vf_pool *p = NULL;
        CHECK_OK(vf_pool_create(&o, &p));
        if (!p)
            return;
        for (int i = 0; i < NBASE; i++) {
            char id[32];
            id_of(i, id, sizeof id);
            uint64_t bytes[VF_COMPONENT_COUNT] = {0};
            bytes[VF_COMPONENT_UNET] = k_sizes[i % 3];
            CHECK_OK(vf_pool_register_sized(p, id, VF_POOL_CHECKPOINT, bytes));
        }
        pthread_t th[NWORKERS + 1];
        worker w[NWORKERS];
        registrar r = {p, 0};
        for (int i = 0; i < NWORKERS; i++) {
            w[i] = (worker){p, 99u + 31u * (unsigned)i + (unsigned)pol, 1500, 0, 0};
            CHECK(pthread_create(&th[i], NULL, work, &w[i]) == 0);
        }
        CHECK(pthread_create(&th[NWORKERS], NULL, register_more, &r) == 0);
        int failures = 0, violations = 0;
        for (int i = 0; i < NWORKERS; i++) {
            pthread_join(th[i], NULL);
            failures += w[i].failures;
            violations += w[i].violations;
        }
        pthread_join(th[NWORKERS], NULL);
        vf_pool_usage u;
        CHECK_OK(vf_pool_get_usage(p, &u));
        printf("  %-7s %llu evictions, %zu of %zu loaded at the end\n", vf_eviction_policy_name(o.eviction),
               (unsigned long long)u.evictions, u.loaded, u.models);
        CHECK_MSG(failures == 0 && r.failures == 0, "%d failed calls, %d failed registrations", failures,
                  r.failures);
        CHECK(violations == 0);
        CHECK(u.models == NBASE + NEXTRA && u.evictions > 0);
        /* Accounting adds up: per-tier sums of the models equal the usage. */
        uint64_t sum[VF_TIER_COUNT] = {0};
        size_t loaded = 0;
        for (size_t k = 0; k < vf_pool_count(p); k++) {
            vf_pool_model_info in;
            CHECK_OK(vf_pool_info_at(p, k, &in));
            CHECK(info_ok(&in));
            sum[in.tier] += in.bytes;
            loaded += in.tier != VF_TIER_DISK;
        }
        for (int t = VF_TIER_HOST; t < VF_TIER_COUNT; t++)
            CHECK_MSG(sum[t] == u.bytes[t], "tier %s: models sum to %llu, usage says %llu",
                      vf_tier_name((vf_tier)t), (unsigned long long)sum[t], (unsigned long long)u.bytes[t]);
        CHECK(loaded == u.loaded);
        vf_pool_free(p);
    }
}

/* ---- generation on two models at once ------------------------------------------------- */

typedef struct gen_job {
    const char *path;
    vf_image *img[2];
    vf_status st;
    char err[512];
} gen_job;

static void params(vf_generate_params *p)
{
    vf_generate_params_init(p);
    p->prompt = "a red circle";
    p->negative_prompt = "blurry";
    p->steps = 2;
    p->seed = 42;
}

static void *generate(void *arg)
{
    gen_job *j = arg;
    vf_model *m = NULL;
    vf_generate_params p;
    params(&p);
    j->st = vf_model_open(j->path, NULL, &m);
    for (int i = 0; i < 2 && j->st == VF_OK; i++)
        j->st = vf_generate(m, &p, &j->img[i]);
    if (j->st != VF_OK)
        snprintf(j->err, sizeof j->err, "%s", vf_last_error());
    vf_model_close(m);
    return NULL;
}

static int same_image(const vf_image *a, const vf_image *b)
{
    if (!a || !b || a->width != b->width || a->height != b->height)
        return 0;
    size_t n = (size_t)a->width * a->height * 3;
    return memcmp(a->rgb, b->rgb, n) == 0 && memcmp(a->pixels, b->pixels, n * sizeof(float)) == 0;
}

static void test_generate_threads(void)
{
    SKIP_WITHOUT_SHARED(shared);
    char path[2][512];
    snprintf(path[0], sizeof path[0], "%s/reference/tiny-sd15/diffusers", shared);
    snprintf(path[1], sizeof path[1], "%s/reference/tiny-sdxl/diffusers", shared);
    gen_job alone[2] = {{.path = path[0]}, {.path = path[1]}}, both[2] = {{.path = path[0]}, {.path = path[1]}};
    for (int i = 0; i < 2; i++) {
        generate(&alone[i]);
        CHECK_MSG(alone[i].st == VF_OK, "%s: %s", path[i], alone[i].err);
    }
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        CHECK(pthread_create(&th[i], NULL, generate, &both[i]) == 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++) {
        CHECK_MSG(both[i].st == VF_OK, "%s on a thread: %s", path[i], both[i].err);
        for (int k = 0; k < 2; k++)
            CHECK_MSG(same_image(both[i].img[k], alone[i].img[k]), "%s: run %d differs on a thread", path[i], k);
        for (int k = 0; k < 2; k++) {
            vf_image_free(both[i].img[k]);
            vf_image_free(alone[i].img[k]);
        }
    }
}

TEST_MAIN(TEST(test_pool_threads), TEST(test_generate_threads))
