/* Checkpoint layouts: the key maps on synthetic names (real SD1.5 / SDXL block
 * numbering, the gapped numbering of the tiny fixtures, the VAE's reversed
 * decoder, OpenCLIP's fused q/k/v), then the tiny reference pipelines opened both
 * as diffusers folders and as single files, which must give the same components,
 * names, shapes and float values tensor for tensor (this is what proves the maps).
 * Then every diffusers spelling (fp16 variant, shards, old VAE names), ignored
 * tensors, inferred configs, and the errors, each built in its own mkdtemp dir,
 * and allocation failures at every step of opening.
 */
#include "core/alloc.h"
#include "core/dtype.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/json.h"
#include "io/keymap.h"
#include "io/safetensors.h"
#include "test.h"
#include "test_tmp.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------ */

static void mkdir_in(tmpd *t, const char *name) { CHECK(mkdir(tmp_path(t, name), 0755) == 0); }

/* Links <dir>/<name> to <target>. */
static void link_in(tmpd *t, const char *name, const char *target)
{
    CHECK_MSG(symlink(target, tmp_path(t, name)) == 0, "symlink %s", target);
}

static char g_path[4][512];
static const char *fixture(int slot, const char *shared, const char *rel)
{
    snprintf(g_path[slot], sizeof g_path[slot], "%s/reference/%s", shared, rel);
    return g_path[slot];
}

static int contains(const char *s, const char *needle) { return strstr(s, needle) != NULL; }

/* Copies a safetensors file through an optional per-tensor edit (rename,
 * reshape, drop) and appends extra tensors. */
typedef int (*edit_fn)(int index, char *name, size_t cap, vf_st_write_tensor *w, void *ctx);

static vf_status copy_st(const char *src, const char *dst, edit_fn fn, void *ctx,
                         const vf_st_write_tensor *extra, size_t nextra)
{
    vf_st_file *f;
    VF_TRY(vf_st_open(src, &f));
    size_t n = vf_st_count(f), m = 0;
    vf_st_write_tensor *w = calloc(n + nextra + 1, sizeof *w);
    char(*names)[256] = calloc(n + 1, sizeof *names);
    void **bufs = calloc(n + 1, sizeof *bufs);
    vf_status st = VF_OK;
    for (size_t i = 0; i < n && st == VF_OK; i++) {
        const vf_st_tensor *t = vf_st_at(f, i);
        bufs[i] = malloc(t->nbytes + 1);
        st = vf_st_read(f, t, 0, bufs[i], t->nbytes);
        snprintf(names[i], sizeof names[i], "%s", t->name);
        vf_st_write_tensor x = {names[i], t->dtype, t->ndim, {0}, bufs[i]};
        memcpy(x.shape, t->shape, sizeof x.shape);
        if (fn && !fn((int)i, names[i], sizeof names[i], &x, ctx))
            continue;
        w[m++] = x;
    }
    for (size_t i = 0; i < nextra; i++)
        w[m++] = extra[i];
    if (st == VF_OK)
        st = vf_st_write(dst, w, m, NULL);
    for (size_t i = 0; i < n; i++)
        free(bufs[i]);
    free(bufs);
    free(names);
    free(w);
    vf_st_close(f);
    return st;
}

static float *read_all(const vf_checkpoint *ck, const vf_ckpt_tensor *t, size_t *n)
{
    *n = (size_t)vf_shape_numel(t->shape, t->ndim);
    float *v = malloc(*n * sizeof *v + 4);
    vf_status st = vf_checkpoint_read_f32(ck, t, v);
    CHECK_MSG(st == VF_OK, "%s: %s", t->name, vf_last_error());
    return v;
}

/* Both checkpoints have the same components, names, shapes and values. */
static void check_same(const vf_checkpoint *a, const vf_checkpoint *b, const char *what)
{
    CHECK_MSG(vf_checkpoint_arch(a) == vf_checkpoint_arch(b), "%s: arch", what);
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        vf_component comp = (vf_component)c;
        CHECK_MSG(vf_checkpoint_has(a, comp) == vf_checkpoint_has(b, comp), "%s: component %d", what, c);
        size_t n = vf_checkpoint_count(a, comp);
        CHECK_MSG(n == vf_checkpoint_count(b, comp), "%s: component %d: %zu vs %zu tensors", what, c, n,
                  vf_checkpoint_count(b, comp));
        if (n != vf_checkpoint_count(b, comp))
            continue;
        int bad_names = 0, bad_shapes = 0, bad_values = 0;
        for (size_t i = 0; i < n; i++) {
            const vf_ckpt_tensor *x = vf_checkpoint_at(a, comp, i), *y = vf_checkpoint_at(b, comp, i);
            if (strcmp(x->name, y->name) != 0) {
                if (bad_names++ < 3)
                    fprintf(stderr, "%s: names differ: %s vs %s\n", what, x->name, y->name);
                continue;
            }
            if (!vf_shape_eq(x->shape, x->ndim, y->shape, y->ndim)) {
                bad_shapes++;
                fprintf(stderr, "%s: %s: shapes differ\n", what, x->name);
                continue;
            }
            size_t nx, ny;
            float *vx = read_all(a, x, &nx), *vy = read_all(b, y, &ny);
            if (nx != ny || memcmp(vx, vy, nx * sizeof *vx) != 0) {
                bad_values++;
                fprintf(stderr, "%s: %s: values differ\n", what, x->name);
            }
            free(vx);
            free(vy);
        }
        CHECK_MSG(bad_names == 0 && bad_shapes == 0 && bad_values == 0,
                  "%s: component %d: %d names, %d shapes, %d values differ", what, c, bad_names,
                  bad_shapes, bad_values);
    }
}

/* ---- key maps on synthetic names ---------------------------------------------------- */

static void map_sd(const vf_sd_layout *lay, const char *key, const char *want, vf_component comp)
{
    vf_keymap_result r;
    vf_keymap_sd(lay, key, &r);
    if (!want) {
        CHECK_MSG(r.kind != VF_KEYMAP_MAPPED, "%s mapped to %s", key, r.name[0]);
        return;
    }
    CHECK_MSG(r.kind == VF_KEYMAP_MAPPED && strcmp(r.name[0], want) == 0 && r.comp == comp,
              "%s -> %s (kind %d comp %d), want %s", key, r.kind == VF_KEYMAP_MAPPED ? r.name[0] : "-",
              r.kind, r.comp, want);
}

/* The flat UNet key list of the original layout: `per` resnets per level, the
 * given levels with attention, flat numbering with `stride` blocks per level. */
