/* Key maps for SD1.5 / SDXL single files and diffusers component files (see keymap.h).
 *
 * The rules follow diffusers' convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint
 * and its OpenCLIP conversion, but the UNet block arithmetic is not hardcoded:
 * vf_sd_layout_build() reads it off the keys. Input blocks are split into levels
 * at the downsamplers (input_blocks.I.0.op), output blocks at the upsamplers
 * (output_blocks.I.{1,2}.conv), and resnets are numbered by their order within a
 * level. That handles the real layouts (2 resnets per level, 3 flat blocks per
 * level) as well as converters that leave gaps in the numbering for other
 * layers_per_block (the tiny SD1.5 fixture has input_blocks 1, 3(op), 4, 6(op)...).
 *
 * Everything here works on fixed-size name buffers: a name that does not fit is
 * simply "unknown", never truncated into a wrong name.
 */
#include "io/keymap.h"
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- small string helpers ----------------------------------------------------- */

/* The rest of s after prefix p, or NULL. */
static const char *after(const char *s, const char *p)
{
    size_t n = strlen(p);
    return strncmp(s, p, n) == 0 ? s + n : NULL;
}

/* Parses "<digits>." at *s; returns the number (or -1) and advances past the dot. */
static int take_index(const char **s)
{
    const char *p = *s;
    long v = 0;
    if (*p < '0' || *p > '9')
        return -1;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (*p - '0');
        if (v > 1000000)
            return -1;
        p++;
    }
    if (*p != '.')
        return -1;
    *s = p + 1;
    return (int)v;
}

/* Formats name[i] of r; on overflow the result becomes unknown. */
static void set_name(vf_keymap_result *r, int i, const char *fmt, ...) VF_PRINTF(3, 4);
static void set_name(vf_keymap_result *r, int i, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->name[i], sizeof r->name[i], fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof r->name[i]) {
        r->kind = VF_KEYMAP_UNKNOWN;
        return;
    }
    if (i == 0)
        r->kind = VF_KEYMAP_MAPPED;
}

static void map_one(vf_keymap_result *r, vf_component c, vf_keymap_view v, const char *fmt,
                    const char *a, const char *b)
{
    r->comp = c;
    r->view = v;
    r->n = 1;
    set_name(r, 0, fmt, a, b);
}

/* Renames the prefix of s using a table of {from, to} pairs; NULL when none matches.
 * Writes "<to><rest>" into out. */
static const char *rename_prefix(const char *s, const char *const (*tab)[2], size_t n, char *out,
                                 size_t cap)
{
    for (size_t i = 0; i < n; i++) {
        const char *rest = after(s, tab[i][0]);
        if (!rest)
            continue;
        int k = snprintf(out, cap, "%s%s", tab[i][1], rest);
        return k >= 0 && (size_t)k < cap ? out : NULL;
    }
    return NULL;
}

/* ---- architecture ---------------------------------------------------------------- */

vf_arch vf_keymap_detect_arch(const char *const *keys, size_t n)
{
    int sd15 = 0;
    for (size_t i = 0; i < n; i++) {
        if (after(keys[i], "conditioner.embedders.1.model."))
            return VF_ARCH_SDXL;
        if (after(keys[i], "cond_stage_model.transformer."))
            sd15 = 1;
    }
    return sd15 ? VF_ARCH_SD15 : VF_ARCH_UNKNOWN;
}

/* ---- UNet / VAE structure ------------------------------------------------------ */

enum { B_RES = 1, B_ATTN = 2, B_OP = 4, B_UP = 8, B_CONVIN = 16 };

static int is_resnet_rest(const char *x)
{
    return after(x, "in_layers.") || after(x, "out_layers.") || after(x, "emb_layers.") ||
           after(x, "skip_connection.");
}

static int is_attn_rest(const char *x)
{
    return after(x, "norm.") || after(x, "proj_in.") || after(x, "proj_out.") ||
           after(x, "transformer_blocks.");
}

