/* The model handle's insides, for pipeline code (encode, denoise, decode).
 *
 * vf_model_open() reads every header and binds every present component's block
 * list, so that all shape errors surface at open; nothing heavier happens there.
 * Weights are converted when a stage first needs them (the residency of a
 * component is created on first use) and tokenizers are loaded on first
 * encode: `vramfit inspect` on a single file needs neither, and must not fail
 * for want of a tokenizer.
 */
#ifndef VF_PIPELINE_MODEL_H
#define VF_PIPELINE_MODEL_H

#include "io/checkpoint.h"
#include "mem/arena.h"
#include "mem/device.h"
#include "mem/planner.h"
#include "mem/residency.h"
#include "model/blocks.h"
#include "model/clip.h"
#include "model/exec.h"
#include "model/unet.h"
#include "model/vae.h"
#include "vramfit.h"

/* A request as plans see it (pipeline/memory.c): equal keys, equal plans. */
typedef struct vf_mm_request {
    int width, height;            /* pixels, resolved (never 0)                 */
    int steps;
    int cfg;                      /* 1: guidance (UNet batch 2)                 */
} vf_mm_request;

/* How one component is placed under the current plan. */
typedef struct vf_mm_comp {
    int on_device;                /* computes on m->mm.dev (else the CPU)       */
    int per_stage;                /* residency freed after each use             */
    vf_tier *home;                /* nblocks (device components)                */
    int ring_depth;
    uint64_t resident, ring;      /* arena bytes, as the arena rounds them      */
    uint64_t act;                 /* activation reservation (rounded)           */
    uint64_t act_off;
    int has_act;
    vf_dtype quant;               /* packed storage of its weights, or F32: none */
} vf_mm_comp;

/* The model's memory: device, plan, arena, placement (pipeline/memory.c). */
typedef struct vf_mm {
    vf_pipeline_options opt;      /* device points at spec                      */
    char *spec;
    vf_device *dev;               /* NULL: the CPU                              */
    uint64_t context;             /* device context bytes                       */
    uint64_t budget;              /* what plans must fit (context included)     */
    uint64_t link_bandwidth;      /* host->device bytes/s: sim's, or measured    */
    int cuda;                     /* dev is the CUDA device over m->be           */
    vf_dtype image_dtype;         /* weights on the device: F32 (sim), F16/BF16  */
    uint64_t arena_bytes;         /* reserved (CUDA: the whole budget's share)   */
    vf_plan *plan;
    vf_mm_request key;            /* the plan's request                         */
    uint64_t planned_budget;      /* the budget the plan was made for           */
    vf_mm_comp comp[VF_COMPONENT_COUNT];
    /* Block images kept in host memory between placements (the pool's
     * HOST/PINNED tiers, pipeline/hold.c); NULL until first held. */
    vf_host_store *store;
    uint64_t arena_need;          /* persistent + the largest per-stage need    */
    vf_arena *arena;
    int replans;                  /* re-plans after a device failure, so far    */
    int degraded;                 /* the plan is for less than the budget       */
    char note[512];               /* why the last re-plan happened              */
    /* test hook: residency traces per component */
    vf_residency_trace *trace[VF_COMPONENT_COUNT];
    int trace_cap[VF_COMPONENT_COUNT];
} vf_mm;

struct vf_model {
    char *path;
    vf_checkpoint *ck;
    vf_arch arch;
    /* Where tokenizers come from: a folder holding tokenizer/ (and tokenizer_2/),
     * a tokenizer folder itself (vocab.json), or a bpe .txt.gz file; NULL when
     * none was given or found (encoding then fails, naming --tokenizer). */
    char *tokenizer_root;
    /* A single file opened without tokenizer_dir: tokenizers missing beside it
     * are looked for in the Hugging Face cache (pipeline/tokenizer_find.h). */
    int tokenizer_search;
    vf_tokenizer *tok[2];                          /* lazily loaded               */
    int present[VF_COMPONENT_COUNT];
    vf_blocklist bl[VF_COMPONENT_COUNT];           /* bound, for present ones     */
    vf_residency *res[VF_COMPONENT_COUNT];         /* lazily created              */
    vf_clip_config clip[2];                        /* text_encoder, text_encoder_2 */
    vf_mm mm;
    /* Compute backends (pipeline/exec.c): be computes the components placed
     * on the device (and everything on the CPU when it is the CPU backend);
     * cpu_be, made on first need, those a CUDA model's plan keeps on the CPU. */
    vf_backend *be;
    vf_backend *cpu_be;
    uint64_t be_context;          /* device bytes in use once be was created     */
    /* LoRAs merged into weights as they are converted (pipeline/lora.c);
     * NULL until one is added. */
    struct vf_lora_set *loras;
    /* Set by the model pool that owns the model (mem/pool.c): every stage
     * first asks the pool to bring the model back to its top tier, so that a
     * generation with a model the pool demoted goes through the pool's
     * accounting and eviction. pool_busy: the pool is moving this model now
     * (no call back into it). */
    vf_status (*pool_hook)(void *pool, const char *id);
    void *pool;
    const char *pool_id;
    int pool_busy;
};

