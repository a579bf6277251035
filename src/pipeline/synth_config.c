/* Synthesized models: configs, tensor lists and parameter counts (see synth.h).
 *
 * The full presets are the published SD1.5 (runwayml v1-5) and SDXL-base-1.0
 * configs, written key by key, except where a synthesized folder must differ:
 * the text encoders' vocab_size / bos / eos ids are those of the small
 * vocabulary made in synth_vocab.c, and there is no safety checker or feature
 * extractor (model_index.json says null for them, as diffusers allows). The tiny
 * presets follow the reference fixtures (../shared/reference/tiny-*): the same
 * block structure with channels of 16..64 and 64x64 images.
 *
 * The tensor list of a component is what the model code describes from the
 * config (clip.h, unet.h, vae.h), so a synthesized folder always binds; the VAE
 * encoder, which vramfit never runs, is described here in AutoencoderKL naming
 * so that diffusers finds no missing keys. Counting walks the same lists, so the
 * counts and the written files cannot disagree.
 */
#include "pipeline/synth.h"
#include "core/alloc.h"
#include "core/error.h"
#include "model/clip.h"
#include "model/unet.h"
#include "model/vae.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIFFUSERS_VERSION "0.30.0"
#define TRANSFORMERS_VERSION "4.44.0"

/* ---- building cJSON with one failure flag ---------------------------------------- */

typedef struct jb {
    cJSON *o;
    int bad;
} jb;

static void jnum(jb *b, const char *k, double v)
{
    b->bad |= !cJSON_AddNumberToObject(b->o, k, v);
}

/* A float as Python writes it (1.0, not 1): transformers' configs are strict
 * dataclasses that refuse an int where a float is declared. */
static void jfloat(jb *b, const char *k, double v)
{
    char text[40];
    snprintf(text, sizeof text, "%.15g", v);
    if (strtod(text, NULL) != v)
        snprintf(text, sizeof text, "%.17g", v);
    if (!strpbrk(text, ".eEn"))
        strcat(text, ".0");
    b->bad |= !cJSON_AddRawToObject(b->o, k, text);
}

static void jstr(jb *b, const char *k, const char *v)
{
    b->bad |= !cJSON_AddStringToObject(b->o, k, v);
}

static void jbool(jb *b, const char *k, int v)
{
    b->bad |= !cJSON_AddBoolToObject(b->o, k, v);
}

