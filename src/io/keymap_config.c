/* Diffusers-style configs for single-file checkpoints (see keymap.h).
 *
 * A single file carries weights but no config.json. Most of a config is written
 * in the shapes (channels per level, resnets per level, transformer depth,
 * cross-attention width, whether proj_in is a linear or a 1x1 conv), so it is
 * read off the canonical tensors. What the shapes cannot tell (attention head
 * counts, norm groups, the VAE scaling factor) takes the published value for
 * the detected architecture, or comes from a config_dir, in which case the
 * given config is checked key by key against the inferred one, so a config
 * that does not describe these weights is an error instead of a wrong model.
 */
#include "core/alloc.h"
#include "core/error.h"
#include "io/keymap.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MAX_LEVELS 8

static const char *const g_comp_names[VF_COMPONENT_COUNT] = {
    "text_encoder", "text_encoder_2", "unet", "vae"};

static const vf_ckpt_tensor *findf(const vf_checkpoint *ck, vf_component c, const char *fmt, ...)
    VF_PRINTF(3, 4);
static const vf_ckpt_tensor *findf(const vf_checkpoint *ck, vf_component c, const char *fmt, ...)
{
    char name[VF_KEYMAP_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof name)
        return NULL;
    return vf_checkpoint_find(ck, c, name);
}

/* A tensor the inference cannot do without, with at least ndim dims. */
static vf_status need(const vf_checkpoint *ck, vf_component c, const char *name, int ndim,
                      const vf_ckpt_tensor **out)
{
    *out = vf_checkpoint_find(ck, c, name);
    if (!*out)
        return vf_error(VF_ERR_NOT_FOUND, "%s: cannot infer the %s config: tensor '%s' is missing",
                        vf_checkpoint_path(ck), g_comp_names[c], name);
    if ((*out)->ndim < ndim)
        return vf_error(VF_ERR_SHAPE, "%s: %s tensor '%s' has %d dims, expected %d",
                        vf_checkpoint_path(ck), g_comp_names[c], name, (*out)->ndim, ndim);
    return VF_OK;
}

/* Counts prefix.0.suffix, prefix.1.suffix, ... while they exist. */
static int count_seq(const vf_checkpoint *ck, vf_component c, const char *prefix, const char *suffix)
{
    int k = 0;
    while (k < 1000 && findf(ck, c, "%s%d%s", prefix, k, suffix))
        k++;
    return k;
}

/* ---- building cJSON with one failure flag -------------------------------------- */

typedef struct jb {
    cJSON *o;
    int bad;
} jb;

static void jnum(jb *b, const char *k, double v)
{
    if (!cJSON_AddNumberToObject(b->o, k, v))
        b->bad = 1;
}

static void jstr(jb *b, const char *k, const char *v)
{
    if (!cJSON_AddStringToObject(b->o, k, v))
        b->bad = 1;
}

static void jbool(jb *b, const char *k, int v)
{
    if (!cJSON_AddBoolToObject(b->o, k, v))
        b->bad = 1;
}

static void jnull(jb *b, const char *k)
{
    if (!cJSON_AddNullToObject(b->o, k))
        b->bad = 1;
}

static void jitem(jb *b, const char *k, cJSON *item)
{
    if (!item || !cJSON_AddItemToObject(b->o, k, item)) {
        cJSON_Delete(item);
        b->bad = 1;
    }
}

static void jints(jb *b, const char *k, const int *v, int n)
{
    jitem(b, k, cJSON_CreateIntArray(v, n));
}

static void jstrs(jb *b, const char *k, const char *const *v, int n)
{
    jitem(b, k, cJSON_CreateStringArray(v, n));
}

/* ---- inference ---------------------------------------------------------------------- */