static size_t unet_keys(char (*keys)[128], int levels, int per, int stride, const int *attn)
{
    size_t n = 0;
    const char *p = "model.diffusion_model.";
    snprintf(keys[n++], 128, "%sinput_blocks.0.0.weight", p);
    for (int l = 0; l < levels; l++) {
        for (int j = 0; j < per; j++) {
            int i = 1 + l * stride + j;
            snprintf(keys[n++], 128, "%sinput_blocks.%d.0.in_layers.0.weight", p, i);
            if (attn[l])
                snprintf(keys[n++], 128, "%sinput_blocks.%d.1.proj_in.weight", p, i);
        }
        if (l + 1 < levels)
            snprintf(keys[n++], 128, "%sinput_blocks.%d.0.op.weight", p, (l + 1) * stride);
    }
    for (int u = 0; u < levels; u++) {
        int l = levels - 1 - u;
        for (int j = 0; j <= per; j++) {
            int i = u * stride + j;
            snprintf(keys[n++], 128, "%soutput_blocks.%d.0.skip_connection.weight", p, i);
            if (attn[l])
                snprintf(keys[n++], 128, "%soutput_blocks.%d.1.norm.weight", p, i);
        }
        if (u + 1 < levels)
            snprintf(keys[n++], 128, "%soutput_blocks.%d.%d.conv.weight", p, u * stride + stride - 1,
                     attn[l] ? 2 : 1);
    }
    snprintf(keys[n++], 128, "%smiddle_block.1.proj_in.weight", p);
    return n;
}

static void test_keymap_unet_sd15(void)
{
    /* the real SD1.5 numbering: 2 resnets per level, 3 flat blocks per level */
    static char keys[256][128];
    const char *ptr[256];
    const int attn[4] = {1, 1, 1, 0};
    size_t n = unet_keys(keys, 4, 2, 3, attn);
    for (size_t i = 0; i < n; i++)
        ptr[i] = keys[i];
    vf_sd_layout lay;
    CHECK_OK(vf_sd_layout_build("sd15", ptr, n, &lay));
    CHECK(lay.unet_levels == 4 && lay.unet_layers == 2);
    const vf_component U = VF_COMPONENT_UNET;
    const char *m = "model.diffusion_model.";
    char k[160];
#define MAP(key, want) (snprintf(k, sizeof k, "%s%s", m, key), map_sd(&lay, k, want, U))
    MAP("input_blocks.0.0.weight", "conv_in.weight");
    MAP("input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight");
    MAP("input_blocks.2.0.in_layers.2.bias", "down_blocks.0.resnets.1.conv1.bias");
    MAP("input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight");
    MAP("input_blocks.4.1.proj_in.weight", "down_blocks.1.attentions.0.proj_in.weight");
    MAP("input_blocks.5.0.emb_layers.1.weight", "down_blocks.1.resnets.1.time_emb_proj.weight");
    MAP("input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight",
        "down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight");
    MAP("input_blocks.9.0.op.bias", "down_blocks.2.downsamplers.0.conv.bias");
    MAP("input_blocks.11.0.out_layers.3.weight", "down_blocks.3.resnets.1.conv2.weight");
    MAP("middle_block.0.out_layers.0.weight", "mid_block.resnets.0.norm2.weight");
    MAP("middle_block.1.proj_out.weight", "mid_block.attentions.0.proj_out.weight");
    MAP("middle_block.2.skip_connection.weight", "mid_block.resnets.1.conv_shortcut.weight");
    MAP("output_blocks.0.0.in_layers.0.weight", "up_blocks.0.resnets.0.norm1.weight");
    MAP("output_blocks.2.0.skip_connection.bias", "up_blocks.0.resnets.2.conv_shortcut.bias");
    MAP("output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight");
    MAP("output_blocks.5.1.norm.weight", "up_blocks.1.attentions.2.norm.weight");
    MAP("output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias");
    MAP("output_blocks.8.2.conv.weight", "up_blocks.2.upsamplers.0.conv.weight");
    MAP("output_blocks.11.1.proj_in.weight", "up_blocks.3.attentions.2.proj_in.weight");
    MAP("time_embed.0.weight", "time_embedding.linear_1.weight");
    MAP("time_embed.2.bias", "time_embedding.linear_2.bias");
    MAP("label_emb.0.0.weight", "add_embedding.linear_1.weight");
    MAP("label_emb.0.2.bias", "add_embedding.linear_2.bias");
    MAP("out.0.weight", "conv_norm_out.weight");
    MAP("out.2.bias", "conv_out.bias");
    MAP("input_blocks.1.0.in_layers.1.weight", NULL); /* the SiLU has no weights */
    MAP("input_blocks.40.0.in_layers.0.weight", NULL);
    MAP("output_blocks.2.3.conv.weight", NULL);
#undef MAP
}

static void test_keymap_unet_layouts(void)
{
    static char keys[256][128];
    const char *ptr[256];
    vf_sd_layout lay;
    /* SDXL: 3 levels, no attention at level 0 */
    const int xl[3] = {0, 1, 1};
    size_t n = unet_keys(keys, 3, 2, 3, xl);
    for (size_t i = 0; i < n; i++)
        ptr[i] = keys[i];
    CHECK_OK(vf_sd_layout_build("sdxl", ptr, n, &lay));
    CHECK(lay.unet_levels == 3 && lay.unet_layers == 2);
    map_sd(&lay, "model.diffusion_model.output_blocks.2.2.conv.weight",
           "up_blocks.0.upsamplers.0.conv.weight", VF_COMPONENT_UNET);
    map_sd(&lay, "model.diffusion_model.output_blocks.2.1.conv.weight", NULL, VF_COMPONENT_UNET);
    map_sd(&lay, "model.diffusion_model.input_blocks.7.1.norm.weight",
           "down_blocks.2.attentions.0.norm.weight", VF_COMPONENT_UNET);
    map_sd(&lay, "model.diffusion_model.output_blocks.8.1.norm.weight", NULL, VF_COMPONENT_UNET);
    map_sd(&lay, "model.diffusion_model.output_blocks.8.0.skip_connection.weight",
           "up_blocks.2.resnets.2.conv_shortcut.weight", VF_COMPONENT_UNET);

    /* one resnet per level numbered with gaps (as the tiny SD1.5 fixture is) */
    const int sd[4] = {1, 1, 1, 0};
    n = unet_keys(keys, 4, 1, 3, sd);
    for (size_t i = 0; i < n; i++)
        ptr[i] = keys[i];
    CHECK_OK(vf_sd_layout_build("gaps", ptr, n, &lay));
    CHECK(lay.unet_levels == 4 && lay.unet_layers == 1);
    map_sd(&lay, "model.diffusion_model.input_blocks.4.1.proj_in.weight",
           "down_blocks.1.attentions.0.proj_in.weight", VF_COMPONENT_UNET);
    map_sd(&lay, "model.diffusion_model.input_blocks.6.0.op.weight",
           "down_blocks.1.downsamplers.0.conv.weight", VF_COMPONENT_UNET);
    map_sd(&lay, "model.diffusion_model.output_blocks.4.1.norm.weight",
           "up_blocks.1.attentions.1.norm.weight", VF_COMPONENT_UNET);
    map_sd(&lay, "model.diffusion_model.output_blocks.9.0.skip_connection.weight",
           "up_blocks.3.resnets.0.conv_shortcut.weight", VF_COMPONENT_UNET);

    /* a level with a different resnet count is refused, naming the file */
    const char *bad[] = {
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        "model.diffusion_model.input_blocks.2.0.in_layers.0.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.input_blocks.4.0.in_layers.0.weight",
    };
    CHECK(vf_sd_layout_build("bad.safetensors", bad, 4, &lay) == VF_ERR_FORMAT);
    CHECK(contains(vf_last_error(), "bad.safetensors"));
    /* output blocks that do not mirror the input blocks */
    const char *bad2[] = {
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        "model.diffusion_model.output_blocks.0.0.in_layers.0.weight",
    };
    CHECK(vf_sd_layout_build("bad2.safetensors", bad2, 2, &lay) == VF_ERR_FORMAT);
    CHECK(contains(vf_last_error(), "mirror"));
}

