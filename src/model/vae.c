/* The AutoencoderKL decoder on any compute backend (see vae.h for the block list).
 *
 * Every stage takes the current feature map by pointer, consumes it (frees it
 * once its last reader has been queued) and hands back a new one, so at most
 * three full-size maps are alive at any time (input, conv input, conv output).
 * The resnet with a channel change computes its 1x1 shortcut first so that
 * the input can then be normalised in place and dropped early: at 1024x1024
 * that keeps the decoder's float32 CPU peak at ~2 GB instead of ~2.5 GB, and
 * half that in f16 on a GPU.
 *
 * Written once against backend/backend.h (weights through model/exec.h): the
 * residual adds are the conv / GEMM epilogue's, which on the CPU backend is
 * the same float32 add as before, so CPU results are unchanged bit for bit.
 *
 * Blocks are visited with a running index in exactly the order vf_vae_describe
 * created them, so the hot path does no name lookups; the order is checked
 * against the block list once per decode.
 */
#include "model/vae.h"

#include "backend/backend.h"
#include "core/alloc.h"
#include "core/error.h"
#include "io/json.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Weight indices within a resnet block, in declaration order. */
enum { R_N1W, R_N1B, R_C1W, R_C1B, R_N2W, R_N2B, R_C2W, R_C2B, R_SCW, R_SCB };
/* Within the mid-block attention. */
enum { A_NW, A_NB, A_QW, A_QB, A_KW, A_KB, A_VW, A_VB, A_OW, A_OB };

/* ---- config ------------------------------------------------------------------ */

static vf_status parse_int_array(const cJSON *config, const char *key, int *out, int cap, int *n)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(config, key);
    if (!cJSON_IsArray(a))
        return vf_error(VF_ERR_FORMAT, "vae config: '%s' must be an array of integers", key);
    int len = cJSON_GetArraySize(a);
    if (len < 1 || len > cap)
        return vf_error(VF_ERR_UNSUPPORTED, "vae config: '%s' has %d entries (1..%d supported)", key,
                        len, cap);
    for (int i = 0; i < len; i++) {
        const cJSON *v = cJSON_GetArrayItem(a, i);
        /* range first: casting an out-of-range double to int is undefined */
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= 1 && v->valuedouble <= 65536) ||
            v->valuedouble != (double)(int)v->valuedouble)
            return vf_error(VF_ERR_FORMAT, "vae config: '%s'[%d] must be a positive integer", key, i);
        out[i] = (int)v->valuedouble;
    }
    *n = len;
    return VF_OK;
}

/* latents_mean / latents_std: null (absent) or one number per latent channel. */
static vf_status parse_stats(const cJSON *config, const char *key, int C, double *out, int *present)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(config, key);
    *present = 0;
    if (!a || cJSON_IsNull(a))
        return VF_OK;
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != C)
        return vf_error(VF_ERR_FORMAT, "vae config: '%s' must be null or %d numbers", key, C);
    for (int i = 0; i < C; i++) {
        const cJSON *v = cJSON_GetArrayItem(a, i);
        if (!cJSON_IsNumber(v))
            return vf_error(VF_ERR_FORMAT, "vae config: '%s'[%d] is not a number", key, i);
        out[i] = v->valuedouble;
    }
    *present = 1;
    return VF_OK;
}

static vf_status check_up_block_types(const cJSON *config, int nlevels)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(config, "up_block_types");
    if (!a || cJSON_IsNull(a))
        return VF_OK;
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != nlevels)
        return vf_error(VF_ERR_FORMAT,
                        "vae config: 'up_block_types' must list %d blocks (one per block_out_channels)",
                        nlevels);
    for (int i = 0; i < nlevels; i++) {
        const cJSON *v = cJSON_GetArrayItem(a, i);
        if (!cJSON_IsString(v) || strcmp(v->valuestring, "UpDecoderBlock2D") != 0)
            return vf_error(VF_ERR_UNSUPPORTED,
                            "vae config: up_block_types[%d] is not \"UpDecoderBlock2D\"", i);
    }
    return VF_OK;
}

