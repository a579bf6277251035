/* Schedulers: diffusers' Euler, Euler ancestral, DDIM and DPM++ 2M (see scheduler.h).
 *
 * Everything about a run except the stepping state is computed once in
 * vf_scheduler_create(): the training alphas_cumprod, the timesteps and the sigmas.
 * Each quantity is computed the way diffusers computes it, in the same precision
 * and operation order, because a scheduler that is "mathematically the same" but
 * rounds differently drifts visibly from the reference after a few steps:
 *   - betas with torch.linspace's float32 formula (two halves, one from each end),
 *     alphas_cumprod with torch.cumprod's float64 accumulation;
 *   - timesteps with numpy's float64 linspace / arange (including arange's length
 *     rule, which gives one extra timestep for some trailing step counts);
 *   - sigma interpolation and Karras / exponential sigmas in float64 (numpy),
 *     rounded to float32 at the end as diffusers does;
 *   - step arithmetic in float32, one tensor operation at a time.
 */
#include "pipeline/scheduler.h"
#include "core/alloc.h"
#include "core/error.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#define CFG "scheduler_config"
#define MAX_TRAIN_STEPS 100000

typedef enum { PRED_EPSILON, PRED_V, PRED_SAMPLE } pred_type;
typedef enum { SPACING_LEADING, SPACING_TRAILING, SPACING_LINSPACE } spacing_type;
typedef enum { BETAS_LINEAR, BETAS_SCALED_LINEAR, BETAS_COSINE } beta_type;
typedef enum { SIGMAS_INTERP, SIGMAS_KARRAS, SIGMAS_EXPONENTIAL } sigma_type;

/* The options of the four classes, with diffusers' defaults before a config is read. */
typedef struct sched_opts {
    int num_train;
    double beta_start, beta_end;
    beta_type betas;
    int rescale_zero_snr;
    pred_type pred;
    spacing_type spacing;
    int steps_offset;
    /* Euler, DPM++ */
    sigma_type sigmas;
    int final_sigma_min;           /* final_sigmas_type "sigma_min" (else "zero")  */
    int has_sigma_min, has_sigma_max;
    double sigma_min, sigma_max;   /* Euler's Karras / exponential range override  */
    /* DDIM */
    int set_alpha_to_one, clip_sample;
    double clip_range;
    /* PNDM */
    int skip_prk_steps;
    /* DPM++ */
    int solver_order, heun, lower_order_final, euler_at_final;
    int has_lambda_min_clipped;
    double lambda_min_clipped;
} sched_opts;

struct vf_scheduler {
    vf_sampler kind;
    sched_opts o;
    int steps;                 /* len(timesteps), which the caller runs           */
    float *alphas_cumprod;     /* num_train                                       */
    float *train_sigmas;       /* num_train: sqrt((1 - a) / a), ascending in t    */
    float *timesteps;          /* steps                                           */
    float *sigmas;             /* steps + 1                                       */
    float init_noise_sigma;
    float final_alpha_cumprod; /* DDIM: alphabar "before" timestep 0              */
    int ddim_stride;           /* DDIM: num_train // requested steps              */
    /* stepping state */
    int next_step;
    size_t n;                  /* latent size fixed by the first step (0: unset)  */
    float *scratch;            /* n: Euler ancestral noise, DPM++ current x0      */
    float *prev_x0;            /* n: DPM++ previous x0                            */
    int lower_order_nums;
    float *ets[4];             /* n each: PNDM's past model outputs, oldest first */
    int n_ets;
    float *cur_sample;         /* n: PNDM's sample before its first step          */
    int counter;               /* PNDM's steps taken                              */
};

/* ---- config reading ------------------------------------------------------ */

static const cJSON *cfg_get(const cJSON *c, const char *key)
{
    const cJSON *v = c ? cJSON_GetObjectItemCaseSensitive(c, key) : NULL;
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static vf_status cfg_num(const cJSON *c, const char *key, double *out)
{
    const cJSON *v = cfg_get(c, key);
    if (!v)
        return VF_OK;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return vf_error(VF_ERR_FORMAT, CFG ": '%s' must be a finite number", key);
    *out = v->valuedouble;
    return VF_OK;
}

static vf_status cfg_int(const cJSON *c, const char *key, int lo, int hi, int *out)
{
    const cJSON *v = cfg_get(c, key);
    if (!v)
        return VF_OK;
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d == floor(d)))
        return vf_error(VF_ERR_FORMAT, CFG ": '%s' must be an integer", key);
    if (d < lo || d > hi)
        return vf_error(VF_ERR_UNSUPPORTED, CFG ": '%s' is %g, outside %d..%d", key, d, lo, hi);
    *out = (int)d;
    return VF_OK;
}

static vf_status cfg_bool(const cJSON *c, const char *key, int *out)
{
    const cJSON *v = cfg_get(c, key);
    if (!v)
        return VF_OK;
    if (!cJSON_IsBool(v))
        return vf_error(VF_ERR_FORMAT, CFG ": '%s' must be true or false", key);
    *out = cJSON_IsTrue(v);
    return VF_OK;
}

/* A string key that must be one of names[] (NULL-terminated); *out is its index. */
static vf_status cfg_enum(const cJSON *c, const char *key, const char *const *names, int *out)
{
    const cJSON *v = cfg_get(c, key);
    if (!v)
        return VF_OK;
    if (!cJSON_IsString(v))
        return vf_error(VF_ERR_FORMAT, CFG ": '%s' must be a string", key);
    for (int i = 0; names[i]; i++) {
        if (strcmp(v->valuestring, names[i]) == 0) {
            *out = i;
            return VF_OK;
        }
    }
    return vf_error(VF_ERR_UNSUPPORTED, CFG ": '%s' value \"%.64s\" is not supported", key,
                    v->valuestring);
}

/* A boolean option vramfit does not implement: only false (or absent) is accepted. */
static vf_status cfg_must_be_false(const cJSON *c, const char *key)
{
    int on = 0;
    VF_TRY(cfg_bool(c, key, &on));
    if (on)
        return vf_error(VF_ERR_UNSUPPORTED, CFG ": '%s' true is not supported", key);
    return VF_OK;
}

/* An option whose only supported value is null (or absent). */
static vf_status cfg_must_be_null(const cJSON *c, const char *key)
{
    if (cfg_get(c, key))
        return vf_error(VF_ERR_UNSUPPORTED, CFG ": '%s' must be null (not supported)", key);
    return VF_OK;
}

