/* Latent previews (vf_latents_preview) and the latent callback of generation
 * (vf_generate_params.on_latents), plus generation conditioned on several
 * prompt windows (seq_len 154: the UNet takes any context length).
 */
#include "test.h"

#include <limits.h>
#include <stdint.h>

static uint8_t expect_byte(double v)
{
    double x = (v + 1.0) * 0.5;
    if (!(x > 0))
        return 0;
    return x >= 1 ? 255 : (uint8_t)lrint(x * 255.0);
}

static void test_preview_values(void)
{
    /* (1,4,2,3): channel-major; values chosen to hit clamping both ways. */
    float data[4 * 6];
    for (int c = 0; c < 4; c++)
        for (int i = 0; i < 6; i++)
            data[c * 6 + i] = (float)(0.7 * sin(1.0 + c * 6 + i) * (i == 5 ? 20 : 1));
    vf_latents l = {1, 4, 2, 3, data};
    static const double sd15[4][3] = {{0.3512, 0.2297, 0.3227}, {0.3250, 0.4974, 0.2350},
                                      {-0.2829, 0.1762, 0.2721}, {-0.2120, -0.2616, -0.7177}};
    static const double xl[4][3] = {{0.3651, 0.4232, 0.4341}, {-0.2533, -0.0042, 0.1068},
                                    {0.1076, 0.1111, -0.0362}, {-0.3165, -0.2492, -0.2188}};
    static const double xl_bias[3] = {0.1084, -0.0175, -0.0011};
    for (int arch = 0; arch < 2; arch++) {
        vf_image *img = NULL;
        CHECK_OK(vf_latents_preview(arch ? VF_ARCH_SDXL : VF_ARCH_SD15, &l, 8, &img));
        if (!img)
            continue;
        CHECK(img->width == 24 && img->height == 16 && img->pixels == NULL);
        int bad = 0, saturated = 0;
        for (int y = 0; y < 16; y++) {
            for (int x = 0; x < 24; x++) {
                int at = (y / 8) * 3 + x / 8;
                for (int c = 0; c < 3; c++) {
                    double v = arch ? xl_bias[c] : 0.0;
                    for (int k = 0; k < 4; k++)
                        v += data[k * 6 + at] * (arch ? xl[k][c] : sd15[k][c]);
                    int got = img->rgb[(y * 24 + x) * 3 + c], want = expect_byte(v);
                    bad += abs(got - want) > 1;
                    saturated += got == 0 || got == 255;
                }
            }
        }
        CHECK_MSG(bad == 0, "arch %d: %d values off", arch, bad);
        CHECK(saturated > 0);
        vf_image_free(img);
    }
    /* NaN is black, not undefined behaviour. */
    data[0] = NAN;
    vf_image *img = NULL;
    CHECK_OK(vf_latents_preview(VF_ARCH_SD15, &l, 1, &img));
    CHECK(img && img->width == 3 && img->height == 2);
    vf_image_free(img);
}

static void test_preview_errors(void)
{
    float data[5 * 4] = {0};
    vf_latents l = {1, 5, 2, 2, data};
    vf_image *img = (vf_image *)1;
    CHECK(vf_latents_preview(VF_ARCH_SD15, &l, 8, &img) == VF_ERR_UNSUPPORTED);
    CHECK(img == NULL && strstr(vf_last_error(), "5 latent channels"));
    l.channels = 4;
    CHECK(vf_latents_preview(VF_ARCH_UNKNOWN, &l, 8, &img) == VF_ERR_UNSUPPORTED);
    CHECK(vf_latents_preview(VF_ARCH_SD15, &l, 0, &img) == VF_ERR_INVALID_ARG);
    CHECK(vf_latents_preview(VF_ARCH_SD15, &l, 65, &img) == VF_ERR_INVALID_ARG);
    CHECK(vf_latents_preview(VF_ARCH_SD15, NULL, 8, &img) == VF_ERR_INVALID_ARG);
    CHECK(vf_latents_preview(VF_ARCH_SD15, &l, 8, NULL) == VF_ERR_INVALID_ARG);
    l.width = VF_MAX_IMAGE_SIDE / 8 + 1;
    CHECK(vf_latents_preview(VF_ARCH_SD15, &l, 8, &img) == VF_ERR_INVALID_ARG);
}