static vf_status check_groups(const vf_vae_config *c)
{
    for (int i = 0; i < c->nlevels; i++)
        if (c->block_out_channels[i] % c->norm_num_groups != 0)
            return vf_error(VF_ERR_FORMAT,
                            "vae config: block_out_channels[%d] = %d is not a multiple of "
                            "norm_num_groups = %d",
                            i, c->block_out_channels[i], c->norm_num_groups);
    return VF_OK;
}

vf_status vf_vae_config_parse(const cJSON *config, vf_vae_config *out)
{
    vf_vae_config c;
    int bad = 0;
    memset(&c, 0, sizeof c);
    if (!config || !cJSON_IsObject(config))
        return vf_error(VF_ERR_INVALID_ARG, "vae config: not a JSON object");
    VF_TRY(parse_int_array(config, "block_out_channels", c.block_out_channels, VF_VAE_MAX_LEVELS,
                           &c.nlevels));
    double lc = vf_json_num(config, "latent_channels", 4, &bad);
    double oc = vf_json_num(config, "out_channels", 3, &bad);
    double lpb = vf_json_num(config, "layers_per_block", 1, &bad);
    double g = vf_json_num(config, "norm_num_groups", 32, &bad);
    c.scaling_factor = vf_json_num(config, "scaling_factor", 0.18215, &bad);
    c.shift_factor = vf_json_num(config, "shift_factor", 0.0, &bad);
    c.use_post_quant_conv = vf_json_bool(config, "use_post_quant_conv", 1, &bad);
    c.mid_attention = vf_json_bool(config, "mid_block_add_attention", 1, &bad);
    const char *act = vf_json_str(config, "act_fn", "silu", &bad);
    if (bad)
        return vf_error(VF_ERR_FORMAT, "vae config: a key has the wrong type");
    if (strcmp(act, "silu") != 0)
        return vf_error(VF_ERR_UNSUPPORTED, "vae config: act_fn \"%s\" (only \"silu\")", act);
    if (lc < 1 || lc > VF_VAE_MAX_LATENT_CHANNELS || lc != (int)lc)
        return vf_error(VF_ERR_UNSUPPORTED, "vae config: latent_channels = %g", lc);
    if (oc < 1 || oc > 64 || oc != (int)oc)
        return vf_error(VF_ERR_UNSUPPORTED, "vae config: out_channels = %g", oc);
    if (lpb < 0 || lpb > 16 || lpb != (int)lpb)
        return vf_error(VF_ERR_UNSUPPORTED, "vae config: layers_per_block = %g", lpb);
    if (g < 1 || g > 4096 || g != (int)g)
        return vf_error(VF_ERR_FORMAT, "vae config: norm_num_groups = %g", g);
    if (!(c.scaling_factor > 0) || !isfinite(c.scaling_factor) || !isfinite(c.shift_factor))
        return vf_error(VF_ERR_FORMAT, "vae config: scaling_factor = %g, shift_factor = %g",
                        c.scaling_factor, c.shift_factor);
    c.latent_channels = (int)lc;
    c.out_channels = (int)oc;
    c.layers_per_block = (int)lpb;
    c.norm_num_groups = (int)g;
    c.norm_eps = 1e-6f;
    VF_TRY(check_groups(&c));
    VF_TRY(check_up_block_types(config, c.nlevels));
    int has_mean, has_std;
    VF_TRY(parse_stats(config, "latents_mean", c.latent_channels, c.latents_mean, &has_mean));
    VF_TRY(parse_stats(config, "latents_std", c.latent_channels, c.latents_std, &has_std));
    c.has_latents_mean_std = has_mean && has_std;
    *out = c;
    return VF_OK;
}

