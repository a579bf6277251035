/* Fault injection over a whole text-to-image run (issue 8, "Fault injection").
 *
 * The model is the tiny SD1.5 reference fixture (../shared/reference/tiny-sd15/
 * diffusers) seen through a scratch folder: its configs and weights are links to
 * the fixture, except the UNet weights, a private copy this test truncates and
 * replaces, and the tokenizer, a small vocabulary written by vf_synth_write_tokenizer
 * (loading CLIP's 49408-entry vocabulary under ASan would cost ~0.6 s per cold
 * run, and its own allocation failures are test_tokenizer's). Every run is
 * compared with one clean run of the same request.
 *
 * Faults, each on a freshly opened model so that every lazy step (tokenizer,
 * residencies, weight conversions, plans) is on the path:
 *   - the Nth host allocation fails, for every N of vf_model_open and of the
 *     first vf_generate after it (test_generate.c covers a warm model);
 *   - the UNet weights file is truncated after open (mapped and pread paths),
 *     rewritten in place with other bytes, or replaced by rename;
 *   - the progress callback (and the latents callback) cancels at every point
 *     it is called: each stage's start and end and every denoising step.
 * Every case checks the status and a message that says what failed, that no
 * image is returned and nothing is leaked (LSan fails the process), and that the
 * next request works: the same handle gives the clean run's image (after a
 * file change: a reopened model does).
 */
#include "test.h"

#include "core/alloc.h"
#include "io/safetensors.h"
#include "pipeline/synth.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define UNET_FILE "unet/diffusion_pytorch_model.safetensors"

static char g_dir[256];      /* the scratch model folder */
static char g_unet[512];     /* its private UNet weights */
static unsigned char *g_unet_bytes;
static size_t g_unet_len;
static vf_image *g_want;     /* the clean run's image */

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

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
    if (g_dir[0])
        nftw(g_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(g_unet_bytes);
    vf_image_free(g_want);
}

static int write_bytes(const char *path, const void *data, size_t n, int flags)
{
    int fd = open(path, O_WRONLY | flags, 0644);
    if (fd < 0)
        return 0;
    int ok = write(fd, data, n) == (ssize_t)n;
    return close(fd) == 0 && ok;
}

static int link_to(const char *fixture, const char *name)
{
    char src[1024], dst[1024];
    snprintf(src, sizeof src, "%s/%s", fixture, name);
    snprintf(dst, sizeof dst, "%s/%s", g_dir, name);
    return symlink(src, dst) == 0;
}

/* The scratch folder (see the top); 0 when it cannot be made. */
static int make_model_dir(const char *shared)
{
    char fx[512], p[1024];
    snprintf(fx, sizeof fx, "%s/reference/tiny-sd15/diffusers", shared);
    snprintf(g_dir, sizeof g_dir, "/tmp/vf_test_faults_XXXXXX");
    if (!mkdtemp(g_dir)) {
        g_dir[0] = '\0';
        return 0;
    }
    atexit(cleanup);
    int ok = link_to(fx, "model_index.json") && link_to(fx, "scheduler") && link_to(fx, "text_encoder") &&
             link_to(fx, "vae");
    snprintf(p, sizeof p, "%s/unet", g_dir);
    ok = ok && mkdir(p, 0755) == 0 && link_to(fx, "unet/config.json");
    snprintf(p, sizeof p, "%s/tokenizer", g_dir);
    ok = ok && mkdir(p, 0755) == 0 && vf_synth_write_tokenizer(p, "<|endoftext|>") == VF_OK;
    snprintf(p, sizeof p, "%s/" UNET_FILE, fx);
    FILE *f = ok ? fopen(p, "rb") : NULL;
    if (f && fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        rewind(f);
        g_unet_bytes = n > 0 ? malloc((size_t)n) : NULL;
        if (g_unet_bytes && fread(g_unet_bytes, 1, (size_t)n, f) == (size_t)n)
            g_unet_len = (size_t)n;
    }
    if (f)
        fclose(f);
    snprintf(g_unet, sizeof g_unet, "%s/" UNET_FILE, g_dir);
    return ok && g_unet_len && write_bytes(g_unet, g_unet_bytes, g_unet_len, O_CREAT | O_TRUNC);
}

/* ---- the request and its clean result ----------------------------------------- */

