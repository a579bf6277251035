/* VAE decoder against diffusers: decode latents_after_step3 of the tiny SDXL and
 * SD1.5 fixtures from the diffusers folders and the single files, compare the
 * decoded tensor and the final [0,1] image; the block list covers exactly the
 * decoder's tensors; config and binding errors name what is wrong; allocation
 * failures anywhere in a decode are clean errors. */
#include "test.h"

#include "core/alloc.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "mem/residency.h"
#include "model/vae.h"

#include <stdint.h>

/* Reads an F32 tensor from a reference file into a new buffer of n floats. */
static float *ref_tensor(const char *path, const char *name, size_t n)
{
    vf_st_file *f = NULL;
    float *out = NULL;
    if (vf_st_open(path, &f) != VF_OK) {
        fprintf(stderr, "%s: %s\n", path, vf_last_error());
        return NULL;
    }
    const vf_st_tensor *t = vf_st_find(f, name);
    if (t && t->dtype == VF_DTYPE_F32 && t->nbytes == n * sizeof(float)) {
        out = malloc(n * sizeof(float));
        if (vf_st_read(f, t, 0, out, t->nbytes) != VF_OK) {
            free(out);
            out = NULL;
        }
    }
    if (!out)
        fprintf(stderr, "%s: tensor '%s' missing or not F32[%zu]\n", path, name, n);
    vf_st_close(f);
    return out;
}

/* An opened VAE: checkpoint, bound block list, residency. */
typedef struct vae_fixture {
    vf_checkpoint *ck;
    vf_blocklist bl;
    vf_vae_config cfg;
    vf_residency *r;
} vae_fixture;

static int fixture_open(vae_fixture *fx, const char *path, const char *config_dir)
{
    memset(fx, 0, sizeof *fx);
    vf_bl_init(&fx->bl, VF_COMPONENT_VAE);
    vf_status st = vf_checkpoint_open(path, config_dir, &fx->ck);
    const cJSON *config = st == VF_OK ? vf_checkpoint_config(fx->ck, VF_COMPONENT_VAE) : NULL;
    if (st == VF_OK)
        st = vf_vae_config_parse(config, &fx->cfg);
    if (st == VF_OK)
        st = vf_vae_describe(config, &fx->bl);
    if (st == VF_OK)
        st = vf_bl_bind(&fx->bl, fx->ck);
    if (st == VF_OK)
        st = vf_residency_create(fx->ck, &fx->bl, NULL, &fx->r);
    if (st != VF_OK)
        fprintf(stderr, "%s: %s\n", path, vf_last_error());
    CHECK(st == VF_OK);
    return st == VF_OK;
}

static void fixture_close(vae_fixture *fx)
{
    vf_residency_free(fx->r);
    vf_bl_free(&fx->bl);
    vf_checkpoint_close(fx->ck);
}

/* Decodes latents_after_step3 with the checkpoint at path and compares. */
static void check_decode(const char *shared, const char *model, const char *path,
                         const char *config_dir, int has_vae_decoded)
{
    char ref[1024];
    snprintf(ref, sizeof ref, "%s/reference/%s/reference.safetensors", shared, model);
    float *lat = ref_tensor(ref, "latents_after_step3", 4 * 8 * 8);
    float *want_img = ref_tensor(ref, "image", 64 * 64 * 3);
    float *want_dec = has_vae_decoded ? ref_tensor(ref, "vae_decoded", 3 * 64 * 64) : NULL;
    vae_fixture fx;
    CHECK(lat && want_img && (want_dec || !has_vae_decoded));
    if (!lat || !want_img || !fixture_open(&fx, path, config_dir))
        goto out_ref;
    CHECK(vf_vae_scale(&fx.cfg) == 8);
    float *dec = malloc(2 * 3 * 64 * 64 * sizeof(float));
    float *img = malloc(64 * 64 * 3 * sizeof(float));
    uint8_t *rgb = malloc(64 * 64 * 3);
    CHECK_OK(vf_vae_decode(fx.r, &fx.bl, &fx.cfg, lat, 1, 8, 8, dec));
    char what[256];
    if (want_dec) {
        snprintf(what, sizeof what, "%s vae_decoded (%s)", model, path);
        CHECK_CLOSE(what, dec, want_dec, 3 * 64 * 64, 1e-4);
    }
    vf_image_from_decoded(dec, 1, 64, 64, img, rgb);
    snprintf(what, sizeof what, "%s image (%s)", model, path);
    CHECK_CLOSE(what, img, want_img, 64 * 64 * 3, 1e-4);
    /* 8-bit: the reference image through numpy's round; at most one level off
     * where float noise straddles a .5 boundary, for at most 0.1% of bytes
     * (measured: 0 for tiny-sdxl, 2 for tiny-sd15). */
    int off = 0, far = 0;
    for (int i = 0; i < 64 * 64 * 3; i++) {
        int want = (int)nearbyintf(want_img[i] * 255.0f);
        off += rgb[i] != want;
        far += abs((int)rgb[i] - want) > 1;
    }
    CHECK(far == 0);
    CHECK_MSG(off <= 12, "%d of %d bytes differ by one", off, 64 * 64 * 3);

    /* A batch of two decodes each image alone (same input twice here). */
    float *lat2 = malloc(2 * 4 * 64 * sizeof(float));
    memcpy(lat2, lat, 4 * 64 * sizeof(float));
    memcpy(lat2 + 4 * 64, lat, 4 * 64 * sizeof(float));
    float *dec2 = malloc(2 * 3 * 64 * 64 * sizeof(float));
    CHECK_OK(vf_vae_decode(fx.r, &fx.bl, &fx.cfg, lat2, 2, 8, 8, dec2));
    CHECK(memcmp(dec2, dec, 3 * 64 * 64 * sizeof(float)) == 0);
    CHECK(memcmp(dec2 + 3 * 64 * 64, dec, 3 * 64 * 64 * sizeof(float)) == 0);
    free(lat2);
    free(dec2);
    free(dec);
    free(img);
    free(rgb);
    fixture_close(&fx);
out_ref:
    free(lat);
    free(want_img);
    free(want_dec);
}