static void test_keymap_vae_clip(void)
{
    const char *keys[] = {
        "first_stage_model.encoder.down.0.block.0.conv1.weight",
        "first_stage_model.encoder.down.3.block.0.conv1.weight",
        "first_stage_model.decoder.up.0.block.0.conv1.weight",
        "first_stage_model.decoder.up.3.block.0.conv1.weight",
    };
    vf_sd_layout lay;
    CHECK_OK(vf_sd_layout_build("vae", keys, 4, &lay));
    CHECK(lay.vae_levels == 4 && lay.unet_levels == 0);
    const vf_component V = VF_COMPONENT_VAE;
    map_sd(&lay, "first_stage_model.decoder.up.0.block.2.conv1.weight",
           "decoder.up_blocks.3.resnets.2.conv1.weight", V);
    map_sd(&lay, "first_stage_model.decoder.up.3.upsample.conv.weight",
           "decoder.up_blocks.0.upsamplers.0.conv.weight", V);
    map_sd(&lay, "first_stage_model.encoder.down.1.block.0.nin_shortcut.bias",
           "encoder.down_blocks.1.resnets.0.conv_shortcut.bias", V);
    map_sd(&lay, "first_stage_model.encoder.down.2.downsample.conv.weight",
           "encoder.down_blocks.2.downsamplers.0.conv.weight", V);
    map_sd(&lay, "first_stage_model.encoder.mid.block_2.norm2.weight",
           "encoder.mid_block.resnets.1.norm2.weight", V);
    map_sd(&lay, "first_stage_model.decoder.mid.attn_1.norm.bias",
           "decoder.mid_block.attentions.0.group_norm.bias", V);
    map_sd(&lay, "first_stage_model.decoder.norm_out.weight", "decoder.conv_norm_out.weight", V);
    map_sd(&lay, "first_stage_model.post_quant_conv.weight", "post_quant_conv.weight", V);
    map_sd(&lay, "first_stage_model.decoder.up.4.block.0.conv1.weight", NULL, V);
    vf_keymap_result r;
    vf_keymap_sd(&lay, "first_stage_model.encoder.mid.attn_1.proj_out.weight", &r);
    CHECK(r.kind == VF_KEYMAP_MAPPED && r.view == VF_VIEW_LINEAR &&
          strcmp(r.name[0], "encoder.mid_block.attentions.0.to_out.0.weight") == 0);

    const vf_component L = VF_COMPONENT_TEXT_ENCODER, G = VF_COMPONENT_TEXT_ENCODER_2;
    map_sd(&lay, "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.weight",
           "text_model.encoder.layers.3.mlp.fc1.weight", L);
    map_sd(&lay, "cond_stage_model.transformer.embeddings.token_embedding.weight",
           "text_model.embeddings.token_embedding.weight", L);
    map_sd(&lay, "cond_stage_model.transformer.final_layer_norm.bias",
           "text_model.final_layer_norm.bias", L);
    map_sd(&lay, "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
           "text_model.final_layer_norm.weight", L);
    map_sd(&lay, "conditioner.embedders.1.model.positional_embedding",
           "text_model.embeddings.position_embedding.weight", G);
    map_sd(&lay, "conditioner.embedders.1.model.transformer.resblocks.7.ln_2.bias",
           "text_model.encoder.layers.7.layer_norm2.bias", G);
    map_sd(&lay, "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_proj.weight",
           "text_model.encoder.layers.0.mlp.fc2.weight", G);
    map_sd(&lay, "conditioner.embedders.1.model.ln_final.weight", "text_model.final_layer_norm.weight", G);
    vf_keymap_sd(&lay, "conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight", &r);
    CHECK(r.kind == VF_KEYMAP_MAPPED && r.view == VF_VIEW_ROWS3 && r.n == 3 && r.comp == G);
    CHECK(strcmp(r.name[0], "text_model.encoder.layers.2.self_attn.q_proj.weight") == 0);
    CHECK(strcmp(r.name[2], "text_model.encoder.layers.2.self_attn.v_proj.weight") == 0);
    vf_keymap_sd(&lay, "conditioner.embedders.1.model.text_projection", &r);
    CHECK(r.kind == VF_KEYMAP_MAPPED && r.view == VF_VIEW_TRANSPOSE &&
          strcmp(r.name[0], "text_projection.weight") == 0);

    static const char *const ignored[] = {
        "alphas_cumprod", "betas", "sqrt_recip_alphas_cumprod", "log_one_minus_alphas_cumprod",
        "posterior_mean_coef1", "model_ema.decay", "model_ema.diffusion_modelinput_blocks00weight",
        "conditioner.embedders.1.model.logit_scale",
        "cond_stage_model.transformer.text_model.embeddings.position_ids",
    };
    for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++) {
        vf_keymap_sd(&lay, ignored[i], &r);
        CHECK_MSG(r.kind == VF_KEYMAP_IGNORED, "%s", ignored[i]);
    }
    vf_keymap_sd(&lay, "something.else", &r);
    CHECK(r.kind == VF_KEYMAP_UNKNOWN);

    const char *sdxl[] = {"cond_stage_model.transformer.x", "conditioner.embedders.1.model.y"};
    CHECK(vf_keymap_detect_arch(sdxl, 2) == VF_ARCH_SDXL);
    CHECK(vf_keymap_detect_arch(sdxl, 1) == VF_ARCH_SD15);
    CHECK(vf_keymap_detect_arch(keys, 4) == VF_ARCH_UNKNOWN);

    vf_keymap_diffusers(V, "decoder.mid_block.attentions.0.proj_attn.weight", &r);
    CHECK(r.kind == VF_KEYMAP_MAPPED && r.view == VF_VIEW_LINEAR &&
          strcmp(r.name[0], "decoder.mid_block.attentions.0.to_out.0.weight") == 0);
    vf_keymap_diffusers(V, "encoder.mid_block.attentions.0.query.bias", &r);
    CHECK(strcmp(r.name[0], "encoder.mid_block.attentions.0.to_q.bias") == 0);
    vf_keymap_diffusers(V, "encoder.mid_block.attentions.0.group_norm.bias", &r);
    CHECK(r.view == VF_VIEW_PLAIN && strcmp(r.name[0], "encoder.mid_block.attentions.0.group_norm.bias") == 0);
    vf_keymap_diffusers(L, "text_model.embeddings.position_ids", &r);
    CHECK(r.kind == VF_KEYMAP_IGNORED);
    vf_keymap_diffusers(VF_COMPONENT_UNET, "down_blocks.0.resnets.0.conv1.weight", &r);
    CHECK(r.kind == VF_KEYMAP_MAPPED && strcmp(r.name[0], "down_blocks.0.resnets.0.conv1.weight") == 0);
}