static void jnull(jb *b, const char *k)
{
    b->bad |= !cJSON_AddNullToObject(b->o, k);
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

/* The same string n times. */
static void jrepeat(jb *b, const char *k, const char *s, int n)
{
    const char *v[8];
    for (int i = 0; i < n && i < 8; i++)
        v[i] = s;
    jitem(b, k, cJSON_CreateStringArray(v, n));
}

/* A model_index.json entry: [library, class], or [null, null] when lib is NULL. */
static void jpair(jb *b, const char *k, const char *lib, const char *cls)
{
    cJSON *a = cJSON_CreateArray();
    if (a && lib) {
        cJSON_AddItemToArray(a, cJSON_CreateString(lib));
        cJSON_AddItemToArray(a, cJSON_CreateString(cls));
    } else if (a) {
        cJSON_AddItemToArray(a, cJSON_CreateNull());
        cJSON_AddItemToArray(a, cJSON_CreateNull());
    }
    if (a && cJSON_GetArraySize(a) != 2) {
        cJSON_Delete(a);
        a = NULL;
    }
    jitem(b, k, a);
}

static vf_status jb_start(jb *b)
{
    b->bad = 0;
    b->o = cJSON_CreateObject();
    return b->o ? VF_OK : vf_error(VF_ERR_NO_MEMORY, "synth: out of memory building a config");
}

/* The object holds raw (preformatted) floats, fine for printing; code that
 * reads a config gets it printed and parsed again (vf_synth_config). */
static vf_status jb_finish(jb *b, const char *what, cJSON **out)
{
    if (b->bad) {
        cJSON_Delete(b->o);
        return vf_error(VF_ERR_NO_MEMORY, "synth: out of memory building %s", what);
    }
    *out = b->o;
    return VF_OK;
}

/* ---- presets ------------------------------------------------------------------------- */

typedef struct clip_shape {
    int hidden, intermediate, layers, heads, proj;
    const char *act;
} clip_shape;

typedef struct unet_shape {
    int levels, ch[4], layers, heads[4], tlayers[4], cross, groups, sample;
    int add_time_dim, add_in_dim; /* SDXL's text_time conditioning */
} unet_shape;

typedef struct vae_shape {
    int ch[4], layers, groups, sample;
} vae_shape;

/* [preset]: full, tiny */
static const clip_shape g_clip_l[2] = {
    {768, 3072, 12, 12, 768, "quick_gelu"},
    {16, 64, 2, 2, 16, "quick_gelu"},
};
static const clip_shape g_clip_g[2] = {
    {1280, 5120, 32, 20, 1280, "gelu"},
    {16, 64, 2, 2, 16, "gelu"},
};
static const unet_shape g_unet_sd15[2] = {
    {4, {320, 640, 1280, 1280}, 2, {8, 8, 8, 8}, {1, 1, 1, 1}, 768, 32, 64, 0, 0},
    {4, {16, 32, 32, 64}, 1, {2, 2, 2, 2}, {1, 1, 1, 1}, 16, 8, 8, 0, 0},
};
static const unet_shape g_unet_sdxl[2] = {
    {3, {320, 640, 1280}, 2, {5, 10, 20}, {1, 2, 10}, 2048, 32, 128, 256, 2816},
    {3, {16, 32, 64}, 2, {1, 2, 4}, {1, 1, 2}, 32, 8, 8, 8, 64},
};
static const vae_shape g_vae[2] = {
    {{128, 256, 512, 512}, 2, 32, 0},
    {{16, 16, 32, 32}, 1, 8, 64},
};

const char *vf_synth_preset_name(vf_synth_preset p)
{
    return p == VF_SYNTH_TINY ? "tiny" : p == VF_SYNTH_FULL ? "full" : "unknown";
}

vf_status vf_synth_preset_parse(const char *name, vf_synth_preset *out)
{
    if (name && strcmp(name, "full") == 0)
        *out = VF_SYNTH_FULL;
    else if (name && strcmp(name, "tiny") == 0)
        *out = VF_SYNTH_TINY;
    else
        return vf_error(VF_ERR_INVALID_ARG, "preset '%s': expected full or tiny", name ? name : "(null)");
    return VF_OK;
}

static const char *torch_dtype(vf_dtype t)
{
    return t == VF_DTYPE_F16 ? "float16" : t == VF_DTYPE_BF16 ? "bfloat16" : "float32";
}

/* ---- component configs ----------------------------------------------------------------- */

/* transformers' CLIPTextConfig as published, with our vocabulary's size and ids. */
static vf_status text_config(const clip_shape *s, int with_proj, int32_t vocab, vf_dtype dtype,
                             cJSON **out)
{
    jb b;
    VF_TRY(jb_start(&b));
    const char *arch = with_proj ? "CLIPTextModelWithProjection" : "CLIPTextModel";
    jitem(&b, "architectures", cJSON_CreateStringArray(&arch, 1));
    jfloat(&b, "attention_dropout", 0.0);
    jnum(&b, "bos_token_id", vocab - 2);
    jfloat(&b, "dropout", 0.0);
    jnum(&b, "eos_token_id", vocab - 1);
    jstr(&b, "hidden_act", s->act);
    jnum(&b, "hidden_size", s->hidden);
    jfloat(&b, "initializer_factor", 1.0);
    jfloat(&b, "initializer_range", 0.02);
    jnum(&b, "intermediate_size", s->intermediate);
    jfloat(&b, "layer_norm_eps", 1e-5);
    jnum(&b, "max_position_embeddings", 77);
    jstr(&b, "model_type", "clip_text_model");
    jnum(&b, "num_attention_heads", s->heads);
    jnum(&b, "num_hidden_layers", s->layers);
    jnum(&b, "pad_token_id", 1);
    jnum(&b, "projection_dim", s->proj);
    jstr(&b, "torch_dtype", torch_dtype(dtype));
    jstr(&b, "transformers_version", TRANSFORMERS_VERSION);
    jnum(&b, "vocab_size", vocab);
    return jb_finish(&b, "a text encoder config", out);
}

/* SD1.5's config.json, which spells out only what differs from diffusers' defaults. */
static void unet_sd15_keys(jb *b, const unet_shape *s)
{
    static const char *const down[] = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                       "CrossAttnDownBlock2D", "DownBlock2D"};
    static const char *const up[] = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                     "CrossAttnUpBlock2D"};
    jnum(b, "attention_head_dim", s->heads[0]);
    jitem(b, "down_block_types", cJSON_CreateStringArray(down, 4));
    jitem(b, "up_block_types", cJSON_CreateStringArray(up, 4));
}

