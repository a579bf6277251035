/* Tokenizer discovery for single-file checkpoints (pipeline/tokenizer_find.h):
 * the hub cache folder from the environment, candidates in a fake Hugging Face
 * cache built in a temp dir from synthesized tokenizer files (never the CLIP
 * vocabulary), refs/main preferred, partial snapshots skipped, laion's
 * tokenizer_2 padded with "!", and, with the shared tiny checkpoints, the whole
 * path through vf_model_open + vf_encode_prompt and the error that lists where
 * it looked.
 */
#include "core/alloc.h"
#include "pipeline/model.h"
#include "pipeline/synth.h"
#include "pipeline/tokenizer.h"
#include "pipeline/tokenizer_find.h"
#include "test.h"

#include <ftw.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#define REV "0123456789abcdef0123456789abcdef01234567"

static char g_root[64];

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void rm_tree(const char *dir)
{
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* mkdir -p */
static int mkdirs(const char *path)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            mkdir(tmp, 0755);
            *p = '/';
        }
    }
    return mkdir(tmp, 0755) == 0 || access(tmp, F_OK) == 0 ? 0 : -1;
}

/* A synthesized tokenizer at hub/REPO_FOLDER/snapshots/rev/sub (sub may be ""). */
static void put_tokenizer(const char *hub, const char *repo_folder, const char *rev, const char *sub, const char *pad)
{
    char dir[PATH_MAX + 256];
    snprintf(dir, sizeof dir, "%s/%s/snapshots/%s%s%s", hub, repo_folder, rev, sub[0] ? "/" : "", sub);
    CHECK(mkdirs(dir) == 0);
    CHECK_OK(vf_synth_write_tokenizer(dir, pad));
}

static void put_ref(const char *hub, const char *repo_folder, const char *rev)
{
    char path[PATH_MAX + 128];
    snprintf(path, sizeof path, "%s/%s/refs", hub, repo_folder);
    CHECK(mkdirs(path) == 0);
    strcat(path, "/main");
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fprintf(f, "%s", rev);
        fclose(f);
    }
}

static const char *new_root(void)
{
    strcpy(g_root, "/tmp/vf_hfcache_XXXXXX");
    CHECK(mkdtemp(g_root) != NULL);
    return g_root;
}

static void clear_env(void)
{
    unsetenv("HF_HUB_CACHE");
    unsetenv("HUGGINGFACE_HUB_CACHE");
    unsetenv("HF_HOME");
    unsetenv("XDG_CACHE_HOME");
}