static void opts_defaults(sched_opts *o, vf_sampler kind)
{
    memset(o, 0, sizeof *o);
    o->num_train = 1000;
    o->beta_start = 0.0001;
    o->beta_end = 0.02;
    o->betas = BETAS_LINEAR;
    o->pred = PRED_EPSILON;
    o->spacing = kind == VF_SAMPLER_DDIM || kind == VF_SAMPLER_PNDM ? SPACING_LEADING : SPACING_LINSPACE;
    o->sigmas = SIGMAS_INTERP;
    o->set_alpha_to_one = kind != VF_SAMPLER_PNDM;
    o->clip_sample = 1;
    o->clip_range = 1.0;
    o->solver_order = 2;
    o->lower_order_final = 1;
}

/* Stable Diffusion's published schedule, for a model without scheduler_config.json. */
static void opts_sd_defaults(sched_opts *o)
{
    o->beta_start = 0.00085;
    o->beta_end = 0.012;
    o->betas = BETAS_SCALED_LINEAR;
    o->steps_offset = 1;
    o->spacing = SPACING_LEADING;
}

static vf_status read_common(const cJSON *c, sched_opts *o, vf_sampler kind)
{
    static const char *const betas[] = {"linear", "scaled_linear", "squaredcos_cap_v2", NULL};
    static const char *const preds[] = {"epsilon", "v_prediction", "sample", NULL};
    static const char *const spacings[] = {"leading", "trailing", "linspace", NULL};
    int b = (int)o->betas, p = (int)o->pred, sp = (int)o->spacing;
    VF_TRY(cfg_int(c, "num_train_timesteps", 2, MAX_TRAIN_STEPS, &o->num_train));
    VF_TRY(cfg_num(c, "beta_start", &o->beta_start));
    VF_TRY(cfg_num(c, "beta_end", &o->beta_end));
    VF_TRY(cfg_enum(c, "beta_schedule", betas, &b));
    VF_TRY(cfg_must_be_null(c, "trained_betas"));
    VF_TRY(cfg_bool(c, "rescale_betas_zero_snr", &o->rescale_zero_snr));
    VF_TRY(cfg_enum(c, "prediction_type", preds, &p));
    VF_TRY(cfg_enum(c, "timestep_spacing", spacings, &sp));
    VF_TRY(cfg_int(c, "steps_offset", 0, MAX_TRAIN_STEPS, &o->steps_offset));
    o->betas = (beta_type)b;
    o->pred = (pred_type)p;
    o->spacing = (spacing_type)sp;
    if ((kind == VF_SAMPLER_EULER_A || kind == VF_SAMPLER_PNDM) && o->pred == PRED_SAMPLE)
        return vf_error(VF_ERR_UNSUPPORTED,
                        CFG ": 'prediction_type' \"sample\" is not supported by %s",
                        kind == VF_SAMPLER_PNDM ? "PNDM" : "Euler ancestral");
    if (o->beta_start < 0 || o->beta_end < 0 || o->beta_start >= 1 || o->beta_end >= 1)
        return vf_error(VF_ERR_UNSUPPORTED, CFG ": 'beta_start'/'beta_end' must lie in [0, 1)");
    return VF_OK;
}

/* use_karras_sigmas / use_exponential_sigmas / final_sigmas_type (Euler, DPM++). */
static vf_status read_sigma_options(const cJSON *c, sched_opts *o)
{
    static const char *const finals[] = {"zero", "sigma_min", NULL};
    int karras = o->sigmas == SIGMAS_KARRAS, expo = 0, fin = o->final_sigma_min;
    VF_TRY(cfg_bool(c, "use_karras_sigmas", &karras));
    VF_TRY(cfg_bool(c, "use_exponential_sigmas", &expo));
    VF_TRY(cfg_must_be_false(c, "use_beta_sigmas"));
    VF_TRY(cfg_enum(c, "final_sigmas_type", finals, &fin));
    if (o->sigmas == SIGMAS_KARRAS)
        karras = 1; /* forced by the sampler override */
    if (karras && expo)
        return vf_error(VF_ERR_UNSUPPORTED,
                        CFG ": 'use_karras_sigmas' and 'use_exponential_sigmas' are exclusive");
    o->sigmas = karras ? SIGMAS_KARRAS : expo ? SIGMAS_EXPONENTIAL : SIGMAS_INTERP;
    o->final_sigma_min = fin;
    return VF_OK;
}

static vf_status read_euler(const cJSON *c, sched_opts *o)
{
    static const char *const interp[] = {"linear", NULL};
    static const char *const ttype[] = {"discrete", NULL};
    int dummy = 0;
    VF_TRY(cfg_enum(c, "interpolation_type", interp, &dummy));
    VF_TRY(cfg_enum(c, "timestep_type", ttype, &dummy));
    VF_TRY(read_sigma_options(c, o));
    o->has_sigma_min = cfg_get(c, "sigma_min") != NULL;
    o->has_sigma_max = cfg_get(c, "sigma_max") != NULL;
    VF_TRY(cfg_num(c, "sigma_min", &o->sigma_min));
    VF_TRY(cfg_num(c, "sigma_max", &o->sigma_max));
    if ((o->has_sigma_min && o->sigma_min <= 0) || (o->has_sigma_max && o->sigma_max <= 0))
        return vf_error(VF_ERR_UNSUPPORTED, CFG ": 'sigma_min'/'sigma_max' must be positive");
    return VF_OK;
}

static vf_status read_ddim(const cJSON *c, sched_opts *o)
{
    VF_TRY(cfg_bool(c, "set_alpha_to_one", &o->set_alpha_to_one));
    VF_TRY(cfg_bool(c, "clip_sample", &o->clip_sample));
    VF_TRY(cfg_num(c, "clip_sample_range", &o->clip_range));
    VF_TRY(cfg_must_be_false(c, "thresholding"));
    return VF_OK;
}

/* forced: the pndm override, which runs PLMS (skip_prk_steps) whatever the config says. */
static vf_status read_pndm(const cJSON *c, sched_opts *o, int forced)
{
    VF_TRY(cfg_bool(c, "set_alpha_to_one", &o->set_alpha_to_one));
    VF_TRY(cfg_bool(c, "skip_prk_steps", &o->skip_prk_steps));
    if (forced)
        o->skip_prk_steps = 1;
    if (!o->skip_prk_steps)
        return vf_error(VF_ERR_UNSUPPORTED,
                        CFG ": 'skip_prk_steps' false (PNDM's Runge-Kutta warm-up) is not supported");
    return VF_OK;
}

