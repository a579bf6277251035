/* PNG writing and reading: pixels and text chunks survive a round trip (ASCII in
 * tEXt, other UTF-8 in iTXt), the temporary file is renamed away, and failures
 * name the path and leave nothing behind (ASan checks the leaks). */
#include "test.h"

#include "core/alloc.h"
#include "io/png.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

static const char *make_tmpdir(void)
{
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/vf_test_png_XXXXXX");
        if (!mkdtemp(tmpdir))
            return NULL;
    }
    return tmpdir;
}

static uint8_t *pattern(int w, int h)
{
    uint8_t *p = malloc((size_t)w * h * 3);
    for (int i = 0; i < w * h * 3; i++)
        p[i] = (uint8_t)((i * 37 + i / 7) & 0xFF);
    return p;
}

/* Counts chunk types in a PNG file (a tiny chunk walker, independent of libpng). */
static int count_chunks(const char *path, const char *type)
{
    FILE *f = fopen(path, "rb");
    unsigned char hdr[8];
    int n = 0;
    if (!f || fread(hdr, 1, 8, f) != 8) {
        if (f)
            fclose(f);
        return -1;
    }
    while (fread(hdr, 1, 8, f) == 8) {
        uint32_t len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
        if (memcmp(hdr + 4, type, 4) == 0)
            n++;
        if (fseek(f, (long)len + 4, SEEK_CUR) != 0)
            break;
    }
    fclose(f);
    return n;
}

static void test_round_trip(void)
{
    const char *dir = make_tmpdir();
    CHECK(dir != NULL);
    char path[512], tmp[520];
    snprintf(path, sizeof path, "%s/a.png", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int w = 37, h = 19;
    uint8_t *rgb = pattern(w, h);
    const char *prompt = "a café in 東京, ünïcödé \xF0\x9F\x8E\xA8 art";
    const char *kv[] = {"parameters", "a cat\nSteps: 20, Sampler: Euler, Seed: 42",
                        "prompt", prompt, "empty", "", NULL};
    CHECK_OK(vf_png_write(path, rgb, w, h, kv));
    CHECK(access(tmp, F_OK) != 0);
    CHECK(count_chunks(path, "tEXt") == 2);
    CHECK(count_chunks(path, "iTXt") == 1);
    CHECK(count_chunks(path, "IHDR") == 1);

    vf_png_image img;
    CHECK_OK(vf_png_read(path, &img));
    CHECK(img.w == w && img.h == h);
    CHECK(img.rgb && memcmp(img.rgb, rgb, (size_t)w * h * 3) == 0);
    CHECK(img.ntext == 3);
    const char *p = vf_png_text(&img, "parameters");
    CHECK(p && strcmp(p, kv[1]) == 0);
    p = vf_png_text(&img, "prompt");
    CHECK(p && strcmp(p, prompt) == 0);
    p = vf_png_text(&img, "empty");
    CHECK(p && strcmp(p, "") == 0);
    CHECK(vf_png_text(&img, "missing") == NULL);
    vf_png_image_free(&img);
    CHECK(img.rgb == NULL && img.ntext == 0);

    /* No text, overwrite of an existing file. */
    uint8_t px[3] = {255, 0, 128};
    CHECK_OK(vf_png_write(path, px, 1, 1, NULL));
    CHECK_OK(vf_png_read(path, &img));
    CHECK(img.w == 1 && img.h == 1 && img.ntext == 0);
    CHECK(img.rgb && img.rgb[0] == 255 && img.rgb[1] == 0 && img.rgb[2] == 128);
    vf_png_image_free(&img);
    remove(path);
    free(rgb);
}

static void test_errors(void)
{
    uint8_t px[12] = {0};
    const char *bad = "/nonexistent-vf-dir/sub/out.png";
    CHECK(vf_png_write(bad, px, 2, 2, NULL) == VF_ERR_IO);
    CHECK(strstr(vf_last_error(), bad) != NULL);

    const char *dir = make_tmpdir();
    char path[512], tmp[520];
    snprintf(path, sizeof path, "%s/b.png", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);

    /* Target is a directory: the rename fails, the tmp file is removed. */
    CHECK(mkdir(path, 0700) == 0);
    CHECK(vf_png_write(path, px, 2, 2, NULL) == VF_ERR_IO);
    CHECK(strstr(vf_last_error(), path) != NULL);
    CHECK(access(tmp, F_OK) != 0);
    rmdir(path);

    const char *badkey[] = {"", "v", NULL};
    CHECK(vf_png_write(path, px, 2, 2, badkey) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), path) != NULL);
    const char *badutf[] = {"k", "\xC3\x28", NULL};
    CHECK(vf_png_write(path, px, 2, 2, badutf) == VF_ERR_INVALID_ARG);
    const char *noval[] = {"k", NULL};
    CHECK(vf_png_write(path, px, 2, 2, noval) == VF_ERR_INVALID_ARG);
    CHECK(vf_png_write(path, px, 0, 2, NULL) == VF_ERR_INVALID_ARG);
    CHECK(access(path, F_OK) != 0 && access(tmp, F_OK) != 0);

    /* Reading: missing file, not a PNG, truncated PNG. */
    vf_png_image img;
    CHECK(vf_png_read(path, &img) == VF_ERR_IO);
    CHECK(strstr(vf_last_error(), path) != NULL);
    FILE *f = fopen(path, "wb");
    fputs("not a png at all", f);
    fclose(f);
    CHECK(vf_png_read(path, &img) == VF_ERR_FORMAT);
    CHECK(strstr(vf_last_error(), path) != NULL);
    CHECK(img.rgb == NULL);

    uint8_t *rgb = pattern(64, 64);
    const char *kv[] = {"parameters", "x", NULL};
    CHECK_OK(vf_png_write(path, rgb, 64, 64, kv));
    f = fopen(path, "rb");
    uint8_t buf[8192];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    CHECK(n > 200);
    f = fopen(path, "wb");
    fwrite(buf, 1, n / 2, f);
    fclose(f);
    CHECK(vf_png_read(path, &img) == VF_ERR_FORMAT);
    CHECK(strstr(vf_last_error(), path) != NULL);
    CHECK(img.rgb == NULL && img.ntext == 0);
    remove(path);
    free(rgb);
}

