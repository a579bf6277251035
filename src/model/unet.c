/* UNet2DConditionModel on the CPU: config parsing, block description, forward.
 *
 * The walk over the architecture exists twice, in describe() and forward(),
 * and both visit blocks in execution order: forward() keeps a running block
 * index and checks at the end that it consumed exactly the described list, so
 * the two cannot drift apart silently.
 *
 * Activations are plain vf_malloc'd float32 (B,C,H,W) buffers. Skip
 * connections are kept on a stack and freed as the up blocks consume them;
 * the transformer feed-forward (the widest intermediate, 8*C per token) runs
 * in token chunks so its scratch stays bounded at large resolutions.
 */
#include "model/unet.h"

#include "backend/cpu/ops.h"
#include "core/alloc.h"
#include "core/error.h"
#include "io/json.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- config ------------------------------------------------------------------ */

static int as_pos_int(const cJSON *v, int *out)
{
    if (!cJSON_IsNumber(v))
        return 0;
    double d = v->valuedouble;
    if (d < 1 || d > 1e7 || d != (double)(int)d)
        return 0;
    *out = (int)d;
    return 1;
}

/* An int-or-list key with one value per level; def < 0 means required. */
static vf_status level_ints(const cJSON *c, const char *key, int def, int n, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, key);
    int x;
    if (!v || cJSON_IsNull(v)) {
        if (def < 0)
            return vf_error(VF_ERR_FORMAT, "unet config: '%s' is missing", key);
        for (int i = 0; i < n; i++)
            out[i] = def;
        return VF_OK;
    }
    if (as_pos_int(v, &x)) {
        for (int i = 0; i < n; i++)
            out[i] = x;
        return VF_OK;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != n)
        return vf_error(VF_ERR_FORMAT, "unet config: '%s' must be a positive integer or a list of %d",
                        key, n);
    for (int i = 0; i < n; i++)
        if (!as_pos_int(cJSON_GetArrayItem(v, i), &out[i]))
            return vf_error(VF_ERR_FORMAT, "unet config: '%s'[%d] is not a positive integer", key, i);
    return VF_OK;
}

/* Keys whose non-default values select features this implementation lacks. */
static vf_status check_unsupported(const cJSON *c)
{
    static const char *const must_be_null[] = {
        "class_embed_type", "encoder_hid_dim_type", "encoder_hid_dim", "time_cond_proj_dim",
        "num_class_embeds", "time_embedding_act_fn", "timestep_post_act", "cross_attention_norm",
    };
    for (size_t i = 0; i < sizeof must_be_null / sizeof must_be_null[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, must_be_null[i]);
        if (v && !cJSON_IsNull(v))
            return vf_error(VF_ERR_UNSUPPORTED, "unet config: '%s' is set; not supported", must_be_null[i]);
    }
    static const char *const must_be_false[] = {
        "center_input_sample", "dual_cross_attention", "resnet_skip_time_act", "only_cross_attention",
        "mid_block_only_cross_attention", "class_embeddings_concat",
    };
    for (size_t i = 0; i < sizeof must_be_false / sizeof must_be_false[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, must_be_false[i]), *e;
        int all_false = 1; /* only_cross_attention may be a per-level list */
        if (cJSON_IsArray(v)) {
            cJSON_ArrayForEach(e, v) all_false &= cJSON_IsFalse(e) ? 1 : 0;
        }
        if (v && !cJSON_IsNull(v) && !cJSON_IsFalse(v) && !(cJSON_IsArray(v) && all_false))
            return vf_error(VF_ERR_UNSUPPORTED, "unet config: '%s' must be false; not supported",
                            must_be_false[i]);
    }
    static const char *const str_keys[][2] = {
        {"act_fn", "silu"},
        {"resnet_time_scale_shift", "default"},
        {"attention_type", "default"},
        {"time_embedding_type", "positional"},
    };
    for (size_t i = 0; i < sizeof str_keys / sizeof str_keys[0]; i++) {
        int bad = 0;
        const char *s = vf_json_str(c, str_keys[i][0], str_keys[i][1], &bad);
        if (bad)
            return vf_error(VF_ERR_FORMAT, "unet config: '%s' is not a string", str_keys[i][0]);
        if (strcmp(s, str_keys[i][1]) != 0)
            return vf_error(VF_ERR_UNSUPPORTED, "unet config: '%s' is \"%s\"; only \"%s\" is supported",
                            str_keys[i][0], s, str_keys[i][1]);
    }
    static const char *const one_keys[] = {"mid_block_scale_factor", "resnet_out_scale_factor",
                                           "downsample_padding"};
    for (size_t i = 0; i < sizeof one_keys / sizeof one_keys[0]; i++) {
        int bad = 0;
        double d = vf_json_num(c, one_keys[i], 1, &bad);
        if (bad)
            return vf_error(VF_ERR_FORMAT, "unet config: '%s' is not a number", one_keys[i]);
        if (d != 1)
            return vf_error(VF_ERR_UNSUPPORTED, "unet config: '%s' is %g; only 1 is supported",
                            one_keys[i], d);
    }
    return VF_OK;
}

/* Reads a list of block type names, each either plain or cross-attention. */
static vf_status block_types(const cJSON *c, const char *key, const char *plain, const char *cross,
                             int *n, int *attn)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, key);
    if (!cJSON_IsArray(v))
        return vf_error(VF_ERR_FORMAT, "unet config: '%s' is missing or not a list", key);
    *n = cJSON_GetArraySize(v);
    if (*n < 1 || *n > VF_UNET_MAX_LEVELS)
        return vf_error(VF_ERR_UNSUPPORTED, "unet config: '%s' has %d entries; 1..%d supported", key, *n,
                        VF_UNET_MAX_LEVELS);
    for (int i = 0; i < *n; i++) {
        const cJSON *t = cJSON_GetArrayItem(v, i);
        if (!cJSON_IsString(t))
            return vf_error(VF_ERR_FORMAT, "unet config: '%s'[%d] is not a string", key, i);
        if (strcmp(t->valuestring, plain) == 0)
            attn[i] = 0;
        else if (strcmp(t->valuestring, cross) == 0)
            attn[i] = 1;
        else
            return vf_error(VF_ERR_UNSUPPORTED, "unet config: '%s'[%d] is \"%s\"; not supported", key, i,
                            t->valuestring);
    }
    return VF_OK;
}

