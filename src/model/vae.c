/* The AutoencoderKL decoder on the CPU (see vae.h for the block list).
 *
 * Every stage takes the current feature map by pointer, consumes it (frees it
 * once its last reader has run) and hands back a new one, so at most three
 * full-size maps are alive at any time (input, conv input, conv output). The
 * resnet with a channel change computes its 1x1 shortcut first so that the
 * input can then be normalised in place and dropped early: at 1024x1024 that
 * keeps the decoder's peak at ~2 GB instead of ~2.5 GB.
 *
 * Blocks are visited with a running index in exactly the order vf_vae_describe
 * created them, so the hot path does no name lookups; the order is checked
 * against the block list once per decode.
 */
#include "model/vae.h"

#include "backend/cpu/ops.h"
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
        if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int)v->valuedouble || v->valueint < 1 ||
            v->valueint > 65536)
            return vf_error(VF_ERR_FORMAT, "vae config: '%s'[%d] must be a positive integer", key, i);
        out[i] = v->valueint;
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
    vf_residency *r;
    const vf_blocklist *bl;
    const vf_vae_config *cfg;
    int b;                        /* next block to run                        */
} vae_run;

/* A feature map (C,H,W) owned by the decoder. */
typedef struct fmap {
    float *d;
    int C, H, W;
} fmap;

static float *alloc_map(int C, int H, int W, const char *what)
{
    size_t n;
    if (vf_mul_overflow((size_t)C * (size_t)H, (size_t)W * sizeof(float), &n)) {
        vf_error(VF_ERR_NO_MEMORY, "vae: %s map (%d,%d,%d) is too large", what, C, H, W);
        return NULL;
    }
    float *p = vf_malloc(n);
    if (!p)
        vf_error_prefix(VF_ERR_NO_MEMORY, "vae: %s map (%d,%d,%d)", what, C, H, W);
    return p;
}

static vf_status acquire(vae_run *run, const float *const **w)
{
    if (run->b >= run->bl->nblocks)
        return vf_error(VF_ERR_INTERNAL, "vae: block list has only %d blocks", run->bl->nblocks);
    vf_status st = vf_residency_acquire(run->r, run->b, w);
    if (st != VF_OK)
        return vf_error_prefix(st, "vae: block '%s'", run->bl->blocks[run->b].name);
    return VF_OK;
}

/* Ends the current block: names it in the error, if any, then releases it. */
static vf_status finish(vae_run *run, vf_status st)
{
    if (st != VF_OK)
        vf_error_prefix(st, "vae: block '%s'", run->bl->blocks[run->b].name);
    vf_residency_release(run->r, run->b);
    run->b++;
    return st;
}

/* A conv block with weight, bias: x (C,H,W) -> (OC,H,W), consumed. */
static vf_status run_conv_block(vae_run *run, fmap *x, int oc, int k)
{
    const float *const *w;
    vf_status st = acquire(run, &w);
    if (st != VF_OK)
        return st;
    float *y = alloc_map(oc, x->H, x->W, "conv output");
    if (!y) {
        st = VF_ERR_NO_MEMORY;
        goto out;
    }
    st = vf_cpu_conv2d(y, x->d, w[0], w[1], 1, x->C, x->H, x->W, oc, k, k, 1, k / 2);
    if (st != VF_OK) {
        vf_free(y);
        goto out;
    }
    vf_free(x->d);
    x->d = y;
    x->C = oc;
out:
    return finish(run, st);
}

/* x (cin,H,W) -> (cout,H,W), consumed:
 * out = conv2(gn_silu(conv1(gn_silu(x)))) + (cin != cout ? shortcut(x) : x). */