/* forced: the dpmpp_2m override, whose algorithm, order and Karras sigmas win
 * over the config's as from_config(config, **overrides) does. */
static vf_status read_dpm(const cJSON *c, sched_opts *o, int forced)
{
    /* diffusers maps the retired "deis" and "logrho"/"bh1"/"bh2" onto these. */
    static const char *const algos[] = {"dpmsolver++", "deis", NULL};
    static const char *const solvers[] = {"midpoint", "heun", "logrho", "bh1", "bh2", NULL};
    int algo = 0, solver = 0;
    if (forced) {
        o->sigmas = SIGMAS_KARRAS;
    } else {
        VF_TRY(cfg_enum(c, "algorithm_type", algos, &algo));
        VF_TRY(cfg_int(c, "solver_order", 1, 3, &o->solver_order));
        if (o->solver_order == 3)
            return vf_error(VF_ERR_UNSUPPORTED, CFG ": 'solver_order' 3 is not supported");
    }
    VF_TRY(cfg_enum(c, "solver_type", solvers, &solver));
    o->heun = solver == 1;
    VF_TRY(cfg_bool(c, "lower_order_final", &o->lower_order_final));
    VF_TRY(cfg_bool(c, "euler_at_final", &o->euler_at_final));
    VF_TRY(cfg_must_be_false(c, "thresholding"));
    VF_TRY(cfg_must_be_false(c, "use_lu_lambdas"));
    VF_TRY(cfg_must_be_false(c, "use_flow_sigmas"));
    VF_TRY(cfg_must_be_false(c, "use_dynamic_shifting"));
    VF_TRY(cfg_must_be_null(c, "variance_type"));
    o->has_lambda_min_clipped = cfg_get(c, "lambda_min_clipped") != NULL;
    VF_TRY(cfg_num(c, "lambda_min_clipped", &o->lambda_min_clipped));
    return read_sigma_options(c, o);
}

static vf_status class_to_sampler(const cJSON *config, vf_sampler *kind)
{
    static const struct { const char *name; vf_sampler kind; } classes[] = {
        {"EulerDiscreteScheduler", VF_SAMPLER_EULER},
        {"EulerAncestralDiscreteScheduler", VF_SAMPLER_EULER_A},
        {"DDIMScheduler", VF_SAMPLER_DDIM},
        {"DPMSolverMultistepScheduler", VF_SAMPLER_DPMPP_2M},
        {"PNDMScheduler", VF_SAMPLER_PNDM},
    };
    if (!config) {
        *kind = VF_SAMPLER_EULER;
        return VF_OK;
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(config, "_class_name");
    if (!v)
        return vf_error(VF_ERR_FORMAT, CFG ": '_class_name' is missing (pass a sampler instead)");
    if (!cJSON_IsString(v))
        return vf_error(VF_ERR_FORMAT, CFG ": '_class_name' must be a string");
    for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++) {
        if (strcmp(v->valuestring, classes[i].name) == 0) {
            *kind = classes[i].kind;
            return VF_OK;
        }
    }
    return vf_error(VF_ERR_UNSUPPORTED,
                    CFG ": '_class_name' \"%.64s\" is not supported (choose a sampler: euler, "
                    "euler_a, ddim, dpmpp_2m, pndm)",
                    v->valuestring);
}

static vf_status read_options(const cJSON *config, vf_sampler sampler, vf_sampler *kind,
                              sched_opts *o)
{
    if (sampler == VF_SAMPLER_DEFAULT)
        VF_TRY(class_to_sampler(config, kind));
    else
        *kind = sampler;
    opts_defaults(o, *kind);
    if (!config)
        opts_sd_defaults(o);
    VF_TRY(read_common(config, o, *kind));
    switch (*kind) {
    case VF_SAMPLER_EULER: return read_euler(config, o);
    case VF_SAMPLER_EULER_A: return VF_OK;
    case VF_SAMPLER_DDIM: return read_ddim(config, o);
    case VF_SAMPLER_DPMPP_2M: return read_dpm(config, o, sampler == VF_SAMPLER_DPMPP_2M);
    case VF_SAMPLER_PNDM: return read_pndm(config, o, sampler == VF_SAMPLER_PNDM);
    default: break;
    }
    return vf_error(VF_ERR_INVALID_ARG, "sampler: unknown value %d", (int)sampler);
}

/* ---- training schedule --------------------------------------------------- */

/* out is (n,): torch.linspace(start, end, n, dtype=float32) on the CPU, whose
 * x86-64 build contracts start + step * i into one fused multiply-add. */
static void torch_linspace_f32(float start, float end, int n, float *out)
{
    float step = (end - start) / (float)(n - 1);
    int half = n / 2;
    for (int i = 0; i < n; i++)
        out[i] = i < half ? fmaf(step, (float)i, start) : fmaf(-step, (float)(n - 1 - i), end);
}

/* out is (n,): torch.cumprod(x) for float32, which accumulates in float64. */
static void torch_cumprod_f32(const float *x, int n, float *out)
{
    double acc = 1.0;
    for (int i = 0; i < n; i++) {
        acc *= x[i];
        out[i] = (float)acc;
    }
}

/* betas is (n,): the Glide cosine schedule, computed in float64 like diffusers. */
static void cosine_betas(int n, float *betas)
{
    const double pi = 3.14159265358979323846;
    for (int i = 0; i < n; i++) {
        double t1 = (double)i / n, t2 = (double)(i + 1) / n;
        double a1 = pow(cos((t1 + 0.008) / 1.008 * pi / 2), 2.0);
        double a2 = pow(cos((t2 + 0.008) / 1.008 * pi / 2), 2.0);
        double b = 1 - a2 / a1;
        betas[i] = (float)(b < 0.999 ? b : 0.999);
    }
}

/* betas is (n,), rewritten: rescale_zero_terminal_snr() in float32. */
static void rescale_zero_snr(float *betas, float *tmp, int n)
{
    for (int i = 0; i < n; i++)
        tmp[i] = 1.0f - betas[i];
    torch_cumprod_f32(tmp, n, tmp);
    for (int i = 0; i < n; i++)
        tmp[i] = sqrtf(tmp[i]);
    float first = tmp[0], last = tmp[n - 1];
    float scale = first / (first - last);
    for (int i = 0; i < n; i++) {
        float v = (tmp[i] - last) * scale;
        tmp[i] = v * v;
    }
    betas[0] = 1.0f - tmp[0];
    for (int i = 1; i < n; i++)
        betas[i] = 1.0f - tmp[i] / tmp[i - 1];
}

