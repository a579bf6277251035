/* Text to image: DENOISE and DECODE, and vf_generate that runs all three stages.
 *
 * The loop is diffusers' StableDiffusionPipeline / StableDiffusionXLPipeline
 * __call__ written out, in the same order and float32 arithmetic, because
 * "the same seed gives the same image" is a parity contract with diffusers:
 *
 *   latents = randn((1,C,h,w), Generator().manual_seed(seed)) * init_noise_sigma
 *   for each step i:  x = scale_model_input(cat([latents] * B), t_i)
 *                     eps = unet(x, t_i, cat([neg, pos]), (SDXL) text_embeds, time_ids)
 *                     eps = uncond + g * (cond - uncond)        (B = 2 when g > 1)
 *                     latents = scheduler.step(eps, t_i, latents, generator)
 *   image = clamp(vae.decode(latents / scaling_factor) / 2 + 0.5, 0, 1)
 *
 * The one generator serves the initial noise and Euler ancestral's per-step
 * noise, as diffusers passes the same generator to both.
 *
 * Everything a run needs is checked before anything is allocated (sizes with
 * overflow-safe products, so an absurd width is an error, not a huge malloc),
 * each run builds its own scheduler and generator (a handle carries no state
 * from one generation to the next), and every exit, including cancellation
 * from the progress callback, goes through one cleanup path.
 *
 * Intermediates for parity checks are collected into an in-memory dump only
 * when dump_path is set, under the key names of the reference fixtures, and
 * written once at the end of a successful run.
 */
#include "core/alloc.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/unet.h"
#include "model/vae.h"
#include "pipeline/finite.h"
#include "pipeline/model.h"
#include "pipeline/rng.h"
#include "pipeline/scheduler.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define DEFAULT_STEPS 20
#define DEFAULT_GUIDANCE 7.5f

const char *vf_generation_step_name(vf_generation_step s)
{
    switch (s) {
    case VF_STEP_ENCODE_PROMPT: return "encode_prompt";
    case VF_STEP_DENOISE: return "denoise";
    case VF_STEP_DECODE: return "decode";
    }
    return "unknown";
}

void vf_generate_params_init(vf_generate_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->steps = DEFAULT_STEPS;
    p->guidance_scale = DEFAULT_GUIDANCE;
    p->sampler = VF_SAMPLER_DEFAULT;
}

void vf_latents_free(vf_latents *l)
{
    if (!l)
        return;
    vf_free(l->data);
    vf_free(l);
}

void vf_image_free(vf_image *img)
{
    if (!img)
        return;
    vf_free(img->rgb);
    vf_free(img->pixels);
    vf_free(img);
}

/* ---- dump: intermediates kept for a .safetensors file ------------------------ */

typedef struct dump {
    vf_st_write_tensor *t;        /* name and data owned here                  */
    int n, cap;
    int W, H;                     /* the image size the run resolved           */
} dump;

static void dump_free(dump *d)
{
    if (!d)
        return;
    for (int i = 0; i < d->n; i++) {
        vf_free((void *)d->t[i].name);
        vf_free((void *)d->t[i].data);
    }
    vf_free(d->t);
    memset(d, 0, sizeof *d);
}

/* Copies x, whose shape is dims[0..ndim), under name. A NULL dump keeps nothing. */
static vf_status dump_add(dump *d, const char *name, const float *x, int ndim, const int64_t *dims)
{
    if (!d)
        return VF_OK;
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (vf_mul_overflow(n, (size_t)dims[i], &n))
            return vf_error(VF_ERR_INTERNAL, "dump: tensor '%s' is too large", name);
    if (d->n == d->cap) {
        int cap = d->cap ? 2 * d->cap : 16;
        vf_st_write_tensor *t = vf_realloc(d->t, sizeof *t * (size_t)cap);
        if (!t)
            return vf_error_prefix(VF_ERR_NO_MEMORY, "dump: tensor '%s'", name);
        d->t = t;
        d->cap = cap;
    }
    vf_st_write_tensor *t = &d->t[d->n];
    memset(t, 0, sizeof *t);
    char *nm = vf_strdup(name);
    float *data = nm ? vf_malloc(n * sizeof(float)) : NULL;
    if (!data) {
        vf_free(nm);
        return vf_error_prefix(VF_ERR_NO_MEMORY, "dump: tensor '%s'", name);
    }
    memcpy(data, x, n * sizeof(float));
    t->name = nm;
    t->data = data;
    t->dtype = VF_DTYPE_F32;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = dims[i];
    d->n++;
    return VF_OK;
}

