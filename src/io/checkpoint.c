/* Checkpoint layouts mapped to one canonical naming (see checkpoint.h).
 *
 * Opening reads headers only. A diffusers folder is driven by model_index.json:
 * it names the pipeline class (the architecture) and the components; each
 * component folder has a config.json and weights in one of the usual spellings
 * (plain, .fp16 variant, or sharded with an index). A single file is mapped key
 * by key through keymap_sd.c after one pass that works out the UNet's block
 * structure, and its configs are either taken from config_dir (checked against
 * the shapes) or inferred from the shapes (keymap_config.c).
 *
 * Every component ends as an array of vf_ckpt_tensor sorted by canonical name,
 * so lookups are a bsearch and two stored tensors mapping to the same name are
 * found as neighbours. The arrays are never reallocated after open, because the
 * model layer keeps pointers to their elements. Canonical names live in a small
 * chunked arena (a handful of allocations instead of one per tensor).
 *
 * Errors name the file (and the tensor or config key). On any error the
 * half-built checkpoint is closed, which frees everything opened so far.
 */
#include "io/checkpoint.h"
#include "core/alloc.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/quant.h"
#include "io/json.h"
#include "io/keymap.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#define NAME_CHUNK (64u << 10)

typedef struct name_chunk {
    struct name_chunk *next;
    size_t used, cap;
    char data[];
} name_chunk;

typedef struct ck_comp {
    int present;
    vf_ckpt_tensor *t;
    size_t n, cap;
    cJSON *config;
} ck_comp;

struct vf_checkpoint {
    char *path;
    int single;
    vf_arch arch;
    ck_comp comp[VF_COMPONENT_COUNT];
    vf_st_file **files;
    size_t nfiles, fcap;
    cJSON *scheduler;
    int force_zeros;
    size_t ignored;
    name_chunk *names;
};

/* Folder names in a diffusers layout (and in config_dir). */
static const char *const g_comp_dirs[VF_COMPONENT_COUNT] = {
    [VF_COMPONENT_TEXT_ENCODER] = "text_encoder",
    [VF_COMPONENT_TEXT_ENCODER_2] = "text_encoder_2",
    [VF_COMPONENT_UNET] = "unet",
    [VF_COMPONENT_VAE] = "vae",
};

/* Weight files of a component folder in order of preference. */
static const char *const g_weight_files[] = {
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
};
static const char *const g_index_files[] = {
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors.index.fp16.json",
    "model.safetensors.index.fp16.json",
};

/* ---- bookkeeping ---------------------------------------------------------------- */

static const char *intern(vf_checkpoint *ck, const char *s)
{
    size_t len = strlen(s) + 1;
    name_chunk *c = ck->names;
    if (!c || c->cap - c->used < len) {
        size_t cap = len > NAME_CHUNK ? len : NAME_CHUNK;
        name_chunk *nc = vf_malloc(sizeof *nc + cap);
        if (!nc)
            return NULL;
        nc->next = c;
        nc->used = 0;
        nc->cap = cap;
        ck->names = c = nc;
    }
    char *p = c->data + c->used;
    memcpy(p, s, len);
    c->used += len;
    return p;
}

static vf_status open_file(vf_checkpoint *ck, const char *path, vf_st_file **out)
{
    if (ck->nfiles == ck->fcap) {
        size_t cap = ck->fcap ? ck->fcap * 2 : 4;
        vf_st_file **nf = vf_realloc(ck->files, cap * sizeof *nf);
        if (!nf)
            return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
        ck->files = nf;
        ck->fcap = cap;
    }
    VF_TRY(vf_st_open(path, out));
    ck->files[ck->nfiles++] = *out;
    return VF_OK;
}

