/* The model pool's data path (issue 5): a pool with a device moves weights.
 *
 * On the simulated device with copies of the tiny SD1.5 reference model:
 *   tiers        HOST and PINNED hold every block's device image in the
 *                model's host store (pageable, then page-locked and counted
 *                by the device), DEVICE holds the model in its arena and the
 *                host keeps nothing the device has; DISK holds nothing
 *   no reads     a model demoted from the device to PINNED comes back and
 *                generates the same image after its checkpoint files were
 *                truncated to nothing: every byte came from the store (and a
 *                model sent to DISK fails on the same files, naming one)
 *   scenario     capacity for two models: load a and b, use a, load c: b is
 *                demoted to pinned memory (its weights go with it), a and c
 *                stay on the device
 *   generation   a demoted model generating again goes back to the device
 *                through the pool, which evicts by its policy; its images are
 *                bit-identical to the CPU's throughout
 *   errors       vf_pool_model without a device, on a LoRA, over budget (the
 *                pool unchanged); the cpu device has no DEVICE tier
 *   failures     every host allocation of a load into PINNED, and of a load
 *                that must first demote another model, failed in turn: a
 *                clean VF_ERR_NO_MEMORY, the pool and both models as they
 *                were (nothing half-held), and the next load works
 *   stages       outside any pool, a SEQUENTIAL model keeps each per-stage
 *                component's images in its host store between prompts: the
 *                second prompt reads no file (they were truncated) and draws
 *                the same image; vf_clear_cache drops them (then the files
 *                are needed again, and their damage is reported)
 * Leaks are failures (ASan).
 */
#include "test.h"
#include "test_tmp.h"

#include "core/alloc.h"
#include "io/safetensors.h"
#include "mem/pool.h"
#include "pipeline/model.h"

#include <sys/stat.h>
#include <unistd.h>

#define SPEC "sim,context=1M,memory=1G"

static const char *g_shared;
static char g_path[512];         /* the tiny SD1.5 reference folder */
static vf_image *g_ref;          /* tiny SD1.5 on the CPU, 64x64 */
static vf_image *g_ref128;       /* and 128x128                  */

static const char *const g_files[] = {
    "model_index.json",        "scheduler/scheduler_config.json",    "text_encoder/config.json",
    "text_encoder/model.safetensors", "tokenizer/tokenizer_config.json", "tokenizer/merges.txt",
    "tokenizer/vocab.json",    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",         "vae/diffusion_pytorch_model.safetensors",
};
static const char *const g_weights[] = {"text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                                        "vae/diffusion_pytorch_model.safetensors"};

static int copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = a ? fopen(to, "wb") : NULL;
    char buf[1 << 16];
    size_t n;
    int ok = a && b;
    while (ok && (n = fread(buf, 1, sizeof buf, a)) > 0)
        ok = fwrite(buf, 1, n, b) == n;
    if (a)
        fclose(a);
    if (b && fclose(b) != 0)
        ok = 0;
    return ok;
}

/* A copy of the tiny SD1.5 folder in t (its files may then be damaged). */
static int copy_model(tmpd *t)
{
    static const char *const dirs[] = {"scheduler", "text_encoder", "tokenizer", "unet", "vae"};
    char from[600], to[600];
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
        if (mkdir(tmp_path(t, dirs[i]), 0755) != 0)
            return 0;
    for (size_t i = 0; i < sizeof g_files / sizeof g_files[0]; i++) {
        snprintf(from, sizeof from, "%s/reference/tiny-sd15/diffusers/%s", g_shared, g_files[i]);
        snprintf(to, sizeof to, "%s/%s", t->dir, g_files[i]);
        if (!copy_file(from, to))
            return 0;
    }
    return 1;
}

/* A copy in a new scratch folder, read by pread from then on (a truncated
 * file then fails to read instead of faulting a mapping); 0 when it cannot
 * be made (a failed check). Undone by damageable_end. */
