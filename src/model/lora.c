/* LoRA files onto a model's weights (see lora.h).
 *
 * Loading is three passes over the file's tensors, all before anything is
 * kept, so that a bad file leaves nothing behind:
 *   1. classify each key by its suffix into (module, role): down, up, alpha,
 *      or other; the old diffusers spellings are rewritten to module paths here;
 *   2. sort by module and resolve each module to (component, weight index)
 *      through per-component name tables of the model (dotted and underscore
 *      forms, built once per load) and, for original-layout UNet names, the
 *      single-file key map over a layout made from the UNet config;
 *   3. check each matched pair (partner present, dtypes, shapes against the
 *      weight, alpha) and read its factors, checking they are finite.
 * Entries end sorted by (component, weight) so that the per-weight lookup at
 * conversion time is a binary search; most weights have no entry at all.
 */
#include "model/lora.h"
#include "core/alloc.h"
#include "core/dtype.h"
#include "core/error.h"
#include "io/json.h"
#include "io/keymap.h"
#include "io/safetensors.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODNAME_MAX 512
#define FINITE_CHUNK 4096

enum { ROLE_OTHER = 0, ROLE_DOWN, ROLE_UP, ROLE_ALPHA };

typedef struct lora_entry {
    vf_component comp;
    int wi;                       /* index into the component's bl->w          */
    int rank;
    int64_t oc, k;                /* up is (oc, rank), down is (rank, k)        */
    float scale;                  /* alpha / rank, or 1                         */
    vf_dtype up_dt, down_dt;
    void *up, *down;              /* the factors as stored                      */
    char *key;                    /* the module as the file names it            */
} lora_entry;

struct vf_lora {
    char *path;
    lora_entry *e;
    int n;
    vf_lora_info info;
};

/* ---- pass 1: keys ------------------------------------------------------------------ */

typedef struct key_ref {
    char *module;                 /* without its role suffix, old names rewritten */
    int role;
    int tensor;                   /* index in the file                         */
} key_ref;

static const struct {
    const char *suffix;
    int role;
    int old;                      /* an old diffusers spelling: rewrite the module */
} g_suffixes[] = {
    {".lora_down.weight", ROLE_DOWN, 0}, {".lora_up.weight", ROLE_UP, 0},
    {".lora_A.weight", ROLE_DOWN, 0},    {".lora_B.weight", ROLE_UP, 0},
    {".lora.down.weight", ROLE_DOWN, 0}, {".lora.up.weight", ROLE_UP, 0},
    {".lora_linear_layer.down.weight", ROLE_DOWN, 0}, {".lora_linear_layer.up.weight", ROLE_UP, 0},
    {"_lora.down.weight", ROLE_DOWN, 1}, {"_lora.up.weight", ROLE_UP, 1},
    {".alpha", ROLE_ALPHA, 0},
};

/* Tensors of adapter kinds that are not a plain low-rank pair: applying the
 * rest of such a file would give wrong weights, so they are refused. */
static const struct {
    const char *part;
    const char *what;
} g_unsupported[] = {
    {".lora_mid.", "LoCon with a Tucker core (lora_mid)"},
    {".dora_scale", "DoRA (dora_scale)"},
    {"lora_magnitude_vector", "DoRA (lora_magnitude_vector)"},
    {".hada_", "LoHa (LyCORIS)"},
    {".lokr_", "LoKr (LyCORIS)"},
    {".lora_B.bias", "LoRA biases (lora_B.bias)"},
    {".lora_up.bias", "LoRA biases (lora_up.bias)"},
};

static int ends_with(const char *s, size_t n, const char *suf)
{
    size_t k = strlen(suf);
    return n >= k && memcmp(s + n - k, suf, k) == 0;
}

/* The old attention-processor spelling "<path>.processor.to_q" (UNet) or
 * "<path>.self_attn.to_q" (text encoders) as the module path it patches. */
static vf_status rewrite_old(const char *path, const char *key, char *m)
{
    char buf[MODNAME_MAX];
    char *proc = strstr(m, ".processor.");
    if (proc)
        memmove(proc, proc + strlen(".processor"), strlen(proc + strlen(".processor")) + 1);
    char *last = strrchr(m, '.');
    const char *leaf = last ? last + 1 : m;
    int te = strncmp(m, "text_encoder", 12) == 0;
    static const char *const unet_names[][2] = {{"to_out", "to_out.0"}};
    static const char *const te_names[][2] = {
        {"to_q", "q_proj"}, {"to_k", "k_proj"}, {"to_v", "v_proj"}, {"to_out", "out_proj"}};
    const char *const (*tab)[2] = te ? te_names : unet_names;
    size_t n = te ? 4 : 1;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(leaf, tab[i][0]) != 0)
            continue;
        int k = snprintf(buf, sizeof buf, "%.*s%s", (int)(leaf - m), m, tab[i][1]);
        if (k < 0 || (size_t)k >= sizeof buf)
            return vf_error(VF_ERR_FORMAT, "%s: key '%s' is too long", path, key);
        memcpy(m, buf, (size_t)k + 1);
        break;
    }
    return VF_OK;
}

