/* Tokenizers in the Hugging Face hub cache (see tokenizer_find.h).
 *
 * The cache layout is huggingface_hub's: models--ORG--NAME/refs/main holds the
 * revision the last download resolved "main" to, snapshots/REV/ holds that
 * revision's files (symlinks into blobs/). A snapshot may be partial (only the
 * files someone asked for), so a candidate counts only when its vocab.json and
 * merges.txt are both there, through the symlinks.
 */
#include "pipeline/tokenizer_find.h"
#include "core/alloc.h"
#include "core/error.h"
#include "io/json.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SNAPSHOTS 64

typedef struct candidate {
    const char *repo;             /* ORG/NAME                                   */
    const char *sub;              /* folder inside the snapshot; NULL: top level */
    const char *pad;              /* pad token to impose, or NULL               */
} candidate;

#define SDXL_BASE "stabilityai/stable-diffusion-xl-base-1.0"
#define SD15_RUNWAY "runwayml/stable-diffusion-v1-5"
#define SD15_NEW "stable-diffusion-v1-5/stable-diffusion-v1-5"
#define CLIP_L "openai/clip-vit-large-patch14"
#define CLIP_G "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"

static const candidate g_l_sdxl[] = {
    {SDXL_BASE, "tokenizer", NULL}, {SD15_RUNWAY, "tokenizer", NULL}, {SD15_NEW, "tokenizer", NULL},
    {CLIP_L, NULL, NULL}, {NULL, NULL, NULL}};
static const candidate g_l_sd15[] = {
    {SD15_RUNWAY, "tokenizer", NULL}, {SD15_NEW, "tokenizer", NULL}, {CLIP_L, NULL, NULL},
    {SDXL_BASE, "tokenizer", NULL}, {NULL, NULL, NULL}};
static const candidate g_g[] = {{SDXL_BASE, "tokenizer_2", NULL}, {CLIP_G, NULL, "!"}, {NULL, NULL, NULL}};

static char *dup_join(const char *a, const char *b)
{
    char *s = vf_path_join(a, b);
    if (!s)
        vf_error(VF_ERR_NO_MEMORY, "path %s/%s", a, b);
    return s;
}

char *vf_hf_hub_cache(void)
{
    const char *v;
    if ((v = getenv("HF_HUB_CACHE")) && v[0])
        return vf_strdup(v);
    if ((v = getenv("HUGGINGFACE_HUB_CACHE")) && v[0])
        return vf_strdup(v);
    if ((v = getenv("HF_HOME")) && v[0])
        return dup_join(v, "hub");
    if ((v = getenv("XDG_CACHE_HOME")) && v[0])
        return dup_join(v, "huggingface/hub");
    if ((v = getenv("HOME")) && v[0])
        return dup_join(v, ".cache/huggingface/hub");
    return NULL;
}

static void append(char *looked, size_t cap, const char *fmt, const char *a, const char *b)
{
    size_t n = strnlen(looked, cap);
    if (n + 1 < cap)
        snprintf(looked + n, cap - n, fmt, a, b);
}

/* 1 when dir holds vocab.json and merges.txt. */
static int is_tokenizer_dir(const char *dir)
{
    char *v = vf_path_join(dir, "vocab.json"), *m = vf_path_join(dir, "merges.txt");
    int yes = v && m && vf_is_file(v) && vf_is_file(m);
    vf_free(v);
    vf_free(m);
    return yes;
}