/* ---- the reference fixtures ----------------------------------------------------------- */

static void check_pair(const char *shared, const char *name, vf_arch arch, int ncomp)
{
    char rel[128], rel2[128];
    snprintf(rel, sizeof rel, "%s/diffusers", name);
    snprintf(rel2, sizeof rel2, "%s/%s.safetensors", name, name);
    const char *dir = fixture(0, shared, rel), *file = fixture(1, shared, rel2);
    vf_checkpoint *a = NULL, *b = NULL;
    CHECK_OK(vf_checkpoint_open(dir, NULL, &a));
    CHECK_OK(vf_checkpoint_open(file, dir, &b));
    if (!a || !b)
        goto out;
    CHECK(vf_checkpoint_arch(a) == arch);
    CHECK(!vf_checkpoint_is_single_file(a) && vf_checkpoint_is_single_file(b));
    int n = 0;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++)
        n += vf_checkpoint_has(a, (vf_component)c);
    CHECK(n == ncomp);
    check_same(a, b, name);
    CHECK(vf_checkpoint_ignored_count(a) == 0 && vf_checkpoint_ignored_count(b) == 0);
    /* configs: the folder's own, and the single file's from config_dir */
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (!vf_checkpoint_has(a, (vf_component)c))
            continue;
        CHECK(vf_checkpoint_config(a, (vf_component)c) != NULL);
        CHECK(cJSON_Compare(vf_checkpoint_config(a, (vf_component)c),
                            vf_checkpoint_config(b, (vf_component)c), 1));
    }
    CHECK(vf_checkpoint_scheduler_config(a) != NULL);
    CHECK(cJSON_Compare(vf_checkpoint_scheduler_config(a), vf_checkpoint_scheduler_config(b), 1));
    CHECK(vf_checkpoint_force_zeros_for_empty_prompt(a) == (arch == VF_ARCH_SDXL));
    CHECK(vf_checkpoint_force_zeros_for_empty_prompt(b) == (arch == VF_ARCH_SDXL));
    const vf_ckpt_tensor *t = vf_checkpoint_find(b, VF_COMPONENT_UNET, "conv_in.weight");
    CHECK(t && t->ndim == 4 && t->dtype == VF_DTYPE_F16 && t->nbytes == (uint64_t)t->shape[0] * t->shape[1] * 9 * 2);
    CHECK(vf_checkpoint_find(b, VF_COMPONENT_UNET, "no.such.tensor") == NULL);
    CHECK(strcmp(vf_checkpoint_path(b), file) == 0);
out:
    vf_checkpoint_close(a);
    vf_checkpoint_close(b);
}

static void test_tiny_sd15(void)
{
    SKIP_WITHOUT_SHARED(shared);
    check_pair(shared, "tiny-sd15", VF_ARCH_SD15, 3);
}

static void test_tiny_sdxl(void)
{
    SKIP_WITHOUT_SHARED(shared);
    check_pair(shared, "tiny-sdxl", VF_ARCH_SDXL, 4);
    /* the views: q/k/v are row slices of in_proj, text_projection is transposed */
    vf_checkpoint *b = NULL;
    CHECK_OK(vf_checkpoint_open(fixture(1, shared, "tiny-sdxl/tiny-sdxl.safetensors"), NULL, &b));
    if (!b)
        return;
    const vf_component G = VF_COMPONENT_TEXT_ENCODER_2;
    const vf_ckpt_tensor *k = vf_checkpoint_find(b, G, "text_model.encoder.layers.1.self_attn.k_proj.weight");
    const vf_ckpt_tensor *p = vf_checkpoint_find(b, G, "text_projection.weight");
    CHECK(k && k->src_offset == k->nbytes && k->shape[0] * 3 == k->src->shape[0] && !k->transpose);
    CHECK(p && p->transpose && p->shape[0] == p->src->shape[1] && p->shape[1] == p->src->shape[0]);
    vf_checkpoint_close(b);
}

/* Configs inferred from shapes alone agree with diffusers' on every key shapes can tell. */
static void compare_keys(const cJSON *inf, const cJSON *ref, const char *const *keys, const char *what)
{
    for (size_t i = 0; keys[i]; i++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(inf, keys[i]);
        const cJSON *y = cJSON_GetObjectItemCaseSensitive(ref, keys[i]);
        CHECK_MSG(x && y && cJSON_Compare(x, y, 1), "%s: %s differs", what, keys[i]);
    }
}