static vf_status infer_text(const vf_checkpoint *ck, vf_component c, jb *b)
{
    const vf_ckpt_tensor *tok, *pos, *fc1;
    VF_TRY(need(ck, c, "text_model.embeddings.token_embedding.weight", 2, &tok));
    VF_TRY(need(ck, c, "text_model.embeddings.position_embedding.weight", 2, &pos));
    VF_TRY(need(ck, c, "text_model.encoder.layers.0.mlp.fc1.weight", 2, &fc1));
    const vf_ckpt_tensor *proj = vf_checkpoint_find(ck, c, "text_projection.weight");
    int g = c == VF_COMPONENT_TEXT_ENCODER_2;
    int64_t hidden = tok->shape[1];
    const char *arch = g ? "CLIPTextModelWithProjection" : "CLIPTextModel";
    jstrs(b, "architectures", &arch, 1);
    jstr(b, "model_type", "clip_text_model");
    jstr(b, "hidden_act", g ? "gelu" : "quick_gelu");
    jnum(b, "hidden_size", (double)hidden);
    jnum(b, "intermediate_size", (double)fc1->shape[0]);
    jnum(b, "num_hidden_layers",
         count_seq(ck, c, "text_model.encoder.layers.", ".self_attn.q_proj.weight"));
    jnum(b, "num_attention_heads", hidden % 64 == 0 ? (double)(hidden / 64) : 1.0);
    jnum(b, "max_position_embeddings", (double)pos->shape[0]);
    jnum(b, "vocab_size", (double)tok->shape[0]);
    jnum(b, "projection_dim", proj && proj->ndim == 2 ? (double)proj->shape[0] : (double)hidden);
    jnum(b, "layer_norm_eps", 1e-5);
    jnum(b, "attention_dropout", 0.0);
    jnum(b, "bos_token_id", 49406);
    jnum(b, "eos_token_id", 49407);
    jnum(b, "pad_token_id", 1);
    return VF_OK;
}

typedef struct unet_shape {
    int levels, layers;
    int ch[MAX_LEVELS], depth[MAX_LEVELS], heads[MAX_LEVELS];
    int down_attn[MAX_LEVELS], up_attn[MAX_LEVELS];
} unet_shape;

static vf_status unet_levels(const vf_checkpoint *ck, unet_shape *u)
{
    const vf_component c = VF_COMPONENT_UNET;
    u->levels = count_seq(ck, c, "down_blocks.", ".resnets.0.conv1.weight");
    u->layers = count_seq(ck, c, "down_blocks.0.resnets.", ".conv1.weight");
    if (u->levels == 0)
        return vf_error(VF_ERR_NOT_FOUND, "%s: cannot infer the unet config: tensor '%s' is missing",
                        vf_checkpoint_path(ck), "down_blocks.0.resnets.0.conv1.weight");
    if (u->levels > MAX_LEVELS)
        return vf_error(VF_ERR_UNSUPPORTED, "%s: unet has %d levels, over the limit of %d",
                        vf_checkpoint_path(ck), u->levels, MAX_LEVELS);
    for (int l = 0; l < u->levels; l++) {
        const vf_ckpt_tensor *t = findf(ck, c, "down_blocks.%d.resnets.0.conv1.weight", l);
        u->ch[l] = (int)t->shape[0];
        u->heads[l] = u->ch[l] >= 64 ? u->ch[l] / 64 : 1;
        u->down_attn[l] = findf(ck, c, "down_blocks.%d.attentions.0.proj_in.weight", l) != NULL;
        u->up_attn[l] = findf(ck, c, "up_blocks.%d.attentions.0.proj_in.weight", l) != NULL;
        u->depth[l] = 1;
        if (u->down_attn[l]) {
            int k = 0;
            while (k < 1000 &&
                   findf(ck, c, "down_blocks.%d.attentions.0.transformer_blocks.%d.attn1.to_q.weight", l, k))
                k++;
            u->depth[l] = k;
        }
    }
    return VF_OK;
}

