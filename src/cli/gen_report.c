/* vramfit generate: --prompt-syntax, --preview, --json (see gen_report.h).
 *
 * Previews come from the library's latent callback through vf_latents_preview
 * (a (4,3) matrix per latent pixel, no VAE), drawn 8x so they have the final
 * image's size, written with the PNG writer's temp-file-and-rename so a viewer
 * watching the file never reads half of one. A preview that cannot be written
 * is one warning and no more previews, never a failed generation.
 *
 * The JSON summary is built with cJSON; the seed goes in as a raw number
 * because a double cannot hold every 64-bit seed.
 */
#include "cli/gen_report.h"
#include "cli/cli.h"
#include "io/png.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static int usage_error(const char *what, const char *arg)
{
    fprintf(stderr, "vramfit generate: %s '%s' (vramfit generate --help lists the options)\n", what, arg);
    return VF_EXIT_USAGE;
}

int vf_gen_report_parse_arg(int argc, char **argv, int *i, vf_gen_report_args *a)
{
    const char *arg = argv[*i];
    if (strcmp(arg, "--json") == 0) {
        a->json = 1;
        return 1;
    }
    const char **slot = strcmp(arg, "--prompt-syntax") == 0    ? &a->syntax
                        : strcmp(arg, "--preview") == 0        ? &a->preview
                        : strcmp(arg, "--preview-output") == 0 ? &a->preview_output
                                                               : NULL;
    if (!slot)
        return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "vramfit generate: %s needs a value\n", arg);
        return -1;
    }
    *slot = argv[++*i];
    return 1;
}

void vf_gen_report_usage(FILE *f)
{
    fprintf(f,
            "Prompt syntax, previews and output for programs:\n"
            "  --prompt-syntax S   how --prompt and --negative are read (default a1111):\n"
            "                      a1111: AUTOMATIC1111's (word:1.2), (word) = x1.1,\n"
            "                        [word] = /1.1, nesting multiplies; \\( \\) \\[ \\] \\\\ are\n"
            "                        literal; BREAK starts a new window; prompts past 75\n"
            "                        tokens continue in further 77-token windows\n"
            "                      plain: the literal text, in as many windows as it needs\n"
            "                      diffusers: the literal text in one window, cut at 75 tokens\n"
            "                        (what diffusers does)\n"
            "  --preview N         every N steps and after the last, write a quick preview\n"
            "                      decoded from the latents without the VAE\n"
            "  --preview-output F  the preview's file (default: FILE.preview.png beside the\n"
            "                      output)\n"
            "  --json              print one JSON object on stdout at the end: output, seed,\n"
            "                      size, sampler, seconds per stage; or ok: false, status,\n"
            "                      message and exit_code when the run failed\n");
}

/* FILE.png -> FILE.preview.png, anything else -> FILE.preview.png appended. */
static char *default_preview_path(const char *output)
{
    size_t n = strlen(output);
    int png = n > 4 && strcasecmp(output + n - 4, ".png") == 0;
    char *s = malloc(n + 16);
    if (s)
        snprintf(s, n + 16, "%.*s.preview.png", (int)(png ? n - 4 : n), output);
    return s;
}

/* 0 when path's folder exists and is writable; else says so (the run would
 * otherwise spend minutes and then fail to save). */
static int check_writable(const char *opt, const char *path)
{
    const char *slash = strrchr(path, '/');
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash == path ? 1 : slash - path) : 1, slash ? path : ".");
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        fprintf(stderr, "vramfit generate: %s '%s': the folder '%s' does not exist; create it first\n", opt,
                path, dir);
        return VF_EXIT_FAIL;
    }
    if (access(dir, W_OK) != 0) {
        fprintf(stderr, "vramfit generate: %s '%s': the folder '%s' is not writable\n", opt, path, dir);
        return VF_EXIT_FAIL;
    }
    return 0;
}

int vf_gen_report_finish(vf_gen_report_args *a, const char *output, vf_generate_params *p)
{
    int rc = check_writable("--output", output);
    if (rc)
        return rc;
    if (a->syntax && vf_prompt_syntax_parse(a->syntax, &p->prompt_syntax) != VF_OK)
        return usage_error("--prompt-syntax: use a1111, plain or diffusers, not", a->syntax);
    if (a->preview_output && !a->preview)
        return usage_error("--preview-output needs --preview N; got only", a->preview_output);
    if (!a->preview)
        return 0;
    char *end;
    errno = 0;
    long n = strtol(a->preview, &end, 10);
    if (errno || end == a->preview || *end || n < 1 || n > INT_MAX)
        return usage_error("--preview takes a number of steps (1 or more), not", a->preview);
    a->preview_every = (int)n;
    a->preview_path = a->preview_output ? strdup(a->preview_output) : default_preview_path(output);
    if (!a->preview_path) {
        fprintf(stderr, "vramfit generate: out of memory\n");
        return VF_EXIT_FAIL;
    }
    if (strcmp(a->preview_path, output) == 0)
        return usage_error("the preview would overwrite the output; give another --preview-output than",
                           output);
    return check_writable("--preview-output", a->preview_path);
}

