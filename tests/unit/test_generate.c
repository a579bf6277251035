/* Text to image against diffusers (issue 3, "Parity"): tiny-sd15 (DDIM) and
 * tiny-sdxl (Euler), each from the diffusers folder and from the single file,
 * run with reference.json's settings and dump_path set; the dump is read back
 * and compared with reference.safetensors: init_latents bit for bit, the first
 * UNet output, the latents after every step, the VAE output and the image
 * within max relative error 1e-4. Also: the stages run one at a time give
 * vf_generate's image exactly; progress is reported in order; cancelling at
 * step 2 returns VF_ERR_CANCELLED with nothing leaked and the next run works;
 * bad parameters are refused with messages that name them.
 */
#include "test.h"
#include "ref_params.h"

#include "core/alloc.h"
#include "io/json.h"
#include "io/safetensors.h"

#include <stdint.h>
#include <unistd.h>

#define TOL 1e-4

static char g_tmpdir[256];

static void remove_tmpdir(void)
{
    if (g_tmpdir[0] && strcmp(g_tmpdir, "/tmp") != 0)
        rmdir(g_tmpdir);
}

static const char *tmp_path(const char *name)
{
    static char buf[512];
    if (!g_tmpdir[0]) {
        snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/vf_test_generate_XXXXXX");
        if (!mkdtemp(g_tmpdir))
            snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp");
        atexit(remove_tmpdir);
    }
    snprintf(buf, sizeof buf, "%s/%s", g_tmpdir, name);
    return buf;
}

/* An F32 tensor of f as a new buffer; *n receives its element count. */
static float *read_tensor(vf_st_file *f, const char *name, size_t *n, int64_t *shape, int *ndim)
{
    const vf_st_tensor *t = vf_st_find(f, name);
    *n = 0;
    if (!t || t->dtype != VF_DTYPE_F32) {
        fprintf(stderr, "%s: tensor '%s' missing or not F32\n", vf_st_path(f), name);
        return NULL;
    }
    float *out = malloc(t->nbytes ? t->nbytes : 1);
    if (vf_st_read(f, t, 0, out, t->nbytes) != VF_OK) {
        free(out);
        return NULL;
    }
    *n = t->nbytes / sizeof(float);
    if (shape) {
        *ndim = t->ndim;
        memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    }
    return out;
}

/* Compares tensor `name` of the dump with the reference: same shape, then within
 * tol (or bit for bit when tol < 0). */
static void compare(vf_st_file *got, vf_st_file *want, const char *name, double tol, const char *label)
{
    size_t ng, nw;
    int64_t sg[VF_MAX_DIMS], sw[VF_MAX_DIMS];
    int dg = 0, dw = 0;
    float *g = read_tensor(got, name, &ng, sg, &dg);
    float *w = read_tensor(want, name, &nw, sw, &dw);
    char what[160];
    snprintf(what, sizeof what, "%s %s", label, name);
    CHECK_MSG(g && w, "%s: missing", what);
    if (g && w) {
        CHECK_MSG(dg == dw && memcmp(sg, sw, sizeof(int64_t) * (size_t)dg) == 0 && ng == nw,
                  "%s: shape differs (%zu vs %zu elements)", what, ng, nw);
        if (ng == nw && tol < 0)
            CHECK_MSG(memcmp(g, w, ng * sizeof(float)) == 0, "%s: not bit-identical", what);
        else if (ng == nw)
            CHECK_CLOSE(what, g, w, ng, tol);
        double num = 0, den = 0;
        for (size_t i = 0; ng == nw && i < ng; i++) {
            num = fmax(num, fabs((double)g[i] - w[i]));
            den = fmax(den, fabs((double)w[i]));
        }
        printf("  %-50s max rel err %.3g\n", what, den > 0 ? num / den : num);
    }
    free(g);
    free(w);
}

