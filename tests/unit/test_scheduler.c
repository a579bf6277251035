/* Schedulers against diffusers: timesteps, sigmas, init_noise_sigma and the
 * latents after every step of a synthetic denoising loop, for Euler, Euler
 * ancestral, DDIM and DPM++ 2M over the configurations in tests/data/sched/
 * (written by tools/make_sched_fixtures.py with real diffusers); the reference
 * pipelines' schedules; and the errors for bad steps, configs and misuse.
 */
#include "core/alloc.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "pipeline/scheduler.h"
#include "test.h"

#include <limits.h>

#define TOL_SCHEDULE 1e-6
#define TOL_LATENTS 1e-5

/* Worst relative errors seen over all fixture cases, reported at the end. */
static double worst_timestep, worst_sigma, worst_latent;

static double rel_err(const float *got, const float *want, size_t n)
{
    double max_abs = 0, max_ref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        max_abs = d > max_abs || isnan(d) ? d : max_abs;
        max_ref = fabs(want[i]) > max_ref ? fabs(want[i]) : max_ref;
    }
    return max_ref > 0 ? max_abs / max_ref : max_abs;
}

static size_t json_floats(const cJSON *arr, float *out, size_t cap)
{
    size_t n = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
    {
        if (n < cap)
            out[n] = (float)v->valuedouble;
        n++;
    }
    return n;
}

static cJSON *load_json(const char *dir, const char *name)
{
    char path[1024];
    cJSON *j = NULL;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    CHECK_OK(vf_json_load(path, &j));
    return j;
}

static cJSON *parse(const char *text)
{
    cJSON *j = cJSON_Parse(text);
    CHECK(j != NULL);
    return j;
}

/* ---- the diffusers fixtures ----------------------------------------------- */

static float pattern(int i, size_t j) { return (float)((int)((7 * j + 3 * (size_t)i) % 11) - 5) * 0.0625f; }

/* Runs the fixture's loop: latents = noise * init_noise_sigma, then per step
 * x = scale(latents), model_out = 0.1 x + pattern, step. */
static void run_loop(const char *name, const cJSON *c, vf_scheduler *s, size_t n)
{
    float *noise = vf_malloc(n * sizeof(float)), *lat = vf_malloc(n * sizeof(float));
    float *x = vf_malloc(n * sizeof(float)), *want = vf_malloc(n * sizeof(float));
    vf_rng *rng = NULL;
    CHECK_OK(vf_rng_create((uint64_t)cJSON_GetObjectItem(c, "seed")->valuedouble, &rng));
    if (!noise || !lat || !x || !want || !rng)
        goto out;
    vf_rng_randn(rng, noise, n);
    CHECK(json_floats(cJSON_GetObjectItem(c, "noise"), want, n) == n);
    CHECK_MSG(memcmp(noise, want, n * sizeof(float)) == 0, "%s: noise differs", name);
    float ins = vf_scheduler_init_noise_sigma(s);
    for (size_t j = 0; j < n; j++)
        lat[j] = noise[j] * ins;
    /* A looser bound where the fixture explains why (see make_sched_fixtures.py). */
    const cJSON *ctol = cJSON_GetObjectItem(c, "tolerance");
    double tol = cJSON_IsNumber(ctol) ? ctol->valuedouble : TOL_LATENTS;
    const cJSON *after = cJSON_GetObjectItem(c, "latents");
    CHECK(cJSON_GetArraySize(after) == vf_scheduler_steps(s));
    for (int i = 0; i < vf_scheduler_steps(s) && i < cJSON_GetArraySize(after); i++) {
        memcpy(x, lat, n * sizeof(float));
        vf_scheduler_scale_model_input(s, i, x, n);
        if (i == 0) {
            CHECK(json_floats(cJSON_GetObjectItem(c, "scaled_input0"), want, n) == n);
            CHECK_CLOSE(name, x, want, n, TOL_LATENTS);
        }
        for (size_t j = 0; j < n; j++)
            x[j] = 0.1f * x[j] + pattern(i, j);
        CHECK_OK(vf_scheduler_step(s, i, x, lat, n, rng));
        CHECK(json_floats(cJSON_GetArrayItem(after, i), want, n) == n);
        char what[128];
        snprintf(what, sizeof what, "%s: latents after step %d", name, i);
        CHECK_CLOSE(what, lat, want, n, tol);
        double e = rel_err(lat, want, n);
        if (!cJSON_IsNumber(ctol))
            worst_latent = e > worst_latent ? e : worst_latent;
    }
out:
    vf_rng_free(rng);
    vf_free(noise);
    vf_free(lat);
    vf_free(x);
    vf_free(want);
}