#define DUMP(d, name, x, ...)                                                               \
    dump_add(d, name, x, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)),       \
             (int64_t[]){__VA_ARGS__})

static vf_status dump_write(const dump *d, const char *path, const vf_model *m,
                            const vf_generate_params *p, vf_sampler sampler)
{
    char seed[32], steps[16], cfg[32], size[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)p->seed);
    snprintf(steps, sizeof steps, "%d", p->steps);
    snprintf(cfg, sizeof cfg, "%g", (double)p->guidance_scale);
    snprintf(size, sizeof size, "%dx%d", d->W, d->H);
    const char *meta[] = {"producer", "vramfit", "arch", vf_arch_name(m->arch), "sampler",
                          vf_sampler_name(sampler), "seed", seed, "steps", steps,
                          "guidance_scale", cfg, "size", size, NULL};
    vf_status st = vf_st_write(path, d->t, (size_t)d->n, meta);
    return st == VF_OK ? VF_OK : vf_error_prefix(st, "dump_path");
}

/* ---- checks ------------------------------------------------------------------ */

static int progress_stop(const vf_generate_params *p, vf_generation_step s, int k, int n)
{
    return p->on_step && p->on_step(p->user, s, k, n) != 0;
}

static vf_status cancelled(vf_generation_step s, int k, int n)
{
    return vf_error(VF_ERR_CANCELLED, "%s: cancelled by the progress callback at step %d of %d",
                    vf_generation_step_name(s), k, n);
}

/* What a denoising run works with, resolved from params and the model. */
typedef struct plan {
    vf_unet_config ucfg;
    int W, H;                     /* pixels                                    */
    int C, h, w;                  /* latent channels and size                  */
    int B;                        /* 2 with classifier-free guidance           */
    size_t n;                     /* C*h*w                                     */
} plan;

/* The VAE's pixels per latent (8 when the model has no VAE to say). */
static vf_status vae_scale(vf_model *m, int *S)
{
    *S = 8;
    if (!m->present[VF_COMPONENT_VAE])
        return VF_OK;
    vf_vae_config v;
    vf_status st = vf_vae_config_parse(vf_checkpoint_config(m->ck, VF_COMPONENT_VAE), &v);
    if (st != VF_OK)
        return vf_error_prefix(st, "%s: vae", m->path);
    *S = vf_vae_scale(&v);
    return VF_OK;
}

/* unet config sample_size (an int, or [height, width]) in latent pixels. */
static void default_latent_size(vf_model *m, int *h, int *w)
{
    const cJSON *c = vf_checkpoint_config(m->ck, VF_COMPONENT_UNET);
    const cJSON *s = c ? cJSON_GetObjectItemCaseSensitive(c, "sample_size") : NULL;
    *h = *w = m->arch == VF_ARCH_SDXL ? 128 : 64;
    if (cJSON_IsNumber(s) && s->valuedouble >= 1 && s->valuedouble <= VF_MAX_IMAGE_SIDE) {
        *h = *w = (int)s->valuedouble;
    } else if (cJSON_IsArray(s) && cJSON_GetArraySize(s) == 2) {
        const cJSON *a = cJSON_GetArrayItem(s, 0), *b = cJSON_GetArrayItem(s, 1);
        if (cJSON_IsNumber(a) && cJSON_IsNumber(b) && a->valuedouble >= 1 && b->valuedouble >= 1 &&
            a->valuedouble <= VF_MAX_IMAGE_SIDE && b->valuedouble <= VF_MAX_IMAGE_SIDE) {
            *h = (int)a->valuedouble;
            *w = (int)b->valuedouble;
        }
    }
}