typedef struct seen {
    int calls, last_step, total, cancel_at;
    float last[4 * 8 * 8];
    int shape_ok;
} seen;

static int record(void *user, int step, int total, const vf_latents *l)
{
    seen *s = user;
    s->calls++;
    s->shape_ok = (s->calls == 1 || s->shape_ok) && l->batch == 1 && l->channels == 4 && l->height == 8 &&
                  l->width == 8 && step == s->calls;
    s->last_step = step;
    s->total = total;
    memcpy(s->last, l->data, sizeof s->last);
    return s->cancel_at && step == s->cancel_at;
}

static const char *shared_or_skip(void)
{
    const char *shared = vf_test_shared();
    if (!shared)
        printf("  skipped: ../shared/reference not found (set VF_SHARED)\n");
    return shared;
}

static void test_latent_callback(void)
{
    const char *shared = shared_or_skip();
    if (!shared)
        return;
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/reference/tiny-sd15/diffusers", shared);
    vf_model *m = NULL;
    CHECK_OK(vf_model_open(dir, NULL, &m));
    if (!m)
        return;
    vf_generate_params p;
    vf_generate_params_init(&p);
    p.prompt = "a photo of a cat";
    p.steps = 3;
    p.seed = 7;
    seen s;
    memset(&s, 0, sizeof s);
    p.on_latents = record;
    p.user = &s;
    vf_embeddings *e = NULL;
    vf_latents *l = NULL;
    CHECK_OK(vf_encode_prompt(m, p.prompt, NULL, &e));
    CHECK_OK(vf_denoise(m, &p, e, &l));
    CHECK(s.calls == 3 && s.last_step == 3 && s.total == 3 && s.shape_ok);
    CHECK(l && memcmp(s.last, l->data, sizeof s.last) == 0);
    vf_latents_free(l);
    l = NULL;
    /* A nonzero return cancels after that step, freeing everything. */
    memset(&s, 0, sizeof s);
    s.cancel_at = 2;
    CHECK(vf_denoise(m, &p, e, &l) == VF_ERR_CANCELLED);
    CHECK(l == NULL && s.calls == 2);
    vf_image *img = NULL;
    memset(&s, 0, sizeof s);
    s.cancel_at = 1;
    CHECK(vf_generate(m, &p, &img) == VF_ERR_CANCELLED);
    CHECK(img == NULL);
    vf_embeddings_free(e);
    vf_model_close(m);
}

/* Several windows through the whole pipeline, both architectures. */
static void test_generate_long_prompt(void)
{
    const char *shared = shared_or_skip();
    if (!shared)
        return;
    char longp[4000] = "";
    for (int i = 0; i < 40; i++)
        strcat(longp, i % 3 ? "a (red:1.2) fox, " : "[snowy] forest BREAK ");
    for (int xl = 0; xl < 2; xl++) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s/reference/%s/diffusers", shared, xl ? "tiny-sdxl" : "tiny-sd15");
        vf_model *m = NULL;
        CHECK_OK(vf_model_open(dir, NULL, &m));
        if (!m)
            continue;
        vf_generate_params p;
        vf_generate_params_init(&p);
        p.prompt = longp;
        p.negative_prompt = "blurry";
        p.steps = 2;
        vf_embeddings *e = NULL;
        CHECK_OK(vf_encode_prompt(m, p.prompt, p.negative_prompt, &e));
        CHECK(e && e->seq_len >= 3 * 77 && e->seq_len % 77 == 0);
        vf_image *img = NULL;
        CHECK_OK(vf_generate(m, &p, &img));
        int finite = img != NULL;
        for (int i = 0; img && i < img->width * img->height * 3; i++)
            finite &= isfinite(img->pixels[i]);
        CHECK(finite);
        /* The plain syntax reads the same text differently. */
        vf_image *img2 = NULL;
        p.prompt_syntax = VF_PROMPT_SYNTAX_PLAIN;
        CHECK_OK(vf_generate(m, &p, &img2));
        CHECK(img && img2 && memcmp(img->pixels, img2->pixels, sizeof(float) * 3 * img->width * img->height) != 0);
        vf_image_free(img);
        vf_image_free(img2);
        vf_embeddings_free(e);
        vf_model_close(m);
    }
}

TEST_MAIN(TEST(test_preview_values), TEST(test_preview_errors), TEST(test_latent_callback),
          TEST(test_generate_long_prompt))