static void check_inferred(const char *shared, const char *name, vf_arch arch)
{
    char rel[128], rel2[128];
    snprintf(rel, sizeof rel, "%s/diffusers", name);
    snprintf(rel2, sizeof rel2, "%s/%s.safetensors", name, name);
    vf_checkpoint *a = NULL, *b = NULL;
    CHECK_OK(vf_checkpoint_open(fixture(0, shared, rel), NULL, &a));
    CHECK_OK(vf_checkpoint_open(fixture(1, shared, rel2), NULL, &b));
    if (!a || !b)
        goto out;
    static const char *const text[] = {"hidden_size", "intermediate_size", "num_hidden_layers",
                                       "max_position_embeddings", "vocab_size", "hidden_act", NULL};
    static const char *const unet[] = {"in_channels", "out_channels", "block_out_channels",
                                       "layers_per_block", "down_block_types", "up_block_types",
                                       "cross_attention_dim", "use_linear_projection",
                                       "addition_embed_type", "addition_time_embed_dim",
                                       "projection_class_embeddings_input_dim", "mid_block_type", NULL};
    static const char *const vae[] = {"in_channels", "out_channels", "latent_channels",
                                      "block_out_channels", "layers_per_block", "scaling_factor",
                                      "down_block_types", "up_block_types", NULL};
    compare_keys(vf_checkpoint_config(b, VF_COMPONENT_TEXT_ENCODER),
                 vf_checkpoint_config(a, VF_COMPONENT_TEXT_ENCODER), text, "text_encoder");
    compare_keys(vf_checkpoint_config(b, VF_COMPONENT_UNET), vf_checkpoint_config(a, VF_COMPONENT_UNET),
                 unet, "unet");
    compare_keys(vf_checkpoint_config(b, VF_COMPONENT_VAE), vf_checkpoint_config(a, VF_COMPONENT_VAE),
                 vae, "vae");
    const cJSON *u = vf_checkpoint_config(b, VF_COMPONENT_UNET);
    const cJSON *depth = cJSON_GetObjectItemCaseSensitive(u, "transformer_layers_per_block");
    const cJSON *heads = cJSON_GetObjectItemCaseSensitive(u, "attention_head_dim");
    const cJSON *groups = cJSON_GetObjectItemCaseSensitive(u, "norm_num_groups");
    CHECK(cJSON_IsNumber(groups) && groups->valueint == 32);
    if (arch == VF_ARCH_SDXL) {
        static const char *const g[] = {"hidden_size", "intermediate_size", "num_hidden_layers",
                                        "projection_dim", "hidden_act", NULL};
        compare_keys(vf_checkpoint_config(b, VF_COMPONENT_TEXT_ENCODER_2),
                     vf_checkpoint_config(a, VF_COMPONENT_TEXT_ENCODER_2), g, "text_encoder_2");
        CHECK(cJSON_GetArraySize(depth) == 3 && cJSON_GetArrayItem(depth, 2)->valueint == 2);
        /* channels / 64, at least 1: [16, 32, 64] -> [1, 1, 1] */
        CHECK(cJSON_IsArray(heads) && cJSON_GetArrayItem(heads, 2)->valueint == 1);
    } else {
        CHECK(cJSON_GetArraySize(depth) == 4 && cJSON_GetArrayItem(depth, 0)->valueint == 1);
        CHECK(cJSON_IsNumber(heads) && heads->valueint == 8);
    }
    CHECK(vf_checkpoint_scheduler_config(b) == NULL);
    CHECK(vf_checkpoint_force_zeros_for_empty_prompt(b) == (arch == VF_ARCH_SDXL));
out:
    vf_checkpoint_close(a);
    vf_checkpoint_close(b);
}

static void test_inferred_configs(void)
{
    SKIP_WITHOUT_SHARED(shared);
    check_inferred(shared, "tiny-sd15", VF_ARCH_SD15);
    check_inferred(shared, "tiny-sdxl", VF_ARCH_SDXL);
}

/* A config_dir whose config does not describe the weights is refused. */
static void test_config_dir_mismatch(void)
{
    SKIP_WITHOUT_SHARED(shared);
    tmpd t;
    if (!tmp_open(&t, "ck"))
        return;
    mkdir_in(&t, "unet");
    mkdir_in(&t, "vae");
    link_in(&t, "vae/config.json", fixture(0, shared, "tiny-sdxl/diffusers/vae/config.json"));
    cJSON *cfg = NULL;
    CHECK_OK(vf_json_load(fixture(0, shared, "tiny-sdxl/diffusers/unet/config.json"), &cfg));
    if (cfg) {
        cJSON_ReplaceItemInObject(cfg, "block_out_channels", cJSON_CreateIntArray((int[]){16, 32, 32}, 3));
        char *s = cJSON_Print(cfg);
        write_text(tmp_path(&t, "unet/config.json"), s);
        cJSON_free(s);
        cJSON_Delete(cfg);
    }
    vf_checkpoint *ck = (vf_checkpoint *)1;
    CHECK(vf_checkpoint_open(fixture(1, shared, "tiny-sdxl/tiny-sdxl.safetensors"), t.dir, &ck) ==
          VF_ERR_SHAPE);
    CHECK(ck == NULL);
    CHECK(contains(vf_last_error(), "block_out_channels") && contains(vf_last_error(), "unet/config.json"));
    /* transformer depth that disagrees at a level with attention */
    CHECK_OK(vf_json_load(fixture(0, shared, "tiny-sdxl/diffusers/unet/config.json"), &cfg));
    if (cfg) {
        cJSON_ReplaceItemInObject(cfg, "transformer_layers_per_block", cJSON_CreateNumber(1));
        char *s = cJSON_Print(cfg);
        write_text(tmp_path(&t, "unet/config.json"), s);
        cJSON_free(s);
        cJSON_Delete(cfg);
    }
    CHECK(vf_checkpoint_open(fixture(1, shared, "tiny-sdxl/tiny-sdxl.safetensors"), t.dir, &ck) ==
          VF_ERR_SHAPE);
    CHECK(contains(vf_last_error(), "transformer_layers_per_block"));
    tmp_close(&t);
}

/* ---- diffusers spellings --------------------------------------------------------------- */

/* A diffusers folder in t: model_index.json from the fixture (or text), and
 * each of the fixture's components linked unless skipped. */
static void make_folder(tmpd *t, const char *shared, const char *name, const char *model_index,
                        const char *skip)
{
    static const char *const comps[] = {"text_encoder", "text_encoder_2", "unet", "vae", "scheduler"};
    char rel[256];
    for (size_t i = 0; i < sizeof comps / sizeof comps[0]; i++) {
        snprintf(rel, sizeof rel, "%s/diffusers/%s", name, comps[i]);
        if (skip && strcmp(skip, comps[i]) == 0)
            continue;
        if (access(fixture(2, shared, rel), F_OK) == 0)
            link_in(t, comps[i], g_path[2]);
    }
    if (model_index) {
        write_text(tmp_path(t, "model_index.json"), model_index);
    } else {
        snprintf(rel, sizeof rel, "%s/diffusers/model_index.json", name);
        link_in(t, "model_index.json", fixture(2, shared, rel));
    }
}

static void test_fp16_variant(void)
{
    SKIP_WITHOUT_SHARED(shared);
    tmpd t;
    if (!tmp_open(&t, "ck"))
        return;
    make_folder(&t, shared, "tiny-sdxl", NULL, "text_encoder_2");
    mkdir_in(&t, "text_encoder_2");
    link_in(&t, "text_encoder_2/config.json",
            fixture(0, shared, "tiny-sdxl/diffusers/text_encoder_2/config.json"));
    link_in(&t, "text_encoder_2/model.fp16.safetensors",
            fixture(0, shared, "tiny-sdxl/diffusers/text_encoder_2/model.safetensors"));
    vf_checkpoint *a = NULL, *b = NULL;
    CHECK_OK(vf_checkpoint_open(fixture(1, shared, "tiny-sdxl/diffusers"), NULL, &a));
    CHECK_OK(vf_checkpoint_open(t.dir, NULL, &b));
    if (a && b)
        check_same(a, b, "fp16 variant");
    const vf_ckpt_tensor *x = b ? vf_checkpoint_at(b, VF_COMPONENT_TEXT_ENCODER_2, 0) : NULL;
    CHECK(x && contains(vf_st_path(x->file), "model.fp16.safetensors"));
    vf_checkpoint_close(a);
    vf_checkpoint_close(b);
    tmp_close(&t);
}

