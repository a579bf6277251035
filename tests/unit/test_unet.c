/* UNet: parity with diffusers on the tiny SD1.5 and SDXL fixtures (diffusers
 * folder and single file), a block list that covers every stored tensor, and
 * the errors a user meets: latent sizes that do not divide, configs that do
 * not match the weights, unsupported config features.
 */
#include "core/alloc.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "mem/residency.h"
#include "model/blocks.h"
#include "model/unet.h"
#include "test.h"

#include <string.h>

/* ---- helpers ---------------------------------------------------------------- */

/* Reads a float32 tensor of the reference file; NULL (and a failed check) if absent. */
static float *ref_tensor(vf_st_file *f, const char *name, size_t *n)
{
    const vf_st_tensor *t = vf_st_find(f, name);
    CHECK_MSG(t != NULL, "reference tensor %s missing", name);
    if (!t)
        return NULL;
    CHECK(t->dtype == VF_DTYPE_F32);
    float *p = malloc(t->nbytes ? t->nbytes : 1);
    CHECK_OK(vf_st_read(f, t, 0, p, t->nbytes));
    *n = t->nbytes / 4;
    return p;
}

typedef struct unet_fixture {
    vf_checkpoint *ck;
    vf_unet_config cfg;
    vf_blocklist bl;
    vf_residency *res;
} unet_fixture;

static int fixture_open(unet_fixture *u, const char *path, const char *config_dir)
{
    memset(u, 0, sizeof *u);
    vf_bl_init(&u->bl, VF_COMPONENT_UNET);
    CHECK_OK(vf_checkpoint_open(path, config_dir, &u->ck));
    if (!u->ck)
        return 0;
    const cJSON *c = vf_checkpoint_config(u->ck, VF_COMPONENT_UNET);
    vf_status st = vf_unet_config_parse(c, vf_checkpoint_arch(u->ck), &u->cfg);
    CHECK_OK(st);
    if (st == VF_OK)
        st = vf_unet_describe_config(&u->cfg, &u->bl);
    CHECK_OK(st);
    if (st == VF_OK)
        st = vf_bl_bind(&u->bl, u->ck);
    CHECK_OK(st);
    if (st == VF_OK)
        st = vf_residency_create(u->ck, &u->bl, NULL, &u->res);
    CHECK_OK(st);
    return st == VF_OK;
}

static void fixture_close(unet_fixture *u)
{
    vf_residency_free(u->res);
    vf_bl_free(&u->bl);
    vf_checkpoint_close(u->ck);
}

/* Names of one UNet call's tensors in a reference file. */
typedef struct call_names {
    const char *sample, *t, *ctx, *text, *ids, *out;
} call_names;

static const call_names unet0 = {"unet0_sample", "unet0_timestep", "unet0_encoder_hidden_states",
                                 "unet0_text_embeds", "unet0_time_ids", "unet0_out"};
static const call_names local = {"sample", "timesteps", "context", "text_embeds", "time_ids", "out"};

