/* LoRAs (issue 9): parity with diffusers + PEFT on the tiny reference fixtures
 * in both file formats (tests/data/lora, tools/make_lora_fixtures.py), for the
 * UNet and the text encoders of SD1.5 and SDXL; strength 0 and removal give
 * the checkpoint's weights bit for bit; two LoRAs add; key counting; LoRAs for
 * the other architecture; the streamed placements of the simulated device; the
 * pool; and every error path, allocation failures included.
 */
#include "core/alloc.h"
#include "core/dtype.h"
#include "io/safetensors.h"
#include "model/lora.h"
#include "pipeline/model.h"
#include "lora_ref.h"
#include "test.h"

#include <stdint.h>
#include <unistd.h>

#define MiB (1ull << 20)

static const char *g_shared;
static char g_tmp[256];

/* ---- helpers ---------------------------------------------------------------------------- */

static void model_dir(const char *model, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/reference/%s/diffusers", g_shared, model);
}

static void data_path(const char *file, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/lora/%s", vf_test_data(), file);
}

static vf_model *open_model(const char *model, const char *device, uint64_t budget, vf_offload_strategy off)
{
    char path[1024];
    model_dir(model, path, sizeof path);
    vf_pipeline_options po;
    vf_pipeline_options_init(&po);
    po.device = device;
    po.vram_budget = budget;
    po.offload = off;
    vf_model_options o;
    vf_model_options_init(&o);
    o.pipeline = &po;
    vf_model *m = NULL;
    CHECK_OK(vf_model_open(path, &o, &m));
    return m;
}

static vf_status add(vf_model *m, const char *file, float strength, vf_lora_info *info)
{
    char p[1024];
    data_path(file, p, sizeof p);
    return vf_model_add_lora(m, p, strength, info);
}

/* The reference's first UNet call, run on m. NULL on failure. */
static float *run_unet(vf_model *m, const char *model, size_t *n_out)
{
    return run_unet_of(m, g_shared, model, n_out);
}

static double g_worst;            /* the largest parity error seen */

/* Compares got with tensor name of the reference file; prints the error. */
static void compare(vf_st_file *ref, const char *name, const float *got, size_t n, const char *what)
{
    size_t nw = 0;
    float *want = read_f32(ref, name, &nw);
    if (!want || !got)
        goto done;
    CHECK_MSG(nw == n, "%s: %s has %zu values, got %zu", what, name, nw, n);
    if (nw != n)
        goto done;
    double e = rel_err(got, want, n);
    g_worst = e > g_worst ? e : g_worst;
    printf("    %-44s %-32s max rel err %.3g\n", what, name, e);
    CHECK_CLOSE(name, got, want, n, 1e-4);
done:
    free(want);
}

/* Every weight of component c, acquired and copied back to back. */
static float *snapshot(vf_model *m, vf_component c, size_t *n_out)
{
    vf_residency *r = NULL;
    CHECK_OK(vf_model_residency(m, c, &r));
    if (!r)
        return NULL;
    const vf_blocklist *bl = &m->bl[c];
    size_t total = 0;
    for (int i = 0; i < bl->nw; i++)
        total += (size_t)vf_shape_numel(bl->w[i].shape, bl->w[i].ndim);
    float *out = malloc(total * sizeof *out);
    size_t at = 0;
    for (int b = 0; b < bl->nblocks && out; b++) {
        const float *const *w;
        vf_status st = vf_residency_acquire(r, b, &w);
        CHECK_OK(st);
        if (st != VF_OK)
            break;
        for (int j = 0; j < bl->blocks[b].nw; j++) {
            const vf_wspec *s = &bl->w[bl->blocks[b].first_w + j];
            size_t k = (size_t)vf_shape_numel(s->shape, s->ndim);
            memcpy(out + at, w[j], k * sizeof *out);
            at += k;
        }
        vf_residency_release(r, b);
    }
    vf_model_component_done(m, c);
    *n_out = total;
    return out;
}

static int same_floats(const float *a, const float *b, size_t n)
{
    return a && b && memcmp(a, b, n * sizeof *a) == 0;
}

/* ---- parity with diffusers -------------------------------------------------------------- */

/* Runs the UNet call and the prompt encoding on m and compares them with the
 * reference outputs of suffix sfx ("a" or "ab"). */
static void parity_outputs(vf_model *m, const char *model, vf_st_file *ref, const char *sfx, const char *what)
{
    char name[128];
    size_t n = 0;
    float *u = run_unet(m, model, &n);
    snprintf(name, sizeof name, "unet0_out_%s", sfx);
    compare(ref, name, u, n, what);
    free(u);
    vf_embeddings *e = encode(m);
    if (!e)
        return;
    size_t ne = (size_t)e->seq_len * (size_t)e->dim;
    snprintf(name, sizeof name, "prompt_embeds_%s", sfx);
    compare(ref, name, e->prompt, ne, what);
    snprintf(name, sizeof name, "negative_prompt_embeds_%s", sfx);
    compare(ref, name, e->negative, ne, what);
    if (e->pooled) {
        snprintf(name, sizeof name, "pooled_prompt_embeds_%s", sfx);
        compare(ref, name, e->pooled, (size_t)e->pooled_dim, what);
        snprintf(name, sizeof name, "negative_pooled_prompt_embeds_%s", sfx);
        compare(ref, name, e->negative_pooled, (size_t)e->pooled_dim, what);
    }
    vf_embeddings_free(e);
}