static int damageable_copy(tmpd *t, const char *tag)
{
    if (tmp_open(t, tag) && copy_model(t)) {
        vf_st_fault_no_mmap(1);
        return 1;
    }
    CHECK(0);
    tmp_close(t);
    return 0;
}

static void damageable_end(tmpd *t)
{
    vf_st_fault_no_mmap(0);
    tmp_close(t);
}

static void truncate_weights(tmpd *t)
{
    for (size_t i = 0; i < sizeof g_weights / sizeof g_weights[0]; i++)
        CHECK(truncate(tmp_path(t, g_weights[i]), 0) == 0);
}

static vf_status generate_at(vf_model *m, int size, vf_image **img)
{
    vf_generate_params p;
    vf_generate_params_init(&p);
    p.prompt = "a photo of a cat wearing a tiny hat";
    p.negative_prompt = "blurry";
    p.steps = 3;
    p.guidance_scale = 5.0f;
    p.width = p.height = size;
    p.seed = 77;
    return vf_generate(m, &p, img);
}

static vf_status generate(vf_model *m, vf_image **img) { return generate_at(m, 64, img); }

static int same_image(const vf_image *a, const vf_image *b)
{
    if (!a || !b || a->width != b->width || a->height != b->height)
        return 0;
    size_t n = (size_t)a->width * (size_t)a->height * 3;
    return memcmp(a->rgb, b->rgb, n) == 0 && memcmp(a->pixels, b->pixels, n * sizeof(float)) == 0;
}

/* Generates with m and compares with the CPU's image. */
static void check_generates(vf_model *m, const char *what)
{
    vf_image *img = NULL;
    vf_status st = generate(m, &img);
    CHECK_MSG(st == VF_OK, "%s: %s", what, vf_last_error());
    CHECK_MSG(same_image(img, g_ref), "%s: the image differs from the CPU's", what);
    vf_image_free(img);
}

/* Bytes of every block's image on the simulated device (float32 OIHW). */
static uint64_t image_bytes(const vf_model *m)
{
    uint64_t n = 0;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++)
        for (int b = 0; m->present[c] && b < m->bl[c].nblocks; b++)
            n += vf_residency_block_stored_bytes(&m->bl[c], b, VF_DTYPE_F32, VF_DTYPE_F32);
    return n;
}

static vf_tier tier_of(vf_pool *p, const char *id)
{
    vf_pool_model_info info;
    CHECK_OK(vf_pool_info(p, id, &info));
    return info.tier;
}

/* The pool's size of the tiny model (its header bytes). */
static uint64_t tiny_bytes(void)
{
    vf_pool *p = NULL;
    vf_pool_model_info info = {0};
    CHECK_OK(vf_pool_create(NULL, &p));
    CHECK_OK(vf_pool_register(p, "a", g_path));
    CHECK_OK(vf_pool_info(p, "a", &info));
    vf_pool_free(p);
    return info.bytes;
}

#define CHECK_TIER(p, id, t)                                                                               \
    CHECK_MSG(tier_of(p, id) == (t), "'%s' is in %s, expected %s", id, vf_tier_name(tier_of(p, id)),     \
              vf_tier_name(t))

static vf_pool *make_pool(const char *device, uint64_t device_capacity, uint64_t budget)
{
    vf_pipeline_options po;
    vf_pipeline_options_init(&po);
    po.device = device;
    po.vram_budget = budget;
    vf_pool_options o;
    vf_pool_options_init(&o);
    o.device_capacity = device_capacity;
    o.pipeline = &po;
    vf_pool *p = NULL;
    CHECK_OK(vf_pool_create(&o, &p));
    return p;
}

/* The device bytes a model holds beyond its context. */
static uint64_t device_held(vf_model *m)
{
    vf_device *d = vf_mm_device(m);
    return vf_device_used(d) - vf_device_context_bytes(d);
}