typedef struct progress {
    int calls;
    int cancel_at;               /* the 1-based call that cancels; 0: none   */
    vf_generation_step stage[64];
    int step[64];
    int latents_calls, cancel_latents_at;
} progress;

static int on_step(void *user, vf_generation_step stage, int step, int total)
{
    progress *pr = user;
    (void)total;
    if (pr->calls < 64) {
        pr->stage[pr->calls] = stage;
        pr->step[pr->calls] = step;
    }
    return ++pr->calls == pr->cancel_at;
}

static int on_latents(void *user, int step, int total, const vf_latents *l)
{
    progress *pr = user;
    (void)step;
    (void)total;
    (void)l;
    return ++pr->latents_calls == pr->cancel_latents_at;
}

static void params(vf_generate_params *p, progress *pr)
{
    vf_generate_params_init(p);
    p->prompt = "a photo of a cat wearing a tiny hat";
    p->negative_prompt = "blurry";
    p->steps = 2;
    p->guidance_scale = 5.0f;
    p->seed = 1234;
    p->on_step = on_step;
    p->on_latents = on_latents;
    p->user = pr;
}

static int same_image(const vf_image *a, const vf_image *b)
{
    if (!a || !b || a->width != b->width || a->height != b->height)
        return 0;
    size_t n = (size_t)a->width * a->height * 3;
    return memcmp(a->rgb, b->rgb, n) == 0 && memcmp(a->pixels, b->pixels, n * sizeof(float)) == 0;
}

static vf_status open_model(vf_model **m) { return vf_model_open(g_dir, NULL, m); }

/* A clean run on m gives the clean image. */
static int next_request_ok(vf_model *m)
{
    progress pr = {0};
    vf_generate_params p;
    params(&p, &pr);
    vf_image *img = NULL;
    vf_status st = vf_generate(m, &p, &img);
    if (st != VF_OK)
        fprintf(stderr, "the next request failed: %s: %s\n", vf_status_str(st), vf_last_error());
    int ok = st == VF_OK && same_image(img, g_want);
    vf_image_free(img);
    return ok;
}

static int setup(void)
{
    const char *shared = vf_test_shared();
    if (!shared) {
        printf("SKIP: ../shared/reference not found (set VF_SHARED)\n");
        exit(77);
    }
    if (g_want)
        return 1;
    CHECK(make_model_dir(shared));
    vf_model *m = NULL;
    CHECK_OK(open_model(&m));
    progress pr = {0};
    vf_generate_params p;
    params(&p, &pr);
    if (m)
        CHECK_OK(vf_generate(m, &p, &g_want));
    CHECK(g_want && g_want->width == 64 && g_want->height == 64);
    vf_model_close(m);
    return g_want != NULL;
}

/* ---- the Nth allocation fails --------------------------------------------------- */

static void test_alloc_fail_open(void)
{
    if (!setup())
        return;
    uint64_t before = vf_fault_alloc_count();
    vf_model *m = NULL;
    CHECK_OK(open_model(&m));
    vf_model_close(m);
    uint64_t K = vf_fault_alloc_count() - before;
    int failures = 0, bad = 0;
    double t0 = now();
    for (uint64_t k = 1; k <= K; k++) {
        m = (vf_model *)&k;  /* must be reset */
        vf_fault_alloc_fail_at(k);
        vf_status st = open_model(&m);
        vf_fault_alloc_fail_at(0);
        if (st == VF_OK) {
            vf_model_close(m);
            continue;
        }
        failures++;
        if (st != VF_ERR_NO_MEMORY || m != NULL || !strstr(vf_last_error(), "memory")) {
            bad++;
            fprintf(stderr, "open, allocation %llu: %s: %s\n", (unsigned long long)k, vf_status_str(st),
                    vf_last_error());
        }
    }
    printf("  vf_model_open: %llu allocations failed in turn, %d failed cleanly (%.1f s)\n",
           (unsigned long long)K, failures, now() - t0);
    CHECK(K > 50 && failures > 0);
    CHECK(bad == 0);
    CHECK_OK(open_model(&m));
    CHECK(m && next_request_ok(m));
    vf_model_close(m);
}

/* Every allocation of the first generation after open fails in turn. After a
 * failure the same handle is asked again, without faults, the first time a
 * failure lands in a new place (stage and step of the last progress call) and
 * every 128th time otherwise: that re-run is a whole generation, the dominant
 * cost. */