/* The component's residency, created on first use as the model's plan places
 * it (planning for the last request, or the default one, when there is no
 * plan). VF_ERR_NOT_FOUND when the component is absent. A caller holds it only
 * until vf_model_component_done or the next vf_model_residency of another
 * component (a failed creation may re-plan and rebuild the others). */
vf_status vf_model_residency(vf_model *m, vf_component c, vf_residency **out);
/* The stage is done with the component: a per-stage residency is freed. */
void vf_model_component_done(vf_model *m, vf_component c);

/* ---- memory (pipeline/memory.c) ---- */

/* Opens the device of o (NULL: defaults) into m->mm; EAGER loading is the
 * caller's (vf_model_load) once the model is whole. */
vf_status vf_mm_open(vf_model *m, const vf_pipeline_options *o);
/* Frees residencies, arena, plan and device. */
void vf_mm_close(vf_model *m);
/* Makes the plan for rq current (re-planning, re-reserving and rebuilding
 * only what changes). rq NULL: keep the current plan, or the default request. */
vf_status vf_mm_prepare(vf_model *m, const vf_mm_request *rq);
/* The request of a run of p (sizes resolved by the caller). */
void vf_mm_request_make(vf_mm_request *rq, int width, int height, int steps, float guidance);
/* Test hook: acquires of component c's next residency are traced into tr. */
void vf_mm_set_trace(vf_model *m, vf_component c, vf_residency_trace *tr, int cap);
/* The device (NULL for the CPU), for test hooks. */
vf_device *vf_mm_device(vf_model *m);
/* 1 when a device spec names the GPU ("cuda", "cuda:bf16", any case). */
int vf_mm_is_cuda_spec(const char *spec);
/* The dtype policy plans are made with: a quantized policy as given, else
 * the device's compute dtype (F16 on CUDA, F32 on cpu and sim). */
vf_dtype_policy vf_mm_plan_dtype_policy(const vf_mm *mm);
/* Residency options for component c on the model's device, as its
 * residencies are made (image dtype and layout, packed format, LoRA patch,
 * store); home, ring and arena are the placement's and left unset. */
void vf_mm_device_options(vf_model *m, vf_component c, vf_residency_options *o);
/* The model's host store, created (and offered to clear_cache) on first use. */
vf_status vf_mm_store(vf_model *m, vf_host_store **out);
/* Frees every residency and the arena, keeping the host store. */
void vf_mm_release_device(vf_model *m);

/* ---- the pool's data path (pipeline/hold.c) ---- */

/* Makes the model's weights live in tier, as the model pool means it:
 *   DISK    nothing held (vf_model_unload)
 *   HOST    every block's device image in pageable memory (the host store),
 *           nothing on the device
 *   PINNED  the same in page-locked memory
 *   DEVICE  vf_model_load (the plan's resident blocks in the arena, read from
 *           the store when it holds them), the store keeping only what the
 *           device does not (streamed and per-stage blocks)
 * Going down from DEVICE copies resident blocks back from the device instead
 * of reading the checkpoint. On the CPU (no device) HOST and PINNED are
 * vf_model_load and DEVICE is VF_ERR_UNSUPPORTED. On failure the model is
 * left in the tier it was in (from). */
vf_status vf_model_hold(vf_model *m, vf_tier from, vf_tier tier);
/* Bytes the host store holds. */
uint64_t vf_model_held_host_bytes(const vf_model *m);

/* Tokenizer 0 (tokenizer/) or 1 (tokenizer_2/), loaded on first use. */
vf_status vf_model_tokenizer(vf_model *m, int which, vf_tokenizer **out);

/* ---- compute backend (pipeline/exec.c) ---- */

/* Creates m->be from o->backend ("cpu", "cuda", "cuda:f16", "cuda:bf16"); a
 * pipeline device "cuda[:DTYPE]" implies the CUDA backend, and the CUDA
 * backend implies that device (pipeline/memory.c). */
vf_status vf_model_backend_open(vf_model *m, const vf_model_options *o);
/* Frees the backends. */
void vf_model_backend_close(vf_model *m);
/* Component c's execution context on the model's backend; r (the component's
 * residency) is where CPU-backend weights come from. */
vf_status vf_model_exec(vf_model *m, vf_component c, vf_residency *r, vf_exec *x);
/* The stages' calls of the model code, on the model's backend. */
vf_status vf_model_run_clip(vf_model *m, vf_component c, vf_residency *r, const int32_t *ids, float *last_hidden,
                            float *penultimate, float *pooled_proj);
vf_status vf_model_run_unet(vf_model *m, vf_residency *r, const vf_unet_config *cfg, const float *sample, int B,
                            int H, int W, const float *timesteps, const float *context, int ctx_len,
                            const float *text_embeds, const float *time_ids, float *out);
vf_status vf_model_run_vae(vf_model *m, vf_residency *r, const vf_vae_config *cfg, const float *latents, int B,
                           int h, int w, float *image);
vf_backend *vf_model_backend(vf_model *m);

/* ---- LoRAs (pipeline/lora.c) ---- */

/* Sets o->patch and o->patch_ctx for component c's residency when the model
 * has LoRAs at a nonzero strength (else leaves them NULL: weights as stored). */
void vf_model_lora_patch(vf_model *m, vf_component c, vf_residency_options *o);
/* Frees the model's LoRAs (vf_model_close). */
void vf_model_loras_free(vf_model *m);

#endif