/* LoRA file a at 0.8 against the reference; then b (PEFT) at 0.5 on top. */
static void parity_one(vf_model *m, const char *model, const char *short_name, const char *file_a)
{
    char ref_path[1024], b[64], what[160];
    snprintf(b, sizeof b, "%s_ref.safetensors", short_name);
    data_path(b, ref_path, sizeof ref_path);
    vf_st_file *ref = NULL;
    CHECK_OK(vf_st_open(ref_path, &ref));
    if (!ref || !m)
        goto done;
    vf_lora_info ia, ib;
    CHECK_OK(add(m, file_a, 0.8f, &ia));
    snprintf(what, sizeof what, "%s %s", model, file_a);
    parity_outputs(m, model, ref, "a", what);
    snprintf(b, sizeof b, "%s_b.safetensors", short_name);
    CHECK_OK(add(m, b, 0.5f, &ib));
    snprintf(what, sizeof what, "%s %s + %s", model, file_a, b);
    parity_outputs(m, model, ref, "ab", what);
    vf_model_clear_loras(m);
    CHECK(vf_model_lora_count(m) == 0);
done:
    vf_st_close(ref);
}

static void test_parity_sd15(void)
{
    vf_model *m = open_model("tiny-sd15", NULL, 0, VF_OFFLOAD_AUTO);
    parity_one(m, "tiny-sd15", "sd15", "sd15_peft.safetensors");
    parity_one(m, "tiny-sd15", "sd15", "sd15_kohya.safetensors");
    vf_model_close(m);
}

static void test_parity_sdxl(void)
{
    vf_model *m = open_model("tiny-sdxl", NULL, 0, VF_OFFLOAD_AUTO);
    parity_one(m, "tiny-sdxl", "sdxl", "sdxl_peft.safetensors");
    parity_one(m, "tiny-sdxl", "sdxl", "sdxl_kohya.safetensors");
    parity_one(m, "tiny-sdxl", "sdxl", "sdxl_kohya_sgm.safetensors");
    vf_model_close(m);
}

/* The single-file checkpoint: the same canonical weights (OpenCLIP's fused
 * in_proj rows and transposed projection are views), the same outputs. */
static void test_parity_single_file(void)
{
    char file[1024], dir[1024];
    snprintf(file, sizeof file, "%s/reference/tiny-sdxl/tiny-sdxl.safetensors", g_shared);
    model_dir("tiny-sdxl", dir, sizeof dir);
    vf_model_options o;
    vf_model_options_init(&o);
    o.tokenizer_dir = dir;
    vf_model *m = NULL;
    CHECK_OK(vf_model_open(file, &o, &m));
    parity_one(m, "tiny-sdxl", "sdxl", "sdxl_kohya_sgm.safetensors");
    parity_one(m, "tiny-sdxl", "sdxl", "sdxl_peft.safetensors");
    vf_model_close(m);
    printf("  worst parity error: %.3g\n", g_worst);
}

/* ---- bit-identity, sums, formats ------------------------------------------------------ */

static void test_strength_zero_and_removal(void)
{
    vf_model *m = open_model("tiny-sd15", NULL, 0, VF_OFFLOAD_AUTO);
    if (!m)
        return;
    size_t n = 0, nu = 0, nx = 0;
    float *w0 = snapshot(m, VF_COMPONENT_UNET, &n), *u0 = run_unet(m, "tiny-sd15", &nu);
    vf_lora_info info;
    CHECK_OK(add(m, "sd15_kohya.safetensors", 0.0f, &info));
    CHECK(vf_model_is_loaded(m));              /* strength 0 changes nothing: nothing dropped */
    float *w = snapshot(m, VF_COMPONENT_UNET, &nx), *u = run_unet(m, "tiny-sd15", &nx);
    CHECK(same_floats(w, w0, n) && same_floats(u, u0, nu));
    free(w);
    free(u);
    CHECK_OK(vf_model_set_lora_strength(m, info.id, 0.8f));
    CHECK(!vf_model_is_loaded(m));             /* the change dropped the conversions */
    w = snapshot(m, VF_COMPONENT_UNET, &nx);
    u = run_unet(m, "tiny-sd15", &nx);
    CHECK(w && !same_floats(w, w0, n) && u && !same_floats(u, u0, nu));
    free(w);
    free(u);
    CHECK_OK(vf_model_set_lora_strength(m, info.id, 0.0f));
    w = snapshot(m, VF_COMPONENT_UNET, &nx);
    u = run_unet(m, "tiny-sd15", &nx);
    CHECK(same_floats(w, w0, n) && same_floats(u, u0, nu));
    free(w);
    free(u);
    CHECK_OK(vf_model_set_lora_strength(m, info.id, -1.5f));
    free(run_unet(m, "tiny-sd15", &nx));
    CHECK_OK(vf_model_remove_lora(m, info.id));
    CHECK(vf_model_lora_count(m) == 0);
    w = snapshot(m, VF_COMPONENT_UNET, &nx);
    u = run_unet(m, "tiny-sd15", &nx);
    CHECK(same_floats(w, w0, n) && same_floats(u, u0, nu));
    free(w);
    free(u);
    /* The text encoder too, through clear. */
    size_t nt = 0;
    float *t0 = snapshot(m, VF_COMPONENT_TEXT_ENCODER, &nt);
    CHECK_OK(add(m, "sd15_peft.safetensors", 1.0f, NULL));
    w = snapshot(m, VF_COMPONENT_TEXT_ENCODER, &nx);
    CHECK(w && !same_floats(w, t0, nt));
    free(w);
    vf_model_clear_loras(m);
    w = snapshot(m, VF_COMPONENT_TEXT_ENCODER, &nx);
    CHECK(same_floats(w, t0, nt));
    free(w);
    free(t0);
    free(w0);
    free(u0);
    vf_model_close(m);
}