int vf_vae_scale(const vf_vae_config *cfg)
{
    return 1 << (cfg->nlevels - 1);
}

/* ---- description ------------------------------------------------------------- */

static void describe_conv(vf_blocklist *bl, const char *name, int oc, int ic, int k)
{
    char wn[96], bn[96];
    snprintf(wn, sizeof wn, "%s.weight", name);
    snprintf(bn, sizeof bn, "%s.bias", name);
    vf_bl_weight(bl, wn, 4, oc, ic, k, k);
    vf_bl_weight(bl, bn, 1, oc, 0, 0, 0);
}

static void describe_vec(vf_blocklist *bl, const char *name, int c)
{
    char wn[96], bn[96];
    snprintf(wn, sizeof wn, "%s.weight", name);
    snprintf(bn, sizeof bn, "%s.bias", name);
    vf_bl_weight(bl, wn, 1, c, 0, 0, 0);
    vf_bl_weight(bl, bn, 1, c, 0, 0, 0);
}

static void describe_linear(vf_blocklist *bl, const char *name, int n, int k)
{
    char wn[96], bn[96];
    snprintf(wn, sizeof wn, "%s.weight", name);
    snprintf(bn, sizeof bn, "%s.bias", name);
    vf_bl_weight(bl, wn, 2, n, k, 0, 0);
    vf_bl_weight(bl, bn, 1, n, 0, 0, 0);
}

/* Order must match the R_* indices. */
static void describe_resnet(vf_blocklist *bl, int cin, int cout)
{
    describe_vec(bl, "norm1", cin);
    describe_conv(bl, "conv1", cout, cin, 3);
    describe_vec(bl, "norm2", cout);
    describe_conv(bl, "conv2", cout, cout, 3);
    if (cin != cout)
        describe_conv(bl, "conv_shortcut", cout, cin, 1);
}

/* Order must match the A_* indices. */
static void describe_attention(vf_blocklist *bl, int c)
{
    describe_vec(bl, "group_norm", c);
    describe_linear(bl, "to_q", c, c);
    describe_linear(bl, "to_k", c, c);
    describe_linear(bl, "to_v", c, c);
    describe_linear(bl, "to_out.0", c, c);
}

static void describe_decoder(vf_blocklist *bl, const vf_vae_config *c)
{
    int L = c->latent_channels, top = c->block_out_channels[c->nlevels - 1];
    if (c->use_post_quant_conv) {
        vf_bl_block(bl, "post_quant_conv");
        vf_bl_weight(bl, "weight", 4, L, L, 1, 1);
        vf_bl_weight(bl, "bias", 1, L, 0, 0, 0);
    }
    vf_bl_block(bl, "decoder.conv_in");
    vf_bl_weight(bl, "weight", 4, top, L, 3, 3);
    vf_bl_weight(bl, "bias", 1, top, 0, 0, 0);
    vf_bl_block(bl, "decoder.mid_block.resnets.0");
    describe_resnet(bl, top, top);
    if (c->mid_attention) {
        vf_bl_block(bl, "decoder.mid_block.attentions.0");
        describe_attention(bl, top);
    }
    vf_bl_block(bl, "decoder.mid_block.resnets.1");
    describe_resnet(bl, top, top);
    int prev = top;
    for (int i = 0; i < c->nlevels; i++) {
        int ch = c->block_out_channels[c->nlevels - 1 - i];
        for (int j = 0; j <= c->layers_per_block; j++) {
            vf_bl_block(bl, "decoder.up_blocks.%d.resnets.%d", i, j);
            describe_resnet(bl, j == 0 ? prev : ch, ch);
        }
        if (i < c->nlevels - 1) {
            vf_bl_block(bl, "decoder.up_blocks.%d.upsamplers.0", i);
            describe_conv(bl, "conv", ch, ch, 3);
        }
        prev = ch;
    }
    vf_bl_block(bl, "decoder");
    describe_vec(bl, "conv_norm_out", c->block_out_channels[0]);
    describe_conv(bl, "conv_out", c->out_channels, c->block_out_channels[0], 3);
}