typedef struct scan {
    unsigned char in[VF_UNET_MAX_BLOCKS], out[VF_UNET_MAX_BLOCKS];
    signed char in_attn_sub[VF_UNET_MAX_BLOCKS];
    int in_max, out_max, enc_max, dec_max;
} scan;

static vf_status note_sub(const char *what, const char *key, signed char *slot, int j)
{
    if (*slot >= 0 && *slot != j)
        return vf_error(VF_ERR_FORMAT, "%s: tensor '%s': block has two %s sub-blocks (%d and %d)",
                        what, key, "attention/upsampler", *slot, j);
    *slot = (signed char)j;
    return VF_OK;
}

static vf_status scan_unet_key(const char *what, const char *key, const char *rest, scan *s,
                               vf_sd_layout *lay)
{
    int out_side = 0;
    const char *p = after(rest, "input_blocks.");
    if (!p) {
        p = after(rest, "output_blocks.");
        out_side = 1;
    }
    if (!p)
        return VF_OK;
    int i = take_index(&p), j = take_index(&p);
    if (i < 0 || j < 0)
        return VF_OK; /* an unknown name, ignored by the mapper as well */
    if (i >= VF_UNET_MAX_BLOCKS)
        return vf_error(VF_ERR_UNSUPPORTED, "%s: tensor '%s': block index %d over the limit of %d",
                        what, key, i, VF_UNET_MAX_BLOCKS - 1);
    if (!out_side) {
        if (i == 0 && j == 0)
            s->in[i] |= B_CONVIN;
        else if (j == 0 && is_resnet_rest(p))
            s->in[i] |= B_RES;
        else if (j == 0 && after(p, "op."))
            s->in[i] |= B_OP;
        else if (j > 0 && is_attn_rest(p)) {
            s->in[i] |= B_ATTN;
            VF_TRY(note_sub(what, key, &s->in_attn_sub[i], j));
        } else
            return VF_OK;
        if (i > s->in_max)
            s->in_max = i;
        return VF_OK;
    }
    if (j == 0 && is_resnet_rest(p))
        s->out[i] |= B_RES;
    else if (j > 0 && after(p, "conv.")) {
        s->out[i] |= B_UP;
        VF_TRY(note_sub(what, key, &lay->out_up_sub[i], j));
    } else if (j > 0 && is_attn_rest(p)) {
        s->out[i] |= B_ATTN;
        VF_TRY(note_sub(what, key, &lay->out_attn_sub[i], j));
    } else
        return VF_OK;
    if (i > s->out_max)
        s->out_max = i;
    return VF_OK;
}

static void scan_vae_key(const char *rest, scan *s)
{
    const char *p;
    int *max = NULL;
    if ((p = after(rest, "encoder.down.")))
        max = &s->enc_max;
    else if ((p = after(rest, "decoder.up.")))
        max = &s->dec_max;
    if (!max)
        return;
    int n = take_index(&p);
    if (n >= 0 && n < VF_UNET_MAX_BLOCKS && n > *max)
        *max = n;
}

/* Closes a level of r resnets: every level must have the same count. */
static int close_level(int *per_level, int r)
{
    if (r <= 0)
        return 0;
    if (*per_level < 0)
        *per_level = r;
    return *per_level == r;
}