static void test_cache_dir_from_env(void)
{
    char *home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
    clear_env();
    setenv("HOME", "/h", 1);
    char *c = vf_hf_hub_cache();
    CHECK(c && strcmp(c, "/h/.cache/huggingface/hub") == 0);
    vf_free(c);
    setenv("XDG_CACHE_HOME", "/x", 1);
    c = vf_hf_hub_cache();
    CHECK(c && strcmp(c, "/x/huggingface/hub") == 0);
    vf_free(c);
    setenv("HF_HOME", "/hf", 1);
    c = vf_hf_hub_cache();
    CHECK(c && strcmp(c, "/hf/hub") == 0);
    vf_free(c);
    setenv("HUGGINGFACE_HUB_CACHE", "/legacy", 1);
    c = vf_hf_hub_cache();
    CHECK(c && strcmp(c, "/legacy") == 0);
    vf_free(c);
    setenv("HF_HUB_CACHE", "/new", 1);
    c = vf_hf_hub_cache();
    CHECK(c && strcmp(c, "/new") == 0);
    vf_free(c);
    clear_env();
    unsetenv("HOME");
    CHECK(vf_hf_hub_cache() == NULL);
    vf_tok_source src;
    int found = 1;
    char looked[512] = "";
    CHECK_OK(vf_tokenizer_find_cached(VF_ARCH_SD15, 0, &src, &found, looked, sizeof looked));
    CHECK(!found && strstr(looked, "HOME") != NULL);
    if (home) {
        setenv("HOME", home, 1);
        free(home);
    }
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static void test_find_sdxl_base(void)
{
    const char *root = new_root();
    char hub[256];
    snprintf(hub, sizeof hub, "%s/hf/hub", root);
    const char *sdxl = "models--stabilityai--stable-diffusion-xl-base-1.0";
    /* refs/main names REV; an older, sorted-first snapshot is partial. */
    put_tokenizer(hub, sdxl, REV, "tokenizer", "<|endoftext|>");
    put_tokenizer(hub, sdxl, REV, "tokenizer_2", "!");
    put_ref(hub, sdxl, REV "\n");
    char partial[PATH_MAX + 256];
    snprintf(partial, sizeof partial, "%s/%s/snapshots/000old/tokenizer", hub, sdxl);
    CHECK(mkdirs(partial) == 0);
    strcat(partial, "/vocab.json");
    FILE *f = fopen(partial, "w");
    if (f)
        fclose(f);
    clear_env();
    char home[256];
    snprintf(home, sizeof home, "%s/hf", root);
    setenv("HF_HOME", home, 1);

    vf_tok_source src;
    int found = 0;
    char looked[1024] = "";
    CHECK_OK(vf_tokenizer_find_cached(VF_ARCH_SDXL, 0, &src, &found, looked, sizeof looked));
    CHECK(found && src.path && ends_with(src.path, "/snapshots/" REV "/tokenizer") && !src.pad);
    vf_free(src.path);
    CHECK_OK(vf_tokenizer_find_cached(VF_ARCH_SDXL, 1, &src, &found, looked, sizeof looked));
    CHECK(found && src.path && ends_with(src.path, "/snapshots/" REV "/tokenizer_2") && !src.pad);
    vf_free(src.path);
    /* SD1.5 falls back to the SDXL repository's tokenizer/ (the same CLIP-L files). */
    CHECK_OK(vf_tokenizer_find_cached(VF_ARCH_SD15, 0, &src, &found, looked, sizeof looked));
    CHECK(found && src.path && ends_with(src.path, "/tokenizer"));
    vf_free(src.path);
    rm_tree(root);
    clear_env();
}

static void test_find_clip_repos(void)
{
    const char *root = new_root();
    clear_env();
    setenv("HF_HUB_CACHE", root, 1);
    put_tokenizer(root, "models--openai--clip-vit-large-patch14", "r1", "", "<|endoftext|>");
    put_tokenizer(root, "models--laion--CLIP-ViT-bigG-14-laion2B-39B-b160k", "r2", "", "<|endoftext|>");
    put_tokenizer(root, "models--stable-diffusion-v1-5--stable-diffusion-v1-5", "r3", "unet", "<|endoftext|>");
    vf_tok_source src;
    int found = 0;
    char looked[1024] = "";
    /* No refs/main: the only snapshot is used; the SD1.5 repo holds no tokenizer/. */
    CHECK_OK(vf_tokenizer_find_cached(VF_ARCH_SD15, 0, &src, &found, looked, sizeof looked));
    CHECK(found && src.path && ends_with(src.path, "models--openai--clip-vit-large-patch14/snapshots/r1"));
    vf_free(src.path);
    looked[0] = 0;
    CHECK_OK(vf_tokenizer_find_cached(VF_ARCH_SDXL, 1, &src, &found, looked, sizeof looked));
    CHECK(found && src.path && src.pad && strcmp(src.pad, "!") == 0);
    /* The pad override works on files that pad with <|endoftext|>. */
    vf_tokenizer *t = NULL;
    CHECK_OK(vf_tokenizer_load(src.path, &t));
    int32_t pad0, pad1, ids[8];
    size_t n;
    vf_tokenizer_special_ids(t, NULL, NULL, &pad0);
    CHECK_OK(vf_tokenizer_set_pad(t, src.pad));
    vf_tokenizer_special_ids(t, NULL, NULL, &pad1);
    CHECK(pad0 != pad1);
    CHECK_OK(vf_tokenize(t, "a!", ids, 8, &n));
    CHECK(n == 4 && ids[2] == pad1); /* "!" is now a special piece, as in SDXL's tokenizer_2 */
    CHECK(vf_tokenizer_set_pad(t, "no-such-token") == VF_ERR_FORMAT);
    vf_tokenizer_free(t);
    vf_free(src.path);
    rm_tree(root);
    /* Nothing there: not found, and every candidate named. */
    looked[0] = 0;
    CHECK_OK(vf_tokenizer_find_cached(VF_ARCH_SDXL, 1, &src, &found, looked, sizeof looked));
    CHECK(!found && !src.path);
    CHECK_MSG(strstr(looked, root) && strstr(looked, "stabilityai/stable-diffusion-xl-base-1.0/tokenizer_2") &&
                  strstr(looked, "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"),
              "%s", looked);
    clear_env();
}

/* The model path: a single file with nothing beside it finds the cache. */
static void test_model_uses_cache(void)
{
    const char *shared = vf_test_shared();
    if (!shared) {
        printf("  skipped: ../shared/reference not found (set VF_SHARED)\n");
        return;
    }
    char file[PATH_MAX], diff[PATH_MAX];
    snprintf(file, sizeof file, "%s/reference/tiny-sdxl/tiny-sdxl.safetensors", shared);
    snprintf(diff, sizeof diff, "%s/reference/tiny-sdxl/diffusers", shared);
    const char *root = new_root();
    clear_env();
    setenv("HF_HUB_CACHE", root, 1);
    vf_model_options o;
    vf_model_options_init(&o);
    o.config_dir = diff;
    vf_model *m = NULL;
    vf_embeddings *e = NULL;
    /* Empty cache: the message lists beside-the-file and the cache, and what to run. */
    CHECK_OK(vf_model_open(file, &o, &m));
    if (m) {
        CHECK(vf_encode_prompt(m, "a cat", NULL, &e) == VF_ERR_NOT_FOUND);
        const char *msg = vf_last_error();
        CHECK_MSG(strstr(msg, "tiny-sdxl.safetensors") && strstr(msg, "beside the file") && strstr(msg, root) &&
                      strstr(msg, "--tokenizer") && strstr(msg, "huggingface-cli download"),
                  "%s", msg);
    }
    vf_model_close(m);
    /* CLIP-L from openai's repository, tokenizer_2 from laion's (pad forced to "!"). */
    put_tokenizer(root, "models--openai--clip-vit-large-patch14", "r1", "", "<|endoftext|>");
    put_tokenizer(root, "models--laion--CLIP-ViT-bigG-14-laion2B-39B-b160k", "r2", "", "<|endoftext|>");
    CHECK_OK(vf_model_open(file, &o, &m));
    if (m) {
        CHECK_OK(vf_encode_prompt(m, "a cat", "blurry", &e));
        CHECK(e && e->seq_len == 77);
        CHECK(m->tok[0] && m->tok[1] && vf_tokenizer_vocab_size(m->tok[0]) == vf_synth_vocab_size());
        int32_t eos, pad;
        vf_tokenizer_special_ids(m->tok[1], NULL, &eos, &pad);
        CHECK(pad != eos);
        vf_tokenizer_special_ids(m->tok[0], NULL, &eos, &pad);
        CHECK(pad == eos);
    }
    vf_embeddings_free(e);
    vf_model_close(m);
    /* --tokenizer given: only there, no cache fallback. */
    o.tokenizer_dir = root;
    CHECK_OK(vf_model_open(file, &o, &m));
    if (m)
        CHECK(vf_encode_prompt(m, "a cat", NULL, &e) == VF_ERR_NOT_FOUND);
    vf_model_close(m);
    rm_tree(root);
    clear_env();
}

TEST_MAIN(TEST(test_cache_dir_from_env), TEST(test_find_sdxl_base), TEST(test_find_clip_repos),
          TEST(test_model_uses_cache))