/* transformers 5 writes CLIPTextModel weights without the "text_model."
 * prefix: such a text encoder reads as the same canonical tensors. */
static int strip_text_model(int index, char *name, size_t cap, vf_st_write_tensor *w, void *ctx)
{
    (void)index, (void)cap, (void)w, (void)ctx;
    if (strncmp(name, "text_model.", 11) == 0)
        memmove(name, name + 11, strlen(name + 11) + 1);
    return 1;
}

static void test_unprefixed_text_encoder(void)
{
    SKIP_WITHOUT_SHARED(shared);
    tmpd t;
    if (!tmp_open(&t, "ck"))
        return;
    make_folder(&t, shared, "tiny-sdxl", NULL, "text_encoder_2");
    mkdir_in(&t, "text_encoder_2");
    link_in(&t, "text_encoder_2/config.json",
            fixture(0, shared, "tiny-sdxl/diffusers/text_encoder_2/config.json"));
    CHECK_OK(copy_st(fixture(3, shared, "tiny-sdxl/diffusers/text_encoder_2/model.safetensors"),
                     tmp_path(&t, "text_encoder_2/model.safetensors"), strip_text_model, NULL, NULL, 0));
    vf_checkpoint *a = NULL, *b = NULL;
    CHECK_OK(vf_checkpoint_open(fixture(1, shared, "tiny-sdxl/diffusers"), NULL, &a));
    CHECK_OK(vf_checkpoint_open(t.dir, NULL, &b));
    if (a && b)
        check_same(a, b, "text encoder without the text_model. prefix");
    CHECK(b && vf_checkpoint_find(b, VF_COMPONENT_TEXT_ENCODER_2, "text_model.final_layer_norm.weight") &&
          vf_checkpoint_find(b, VF_COMPONENT_TEXT_ENCODER_2, "text_projection.weight"));
    vf_checkpoint_close(a);
    vf_checkpoint_close(b);
    tmp_close(&t);
}

typedef struct {
    int half; /* keep tensors with index % 2 == half; -1 keeps all */
    const char *extra_name; /* also keep this one */
} split_ctx;

static int split_edit(int index, char *name, size_t cap, vf_st_write_tensor *w, void *ctx)
{
    const split_ctx *s = ctx;
    (void)cap, (void)w;
    return s->half < 0 || index % 2 == s->half || (s->extra_name && strcmp(name, s->extra_name) == 0);
}

static const char *const g_index_fmt =
    "{\"metadata\": {\"total_size\": 1}, \"weight_map\": {%s}}";

/* Writes an index for the two shards of text_encoder: even tensors in the first,
 * odd in the second, plus an entry for `missing` when given. */
static void write_index(tmpd *t, const char *src, const char *missing)
{
    vf_st_file *f;
    if (vf_st_open(src, &f) != VF_OK) {
        CHECK(0);
        return;
    }
    size_t cap = 1 << 16, len = 0;
    char *map = calloc(1, cap), *text = calloc(1, cap + 256);
    for (size_t i = 0; i < vf_st_count(f); i++) {
        int odd = (int)(i % 2);
        len += (size_t)snprintf(map + len, cap - len, "%s\"%s\": \"%s\"", i ? ", " : "",
                                vf_st_at(f, i)->name, odd ? "model-2.safetensors" : "model-1.safetensors");
    }
    if (missing)
        len += (size_t)snprintf(map + len, cap - len, ", \"%s\": \"model-1.safetensors\"", missing);
    snprintf(text, cap + 256, g_index_fmt, map);
    write_text(tmp_path(t, "text_encoder/model.safetensors.index.json"), text);
    free(map);
    free(text);
    vf_st_close(f);
}

static void test_sharded(void)
{
    SKIP_WITHOUT_SHARED(shared);
    tmpd t;
    if (!tmp_open(&t, "ck"))
        return;
    const char *src = fixture(3, shared, "tiny-sd15/diffusers/text_encoder/model.safetensors");
    make_folder(&t, shared, "tiny-sd15", NULL, "text_encoder");
    mkdir_in(&t, "text_encoder");
    link_in(&t, "text_encoder/config.json", fixture(0, shared, "tiny-sd15/diffusers/text_encoder/config.json"));
    split_ctx even = {0, NULL}, odd = {1, NULL};
    CHECK_OK(copy_st(src, tmp_path(&t, "text_encoder/model-1.safetensors"), split_edit, &even, NULL, 0));
    CHECK_OK(copy_st(src, tmp_path(&t, "text_encoder/model-2.safetensors"), split_edit, &odd, NULL, 0));
    write_index(&t, src, NULL);

    vf_checkpoint *a = NULL, *b = NULL;
    CHECK_OK(vf_checkpoint_open(fixture(1, shared, "tiny-sd15/diffusers"), NULL, &a));
    CHECK_OK(vf_checkpoint_open(t.dir, NULL, &b));
    if (a && b)
        check_same(a, b, "sharded");
    int from2 = 0;
    for (size_t i = 0; b && i < vf_checkpoint_count(b, VF_COMPONENT_TEXT_ENCODER); i++)
        from2 += contains(vf_st_path(vf_checkpoint_at(b, VF_COMPONENT_TEXT_ENCODER, i)->file), "model-2");
    CHECK(from2 == 18); /* 36 tensors, half in each shard */
    vf_checkpoint_close(b);

    /* the index names a tensor its shard does not hold */
    write_index(&t, src, "text_model.encoder.layers.9.mlp.fc1.weight");
    CHECK(vf_checkpoint_open(t.dir, NULL, &b) == VF_ERR_NOT_FOUND);
    CHECK(contains(vf_last_error(), "text_model.encoder.layers.9.mlp.fc1.weight") &&
          contains(vf_last_error(), "model.safetensors.index.json"));

    /* a tensor stored in both shards */
    const vf_ckpt_tensor *one = a ? vf_checkpoint_at(a, VF_COMPONENT_TEXT_ENCODER, 0) : NULL;
    if (one) {
        split_ctx odd_plus = {1, one->src->name};
        CHECK_OK(copy_st(src, tmp_path(&t, "text_encoder/model-2.safetensors"), split_edit, &odd_plus,
                         NULL, 0));
        write_index(&t, src, NULL);
        CHECK(vf_checkpoint_open(t.dir, NULL, &b) == VF_ERR_FORMAT);
        CHECK(contains(vf_last_error(), "two shards") && contains(vf_last_error(), one->src->name));
    }
    /* a shard the index names that does not exist */
    write_text(tmp_path(&t, "text_encoder/model.safetensors.index.json"),
               "{\"weight_map\": {\"a\": \"model-3.safetensors\"}}");
    CHECK(vf_checkpoint_open(t.dir, NULL, &b) == VF_ERR_NOT_FOUND);
    CHECK(contains(vf_last_error(), "model-3.safetensors"));
    /* a shard name that leaves the folder */
    write_text(tmp_path(&t, "text_encoder/model.safetensors.index.json"),
               "{\"weight_map\": {\"a\": \"../unet/diffusion_pytorch_model.safetensors\"}}");
    CHECK(vf_checkpoint_open(t.dir, NULL, &b) == VF_ERR_FORMAT);
    vf_checkpoint_close(a);
    tmp_close(&t);
}