/* Adds one canonical tensor that is a view of stored tensor src. */
static vf_status add_view(vf_checkpoint *ck, vf_component c, const char *name, vf_st_file *f,
                          const vf_st_tensor *src, vf_keymap_view view, int part)
{
    ck_comp *cc = &ck->comp[c];
    const char *path = vf_st_path(f);
    vf_ckpt_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = src->dtype;
    t.ndim = src->ndim;
    memcpy(t.shape, src->shape, sizeof t.shape);
    t.nbytes = src->nbytes;
    t.file = f;
    t.src = src;
    t.packed = src->packed;
    if (view == VF_VIEW_ROWS3) {
        if (src->ndim < 1 || src->shape[0] % 3 != 0)
            return vf_error(VF_ERR_SHAPE, "%s: tensor '%s': fused q/k/v has %lld rows, not a multiple of 3",
                            path, src->name, src->ndim < 1 ? 0LL : (long long)src->shape[0]);
        t.shape[0] /= 3;
        t.nbytes = src->nbytes / 3; /* packed bytes are linear in the rows too */
        t.src_offset = (uint64_t)part * t.nbytes;
    } else if (view == VF_VIEW_TRANSPOSE && src->packed) {
        return vf_error(VF_ERR_UNSUPPORTED, "%s: tensor '%s': a %s tensor cannot be read transposed; store it "
                        "unquantized", path, src->name, vf_dtype_name(src->dtype));
    } else if (view == VF_VIEW_TRANSPOSE) {
        if (src->ndim != 2)
            return vf_error(VF_ERR_SHAPE, "%s: tensor '%s': expected a 2-D projection, got %d-D", path,
                            src->name, src->ndim);
        t.shape[0] = src->shape[1];
        t.shape[1] = src->shape[0];
        t.transpose = 1;
    } else if (view == VF_VIEW_LINEAR && src->ndim == 4) {
        if (src->shape[2] != 1 || src->shape[3] != 1)
            return vf_error(VF_ERR_SHAPE, "%s: tensor '%s': expected a 1x1 convolution, got %lldx%lld",
                            path, src->name, (long long)src->shape[2], (long long)src->shape[3]);
        t.ndim = 2;
        t.shape[2] = t.shape[3] = 0;
    }
    if (cc->n == cc->cap) {
        size_t cap = cc->cap ? cc->cap * 2 : 64;
        vf_ckpt_tensor *nt = vf_realloc(cc->t, cap * sizeof *nt);
        if (!nt)
            return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: tensor '%s'", path, src->name);
        cc->t = nt;
        cc->cap = cap;
    }
    t.name = intern(ck, name);
    if (!t.name)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: tensor '%s'", path, src->name);
    cc->t[cc->n++] = t;
    return VF_OK;
}

static vf_status add_mapped(vf_checkpoint *ck, vf_st_file *f, const vf_st_tensor *src,
                            const vf_keymap_result *r)
{
    if (r->kind != VF_KEYMAP_MAPPED) {
        ck->ignored++;
        return VF_OK;
    }
    for (int p = 0; p < r->n; p++)
        VF_TRY(add_view(ck, r->comp, r->name[p], f, src, r->view, p));
    return VF_OK;
}

static int cmp_tensor(const void *a, const void *b)
{
    return strcmp(((const vf_ckpt_tensor *)a)->name, ((const vf_ckpt_tensor *)b)->name);
}

/* Sorts a component by name and rejects two stored tensors with one canonical name. */
static vf_status finish_component(vf_checkpoint *ck, vf_component c)
{
    ck_comp *cc = &ck->comp[c];
    if (cc->n > 1)
        qsort(cc->t, cc->n, sizeof *cc->t, cmp_tensor);
    for (size_t i = 1; i < cc->n; i++) {
        const vf_ckpt_tensor *a = &cc->t[i - 1], *b = &cc->t[i];
        if (strcmp(a->name, b->name) == 0)
            return vf_error(VF_ERR_FORMAT, "%s: tensor '%s' and %s: tensor '%s' both give %s tensor '%s'",
                            vf_st_path(a->file), a->src->name, vf_st_path(b->file), b->src->name,
                            g_comp_dirs[c], a->name);
    }
    return VF_OK;
}

/* ---- diffusers folders ------------------------------------------------------------ */

static vf_status add_file_tensors(vf_checkpoint *ck, vf_component c, vf_st_file *f)
{
    vf_keymap_result r;
    for (size_t i = 0; i < vf_st_count(f); i++) {
        const vf_st_tensor *t = vf_st_at(f, i);
        vf_keymap_diffusers(c, t->name, &r);
        VF_TRY(add_mapped(ck, f, t, &r));
    }
    return VF_OK;
}

static int valid_shard_name(const char *s)
{
    return s[0] && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

typedef struct shard_set {
    const char **names; /* point into the index's cJSON */
    vf_st_file **files;
    size_t n, cap;
} shard_set;

static int shard_find(const shard_set *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->names[i], name) == 0)
            return (int)i;
    return -1;
}