static void test_setup(void)
{
    SKIP_WITHOUT_SHARED(shared);
    g_shared = shared;
    snprintf(g_path, sizeof g_path, "%s/reference/tiny-sd15/diffusers", shared);
    vf_model *m = NULL;
    CHECK_OK(vf_model_open(g_path, NULL, &m));
    if (m)
        CHECK_OK(generate(m, &g_ref));
    if (m)
        CHECK_OK(generate_at(m, 128, &g_ref128));
    vf_model_close(m);
}

/* Each tier holds what it says, and a generation from the device works. */
static void test_tiers(void)
{
    if (!g_ref)
        return;
    vf_pool *p = make_pool(SPEC, VF_POOL_UNLIMITED, 0);
    CHECK_OK(vf_pool_register(p, "a", g_path));
    vf_model *m = NULL;
    CHECK_OK(vf_pool_load(p, "a", VF_TIER_HOST));
    CHECK_OK(vf_pool_model(p, "a", &m)); /* HOST -> DEVICE; the handle, to look inside */
    if (!m)
        goto out;
    uint64_t all = image_bytes(m);
    CHECK(all > 0);
    /* DEVICE: the arena holds every block (the default plan keeps everything
     * resident on a 1 GiB device) and the host store none of them */
    CHECK(vf_model_is_loaded(m) && device_held(m) >= all);
    CHECK_MSG(vf_model_held_host_bytes(m) == 0, "host store holds %llu bytes on DEVICE",
              (unsigned long long)vf_model_held_host_bytes(m));
    check_generates(m, "DEVICE");
    /* DISK: nothing */
    CHECK_OK(vf_pool_unload(p, "a"));
    CHECK(!vf_model_is_loaded(m) && device_held(m) == 0 && vf_model_held_host_bytes(m) == 0);
    /* HOST from disk: converted from the file into pageable memory */
    CHECK_OK(vf_pool_load(p, "a", VF_TIER_HOST));
    CHECK_TIER(p, "a", VF_TIER_HOST);
    CHECK(vf_model_is_loaded(m) && device_held(m) == 0);
    CHECK_MSG(vf_model_held_host_bytes(m) == all, "HOST: store %llu bytes, images %llu",
              (unsigned long long)vf_model_held_host_bytes(m), (unsigned long long)all);
    CHECK(vf_host_store_pinned_bytes(m->mm.store) == 0 && vf_device_pinned_bytes(vf_mm_device(m)) == 0);
    /* PINNED: the same entries moved to page-locked memory, which the device counts */
    CHECK_OK(vf_pool_load(p, "a", VF_TIER_PINNED));
    CHECK(vf_model_held_host_bytes(m) == all && vf_host_store_pinned_bytes(m->mm.store) == all);
    CHECK(vf_device_pinned_bytes(vf_mm_device(m)) == all);
    /* back to DEVICE from PINNED: the store's images go to the arena */
    uint64_t copied = vf_device_sim_copied_bytes(vf_mm_device(m));
    CHECK_OK(vf_pool_load(p, "a", VF_TIER_DEVICE));
    CHECK(vf_device_sim_copied_bytes(vf_mm_device(m)) - copied >= all);
    CHECK(vf_model_held_host_bytes(m) == 0 && vf_device_pinned_bytes(vf_mm_device(m)) == 0);
    check_generates(m, "DEVICE after PINNED");
out:
    vf_pool_free(p);
}