/* The first cross-attention key projection and proj_in, wherever they are. */
static void unet_attn(const vf_checkpoint *ck, const unet_shape *u, const vf_ckpt_tensor **tok,
                      const vf_ckpt_tensor **pin)
{
    const vf_component c = VF_COMPONENT_UNET;
    *tok = findf(ck, c, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight");
    *pin = findf(ck, c, "mid_block.attentions.0.proj_in.weight");
    for (int l = 0; l < u->levels && (!*tok || !*pin); l++) {
        if (!*tok)
            *tok = findf(ck, c, "down_blocks.%d.attentions.0.transformer_blocks.0.attn2.to_k.weight", l);
        if (!*pin)
            *pin = findf(ck, c, "down_blocks.%d.attentions.0.proj_in.weight", l);
    }
}

/* SDXL's add embedding input is pooled text (text_encoder_2's projection) plus
 * six time ids of addition_time_embed_dim each. */
static void unet_addition(const vf_checkpoint *ck, jb *b)
{
    const vf_ckpt_tensor *add = vf_checkpoint_find(ck, VF_COMPONENT_UNET, "add_embedding.linear_1.weight");
    if (!add || add->ndim != 2) {
        jnull(b, "addition_embed_type");
        jnull(b, "addition_time_embed_dim");
        jnull(b, "projection_class_embeddings_input_dim");
        return;
    }
    const vf_ckpt_tensor *proj =
        vf_checkpoint_find(ck, VF_COMPONENT_TEXT_ENCODER_2, "text_projection.weight");
    int64_t in = add->shape[1], time_dim = 256;
    if (proj && proj->ndim == 2 && in > proj->shape[0] && (in - proj->shape[0]) % 6 == 0)
        time_dim = (in - proj->shape[0]) / 6;
    jstr(b, "addition_embed_type", "text_time");
    jnum(b, "addition_time_embed_dim", (double)time_dim);
    jnum(b, "projection_class_embeddings_input_dim", (double)in);
}

static vf_status infer_unet(const vf_checkpoint *ck, jb *b)
{
    const vf_component c = VF_COMPONENT_UNET;
    const vf_ckpt_tensor *cin, *cout, *tok, *pin;
    unet_shape u;
    memset(&u, 0, sizeof u);
    VF_TRY(need(ck, c, "conv_in.weight", 4, &cin));
    VF_TRY(need(ck, c, "conv_out.weight", 4, &cout));
    VF_TRY(unet_levels(ck, &u));
    unet_attn(ck, &u, &tok, &pin);
    int xl = vf_checkpoint_arch(ck) == VF_ARCH_SDXL;
    const char *down[MAX_LEVELS], *up[MAX_LEVELS];
    for (int l = 0; l < u.levels; l++) {
        down[l] = u.down_attn[l] ? "CrossAttnDownBlock2D" : "DownBlock2D";
        up[l] = u.up_attn[l] ? "CrossAttnUpBlock2D" : "UpBlock2D";
    }
    jstr(b, "_class_name", "UNet2DConditionModel");
    jnum(b, "in_channels", (double)cin->shape[1]);
    jnum(b, "out_channels", (double)cout->shape[0]);
    jints(b, "block_out_channels", u.ch, u.levels);
    jnum(b, "layers_per_block", u.layers);
    jstrs(b, "down_block_types", down, u.levels);
    jstrs(b, "up_block_types", up, u.levels);
    jstr(b, "mid_block_type",
         vf_checkpoint_find(ck, c, "mid_block.attentions.0.proj_in.weight") ? "UNetMidBlock2DCrossAttn"
                                                                             : "UNetMidBlock2D");
    jints(b, "transformer_layers_per_block", u.depth, u.levels);
    jnum(b, "cross_attention_dim", tok && tok->ndim == 2 ? (double)tok->shape[1] : xl ? 2048 : 768);
    jbool(b, "use_linear_projection", pin && pin->ndim == 2);
    if (xl)
        jints(b, "attention_head_dim", u.heads, u.levels);
    else
        jnum(b, "attention_head_dim", 8);
    jnull(b, "num_attention_heads");
    unet_addition(ck, b);
    jnum(b, "norm_num_groups", 32);
    jnum(b, "norm_eps", 1e-5);
    jstr(b, "act_fn", "silu");
    jbool(b, "flip_sin_to_cos", 1);
    jnum(b, "freq_shift", 0);
    jnum(b, "downsample_padding", 1);
    jnum(b, "mid_block_scale_factor", 1);
    jbool(b, "center_input_sample", 0);
    jbool(b, "upcast_attention", 0);
    jbool(b, "only_cross_attention", 0);
    jnull(b, "class_embed_type");
    jstr(b, "time_embedding_type", "positional");
    jnum(b, "sample_size", xl ? 128 : 64);
    return VF_OK;
}

static vf_status infer_vae(const vf_checkpoint *ck, jb *b)
{
    const vf_component c = VF_COMPONENT_VAE;
    const vf_ckpt_tensor *cin, *cout, *din;
    VF_TRY(need(ck, c, "encoder.conv_in.weight", 4, &cin));
    VF_TRY(need(ck, c, "decoder.conv_out.weight", 4, &cout));
    VF_TRY(need(ck, c, "decoder.conv_in.weight", 4, &din));
    int levels = count_seq(ck, c, "encoder.down_blocks.", ".resnets.0.conv1.weight");
    if (levels == 0 || levels > MAX_LEVELS)
        return vf_error(VF_ERR_NOT_FOUND, "%s: cannot infer the vae config: tensors '%s' missing or too many",
                        vf_checkpoint_path(ck), "encoder.down_blocks.N.resnets.0.conv1.weight");
    int ch[MAX_LEVELS];
    const char *down[MAX_LEVELS], *up[MAX_LEVELS];
    for (int l = 0; l < levels; l++) {
        ch[l] = (int)findf(ck, c, "encoder.down_blocks.%d.resnets.0.conv1.weight", l)->shape[0];
        down[l] = "DownEncoderBlock2D";
        up[l] = "UpDecoderBlock2D";
    }
    int xl = vf_checkpoint_arch(ck) == VF_ARCH_SDXL;
    jstr(b, "_class_name", "AutoencoderKL");
    jnum(b, "in_channels", (double)cin->shape[1]);
    jnum(b, "out_channels", (double)cout->shape[0]);
    jnum(b, "latent_channels", (double)din->shape[1]);
    jints(b, "block_out_channels", ch, levels);
    jnum(b, "layers_per_block", count_seq(ck, c, "encoder.down_blocks.0.resnets.", ".conv1.weight"));
    jstrs(b, "down_block_types", down, levels);
    jstrs(b, "up_block_types", up, levels);
    jstr(b, "act_fn", "silu");
    jnum(b, "norm_num_groups", 32);
    jnum(b, "scaling_factor", xl ? 0.13025 : 0.18215);
    jnum(b, "sample_size", xl ? 1024 : 512);
    jbool(b, "force_upcast", 1);
    jbool(b, "use_quant_conv", vf_checkpoint_find(ck, c, "quant_conv.weight") != NULL);
    jbool(b, "use_post_quant_conv", vf_checkpoint_find(ck, c, "post_quant_conv.weight") != NULL);
    jbool(b, "mid_block_add_attention",
          vf_checkpoint_find(ck, c, "encoder.mid_block.attentions.0.to_q.weight") != NULL);
    return VF_OK;
}

vf_status vf_keymap_infer_config(const vf_checkpoint *ck, vf_component c, cJSON **out)
{
    *out = NULL;
    jb b = {cJSON_CreateObject(), 0};
    if (!b.o)
        return vf_error(VF_ERR_NO_MEMORY, "%s: %s config", vf_checkpoint_path(ck), g_comp_names[c]);
    vf_status st;
    if (c == VF_COMPONENT_UNET)
        st = infer_unet(ck, &b);
    else if (c == VF_COMPONENT_VAE)
        st = infer_vae(ck, &b);
    else
        st = infer_text(ck, c, &b);
    if (st == VF_OK && b.bad)
        st = vf_error(VF_ERR_NO_MEMORY, "%s: building the %s config", vf_checkpoint_path(ck),
                      g_comp_names[c]);
    if (st != VF_OK) {
        cJSON_Delete(b.o);
        return st;
    }
    *out = b.o;
    return VF_OK;
}

/* ---- checking a given config ------------------------------------------------------- */

static vf_status mismatch(const vf_checkpoint *ck, const char *path, const char *key,
                          const cJSON *given, const cJSON *want)
{
    char *g = cJSON_PrintUnformatted(given), *w = cJSON_PrintUnformatted(want);
    vf_status st = vf_error(VF_ERR_SHAPE, "%s: \"%s\" is %s but the weights in %s say %s", path, key,
                            g ? g : "?", vf_checkpoint_path(ck), w ? w : "?");
    cJSON_free(g);
    cJSON_free(w);
    return st;
}

/* Keys whose values must match exactly when the given config has them. */
static vf_status check_keys(const vf_checkpoint *ck, const cJSON *cfg, const cJSON *inf,
                            const char *path, const char *const *keys, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const cJSON *g = cJSON_GetObjectItemCaseSensitive(cfg, keys[i]);
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(inf, keys[i]);
        if (!g || cJSON_IsNull(g) || !w)
            continue;
        if (!cJSON_Compare(g, w, 1))
            return mismatch(ck, path, keys[i], g, w);
    }
    return VF_OK;
}