static vf_status classify(const char *path, const char *key, key_ref *r)
{
    size_t n = strlen(key);
    for (size_t i = 0; i < sizeof g_unsupported / sizeof g_unsupported[0]; i++)
        if (strstr(key, g_unsupported[i].part))
            return vf_error(VF_ERR_UNSUPPORTED, "%s: tensor '%s': %s is not supported", path, key,
                            g_unsupported[i].what);
    r->role = ROLE_OTHER;
    size_t keep = n;
    int old = 0;
    for (size_t i = 0; i < sizeof g_suffixes / sizeof g_suffixes[0]; i++) {
        if (ends_with(key, n, g_suffixes[i].suffix)) {
            r->role = g_suffixes[i].role;
            keep = n - strlen(g_suffixes[i].suffix);
            old = g_suffixes[i].old;
            break;
        }
    }
    if (keep >= MODNAME_MAX - 16)
        return vf_error(VF_ERR_FORMAT, "%s: key '%.80s...' is too long", path, key);
    char m[MODNAME_MAX];
    memcpy(m, key, keep);
    m[keep] = 0;
    if (old)
        VF_TRY(rewrite_old(path, key, m));
    r->module = vf_strdup(m);
    return r->module ? VF_OK : vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
}

static int cmp_key_ref(const void *a, const void *b)
{
    const key_ref *x = a, *y = b;
    int c = strcmp(x->module, y->module);
    return c ? c : x->tensor - y->tensor;
}

/* ---- pass 2: names -------------------------------------------------------------------- */

typedef struct wname {
    char *dot;                    /* canonical name without ".weight"           */
    char *und;                    /* the same with '_' for '.'                  */
    int wi;                       /* -1: ambiguous underscore form              */
} wname;

typedef struct ctable {
    wname *by_dot, *by_und;       /* the same entries, two orders               */
    int n;
} ctable;

typedef struct matcher {
    const char *path;
    const vf_lora_target *t;
    ctable tab[VF_COMPONENT_COUNT];
    vf_sd_layout lay;
    int has_lay;
    cJSON *meta;                  /* lora_adapter_metadata, or NULL             */
} matcher;

static int cmp_dot(const void *a, const void *b)
{
    return strcmp(((const wname *)a)->dot, ((const wname *)b)->dot);
}

static int cmp_und(const void *a, const void *b)
{
    return strcmp(((const wname *)a)->und, ((const wname *)b)->und);
}

static void table_free(ctable *t)
{
    for (int i = 0; t->by_dot && i < t->n; i++) {
        vf_free(t->by_dot[i].dot);
        vf_free(t->by_dot[i].und);
    }
    vf_free(t->by_dot);
    vf_free(t->by_und);
    memset(t, 0, sizeof *t);
}

/* Linear and conv weights (2-D or 4-D "<module>.weight") of bl. */
static vf_status table_build(const vf_blocklist *bl, ctable *t)
{
    memset(t, 0, sizeof *t);
    size_t cap = (size_t)(bl->nw ? bl->nw : 1);
    t->by_dot = vf_calloc(cap, sizeof *t->by_dot);
    t->by_und = vf_calloc(cap, sizeof *t->by_und);
    if (!t->by_dot || !t->by_und)
        goto oom;
    for (int i = 0; i < bl->nw; i++) {
        const vf_wspec *w = &bl->w[i];
        size_t n = strlen(w->name);
        if ((w->ndim != 2 && w->ndim != 4) || !ends_with(w->name, n, ".weight"))
            continue;
        wname *e = &t->by_dot[t->n];
        e->dot = vf_strndup(w->name, n - strlen(".weight"));
        e->und = e->dot ? vf_strdup(e->dot) : NULL;
        e->wi = i;
        t->n++;
        if (!e->und)
            goto oom;
        for (char *p = e->und; *p; p++)
            *p = *p == '.' ? '_' : *p;
    }
    qsort(t->by_dot, (size_t)t->n, sizeof *t->by_dot, cmp_dot);
    memcpy(t->by_und, t->by_dot, sizeof *t->by_dot * (size_t)t->n);
    qsort(t->by_und, (size_t)t->n, sizeof *t->by_und, cmp_und);
    /* Two weights with one underscore form cannot be told apart: neither matches. */
    for (int i = 1; i < t->n; i++)
        if (strcmp(t->by_und[i - 1].und, t->by_und[i].und) == 0)
            t->by_und[i - 1].wi = t->by_und[i].wi = -1;
    return VF_OK;
oom:
    table_free(t);
    return VF_ERR_NO_MEMORY;
}