/* Every allocation failure inside write/read is an error, never a leak or crash. */
static void test_alloc_faults(void)
{
    const char *dir = make_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/c.png", dir);
    uint8_t *rgb = pattern(8, 8);
    const char *kv[] = {"parameters", "a", "prompt", "\xC3\xA9t\xC3\xA9", NULL};
    int failures = 0;
    for (uint64_t k = 1; k < 20; k++) {
        vf_fault_alloc_fail_at(k);
        vf_status st = vf_png_write(path, rgb, 8, 8, kv);
        vf_fault_alloc_fail_at(0);
        if (st != VF_OK) {
            failures++;
            CHECK(st == VF_ERR_NO_MEMORY);
            CHECK(strstr(vf_last_error(), path) != NULL);
        }
    }
    CHECK(failures >= 2);
    CHECK_OK(vf_png_write(path, rgb, 8, 8, kv));
    failures = 0;
    for (uint64_t k = 1; k < 20; k++) {
        vf_png_image img;
        vf_fault_alloc_fail_at(k);
        vf_status st = vf_png_read(path, &img);
        vf_fault_alloc_fail_at(0);
        if (st != VF_OK) {
            failures++;
            CHECK(st == VF_ERR_NO_MEMORY);
            CHECK(img.rgb == NULL);
        } else {
            CHECK(img.ntext == 2);
            vf_png_image_free(&img);
        }
    }
    CHECK(failures >= 4);
    remove(path);
    char tmp[520];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(access(tmp, F_OK) != 0);
    free(rgb);
    rmdir(dir);
}

TEST_MAIN(TEST(test_round_trip), TEST(test_errors), TEST(test_alloc_faults))
