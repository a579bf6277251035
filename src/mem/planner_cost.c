/* The planner's cost model: bytes, FLOPs and activation memory from shapes.
 *
 * Everything here is derived from the block lists the model code describes
 * (exact weight shapes, in execution order) plus where each block runs in the
 * network, which its name says (unet.h, vae.h and clip.h document the names):
 * "down_blocks.1.*" works at UNet level 1, "decoder.up_blocks.2.*" at latent
 * size x 4, and so on. Names rather than a parallel description so that the
 * planner can never disagree with the model code about which blocks exist.
 *
 * FLOPs count the GEMM-like work only (convs 2*OC*C*K*K*OH*OW, linears 2*M*K*N,
 * attention 4*B*Lq*Lk*C): norms and activations are memory-bound and small next
 * to them at these sizes.
 *
 * Activations are the largest live set of an executor that allocates each op's
 * output and frees a buffer after its last reader (GroupNorm+SiLU fused), which
 * is what the CPU code does and what the device arena will plan exactly.
 * Attention materialises scores and probabilities unless `flash`; `slices`
 * splits them (by heads, then query rows). The UNet's live set includes the
 * skip connections held from the down path for the up path.
 */
#include "core/error.h"
#include "mem/planner.h"

#include <stdio.h>
#include <string.h>

#define CTX_TOKENS 77  /* VF_CONTEXT_LEN: the cross-attention key length */

uint64_t vf_plan_block_params(const vf_blocklist *bl, int b)
{
    const vf_block *blk = &bl->blocks[b];
    uint64_t n = 0;
    for (int i = 0; i < blk->nw; i++) {
        const vf_wspec *w = &bl->w[blk->first_w + i];
        uint64_t k = 1;
        for (int d = 0; d < w->ndim; d++)
            k *= (uint64_t)w->shape[d];
        n += k;
    }
    return n;
}

/* ---- where a block runs -------------------------------------------------------------- */

/* Level (UNet) or upscale shift (VAE) of the block's input, and of its conv
 * outputs when it resamples. */
typedef struct where {
    int level, out_level;
    int heads;
} where;

static int prefix_num(const char *name, const char *prefix, int *n)
{
    size_t k = strlen(prefix);
    if (strncmp(name, prefix, k) != 0)
        return 0;
    return sscanf(name + k, "%d", n) == 1;
}

static where unet_where(const vf_unet_config *c, const char *name)
{
    where w = {0, 0, 0};
    int i = 0;
    if (prefix_num(name, "down_blocks.", &i)) {
        w.level = i;
        w.heads = c->down_heads[i];
    } else if (prefix_num(name, "up_blocks.", &i)) {
        w.level = c->levels - 1 - i;
        w.heads = c->up_heads[i];
    } else if (strncmp(name, "mid_block", 9) == 0) {
        w.level = c->levels - 1;
        w.heads = c->mid_heads;
    }
    w.out_level = w.level;
    if (strstr(name, "downsamplers"))
        w.out_level = w.level + 1;
    if (strstr(name, "upsamplers"))
        w.out_level = w.level - 1;
    if (w.level < 0 || w.level >= c->levels || w.out_level < 0 || w.out_level >= c->levels)
        w.level = w.out_level = 0;
    return w;
}

/* VAE decoder: level = how many times the latent size doubled. */
static where vae_where(const vf_vae_config *c, const char *name)
{
    where w = {0, 0, 1};
    int i = 0;
    if (prefix_num(name, "decoder.up_blocks.", &i))
        w.level = i;
    else if (strcmp(name, "decoder") == 0)
        w.level = c->nlevels - 1;
    w.out_level = strstr(name, "upsamplers") ? w.level + 1 : w.level;
    return w;
}

/* Tokens per image at a UNet level (latent halves per level) or VAE shift. */
static double unet_tokens(int lh, int lw, int level)
{
    return (double)(lh >> level) * (double)(lw >> level);
}

static double vae_tokens(int lh, int lw, int shift)
{
    return (double)lh * (double)lw * (double)(1 << shift) * (double)(1 << shift);
}

/* ---- FLOPs ------------------------------------------------------------------------- */

/* Rows a linear weight of the block sees per image. */
static double linear_rows(vf_component c, const char *block, const char *wname, double tokens)
{
    if (c == VF_COMPONENT_TEXT_ENCODER || c == VF_COMPONENT_TEXT_ENCODER_2)
        return strcmp(block, "text_projection") == 0 ? 1.0 : CTX_TOKENS;
    if (c == VF_COMPONENT_VAE)
        return tokens;
    if (strstr(wname, "time_emb_proj") || strcmp(block, "time_embedding") == 0 ||
        strcmp(block, "add_embedding") == 0)
        return 1.0;
    if (strstr(wname, "attn2.to_k") || strstr(wname, "attn2.to_v"))
        return CTX_TOKENS;
    return tokens;
}

