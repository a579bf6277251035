/* Fuzz target: model_index.json and sharded-weight indexes of a diffusers folder.
 *
 * At start two complete tiny diffusers folders are synthesized (vf_synth: SD1.5
 * and SDXL, about a million parameters each, in the scratch folder) and each
 * UNet is split into two shards with a diffusion_pytorch_model.safetensors.index.json.
 * An input's first byte picks the folder (bit 1) and the file it replaces
 * (bit 0: model_index.json or the UNet's shard index); the rest is that file's
 * contents. vf_model_open then reads the folder as a user's would: pipeline
 * class, listed components, shard names and weight maps, then every component
 * described and bound to its tensors. Headers only: an execution costs about a
 * millisecond. The replaced file is restored afterwards.
 *
 * Checked beyond "no crash, no leak": a failure leaves a message, and a model
 * that opens reports a consistent architecture and component sizes.
 */
#include "fuzz_util.h"
#include "core/alloc.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "pipeline/synth.h"

#define INDEX_NAME "diffusion_pytorch_model.safetensors.index.json"

typedef struct skeleton {
    char dir[300];
    char *orig[2];          /* model_index.json, the UNet shard index */
    size_t orig_len[2];
    char path[2][1024];
} skeleton;

static skeleton g_sk[2];

static void die(const char *what)
{
    fprintf(stderr, "fuzz: setting up: %s: %s\n", what, vf_last_error());
    abort();
}

/* Splits unet/diffusion_pytorch_model.safetensors into two shards and an index. */
static void shard_unet(const char *unet)
{
    const char *whole = vf_fuzz_path(unet, "diffusion_pytorch_model.safetensors");
    static const char *const shard[2] = {"diffusion_pytorch_model-00001-of-00002.safetensors",
                                         "diffusion_pytorch_model-00002-of-00002.safetensors"};
    vf_st_file *f = NULL;
    if (vf_st_open(whole, &f) != VF_OK)
        die(whole);
    size_t n = vf_st_count(f), half = n / 2;
    vf_st_write_tensor *ts = calloc(n, sizeof *ts);
    cJSON *idx = cJSON_CreateObject(), *wm = cJSON_AddObjectToObject(idx, "weight_map");
    cJSON_AddItemToObject(cJSON_AddObjectToObject(idx, "metadata"), "total_size",
                          cJSON_CreateNumber((double)vf_st_file_size(f)));
    for (size_t i = 0; i < n; i++) {
        const vf_st_tensor *t = vf_st_at(f, i);
        void *buf = malloc(t->nbytes ? t->nbytes : 1);
        if (!buf || vf_st_read(f, t, 0, buf, t->nbytes) != VF_OK)
            die(t->name);
        ts[i] = (vf_st_write_tensor){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = buf};
        memcpy(ts[i].shape, t->shape, sizeof ts[i].shape);
        cJSON_AddStringToObject(wm, t->name, shard[i >= half]);
    }
    if (vf_st_write(vf_fuzz_path(unet, shard[0]), ts, half, NULL) != VF_OK ||
        vf_st_write(vf_fuzz_path(unet, shard[1]), ts + half, n - half, NULL) != VF_OK)
        die("writing the shards");
    char *text = cJSON_Print(idx);
    vf_fuzz_write(vf_fuzz_path(unet, INDEX_NAME), text, strlen(text));
    for (size_t i = 0; i < n; i++)
        free((void *)ts[i].data);
    free(ts);
    free(text);
    cJSON_Delete(idx);
    vf_st_close(f);
    if (unlink(whole) != 0)
        die("removing the unsharded weights");
}

static void make_skeleton(skeleton *sk, vf_arch arch, const char *root)
{
    vf_synth_options o;
    vf_synth_options_init(&o);
    o.arch = arch;
    o.preset = VF_SYNTH_TINY;
    o.dtype = VF_DTYPE_F16;
    snprintf(sk->dir, sizeof sk->dir, "%s/%s", root, vf_arch_name(arch));
    if (vf_synth(&o, sk->dir) != VF_OK)
        die("vf_synth");
    char unet[400];
    snprintf(unet, sizeof unet, "%s/unet", sk->dir);
    shard_unet(unet);
    snprintf(sk->path[0], sizeof sk->path[0], "%s/model_index.json", sk->dir);
    snprintf(sk->path[1], sizeof sk->path[1], "%s/" INDEX_NAME, unet);
    for (int i = 0; i < 2; i++)
        if (vf_read_file(sk->path[i], 1 << 20, &sk->orig[i], &sk->orig_len[i]) != VF_OK)
            die(sk->path[i]);
    vf_model *m = NULL;
    if (vf_model_open(sk->dir, NULL, &m) != VF_OK)
        die("the skeleton does not open");
    vf_model_close(m);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *root = vf_fuzz_tmpdir("mi");
    make_skeleton(&g_sk[0], VF_ARCH_SD15, root);
    make_skeleton(&g_sk[1], VF_ARCH_SDXL, root);
    return 0;
}

static void check_open(vf_model *m)
{
    vf_arch a = vf_model_arch(m);
    if (a != VF_ARCH_SD15 && a != VF_ARCH_SDXL) {
        fprintf(stderr, "fuzz: a model opened with architecture %d\n", (int)a);
        abort();
    }
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        vf_component_info ci;
        if (vf_model_component_info(m, (vf_component)c, &ci) != VF_OK ||
            (ci.present && (ci.params == 0 || ci.bytes < ci.params))) {
            fprintf(stderr, "fuzz: component %d reports %llu parameters in %llu bytes\n", c,
                    (unsigned long long)ci.params, (unsigned long long)ci.bytes);
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    skeleton *sk = &g_sk[(data[0] >> 1) & 1];
    int which = data[0] & 1;
    vf_fuzz_write(sk->path[which], data + 1, size - 1);
    vf_model *m = NULL;
    vf_status st = vf_model_open(sk->dir, NULL, &m);
    vf_fuzz_log("vf_model_open", st);
    if (st == VF_OK)
        check_open(m);
    else
        vf_fuzz_check_message("vf_model_open", NULL);
    vf_model_close(m);
    vf_fuzz_write(sk->path[which], sk->orig[which], sk->orig_len[which]);
    return 0;
}
