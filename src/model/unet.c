/* UNet2DConditionModel: config parsing, block description, forward on any backend.
 *
 * The walk over the architecture exists twice, in describe() and forward(),
 * and both visit blocks in execution order: forward() keeps a running block
 * index and checks at the end that it consumed exactly the described list, so
 * the two cannot drift apart silently.
 *
 * The forward is written once against backend/backend.h (vf_be_* ops on
 * backend buffers, weights through model/exec.h), so the CPU (float32, NCHW)
 * and CUDA (f16/bf16, NHWC) run the same code. Fusions the contract offers
 * are used where they are free on every backend: residual adds inside the
 * GEMM / conv epilogue, the resnet's time-embedding add inside GroupNorm,
 * activations inside the GEMM; on the CPU backend they are the same float32
 * operations in the same order as the unfused loop, so CPU results are
 * unchanged bit for bit. Activations are backend buffers freed as soon as
 * their last reader was queued (on CUDA they return to a stream-ordered pool);
 * skip connections are kept on a stack and freed as the up blocks consume
 * them. On the CPU the transformer feed-forward (the widest intermediate, 8*C
 * per token) runs in token chunks so its scratch stays bounded at large
 * resolutions; a GPU takes all tokens at once.
 */
#include "model/unet.h"

#include "backend/backend.h"
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
#define FF_CHUNK 4096      /* CPU: tokens per feed-forward chunk */
#define FF_CHUNK_DEVICE 65536 /* elsewhere: the GEMMs want every token at once */

typedef struct fwd {
    const vf_exec *x;
    vf_backend *be;
    const vf_blocklist *bl;
    const vf_unet_config *cfg;
    int b;                 /* next block to run, in description order */
    int B;
    int tok;               /* feature maps already are token sequences (NHWC) */
    int ff_chunk;
    const vf_dbuf *ctx;    /* (B, Lc, cross_dim) */
    int Lc;
    vf_dbuf *temb;         /* silu(time embedding), (B, temb_dim) */
} fwd;

/* An acquired block: its weights and its index. */
typedef struct wblk {
    const vf_dbuf *w[VF_EXEC_MAX_W];
    int bi;
} wblk;

/* Takes the next block in order and materialises its nw weights. */
static vf_status next_block(fwd *f, int nw, wblk *k)
{
    if (f->b >= f->bl->nblocks)
        return vf_error(VF_ERR_INTERNAL, "unet: block list has %d blocks, the config walk needs more",
                        f->bl->nblocks);
    k->bi = f->b++;
    const vf_block *blk = &f->bl->blocks[k->bi];
    if (blk->nw != nw)
        return vf_error(VF_ERR_INTERNAL, "unet: block '%s' has %d weights, expected %d", blk->name, blk->nw,
                        nw);
    return vf_exec_acquire(f->x, k->bi, k->w, VF_EXEC_MAX_W);
}

static void end_block(fwd *f, const wblk *k) { vf_exec_release(f->x, k->bi); }

static vf_status block_error(fwd *f, const wblk *k, vf_status st)
{
    return vf_error_prefix(st, "unet: %s", f->bl->blocks[k->bi].name);
}