vf_status vf_vae_describe(const cJSON *config, vf_blocklist *bl)
{
    vf_vae_config c;
    VF_TRY(vf_vae_config_parse(config, &c));
    describe_decoder(bl, &c);
    if (bl->st != VF_OK)
        return vf_error_prefix(bl->st, "vae: describing the decoder");
    return VF_OK;
}

/* ---- decoding ---------------------------------------------------------------- */

/* One decode's walk through the block list. */
typedef struct vae_run {
    const vf_exec *x;
    vf_backend *be;
    const vf_blocklist *bl;
    const vf_vae_config *cfg;
    int tok;                      /* feature maps already are token sequences  */
    int b;                        /* next block to run                        */
    const vf_dbuf *w[VF_EXEC_MAX_W]; /* the current block's weights           */
} vae_run;

/* A feature map (C,H,W) owned by the decoder. */
typedef struct fmap {
    vf_dbuf *d;
    int C, H, W;
} fmap;

static vf_status alloc_map(vae_run *run, int C, int H, int W, const char *what, vf_dbuf **p)
{
    size_t n;
    *p = NULL;
    if (vf_mul_overflow((size_t)C * (size_t)H, (size_t)W, &n))
        return vf_error(VF_ERR_NO_MEMORY, "vae: %s map (%d,%d,%d) is too large", what, C, H, W);
    vf_status st = vf_be_alloc(run->be, n, p);
    if (st != VF_OK)
        return vf_error_prefix(st, "vae: %s map (%d,%d,%d)", what, C, H, W);
    return VF_OK;
}

static vf_status acquire(vae_run *run)
{
    if (run->b >= run->bl->nblocks)
        return vf_error(VF_ERR_INTERNAL, "vae: block list has only %d blocks", run->bl->nblocks);
    vf_status st = vf_exec_acquire(run->x, run->b, run->w, VF_EXEC_MAX_W);
    if (st != VF_OK)
        return vf_error_prefix(st, "vae: block '%s'", run->bl->blocks[run->b].name);
    return VF_OK;
}

/* Ends the current block: names it in the error, if any, then releases it. */
static vf_status finish(vae_run *run, vf_status st)
{
    if (st != VF_OK)
        vf_error_prefix(st, "vae: block '%s'", run->bl->blocks[run->b].name);
    vf_exec_release(run->x, run->b);
    run->b++;
    return st;
}

/* A conv block with weight, bias: x (C,H,W) -> (OC,H,W), consumed. */
static vf_status run_conv_block(vae_run *run, fmap *x, int oc, int k)
{
    vf_dbuf *y = NULL;
    vf_status st = acquire(run);
    if (st != VF_OK)
        return st;
    if ((st = alloc_map(run, oc, x->H, x->W, "conv output", &y)) != VF_OK)
        goto out;
    st = vf_be_conv2d(run->be, y, x->d, run->w[0], run->w[1], NULL, 1, x->C, x->H, x->W, oc, k, k, 1, k / 2);
    if (st != VF_OK) {
        vf_be_free(run->be, y);
        goto out;
    }
    vf_be_free(run->be, x->d);
    x->d = y;
    x->C = oc;
out:
    return finish(run, st);
}

/* x (cin,H,W) -> (cout,H,W), consumed:
 * out = conv2(gn_silu(conv1(gn_silu(x)))) + (cin != cout ? shortcut(x) : x). */
