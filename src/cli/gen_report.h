/* vramfit generate's prompt syntax, previews and --json summary (gen_report.c).
 *
 * Kept apart from cmd_generate.c, as gen_memory.h is, so the command's core
 * (parse, open, generate, write the PNG) stays short: cmd_generate.c hands
 * unknown arguments to vf_gen_report_parse_arg, lets vf_gen_run_init wrap its
 * progress callback (to time each stage and write previews), and asks
 * vf_gen_run_json / vf_gen_run_json_error for the summary when --json is on.
 */
#ifndef VF_CLI_GEN_REPORT_H
#define VF_CLI_GEN_REPORT_H

#include "cli/progress.h"
#include "vramfit.h"

#include <stdio.h>

typedef struct vf_gen_report_args {
    const char *syntax, *preview, *preview_output;
    int json;
    int preview_every;            /* 0: no previews                            */
    char *preview_path;           /* resolved by vf_gen_report_finish (owned)  */
} vf_gen_report_args;

/* argv[*i] is --prompt-syntax, --preview or --preview-output (advancing *i
 * past its value) or --json: 1. Not one of them: 0. A missing value: -1,
 * after printing why. */
int vf_gen_report_parse_arg(int argc, char **argv, int *i, vf_gen_report_args *a);
/* The options' lines of `generate --help`. */
void vf_gen_report_usage(FILE *f);
/* After parsing: the syntax into p, the preview's path from output. 0, or an
 * exit code after printing why. */
int vf_gen_report_finish(vf_gen_report_args *a, const char *output, vf_generate_params *p);
void vf_gen_report_free(vf_gen_report_args *a);

/* One run's timings and previews. */
typedef struct vf_gen_run {
    const vf_gen_report_args *a;
    vf_progress_fn inner;         /* the command's progress callback          */
    void *inner_user;
    vf_arch arch;
    double t0, t_stage, t_load;
    double seconds[3];            /* per vf_generation_step                    */
    int previews;
    int preview_failed;
} vf_gen_run;

/* Wraps p's progress callback and user (set them first) and adds the latent
 * callback when previews are on. Call right before opening the model. */
void vf_gen_run_init(vf_gen_run *r, const vf_gen_report_args *a, vf_generate_params *p);
/* After vf_model_open succeeded: the architecture (previews) and load time. */
void vf_gen_run_loaded(vf_gen_run *r, const vf_model *m);
/* The --json summary of a finished run on f; used is the sampler that ran. */
void vf_gen_run_json(FILE *f, const vf_gen_run *r, const char *output, const char *model,
                     const vf_generate_params *p, vf_sampler used, const vf_image *img, int random_seed);
/* The --json object of a failed run (status, message, exit code) on f. */
void vf_gen_run_json_error(FILE *f, vf_status st, int exit_code);
/* "; preview PATH" when previews were written, else "". */
const char *vf_gen_run_preview_note(const vf_gen_run *r, char *buf, size_t cap);

#endif