// x is (B,cin,H,W); *y receives a new (B,cout,H,W)
static vf_status resnet(fwd *f, const vf_dbuf *x, int cin, int cout, int H, int W, vf_dbuf **y)
{
    const vf_unet_config *cfg = f->cfg;
    vf_backend *be = f->be;
    wblk k;
    int B = f->B, HW = H * W, G = cfg->groups;
    size_t nin = (size_t)B * cin * HW, nout = (size_t)B * cout * HW;
    vf_dbuf *a = NULL, *u = NULL, *tp = NULL, *sc = NULL, *t = NULL;
    vf_status st = next_block(f, cin != cout ? 12 : 10, &k);
    if (st != VF_OK)
        return st;
    const vf_dbuf *const *w = k.w;
    if ((st = vf_be_alloc(be, nin, &a)) || (st = vf_be_alloc(be, nout, &u)))
        goto done;
    if ((st = vf_be_groupnorm(be, a, x, w[RN_N1W], w[RN_N1B], NULL, B, cin, HW, G, cfg->norm_eps, 1)) ||
        (st = vf_be_conv2d(be, u, a, w[RN_C1W], w[RN_C1B], NULL, B, cin, H, W, cout, 3, 3, 1, 1)))
        goto done;
    vf_be_free(be, a);
    a = NULL;
    /* The time embedding is a per-channel bias, added before norm2. */
    if ((st = vf_be_alloc(be, (size_t)B * cout, &tp)) ||
        (st = vf_be_linear(be, tp, f->temb, w[RN_TW], w[RN_TB], NULL, B, cfg->temb_dim, cout, VF_ACT_NONE)) ||
        (st = vf_be_groupnorm(be, u, u, w[RN_N2W], w[RN_N2B], tp, B, cout, HW, G, cfg->norm_eps, 1)))
        goto done;
    if (cin != cout &&
        ((st = vf_be_alloc(be, nout, &sc)) ||
         (st = vf_be_conv2d(be, sc, x, w[RN_SW], w[RN_SB], NULL, B, cin, H, W, cout, 1, 1, 1, 0))))
        goto done;
    if ((st = vf_be_alloc(be, nout, &t)) ||
        (st = vf_be_conv2d(be, t, u, w[RN_C2W], w[RN_C2B], sc ? sc : x, B, cout, H, W, cout, 3, 3, 1, 1)))
        goto done;
done:
    end_block(f, &k);
    vf_be_free(be, a);
    vf_be_free(be, u);
    vf_be_free(be, tp);
    vf_be_free(be, sc);
    if (st != VF_OK) {
        vf_be_free(be, t);
        return block_error(f, &k, st);
    }
    *y = t;
    return VF_OK;
}

/* Scratch of one Transformer2DModel: token buffers of (N,C), N = B*L. */
typedef struct tscratch {
    vf_dbuf *nrm, *q, *k, *v, *att, *o, *g, *ff;
} tscratch;

static void tscratch_free(vf_backend *be, tscratch *s)
{
    vf_be_free(be, s->nrm);
    vf_be_free(be, s->q);
    vf_be_free(be, s->k);
    vf_be_free(be, s->v);
    vf_be_free(be, s->att);
    vf_be_free(be, s->o);
    vf_be_free(be, s->g);
    vf_be_free(be, s->ff);
    memset(s, 0, sizeof *s);
}

static vf_status tscratch_alloc(fwd *f, tscratch *s, size_t N, size_t NK, int C)
{
    vf_backend *be = f->be;
    size_t ch = N < (size_t)f->ff_chunk ? N : (size_t)f->ff_chunk;
    vf_status st;
    memset(s, 0, sizeof *s);
    if ((st = vf_be_alloc(be, N * C, &s->nrm)) || (st = vf_be_alloc(be, N * C, &s->q)) ||
        (st = vf_be_alloc(be, NK * C, &s->k)) || (st = vf_be_alloc(be, NK * C, &s->v)) ||
        (st = vf_be_alloc(be, N * C, &s->att)) || (st = vf_be_alloc(be, N * C, &s->o)) ||
        (st = vf_be_alloc(be, ch * 8 * C, &s->g)) || (st = vf_be_alloc(be, ch * 4 * C, &s->ff)))
        tscratch_free(be, s);
    return st;
}

/* hs is (B,L,C) tokens; kv is (B,Lk,Ckv); hs += to_out(attention(norm(hs), kv)). */
static vf_status attn(fwd *f, tscratch *s, vf_dbuf *hs, const vf_dbuf *kv, int L, int Lk, int Ckv, int C,
                      int heads, const vf_dbuf *const *w)
{
    vf_backend *be = f->be;
    int B = f->B, N = B * L, D = C / heads;
    VF_TRY(vf_be_linear(be, s->q, s->nrm, w[0], NULL, NULL, N, C, C, VF_ACT_NONE));
    VF_TRY(vf_be_linear(be, s->k, kv, w[1], NULL, NULL, B * Lk, Ckv, C, VF_ACT_NONE));
    VF_TRY(vf_be_linear(be, s->v, kv, w[2], NULL, NULL, B * Lk, Ckv, C, VF_ACT_NONE));
    VF_TRY(vf_be_attention(be, s->att, s->q, s->k, s->v, B, L, Lk, heads, D, 0, 0, 0, 0, 0,
                           1.0f / sqrtf((float)D)));
    return vf_be_linear(be, hs, s->att, w[3], w[4], hs, N, C, C, VF_ACT_NONE);
}

