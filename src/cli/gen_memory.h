/* vramfit generate's memory options and --stats (gen_memory.c).
 *
 * Kept apart from cmd_generate.c so that the command's prompt and sampling
 * options and its memory options can grow independently: cmd_generate.c hands
 * every argument it does not know to vf_gen_mem_parse_arg, turns the result
 * into vf_pipeline_options for vf_model_open, and prints the stats after a run.
 */
#ifndef VF_CLI_GEN_MEMORY_H
#define VF_CLI_GEN_MEMORY_H

#include "vramfit.h"

#include <stdio.h>

typedef struct vf_gen_mem_args {
    const char *budget, *offload, *device, *loading, *dtype;
    int stats;
} vf_gen_mem_args;

/* argv[*i] is one of --vram-budget, --offload, --device, --loading, --dtype
 * (advancing *i past its value) or --stats: 1. Not one of them: 0. A missing
 * value: -1, after printing why. */
int vf_gen_mem_parse_arg(int argc, char **argv, int *i, vf_gen_mem_args *a);
/* The options the arguments give; -1 after printing why (bad usage). */
int vf_gen_mem_options(const vf_gen_mem_args *a, vf_pipeline_options *o);
/* The options' lines of `generate --help`. */
void vf_gen_mem_usage(FILE *f);
/* --stats: peaks start now (call before opening the model). */
void vf_gen_mem_stats_begin(void);
/* --stats: the device, the plan, the equivalent `vramfit plan` command, the
 * monitor's peaks per stage (encode_prompt, denoise, decode) and overall. */
void vf_gen_mem_print_stats(FILE *f, vf_model *m, const char *model_path, const vf_gen_mem_args *a);

#endif