static vf_status shard_add(shard_set *s, const char *name)
{
    if (shard_find(s, name) >= 0)
        return VF_OK;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        const char **nn = vf_realloc(s->names, cap * sizeof *nn);
        if (!nn)
            return VF_ERR_NO_MEMORY;
        s->names = nn;
        vf_st_file **nf = vf_realloc(s->files, cap * sizeof *nf);
        if (!nf)
            return VF_ERR_NO_MEMORY;
        s->files = nf;
        s->cap = cap;
    }
    s->names[s->n] = name;
    s->files[s->n++] = NULL;
    return VF_OK;
}

/* Collects and opens the distinct shards named by weight_map. */
static vf_status open_shards(vf_checkpoint *ck, const char *folder, const char *ipath,
                             const cJSON *wm, shard_set *s)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e) || !valid_shard_name(e->valuestring))
            return vf_error(VF_ERR_FORMAT, "%s: weight_map entry '%s' is not a file name in the folder",
                            ipath, e->string ? e->string : "");
        if (shard_add(s, e->valuestring) != VF_OK)
            return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", ipath);
    }
    for (size_t i = 0; i < s->n; i++) {
        char *p = vf_path_join(folder, s->names[i]);
        if (!p)
            return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", ipath);
        vf_status st = open_file(ck, p, &s->files[i]);
        vf_free(p);
        if (st != VF_OK)
            return vf_error_prefix(st, "%s: shard '%s'", ipath, s->names[i]);
    }
    return VF_OK;
}

/* Every listed tensor must be in its shard; a tensor stored in a shard the
 * index does not name for it is in two shards (or in the wrong one). */
static vf_status add_shards(vf_checkpoint *ck, vf_component c, const char *ipath, const cJSON *wm,
                            const shard_set *s)
{
    vf_keymap_result r;
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        vf_st_file *f = s->files[shard_find(s, e->valuestring)];
        const vf_st_tensor *t = vf_st_find(f, e->string);
        if (!t)
            return vf_error(VF_ERR_NOT_FOUND, "%s: tensor '%s' is listed in shard '%s' but %s does not hold it",
                            ipath, e->string, e->valuestring, vf_st_path(f));
        vf_keymap_diffusers(c, t->name, &r);
        VF_TRY(add_mapped(ck, f, t, &r));
    }
    for (size_t i = 0; i < s->n; i++) {
        for (size_t k = 0; k < vf_st_count(s->files[i]); k++) {
            const vf_st_tensor *t = vf_st_at(s->files[i], k);
            const cJSON *m = cJSON_GetObjectItemCaseSensitive(wm, t->name);
            if (!m) {
                ck->ignored++;
                continue;
            }
            if (strcmp(m->valuestring, s->names[i]) != 0)
                return vf_error(VF_ERR_FORMAT, "%s: tensor '%s' is in two shards: '%s' (as the index says) and '%s'",
                                ipath, t->name, m->valuestring, s->names[i]);
        }
    }
    return VF_OK;
}

static vf_status load_sharded(vf_checkpoint *ck, vf_component c, const char *folder, const char *ipath)
{
    cJSON *idx = NULL;
    shard_set s = {0};
    VF_TRY(vf_json_load(ipath, &idx));
    vf_status st;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
    if (!cJSON_IsObject(wm)) {
        st = vf_error(VF_ERR_FORMAT, "%s: no \"weight_map\" object", ipath);
        goto out;
    }
    st = open_shards(ck, folder, ipath, wm, &s);
    if (st == VF_OK)
        st = add_shards(ck, c, ipath, wm, &s);
out:
    vf_free(s.names);
    vf_free(s.files);
    cJSON_Delete(idx);
    return st;
}

static int has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* No safetensors weights: say why, naming a pickle file when there is one. */
static vf_status no_weights(const char *folder)
{
    static const char *const pickles[] = {".bin", ".ckpt", ".pt", ".pth", ".pkl"};
    char found[256] = "";
    DIR *d = opendir(folder);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        for (size_t i = 0; i < sizeof pickles / sizeof pickles[0]; i++) {
            if (has_suffix(de->d_name, pickles[i]) && strlen(de->d_name) < sizeof found &&
                (!found[0] || strcmp(de->d_name, found) < 0))
                strcpy(found, de->d_name);
        }
    }
    if (d)
        closedir(d);
    if (found[0])
        return vf_error(VF_ERR_UNSUPPORTED,
                        "%s/%s: pickle checkpoints are not loaded; convert to safetensors", folder, found);
    return vf_error(VF_ERR_NOT_FOUND,
                    "%s: no weights (expected diffusion_pytorch_model.safetensors or model.safetensors, "
                    "an .fp16 variant, or a sharded *.safetensors.index.json)",
                    folder);
}