static int find_dot(const ctable *t, const char *name)
{
    wname k = {(char *)name, NULL, 0};
    const wname *e = t->n ? bsearch(&k, t->by_dot, (size_t)t->n, sizeof k, cmp_dot) : NULL;
    return e ? e->wi : -1;
}

static int find_und(const ctable *t, const char *name)
{
    wname k = {NULL, (char *)name, 0};
    const wname *e = t->n ? bsearch(&k, t->by_und, (size_t)t->n, sizeof k, cmp_und) : NULL;
    return e ? e->wi : -1;
}

/* The original-layout block numbering of a UNet with this config: what
 * vf_sd_layout_build reads off a single file's keys, made from the config
 * (ldm's own numbering: each level's resnets, then its downsampler). */
static void layout_from_config(const vf_unet_config *u, vf_sd_layout *lay)
{
    vf_sd_layout_reset(lay);
    lay->unet_levels = u->levels;
    lay->unet_layers = u->down_layers[0];
    int i = 1;
    for (int l = 0; l < u->levels && i < VF_UNET_MAX_BLOCKS; l++) {
        for (int j = 0; j < u->down_layers[l] && i < VF_UNET_MAX_BLOCKS; j++, i++) {
            lay->in_level[i] = (signed char)l;
            lay->in_idx[i] = (signed char)j;
        }
        if (l < u->levels - 1 && i < VF_UNET_MAX_BLOCKS)
            lay->in_level[i++] = (signed char)l;
    }
    i = 0;
    for (int b = 0; b < u->levels; b++) {
        for (int j = 0; j < u->up_layers[b] && i < VF_UNET_MAX_BLOCKS; j++, i++) {
            lay->out_level[i] = (signed char)b;
            lay->out_idx[i] = (signed char)j;
            lay->out_attn_sub[i] = (signed char)(u->up_attn[b] ? 1 : -1);
            if (j == u->up_layers[b] - 1 && b < u->levels - 1)
                lay->out_up_sub[i] = (signed char)(u->up_attn[b] ? 2 : 1);
        }
    }
}

/* Original-layout module names whose parts contain '_'; every other part is one token. */
static const char *const g_sgm_words[] = {
    "input_blocks", "middle_block", "output_blocks", "transformer_blocks", "proj_in", "proj_out",
    "in_layers", "out_layers", "emb_layers", "skip_connection", "time_embed", "label_emb",
    "to_q", "to_k", "to_v", "to_out",
};

static int is_sgm_word(const char *a, size_t na, const char *b, size_t nb)
{
    for (size_t i = 0; i < sizeof g_sgm_words / sizeof g_sgm_words[0]; i++) {
        const char *w = g_sgm_words[i];
        if (strlen(w) == na + 1 + nb && memcmp(w, a, na) == 0 && w[na] == '_' && memcmp(w + na + 1, b, nb) == 0)
            return 1;
    }
    return 0;
}

/* "input_blocks_4_1_transformer_blocks_0_attn1_to_q" -> "input_blocks.4.1.transformer_blocks.0.attn1.to_q".
 * 0 when it does not fit out. */
static int sgm_dotted(const char *u, char *out, size_t cap)
{
    size_t o = 0;
    const char *p = u;
    while (*p) {
        const char *e1 = strchr(p, '_');
        size_t n1 = e1 ? (size_t)(e1 - p) : strlen(p);
        size_t take = n1;
        if (e1) {
            const char *q = e1 + 1, *e2 = strchr(q, '_');
            size_t n2 = e2 ? (size_t)(e2 - q) : strlen(q);
            if (is_sgm_word(p, n1, q, n2))
                take = n1 + 1 + n2;
        }
        if (o + take + 2 > cap)
            return 0;
        if (o)
            out[o++] = '.';
        memcpy(out + o, p, take);
        o += take;
        p += take;
        if (*p == '_')
            p++;
    }
    out[o] = 0;
    return o > 0;
}