static vf_status resnet_compute(vae_run *run, fmap *x, int cout)
{
    const vf_vae_config *cfg = run->cfg;
    const vf_dbuf *const *w = run->w;
    vf_backend *be = run->be;
    int cin = x->C, H = x->H, W = x->W, G = cfg->norm_num_groups, HW = H * W;
    float eps = cfg->norm_eps;
    vf_dbuf *res = NULL, *a = NULL, *b = NULL;
    vf_status st;
    if (cin != cout) {
        if ((st = alloc_map(run, cout, H, W, "resnet shortcut", &res)) ||
            (st = vf_be_conv2d(be, res, x->d, w[R_SCW], w[R_SCB], NULL, 1, cin, H, W, cout, 1, 1, 1, 0)))
            goto fail;
        /* x is no longer needed as the residual: normalise it in place. */
        if ((st = vf_be_groupnorm(be, x->d, x->d, w[R_N1W], w[R_N1B], NULL, 1, cin, HW, G, eps, 1)))
            goto fail;
        a = x->d;
        x->d = NULL;
    } else {
        res = x->d;
        x->d = NULL;
        if ((st = alloc_map(run, cin, H, W, "resnet norm1", &a)) ||
            (st = vf_be_groupnorm(be, a, res, w[R_N1W], w[R_N1B], NULL, 1, cin, HW, G, eps, 1)))
            goto fail;
    }
    if ((st = alloc_map(run, cout, H, W, "resnet conv1", &b)) ||
        (st = vf_be_conv2d(be, b, a, w[R_C1W], w[R_C1B], NULL, 1, cin, H, W, cout, 3, 3, 1, 1)) ||
        (st = vf_be_groupnorm(be, b, b, w[R_N2W], w[R_N2B], NULL, 1, cout, HW, G, eps, 1)))
        goto fail;
    /* a has cin >= cout channels of room unless cin < cout: then reallocate. */
    if (cin < cout) {
        vf_be_free(be, a);
        a = NULL;
        if ((st = alloc_map(run, cout, H, W, "resnet conv2", &a)))
            goto fail;
    }
    if ((st = vf_be_conv2d(be, a, b, w[R_C2W], w[R_C2B], res, 1, cout, H, W, cout, 3, 3, 1, 1)))
        goto fail;
    vf_be_free(be, b);
    vf_be_free(be, res);
    x->d = a;
    x->C = cout;
    return VF_OK;
fail:
    vf_be_free(be, res);
    vf_be_free(be, a);
    vf_be_free(be, b);
    return st;
}

static vf_status run_resnet(vae_run *run, fmap *x, int cout)
{
    vf_status st = acquire(run);
    if (st != VF_OK)
        return st;
    st = resnet_compute(run, x, cout);
    return finish(run, st);
}

/* q, k, v (HW,C) from tokens t; o (HW,C) = attention, one head of dim C. */
static vf_status attention_core(vae_run *run, vf_dbuf *o, const vf_dbuf *t, vf_dbuf *q, vf_dbuf *k, vf_dbuf *v,
                                int C, int HW)
{
    vf_backend *be = run->be;
    const vf_dbuf *const *w = run->w;
    VF_TRY(vf_be_linear(be, q, t, w[A_QW], w[A_QB], NULL, HW, C, C, VF_ACT_NONE));
    VF_TRY(vf_be_linear(be, k, t, w[A_KW], w[A_KB], NULL, HW, C, C, VF_ACT_NONE));
    VF_TRY(vf_be_linear(be, v, t, w[A_VW], w[A_VB], NULL, HW, C, C, VF_ACT_NONE));
    return vf_be_attention(be, o, q, k, v, 1, HW, HW, 1, C, 0, 0, 0, 0, 0, 1.0f / sqrtf((float)C));
}

/* x (C,H,W), in place: x += out(attn(q, k, v)) over the HW tokens of
 * group_norm(x), one head of dim C. Where a feature map is its token matrix
 * (NHWC) no transposes run and the residual add is the GEMM's epilogue. */
