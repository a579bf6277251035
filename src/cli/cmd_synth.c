/* vramfit synth: write a diffusers folder with deterministic random weights.
 *
 * For benchmarks (the full presets have the published shapes: SDXL's UNet is
 * 2.57 G parameters) and for a demo model that needs no download (--preset tiny
 * makes one in well under a second). The work is vf_synth(); this file parses
 * arguments, shows progress on a terminal and prints a summary.
 */
#include "cli/cli.h"
#include "cli/progress.h"
#include "core/dtype.h"
#include "pipeline/synth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void synth_usage(FILE *f)
{
    fprintf(f,
            "usage: vramfit synth --arch sd15|sdxl [--dtype f32|f16|bf16] [--preset full|tiny]\n"
            "                     [--seed N] [--force] --output DIR\n\n"
            "Writes a complete diffusers folder (model_index.json, configs, scheduler, a small\n"
            "tokenizer vocabulary of its own, weights) with deterministic random weights: the\n"
            "same seed gives the same bytes on every machine. Not a trained model: its images\n"
            "are noise-like patterns; it exists for benchmarks and for trying vramfit out.\n\n"
            "  --arch A       sd15 or sdxl\n"
            "  --dtype T      weight type: f32, f16 (default) or bf16\n"
            "  --preset P     full (default): the published shapes (SDXL ~7 GB in f16);\n"
            "                 tiny: small channels and 64x64 images, made in a second\n"
            "  --seed N       weight seed (default 0)\n"
            "  --force        replace DIR when it holds an earlier model (model_index.json)\n"
            "  --output DIR   the folder to create (must not exist, or be empty)\n");
}

typedef struct synth_args {
    const char *arch, *dtype, *preset, *seed, *output;
    int force;
} synth_args;

/* 0 on success, -1 for --help, VF_EXIT_USAGE after printing why. */
static int parse_args(int argc, char **argv, synth_args *a)
{
    static const char *const names[] = {"--arch", "--dtype", "--preset", "--seed", "--output"};
    const char **slots[] = {&a->arch, &a->dtype, &a->preset, &a->seed, &a->output};
    memset(a, 0, sizeof *a);
    for (int i = 0; i < argc; i++) {
        if (vf_cli_is_help(argv[i]))
            return -1;
        if (strcmp(argv[i], "--force") == 0) {
            a->force = 1;
            continue;
        }
        int k = -1;
        for (int j = 0; j < 5 && k < 0; j++)
            k = strcmp(argv[i], names[j]) == 0 ? j : -1;
        if (k < 0) {
            fprintf(stderr, "vramfit synth: unknown argument '%s'\n", argv[i]);
            return VF_EXIT_USAGE;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "vramfit synth: %s needs a value\n", argv[i]);
            return VF_EXIT_USAGE;
        }
        *slots[k] = argv[++i];
    }
    const char *missing = !a->arch ? "--arch" : !a->output ? "--output" : NULL;
    if (missing) {
        fprintf(stderr, "vramfit synth: %s is required\n", missing);
        synth_usage(stderr);
        return VF_EXIT_USAGE;
    }
    return 0;
}

/* Fills o from the arguments; VF_EXIT_USAGE after printing why. */
static int to_options(const synth_args *a, vf_synth_options *o)
{
    vf_synth_options_init(o);
    o->force = a->force;
    if (strcmp(a->arch, "sd15") == 0) {
        o->arch = VF_ARCH_SD15;
    } else if (strcmp(a->arch, "sdxl") == 0) {
        o->arch = VF_ARCH_SDXL;
    } else {
        fprintf(stderr, "vramfit synth: --arch '%s': expected sd15 or sdxl\n", a->arch);
        return VF_EXIT_USAGE;
    }
    const char *dt = a->dtype ? a->dtype : "f16";
    if (strcmp(dt, "f32") == 0) {
        o->dtype = VF_DTYPE_F32;
    } else if (strcmp(dt, "f16") == 0) {
        o->dtype = VF_DTYPE_F16;
    } else if (strcmp(dt, "bf16") == 0) {
        o->dtype = VF_DTYPE_BF16;
    } else {
        fprintf(stderr, "vramfit synth: --dtype '%s': expected f32, f16 or bf16\n", dt);
        return VF_EXIT_USAGE;
    }
    if (a->preset && vf_synth_preset_parse(a->preset, &o->preset) != VF_OK) {
        fprintf(stderr, "vramfit synth: --preset '%s': expected full or tiny\n", a->preset);
        return VF_EXIT_USAGE;
    }
    if (a->seed) {
        char *end = NULL;
        errno = 0;
        unsigned long long s = strtoull(a->seed, &end, 10);
        if (errno || end == a->seed || *end || a->seed[0] == '-') {
            fprintf(stderr, "vramfit synth: --seed '%s': expected a non-negative integer\n", a->seed);
            return VF_EXIT_USAGE;
        }
        o->seed = s;
    }
    return 0;
}

static void print_summary(const vf_synth_options *o, const char *outdir, double secs)
{
    uint64_t params[VF_COMPONENT_COUNT];
    printf("%s: %s (%s preset, %s, seed %llu) in %.1f s\n", outdir, vf_arch_name(o->arch),
           vf_synth_preset_name(o->preset), vf_dtype_name(o->dtype), (unsigned long long)o->seed, secs);
    if (vf_synth_count(o->arch, o->preset, 0, params) != VF_OK)
        return;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++)
        if (params[c])
            printf("  %-15s %14llu parameters, %.1f MB\n", vf_component_name((vf_component)c),
                   (unsigned long long)params[c], (double)(params[c] * vf_dtype_size(o->dtype)) / 1e6);
}

int vf_cmd_synth(int argc, char **argv)
{
    synth_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc < 0)
        synth_usage(stdout);
    if (rc)
        return rc < 0 ? VF_EXIT_OK : rc;
    vf_synth_options o;
    if ((rc = to_options(&a, &o)) != 0)
        return rc;
    vf_file_progress b = {0, 0, 40};
    if (isatty(STDERR_FILENO)) {
        o.progress = vf_file_progress_update;
        o.user = &b;
    }
    double t0 = vf_progress_now();
    vf_status st = vf_synth(&o, a.output);
    if (st != VF_OK)
        return vf_cli_fail(st);
    print_summary(&o, a.output, vf_progress_now() - t0);
    return VF_EXIT_OK;
}