static vf_status open_model(const char *shared, const char *name, int single, vf_model **m)
{
    char path[512], dir[512];
    snprintf(dir, sizeof dir, "%s/reference/%s/diffusers", shared, name);
    vf_model_options o;
    vf_model_options_init(&o);
    if (!single)
        return vf_model_open(dir, &o, m);
    snprintf(path, sizeof path, "%s/reference/%s/%s.safetensors", shared, name, name);
    o.tokenizer_dir = dir;
    o.config_dir = dir;
    return vf_model_open(path, &o, m);
}

/* One full parity run of fixture `name` from one layout. */
static void parity(const char *name, int single)
{
    SKIP_WITHOUT_SHARED(shared);
    ref_params r;
    char refpath[512], label[64];
    snprintf(label, sizeof label, "%s (%s)", name, single ? "single file" : "diffusers");
    CHECK(read_ref_params(shared, name, &r));
    snprintf(refpath, sizeof refpath, "%s/reference/%s/reference.safetensors", shared, name);
    vf_model *m = NULL;
    vf_image *img = NULL;
    vf_st_file *got = NULL, *want = NULL;
    CHECK_OK(open_model(shared, name, single, &m));
    if (!m)
        return;
    vf_generate_params p;
    ref_to_params(&r, &p);
    p.dump_path = tmp_path("parity.safetensors");
    CHECK_OK(vf_generate(m, &p, &img));
    CHECK_OK(vf_st_open(p.dump_path, &got));
    CHECK_OK(vf_st_open(refpath, &want));
    if (img && got && want) {
        CHECK(img->width == r.width && img->height == r.height);
        compare(got, want, "init_latents", -1, label);
        compare(got, want, "timesteps", 1e-6, label);
        if (vf_st_find(want, "sigmas"))
            compare(got, want, "sigmas", 1e-6, label);
        compare(got, want, "prompt_embeds", TOL, label);
        compare(got, want, "negative_prompt_embeds", TOL, label);
        compare(got, want, "unet0_sample", TOL, label);
        compare(got, want, "unet0_timestep", 0, label);
        compare(got, want, "unet0_encoder_hidden_states", TOL, label);
        if (vf_st_find(want, "unet0_time_ids")) {
            compare(got, want, "unet0_time_ids", 0, label);
            compare(got, want, "unet0_text_embeds", TOL, label);
        }
        compare(got, want, "unet0_out", TOL, label);
        for (int i = 0; i < r.steps; i++) {
            char key[48];
            snprintf(key, sizeof key, "latents_after_step%d", i);
            compare(got, want, key, TOL, label);
        }
        if (vf_st_find(want, "vae_decoded"))
            compare(got, want, "vae_decoded", TOL, label);
        compare(got, want, "image", TOL, label);
        /* The returned image is the dumped one, and its bytes are its rounding. */
        size_t n;
        float *dumped = read_tensor(got, "image", &n, NULL, NULL);
        CHECK(dumped && n == (size_t)r.width * r.height * 3);
        if (dumped && n == (size_t)r.width * r.height * 3) {
            CHECK(memcmp(dumped, img->pixels, n * sizeof(float)) == 0);
            int rgb_ok = 1;
            for (size_t i = 0; i < n; i++)
                rgb_ok &= img->rgb[i] == (uint8_t)nearbyintf(img->pixels[i] * 255.0f);
            CHECK(rgb_ok);
        }
        free(dumped);
    }
    vf_st_close(got);
    vf_st_close(want);
    unlink(p.dump_path);
    vf_image_free(img);
    vf_model_close(m);
}

static void test_parity_sd15_diffusers(void) { parity("tiny-sd15", 0); }
static void test_parity_sd15_single(void) { parity("tiny-sd15", 1); }
static void test_parity_sdxl_diffusers(void) { parity("tiny-sdxl", 0); }
static void test_parity_sdxl_single(void) { parity("tiny-sdxl", 1); }

static int same_image(const vf_image *a, const vf_image *b)
{
    if (!a || !b || a->width != b->width || a->height != b->height)
        return 0;
    size_t n = (size_t)a->width * a->height * 3;
    return memcmp(a->rgb, b->rgb, n) == 0 && memcmp(a->pixels, b->pixels, n * sizeof(float)) == 0;
}