static void check_schedule(const char *name, const cJSON *c, const vf_scheduler *s)
{
    float want[64], got[64];
    int steps = vf_scheduler_steps(s);
    size_t nt = json_floats(cJSON_GetObjectItem(c, "timesteps"), want, 64);
    CHECK_MSG((size_t)steps == nt, "%s: %d steps, want %zu", name, steps, nt);
    if ((size_t)steps != nt || nt > 63)
        return;
    for (int i = 0; i < steps; i++)
        got[i] = vf_scheduler_timestep(s, i);
    CHECK_CLOSE(name, got, want, nt, TOL_SCHEDULE);
    double e = rel_err(got, want, nt);
    worst_timestep = e > worst_timestep ? e : worst_timestep;
    const cJSON *sig = cJSON_GetObjectItem(c, "sigmas");
    if (cJSON_IsArray(sig)) {
        CHECK(json_floats(sig, want, 64) == nt + 1);
        for (int i = 0; i <= steps; i++)
            got[i] = vf_scheduler_sigma(s, i);
        CHECK_CLOSE(name, got, want, nt + 1, TOL_SCHEDULE);
        e = rel_err(got, want, nt + 1);
        worst_sigma = e > worst_sigma ? e : worst_sigma;
    }
    float ins = (float)cJSON_GetObjectItem(c, "init_noise_sigma")->valuedouble;
    float got_ins = vf_scheduler_init_noise_sigma(s);
    CHECK_CLOSE(name, &got_ins, &ins, 1, TOL_SCHEDULE);
}

static void run_case(const char *dir, const char *name)
{
    char file[256];
    snprintf(file, sizeof file, "%s.json", name);
    cJSON *c = load_json(dir, file);
    if (!c)
        return;
    vf_sampler sampler = VF_SAMPLER_EULER;
    CHECK_OK(vf_sampler_parse(cJSON_GetObjectItem(c, "sampler")->valuestring, &sampler));
    int steps = (int)cJSON_GetObjectItem(c, "steps")->valuedouble;
    size_t n = 1;
    const cJSON *d;
    cJSON_ArrayForEach(d, cJSON_GetObjectItem(c, "shape")) n *= (size_t)d->valuedouble;
    vf_scheduler *s = NULL;
    CHECK_OK(vf_scheduler_create(cJSON_GetObjectItem(c, "config"), sampler, steps, &s));
    if (s) {
        CHECK_MSG(strcmp(vf_scheduler_class(s), cJSON_GetObjectItem(c, "class")->valuestring) == 0,
                  "%s: class %s", name, vf_scheduler_class(s));
        check_schedule(name, c, s);
        run_loop(name, c, s, n);
        /* A second run on the same handle (the state resets after the last step). */
        double before = worst_latent;
        run_loop(name, c, s, n);
        CHECK(worst_latent == before);
    }
    vf_scheduler_free(s);
    cJSON_Delete(c);
}

static void test_diffusers_fixtures(void)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/sched", vf_test_data());
    cJSON *index = load_json(dir, "index.json");
    if (!index)
        return;
    int ncases = 0;
    const cJSON *name;
    cJSON_ArrayForEach(name, cJSON_GetObjectItem(index, "cases"))
    {
        run_case(dir, name->valuestring);
        ncases++;
    }
    CHECK(ncases >= 20);
    cJSON_Delete(index);
    printf("     %d cases; worst relative error: timesteps %.2g, sigmas %.2g, latents %.2g\n", ncases,
           worst_timestep, worst_sigma, worst_latent);
}

/* ---- the reference pipelines ------------------------------------------------ */