static vf_status training_schedule(vf_scheduler *s)
{
    const sched_opts *o = &s->o;
    int n = o->num_train;
    float *betas = vf_malloc(sizeof(float) * (size_t)n);
    if (!betas)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "scheduler");
    if (o->betas == BETAS_LINEAR)
        torch_linspace_f32((float)o->beta_start, (float)o->beta_end, n, betas);
    else if (o->betas == BETAS_SCALED_LINEAR)
        torch_linspace_f32((float)sqrt(o->beta_start), (float)sqrt(o->beta_end), n, betas);
    else
        cosine_betas(n, betas);
    if (o->betas == BETAS_SCALED_LINEAR)
        for (int i = 0; i < n; i++)
            betas[i] = betas[i] * betas[i];
    if (o->rescale_zero_snr)
        rescale_zero_snr(betas, s->alphas_cumprod, n);
    for (int i = 0; i < n; i++)
        betas[i] = 1.0f - betas[i];
    torch_cumprod_f32(betas, n, s->alphas_cumprod);
    vf_free(betas);
    /* Close to 0 without being 0, so the first sigma is finite (not DDIM's way). */
    if (o->rescale_zero_snr && s->kind != VF_SAMPLER_DDIM)
        s->alphas_cumprod[n - 1] = 0x1p-24f;
    for (int i = 0; i < n; i++) {
        float a = s->alphas_cumprod[i];
        s->train_sigmas[i] = sqrtf((1.0f - a) / a);
    }
    return VF_OK;
}

/* ---- timesteps ----------------------------------------------------------- */

/* Rounds half to even, as numpy's round(). */
static double np_round(double x) { return nearbyint(x); }

/* out is (num,): numpy.linspace(start, stop, num) in float64. */
static void np_linspace(double start, double stop, int num, double *out)
{
    double step = num > 1 ? (stop - start) / (num - 1) : 0;
    for (int i = 0; i < num; i++)
        out[i] = (double)i * step + start;
    if (num > 1)
        out[num - 1] = stop;
}

/* numpy.arange(start, 0, -step) for start, step > 0: its length rule and its fill
 * (start + i * (second - start)). out has room for cap values; returns the length. */
static int np_arange_down(double start, double step, double *out, int cap)
{
    double len = ceil((0.0 - start) / -step);
    int n = len > cap ? cap : (int)len;
    double delta = (start + -step) - start;
    for (int i = 0; i < n; i++)
        out[i] = i == 0 ? start : i == 1 ? start + -step : start + i * delta;
    return n;
}

static void reverse(double *t, int n)
{
    for (int i = 0; i < n / 2; i++) {
        double tmp = t[i];
        t[i] = t[n - 1 - i];
        t[n - 1 - i] = tmp;
    }
}

/* Timesteps, descending, for the Euler / Euler ancestral / DDIM / PNDM spacings:
 * float32 values for the Euler pair, integers for the others. Returns their
 * count (>= 1). */
static int spacing_timesteps(const sched_opts *o, vf_sampler kind, int steps, double *t, int cap)
{
    int N = o->num_train, n = steps;
    if (o->spacing == SPACING_LINSPACE) {
        np_linspace(0, N - 1, steps, t);
    } else if (o->spacing == SPACING_LEADING) {
        int ratio = N / steps;
        for (int i = 0; i < steps; i++)
            t[i] = (double)i * ratio;
    } else {
        n = np_arange_down(N, (double)N / steps, t, cap);
    }
    if (o->spacing != SPACING_TRAILING) /* leading and linspace are built ascending */
        reverse(t, n);
    int integral = kind == VF_SAMPLER_DDIM || kind == VF_SAMPLER_PNDM;
    for (int i = 0; i < n; i++) {
        if (integral || o->spacing == SPACING_TRAILING)
            t[i] = np_round(t[i]);
        if (!integral)
            t[i] = (float)t[i]; /* astype(float32) before the offset, as diffusers */
        if (o->spacing == SPACING_LEADING)
            t[i] += o->steps_offset;
        else if (o->spacing == SPACING_TRAILING)
            t[i] -= 1;
    }
    return n;
}

/* DPM-Solver's own spacings: steps + 1 points with the last dropped, up to
 * last_timestep (lambda_min_clipped). */
static int dpm_timesteps(const vf_scheduler *s, int steps, double *t, int cap)
{
    const sched_opts *o = &s->o;
    int N = o->num_train, clipped = 0, n = steps;
    if (o->has_lambda_min_clipped) {
        for (int k = 0; k < N; k++) {
            float a = s->alphas_cumprod[k];
            float lambda = logf(sqrtf(a)) - logf(sqrtf(1.0f - a));
            clipped += lambda < o->lambda_min_clipped;
        }
    }
    int last = N - clipped;
    if (o->spacing == SPACING_LINSPACE) {
        np_linspace(0, last - 1, steps + 1, t); /* reversed, the last (0) dropped */
        reverse(t, steps + 1);
        for (int i = 0; i < steps; i++)
            t[i] = np_round(t[i]);
    } else if (o->spacing == SPACING_LEADING) {
        int ratio = last / (steps + 1);
        for (int i = 0; i < steps; i++)
            t[i] = (double)(steps - i) * ratio + o->steps_offset;
    } else {
        n = np_arange_down(last, (double)N / steps, t, cap);
        for (int i = 0; i < n; i++)
            t[i] = np_round(t[i]) - 1;
    }
    return n;
}

/* ---- sigmas ------------------------------------------------------------- */

/* numpy.interp(x, arange(n), fp) with fp float32 values, in float64. */
static double np_interp_index(double x, const float *fp, int n)
{
    if (isnan(x))
        return x;
    if (x <= 0)
        return fp[0];
    if (x >= n - 1)
        return fp[n - 1];
    int j = (int)floor(x);
    double slope = (double)fp[j + 1] - (double)fp[j];
    return slope * (x - j) + fp[j];
}

/* diffusers' _sigma_to_t: the fractional training index of sigma, by linear
 * interpolation of log sigma (log_sigmas is float32, log sigma float64). */