/* hs is (N,C); hs += ff(norm3(hs)) with GEGLU, in token chunks. */
static vf_status feed_forward(fwd *f, tscratch *s, vf_dbuf *hs, int N, int C, const vf_dbuf *const *w)
{
    vf_backend *be = f->be;
    VF_TRY(vf_be_layernorm(be, s->nrm, hs, w[TB_N3W], w[TB_N3B], N, C, LN_EPS));
    for (int r0 = 0; r0 < N; r0 += f->ff_chunk) {
        int rows = N - r0 < f->ff_chunk ? N - r0 : f->ff_chunk;
        vf_dbuf *h = vf_be_at(be, hs, (size_t)r0 * C);
        VF_TRY(vf_be_linear(be, s->g, vf_be_cat(be, s->nrm, (size_t)r0 * C), w[TB_FF0W], w[TB_FF0B], NULL,
                            rows, C, 8 * C, VF_ACT_NONE));
        VF_TRY(vf_be_geglu(be, s->ff, s->g, rows, 4 * C));
        VF_TRY(vf_be_linear(be, h, s->ff, w[TB_FF2W], w[TB_FF2B], h, rows, 4 * C, C, VF_ACT_NONE));
    }
    return VF_OK;
}

/* One BasicTransformerBlock over hs (B,L,C): self-attention, cross-attention
 * with the context, GEGLU feed-forward, each pre-normed and residual. */
static vf_status tblock(fwd *f, tscratch *s, vf_dbuf *hs, int L, int C, int heads)
{
    vf_backend *be = f->be;
    wblk k;
    int N = f->B * L;
    vf_status st = next_block(f, 20, &k);
    if (st != VF_OK)
        return st;
    const vf_dbuf *const *w = k.w;
    if ((st = vf_be_layernorm(be, s->nrm, hs, w[TB_N1W], w[TB_N1B], N, C, LN_EPS)) ||
        (st = attn(f, s, hs, s->nrm, L, L, C, C, heads, w + TB_A1Q)) ||
        (st = vf_be_layernorm(be, s->nrm, hs, w[TB_N2W], w[TB_N2B], N, C, LN_EPS)) ||
        (st = attn(f, s, hs, f->ctx, L, f->Lc, f->cfg->cross_dim, C, heads, w + TB_A2Q)))
        goto done;
    st = feed_forward(f, s, hs, N, C, w);
done:
    end_block(f, &k);
    return st != VF_OK ? block_error(f, &k, st) : VF_OK;
}

/* proj_in: hs (N,C) = proj_in(groupnorm(x)) over x's tokens. A 1x1 conv
 * projection equals a linear one on channel-last tokens, so both config
 * variants share this path (the weights have the same layout). */
static vf_status proj_in(fwd *f, tscratch *s, const vf_dbuf *x, vf_dbuf *hs, int C, int HW)
{
    vf_backend *be = f->be;
    wblk k;
    int B = f->B, N = B * HW;
    vf_status st = next_block(f, 4, &k);
    if (st != VF_OK)
        return st;
    const vf_dbuf *tok = s->o;
    st = vf_be_groupnorm(be, s->o, x, k.w[0], k.w[1], NULL, B, C, HW, f->cfg->groups, TGN_EPS, 0);
    if (st == VF_OK && !f->tok) {
        st = vf_be_fm_to_tokens(be, s->att, s->o, B, C, HW);
        tok = s->att;
    }
    if (st == VF_OK)
        st = vf_be_linear(be, hs, tok, k.w[2], k.w[3], NULL, N, C, C, VF_ACT_NONE);
    end_block(f, &k);
    return st != VF_OK ? block_error(f, &k, st) : VF_OK;
}