/* A kohya UNet module in the original layout, through the single-file key map. */
static int find_sgm(const matcher *mt, const char *u)
{
    char dotted[MODNAME_MAX], key[MODNAME_MAX + 64];
    if (!mt->has_lay || !sgm_dotted(u, dotted, sizeof dotted))
        return -1;
    snprintf(key, sizeof key, "model.diffusion_model.%s.weight", dotted);
    vf_keymap_result r;
    vf_keymap_sd(&mt->lay, key, &r);
    if (r.kind != VF_KEYMAP_MAPPED || r.comp != VF_COMPONENT_UNET || r.n != 1 || r.view != VF_VIEW_PLAIN)
        return -1;
    size_t n = strlen(r.name[0]);
    if (!ends_with(r.name[0], n, ".weight"))
        return -1;
    r.name[0][n - strlen(".weight")] = 0;
    return find_dot(&mt->tab[VF_COMPONENT_UNET], r.name[0]);
}

/* A text encoder path with or without its "text_model." level. */
static int find_te(const ctable *t, const char *name, int underscore)
{
    char buf[MODNAME_MAX + 16];
    int wi = underscore ? find_und(t, name) : find_dot(t, name);
    if (wi >= 0)
        return wi;
    snprintf(buf, sizeof buf, "text_model%c%s", underscore ? '_' : '.', name);
    return underscore ? find_und(t, buf) : find_dot(t, buf);
}

/* How one module resolved: component, weight, and for PEFT names the
 * metadata prefix and the path PEFT patterns are matched against. */
typedef struct resolved {
    vf_component comp;
    int wi;
    const char *meta_prefix;      /* "unet", "text_encoder", "text_encoder_2" or NULL */
    const char *peft_path;
} resolved;

static int present(const matcher *mt, vf_component c)
{
    return mt->t->bl[c] != NULL && mt->tab[c].n > 0;
}

static int resolve_kohya(const matcher *mt, const char *m, resolved *r)
{
    static const struct {
        const char *head;
        vf_component c;
        int xl;                   /* 1: SDXL only, 0: SD1.5 only, -1: both      */
    } heads[] = {
        {"lora_unet_", VF_COMPONENT_UNET, -1},
        {"lora_te1_", VF_COMPONENT_TEXT_ENCODER, 1},
        {"lora_te2_", VF_COMPONENT_TEXT_ENCODER_2, 1},
        {"lora_te_", VF_COMPONENT_TEXT_ENCODER, 0},
    };
    int xl = mt->t->arch == VF_ARCH_SDXL;
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++) {
        size_t n = strlen(heads[i].head);
        if (strncmp(m, heads[i].head, n) != 0)
            continue;
        vf_component c = heads[i].c;
        if ((heads[i].xl >= 0 && heads[i].xl != xl) || !present(mt, c))
            return 0;
        const char *u = m + n;
        int wi = c == VF_COMPONENT_UNET ? find_und(&mt->tab[c], u) : find_te(&mt->tab[c], u, 1);
        if (wi < 0 && c == VF_COMPONENT_UNET)
            wi = find_sgm(mt, u);
        r->comp = c;
        r->wi = wi;
        return wi >= 0;
    }
    return 0;
}

static int resolve_peft(const matcher *mt, const char *m, resolved *r)
{
    static const struct {
        const char *head;
        vf_component c;
    } heads[] = {
        {"unet.", VF_COMPONENT_UNET},
        {"text_encoder_2.", VF_COMPONENT_TEXT_ENCODER_2},
        {"text_encoder.", VF_COMPONENT_TEXT_ENCODER},
    };
    if (strncmp(m, "base_model.model.", 17) == 0)
        m += 17;
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++) {
        size_t n = strlen(heads[i].head);
        if (strncmp(m, heads[i].head, n) != 0)
            continue;
        vf_component c = heads[i].c;
        if (!present(mt, c))
            return 0;
        const char *p = m + n;
        r->comp = c;
        r->wi = c == VF_COMPONENT_UNET ? find_dot(&mt->tab[c], p) : find_te(&mt->tab[c], p, 0);
        r->meta_prefix = vf_component_name(c);
        r->peft_path = p;
        return r->wi >= 0;
    }
    /* A bare UNet state dict (PEFT on the UNet alone). */
    if (!present(mt, VF_COMPONENT_UNET))
        return 0;
    r->comp = VF_COMPONENT_UNET;
    r->wi = find_dot(&mt->tab[VF_COMPONENT_UNET], m);
    r->peft_path = m;
    return r->wi >= 0;
}