static vf_status walk_input(const char *what, const scan *s, vf_sd_layout *lay)
{
    int level = 0, r = 0, lpb = -1;
    for (int i = 1; i <= s->in_max; i++) {
        unsigned f = s->in[i];
        if (!f)
            continue;
        if ((f & B_OP) && (f & (B_RES | B_ATTN)))
            return vf_error(VF_ERR_FORMAT, "%s: UNet input_blocks.%d has both a downsampler and a resnet",
                            what, i);
        if (f & B_OP) {
            if (!close_level(&lpb, r))
                return vf_error(VF_ERR_FORMAT,
                                "%s: UNet input_blocks.%d: level %d has %d resnets, other levels %d",
                                what, i, level, r, lpb);
            lay->in_level[i] = (signed char)level++;
            r = 0;
            continue;
        }
        if (!(f & B_RES))
            return vf_error(VF_ERR_FORMAT, "%s: UNet input_blocks.%d has an attention but no resnet",
                            what, i);
        if (f & B_ATTN && s->in_attn_sub[i] != 1)
            return vf_error(VF_ERR_FORMAT, "%s: UNet input_blocks.%d.%d: expected the attention at .1",
                            what, i, s->in_attn_sub[i]);
        lay->in_level[i] = (signed char)level;
        lay->in_idx[i] = (signed char)r++;
    }
    if (!close_level(&lpb, r))
        return vf_error(VF_ERR_FORMAT, "%s: UNet input blocks: last level %d has %d resnets, other levels %d",
                        what, level, r, lpb);
    lay->unet_levels = level + 1;
    lay->unet_layers = lpb;
    return VF_OK;
}

static vf_status walk_output(const char *what, const scan *s, vf_sd_layout *lay)
{
    int level = 0, r = 0, per = -1;
    for (int i = 0; i <= s->out_max; i++) {
        unsigned f = s->out[i];
        if (!f)
            continue;
        if ((f & B_ATTN) && !(f & B_RES))
            return vf_error(VF_ERR_FORMAT, "%s: UNet output_blocks.%d has an attention but no resnet",
                            what, i);
        if ((f & B_ATTN) && (f & B_UP) && lay->out_attn_sub[i] == lay->out_up_sub[i])
            return vf_error(VF_ERR_FORMAT, "%s: UNet output_blocks.%d.%d is both attention and upsampler",
                            what, i, lay->out_attn_sub[i]);
        lay->out_level[i] = (signed char)level;
        if (f & B_RES)
            lay->out_idx[i] = (signed char)r++;
        if (!(f & B_UP))
            continue;
        if (!close_level(&per, r))
            return vf_error(VF_ERR_FORMAT,
                            "%s: UNet output_blocks.%d: level %d has %d resnets, other levels %d",
                            what, i, level, r, per);
        level++;
        r = 0;
    }
    if (!close_level(&per, r))
        return vf_error(VF_ERR_FORMAT, "%s: UNet output blocks: last level %d has %d resnets, other levels %d",
                        what, level, r, per);
    if (level + 1 != lay->unet_levels || per != lay->unet_layers + 1)
        return vf_error(VF_ERR_FORMAT,
                        "%s: UNet output blocks (%d levels of %d resnets) do not mirror the input "
                        "blocks (%d levels of %d resnets)",
                        what, level + 1, per, lay->unet_levels, lay->unet_layers);
    return VF_OK;
}

void vf_sd_layout_reset(vf_sd_layout *lay)
{
    memset(lay, 0, sizeof *lay);
    memset(lay->in_level, -1, sizeof lay->in_level);
    memset(lay->in_idx, -1, sizeof lay->in_idx);
    memset(lay->out_level, -1, sizeof lay->out_level);
    memset(lay->out_idx, -1, sizeof lay->out_idx);
    memset(lay->out_attn_sub, -1, sizeof lay->out_attn_sub);
    memset(lay->out_up_sub, -1, sizeof lay->out_up_sub);
}

vf_status vf_sd_layout_build(const char *what, const char *const *keys, size_t n, vf_sd_layout *lay)
{
    scan s;
    memset(&s, 0, sizeof s);
    memset(s.in_attn_sub, -1, sizeof s.in_attn_sub);
    s.in_max = s.out_max = s.enc_max = s.dec_max = -1;
    vf_sd_layout_reset(lay);
    for (size_t i = 0; i < n; i++) {
        const char *rest;
        if ((rest = after(keys[i], "model.diffusion_model.")))
            VF_TRY(scan_unet_key(what, keys[i], rest, &s, lay));
        else if ((rest = after(keys[i], "first_stage_model.")))
            scan_vae_key(rest, &s);
    }
    if (s.in_max > 0) {
        VF_TRY(walk_input(what, &s, lay));
        VF_TRY(walk_output(what, &s, lay));
    }
    if (s.enc_max >= 0 && s.dec_max >= 0 && s.enc_max != s.dec_max)
        return vf_error(VF_ERR_FORMAT, "%s: VAE encoder has %d levels but the decoder %d", what,
                        s.enc_max + 1, s.dec_max + 1);
    lay->vae_levels = (s.dec_max > s.enc_max ? s.dec_max : s.enc_max) + 1;
    return VF_OK;
}

