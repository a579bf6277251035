/* CLIP text encoder: config, block list and forward on any compute backend (see clip.h).
 *
 * The forward follows transformers' CLIPTextTransformer exactly, because the
 * reference embeddings come from it: pre-LayerNorm layers with a causal mask,
 * hidden_states[-2] taken before the last layer runs (no final LayerNorm), and
 * the pooled output taken after final_layer_norm at the first EOS position.
 * Scratch is seven backend buffers (six (L,D), one (L,I)) for the whole call,
 * so a window costs no allocation per layer. The forward is written against
 * backend/backend.h; its fusions (residual add in the GEMM epilogue, the MLP
 * activation in the GEMM) are, on the CPU backend, the same float32
 * operations in the same order as before, so CPU results are unchanged.
 */
#include "model/clip.h"
#include "backend/backend.h"
#include "core/alloc.h"
#include "core/error.h"
#include "io/json.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define CLIP_LAYER_NW 16

/* Weight order within a layer block: the order vf_clip_describe declares them. */
enum {
    W_LN1_W, W_LN1_B, W_Q_W, W_Q_B, W_K_W, W_K_B, W_V_W, W_V_B, W_O_W, W_O_B,
    W_LN2_W, W_LN2_B, W_FC1_W, W_FC1_B, W_FC2_W, W_FC2_B
};

/* An integer config value in [lo, hi]; absent gives def. */
static vf_status cfg_int(const cJSON *config, const char *what, const char *key, int def, int lo,
                         int hi, int *out)
{
    int bad = 0;
    double v = vf_json_num(config, key, def, &bad);
    if (bad || v != floor(v) || v < lo || v > hi)
        return vf_error(VF_ERR_FORMAT, "%s config: '%s' must be an integer in [%d, %d]", what, key,
                        lo, hi);
    *out = (int)v;
    return VF_OK;
}

static vf_status parse_act(const cJSON *config, const char *what, vf_clip_config *c)
{
    int bad = 0;
    const char *act = vf_json_str(config, "hidden_act", "quick_gelu", &bad);
    if (bad)
        return vf_error(VF_ERR_FORMAT, "%s config: 'hidden_act' must be a string", what);
    if (strcmp(act, "quick_gelu") == 0)
        c->quick_gelu = 1;
    else if (strcmp(act, "gelu") == 0)
        c->quick_gelu = 0;
    else
        return vf_error(VF_ERR_UNSUPPORTED, "%s config: hidden_act '%s' (quick_gelu or gelu expected)",
                        what, act);
    return VF_OK;
}

vf_status vf_clip_config_parse(const cJSON *config, vf_component comp, vf_clip_config *out)
{
    const char *what = vf_component_name(comp);
    vf_clip_config c;
    memset(&c, 0, sizeof c);
    if (comp != VF_COMPONENT_TEXT_ENCODER && comp != VF_COMPONENT_TEXT_ENCODER_2)
        return vf_error(VF_ERR_INVALID_ARG, "clip: component '%s' is not a text encoder", what);
    if (!config)
        return vf_error(VF_ERR_INVALID_ARG, "%s: no config", what);
    const int big = 1 << 20;
    int eos = 0, bad = 0;
    /* Defaults are transformers' CLIPTextConfig defaults. */
    VF_TRY(cfg_int(config, what, "hidden_size", 512, 1, big, &c.hidden));
    VF_TRY(cfg_int(config, what, "intermediate_size", 2048, 1, big, &c.intermediate));
    VF_TRY(cfg_int(config, what, "num_hidden_layers", 12, 1, 1024, &c.layers));
    VF_TRY(cfg_int(config, what, "num_attention_heads", 8, 1, 1024, &c.heads));
    VF_TRY(cfg_int(config, what, "max_position_embeddings", 77, VF_CONTEXT_LEN, big, &c.max_positions));
    VF_TRY(cfg_int(config, what, "vocab_size", 49408, 1, 1 << 24, &c.vocab));
    VF_TRY(cfg_int(config, what, "eos_token_id", 49407, 0, 1 << 24, &eos));
    VF_TRY(parse_act(config, what, &c));
    double eps = vf_json_num(config, "layer_norm_eps", 1e-5, &bad);
    if (bad || !(eps > 0 && eps < 1))
        return vf_error(VF_ERR_FORMAT, "%s config: 'layer_norm_eps' must be a number in (0, 1)", what);
    c.eps = (float)eps;
    if (c.hidden % c.heads != 0)
        return vf_error(VF_ERR_FORMAT, "%s config: hidden_size %d is not a multiple of num_attention_heads %d",
                        what, c.hidden, c.heads);
    if (comp == VF_COMPONENT_TEXT_ENCODER_2)
        VF_TRY(cfg_int(config, what, "projection_dim", 512, 1, big, &c.proj_dim));
    c.eos_token_id = eos;
    c.legacy_eos = eos == 2;
    *out = c;
    return VF_OK;
}