static int resolve(const matcher *mt, const char *m, resolved *r)
{
    memset(r, 0, sizeof *r);
    r->wi = -1;
    if (strncmp(m, "lora_", 5) == 0)
        return resolve_kohya(mt, m, r);
    return resolve_peft(mt, m, r);
}

/* ---- pass 3: pairs ---------------------------------------------------------------------- */

static void shape_str(const int64_t *s, int nd, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = 0;
    o += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < nd && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? "," : "", (long long)s[i]);
    if (o < cap)
        snprintf(buf + o, cap - o, "]");
}

/* The adapter metadata's alpha for a PEFT module (0: none given). */
static vf_status meta_alpha(const matcher *mt, const resolved *r, int rank, double *alpha)
{
    *alpha = 0;
    if (!mt->meta || !r->meta_prefix)
        return VF_OK;
    char k[64];
    int bad = 0;
    snprintf(k, sizeof k, "%s.use_dora", r->meta_prefix);
    if (vf_json_bool(mt->meta, k, 0, &bad))
        return vf_error(VF_ERR_UNSUPPORTED, "%s: %s: DoRA adapters are not supported", mt->path, k);
    snprintf(k, sizeof k, "%s.lora_alpha", r->meta_prefix);
    double a = vf_json_num(mt->meta, k, 0, &bad);
    snprintf(k, sizeof k, "%s.alpha_pattern", r->meta_prefix);
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(mt->meta, k);
    size_t pn = strlen(r->peft_path);
    for (const cJSON *it = cJSON_IsObject(pat) ? pat->child : NULL; it; it = it->next) {
        size_t kn = it->string ? strlen(it->string) : 0;
        if (!kn || kn >= pn || !ends_with(r->peft_path, pn, it->string) || r->peft_path[pn - kn - 1] != '.')
            continue;
        if (!cJSON_IsNumber(it))
            bad = 1;
        a = it->valuedouble;
        break;
    }
    snprintf(k, sizeof k, "%s.use_rslora", r->meta_prefix);
    int rs = vf_json_bool(mt->meta, k, 0, &bad);
    if (bad || !isfinite(a))
        return vf_error(VF_ERR_FORMAT, "%s: metadata lora_adapter_metadata: %s.lora_alpha, alpha_pattern "
                        "or use_rslora has the wrong type", mt->path, r->meta_prefix);
    *alpha = rs && a != 0 ? a * sqrt((double)rank) : a;
    return VF_OK;
}

static vf_status read_alpha(const matcher *mt, vf_st_file *f, const vf_st_tensor *t, double *alpha)
{
    float v;
    if (vf_shape_numel(t->shape, t->ndim) != 1 || !vf_dtype_is_float(t->dtype))
        return vf_error(VF_ERR_FORMAT, "%s: tensor '%s': an alpha must be one float value", mt->path, t->name);
    unsigned char raw[8];
    VF_TRY(vf_st_read(f, t, 0, raw, t->nbytes));
    vf_convert_to_f32(&v, raw, t->dtype, 1);
    if (!isfinite(v))
        return vf_error(VF_ERR_NONFINITE, "%s: tensor '%s' is not finite (%g)", mt->path, t->name, (double)v);
    *alpha = v;
    return VF_OK;
}

/* Reads tensor t whole into a new buffer, checking that every value is finite. */
static vf_status read_factor(const matcher *mt, vf_st_file *f, const vf_st_tensor *t, void **out)
{
    *out = NULL;
    void *p = vf_malloc(t->nbytes ? (size_t)t->nbytes : 1);
    if (!p)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: tensor '%s'", mt->path, t->name);
    vf_status st = vf_st_read(f, t, 0, p, t->nbytes);
    size_t n = (size_t)vf_shape_numel(t->shape, t->ndim), es = vf_dtype_size(t->dtype);
    float buf[FINITE_CHUNK];
    for (size_t i = 0; st == VF_OK && i < n; i += FINITE_CHUNK) {
        size_t k = n - i < FINITE_CHUNK ? n - i : FINITE_CHUNK;
        vf_convert_to_f32(buf, (const char *)p + i * es, t->dtype, k);
        for (size_t j = 0; j < k; j++) {
            if (!isfinite(buf[j])) {
                st = vf_error(VF_ERR_NONFINITE, "%s: tensor '%s' has a non-finite value (%g at %zu)",
                              mt->path, t->name, (double)buf[j], i + j);
                break;
            }
        }
    }
    if (st != VF_OK) {
        vf_free(p);
        return st;
    }
    *out = p;
    return VF_OK;
}