/* proj_out: x (fm) += proj_out(hs), fused into the GEMM where x is tokens. */
static vf_status proj_out(fwd *f, tscratch *s, vf_dbuf *x, const vf_dbuf *hs, int C, int HW)
{
    vf_backend *be = f->be;
    wblk k;
    int B = f->B, N = B * HW;
    vf_status st = next_block(f, 2, &k);
    if (st != VF_OK)
        return st;
    if (f->tok) {
        st = vf_be_linear(be, x, hs, k.w[0], k.w[1], x, N, C, C, VF_ACT_NONE);
    } else if ((st = vf_be_linear(be, s->o, hs, k.w[0], k.w[1], NULL, N, C, C, VF_ACT_NONE)) == VF_OK &&
               (st = vf_be_tokens_to_fm(be, s->att, s->o, B, C, HW)) == VF_OK) {
        st = vf_be_add(be, x, s->att, (size_t)N * C);
    }
    end_block(f, &k);
    return st != VF_OK ? block_error(f, &k, st) : VF_OK;
}

/* x is (B,C,H,W) and is updated in place: x += Transformer2DModel(x). */
static vf_status transformer(fwd *f, vf_dbuf *x, int C, int H, int W, int heads, int tlayers)
{
    vf_backend *be = f->be;
    int B = f->B, HW = H * W, N = B * HW;
    size_t nk = (size_t)N > (size_t)B * f->Lc ? (size_t)N : (size_t)B * f->Lc;
    tscratch s;
    vf_dbuf *hs = NULL;
    vf_status st = tscratch_alloc(f, &s, N, nk, C);
    if (st != VF_OK)
        return vf_error_prefix(st, "unet: transformer scratch");
    st = vf_be_alloc(be, (size_t)N * C, &hs);
    if (st != VF_OK) {
        tscratch_free(be, &s);
        return vf_error_prefix(st, "unet: transformer tokens");
    }
    st = proj_in(f, &s, x, hs, C, HW);
    for (int k = 0; k < tlayers && st == VF_OK; k++)
        st = tblock(f, &s, hs, HW, C, heads);
    if (st == VF_OK)
        st = proj_out(f, &s, x, hs, C, HW);
    vf_be_free(be, hs);
    tscratch_free(be, &s);
    return st;
}

/* A conv block (conv_in, samplers, conv_out): x (B,cin,H,W) -> y (B,cout,OH,OW). */
static vf_status conv_block(fwd *f, const vf_dbuf *x, vf_dbuf *y, int cin, int H, int W, int cout, int k,
                            int stride)
{
    wblk kb;
    VF_TRY(next_block(f, 2, &kb));
    vf_status st = vf_be_conv2d(f->be, y, x, kb.w[0], kb.w[1], NULL, f->B, cin, H, W, cout, k, k, stride,
                                k / 2);
    end_block(f, &kb);
    return st != VF_OK ? block_error(f, &kb, st) : VF_OK;
}

/* TimestepEmbedding: y (B,temb) = linear_2(silu(linear_1(x (B,in)))), or y += that. */
static vf_status mlp_embed(fwd *f, const vf_dbuf *x, int in, vf_dbuf *y, int accumulate)
{
    vf_backend *be = f->be;
    wblk k;
    vf_dbuf *tmp = NULL;
    int B = f->B, T = f->cfg->temb_dim;
    VF_TRY(next_block(f, 4, &k));
    vf_status st = vf_be_alloc(be, (size_t)B * T, &tmp);
    if (st == VF_OK)
        st = vf_be_linear(be, tmp, x, k.w[0], k.w[1], NULL, B, in, T, VF_ACT_SILU);
    if (st == VF_OK)
        st = vf_be_linear(be, y, tmp, k.w[2], k.w[3], accumulate ? y : NULL, B, T, T, VF_ACT_NONE);
    end_block(f, &k);
    vf_be_free(be, tmp);
    return st;
}

/* SDXL's add_embedding input rows: [text_embeds (P), sinusoids of the 6 time ids (6A)]. */
static vf_status text_time_input(fwd *f, vf_dbuf *x, const float *text_embeds, const float *time_ids)
{
    const vf_unet_config *cfg = f->cfg;
    int A = cfg->add_time_dim, P = cfg->pooled_dim;
    for (int b = 0; b < f->B; b++) {
        vf_dbuf *row = vf_be_at(f->be, x, (size_t)b * cfg->add_in_dim);
        VF_TRY(vf_be_upload(f->be, row, text_embeds + (size_t)b * P, VF_DTYPE_F32, (size_t)P));
        VF_TRY(vf_be_timestep_embedding(f->be, vf_be_at(f->be, row, (size_t)P), time_ids + 6 * b, 6, A,
                                        cfg->flip_sin_to_cos, cfg->freq_shift));
    }
    return VF_OK;
}