static double sigma_to_t(double sigma, const float *log_sigmas, int n)
{
    double ls = log(sigma > 1e-10 ? sigma : 1e-10);
    int low = 0;
    for (int k = 0; k < n; k++)
        if (ls - log_sigmas[k] >= 0)
            low = k;
    if (low > n - 2)
        low = n - 2;
    float lo = log_sigmas[low], hi = log_sigmas[low + 1];
    double w = ((double)lo - ls) / (double)(lo - hi);
    w = w < 0 ? 0 : w > 1 ? 1 : w;
    return (1 - w) * low + w * (low + 1);
}

/* sig is (n,) descending, rewritten: Karras et al.'s rho = 7 schedule between its ends. */
static void karras(double *sig, int n, double smin, double smax)
{
    double min_inv = pow(smin, 1 / 7.0), max_inv = pow(smax, 1 / 7.0);
    np_linspace(0, 1, n, sig); /* the ramp */
    for (int i = 0; i < n; i++)
        sig[i] = pow(max_inv + sig[i] * (min_inv - max_inv), 7.0);
}

/* sig is (n,) rewritten: exp(linspace(log smax, log smin, n)). */
static void exponential(double *sig, int n, double smin, double smax)
{
    np_linspace(log(smax), log(smin), n, sig);
    for (int i = 0; i < n; i++)
        sig[i] = exp(sig[i]);
}

/* ---- building the schedule ---------------------------------------------- */

static float final_sigma(const vf_scheduler *s)
{
    if (!s->o.final_sigma_min)
        return 0.0f;
    float a = s->alphas_cumprod[0];
    return sqrtf((1.0f - a) / a);
}

/* Replaces the n interpolated sigmas by Karras or exponential ones between
 * [smin, smax] and maps them back to (fractional) training timesteps. */
static vf_status resample_sigmas(const vf_scheduler *s, double *sig, double *t, int n, double smin,
                                 double smax)
{
    int N = s->o.num_train;
    float *log_sigmas = vf_malloc(sizeof(float) * (size_t)N);
    if (!log_sigmas)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "scheduler");
    for (int k = 0; k < N; k++)
        log_sigmas[k] = logf(s->train_sigmas[k]);
    if (s->o.sigmas == SIGMAS_KARRAS)
        karras(sig, n, smin, smax);
    else
        exponential(sig, n, smin, smax);
    for (int i = 0; i < n; i++)
        t[i] = sigma_to_t(sig[i], log_sigmas, N);
    vf_free(log_sigmas);
    return VF_OK;
}

/* Euler and Euler ancestral: timesteps from the spacing, sigmas interpolated at
 * them (then optionally resampled), float32 timesteps. */
static vf_status euler_schedule(vf_scheduler *s, int steps, double *t, double *sig, int cap)
{
    const sched_opts *o = &s->o;
    int N = o->num_train;
    int n = spacing_timesteps(o, s->kind, steps, t, cap);
    for (int i = 0; i < n; i++)
        sig[i] = np_interp_index(t[i], s->train_sigmas, N);
    if (o->sigmas != SIGMAS_INTERP) {
        double smin = o->has_sigma_min ? o->sigma_min : sig[n - 1];
        double smax = o->has_sigma_max ? o->sigma_max : sig[0];
        VF_TRY(resample_sigmas(s, sig, t, n, smin, smax));
    }
    s->steps = n;
    for (int i = 0; i < n; i++) {
        s->timesteps[i] = (float)t[i];
        s->sigmas[i] = (float)sig[i];
    }
    s->sigmas[n] = final_sigma(s);
    float mx = 0.0f;
    for (int i = 0; i <= n; i++)
        mx = s->sigmas[i] > mx ? s->sigmas[i] : mx;
    s->init_noise_sigma = o->spacing == SPACING_LEADING ? sqrtf(mx * mx + 1.0f) : mx;
    return VF_OK;
}

static vf_status ddim_schedule(vf_scheduler *s, int steps, double *t, int cap)
{
    const sched_opts *o = &s->o;
    int N = o->num_train;
    int n = spacing_timesteps(o, s->kind, steps, t, cap);
    for (int i = 0; i < n; i++) {
        if (t[i] < 0 || t[i] > N - 1)
            return vf_error(VF_ERR_INVALID_ARG,
                            "steps: %d steps with this spacing give timestep %g, outside 0..%d", steps,
                            t[i], N - 1);
        s->timesteps[i] = (float)t[i];
        s->sigmas[i] = s->train_sigmas[(int)t[i]];
    }
    s->steps = n;
    s->sigmas[n] = 0.0f;
    s->ddim_stride = N / steps;
    s->final_alpha_cumprod = o->set_alpha_to_one ? 1.0f : s->alphas_cumprod[0];
    s->init_noise_sigma = 1.0f;
    return VF_OK;
}

/* PLMS: the spacing's timesteps with the second-to-last repeated (the second
 * model call re-evaluates the first step), in descending order. */
static vf_status pndm_schedule(vf_scheduler *s, int steps, double *t, int cap)
{
    const sched_opts *o = &s->o;
    int N = o->num_train;
    int n = spacing_timesteps(o, s->kind, steps, t, cap); /* descending */
    if (n >= 2) {
        memmove(t + 2, t + 1, sizeof(double) * (size_t)(n - 1));
        t[1] = t[2];
        n++;
    }
    for (int i = 0; i < n; i++) {
        if (t[i] < 0 || t[i] > N - 1)
            return vf_error(VF_ERR_INVALID_ARG,
                            "steps: %d steps with this spacing give timestep %g, outside 0..%d", steps,
                            t[i], N - 1);
        s->timesteps[i] = (float)t[i];
        s->sigmas[i] = s->train_sigmas[(int)t[i]];
    }
    s->steps = n;
    s->sigmas[n] = 0.0f;
    s->ddim_stride = N / steps;
    s->final_alpha_cumprod = o->set_alpha_to_one ? 1.0f : s->alphas_cumprod[0];
    s->init_noise_sigma = 1.0f;
    return VF_OK;
}

