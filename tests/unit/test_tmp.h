/* Scratch folders for tests that write files: one temporary folder per test
 * case, paths inside it, removal with everything in it (the library's own
 * vf_remove_tree), and small file helpers. Header-only, like test.h. */
#ifndef VF_TEST_TMP_H
#define VF_TEST_TMP_H

#include "io/outdir.h"
#include "test.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TMP_PATH_MAX 512

typedef struct tmpd {
    char dir[64];
    char path[TMP_PATH_MAX];
} tmpd;

/* A new folder /tmp/vf_<tag>_XXXXXX; 0 (and a failed check) when it cannot be made. */
static inline int tmp_open(tmpd *t, const char *tag)
{
    snprintf(t->dir, sizeof t->dir, "/tmp/vf_%s_XXXXXX", tag);
    if (!mkdtemp(t->dir)) {
        perror("mkdtemp");
        CHECK(0);
        t->dir[0] = 0;
        return 0;
    }
    return 1;
}

/* dir/name, valid until the next call on t. */
static inline const char *tmp_path(tmpd *t, const char *name)
{
    snprintf(t->path, sizeof t->path, "%s/%s", t->dir, name);
    return t->path;
}

static inline void tmp_close(tmpd *t)
{
    if (t->dir[0])
        vf_remove_tree(t->dir);
}

/* A fresh folder /tmp/vf_<tag>_XXXXXX in a static buffer (one at a time); the
 * caller removes it with vf_remove_tree. NULL when it cannot be made. */
static inline char *tmp_scratch(const char *tag)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/vf_%s_XXXXXX", tag);
    return mkdtemp(path);
}

static inline void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f)
        return;
    fputs(text, f);
    fclose(f);
}

/* Entries in dir other than . and ..; -1 when it cannot be read. */
static inline int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

#endif