double vf_plan_block_flops(const vf_plan_model *pm, vf_component c, int b, int lh, int lw, int B)
{
    const vf_blocklist *bl = pm->bl[c];
    const vf_block *blk = &bl->blocks[b];
    int is_text = c == VF_COMPONENT_TEXT_ENCODER || c == VF_COMPONENT_TEXT_ENCODER_2;
    where w = {0, 0, 0};
    double in_tok = CTX_TOKENS, out_tok = CTX_TOKENS;
    if (c == VF_COMPONENT_UNET) {
        w = unet_where(&pm->unet, blk->name);
        in_tok = unet_tokens(lh, lw, w.level);
        out_tok = unet_tokens(lh, lw, w.out_level);
    } else if (c == VF_COMPONENT_VAE) {
        w = vae_where(&pm->vae, blk->name);
        in_tok = vae_tokens(lh, lw, w.level);
        out_tok = vae_tokens(lh, lw, w.out_level);
    }
    double f = 0, attn_c = 0;
    for (int i = 0; i < blk->nw; i++) {
        const vf_wspec *ws = &bl->w[blk->first_w + i];
        const int64_t *s = ws->shape;
        if (ws->ndim == 4) {
            f += 2.0 * (double)s[0] * (double)s[1] * (double)s[2] * (double)s[3] * out_tok;
        } else if (ws->ndim == 2 && !strstr(ws->name, "embedding.weight")) {
            f += 2.0 * (double)s[0] * (double)s[1] * linear_rows(c, blk->name, ws->name, in_tok);
            if (strstr(ws->name, "to_q") || strstr(ws->name, "q_proj"))
                attn_c = (double)s[0];
        }
    }
    /* Attention: QK^T and PV, 2 * 2 * Lq * Lk * C per image (heads do not change it). */
    if (attn_c > 0 && is_text)
        f += 4.0 * CTX_TOKENS * CTX_TOKENS * attn_c;
    else if (attn_c > 0 && c == VF_COMPONENT_VAE)
        f += 4.0 * in_tok * in_tok * attn_c;
    else if (attn_c > 0)
        f += 4.0 * in_tok * (in_tok + CTX_TOKENS) * attn_c;  /* self + cross */
    return f * B;
}

/* ---- activations ------------------------------------------------------------------- */

/* Scores + probabilities of one attention, in elements, computed in `slices`
 * pieces over B*heads*Lq query rows (never less than one row). */
static double attn_scores(double B, double heads, double lq, double lk, int slices, int flash)
{
    if (flash)
        return 0;
    double rows = B * heads * lq;
    double per = rows / (slices > 1 ? slices : 1);
    if (per < 1)
        per = 1;
    return 2.0 * per * lk;
}

/* x_in + GN/SiLU(x_in) + conv1 out, then x_in + 2 maps of cout (resnet_block). */
static double resnet_live(double cin, double cout)
{
    double a = cin + cout, b = 2 * cout;
    return cin + (a > b ? a : b);
}

typedef struct walk {
    double skips[32];             /* elements of each held UNet skip (a stack) */
    int nskip;
    double held, pending;         /* sum of skips; a skip waiting for its attention */
    double peak;
} walk;

static void see(walk *k, double live)
{
    if (k->held + live > k->peak)
        k->peak = k->held + live;
}

static void push_skip(walk *k, double e)
{
    if (k->nskip < 32)
        k->skips[k->nskip++] = e;
    k->held += e;
}

static double pop_skip(walk *k)
{
    if (k->nskip == 0)
        return 0;
    double e = k->skips[--k->nskip];
    k->held -= e;
    return e;
}

/* conv1 of a resnet: (cout, cin, 3, 3); attention width from the first 1D weight. */
static void resnet_channels(const vf_blocklist *bl, const vf_block *blk, double *cin, double *cout)
{
    *cin = *cout = 0;
    for (int i = 0; i < blk->nw; i++) {
        const vf_wspec *w = &bl->w[blk->first_w + i];
        if (w->ndim == 4 && strstr(w->name, "conv1")) {
            *cout = (double)w->shape[0];
            *cin = (double)w->shape[1];
            return;
        }
    }
}

static double first_width(const vf_blocklist *bl, const vf_block *blk)
{
    return blk->nw > 0 ? (double)bl->w[blk->first_w].shape[0] : 0;
}