/* Demoted to PINNED, a model comes back without reading its files. */
static void test_no_reads_after_demotion(void)
{
    if (!g_ref)
        return;
    tmpd t;
    if (!damageable_copy(&t, "poolr"))
        return;
    vf_pool *p = make_pool(SPEC, VF_POOL_UNLIMITED, 0);
    CHECK_OK(vf_pool_register(p, "a", t.dir));
    vf_model *m = NULL;
    CHECK_OK(vf_pool_model(p, "a", &m));
    if (m)
        check_generates(m, "before demotion");
    /* device -> pinned: resident blocks copied back from the device */
    CHECK_OK(vf_pool_load(p, "a", VF_TIER_DEVICE));
    if (m) {
        uint64_t copies = vf_device_sim_copies(vf_mm_device(m));
        CHECK_OK(vf_model_hold(m, VF_TIER_DEVICE, VF_TIER_PINNED));
        CHECK_MSG(vf_device_sim_copies(vf_mm_device(m)) > copies, "demotion made no device-to-host copy");
        CHECK(device_held(m) == 0 && vf_model_held_host_bytes(m) == image_bytes(m));
        truncate_weights(&t);
        /* the pool still says DEVICE: the next stage re-loads, from the store */
        check_generates(m, "after demotion, with the files truncated");
        CHECK(device_held(m) > 0);
        /* another size re-plans the arena: the resident weights go through
         * the store (copied back from the device), not the files */
        vf_image *big = NULL;
        vf_status gst = generate_at(m, 128, &big);
        CHECK_MSG(gst == VF_OK, "128x128 after a re-plan, files truncated: %s", vf_last_error());
        CHECK_MSG(same_image(big, g_ref128), "128x128 after a re-plan: the image differs from the CPU's");
        vf_image_free(big);
        CHECK(vf_model_held_host_bytes(m) == 0); /* reloaded from the store, which let them go */
        /* a model that really is on disk only fails on those files, naming one */
        CHECK_OK(vf_pool_unload(p, "a"));
        vf_image *img = NULL;
        vf_status st = generate(m, &img);
        CHECK_MSG(st != VF_OK && strstr(vf_last_error(), t.dir), "from DISK: status %s, '%s'",
                  vf_status_str(st), vf_last_error());
        vf_image_free(img);
        CHECK_TIER(p, "a", VF_TIER_DISK);
    }
    vf_pool_free(p);
    damageable_end(&t);
}

/* The scenario with real weights: room for two on the device. */
static void test_scenario(void)
{
    if (!g_ref)
        return;
    uint64_t bytes = tiny_bytes();
    vf_pool *p = make_pool(SPEC, bytes * 5 / 2, 0);
    CHECK_OK(vf_pool_register(p, "a", g_path));
    CHECK_OK(vf_pool_register(p, "b", g_path));
    CHECK_OK(vf_pool_register(p, "c", g_path));
    vf_model *a = NULL, *b = NULL, *c = NULL;
    CHECK_OK(vf_pool_model(p, "a", &a));
    CHECK_OK(vf_pool_model(p, "b", &b));
    if (!a || !b)
        goto out;
    check_generates(a, "a");                    /* a use of a: b is now the least recent */
    CHECK_OK(vf_pool_model(p, "c", &c));
    CHECK_TIER(p, "a", VF_TIER_DEVICE);
    CHECK_TIER(p, "b", VF_TIER_PINNED);
    CHECK_TIER(p, "c", VF_TIER_DEVICE);
    CHECK(device_held(b) == 0 && vf_model_held_host_bytes(b) == image_bytes(b));
    CHECK(device_held(a) > 0 && c && device_held(c) > 0);
    /* b generates: back to the device through the pool, which demotes a (LRU) */
    check_generates(b, "b after its eviction");
    CHECK_TIER(p, "b", VF_TIER_DEVICE);
    CHECK_TIER(p, "a", VF_TIER_PINNED);
    CHECK_TIER(p, "c", VF_TIER_DEVICE);
    CHECK(device_held(a) == 0 && vf_model_held_host_bytes(a) == image_bytes(a));
    vf_pool_usage u;
    CHECK_OK(vf_pool_get_usage(p, &u));
    CHECK(u.evictions == 2 && u.bytes[VF_TIER_DEVICE] == 2 * bytes);
out:
    vf_pool_free(p);
}