static void test_sdxl_diffusers(void)
{
    SKIP_WITHOUT_SHARED(shared);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/reference/tiny-sdxl/diffusers", shared);
    check_decode(shared, "tiny-sdxl", dir, NULL, 1);
}

static void test_sdxl_single_file(void)
{
    SKIP_WITHOUT_SHARED(shared);
    char dir[1024], file[1024];
    snprintf(dir, sizeof dir, "%s/reference/tiny-sdxl/diffusers", shared);
    snprintf(file, sizeof file, "%s/reference/tiny-sdxl/tiny-sdxl.safetensors", shared);
    check_decode(shared, "tiny-sdxl", file, dir, 1);
}

static void test_sd15_diffusers(void)
{
    SKIP_WITHOUT_SHARED(shared);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/reference/tiny-sd15/diffusers", shared);
    check_decode(shared, "tiny-sd15", dir, NULL, 0);
}

static void test_sd15_single_file(void)
{
    SKIP_WITHOUT_SHARED(shared);
    char dir[1024], file[1024];
    snprintf(dir, sizeof dir, "%s/reference/tiny-sd15/diffusers", shared);
    snprintf(file, sizeof file, "%s/reference/tiny-sd15/tiny-sd15.safetensors", shared);
    check_decode(shared, "tiny-sd15", file, dir, 0);
}

/* The block list names every decoder tensor of the checkpoint exactly once and
 * no encoder tensor. */
static void test_describe_covers_decoder(void)
{
    SKIP_WITHOUT_SHARED(shared);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/reference/tiny-sdxl/diffusers", shared);
    vae_fixture fx;
    if (!fixture_open(&fx, dir, NULL))
        return;
    size_t n = vf_checkpoint_count(fx.ck, VF_COMPONENT_VAE), decoder = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = vf_checkpoint_at(fx.ck, VF_COMPONENT_VAE, i)->name;
        if (strncmp(name, "decoder.", 8) == 0 || strncmp(name, "post_quant_conv.", 16) == 0)
            decoder++;
    }
    CHECK(decoder > 0 && (size_t)fx.bl.nw == decoder);
    for (int i = 0; i < fx.bl.nw; i++) {
        CHECK(fx.bl.w[i].t != NULL);
        CHECK(strncmp(fx.bl.w[i].name, "encoder.", 8) != 0);
        for (int j = 0; j < i; j++)
            CHECK(strcmp(fx.bl.w[i].name, fx.bl.w[j].name) != 0);
    }
    /* 4 levels x 2 resnets + 3 upsamplers + post_quant_conv, conv_in, 2 mid
     * resnets, mid attention, output. */
    CHECK(fx.bl.nblocks == 8 + 3 + 6);
    CHECK(strcmp(fx.bl.blocks[0].name, "post_quant_conv") == 0);
    CHECK(strcmp(fx.bl.blocks[3].name, "decoder.mid_block.attentions.0") == 0);
    CHECK(strcmp(fx.bl.blocks[fx.bl.nblocks - 1].name, "decoder") == 0);
    CHECK(vf_bl_bytes(&fx.bl) > 0);
    fixture_close(&fx);
}