/* f->temb = silu(time_embedding(t) [+ add_embedding(text_embeds, time_ids)]). */
static vf_status embeddings(fwd *f, const float *t, const float *text_embeds, const float *time_ids)
{
    const vf_unet_config *cfg = f->cfg;
    vf_backend *be = f->be;
    int B = f->B, T = cfg->temb_dim;
    int in = cfg->text_time && cfg->add_in_dim > cfg->time_in_dim ? cfg->add_in_dim : cfg->time_in_dim;
    vf_dbuf *x = NULL, *emb = NULL;
    vf_status st;
    if ((st = vf_be_alloc(be, (size_t)B * in, &x)) || (st = vf_be_alloc(be, (size_t)B * T, &emb)))
        goto done;
    if ((st = vf_be_timestep_embedding(be, x, t, B, cfg->time_in_dim, cfg->flip_sin_to_cos, cfg->freq_shift)) ||
        (st = mlp_embed(f, x, cfg->time_in_dim, emb, 0)))
        goto done;
    if (cfg->text_time &&
        ((st = text_time_input(f, x, text_embeds, time_ids)) || (st = mlp_embed(f, x, cfg->add_in_dim, emb, 1))))
        goto done;
    st = vf_be_act(be, emb, (size_t)B * T, VF_ACT_SILU);
done:
    vf_be_free(be, x);
    if (st != VF_OK) {
        vf_be_free(be, emb);
        return vf_error_prefix(st, "unet: time embedding");
    }
    f->temb = emb;
    return VF_OK;
}

/* Down outputs waiting for their up block, with their channel counts. */
typedef struct skips {
    vf_backend *be;
    vf_dbuf **x;
    int *c;
    int n, cap;
} skips;

static void skips_free(skips *s)
{
    for (int i = 0; i < s->n; i++)
        vf_be_free(s->be, s->x[i]);
    vf_free(s->x);
    vf_free(s->c);
}

/* Pushes x (taking ownership; freed here on failure). */
static vf_status skip_push(skips *s, vf_dbuf *x, int c)
{
    if (s->n == s->cap) {
        vf_be_free(s->be, x);
        return vf_error(VF_ERR_INTERNAL, "unet: more skip connections than the config allows (%d)", s->cap);
    }
    s->x[s->n] = x;
    s->c[s->n++] = c;
    return VF_OK;
}

/* A new (B,C,H,W) map y = conv_block(x); pushed on the skip stack. */
static vf_status conv_push(fwd *f, skips *sk, const vf_dbuf *x, int cin, int H, int W, int cout, int k,
                           int stride)
{
    int OH = (H + 2 * (k / 2) - k) / stride + 1, OW = (W + 2 * (k / 2) - k) / stride + 1;
    vf_dbuf *y = NULL;
    VF_TRY(vf_be_alloc(f->be, (size_t)f->B * cout * OH * OW, &y));
    vf_status st = conv_block(f, x, y, cin, H, W, cout, k, stride);
    if (st != VF_OK) {
        vf_be_free(f->be, y);
        return st;
    }
    return skip_push(sk, y, cout);
}

/* conv_in and the down blocks; every output goes on the skip stack, whose top
 * is the running activation. *H, *W become the lowest resolution. */
static vf_status down_pass(fwd *f, skips *sk, const vf_dbuf *sample, int *H, int *W)
{
    const vf_unet_config *cfg = f->cfg;
    vf_dbuf *y;
    VF_TRY(conv_push(f, sk, sample, cfg->in_channels, *H, *W, cfg->ch[0], cfg->conv_in_k, 1));
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
        VF_TRY(conv_push(f, sk, sk->x[sk->n - 1], C, *H, *W, C, 3, 2));
        *H /= 2;
        *W /= 2;
    }
    return VF_OK;
}

