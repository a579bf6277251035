/* vramfit bench: time a model's stages and steps on a backend, with memory and link traffic.
 *
 * One warm-up generation first (it uploads the weights, picks convolution
 * paths, fills the allocator's pool), then --runs timed generations: prompt
 * encoding and decoding are timed with device events around the stage, each
 * denoising step between the progress callbacks of consecutive steps (so a
 * step is everything the pipeline does for it: UNet at batch B, guidance,
 * sampler, transfers). The UNet alone is timed too, on the same inputs,
 * --runs x --steps times, events around each forward, and the decoder alone
 * on a random latent of the request's size. Figures are medians. A failed
 * generation (a non-finite stage output, say) is reported, and the UNet and
 * decoder are still timed on their own.
 *
 * Memory: the driver's view (total - free from cudaMemGetInfo, sampled after
 * every stage; the arena is one allocation made once and nothing is returned
 * to the driver mid-run, so the largest sample is the process peak, context
 * and library handles included) and the arena's own high-water mark per stage
 * (resident weights + staging ring + activations + kernel workspaces: on CUDA
 * everything is carved from it). --vram-budget and --offload run the same
 * measurement under the memory manager's plans.
 * Host link: bytes through upload/download per stage and per step, and the
 * weight upload (stored bytes) with its rate. --profile adds a per-op device
 * time breakdown of one UNet forward and one decode.
 */
#include "cli.h"
#include "cli/progress.h"

#include "backend/backend.h"
#include "core/alloc.h"
#include "core/error.h"
#include "pipeline/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STEPS 1000
#define PROF_ROWS 32

typedef struct bench_args {
    const char *model, *backend, *prompt, *negative, *tokenizer, *offload, *dtype, *lora;
    uint64_t budget;
    int width, height, steps, runs, json, profile, vae_only, no_decode;
    float cfg;
} bench_args;

typedef struct stats {
    double *v;
    int n;
} stats;

typedef struct bench {
    const bench_args *a;
    int width, height;            /* resolved */
    vf_model *m;
    vf_backend *be;
    vf_bevent *ev[MAX_STEPS + 1];
    vf_bevent *t0, *t1;
    int nev;
    stats enc, step, unet, dec;
    double load_s;
    uint64_t load_bytes, driver_total, driver_open, driver_peak, weights, workspace;
    uint64_t pool_peak_unet, pool_peak_dec, pool_peak_enc;
    uint64_t h2d_step, d2h_step, h2d_dec, d2h_dec;
    stats vae;                    /* the decoder alone                      */
    uint64_t pool_peak_vae;
    char gen_error[512];
    vf_be_prof_row prof_unet[PROF_ROWS], prof_vae[PROF_ROWS];
    int nprof_unet, nprof_vae;
    double prof_unet_ms, prof_vae_ms;
} bench;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: vramfit bench --model PATH [--width W --height H] [--steps N] [--cfg X]\n"
            "                     [--backend cpu|cuda|cuda:f16|cuda:bf16] [--runs R] [--prompt TEXT]\n"
            "                     [--negative TEXT] [--tokenizer DIR] [--vram-budget SIZE] [--offload S]\n"
            "                     [--dtype POLICY] [--lora FILE]\n"
            "                     [--profile] [--vae-only] [--json]\n\n"
            "Times prompt encoding, each denoising step, the UNet alone, the VAE decode in\n"
            "the pipeline and alone\n"
            "(medians of R timed runs after one warm-up, device-timed with events), and\n"
            "reports peak memory (driver and backend) and bytes moved over the host link.\n\n"
            "  --width W, --height H   image size (default: the model's native size)\n"
            "  --steps N               denoising steps per run (default 4)\n"
            "  --cfg X                 guidance scale (default 5; > 1 runs the UNet at batch 2)\n"
            "  --backend B             compute backend (default cpu)\n"
            "  --runs R                timed runs (default 3)\n"
            "  --vram-budget SIZE      device memory the run may hold, context included (6G, 512M)\n"
            "  --offload S             auto|full-gpu|cpu-offload|sequential|stream (default auto)\n"
            "  --lora FILE             apply a LoRA at strength 1 (merged as weights are converted)\n"
            "  --dtype P               dtype policy: auto, fast, f16, bf16, f8, q8, q4 (weights of the\n"
            "                          UNet and text encoders stored packed, expanded on the device)\n"
            "  --profile               per-op device time of one UNet forward and one decode\n"
            "  --no-decode             stop each run after denoising (budget sweeps: a VAE the\n"
            "                          plan keeps on the CPU would dominate the run)\n"
            "  --vae-only              load only the VAE and time the decoder alone: its peak\n"
            "                          is then that of a decode on its own (weights included)\n"
            "  --json                  one JSON object on stdout\n");
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

