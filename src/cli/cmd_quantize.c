/* vramfit quantize: rewrite a checkpoint with quantized (or F16 / BF16) weights.
 *
 * The work is vf_quantize_checkpoint() (pipeline/quantize.h): the output has
 * the input's layout (diffusers folder or single file) and loads wherever the
 * input does. This file parses arguments, shows progress on a terminal and
 * prints what was written.
 */
#include "cli/cli.h"
#include "cli/progress.h"
#include "core/dtype.h"
#include "pipeline/quantize.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void quantize_usage(FILE *f)
{
    fprintf(f,
            "usage: vramfit quantize INPUT OUTPUT --dtype f16|bf16|f8|q8|q4\n"
            "                        [--components unet,text,vae] [--config DIR] [--force]\n\n"
            "Writes a copy of the checkpoint INPUT (a diffusers folder or a single\n"
            ".safetensors file) with its weights stored in another type. OUTPUT has the same\n"
            "layout: a folder (configs, tokenizer and scheduler files copied) or one file.\n"
            "Every vramfit command loads it like the original.\n\n"
            "  --dtype T         f16 or bf16: every float tensor converted;\n"
            "                    f8: F8_E4M3 with one scale per output channel;\n"
            "                    q8: int8 with a scale per block of 32 weights;\n"
            "                    q4: 4-bit with a scale and minimum per block of 32.\n"
            "                    Biases, norms and rows too short to gain keep their type.\n"
            "  --components L    which components to convert (default all): unet, text (both\n"
            "                    text encoders), text_encoder, text_encoder_2, vae\n"
            "  --config DIR      a diffusers folder of the same model, for a single file whose\n"
            "                    shapes do not tell everything (as for generate)\n"
            "  --force           replace OUTPUT when it is a file, or a folder holding a model\n"
            "  -h, --help        show this help\n");
}

typedef struct quantize_args {
    const char *input, *output, *dtype, *components, *config;
    int force;
} quantize_args;

/* 0 on success, -1 for --help, VF_EXIT_USAGE after printing why. */
static int parse_args(int argc, char **argv, quantize_args *a)
{
    static const char *const names[] = {"--dtype", "--components", "--config"};
    const char **slots[] = {&a->dtype, &a->components, &a->config};
    memset(a, 0, sizeof *a);
    for (int i = 0; i < argc; i++) {
        if (vf_cli_is_help(argv[i]))
            return -1;
        if (strcmp(argv[i], "--force") == 0) {
            a->force = 1;
            continue;
        }
        int k = -1;
        for (int j = 0; j < 3 && k < 0; j++)
            k = strcmp(argv[i], names[j]) == 0 ? j : -1;
        if (k >= 0 && i + 1 >= argc) {
            fprintf(stderr, "vramfit quantize: %s needs a value\n", argv[i]);
            return VF_EXIT_USAGE;
        }
        if (k >= 0) {
            *slots[k] = argv[++i];
        } else if (argv[i][0] == '-' || a->output) {
            fprintf(stderr, "vramfit quantize: unexpected argument '%s'\n", argv[i]);
            quantize_usage(stderr);
            return VF_EXIT_USAGE;
        } else if (!a->input) {
            a->input = argv[i];
        } else {
            a->output = argv[i];
        }
    }
    const char *missing = !a->input ? "INPUT" : !a->output ? "OUTPUT" : !a->dtype ? "--dtype" : NULL;
    if (missing) {
        fprintf(stderr, "vramfit quantize: %s is required\n", missing);
        quantize_usage(stderr);
        return VF_EXIT_USAGE;
    }
    return 0;
}

static int to_options(const quantize_args *a, vf_quantize_options *o)
{
    vf_quantize_options_init(o);
    o->force = a->force;
    o->config_dir = a->config;
    if (vf_quantize_dtype_parse(a->dtype, &o->dtype) != VF_OK) {
        fprintf(stderr, "vramfit quantize: --dtype '%s': expected f16, bf16, f8, q8 or q4\n", a->dtype);
        return VF_EXIT_USAGE;
    }
    if (a->components && vf_quantize_components_parse(a->components, &o->components) != VF_OK) {
        fprintf(stderr, "vramfit quantize: --%s\n", vf_last_error());
        return VF_EXIT_USAGE;
    }
    return 0;
}

int vf_cmd_quantize(int argc, char **argv)
{
    quantize_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc < 0)
        quantize_usage(stdout);
    if (rc)
        return rc < 0 ? VF_EXIT_OK : rc;
    vf_quantize_options o;
    if ((rc = to_options(&a, &o)) != 0)
        return rc;
    vf_file_progress b = {0, 1, 44};
    if (isatty(STDERR_FILENO)) {
        o.progress = vf_file_progress_update;
        o.user = &b;
    }
    vf_quantize_stats s;
    double t0 = vf_progress_now();
    vf_status st = vf_quantize_checkpoint(a.input, a.output, &o, &s);
    if (st != VF_OK)
        return vf_cli_fail(st);
    printf("%s: %s from %s in %.1f s\n", a.output, vf_dtype_name(o.dtype), vf_dtype_name(s.source_dtype),
           vf_progress_now() - t0);
    printf("  %llu tensors in %llu weight file(s): %llu packed, %llu converted, the rest as stored\n",
           (unsigned long long)s.tensors, (unsigned long long)s.files, (unsigned long long)s.packed,
           (unsigned long long)s.converted);
    printf("  %.1f MB -> %.1f MB of tensor data (%.0f%%)%s\n", (double)s.bytes_in / 1e6, (double)s.bytes_out / 1e6,
           s.bytes_in ? 100.0 * (double)s.bytes_out / (double)s.bytes_in : 100.0,
           s.copied_files ? "; configs and tokenizer files copied" : "");
    return VF_EXIT_OK;
}