static vf_status load_weights(vf_checkpoint *ck, vf_component c, const char *folder)
{
    for (size_t i = 0; i < sizeof g_weight_files / sizeof g_weight_files[0]; i++) {
        char *p = vf_path_join(folder, g_weight_files[i]);
        if (!p)
            return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", folder);
        vf_st_file *f = NULL;
        vf_status st = VF_OK;
        int found = vf_is_file(p);
        if (found)
            st = open_file(ck, p, &f);
        vf_free(p);
        if (found)
            return st != VF_OK ? st : add_file_tensors(ck, c, f);
    }
    for (size_t i = 0; i < sizeof g_index_files / sizeof g_index_files[0]; i++) {
        char *p = vf_path_join(folder, g_index_files[i]);
        if (!p)
            return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", folder);
        vf_status st = VF_OK;
        int found = vf_is_file(p);
        if (found)
            st = load_sharded(ck, c, folder, p);
        vf_free(p);
        if (found)
            return st;
    }
    return no_weights(folder);
}

static vf_status open_component(vf_checkpoint *ck, vf_component c)
{
    vf_status st;
    char *folder = vf_path_join(ck->path, g_comp_dirs[c]);
    char *cfg = folder ? vf_path_join(folder, "config.json") : NULL;
    if (!cfg) {
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "%s", ck->path);
        goto out;
    }
    if (!vf_is_dir(folder)) {
        st = vf_error(VF_ERR_NOT_FOUND, "%s: component folder '%s' is listed in model_index.json but missing",
                      folder, g_comp_dirs[c]);
        goto out;
    }
    ck->comp[c].present = 1;
    st = vf_json_load(cfg, &ck->comp[c].config);
    if (st == VF_OK)
        st = load_weights(ck, c, folder);
    if (st == VF_OK)
        st = finish_component(ck, c);
out:
    vf_free(cfg);
    vf_free(folder);
    return st;
}

/* A component is listed as ["library", "Class"]; [null, null] means absent. */
static vf_status listed(const cJSON *mi, const char *path, vf_component c, int *yes)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(mi, g_comp_dirs[c]);
    *yes = 0;
    if (!e || cJSON_IsNull(e))
        return VF_OK;
    if (!cJSON_IsArray(e) || cJSON_GetArraySize(e) != 2)
        return vf_error(VF_ERR_FORMAT, "%s: \"%s\" is not [library, class]", path, g_comp_dirs[c]);
    *yes = !cJSON_IsNull(cJSON_GetArrayItem(e, 1));
    return VF_OK;
}

static vf_arch arch_of_class(const char *cls)
{
    if (strcmp(cls, "StableDiffusionPipeline") == 0)
        return VF_ARCH_SD15;
    if (strcmp(cls, "StableDiffusionXLPipeline") == 0)
        return VF_ARCH_SDXL;
    return VF_ARCH_UNKNOWN;
}

/* Loads dir/<rel> when it is a file; *out stays NULL otherwise. */
static vf_status load_optional_json(const char *dir, const char *rel, cJSON **out)
{
    *out = NULL;
    char *p = vf_path_join(dir, rel);
    if (!p)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", dir);
    vf_status st = vf_is_file(p) ? vf_json_load(p, out) : VF_OK;
    vf_free(p);
    return st;
}

static vf_status read_force_zeros(vf_checkpoint *ck, const cJSON *mi, const char *what)
{
    int bad = 0;
    ck->force_zeros = ck->arch == VF_ARCH_SDXL;
    if (mi)
        ck->force_zeros = vf_json_bool(mi, "force_zeros_for_empty_prompt", ck->force_zeros, &bad);
    if (bad)
        return vf_error(VF_ERR_FORMAT, "%s: \"force_zeros_for_empty_prompt\" is not a boolean", what);
    return VF_OK;
}

