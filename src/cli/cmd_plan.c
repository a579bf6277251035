/* vramfit plan: the memory plan for a model and a request, without running it.
 *
 * Opens the model (headers only), plans with the library's planner and prints
 * the plan: the chosen strategy and why, predicted peaks and times, then per
 * component its device, stage and dtype with its blocks grouped into runs of
 * equal placement (an SDXL UNet's 118 blocks print as a few lines), and the
 * strategies AUTO weighed. --json prints vf_plan_to_json's object unchanged.
 *
 * On a machine without a GPU the plan is for the CPU unless --vram-budget (or
 * --free-vram) is given: then it is a what-if plan for such a GPU, which is how
 * budgets are explored and tested away from the hardware.
 */
#include "cli/cli.h"
#include "mem/planner.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: vramfit plan MODEL [options]\n\n"
            "Prints how MODEL (a diffusers folder or a .safetensors file) would run: per\n"
            "component the device and stage, per block its dtype, home tier and whether it\n"
            "stays resident or streams; the ring depth; predicted peak GPU and host memory\n"
            "and time per step. Nothing is loaded or run.\n\n"
            "  --vram-budget SIZE  GPU memory the run may hold, CUDA context included, never\n"
            "                      exceeded: 6G and 1.5GiB are binary, 8GB decimal, 512M...\n"
            "                      (default: free VRAM at start minus max(256 MiB, 5%%))\n"
            "  --offload MODE      auto (default), full-gpu, cpu-offload, sequential, stream\n"
            "  --no-stream         auto chooses among the other four only\n"
            "  --flash             attention without score matrices (vramfit's CUDA kernels;\n"
            "                      the default where a CUDA device is found)\n"
            "  --dtype POLICY      weight storage: auto (the highest precision that fits\n"
            "                      without streaming at full speed: f32, f16 or q8), fast\n"
            "                      (f16, or q8 where faster), f32, f16, bf16, f8, q8, q4\n"
            "  --width W, --height H  image size (default: the model's native size)\n"
            "  --steps N           denoising steps (default 20)\n"
            "  --cfg X             guidance scale (default 7.5; <= 1: no guidance, batch 1)\n"
            "  --free-vram SIZE    plan for a GPU with this much free memory\n"
            "  --bandwidth SIZE    pinned host-to-GPU bytes per second (default 55.1GB)\n"
            "  --gpu-tflops X      effective F16 TFLOP/s of the GPU (default 400)\n"
            "  --cpu-gflops X      effective F32 GFLOP/s of the CPU (default 25 a core)\n"
            "  --context SIZE      CUDA context overhead (default 500MB)\n"
            "  --config DIR        diffusers folder whose configs describe a single file\n"
            "  --json              print one JSON object\n"
            "  -h, --help          show this help\n\n"
            "Exit status: 0 planned, 1 failed (e.g. nothing fits the budget: the message says\n"
            "how much would), 2 bad usage.\n");
}

typedef struct plan_args {
    const char *model, *budget, *offload, *dtype, *width, *height, *steps, *cfg;
    const char *free_vram, *bandwidth, *gpu_tflops, *cpu_gflops, *context, *config;
    int json, no_stream, flash;
} plan_args;

static int parse_args(int argc, char **argv, plan_args *a)
{
    static const char *const names[] = {"--vram-budget", "--offload", "--dtype", "--width",
                                        "--height", "--steps", "--cfg", "--free-vram",
                                        "--bandwidth", "--gpu-tflops", "--cpu-gflops", "--context",
                                        "--config"};
    const char **slots[] = {&a->budget, &a->offload, &a->dtype, &a->width, &a->height,
                            &a->steps, &a->cfg, &a->free_vram, &a->bandwidth, &a->gpu_tflops,
                            &a->cpu_gflops, &a->context, &a->config};
    const int nopt = (int)(sizeof names / sizeof names[0]);
    memset(a, 0, sizeof *a);
    for (int i = 0; i < argc; i++) {
        if (vf_cli_is_help(argv[i]))
            return -1;
        if (strcmp(argv[i], "--json") == 0 || strcmp(argv[i], "--no-stream") == 0) {
            *(argv[i][2] == 'j' ? &a->json : &a->no_stream) = 1;
            continue;
        }
        if (strcmp(argv[i], "--flash") == 0) {
            a->flash = 1;
            continue;
        }
        int k = -1;
        for (int j = 0; j < nopt && k < 0; j++)
            k = strcmp(argv[i], names[j]) == 0 ? j : -1;
        if (k < 0 && argv[i][0] == '-') {
            fprintf(stderr, "vramfit plan: unknown argument '%s'\n", argv[i]);
            return VF_EXIT_USAGE;
        }
        if (k < 0) {
            if (a->model) {
                fprintf(stderr, "vramfit plan: one MODEL only ('%s', '%s')\n", a->model, argv[i]);
                return VF_EXIT_USAGE;
            }
            a->model = argv[i];
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "vramfit plan: %s needs a value\n", argv[i]);
            return VF_EXIT_USAGE;
        }
        *slots[k] = argv[++i];
    }
    if (!a->model) {
        fprintf(stderr, "vramfit plan: MODEL is required\n");
        usage(stderr);
        return VF_EXIT_USAGE;
    }
    return 0;
}