/* Checks down (r, K...) and up (OC, r...) against weight w. */
static vf_status check_shapes(const matcher *mt, const vf_st_tensor *down, const vf_st_tensor *up,
                              const vf_wspec *w, vf_component c, int *rank, int64_t *k)
{
    int64_t oc = w->shape[0], kk = vf_shape_numel(w->shape, w->ndim) / (oc ? oc : 1);
    int64_t r = down->ndim >= 1 ? down->shape[0] : 0;
    int ok = r > 0 && r <= 1 << 20 && up->ndim >= 2 && up->shape[0] == oc && up->shape[1] == r &&
             vf_shape_numel(up->shape, up->ndim) == oc * r && down->ndim >= 2 &&
             vf_shape_numel(down->shape, down->ndim) == r * kk;
    /* A 4-D down factor carries the kernel: it must be the weight's (1x1 for a linear). */
    if (ok && down->ndim == 4)
        ok = w->ndim == 4 ? down->shape[2] == w->shape[2] && down->shape[3] == w->shape[3]
                          : down->shape[2] == 1 && down->shape[3] == 1;
    if (ok) {
        *rank = (int)r;
        *k = kk;
        return VF_OK;
    }
    char sd[96], su[96], sw[96];
    shape_str(down->shape, down->ndim, sd, sizeof sd);
    shape_str(up->shape, up->ndim, su, sizeof su);
    shape_str(w->shape, w->ndim, sw, sizeof sw);
    return vf_error(VF_ERR_SHAPE, "%s: key '%s' is %s with '%s' %s, which does not fit weight '%s' %s of the %s "
                    "%s: is the LoRA for another architecture?", mt->path, down->name, sd, up->name, su, w->name,
                    sw, vf_arch_name(mt->t->arch), vf_component_name(c));
}

/* Builds entry e for the module whose keys are refs[0..n) (resolved to r). */
static vf_status make_entry(const matcher *mt, vf_st_file *f, const key_ref *refs, int n, const resolved *r,
                            lora_entry *e)
{
    const vf_st_tensor *down = NULL, *up = NULL, *alpha = NULL;
    for (int i = 0; i < n; i++) {
        const vf_st_tensor *t = vf_st_at(f, (size_t)refs[i].tensor);
        const vf_st_tensor **slot = refs[i].role == ROLE_DOWN ? &down : refs[i].role == ROLE_UP ? &up
                                    : refs[i].role == ROLE_ALPHA ? &alpha : NULL;
        if (slot && *slot)
            return vf_error(VF_ERR_FORMAT, "%s: keys '%s' and '%s' are the same factor of module '%s'",
                            mt->path, (*slot)->name, t->name, refs[i].module);
        if (slot)
            *slot = t;
    }
    if (!down || !up)
        return vf_error(VF_ERR_FORMAT, "%s: key '%s' has no %s factor to pair with", mt->path,
                        (down ? down : up ? up : alpha)->name, down ? "up (lora_up / lora_B)"
                                                                    : "down (lora_down / lora_A)");
    if (!vf_dtype_is_float(down->dtype) || !vf_dtype_is_float(up->dtype))
        return vf_error(VF_ERR_FORMAT, "%s: key '%s' or '%s' is not a float tensor", mt->path, down->name,
                        up->name);
    const vf_wspec *w = &mt->t->bl[r->comp]->w[r->wi];
    memset(e, 0, sizeof *e);
    e->comp = r->comp;
    e->wi = r->wi;
    e->oc = w->shape[0];
    VF_TRY(check_shapes(mt, down, up, w, r->comp, &e->rank, &e->k));
    double a = 0;
    if (alpha)
        VF_TRY(read_alpha(mt, f, alpha, &a));
    else
        VF_TRY(meta_alpha(mt, r, e->rank, &a));
    /* kohya: alpha 0 (or none) means alpha = rank, i.e. scale 1. */
    e->scale = a != 0 ? (float)(a / e->rank) : 1.0f;
    if (!isfinite(e->scale)) /* an alpha past float's range: say so here, not at the merge */
        return vf_error(VF_ERR_NONFINITE, "%s: '%s': alpha %g over rank %d gives a scale past float32's range",
                        mt->path, refs[0].module, a, e->rank);
    e->up_dt = up->dtype;
    e->down_dt = down->dtype;
    e->key = vf_strdup(refs[0].module);
    if (!e->key)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", mt->path);
    vf_status st = read_factor(mt, f, down, &e->down);
    if (st == VF_OK)
        st = read_factor(mt, f, up, &e->up);
    return st;
}