static vf_status dpm_schedule(vf_scheduler *s, int steps, double *t, double *sig, int cap)
{
    const sched_opts *o = &s->o;
    int N = o->num_train;
    int n = dpm_timesteps(s, steps, t, cap);
    if (o->sigmas != SIGMAS_INTERP) {
        n = steps;
        VF_TRY(resample_sigmas(s, sig, t, n, s->train_sigmas[0], s->train_sigmas[N - 1]));
        for (int i = 0; i < n; i++) /* int64 timesteps: rounded (Karras) or truncated */
            t[i] = o->sigmas == SIGMAS_KARRAS && o->betas != BETAS_COSINE ? np_round(t[i]) : trunc(t[i]);
    } else {
        for (int i = 0; i < n; i++)
            sig[i] = np_interp_index(t[i], s->train_sigmas, N);
    }
    s->steps = n;
    for (int i = 0; i < n; i++) {
        s->timesteps[i] = (float)t[i];
        s->sigmas[i] = (float)sig[i];
    }
    s->sigmas[n] = final_sigma(s);
    /* Equal neighbours make the second-order update divide by zero; only the
     * final sigma_min may equal the last sigma (that step is a no-op). */
    for (int i = 0; i < n; i++) {
        float next = s->sigmas[i + 1], cur = s->sigmas[i];
        if (i + 1 < n ? !(next < cur) : !(next <= cur))
            return vf_error(VF_ERR_INVALID_ARG,
                            "steps: %d steps give a degenerate DPM++ schedule (sigma %d does not decrease)",
                            steps, i + 1);
    }
    s->init_noise_sigma = 1.0f;
    return VF_OK;
}

static vf_status build_schedule(vf_scheduler *s, int steps)
{
    int cap = steps + 3; /* arange may give one more, PLMS repeats one, DPM builds steps + 1 */
    vf_status st = VF_OK;
    double *t = vf_malloc(sizeof(double) * (size_t)cap);
    double *sig = vf_malloc(sizeof(double) * (size_t)cap);
    s->timesteps = vf_malloc(sizeof(float) * (size_t)cap);
    s->sigmas = vf_malloc(sizeof(float) * (size_t)(cap + 1));
    if (!t || !sig || !s->timesteps || !s->sigmas) {
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "scheduler");
        goto out;
    }
    switch (s->kind) {
    case VF_SAMPLER_DDIM: st = ddim_schedule(s, steps, t, cap); break;
    case VF_SAMPLER_DPMPP_2M: st = dpm_schedule(s, steps, t, sig, cap); break;
    case VF_SAMPLER_PNDM: st = pndm_schedule(s, steps, t, cap); break;
    default: st = euler_schedule(s, steps, t, sig, cap); break;
    }
out:
    vf_free(t);
    vf_free(sig);
    return st;
}

/* ---- public: creation and queries --------------------------------------- */

static const char *const sampler_names[] = {"default", "euler", "euler_a", "ddim", "dpmpp_2m", "pndm"};

const char *vf_sampler_name(vf_sampler s)
{
    if ((unsigned)s < sizeof sampler_names / sizeof sampler_names[0])
        return sampler_names[s];
    return "unknown";
}

vf_status vf_sampler_parse(const char *name, vf_sampler *out)
{
    for (size_t i = 0; name && i < sizeof sampler_names / sizeof sampler_names[0]; i++) {
        if (strcmp(name, sampler_names[i]) == 0) {
            *out = (vf_sampler)i;
            return VF_OK;
        }
    }
    return vf_error(VF_ERR_INVALID_ARG,
                    "sampler: \"%.64s\" is not one of default, euler, euler_a, ddim, dpmpp_2m, pndm",
                    name ? name : "(null)");
}

/* The per-size stepping buffers (allocated by the first step of a run). */
static void free_buffers(vf_scheduler *s)
{
    float **bufs[] = {&s->scratch, &s->prev_x0, &s->ets[0], &s->ets[1], &s->ets[2], &s->ets[3],
                      &s->cur_sample};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        vf_free(*bufs[i]);
        *bufs[i] = NULL;
    }
    s->n = 0;
}

void vf_scheduler_free(vf_scheduler *s)
{
    if (!s)
        return;
    vf_free(s->alphas_cumprod);
    vf_free(s->train_sigmas);
    vf_free(s->timesteps);
    vf_free(s->sigmas);
    free_buffers(s);
    vf_free(s);
}

vf_status vf_scheduler_create(const cJSON *config, vf_sampler sampler, int steps,
                              vf_scheduler **out)
{
    vf_status st = VF_OK;
    *out = NULL;
    if ((unsigned)sampler > VF_SAMPLER_PNDM)
        return vf_error(VF_ERR_INVALID_ARG, "sampler: unknown value %d", (int)sampler);
    if (config && !cJSON_IsObject(config))
        return vf_error(VF_ERR_FORMAT, CFG ": not a JSON object");
    vf_scheduler *s = vf_calloc(1, sizeof *s);
    if (!s)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "scheduler");
    st = read_options(config, sampler, &s->kind, &s->o);
    if (st != VF_OK)
        goto fail;
    if (steps < 1 || steps > s->o.num_train) {
        st = vf_error(VF_ERR_INVALID_ARG, "steps: %d is outside 1..%d (num_train_timesteps)", steps,
                      s->o.num_train);
        goto fail;
    }
    s->alphas_cumprod = vf_malloc(sizeof(float) * (size_t)s->o.num_train);
    s->train_sigmas = vf_malloc(sizeof(float) * (size_t)s->o.num_train);
    if (!s->alphas_cumprod || !s->train_sigmas) {
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "scheduler");
        goto fail;
    }
    if ((st = training_schedule(s)) != VF_OK || (st = build_schedule(s, steps)) != VF_OK)
        goto fail;
    *out = s;
    return VF_OK;
fail:
    vf_scheduler_free(s);
    return st;
}

vf_sampler vf_scheduler_kind(const vf_scheduler *s) { return s->kind; }

const char *vf_scheduler_class(const vf_scheduler *s)
{
    switch (s->kind) {
    case VF_SAMPLER_EULER: return "EulerDiscreteScheduler";
    case VF_SAMPLER_EULER_A: return "EulerAncestralDiscreteScheduler";
    case VF_SAMPLER_DDIM: return "DDIMScheduler";
    case VF_SAMPLER_DPMPP_2M: return "DPMSolverMultistepScheduler";
    case VF_SAMPLER_PNDM: return "PNDMScheduler";
    default: return "unknown";
    }
}

int vf_scheduler_steps(const vf_scheduler *s) { return s->steps; }

float vf_scheduler_timestep(const vf_scheduler *s, int i)
{
    return i >= 0 && i < s->steps ? s->timesteps[i] : NAN;
}

float vf_scheduler_sigma(const vf_scheduler *s, int i)
{
    return i >= 0 && i <= s->steps ? s->sigmas[i] : NAN;
}