static vf_status get_int(const cJSON *c, const char *key, int def, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, key);
    if (!v || cJSON_IsNull(v)) {
        if (def < 0)
            return vf_error(VF_ERR_FORMAT, "unet config: '%s' is missing", key);
        *out = def;
        return VF_OK;
    }
    if (!as_pos_int(v, out))
        return vf_error(VF_ERR_FORMAT, "unet config: '%s' is not a positive integer", key);
    return VF_OK;
}

static vf_status parse_embeddings(const cJSON *c, vf_unet_config *cfg)
{
    int bad = 0;
    cfg->flip_sin_to_cos = vf_json_bool(c, "flip_sin_to_cos", 1, &bad);
    cfg->freq_shift = (float)vf_json_num(c, "freq_shift", 0, &bad);
    if (bad)
        return vf_error(VF_ERR_FORMAT, "unet config: 'flip_sin_to_cos' or 'freq_shift' has the wrong type");
    cfg->time_in_dim = cfg->ch[0];
    VF_TRY(get_int(c, "time_embedding_dim", cfg->ch[0] * 4, &cfg->temb_dim));
    if (cfg->time_in_dim % 2)
        return vf_error(VF_ERR_UNSUPPORTED, "unet config: block_out_channels[0] = %d is odd", cfg->ch[0]);

    const char *add = vf_json_str(c, "addition_embed_type", NULL, &bad);
    if (bad)
        return vf_error(VF_ERR_FORMAT, "unet config: 'addition_embed_type' is not a string");
    if (!add)
        return VF_OK;
    if (strcmp(add, "text_time") != 0)
        return vf_error(VF_ERR_UNSUPPORTED, "unet config: 'addition_embed_type' \"%s\" is not supported",
                        add);
    cfg->text_time = 1;
    VF_TRY(get_int(c, "addition_time_embed_dim", -1, &cfg->add_time_dim));
    VF_TRY(get_int(c, "projection_class_embeddings_input_dim", -1, &cfg->add_in_dim));
    cfg->pooled_dim = cfg->add_in_dim - 6 * cfg->add_time_dim;
    if (cfg->add_time_dim % 2 || cfg->pooled_dim < 1)
        return vf_error(VF_ERR_FORMAT,
                        "unet config: 'projection_class_embeddings_input_dim' %d does not fit 6 time ids of "
                        "even 'addition_time_embed_dim' %d plus pooled text embeddings",
                        cfg->add_in_dim, cfg->add_time_dim);
    return VF_OK;
}

static vf_status parse_mid(const cJSON *c, vf_unet_config *cfg)
{
    int bad = 0;
    const char *mid = vf_json_str(c, "mid_block_type", "UNetMidBlock2DCrossAttn", &bad);
    if (bad)
        return vf_error(VF_ERR_FORMAT, "unet config: 'mid_block_type' is not a string");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, "mid_block_type");
    if (v && cJSON_IsNull(v))
        return VF_OK; /* explicitly no mid block */
    if (strcmp(mid, "UNetMidBlock2DCrossAttn") != 0)
        return vf_error(VF_ERR_UNSUPPORTED, "unet config: 'mid_block_type' \"%s\" is not supported", mid);
    cfg->mid = 1;
    cfg->mid_heads = cfg->down_heads[cfg->levels - 1];
    cfg->mid_tlayers = cfg->down_tlayers[cfg->levels - 1];
    return VF_OK;
}

/* Head counts must split every attention width evenly. */
static vf_status check_heads(const vf_unet_config *cfg)
{
    for (int l = 0; l < cfg->levels; l++) {
        int C = cfg->ch[l];
        if (cfg->down_heads[l] > C || C % cfg->down_heads[l])
            return vf_error(VF_ERR_FORMAT,
                            "unet config: %d attention heads do not divide %d channels (level %d)",
                            cfg->down_heads[l], C, l);
        if (C % cfg->groups)
            return vf_error(VF_ERR_FORMAT, "unet config: 'norm_num_groups' %d does not divide %d channels",
                            cfg->groups, C);
    }
    return VF_OK;
}