static void entry_free(lora_entry *e)
{
    vf_free(e->up);
    vf_free(e->down);
    vf_free(e->key);
    memset(e, 0, sizeof *e);
}

static int cmp_entry(const void *a, const void *b)
{
    const lora_entry *x = a, *y = b;
    if (x->comp != y->comp)
        return (int)x->comp - (int)y->comp;
    return x->wi - y->wi;
}

/* ---- loading ---------------------------------------------------------------------------- */

typedef struct loader {
    matcher mt;
    vf_st_file *f;
    key_ref *refs;
    int nrefs;
    vf_lora *l;
} loader;

static void loader_free(loader *ld)
{
    for (int c = 0; c < VF_COMPONENT_COUNT; c++)
        table_free(&ld->mt.tab[c]);
    cJSON_Delete(ld->mt.meta);
    for (int i = 0; ld->refs && i < ld->nrefs; i++)
        vf_free(ld->refs[i].module);
    vf_free(ld->refs);
    vf_st_close(ld->f);
}

static vf_status read_metadata(matcher *mt, vf_st_file *f)
{
    const char *s = vf_st_metadata(f, "lora_adapter_metadata");
    if (!s)
        return VF_OK;
    char what[1100];
    snprintf(what, sizeof what, "%s: metadata lora_adapter_metadata", mt->path);
    vf_status st = vf_json_parse(s, strlen(s), what, &mt->meta);
    if (st == VF_OK && !cJSON_IsObject(mt->meta))
        st = vf_error(VF_ERR_FORMAT, "%s: not a JSON object", what);
    return st;
}

static vf_status prepare(loader *ld, const char *path, const vf_lora_target *t)
{
    matcher *mt = &ld->mt;
    mt->path = path;
    mt->t = t;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++)
        if (t->bl[c] && table_build(t->bl[c], &mt->tab[c]) != VF_OK)
            return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: weight names of the %s", path,
                                   vf_component_name((vf_component)c));
    if (t->unet) {
        layout_from_config(t->unet, &mt->lay);
        mt->has_lay = 1;
    }
    VF_TRY(vf_st_open(path, &ld->f));
    VF_TRY(read_metadata(mt, ld->f));
    size_t n = vf_st_count(ld->f);
    if (n == 0)
        return vf_error(VF_ERR_FORMAT, "%s: a LoRA file with no tensors", path);
    if (n > (size_t)1 << 24)
        return vf_error(VF_ERR_FORMAT, "%s: %zu tensors is too many for a LoRA", path, n);
    ld->refs = vf_calloc(n, sizeof *ld->refs);
    if (!ld->refs)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
    for (size_t i = 0; i < n; i++) {
        ld->refs[i].tensor = (int)i;
        VF_TRY(classify(path, vf_st_at(ld->f, i)->name, &ld->refs[i]));
        ld->nrefs++;
    }
    qsort(ld->refs, n, sizeof *ld->refs, cmp_key_ref);
    return VF_OK;
}

/* Pass 2 and 3 over the sorted keys: one entry per matched module. */
static vf_status bind_modules(loader *ld)
{
    vf_lora *l = ld->l;
    vf_lora_info *in = &l->info;
    l->e = vf_calloc((size_t)ld->nrefs, sizeof *l->e);
    if (!l->e)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s", ld->mt.path);
    in->keys = ld->nrefs;
    for (int i = 0, j; i < ld->nrefs; i = j) {
        for (j = i + 1; j < ld->nrefs && strcmp(ld->refs[j].module, ld->refs[i].module) == 0; j++)
            ;
        resolved r;
        int factors = 0;
        for (int k = i; k < j; k++)
            factors |= ld->refs[k].role != ROLE_OTHER;
        if (!factors || !resolve(&ld->mt, ld->refs[i].module, &r)) {
            in->unmatched_keys += j - i;
            continue;
        }
        /* Keys of the module that are not factors are not used either. */
        for (int k = i; k < j; k++)
            in->unmatched_keys += ld->refs[k].role == ROLE_OTHER;
        lora_entry *e = &l->e[l->n];
        vf_status st = make_entry(&ld->mt, ld->f, ld->refs + i, j - i, &r, e);
        if (st != VF_OK) {
            entry_free(e);
            return st;
        }
        l->n++;
        in->bytes += (uint64_t)(e->oc * e->rank) * vf_dtype_size(e->up_dt) +
                     (uint64_t)(e->rank * e->k) * vf_dtype_size(e->down_dt);
        in->rank = e->rank > in->rank ? e->rank : in->rank;
    }
    in->matched_keys = in->keys - in->unmatched_keys;
    return VF_OK;
}