/* Weights with A and B = weights + (A's delta) + (B's delta). */
static void test_two_loras_sum(void)
{
    vf_model *m = open_model("tiny-sdxl", NULL, 0, VF_OFFLOAD_AUTO);
    if (!m)
        return;
    const vf_component comps[] = {VF_COMPONENT_UNET, VF_COMPONENT_TEXT_ENCODER_2};
    for (int k = 0; k < 2; k++) {
        vf_component c = comps[k];
        size_t n = 0, nx = 0;
        vf_lora_info ia, ib;
        float *w0 = snapshot(m, c, &n);
        CHECK_OK(add(m, "sdxl_kohya.safetensors", 0.8f, &ia));
        float *wa = snapshot(m, c, &nx);
        CHECK_OK(vf_model_set_lora_strength(m, ia.id, 0.0f));
        CHECK_OK(add(m, "sdxl_b.safetensors", -0.7f, &ib));
        float *wb = snapshot(m, c, &nx);
        CHECK_OK(vf_model_set_lora_strength(m, ia.id, 0.8f));
        float *wab = snapshot(m, c, &nx);
        vf_model_clear_loras(m);
        double maxd = 0, maxerr = 0;
        size_t changed_b = 0;
        for (size_t i = 0; w0 && wa && wb && wab && i < n; i++) {
            double da = (double)wa[i] - w0[i], db = (double)wb[i] - w0[i], dab = (double)wab[i] - w0[i];
            maxd = fabs(dab) > maxd ? fabs(dab) : maxd;
            double e = fabs(dab - da - db);
            maxerr = e > maxerr ? e : maxerr;
            changed_b += db != 0;
        }
        printf("  %s: |AB - (A + B)| <= %.3g, largest delta %.3g, %zu weights values moved by B\n",
               vf_component_name(c), maxerr, maxd, changed_b);
        CHECK(maxd > 0.01 && changed_b > 0);
        CHECK(maxerr <= 1e-5 * (maxd + 1));
        free(w0);
        free(wa);
        free(wb);
        free(wab);
    }
    vf_model_close(m);
}

/* The same factors in different formats patch identically. */
static void same_weights(const char *model, const char *fa, const char *fb)
{
    vf_model *m = open_model(model, NULL, 0, VF_OFFLOAD_AUTO);
    if (!m)
        return;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (!m->present[c] || c == VF_COMPONENT_VAE)
            continue;
        size_t n = 0, nx = 0;
        CHECK_OK(add(m, fa, 0.8f, NULL));
        float *a = snapshot(m, (vf_component)c, &n);
        vf_model_clear_loras(m);
        CHECK_OK(add(m, fb, 0.8f, NULL));
        float *b = snapshot(m, (vf_component)c, &nx);
        vf_model_clear_loras(m);
        CHECK_MSG(same_floats(a, b, n), "%s and %s differ on the %s", fa, fb, vf_component_name((vf_component)c));
        free(a);
        free(b);
    }
    vf_model_close(m);
}

static void test_formats_agree(void)
{
    same_weights("tiny-sd15", "sd15_peft.safetensors", "sd15_kohya.safetensors");
    same_weights("tiny-sdxl", "sdxl_peft.safetensors", "sdxl_kohya.safetensors");
    same_weights("tiny-sdxl", "sdxl_kohya.safetensors", "sdxl_kohya_sgm.safetensors");
    same_weights("tiny-sd15", "sd15_attn_old.safetensors", "sd15_attn_kohya.safetensors");
}

/* ---- counts ----------------------------------------------------------------------------- */