static vf_status check_side(const char *name, int v, int mult)
{
    if (v < 0 || v > VF_MAX_IMAGE_SIDE)
        return vf_error(VF_ERR_INVALID_ARG, "%s %d is out of range (1..%d pixels, 0 for the model's default)",
                        name, v, VF_MAX_IMAGE_SIDE);
    int nearest = (v + mult / 2) / mult * mult;
    if (v % mult)
        return vf_error(VF_ERR_INVALID_ARG,
                        "%s %d is not a multiple of %d (this model's VAE scale times its UNet's "
                        "downsampling); try %d",
                        name, v, mult, nearest > 0 ? nearest : mult);
    return VF_OK;
}

static vf_status check_params(const vf_generate_params *p)
{
    if (p->steps < 1)
        return vf_error(VF_ERR_INVALID_ARG, "steps must be at least 1 (got %d)", p->steps);
    if (!isfinite(p->guidance_scale))
        return vf_error(VF_ERR_INVALID_ARG, "guidance_scale must be a finite number (got %g)",
                        (double)p->guidance_scale);
    if ((int)p->sampler < VF_SAMPLER_DEFAULT || (int)p->sampler > VF_SAMPLER_PNDM)
        return vf_error(VF_ERR_INVALID_ARG, "sampler %d is not a vf_sampler", (int)p->sampler);
    const int v[6] = {p->original_width, p->original_height, p->crop_top, p->crop_left,
                      p->target_width, p->target_height};
    static const char *const names[6] = {"original_width", "original_height", "crop_top", "crop_left",
                                         "target_width", "target_height"};
    for (int i = 0; i < 6; i++)
        if (v[i] < 0 || v[i] > 1 << 20)
            return vf_error(VF_ERR_INVALID_ARG, "%s %d is out of range (0..%d)", names[i], v[i], 1 << 20);
    return VF_OK;
}

static vf_status check_embeddings(const vf_model *m, const plan *pl, const vf_embeddings *e)
{
    if (!e || !e->prompt || !e->negative || e->seq_len < 1 || e->seq_len > 4096)
        return vf_error(VF_ERR_INVALID_ARG, "denoise: embeddings are missing or empty");
    if (e->dim != pl->ucfg.cross_dim)
        return vf_error(VF_ERR_INVALID_ARG,
                        "denoise: prompt embeddings are %d wide but %s's unet cross-attends to %d "
                        "(embeddings from another model?)", e->dim, m->path, pl->ucfg.cross_dim);
    if (pl->ucfg.text_time && (!e->pooled || !e->negative_pooled || e->pooled_dim != pl->ucfg.pooled_dim))
        return vf_error(VF_ERR_INVALID_ARG,
                        "denoise: %s's unet needs pooled prompt embeddings of width %d (got %d)",
                        m->path, pl->ucfg.pooled_dim, e->pooled ? e->pooled_dim : 0);
    return VF_OK;
}

/* Fills pl from the model and params; checks everything a run could trip on. */
static vf_status make_plan(vf_model *m, const vf_generate_params *p, plan *pl)
{
    memset(pl, 0, sizeof *pl);
    VF_TRY(check_params(p));
    if (!m->present[VF_COMPONENT_UNET])
        return vf_error(VF_ERR_NOT_FOUND, "%s: no unet component", m->path);
    vf_status st = vf_unet_config_parse(vf_checkpoint_config(m->ck, VF_COMPONENT_UNET), m->arch, &pl->ucfg);
    if (st != VF_OK)
        return vf_error_prefix(st, "%s: unet", m->path);
    if (pl->ucfg.in_channels != pl->ucfg.out_channels)
        return vf_error(VF_ERR_UNSUPPORTED, "%s: unet has %d input but %d output channels", m->path,
                        pl->ucfg.in_channels, pl->ucfg.out_channels);
    int S, dh, dw;
    VF_TRY(vae_scale(m, &S));
    default_latent_size(m, &dh, &dw);
    int mult = S << (pl->ucfg.levels - 1);
    pl->W = p->width ? p->width : dw * S;
    pl->H = p->height ? p->height : dh * S;
    VF_TRY(check_side("width", pl->W, mult));
    VF_TRY(check_side("height", pl->H, mult));
    if (pl->W == 0 || pl->H == 0)
        return vf_error(VF_ERR_INVALID_ARG, "%s: the model's default size is out of range; give width and height",
                        m->path);
    pl->C = pl->ucfg.in_channels;
    pl->h = pl->H / S;
    pl->w = pl->W / S;
    pl->B = p->guidance_scale > 1.0f ? 2 : 1;
    /* The largest buffers a run allocates: the batch of UNet inputs and the
     * decoded image; sizes are capped above, this keeps every product honest. */
    size_t n, bytes;
    if (vf_mul_overflow((size_t)pl->C, (size_t)pl->h, &n) || vf_mul_overflow(n, (size_t)pl->w, &n) ||
        vf_mul_overflow(n, (size_t)pl->B * sizeof(float), &bytes) ||
        vf_mul_overflow((size_t)pl->W * 3 * sizeof(float), (size_t)pl->H, &bytes))
        return vf_error(VF_ERR_INVALID_ARG, "width %d x height %d is too large", pl->W, pl->H);
    pl->n = n;
    return VF_OK;
}