static size_t read_ref(vf_st_file *f, const char *key, float *out, size_t cap)
{
    const vf_st_tensor *t = vf_st_find(f, key);
    CHECK_MSG(t && t->dtype == VF_DTYPE_F32 && t->nbytes <= cap * sizeof(float), "tensor %s", key);
    if (!t || t->dtype != VF_DTYPE_F32 || t->nbytes > cap * sizeof(float))
        return 0;
    CHECK_OK(vf_st_read(f, t, 0, out, t->nbytes));
    return (size_t)(t->nbytes / sizeof(float));
}

static void check_reference(const char *shared, const char *model, vf_sampler want_kind)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/reference/%s/diffusers/scheduler/scheduler_config.json", shared,
             model);
    cJSON *cfg = NULL;
    CHECK_OK(vf_json_load(path, &cfg));
    snprintf(path, sizeof path, "%s/reference/%s/reference.safetensors", shared, model);
    vf_st_file *f = NULL;
    CHECK_OK(vf_st_open(path, &f));
    vf_scheduler *s = NULL;
    if (cfg && f)
        CHECK_OK(vf_scheduler_create(cfg, VF_SAMPLER_DEFAULT, 4, &s));
    if (!s)
        goto out;
    CHECK(vf_scheduler_kind(s) == want_kind);
    float want[8], got[8];
    size_t n = read_ref(f, "timesteps", want, 8);
    CHECK(n == 4 && vf_scheduler_steps(s) == 4);
    for (int i = 0; i < 4; i++)
        got[i] = vf_scheduler_timestep(s, i);
    CHECK_CLOSE(model, got, want, 4, TOL_SCHEDULE);
    CHECK(read_ref(f, "unet0_timestep", want, 8) == 1 && got[0] == want[0]);
    if (want_kind == VF_SAMPLER_EULER) {
        CHECK(read_ref(f, "sigmas", want, 8) == 5);
        for (int i = 0; i <= 4; i++)
            got[i] = vf_scheduler_sigma(s, i);
        CHECK_CLOSE(model, got, want, 5, TOL_SCHEDULE);
    } else {
        CHECK(vf_scheduler_init_noise_sigma(s) == 1.0f);
    }
out:
    vf_scheduler_free(s);
    vf_st_close(f);
    cJSON_Delete(cfg);
}

static void test_reference_schedules(void)
{
    const char *shared = vf_test_shared();
    if (!shared) {
        printf("skip test_reference_schedules: VF_SHARED not set\n");
        return;
    }
    check_reference(shared, "tiny-sdxl", VF_SAMPLER_EULER);
    check_reference(shared, "tiny-sd15", VF_SAMPLER_DDIM);
}

/* No config: Stable Diffusion's schedule with Euler, the tiny-sdxl reference's. */
static void test_null_config_defaults(void)
{
    vf_scheduler *s = NULL;
    CHECK_OK(vf_scheduler_create(NULL, VF_SAMPLER_DEFAULT, 4, &s));
    if (!s)
        return;
    static const float ts[4] = {751, 501, 251, 1};
    static const float sig[5] = {4.116698265075684f, 1.6236929893493652f, 0.6983985900878906f,
                                 0.04131447896361351f, 0.0f};
    CHECK(vf_scheduler_kind(s) == VF_SAMPLER_EULER);
    for (int i = 0; i < 4; i++)
        CHECK(vf_scheduler_timestep(s, i) == ts[i]);
    for (int i = 0; i <= 4; i++)
        CHECK(fabsf(vf_scheduler_sigma(s, i) - sig[i]) <= 1e-6f * sig[0]);
    CHECK(fabsf(vf_scheduler_init_noise_sigma(s) - 4.236413955688477f) < 1e-6f);
    CHECK(isnan(vf_scheduler_timestep(s, 4)) && isnan(vf_scheduler_sigma(s, 5)));
    vf_scheduler_free(s);
    /* Every override works on the default schedule too. */
    for (int k = VF_SAMPLER_EULER; k <= VF_SAMPLER_PNDM; k++) {
        CHECK_OK(vf_scheduler_create(NULL, (vf_sampler)k, 25, &s));
        CHECK(s && vf_scheduler_kind(s) == (vf_sampler)k);
        CHECK(s && vf_scheduler_steps(s) == (k == VF_SAMPLER_PNDM ? 26 : 25));
        vf_scheduler_free(s);
        s = NULL;
    }
}