/* A LoRA none of whose keys matched: name an example. */
static vf_status no_match(const loader *ld)
{
    const char *ex = ld->nrefs ? vf_st_at(ld->f, (size_t)ld->refs[0].tensor)->name : "";
    return vf_error(VF_ERR_FORMAT, "%s: LoRA matches no weight of the %s model (%d keys, e.g. '%s'): is it for "
                    "another architecture?", ld->mt.path, vf_arch_name(ld->mt.t->arch), ld->nrefs, ex);
}

vf_status vf_lora_load(const char *path, const vf_lora_target *t, vf_lora **out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_lora_load: out is NULL");
    *out = NULL;
    if (!path || !path[0] || !t)
        return vf_error(VF_ERR_INVALID_ARG, "vf_lora_load: no path or target");
    loader ld;
    memset(&ld, 0, sizeof ld);
    ld.l = vf_calloc(1, sizeof *ld.l);
    vf_status st = ld.l ? VF_OK : vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
    if (st == VF_OK) {
        ld.l->path = vf_strdup(path);
        st = ld.l->path ? VF_OK : vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
    }
    if (st == VF_OK)
        st = prepare(&ld, path, t);
    if (st == VF_OK)
        st = bind_modules(&ld);
    if (st == VF_OK && ld.l->n == 0)
        st = no_match(&ld);
    if (st == VF_OK) {
        qsort(ld.l->e, (size_t)ld.l->n, sizeof *ld.l->e, cmp_entry);
        for (int i = 0; i < ld.l->n; i++) {
            vf_lora_info *in = &ld.l->info;
            in->weights++;
            in->weights_by_component[ld.l->e[i].comp]++;
            /* Two pairs on one weight count it once. */
            if (i && ld.l->e[i].comp == ld.l->e[i - 1].comp && ld.l->e[i].wi == ld.l->e[i - 1].wi) {
                in->weights--;
                in->weights_by_component[ld.l->e[i].comp]--;
            }
        }
    }
    loader_free(&ld);
    if (st != VF_OK) {
        vf_lora_free(ld.l);
        return st;
    }
    *out = ld.l;
    return VF_OK;
}

void vf_lora_free(vf_lora *l)
{
    if (!l)
        return;
    for (int i = 0; i < l->n; i++)
        entry_free(&l->e[i]);
    vf_free(l->e);
    vf_free(l->path);
    vf_free(l);
}

void vf_lora_get_info(const vf_lora *l, vf_lora_info *out)
{
    int id = out->id;
    float s = out->strength;
    *out = l->info;
    out->id = id;
    out->strength = s;
}

/* The first entry for (c, wi), or l->n. */
static int lower_bound(const vf_lora *l, vf_component c, int wi)
{
    int lo = 0, hi = l->n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        const lora_entry *e = &l->e[mid];
        if (e->comp < c || (e->comp == c && e->wi < wi))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* w (oc, k) += s * up (oc, r) @ down (r, k), the factors converted to float32 first. */
static vf_status add_pair(const vf_lora *l, const lora_entry *e, float s, float *w)
{
    size_t nu = (size_t)(e->oc * e->rank), nd = (size_t)(e->rank * e->k);
    float *up = vf_malloc(nu * sizeof *up), *down = up ? vf_malloc(nd * sizeof *down) : NULL;
    if (!down) {
        vf_free(up);
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: '%s'", l->path, e->key);
    }
    vf_convert_to_f32(up, e->up, e->up_dt, nu);
    vf_convert_to_f32(down, e->down, e->down_dt, nd);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)e->oc, (int)e->k, e->rank, s, up, e->rank, down,
                (int)e->k, 1.0f, w, (int)e->k);
    vf_free(up);
    vf_free(down);
    return VF_OK;
}

vf_status vf_lora_apply(const vf_lora *l, vf_component c, int wi, const vf_wspec *spec, float strength,
                        float *w, int *applied)
{
    for (int i = lower_bound(l, c, wi); i < l->n && l->e[i].comp == c && l->e[i].wi == wi; i++) {
        const lora_entry *e = &l->e[i];
        float s = strength * e->scale;
        if (s == 0.0f)
            continue;
        if (spec->shape[0] != e->oc || vf_shape_numel(spec->shape, spec->ndim) != e->oc * e->k)
            return vf_error(VF_ERR_INTERNAL, "%s: '%s' was bound to another weight than '%s'", l->path, e->key,
                            spec->name);
        VF_TRY(add_pair(l, e, s, w));
        (*applied)++;
    }
    return VF_OK;
}