/* The model's memory (pipeline/memory.c) planned for this request: a no-op
 * when the current plan was made for the same size, steps and guidance. */
static vf_status prepare_memory(vf_model *m, const plan *pl, const vf_generate_params *p)
{
    vf_mm_request rq;
    vf_mm_request_make(&rq, pl->W, pl->H, p->steps, p->guidance_scale);
    return vf_mm_prepare(m, &rq);
}

/* ---- DENOISE ----------------------------------------------------------------- */

typedef struct denoiser {
    vf_model *m;
    const vf_generate_params *p;
    const vf_embeddings *e;
    plan pl;
    vf_residency *res;
    vf_scheduler *sch;
    vf_rng *rng;
    dump *d;
    float *latents;               /* (C,h,w)                                   */
    float *x;                     /* (B,C,h,w) UNet input                      */
    float *eps;                   /* (B,C,h,w) UNet output                     */
    float *guided;                /* (C,h,w) after guidance                    */
    float *ctx;                   /* (B,L,D): negative, positive               */
    float *text;                  /* (B,P) SDXL pooled, or NULL                */
    float time_ids[12];           /* (B,6) SDXL                                */
    float ts[2];
} denoiser;

static void denoiser_free(denoiser *z)
{
    vf_scheduler_free(z->sch);
    vf_rng_free(z->rng);
    vf_free(z->latents);
    vf_free(z->x);
    vf_free(z->eps);
    vf_free(z->guided);
    vf_free(z->ctx);
    vf_free(z->text);
}

/* Conditioning for the UNet batch: [negative, positive] with guidance, else positive. */
static vf_status build_conditioning(denoiser *z)
{
    const vf_embeddings *e = z->e;
    const vf_generate_params *p = z->p;
    int B = z->pl.B;
    size_t L = (size_t)e->seq_len * (size_t)e->dim;
    z->ctx = vf_malloc(sizeof(float) * L * (size_t)B);
    if (!z->ctx)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "denoise: conditioning");
    if (B == 2)
        memcpy(z->ctx, e->negative, sizeof(float) * L);
    memcpy(z->ctx + (B - 1) * L, e->prompt, sizeof(float) * L);
    if (!z->pl.ucfg.text_time)
        return VF_OK;
    size_t P = (size_t)e->pooled_dim;
    z->text = vf_malloc(sizeof(float) * P * (size_t)B);
    if (!z->text)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "denoise: conditioning");
    if (B == 2)
        memcpy(z->text, e->negative_pooled, sizeof(float) * P);
    memcpy(z->text + (B - 1) * P, e->pooled, sizeof(float) * P);
    /* diffusers' _get_add_time_ids: original_size + crops_coords_top_left + target_size,
     * (height, width) order; the negative half gets the same ids. */
    const float ids[6] = {
        (float)(p->original_height ? p->original_height : z->pl.H),
        (float)(p->original_width ? p->original_width : z->pl.W),
        (float)p->crop_top,
        (float)p->crop_left,
        (float)(p->target_height ? p->target_height : z->pl.H),
        (float)(p->target_width ? p->target_width : z->pl.W),
    };
    for (int b = 0; b < B; b++)
        memcpy(z->time_ids + 6 * b, ids, sizeof ids);
    return VF_OK;
}