/* ---- errors -------------------------------------------------------------- */

static void expect_error(const char *config, vf_sampler sampler, int steps, vf_status want,
                         const char *needle)
{
    cJSON *cfg = config ? parse(config) : NULL;
    vf_scheduler *s = (vf_scheduler *)&s;
    vf_status st = vf_scheduler_create(cfg, sampler, steps, &s);
    CHECK_MSG(st == want, "config %s steps %d: got %s (%s), want %s", config ? config : "NULL",
              steps, vf_status_str(st), vf_last_error(), vf_status_str(want));
    CHECK(s == NULL);
    if (st == VF_OK)
        vf_scheduler_free(s);
    CHECK_MSG(strstr(vf_last_error(), needle) != NULL, "message \"%s\" lacks \"%s\"",
              vf_last_error(), needle);
    cJSON_Delete(cfg);
}

#define EULER "{\"_class_name\":\"EulerDiscreteScheduler\""
#define DPM "{\"_class_name\":\"DPMSolverMultistepScheduler\""

static void test_bad_steps(void)
{
    expect_error(NULL, VF_SAMPLER_DEFAULT, 0, VF_ERR_INVALID_ARG, "steps");
    expect_error(NULL, VF_SAMPLER_EULER_A, -3, VF_ERR_INVALID_ARG, "steps");
    expect_error(NULL, VF_SAMPLER_DDIM, 1001, VF_ERR_INVALID_ARG, "steps");
    expect_error(NULL, VF_SAMPLER_DPMPP_2M, INT_MAX, VF_ERR_INVALID_ARG, "steps");
    expect_error(EULER ",\"num_train_timesteps\":50}", VF_SAMPLER_DEFAULT, 51, VF_ERR_INVALID_ARG,
                 "steps");
    /* Leading spacing with steps_offset 1 puts DDIM's first timestep at 1000. */
    expect_error(NULL, VF_SAMPLER_DDIM, 1000, VF_ERR_INVALID_ARG, "steps");
    /* DPM-Solver's own leading spacing collapses at 1000 steps (all timesteps equal). */
    expect_error(DPM ",\"timestep_spacing\":\"leading\"}", VF_SAMPLER_DEFAULT, 1000,
                 VF_ERR_INVALID_ARG, "steps");
    vf_scheduler *s = NULL;
    CHECK_OK(vf_scheduler_create(NULL, VF_SAMPLER_DEFAULT, 1000, &s)); /* Euler copes */
    vf_scheduler_free(s);
    s = (vf_scheduler *)&s;
    CHECK(vf_scheduler_create(NULL, (vf_sampler)99, 4, &s) == VF_ERR_INVALID_ARG && !s);
    CHECK(strstr(vf_last_error(), "sampler") != NULL);
}

static void test_bad_types(void)
{
    expect_error(EULER ",\"beta_start\":\"0.1\"}", VF_SAMPLER_DEFAULT, 4, VF_ERR_FORMAT, "beta_start");
    expect_error(EULER ",\"use_karras_sigmas\":1}", VF_SAMPLER_DEFAULT, 4, VF_ERR_FORMAT,
                 "use_karras_sigmas");
    expect_error(EULER ",\"steps_offset\":1.5}", VF_SAMPLER_DEFAULT, 4, VF_ERR_FORMAT, "steps_offset");
    expect_error(EULER ",\"num_train_timesteps\":[1000]}", VF_SAMPLER_DEFAULT, 4, VF_ERR_FORMAT,
                 "num_train_timesteps");
    expect_error(EULER ",\"timestep_spacing\":3}", VF_SAMPLER_DEFAULT, 4, VF_ERR_FORMAT,
                 "timestep_spacing");
    expect_error("{\"_class_name\":\"DDIMScheduler\",\"clip_sample\":\"no\"}", VF_SAMPLER_DEFAULT, 4,
                 VF_ERR_FORMAT, "clip_sample");
    expect_error("{\"_class_name\":5}", VF_SAMPLER_DEFAULT, 4, VF_ERR_FORMAT, "_class_name");
    expect_error("{\"beta_start\":0.001}", VF_SAMPLER_DEFAULT, 4, VF_ERR_FORMAT, "_class_name");
    /* Types are checked for the keys of the class in use, also under an override. */
    expect_error(EULER ",\"prediction_type\":true}", VF_SAMPLER_DPMPP_2M, 4, VF_ERR_FORMAT,
                 "prediction_type");
}