/* A revision name is a plain folder name (refs/main is a file we read). */
static int plain_name(const char *s)
{
    return s[0] && s[0] != '.' && !strchr(s, '/') && strlen(s) < 256;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Snapshot revisions of repo_dir: refs/main's first, then the others sorted. */
static vf_status list_revisions(const char *repo_dir, char **revs, int *n)
{
    *n = 0;
    char *ref = vf_path_join(repo_dir, "refs/main"), *snaps = vf_path_join(repo_dir, "snapshots");
    char *text = NULL;
    size_t len = 0;
    vf_status st = ref && snaps ? VF_OK : vf_error(VF_ERR_NO_MEMORY, "%s", repo_dir);
    if (st == VF_OK && vf_is_file(ref) && vf_read_file(ref, 4096, &text, &len) == VF_OK) {
        while (len && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' '))
            text[--len] = 0;
        if (plain_name(text))
            revs[(*n)++] = text;
        else
            vf_free(text);
    }
    vf_clear_error();
    DIR *d = st == VF_OK ? opendir(snaps) : NULL;
    int first = *n;
    for (struct dirent *e; d && (e = readdir(d)) && *n < MAX_SNAPSHOTS;) {
        if (!plain_name(e->d_name) || (first && strcmp(e->d_name, revs[0]) == 0))
            continue;
        if (!(revs[*n] = vf_strdup(e->d_name))) {
            st = VF_ERR_NO_MEMORY;
            break;
        }
        (*n)++;
    }
    if (d)
        closedir(d);
    qsort(revs + first, (size_t)(*n - first), sizeof *revs, cmp_str);
    vf_free(ref);
    vf_free(snaps);
    return st;
}

/* "models--ORG--NAME" for "ORG/NAME". */
static void repo_folder(const char *repo, char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "models--");
    for (const char *p = repo; *p && n + 3 < cap; p++) {
        if (*p == '/')
            out[n++] = '-';
        out[n++] = *p == '/' ? '-' : *p;
    }
    out[n] = 0;
}

/* The tokenizer folder of candidate c in the cache, or NULL in *out. */
static vf_status try_candidate(const char *cache, const candidate *c, char **out)
{
    char name[256], *revs[MAX_SNAPSHOTS];
    int n = 0;
    *out = NULL;
    repo_folder(c->repo, name, sizeof name);
    char *repo_dir = vf_path_join(cache, name);
    if (!repo_dir)
        return vf_error(VF_ERR_NO_MEMORY, "%s", cache);
    vf_status st = vf_is_dir(repo_dir) ? list_revisions(repo_dir, revs, &n) : VF_OK;
    for (int i = 0; i < n; i++) {
        char rel[600];
        snprintf(rel, sizeof rel, "snapshots/%s%s%s", revs[i], c->sub ? "/" : "", c->sub ? c->sub : "");
        char *dir = st == VF_OK && !*out ? vf_path_join(repo_dir, rel) : NULL;
        if (dir && is_tokenizer_dir(dir))
            *out = dir;
        else
            vf_free(dir);
        vf_free(revs[i]);
    }
    vf_free(repo_dir);
    return st == VF_OK ? VF_OK : vf_error(st, "%s: reading the cache", cache);
}

vf_status vf_tokenizer_find_cached(vf_arch arch, int which, vf_tok_source *src, int *found, char *looked,
                                   size_t cap)
{
    memset(src, 0, sizeof *src);
    *found = 0;
    const candidate *list = which ? g_g : arch == VF_ARCH_SDXL ? g_l_sdxl : g_l_sd15;
    char *cache = vf_hf_hub_cache();
    if (!cache) {
        append(looked, cap, "%s%s", looked[0] ? "; " : "", "no Hugging Face cache (HF_HOME and HOME unset)");
        return VF_OK;
    }
    append(looked, cap, "%sthe Hugging Face cache %s:", looked[0] ? "; " : "", cache);
    vf_status st = VF_OK;
    for (const candidate *c = list; st == VF_OK && c->repo && !*found; c++) {
        append(looked, cap, c == list ? " %s/%s" : ", %s/%s", c->repo, c->sub ? c->sub : "");
        st = try_candidate(cache, c, &src->path);
        if (st == VF_OK && src->path) {
            src->pad = c->pad;
            *found = 1;
        }
    }
    vf_free(cache);
    return st;
}