/* The mid block on the top of the stack; *cur receives a new buffer. */
static vf_status mid_pass(fwd *f, skips *sk, int H, int W, vf_dbuf **cur)
{
    const vf_unet_config *cfg = f->cfg;
    int C = cfg->ch[cfg->levels - 1];
    const vf_dbuf *top = sk->x[sk->n - 1];
    size_t n = (size_t)f->B * C * H * W;
    vf_dbuf *a = NULL, *b = NULL;
    if (!cfg->mid) {
        VF_TRY(vf_be_alloc(f->be, n, &a));
        vf_status st = vf_be_copy(f->be, a, top, n);
        if (st != VF_OK) {
            vf_be_free(f->be, a);
            return st;
        }
        *cur = a;
        return VF_OK;
    }
    VF_TRY(resnet(f, top, C, C, H, W, &a));
    vf_status st = transformer(f, a, C, H, W, cfg->mid_heads, cfg->mid_tlayers);
    if (st == VF_OK)
        st = resnet(f, a, C, C, H, W, &b);
    vf_be_free(f->be, a);
    if (st != VF_OK)
        return st;
    *cur = b;
    return VF_OK;
}

/* One up resnet (+ transformer): consumes the top skip and *cur. */
static vf_status up_resnet(fwd *f, skips *sk, int i, int cin, int H, int W, vf_dbuf **cur)
{
    const vf_unet_config *cfg = f->cfg;
    vf_backend *be = f->be;
    int C = cfg->ch[cfg->levels - 1 - i];
    int cs = sk->c[sk->n - 1];
    vf_dbuf *skip = sk->x[--sk->n], *cat = NULL, *y = NULL;
    vf_status st = vf_be_alloc(be, (size_t)f->B * (cin + cs) * H * W, &cat);
    if (st == VF_OK)
        st = vf_be_concat(be, cat, *cur, cin, skip, cs, f->B, H * W);
    vf_be_free(be, skip);
    if (st != VF_OK) {
        vf_be_free(be, cat);
        return st;
    }
    vf_be_free(be, *cur);
    *cur = NULL;
    st = resnet(f, cat, cin + cs, C, H, W, &y);
    vf_be_free(be, cat);
    if (st != VF_OK)
        return st;
    *cur = y;
    if (cfg->up_attn[i])
        return transformer(f, y, C, H, W, cfg->up_heads[i], cfg->up_tlayers[i]);
    return VF_OK;
}

/* Nearest 2x upsampling + the upsampler conv: *cur (B,C,H,W) -> (B,C,2H,2W). */
static vf_status upsample(fwd *f, int C, int H, int W, vf_dbuf **cur)
{
    vf_backend *be = f->be;
    size_t n = (size_t)f->B * C * (H * 2) * (W * 2);
    vf_dbuf *u = NULL, *y = NULL;
    vf_status st;
    if ((st = vf_be_alloc(be, n, &u)) == VF_OK && (st = vf_be_alloc(be, n, &y)) == VF_OK &&
        (st = vf_be_upsample2x(be, u, *cur, f->B, C, H, W)) == VF_OK)
        st = conv_block(f, u, y, C, H * 2, W * 2, C, 3, 1);
    vf_be_free(be, u);
    if (st != VF_OK) {
        vf_be_free(be, y);
        return st;
    }
    vf_be_free(be, *cur);
    *cur = y;
    return VF_OK;
}

/* The up blocks; *cur (owned) is replaced as it goes; H and W grow. */
static vf_status up_pass(fwd *f, skips *sk, int *H, int *W, vf_dbuf **cur)
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
        VF_TRY(upsample(f, C, *H, *W, cur));
        *H *= 2;
        *W *= 2;
    }
    return VF_OK;
}

