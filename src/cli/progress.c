/* Progress display (see progress.h). Encode and decode report one unit each, so
 * they get a "done in" line; denoising gets the bar with rate and ETA. The rate
 * is shown as s/it below one step per second, as tqdm does, because "0.05 it/s"
 * reads worse than "20.1 s/it" on a slow CPU run.
 */
#include "cli/progress.h"

#include <string.h>
#include <time.h>

#define BAR_WIDTH 24

double vf_progress_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void vf_file_progress_update(void *user, const char *file, uint64_t done, uint64_t total)
{
    vf_file_progress *b = user;
    double t = vf_progress_now();
    if (done < total && t - b->last < 0.1)
        return;
    b->last = t;
    const char *slash = b->basename ? strrchr(file, '/') : NULL;
    fprintf(stderr, "\r  %-*s %4.0f%% of %.1f MB", b->width, slash ? slash + 1 : file,
            total ? 100.0 * (double)done / (double)total : 100.0, (double)total / 1e6);
    if (done >= total)
        fputc('\n', stderr);
}

void vf_progress_init(vf_progress *p, FILE *f, int tty, int quiet)
{
    memset(p, 0, sizeof *p);
    p->f = f;
    p->tty = tty;
    p->quiet = quiet;
    p->stage = VF_STEP_ENCODE_PROMPT;
    p->t_start = vf_progress_now();
}

static void fmt_duration(char *buf, size_t cap, double s)
{
    long t = s < 0 ? 0 : s > 359999 ? 359999 : (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, cap, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, cap, "%ld:%02ld", t / 60, t % 60);
}

static void fmt_rate(char *buf, size_t cap, int done, double elapsed)
{
    if (done <= 0 || elapsed <= 0) {
        snprintf(buf, cap, "? it/s");
        return;
    }
    double r = done / elapsed;
    if (r >= 1.0)
        snprintf(buf, cap, "%.2f it/s", r);
    else
        snprintf(buf, cap, "%.2f s/it", 1.0 / r);
}

/* "denoise [#####-----] 12/30 1.84 it/s ETA 0:10" without a line end. */
static void denoise_line(const vf_progress *p, int k, int n, double now, int bar)
{
    char rate[32], eta[32];
    double el = now - p->t_start;
    fmt_rate(rate, sizeof rate, k, el);
    fmt_duration(eta, sizeof eta, k > 0 ? el / k * (n - k) : 0);
    fprintf(p->f, "denoise ");
    if (bar) {
        int fill = n > 0 ? (int)((long long)BAR_WIDTH * k / n) : 0;
        fputc('[', p->f);
        for (int i = 0; i < BAR_WIDTH; i++)
            fputc(i < fill ? '#' : '-', p->f);
        fputs("] ", p->f);
    }
    fprintf(p->f, "%d/%d  %s  ", k, n, rate);
    if (k < n) {
        fprintf(p->f, "ETA %s", k > 0 ? eta : "?");
    } else {
        fmt_duration(eta, sizeof eta, el);
        fprintf(p->f, "done in %s", eta);
    }
}

static void unit_stage(vf_progress *p, vf_generation_step stage, int step, double now)
{
    const char *name = vf_generation_step_name(stage);
    if (step == 0) {
        if (p->tty) {
            fprintf(p->f, "\r%s ...\033[K", name);
            p->open_line = 1;
        }
        return;
    }
    fprintf(p->f, "%s%s: done in %.2f s%s\n", p->tty ? "\r" : "", name, now - p->t_start,
            p->tty ? "\033[K" : "");
    p->open_line = 0;
}

void vf_progress_update(vf_progress *p, vf_generation_step stage, int step, int total)
{
    if (p->quiet)
        return;
    double now = vf_progress_now();
    if (step == 0 || stage != p->stage) {
        if (stage != p->stage)
            vf_progress_end(p);
        p->stage = stage;
        p->total = total;
        p->t_start = now;
        p->t_last = 0;
    }
    if (stage != VF_STEP_DENOISE) {
        unit_stage(p, stage, step, now);
    } else if (p->tty) {
        /* Redraw at most ~10 times a second, but always the first and last. */
        if (step != 0 && step != total && now - p->t_last < 0.1)
            return;
        p->t_last = now;
        fputc('\r', p->f);
        denoise_line(p, step, total, now, 1);
        fputs("\033[K", p->f);
        p->open_line = 1;
        if (step == total)
            vf_progress_end(p);
    } else if (step > 0) {
        denoise_line(p, step, total, now, 0);
        fputc('\n', p->f);
    }
    fflush(p->f);
}

void vf_progress_end(vf_progress *p)
{
    if (p->open_line) {
        fputc('\n', p->f);
        fflush(p->f);
    }
    p->open_line = 0;
}