/* The progress log: every (stage, step, total) reported, and when to cancel. */
typedef struct progress_log {
    int n;
    int stage[64], step[64], total[64];
    int cancel_stage, cancel_step;     /* cancel_step < 0: never */
} progress_log;

static int record(void *user, vf_generation_step stage, int step, int total)
{
    progress_log *l = user;
    if (l->n < 64) {
        l->stage[l->n] = (int)stage;
        l->step[l->n] = step;
        l->total[l->n] = total;
        l->n++;
    }
    return (int)stage == l->cancel_stage && step == l->cancel_step;
}

/* encode -> denoise -> decode by hand gives vf_generate's image exactly, and the
 * progress callback sees every stage in order. */
static void test_stages_match_generate(void)
{
    SKIP_WITHOUT_SHARED(shared);
    ref_params r;
    CHECK(read_ref_params(shared, "tiny-sdxl", &r));
    vf_model *m = NULL;
    CHECK_OK(open_model(shared, "tiny-sdxl", 0, &m));
    if (!m)
        return;
    vf_generate_params p;
    ref_to_params(&r, &p);
    progress_log log = {.cancel_stage = -1, .cancel_step = -1};
    p.on_step = record;
    p.user = &log;
    vf_image *whole = NULL, *staged = NULL;
    vf_embeddings *e = NULL;
    vf_latents *lat = NULL;
    CHECK_OK(vf_generate(m, &p, &whole));
    /* encode 0,1; denoise 0..steps; decode 0,1 */
    CHECK(log.n == 2 + r.steps + 1 + 2);
    int order_ok = log.n == 2 + r.steps + 1 + 2;
    for (int i = 0; order_ok && i < log.n; i++) {
        int want_stage = i < 2 ? VF_STEP_ENCODE_PROMPT : i < 3 + r.steps ? VF_STEP_DENOISE : VF_STEP_DECODE;
        int want_step = i < 2 ? i : i < 3 + r.steps ? i - 2 : i - 3 - r.steps;
        int want_total = want_stage == VF_STEP_DENOISE ? r.steps : 1;
        order_ok = log.stage[i] == want_stage && log.step[i] == want_step && log.total[i] == want_total;
    }
    CHECK(order_ok);

    CHECK_OK(vf_encode_prompt(m, r.prompt, r.negative, &e));
    p.on_step = NULL;
    if (e)
        CHECK_OK(vf_denoise(m, &p, e, &lat));
    CHECK(lat && lat->batch == 1 && lat->channels == 4 && lat->height == r.height / 8 &&
          lat->width == r.width / 8);
    if (lat)
        CHECK_OK(vf_decode(m, lat, &staged));
    CHECK(same_image(whole, staged));

    /* vf_denoise alone honours dump_path with its own intermediates. */
    p.dump_path = tmp_path("denoise.safetensors");
    vf_latents *lat2 = NULL;
    vf_st_file *f = NULL;
    if (e)
        CHECK_OK(vf_denoise(m, &p, e, &lat2));
    CHECK_OK(vf_st_open(p.dump_path, &f));
    if (f) {
        const char *keys[] = {"prompt_embeds", "pooled_prompt_embeds", "init_latents", "unet0_out",
                              "latents_after_step3", "timesteps", "sigmas"};
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
            CHECK_MSG(vf_st_find(f, keys[i]) != NULL, "denoise dump lacks %s", keys[i]);
        CHECK(vf_st_find(f, "image") == NULL);
    }
    if (lat && lat2)
        CHECK(memcmp(lat->data, lat2->data, sizeof(float) * 4 * lat->height * lat->width) == 0);
    vf_st_close(f);
    unlink(p.dump_path);
    vf_latents_free(lat2);
    vf_latents_free(lat);
    vf_embeddings_free(e);
    vf_image_free(whole);
    vf_image_free(staged);
    vf_model_close(m);
}

/* Cancelling at denoise step 2 stops there (no more UNet calls, nothing
 * returned, nothing leaked: ASan checks) and the next run gives the full image. */
