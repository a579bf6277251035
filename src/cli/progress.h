/* Progress display for long commands (generate), fed by the library's
 * per-step callback.
 *
 * On a terminal it is one line redrawn in place: the stage, a bar, step k/N,
 * the rate in it/s and the time left. When stderr is a pipe or a file (CI logs,
 * scripts) redrawing would leave control characters in the log, so it writes
 * one plain line per update instead. Rates are measured from the stage's first
 * step, so encode/decode time does not distort the denoising rate.
 */
#ifndef VF_CLI_PROGRESS_H
#define VF_CLI_PROGRESS_H

#include "vramfit.h"

#include <stdint.h>
#include <stdio.h>

typedef struct vf_progress {
    FILE *f;
    int tty;                      /* redraw in place                           */
    int quiet;                    /* print nothing                             */
    int open_line;                /* a redrawn line is on screen               */
    vf_generation_step stage;
    int total;
    double t_start;               /* seconds, when the stage reported step 0   */
    double t_last;                /* last redraw, to limit redraws to ~10/s    */
} vf_progress;

/* f is usually stderr; tty decides the style (isatty(fileno(f)) at the caller). */
void vf_progress_init(vf_progress *p, FILE *f, int tty, int quiet);
/* One report from the library: step k of total in stage. */
void vf_progress_update(vf_progress *p, vf_generation_step stage, int step, int total);
/* Ends a redrawn line (call before printing anything else). */
void vf_progress_end(vf_progress *p);
/* Monotonic seconds. */
double vf_progress_now(void);

/* Commands that write weight files (synth, quantize): one line per file on
 * stderr, "name  NN% of X MB", redrawn in place at most 10 times a second.
 * vf_file_progress_update has the library's (user, file, done, total)
 * progress-callback signature, with user a vf_file_progress. */
typedef struct vf_file_progress {
    double last;                  /* last redraw                               */
    int basename;                 /* show the file's last path component only  */
    int width;                    /* of the name column                        */
} vf_file_progress;

void vf_file_progress_update(void *user, const char *file, uint64_t done, uint64_t total);

#endif