vf_status vf_unet_config_parse(const cJSON *c, vf_arch arch, vf_unet_config *cfg)
{
    (void)arch; /* the config alone decides; arch only selects defaults elsewhere */
    memset(cfg, 0, sizeof *cfg);
    if (!cJSON_IsObject(c))
        return vf_error(VF_ERR_INVALID_ARG, "unet config: not a JSON object");
    VF_TRY(check_unsupported(c));

    int n = 0, nup = 0;
    VF_TRY(block_types(c, "down_block_types", "DownBlock2D", "CrossAttnDownBlock2D", &n, cfg->down_attn));
    VF_TRY(block_types(c, "up_block_types", "UpBlock2D", "CrossAttnUpBlock2D", &nup, cfg->up_attn));
    if (nup != n)
        return vf_error(VF_ERR_FORMAT, "unet config: %d down blocks but %d up blocks", n, nup);
    cfg->levels = n;
    VF_TRY(level_ints(c, "block_out_channels", -1, n, cfg->ch));
    const cJSON *boc = cJSON_GetObjectItemCaseSensitive(c, "block_out_channels");
    if (!cJSON_IsArray(boc))
        return vf_error(VF_ERR_FORMAT, "unet config: 'block_out_channels' must be a list of %d", n);

    VF_TRY(get_int(c, "in_channels", 4, &cfg->in_channels));
    VF_TRY(get_int(c, "out_channels", 4, &cfg->out_channels));
    VF_TRY(get_int(c, "norm_num_groups", 32, &cfg->groups));
    int bad = 0;
    cfg->norm_eps = (float)vf_json_num(c, "norm_eps", 1e-5, &bad);
    cfg->linear_proj = vf_json_bool(c, "use_linear_projection", 0, &bad);
    if (bad || !(cfg->norm_eps > 0))
        return vf_error(VF_ERR_FORMAT, "unet config: 'norm_eps' or 'use_linear_projection' is malformed");
    VF_TRY(get_int(c, "conv_in_kernel", 3, &cfg->conv_in_k));
    VF_TRY(get_int(c, "conv_out_kernel", 3, &cfg->conv_out_k));
    if (cfg->conv_in_k % 2 == 0 || cfg->conv_out_k % 2 == 0)
        return vf_error(VF_ERR_UNSUPPORTED, "unet config: even 'conv_in_kernel'/'conv_out_kernel'");

    int layers[VF_UNET_MAX_LEVELS], tl[VF_UNET_MAX_LEVELS], cross[VF_UNET_MAX_LEVELS];
    VF_TRY(level_ints(c, "layers_per_block", 2, n, layers));
    VF_TRY(level_ints(c, "transformer_layers_per_block", 1, n, tl));
    VF_TRY(level_ints(c, "cross_attention_dim", 1280, n, cross));
    for (int i = 1; i < n; i++)
        if (cross[i] != cross[0])
            return vf_error(VF_ERR_UNSUPPORTED, "unet config: per-level 'cross_attention_dim' values differ");
    cfg->cross_dim = cross[0];

    /* num_attention_heads, when set, is the head count; otherwise diffusers
     * (for historical reasons) reads attention_head_dim as the head count. */
    const cJSON *nah = cJSON_GetObjectItemCaseSensitive(c, "num_attention_heads");
    const char *heads_key = nah && !cJSON_IsNull(nah) ? "num_attention_heads" : "attention_head_dim";
    VF_TRY(level_ints(c, heads_key, 8, n, cfg->down_heads));

    int rtl[VF_UNET_MAX_LEVELS];
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(c, "reverse_transformer_layers_per_block");
    if (r && !cJSON_IsNull(r))
        VF_TRY(level_ints(c, "reverse_transformer_layers_per_block", 1, n, rtl));
    else
        for (int i = 0; i < n; i++)
            rtl[i] = tl[n - 1 - i];
    for (int i = 0; i < n; i++) {
        cfg->down_layers[i] = layers[i];
        cfg->down_tlayers[i] = tl[i];
        cfg->up_layers[i] = layers[n - 1 - i] + 1;
        cfg->up_tlayers[i] = rtl[i];
        cfg->up_heads[i] = cfg->down_heads[n - 1 - i];
    }
    VF_TRY(parse_mid(c, cfg));
    VF_TRY(parse_embeddings(c, cfg));
    return check_heads(cfg);
}

/* ---- description ------------------------------------------------------------- */

/* "<name>.<leaf>", or just the leaf when the block prefix is the module itself. */
static const char *wname(char *buf, size_t cap, const char *name, const char *leaf)
{
    if (!name[0])
        return leaf;
    snprintf(buf, cap, "%s.%s", name, leaf);
    return buf;
}

static void desc_linear(vf_blocklist *bl, const char *name, int out, int in, int bias)
{
    char nm[256];
    vf_bl_weight(bl, wname(nm, sizeof nm, name, "weight"), 2, out, in, 0, 0);
    if (bias)
        vf_bl_weight(bl, wname(nm, sizeof nm, name, "bias"), 1, out, 0, 0, 0);
}

static void desc_conv(vf_blocklist *bl, const char *name, int out, int in, int k)
{
    char nm[256];
    vf_bl_weight(bl, wname(nm, sizeof nm, name, "weight"), 4, out, in, k, k);
    vf_bl_weight(bl, wname(nm, sizeof nm, name, "bias"), 1, out, 0, 0, 0);
}

static void desc_norm(vf_blocklist *bl, const char *name, int C)
{
    char nm[256];
    vf_bl_weight(bl, wname(nm, sizeof nm, name, "weight"), 1, C, 0, 0, 0);
    vf_bl_weight(bl, wname(nm, sizeof nm, name, "bias"), 1, C, 0, 0, 0);
}

/* Weight indices within a resnet block, in declaration order. */
enum { RN_N1W, RN_N1B, RN_C1W, RN_C1B, RN_TW, RN_TB, RN_N2W, RN_N2B, RN_C2W, RN_C2B, RN_SW, RN_SB };

static void desc_resnet(vf_blocklist *bl, const vf_unet_config *cfg, const char *prefix, int cin, int cout)
{
    vf_bl_block(bl, "%s", prefix);
    desc_norm(bl, "norm1", cin);
    desc_conv(bl, "conv1", cout, cin, 3);
    desc_linear(bl, "time_emb_proj", cout, cfg->temb_dim, 1);
    desc_norm(bl, "norm2", cout);
    desc_conv(bl, "conv2", cout, cout, 3);
    if (cin != cout)
        desc_conv(bl, "conv_shortcut", cout, cin, 1);
}

/* Weight indices within a transformer block. */
enum {
    TB_N1W, TB_N1B, TB_A1Q, TB_A1K, TB_A1V, TB_A1OW, TB_A1OB,
    TB_N2W, TB_N2B, TB_A2Q, TB_A2K, TB_A2V, TB_A2OW, TB_A2OB,
    TB_N3W, TB_N3B, TB_FF0W, TB_FF0B, TB_FF2W, TB_FF2B
};

static void desc_proj(vf_blocklist *bl, const vf_unet_config *cfg, const char *name, int C)
{
    if (cfg->linear_proj) {
        desc_linear(bl, name, C, C, 1);
        return;
    }
    desc_conv(bl, name, C, C, 1);
}

