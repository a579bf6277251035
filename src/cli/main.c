/* vramfit: the command-line front end. Dispatches to the subcommands in cmd_*.c;
 * everything of substance happens in the library. */
#include "cli/cli.h"

#include <stdio.h>
#include <string.h>

static const vf_cli_command g_commands[] = {
    {"info", "show GPUs, memory and CPU features (--json for scripts)", vf_cmd_info},
    {"inspect", "show a model's architecture, components, parameters and bytes", vf_cmd_inspect},
    {"tokenize", "print the CLIP token ids of a text", vf_cmd_tokenize},
    {"encode", "encode a prompt to embeddings (safetensors)", vf_cmd_encode},
    {"generate", "generate an image from a prompt (PNG)", vf_cmd_generate},
    {"synth", "write a diffusers model with deterministic random weights", vf_cmd_synth},
    {"quantize", "write a copy of a model with quantized (f8, q8, q4) or f16/bf16 weights", vf_cmd_quantize},
    {"plan", "show the memory plan for a model and request, without running", vf_cmd_plan},
    {"bench", "time a model's stages and steps, with peak memory and link traffic", vf_cmd_bench},
};

int vf_cli_fail(vf_status st)
{
    const char *msg = vf_last_error();
    fprintf(stderr, "vramfit: %s%s%s\n", vf_status_str(st), msg[0] ? ": " : "", msg);
    return VF_EXIT_FAIL;
}

int vf_cli_is_help(const char *arg)
{
    return strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: vramfit COMMAND [options]   (vramfit COMMAND --help for each)\n\n");
    for (size_t i = 0; i < sizeof g_commands / sizeof g_commands[0]; i++)
        fprintf(f, "  %-10s %s\n", g_commands[i].name, g_commands[i].summary);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return VF_EXIT_USAGE;
    }
    if (vf_cli_is_help(argv[1])) {
        usage(stdout);
        return VF_EXIT_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("vramfit %s\n", vf_version());
        return VF_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof g_commands / sizeof g_commands[0]; i++) {
        if (strcmp(argv[1], g_commands[i].name) == 0)
            return g_commands[i].run(argc - 2, argv + 2);
    }
    fprintf(stderr, "vramfit: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return VF_EXIT_USAGE;
}
