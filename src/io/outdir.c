/* Writing a model folder whole or not at all (see outdir.h). */
#include "io/outdir.h"
#include "core/alloc.h"
#include "io/json.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

int vf_remove_tree(const char *path) { return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

char *vf_path_sibling(const char *path, const char *suffix)
{
    size_t n = strlen(path), k = strlen(suffix);
    while (n > 1 && path[n - 1] == '/')
        n--;
    char *p = vf_malloc(n + k + 1);
    if (!p)
        return NULL;
    memcpy(p, path, n);
    memcpy(p + n, suffix, k + 1);
    return p;
}

vf_status vf_outdir_check(const char *outdir, int force, vf_outdir_state *state)
{
    struct stat sb;
    *state = VF_OUTDIR_ABSENT;
    if (stat(outdir, &sb) != 0) {
        if (errno != ENOENT)
            return vf_error(VF_ERR_IO, "%s: %s", outdir, strerror(errno));
        return VF_OK;
    }
    if (!S_ISDIR(sb.st_mode))
        return vf_error(VF_ERR_INVALID_ARG, "%s: exists and is not a folder", outdir);
    DIR *d = opendir(outdir);
    if (!d)
        return vf_error(VF_ERR_IO, "%s: cannot read the folder: %s", outdir, strerror(errno));
    int empty = 1;
    for (struct dirent *e; empty && (e = readdir(d));)
        empty = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
    closedir(d);
    *state = empty ? VF_OUTDIR_EMPTY : VF_OUTDIR_REPLACE;
    if (empty)
        return VF_OK;
    if (!force)
        return vf_error(VF_ERR_INVALID_ARG, "%s: exists and is not empty (--force replaces an earlier model)",
                        outdir);
    char *mi = vf_path_join(outdir, "model_index.json");
    int is_model = mi && vf_is_file(mi);
    vf_free(mi);
    if (!is_model)
        return vf_error(VF_ERR_INVALID_ARG,
                        "%s: not a model folder (no model_index.json); refusing to replace it even with --force",
                        outdir);
    return VF_OK;
}

vf_status vf_outdir_temp(const char *outdir, char **tmp)
{
    *tmp = vf_path_sibling(outdir, ".tmp-XXXXXX");
    if (!*tmp)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", outdir);
    if (!mkdtemp(*tmp)) {
        vf_status st = vf_error(VF_ERR_IO, "%s: cannot create a folder beside it: %s", outdir, strerror(errno));
        vf_free(*tmp);
        *tmp = NULL;
        return st;
    }
    chmod(*tmp, 0755); /* mkdtemp makes it private; a model folder is not */
    return VF_OK;
}

vf_status vf_outdir_install(const char *tmp, const char *outdir, vf_outdir_state state)
{
    if (state == VF_OUTDIR_EMPTY && rmdir(outdir) != 0)
        return vf_error(VF_ERR_IO, "%s: cannot replace the empty folder: %s", outdir, strerror(errno));
    if (state != VF_OUTDIR_REPLACE) {
        if (rename(tmp, outdir) != 0)
            return vf_error(VF_ERR_IO, "%s: cannot rename %s into place: %s", outdir, tmp, strerror(errno));
        return VF_OK;
    }
    char *old = vf_path_sibling(outdir, ".old-XXXXXX");
    if (!old)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", outdir);
    vf_status st = VF_OK;
    if (!mkdtemp(old) || rename(outdir, old) != 0) {
        st = vf_error(VF_ERR_IO, "%s: cannot move the old model aside: %s", outdir, strerror(errno));
        rmdir(old);
    } else if (rename(tmp, outdir) != 0) {
        st = vf_error(VF_ERR_IO, "%s: cannot rename %s into place: %s", outdir, tmp, strerror(errno));
        rename(old, outdir);
    } else if (vf_remove_tree(old) != 0) {
        st = vf_error(VF_ERR_IO, "%s: written, but the old model moved to %s could not be removed: %s", outdir,
                      old, strerror(errno));
    }
    vf_free(old);
    return st;
}