static void test_counts(void)
{
    vf_model *m = open_model("tiny-sdxl", NULL, 0, VF_OFFLOAD_AUTO);
    if (!m)
        return;
    vf_lora_info i;
    CHECK_OK(add(m, "sdxl_kohya_sgm.safetensors", 1.0f, &i));
    printf("  sdxl_kohya_sgm: %d keys, %d matched, %d unmatched; %d weights (te %d, te2 %d, unet %d), rank %d, "
           "%llu bytes\n", i.keys, i.matched_keys, i.unmatched_keys, i.weights,
           i.weights_by_component[VF_COMPONENT_TEXT_ENCODER], i.weights_by_component[VF_COMPONENT_TEXT_ENCODER_2],
           i.weights_by_component[VF_COMPONENT_UNET], i.rank, (unsigned long long)i.bytes);
    /* Every module of the file: 264 UNet + 12 + 12 text encoder layers, 3 keys each. */
    CHECK(i.id == 1 && i.strength == 1.0f && i.rank == 4);
    CHECK(i.weights_by_component[VF_COMPONENT_UNET] == 264 &&
          i.weights_by_component[VF_COMPONENT_TEXT_ENCODER] == 12 &&
          i.weights_by_component[VF_COMPONENT_TEXT_ENCODER_2] == 12 && i.weights == 288);
    CHECK(i.keys == 3 * 288 && i.matched_keys == i.keys && i.unmatched_keys == 0);
    vf_lora_info j;
    CHECK_OK(add(m, "sdxl_peft.safetensors", 0.5f, &j));
    CHECK(j.id == 2 && j.keys == 2 * 288 && j.unmatched_keys == 0 && j.weights == 288);
    CHECK(vf_model_lora_count(m) == 2);
    vf_lora_info k;
    CHECK_OK(vf_model_lora_at(m, 1, &k));
    CHECK(k.id == 2 && k.strength == 0.5f && k.bytes == j.bytes);
    CHECK(vf_model_lora_at(m, 2, &k) == VF_ERR_INVALID_ARG);
    vf_model_close(m);
}

/* ---- files written here ----------------------------------------------------------------- */

typedef struct wt {
    const char *name;
    vf_dtype dt;
    int ndim;
    int64_t s0, s1, s2, s3;
    float fill;                   /* elements are fill * (1 + i % 7) / 7    */
} wt;

/* Writes a safetensors file of the given tensors (each filled from its value). */
static void write_lora(const char *file, const wt *ts, int n, char *path, size_t cap)
{
    snprintf(path, cap, "%s/%s", g_tmp, file);
    vf_st_write_tensor w[16];
    void *bufs[16] = {0};
    for (int i = 0; i < n && i < 16; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].name = ts[i].name;
        w[i].dtype = ts[i].dt;
        w[i].ndim = ts[i].ndim;
        int64_t s[4] = {ts[i].s0, ts[i].s1, ts[i].s2, ts[i].s3};
        size_t k = 1;
        for (int d = 0; d < ts[i].ndim; d++) {
            w[i].shape[d] = s[d];
            k *= (size_t)s[d];
        }
        float *f = malloc(k * sizeof *f);
        for (size_t j = 0; j < k; j++)
            f[j] = ts[i].fill * (float)(1 + j % 7) / 7.0f;
        bufs[i] = malloc(k * vf_dtype_size(ts[i].dt));
        vf_convert_from_f32(bufs[i], ts[i].dt, f, k);
        free(f);
        w[i].data = bufs[i];
    }
    CHECK_OK(vf_st_write(path, w, (size_t)n, NULL));
    for (int i = 0; i < n && i < 16; i++)
        free(bufs[i]);
}

/* A failed add leaves the model as it was: its LoRAs and its loaded weights. */
static void expect_add_error(vf_model *m, const char *path, vf_status want, const char *needle)
{
    int loaded = vf_model_is_loaded(m);
    size_t count = vf_model_lora_count(m);
    vf_lora_info info;
    vf_status st = vf_model_add_lora(m, path, 1.0f, &info);
    CHECK_MSG(st == want, "%s: got %s (%s), want %s", path, vf_status_str(st), vf_last_error(),
              vf_status_str(want));
    CHECK_MSG(!needle || strstr(vf_last_error(), needle), "%s: message '%s' lacks '%s'", path, vf_last_error(),
              needle);
    printf("  %-26s %s\n", strrchr(path, '/') + 1, vf_last_error());
    CHECK(vf_model_lora_count(m) == count && vf_model_is_loaded(m) == loaded);
}

#define TQ "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
#define TK "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"

static void test_unmatched_keys(void)
{
    vf_model *m = open_model("tiny-sd15", NULL, 0, VF_OFFLOAD_AUTO);
    if (!m)
        return;
    /* to_q is (16,16); attn2's to_k (16, 16 = cross_attention_dim). */
    const wt ts[] = {
        {TQ ".lora_down.weight", VF_DTYPE_F16, 2, 2, 16, 0, 0, 0.1f},
        {TQ ".lora_up.weight", VF_DTYPE_BF16, 2, 16, 2, 0, 0, 0.1f},
        {TQ ".alpha", VF_DTYPE_F32, 0, 0, 0, 0, 0, 1.0f},
        {"lora_unet_no_such_block.lora_down.weight", VF_DTYPE_F32, 2, 2, 16, 0, 0, 0.1f},
        {"lora_unet_no_such_block.lora_up.weight", VF_DTYPE_F32, 2, 16, 2, 0, 0, 0.1f},
        {"lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha", VF_DTYPE_F32, 0, 0, 0, 0, 0, 1.0f},
        {"some_optimizer_state", VF_DTYPE_F32, 1, 3, 0, 0, 0, 1.0f},
    };
    char p[512];
    write_lora("unmatched.safetensors", ts, 7, p, sizeof p);
    vf_lora_info i;
    CHECK_OK(vf_model_add_lora(m, p, 1.0f, &i));
    printf("  unmatched.safetensors: %d keys, %d matched, %d unmatched, %d weights\n", i.keys, i.matched_keys,
           i.unmatched_keys, i.weights);
    CHECK(i.keys == 7 && i.matched_keys == 3 && i.unmatched_keys == 4 && i.weights == 1 &&
          i.weights_by_component[VF_COMPONENT_UNET] == 1 && i.rank == 2);
    CHECK(i.bytes == (2 * 16 + 16 * 2) * 2);
    /* Only that weight moved: scale alpha / rank = 0.5. */
    vf_model_clear_loras(m);
    vf_model_close(m);
}