static int parse_str(const char *json, vf_vae_config *c)
{
    cJSON *j = cJSON_Parse(json);
    vf_status st = vf_vae_config_parse(j, c);
    cJSON_Delete(j);
    return st;
}

static void test_config_errors(void)
{
    vf_vae_config c;
    CHECK(parse_str("{\"block_out_channels\":[128,256,512,512],\"norm_num_groups\":32,"
                    "\"scaling_factor\":0.13025,\"shift_factor\":null}", &c) == VF_OK);
    CHECK(c.nlevels == 4 && c.layers_per_block == 1 && c.latent_channels == 4);
    CHECK(c.out_channels == 3 && c.use_post_quant_conv && c.mid_attention);
    CHECK(fabs(c.scaling_factor - 0.13025) < 1e-12 && c.shift_factor == 0);
    CHECK(!c.has_latents_mean_std && vf_vae_scale(&c) == 8);
    CHECK(parse_str("{\"block_out_channels\":[32,64],\"norm_num_groups\":8,"
                    "\"latents_mean\":[1,2,3,4],\"latents_std\":[1,1,1,2],"
                    "\"use_post_quant_conv\":false}", &c) == VF_OK);
    CHECK(c.has_latents_mean_std && c.latents_std[3] == 2 && !c.use_post_quant_conv);
    CHECK(vf_vae_scale(&c) == 2);

    CHECK(parse_str("{}", &c) == VF_ERR_FORMAT);
    CHECK(strstr(vf_last_error(), "block_out_channels") != NULL);
    CHECK(parse_str("{\"block_out_channels\":[30,64],\"norm_num_groups\":8}", &c) == VF_ERR_FORMAT);
    CHECK(strstr(vf_last_error(), "norm_num_groups") != NULL);
    CHECK(parse_str("{\"block_out_channels\":[32],\"act_fn\":\"gelu\"}", &c) == VF_ERR_UNSUPPORTED);
    CHECK(strstr(vf_last_error(), "act_fn") != NULL);
    CHECK(parse_str("{\"block_out_channels\":[32],\"scaling_factor\":\"x\"}", &c) == VF_ERR_FORMAT);
    CHECK(parse_str("{\"block_out_channels\":[32],\"scaling_factor\":0}", &c) == VF_ERR_FORMAT);
    CHECK(parse_str("{\"block_out_channels\":[32],\"up_block_types\":[\"UpBlock2D\"]}", &c) ==
          VF_ERR_UNSUPPORTED);
    CHECK(strstr(vf_last_error(), "up_block_types") != NULL);
    CHECK(parse_str("{\"block_out_channels\":[32],\"latents_mean\":[1,2]}", &c) == VF_ERR_FORMAT);
    CHECK(strstr(vf_last_error(), "latents_mean") != NULL);
    CHECK(vf_vae_config_parse(NULL, &c) == VF_ERR_INVALID_ARG);
}

/* A config that does not match the stored weights fails at bind, naming the tensor. */
static void test_bind_errors(void)
{
    SKIP_WITHOUT_SHARED(shared);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/reference/tiny-sdxl/diffusers", shared);
    vf_checkpoint *ck = NULL;
    CHECK_OK(vf_checkpoint_open(dir, NULL, &ck));
    if (!ck)
        return;
    cJSON *cfg = cJSON_Duplicate(vf_checkpoint_config(ck, VF_COMPONENT_VAE), 1);
    vf_blocklist bl;

    cJSON_ReplaceItemInObject(cfg, "layers_per_block", cJSON_CreateNumber(2));
    vf_bl_init(&bl, VF_COMPONENT_VAE);
    CHECK_OK(vf_vae_describe(cfg, &bl));
    CHECK(vf_bl_bind(&bl, ck) == VF_ERR_NOT_FOUND);
    CHECK(strstr(vf_last_error(), "decoder.up_blocks.0.resnets.2.") != NULL);
    vf_bl_free(&bl);

    cJSON_ReplaceItemInObject(cfg, "layers_per_block", cJSON_CreateNumber(1));
    cJSON *boc = cJSON_CreateArray();
    int ch[4] = {16, 16, 32, 64};
    for (int i = 0; i < 4; i++)
        cJSON_AddItemToArray(boc, cJSON_CreateNumber(ch[i]));
    cJSON_ReplaceItemInObject(cfg, "block_out_channels", boc);
    vf_bl_init(&bl, VF_COMPONENT_VAE);
    CHECK_OK(vf_vae_describe(cfg, &bl));
    CHECK(vf_bl_bind(&bl, ck) == VF_ERR_SHAPE);
    CHECK(strstr(vf_last_error(), "decoder.") != NULL);
    vf_bl_free(&bl);

    /* A block list for another config is refused by decode. */
    vf_vae_config c;
    CHECK_OK(vf_vae_config_parse(cfg, &c));
    vf_bl_init(&bl, VF_COMPONENT_VAE);
    CHECK_OK(vf_vae_describe(vf_checkpoint_config(ck, VF_COMPONENT_VAE), &bl));
    c.layers_per_block = 2;
    float lat[4 * 64] = {0}, img[3 * 64 * 64];
    vf_residency *r = NULL;
    CHECK_OK(vf_residency_create(ck, &bl, NULL, &r));
    CHECK(vf_vae_decode(r, &bl, &c, lat, 1, 8, 8, img) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "block list") != NULL);
    vf_residency_free(r);
    vf_bl_free(&bl);
    cJSON_Delete(cfg);
    vf_checkpoint_close(ck);
}