/* Runs the call stored in ref on checkpoint path; compares with its output. */
static void parity(const char *ref, const call_names *nm, const char *path, const char *config_dir)
{
    vf_st_file *rf = NULL;
    CHECK_OK(vf_st_open(ref, &rf));
    if (!rf)
        return;
    unet_fixture u;
    memset(&u, 0, sizeof u);
    size_t ns = 0, nt = 0, nc = 0, no = 0, np = 0, ni = 0;
    float *sample = ref_tensor(rf, nm->sample, &ns);
    float *t1 = ref_tensor(rf, nm->t, &nt);
    float *ctx = ref_tensor(rf, nm->ctx, &nc);
    float *want = ref_tensor(rf, nm->out, &no);
    float *text = NULL, *ids = NULL, *ts = NULL;
    if (vf_st_find(rf, nm->text)) {
        text = ref_tensor(rf, nm->text, &np);
        ids = ref_tensor(rf, nm->ids, &ni);
    }
    float *got = calloc(no ? no : 1, sizeof(float));
    if (!sample || !t1 || !ctx || !want || !fixture_open(&u, path, config_dir))
        goto done;

    const vf_unet_config *cfg = &u.cfg;
    const vf_st_tensor *st = vf_st_find(rf, nm->sample);
    int B = (int)st->shape[0], H = (int)st->shape[2], W = (int)st->shape[3];
    int L = (int)(nc / ((size_t)B * cfg->cross_dim));
    CHECK(L == 77 && ns == (size_t)B * cfg->in_channels * H * W && no == ns);
    CHECK(cfg->text_time == (text != NULL));
    ts = calloc((size_t)B, sizeof(float));
    for (int b = 0; b < B; b++)
        ts[b] = t1[nt == (size_t)B ? b : 0]; /* the pipeline broadcasts one timestep */
    CHECK_OK(vf_unet_forward(u.res, &u.bl, cfg, sample, B, H, W, ts, ctx, L, text, ids, got));
    if (CHECK_CLOSE(path, got, want, no, 1e-4)) {
        double ma = 0, mr = 0;
        for (size_t i = 0; i < no; i++) {
            double d = fabs(got[i] - want[i]);
            ma = d > ma ? d : ma;
            mr = fabs(want[i]) > mr ? fabs(want[i]) : mr;
        }
        printf("%s: %s, B=%d %dx%d: max abs err %.3g, max rel err %.3g\n", ref, path, B, H, W, ma, ma / mr);
    }

    /* A latent size that does not divide by 2^(levels-1) is the caller's error. */
    int m = 1 << (cfg->levels - 1);
    if (m > 1) {
        CHECK(vf_unet_forward(u.res, &u.bl, cfg, sample, 1, H + m / 2, W, ts, ctx, L, text, ids, got) ==
              VF_ERR_INVALID_ARG);
        CHECK_MSG(strstr(vf_last_error(), "height") != NULL, "%s", vf_last_error());
        CHECK(vf_unet_forward(u.res, &u.bl, cfg, sample, 1, H, W - m / 2, ts, ctx, L, text, ids, got) ==
              VF_ERR_INVALID_ARG);
        CHECK_MSG(strstr(vf_last_error(), "width") != NULL, "%s", vf_last_error());
    }
    if (cfg->text_time) {
        CHECK(vf_unet_forward(u.res, &u.bl, cfg, sample, B, H, W, ts, ctx, L, NULL, NULL, got) ==
              VF_ERR_INVALID_ARG);
        CHECK_MSG(strstr(vf_last_error(), "text_embeds") != NULL, "%s", vf_last_error());
    }
done:
    if (u.ck)
        fixture_close(&u);
    else
        vf_bl_free(&u.bl);
    free(sample);
    free(t1);
    free(ts);
    free(ctx);
    free(want);
    free(text);
    free(ids);
    free(got);
    vf_st_close(rf);
}

static void model_paths(const char *shared, const char *model, char *dir, char *file, size_t cap)
{
    snprintf(dir, cap, "%s/reference/%s/diffusers", shared, model);
    snprintf(file, cap, "%s/reference/%s/%s.safetensors", shared, model, model);
}

/* ---- tests ------------------------------------------------------------------ */

static void parity_model(const char *shared, const char *model)
{
    char dir[1024], file[1024], ref[1024];
    model_paths(shared, model, dir, file, sizeof dir);
    snprintf(ref, sizeof ref, "%s/reference/%s/reference.safetensors", shared, model);
    parity(ref, &unet0, dir, NULL);
    parity(ref, &unet0, file, dir);
}

static void test_parity_sd15(void)
{
    SKIP_WITHOUT_SHARED(shared);
    parity_model(shared, "tiny-sd15");
}

static void test_parity_sdxl(void)
{
    SKIP_WITHOUT_SHARED(shared);
    parity_model(shared, "tiny-sdxl");
}

/* tests/data/unet (tools/make_unet_fixtures.py): non-square latents, per-sample
 * and fractional timesteps, several feed-forward chunks. */
static void test_parity_local(void)
{
    SKIP_WITHOUT_SHARED(shared);
    char dir[1024], ref[1024], file[1024];
    model_paths(shared, "tiny-sd15", dir, file, sizeof dir);
    snprintf(ref, sizeof ref, "%s/unet/sd15_64x72.safetensors", vf_test_data());
    parity(ref, &local, dir, NULL);
    model_paths(shared, "tiny-sdxl", dir, file, sizeof dir);
    snprintf(ref, sizeof ref, "%s/unet/sdxl_24x40.safetensors", vf_test_data());
    parity(ref, &local, dir, NULL);
}