static vf_status attention_compute(vae_run *run, fmap *x)
{
    vf_backend *be = run->be;
    const vf_dbuf *const *w = run->w;
    int C = x->C, HW = x->H * x->W;
    vf_dbuf *n = NULL, *t = NULL, *k = NULL, *v = NULL;
    vf_status st;
    if ((st = alloc_map(run, C, x->H, x->W, "attention norm", &n)) ||
        (st = alloc_map(run, C, x->H, x->W, "attention tokens", &t)) ||
        (st = alloc_map(run, C, x->H, x->W, "attention keys", &k)) ||
        (st = alloc_map(run, C, x->H, x->W, "attention values", &v)))
        goto out;
    if ((st = vf_be_groupnorm(be, n, x->d, w[A_NW], w[A_NB], NULL, 1, C, HW, run->cfg->norm_num_groups,
                              run->cfg->norm_eps, 0)))
        goto out;
    if (run->tok) {
        /* n is the token matrix; t holds q; the output goes to n once read. */
        st = attention_core(run, n, n, t, k, v, C, HW);
        if (st == VF_OK)
            st = vf_be_linear(be, x->d, n, w[A_OW], w[A_OB], x->d, HW, C, C, VF_ACT_NONE);
        goto out;
    }
    /* n is dead once transposed into t: it holds q. */
    if ((st = vf_be_fm_to_tokens(be, t, n, 1, C, HW)) || (st = attention_core(run, t, t, n, k, v, C, HW)) ||
        (st = vf_be_linear(be, k, t, w[A_OW], w[A_OB], NULL, HW, C, C, VF_ACT_NONE)) ||
        (st = vf_be_tokens_to_fm(be, n, k, 1, C, HW)))
        goto out;
    st = vf_be_add(be, x->d, n, (size_t)C * HW);
out:
    vf_be_free(be, n);
    vf_be_free(be, t);
    vf_be_free(be, k);
    vf_be_free(be, v);
    return st;
}

static vf_status run_attention(vae_run *run, fmap *x)
{
    vf_status st = acquire(run);
    if (st != VF_OK)
        return st;
    st = attention_compute(run, x);
    return finish(run, st);
}

/* x (C,H,W) -> conv3x3(nearest2x(x)) (C,2H,2W), consumed. */
static vf_status run_upsample(vae_run *run, fmap *x)
{
    vf_dbuf *u = NULL;
    vf_status st = alloc_map(run, x->C, 2 * x->H, 2 * x->W, "upsampled", &u);
    if (st == VF_OK)
        st = vf_be_upsample2x(run->be, u, x->d, 1, x->C, x->H, x->W);
    if (st != VF_OK) {
        vf_be_free(run->be, u);
        return vf_error_prefix(st, "vae: block '%s'", run->bl->blocks[run->b].name);
    }
    vf_be_free(run->be, x->d);
    x->d = u;
    x->H *= 2;
    x->W *= 2;
    return run_conv_block(run, x, x->C, 3);
}

/* x (C0,H,W) -> image (out_channels,H,W): conv_out(gn_silu(x)); x is freed. */
static vf_status run_output(vae_run *run, fmap *x, vf_dbuf *image)
{
    vf_status st = acquire(run);
    if (st != VF_OK)
        return st;
    st = vf_be_groupnorm(run->be, x->d, x->d, run->w[0], run->w[1], NULL, 1, x->C, x->H * x->W,
                         run->cfg->norm_num_groups, run->cfg->norm_eps, 1);
    if (st == VF_OK)
        st = vf_be_conv2d(run->be, image, x->d, run->w[2], run->w[3], NULL, 1, x->C, x->H, x->W,
                          run->cfg->out_channels, 3, 3, 1, 1);
    vf_be_free(run->be, x->d);
    x->d = NULL;
    return finish(run, st);
}

/* post_quant_conv, conv_in, mid block. */
static vf_status run_head(vae_run *run, fmap *x)
{
    const vf_vae_config *c = run->cfg;
    int top = c->block_out_channels[c->nlevels - 1];
    if (c->use_post_quant_conv)
        VF_TRY(run_conv_block(run, x, c->latent_channels, 1));
    VF_TRY(run_conv_block(run, x, top, 3));
    VF_TRY(run_resnet(run, x, top));
    if (c->mid_attention)
        VF_TRY(run_attention(run, x));
    return run_resnet(run, x, top);
}