static void test_errors(void)
{
    vf_model *m = open_model("tiny-sd15", NULL, 0, VF_OFFLOAD_AUTO);
    if (!m)
        return;
    size_t nx;
    free(snapshot(m, VF_COMPONENT_UNET, &nx)); /* loaded: a failed add must not unload it */
    char p[512];
    /* An adapter alpha past float32's range (a fuzz seed): refused when added, naming the key. */
    snprintf(p, sizeof p, "%s/../fuzz/corpus/lora/meta_alpha_huge", vf_test_data());
    expect_add_error(m, p, VF_ERR_NONFINITE, "past float32's range");
    /* A factor without its partner. */
    const wt lone[] = {{TQ ".lora_down.weight", VF_DTYPE_F32, 2, 2, 16, 0, 0, 0.1f}};
    write_lora("lone.safetensors", lone, 1, p, sizeof p);
    expect_add_error(m, p, VF_ERR_FORMAT, TQ ".lora_down.weight");
    /* Shapes that do not fit: the message names the key and both shapes. */
    const wt shape[] = {{TK ".lora_down.weight", VF_DTYPE_F32, 2, 2, 32, 0, 0, 0.1f},
                        {TK ".lora_up.weight", VF_DTYPE_F32, 2, 16, 2, 0, 0, 0.1f}};
    write_lora("shape.safetensors", shape, 2, p, sizeof p);
    expect_add_error(m, p, VF_ERR_SHAPE, "[2,32]");
    CHECK(strstr(vf_last_error(), "[16,16]") && strstr(vf_last_error(), TK ".lora_down.weight"));
    /* Ranks that disagree. */
    const wt ranks[] = {{TQ ".lora_down.weight", VF_DTYPE_F32, 2, 2, 16, 0, 0, 0.1f},
                        {TQ ".lora_up.weight", VF_DTYPE_F32, 2, 16, 3, 0, 0, 0.1f}};
    write_lora("ranks.safetensors", ranks, 2, p, sizeof p);
    expect_add_error(m, p, VF_ERR_SHAPE, "[16,3]");
    /* A non-finite factor or alpha, named. */
    const wt inf[] = {{TQ ".lora_down.weight", VF_DTYPE_F32, 2, 2, 16, 0, 0, 0.1f},
                      {TQ ".lora_up.weight", VF_DTYPE_F32, 2, 16, 2, 0, 0, INFINITY}};
    write_lora("inf.safetensors", inf, 2, p, sizeof p);
    expect_add_error(m, p, VF_ERR_NONFINITE, TQ ".lora_up.weight");
    const wt nan_alpha[] = {{TQ ".lora_down.weight", VF_DTYPE_F32, 2, 2, 16, 0, 0, 0.1f},
                            {TQ ".lora_up.weight", VF_DTYPE_F32, 2, 16, 2, 0, 0, 0.1f},
                            {TQ ".alpha", VF_DTYPE_F32, 0, 0, 0, 0, 0, NAN}};
    write_lora("nan_alpha.safetensors", nan_alpha, 3, p, sizeof p);
    expect_add_error(m, p, VF_ERR_NONFINITE, TQ ".alpha");
    /* Strengths that overflow the weights are found as they are applied. */
    const wt big[] = {{TQ ".lora_down.weight", VF_DTYPE_F32, 2, 2, 16, 0, 0, 3e19f},
                      {TQ ".lora_up.weight", VF_DTYPE_F32, 2, 16, 2, 0, 0, 3e19f}};
    write_lora("big.safetensors", big, 2, p, sizeof p);
    vf_lora_info info;
    CHECK_OK(vf_model_add_lora(m, p, 1.0f, &info));
    vf_residency *r = NULL;
    vf_status st = vf_model_residency(m, VF_COMPONENT_UNET, &r);
    const float *const *w;
    for (int b = 0; st == VF_OK && b < m->bl[VF_COMPONENT_UNET].nblocks; b++) {
        st = vf_residency_acquire(r, b, &w);
        if (st == VF_OK)
            vf_residency_release(r, b);
    }
    CHECK_MSG(st == VF_ERR_NONFINITE && strstr(vf_last_error(), "attn1.to_q.weight"), "%s: %s",
              vf_status_str(st), vf_last_error());
    printf("  big.safetensors at use    %s\n", vf_last_error());
    CHECK_OK(vf_model_remove_lora(m, info.id));
    /* Adapter kinds that are not plain pairs. */
    const wt mid[] = {{TQ ".lora_down.weight", VF_DTYPE_F32, 2, 2, 16, 0, 0, 0.1f},
                      {TQ ".lora_up.weight", VF_DTYPE_F32, 2, 16, 2, 0, 0, 0.1f},
                      {TQ ".lora_mid.weight", VF_DTYPE_F32, 4, 2, 2, 3, 3, 0.1f}};
    write_lora("mid.safetensors", mid, 3, p, sizeof p);
    expect_add_error(m, p, VF_ERR_UNSUPPORTED, "lora_mid");
    /* Nothing matches. */
    const wt none[] = {{"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", VF_DTYPE_F32, 2, 2, 16, 0, 0,
                        0.1f},
                       {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", VF_DTYPE_F32, 2, 64, 2, 0, 0,
                        0.1f}};
    write_lora("none.safetensors", none, 2, p, sizeof p);
    expect_add_error(m, p, VF_ERR_FORMAT, "matches no weight of the sd15 model");
    /* Not a safetensors file; a truncated one; none at all. */
    snprintf(p, sizeof p, "%s/garbage.safetensors", g_tmp);
    FILE *f = fopen(p, "wb");
    fputs("this is not a LoRA", f);
    fclose(f);
    expect_add_error(m, p, VF_ERR_FORMAT, "garbage.safetensors");
    char src[1024];
    data_path("sd15_kohya.safetensors", src, sizeof src);
    snprintf(p, sizeof p, "%s/truncated.safetensors", g_tmp);
    FILE *in = fopen(src, "rb"), *out = fopen(p, "wb");
    char buf[4096];
    size_t total = 0, k;
    while (in && out && total < 100000 && (k = fread(buf, 1, sizeof buf, in)) > 0)
        total += fwrite(buf, 1, k, out);
    if (in)
        fclose(in);
    if (out)
        fclose(out);
    expect_add_error(m, p, VF_ERR_FORMAT, "truncated.safetensors");
    snprintf(p, sizeof p, "%s/absent.safetensors", g_tmp);
    expect_add_error(m, p, VF_ERR_NOT_FOUND, "absent.safetensors");
    /* Arguments. */
    CHECK(add(m, "sd15_kohya.safetensors", NAN, NULL) == VF_ERR_INVALID_ARG);
    CHECK(add(m, "sd15_kohya.safetensors", INFINITY, NULL) == VF_ERR_INVALID_ARG);
    CHECK(vf_model_add_lora(m, NULL, 1.0f, NULL) == VF_ERR_INVALID_ARG);
    CHECK(vf_model_set_lora_strength(m, 42, 1.0f) == VF_ERR_NOT_FOUND);
    CHECK(vf_model_remove_lora(m, 42) == VF_ERR_NOT_FOUND);
    CHECK(vf_model_lora_count(m) == 0);
    vf_model_close(m);
}