static void desc_transformer(vf_blocklist *bl, const vf_unet_config *cfg, const char *prefix, int C,
                             int tlayers)
{
    vf_bl_block(bl, "%s", prefix);
    desc_norm(bl, "norm", C);
    desc_proj(bl, cfg, "proj_in", C);
    for (int k = 0; k < tlayers; k++) {
        vf_bl_block(bl, "%s.transformer_blocks.%d", prefix, k);
        desc_norm(bl, "norm1", C);
        desc_linear(bl, "attn1.to_q", C, C, 0);
        desc_linear(bl, "attn1.to_k", C, C, 0);
        desc_linear(bl, "attn1.to_v", C, C, 0);
        desc_linear(bl, "attn1.to_out.0", C, C, 1);
        desc_norm(bl, "norm2", C);
        desc_linear(bl, "attn2.to_q", C, C, 0);
        desc_linear(bl, "attn2.to_k", C, cfg->cross_dim, 0);
        desc_linear(bl, "attn2.to_v", C, cfg->cross_dim, 0);
        desc_linear(bl, "attn2.to_out.0", C, C, 1);
        desc_norm(bl, "norm3", C);
        desc_linear(bl, "ff.net.0.proj", 8 * C, C, 1);
        desc_linear(bl, "ff.net.2", C, 4 * C, 1);
    }
    /* proj_out as its own block so that the list stays in execution order. */
    vf_bl_block(bl, "%s.proj_out", prefix);
    desc_proj(bl, cfg, "", C);
}

static void desc_sampler(vf_blocklist *bl, const char *prefix, int C)
{
    vf_bl_block(bl, "%s", prefix);
    desc_conv(bl, "conv", C, C, 3);
}

static void desc_embeddings(vf_blocklist *bl, const vf_unet_config *cfg)
{
    vf_bl_block(bl, "time_embedding");
    desc_linear(bl, "linear_1", cfg->temb_dim, cfg->time_in_dim, 1);
    desc_linear(bl, "linear_2", cfg->temb_dim, cfg->temb_dim, 1);
    if (cfg->text_time) {
        vf_bl_block(bl, "add_embedding");
        desc_linear(bl, "linear_1", cfg->temb_dim, cfg->add_in_dim, 1);
        desc_linear(bl, "linear_2", cfg->temb_dim, cfg->temb_dim, 1);
    }
    vf_bl_block(bl, "conv_in");
    desc_conv(bl, "", cfg->ch[0], cfg->in_channels, cfg->conv_in_k);
}

static void desc_down(vf_blocklist *bl, const vf_unet_config *cfg)
{
    char p[128];
    int cin = cfg->ch[0];
    for (int l = 0; l < cfg->levels; l++) {
        int C = cfg->ch[l];
        for (int j = 0; j < cfg->down_layers[l]; j++) {
            snprintf(p, sizeof p, "down_blocks.%d.resnets.%d", l, j);
            desc_resnet(bl, cfg, p, j == 0 ? cin : C, C);
            if (!cfg->down_attn[l])
                continue;
            snprintf(p, sizeof p, "down_blocks.%d.attentions.%d", l, j);
            desc_transformer(bl, cfg, p, C, cfg->down_tlayers[l]);
        }
        if (l < cfg->levels - 1) {
            snprintf(p, sizeof p, "down_blocks.%d.downsamplers.0", l);
            desc_sampler(bl, p, C);
        }
        cin = C;
    }
}

static void desc_mid(vf_blocklist *bl, const vf_unet_config *cfg)
{
    int C = cfg->ch[cfg->levels - 1];
    if (!cfg->mid)
        return;
    desc_resnet(bl, cfg, "mid_block.resnets.0", C, C);
    desc_transformer(bl, cfg, "mid_block.attentions.0", C, cfg->mid_tlayers);
    desc_resnet(bl, cfg, "mid_block.resnets.1", C, C);
}

/* Channels of the skip that up block i, resnet j concatenates: diffusers pops
 * the down outputs in reverse, so they are computed the same way here. */
static void up_channels(const vf_unet_config *cfg, int i, int j, int *cin, int *cskip)
{
    int n = cfg->levels;
    int C = cfg->ch[n - 1 - i];
    int prev = i == 0 ? cfg->ch[n - 1] : cfg->ch[n - i];
    int in_ch = cfg->ch[n - 1 - i - 1 < 0 ? 0 : n - 1 - i - 1];
    *cskip = j == cfg->up_layers[i] - 1 ? in_ch : C;
    *cin = j == 0 ? prev : C;
}

static void desc_up(vf_blocklist *bl, const vf_unet_config *cfg)
{
    char p[128];
    for (int i = 0; i < cfg->levels; i++) {
        int C = cfg->ch[cfg->levels - 1 - i];
        for (int j = 0; j < cfg->up_layers[i]; j++) {
            int cin, cskip;
            up_channels(cfg, i, j, &cin, &cskip);
            snprintf(p, sizeof p, "up_blocks.%d.resnets.%d", i, j);
            desc_resnet(bl, cfg, p, cin + cskip, C);
            if (!cfg->up_attn[i])
                continue;
            snprintf(p, sizeof p, "up_blocks.%d.attentions.%d", i, j);
            desc_transformer(bl, cfg, p, C, cfg->up_tlayers[i]);
        }
        if (i < cfg->levels - 1) {
            snprintf(p, sizeof p, "up_blocks.%d.upsamplers.0", i);
            desc_sampler(bl, p, C);
        }
    }
}

vf_status vf_unet_describe_config(const vf_unet_config *cfg, vf_blocklist *bl)
{
    desc_embeddings(bl, cfg);
    desc_down(bl, cfg);
    desc_mid(bl, cfg);
    desc_up(bl, cfg);
    vf_bl_block(bl, "conv_norm_out");
    desc_norm(bl, "", cfg->ch[0]);
    vf_bl_block(bl, "conv_out");
    desc_conv(bl, "", cfg->out_channels, cfg->ch[0], cfg->conv_out_k);
    if (bl->st != VF_OK)
        return vf_error_prefix(bl->st, "unet: describing blocks");
    return VF_OK;
}

vf_status vf_unet_describe(const cJSON *config, vf_arch arch, vf_blocklist *bl)
{
    vf_unet_config cfg;
    VF_TRY(vf_unet_config_parse(config, arch, &cfg));
    return vf_unet_describe_config(&cfg, bl);
}

/* ---- forward ------------------------------------------------------------------ */

#define LN_EPS 1e-5f       /* BasicTransformerBlock layer norms (diffusers default) */
#define TGN_EPS 1e-6f      /* Transformer2DModel group norm */
#define FF_CHUNK 4096      /* tokens per feed-forward chunk */