static vf_status run_up_blocks(vae_run *run, fmap *x)
{
    const vf_vae_config *c = run->cfg;
    for (int i = 0; i < c->nlevels; i++) {
        int ch = c->block_out_channels[c->nlevels - 1 - i];
        for (int j = 0; j <= c->layers_per_block; j++)
            VF_TRY(run_resnet(run, x, ch));
        if (i < c->nlevels - 1)
            VF_TRY(run_upsample(run, x));
    }
    return VF_OK;
}

static vf_status check_blocklist(const vf_blocklist *bl, const vf_vae_config *cfg)
{
    int want = (cfg->use_post_quant_conv ? 1 : 0) + 1 + 2 + (cfg->mid_attention ? 1 : 0) +
               cfg->nlevels * (cfg->layers_per_block + 1) + (cfg->nlevels - 1) + 1;
    if (!bl || bl->nblocks != want || bl->comp != VF_COMPONENT_VAE)
        return vf_error(VF_ERR_INVALID_ARG,
                        "vae: block list does not match the config (%d blocks, want %d)",
                        bl ? bl->nblocks : 0, want);
    return VF_OK;
}

vf_status vf_vae_decode_one_ex(const vf_exec *x, const vf_vae_config *cfg, const float *z, int h, int w,
                               float *image)
{
    if (!x || !x->be || !cfg || !z || !image)
        return vf_error(VF_ERR_INVALID_ARG, "vae: decode: no context, config, latent or image");
    VF_TRY(check_blocklist(x->bl, cfg));
    int64_t S = vf_vae_scale(cfg);
    /* The kernels index a plane with int: keep the output well inside that. */
    if (h < 1 || w < 1 || (int64_t)h * S * w * S > ((int64_t)1 << 28))
        return vf_error(VF_ERR_INVALID_ARG, "vae: latent size %dx%d is out of range", h, w);
    vae_run run = {.x = x, .be = x->be, .bl = x->bl, .cfg = cfg, .tok = vf_be_fm_is_tokens(x->be)};
    int C = cfg->latent_channels, OC = cfg->out_channels, OH = (int)(h * S), OW = (int)(w * S);
    fmap f = {NULL, C, h, w};
    vf_dbuf *img = NULL;
    vf_status st = alloc_map(&run, C, h, w, "latent", &f.d);
    if (st == VF_OK)
        st = vf_be_upload_fm(run.be, f.d, z, 1, C, h, w);
    if (st == VF_OK)
        st = run_head(&run, &f);
    if (st == VF_OK)
        st = run_up_blocks(&run, &f);
    if (st == VF_OK)
        st = alloc_map(&run, OC, OH, OW, "image", &img);
    if (st == VF_OK)
        st = run_output(&run, &f, img);
    if (st == VF_OK)
        st = vf_be_download_fm(run.be, image, img, 1, OC, OH, OW);
    vf_be_free(run.be, img);
    vf_be_free(run.be, f.d);
    return st;
}

vf_status vf_vae_decode_one(vf_residency *r, const vf_blocklist *bl, const vf_vae_config *cfg,
                            const float *z, int h, int w, float *image)
{
    vf_exec x;
    vf_backend *be;
    vf_status est = vf_exec_cpu(&x, r, bl, &be);
    if (est != VF_OK)
        return vf_error_prefix(est, "vae: CPU backend");
    vf_status st = vf_vae_decode_one_ex(&x, cfg, z, h, w, image);
    vf_backend_free(be);
    return st;
}

/* z = latents / scaling_factor + shift_factor, or latents * std / scaling_factor
 * + mean per channel; in float as the pipelines do it in torch. */
