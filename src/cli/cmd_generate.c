/* vramfit generate: a prompt to a PNG on the CPU.
 *
 * A thin shell over vf_generate: parse, open the model, run with a progress
 * callback, write the PNG. The image carries a "parameters" text chunk in the
 * format AUTOMATIC1111 writes (prompt, "Negative prompt: ...", then
 * "Steps: .., Sampler: .., CFG scale: .., Seed: .., Size: WxH, Model: .."),
 * because that is what image viewers and other UIs parse to show or re-use the
 * settings.
 *
 * Without --model it runs the trained demo model (tools/demo/), looked for in
 * $VF_DEMO_MODEL, then beside the installed command (<prefix>/share/vramfit/demo,
 * found from /proc/self/exe so that `cmake --install --prefix P` works), then in
 * the configured install prefix, then in the source tree's models/demo, so that
 * `./build/vramfit generate --prompt ...` works straight after a build. The
 * places come from cmake/packaging.cmake as compile definitions.
 *
 * Ctrl-C: the SIGINT handler only sets a flag; the progress callback, which
 * the library calls at least once per UNet call, returns it, so the run stops
 * cleanly between steps (exit 130, nothing written). The handler is installed
 * with SA_RESETHAND, so a second Ctrl-C kills the process the usual way.
 */
#include "cli/cli.h"
#include "cli/gen_memory.h"
#include "cli/gen_report.h"
#include "cli/progress.h"
#include "io/png.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define VF_EXIT_CANCELLED 130
#define VF_GEN_MAX_LORAS 32

static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    g_interrupted = 1;
}

typedef struct gen_args {
    const char *model, *prompt, *negative, *tokenizer, *config, *dump, *output;
    const char *steps, *cfg, *width, *height, *seed, *sampler;
    const char *backend;          /* --backend cpu|cuda[:f16|:bf16] */
    const char *registry;         /* --registry FILE: --model is an id in it */
    int quiet;
    const char *lora[VF_GEN_MAX_LORAS]; /* --lora PATH[:STRENGTH], in order   */
    int nlora;
    vf_gen_mem_args mem;          /* --device, --vram-budget, ... (gen_memory.h) */
    vf_gen_report_args rep;       /* --prompt-syntax, --preview, --json (gen_report.h) */
    char model_buf[PATH_MAX];     /* the demo model's folder when --model is absent */
} gen_args;