static vf_status open_folder(vf_checkpoint *ck)
{
    cJSON *mi = NULL;
    char *mpath = vf_path_join(ck->path, "model_index.json");
    vf_status st;
    if (!mpath)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", ck->path);
    if (!vf_is_file(mpath)) {
        st = vf_error(VF_ERR_NOT_FOUND, "%s: not a diffusers folder (no model_index.json)", ck->path);
        goto out;
    }
    st = vf_json_load(mpath, &mi);
    if (st != VF_OK)
        goto out;
    int bad = 0;
    const char *cls = vf_json_str(mi, "_class_name", NULL, &bad);
    if (!cls || bad) {
        st = vf_error(VF_ERR_FORMAT, "%s: no \"_class_name\" string", mpath);
        goto out;
    }
    ck->arch = arch_of_class(cls);
    if (ck->arch == VF_ARCH_UNKNOWN) {
        st = vf_error(VF_ERR_UNSUPPORTED,
                      "%s: pipeline class '%s' is not supported (StableDiffusionPipeline or "
                      "StableDiffusionXLPipeline)",
                      mpath, cls);
        goto out;
    }
    st = read_force_zeros(ck, mi, mpath);
    for (int c = 0; c < VF_COMPONENT_COUNT && st == VF_OK; c++) {
        int yes;
        st = listed(mi, mpath, (vf_component)c, &yes);
        if (st == VF_OK && yes)
            st = open_component(ck, (vf_component)c);
    }
    if (st == VF_OK)
        st = load_optional_json(ck->path, "scheduler/scheduler_config.json", &ck->scheduler);
out:
    cJSON_Delete(mi);
    vf_free(mpath);
    return st;
}

/* ---- single files ------------------------------------------------------------------ */

/* The config of a present component of a single file: config_dir's when it has
 * one (checked against the shapes), else inferred. */
static vf_status single_config(vf_checkpoint *ck, vf_component c, const char *config_dir)
{
    cJSON *cfg = NULL;
    if (config_dir) {
        char *dir = vf_path_join(config_dir, g_comp_dirs[c]);
        char *p = dir ? vf_path_join(dir, "config.json") : NULL;
        vf_status st = VF_OK;
        if (!p)
            st = vf_error_prefix(VF_ERR_NO_MEMORY, "%s", config_dir);
        else if (vf_is_file(p)) {
            st = vf_json_load(p, &cfg);
            if (st == VF_OK)
                st = vf_keymap_check_config(ck, c, cfg, p);
        }
        vf_free(p);
        vf_free(dir);
        if (st != VF_OK) {
            cJSON_Delete(cfg);
            return st;
        }
    }
    if (!cfg)
        VF_TRY(vf_keymap_infer_config(ck, c, &cfg));
    ck->comp[c].config = cfg;
    return VF_OK;
}

static vf_status map_single(vf_checkpoint *ck, vf_st_file *f)
{
    size_t n = vf_st_count(f);
    const char **keys = vf_malloc((n ? n : 1) * sizeof *keys);
    if (!keys)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", ck->path);
    for (size_t i = 0; i < n; i++)
        keys[i] = vf_st_at(f, i)->name;
    vf_status st = VF_OK;
    vf_sd_layout lay;
    ck->arch = vf_keymap_detect_arch(keys, n);
    if (ck->arch == VF_ARCH_UNKNOWN)
        st = vf_error(VF_ERR_UNSUPPORTED,
                      "%s: architecture not recognised: no cond_stage_model.transformer.* (SD1.5) or "
                      "conditioner.embedders.1.model.* (SDXL) tensors",
                      ck->path);
    if (st == VF_OK)
        st = vf_sd_layout_build(ck->path, keys, n, &lay);
    vf_free(keys);
    vf_keymap_result r;
    for (size_t i = 0; i < n && st == VF_OK; i++) {
        vf_keymap_sd(&lay, vf_st_at(f, i)->name, &r);
        st = add_mapped(ck, f, vf_st_at(f, i), &r);
    }
    return st;
}

static vf_status open_single(vf_checkpoint *ck, const char *config_dir)
{
    vf_st_file *f;
    VF_TRY(open_file(ck, ck->path, &f));
    VF_TRY(map_single(ck, f));
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        ck->comp[c].present = ck->comp[c].n > 0;
        VF_TRY(finish_component(ck, (vf_component)c));
    }
    /* configs last: inference looks tensors up across components */
    for (int c = 0; c < VF_COMPONENT_COUNT; c++)
        if (ck->comp[c].present)
            VF_TRY(single_config(ck, (vf_component)c, config_dir));
    if (!config_dir)
        return read_force_zeros(ck, NULL, ck->path);
    cJSON *mi = NULL;
    VF_TRY(load_optional_json(config_dir, "scheduler/scheduler_config.json", &ck->scheduler));
    VF_TRY(load_optional_json(config_dir, "model_index.json", &mi));
    vf_status st = read_force_zeros(ck, mi, config_dir);
    cJSON_Delete(mi);
    return st;
}