void vf_gen_report_free(vf_gen_report_args *a)
{
    free(a->preview_path);
    a->preview_path = NULL;
}

/* ---- during the run ----------------------------------------------------------------- */

static int run_on_step(void *user, vf_generation_step stage, int step, int total)
{
    vf_gen_run *r = user;
    double now = vf_progress_now();
    if (step == 0)
        r->t_stage = now;
    else if (step == total && (int)stage >= 0 && stage <= VF_STEP_DECODE)
        r->seconds[stage] = now - r->t_stage;
    return r->inner ? r->inner(r->inner_user, stage, step, total) : 0;
}

static int run_on_latents(void *user, int step, int total, const vf_latents *l)
{
    vf_gen_run *r = user;
    const vf_gen_report_args *a = r->a;
    if (r->preview_failed || (step % a->preview_every != 0 && step != total))
        return 0;
    vf_image *img = NULL;
    vf_status st = vf_latents_preview(r->arch, l, 8, &img);
    if (st == VF_OK)
        st = vf_png_write(a->preview_path, img->rgb, img->width, img->height, NULL);
    vf_image_free(img);
    if (st == VF_OK) {
        r->previews++;
        return 0;
    }
    r->preview_failed = 1;
    fprintf(stderr, "\nvramfit generate: warning: no previews: %s\n", vf_last_error());
    return 0;
}

void vf_gen_run_init(vf_gen_run *r, const vf_gen_report_args *a, vf_generate_params *p)
{
    memset(r, 0, sizeof *r);
    r->a = a;
    r->inner = p->on_step;
    r->inner_user = p->user;
    r->t0 = vf_progress_now();
    p->on_step = run_on_step;
    p->on_latents = a->preview_every ? run_on_latents : NULL;
    p->user = r;
}

void vf_gen_run_loaded(vf_gen_run *r, const vf_model *m)
{
    r->arch = vf_model_arch(m);
    r->t_load = vf_progress_now() - r->t0;
}

const char *vf_gen_run_preview_note(const vf_gen_run *r, char *buf, size_t cap)
{
    if (!r->previews || !r->a->preview_path)
        return "";
    snprintf(buf, cap, "; preview %s", r->a->preview_path);
    return buf;
}

static void print_object(FILE *f, cJSON *o)
{
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    fprintf(f, "%s\n", s ? s : "{\"ok\":false,\"status\":\"out of memory\"}");
    fflush(f);
    cJSON_free(s);
    cJSON_Delete(o);
}

void vf_gen_run_json(FILE *f, const vf_gen_run *r, const char *output, const char *model,
                     const vf_generate_params *p, vf_sampler used, const vf_image *img, int random_seed)
{
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)p->seed);
    cJSON *o = cJSON_CreateObject(), *t = cJSON_CreateObject();
    if (!o || !t) {
        cJSON_Delete(t);
        print_object(f, NULL);
        return;
    }
    cJSON_AddTrueToObject(o, "ok");
    cJSON_AddStringToObject(o, "output", output);
    cJSON_AddStringToObject(o, "model", model);
    cJSON_AddStringToObject(o, "arch", vf_arch_name(r->arch));
    cJSON_AddRawToObject(o, "seed", seed);
    cJSON_AddBoolToObject(o, "seed_random", random_seed);
    cJSON_AddNumberToObject(o, "width", img->width);
    cJSON_AddNumberToObject(o, "height", img->height);
    cJSON_AddNumberToObject(o, "steps", p->steps);
    cJSON_AddNumberToObject(o, "cfg", p->guidance_scale);
    cJSON_AddStringToObject(o, "sampler", vf_sampler_name(used));
    cJSON_AddStringToObject(o, "prompt_syntax", vf_prompt_syntax_name(p->prompt_syntax));
    if (r->previews && r->a->preview_path)
        cJSON_AddStringToObject(o, "preview", r->a->preview_path);
    else
        cJSON_AddNullToObject(o, "preview");
    cJSON_AddNumberToObject(t, "load", r->t_load);
    cJSON_AddNumberToObject(t, "encode_prompt", r->seconds[VF_STEP_ENCODE_PROMPT]);
    cJSON_AddNumberToObject(t, "denoise", r->seconds[VF_STEP_DENOISE]);
    cJSON_AddNumberToObject(t, "decode", r->seconds[VF_STEP_DECODE]);
    cJSON_AddNumberToObject(t, "per_step", p->steps > 0 ? r->seconds[VF_STEP_DENOISE] / p->steps : 0.0);
    cJSON_AddNumberToObject(t, "total", vf_progress_now() - r->t0);
    cJSON_AddItemToObject(o, "seconds", t);
    print_object(f, o);
}

void vf_gen_run_json_error(FILE *f, vf_status st, int exit_code)
{
    cJSON *o = cJSON_CreateObject();
    if (o) {
        cJSON_AddFalseToObject(o, "ok");
        cJSON_AddStringToObject(o, "status", vf_status_str(st));
        cJSON_AddStringToObject(o, "message", vf_last_error());
        cJSON_AddNumberToObject(o, "exit_code", exit_code);
    }
    print_object(f, o);
}