static void test_unsupported(void)
{
    expect_error("{\"_class_name\":\"LMSDiscreteScheduler\"}", VF_SAMPLER_DEFAULT, 4,
                 VF_ERR_UNSUPPORTED, "_class_name");
    expect_error("{\"_class_name\":\"PNDMScheduler\"}", VF_SAMPLER_DEFAULT, 4, VF_ERR_UNSUPPORTED,
                 "skip_prk_steps");
    expect_error("{\"_class_name\":\"PNDMScheduler\",\"skip_prk_steps\":true,"
                 "\"prediction_type\":\"sample\"}",
                 VF_SAMPLER_DEFAULT, 4, VF_ERR_UNSUPPORTED, "prediction_type");
    expect_error(EULER ",\"trained_betas\":[0.1,0.2]}", VF_SAMPLER_DEFAULT, 4, VF_ERR_UNSUPPORTED,
                 "trained_betas");
    expect_error(EULER ",\"beta_schedule\":\"sigmoid\"}", VF_SAMPLER_DEFAULT, 4, VF_ERR_UNSUPPORTED,
                 "beta_schedule");
    expect_error(EULER ",\"prediction_type\":\"flow\"}", VF_SAMPLER_DEFAULT, 4, VF_ERR_UNSUPPORTED,
                 "prediction_type");
    expect_error(EULER ",\"interpolation_type\":\"log_linear\"}", VF_SAMPLER_DEFAULT, 4,
                 VF_ERR_UNSUPPORTED, "interpolation_type");
    expect_error(EULER ",\"use_beta_sigmas\":true}", VF_SAMPLER_DEFAULT, 4, VF_ERR_UNSUPPORTED,
                 "use_beta_sigmas");
    expect_error(EULER ",\"use_karras_sigmas\":true,\"use_exponential_sigmas\":true}",
                 VF_SAMPLER_DEFAULT, 4, VF_ERR_UNSUPPORTED, "use_exponential_sigmas");
    expect_error(EULER ",\"prediction_type\":\"sample\"}", VF_SAMPLER_EULER_A, 4, VF_ERR_UNSUPPORTED,
                 "prediction_type");
    expect_error("{\"_class_name\":\"DDIMScheduler\",\"thresholding\":true}", VF_SAMPLER_DEFAULT, 4,
                 VF_ERR_UNSUPPORTED, "thresholding");
    expect_error(DPM ",\"solver_order\":3}", VF_SAMPLER_DEFAULT, 4, VF_ERR_UNSUPPORTED, "solver_order");
    expect_error(DPM ",\"algorithm_type\":\"sde-dpmsolver++\"}", VF_SAMPLER_DEFAULT, 4,
                 VF_ERR_UNSUPPORTED, "algorithm_type");
    expect_error(DPM ",\"variance_type\":\"learned_range\"}", VF_SAMPLER_DEFAULT, 4, VF_ERR_UNSUPPORTED,
                 "variance_type");
    expect_error(EULER ",\"num_train_timesteps\":1}", VF_SAMPLER_DEFAULT, 1, VF_ERR_UNSUPPORTED,
                 "num_train_timesteps");
    /* Keys of other classes are ignored, as diffusers' from_config ignores them. */
    cJSON *cfg = parse(EULER ",\"thresholding\":true,\"solver_order\":3,\"future_key\":{}}");
    vf_scheduler *s = NULL;
    CHECK_OK(vf_scheduler_create(cfg, VF_SAMPLER_DEFAULT, 4, &s));
    vf_scheduler_free(s);
    cJSON_Delete(cfg);
    /* The override forces DPM++ 2M Karras whatever the DPM config said. */
    cfg = parse(DPM ",\"solver_order\":3,\"algorithm_type\":\"dpmsolver\"}");
    s = NULL;
    CHECK_OK(vf_scheduler_create(cfg, VF_SAMPLER_DPMPP_2M, 4, &s));
    vf_scheduler_free(s);
    cJSON_Delete(cfg);
}