static void gen_usage(FILE *f)
{
    fprintf(f,
            "usage: vramfit generate [--model PATH | --registry FILE --model ID] --prompt TEXT\n"
            "                        [--negative TEXT] [--steps N]\n"
            "                        [--cfg X] [--width W] [--height H] [--seed S]\n"
            "                        [--sampler euler|euler_a|ddim|dpmpp_2m|pndm] [--tokenizer DIR]\n"
            "                        [--config DIR] [--dump FILE.safetensors] [--quiet]\n"
            "                        [--prompt-syntax a1111|plain|diffusers] [--preview N]\n"
            "                        [--preview-output FILE] [--json]\n"
            "                        [--device DEV] [--vram-budget SIZE] [--offload MODE]\n"
            "                        [--loading MODE] [--dtype POLICY] [--stats] [--backend B]\n"
            "                        [--lora PATH[:STRENGTH]]...\n"
            "                        --output FILE.png\n\n"
            "Generates an image from a prompt on the CPU (float32), the way diffusers'\n"
            "StableDiffusion(XL)Pipeline does: the same seed gives the same image.\n\n"
            "  --model PATH      diffusers folder or single-file .safetensors checkpoint;\n"
            "                    default: the demo model (64x64 coloured shapes: \"a red circle\n"
            "                    on a blue background\", \"two yellow squares\"), from\n"
            "                    $VF_DEMO_MODEL, else <prefix>/share/vramfit/demo, else the\n"
            "                    source tree's models/demo\n"
            "  --registry FILE   a model registry (JSON: {\"models\": {ID: PATH or {\"path\": ...,\n"
            "                    \"config\": DIR}}}, paths relative to the file); --model is then\n"
            "                    one of its ids, opened by a model pool on --device\n"
            "  --prompt TEXT     the prompt, in --prompt-syntax (default: AUTOMATIC1111's)\n"
            "  --negative TEXT   the negative prompt (default: none; SDXL then uses zeros)\n"
            "  --steps N         denoising steps (default 20)\n"
            "  --cfg X           classifier-free guidance scale (default 7.5; <= 1 turns it off)\n"
            "  --width W, --height H\n"
            "                    image size in pixels (default: the model's native size);\n"
            "                    multiples of 64 for SD1.5, 32 for SDXL\n"
            "  --seed S          0..2^64-1 (default, or -1: a random seed, printed)\n"
            "  --sampler NAME    euler, euler_a, ddim, dpmpp_2m (DPM++ 2M Karras) or pndm;\n"
            "                    default: the model's scheduler_config.json\n"
            "  --tokenizer DIR   folder holding tokenizer/ (and tokenizer_2/) for single files;\n"
            "                    default: tokenizer/ beside the file, else the Hugging Face\n"
            "                    cache ($HF_HOME/hub or ~/.cache/huggingface/hub)\n"
            "  --config DIR      diffusers folder whose configs describe a single file\n"
            "  --dump FILE       also write every intermediate tensor (safetensors)\n"
            "  --backend B       cpu (default, float32) or cuda, cuda:f16, cuda:bf16: compute on\n"
            "                    the GPU through libvramfit-cuda.so, all weights resident\n"
            "  --lora PATH[:STRENGTH]\n"
            "                    apply a LoRA (.safetensors, kohya or diffusers/PEFT format) at\n"
            "                    STRENGTH (default 1; negative allowed); repeatable, up to 32,\n"
            "                    each with its own strength. What each matched is printed to\n"
            "                    stderr (unless --quiet), with its keys that match nothing\n"
            "  --quiet           no progress output\n"
            "  --output FILE     the PNG to write\n\n"
            "Exit status: 0 done, 1 failed (the message says why), 2 bad usage,\n"
            "130 interrupted (Ctrl-C; nothing written).\n\n");
    vf_gen_mem_usage(f);
    fputc('\n', f);
    vf_gen_report_usage(f);
}

/* Splits "PATH[:STRENGTH]": the text after the last ':' is the strength when
 * it is a number; otherwise the whole text is the path (strength 1). -1 when
 * the tail looks like a number but is not one (a typo, not a file name). */
static int lora_spec(const char *spec, char *path, size_t cap, float *strength)
{
    const char *colon = strrchr(spec, ':');
    *strength = 1.0f;
    if (colon && colon[1]) {
        char *end;
        errno = 0;
        double v = strtod(colon + 1, &end);
        if (!*end) {
            *strength = (float)v;
            snprintf(path, cap, "%.*s", (int)(colon - spec), spec);
            return colon > spec && !errno && isfinite(v) && isfinite(*strength) ? 0 : -1;
        }
        if (strchr("+-.0123456789", colon[1]))
            return -1;
    }
    snprintf(path, cap, "%s", spec);
    return 0;
}

/* --lora VALUE: 0, or -1 after printing why. */
static int lora_arg(int argc, char **argv, int *i, gen_args *a)
{
    char path[PATH_MAX];
    float s;
    if (*i + 1 >= argc) {
        fprintf(stderr, "vramfit generate: --lora needs a value (PATH or PATH:STRENGTH)\n");
        return -1;
    }
    const char *v = argv[++*i];
    if (lora_spec(v, path, sizeof path, &s)) {
        fprintf(stderr, "vramfit generate: --lora '%s': expected PATH or PATH:STRENGTH with a finite number\n", v);
        return -1;
    }
    if (a->nlora >= VF_GEN_MAX_LORAS) {
        fprintf(stderr, "vramfit generate: more than %d --lora\n", VF_GEN_MAX_LORAS);
        return -1;
    }
    a->lora[a->nlora++] = v;
    return 0;
}