float vf_scheduler_init_noise_sigma(const vf_scheduler *s) { return s->init_noise_sigma; }

void vf_scheduler_scale_model_input(const vf_scheduler *s, int i, float *x, size_t n)
{
    if (s->kind != VF_SAMPLER_EULER && s->kind != VF_SAMPLER_EULER_A)
        return;
    if (i < 0 || i >= s->steps)
        return;
    float sigma = s->sigmas[i];
    float d = sqrtf(sigma * sigma + 1.0f);
    for (size_t j = 0; j < n; j++)
        x[j] = x[j] / d;
}

void vf_scheduler_reset(vf_scheduler *s)
{
    s->next_step = 0;
    s->lower_order_nums = 0;
    s->n_ets = 0;
    s->counter = 0;
}

/* ---- stepping ------------------------------------------------------------ */

/* Euler's x0 estimate for sample x and model output m at sigma (float32). */
static float euler_x0(pred_type p, float sigma, float x, float m)
{
    if (p == PRED_EPSILON)
        return x - sigma * m;
    if (p == PRED_SAMPLE)
        return m;
    float c_out = -sigma / sqrtf(sigma * sigma + 1.0f);
    float c_skip = sigma * sigma + 1.0f;
    return m * c_out + x / c_skip;
}

// x and m are (n,)
static void euler_step(const vf_scheduler *s, int i, const float *m, float *x, size_t n)
{
    float sigma = s->sigmas[i];
    float dt = s->sigmas[i + 1] - sigma;
    for (size_t j = 0; j < n; j++) {
        float x0 = euler_x0(s->o.pred, sigma, x[j], m[j]);
        float d = (x[j] - x0) / sigma;
        x[j] = x[j] + d * dt;
    }
}

// x and m are (n,); s->scratch receives n normals from rng
static void euler_a_step(vf_scheduler *s, int i, const float *m, float *x, size_t n, vf_rng *rng)
{
    float sf = s->sigmas[i], st = s->sigmas[i + 1];
    float sf2 = sf * sf, st2 = st * st;
    float up = sqrtf(st2 * (sf2 - st2) / sf2);
    float down = sqrtf(st2 - up * up);
    float dt = down - sf;
    vf_rng_randn(rng, s->scratch, n);
    for (size_t j = 0; j < n; j++) {
        float x0 = euler_x0(s->o.pred, sf, x[j], m[j]);
        float d = (x[j] - x0) / sf;
        float prev = x[j] + d * dt;
        x[j] = prev + s->scratch[j] * up;
    }
}

// x and m are (n,)
static void ddim_step(const vf_scheduler *s, int i, const float *m, float *x, size_t n)
{
    int t = (int)s->timesteps[i];
    int prev_t = t - s->ddim_stride;
    float a_t = s->alphas_cumprod[t];
    float a_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t] : s->final_alpha_cumprod;
    float b_t = 1.0f - a_t;
    float sa = sqrtf(a_t), sb = sqrtf(b_t);
    float dir = sqrtf(1.0f - a_prev - 0.0f); /* std_dev_t = eta * ... = 0 */
    float sa_prev = sqrtf(a_prev);
    float lo = -(float)s->o.clip_range, hi = (float)s->o.clip_range;
    for (size_t j = 0; j < n; j++) {
        float x0, eps;
        if (s->o.pred == PRED_EPSILON) {
            x0 = (x[j] - sb * m[j]) / sa;
            eps = m[j];
        } else if (s->o.pred == PRED_SAMPLE) {
            x0 = m[j];
            eps = (x[j] - sa * x0) / sb;
        } else {
            x0 = sa * x[j] - sb * m[j];
            eps = sa * m[j] + sb * x[j];
        }
        if (s->o.clip_sample)
            x0 = x0 < lo ? lo : x0 > hi ? hi : x0;
        x[j] = sa_prev * x0 + dir * eps;
    }
}

typedef struct { float alpha, sigma, lambda; } vp_point;

/* _sigma_to_alpha_sigma_t and lambda = log(alpha) - log(sigma), in float32. */
static vp_point vp_at(float sigma)
{
    vp_point p;
    p.alpha = 1.0f / sqrtf(sigma * sigma + 1.0f);
    p.sigma = sigma * p.alpha;
    p.lambda = logf(p.alpha) - logf(p.sigma);
    return p;
}

// x, m are (n,); x0 (n,) receives DPM-Solver++'s data prediction at step i
static void dpm_x0(const vf_scheduler *s, int i, const float *m, const float *x, float *x0, size_t n)
{
    vp_point p = vp_at(s->sigmas[i]);
    for (size_t j = 0; j < n; j++) {
        if (s->o.pred == PRED_EPSILON)
            x0[j] = (x[j] - p.sigma * m[j]) / p.alpha;
        else if (s->o.pred == PRED_SAMPLE)
            x0[j] = m[j];
        else
            x0[j] = p.alpha * x[j] - p.sigma * m[j];
    }
}

// x, d0 are (n,): the first-order (DDIM-like) update from sigmas[i] to sigmas[i + 1]
static void dpm_first_order(const vf_scheduler *s, int i, const float *d0, float *x, size_t n)
{
    if (s->sigmas[i + 1] == 0.0f) { /* the limit of the update below: exactly d0 */
        memcpy(x, d0, n * sizeof *x);
        return;
    }
    vp_point t = vp_at(s->sigmas[i + 1]), src = vp_at(s->sigmas[i]);
    float h = t.lambda - src.lambda;
    float c1 = t.sigma / src.sigma;
    float c2 = t.alpha * (expf(-h) - 1.0f);
    for (size_t j = 0; j < n; j++)
        x[j] = c1 * x[j] - c2 * d0[j];
}

// x, m0 (current x0), m1 (previous x0) are (n,): multistep second-order update
static void dpm_second_order(const vf_scheduler *s, int i, const float *m0, const float *m1, float *x,
                             size_t n)
{
    vp_point t = vp_at(s->sigmas[i + 1]), s0 = vp_at(s->sigmas[i]), s1 = vp_at(s->sigmas[i - 1]);
    float h = t.lambda - s0.lambda, h0 = s0.lambda - s1.lambda;
    float r0 = h0 / h;
    float inv_r0 = 1.0f / r0;
    float c1 = t.sigma / s0.sigma;
    float em1 = expf(-h) - 1.0f;
    float c2 = t.alpha * em1;
    float c3 = s->o.heun ? t.alpha * (em1 / h + 1.0f) : 0.5f * (t.alpha * em1);
    for (size_t j = 0; j < n; j++) {
        float d1 = inv_r0 * (m0[j] - m1[j]);
        float a = c1 * x[j] - c2 * m0[j];
        x[j] = s->o.heun ? a + c3 * d1 : a - c3 * d1;
    }
}