/* SDXL-base's config.json, which lists every key. */
static void unet_sdxl_keys(jb *b, const unet_shape *s)
{
    static const char *const down[] = {"DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"};
    static const char *const up[] = {"CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"};
    jstr(b, "addition_embed_type", "text_time");
    jnum(b, "addition_embed_type_num_heads", 64);
    jnum(b, "addition_time_embed_dim", s->add_time_dim);
    jints(b, "attention_head_dim", s->heads, s->levels);
    jnull(b, "class_embed_type");
    jbool(b, "class_embeddings_concat", 0);
    jnum(b, "conv_in_kernel", 3);
    jnum(b, "conv_out_kernel", 3);
    jnull(b, "cross_attention_norm");
    jitem(b, "down_block_types", cJSON_CreateStringArray(down, 3));
    jbool(b, "dual_cross_attention", 0);
    jnull(b, "encoder_hid_dim");
    jnull(b, "encoder_hid_dim_type");
    jnull(b, "mid_block_only_cross_attention");
    jstr(b, "mid_block_type", "UNetMidBlock2DCrossAttn");
    jnull(b, "num_attention_heads");
    jnull(b, "num_class_embeds");
    jbool(b, "only_cross_attention", 0);
    jnum(b, "projection_class_embeddings_input_dim", s->add_in_dim);
    jfloat(b, "resnet_out_scale_factor", 1.0);
    jbool(b, "resnet_skip_time_act", 0);
    jstr(b, "resnet_time_scale_shift", "default");
    jnull(b, "time_cond_proj_dim");
    jnull(b, "time_embedding_act_fn");
    jnull(b, "time_embedding_dim");
    jstr(b, "time_embedding_type", "positional");
    jnull(b, "timestep_post_act");
    jints(b, "transformer_layers_per_block", s->tlayers, s->levels);
    jitem(b, "up_block_types", cJSON_CreateStringArray(up, 3));
    jnull(b, "upcast_attention");
    jbool(b, "use_linear_projection", 1);
}

static vf_status unet_config(vf_arch arch, vf_synth_preset preset, cJSON **out)
{
    const unet_shape *s = arch == VF_ARCH_SDXL ? &g_unet_sdxl[preset] : &g_unet_sd15[preset];
    jb b;
    VF_TRY(jb_start(&b));
    jstr(&b, "_class_name", "UNet2DConditionModel");
    jstr(&b, "_diffusers_version", DIFFUSERS_VERSION);
    jstr(&b, "act_fn", "silu");
    jints(&b, "block_out_channels", s->ch, s->levels);
    jbool(&b, "center_input_sample", 0);
    jnum(&b, "cross_attention_dim", s->cross);
    jnum(&b, "downsample_padding", 1);
    jbool(&b, "flip_sin_to_cos", 1);
    jnum(&b, "freq_shift", 0);
    jnum(&b, "in_channels", 4);
    jnum(&b, "layers_per_block", s->layers);
    jnum(&b, "mid_block_scale_factor", 1);
    jfloat(&b, "norm_eps", 1e-5);
    jnum(&b, "norm_num_groups", s->groups);
    jnum(&b, "out_channels", 4);
    jnum(&b, "sample_size", s->sample);
    if (arch == VF_ARCH_SDXL)
        unet_sdxl_keys(&b, s);
    else
        unet_sd15_keys(&b, s);
    return jb_finish(&b, "the unet config", out);
}