/* Adds the --lora files to m, saying on stderr what each matched. */
static vf_status apply_loras(const gen_args *a, vf_model *m)
{
    for (int i = 0; i < a->nlora; i++) {
        char path[PATH_MAX];
        float s;
        vf_lora_info li;
        (void)lora_spec(a->lora[i], path, sizeof path, &s);
        vf_status st = vf_model_add_lora(m, path, s, &li);
        if (st != VF_OK)
            return st;
        if (a->quiet)
            continue;
        fprintf(stderr, "lora %s: strength %g, %d weights (", path, (double)li.strength, li.weights);
        for (int c = 0, first = 1; c < VF_COMPONENT_COUNT; c++) {
            if (!li.weights_by_component[c])
                continue;
            fprintf(stderr, "%s%s %d", first ? "" : ", ", vf_component_name((vf_component)c),
                    li.weights_by_component[c]);
            first = 0;
        }
        fprintf(stderr, "), rank %d, %d of %d keys match nothing\n", li.rank, li.unmatched_keys, li.keys);
    }
    return VF_OK;
}

/* 0 on success, -1 for --help, VF_EXIT_USAGE after printing why. */
static int parse_args(int argc, char **argv, gen_args *a)
{
    static const char *const names[] = {"--model", "--prompt", "--negative", "--tokenizer", "--config",
                                        "--dump", "--output", "--steps", "--cfg", "--width",
                                        "--height", "--seed", "--sampler", "--backend", "--registry"};
    const char **slots[] = {&a->model, &a->prompt, &a->negative, &a->tokenizer, &a->config,
                            &a->dump, &a->output, &a->steps, &a->cfg, &a->width,
                            &a->height, &a->seed, &a->sampler, &a->backend, &a->registry};
    const int nopt = (int)(sizeof names / sizeof names[0]);
    memset(a, 0, sizeof *a);
    for (int i = 0; i < argc; i++) {
        if (vf_cli_is_help(argv[i]))
            return -1;
        if (strcmp(argv[i], "--quiet") == 0 || strcmp(argv[i], "-q") == 0) {
            a->quiet = 1;
            continue;
        }
        if (strcmp(argv[i], "--lora") == 0) {
            if (lora_arg(argc, argv, &i, a))
                return VF_EXIT_USAGE;
            continue;
        }
        int mem = vf_gen_mem_parse_arg(argc, argv, &i, &a->mem);
        if (mem < 0)
            return VF_EXIT_USAGE;
        if (mem)
            continue;
        int rep = vf_gen_report_parse_arg(argc, argv, &i, &a->rep);
        if (rep < 0)
            return VF_EXIT_USAGE;
        if (rep)
            continue;
        int k = -1;
        for (int j = 0; j < nopt && k < 0; j++)
            k = strcmp(argv[i], names[j]) == 0 ? j : -1;
        if (k < 0) {
            fprintf(stderr, "vramfit generate: unknown argument '%s' (vramfit generate --help lists the "
                    "options)\n", argv[i]);
            return VF_EXIT_USAGE;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "vramfit generate: %s needs a value\n", argv[i]);
            return VF_EXIT_USAGE;
        }
        *slots[k] = argv[++i];
    }
    const char *missing = !a->prompt ? "--prompt" : !a->output ? "--output" : NULL;
    if (missing) {
        fprintf(stderr, "vramfit generate: %s is required\n", missing);
        gen_usage(stderr);
        return VF_EXIT_USAGE;
    }
    return 0;
}

