/* Inputs users get wrong (issue 8): each is refused early with a status and a
 * message that names what is wrong, and nothing is written.
 *
 *   - image sizes: not a multiple of the model's step, negative, absurd (past
 *     VF_MAX_IMAGE_SIDE, or products that would overflow a buffer size);
 *   - steps zero, negative or past the schedule; guidance NaN or infinite, or
 *     finite but so large that the latents overflow (VF_ERR_NONFINITE);
 *   - a checkpoint of one architecture given as the other: single files with
 *     the other architecture's config folder, and diffusers folders whose UNet
 *     (or text encoder) comes from the other architecture, refused at open;
 *   - NaN or infinite weights in the text encoder, UNet or VAE: the stage that
 *     first produces non-finite values stops with VF_ERR_NONFINITE naming the
 *     stage and the tensor, and the command writes no (black) image.
 * Models are the tiny reference fixtures, through scratch folders of links
 * with the one file a case changes written privately.
 */
#include "test.h"

#include "core/alloc.h"
#include "io/safetensors.h"

#include <fcntl.h>
#include <float.h>
#include <ftw.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_tmp[256];

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(p);
    return 0;
}

static void cleanup(void)
{
    if (g_tmp[0])
        nftw(g_tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *tmp(void)
{
    if (!g_tmp[0]) {
        snprintf(g_tmp, sizeof g_tmp, "/tmp/vf_test_inputs_XXXXXX");
        if (!mkdtemp(g_tmp)) {
            g_tmp[0] = '\0';
            return "/tmp";
        }
        atexit(cleanup);
    }
    return g_tmp;
}

static const char *ref(const char *shared, const char *rel)
{
    static char buf[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/reference/%s", shared, rel);
    return buf[k];
}

/* tmp/name: a folder of links to each entry of fixture folder `from`, with the
 * entries in `own` (NULL-terminated) taken from `own_from` instead (links) or
 * left out when own_from is NULL. Returns the folder. */
static const char *mixed_folder(const char *name, const char *from, const char *const *own, const char *own_from)
{
    static char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", tmp(), name);
    mkdir(dir, 0755);
    static const char *const entries[] = {"model_index.json", "scheduler", "text_encoder", "text_encoder_2",
                                          "tokenizer", "tokenizer_2", "unet", "vae", NULL};
    for (int i = 0; entries[i]; i++) {
        int mine = 0;
        for (int j = 0; own && own[j]; j++)
            mine |= strcmp(own[j], entries[i]) == 0;
        const char *src = mine ? own_from : from;
        if (!src)
            continue;
        char s[1024], d[1024];
        snprintf(s, sizeof s, "%s/%s", src, entries[i]);
        snprintf(d, sizeof d, "%s/%s", dir, entries[i]);
        if (access(s, F_OK) == 0)
            CHECK(symlink(s, d) == 0);
    }
    return dir;
}

static vf_status gen(vf_model *m, vf_generate_params *p, vf_image **img)
{
    *img = NULL;
    return vf_generate(m, p, img);
}

static void small_params(vf_generate_params *p)
{
    vf_generate_params_init(p);
    p->prompt = "a red circle";
    p->steps = 1;
    p->seed = 5;
}

/* vf_generate refuses with st and a message naming each of the words. */
static void expect(vf_model *m, vf_generate_params *p, vf_status want, const char *w1, const char *w2)
{
    vf_image *img = NULL;
    vf_status st = gen(m, p, &img);
    CHECK_MSG(st == want, "%s: got %s (%s)", w1, vf_status_str(st), vf_last_error());
    CHECK_MSG(strstr(vf_last_error(), w1) && (!w2 || strstr(vf_last_error(), w2)),
              "message '%s' does not name '%s' / '%s'", vf_last_error(), w1, w2 ? w2 : "");
    CHECK(img == NULL);
    vf_image_free(img);
}

/* ---- sizes, steps, guidance ---------------------------------------------------- */

static void test_request_values(void)
{
    SKIP_WITHOUT_SHARED(shared);
    vf_model *m = NULL;
    CHECK_OK(vf_model_open(ref(shared, "tiny-sd15/diffusers"), NULL, &m));
    if (!m)
        return;
    vf_generate_params p;
    small_params(&p);
    /* SD1.5's step is 64 pixels (VAE 8 x three UNet halvings): 65 and 72 are
     * refused with a suggestion, as are negative and absurd sizes. */
    p.width = 65;
    expect(m, &p, VF_ERR_INVALID_ARG, "width 65", "try 64");
    p.width = 72;
    expect(m, &p, VF_ERR_INVALID_ARG, "width 72", "multiple of 64");
    p.width = 64;
    p.height = -64;
    expect(m, &p, VF_ERR_INVALID_ARG, "height -64", NULL);
    p.height = INT_MIN;
    expect(m, &p, VF_ERR_INVALID_ARG, "height", NULL);
    p.height = INT_MAX;
    expect(m, &p, VF_ERR_INVALID_ARG, "height", NULL);
    p.height = VF_MAX_IMAGE_SIDE + 64;
    expect(m, &p, VF_ERR_INVALID_ARG, "height", NULL);
    p.height = 64;
    /* Decoding latents whose image would pass the cap, or whose size is
     * nonsense, is refused before any buffer is sized from them. */
    float one = 0;
    vf_latents big = {1, 4, INT_MAX / 4, INT_MAX / 4, &one}, neg = {1, 4, -8, 8, &one}, none = {0, 4, 8, 8, &one};
    const vf_latents *bad[] = {&big, &neg, &none};
    for (int i = 0; i < 3; i++) {
        vf_image *img = NULL;
        CHECK(vf_decode(m, bad[i], &img) == VF_ERR_INVALID_ARG && img == NULL);
        CHECK(strstr(vf_last_error(), "latents") != NULL);
    }
    /* steps */
    const int steps[] = {0, -1, INT_MIN, INT_MAX, 1001};
    for (int i = 0; i < 5; i++) {
        p.steps = steps[i];
        expect(m, &p, VF_ERR_INVALID_ARG, "steps", NULL);
    }
    p.steps = 1;
    /* guidance: not finite is refused; finite but huge overflows the
     * computation (here the VAE's), which is caught instead of decoding to
     * black, and blamed on the arithmetic since the weights are finite. */
    const float gs[] = {NAN, -NAN, INFINITY, -INFINITY};
    for (int i = 0; i < 4; i++) {
        p.guidance_scale = gs[i];
        expect(m, &p, VF_ERR_INVALID_ARG, "guidance_scale", NULL);
    }
    p.guidance_scale = FLT_MAX;
    p.steps = 3;
    expect(m, &p, VF_ERR_NONFINITE, "NaN or infinite", "overflowed");
    p.steps = 1;
    /* After all that the model still works. */
    p.guidance_scale = 7.5f;
    vf_image *img = NULL;
    CHECK_OK(gen(m, &p, &img));
    CHECK(img && img->width == 64 && img->height == 64);
    vf_image_free(img);
    vf_model_close(m);
}

/* ---- one architecture given as the other ----------------------------------------- */

static void expect_open_fails(const char *path, const char *config_dir, vf_status want, const char *w1,
                              const char *w2)
{
    vf_model_options o;
    vf_model_options_init(&o);
    o.config_dir = config_dir;
    o.tokenizer_dir = config_dir;
    vf_model *m = (vf_model *)&o;
    vf_status st = vf_model_open(path, &o, &m);
    CHECK_MSG(st == want, "%s: got %s (%s)", path, vf_status_str(st), vf_last_error());
    CHECK_MSG(strstr(vf_last_error(), w1) && (!w2 || strstr(vf_last_error(), w2)),
              "message '%s' does not name '%s' / '%s'", vf_last_error(), w1, w2 ? w2 : "");
    CHECK(m == NULL);
    vf_model_close(st == VF_OK ? m : NULL);
}

static void test_wrong_architecture(void)
{
    SKIP_WITHOUT_SHARED(shared);
    const char *sd15 = ref(shared, "tiny-sd15/diffusers"), *xl = ref(shared, "tiny-sdxl/diffusers");
    /* Single files with the other architecture's config folder. */
    expect_open_fails(ref(shared, "tiny-sd15/tiny-sd15.safetensors"), xl, VF_ERR_SHAPE, "unet/config.json",
                      "block_out_channels");
    expect_open_fails(ref(shared, "tiny-sdxl/tiny-sdxl.safetensors"), sd15, VF_ERR_SHAPE, "unet/config.json",
                      "tiny-sdxl.safetensors");
    /* Diffusers folders with a component of the other architecture. */
    static const char *const unet[] = {"unet", NULL}, *const te[] = {"text_encoder", NULL};
    expect_open_fails(mixed_folder("sd15_with_sdxl_unet", sd15, unet, xl), NULL, VF_ERR_SHAPE,
                      "text_time conditioning but the pipeline is SD1.5", NULL);
    expect_open_fails(mixed_folder("sdxl_with_sd15_unet", xl, unet, sd15), NULL, VF_ERR_SHAPE,
                      "lacks SDXL's text_time conditioning", NULL);
    /* The tiny fixtures' CLIP-L widths are 16 (SD1.5) and 16 + 16 = 32 with
     * CLIP-G (SDXL): an SDXL text encoder config of another width is caught. */
    const char *mixed = mixed_folder("sd15_with_sdxl_te", sd15, te, xl);
    vf_model *m = NULL;
    vf_status st = vf_model_open(mixed, NULL, &m);
    CHECK_MSG(st == VF_OK || (st == VF_ERR_SHAPE && strstr(vf_last_error(), "cross-attends")),
              "%s: %s", vf_status_str(st), vf_last_error());
    vf_model_close(m);
    /* VAEs of both are the same architecture (only the scaling factor
     * differs): swapping one is allowed, as diffusers allows it. */
    static const char *const vae[] = {"vae", NULL};
    m = NULL;
    CHECK_OK(vf_model_open(mixed_folder("sdxl_with_sd15_vae", xl, vae, sd15), NULL, &m));
    vf_model_close(m);
    /* A component model_index.json lists but the folder lacks. */
    expect_open_fails(mixed_folder("sd15_no_unet", sd15, unet, NULL), NULL, VF_ERR_NOT_FOUND,
                      "component folder 'unet'", "missing");
}

/* ---- NaN weights ---------------------------------------------------------------------- */

/* Writes dst: the safetensors file src with element 0 of tensor `name` set to
 * NaN (or infinity). */
static int poison(const char *src, const char *dst, const char *name, int inf)
{
    vf_st_file *f = NULL;
    if (vf_st_open(src, &f) != VF_OK)
        return 0;
    size_t n = vf_st_count(f);
    vf_st_write_tensor *ts = calloc(n, sizeof *ts);
    int found = 0, ok = ts != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        const vf_st_tensor *t = vf_st_at(f, i);
        unsigned char *b = malloc(t->nbytes ? t->nbytes : 1);
        ok = b && vf_st_read(f, t, 0, b, t->nbytes) == VF_OK;
        ts[i] = (vf_st_write_tensor){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = b};
        memcpy(ts[i].shape, t->shape, sizeof ts[i].shape);
        if (ok && strcmp(t->name, name) == 0 && t->nbytes >= 4) {
            found = 1;
            if (t->dtype == VF_DTYPE_F32) {
                float v = inf ? INFINITY : NAN;
                memcpy(b, &v, 4);
            } else if (t->dtype == VF_DTYPE_F16) {
                uint16_t v = inf ? 0x7c00 : 0x7e00;
                memcpy(b, &v, 2);
            } else if (t->dtype == VF_DTYPE_BF16) {
                uint16_t v = inf ? 0x7f80 : 0x7fc0;
                memcpy(b, &v, 2);
            } else {
                found = 0;
            }
        }
    }
    ok = ok && found && vf_st_write(dst, ts, n, NULL) == VF_OK;
    for (size_t i = 0; ts && i < n; i++)
        free((void *)ts[i].data);
    free(ts);
    vf_st_close(f);
    return ok;
}

/* A folder like tiny-sd15 whose component comp has tensor `name` poisoned. */
static const char *poisoned_model(const char *shared, const char *comp, const char *file, const char *name,
                                  int inf)
{
    char label[128];
    snprintf(label, sizeof label, "nan_%s%s", comp, inf ? "_inf" : "");
    const char *const own[] = {comp, NULL};
    const char *fx = ref(shared, "tiny-sd15/diffusers");
    const char *dir = mixed_folder(label, fx, own, NULL);
    static char out[512];
    snprintf(out, sizeof out, "%s", dir);
    char p[1024], s[1024];
    snprintf(p, sizeof p, "%s/%s", out, comp);
    CHECK(mkdir(p, 0755) == 0);
    snprintf(p, sizeof p, "%s/%s/config.json", out, comp);
    snprintf(s, sizeof s, "%s/%s/config.json", fx, comp);
    CHECK(symlink(s, p) == 0);
    snprintf(p, sizeof p, "%s/%s/%s", out, comp, file);
    snprintf(s, sizeof s, "%s/%s/%s", fx, comp, file);
    CHECK_MSG(poison(s, p, name, inf), "cannot poison %s in %s", name, s);
    return out;
}

static void nan_case(const char *shared, const char *comp, const char *file, const char *tensor, int inf,
                     const char *stage)
{
    const char *dir = poisoned_model(shared, comp, file, tensor, inf);
    vf_model *m = NULL;
    CHECK_OK(vf_model_open(dir, NULL, &m));
    if (!m)
        return;
    vf_generate_params p;
    small_params(&p);
    p.steps = 2;
    vf_image *img = NULL;
    vf_status st = gen(m, &p, &img);
    printf("  %s %s: %s\n", comp, inf ? "inf" : "NaN", vf_last_error());
    CHECK_MSG(st == VF_ERR_NONFINITE, "%s: got %s: %s", tensor, vf_status_str(st), vf_last_error());
    CHECK_MSG(strstr(vf_last_error(), stage) && strstr(vf_last_error(), tensor),
              "the message names neither the stage '%s' nor the tensor '%s': %s", stage, tensor, vf_last_error());
    CHECK(img == NULL);
    vf_image_free(img);
    vf_model_close(m);

    /* The command exits with an error and writes no image. */
    const char *cli = getenv("VF_CLI");
    if (!cli || access(cli, X_OK) != 0)
        return;
    char png[600], cmd[2048];
    snprintf(png, sizeof png, "%s/%s.png", tmp(), comp);
    snprintf(cmd, sizeof cmd, "'%s' generate --model '%s' --prompt x --steps 1 --output '%s' >/dev/null 2>&1",
             cli, dir, png);
    int rc = system(cmd);
    CHECK_MSG(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) != 0, "the command succeeded with %s poisoned", tensor);
    CHECK_MSG(access(png, F_OK) != 0, "the command wrote %s", png);
}

static void test_nan_weights(void)
{
    SKIP_WITHOUT_SHARED(shared);
    nan_case(shared, "unet", "diffusion_pytorch_model.safetensors", "down_blocks.0.resnets.0.conv1.weight", 0,
             "denoise step 0: the unet output");
    nan_case(shared, "unet", "diffusion_pytorch_model.safetensors", "conv_out.bias", 1,
             "denoise step 0: the unet output");
    nan_case(shared, "vae", "diffusion_pytorch_model.safetensors", "decoder.conv_in.weight", 0,
             "decode: the vae output");
    nan_case(shared, "text_encoder", "model.safetensors", "text_model.encoder.layers.0.mlp.fc1.weight", 0,
             "encode_prompt: the text_encoder output");
}

TEST_MAIN(TEST(test_request_values), TEST(test_wrong_architecture), TEST(test_nan_weights))