/* A LoRA for the other architecture is an error, whichever the format. */
static void test_wrong_architecture(void)
{
    vf_model *xl = open_model("tiny-sdxl", NULL, 0, VF_OFFLOAD_AUTO);
    vf_model *sd = open_model("tiny-sd15", NULL, 0, VF_OFFLOAD_AUTO);
    const char *for15[] = {"sd15_peft.safetensors", "sd15_kohya.safetensors", "sd15_b.safetensors"};
    const char *forxl[] = {"sdxl_peft.safetensors", "sdxl_kohya.safetensors", "sdxl_kohya_sgm.safetensors"};
    for (int i = 0; xl && sd && i < 3; i++) {
        char p[1024];
        data_path(for15[i], p, sizeof p);
        vf_status st = vf_model_add_lora(xl, p, 1.0f, NULL);
        CHECK_MSG(st == VF_ERR_SHAPE || st == VF_ERR_FORMAT, "%s on sdxl: %s", for15[i], vf_status_str(st));
        CHECK_MSG(strstr(vf_last_error(), "another architecture"), "%s", vf_last_error());
        printf("  %s on sdxl: %s\n", for15[i], vf_last_error());
        data_path(forxl[i], p, sizeof p);
        st = vf_model_add_lora(sd, p, 1.0f, NULL);
        CHECK_MSG(st == VF_ERR_SHAPE || st == VF_ERR_FORMAT, "%s on sd15: %s", forxl[i], vf_status_str(st));
        CHECK_MSG(strstr(vf_last_error(), "another architecture"), "%s", vf_last_error());
        printf("  %s on sd15: %s\n", forxl[i], vf_last_error());
    }
    CHECK(vf_model_lora_count(xl) == 0 && vf_model_lora_count(sd) == 0);
    vf_model_close(xl);
    vf_model_close(sd);
}

/* Every allocation of an add failing in turn: a clean error, no leak (ASan),
 * the model unchanged; then the add succeeds and patches as it should. */