static vf_status vae_config(vf_arch arch, vf_synth_preset preset, cJSON **out)
{
    const vae_shape *s = &g_vae[preset];
    int sample = s->sample ? s->sample : arch == VF_ARCH_SDXL ? 1024 : 512;
    jb b;
    VF_TRY(jb_start(&b));
    jstr(&b, "_class_name", "AutoencoderKL");
    jstr(&b, "_diffusers_version", DIFFUSERS_VERSION);
    jstr(&b, "act_fn", "silu");
    jints(&b, "block_out_channels", s->ch, 4);
    jrepeat(&b, "down_block_types", "DownEncoderBlock2D", 4);
    if (arch == VF_ARCH_SDXL)
        jbool(&b, "force_upcast", 1);
    jnum(&b, "in_channels", 3);
    jnum(&b, "latent_channels", 4);
    jnum(&b, "layers_per_block", s->layers);
    jnum(&b, "norm_num_groups", s->groups);
    jnum(&b, "out_channels", 3);
    jnum(&b, "sample_size", sample);
    jfloat(&b, "scaling_factor", arch == VF_ARCH_SDXL ? 0.13025 : 0.18215);
    jrepeat(&b, "up_block_types", "UpDecoderBlock2D", 4);
    return jb_finish(&b, "the vae config", out);
}

static int has_component(vf_arch arch, vf_component c)
{
    return c != VF_COMPONENT_TEXT_ENCODER_2 || arch == VF_ARCH_SDXL;
}

static vf_status build_config(vf_arch arch, vf_synth_preset preset, vf_component c, int32_t vocab,
                              vf_dtype dtype, cJSON **out)
{
    if ((arch != VF_ARCH_SD15 && arch != VF_ARCH_SDXL) || (preset != VF_SYNTH_FULL && preset != VF_SYNTH_TINY))
        return vf_error(VF_ERR_INVALID_ARG, "synth: unknown architecture or preset");
    if (vocab < 3)
        return vf_error(VF_ERR_INVALID_ARG, "synth: vocabulary size %d is too small", (int)vocab);
    if (!has_component(arch, c) || (unsigned)c >= VF_COMPONENT_COUNT)
        return vf_error(VF_ERR_INVALID_ARG, "synth: %s has no component '%s'", vf_arch_name(arch),
                        vf_component_name(c));
    switch (c) {
    case VF_COMPONENT_TEXT_ENCODER:
        return text_config(&g_clip_l[preset], 0, vocab, dtype, out);
    case VF_COMPONENT_TEXT_ENCODER_2:
        return text_config(&g_clip_g[preset], 1, vocab, dtype, out);
    case VF_COMPONENT_UNET:
        return unet_config(arch, preset, out);
    default:
        return vae_config(arch, preset, out);
    }
}

vf_status vf_synth_config(vf_arch arch, vf_synth_preset preset, vf_component c, int32_t vocab,
                          vf_dtype dtype, cJSON **config, char **text)
{
    cJSON *raw = NULL;
    *config = NULL;
    if (text)
        *text = NULL;
    VF_TRY(build_config(arch, preset, c, vocab, dtype, &raw));
    char *t = cJSON_Print(raw);
    cJSON_Delete(raw);
    *config = t ? cJSON_Parse(t) : NULL;
    if (!*config) {
        cJSON_free(t);
        return vf_error(VF_ERR_NO_MEMORY, "synth: out of memory printing the %s config",
                        vf_component_name(c));
    }
    if (text)
        *text = t;
    else
        cJSON_free(t);
    return VF_OK;
}

/* ---- pipeline files -------------------------------------------------------------------- */