/* Whole-string integer in [lo, hi]; 0 on success. */
static int parse_int(const char *opt, const char *s, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "vramfit generate: %s '%s' is not an integer in %ld..%ld\n", opt, s, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static uint64_t random_seed(void)
{
    uint32_t v;
    if (getrandom(&v, sizeof v, 0) == (ssize_t)sizeof v)
        return v;
    return (uint64_t)(uint32_t)(time(NULL) ^ ((unsigned long)getpid() << 16));
}

/* -1 or absent: random (a 32-bit one, as torch keeps only 32 bits anyway). */
static int parse_seed(const char *s, uint64_t *out, int *was_random)
{
    *was_random = !s || strcmp(s, "-1") == 0;
    if (*was_random) {
        *out = random_seed();
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (s[0] < '0' || s[0] > '9' || errno || *end) {
        fprintf(stderr, "vramfit generate: --seed '%s' is not an integer in 0..2^64-1 (or -1 for random)\n", s);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

/* Fills the library's params from the text options; VF_EXIT_USAGE on bad syntax.
 * Ranges that depend on the model (sizes, steps) are the library's to check. */
static int make_params(const gen_args *a, vf_generate_params *p, int *random)
{
    vf_generate_params_init(p);
    p->prompt = a->prompt;
    p->negative_prompt = a->negative;
    p->dump_path = a->dump;
    if (a->steps && parse_int("--steps", a->steps, INT_MIN, INT_MAX, &p->steps))
        return VF_EXIT_USAGE;
    if (a->width && parse_int("--width", a->width, INT_MIN, INT_MAX, &p->width))
        return VF_EXIT_USAGE;
    if (a->height && parse_int("--height", a->height, INT_MIN, INT_MAX, &p->height))
        return VF_EXIT_USAGE;
    if (a->cfg) {
        char *end;
        double g = strtod(a->cfg, &end);
        if (end == a->cfg || *end) {
            fprintf(stderr, "vramfit generate: --cfg '%s' is not a number\n", a->cfg);
            return VF_EXIT_USAGE;
        }
        p->guidance_scale = (float)g;
    }
    if (a->sampler && vf_sampler_parse(a->sampler, &p->sampler) != VF_OK) {
        fprintf(stderr, "vramfit generate: --sampler '%s': use euler, euler_a, ddim, dpmpp_2m or pndm\n",
                a->sampler);
        return VF_EXIT_USAGE;
    }
    if (parse_seed(a->seed, &p->seed, random))
        return VF_EXIT_USAGE;
    return 0;
}

/* The sampler as AUTOMATIC1111 names it in "parameters". */
static const char *sampler_label(vf_sampler s)
{
    switch (s) {
    case VF_SAMPLER_EULER: return "Euler";
    case VF_SAMPLER_EULER_A: return "Euler a";
    case VF_SAMPLER_DDIM: return "DDIM";
    case VF_SAMPLER_DPMPP_2M: return "DPM++ 2M Karras";
    case VF_SAMPLER_PNDM: return "PLMS";
    default: return "Default";
    }
}

/* The checkpoint's name: the file or folder name without a directory or extension. */
static void model_name(const char *path, char *buf, size_t cap)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/')
        b--;
    size_t len = n - b;
    const char *ext[] = {".safetensors", ".ckpt"};
    for (int i = 0; i < 2; i++) {
        size_t el = strlen(ext[i]);
        if (len > el && strncmp(path + n - el, ext[i], el) == 0)
            len -= el;
    }
    snprintf(buf, cap, "%.*s", (int)len, path + b);
}

/* A new string: "<prompt>\nNegative prompt: <neg>\nSteps: ..., Model: <name>". */
static char *parameters_text(const gen_args *a, const vf_generate_params *p, vf_sampler used,
                             const vf_image *img)
{
    char name[256], tail[512];
    model_name(a->model, name, sizeof name);
    snprintf(tail, sizeof tail, "Steps: %d, Sampler: %s, CFG scale: %g, Seed: %llu, Size: %dx%d, Model: %s",
             p->steps, sampler_label(used), (double)p->guidance_scale, (unsigned long long)p->seed,
             img->width, img->height, name);
    const char *neg = a->negative && a->negative[0] ? a->negative : NULL;
    size_t n = strlen(a->prompt) + (neg ? strlen(neg) + 20 : 0) + strlen(tail) + 4;
    char *s = malloc(n);
    if (!s)
        return NULL;
    snprintf(s, n, "%s\n%s%s%s%s", a->prompt, neg ? "Negative prompt: " : "", neg ? neg : "",
             neg ? "\n" : "", tail);
    return s;
}

static int on_step(void *user, vf_generation_step stage, int step, int total)
{
    vf_progress_update(user, stage, step, total);
    return g_interrupted != 0;
}

static vf_status write_png(const gen_args *a, const vf_generate_params *p, vf_sampler used,
                           const vf_image *img)
{
    char *params = parameters_text(a, p, used, img);
    if (!params) {
        fprintf(stderr, "vramfit generate: out of memory\n");
        return VF_ERR_NO_MEMORY;
    }
    char software[64];
    snprintf(software, sizeof software, "vramfit %s", vf_version());
    const char *kv[] = {"parameters", params, "Software", software, NULL};
    vf_status st = vf_png_write(a->output, img->rgb, img->width, img->height, kv);
    free(params);
    return st;
}

#ifndef VF_BIN_TO_DATADIR
#define VF_BIN_TO_DATADIR "../share"
#endif

/* 1 when dir holds a diffusers model_index.json. */
static int is_model_dir(const char *dir)
{
    char path[PATH_MAX];
    int n = snprintf(path, sizeof path, "%s/model_index.json", dir);
    return n > 0 && (size_t)n < sizeof path && access(path, R_OK) == 0;
}

/* Appends "dir" to the list of places looked in (for the error message). */
static void looked_add(char *looked, size_t cap, const char *dir)
{
    size_t n = strlen(looked);
    if (n < cap)
        snprintf(looked + n, cap - n, "%s%s", n ? ", " : "", dir);
}

/* dst = a + b (b starts with '/'); 0, or -1 when it does not fit. */
static int path_cat(char dst[PATH_MAX], const char *a, const char *b)
{
    int n = snprintf(dst, PATH_MAX, "%s%s", a, b);
    return n > 0 && n < PATH_MAX ? 0 : -1;
}

/* The demo model's folder into a->model_buf: $VF_DEMO_MODEL (taken as given),
 * else the first candidate holding a model_index.json. 0 on success; else
 * prints where it looked and returns VF_EXIT_FAIL. */
static int find_demo_model(gen_args *a)
{
    const char *env = getenv("VF_DEMO_MODEL");
    if (env && env[0]) {
        if (access(env, F_OK) != 0 || path_cat(a->model_buf, env, "") != 0) {
            fprintf(stderr, "vramfit generate: no --model given, and VF_DEMO_MODEL names '%s', which does not "
                    "exist\n", env);
            return VF_EXIT_FAIL;
        }
        a->model = a->model_buf;
        return 0;
    }
    char cand[3][PATH_MAX], exe[PATH_MAX];
    int nc = 0;
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = 0;
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = 0;
        nc += path_cat(cand[nc], exe, "/" VF_BIN_TO_DATADIR "/vramfit/demo") == 0;
    }
#ifdef VF_DATADIR
    nc += path_cat(cand[nc], VF_DATADIR, "/vramfit/demo") == 0;
#endif
#ifdef VF_SOURCE_DIR
    nc += path_cat(cand[nc], VF_SOURCE_DIR, "/models/demo") == 0;
#endif
    char looked[3 * PATH_MAX + 64] = "$VF_DEMO_MODEL (unset)";
    for (int i = 0; i < nc; i++) {
        char real[PATH_MAX];
        const char *dir = realpath(cand[i], real) ? real : cand[i];
        if (is_model_dir(dir) && path_cat(a->model_buf, dir, "") == 0) {
            a->model = a->model_buf;
            return 0;
        }
        looked_add(looked, sizeof looked, cand[i]);
    }
    fprintf(stderr,
            "vramfit generate: no --model given and no demo model found (looked in %s).\n"
            "Give --model PATH (a diffusers folder or a .safetensors checkpoint), set VF_DEMO_MODEL,\n"
            "or train the demo model with tools/demo/train.py (see tools/demo/README.md).\n",
            looked);
    return VF_EXIT_FAIL;
}

/* --registry: --model is an id of the registry, opened by a model pool with
 * this run's device and memory options (the registry's paths and configs
 * apply). The pool owns the model. */
static vf_status open_from_registry(const gen_args *a, vf_pipeline_options *po, vf_pool **pool, vf_model **m)
{
    if (a->backend && (!po->device || !po->device[0]))
        po->device = a->backend; /* a pool opens models by device: cuda implies its backend */
    vf_pool_options o;
    vf_pool_options_init(&o);
    o.pipeline = po;
    vf_status st = vf_pool_create(&o, pool);
    if (st == VF_OK)
        st = vf_pool_load_registry(*pool, a->registry);
    if (st == VF_OK)
        st = vf_pool_model(*pool, a->model, m);
    return st;
}

static int run(const gen_args *a, vf_generate_params *p, int random)
{
    vf_model_options o;
    vf_pipeline_options po;
    vf_model_options_init(&o);
    o.tokenizer_dir = a->tokenizer;
    o.config_dir = a->config;
    o.backend = a->backend;
    if (vf_gen_mem_options(&a->mem, &po))
        return VF_EXIT_USAGE;
    o.pipeline = &po;
    if (a->mem.stats)
        vf_gen_mem_stats_begin();
    vf_model *m = NULL;
    vf_image *img = NULL;
    vf_sampler used = VF_SAMPLER_DEFAULT;
    vf_progress prog;
    vf_progress_init(&prog, stderr, isatty(STDERR_FILENO), a->quiet);
    p->on_step = on_step;
    p->user = &prog;
    vf_gen_run rr;
    vf_gen_run_init(&rr, &a->rep, p);
    double t0 = vf_progress_now();
    vf_pool *pool = NULL;
    vf_status st = a->registry ? open_from_registry(a, &po, &pool, &m) : vf_model_open(a->model, &o, &m);
    if (st == VF_OK)
        st = apply_loras(a, m);
    if (st == VF_OK)
        vf_gen_run_loaded(&rr, m);
    if (st == VF_OK)
        st = vf_model_sampler(m, p->sampler, &used);
    if (st == VF_OK && random && !a->quiet)
        fprintf(stderr, "seed %llu\n", (unsigned long long)p->seed);
    if (st == VF_OK)
        st = vf_generate(m, p, &img);
    vf_progress_end(&prog);
    if (st == VF_OK)
        st = write_png(a, p, used, img);
    char note[PATH_MAX + 16];
    if (st == VF_OK && a->rep.json)
        vf_gen_run_json(stdout, &rr, a->output, a->model, p, used, img, random);
    else if (st == VF_OK && !a->quiet)
        printf("%s: %dx%d, %d steps, %s, cfg %g, seed %llu, %.1f s%s\n", a->output, img->width, img->height,
               p->steps, sampler_label(used), (double)p->guidance_scale, (unsigned long long)p->seed,
               vf_progress_now() - t0, vf_gen_run_preview_note(&rr, note, sizeof note));
    if (st == VF_OK && a->mem.stats)
        vf_gen_mem_print_stats(stdout, m, a->model, &a->mem);
    vf_image_free(img);
    if (pool)
        vf_pool_free(pool); /* and the model it opened */
    else
        vf_model_close(m);
    if (st != VF_OK && a->rep.json)
        vf_gen_run_json_error(stdout, st, st == VF_ERR_CANCELLED ? VF_EXIT_CANCELLED : VF_EXIT_FAIL);
    if (st == VF_ERR_CANCELLED) {
        fprintf(stderr, "vramfit generate: cancelled, nothing written\n");
        return VF_EXIT_CANCELLED;
    }
    return st == VF_OK ? VF_EXIT_OK : vf_cli_fail(st);
}

int vf_cmd_generate(int argc, char **argv)
{
    gen_args a;
    int random = 0;
    vf_generate_params p;
    int rc = parse_args(argc, argv, &a);
    if (rc < 0)
        gen_usage(stdout);
    if (rc)
        return rc < 0 ? VF_EXIT_OK : rc;
    if (a.registry && !a.model) {
        fprintf(stderr, "vramfit generate: --registry %s needs --model ID (one of its ids)\n", a.registry);
        vf_gen_report_free(&a.rep);
        return VF_EXIT_USAGE;
    }
    rc = a.model ? 0 : find_demo_model(&a);
    if (rc == 0)
        rc = make_params(&a, &p, &random);
    if (rc == 0)
        rc = vf_gen_report_finish(&a.rep, a.output, &p);
    if (rc) {
        vf_gen_report_free(&a.rep);
        return rc;
    }
    /* An ignored SIGINT (a background job of a script) stays ignored, as
     * shells expect of the programs they start that way. */
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGINT, NULL, &old) == 0 && old.sa_handler != SIG_IGN)
        sigaction(SIGINT, &sa, NULL);
    rc = run(&a, &p, random);
    vf_gen_report_free(&a.rep);
    return rc;
}
