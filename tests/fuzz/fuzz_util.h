/* Shared helpers of the fuzz targets: a private scratch folder and whole-file
 * writes.
 *
 * Targets that need files (the safetensors reader maps a path, a checkpoint is
 * a folder) write each input into one scratch folder made at start, in /dev/shm
 * when it is writable so that an execution costs no disk I/O, and removed at
 * exit. Helpers abort on failure: a harness that cannot set itself up must stop
 * loudly rather than report inputs as passing.
 */
#ifndef VF_FUZZ_UTIL_H
#define VF_FUZZ_UTIL_H

#include "pipeline/synth.h"
#include "vramfit.h"

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char vf_fuzz_dir[256];

static inline int vf_fuzz_rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(p);
    return 0;
}

static inline void vf_fuzz_cleanup(void)
{
    if (vf_fuzz_dir[0])
        nftw(vf_fuzz_dir, vf_fuzz_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Makes the scratch folder once; returns its path. */
static inline const char *vf_fuzz_tmpdir(const char *tag)
{
    if (vf_fuzz_dir[0])
        return vf_fuzz_dir;
    const char *bases[] = {"/dev/shm", getenv("TMPDIR"), "/tmp"};
    for (size_t i = 0; i < sizeof bases / sizeof bases[0]; i++) {
        if (!bases[i] || access(bases[i], W_OK) != 0)
            continue;
        snprintf(vf_fuzz_dir, sizeof vf_fuzz_dir, "%s/vf_fuzz_%s_XXXXXX", bases[i], tag);
        if (mkdtemp(vf_fuzz_dir)) {
            atexit(vf_fuzz_cleanup);
            return vf_fuzz_dir;
        }
    }
    fprintf(stderr, "fuzz: cannot make a scratch folder\n");
    abort();
}

/* dir/name as a static string (one at a time). */
static inline const char *vf_fuzz_path(const char *dir, const char *name)
{
    static char buf[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static inline void vf_fuzz_write(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
        fprintf(stderr, "fuzz: cannot write %s\n", path);
        abort();
    }
}

/* With VF_FUZZ_VERBOSE set, each call's outcome is printed (to see what seeds reach). */
static inline void vf_fuzz_log(const char *call, vf_status st)
{
    static int verbose = -1;
    if (verbose < 0)
        verbose = getenv("VF_FUZZ_VERBOSE") != NULL;
    if (verbose)
        fprintf(stderr, "  %s: %s%s%s\n", call, vf_status_str(st), st ? ": " : "", st ? vf_last_error() : "");
}

/* A failing call must leave a message that names `what` (a file, a key). */
static inline void vf_fuzz_check_message(const char *call, const char *what)
{
    const char *msg = vf_last_error();
    if (!msg[0] || (what && !strstr(msg, what))) {
        fprintf(stderr, "fuzz: %s failed with a message that does not name '%s': '%s'\n", call,
                what ? what : "", msg);
        abort();
    }
}

/* The small vocabulary `vramfit synth` writes (never CLIP's), loaded once into
 * the scratch folder; aborts when it cannot be built. */
static inline vf_tokenizer *vf_fuzz_synth_tokenizer(const char *tag)
{
    vf_tokenizer *t = NULL;
    const char *dir = vf_fuzz_tmpdir(tag);
    if (vf_synth_write_tokenizer(dir, "<|endoftext|>") != VF_OK || vf_tokenizer_load(dir, &t) != VF_OK) {
        fprintf(stderr, "fuzz: cannot build the tokenizer: %s\n", vf_last_error());
        abort();
    }
    return t;
}

#endif