static void test_errors(void)
{
    if (!g_ref)
        return;
    const char *path = g_path;
    char lora[600];
    vf_model *m = NULL;
    /* no device: accounting only */
    vf_pool *p = NULL;
    CHECK_OK(vf_pool_create(NULL, &p));
    CHECK_OK(vf_pool_register(p, "a", path));
    CHECK(vf_pool_model(p, "a", &m) == VF_ERR_INVALID_ARG && strstr(vf_last_error(), "'a'") && !m);
    vf_pool_free(p);
    /* the CPU: HOST is the float32 conversions, DEVICE is refused and nothing moves */
    p = make_pool("cpu", VF_POOL_UNLIMITED, 0);
    CHECK_OK(vf_pool_register(p, "a", path));
    CHECK(vf_pool_load(p, "a", VF_TIER_DEVICE) == VF_ERR_UNSUPPORTED && strstr(vf_last_error(), "cpu"));
    CHECK_TIER(p, "a", VF_TIER_DISK);
    CHECK_OK(vf_pool_model(p, "a", &m));
    CHECK_TIER(p, "a", VF_TIER_HOST);
    if (m) {
        CHECK(vf_model_is_loaded(m));
        check_generates(m, "cpu pool");
    }
    CHECK(vf_pool_model(p, "nope", &m) == VF_ERR_NOT_FOUND && strstr(vf_last_error(), "'nope'"));
    vf_pool_free(p);
    /* over the model's budget: a clear error, the pool as it was */
    p = make_pool(SPEC, VF_POOL_UNLIMITED, 2ull << 20);
    CHECK_OK(vf_pool_register(p, "a", path));
    m = NULL;
    vf_status st = vf_pool_model(p, "a", &m);
    CHECK_MSG(st == VF_ERR_BUDGET && !m, "status %s: %s", vf_status_str(st), vf_last_error());
    CHECK_TIER(p, "a", VF_TIER_DISK);
    vf_pool_free(p);
    /* a LoRA's id */
    snprintf(lora, sizeof lora, "%s/lora/sd15_kohya.safetensors", vf_test_data());
    p = make_pool(SPEC, VF_POOL_UNLIMITED, 0);
    CHECK_OK(vf_pool_register_lora(p, "l", lora));
    CHECK(vf_pool_model(p, "l", &m) == VF_ERR_INVALID_ARG && strstr(vf_last_error(), "lora"));
    vf_pool_free(p);
}

static void test_stage_images_kept(void)
{
    if (!g_ref)
        return;
    tmpd t;
    if (!damageable_copy(&t, "stage"))
        return;
    vf_pipeline_options po;
    vf_pipeline_options_init(&po);
    po.device = SPEC;
    po.offload = VF_OFFLOAD_SEQUENTIAL;
    vf_model_options o;
    vf_model_options_init(&o);
    o.pipeline = &po;
    vf_model *m = NULL;
    CHECK_OK(vf_model_open(t.dir, &o, &m));
    if (m) {
        check_generates(m, "SEQUENTIAL, first prompt");
        uint64_t kept = vf_model_held_host_bytes(m);
        CHECK_MSG(kept == image_bytes(m), "kept %llu bytes of %llu", (unsigned long long)kept,
                  (unsigned long long)image_bytes(m));
        truncate_weights(&t);
        check_generates(m, "SEQUENTIAL, second prompt, files truncated");
        CHECK(vf_clear_cache() >= kept && vf_model_held_host_bytes(m) == 0);
        vf_image *img = NULL;
        vf_status st = generate(m, &img);
        CHECK_MSG(st != VF_OK && strstr(vf_last_error(), "truncated"), "after clear_cache: %s, '%s'",
                  vf_status_str(st), vf_last_error());
        vf_image_free(img);
    }
    vf_model_close(m);
    damageable_end(&t);
}

/* Loads `id` into tier with the kth host allocation failing; 1 when it failed. */
static int load_failing(vf_pool *p, const char *id, vf_tier tier, uint64_t k, vf_status *st)
{
    vf_fault_alloc_fail_at(k);
    *st = vf_pool_load(p, id, tier);
    vf_fault_alloc_fail_at(0);
    return *st != VF_OK;
}