static void test_cancel(void)
{
    SKIP_WITHOUT_SHARED(shared);
    ref_params r;
    CHECK(read_ref_params(shared, "tiny-sd15", &r));
    vf_model *m = NULL;
    CHECK_OK(open_model(shared, "tiny-sd15", 0, &m));
    if (!m)
        return;
    vf_generate_params p;
    ref_to_params(&r, &p);
    p.dump_path = tmp_path("cancelled.safetensors");
    progress_log log = {.cancel_stage = VF_STEP_DENOISE, .cancel_step = 2};
    p.on_step = record;
    p.user = &log;
    vf_image *img = (vf_image *)&log;  /* must be reset to NULL */
    vf_status st = vf_generate(m, &p, &img);
    CHECK(st == VF_ERR_CANCELLED);
    CHECK(img == NULL);
    CHECK(strstr(vf_last_error(), "cancel") != NULL);
    CHECK(log.n > 0 && log.stage[log.n - 1] == VF_STEP_DENOISE && log.step[log.n - 1] == 2);
    CHECK(access(p.dump_path, F_OK) != 0);

    /* Cancel during encode and decode as well. */
    log = (progress_log){.cancel_stage = VF_STEP_ENCODE_PROMPT, .cancel_step = 0};
    CHECK(vf_generate(m, &p, &img) == VF_ERR_CANCELLED && img == NULL && log.n == 1);
    log = (progress_log){.cancel_stage = VF_STEP_DECODE, .cancel_step = 1};
    CHECK(vf_generate(m, &p, &img) == VF_ERR_CANCELLED && img == NULL);
    CHECK(access(p.dump_path, F_OK) != 0);

    log = (progress_log){.cancel_stage = -1, .cancel_step = -1};
    CHECK_OK(vf_generate(m, &p, &img));
    CHECK(img && img->width == r.width && img->height == r.height);
    vf_image_free(img);
    unlink(p.dump_path);
    vf_model_close(m);
}

/* Expects vf_generate to refuse p with VF_ERR_INVALID_ARG and a message naming word. */
static void expect_refused(vf_model *m, const vf_generate_params *p, const char *word)
{
    vf_image *img = NULL;
    vf_status st = vf_generate(m, p, &img);
    CHECK_MSG(st == VF_ERR_INVALID_ARG, "%s: got status %s", word, vf_status_str(st));
    CHECK_MSG(strstr(vf_last_error(), word) != NULL, "message '%s' does not name %s", vf_last_error(), word);
    CHECK(img == NULL);
    vf_image_free(img);
}