typedef struct fwd {
    vf_residency *res;
    const vf_blocklist *bl;
    const vf_unet_config *cfg;
    int b;                 /* next block to run, in description order */
    int B;
    const float *ctx;      /* (B, Lc, cross_dim) */
    int Lc;
    float *temb;           /* silu(time embedding), (B, temb_dim) */
} fwd;

/* Takes the next block in order and materialises its nw weights. */
static vf_status next_block(fwd *f, int nw, const float *const **w, int *bi)
{
    if (f->b >= f->bl->nblocks)
        return vf_error(VF_ERR_INTERNAL, "unet: block list has %d blocks, the config walk needs more",
                        f->bl->nblocks);
    *bi = f->b++;
    const vf_block *blk = &f->bl->blocks[*bi];
    if (blk->nw != nw)
        return vf_error(VF_ERR_INTERNAL, "unet: block '%s' has %d weights, expected %d", blk->name, blk->nw,
                        nw);
    return vf_residency_acquire(f->res, *bi, w);
}

static float *alloc_f(size_t n)
{
    size_t bytes;
    if (vf_mul_overflow(n, sizeof(float), &bytes))
        return NULL;
    return vf_malloc(bytes ? bytes : 1);
}

/* x is (B,cin,H,W); *y receives a new (B,cout,H,W). */
static vf_status resnet(fwd *f, const float *x, int cin, int cout, int H, int W, float **y)
{
    const vf_unet_config *cfg = f->cfg;
    const float *const *w;
    int bi = 0, B = f->B, HW = H * W;
    size_t nin = (size_t)B * cin * HW, nout = (size_t)B * cout * HW;
    float *t = NULL, *u = NULL, *tp = NULL;
    vf_status st = next_block(f, cin != cout ? 12 : 10, &w, &bi);
    if (st != VF_OK)
        return st;
    t = alloc_f(nin > nout ? nin : nout);
    u = alloc_f(nout);
    tp = alloc_f((size_t)B * cout);
    if (!t || !u || !tp) {
        st = VF_ERR_NO_MEMORY;
        goto done;
    }
    memcpy(t, x, nin * sizeof(float));
    vf_cpu_groupnorm(t, t, w[RN_N1W], w[RN_N1B], B, cin, HW, cfg->groups, cfg->norm_eps, 1);
    st = vf_cpu_conv2d(u, t, w[RN_C1W], w[RN_C1B], B, cin, H, W, cout, 3, 3, 1, 1);
    if (st != VF_OK)
        goto done;
    /* The time embedding is a per-channel bias, broadcast over the plane. */
    vf_cpu_linear(tp, f->temb, w[RN_TW], w[RN_TB], B, cfg->temb_dim, cout);
    for (size_t p = 0; p < (size_t)B * cout; p++) {
        float *plane = u + p * HW;
        for (int i = 0; i < HW; i++)
            plane[i] += tp[p];
    }
    vf_cpu_groupnorm(u, u, w[RN_N2W], w[RN_N2B], B, cout, HW, cfg->groups, cfg->norm_eps, 1);
    st = vf_cpu_conv2d(t, u, w[RN_C2W], w[RN_C2B], B, cout, H, W, cout, 3, 3, 1, 1);
    if (st != VF_OK)
        goto done;
    if (cin != cout) {
        st = vf_cpu_conv2d(u, x, w[RN_SW], w[RN_SB], B, cin, H, W, cout, 1, 1, 1, 0);
        if (st != VF_OK)
            goto done;
        vf_cpu_add(t, u, nout);
    } else {
        vf_cpu_add(t, x, nout);
    }
done:
    vf_residency_release(f->res, bi);
    vf_free(u);
    vf_free(tp);
    if (st != VF_OK) {
        vf_free(t);
        return vf_error_prefix(st, "unet: %s", f->bl->blocks[bi].name);
    }
    *y = t;
    return VF_OK;
}

/* Scratch of one Transformer2DModel: token buffers of (N,C), N = B*L. */
typedef struct tscratch {
    float *nrm, *q, *k, *v, *att, *o, *g, *ff;
} tscratch;

static void tscratch_free(tscratch *s)
{
    vf_free(s->nrm);
    vf_free(s->q);
    vf_free(s->k);
    vf_free(s->v);
    vf_free(s->att);
    vf_free(s->o);
    vf_free(s->g);
    vf_free(s->ff);
    memset(s, 0, sizeof *s);
}

static vf_status tscratch_alloc(tscratch *s, size_t N, size_t NK, int C)
{
    size_t ch = N < FF_CHUNK ? N : FF_CHUNK;
    memset(s, 0, sizeof *s);
    s->nrm = alloc_f(N * C);
    s->q = alloc_f(N * C);
    s->k = alloc_f(NK * C);
    s->v = alloc_f(NK * C);
    s->att = alloc_f(N * C);
    s->o = alloc_f(N * C);
    s->g = alloc_f(ch * 8 * C);
    s->ff = alloc_f(ch * 4 * C);
    if (s->nrm && s->q && s->k && s->v && s->att && s->o && s->g && s->ff)
        return VF_OK;
    tscratch_free(s);
    return VF_ERR_NO_MEMORY;
}

/* hs is (B,L,C) tokens; kv is (B,Lk,Ckv); hs += to_out(attention(norm(hs), kv)). */
static vf_status attn(fwd *f, tscratch *s, float *hs, const float *kv, int L, int Lk, int Ckv, int C,
                      int heads, const float *const *w)
{
    int B = f->B, N = B * L, D = C / heads;
    vf_cpu_linear(s->q, s->nrm, w[0], NULL, N, C, C);
    vf_cpu_linear(s->k, kv, w[1], NULL, B * Lk, Ckv, C);
    vf_cpu_linear(s->v, kv, w[2], NULL, B * Lk, Ckv, C);
    VF_TRY(vf_cpu_attention(s->att, s->q, s->k, s->v, B, L, Lk, heads, D, 0, 1.0f / sqrtf((float)D)));
    vf_cpu_linear(s->o, s->att, w[3], w[4], N, C, C);
    vf_cpu_add(hs, s->o, (size_t)N * C);
    return VF_OK;
}