/* Every allocation of a forward pass (weights and activations) failing in
 * turn: each must be reported as out of memory and leak nothing (ASan), and
 * the run after the failures must still be exact. */
static void test_alloc_failures(void)
{
    SKIP_WITHOUT_SHARED(shared);
    char dir[1024], file[1024], ref[1024];
    model_paths(shared, "tiny-sdxl", dir, file, sizeof dir);
    snprintf(ref, sizeof ref, "%s/reference/tiny-sdxl/reference.safetensors", shared);
    vf_st_file *rf = NULL;
    unet_fixture u;
    CHECK_OK(vf_st_open(ref, &rf));
    if (!rf)
        return;
    size_t n = 0;
    float *sample = ref_tensor(rf, "unet0_sample", &n);
    float *ctx = ref_tensor(rf, "unet0_encoder_hidden_states", &n);
    float *text = ref_tensor(rf, "unet0_text_embeds", &n), *ids = ref_tensor(rf, "unet0_time_ids", &n);
    float *want = ref_tensor(rf, "unet0_out", &n), *got = calloc(n, sizeof(float));
    float ts[2] = {751, 751};
    int failures = 0;
    vf_status st = VF_ERR_NO_MEMORY;
    if (fixture_open(&u, dir, NULL)) {
        for (uint64_t k = 1; k < 20000 && st != VF_OK; k++) {
            vf_fault_alloc_fail_at(k);
            st = vf_unet_forward(u.res, &u.bl, &u.cfg, sample, 2, 8, 8, ts, ctx, 77, text, ids, got);
            vf_fault_alloc_fail_at(0);
            if (st != VF_OK) {
                failures++;
                CHECK_MSG(st == VF_ERR_NO_MEMORY, "allocation %llu: %s", (unsigned long long)k,
                          vf_last_error());
            }
        }
        CHECK_OK(st);
        CHECK(failures > 50);
        CHECK_CLOSE("after allocation failures", got, want, n, 1e-4);
        printf("%d allocation failures handled\n", failures);
    }
    if (u.ck)
        fixture_close(&u);
    free(sample);
    free(ctx);
    free(text);
    free(ids);
    free(want);
    free(got);
    vf_st_close(rf);
}

/* The description uses every tensor the diffusers checkpoint stores, in
 * blocks of the documented granularity. */
static void check_coverage(const char *shared, const char *model, int want_proj_ndim)
{
    char dir[1024], file[1024];
    model_paths(shared, model, dir, file, sizeof dir);
    unet_fixture u;
    if (!fixture_open(&u, dir, NULL)) {
        if (u.ck)
            fixture_close(&u);
        return;
    }
    size_t n = vf_checkpoint_count(u.ck, VF_COMPONENT_UNET);
    uint64_t params = 0;
    for (size_t i = 0; i < n; i++) {
        const vf_ckpt_tensor *t = vf_checkpoint_at(u.ck, VF_COMPONENT_UNET, i);
        uint64_t p = 1;
        for (int d = 0; d < t->ndim; d++)
            p *= (uint64_t)t->shape[d];
        params += p;
    }
    CHECK_MSG(u.bl.nw == (int)n, "%s: described %d weights, checkpoint has %zu", model, u.bl.nw, n);
    CHECK(vf_bl_params(&u.bl) == params);
    CHECK(strcmp(u.bl.blocks[0].name, "time_embedding") == 0);
    CHECK(strcmp(u.bl.blocks[u.bl.nblocks - 1].name, "conv_out") == 0);
    int found = 0;
    for (int i = 0; i < u.bl.nw; i++) {
        if (strcmp(u.bl.w[i].name, "mid_block.attentions.0.proj_in.weight") == 0) {
            found = 1;
            CHECK(u.bl.w[i].ndim == want_proj_ndim);
        }
    }
    CHECK(found);
    fixture_close(&u);
}