static int parse_args(int argc, char **argv, bench_args *a)
{
    memset(a, 0, sizeof *a);
    a->steps = 4;
    a->runs = 3;
    a->cfg = 5.0f;
    a->prompt = "a photograph of an astronaut riding a horse";
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (vf_cli_is_help(o))
            return -1;
        if (strcmp(o, "--no-decode") == 0) {
            a->no_decode = 1;
            continue;
        }
        if (strcmp(o, "--json") == 0 || strcmp(o, "--profile") == 0 || strcmp(o, "--vae-only") == 0) {
            *(o[2] == 'j' ? &a->json : o[2] == 'p' ? &a->profile : &a->vae_only) = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "vramfit bench: %s needs a value (or is unknown)\n", o);
            return VF_EXIT_USAGE;
        }
        i++;
        int bad = 0;
        if (strcmp(o, "--model") == 0)
            a->model = v;
        else if (strcmp(o, "--backend") == 0)
            a->backend = v;
        else if (strcmp(o, "--prompt") == 0)
            a->prompt = v;
        else if (strcmp(o, "--negative") == 0)
            a->negative = v;
        else if (strcmp(o, "--tokenizer") == 0)
            a->tokenizer = v;
        else if (strcmp(o, "--offload") == 0)
            a->offload = v;
        else if (strcmp(o, "--dtype") == 0)
            a->dtype = v;
        else if (strcmp(o, "--lora") == 0)
            a->lora = v;
        else if (strcmp(o, "--vram-budget") == 0)
            bad = vf_parse_size(v, &a->budget) != VF_OK || a->budget == 0;
        else if (strcmp(o, "--width") == 0)
            bad = parse_int(v, 8, 16384, &a->width);
        else if (strcmp(o, "--height") == 0)
            bad = parse_int(v, 8, 16384, &a->height);
        else if (strcmp(o, "--steps") == 0)
            bad = parse_int(v, 1, MAX_STEPS, &a->steps);
        else if (strcmp(o, "--runs") == 0)
            bad = parse_int(v, 1, 1000, &a->runs);
        else if (strcmp(o, "--cfg") == 0) {
            char *end;
            a->cfg = strtof(v, &end);
            bad = !*v || *end;
        } else {
            fprintf(stderr, "vramfit bench: unknown argument '%s'\n", o);
            return VF_EXIT_USAGE;
        }
        if (bad) {
            fprintf(stderr, "vramfit bench: bad value '%s' for %s\n", v, o);
            return VF_EXIT_USAGE;
        }
    }
    if (!a->model) {
        fprintf(stderr, "vramfit bench: --model is required\n");
        usage(stderr);
        return VF_EXIT_USAGE;
    }
    return 0;
}