static void test_alloc_failures(void)
{
    vf_model *m = open_model("tiny-sdxl", NULL, 0, VF_OFFLOAD_AUTO);
    if (!m)
        return;
    size_t n = 0, nx = 0;
    float *want = NULL;
    CHECK_OK(add(m, "sdxl_kohya_sgm.safetensors", 0.8f, NULL));
    want = snapshot(m, VF_COMPONENT_UNET, &n);
    vf_model_clear_loras(m);
    free(snapshot(m, VF_COMPONENT_UNET, &nx));
    int fails = 0;
    vf_status st = VF_ERR_NO_MEMORY;
    for (uint64_t k = 1; st != VF_OK && k < 100000; k++) {
        vf_fault_alloc_fail_at(k);
        st = add(m, "sdxl_kohya_sgm.safetensors", 0.8f, NULL);
        vf_fault_alloc_fail_at(0);
        if (st == VF_OK)
            break;
        fails++;
        CHECK_MSG(st == VF_ERR_NO_MEMORY, "allocation %llu: %s: %s", (unsigned long long)k, vf_status_str(st),
                  vf_last_error());
        CHECK(vf_model_lora_count(m) == 0 && vf_model_is_loaded(m));
    }
    printf("  add_lora: %d allocations failed in turn, each cleanly\n", fails);
    CHECK(st == VF_OK && fails > 10);
    float *got = snapshot(m, VF_COMPONENT_UNET, &nx);
    CHECK(same_floats(got, want, n));
    free(got);
    /* Failures while the patch runs (its scratch factors) surface from the stage. */
    vf_model_unload(m);
    int patch_fails = 0;
    for (uint64_t k = 1; k < 400; k += 7) {
        vf_residency *r = NULL;
        vf_fault_alloc_fail_at(k);
        st = vf_model_residency(m, VF_COMPONENT_UNET, &r);
        for (int b = 0; st == VF_OK && b < m->bl[VF_COMPONENT_UNET].nblocks; b++) {
            const float *const *w;
            st = vf_residency_acquire(r, b, &w);
            if (st == VF_OK)
                vf_residency_release(r, b);
        }
        vf_fault_alloc_fail_at(0);
        patch_fails += st != VF_OK;
        CHECK_MSG(st == VF_OK || st == VF_ERR_NO_MEMORY, "%s", vf_last_error());
        vf_model_unload(m);
    }
    CHECK(patch_fails > 0);
    got = snapshot(m, VF_COMPONENT_UNET, &nx);
    CHECK(same_floats(got, want, n));
    free(got);
    free(want);
    vf_model_close(m);
}

/* ---- placements and the pool -------------------------------------------------------------- */

static vf_image *generate(vf_model *m)
{
    vf_generate_params p;
    vf_generate_params_init(&p);
    p.prompt = "a photo of a cat wearing a tiny hat";
    p.negative_prompt = "blurry, low quality";
    p.steps = 2;
    p.guidance_scale = 5.0f;
    p.width = p.height = 64;
    p.seed = 1234;
    vf_image *img = NULL;
    CHECK_OK(vf_generate(m, &p, &img));
    return img;
}

static int same_image(const vf_image *a, const vf_image *b)
{
    if (!a || !b || a->width != b->width || a->height != b->height)
        return 0;
    size_t n = (size_t)a->width * (size_t)a->height * 3;
    return memcmp(a->pixels, b->pixels, n * sizeof(float)) == 0;
}

/* Resident, streamed (ring) and on-demand blocks of the simulated device get
 * the LoRA exactly as the CPU path does. */
static void test_streamed_placements(void)
{
    vf_model *cpu = open_model("tiny-sdxl", NULL, 0, VF_OFFLOAD_AUTO);
    if (!cpu)
        return;
    vf_image *plain = generate(cpu);
    CHECK_OK(add(cpu, "sdxl_kohya_sgm.safetensors", 0.8f, NULL));
    CHECK_OK(add(cpu, "sdxl_b.safetensors", 0.5f, NULL));
    vf_image *want = generate(cpu);
    CHECK(want && plain && !same_image(want, plain));
    vf_model_close(cpu);
    static const struct {
        vf_offload_strategy off;
        uint64_t budget;
    } runs[] = {{VF_OFFLOAD_FULL_GPU, 64 * MiB}, {VF_OFFLOAD_STREAM, 9 * MiB}, {VF_OFFLOAD_SEQUENTIAL, 7 * MiB}};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        vf_model *m = open_model("tiny-sdxl", "sim,context=1M", runs[i].budget, runs[i].off);
        if (!m)
            continue;
        CHECK_OK(add(m, "sdxl_kohya_sgm.safetensors", 0.8f, NULL));
        CHECK_OK(add(m, "sdxl_b.safetensors", 0.5f, NULL));
        vf_image *img = generate(m);
        vf_component_placement pl;
        CHECK_OK(vf_model_component_placement(m, VF_COMPONENT_UNET, &pl));
        printf("  sim %s, budget %llu MiB: UNet %llu bytes streamed a step, ring %d: %s\n",
               vf_offload_strategy_name(runs[i].off), (unsigned long long)(runs[i].budget / MiB),
               (unsigned long long)pl.streamed_bytes, pl.ring_depth, same_image(img, want) ? "same image" : "DIFFERS");
        CHECK(same_image(img, want));
        CHECK(runs[i].off == VF_OFFLOAD_FULL_GPU || pl.streamed_bytes > 0);
        vf_model_clear_loras(m);
        vf_image *back = generate(m);
        CHECK(same_image(back, plain));
        vf_image_free(back);
        vf_image_free(img);
        vf_model_close(m);
    }
    vf_image_free(want);
    vf_image_free(plain);
}