/* hs is (N,C); hs += ff(norm3(hs)) with GEGLU, in token chunks. */
static void feed_forward(tscratch *s, float *hs, int N, int C, const float *const *w)
{
    vf_cpu_layernorm(s->nrm, hs, w[TB_N3W], w[TB_N3B], N, C, LN_EPS);
    for (int r0 = 0; r0 < N; r0 += FF_CHUNK) {
        int rows = N - r0 < FF_CHUNK ? N - r0 : FF_CHUNK;
        vf_cpu_linear(s->g, s->nrm + (size_t)r0 * C, w[TB_FF0W], w[TB_FF0B], rows, C, 8 * C);
        vf_cpu_geglu(s->ff, s->g, rows, 4 * C);
        vf_cpu_linear(s->o, s->ff, w[TB_FF2W], w[TB_FF2B], rows, 4 * C, C);
        vf_cpu_add(hs + (size_t)r0 * C, s->o, (size_t)rows * C);
    }
}

/* One BasicTransformerBlock over hs (B,L,C): self-attention, cross-attention
 * with the context, GEGLU feed-forward, each pre-normed and residual. */
static vf_status tblock(fwd *f, tscratch *s, float *hs, int L, int C, int heads)
{
    const float *const *w;
    int bi = 0, N = f->B * L;
    vf_status st = next_block(f, 20, &w, &bi);
    if (st != VF_OK)
        return st;
    vf_cpu_layernorm(s->nrm, hs, w[TB_N1W], w[TB_N1B], N, C, LN_EPS);
    st = attn(f, s, hs, s->nrm, L, L, C, C, heads, w + TB_A1Q);
    if (st != VF_OK)
        goto done;
    vf_cpu_layernorm(s->nrm, hs, w[TB_N2W], w[TB_N2B], N, C, LN_EPS);
    st = attn(f, s, hs, f->ctx, L, f->Lc, f->cfg->cross_dim, C, heads, w + TB_A2Q);
    if (st != VF_OK)
        goto done;
    feed_forward(s, hs, N, C, w);
done:
    vf_residency_release(f->res, bi);
    if (st != VF_OK)
        return vf_error_prefix(st, "unet: %s", f->bl->blocks[bi].name);
    return VF_OK;
}

/* x is (B,C,H,W) and is updated in place: x += Transformer2DModel(x).
 * A 1x1 conv projection equals a linear one on channel-last tokens, so both
 * config variants share this path (the weights have the same layout). */
static vf_status transformer(fwd *f, float *x, int C, int H, int W, int heads, int tlayers)
{
    const float *const *w;
    int bi = 0, B = f->B, HW = H * W, N = B * HW;
    size_t nk = (size_t)N > (size_t)B * f->Lc ? (size_t)N : (size_t)B * f->Lc;
    tscratch s;
    float *hs = NULL;
    vf_status st = tscratch_alloc(&s, N, nk, C);
    if (st != VF_OK)
        return vf_error_prefix(st, "unet: transformer scratch");
    hs = alloc_f((size_t)N * C);
    if (!hs) {
        tscratch_free(&s);
        return vf_error_prefix(VF_ERR_NO_MEMORY, "unet: transformer tokens");
    }
    st = next_block(f, 4, &w, &bi);
    if (st != VF_OK)
        goto done;
    vf_cpu_groupnorm(s.o, x, w[0], w[1], B, C, HW, f->cfg->groups, TGN_EPS, 0);
    vf_cpu_nchw_to_nhwc(s.att, s.o, B, C, HW);
    vf_cpu_linear(hs, s.att, w[2], w[3], N, C, C);
    vf_residency_release(f->res, bi);

    for (int k = 0; k < tlayers && st == VF_OK; k++)
        st = tblock(f, &s, hs, HW, C, heads);
    if (st != VF_OK)
        goto done;

    st = next_block(f, 2, &w, &bi);
    if (st != VF_OK)
        goto done;
    vf_cpu_linear(s.o, hs, w[0], w[1], N, C, C);
    vf_residency_release(f->res, bi);
    vf_cpu_nhwc_to_nchw(s.att, s.o, B, C, HW);
    vf_cpu_add(x, s.att, (size_t)N * C);
done:
    vf_free(hs);
    tscratch_free(&s);
    return st;
}

/* A 3x3 conv block (conv_in, samplers, conv_out): x (B,cin,H,W) -> y (B,cout,OH,OW). */
static vf_status conv_block(fwd *f, const float *x, float *y, int cin, int H, int W, int cout, int k,
                            int stride)
{
    const float *const *w;
    int bi = 0;
    VF_TRY(next_block(f, 2, &w, &bi));
    vf_status st = vf_cpu_conv2d(y, x, w[0], w[1], f->B, cin, H, W, cout, k, k, stride, k / 2);
    vf_residency_release(f->res, bi);
    if (st != VF_OK)
        return vf_error_prefix(st, "unet: %s", f->bl->blocks[bi].name);
    return VF_OK;
}

/* TimestepEmbedding: y (B,temb) = linear_2(silu(linear_1(x (B,in)))). */
static vf_status mlp_embed(fwd *f, const float *x, int in, float *y, float *tmp)
{
    const float *const *w;
    int bi = 0, T = f->cfg->temb_dim;
    VF_TRY(next_block(f, 4, &w, &bi));
    vf_cpu_linear(tmp, x, w[0], w[1], f->B, in, T);
    vf_cpu_silu(tmp, (size_t)f->B * T);
    vf_cpu_linear(y, tmp, w[2], w[3], f->B, T, T);
    vf_residency_release(f->res, bi);
    return VF_OK;
}