static vf_status dump_embeddings(dump *d, const vf_embeddings *e)
{
    if (!d)
        return VF_OK;
    VF_TRY(DUMP(d, "prompt_embeds", e->prompt, 1, e->seq_len, e->dim));
    VF_TRY(DUMP(d, "negative_prompt_embeds", e->negative, 1, e->seq_len, e->dim));
    if (e->pooled_dim <= 0 || !e->pooled || !e->negative_pooled)
        return VF_OK;
    VF_TRY(DUMP(d, "pooled_prompt_embeds", e->pooled, 1, e->pooled_dim));
    return DUMP(d, "negative_pooled_prompt_embeds", e->negative_pooled, 1, e->pooled_dim);
}

static vf_status dump_schedule(denoiser *z)
{
    if (!z->d)
        return VF_OK;
    int N = vf_scheduler_steps(z->sch);
    float *v = vf_malloc(sizeof(float) * (size_t)(N + 1));
    if (!v)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "dump: schedule");
    for (int i = 0; i < N; i++)
        v[i] = vf_scheduler_timestep(z->sch, i);
    vf_status st = DUMP(z->d, "timesteps", v, N);
    for (int i = 0; i <= N; i++)
        v[i] = vf_scheduler_sigma(z->sch, i);
    if (st == VF_OK)
        st = DUMP(z->d, "sigmas", v, N + 1);
    vf_free(v);
    return st;
}

/* The first UNet call's inputs and output, as the reference records them. */
static vf_status dump_unet0(denoiser *z)
{
    const plan *pl = &z->pl;
    const vf_embeddings *e = z->e;
    int64_t B = pl->B;
    VF_TRY(DUMP(z->d, "unet0_sample", z->x, B, pl->C, pl->h, pl->w));
    VF_TRY(DUMP(z->d, "unet0_timestep", z->ts, 1));
    VF_TRY(DUMP(z->d, "unet0_encoder_hidden_states", z->ctx, B, e->seq_len, e->dim));
    if (pl->ucfg.text_time) {
        VF_TRY(DUMP(z->d, "unet0_text_embeds", z->text, B, e->pooled_dim));
        VF_TRY(DUMP(z->d, "unet0_time_ids", z->time_ids, B, 6));
    }
    return DUMP(z->d, "unet0_out", z->eps, B, pl->C, pl->h, pl->w);
}

static vf_status denoiser_setup(denoiser *z)
{
    const plan *pl = &z->pl;
    const vf_generate_params *p = z->p;
    vf_status st = vf_model_residency(z->m, VF_COMPONENT_UNET, &z->res);
    if (st == VF_OK)
        st = vf_scheduler_create(vf_checkpoint_scheduler_config(z->m->ck), p->sampler, p->steps, &z->sch);
    if (st != VF_OK)
        return vf_error_prefix(st, "%s: scheduler", z->m->path);
    VF_TRY(vf_rng_create(p->seed, &z->rng));
    size_t n = pl->n, Bn = n * (size_t)pl->B;
    z->latents = vf_malloc(sizeof(float) * n);
    z->guided = z->latents ? vf_malloc(sizeof(float) * n) : NULL;
    z->x = z->guided ? vf_malloc(sizeof(float) * Bn) : NULL;
    z->eps = z->x ? vf_malloc(sizeof(float) * Bn) : NULL;
    if (!z->eps)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "denoise: latents %dx%d", pl->w, pl->h);
    VF_TRY(build_conditioning(z));
    VF_TRY(dump_embeddings(z->d, z->e));
    VF_TRY(dump_schedule(z));
    /* randn first, then the scale: init_latents in the reference is the raw draw. */
    vf_rng_randn(z->rng, z->latents, n);
    VF_TRY(DUMP(z->d, "init_latents", z->latents, 1, pl->C, pl->h, pl->w));
    float s = vf_scheduler_init_noise_sigma(z->sch);
    for (size_t i = 0; i < n; i++)
        z->latents[i] *= s;
    return VF_OK;
}