static void test_block_coverage(void)
{
    SKIP_WITHOUT_SHARED(shared);
    check_coverage(shared, "tiny-sd15", 4);
    check_coverage(shared, "tiny-sdxl", 2);
}

/* Edits key of the model's UNet config, describes and binds; returns the bind status. */
static vf_status bind_edited(const char *shared, const char *model, const char *key, cJSON *val)
{
    char dir[1024], file[1024];
    model_paths(shared, model, dir, file, sizeof dir);
    vf_checkpoint *ck = NULL;
    vf_blocklist bl;
    vf_bl_init(&bl, VF_COMPONENT_UNET);
    CHECK_OK(vf_checkpoint_open(dir, NULL, &ck));
    if (!ck) {
        cJSON_Delete(val);
        return VF_ERR_INTERNAL;
    }
    cJSON *c = cJSON_Duplicate(vf_checkpoint_config(ck, VF_COMPONENT_UNET), 1);
    cJSON_ReplaceItemInObjectCaseSensitive(c, key, val);
    vf_status st = vf_unet_describe(c, vf_checkpoint_arch(ck), &bl);
    if (st == VF_OK)
        st = vf_bl_bind(&bl, ck);
    vf_bl_free(&bl);
    cJSON_Delete(c);
    vf_checkpoint_close(ck);
    return st;
}

static void test_config_mismatch(void)
{
    SKIP_WITHOUT_SHARED(shared);
    /* Wrong context width: the cross-attention key projection has the wrong shape. */
    CHECK(bind_edited(shared, "tiny-sd15", "cross_attention_dim", cJSON_CreateNumber(24)) == VF_ERR_SHAPE);
    CHECK_MSG(strstr(vf_last_error(), "attn2.to_k.weight") != NULL, "%s", vf_last_error());
    /* Linear projections declared where the file has 1x1 convs. */
    CHECK(bind_edited(shared, "tiny-sd15", "use_linear_projection", cJSON_CreateTrue()) == VF_ERR_SHAPE);
    CHECK_MSG(strstr(vf_last_error(), "proj_in.weight") != NULL, "%s", vf_last_error());
    /* A deeper transformer than stored: the missing block is named. */
    CHECK(bind_edited(shared, "tiny-sdxl", "transformer_layers_per_block", cJSON_CreateNumber(2)) ==
          VF_ERR_NOT_FOUND);
    CHECK_MSG(strstr(vf_last_error(), "transformer_blocks.1") != NULL, "%s", vf_last_error());
    /* Wider channels than stored. */
    CHECK(bind_edited(shared, "tiny-sd15", "in_channels", cJSON_CreateNumber(9)) == VF_ERR_SHAPE);
    CHECK_MSG(strstr(vf_last_error(), "conv_in.weight") != NULL, "%s", vf_last_error());
    /* Wrong head count is not a shape error, but must still divide the channels. */
    CHECK(bind_edited(shared, "tiny-sd15", "attention_head_dim", cJSON_CreateNumber(3)) == VF_ERR_FORMAT);
    CHECK_MSG(strstr(vf_last_error(), "heads") != NULL, "%s", vf_last_error());
}

static vf_status parse_text(const char *json, vf_unet_config *cfg)
{
    cJSON *c = cJSON_Parse(json);
    CHECK(c != NULL);
    vf_status st = vf_unet_config_parse(c, VF_ARCH_SD15, cfg);
    cJSON_Delete(c);
    return st;
}

#define BASE_TYPES                                                                        \
    "\"down_block_types\":[\"CrossAttnDownBlock2D\",\"DownBlock2D\"],"                   \
    "\"up_block_types\":[\"UpBlock2D\",\"CrossAttnUpBlock2D\"],\"block_out_channels\":[32,64]"