/* conv_norm_out + SiLU + conv_out; cur (B,ch0,H,W) is normalised in place. */
static vf_status out_pass(fwd *f, vf_dbuf *cur, int H, int W, vf_dbuf *out)
{
    const vf_unet_config *cfg = f->cfg;
    wblk k;
    VF_TRY(next_block(f, 2, &k));
    vf_status st = vf_be_groupnorm(f->be, cur, cur, k.w[0], k.w[1], NULL, f->B, cfg->ch[0], H * W, cfg->groups,
                                   cfg->norm_eps, 1);
    end_block(f, &k);
    if (st != VF_OK)
        return block_error(f, &k, st);
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

/* The walk itself, on the uploaded sample; out receives the device result. */
static vf_status forward_walk(fwd *f, skips *sk, vf_dbuf *sample, int H, int W, const float *timesteps,
                              const float *text_embeds, const float *time_ids, vf_dbuf *out)
{
    vf_dbuf *cur = NULL;
    vf_status st = embeddings(f, timesteps, text_embeds, time_ids);
    if (st == VF_OK)
        st = down_pass(f, sk, sample, &H, &W);
    if (st == VF_OK)
        st = mid_pass(f, sk, H, W, &cur);
    if (st == VF_OK)
        st = up_pass(f, sk, &H, &W, &cur);
    if (st == VF_OK)
        st = out_pass(f, cur, H, W, out);
    if (st == VF_OK && (f->b != f->bl->nblocks || sk->n != 0))
        st = vf_error(VF_ERR_INTERNAL, "unet: ran %d of %d blocks, %d skips left", f->b, f->bl->nblocks, sk->n);
    vf_be_free(f->be, cur);
    return st;
}

vf_status vf_unet_forward_ex(const vf_exec *x, const vf_unet_config *cfg, const float *sample, int B, int H,
                             int W, const float *timesteps, const float *context, int ctx_len,
                             const float *text_embeds, const float *time_ids, float *out)
{
    if (!x || !x->be || !x->bl || !cfg)
        return vf_error(VF_ERR_INVALID_ARG, "unet: no execution context or config");
    VF_TRY(check_args(cfg, sample, B, H, W, timesteps, context, ctx_len, text_embeds, time_ids, out));
    vf_backend *be = x->be;
    fwd f = {.x = x, .be = be, .bl = x->bl, .cfg = cfg, .B = B, .Lc = ctx_len};
    f.tok = vf_be_fm_is_tokens(be);
    f.ff_chunk = vf_be_info(be)->kind == VF_BACKEND_CPU ? FF_CHUNK : FF_CHUNK_DEVICE;
    skips sk = {.be = be};
    vf_dbuf *smp = NULL, *ctx = NULL, *o = NULL;
    sk.cap = 1 + cfg->levels - 1;
    for (int l = 0; l < cfg->levels; l++)
        sk.cap += cfg->down_layers[l];
    sk.x = vf_calloc((size_t)sk.cap, sizeof *sk.x);
    sk.c = vf_calloc((size_t)sk.cap, sizeof *sk.c);
    vf_status st = sk.x && sk.c ? VF_OK : vf_error_prefix(VF_ERR_NO_MEMORY, "unet: skip stack");
    size_t nctx = (size_t)B * ctx_len * cfg->cross_dim;
    if (st == VF_OK && !(st = vf_be_alloc(be, (size_t)B * cfg->in_channels * H * W, &smp)) &&
        !(st = vf_be_alloc(be, nctx, &ctx)) &&
        !(st = vf_be_alloc(be, (size_t)B * cfg->out_channels * H * W, &o)) &&
        !(st = vf_be_upload_fm(be, smp, sample, B, cfg->in_channels, H, W)) &&
        !(st = vf_be_upload(be, ctx, context, VF_DTYPE_F32, nctx))) {
        f.ctx = ctx;
        st = forward_walk(&f, &sk, smp, H, W, timesteps, text_embeds, time_ids, o);
    }
    if (st == VF_OK)
        st = vf_be_download_fm(be, out, o, B, cfg->out_channels, H, W);
    vf_be_free(be, smp);
    vf_be_free(be, ctx);
    vf_be_free(be, o);
    vf_be_free(be, f.temb);
    skips_free(&sk);
    return st;
}

vf_status vf_unet_forward(vf_residency *res, const vf_blocklist *bl, const vf_unet_config *cfg,
                          const float *sample, int B, int H, int W, const float *timesteps,
                          const float *context, int ctx_len, const float *text_embeds,
                          const float *time_ids, float *out)
{
    vf_exec x;
    vf_backend *be;
    vf_status est = vf_exec_cpu(&x, res, bl, &be);
    if (est != VF_OK)
        return vf_error_prefix(est, "unet: CPU backend");
    vf_status st = vf_unet_forward_ex(&x, cfg, sample, B, H, W, timesteps, context, ctx_len, text_embeds,
                                      time_ids, out);
    vf_backend_free(be);
    return st;
}