/* noise = uncond + g * (cond - uncond), in float as torch computes it. */
static void guide(denoiser *z)
{
    size_t n = z->pl.n;
    if (z->pl.B == 1) {
        memcpy(z->guided, z->eps, sizeof(float) * n);
        return;
    }
    float g = z->p->guidance_scale;
    const float *u = z->eps, *c = z->eps + n;
    for (size_t i = 0; i < n; i++) {
        float d = c[i] - u[i];
        float gd = g * d;
        z->guided[i] = u[i] + gd;
    }
}

static vf_status denoise_step(denoiser *z, int i)
{
    const plan *pl = &z->pl;
    vf_model *m = z->m;
    size_t n = pl->n;
    memcpy(z->x, z->latents, sizeof(float) * n);
    vf_scheduler_scale_model_input(z->sch, i, z->x, n);
    if (pl->B == 2)
        memcpy(z->x + n, z->x, sizeof(float) * n);
    z->ts[0] = z->ts[1] = vf_scheduler_timestep(z->sch, i);
    vf_status st = vf_model_run_unet(m, z->res, &pl->ucfg, z->x, pl->B, pl->h, pl->w,
                                     z->ts, z->ctx, z->e->seq_len, z->text, z->time_ids, z->eps);
    if (st != VF_OK)
        return vf_error_prefix(st, "%s: denoise step %d", m->path, i);
    char where[96];
    snprintf(where, sizeof where, "denoise step %d: the unet output", i);
    VF_TRY(vf_check_finite(m, VF_COMPONENT_UNET, z->eps, n * (size_t)pl->B, where));
    if (i == 0 && z->d)
        VF_TRY(dump_unet0(z));
    guide(z);
    st = vf_scheduler_step(z->sch, i, z->guided, z->latents, n, z->rng);
    if (st != VF_OK)
        return vf_error_prefix(st, "%s: denoise step %d", m->path, i);
    snprintf(where, sizeof where, "denoise step %d: the latents after guidance and the sampler", i);
    VF_TRY(vf_check_finite(m, -1, z->latents, n, where));
    if (!z->d)
        return VF_OK;
    char name[48];
    snprintf(name, sizeof name, "latents_after_step%d", i);
    return DUMP(z->d, name, z->latents, 1, pl->C, pl->h, pl->w);
}

static vf_status denoise_run(denoiser *z, vf_latents **out)
{
    const plan *pl = &z->pl;
    int N = vf_scheduler_steps(z->sch);
    vf_latents now = {1, pl->C, pl->h, pl->w, NULL};
    for (int i = 0; i < N; i++) {
        if (progress_stop(z->p, VF_STEP_DENOISE, i, N))
            return cancelled(VF_STEP_DENOISE, i, N);
        VF_TRY(denoise_step(z, i));
        now.data = z->latents;
        if (z->p->on_latents && z->p->on_latents(z->p->user, i + 1, N, &now) != 0)
            return cancelled(VF_STEP_DENOISE, i + 1, N);
    }
    if (progress_stop(z->p, VF_STEP_DENOISE, N, N))
        return cancelled(VF_STEP_DENOISE, N, N);
    vf_latents *l = vf_calloc(1, sizeof *l);
    if (!l)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "denoise: result");
    l->batch = 1;
    l->channels = pl->C;
    l->height = pl->h;
    l->width = pl->w;
    l->data = z->latents;         /* handed over */
    z->latents = NULL;
    *out = l;
    return VF_OK;
}

static vf_status denoise_impl(vf_model *m, const vf_generate_params *p, const vf_embeddings *e, dump *d,
                              vf_sampler *used, vf_latents **out)
{
    denoiser z;
    memset(&z, 0, sizeof z);
    z.m = m;
    z.p = p;
    z.e = e;
    z.d = d;
    vf_status st = make_plan(m, p, &z.pl);
    if (st == VF_OK && d) {
        d->W = z.pl.W;
        d->H = z.pl.H;
    }
    if (st == VF_OK)
        st = check_embeddings(m, &z.pl, e);
    if (st == VF_OK)
        st = prepare_memory(m, &z.pl, p);
    if (st == VF_OK)
        st = denoiser_setup(&z);
    if (st == VF_OK) {
        *used = vf_scheduler_kind(z.sch);
        st = denoise_run(&z, out);
    }
    denoiser_free(&z);
    vf_model_component_done(m, VF_COMPONENT_UNET);
    return st;
}