static void unscale_latents(float *z, const float *lat, const vf_vae_config *cfg, int hw)
{
    float sf = (float)cfg->scaling_factor, shift = (float)cfg->shift_factor;
    for (int c = 0; c < cfg->latent_channels; c++) {
        const float *s = lat + (size_t)c * hw;
        float *d = z + (size_t)c * hw;
        if (cfg->has_latents_mean_std) {
            float sd = (float)cfg->latents_std[c], mean = (float)cfg->latents_mean[c];
            for (int i = 0; i < hw; i++)
                d[i] = s[i] * sd / sf + mean;
        } else {
            for (int i = 0; i < hw; i++)
                d[i] = s[i] / sf + shift;
        }
    }
}

vf_status vf_vae_decode_ex(const vf_exec *x, const vf_vae_config *cfg, const float *latents, int B, int h, int w,
                           float *image)
{
    if (!x || !x->be || !cfg || !latents || !image || B < 1 || h < 1 || w < 1)
        return vf_error(VF_ERR_INVALID_ARG, "vae: decode of %d latents %dx%d: bad arguments", B, h,
                        w);
    VF_TRY(check_blocklist(x->bl, cfg));
    int S = vf_vae_scale(cfg), C = cfg->latent_channels;
    size_t in_n = (size_t)C * h * w, out_n = (size_t)cfg->out_channels * h * S * w * S;
    float *z = vf_malloc(in_n * sizeof(float));
    if (!z)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "vae: unscaled latent (%d,%d,%d)", C, h, w);
    vf_status st = VF_OK;
    /* One image at a time: activations, not weights, are the decoder's cost. */
    for (int b = 0; b < B && st == VF_OK; b++) {
        unscale_latents(z, latents + b * in_n, cfg, h * w);
        st = vf_vae_decode_one_ex(x, cfg, z, h, w, image + b * out_n);
        if (st != VF_OK && B > 1)
            vf_error_prefix(st, "vae: image %d of %d", b, B);
    }
    vf_free(z);
    return st;
}

vf_status vf_vae_decode(vf_residency *r, const vf_blocklist *bl, const vf_vae_config *cfg,
                        const float *latents, int B, int h, int w, float *image)
{
    if (!r || !cfg || !latents || !image || B < 1 || h < 1 || w < 1)
        return vf_error(VF_ERR_INVALID_ARG, "vae: decode of %d latents %dx%d: bad arguments", B, h,
                        w);
    vf_exec x;
    vf_backend *be;
    vf_status est = vf_exec_cpu(&x, r, bl, &be);
    if (est != VF_OK)
        return vf_error_prefix(est, "vae: CPU backend");
    vf_status st = vf_vae_decode_ex(&x, cfg, latents, B, h, w, image);
    vf_backend_free(be);
    return st;
}

/* ---- postprocess ------------------------------------------------------------- */

void vf_image_from_decoded(const float *decoded, int B, int H, int W, float *img01, uint8_t *rgb)
{
    size_t hw = (size_t)H * W;
    for (int b = 0; b < B; b++) {
        for (int c = 0; c < 3; c++) {
            const float *src = decoded + ((size_t)b * 3 + c) * hw;
            for (size_t i = 0; i < hw; i++) {
                /* x/2 is exact, so this is torch's (x / 2 + 0.5).clamp(0, 1). */
                float v = src[i] / 2.0f + 0.5f;
                if (!(v > 0.0f))  /* NaN too: never an out-of-range cast below */
                    v = 0.0f;
                else if (v > 1.0f)
                    v = 1.0f;
                size_t o = ((size_t)b * hw + i) * 3 + c;
                if (img01)
                    img01[o] = v;
                if (rgb) {
                    float s = v * 255.0f;  /* numpy float32 multiply, then round half to even */
                    rgb[o] = (uint8_t)nearbyintf(s);
                }
            }
        }
    }
}