/* ---- UNet ------------------------------------------------------------------------ */

static const char *const g_resnet_names[][2] = {
    {"in_layers.0.", "norm1."},  {"in_layers.2.", "conv1."},  {"emb_layers.1.", "time_emb_proj."},
    {"out_layers.0.", "norm2."}, {"out_layers.3.", "conv2."}, {"skip_connection.", "conv_shortcut."},
};

static void map_resnet(vf_keymap_result *r, const char *prefix, int a, int b, const char *x)
{
    char tail[VF_KEYMAP_NAME_MAX];
    if (!rename_prefix(x, g_resnet_names, sizeof g_resnet_names / sizeof g_resnet_names[0], tail,
                       sizeof tail))
        return;
    r->comp = VF_COMPONENT_UNET;
    if (b >= 0)
        set_name(r, 0, "%s.%d.resnets.%d.%s", prefix, a, b, tail);
    else
        set_name(r, 0, "%s.resnets.%d.%s", prefix, a, tail);
}

static void map_unet_input(const vf_sd_layout *lay, const char *p, vf_keymap_result *r)
{
    int i = take_index(&p), j = take_index(&p);
    if (i < 0 || j < 0 || i >= VF_UNET_MAX_BLOCKS)
        return;
    if (i == 0) {
        if (j == 0)
            map_one(r, VF_COMPONENT_UNET, VF_VIEW_PLAIN, "conv_in.%s%s", p, "");
        return;
    }
    int level = lay->in_level[i];
    if (level < 0)
        return;
    const char *op = after(p, "op.");
    if (lay->in_idx[i] < 0) {
        r->comp = VF_COMPONENT_UNET;
        if (j == 0 && op)
            set_name(r, 0, "down_blocks.%d.downsamplers.0.conv.%s", level, op);
        return;
    }
    if (j == 0)
        map_resnet(r, "down_blocks", level, lay->in_idx[i], p);
    else if (j == 1 && is_attn_rest(p)) {
        r->comp = VF_COMPONENT_UNET;
        set_name(r, 0, "down_blocks.%d.attentions.%d.%s", level, lay->in_idx[i], p);
    }
}

static void map_unet_output(const vf_sd_layout *lay, const char *p, vf_keymap_result *r)
{
    int i = take_index(&p), j = take_index(&p);
    if (i < 0 || j < 0 || i >= VF_UNET_MAX_BLOCKS || lay->out_level[i] < 0)
        return;
    int level = lay->out_level[i], idx = lay->out_idx[i];
    r->comp = VF_COMPONENT_UNET;
    if (j == 0 && idx >= 0)
        map_resnet(r, "up_blocks", level, idx, p);
    else if (j == lay->out_attn_sub[i] && idx >= 0 && is_attn_rest(p))
        set_name(r, 0, "up_blocks.%d.attentions.%d.%s", level, idx, p);
    else if (j == lay->out_up_sub[i] && after(p, "conv."))
        set_name(r, 0, "up_blocks.%d.upsamplers.0.%s", level, p);
}

static const char *const g_unet_names[][2] = {
    {"time_embed.0.", "time_embedding.linear_1."}, {"time_embed.2.", "time_embedding.linear_2."},
    {"label_emb.0.0.", "add_embedding.linear_1."}, {"label_emb.0.2.", "add_embedding.linear_2."},
    {"out.0.", "conv_norm_out."},                  {"out.2.", "conv_out."},
};