/* f->temb = silu(time_embedding(t) [+ add_embedding(text_embeds, time_ids)]). */
static vf_status embeddings(fwd *f, const float *t, const float *text_embeds, const float *time_ids)
{
    const vf_unet_config *cfg = f->cfg;
    int B = f->B, T = cfg->temb_dim;
    int in = cfg->text_time && cfg->add_in_dim > cfg->time_in_dim ? cfg->add_in_dim : cfg->time_in_dim;
    float *x = alloc_f((size_t)B * in), *tmp = alloc_f((size_t)B * T), *y = alloc_f((size_t)B * T);
    float *emb = alloc_f((size_t)B * T), *ids = NULL;
    vf_status st = VF_ERR_NO_MEMORY;
    if (!x || !tmp || !y || !emb)
        goto done;
    vf_cpu_timestep_embedding(x, t, B, cfg->time_in_dim, cfg->flip_sin_to_cos, cfg->freq_shift);
    st = mlp_embed(f, x, cfg->time_in_dim, emb, tmp);
    if (st != VF_OK || !cfg->text_time)
        goto done;
    /* SDXL: each of the 6 time ids gets its own sinusoid, concatenated after the
     * pooled text embedding. */
    int A = cfg->add_time_dim, P = cfg->pooled_dim;
    st = VF_ERR_NO_MEMORY;
    ids = alloc_f((size_t)B * 6 * A);
    if (!ids)
        goto done;
    vf_cpu_timestep_embedding(ids, time_ids, B * 6, A, cfg->flip_sin_to_cos, cfg->freq_shift);
    for (int b = 0; b < B; b++) {
        memcpy(x + (size_t)b * cfg->add_in_dim, text_embeds + (size_t)b * P, P * sizeof(float));
        memcpy(x + (size_t)b * cfg->add_in_dim + P, ids + (size_t)b * 6 * A, 6 * A * sizeof(float));
    }
    st = mlp_embed(f, x, cfg->add_in_dim, y, tmp);
    if (st == VF_OK)
        vf_cpu_add(emb, y, (size_t)B * T);
done:
    vf_free(x);
    vf_free(tmp);
    vf_free(y);
    vf_free(ids);
    if (st != VF_OK) {
        vf_free(emb);
        return vf_error_prefix(st, "unet: time embedding");
    }
    vf_cpu_silu(emb, (size_t)B * T);
    f->temb = emb;
    return VF_OK;
}

/* Down outputs waiting for their up block, with their channel counts. */
typedef struct skips {
    float **x;
    int *c;
    int n, cap;
} skips;

static void skips_free(skips *s)
{
    for (int i = 0; i < s->n; i++)
        vf_free(s->x[i]);
    vf_free(s->x);
    vf_free(s->c);
}

/* Pushes x (taking ownership; freed here on failure). */
static vf_status skip_push(skips *s, float *x, int c)
{
    if (s->n == s->cap) {
        vf_free(x);
        return vf_error(VF_ERR_INTERNAL, "unet: more skip connections than the config allows (%d)", s->cap);
    }
    s->x[s->n] = x;
    s->c[s->n++] = c;
    return VF_OK;
}

/* conv_in and the down blocks; every output goes on the skip stack, whose top
 * is the running activation. *H, *W become the lowest resolution. */
static vf_status down_pass(fwd *f, skips *sk, const float *sample, int *H, int *W)
{
    const vf_unet_config *cfg = f->cfg;
    int B = f->B;
    float *y = alloc_f((size_t)B * cfg->ch[0] * *H * *W);
    if (!y)
        return VF_ERR_NO_MEMORY;
    vf_status st = conv_block(f, sample, y, cfg->in_channels, *H, *W, cfg->ch[0], cfg->conv_in_k, 1);
    if (st != VF_OK) {
        vf_free(y);
        return st;
    }
    VF_TRY(skip_push(sk, y, cfg->ch[0]));
    for (int l = 0; l < cfg->levels; l++) {
        int C = cfg->ch[l];
        for (int j = 0; j < cfg->down_layers[l]; j++) {
            VF_TRY(resnet(f, sk->x[sk->n - 1], sk->c[sk->n - 1], C, *H, *W, &y));
            VF_TRY(skip_push(sk, y, C));
            if (cfg->down_attn[l])
                VF_TRY(transformer(f, y, C, *H, *W, cfg->down_heads[l], cfg->down_tlayers[l]));
        }
        if (l == cfg->levels - 1)
            break;
        y = alloc_f((size_t)B * C * (*H / 2) * (*W / 2));
        if (!y)
            return VF_ERR_NO_MEMORY;
        st = conv_block(f, sk->x[sk->n - 1], y, C, *H, *W, C, 3, 2);
        if (st != VF_OK) {
            vf_free(y);
            return st;
        }
        VF_TRY(skip_push(sk, y, C));
        *H /= 2;
        *W /= 2;
    }
    return VF_OK;
}

/* The mid block on the top of the stack; *cur receives a new buffer. */
static vf_status mid_pass(fwd *f, skips *sk, int H, int W, float **cur)
{
    const vf_unet_config *cfg = f->cfg;
    int C = cfg->ch[cfg->levels - 1];
    const float *top = sk->x[sk->n - 1];
    size_t n = (size_t)f->B * C * H * W;
    float *a = NULL, *b = NULL;
    if (!cfg->mid) {
        a = alloc_f(n);
        if (!a)
            return VF_ERR_NO_MEMORY;
        memcpy(a, top, n * sizeof(float));
        *cur = a;
        return VF_OK;
    }
    VF_TRY(resnet(f, top, C, C, H, W, &a));
    vf_status st = transformer(f, a, C, H, W, cfg->mid_heads, cfg->mid_tlayers);
    if (st == VF_OK)
        st = resnet(f, a, C, C, H, W, &b);
    vf_free(a);
    if (st != VF_OK)
        return st;
    *cur = b;
    return VF_OK;
}

/* cur (B,c1,HW) ++ skip (B,c2,HW) along channels -> new (B,c1+c2,HW). */
static float *concat(const float *cur, int c1, const float *skip, int c2, int B, int HW)
{
    float *y = alloc_f((size_t)B * (c1 + c2) * HW);
    if (!y)
        return NULL;
    for (int b = 0; b < B; b++) {
        float *dst = y + (size_t)b * (c1 + c2) * HW;
        memcpy(dst, cur + (size_t)b * c1 * HW, (size_t)c1 * HW * sizeof(float));
        memcpy(dst + (size_t)c1 * HW, skip + (size_t)b * c2 * HW, (size_t)c2 * HW * sizeof(float));
    }
    return y;
}