static int has_cross_attn(const cJSON *v)
{
    return cJSON_IsString(v) && strstr(v->valuestring, "CrossAttn") != NULL;
}

/* Block types: only whether a level has cross-attention is in the shapes. */
static vf_status check_block_types(const vf_checkpoint *ck, const cJSON *cfg, const cJSON *inf,
                                   const char *path, const char *key)
{
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(inf, key);
    if (!g || cJSON_IsNull(g) || !w)
        return VF_OK;
    int n = cJSON_GetArraySize(w);
    if (!cJSON_IsArray(g) || cJSON_GetArraySize(g) != n)
        return mismatch(ck, path, key, g, w);
    for (int i = 0; i < n; i++)
        if (has_cross_attn(cJSON_GetArrayItem(g, i)) != has_cross_attn(cJSON_GetArrayItem(w, i)))
            return mismatch(ck, path, key, g, w);
    return VF_OK;
}

/* transformer_layers_per_block: an int or one per level; it matters only at
 * levels with cross-attention. */
static vf_status check_depth(const vf_checkpoint *ck, const cJSON *cfg, const cJSON *inf,
                             const char *path)
{
    const char *key = "transformer_layers_per_block";
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(inf, key);
    const cJSON *types = cJSON_GetObjectItemCaseSensitive(inf, "down_block_types");
    if (!g || cJSON_IsNull(g) || !w)
        return VF_OK;
    int n = cJSON_GetArraySize(w);
    if (cJSON_IsArray(g) && cJSON_GetArraySize(g) != n)
        return mismatch(ck, path, key, g, w);
    if (!cJSON_IsArray(g) && !cJSON_IsNumber(g))
        return mismatch(ck, path, key, g, w);
    for (int i = 0; i < n; i++) {
        const cJSON *gi = cJSON_IsArray(g) ? cJSON_GetArrayItem(g, i) : g;
        if (!has_cross_attn(cJSON_GetArrayItem(types, i)))
            continue;
        if (!cJSON_IsNumber(gi) || gi->valuedouble != cJSON_GetArrayItem(w, i)->valuedouble)
            return mismatch(ck, path, key, g, w);
    }
    return VF_OK;
}