static void test_step_misuse(void)
{
    vf_scheduler *s = NULL;
    float m[16] = {0}, x[16] = {0};
    CHECK_OK(vf_scheduler_create(NULL, VF_SAMPLER_EULER_A, 3, &s));
    if (!s)
        return;
    CHECK(vf_scheduler_step(s, 0, m, x, 16, NULL) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "rng") != NULL);
    vf_scheduler_free(s);

    CHECK_OK(vf_scheduler_create(NULL, VF_SAMPLER_DPMPP_2M, 3, &s));
    if (!s)
        return;
    CHECK(vf_scheduler_step(s, 1, m, x, 16, NULL) == VF_ERR_INVALID_ARG); /* out of order */
    CHECK(strstr(vf_last_error(), "order") != NULL);
    CHECK(vf_scheduler_step(s, 3, m, x, 16, NULL) == VF_ERR_INVALID_ARG); /* past the end */
    CHECK(vf_scheduler_step(s, 0, m, x, 0, NULL) == VF_ERR_INVALID_ARG);
    CHECK(vf_scheduler_step(s, 0, NULL, x, 16, NULL) == VF_ERR_INVALID_ARG);
    CHECK_OK(vf_scheduler_step(s, 0, m, x, 16, NULL));
    CHECK(vf_scheduler_step(s, 1, m, x, 8, NULL) == VF_ERR_INVALID_ARG); /* size changed */
    CHECK(strstr(vf_last_error(), "n:") != NULL);
    vf_scheduler_reset(s);
    CHECK_OK(vf_scheduler_step(s, 0, m, x, 16, NULL));
    vf_scheduler_reset(s); /* a new run may use another size */
    CHECK_OK(vf_scheduler_step(s, 0, m, x, 8, NULL));
    CHECK(vf_scheduler_step(s, 1, m, x, 16, NULL) == VF_ERR_INVALID_ARG);
    vf_scheduler_free(s);
}

static void test_sampler_names(void)
{
    for (int k = VF_SAMPLER_DEFAULT; k <= VF_SAMPLER_PNDM; k++) {
        vf_sampler got = (vf_sampler)-1;
        CHECK_OK(vf_sampler_parse(vf_sampler_name((vf_sampler)k), &got));
        CHECK(got == (vf_sampler)k);
    }
    vf_sampler got;
    CHECK(vf_sampler_parse("dpm++", &got) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "dpm++") != NULL);
    CHECK(vf_sampler_parse(NULL, &got) == VF_ERR_INVALID_ARG);
    CHECK(strcmp(vf_sampler_name(VF_SAMPLER_EULER_A), "euler_a") == 0);
}

/* Every allocation of create and of the first step may fail: an error, no leak. */
static void test_alloc_failures(void)
{
    int failures = 0;
    for (uint64_t k = 1; k < 40; k++) {
        vf_scheduler *s = NULL;
        float m[32] = {0}, x[32] = {0};
        vf_fault_alloc_fail_at(k);
        vf_status st = vf_scheduler_create(NULL, VF_SAMPLER_DPMPP_2M, 8, &s);
        if (st == VF_OK)
            st = vf_scheduler_step(s, 0, m, x, 32, NULL);
        vf_fault_alloc_fail_at(0);
        if (st != VF_OK) {
            CHECK(st == VF_ERR_NO_MEMORY);
            CHECK(strstr(vf_last_error(), "scheduler") != NULL);
            failures++;
        }
        vf_scheduler_free(s);
    }
    CHECK(failures >= 5);
}

TEST_MAIN(TEST(test_diffusers_fixtures), TEST(test_reference_schedules), TEST(test_null_config_defaults),
          TEST(test_bad_steps), TEST(test_bad_types), TEST(test_unsupported), TEST(test_step_misuse),
          TEST(test_sampler_names), TEST(test_alloc_failures))