static vf_status resnet_compute(const vf_vae_config *cfg, const float *const *w, fmap *x, int cout)
{
    int cin = x->C, H = x->H, W = x->W, G = cfg->norm_num_groups, HW = H * W;
    float eps = cfg->norm_eps, *res = NULL, *a = NULL, *b = NULL;
    vf_status st = VF_ERR_NO_MEMORY;
    if (cin != cout) {
        if (!(res = alloc_map(cout, H, W, "resnet shortcut")))
            goto fail;
        if ((st = vf_cpu_conv2d(res, x->d, w[R_SCW], w[R_SCB], 1, cin, H, W, cout, 1, 1, 1, 0)))
            goto fail;
        /* x is no longer needed as the residual: normalise it in place. */
        vf_cpu_groupnorm(x->d, x->d, w[R_N1W], w[R_N1B], 1, cin, HW, G, eps, 1);
        a = x->d;
        x->d = NULL;
    } else {
        res = x->d;
        x->d = NULL;
        if (!(a = alloc_map(cin, H, W, "resnet norm1")))
            goto fail;
        vf_cpu_groupnorm(a, res, w[R_N1W], w[R_N1B], 1, cin, HW, G, eps, 1);
    }
    st = VF_ERR_NO_MEMORY;
    if (!(b = alloc_map(cout, H, W, "resnet conv1")))
        goto fail;
    if ((st = vf_cpu_conv2d(b, a, w[R_C1W], w[R_C1B], 1, cin, H, W, cout, 3, 3, 1, 1)))
        goto fail;
    vf_cpu_groupnorm(b, b, w[R_N2W], w[R_N2B], 1, cout, HW, G, eps, 1);
    /* a has cin >= cout channels of room unless cin < cout: then reallocate. */
    if (cin < cout) {
        vf_free(a);
        st = VF_ERR_NO_MEMORY;
        if (!(a = alloc_map(cout, H, W, "resnet conv2")))
            goto fail;
    }
    if ((st = vf_cpu_conv2d(a, b, w[R_C2W], w[R_C2B], 1, cout, H, W, cout, 3, 3, 1, 1)))
        goto fail;
    vf_cpu_add(a, res, (size_t)cout * HW);
    vf_free(b);
    vf_free(res);
    x->d = a;
    x->C = cout;
    return VF_OK;
fail:
    vf_free(res);
    vf_free(a);
    vf_free(b);
    return st;
}

static vf_status run_resnet(vae_run *run, fmap *x, int cout)
{
    const float *const *w;
    vf_status st = acquire(run, &w);
    if (st != VF_OK)
        return st;
    st = resnet_compute(run->cfg, w, x, cout);
    return finish(run, st);
}

/* x (C,H,W), in place: x += out(attn(q, k, v)) over the HW tokens of
 * group_norm(x), one head of dim C. */
static vf_status attention_compute(const vf_vae_config *cfg, const float *const *w, fmap *x)
{
    int C = x->C, HW = x->H * x->W;
    float *n = NULL, *t = NULL, *k = NULL, *v = NULL;
    vf_status st = VF_ERR_NO_MEMORY;
    if (!(n = alloc_map(C, x->H, x->W, "attention norm")) ||
        !(t = alloc_map(C, x->H, x->W, "attention tokens")) ||
        !(k = alloc_map(C, x->H, x->W, "attention keys")) ||
        !(v = alloc_map(C, x->H, x->W, "attention values")))
        goto out;
    vf_cpu_groupnorm(n, x->d, w[A_NW], w[A_NB], 1, C, HW, cfg->norm_num_groups, cfg->norm_eps, 0);
    vf_cpu_nchw_to_nhwc(t, n, 1, C, HW);
    float *q = n;                 /* n is dead once transposed into t          */
    vf_cpu_linear(q, t, w[A_QW], w[A_QB], HW, C, C);
    vf_cpu_linear(k, t, w[A_KW], w[A_KB], HW, C, C);
    vf_cpu_linear(v, t, w[A_VW], w[A_VB], HW, C, C);
    st = vf_cpu_attention(t, q, k, v, 1, HW, HW, 1, C, 0, 1.0f / sqrtf((float)C));
    if (st != VF_OK)
        goto out;
    vf_cpu_linear(k, t, w[A_OW], w[A_OB], HW, C, C);
    vf_cpu_nhwc_to_nchw(n, k, 1, C, HW);
    vf_cpu_add(x->d, n, (size_t)C * HW);
out:
    vf_free(n);
    vf_free(t);
    vf_free(k);
    vf_free(v);
    return st;
}