/* Older diffusers VAE names (query/key/value/proj_attn) with 1x1-conv shapes. */
static int old_vae_edit(int index, char *name, size_t cap, vf_st_write_tensor *w, void *ctx)
{
    static const char *const pairs[][2] = {
        {"to_q.", "query."}, {"to_k.", "key."}, {"to_v.", "value."}, {"to_out.0.", "proj_attn."}};
    (void)index, (void)ctx;
    char *p = strstr(name, "mid_block.attentions.0.");
    if (!p)
        return 1;
    p += strlen("mid_block.attentions.0.");
    for (size_t i = 0; i < 4; i++) {
        size_t n = strlen(pairs[i][0]);
        if (strncmp(p, pairs[i][0], n) != 0)
            continue;
        char tail[64];
        snprintf(tail, sizeof tail, "%s", p + n);
        snprintf(p, cap - (size_t)(p - name), "%s%s", pairs[i][1], tail);
        if (w->ndim == 2) {
            w->ndim = 4;
            w->shape[2] = w->shape[3] = 1;
        }
    }
    return 1;
}

static void test_old_vae_names(void)
{
    SKIP_WITHOUT_SHARED(shared);
    tmpd t;
    if (!tmp_open(&t, "ck"))
        return;
    make_folder(&t, shared, "tiny-sd15", NULL, "vae");
    mkdir_in(&t, "vae");
    link_in(&t, "vae/config.json", fixture(0, shared, "tiny-sd15/diffusers/vae/config.json"));
    CHECK_OK(copy_st(fixture(0, shared, "tiny-sd15/diffusers/vae/diffusion_pytorch_model.safetensors"),
                     tmp_path(&t, "vae/diffusion_pytorch_model.safetensors"), old_vae_edit, NULL, NULL, 0));
    vf_checkpoint *a = NULL, *b = NULL;
    CHECK_OK(vf_checkpoint_open(fixture(1, shared, "tiny-sd15/diffusers"), NULL, &a));
    CHECK_OK(vf_checkpoint_open(t.dir, NULL, &b));
    if (a && b)
        check_same(a, b, "old vae names");
    const vf_ckpt_tensor *x = b ? vf_checkpoint_find(b, VF_COMPONENT_VAE, "decoder.mid_block.attentions.0.to_out.0.weight") : NULL;
    CHECK(x && x->ndim == 2 && x->src->ndim == 4 && contains(x->src->name, "proj_attn"));
    vf_checkpoint_close(a);
    vf_checkpoint_close(b);
    tmp_close(&t);
}

/* Unused tensors of published single files are accepted and counted. */
static void test_ignored(void)
{
    SKIP_WITHOUT_SHARED(shared);
    tmpd t;
    if (!tmp_open(&t, "ck"))
        return;
    static const float sched[4] = {0.9f, 0.8f, 0.7f, 0.6f};
    static const int64_t ids[77] = {0};
    const vf_st_write_tensor extra[] = {
        {"alphas_cumprod", VF_DTYPE_F32, 1, {4}, sched},
        {"betas", VF_DTYPE_F32, 1, {4}, sched},
        {"model_ema.decay", VF_DTYPE_F32, 0, {0}, sched},
        {"cond_stage_model.transformer.text_model.embeddings.position_ids", VF_DTYPE_I64, 2, {1, 77}, ids},
        {"lora_unet_something", VF_DTYPE_F32, 1, {4}, sched},
    };
    const char *src = fixture(0, shared, "tiny-sd15/tiny-sd15.safetensors");
    CHECK_OK(copy_st(src, tmp_path(&t, "x.safetensors"), NULL, NULL, extra, 5));
    vf_checkpoint *a = NULL, *b = NULL;
    CHECK_OK(vf_checkpoint_open(src, NULL, &a));
    CHECK_OK(vf_checkpoint_open(t.path, NULL, &b));
    if (a && b) {
        check_same(a, b, "ignored");
        CHECK(vf_checkpoint_ignored_count(a) == 0);
        CHECK(vf_checkpoint_ignored_count(b) == 5);
    }
    vf_checkpoint_close(a);
    vf_checkpoint_close(b);
    tmp_close(&t);
}

/* ---- errors ----------------------------------------------------------------------------- */

static void expect_error(const char *path, const char *config_dir, vf_status want, const char *n1,
                         const char *n2)
{
    vf_checkpoint *ck = (vf_checkpoint *)1;
    vf_status st = vf_checkpoint_open(path, config_dir, &ck);
    CHECK_MSG(st == want, "%s: got %s (%s), want %s", path, vf_status_str(st), vf_last_error(),
              vf_status_str(want));
    CHECK(ck == NULL);
    CHECK_MSG(!n1 || contains(vf_last_error(), n1), "message '%s' lacks '%s'", vf_last_error(), n1);
    CHECK_MSG(!n2 || contains(vf_last_error(), n2), "message '%s' lacks '%s'", vf_last_error(), n2);
    if (st == VF_OK)
        vf_checkpoint_close(ck);
}