static void dpm_step(vf_scheduler *s, int i, const float *m, float *x, size_t n)
{
    const sched_opts *o = &s->o;
    int last = i == s->steps - 1;
    int lower_final = last && (o->euler_at_final || (o->lower_order_final && s->steps < 15) ||
                               !o->final_sigma_min);
    float *x0 = s->scratch;
    dpm_x0(s, i, m, x, x0, n);
    if (o->solver_order == 1 || s->lower_order_nums < 1 || lower_final)
        dpm_first_order(s, i, x0, x, n);
    else
        dpm_second_order(s, i, x0, s->prev_x0, x, n);
    if (s->lower_order_nums < o->solver_order)
        s->lower_order_nums++;
    s->scratch = s->prev_x0; /* the current x0 becomes the previous one */
    s->prev_x0 = x0;
}

/* PNDM's linear multistep combination of the stored model outputs (plus m at the
 * second call), for element j; the same float32 operations as diffusers. */
static float plms_eps(const vf_scheduler *s, const float *m, size_t j)
{
    float *const *e = s->ets + s->n_ets - 1; /* e[0] newest, e[-1] the one before */
    if (s->n_ets == 1)
        return s->counter == 0 ? m[j] : (m[j] + e[0][j]) / 2.0f;
    if (s->n_ets == 2)
        return (3.0f * e[0][j] - e[-1][j]) / 2.0f;
    if (s->n_ets == 3)
        return (23.0f * e[0][j] - 16.0f * e[-1][j] + 5.0f * e[-2][j]) / 12.0f;
    return (float)(1.0 / 24) * (55.0f * e[0][j] - 59.0f * e[-1][j] + 37.0f * e[-2][j] - 9.0f * e[-3][j]);
}

// x and m are (n,): step_plms with skip_prk_steps, then _get_prev_sample
static void pndm_step(vf_scheduler *s, int i, const float *m, float *x, size_t n)
{
    int t = (int)s->timesteps[i], prev_t = t - s->ddim_stride;
    if (s->counter != 1) { /* keep the last 4 model outputs */
        if (s->n_ets == 4) {
            float *oldest = s->ets[0];
            memmove(s->ets, s->ets + 1, 3 * sizeof s->ets[0]);
            s->ets[3] = oldest;
            s->n_ets = 3;
        }
        memcpy(s->ets[s->n_ets++], m, n * sizeof *m);
    } else { /* the repeated timestep: redo step 0 from the saved sample */
        prev_t = t;
        t = t + s->ddim_stride;
    }
    const float *sample = s->counter == 1 ? s->cur_sample : x;
    if (s->counter == 0)
        memcpy(s->cur_sample, x, n * sizeof *x);
    float a_t = s->alphas_cumprod[t];
    float a_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t] : s->final_alpha_cumprod;
    float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    float sample_coeff = sqrtf(a_prev / a_t);
    float denom = a_t * sqrtf(b_prev) + sqrtf(a_t * b_t * a_prev);
    float diff = a_prev - a_t;
    for (size_t j = 0; j < n; j++) {
        float e = plms_eps(s, m, j);
        if (s->o.pred == PRED_V)
            e = sqrtf(a_t) * e + sqrtf(b_t) * sample[j];
        x[j] = sample_coeff * sample[j] - diff * e / denom;
    }
    s->counter++;
}

/* Fixes the latent size for a run at its first step and allocates the per-size
 * buffers (all or none). */
static vf_status ensure_buffers(vf_scheduler *s, size_t n)
{
    if (s->n == n)
        return VF_OK;
    if (s->next_step != 0)
        return vf_error(VF_ERR_INVALID_ARG, "n: %zu latent values, but earlier steps had %zu", n, s->n);
    free_buffers(s);
    float **want[6];
    int k = 0;
    if (s->kind == VF_SAMPLER_EULER_A || s->kind == VF_SAMPLER_DPMPP_2M)
        want[k++] = &s->scratch;
    if (s->kind == VF_SAMPLER_DPMPP_2M)
        want[k++] = &s->prev_x0;
    if (s->kind == VF_SAMPLER_PNDM) {
        for (int e = 0; e < 4; e++)
            want[k++] = &s->ets[e];
        want[k++] = &s->cur_sample;
    }
    for (int i = 0; i < k; i++) {
        *want[i] = vf_calloc(n, sizeof(float));
        if (*want[i])
            continue;
        for (int j = 0; j < i; j++) {
            vf_free(*want[j]);
            *want[j] = NULL;
        }
        return vf_error_prefix(VF_ERR_NO_MEMORY, "scheduler");
    }
    s->n = n;
    return VF_OK;
}

vf_status vf_scheduler_step(vf_scheduler *s, int i, const float *model_out, float *latents,
                            size_t n, vf_rng *rng)
{
    if (!s || !model_out || !latents || n == 0)
        return vf_error(VF_ERR_INVALID_ARG, "scheduler step: NULL handle or buffer, or n = 0");
    if (i < 0 || i >= s->steps)
        return vf_error(VF_ERR_INVALID_ARG, "step: %d is outside 0..%d", i, s->steps - 1);
    if (i != s->next_step)
        return vf_error(VF_ERR_INVALID_ARG, "step: %d taken out of order (expected %d)", i,
                        s->next_step);
    if (s->kind == VF_SAMPLER_EULER_A && !rng)
        return vf_error(VF_ERR_INVALID_ARG, "rng: Euler ancestral needs a random generator");
    VF_TRY(ensure_buffers(s, n));
    switch (s->kind) {
    case VF_SAMPLER_EULER: euler_step(s, i, model_out, latents, n); break;
    case VF_SAMPLER_EULER_A: euler_a_step(s, i, model_out, latents, n, rng); break;
    case VF_SAMPLER_DDIM: ddim_step(s, i, model_out, latents, n); break;
    case VF_SAMPLER_PNDM: pndm_step(s, i, model_out, latents, n); break;
    default: dpm_step(s, i, model_out, latents, n); break;
    }
    s->next_step = i + 1;
    if (s->next_step == s->steps) /* done: the next call may start a new run */
        vf_scheduler_reset(s);
    return VF_OK;
}
