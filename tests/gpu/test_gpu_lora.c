/* LoRAs on the GPU (issue 9, "Parity"), skipped (77) without a usable CUDA
 * backend or without ../shared.
 *
 * For tiny-sd15 and tiny-sdxl on the CUDA backend (f16, then bf16): LoRA "a"
 * (the PEFT file, then the kohya one) at 0.8, then "b" at 0.5 on top; the
 * reference's first UNet call and the prompt encodings against
 *   - the CPU float32 reference of tests/data/lora (<m>_ref.safetensors),
 *   - diffusers + PEFT run on the same GPU in the same dtype, when
 *     VF_LORA_GPU_REF names the folder tools/make_lora_gpu_reference.py wrote
 *     (<m>_ref_cuda_<fp16|bf16>.safetensors),
 * both within 1e-2 in f16 (the bound test_gpu_pipeline holds every stage to)
 * and 5e-2 in bf16. Measured on an H100 (2026-11-27): f16 at most 4.3e-3;
 * bf16 at most 3.4e-2 against the CPU (the SDXL UNet with a and b), while
 * diffusers + PEFT's own bf16 run on the same card is 2.3e-2 from it: we merge
 * the LoRA into the weight and round W + dW to bf16 once, PEFT rounds W and
 * the low-rank product apart, so the two bf16 errors differ in kind; 5e-2
 * holds both with room while a wrong merge (errors of order 1) fails.
 * Removing the LoRAs gives
 * the UNet output of the model without them back, bit for bit. Every error
 * is printed.
 */
#include "gpu_test.h"

#include "../unit/lora_ref.h"

static const char *g_shared;

typedef struct refs {
    vf_st_file *cpu;          /* float32 on the CPU                  */
    vf_st_file *gpu;          /* diffusers + PEFT on this GPU, or NULL */
} refs;

static void compare_to(vf_st_file *f, const char *name, const float *got, size_t n, double tol, const char *what,
                       const char *against)
{
    size_t nw = 0;
    float *want = f ? read_f32(f, name, &nw) : NULL;
    if (!want || !got || nw != n) {
        CHECK_MSG(!f, "%s: %s: %s missing or of another size (%zu, got %zu)", what, against, name, nw, n);
        free(want);
        return;
    }
    double e = rel_err(got, want, n);
    printf("    %-40s %-32s vs %-16s max rel err %.3g\n", what, name, against, e);
    CHECK_MSG(e <= tol, "%s: %s vs %s: max rel err %.3g > %.2g", what, name, against, e, tol);
    free(want);
}

static void compare(const refs *r, const char *name, const float *got, size_t n, double tol, const char *what)
{
    compare_to(r->cpu, name, got, n, tol, what, "cpu float32");
    if (r->gpu)
        compare_to(r->gpu, name, got, n, tol, what, "diffusers+peft");
}

static void outputs(vf_model *m, const char *model, const refs *r, const char *sfx, double tol, const char *what)
{
    char name[128];
    size_t n = 0;
    float *u = run_unet_of(m, g_shared, model, &n);
    snprintf(name, sizeof name, "unet0_out_%s", sfx);
    compare(r, name, u, n, tol, what);
    free(u);
    vf_embeddings *e = encode(m);
    if (!e)
        return;
    size_t ne = (size_t)e->seq_len * (size_t)e->dim;
    snprintf(name, sizeof name, "prompt_embeds_%s", sfx);
    compare(r, name, e->prompt, ne, tol, what);
    snprintf(name, sizeof name, "negative_prompt_embeds_%s", sfx);
    compare(r, name, e->negative, ne, tol, what);
    if (e->pooled) {
        snprintf(name, sizeof name, "pooled_prompt_embeds_%s", sfx);
        compare(r, name, e->pooled, (size_t)e->pooled_dim, tol, what);
    }
    vf_embeddings_free(e);
}

static vf_status add(vf_model *m, const char *file, float strength)
{
    char p[2048];
    snprintf(p, sizeof p, "%s/lora/%s", vf_test_data(), file);
    return vf_model_add_lora(m, p, strength, NULL);
}

static void parity(const char *model, const char *shrt, const char *file_a, const char *backend, double tol)
{
    char path[1024], what[1200];
    refs r = {NULL, NULL};
    snprintf(path, sizeof path, "%s/lora/%s_ref.safetensors", vf_test_data(), shrt);
    CHECK_OK(vf_st_open(path, &r.cpu));
    const char *dir = getenv("VF_LORA_GPU_REF");
    if (dir && dir[0]) {
        snprintf(path, sizeof path, "%s/%s_ref_cuda_%s.safetensors", dir, shrt,
                 strstr(backend, "bf16") ? "bf16" : "fp16");
        CHECK_OK(vf_st_open(path, &r.gpu));
    }
    snprintf(path, sizeof path, "%s/reference/%s/diffusers", g_shared, model);
    vf_model_options o;
    vf_model_options_init(&o);
    o.backend = backend;
    vf_model *m = NULL;
    CHECK_OK(vf_model_open(path, &o, &m));
    if (!m || !r.cpu)
        goto out;
    size_t n0 = 0, n1 = 0;
    float *plain = run_unet_of(m, g_shared, model, &n0);
    CHECK_OK(add(m, file_a, 0.8f));
    snprintf(what, sizeof what, "%s %s %s", model, backend, file_a);
    outputs(m, model, &r, "a", tol, what);
    snprintf(path, sizeof path, "%s_b.safetensors", shrt);
    CHECK_OK(add(m, path, 0.5f));
    snprintf(what, sizeof what, "%s %s %s + b", model, backend, file_a);
    outputs(m, model, &r, "ab", tol, what);
    vf_model_clear_loras(m);
    float *back = run_unet_of(m, g_shared, model, &n1);
    CHECK_MSG(plain && back && n0 == n1 && memcmp(plain, back, n0 * sizeof *plain) == 0,
              "%s %s: the UNet output without LoRAs changed after adding and removing them", model, backend);
    free(plain);
    free(back);
out:
    vf_model_close(m);
    vf_st_close(r.cpu);
    vf_st_close(r.gpu);
}

static void setup(void)
{
    SKIP_WITHOUT_SHARED(shared);
    SKIP_WITHOUT_CUDA();
    g_shared = shared;
    const char *dir = getenv("VF_LORA_GPU_REF");
    printf("  diffusers+peft GPU references: %s\n", dir && dir[0] ? dir : "(VF_LORA_GPU_REF not set: not compared)");
}

static void test_sd15_f16(void)
{
    parity("tiny-sd15", "sd15", "sd15_peft.safetensors", "cuda:f16", 1e-2);
    parity("tiny-sd15", "sd15", "sd15_kohya.safetensors", "cuda:f16", 1e-2);
}

static void test_sdxl_f16(void)
{
    parity("tiny-sdxl", "sdxl", "sdxl_peft.safetensors", "cuda:f16", 1e-2);
    parity("tiny-sdxl", "sdxl", "sdxl_kohya.safetensors", "cuda:f16", 1e-2);
}

static void test_bf16(void)
{
    parity("tiny-sd15", "sd15", "sd15_peft.safetensors", "cuda:bf16", 5e-2);
    parity("tiny-sdxl", "sdxl", "sdxl_kohya.safetensors", "cuda:bf16", 5e-2);
}

TEST_MAIN(TEST(setup), TEST(test_sd15_f16), TEST(test_sdxl_f16), TEST(test_bf16))