static void test_alloc_fail_generate(void)
{
    if (!setup())
        return;
    vf_model *m = NULL;
    progress pr = {0};
    vf_generate_params p;
    params(&p, &pr);
    vf_image *img = NULL;
    CHECK_OK(open_model(&m));
    uint64_t before = vf_fault_alloc_count();
    if (m)
        CHECK_OK(vf_generate(m, &p, &img));
    uint64_t K = vf_fault_alloc_count() - before;
    CHECK(same_image(img, g_want));
    vf_image_free(img);
    vf_model_close(m);
    int failures = 0, bad = 0, rechecked = 0, last_place = -1;
    double t0 = now();
    for (uint64_t k = 1; k <= K; k++) {
        m = NULL;
        if (open_model(&m) != VF_OK) {
            CHECK_MSG(0, "open: %s", vf_last_error());
            break;
        }
        pr = (progress){0};
        img = NULL;
        vf_fault_alloc_fail_at(k);
        vf_status st = vf_generate(m, &p, &img);
        vf_fault_alloc_fail_at(0);
        if (st == VF_OK) {
            bad += !same_image(img, g_want);
        } else {
            failures++;
            int ok = st == VF_ERR_NO_MEMORY && img == NULL && strstr(vf_last_error(), "memory");
            if (!ok) {
                bad++;
                fprintf(stderr, "generate, allocation %llu: %s: %s\n", (unsigned long long)k,
                        vf_status_str(st), vf_last_error());
            }
            int n = pr.calls ? pr.calls - 1 : 0;
            int place = pr.calls ? (int)pr.stage[n] * 1000 + pr.step[n] : -1;
            if (place != last_place || k % 128 == 0) {
                rechecked++;
                if (!next_request_ok(m)) {
                    bad++;
                    fprintf(stderr, "after allocation %llu failed (%s), the next request differs\n",
                            (unsigned long long)k, vf_last_error());
                }
            }
            last_place = place;
        }
        vf_image_free(img);
        vf_model_close(m);
    }
    printf("  vf_generate (cold): %llu allocations failed in turn, %d failed cleanly, %d re-run on the "
           "same handle (%.1f s)\n",
           (unsigned long long)K, failures, rechecked, now() - t0);
    CHECK(K > 100 && failures > 0 && rechecked > 3);
    CHECK(bad == 0);
}

/* ---- the weights file changes while open ---------------------------------------- */

static int restore_unet(void)
{
    return write_bytes(g_unet, g_unet_bytes, g_unet_len, O_TRUNC);
}

/* A generation on m fails with VF_ERR_IO naming the UNet file and `word`. */
static void expect_io_error(vf_model *m, const char *word, const char *label)
{
    progress pr = {0};
    vf_generate_params p;
    params(&p, &pr);
    vf_image *img = NULL;
    vf_status st = vf_generate(m, &p, &img);
    printf("  %s: %s\n", label, vf_last_error());
    CHECK_MSG(st == VF_ERR_IO, "%s: got %s: %s", label, vf_status_str(st), vf_last_error());
    CHECK_MSG(strstr(vf_last_error(), g_unet) && strstr(vf_last_error(), word),
              "%s: the message does not name %s and '%s': %s", label, g_unet, word, vf_last_error());
    CHECK(img == NULL);
    vf_image_free(img);
}

static void reopen_works(const char *label)
{
    vf_model *m = NULL;
    CHECK_OK(open_model(&m));
    CHECK_MSG(m && next_request_ok(m), "%s: a reopened model does not give the clean image", label);
    vf_model_close(m);
}

static void test_truncated_while_open(void)
{
    if (!setup())
        return;
    for (int pread_only = 0; pread_only < 2; pread_only++) {
        const char *label = pread_only ? "truncated (pread)" : "truncated (mapped)";
        vf_model *m = NULL;
        vf_st_fault_no_mmap(pread_only);
        vf_status st = open_model(&m);
        vf_st_fault_no_mmap(0);
        CHECK_OK(st);
        if (!m)
            continue;
        CHECK(truncate(g_unet, (off_t)(g_unet_len / 2)) == 0);
        expect_io_error(m, "truncated", label);
        /* Still broken for this handle: it fails again, cleanly. */
        expect_io_error(m, "truncated", label);
        CHECK(restore_unet());
        /* Restored bytes are not the bytes it opened (the file changed under
         * it): still refused, and a reopened model works. */
        expect_io_error(m, "changed", label);
        vf_model_close(m);
        reopen_works(label);
    }
}