/* ---- public ----------------------------------------------------------------------- */

vf_status vf_checkpoint_open(const char *path, const char *config_dir, vf_checkpoint **out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_checkpoint_open: out is NULL");
    *out = NULL;
    if (!path || !path[0])
        return vf_error(VF_ERR_INVALID_ARG, "vf_checkpoint_open: no path");
    int dir = vf_is_dir(path);
    if (!dir && !vf_is_file(path))
        return vf_error(VF_ERR_NOT_FOUND, "%s: no such file or folder", path);
    vf_checkpoint *ck = vf_calloc(1, sizeof *ck);
    if (!ck)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
    vf_status st = VF_OK;
    ck->path = vf_strdup(path);
    if (!ck->path)
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
    ck->single = !dir;
    if (st == VF_OK)
        st = dir ? open_folder(ck) : open_single(ck, config_dir);
    if (st != VF_OK) {
        vf_checkpoint_close(ck);
        return st;
    }
    *out = ck;
    return VF_OK;
}

void vf_checkpoint_close(vf_checkpoint *ck)
{
    if (!ck)
        return;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        vf_free(ck->comp[c].t);
        cJSON_Delete(ck->comp[c].config);
    }
    for (size_t i = 0; i < ck->nfiles; i++)
        vf_st_close(ck->files[i]);
    vf_free(ck->files);
    cJSON_Delete(ck->scheduler);
    while (ck->names) {
        name_chunk *next = ck->names->next;
        vf_free(ck->names);
        ck->names = next;
    }
    vf_free(ck->path);
    vf_free(ck);
}

const char *vf_checkpoint_path(const vf_checkpoint *ck) { return ck->path; }

int vf_checkpoint_is_single_file(const vf_checkpoint *ck) { return ck->single; }

vf_arch vf_checkpoint_arch(const vf_checkpoint *ck) { return ck->arch; }

static int valid_comp(vf_component c) { return (unsigned)c < VF_COMPONENT_COUNT; }

int vf_checkpoint_has(const vf_checkpoint *ck, vf_component c)
{
    return valid_comp(c) && ck->comp[c].present;
}

const cJSON *vf_checkpoint_config(const vf_checkpoint *ck, vf_component c)
{
    return valid_comp(c) ? ck->comp[c].config : NULL;
}

const cJSON *vf_checkpoint_scheduler_config(const vf_checkpoint *ck) { return ck->scheduler; }

int vf_checkpoint_force_zeros_for_empty_prompt(const vf_checkpoint *ck) { return ck->force_zeros; }

size_t vf_checkpoint_count(const vf_checkpoint *ck, vf_component c)
{
    return valid_comp(c) ? ck->comp[c].n : 0;
}

const vf_ckpt_tensor *vf_checkpoint_at(const vf_checkpoint *ck, vf_component c, size_t i)
{
    return valid_comp(c) && i < ck->comp[c].n ? &ck->comp[c].t[i] : NULL;
}