/* ---- DECODE ------------------------------------------------------------------ */

static vf_status decode_impl(vf_model *m, const vf_latents *l, const vf_generate_params *p, dump *d,
                             vf_image **out)
{
    if (!m->present[VF_COMPONENT_VAE])
        return vf_error(VF_ERR_NOT_FOUND, "%s: no vae component", m->path);
    vf_vae_config cfg;
    vf_status st = vf_vae_config_parse(vf_checkpoint_config(m->ck, VF_COMPONENT_VAE), &cfg);
    if (st != VF_OK)
        return vf_error_prefix(st, "%s: vae", m->path);
    int S = vf_vae_scale(&cfg);
    if (!l || !l->data || l->batch < 1 || l->channels != cfg.latent_channels || l->height < 1 ||
        l->width < 1 || l->height > VF_MAX_IMAGE_SIDE / S || l->width > VF_MAX_IMAGE_SIDE / S)
        return vf_error(VF_ERR_INVALID_ARG, "decode: latents (%d,%d,%d,%d) do not fit %s's vae (%d channels, "
                        "at most %d pixels a side)", l ? l->batch : 0, l ? l->channels : 0,
                        l ? l->height : 0, l ? l->width : 0, m->path, cfg.latent_channels, VF_MAX_IMAGE_SIDE);
    if (cfg.out_channels != 3)
        return vf_error(VF_ERR_UNSUPPORTED, "%s: vae has %d output channels, not RGB", m->path, cfg.out_channels);
    if (p && progress_stop(p, VF_STEP_DECODE, 0, 1))
        return cancelled(VF_STEP_DECODE, 0, 1);
    int H = l->height * S, W = l->width * S;
    size_t hw = (size_t)H * (size_t)W;
    /* The plan of the run that made the latents, unless they are another size. */
    vf_mm_request rq = m->mm.plan ? m->mm.key : (vf_mm_request){0, 0, 20, 1};
    rq.width = W;
    rq.height = H;
    VF_TRY(vf_mm_prepare(m, &rq));
    vf_residency *r;
    st = vf_model_residency(m, VF_COMPONENT_VAE, &r);
    if (st != VF_OK)
        return st;
    float *decoded = vf_malloc(sizeof(float) * 3 * hw);
    vf_image *img = decoded ? vf_calloc(1, sizeof *img) : NULL;
    if (img) {
        img->pixels = vf_malloc(sizeof(float) * 3 * hw);
        img->rgb = img->pixels ? vf_malloc(3 * hw) : NULL;
    }
    if (!img || !img->rgb) {
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "decode: %dx%d image", W, H);
        goto done;
    }
    img->width = W;
    img->height = H;
    st = vf_model_run_vae(m, r, &cfg, l->data, 1, l->height, l->width, decoded);
    if (st != VF_OK) {
        st = vf_error_prefix(st, "%s: decode", m->path);
        goto done;
    }
    st = vf_check_finite(m, VF_COMPONENT_VAE, decoded, 3 * hw, "decode: the vae output");
    if (st != VF_OK)
        goto done;
    vf_image_from_decoded(decoded, 1, H, W, img->pixels, img->rgb);
    st = DUMP(d, "vae_decoded", decoded, 1, 3, H, W);
    if (st == VF_OK)
        st = DUMP(d, "image", img->pixels, H, W, 3);
    if (st == VF_OK && p && progress_stop(p, VF_STEP_DECODE, 1, 1))
        st = cancelled(VF_STEP_DECODE, 1, 1);
done:
    vf_model_component_done(m, VF_COMPONENT_VAE);
    vf_free(decoded);
    if (st == VF_OK)
        *out = img;
    else
        vf_image_free(img);
    return st;
}

/* ---- public entry points ------------------------------------------------------- */