static void unet_block_live(const vf_plan_model *pm, walk *k, const vf_block *blk, int lh, int lw,
                            double B, int slices, int flash)
{
    const vf_blocklist *bl = pm->bl[VF_COMPONENT_UNET];
    const vf_unet_config *c = &pm->unet;
    where w = unet_where(c, blk->name);
    double S = unet_tokens(lh, lw, w.level) * B, So = unet_tokens(lh, lw, w.out_level) * B;
    double C = first_width(bl, blk), cin, cout;
    int down = strncmp(blk->name, "down_blocks", 11) == 0;
    int lvl_attn = down ? c->down_attn[w.level] : 0;
    if (strcmp(blk->name, "conv_in") == 0) {
        double x = (double)c->ch[0] * S;
        see(k, c->in_channels * S + x);
        push_skip(k, x);
    } else if (strstr(blk->name, "samplers")) {
        see(k, C * S + 2 * C * So);
        if (down)
            push_skip(k, C * So);
    } else if (strstr(blk->name, ".resnets.")) {
        resnet_channels(bl, blk, &cin, &cout);
        if (strncmp(blk->name, "up_blocks", 9) == 0) {
            double skip_e = k->nskip ? k->skips[k->nskip - 1] : 0;
            see(k, (cin * S - skip_e) + cin * S);  /* x and the concat; the skip is held */
            pop_skip(k);
        }
        see(k, resnet_live(cin, cout) * S);
        if (down && lvl_attn)
            k->pending = cout * S;
        else if (down)
            push_skip(k, cout * S);
    } else if (strstr(blk->name, ".transformer_blocks.")) {
        double heads = w.heads > 0 ? w.heads : C / 64;
        double self = 5 * C * S + attn_scores(B, heads, S / B, S / B, slices, flash);
        double cross = 3 * C * S + 2 * C * CTX_TOKENS * B +
                       attn_scores(B, heads, S / B, CTX_TOKENS, slices, flash);
        double ff = 13 * C * S;
        double m = self > cross ? self : cross;
        see(k, 2 * C * S + (m > ff ? m : ff));  /* the wrapper's residual + hidden */
    } else if (strstr(blk->name, ".attentions.")) {
        see(k, 3 * C * S);  /* residual, norm, projection */
        if (strstr(blk->name, ".proj_out") && down) {
            push_skip(k, k->pending);
            k->pending = 0;
        }
    } else if (strcmp(blk->name, "conv_norm_out") == 0 || strcmp(blk->name, "conv_out") == 0) {
        see(k, 2 * (double)c->ch[0] * S + c->out_channels * S);
    }
}

static void vae_block_live(const vf_plan_model *pm, walk *k, const vf_block *blk, int lh, int lw,
                           int slices, int flash)
{
    const vf_blocklist *bl = pm->bl[VF_COMPONENT_VAE];
    where w = vae_where(&pm->vae, blk->name);
    double S = vae_tokens(lh, lw, w.level), So = vae_tokens(lh, lw, w.out_level);
    double C = first_width(bl, blk), cin, cout;
    double L = pm->vae.latent_channels;
    if (strstr(blk->name, ".resnets.")) {
        resnet_channels(bl, blk, &cin, &cout);
        see(k, resnet_live(cin, cout) * S);
    } else if (strstr(blk->name, ".attentions.")) {
        see(k, 6 * C * S + attn_scores(1, 1, S, S, slices, flash));
    } else if (strstr(blk->name, "upsamplers")) {
        see(k, C * S + 2 * C * So);
    } else if (strcmp(blk->name, "decoder") == 0) {
        see(k, 2 * C * S + pm->vae.out_channels * S);
    } else {
        see(k, L * S + C * S);  /* post_quant_conv, conv_in */
    }
}

static void clip_block_live(walk *k, const vf_clip_config *c, const vf_block *blk, int slices)
{
    double D = c->hidden, T = CTX_TOKENS;
    if (strncmp(blk->name, "text_model.encoder.layers.", 26) != 0) {
        see(k, 2 * D * T);
        return;
    }
    double attn = 6 * D * T + attn_scores(1, c->heads, T, T, slices, 0);
    double mlp = 3 * D * T + (double)c->intermediate * T;
    see(k, attn > mlp ? attn : mlp);
}

uint64_t vf_plan_activation_bytes(const vf_plan_model *pm, vf_component c, int lh, int lw, int B,
                                  int act_bytes, int slices, int tile, int flash)
{
    const vf_blocklist *bl = pm->bl[c];
    if (!bl)
        return 0;
    walk k;
    memset(&k, 0, sizeof k);
    int th = lh, tw = lw;
    if (c == VF_COMPONENT_VAE && tile > 0) {
        th = tile < lh ? tile : lh;
        tw = tile < lw ? tile : lw;
        /* The whole image accumulates while tiles decode one at a time. */
        k.held = vae_tokens(lh, lw, pm->vae.nlevels - 1) * pm->vae.out_channels;
    }
    for (int b = 0; b < bl->nblocks; b++) {
        const vf_block *blk = &bl->blocks[b];
        if (c == VF_COMPONENT_UNET)
            unet_block_live(pm, &k, blk, lh, lw, B, slices, flash);
        else if (c == VF_COMPONENT_VAE)
            vae_block_live(pm, &k, blk, th, tw, slices, flash);
        else
            clip_block_live(&k, &pm->clip[c == VF_COMPONENT_TEXT_ENCODER_2], blk, slices);
    }
    /* Inputs and outputs that live through the call: latents, context, outputs. */
    double io = 0;
    if (c == VF_COMPONENT_UNET)
        io = B * (2.0 * pm->unet.in_channels * lh * lw + (double)CTX_TOKENS * pm->unet.cross_dim);
    else if (c != VF_COMPONENT_VAE)
        io = 3.0 * CTX_TOKENS * pm->clip[c == VF_COMPONENT_TEXT_ENCODER_2].hidden;
    return (uint64_t)((k.peak + io) * act_bytes);
}