static void map_unet(const vf_sd_layout *lay, const char *rest, vf_keymap_result *r)
{
    const char *p;
    char buf[VF_KEYMAP_NAME_MAX];
    if (rename_prefix(rest, g_unet_names, sizeof g_unet_names / sizeof g_unet_names[0], buf,
                      sizeof buf)) {
        map_one(r, VF_COMPONENT_UNET, VF_VIEW_PLAIN, "%s%s", buf, "");
        return;
    }
    if ((p = after(rest, "input_blocks."))) {
        map_unet_input(lay, p, r);
        return;
    }
    if ((p = after(rest, "output_blocks."))) {
        map_unet_output(lay, p, r);
        return;
    }
    if (!(p = after(rest, "middle_block.")))
        return;
    int j = take_index(&p);
    if (j == 0 || j == 2)
        map_resnet(r, "mid_block", j / 2, -1, p);
    else if (j == 1 && is_attn_rest(p))
        map_one(r, VF_COMPONENT_UNET, VF_VIEW_PLAIN, "mid_block.attentions.0.%s%s", p, "");
}

/* ---- VAE ------------------------------------------------------------------------- */

static const char *const g_vae_resnet_names[][2] = {
    {"norm1.", "norm1."}, {"conv1.", "conv1."}, {"norm2.", "norm2."},
    {"conv2.", "conv2."}, {"nin_shortcut.", "conv_shortcut."},
};

static const char *const g_vae_attn_names[][2] = {
    {"norm.", "group_norm."}, {"q.", "to_q."}, {"k.", "to_k."}, {"v.", "to_v."},
    {"proj_out.", "to_out.0."},
};

static void map_vae_resnet(vf_keymap_result *r, const char *side, const char *blocks, int a, int b,
                           const char *x)
{
    char tail[VF_KEYMAP_NAME_MAX];
    if (!rename_prefix(x, g_vae_resnet_names, sizeof g_vae_resnet_names / sizeof g_vae_resnet_names[0],
                       tail, sizeof tail))
        return;
    r->comp = VF_COMPONENT_VAE;
    if (a >= 0)
        set_name(r, 0, "%s.%s.%d.resnets.%d.%s", side, blocks, a, b, tail);
    else
        set_name(r, 0, "%s.mid_block.resnets.%d.%s", side, b, tail);
}

/* encoder.down.N.* / decoder.up.N.*: the decoder's levels are stored in reverse. */
static void map_vae_level(const vf_sd_layout *lay, const char *side, const char *p,
                          vf_keymap_result *r)
{
    int dec = strcmp(side, "decoder") == 0;
    int n = take_index(&p);
    if (n < 0 || n >= lay->vae_levels)
        return;
    int level = dec ? lay->vae_levels - 1 - n : n;
    const char *blocks = dec ? "up_blocks" : "down_blocks";
    const char *x;
    if ((x = after(p, "block."))) {
        int m = take_index(&x);
        if (m >= 0)
            map_vae_resnet(r, side, blocks, level, m, x);
        return;
    }
    x = after(p, dec ? "upsample.conv." : "downsample.conv.");
    if (!x)
        return;
    r->comp = VF_COMPONENT_VAE;
    set_name(r, 0, "%s.%s.%d.%s.0.conv.%s", side, blocks, level, dec ? "upsamplers" : "downsamplers", x);
}

static void map_vae_side(const vf_sd_layout *lay, const char *side, const char *p,
                         vf_keymap_result *r)
{
    const char *x;
    char buf[VF_KEYMAP_NAME_MAX];
    r->comp = VF_COMPONENT_VAE;
    if (after(p, "conv_in.") || after(p, "conv_out."))
        set_name(r, 0, "%s.%s", side, p);
    else if ((x = after(p, "norm_out.")))
        set_name(r, 0, "%s.conv_norm_out.%s", side, x);
    else if ((x = after(p, "mid.block_1.")))
        map_vae_resnet(r, side, NULL, -1, 0, x);
    else if ((x = after(p, "mid.block_2.")))
        map_vae_resnet(r, side, NULL, -1, 1, x);
    else if ((x = after(p, "mid.attn_1."))) {
        if (!rename_prefix(x, g_vae_attn_names, sizeof g_vae_attn_names / sizeof g_vae_attn_names[0],
                           buf, sizeof buf))
            return;
        if (!after(buf, "group_norm."))
            r->view = VF_VIEW_LINEAR;
        set_name(r, 0, "%s.mid_block.attentions.0.%s", side, buf);
    } else if ((x = after(p, strcmp(side, "decoder") == 0 ? "up." : "down.")))
        map_vae_level(lay, side, x, r);
}