static void test_config_parse(void)
{
    vf_unet_config cfg;
    /* Defaults follow diffusers: 8 heads, 2 layers, mid block, 32 groups... */
    CHECK_OK(parse_text("{" BASE_TYPES ",\"norm_num_groups\":8,\"cross_attention_dim\":16}", &cfg));
    CHECK(cfg.levels == 2 && cfg.down_layers[0] == 2 && cfg.up_layers[0] == 3);
    CHECK(cfg.down_attn[0] == 1 && cfg.down_attn[1] == 0 && cfg.up_attn[0] == 0 && cfg.up_attn[1] == 1);
    CHECK(cfg.down_heads[0] == 8 && cfg.mid == 1 && cfg.temb_dim == 128 && !cfg.text_time);
    /* Lists are per level, reversed for the up path. */
    CHECK_OK(parse_text("{" BASE_TYPES ",\"norm_num_groups\":8,\"attention_head_dim\":[2,4],"
                        "\"transformer_layers_per_block\":[1,3],\"layers_per_block\":[1,2]}",
                        &cfg));
    CHECK(cfg.down_heads[1] == 4 && cfg.up_heads[0] == 4 && cfg.up_heads[1] == 2 && cfg.mid_heads == 4);
    CHECK(cfg.up_tlayers[0] == 3 && cfg.mid_tlayers == 3 && cfg.up_layers[0] == 3 && cfg.up_layers[1] == 2);
    /* num_attention_heads overrides attention_head_dim. */
    CHECK_OK(parse_text("{" BASE_TYPES ",\"norm_num_groups\":8,\"attention_head_dim\":2,"
                        "\"num_attention_heads\":4}",
                        &cfg));
    CHECK(cfg.down_heads[0] == 4);
    /* text_time: pooled width is what is left after the 6 time ids. */
    CHECK_OK(parse_text("{" BASE_TYPES ",\"norm_num_groups\":8,\"addition_embed_type\":\"text_time\","
                        "\"addition_time_embed_dim\":8,\"projection_class_embeddings_input_dim\":64}",
                        &cfg));
    CHECK(cfg.text_time && cfg.pooled_dim == 16);

    struct {
        const char *json;
        vf_status st;
        const char *needle;
    } bad[] = {
        {"{" BASE_TYPES ",\"resnet_time_scale_shift\":\"scale_shift\"}", VF_ERR_UNSUPPORTED,
         "resnet_time_scale_shift"},
        {"{" BASE_TYPES ",\"class_embed_type\":\"timestep\"}", VF_ERR_UNSUPPORTED, "class_embed_type"},
        {"{" BASE_TYPES ",\"addition_embed_type\":\"text\"}", VF_ERR_UNSUPPORTED, "addition_embed_type"},
        {"{\"down_block_types\":[\"DownBlock2D\"],\"up_block_types\":[\"UpBlock2D\",\"UpBlock2D\"],"
         "\"block_out_channels\":[32]}",
         VF_ERR_FORMAT, "up blocks"},
        {"{\"down_block_types\":[\"AttnDownBlock2D\"],\"up_block_types\":[\"UpBlock2D\"],"
         "\"block_out_channels\":[32]}",
         VF_ERR_UNSUPPORTED, "AttnDownBlock2D"},
        {"{" BASE_TYPES ",\"layers_per_block\":[1,2,3]}", VF_ERR_FORMAT, "layers_per_block"},
        {"{" BASE_TYPES ",\"attention_head_dim\":\"8\"}", VF_ERR_FORMAT, "attention_head_dim"},
        {"{" BASE_TYPES ",\"norm_num_groups\":12}", VF_ERR_FORMAT, "norm_num_groups"},
        {"{\"down_block_types\":[\"DownBlock2D\"],\"up_block_types\":[\"UpBlock2D\"]}", VF_ERR_FORMAT,
         "block_out_channels"},
        {"{" BASE_TYPES ",\"norm_num_groups\":8,\"addition_embed_type\":\"text_time\","
         "\"addition_time_embed_dim\":8,\"projection_class_embeddings_input_dim\":40}",
         VF_ERR_FORMAT, "projection_class_embeddings_input_dim"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        vf_status st = parse_text(bad[i].json, &cfg);
        CHECK_MSG(st == bad[i].st, "case %zu: got %s", i, vf_status_str(st));
        CHECK_MSG(strstr(vf_last_error(), bad[i].needle) != NULL, "case %zu: '%s'", i, vf_last_error());
    }
}

TEST_MAIN(TEST(test_config_parse), TEST(test_block_coverage), TEST(test_config_mismatch),
          TEST(test_parity_sd15), TEST(test_parity_sdxl),
          TEST(test_parity_local), TEST(test_alloc_failures))