static void test_alloc_failures(void)
{
    if (!g_ref)
        return;
    vf_pool *p = make_pool(SPEC, tiny_bytes() * 3 / 2, 0); /* room for one on the device */
    CHECK_OK(vf_pool_register(p, "a", g_path));
    CHECK_OK(vf_pool_register(p, "b", g_path));
    vf_model *a = NULL, *b = NULL;
    CHECK_OK(vf_pool_model(p, "b", &b));
    CHECK_OK(vf_pool_model(p, "a", &a)); /* b demoted, both opened */
    CHECK_OK(vf_pool_unload(p, "b"));
    if (!a || !b)
        goto out;
    /* DISK -> PINNED for b, then b onto the device (demoting a), allocations counted */
    uint64_t before = vf_fault_alloc_count();
    CHECK_OK(vf_pool_load(p, "b", VF_TIER_PINNED));
    uint64_t k_pin = vf_fault_alloc_count() - before;
    CHECK_OK(vf_pool_unload(p, "b"));
    before = vf_fault_alloc_count();
    CHECK_OK(vf_pool_load(p, "b", VF_TIER_DEVICE));
    uint64_t k_dev = vf_fault_alloc_count() - before;
    CHECK_OK(vf_pool_unload(p, "b"));
    CHECK_OK(vf_pool_load(p, "a", VF_TIER_DEVICE));
    int failed = 0, bad = 0;
    for (uint64_t k = 1; k <= k_pin; k++) {
        vf_status st;
        if (!load_failing(p, "b", VF_TIER_PINNED, k, &st)) {
            CHECK_OK(vf_pool_unload(p, "b"));
            continue;
        }
        failed++;
        if (st != VF_ERR_NO_MEMORY || tier_of(p, "b") != VF_TIER_DISK || vf_model_held_host_bytes(b) ||
            vf_model_is_loaded(b)) {
            bad++;
            fprintf(stderr, "PINNED, allocation %llu: %s: %s\n", (unsigned long long)k, vf_status_str(st),
                    vf_last_error());
        }
    }
    for (uint64_t k = 1; k <= k_dev; k++) {
        vf_status st;
        if (!load_failing(p, "b", VF_TIER_DEVICE, k, &st)) {
            CHECK_OK(vf_pool_unload(p, "b"));
            CHECK_OK(vf_pool_load(p, "a", VF_TIER_DEVICE));
            continue;
        }
        failed++;
        /* undone: a back on the device (or still there), b on disk with nothing held */
        if (st != VF_ERR_NO_MEMORY || tier_of(p, "b") != VF_TIER_DISK || tier_of(p, "a") != VF_TIER_DEVICE ||
            vf_model_held_host_bytes(b) || device_held(b) || !vf_model_is_loaded(a)) {
            bad++;
            fprintf(stderr, "DEVICE, allocation %llu: %s (a in %s, b in %s): %s\n", (unsigned long long)k,
                    vf_status_str(st), vf_tier_name(tier_of(p, "a")), vf_tier_name(tier_of(p, "b")),
                    vf_last_error());
        }
    }
    printf("  pool loads: %llu + %llu allocations failed in turn, %d failed cleanly, %d not\n",
           (unsigned long long)k_pin, (unsigned long long)k_dev, failed - bad, bad);
    CHECK(k_pin > 10 && k_dev > 10 && failed > 0 && bad == 0);
    check_generates(a, "a after the failures");
    CHECK_OK(vf_pool_load(p, "b", VF_TIER_DEVICE));
    check_generates(b, "b after the failures");
out:
    vf_pool_free(p);
}

static void test_teardown(void)
{
    vf_image_free(g_ref);
    vf_image_free(g_ref128);
}

TEST_MAIN(TEST(test_setup), TEST(test_tiers), TEST(test_no_reads_after_demotion), TEST(test_scenario),
          TEST(test_errors), TEST(test_alloc_failures), TEST(test_stage_images_kept), TEST(test_teardown))