/* One up resnet (+ transformer): consumes the top skip and *cur. */
static vf_status up_resnet(fwd *f, skips *sk, int i, int cin, int H, int W, float **cur)
{
    const vf_unet_config *cfg = f->cfg;
    int C = cfg->ch[cfg->levels - 1 - i];
    int cs = sk->c[sk->n - 1];
    float *skip = sk->x[--sk->n];
    float *cat = concat(*cur, cin, skip, cs, f->B, H * W), *y = NULL;
    vf_free(skip);
    if (!cat)
        return VF_ERR_NO_MEMORY;
    vf_free(*cur);
    *cur = NULL;
    vf_status st = resnet(f, cat, cin + cs, C, H, W, &y);
    vf_free(cat);
    if (st != VF_OK)
        return st;
    *cur = y;
    if (cfg->up_attn[i])
        return transformer(f, y, C, H, W, cfg->up_heads[i], cfg->up_tlayers[i]);
    return VF_OK;
}

/* The up blocks; *cur (owned) is replaced as it goes; H and W grow. */
static vf_status up_pass(fwd *f, skips *sk, int *H, int *W, float **cur)
{
    const vf_unet_config *cfg = f->cfg;
    int cin = cfg->ch[cfg->levels - 1];
    for (int i = 0; i < cfg->levels; i++) {
        int C = cfg->ch[cfg->levels - 1 - i];
        for (int j = 0; j < cfg->up_layers[i]; j++) {
            if (sk->n == 0)
                return vf_error(VF_ERR_INTERNAL, "unet: up block %d ran out of skip connections", i);
            VF_TRY(up_resnet(f, sk, i, cin, *H, *W, cur));
            cin = C;
        }
        if (i == cfg->levels - 1)
            break;
        size_t n = (size_t)f->B * C * (*H * 2) * (*W * 2);
        float *u = alloc_f(n), *y = alloc_f(n);
        vf_status st = VF_ERR_NO_MEMORY;
        if (u && y) {
            vf_cpu_upsample_nearest2x(u, *cur, f->B, C, *H, *W);
            st = conv_block(f, u, y, C, *H * 2, *W * 2, C, 3, 1);
        }
        vf_free(u);
        if (st != VF_OK) {
            vf_free(y);
            return st;
        }
        vf_free(*cur);
        *cur = y;
        *H *= 2;
        *W *= 2;
    }
    return VF_OK;
}

/* conv_norm_out + SiLU + conv_out; cur (B,ch0,H,W) is normalised in place. */
static vf_status out_pass(fwd *f, float *cur, int H, int W, float *out)
{
    const vf_unet_config *cfg = f->cfg;
    const float *const *w;
    int bi = 0;
    VF_TRY(next_block(f, 2, &w, &bi));
    vf_cpu_groupnorm(cur, cur, w[0], w[1], f->B, cfg->ch[0], H * W, cfg->groups, cfg->norm_eps, 1);
    vf_residency_release(f->res, bi);
    return conv_block(f, cur, out, cfg->ch[0], H, W, cfg->out_channels, cfg->conv_out_k, 1);
}

static vf_status check_args(const vf_unet_config *cfg, const float *sample, int B, int H, int W,
                            const float *timesteps, const float *context, int ctx_len,
                            const float *text_embeds, const float *time_ids, const float *out)
{
    int m = 1 << (cfg->levels - 1);
    if (!sample || !timesteps || !context || !out || B < 1 || ctx_len < 1)
        return vf_error(VF_ERR_INVALID_ARG, "unet: missing sample/timesteps/context/out or empty batch");
    if (H < 1 || H % m)
        return vf_error(VF_ERR_INVALID_ARG, "unet: latent height %d is not a positive multiple of %d "
                        "(image height must be a multiple of %d)", H, m, 8 * m);
    if (W < 1 || W % m)
        return vf_error(VF_ERR_INVALID_ARG, "unet: latent width %d is not a positive multiple of %d "
                        "(image width must be a multiple of %d)", W, m, 8 * m);
    if (cfg->text_time && (!text_embeds || !time_ids))
        return vf_error(VF_ERR_INVALID_ARG, "unet: this UNet needs text_embeds and time_ids");
    return VF_OK;
}

vf_status vf_unet_forward(vf_residency *res, const vf_blocklist *bl, const vf_unet_config *cfg,
                          const float *sample, int B, int H, int W, const float *timesteps,
                          const float *context, int ctx_len, const float *text_embeds,
                          const float *time_ids, float *out)
{
    VF_TRY(check_args(cfg, sample, B, H, W, timesteps, context, ctx_len, text_embeds, time_ids, out));
    fwd f = {.res = res, .bl = bl, .cfg = cfg, .B = B, .ctx = context, .Lc = ctx_len};
    skips sk = {0};
    float *cur = NULL;
    sk.cap = 1 + cfg->levels - 1;
    for (int l = 0; l < cfg->levels; l++)
        sk.cap += cfg->down_layers[l];
    sk.x = vf_calloc((size_t)sk.cap, sizeof *sk.x);
    sk.c = vf_calloc((size_t)sk.cap, sizeof *sk.c);
    vf_status st = VF_ERR_NO_MEMORY;
    if (!sk.x || !sk.c)
        goto done;
    st = embeddings(&f, timesteps, text_embeds, time_ids);
    if (st == VF_OK)
        st = down_pass(&f, &sk, sample, &H, &W);
    if (st == VF_OK)
        st = mid_pass(&f, &sk, H, W, &cur);
    if (st == VF_OK)
        st = up_pass(&f, &sk, &H, &W, &cur);
    if (st == VF_OK)
        st = out_pass(&f, cur, H, W, out);
    if (st == VF_OK && (f.b != bl->nblocks || sk.n != 0))
        st = vf_error(VF_ERR_INTERNAL, "unet: ran %d of %d blocks, %d skips left", f.b, bl->nblocks, sk.n);
done:
    vf_free(cur);
    vf_free(f.temb);
    skips_free(&sk);
    return st;
}