static void map_vae(const vf_sd_layout *lay, const char *rest, vf_keymap_result *r)
{
    const char *p;
    if (after(rest, "quant_conv.") || after(rest, "post_quant_conv."))
        map_one(r, VF_COMPONENT_VAE, VF_VIEW_PLAIN, "%s%s", rest, "");
    else if ((p = after(rest, "encoder.")))
        map_vae_side(lay, "encoder", p, r);
    else if ((p = after(rest, "decoder.")))
        map_vae_side(lay, "decoder", p, r);
}

/* ---- text encoders ----------------------------------------------------------------- */

static void map_clip_l(const char *rest, vf_keymap_result *r)
{
    if (after(rest, "text_model."))
        map_one(r, VF_COMPONENT_TEXT_ENCODER, VF_VIEW_PLAIN, "%s%s", rest, "");
    else if (after(rest, "embeddings.") || after(rest, "encoder.") || after(rest, "final_layer_norm."))
        map_one(r, VF_COMPONENT_TEXT_ENCODER, VF_VIEW_PLAIN, "text_model.%s%s", rest, "");
    if (r->kind == VF_KEYMAP_MAPPED && strcmp(r->name[0], "text_model.embeddings.position_ids") == 0)
        r->kind = VF_KEYMAP_IGNORED;
}

static const char *const g_openclip_layer_names[][2] = {
    {"ln_1.", "layer_norm1."},           {"ln_2.", "layer_norm2."},
    {"attn.out_proj.", "self_attn.out_proj."}, {"mlp.c_fc.", "mlp.fc1."},
    {"mlp.c_proj.", "mlp.fc2."},
};

static void map_openclip(const char *rest, vf_keymap_result *r)
{
    const vf_component c = VF_COMPONENT_TEXT_ENCODER_2;
    const char *p;
    char buf[VF_KEYMAP_NAME_MAX];
    if (strcmp(rest, "token_embedding.weight") == 0)
        map_one(r, c, VF_VIEW_PLAIN, "text_model.embeddings.token_embedding.weight%s%s", "", "");
    else if (strcmp(rest, "positional_embedding") == 0)
        map_one(r, c, VF_VIEW_PLAIN, "text_model.embeddings.position_embedding.weight%s%s", "", "");
    else if ((p = after(rest, "ln_final.")))
        map_one(r, c, VF_VIEW_PLAIN, "text_model.final_layer_norm.%s%s", p, "");
    else if (strcmp(rest, "text_projection") == 0)
        map_one(r, c, VF_VIEW_TRANSPOSE, "text_projection.weight%s%s", "", "");
    else if (strcmp(rest, "logit_scale") == 0)
        r->kind = VF_KEYMAP_IGNORED;
    if (r->kind != VF_KEYMAP_UNKNOWN || !(p = after(rest, "transformer.resblocks.")))
        return;
    int n = take_index(&p);
    if (n < 0)
        return;
    if (rename_prefix(p, g_openclip_layer_names,
                      sizeof g_openclip_layer_names / sizeof g_openclip_layer_names[0], buf, sizeof buf)) {
        r->comp = c;
        set_name(r, 0, "text_model.encoder.layers.%d.%s", n, buf);
        return;
    }
    const char *what = strcmp(p, "attn.in_proj_weight") == 0 ? "weight"
                       : strcmp(p, "attn.in_proj_bias") == 0 ? "bias"
                                                              : NULL;
    if (!what)
        return;
    static const char qkv[3] = {'q', 'k', 'v'};
    r->comp = c;
    r->view = VF_VIEW_ROWS3;
    r->n = 3;
    for (int i = 0; i < 3 && (i == 0 || r->kind == VF_KEYMAP_MAPPED); i++)
        set_name(r, i, "text_model.encoder.layers.%d.self_attn.%c_proj.%s", n, qkv[i], what);
}