static int cmp_d(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static double median(stats *s)
{
    if (s->n == 0)
        return 0;
    qsort(s->v, (size_t)s->n, sizeof *s->v, cmp_d);
    return s->n % 2 ? s->v[s->n / 2] : 0.5 * (s->v[s->n / 2 - 1] + s->v[s->n / 2]);
}

static vf_status stats_add(stats *s, double v)
{
    double *p = vf_realloc(s->v, sizeof *p * (size_t)(s->n + 1));
    if (!p)
        return VF_ERR_NO_MEMORY;
    s->v = p;
    s->v[s->n++] = v;
    return VF_OK;
}

static void sample_driver(bench *b)
{
    uint64_t total = 0, free = 0, ws = 0;
    vf_be_mem_info(b->be, &total, &free, &ws);
    b->driver_total = total;
    if (total - free > b->driver_peak)
        b->driver_peak = total - free;
    if (ws > b->workspace)
        b->workspace = ws;
}

/* The arena's high-water mark since the last reset (the backend pool's where
 * there is no arena: the CPU reports 0). */
static uint64_t pool_peak(bench *b, int reset)
{
    vf_arena *ar = b->m->mm.arena;
    if (ar) {
        uint64_t p = vf_arena_peak(ar);
        if (reset)
            vf_arena_reset_peak(ar);
        return p;
    }
    vf_be_mem_stats s;
    vf_be_mem_stats_get(b->be, &s, reset);
    return s.peak;
}

/* Arena bytes of weights under the plan (resident + ring): of component
 * `only` (-1: every one); with stage >= 0 only what is held while that stage
 * runs: the loaded components kept between stages, and the per-stage ones of
 * that stage. */
static uint64_t weight_bytes(bench *b, int only, int stage)
{
    uint64_t n = 0;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        vf_component_placement pl;
        if ((only >= 0 && c != only) || vf_model_component_placement(b->m, (vf_component)c, &pl) != VF_OK)
            continue;
        if (stage >= 0 && (!pl.present || (pl.per_stage ? (int)pl.stage != stage : !pl.loaded)))
            continue;
        n += pl.resident_bytes + pl.ring_bytes;
    }
    vf_clear_error();
    return n;
}

/* Progress callback: an event at the start of every denoising step and at its end. */
static int on_step(void *user, vf_generation_step stage, int k, int n)
{
    bench *b = user;
    if (stage == VF_STEP_DENOISE && k >= 0 && k <= n && k <= MAX_STEPS &&
        vf_be_record(b->be, b->ev[k], VF_STREAM_COMPUTE) == VF_OK && k + 1 > b->nev)
        b->nev = k + 1;
    return 0;
}

static vf_status elapsed(bench *b, vf_bevent *x, vf_bevent *y, double *ms)
{
    float f = 0;
    VF_TRY(vf_be_event_sync(b->be, y));
    VF_TRY(vf_be_elapsed_ms(b->be, x, y, &f));
    *ms = f;
    return VF_OK;
}

static void params(const bench *b, vf_generate_params *p)
{
    vf_generate_params_init(p);
    p->prompt = b->a->prompt;
    p->negative_prompt = b->a->negative;
    p->width = b->width;
    p->height = b->height;
    p->steps = b->a->steps;
    p->guidance_scale = b->a->cfg;
    p->seed = 1;
    p->on_step = on_step;
    p->user = (void *)b;
}

/* One generation, stage by stage; timed unless warm-up. */
static vf_status one_run(bench *b, int timed)
{
    vf_generate_params p;
    vf_embeddings *e = NULL;
    vf_latents *l = NULL;
    vf_image *img = NULL;
    double ms;
    uint64_t h0, d0, h1, d1;
    params(b, &p);
    vf_status st = vf_be_record(b->be, b->t0, VF_STREAM_COMPUTE);
    pool_peak(b, 1);
    if (st == VF_OK)
        st = vf_encode_prompt(b->m, p.prompt, p.negative_prompt, &e);
    if (st == VF_OK)
        st = vf_be_record(b->be, b->t1, VF_STREAM_COMPUTE);
    if (st == VF_OK && timed && (st = elapsed(b, b->t0, b->t1, &ms)) == VF_OK)
        st = stats_add(&b->enc, ms);
    b->pool_peak_enc = pool_peak(b, 1);
    sample_driver(b);
    b->nev = 0;
    vf_be_link_bytes(b->be, &h0, &d0);
    if (st == VF_OK)
        st = vf_denoise(b->m, &p, e, &l);
    vf_be_link_bytes(b->be, &h1, &d1);
    b->h2d_step = (h1 - h0) / (uint64_t)p.steps;
    b->d2h_step = (d1 - d0) / (uint64_t)p.steps;
    for (int k = 0; st == VF_OK && timed && k + 1 < b->nev; k++)
        if ((st = elapsed(b, b->ev[k], b->ev[k + 1], &ms)) == VF_OK)
            st = stats_add(&b->step, ms);
    b->pool_peak_unet = pool_peak(b, 1);
    sample_driver(b);
    vf_be_link_bytes(b->be, &h0, &d0);
    if (b->a->no_decode)
        goto done;
    if (st == VF_OK)
        st = vf_be_record(b->be, b->t0, VF_STREAM_COMPUTE);
    if (st == VF_OK)
        st = vf_decode(b->m, l, &img);
    if (st == VF_OK)
        st = vf_be_record(b->be, b->t1, VF_STREAM_COMPUTE);
    if (st == VF_OK && timed && (st = elapsed(b, b->t0, b->t1, &ms)) == VF_OK)
        st = stats_add(&b->dec, ms);
    vf_be_link_bytes(b->be, &h1, &d1);
    b->h2d_dec = h1 - h0;
    b->d2h_dec = d1 - d0;
    b->pool_peak_dec = pool_peak(b, 1);
    sample_driver(b);
done:
    vf_image_free(img);
    vf_latents_free(l);
    vf_embeddings_free(e);
    return st;
}

