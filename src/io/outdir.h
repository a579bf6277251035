/* Writing a model folder so that a failure leaves nothing half-written.
 *
 * `vramfit synth` and `vramfit quantize` both produce a whole diffusers folder.
 * They write it into a fresh folder beside the target (OUT.tmp-XXXXXX, on the
 * same file system) and rename it into place only once everything is there;
 * an earlier model at OUT is replaced only when asked (force) and only when it
 * is a model folder (model_index.json), moved aside first and removed after
 * the rename, so a crash at any point leaves either the old model or the new.
 */
#ifndef VF_IO_OUTDIR_H
#define VF_IO_OUTDIR_H

#include "core/error.h"

typedef enum vf_outdir_state {
    VF_OUTDIR_ABSENT = 0,         /* nothing there yet                        */
    VF_OUTDIR_EMPTY,              /* an empty folder                          */
    VF_OUTDIR_REPLACE             /* an earlier model (or file) to replace     */
} vf_outdir_state;

/* What the folder outdir is now, and whether it may be written: absent or
 * empty, or (force) a model folder. Errors name outdir and say what to do. */
vf_status vf_outdir_check(const char *outdir, int force, vf_outdir_state *state);
/* A new folder beside outdir (mode 0755) for the output; *tmp is vf_malloc'd. */
vf_status vf_outdir_temp(const char *outdir, char **tmp);
/* Moves the finished folder tmp to outdir, replacing what check found. */
vf_status vf_outdir_install(const char *tmp, const char *outdir, vf_outdir_state state);
/* Removes a folder and everything in it (no links followed); 0 on success. */
int vf_remove_tree(const char *path);
/* path without trailing slashes, plus suffix (e.g. a mkdtemp template); NULL
 * when out of memory (error set). */
char *vf_path_sibling(const char *path, const char *suffix);

#endif