static void test_bad_params(void)
{
    SKIP_WITHOUT_SHARED(shared);
    vf_model *m = NULL;
    CHECK_OK(open_model(shared, "tiny-sdxl", 0, &m));
    if (!m)
        return;
    vf_generate_params p;
    vf_generate_params_init(&p);
    CHECK(p.steps == 20 && p.guidance_scale == 7.5f && p.width == 0 && p.sampler == VF_SAMPLER_DEFAULT);
    p.prompt = "x";
    p.steps = 1;
    p.width = 63;
    expect_refused(m, &p, "width");
    p.width = 48; /* a multiple of 8, not of 32 (tiny-sdxl's UNet halves twice) */
    expect_refused(m, &p, "width");
    p.width = 1 << 30;
    expect_refused(m, &p, "width");
    p.width = -64;
    expect_refused(m, &p, "width");
    p.width = 64;
    p.height = 1 << 30;
    expect_refused(m, &p, "height");
    p.height = 100;
    expect_refused(m, &p, "height");
    p.height = 64;
    p.steps = 0;
    expect_refused(m, &p, "steps");
    p.steps = -3;
    expect_refused(m, &p, "steps");
    p.steps = 1000000;
    expect_refused(m, &p, "steps");
    p.steps = 1;
    p.guidance_scale = NAN;
    expect_refused(m, &p, "guidance");
    p.guidance_scale = INFINITY;
    expect_refused(m, &p, "guidance");
    p.guidance_scale = 5;
    p.sampler = (vf_sampler)99;
    expect_refused(m, &p, "sampler");
    p.sampler = VF_SAMPLER_DEFAULT;
    p.crop_top = -1;
    expect_refused(m, &p, "crop_top");
    p.crop_top = 0;
    /* NULL arguments */
    vf_image *img = NULL;
    CHECK(vf_generate(m, NULL, &img) == VF_ERR_INVALID_ARG && img == NULL);
    CHECK(vf_generate(NULL, &p, &img) == VF_ERR_INVALID_ARG);
    CHECK(vf_generate(m, &p, NULL) == VF_ERR_INVALID_ARG);
    CHECK(vf_decode(m, NULL, &img) == VF_ERR_INVALID_ARG && img == NULL);
    vf_latents *lat = NULL;
    CHECK(vf_denoise(m, &p, NULL, &lat) == VF_ERR_INVALID_ARG && lat == NULL);
    /* Embeddings of another model (SD1.5's width 16, not SDXL's 32) are refused. */
    vf_model *sd15 = NULL;
    vf_embeddings *e = NULL;
    CHECK_OK(open_model(shared, "tiny-sd15", 0, &sd15));
    if (sd15)
        CHECK_OK(vf_encode_prompt(sd15, "x", NULL, &e));
    if (e) {
        CHECK(vf_denoise(m, &p, e, &lat) == VF_ERR_INVALID_ARG && lat == NULL);
        CHECK(strstr(vf_last_error(), "embeddings") != NULL);
    }
    vf_embeddings_free(e);
    vf_model_close(sd15);
    /* A valid small run after all that still works, at the default size. */
    p.width = p.height = 0;
    CHECK_OK(vf_generate(m, &p, &img));
    CHECK(img && img->width == 64 && img->height == 64);
    vf_image_free(img);
    vf_model_close(m);
}

/* Samplers resolve from the config; every sampler runs; guidance 1 runs the
 * UNet once per step (batch 1) and differs from guided output. */
static void test_samplers_and_no_guidance(void)
{
    SKIP_WITHOUT_SHARED(shared);
    vf_model *sd15 = NULL, *xl = NULL;
    CHECK_OK(open_model(shared, "tiny-sd15", 0, &sd15));
    CHECK_OK(open_model(shared, "tiny-sdxl", 1, &xl));
    if (!sd15 || !xl) {
        vf_model_close(sd15);
        vf_model_close(xl);
        return;
    }
    vf_sampler s = VF_SAMPLER_DEFAULT;
    CHECK_OK(vf_model_sampler(sd15, VF_SAMPLER_DEFAULT, &s));
    CHECK(s == VF_SAMPLER_DDIM);
    CHECK_OK(vf_model_sampler(xl, VF_SAMPLER_DEFAULT, &s));
    CHECK(s == VF_SAMPLER_EULER);
    CHECK_OK(vf_model_sampler(xl, VF_SAMPLER_DPMPP_2M, &s));
    CHECK(s == VF_SAMPLER_DPMPP_2M);

    vf_generate_params p;
    vf_generate_params_init(&p);
    p.prompt = "a red circle";
    p.steps = 3;
    p.seed = 7;
    vf_image *imgs[5] = {0};
    for (int k = VF_SAMPLER_EULER; k <= VF_SAMPLER_DPMPP_2M; k++) {
        p.sampler = (vf_sampler)k;
        CHECK_OK(vf_generate(xl, &p, &imgs[k]));
    }
    CHECK(imgs[1] && imgs[2] && !same_image(imgs[1], imgs[2]));  /* Euler a draws noise */
    /* Same seed, same sampler: the same image (no state carried between runs). */
    vf_image *again = NULL;
    p.sampler = VF_SAMPLER_EULER_A;
    CHECK_OK(vf_generate(xl, &p, &again));
    CHECK(same_image(again, imgs[2]));
    vf_image_free(again);
    again = NULL;

    /* guidance 1: batch 1, the dump's unet0_out has one row */
    p.sampler = VF_SAMPLER_DEFAULT;
    p.guidance_scale = 1.0f;
    p.dump_path = tmp_path("noguide.safetensors");
    CHECK_OK(vf_generate(sd15, &p, &again));
    vf_st_file *f = NULL;
    CHECK_OK(vf_st_open(p.dump_path, &f));
    const vf_st_tensor *t = f ? vf_st_find(f, "unet0_out") : NULL;
    CHECK(t && t->ndim == 4 && t->shape[0] == 1);
    vf_st_close(f);
    unlink(p.dump_path);
    vf_image *guided = NULL;
    p.dump_path = NULL;
    p.guidance_scale = 7.5f;
    CHECK_OK(vf_generate(sd15, &p, &guided));
    CHECK(again && guided && !same_image(again, guided));
    vf_image_free(guided);
    vf_image_free(again);
    for (int k = 0; k < 5; k++)
        vf_image_free(imgs[k]);
    vf_model_close(sd15);
    vf_model_close(xl);
}

