/* Fuzz target: component config JSON (config.json, scheduler_config.json).
 *
 * One input is parsed once and given to every config reader: the UNet's (as
 * SD1.5 and as SDXL), the VAE's and both text encoders', each followed by the
 * block-list description it drives (shape arithmetic on untrusted numbers), and
 * the scheduler's for every sampler at a few step counts; a schedule that is
 * created is then run to its end on a small latent, so the step arithmetic sees
 * whatever betas, spacings and options the input asks for.
 *
 * Checked beyond "no crash, no leak": every failure leaves a message.
 */
#include "fuzz_util.h"
#include "io/json.h"
#include "model/clip.h"
#include "model/unet.h"
#include "model/vae.h"
#include "pipeline/rng.h"
#include "pipeline/scheduler.h"

#define N_LATENT 8

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

static void failed(vf_status st, const char *call)
{
    vf_fuzz_log(call, st);
    if (st != VF_OK)
        vf_fuzz_check_message(call, NULL);
}

static void models(const cJSON *cfg)
{
    for (int a = VF_ARCH_SD15; a <= VF_ARCH_SDXL; a++) {
        vf_unet_config u;
        vf_status st = vf_unet_config_parse(cfg, (vf_arch)a, &u);
        failed(st, "vf_unet_config_parse");
        if (st != VF_OK)
            continue;
        vf_blocklist bl;
        vf_bl_init(&bl, VF_COMPONENT_UNET);
        failed(vf_unet_describe_config(&u, &bl), "vf_unet_describe_config");
        vf_bl_free(&bl);
    }
    vf_vae_config v;
    vf_status st = vf_vae_config_parse(cfg, &v);
    failed(st, "vf_vae_config_parse");
    if (st == VF_OK) {
        vf_blocklist bl;
        vf_bl_init(&bl, VF_COMPONENT_VAE);
        failed(vf_vae_describe(cfg, &bl), "vf_vae_describe");
        vf_bl_free(&bl);
    }
    for (int c = VF_COMPONENT_TEXT_ENCODER; c <= VF_COMPONENT_TEXT_ENCODER_2; c++) {
        vf_clip_config cc;
        st = vf_clip_config_parse(cfg, (vf_component)c, &cc);
        failed(st, "vf_clip_config_parse");
        if (st != VF_OK)
            continue;
        vf_blocklist bl;
        vf_bl_init(&bl, (vf_component)c);
        failed(vf_clip_describe(cfg, (vf_component)c, &bl), "vf_clip_describe");
        vf_bl_free(&bl);
    }
}

static void run_schedule(vf_scheduler *s, vf_rng *rng)
{
    float lat[N_LATENT], eps[N_LATENT];
    vf_rng_seed(rng, 1);
    vf_rng_randn(rng, lat, N_LATENT);
    for (size_t k = 0; k < N_LATENT; k++)
        lat[k] *= vf_scheduler_init_noise_sigma(s);
    int n = vf_scheduler_steps(s);
    for (int i = 0; i < n; i++) {
        float x[N_LATENT];
        memcpy(x, lat, sizeof x);
        vf_scheduler_scale_model_input(s, i, x, N_LATENT);
        (void)vf_scheduler_timestep(s, i);
        (void)vf_scheduler_sigma(s, i);
        for (size_t k = 0; k < N_LATENT; k++)
            eps[k] = 0.5f * x[k] - 0.1f * (float)k;
        if (vf_scheduler_step(s, i, eps, lat, N_LATENT, rng) != VF_OK) {
            vf_fuzz_check_message("vf_scheduler_step", NULL);
            return;
        }
    }
    (void)vf_scheduler_sigma(s, n);
}

static void schedulers(const cJSON *cfg)
{
    static const int steps[] = {1, 3, 25};
    vf_rng *rng = NULL;
    if (vf_rng_create(0, &rng) != VF_OK)
        abort();
    for (int k = VF_SAMPLER_DEFAULT; k <= VF_SAMPLER_PNDM; k++) {
        for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
            vf_scheduler *s = NULL;
            vf_status st = vf_scheduler_create(cfg, (vf_sampler)k, steps[i], &s);
            failed(st, "vf_scheduler_create");
            if (st == VF_OK)
                run_schedule(s, rng);
            vf_scheduler_free(s);
        }
    }
    vf_rng_free(rng);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cJSON *cfg = NULL;
    if (vf_json_parse((const char *)data, size, "config.json", &cfg) != VF_OK) {
        vf_fuzz_check_message("vf_json_parse", "config.json");
        return 0;
    }
    models(cfg);
    schedulers(cfg);
    cJSON_Delete(cfg);
    return 0;
}