static void test_folder_errors(void)
{
    SKIP_WITHOUT_SHARED(shared);
    tmpd t;
    if (!tmp_open(&t, "ck"))
        return;
    /* no model_index.json */
    expect_error(t.dir, NULL, VF_ERR_NOT_FOUND, t.dir, "model_index.json");
    /* unknown pipeline class */
    write_text(tmp_path(&t, "model_index.json"), "{\"_class_name\": \"KandinskyPipeline\"}");
    expect_error(t.dir, NULL, VF_ERR_UNSUPPORTED, "model_index.json", "KandinskyPipeline");
    write_text(tmp_path(&t, "model_index.json"), "{\"_class_name\": 3}");
    expect_error(t.dir, NULL, VF_ERR_FORMAT, "model_index.json", "_class_name");
    tmp_close(&t);

    /* a listed component whose folder is missing */
    if (!tmp_open(&t, "ck"))
        return;
    make_folder(&t, shared, "tiny-sdxl", NULL, "text_encoder_2");
    expect_error(t.dir, NULL, VF_ERR_NOT_FOUND, "text_encoder_2", NULL);
    /* ... and with a pickle only */
    mkdir_in(&t, "text_encoder_2");
    link_in(&t, "text_encoder_2/config.json", fixture(0, shared, "tiny-sdxl/diffusers/text_encoder_2/config.json"));
    write_text(tmp_path(&t, "text_encoder_2/pytorch_model.bin"), "not really a pickle");
    expect_error(t.dir, NULL, VF_ERR_UNSUPPORTED, "text_encoder_2/pytorch_model.bin", "convert to safetensors");
    /* no weights at all */
    remove(tmp_path(&t, "text_encoder_2/pytorch_model.bin"));
    expect_error(t.dir, NULL, VF_ERR_NOT_FOUND, "text_encoder_2", "no weights");
    /* no config.json */
    remove(tmp_path(&t, "text_encoder_2/config.json"));
    expect_error(t.dir, NULL, VF_ERR_NOT_FOUND, "text_encoder_2/config.json", NULL);
    tmp_close(&t);

    /* components listed as [null, null] are absent; force_zeros follows model_index */
    if (!tmp_open(&t, "ck"))
        return;
    make_folder(&t, shared, "tiny-sd15",
                "{\"_class_name\": \"StableDiffusionPipeline\", \"unet\": [\"diffusers\", "
                "\"UNet2DConditionModel\"], \"text_encoder\": [null, null], "
                "\"force_zeros_for_empty_prompt\": true}",
                NULL);
    vf_checkpoint *ck = NULL;
    CHECK_OK(vf_checkpoint_open(t.dir, NULL, &ck));
    if (ck) {
        CHECK(vf_checkpoint_has(ck, VF_COMPONENT_UNET) && !vf_checkpoint_has(ck, VF_COMPONENT_VAE));
        CHECK(!vf_checkpoint_has(ck, VF_COMPONENT_TEXT_ENCODER));
        CHECK(vf_checkpoint_count(ck, VF_COMPONENT_VAE) == 0 && vf_checkpoint_config(ck, VF_COMPONENT_VAE) == NULL);
        CHECK(vf_checkpoint_force_zeros_for_empty_prompt(ck) == 1);
    }
    vf_checkpoint_close(ck);
    tmp_close(&t);
}

static void test_single_errors(void)
{
    tmpd t;
    if (!tmp_open(&t, "ck"))
        return;
    static const float v[4] = {1, 2, 3, 4};
    const vf_st_write_tensor unknown[] = {
        {"foo.weight", VF_DTYPE_F32, 1, {4}, v},
        {"model.diffusion_model.input_blocks.0.0.weight", VF_DTYPE_F32, 1, {4}, v},
    };
    CHECK_OK(vf_st_write(tmp_path(&t, "unknown.safetensors"), unknown, 2, NULL));
    expect_error(t.path, NULL, VF_ERR_UNSUPPORTED, "unknown.safetensors", "architecture not recognised");
    /* a fused in_proj whose rows are not a multiple of 3 */
    static const float w[8] = {0};
    const vf_st_write_tensor odd[] = {
        {"conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", VF_DTYPE_F32, 2, {4, 2}, w},
    };
    CHECK_OK(vf_st_write(tmp_path(&t, "odd.safetensors"), odd, 1, NULL));
    expect_error(t.path, NULL, VF_ERR_SHAPE, "odd.safetensors", "in_proj_weight");
    /* two stored tensors with one canonical name */
    const vf_st_write_tensor two[] = {
        {"cond_stage_model.transformer.text_model.final_layer_norm.weight", VF_DTYPE_F32, 1, {4}, v},
        {"cond_stage_model.transformer.final_layer_norm.weight", VF_DTYPE_F32, 1, {4}, v},
    };
    CHECK_OK(vf_st_write(tmp_path(&t, "two.safetensors"), two, 2, NULL));
    expect_error(t.path, NULL, VF_ERR_FORMAT, "two.safetensors", "text_model.final_layer_norm.weight");
    /* a text encoder too incomplete to infer its config */
    const vf_st_write_tensor lone[] = {
        {"cond_stage_model.transformer.text_model.final_layer_norm.weight", VF_DTYPE_F32, 1, {4}, v},
    };
    CHECK_OK(vf_st_write(tmp_path(&t, "lone.safetensors"), lone, 1, NULL));
    expect_error(t.path, NULL, VF_ERR_NOT_FOUND, "lone.safetensors", "token_embedding");
    expect_error(tmp_path(&t, "absent.safetensors"), NULL, VF_ERR_NOT_FOUND, "absent.safetensors", NULL);
    vf_checkpoint *ck = (vf_checkpoint *)1;
    CHECK(vf_checkpoint_open(NULL, NULL, &ck) == VF_ERR_INVALID_ARG && ck == NULL);
    tmp_close(&t);
}

/* Every allocation of opening fails in turn: each is reported, nothing leaks. */
static void fail_every_alloc(const char *path, const char *config_dir)
{
    int failures = 0, wrong = 0;
    for (uint64_t k = 1; k < 200000; k++) {
        vf_checkpoint *ck = NULL;
        vf_fault_alloc_fail_at(k);
        vf_status st = vf_checkpoint_open(path, config_dir, &ck);
        vf_fault_alloc_fail_at(0);
        if (st == VF_OK) {
            vf_checkpoint_close(ck);
            break;
        }
        failures++;
        if (st != VF_ERR_NO_MEMORY || ck != NULL) {
            if (wrong++ < 3)
                fprintf(stderr, "allocation %llu: %s: %s\n", (unsigned long long)k, vf_status_str(st),
                        vf_last_error());
        }
    }
    printf("     %s: %d allocation failures reported\n", path, failures);
    CHECK_MSG(failures > 10 && wrong == 0, "%s: %d failures, %d wrong", path, failures, wrong);
}

static void test_alloc_failures(void)
{
    SKIP_WITHOUT_SHARED(shared);
    fail_every_alloc(fixture(0, shared, "tiny-sdxl/diffusers"), NULL);
    fail_every_alloc(fixture(1, shared, "tiny-sdxl/tiny-sdxl.safetensors"), g_path[0]);
}

/* The pure key-map cases run without the shared tree; skipping (77) comes after
 * them so that their failures are never hidden by the skip. */
int main(void)
{
    static const vf_test_case pure[] = {
        TEST(test_keymap_unet_sd15), TEST(test_keymap_unet_layouts), TEST(test_keymap_vae_clip),
        TEST(test_single_errors),
    };
    static const vf_test_case all[] = {
        TEST(test_keymap_unet_sd15), TEST(test_keymap_unet_layouts), TEST(test_keymap_vae_clip),
        TEST(test_single_errors), TEST(test_tiny_sd15), TEST(test_tiny_sdxl),
        TEST(test_inferred_configs), TEST(test_config_dir_mismatch), TEST(test_fp16_variant),
        TEST(test_unprefixed_text_encoder),
        TEST(test_sharded), TEST(test_old_vae_names), TEST(test_ignored), TEST(test_folder_errors),
        TEST(test_alloc_failures),
    };
    if (!vf_test_shared()) {
        int rc = vf_test_run(pure, (int)(sizeof pure / sizeof pure[0]));
        printf("SKIP: ../shared/reference not found (set VF_SHARED)\n");
        return rc ? rc : 77;
    }
    return vf_test_run(all, (int)(sizeof all / sizeof all[0]));
}
