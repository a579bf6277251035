/* Fuzz target: bytes as a LoRA .safetensors file added to a model.
 *
 * At start two tiny models are synthesized (vf_synth, SD1.5 and SDXL, the
 * reference fixtures' block structure) in the scratch folder and opened once;
 * opening reads headers only. Each input is written to one scratch file and
 * added with vf_model_add_lora to one of them: SDXL when the input names
 * something only SDXL has (lora_te1_ / lora_te2_, text_encoder_2, the
 * original-layout UNet blocks that go through the single-file key map), else
 * SD1.5 (lora_te_, the diffusers layout). One load per input rather than one
 * per model, because most of a load is building the model's weight-name
 * tables (sorting a few hundred names under the sanitizers' strcmp hooks),
 * and a mutation that adds or drops such a name moves the input across.
 * Synthesized rather than read from ../shared so that the target needs
 * nothing beside the repository; the tiny presets have the reference models'
 * weight names and shapes, which the seeds (cut from tests/data/lora by
 * tools/make_fuzz_seeds.py) are made for.
 *
 * A LoRA that loads is then applied the way a generation applies it: the
 * model's residency patch (vf_model_lora_patch) runs over every weight of the
 * UNet and the text encoders, so the factor shapes the loader accepted are
 * used by the merge (sgemm) under the sanitizers. Weights are zero buffers
 * (the checkpoint is never read), which costs a memset per weight on loads
 * that succeed and nothing on the many that fail.
 *
 * Most of a LoRA's logic is in its header's names and shapes, and a mutation
 * that inserts or erases header bytes breaks the 8-byte length before it,
 * which fuzz_safetensors already covers. So when the stored length does not
 * end the header at its closing brace (trailing spaces allowed, as
 * safetensors pads), it is replaced by the length up to the brace that
 * closes the first one, and the spaces after it: the mutated header is read
 * whole and the data behind it stays where the offsets point.
 *
 * Checked beyond "no crash, no leak": a failed add leaves a message naming the
 * file and the model without a LoRA; a successful one reports consistent
 * counts, its strength can be changed and it can be removed by its id.
 */
#include "fuzz_util.h"
#include "pipeline/model.h"

#define STRENGTH 0.75f

static const char *g_path;
static vf_model *g_model[2];
static float *g_w;               /* the largest weight of either model, as float32 */

static void die(const char *what)
{
    fprintf(stderr, "fuzz: setting up: %s: %s\n", what, vf_last_error());
    abort();
}

static size_t max_weight(const vf_model *m)
{
    size_t best = 1;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        for (int i = 0; m->present[c] && i < m->bl[c].nw; i++) {
            const vf_wspec *w = &m->bl[c].w[i];
            size_t n = (size_t)vf_shape_numel(w->shape, w->ndim);
            best = n > best ? n : best;
        }
    }
    return best;
}

static vf_model *open_synth(vf_arch arch, const char *root)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", root, vf_arch_name(arch));
    vf_synth_options o;
    vf_synth_options_init(&o);
    o.arch = arch;
    o.preset = VF_SYNTH_TINY;
    o.dtype = VF_DTYPE_F16;
    if (vf_synth(&o, dir) != VF_OK)
        die("vf_synth");
    vf_model *m = NULL;
    if (vf_model_open(dir, NULL, &m) != VF_OK)
        die(dir);
    return m;
}

static void close_models(void)
{
    vf_model_close(g_model[0]);
    vf_model_close(g_model[1]);
    free(g_w);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *root = vf_fuzz_tmpdir("lora");
    g_path = strdup(vf_fuzz_path(root, "lora.safetensors"));
    g_model[0] = open_synth(VF_ARCH_SD15, root);
    g_model[1] = open_synth(VF_ARCH_SDXL, root);
    size_t a = max_weight(g_model[0]), b = max_weight(g_model[1]);
    g_w = malloc((a > b ? a : b) * sizeof *g_w);
    if (!g_path || !g_w)
        die("out of memory");
    /* Registered after vf_fuzz_tmpdir's cleanup, so it runs first. */
    atexit(close_models);
    return 0;
}

static void fail(const char *what, const vf_lora_info *in)
{
    fprintf(stderr, "fuzz: %s (rank %d, keys %d = %d matched + %d unmatched, weights %d, bytes %llu)\n", what,
            in->rank, in->keys, in->matched_keys, in->unmatched_keys, in->weights,
            (unsigned long long)in->bytes);
    abort();
}