vf_status vf_model_sampler(vf_model *m, vf_sampler requested, vf_sampler *out)
{
    if (!m || !out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_model_sampler: model or out is NULL");
    vf_scheduler *s;
    vf_status st = vf_scheduler_create(vf_checkpoint_scheduler_config(m->ck), requested, 1, &s);
    if (st != VF_OK)
        return vf_error_prefix(st, "%s: scheduler", m->path);
    *out = vf_scheduler_kind(s);
    vf_scheduler_free(s);
    return VF_OK;
}

vf_status vf_denoise(vf_model *m, const vf_generate_params *p, const vf_embeddings *e, vf_latents **out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_denoise: out is NULL");
    *out = NULL;
    if (!m || !p || !e)
        return vf_error(VF_ERR_INVALID_ARG, "vf_denoise: model, params or embeddings is NULL");
    dump d = {0};
    vf_sampler used = VF_SAMPLER_DEFAULT;
    vf_status st = denoise_impl(m, p, e, p->dump_path ? &d : NULL, &used, out);
    if (st == VF_OK && p->dump_path)
        st = dump_write(&d, p->dump_path, m, p, used);
    if (st != VF_OK) {
        vf_latents_free(*out);
        *out = NULL;
    }
    dump_free(&d);
    return st;
}

vf_status vf_decode(vf_model *m, const vf_latents *l, vf_image **out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_decode: out is NULL");
    *out = NULL;
    if (!m)
        return vf_error(VF_ERR_INVALID_ARG, "vf_decode: model is NULL");
    return decode_impl(m, l, NULL, NULL, out);
}

static vf_status encode_stage(vf_model *m, const vf_generate_params *p, vf_embeddings **e)
{
    if (progress_stop(p, VF_STEP_ENCODE_PROMPT, 0, 1))
        return cancelled(VF_STEP_ENCODE_PROMPT, 0, 1);
    VF_TRY(vf_encode_prompt_ex(m, p->prompt ? p->prompt : "", p->negative_prompt, p->prompt_syntax, e));
    if (progress_stop(p, VF_STEP_ENCODE_PROMPT, 1, 1))
        return cancelled(VF_STEP_ENCODE_PROMPT, 1, 1);
    return VF_OK;
}

/* Each stage of vf_generate runs in a monitor scope named after it, so its
 * peak device and host memory are recorded (vf_usage_stage, `generate --stats`).
 * Returns whether the scope opened (they nest at most 16 deep). */
static int track_begin(vf_generation_step s)
{
    if (vf_track_usage_begin(vf_generation_step_name(s)) == VF_OK)
        return 1;
    vf_clear_error();
    return 0;
}

static void track_end(int scoped)
{
    if (scoped)
        (void)vf_track_usage_end(NULL);
}

vf_status vf_generate(vf_model *m, const vf_generate_params *p, vf_image **out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_generate: out is NULL");
    *out = NULL;
    if (!m || !p)
        return vf_error(VF_ERR_INVALID_ARG, "vf_generate: model or params is NULL");
    /* Bad parameters fail before the text encoders spend any time, and a
     * request that fits no plan before anything loads. */
    plan pl;
    VF_TRY(make_plan(m, p, &pl));
    VF_TRY(prepare_memory(m, &pl, p));
    dump d = {0}, *dp = p->dump_path ? &d : NULL;
    vf_embeddings *e = NULL;
    vf_latents *l = NULL;
    vf_sampler used = VF_SAMPLER_DEFAULT;
    int sc = track_begin(VF_STEP_ENCODE_PROMPT);
    vf_status st = encode_stage(m, p, &e);
    track_end(sc);
    if (st == VF_OK) {
        sc = track_begin(VF_STEP_DENOISE);
        st = denoise_impl(m, p, e, dp, &used, &l);
        track_end(sc);
    }
    if (st == VF_OK) {
        sc = track_begin(VF_STEP_DECODE);
        st = decode_impl(m, l, p, dp, out);
        track_end(sc);
    }
    if (st == VF_OK && dp)
        st = dump_write(dp, p->dump_path, m, p, used);
    if (st != VF_OK) {
        vf_image_free(*out);
        *out = NULL;
    }
    dump_free(&d);
    vf_latents_free(l);
    vf_embeddings_free(e);
    return st;
}