/* The sum of the stored bytes of every tensor of a file: a pool LoRA's size. */
static uint64_t file_tensor_bytes(const char *path)
{
    vf_st_file *f = NULL;
    uint64_t n = 0;
    CHECK_OK(vf_st_open(path, &f));
    for (size_t i = 0; f && i < vf_st_count(f); i++)
        n += vf_st_at(f, i)->nbytes;
    vf_st_close(f);
    return n;
}

static void test_pool(void)
{
    char peft[1024], kohya[1024], ck[1024];
    data_path("sd15_peft.safetensors", peft, sizeof peft);
    data_path("sd15_kohya.safetensors", kohya, sizeof kohya);
    model_dir("tiny-sd15", ck, sizeof ck);
    uint64_t peft_bytes = file_tensor_bytes(peft);
    vf_pool_options po;
    vf_pool_options_init(&po);
    po.host_capacity = peft_bytes + 1000;
    vf_pool *pool = NULL;
    CHECK_OK(vf_pool_create(&po, &pool));
    vf_model *m = open_model("tiny-sd15", NULL, 0, VF_OFFLOAD_AUTO);
    if (!pool || !m)
        goto done;
    CHECK_OK(vf_pool_register_lora(pool, "style", peft));
    CHECK_OK(vf_pool_register_lora(pool, "big", kohya));
    CHECK_OK(vf_pool_register(pool, "base", ck));
    vf_pool_model_info pi;
    CHECK_OK(vf_pool_info(pool, "style", &pi));
    CHECK(pi.bytes == peft_bytes && pi.tier == VF_TIER_DISK);
    vf_lora_info info;
    CHECK_OK(vf_model_add_pool_lora(m, pool, "style", 0.8f, &info));
    CHECK_OK(vf_pool_info(pool, "style", &pi));
    printf("  pool LoRA 'style': %llu bytes in the pool (%s), %llu held by the model\n",
           (unsigned long long)pi.bytes, vf_tier_name(pi.tier), (unsigned long long)info.bytes);
    /* Every tensor of a PEFT file without alphas is a factor the model keeps. */
    CHECK(pi.tier == VF_TIER_HOST && pi.uses == 1 && info.bytes == pi.bytes);
    size_t n = 0, nx = 0;
    float *a = snapshot(m, VF_COMPONENT_UNET, &n);
    vf_model_clear_loras(m);
    CHECK_OK(vf_model_add_lora(m, peft, 0.8f, NULL));
    float *b = snapshot(m, VF_COMPONENT_UNET, &nx);
    CHECK(same_floats(a, b, n));
    free(a);
    free(b);
    /* A LoRA larger than the host capacity: the pool's error, nothing changed. */
    size_t before = vf_model_lora_count(m);
    vf_status st = vf_model_add_pool_lora(m, pool, "big", 1.0f, NULL);
    CHECK_MSG(st == VF_ERR_BUDGET, "%s: %s", vf_status_str(st), vf_last_error());
    CHECK(vf_model_lora_count(m) == before);
    CHECK_OK(vf_pool_info(pool, "big", &pi));
    CHECK(pi.tier == VF_TIER_DISK);
    CHECK(vf_model_add_pool_lora(m, pool, "base", 1.0f, NULL) == VF_ERR_INVALID_ARG);
    CHECK(vf_model_add_pool_lora(m, pool, "nobody", 1.0f, NULL) == VF_ERR_NOT_FOUND);
    /* A pool LoRA that fails to apply leaves the pool as it was. */
    vf_pool_usage u0, u1;
    char other[1024];
    data_path("sdxl_b.safetensors", other, sizeof other);
    CHECK_OK(vf_pool_unload(pool, "style"));
    CHECK_OK(vf_pool_register_lora(pool, "xl", other));
    CHECK_OK(vf_pool_get_usage(pool, &u0));
    CHECK(vf_model_add_pool_lora(m, pool, "xl", 1.0f, NULL) != VF_OK);
    CHECK_OK(vf_pool_get_usage(pool, &u1));
    CHECK(u1.loaded == u0.loaded && u1.bytes[VF_TIER_HOST] == u0.bytes[VF_TIER_HOST]);
done:
    vf_model_close(m);
    vf_pool_free(pool);
}

static void setup(void)
{
    SKIP_WITHOUT_SHARED(shared);
    g_shared = shared;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/vf_test_lora.XXXXXX");
    CHECK(mkdtemp(g_tmp) != NULL);
}

static void teardown(void)
{
    static const char *const files[] = {"unmatched", "lone", "shape", "ranks", "inf", "nan_alpha", "big",
                                        "mid", "none", "garbage", "truncated"};
    char p[512];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s.safetensors", g_tmp, files[i]);
        unlink(p);
    }
    rmdir(g_tmp);
}

TEST_MAIN(TEST(setup), TEST(test_parity_sd15), TEST(test_parity_sdxl), TEST(test_parity_single_file),
          TEST(test_strength_zero_and_removal), TEST(test_two_loras_sum), TEST(test_formats_agree),
          TEST(test_counts), TEST(test_unmatched_keys), TEST(test_errors), TEST(test_wrong_architecture),
          TEST(test_alloc_failures), TEST(test_streamed_placements), TEST(test_pool), TEST(teardown))