static int parse_int(const char *opt, const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > INT_MAX) {
        fprintf(stderr, "vramfit plan: %s '%s' is not a non-negative integer\n", opt, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_num(const char *opt, const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v > 0) || v > 1e30) {
        fprintf(stderr, "vramfit plan: %s '%s' is not a positive number\n", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_size(const char *opt, const char *s, uint64_t *out)
{
    if (vf_parse_size(s, out) != VF_OK) {
        fprintf(stderr, "vramfit plan: %s: %s\n", opt, vf_last_error());
        return -1;
    }
    if (*out == 0) {
        fprintf(stderr, "vramfit plan: %s '%s': must be more than 0\n", opt, s);
        return -1;
    }
    return 0;
}

/* Options from the text arguments; -1 after printing why. */
static int make_options(const plan_args *a, vf_plan_options *o)
{
    vf_plan_options_init(o);
    o->allow_stream = !a->no_stream;
    o->flash_attention = a->flash ? 1 : -1; /* -1: where a CUDA device is found */
    double v = 0;
    uint64_t z = 1;
    if (a->budget && parse_size("--vram-budget", a->budget, &o->vram_budget))
        return -1;
    if (a->free_vram && parse_size("--free-vram", a->free_vram, &o->free_vram))
        return -1;
    if (a->context && parse_size("--context", a->context, &o->context_overhead))
        return -1;
    if (a->bandwidth && parse_size("--bandwidth", a->bandwidth, &z))
        return -1;
    o->link_bandwidth = a->bandwidth ? (double)z : 0;
    if (a->offload && vf_offload_strategy_parse(a->offload, &o->offload) != VF_OK) {
        fprintf(stderr, "vramfit plan: --offload: %s\n", vf_last_error());
        return -1;
    }
    if (a->dtype && vf_dtype_policy_parse(a->dtype, &o->dtype_policy) != VF_OK) {
        fprintf(stderr, "vramfit plan: --dtype: %s\n", vf_last_error());
        return -1;
    }
    if ((a->width && parse_int("--width", a->width, &o->width)) ||
        (a->height && parse_int("--height", a->height, &o->height)) ||
        (a->steps && parse_int("--steps", a->steps, &o->steps)))
        return -1;
    if (a->cfg) {
        char *end;
        double g = strtod(a->cfg, &end);
        if (end == a->cfg || *end) {
            fprintf(stderr, "vramfit plan: --cfg '%s' is not a number\n", a->cfg);
            return -1;
        }
        o->cfg = g > 1.0;
    }
    if (a->gpu_tflops && parse_num("--gpu-tflops", a->gpu_tflops, &v))
        return -1;
    o->device_flops = a->gpu_tflops ? v * 1e12 : 0;
    if (a->cpu_gflops && parse_num("--cpu-gflops", a->cpu_gflops, &v))
        return -1;
    o->host_flops = a->cpu_gflops ? v * 1e9 : 0;
    return 0;
}

/* ---- text ------------------------------------------------------------------------------ */

static const char *bytes_str(uint64_t b, char *buf, size_t cap)
{
    if (b >= 1000000000ull)
        snprintf(buf, cap, "%.2f GB", b / 1e9);
    else if (b >= 1000000ull)
        snprintf(buf, cap, "%.1f MB", b / 1e6);
    else
        snprintf(buf, cap, "%.1f kB", b / 1e3);
    return buf;
}

static const char *time_str(double s, char *buf, size_t cap)
{
    if (s < 1.0)
        snprintf(buf, cap, "%.1f ms", s * 1e3);
    else
        snprintf(buf, cap, "%.2f s", s);
    return buf;
}

static void print_header(const vf_plan *p, const char *model)
{
    char a[32], b[32], c[32], d[32], e[32];
    printf("model:     %s (%s)\n", model, vf_arch_name(p->model->arch));
    printf("request:   %dx%d, %d steps, %s\n", p->request.width, p->request.height,
           p->request.steps, p->request.cfg ? "guidance (UNet batch 2)" : "no guidance (batch 1)");
    if (!p->res.has_device) {
        printf("device:    no GPU: planned for the CPU (give --vram-budget to plan for a GPU)\n");
    } else {
        printf("budget:    %s (%llu bytes)%s\n", bytes_str(p->policy.budget, a, sizeof a),
               (unsigned long long)p->policy.budget,
               p->what_if ? ", what-if: no CUDA GPU on this machine" : "");
    }
    printf("strategy:  %s\n", vf_offload_strategy_name(p->strategy));
    printf("reason:    %s\n", p->reason);
    printf("dtypes:    %s\n", p->dtype_reason);
    printf("peak:      GPU %s (encode %s, denoise %s, decode %s); host %s\n",
           bytes_str(p->peak_device, a, sizeof a), bytes_str(p->stage_peak[0], b, sizeof b),
           bytes_str(p->stage_peak[1], c, sizeof c), bytes_str(p->stage_peak[2], d, sizeof d),
           bytes_str(p->peak_host, e, sizeof e));
    printf("time:      %s per step; encode %s, decode %s; %s per image\n",
           time_str(p->time_per_step, a, sizeof a), time_str(p->time_encode, b, sizeof b),
           time_str(p->time_decode, c, sizeof c), time_str(p->time_per_generation, d, sizeof d));
    printf("ring:      ");
    if (p->ring_depth)
        printf("%d slots of %s", p->ring_depth, bytes_str(p->ring_slot_bytes, a, sizeof a));
    else
        printf("none (nothing streams)");
    printf("; attention %s", p->attn_slices > 1 ? "in slices: " : "unsliced");
    if (p->attn_slices > 1)
        printf("%d", p->attn_slices);
    if (p->vae_tile)
        printf("; VAE in %dx%d latent tiles", p->vae_tile, p->vae_tile);
    printf("\n");
}

static void print_component(const vf_plan *p, const vf_plan_component *pc)
{
    const vf_blocklist *bl = p->model->bl[pc->comp];
    char a[32], b[32], c[32], d[32], e[32];
    printf("\n%s: %s, %s, %s, %d blocks, weights %s (resident %s, streamed %s), "
           "activations %s, %s per image\n",
           vf_component_name(pc->comp), pc->on_device ? "GPU" : "CPU",
           vf_generation_step_name(pc->stage), vf_dtype_name(pc->dtype), pc->nblocks,
           bytes_str(pc->weight_bytes, a, sizeof a), bytes_str(pc->resident_bytes, b, sizeof b),
           bytes_str(pc->streamed_bytes, c, sizeof c), bytes_str(pc->act_bytes, d, sizeof d),
           time_str(pc->time_s, e, sizeof e));
    for (int i = 0; i < pc->nblocks;) {
        int end = vf_plan_run_end(pc, i);
        uint64_t bytes = 0;
        for (int k = i; k < end; k++)
            bytes += pc->blocks[k].bytes;
        printf("  %4d-%-4d %-4s %-6s %-9s %9s  %s .. %s\n", i, end - 1,
               vf_dtype_name(pc->blocks[i].dtype), vf_tier_name(pc->blocks[i].home),
               vf_block_mode_name(pc->blocks[i].mode), bytes_str(bytes, a, sizeof a),
               bl->blocks[i].name, bl->blocks[end - 1].name);
        i = end;
    }
}

static void print_text(const vf_plan *p, const char *model)
{
    char a[32], b[32];
    print_header(p, model);
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (p->comp[c].present)
            print_component(p, &p->comp[c]);
    }
    if (p->ncand == 0)
        return;
    printf("\nweighed:\n");
    for (int i = 0; i < p->ncand; i++) {
        const vf_plan_candidate *c = &p->cand[i];
        if (c->fits)
            printf("  fits    %-9s %s/step  %s\n", bytes_str(c->peak_device, a, sizeof a),
                   time_str(c->time_per_step, b, sizeof b), c->note);
        else
            printf("  no      %-9s %-10s %s\n", bytes_str(c->peak_device, a, sizeof a), "",
                   c->note);
    }
}

int vf_cmd_plan(int argc, char **argv)
{
    plan_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc < 0) {
        usage(stdout);
        return VF_EXIT_OK;
    }
    if (rc)
        return rc;
    vf_plan_options o;
    if (make_options(&a, &o))
        return VF_EXIT_USAGE;
    vf_model_options mo;
    vf_model_options_init(&mo);
    mo.config_dir = a.config;
    vf_model *m = NULL;
    vf_plan *p = NULL;
    char *json = NULL;
    vf_status st = vf_model_open(a.model, &mo, &m);
    if (st == VF_OK)
        st = vf_model_plan(m, &o, &p);
    if (st == VF_OK && a.json)
        st = vf_plan_to_json(p, &json);
    if (st != VF_OK) {
        rc = vf_cli_fail(st);
        goto done;
    }
    if (a.json)
        printf("%s\n", json);
    else
        print_text(p, a.model);
    rc = VF_EXIT_OK;
done:
    vf_string_free(json);
    vf_plan_free(p);
    vf_model_close(m);
    return rc;
}