static void check_info(const vf_model *m, const vf_lora_info *in)
{
    int by_comp = 0;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (in->weights_by_component[c] < 0 || (in->weights_by_component[c] && !m->present[c]))
            fail("weights counted for an absent component", in);
        by_comp += in->weights_by_component[c];
    }
    if (in->weights_by_component[VF_COMPONENT_VAE])
        fail("a LoRA changes the VAE", in);
    if (in->id <= 0 || in->strength != STRENGTH)
        fail("wrong id or strength", in);
    if (in->weights < 1 || by_comp != in->weights || in->rank < 1 || in->bytes == 0)
        fail("a LoRA that loads changes nothing", in);
    if (in->keys < 2 || in->matched_keys < 2 * in->weights || in->matched_keys + in->unmatched_keys != in->keys)
        fail("key counts do not add up", in);
    vf_lora_info at;
    if (vf_model_lora_count(m) != 1 || vf_model_lora_at(m, 0, &at) != VF_OK || memcmp(&at, in, sizeof at) != 0)
        fail("vf_model_lora_at disagrees with vf_model_add_lora", in);
}

/* Runs the residency patch over every weight of the components LoRAs patch.
 * Errors are allowed (large factors can overflow float32) but must say so. */
static void apply_all(vf_model *m)
{
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (!m->present[c] || c == VF_COMPONENT_VAE)
            continue;
        vf_residency_options o;
        memset(&o, 0, sizeof o);
        vf_model_lora_patch(m, (vf_component)c, &o);
        if (!o.patch) {
            fprintf(stderr, "fuzz: no LoRA patch for the %s with a LoRA at strength %g\n",
                    vf_component_name((vf_component)c), (double)STRENGTH);
            abort();
        }
        for (int i = 0; i < m->bl[c].nw; i++) {
            const vf_wspec *w = &m->bl[c].w[i];
            memset(g_w, 0, (size_t)vf_shape_numel(w->shape, w->ndim) * sizeof *g_w);
            vf_status st = o.patch(o.patch_ctx, w, g_w);
            if (st != VF_OK) {
                vf_fuzz_log("patch", st);
                vf_fuzz_check_message("patch", w->name);
            }
        }
    }
}

static void add_to(vf_model *m)
{
    vf_lora_info in;
    vf_status st = vf_model_add_lora(m, g_path, STRENGTH, &in);
    vf_fuzz_log("vf_model_add_lora", st);
    if (st != VF_OK) {
        vf_fuzz_check_message("vf_model_add_lora", g_path);
        if (vf_model_lora_count(m) != 0) {
            fprintf(stderr, "fuzz: a failed vf_model_add_lora left %zu LoRAs\n", vf_model_lora_count(m));
            abort();
        }
        return;
    }
    check_info(m, &in);
    apply_all(m);
    if (vf_model_set_lora_strength(m, in.id, -STRENGTH) != VF_OK || vf_model_remove_lora(m, in.id) != VF_OK ||
        vf_model_lora_count(m) != 0) {
        fprintf(stderr, "fuzz: re-weighting or removing LoRA %d failed: %s\n", in.id, vf_last_error());
        abort();
    }
    vf_model_clear_loras(m);
}

/* The header length up to the brace closing the one at data[8] (without the
 * spaces after it); 0 when the input has no such brace. */
static size_t json_end(const uint8_t *data, size_t size)
{
    int depth = 0, in_str = 0;
    for (size_t i = 8; i < size; i++) {
        uint8_t ch = data[i];
        if (in_str) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_str = 0;
        } else if (ch == '"') {
            in_str = 1;
        } else if (ch == '{' || ch == '[') {
            depth++;
        } else if ((ch == '}' || ch == ']') && --depth == 0) {
            return i + 1 - 8;
        }
    }
    return 0;
}

/* The header length to store instead of the input's, or 0 to keep it: kept
 * when it ends the header at its closing brace followed only by spaces. */
static uint64_t fixed_len(const uint8_t *data, size_t size)
{
    if (size <= 8 || data[8] != '{')
        return 0;
    size_t end = json_end(data, size);
    if (end == 0)
        return 0;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | data[i];
    size_t k = end;
    while (k < n && 8 + k < size && data[8 + k] == ' ')
        k++;
    if (k == n)
        return 0;
    for (k = end; 8 + k < size && data[8 + k] == ' '; k++)
        ;
    return k;
}

/* 1 when the input names something only SDXL has. */
static int wants_sdxl(const uint8_t *data, size_t size)
{
    static const char *const parts[] = {"lora_te1_", "lora_te2_", "text_encoder_2", "input_blocks",
                                        "middle_block", "output_blocks"};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        if (memmem(data, size, parts[i], strlen(parts[i])))
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t fixed = fixed_len(data, size);
    if (fixed) {
        uint8_t *copy = malloc(size);
        if (!copy)
            abort();
        memcpy(copy, data, size);
        for (int i = 0; i < 8; i++)
            copy[i] = (uint8_t)(fixed >> (8 * i));
        vf_fuzz_write(g_path, copy, size);
        free(copy);
    } else {
        vf_fuzz_write(g_path, data, size);
    }
    add_to(g_model[wants_sdxl(data, size)]);
    return 0;
}