/* ---- entry points ------------------------------------------------------------------ */

/* Stored tensors that inference never uses: the training schedule buffers, EMA
 * copies, OpenCLIP's logit scale, and SD2-style text encoders. */
static int is_ignored_sd(const char *key)
{
    static const char *const prefixes[] = {
        "model_ema.", "cond_stage_model.model.", "alphas_cumprod", "betas", "sqrt_",
        "log_one_minus_", "posterior_", "logit_scale", "lvlb_weights",
        "conditioner.embedders.0.transformer.logit_scale",
    };
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (after(key, prefixes[i]))
            return 1;
    return 0;
}

static void result_init(vf_keymap_result *r)
{
    memset(r, 0, sizeof *r);
    r->kind = VF_KEYMAP_UNKNOWN;
    r->n = 1;
}

void vf_keymap_sd(const vf_sd_layout *lay, const char *key, vf_keymap_result *r)
{
    const char *rest;
    result_init(r);
    if ((rest = after(key, "model.diffusion_model.")))
        map_unet(lay, rest, r);
    else if ((rest = after(key, "first_stage_model.")))
        map_vae(lay, rest, r);
    else if ((rest = after(key, "cond_stage_model.transformer.")) ||
             (rest = after(key, "conditioner.embedders.0.transformer.")))
        map_clip_l(rest, r);
    else if ((rest = after(key, "conditioner.embedders.1.model.")))
        map_openclip(rest, r);
    if (r->kind == VF_KEYMAP_UNKNOWN && is_ignored_sd(key))
        r->kind = VF_KEYMAP_IGNORED;
}

static const char *const g_old_vae_attn[][2] = {
    {"query.", "to_q."}, {"key.", "to_k."}, {"value.", "to_v."}, {"proj_attn.", "to_out.0."},
};

void vf_keymap_diffusers(vf_component c, const char *key, vf_keymap_result *r)
{
    result_init(r);
    map_one(r, c, VF_VIEW_PLAIN, "%s%s", key, "");
    if (r->kind != VF_KEYMAP_MAPPED)
        return;
    int text = c == VF_COMPONENT_TEXT_ENCODER || c == VF_COMPONENT_TEXT_ENCODER_2;
    /* transformers 5 saves CLIPTextModel(WithProjection) without the
     * text_model. prefix; the canonical names keep it */
    if (text && (after(key, "embeddings.") || after(key, "encoder.") || after(key, "final_layer_norm.")))
        set_name(r, 0, "text_model.%s", key);
    if (text && strcmp(r->name[0], "text_model.embeddings.position_ids") == 0) {
        r->kind = VF_KEYMAP_IGNORED;
        return;
    }
    if (c != VF_COMPONENT_VAE)
        return;
    /* {encoder,decoder}.mid_block.attentions.N.<old or new name> */
    const char *p = strstr(key, ".mid_block.attentions.");
    if (!p)
        return;
    p += strlen(".mid_block.attentions.");
    int n = take_index(&p);
    if (n < 0)
        return;
    char buf[VF_KEYMAP_NAME_MAX];
    if (rename_prefix(p, g_old_vae_attn, sizeof g_old_vae_attn / sizeof g_old_vae_attn[0], buf,
                      sizeof buf))
        set_name(r, 0, "%.*s%s", (int)(p - key), key, buf);
    const char *x = r->name[0] + (p - key);
    if (after(x, "to_q.") || after(x, "to_k.") || after(x, "to_v.") || after(x, "to_out.0."))
        r->view = VF_VIEW_LINEAR;
}