static void describe_layer(vf_blocklist *bl, const vf_clip_config *c, int i)
{
    int64_t D = c->hidden, I = c->intermediate;
    vf_bl_block(bl, "text_model.encoder.layers.%d", i);
    vf_bl_weight(bl, "layer_norm1.weight", 1, D, 0, 0, 0);
    vf_bl_weight(bl, "layer_norm1.bias", 1, D, 0, 0, 0);
    static const char *const proj[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    for (int p = 0; p < 4; p++) {
        char name[64];
        snprintf(name, sizeof name, "self_attn.%s.weight", proj[p]);
        vf_bl_weight(bl, name, 2, D, D, 0, 0);
        snprintf(name, sizeof name, "self_attn.%s.bias", proj[p]);
        vf_bl_weight(bl, name, 1, D, 0, 0, 0);
    }
    vf_bl_weight(bl, "layer_norm2.weight", 1, D, 0, 0, 0);
    vf_bl_weight(bl, "layer_norm2.bias", 1, D, 0, 0, 0);
    vf_bl_weight(bl, "mlp.fc1.weight", 2, I, D, 0, 0);
    vf_bl_weight(bl, "mlp.fc1.bias", 1, I, 0, 0, 0);
    vf_bl_weight(bl, "mlp.fc2.weight", 2, D, I, 0, 0);
    vf_bl_weight(bl, "mlp.fc2.bias", 1, D, 0, 0, 0);
}

vf_status vf_clip_describe(const cJSON *config, vf_component comp, vf_blocklist *bl)
{
    vf_clip_config c;
    VF_TRY(vf_clip_config_parse(config, comp, &c));
    int64_t D = c.hidden;
    vf_bl_block(bl, "text_model.embeddings");
    vf_bl_weight(bl, "token_embedding.weight", 2, c.vocab, D, 0, 0);
    vf_bl_weight(bl, "position_embedding.weight", 2, c.max_positions, D, 0, 0);
    for (int i = 0; i < c.layers; i++)
        describe_layer(bl, &c, i);
    vf_bl_block(bl, "text_model.final_layer_norm");
    vf_bl_weight(bl, "weight", 1, D, 0, 0, 0);
    vf_bl_weight(bl, "bias", 1, D, 0, 0, 0);
    if (c.proj_dim > 0) {
        vf_bl_block(bl, "text_projection");
        vf_bl_weight(bl, "weight", 2, c.proj_dim, D, 0, 0);
    }
    return bl->st;
}

/* Per-call activations, backend buffers; L = VF_CONTEXT_LEN rows each. */
typedef struct clip_run {
    const vf_exec *x;
    vf_backend *be;
    const vf_clip_config *c;
    vf_dbuf *x0, *h, *q, *k, *v, *a; /* (L,D) */
    vf_dbuf *m;                   /* (L,I) */
    const vf_dbuf *w[VF_EXEC_MAX_W];
} clip_run;

// ids is (L); x (L,D) = token_embedding[ids] + position_embedding[0..L)
static vf_status run_embeddings(clip_run *s, const int32_t *ids)
{
    const int L = VF_CONTEXT_LEN, D = s->c->hidden;
    vf_backend *be = s->be;
    for (int t = 0; t < L; t++) {
        if (ids[t] < 0 || ids[t] >= s->c->vocab)
            return vf_error(VF_ERR_INVALID_ARG, "clip: token id %d at position %d is outside the vocabulary (%d)",
                            (int)ids[t], t, s->c->vocab);
    }
    VF_TRY(vf_exec_acquire(s->x, 0, s->w, VF_EXEC_MAX_W));
    /* A gather of rows, then the first L positions (contiguous) added at once. */
    vf_status st = VF_OK;
    for (int t = 0; t < L && st == VF_OK; t++)
        st = vf_be_copy(be, vf_be_at(be, s->x0, (size_t)t * D), vf_be_cat(be, s->w[0], (size_t)ids[t] * D),
                        (size_t)D);
    if (st == VF_OK)
        st = vf_be_add(be, s->x0, s->w[1], (size_t)L * D);
    vf_exec_release(s->x, 0);
    return st;
}

// x is (L,D), updated in place: x += attn(ln1(x)); x += mlp(ln2(x))
static vf_status layer_compute(clip_run *s)
{
    const vf_clip_config *c = s->c;
    const vf_dbuf *const *w = s->w;
    vf_backend *be = s->be;
    const int L = VF_CONTEXT_LEN, D = c->hidden, I = c->intermediate, H = c->heads;
    float scale = (float)(1.0 / sqrt((double)(D / H)));
    VF_TRY(vf_be_layernorm(be, s->h, s->x0, w[W_LN1_W], w[W_LN1_B], L, D, c->eps));
    VF_TRY(vf_be_linear(be, s->q, s->h, w[W_Q_W], w[W_Q_B], NULL, L, D, D, VF_ACT_NONE));
    VF_TRY(vf_be_linear(be, s->k, s->h, w[W_K_W], w[W_K_B], NULL, L, D, D, VF_ACT_NONE));
    VF_TRY(vf_be_linear(be, s->v, s->h, w[W_V_W], w[W_V_B], NULL, L, D, D, VF_ACT_NONE));
    VF_TRY(vf_be_attention(be, s->a, s->q, s->k, s->v, 1, L, L, H, D / H, 0, 0, 0, 0, 1, scale));
    VF_TRY(vf_be_linear(be, s->x0, s->a, w[W_O_W], w[W_O_B], s->x0, L, D, D, VF_ACT_NONE));
    VF_TRY(vf_be_layernorm(be, s->h, s->x0, w[W_LN2_W], w[W_LN2_B], L, D, c->eps));
    VF_TRY(vf_be_linear(be, s->m, s->h, w[W_FC1_W], w[W_FC1_B], NULL, L, D, I,
                        c->quick_gelu ? VF_ACT_QUICK_GELU : VF_ACT_GELU));
    return vf_be_linear(be, s->x0, s->m, w[W_FC2_W], w[W_FC2_B], s->x0, L, I, D, VF_ACT_NONE);
}

static vf_status run_layer(clip_run *s, int b)
{
    const vf_blocklist *bl = s->x->bl;
    if (bl->blocks[b].nw != CLIP_LAYER_NW)
        return vf_error(VF_ERR_INTERNAL, "clip: block '%s' has %d weights, expected %d", bl->blocks[b].name,
                        bl->blocks[b].nw, CLIP_LAYER_NW);
    VF_TRY(vf_exec_acquire(s->x, b, s->w, VF_EXEC_MAX_W));
    vf_status st = layer_compute(s);
    vf_exec_release(s->x, b);
    return st;
}

/* The pooled position: the first EOS, as transformers does for configs with the
 * real eos_token_id (0 when there is none: argmax of all-false), or argmax(ids)
 * for legacy configs whose eos_token_id is 2. */
static int pool_position(const vf_clip_config *c, const int32_t *ids)
{
    int best = 0;
    for (int t = 0; t < VF_CONTEXT_LEN; t++) {
        if (c->legacy_eos) {
            if (ids[t] > ids[best])
                best = t;
        } else if (ids[t] == c->eos_token_id) {
            return t;
        }
    }
    return best;
}

// x is (L,D); out (L,D) = final_layer_norm(x); pooled (P) = text_projection(out[pool position])
static vf_status run_final(clip_run *s, int b, const int32_t *ids, vf_dbuf *out, vf_dbuf *pooled)
{
    const vf_clip_config *c = s->c;
    const int L = VF_CONTEXT_LEN, D = c->hidden;
    VF_TRY(vf_exec_acquire(s->x, b, s->w, VF_EXEC_MAX_W));
    vf_status st = vf_be_layernorm(s->be, out, s->x0, s->w[0], s->w[1], L, D, c->eps);
    vf_exec_release(s->x, b);
    if (st != VF_OK || !pooled)
        return st;
    VF_TRY(vf_exec_acquire(s->x, b + 1, s->w, VF_EXEC_MAX_W));
    st = vf_be_linear(s->be, pooled, vf_be_cat(s->be, out, (size_t)pool_position(c, ids) * D), s->w[0], NULL,
                      NULL, 1, D, c->proj_dim, VF_ACT_NONE);
    vf_exec_release(s->x, b + 1);
    return st;
}

static vf_status check_outputs(const vf_blocklist *bl, const vf_clip_config *c, const float *pooled)
{
    int want = c->layers + 2 + (c->proj_dim > 0);
    if (bl->nblocks != want)
        return vf_error(VF_ERR_INVALID_ARG, "clip: block list has %d blocks, the config needs %d",
                        bl->nblocks, want);
    if (pooled && c->proj_dim == 0)
        return vf_error(VF_ERR_INVALID_ARG, "clip: %s has no text_projection for a pooled output",
                        vf_component_name(bl->comp));
    return VF_OK;
}

static void run_free(clip_run *s)
{
    vf_dbuf *const all[] = {s->x0, s->h, s->q, s->k, s->v, s->a, s->m};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        vf_be_free(s->be, all[i]);
}

static vf_status run_alloc(clip_run *s)
{
    const size_t LD = (size_t)VF_CONTEXT_LEN * s->c->hidden;
    const size_t LI = (size_t)VF_CONTEXT_LEN * s->c->intermediate;
    vf_backend *be = s->be;
    vf_status st;
    if ((st = vf_be_alloc(be, LD, &s->x0)) || (st = vf_be_alloc(be, LD, &s->h)) ||
        (st = vf_be_alloc(be, LD, &s->q)) || (st = vf_be_alloc(be, LD, &s->k)) ||
        (st = vf_be_alloc(be, LD, &s->v)) || (st = vf_be_alloc(be, LD, &s->a)) ||
        (st = vf_be_alloc(be, LI, &s->m)))
        return vf_error_prefix(st, "clip activations");
    return VF_OK;
}

/* The walk: layers, penultimate taken before the last, final norm and pool. */
static vf_status clip_walk(clip_run *s, const int32_t *ids, float *last_hidden, float *penultimate,
                           float *pooled_proj)
{
    const vf_clip_config *cfg = s->c;
    const size_t LD = (size_t)VF_CONTEXT_LEN * cfg->hidden;
    vf_backend *be = s->be;
    vf_dbuf *pool = NULL;
    int need_final = last_hidden || pooled_proj;
    vf_status st = run_embeddings(s, ids);
    for (int i = 0; st == VF_OK && i < cfg->layers; i++) {
        if (i == cfg->layers - 1) {
            if (penultimate)
                st = vf_be_download(be, penultimate, s->x0, LD);
            if (st != VF_OK || !need_final)
                break;
        }
        st = run_layer(s, 1 + i);
    }
    if (st != VF_OK || !need_final)
        return st;
    if (pooled_proj)
        VF_TRY(vf_be_alloc(be, (size_t)cfg->proj_dim, &pool));
    /* s->h is free after the last layer: it receives the final norm. */
    st = run_final(s, 1 + cfg->layers, ids, s->h, pool);
    if (st == VF_OK && last_hidden)
        st = vf_be_download(be, last_hidden, s->h, LD);
    if (st == VF_OK && pooled_proj)
        st = vf_be_download(be, pooled_proj, pool, (size_t)cfg->proj_dim);
    vf_be_free(be, pool);
    return st;
}

vf_status vf_clip_forward_ex(const vf_exec *x, const vf_clip_config *cfg, const int32_t ids[VF_CONTEXT_LEN],
                             float *last_hidden, float *penultimate, float *pooled_proj)
{
    if (!x || !x->be || !x->bl || !cfg || !ids)
        return vf_error(VF_ERR_INVALID_ARG, "clip: no execution context, config or ids");
    VF_TRY(check_outputs(x->bl, cfg, pooled_proj));
    clip_run s = {.x = x, .be = x->be, .c = cfg};
    vf_status st = run_alloc(&s);
    if (st == VF_OK)
        st = clip_walk(&s, ids, last_hidden, penultimate, pooled_proj);
    run_free(&s);
    return st;
}

vf_status vf_clip_forward(vf_residency *r, const vf_blocklist *bl, const vf_clip_config *cfg,
                          const int32_t ids[VF_CONTEXT_LEN], float *last_hidden, float *penultimate,
                          float *pooled_proj)
{
    vf_exec x;
    vf_backend *be;
    vf_status est = vf_exec_cpu(&x, r, bl, &be);
    if (est != VF_OK)
        return vf_error_prefix(est, "clip: CPU backend");
    vf_status st = vf_clip_forward_ex(&x, cfg, ids, last_hidden, penultimate, pooled_proj);
    vf_backend_free(be);
    return st;
}