static vf_status run_attention(vae_run *run, fmap *x)
{
    const float *const *w;
    vf_status st = acquire(run, &w);
    if (st != VF_OK)
        return st;
    st = attention_compute(run->cfg, w, x);
    return finish(run, st);
}

/* x (C,H,W) -> conv3x3(nearest2x(x)) (C,2H,2W), consumed. */
static vf_status run_upsample(vae_run *run, fmap *x)
{
    float *u = alloc_map(x->C, 2 * x->H, 2 * x->W, "upsampled");
    if (!u)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "vae: block '%s'", run->bl->blocks[run->b].name);
    vf_cpu_upsample_nearest2x(u, x->d, 1, x->C, x->H, x->W);
    vf_free(x->d);
    x->d = u;
    x->H *= 2;
    x->W *= 2;
    return run_conv_block(run, x, x->C, 3);
}

/* x (C0,H,W) -> image (out_channels,H,W): conv_out(gn_silu(x)); x is freed. */
static vf_status run_output(vae_run *run, fmap *x, float *image)
{
    const float *const *w;
    vf_status st = acquire(run, &w);
    if (st != VF_OK)
        return st;
    vf_cpu_groupnorm(x->d, x->d, w[0], w[1], 1, x->C, x->H * x->W, run->cfg->norm_num_groups,
                     run->cfg->norm_eps, 1);
    st = vf_cpu_conv2d(image, x->d, w[2], w[3], 1, x->C, x->H, x->W, run->cfg->out_channels, 3, 3,
                       1, 1);
    vf_free(x->d);
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

vf_status vf_vae_decode_one(vf_residency *r, const vf_blocklist *bl, const vf_vae_config *cfg,
                            const float *z, int h, int w, float *image)
{
    VF_TRY(check_blocklist(bl, cfg));
    int64_t S = vf_vae_scale(cfg);
    /* The kernels index a plane with int: keep the output well inside that. */
    if (h < 1 || w < 1 || (int64_t)h * S * w * S > ((int64_t)1 << 28))
        return vf_error(VF_ERR_INVALID_ARG, "vae: latent size %dx%d is out of range", h, w);
    vae_run run = {r, bl, cfg, 0};
    fmap x = {alloc_map(cfg->latent_channels, h, w, "latent"), cfg->latent_channels, h, w};
    if (!x.d)
        return VF_ERR_NO_MEMORY;
    memcpy(x.d, z, (size_t)cfg->latent_channels * h * w * sizeof(float));
    vf_status st = run_head(&run, &x);
    if (st == VF_OK)
        st = run_up_blocks(&run, &x);
    if (st == VF_OK)
        st = run_output(&run, &x, image);
    vf_free(x.d);
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

vf_status vf_vae_decode(vf_residency *r, const vf_blocklist *bl, const vf_vae_config *cfg,
                        const float *latents, int B, int h, int w, float *image)
{
    if (!r || !cfg || !latents || !image || B < 1 || h < 1 || w < 1)
        return vf_error(VF_ERR_INVALID_ARG, "vae: decode of %d latents %dx%d: bad arguments", B, h,
                        w);
    VF_TRY(check_blocklist(bl, cfg));
    int S = vf_vae_scale(cfg), C = cfg->latent_channels;
    size_t in_n = (size_t)C * h * w, out_n = (size_t)cfg->out_channels * h * S * w * S;
    float *z = alloc_map(C, h, w, "unscaled latent");
    if (!z)
        return VF_ERR_NO_MEMORY;
    vf_status st = VF_OK;
    /* One image at a time: activations, not weights, are the decoder's cost. */
    for (int b = 0; b < B && st == VF_OK; b++) {
        unscale_latents(z, latents + b * in_n, cfg, h * w);
        st = vf_vae_decode_one(r, bl, cfg, z, h, w, image + b * out_n);
        if (st != VF_OK && B > 1)
            vf_error_prefix(st, "vae: image %d of %d", b, B);
    }
    vf_free(z);
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