/* Every host allocation of a (warm) generation failing in turn: a clean
 * VF_ERR_NO_MEMORY with a message, no image, no dump, nothing leaked (ASan),
 * and the next run gives the same image as before. */
static void test_alloc_failures(void)
{
    SKIP_WITHOUT_SHARED(shared);
    vf_model *m = NULL;
    CHECK_OK(open_model(shared, "tiny-sd15", 0, &m));
    if (!m)
        return;
    vf_generate_params p;
    vf_generate_params_init(&p);
    p.prompt = "a cat";
    p.negative_prompt = "blurry";
    p.steps = 1;
    p.dump_path = tmp_path("faults.safetensors");
    vf_image *want = NULL, *img = NULL;
    CHECK_OK(vf_generate(m, &p, &want)); /* warms the residencies and tokenizer */
    uint64_t before = vf_fault_alloc_count();
    CHECK_OK(vf_generate(m, &p, &img));
    uint64_t K = vf_fault_alloc_count() - before;
    vf_image_free(img);
    img = NULL;
    CHECK(K > 10);
    int bad_status = 0, bad_out = 0, failures = 0;
    for (uint64_t k = 1; k <= K; k++) {
        unlink(p.dump_path);
        vf_fault_alloc_fail_at(k);
        vf_status st = vf_generate(m, &p, &img);
        vf_fault_alloc_fail_at(0);
        if (st == VF_OK) {
            bad_out += !same_image(img, want);
        } else {
            failures++;
            bad_status += st != VF_ERR_NO_MEMORY || !vf_last_error()[0];
            bad_out += img != NULL || access(p.dump_path, F_OK) == 0;
            if (st != VF_ERR_NO_MEMORY)
                fprintf(stderr, "allocation %llu: %s: %s\n", (unsigned long long)k, vf_status_str(st),
                        vf_last_error());
        }
        vf_image_free(img);
        img = NULL;
    }
    printf("  %llu allocations failed in turn: %d runs failed cleanly\n", (unsigned long long)K, failures);
    CHECK(failures > 0);
    CHECK(bad_status == 0);
    CHECK(bad_out == 0);
    CHECK_OK(vf_generate(m, &p, &img));
    CHECK(same_image(img, want));
    vf_image_free(img);
    vf_image_free(want);
    unlink(p.dump_path);
    vf_model_close(m);
}

static void test_step_names(void)
{
    CHECK(strcmp(vf_generation_step_name(VF_STEP_ENCODE_PROMPT), "encode_prompt") == 0);
    CHECK(strcmp(vf_generation_step_name(VF_STEP_DENOISE), "denoise") == 0);
    CHECK(strcmp(vf_generation_step_name(VF_STEP_DECODE), "decode") == 0);
}

TEST_MAIN(TEST(test_step_names), TEST(test_parity_sd15_diffusers), TEST(test_parity_sd15_single),
          TEST(test_parity_sdxl_diffusers), TEST(test_parity_sdxl_single), TEST(test_stages_match_generate),
          TEST(test_cancel), TEST(test_bad_params), TEST(test_samplers_and_no_guidance),
          TEST(test_alloc_failures))