/* The UNet alone, the inputs of a guided step; n forwards timed (and profiled once). */
static vf_status unet_only(bench *b, int n)
{
    vf_model *m = b->m;
    vf_unet_config cfg;
    vf_embeddings *e = NULL;
    vf_residency *r = NULL;
    VF_TRY(vf_unet_config_parse(vf_checkpoint_config(m->ck, VF_COMPONENT_UNET), m->arch, &cfg));
    int S = 8, B = b->a->cfg > 1.0f ? 2 : 1;
    int H = b->height / S, W = b->width / S;
    size_t ns = (size_t)B * cfg.in_channels * H * W;
    float *x = vf_malloc(ns * sizeof(float)), *out = vf_malloc(ns * sizeof(float)), *ctx = NULL, *text = NULL;
    float ts[2] = {500.0f, 500.0f}, ids[12];
    vf_status st = x && out ? vf_encode_prompt(m, b->a->prompt, b->a->negative, &e) : VF_ERR_NO_MEMORY;
    if (st != VF_OK)
        goto done;
    size_t L = (size_t)e->seq_len * e->dim;
    ctx = vf_malloc(L * (size_t)B * sizeof(float));
    text = vf_malloc((size_t)(e->pooled_dim ? e->pooled_dim : 1) * (size_t)B * sizeof(float));
    if (!ctx || !text) {
        st = VF_ERR_NO_MEMORY;
        goto done;
    }
    for (size_t i = 0; i < ns; i++)
        x[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
    memcpy(ctx, e->negative, L * sizeof(float));
    memcpy(ctx + (B - 1) * L, e->prompt, L * sizeof(float));
    for (int k = 0; k < B && e->pooled_dim; k++)
        memcpy(text + (size_t)k * e->pooled_dim, k == B - 1 ? e->pooled : e->negative_pooled,
               (size_t)e->pooled_dim * sizeof(float));
    for (int k = 0; k < B; k++) {
        const float v[6] = {(float)H * S, (float)W * S, 0, 0, (float)H * S, (float)W * S};
        memcpy(ids + 6 * k, v, sizeof v);
    }
    if ((st = vf_model_residency(m, VF_COMPONENT_UNET, &r)) != VF_OK)
        goto done;
    /* 0: warm-up; 1..n timed; n+1: profiled (with --profile) */
    for (int i = 0; i <= n + (b->a->profile ? 1 : 0) && st == VF_OK; i++) {
        double ms;
        int prof = i == n + 1;
        if (prof)
            vf_be_profile_begin(b->be);
        st = vf_be_record(b->be, b->t0, VF_STREAM_COMPUTE);
        if (st == VF_OK)
            st = vf_model_run_unet(m, r, &cfg, x, B, H, W, ts, ctx, e->seq_len, text, ids, out);
        if (st == VF_OK)
            st = vf_be_record(b->be, b->t1, VF_STREAM_COMPUTE);
        if (st == VF_OK && !prof && i > 0 && (st = elapsed(b, b->t0, b->t1, &ms)) == VF_OK)
            st = stats_add(&b->unet, ms);
        if (st == VF_OK && prof)
            st = vf_be_profile_end(b->be, b->prof_unet, PROF_ROWS, &b->nprof_unet);
    }
    vf_model_component_done(m, VF_COMPONENT_UNET);
done:
    vf_free(x);
    vf_free(out);
    vf_free(ctx);
    vf_free(text);
    vf_embeddings_free(e);
    return st;
}

/* The decoder alone on one random latent (the request's size): a warm-up,
 * n-1 timed decodes and, when asked, one more under the profiler; the pool's
 * peak over a decode. */
static vf_status decode_only(bench *b, int n)
{
    vf_model *m = b->m;
    vf_vae_config cfg;
    vf_residency *r = NULL;
    VF_TRY(vf_vae_config_parse(vf_checkpoint_config(m->ck, VF_COMPONENT_VAE), &cfg));
    int S = vf_vae_scale(&cfg), h = b->height / S, w = b->width / S;
    size_t nz = (size_t)cfg.latent_channels * h * w, ni = (size_t)cfg.out_channels * h * S * w * S;
    float *z = vf_malloc(nz * sizeof(float)), *img = vf_malloc(ni * sizeof(float));
    vf_status st = z && img ? vf_model_residency(m, VF_COMPONENT_VAE, &r) : VF_ERR_NO_MEMORY;
    for (size_t i = 0; z && i < nz; i++)
        z[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
    /* 0: warm-up; 1..n-1 timed; n: profiled (with --profile) */
    for (int i = 0; st == VF_OK && i < n + (b->a->profile ? 1 : 0); i++) {
        double ms;
        int prof = i == n;
        if (prof)
            vf_be_profile_begin(b->be);
        pool_peak(b, 1);
        st = vf_be_record(b->be, b->t0, VF_STREAM_COMPUTE);
        if (st == VF_OK)
            st = vf_model_run_vae(m, r, &cfg, z, 1, h, w, img);
        if (st == VF_OK)
            st = vf_be_record(b->be, b->t1, VF_STREAM_COMPUTE);
        if (st == VF_OK && !prof && i > 0 && (st = elapsed(b, b->t0, b->t1, &ms)) == VF_OK)
            st = stats_add(&b->vae, ms);
        if (st == VF_OK && prof)
            st = vf_be_profile_end(b->be, b->prof_vae, PROF_ROWS, &b->nprof_vae);
        /* the warm-up's peak holds one-time work (convolution path trials) */
        uint64_t pk = pool_peak(b, 1);
        if (i > 0 && pk > b->pool_peak_vae)
            b->pool_peak_vae = pk;
    }
    sample_driver(b);
    if (r)
        vf_model_component_done(m, VF_COMPONENT_VAE);
    vf_free(z);
    vf_free(img);
    return st;
}

/* The image size of a run: the arguments, else the UNet's sample_size x 8. */
static void default_size(vf_model *m, int *w, int *h)
{
    const cJSON *c = vf_checkpoint_config(m->ck, VF_COMPONENT_UNET);
    const cJSON *s = c ? cJSON_GetObjectItemCaseSensitive(c, "sample_size") : NULL;
    int side = m->arch == VF_ARCH_SDXL ? 1024 : 512;
    if (cJSON_IsNumber(s) && s->valuedouble >= 1 && s->valuedouble <= 2048)
        side = 8 * (int)s->valuedouble;
    *w = *w ? *w : side;
    *h = *h ? *h : side;
}

static vf_status bench_run(bench *b)
{
    const bench_args *a = b->a;
    vf_model_options o;
    vf_pipeline_options po;
    vf_model_options_init(&o);
    vf_pipeline_options_init(&po);
    o.backend = a->backend;
    o.tokenizer_dir = a->tokenizer;
    o.pipeline = &po;
    po.vram_budget = a->budget;
    if (a->offload)
        VF_TRY(vf_offload_strategy_parse(a->offload, &po.offload));
    if (a->dtype)
        VF_TRY(vf_dtype_policy_parse(a->dtype, &po.dtype_policy));
    VF_TRY(vf_model_open(a->model, &o, &b->m));
    b->be = vf_model_backend(b->m);
    if (a->lora)
        VF_TRY(vf_model_add_lora(b->m, a->lora, 1.0f, NULL));
    default_size(b->m, &b->width, &b->height);
    sample_driver(b);
    b->driver_open = b->driver_peak;
    for (int i = 0; i <= MAX_STEPS && i <= a->steps; i++)
        VF_TRY(vf_be_event_create(b->be, &b->ev[i]));
    VF_TRY(vf_be_event_create(b->be, &b->t0));
    VF_TRY(vf_be_event_create(b->be, &b->t1));
    uint64_t h0, h1;
    vf_be_link_bytes(b->be, &h0, NULL);
    /* Plan for the benchmark's request, then load what the plan keeps. */
    vf_mm_request rq;
    vf_mm_request_make(&rq, b->width, b->height, a->steps, a->cfg);
    VF_TRY(vf_mm_prepare(b->m, &rq));
    double t = vf_progress_now();
    if (a->vae_only) {
        vf_residency *r;
        VF_TRY(vf_model_residency(b->m, VF_COMPONENT_VAE, &r));
        VF_TRY(vf_residency_load(r));
    } else {
        VF_TRY(vf_model_load(b->m));
    }
    VF_TRY(vf_be_sync(b->be));
    b->load_s = vf_progress_now() - t;
    vf_be_link_bytes(b->be, &h1, NULL);
    b->load_bytes = h1 - h0;
    b->weights = weight_bytes(b, -1, -1);
    sample_driver(b);
    if (a->vae_only)
        return decode_only(b, a->runs + 2);
    /* A generation that fails (a non-finite stage output, say) is reported;
     * the UNet and the decoder are still timed on their own. */
    vf_status st = one_run(b, 0);
    for (int r = 0; st == VF_OK && r < a->runs; r++)
        st = one_run(b, 1);
    if (st != VF_OK)
        snprintf(b->gen_error, sizeof b->gen_error, "%s", vf_last_error());
    VF_TRY(unet_only(b, a->runs * a->steps));
    if (!a->no_decode)
        VF_TRY(decode_only(b, a->runs + 2));
    for (int i = 0; i < b->nprof_unet; i++)
        b->prof_unet_ms += b->prof_unet[i].ms;
    for (int i = 0; i < b->nprof_vae; i++)
        b->prof_vae_ms += b->prof_vae[i].ms;
    sample_driver(b);
    return VF_OK;
}

static void bench_free(bench *b)
{
    if (b->be) {
        for (int i = 0; i <= MAX_STEPS; i++)
            vf_be_event_destroy(b->be, b->ev[i]);
        vf_be_event_destroy(b->be, b->t0);
        vf_be_event_destroy(b->be, b->t1);
    }
    vf_model_close(b->m);
    vf_free(b->enc.v);
    vf_free(b->step.v);
    vf_free(b->unet.v);
    vf_free(b->dec.v);
    vf_free(b->vae.v);
}

/* s as a JSON string (quotes, backslashes and control characters escaped). */
static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static double mib(uint64_t x) { return (double)x / (1024.0 * 1024.0); }

static void print_prof(const char *what, const vf_be_prof_row *r, int n, double total, int json)
{
    if (json) {
        printf(",\n  \"profile_%s\": [", what);
        for (int i = 0; i < n; i++)
            printf("%s{\"op\": \"%s\", \"calls\": %d, \"ms\": %.3f}", i ? ", " : "", r[i].op, r[i].calls, r[i].ms);
        printf("]");
        return;
    }
    printf("per-op device time, one %s (sum %.2f ms):\n", what, total);
    for (int i = 0; i < n; i++)
        printf("  %-18s %5d calls %9.3f ms  %5.1f%%\n", r[i].op, r[i].calls, r[i].ms,
               total > 0 ? 100.0 * r[i].ms / total : 0.0);
}

static void report(bench *b)
{
    const vf_backend_info *bi = vf_be_info(b->be);
    const bench_args *a = b->a;
    double enc = median(&b->enc), step = median(&b->step), unet = median(&b->unet), dec = median(&b->dec);
    double vae = median(&b->vae);
    uint64_t wv = weight_bytes(b, VF_COMPONENT_VAE, -1);
    /* The arena holds the weights (resident and ring) for the whole run:
     * activations and workspaces are what lies above them. */
    uint64_t w_unet = weight_bytes(b, -1, VF_STEP_DENOISE), w_dec = weight_bytes(b, -1, VF_STEP_DECODE);
    uint64_t act_unet = b->pool_peak_unet > w_unet ? b->pool_peak_unet - w_unet : 0;
    uint64_t act_dec = b->pool_peak_dec > w_dec ? b->pool_peak_dec - w_dec : 0;
    uint64_t act_vae = b->pool_peak_vae > w_dec ? b->pool_peak_vae - w_dec : 0;
    uint64_t be_peak_unet = b->pool_peak_unet;
    uint64_t be_peak_dec = b->pool_peak_dec;
    uint64_t be_peak_vae = b->pool_peak_vae;
    const vf_mm *mm = &b->m->mm;
    const vf_plan *plan = NULL;
    vf_plan_summary ps;
    memset(&ps, 0, sizeof ps);
    if (vf_model_get_plan(b->m, &plan) == VF_OK)
        vf_plan_get_summary(plan, &ps);
    vf_clear_error();
    if (a->json) {
        printf("{\n  \"model\": ");
        json_str(a->model);
        printf(", \"backend\": \"%s\", \"device\": ", bi->name);
        json_str(bi->device);
        printf(", \"dtype\": \"%s\",\n", vf_dtype_name(bi->dtype));
        printf("  \"strategy\": \"%s\", \"budget_bytes\": %llu, \"context_bytes\": %llu, \"arena_bytes\": %llu, "
               "\"ring_depth\": %d, \"link_bandwidth\": %llu, \"predicted_step_ms\": %.3f,\n",
               vf_offload_strategy_name(ps.strategy), (unsigned long long)mm->budget,
               (unsigned long long)mm->context, (unsigned long long)mm->arena_bytes, ps.ring_depth,
               (unsigned long long)mm->link_bandwidth, ps.time_per_step * 1e3);
        printf("  \"width\": %d, \"height\": %d, \"steps\": %d, \"cfg\": %g, \"runs\": %d,\n", b->width, b->height,
               a->steps, (double)a->cfg, a->runs);
        printf("  \"encode_ms\": %.3f, \"step_ms\": %.3f, \"unet_ms\": %.3f, \"decode_ms\": %.3f, \"vae_ms\": %.3f,\n",
               enc, step, unet, dec, vae);
        printf("  \"generation_error\": ");
        json_str(b->gen_error);
        printf(",\n");
        printf("  \"load_s\": %.3f, \"load_bytes\": %llu, \"weights_bytes\": %llu, \"vae_weights_bytes\": %llu,\n",
               b->load_s, (unsigned long long)b->load_bytes, (unsigned long long)b->weights, (unsigned long long)wv);
        printf("  \"driver_total_bytes\": %llu, \"driver_after_open_bytes\": %llu, \"driver_peak_bytes\": %llu,\n",
               (unsigned long long)b->driver_total, (unsigned long long)b->driver_open,
               (unsigned long long)b->driver_peak);
        printf("  \"workspace_bytes\": %llu, \"pool_peak_encode_bytes\": %llu, \"pool_peak_denoise_bytes\": %llu, "
               "\"pool_peak_decode_bytes\": %llu,\n",
               (unsigned long long)b->workspace, (unsigned long long)b->pool_peak_enc,
               (unsigned long long)b->pool_peak_unet, (unsigned long long)b->pool_peak_dec);
        printf("  \"pool_peak_vae_bytes\": %llu, \"activation_peak_denoise_bytes\": %llu, "
               "\"activation_peak_decode_bytes\": %llu, \"activation_peak_vae_bytes\": %llu,\n",
               (unsigned long long)b->pool_peak_vae, (unsigned long long)act_unet, (unsigned long long)act_dec,
               (unsigned long long)act_vae);
        vf_component_placement up;
        if (vf_model_component_placement(b->m, VF_COMPONENT_UNET, &up) != VF_OK) {
            memset(&up, 0, sizeof up);
            vf_clear_error();
        }
        printf("  \"weights_denoise_bytes\": %llu, \"activation_plan_denoise_bytes\": %llu,\n",
               (unsigned long long)w_unet, (unsigned long long)up.activation_bytes);
        printf("  \"backend_peak_denoise_bytes\": %llu, \"backend_peak_decode_bytes\": %llu, "
               "\"backend_peak_vae_bytes\": %llu,\n",
               (unsigned long long)be_peak_unet, (unsigned long long)be_peak_dec, (unsigned long long)be_peak_vae);
        printf("  \"h2d_bytes_per_step\": %llu, \"d2h_bytes_per_step\": %llu, \"h2d_bytes_decode\": %llu, "
               "\"d2h_bytes_decode\": %llu",
               (unsigned long long)b->h2d_step, (unsigned long long)b->d2h_step, (unsigned long long)b->h2d_dec,
               (unsigned long long)b->d2h_dec);
        if (b->nprof_unet)
            print_prof("unet", b->prof_unet, b->nprof_unet, b->prof_unet_ms, 1);
        if (b->nprof_vae)
            print_prof("vae", b->prof_vae, b->nprof_vae, b->prof_vae_ms, 1);
        printf("\n}\n");
        return;
    }
    printf("model %s\nbackend %s (%s, %s)  %dx%d  steps %d  cfg %g  runs %d (medians)\n", a->model, bi->name,
           bi->device, vf_dtype_name(bi->dtype), b->width, b->height, a->steps, (double)a->cfg, a->runs);
    printf("plan            %s, budget %.1f MiB, context %.1f MiB, arena %.1f MiB, ring depth %d, link %.1f GB/s, "
           "predicted step %.2f ms\n", vf_offload_strategy_name(ps.strategy), mib(mm->budget), mib(mm->context),
           mib(mm->arena_bytes), ps.ring_depth, (double)mm->link_bandwidth / 1e9, ps.time_per_step * 1e3);
    printf("encode prompt   %9.2f ms\n", enc);
    printf("denoising step  %9.2f ms   (UNet alone %.2f ms)\n", step, unet);
    printf("VAE decode      %9.2f ms   (decoder alone %.2f ms, arena peak %.1f MiB: weights in the arena %.1f "
           "(VAE %.1f) + activations and workspaces %.1f)\n", dec, vae, mib(be_peak_vae), mib(w_dec), mib(wv),
           mib(act_vae));
    if (b->gen_error[0])
        printf("generation failed: %s\n", b->gen_error);
    printf("weights         %9.1f MiB in the arena, %.1f MiB uploaded in %.2f s (%.2f GB/s)\n", mib(b->weights),
           mib(b->load_bytes), b->load_s, b->load_s > 0 ? (double)b->load_bytes / b->load_s / 1e9 : 0.0);
    printf("driver memory   %9.1f MiB used after open (context), %.1f MiB peak, of %.1f MiB\n",
           mib(b->driver_open), mib(b->driver_peak), mib(b->driver_total));
    printf("arena peak      %9.1f MiB denoising (weights %.1f + activations and workspaces %.1f)\n",
           mib(be_peak_unet), mib(w_unet), mib(act_unet));
    printf("host link       %9.2f MiB up / %.2f MiB down per step; decode %.2f up / %.2f down\n",
           mib(b->h2d_step), mib(b->d2h_step), mib(b->h2d_dec), mib(b->d2h_dec));
    if (b->nprof_unet)
        print_prof("UNet forward", b->prof_unet, b->nprof_unet, b->prof_unet_ms, 0);
    if (b->nprof_vae)
        print_prof("VAE decode", b->prof_vae, b->nprof_vae, b->prof_vae_ms, 0);
}

int vf_cmd_bench(int argc, char **argv)
{
    bench_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc < 0) {
        usage(stdout);
        return VF_EXIT_OK;
    }
    if (rc)
        return rc;
    bench b;
    memset(&b, 0, sizeof b);
    b.a = &a;
    b.width = a.width;
    b.height = a.height;
    vf_status st = bench_run(&b);
    if (st == VF_OK)
        report(&b);
    bench_free(&b);
    return st == VF_OK ? VF_EXIT_OK : vf_cli_fail(st);
}