static vf_status check_heads(const vf_checkpoint *ck, const cJSON *cfg, const char *path)
{
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(cfg, "num_attention_heads");
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(cfg, "hidden_size");
    if (!cJSON_IsNumber(h) || !cJSON_IsNumber(d))
        return VF_OK;
    if (h->valueint <= 0 || d->valueint % h->valueint != 0)
        return vf_error(VF_ERR_SHAPE, "%s: num_attention_heads %d does not divide hidden_size %d (%s)",
                        path, h->valueint, d->valueint, vf_checkpoint_path(ck));
    return VF_OK;
}

static vf_status check_parsed(const vf_checkpoint *ck, vf_component c, const cJSON *cfg,
                              const cJSON *inf, const char *path)
{
    static const char *const text_keys[] = {"hidden_size", "intermediate_size", "num_hidden_layers",
                                            "max_position_embeddings", "vocab_size"};
    static const char *const unet_keys[] = {
        "in_channels", "out_channels", "block_out_channels", "layers_per_block",
        "cross_attention_dim", "use_linear_projection", "projection_class_embeddings_input_dim"};
    static const char *const vae_keys[] = {"in_channels", "out_channels", "latent_channels",
                                           "block_out_channels", "layers_per_block"};
    static const char *const proj_key[] = {"projection_dim"};
    if (c == VF_COMPONENT_UNET) {
        VF_TRY(check_keys(ck, cfg, inf, path, unet_keys, sizeof unet_keys / sizeof unet_keys[0]));
        VF_TRY(check_block_types(ck, cfg, inf, path, "down_block_types"));
        VF_TRY(check_block_types(ck, cfg, inf, path, "up_block_types"));
        return check_depth(ck, cfg, inf, path);
    }
    if (c == VF_COMPONENT_VAE)
        return check_keys(ck, cfg, inf, path, vae_keys, sizeof vae_keys / sizeof vae_keys[0]);
    VF_TRY(check_keys(ck, cfg, inf, path, text_keys, sizeof text_keys / sizeof text_keys[0]));
    if (c == VF_COMPONENT_TEXT_ENCODER_2)
        VF_TRY(check_keys(ck, cfg, inf, path, proj_key, 1));
    return check_heads(ck, cfg, path);
}

vf_status vf_keymap_check_config(const vf_checkpoint *ck, vf_component c, const cJSON *cfg,
                                 const char *path)
{
    cJSON *inf;
    VF_TRY(vf_keymap_infer_config(ck, c, &inf));
    vf_status st = check_parsed(ck, c, cfg, inf, path);
    cJSON_Delete(inf);
    return st;
}
