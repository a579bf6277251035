/* CLIP text encoder: config, block list and float32 forward on the CPU (see clip.h).
 *
 * The forward follows transformers' CLIPTextTransformer exactly, because the
 * reference embeddings come from it: pre-LayerNorm layers with a causal mask,
 * hidden_states[-2] taken before the last layer runs (no final LayerNorm), and
 * the pooled output taken after final_layer_norm at the first EOS position.
 * Scratch is one allocation of L*(6D+I) floats for the whole call, so a window
 * costs no allocation per layer.
 */
#include "model/clip.h"
#include "backend/cpu/ops.h"
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

/* Per-call activations; L = VF_CONTEXT_LEN rows each. */
typedef struct clip_scratch {
    float *x, *h, *q, *k, *v, *a; /* (L,D) */
    float *m;                     /* (L,I) */
} clip_scratch;

// ids is (L); x (L,D) = token_embedding[ids] + position_embedding[0..L)
static vf_status run_embeddings(vf_residency *r, const vf_clip_config *c, const int32_t *ids, float *x)
{
    const int L = VF_CONTEXT_LEN, D = c->hidden;
    for (int t = 0; t < L; t++) {
        if (ids[t] < 0 || ids[t] >= c->vocab)
            return vf_error(VF_ERR_INVALID_ARG, "clip: token id %d at position %d is outside the vocabulary (%d)",
                            (int)ids[t], t, c->vocab);
    }
    const float *const *w;
    VF_TRY(vf_residency_acquire(r, 0, &w));
    for (int t = 0; t < L; t++) {
        const float *tok = w[0] + (size_t)ids[t] * D, *pos = w[1] + (size_t)t * D;
        for (int d = 0; d < D; d++)
            x[(size_t)t * D + d] = tok[d] + pos[d];
    }
    vf_residency_release(r, 0);
    return VF_OK;
}

// x is (L,D), updated in place: x += attn(ln1(x)); x += mlp(ln2(x))
static vf_status layer_compute(const float *const *w, const vf_clip_config *c, clip_scratch *s)
{
    const int L = VF_CONTEXT_LEN, D = c->hidden, I = c->intermediate, H = c->heads;
    vf_cpu_layernorm(s->h, s->x, w[W_LN1_W], w[W_LN1_B], L, D, c->eps);
    vf_cpu_linear(s->q, s->h, w[W_Q_W], w[W_Q_B], L, D, D);
    vf_cpu_linear(s->k, s->h, w[W_K_W], w[W_K_B], L, D, D);
    vf_cpu_linear(s->v, s->h, w[W_V_W], w[W_V_B], L, D, D);
    float scale = (float)(1.0 / sqrt((double)(D / H)));
    VF_TRY(vf_cpu_attention(s->a, s->q, s->k, s->v, 1, L, L, H, D / H, 1, scale));
    vf_cpu_linear(s->h, s->a, w[W_O_W], w[W_O_B], L, D, D);
    vf_cpu_add(s->x, s->h, (size_t)L * D);
    vf_cpu_layernorm(s->h, s->x, w[W_LN2_W], w[W_LN2_B], L, D, c->eps);
    vf_cpu_linear(s->m, s->h, w[W_FC1_W], w[W_FC1_B], L, D, I);
    if (c->quick_gelu)
        vf_cpu_quick_gelu(s->m, (size_t)L * I);
    else
        vf_cpu_gelu(s->m, (size_t)L * I);
    vf_cpu_linear(s->h, s->m, w[W_FC2_W], w[W_FC2_B], L, I, D);
    vf_cpu_add(s->x, s->h, (size_t)L * D);
    return VF_OK;
}

static vf_status run_layer(vf_residency *r, const vf_blocklist *bl, int b, const vf_clip_config *c,
                           clip_scratch *s)
{
    if (bl->blocks[b].nw != CLIP_LAYER_NW)
        return vf_error(VF_ERR_INTERNAL, "clip: block '%s' has %d weights, expected %d", bl->blocks[b].name,
                        bl->blocks[b].nw, CLIP_LAYER_NW);
    const float *const *w;
    VF_TRY(vf_residency_acquire(r, b, &w));
    vf_status st = layer_compute(w, c, s);
    vf_residency_release(r, b);
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
static vf_status run_final(vf_residency *r, int b, const vf_clip_config *c, const int32_t *ids,
                           const float *x, float *out, float *pooled)
{
    const int L = VF_CONTEXT_LEN, D = c->hidden;
    const float *const *w;
    VF_TRY(vf_residency_acquire(r, b, &w));
    vf_cpu_layernorm(out, x, w[0], w[1], L, D, c->eps);
    vf_residency_release(r, b);
    if (!pooled)
        return VF_OK;
    VF_TRY(vf_residency_acquire(r, b + 1, &w));
    vf_cpu_linear(pooled, out + (size_t)pool_position(c, ids) * D, w[0], NULL, 1, D, c->proj_dim);
    vf_residency_release(r, b + 1);
    return VF_OK;
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

vf_status vf_clip_forward(vf_residency *r, const vf_blocklist *bl, const vf_clip_config *cfg,
                          const int32_t ids[VF_CONTEXT_LEN], float *last_hidden, float *penultimate,
                          float *pooled_proj)
{
    VF_TRY(check_outputs(bl, cfg, pooled_proj));
    const size_t LD = (size_t)VF_CONTEXT_LEN * cfg->hidden;
    const size_t LI = (size_t)VF_CONTEXT_LEN * cfg->intermediate;
    float *buf = vf_malloc(sizeof(float) * (6 * LD + LI));
    if (!buf)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "clip activations");
    clip_scratch s = {buf, buf + LD, buf + 2 * LD, buf + 3 * LD, buf + 4 * LD, buf + 5 * LD, buf + 6 * LD};
    int need_final = last_hidden || pooled_proj;
    vf_status st = run_embeddings(r, cfg, ids, s.x);
    for (int i = 0; st == VF_OK && i < cfg->layers; i++) {
        if (i == cfg->layers - 1) {
            if (penultimate)
                memcpy(penultimate, s.x, sizeof(float) * LD);
            if (!need_final)
                break;
        }
        st = run_layer(r, bl, 1 + i, cfg, &s);
    }
    if (st == VF_OK && need_final)
        st = run_final(r, 1 + cfg->layers, cfg, ids, s.x, last_hidden ? last_hidden : s.h, pooled_proj);
    vf_free(buf);
    return st;
}