const vf_ckpt_tensor *vf_checkpoint_find(const vf_checkpoint *ck, vf_component c, const char *name)
{
    if (!valid_comp(c) || !name)
        return NULL;
    const ck_comp *cc = &ck->comp[c];
    size_t lo = 0, hi = cc->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int k = strcmp(cc->t[mid].name, name);
        if (k == 0)
            return &cc->t[mid];
        if (k < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

size_t vf_checkpoint_ignored_count(const vf_checkpoint *ck) { return ck->ignored; }

size_t vf_checkpoint_file_count(const vf_checkpoint *ck) { return ck->nfiles; }

vf_st_file *vf_checkpoint_file(const vf_checkpoint *ck, size_t i) { return i < ck->nfiles ? ck->files[i] : NULL; }

/* dst is the canonical shape (R, C) row-major; src holds (C, R). */
static void transpose_2d(float *dst, const float *src, int64_t rows, int64_t cols)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            dst[r * cols + c] = src[c * rows + r];
}

/* A packed tensor's bytes: the whole stored tensor, or the data and scale
 * rows of a row slice (core/quant.h: vf_quant_layout). */
static vf_status read_packed(const vf_ckpt_tensor *t, void *dst)
{
    const char *path = vf_st_path(t->file);
    int64_t rows = t->shape[0], src_rows = t->src->shape[0], cols = 1;
    for (int d = 1; d < t->ndim; d++)
        cols *= t->shape[d];
    size_t dr, sr;
    if (rows == src_rows)
        return vf_st_read(t->file, t->src, 0, dst, t->nbytes);
    if (vf_quant_layout(t->dtype, cols, &dr, &sr) != 0 || !t->nbytes)
        return vf_error(VF_ERR_INTERNAL, "%s: tensor '%s': no layout for its %s view", path, t->src->name,
                        vf_dtype_name(t->dtype));
    uint64_t r0 = t->src_offset / t->nbytes * (uint64_t)rows;
    unsigned char *d = dst;
    VF_TRY(vf_st_read(t->file, t->src, r0 * dr, d, (uint64_t)rows * dr));
    return vf_st_read(t->file, t->src, (uint64_t)src_rows * dr + r0 * sr, d + (uint64_t)rows * dr,
                      (uint64_t)rows * sr);
}

vf_status vf_checkpoint_read_raw(const vf_checkpoint *ck, const vf_ckpt_tensor *t, void *dst)
{
    (void)ck;
    if (!t || !dst)
        return vf_error(VF_ERR_INVALID_ARG, "vf_checkpoint_read_raw: no tensor or destination");
    if (t->packed)
        return read_packed(t, dst);
    if (t->transpose)
        return vf_error(VF_ERR_UNSUPPORTED, "%s: tensor '%s': a transposed view has no stored bytes of its own",
                        vf_st_path(t->file), t->src->name);
    return vf_st_read(t->file, t->src, t->src_offset, dst, t->nbytes);
}

static vf_status read_packed_f32(const vf_ckpt_tensor *t, float *dst)
{
    const char *path = vf_st_path(t->file);
    int64_t cols = 1;
    for (int d = 1; d < t->ndim; d++)
        cols *= t->shape[d];
    void *raw = vf_malloc(t->nbytes ? t->nbytes : 1);
    if (!raw)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: tensor '%s'", path, t->src->name);
    vf_status st = read_packed(t, raw);
    if (st == VF_OK && vf_dequantize(t->dtype, raw, t->shape[0], cols, dst) != VF_OK)
        st = vf_error_prefix(VF_ERR_FORMAT, "%s: tensor '%s'", path, t->src->name);
    vf_free(raw);
    return st;
}

vf_status vf_checkpoint_read_f32(const vf_checkpoint *ck, const vf_ckpt_tensor *t, float *dst)
{
    if (!t || !dst)
        return vf_error(VF_ERR_INVALID_ARG, "vf_checkpoint_read_f32: no tensor or destination");
    if (t->packed)
        return read_packed_f32(t, dst);
    const char *path = vf_st_path(t->file);
    if (!vf_dtype_is_float(t->dtype))
        return vf_error(VF_ERR_UNSUPPORTED, "%s: tensor '%s': dtype %s is not a float type", path,
                        t->src->name, vf_dtype_name(t->dtype));
    int64_t numel = vf_shape_numel(t->shape, t->ndim);
    if (numel < 0)
        return vf_error(VF_ERR_FORMAT, "%s: tensor '%s': element count overflows", path, t->src->name);
    if (t->dtype == VF_DTYPE_F32 && !t->transpose)
        return vf_st_read(t->file, t->src, t->src_offset, dst, t->nbytes);
    vf_status st = VF_OK;
    float *tmp = NULL;
    void *raw = vf_malloc(t->nbytes ? t->nbytes : 1);
    if (!raw)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: tensor '%s'", path, t->src->name);
    st = vf_st_read(t->file, t->src, t->src_offset, raw, t->nbytes);
    if (st != VF_OK)
        goto out;
    if (!t->transpose) {
        vf_convert_to_f32(dst, raw, t->dtype, (size_t)numel);
        goto out;
    }
    tmp = vf_malloc((size_t)numel * sizeof *tmp + 1);
    if (!tmp) {
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "%s: tensor '%s'", path, t->src->name);
        goto out;
    }
    vf_convert_to_f32(tmp, raw, t->dtype, (size_t)numel);
    transpose_2d(dst, tmp, t->shape[0], t->shape[1]);
out:
    vf_free(tmp);
    vf_free(raw);
    (void)ck;
    return st;
}