static void test_replaced_while_open(void)
{
    if (!setup())
        return;
    /* Rewritten in place with other bytes of the same size: refused. */
    vf_model *m = NULL;
    CHECK_OK(open_model(&m));
    unsigned char *other = malloc(g_unet_len);
    CHECK(other != NULL);
    if (m && other) {
        memcpy(other, g_unet_bytes, g_unet_len);
        for (size_t i = g_unet_len / 2; i < g_unet_len; i++)
            other[i] ^= 0x5a;
        CHECK(write_bytes(g_unet, other, g_unet_len, 0));
        expect_io_error(m, "changed", "rewritten in place");
        CHECK(restore_unet());
    }
    free(other);
    vf_model_close(m);
    reopen_works("rewritten in place");

    /* Replaced by rename (as a download tool or vf_st_write does): the open
     * model keeps reading the file it opened, so its image is the clean one;
     * a reopened model reads the new file. */
    m = NULL;
    CHECK_OK(open_model(&m));
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.new", g_unet);
    unsigned char *zeros = calloc(1, g_unet_len);
    CHECK(zeros && write_bytes(tmp, zeros, g_unet_len, O_CREAT | O_TRUNC) && rename(tmp, g_unet) == 0);
    free(zeros);
    CHECK(m && next_request_ok(m));
    vf_model_close(m);
    m = NULL;
    vf_status st = open_model(&m);
    CHECK_MSG(st == VF_ERR_FORMAT && strstr(vf_last_error(), g_unet),
              "a zeroed weights file opened: %s: %s", vf_status_str(st), vf_last_error());
    vf_model_close(m);
    CHECK(write_bytes(g_unet, g_unet_bytes, g_unet_len, O_CREAT | O_TRUNC));
    reopen_works("replaced by rename");
}

/* ---- cancellation everywhere ------------------------------------------------------ */

static void test_cancel_everywhere(void)
{
    if (!setup())
        return;
    progress pr = {0};
    vf_generate_params p;
    params(&p, &pr);
    vf_model *m = NULL;
    vf_image *img = NULL;
    CHECK_OK(open_model(&m));
    if (m)
        CHECK_OK(vf_generate(m, &p, &img));
    vf_model_close(m);
    vf_image_free(img);
    int calls = pr.calls, lcalls = pr.latents_calls;
    /* encode 0,1; denoise 0..steps; decode 0,1; latents after each step */
    CHECK(calls == 2 + p.steps + 1 + 2 && lcalls == p.steps);
    int bad = 0;
    for (int c = 1; c <= calls + lcalls; c++) {
        int via_latents = c > calls;
        m = NULL;
        img = NULL;
        if (open_model(&m) != VF_OK)
            break;
        pr = (progress){0};
        if (via_latents)
            pr.cancel_latents_at = c - calls;
        else
            pr.cancel_at = c;
        vf_status st = vf_generate(m, &p, &img);
        const char *stage = via_latents ? "denoise" : vf_generation_step_name(pr.stage[c - 1]);
        int ok = st == VF_ERR_CANCELLED && img == NULL && strstr(vf_last_error(), "cancel") &&
                 strstr(vf_last_error(), stage);
        /* nothing ran past the cancelling call */
        ok = ok && (via_latents || pr.calls == c);
        if (!ok) {
            bad++;
            fprintf(stderr, "cancel at call %d (%s): %s: %s\n", c, stage, vf_status_str(st), vf_last_error());
        }
        if (!next_request_ok(m)) {
            bad++;
            fprintf(stderr, "after a cancel at call %d (%s) the next request differs\n", c, stage);
        }
        vf_image_free(img);
        vf_model_close(m);
    }
    printf("  cancelled at each of %d progress and %d latents calls\n", calls, lcalls);
    CHECK(bad == 0);
}

TEST_MAIN(TEST(test_alloc_fail_open), TEST(test_alloc_fail_generate), TEST(test_truncated_while_open),
          TEST(test_replaced_while_open), TEST(test_cancel_everywhere))