vf_status vf_synth_model_index(vf_arch arch, cJSON **out)
{
    int xl = arch == VF_ARCH_SDXL;
    jb b;
    VF_TRY(jb_start(&b));
    jstr(&b, "_class_name", xl ? "StableDiffusionXLPipeline" : "StableDiffusionPipeline");
    jstr(&b, "_diffusers_version", DIFFUSERS_VERSION);
    jpair(&b, "feature_extractor", NULL, NULL);
    if (xl)
        jbool(&b, "force_zeros_for_empty_prompt", 1);
    jpair(&b, "image_encoder", NULL, NULL);
    if (!xl) {
        jbool(&b, "requires_safety_checker", 0);
        jpair(&b, "safety_checker", NULL, NULL);
    }
    jpair(&b, "scheduler", "diffusers", xl ? "EulerDiscreteScheduler" : "PNDMScheduler");
    jpair(&b, "text_encoder", "transformers", "CLIPTextModel");
    if (xl)
        jpair(&b, "text_encoder_2", "transformers", "CLIPTextModelWithProjection");
    jpair(&b, "tokenizer", "transformers", "CLIPTokenizer");
    if (xl)
        jpair(&b, "tokenizer_2", "transformers", "CLIPTokenizer");
    jpair(&b, "unet", "diffusers", "UNet2DConditionModel");
    jpair(&b, "vae", "diffusers", "AutoencoderKL");
    return jb_finish(&b, "model_index.json", out);
}

/* The published schedulers: SDXL's EulerDiscreteScheduler, SD1.5's PNDM (PLMS). */
vf_status vf_synth_scheduler_config(vf_arch arch, cJSON **out)
{
    int xl = arch == VF_ARCH_SDXL;
    jb b;
    VF_TRY(jb_start(&b));
    jstr(&b, "_class_name", xl ? "EulerDiscreteScheduler" : "PNDMScheduler");
    jstr(&b, "_diffusers_version", DIFFUSERS_VERSION);
    jfloat(&b, "beta_end", 0.012);
    jstr(&b, "beta_schedule", "scaled_linear");
    jfloat(&b, "beta_start", 0.00085);
    jbool(&b, "clip_sample", 0);
    if (xl)
        jstr(&b, "interpolation_type", "linear");
    jnum(&b, "num_train_timesteps", 1000);
    if (xl) {
        jstr(&b, "prediction_type", "epsilon");
        jfloat(&b, "sample_max_value", 1.0);
    }
    jbool(&b, "set_alpha_to_one", 0);
    jbool(&b, "skip_prk_steps", 1);
    jnum(&b, "steps_offset", 1);
    if (xl)
        jstr(&b, "timestep_spacing", "leading");
    jnull(&b, "trained_betas");
    if (xl)
        jbool(&b, "use_karras_sigmas", 0);
    return jb_finish(&b, "scheduler_config.json", out);
}

/* ---- tensor lists -------------------------------------------------------------------- */

static void enc_conv(vf_blocklist *bl, const char *name, int oc, int ic, int k)
{
    char wn[96], bn[96];
    snprintf(wn, sizeof wn, "%s%sweight", name, name[0] ? "." : "");
    snprintf(bn, sizeof bn, "%s%sbias", name, name[0] ? "." : "");
    vf_bl_weight(bl, wn, 4, oc, ic, k, k);
    vf_bl_weight(bl, bn, 1, oc, 0, 0, 0);
}

static void enc_pair(vf_blocklist *bl, const char *name, int ndim, int n, int k)
{
    char wn[96], bn[96];
    snprintf(wn, sizeof wn, "%s.weight", name);
    snprintf(bn, sizeof bn, "%s.bias", name);
    vf_bl_weight(bl, wn, ndim, n, k, 0, 0);
    vf_bl_weight(bl, bn, 1, n, 0, 0, 0);
}

/* diffusers' ResnetBlock2D without time embedding. */
static void enc_resnet(vf_blocklist *bl, int cin, int cout)
{
    enc_pair(bl, "norm1", 1, cin, 0);
    enc_conv(bl, "conv1", cout, cin, 3);
    enc_pair(bl, "norm2", 1, cout, 0);
    enc_conv(bl, "conv2", cout, cout, 3);
    if (cin != cout)
        enc_conv(bl, "conv_shortcut", cout, cin, 1);
}