/* Every allocation failure inside a decode is VF_ERR_NO_MEMORY, leaks nothing,
 * and a later decode still gives the same result. */
static void test_decode_alloc_faults(void)
{
    SKIP_WITHOUT_SHARED(shared);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/reference/tiny-sdxl/diffusers", shared);
    vae_fixture fx;
    if (!fixture_open(&fx, dir, NULL))
        return;
    float lat[4 * 64], *want = malloc(3 * 64 * 64 * sizeof(float)), *got = malloc(3 * 64 * 64 * sizeof(float));
    for (int i = 0; i < 4 * 64; i++)
        lat[i] = (float)((i * 7) % 13) / 13.0f - 0.5f;
    CHECK_OK(vf_vae_decode(fx.r, &fx.bl, &fx.cfg, lat, 1, 8, 8, want));
    int failures = 0, ok = 0;
    for (uint64_t k = 1; k < 400 && !ok; k++) {
        vf_fault_alloc_fail_at(k);
        vf_status st = vf_vae_decode(fx.r, &fx.bl, &fx.cfg, lat, 1, 8, 8, got);
        vf_fault_alloc_fail_at(0);
        if (st == VF_OK) {
            ok = 1;
        } else {
            failures++;
            CHECK(st == VF_ERR_NO_MEMORY);
            CHECK(strstr(vf_last_error(), "vae") != NULL);
        }
    }
    CHECK(ok && failures > 20);
    CHECK(memcmp(got, want, 3 * 64 * 64 * sizeof(float)) == 0);
    free(want);
    free(got);
    fixture_close(&fx);
}

static void test_image_rounding(void)
{
    float dec[3 * 2 * 3] = {-1.0f, 1.0f, 0.0f, 3.0f, -2.0f, NAN,
                            -1.0f / 255.0f, 1.0f / 255.0f, 0.5f, -0.5f, 0.999f, -0.999f,
                            0.25f, 0.75f, -0.25f, -0.75f, 1e-8f, -1e-8f};
    float img[2 * 3 * 3];
    uint8_t rgb[2 * 3 * 3];
    vf_image_from_decoded(dec, 1, 2, 3, img, rgb);
    /* (H,W,3): pixel i channel c = dec[c*6 + i]. */
    CHECK(rgb[0] == 0 && img[0] == 0.0f);        /* -1 */
    CHECK(rgb[3] == 255 && img[3] == 1.0f);      /* 1 */
    CHECK(rgb[6] == 128 && img[6] == 0.5f);      /* 0 -> 127.5 -> 128 (half to even) */
    CHECK(rgb[9] == 255 && rgb[12] == 0);        /* clamped */
    CHECK(rgb[15] == 0 && img[15] == 0.0f);      /* NaN -> 0, never UB */
    CHECK(rgb[1] == 127 && rgb[4] == 128);       /* 127.0 and 128.0, float-rounded */
    CHECK(rgb[7] == 191 && rgb[10] == 64);       /* 191.25, 63.75 */
    for (int i = 0; i < 18; i++)
        CHECK(img[i] >= 0.0f && img[i] <= 1.0f);
    /* Outputs are optional. */
    uint8_t rgb2[18];
    vf_image_from_decoded(dec, 1, 2, 3, NULL, rgb2);
    CHECK(memcmp(rgb, rgb2, 18) == 0);
}

TEST_MAIN(TEST(test_sdxl_diffusers), TEST(test_sdxl_single_file), TEST(test_sd15_diffusers),
          TEST(test_sd15_single_file), TEST(test_describe_covers_decoder), TEST(test_config_errors),
          TEST(test_bind_errors), TEST(test_decode_alloc_faults), TEST(test_image_rounding))