/* AutoencoderKL's Encoder (double_z) and quant_conv, in diffusers naming. */
static void describe_encoder(const vf_vae_config *c, int in_channels, vf_blocklist *bl)
{
    int n = c->nlevels, top = c->block_out_channels[n - 1], L = c->latent_channels;
    vf_bl_block(bl, "encoder.conv_in");
    enc_conv(bl, "", c->block_out_channels[0], in_channels, 3);
    int prev = c->block_out_channels[0];
    for (int i = 0; i < n; i++) {
        int ch = c->block_out_channels[i];
        for (int j = 0; j < c->layers_per_block; j++) {
            vf_bl_block(bl, "encoder.down_blocks.%d.resnets.%d", i, j);
            enc_resnet(bl, j == 0 ? prev : ch, ch);
        }
        if (i < n - 1) {
            vf_bl_block(bl, "encoder.down_blocks.%d.downsamplers.0", i);
            enc_conv(bl, "conv", ch, ch, 3);
        }
        prev = ch;
    }
    vf_bl_block(bl, "encoder.mid_block.resnets.0");
    enc_resnet(bl, top, top);
    vf_bl_block(bl, "encoder.mid_block.attentions.0");
    enc_pair(bl, "group_norm", 1, top, 0);
    enc_pair(bl, "to_q", 2, top, top);
    enc_pair(bl, "to_k", 2, top, top);
    enc_pair(bl, "to_v", 2, top, top);
    enc_pair(bl, "to_out.0", 2, top, top);
    vf_bl_block(bl, "encoder.mid_block.resnets.1");
    enc_resnet(bl, top, top);
    vf_bl_block(bl, "encoder");
    enc_pair(bl, "conv_norm_out", 1, top, 0);
    enc_conv(bl, "conv_out", 2 * L, top, 3);
    vf_bl_block(bl, "quant_conv");
    enc_conv(bl, "", 2 * L, 2 * L, 1);
}

vf_status vf_synth_describe(const cJSON *config, vf_arch arch, vf_component c, vf_blocklist *bl)
{
    vf_bl_init(bl, c);
    vf_status st;
    if (c == VF_COMPONENT_TEXT_ENCODER || c == VF_COMPONENT_TEXT_ENCODER_2) {
        st = vf_clip_describe(config, c, bl);
    } else if (c == VF_COMPONENT_UNET) {
        st = vf_unet_describe(config, arch, bl);
    } else {
        vf_vae_config vc;
        st = vf_vae_config_parse(config, &vc);
        if (st == VF_OK)
            st = vf_vae_describe(config, bl);
        if (st == VF_OK) {
            describe_encoder(&vc, 3, bl);
            st = bl->st;
        }
    }
    if (st == VF_OK && bl->st != VF_OK)
        st = vf_error(bl->st, "synth: %s: describing the tensors failed", vf_component_name(c));
    if (st != VF_OK)
        vf_bl_free(bl);
    return st;
}

/* ---- counting ---------------------------------------------------------------------- */

static uint64_t list_params(const vf_blocklist *bl)
{
    uint64_t total = 0;
    for (int i = 0; i < bl->nw; i++) {
        uint64_t n = 1;
        for (int d = 0; d < bl->w[i].ndim; d++)
            n *= (uint64_t)bl->w[i].shape[d];
        total += n;
    }
    return total;
}

vf_status vf_synth_count(vf_arch arch, vf_synth_preset preset, int32_t vocab,
                         uint64_t params[VF_COMPONENT_COUNT])
{
    if (vocab == 0)
        vocab = vf_synth_vocab_size();
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        params[c] = 0;
        if (!has_component(arch, (vf_component)c))
            continue;
        cJSON *cfg = NULL;
        vf_blocklist bl;
        VF_TRY(vf_synth_config(arch, preset, (vf_component)c, vocab, VF_DTYPE_F16, &cfg, NULL));
        vf_status st = vf_synth_describe(cfg, arch, (vf_component)c, &bl);
        cJSON_Delete(cfg);
        if (st != VF_OK)
            return st;
        params[c] = list_params(&bl);
        vf_bl_free(&bl);
    }
    return VF_OK;
}
