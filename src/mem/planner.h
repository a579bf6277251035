/* The planner: from a model's block lists, a request and the machine, a plan.
 *
 * A plan says, before anything runs, where each component computes and in
 * which stage, and for each block its storage dtype, home tier and whether it
 * stays resident on the device or is streamed through the staging ring; plus
 * the ring depth, attention slicing and VAE tiling it needs, and the predicted
 * peak device and host memory and time per step. Everything is derived from
 * exact weight shapes (bytes and FLOPs) and the request's activation shapes, so
 * a plan is computed in microseconds and without touching a weight: `vramfit
 * plan` and the tests run it on published SDXL configs without the 5 GB file.
 *
 * The cost model (planner_cost.c) is deliberately simple and says what it
 * assumes: GEMM/conv FLOPs from shapes at a fixed effective rate, copies at the
 * link bandwidth overlapping compute perfectly (ANCHORS.md measured 2%
 * interference), attention materialising its scores until the CUDA backend's
 * flash kernel exists, activations as the largest live set of an executor that
 * frees each buffer after its last reader, times a slack calibrated on a
 * measured peak. Every constant lives in vf_plan_resources so measurement can
 * replace it.
 *
 * The split: planner_cost.c (shapes -> bytes, FLOPs, activations),
 * planner_stream.c (resident selection and the ring simulation), planner.c
 * (strategies, AUTO, budgets, errors), planner_model.c (the model as the
 * planner sees it), planner_json.c (the public entry points and JSON),
 * planner_names.c (enum names, size parsing).
 */
#ifndef VF_MEM_PLANNER_H
#define VF_MEM_PLANNER_H

#include "model/blocks.h"
#include "model/clip.h"
#include "model/unet.h"
#include "model/vae.h"
#include "vramfit.h"

#include <stdint.h>

/* ---- inputs ------------------------------------------------------------------------- */

/* The model as the planner sees it: block lists (names and exact weight shapes;
 * binding is not needed) and the configs that shapes cannot tell (attention
 * heads, whether the VAE must compute in F32). Borrowed: must outlive the plan. */
typedef struct vf_plan_model {
    vf_arch arch;
    const vf_blocklist *bl[VF_COMPONENT_COUNT];  /* NULL: component absent       */
    vf_unet_config unet;                         /* valid when bl[UNET]          */
    vf_vae_config vae;                           /* valid when bl[VAE]           */
    vf_clip_config clip[2];                      /* valid when bl[TEXT_ENCODER*] */
    int vae_force_upcast;                        /* config force_upcast (SDXL)   */
    int default_width, default_height;           /* the model's native size      */
} vf_plan_model;

typedef struct vf_plan_request {
    int width, height;            /* pixels; 0 = the model's default         */
    int steps;                    /* default 20                              */
    int cfg;                      /* 1: classifier-free guidance (UNet batch 2) */
} vf_plan_request;

/* Machine facts and cost constants. Defaults: ANCHORS.md's H100 figures until
 * the CUDA backend measures them. */
typedef struct vf_plan_resources {
    int has_device;               /* 0: no GPU; every component on the CPU   */
    uint64_t free_vram;           /* bytes free on device 0 at start         */
    uint64_t available_ram;       /* bytes                                   */
    double link_bw;               /* pinned host->device bytes/s (55.1e9)     */
    double pageable_bw;           /* pageable host->device bytes/s (6.7e9)    */
    double disk_bw;               /* checkpoint file read bytes/s (2e9)       */
    double device_flops;          /* effective F16 FLOP/s (400e12: half GEMM peak) */
    double device_f32_flops;      /* effective F32 FLOP/s (TF32: device_flops/4) */
    double host_flops;            /* effective F32 FLOP/s of the CPU (25e9 a core) */
    double block_overhead_s;      /* fixed cost per block call (kernel launches, 20 us) */
    uint64_t context_bytes;       /* CUDA context + libraries (500 MB)       */
    double act_slack;             /* activation estimate multiplier (1.6)    */
    int flash_attention;          /* 1: attention scores never materialised  */
    double dequant_bw;            /* bytes/s a dequantization kernel writes (1.5e12:
                                     about half an H100's HBM bandwidth, read + write) */
} vf_plan_resources;

/* The dtype policy AUTO's precision rungs, highest first. A rung is a
 * storage dtype per component on the device (planner.c, device_dtype):
 *   F32   everything F32
 *   F16   UNet F16, text encoders F32, VAE F16 (F32 where its config asks
 *         for force_upcast): the assignment the offload ladder is stated for
 *   Q8    UNet and text encoders Q8 (weights vf_quant_can() refuses, and those
 *         vf_weight_stays_unpacked() names, in F16), VAE as at F16 */
typedef enum vf_plan_rung {
    VF_RUNG_CHOOSE = 0,           /* AUTO chooses (the default)              */
    VF_RUNG_F32,
    VF_RUNG_F16,
    VF_RUNG_Q8
} vf_plan_rung;

typedef struct vf_plan_policy {
    uint64_t budget;              /* device bytes, context included; 0 = free_vram - margin */
    vf_offload_strategy strategy;
    int allow_stream;             /* AUTO may choose STREAM (default 1)      */
    vf_dtype_policy dtype_policy; /* any; AUTO and FAST choose (planner.c)   */
    vf_plan_rung auto_rung;       /* AUTO: CHOOSE, or pin a rung (tests)     */
} vf_plan_policy;

void vf_plan_request_init(vf_plan_request *r);
/* Defaults above; has_device 1 with 80 GB free and 64 GB of RAM (a planning
 * what-if, not a measurement: callers overwrite what they know). */
void vf_plan_resources_init(vf_plan_resources *r);
/* From vf_detect_resources: device 0's free VRAM, available RAM, CPU cores. */
void vf_plan_resources_from(vf_plan_resources *r, const vf_resources *det);
void vf_plan_policy_init(vf_plan_policy *p);
/* The default budget: free VRAM minus max(256 MiB, 5%). */
uint64_t vf_plan_default_budget(uint64_t free_vram);

/* ---- the plan ----------------------------------------------------------------------- */

typedef enum vf_block_mode {
    VF_BLOCK_RESIDENT = 0,        /* in the device arena for the stage(s)     */
    VF_BLOCK_STREAMED,            /* copied into a ring slot ahead of use     */
    VF_BLOCK_ON_DEMAND,           /* copied right before use, not overlapped  */
    VF_BLOCK_CPU                  /* computes on the CPU from host memory     */
} vf_block_mode;

const char *vf_block_mode_name(vf_block_mode m);  /* "resident", "streamed", "on-demand", "cpu" */

typedef struct vf_plan_block {
    uint64_t params;
    uint64_t bytes;               /* at dtype                                 */
    uint64_t packed_bytes[3];     /* stored as F8_E4M3, Q8, Q4 (weights that
                                     are not packed counted in F16)          */
    double extra_s;               /* per call besides FLOPs: dequantizing     */
    double flops;                 /* one call (the whole batch)               */
    double base_flops;            /* the same, untiled                        */
    vf_dtype dtype;
    vf_tier home;
    vf_block_mode mode;
} vf_plan_block;

typedef struct vf_plan_component {
    int present;
    vf_component comp;
    vf_generation_step stage;
    int on_device;                /* computes on the device (else the CPU)    */
    vf_dtype dtype;               /* storage dtype where it runs; compute is
                                     the same, or F16 for packed formats       */
    int nblocks;
    vf_plan_block *blocks;
    int *order;                   /* blocks by compute per byte, largest first */
    uint64_t params, weight_bytes;       /* at dtype                         */
    uint64_t resident_bytes, streamed_bytes;
    uint64_t act_bytes;           /* activation region on its device (and, for
                                     packed storage, the two buffers its
                                     largest block dequantizes into)         */
    uint64_t scratch_bytes;       /* those two buffers (0: not packed): the
                                     residency places them with the weights  */
    double flops;                 /* per call                                */
    int calls;                    /* per generation (steps for the UNet)     */
    double time_s;                /* predicted, per generation (all calls)   */
} vf_plan_component;

/* One strategy AUTO weighed. */
typedef struct vf_plan_candidate {
    vf_offload_strategy strategy;
    int variant;                  /* CPU_OFFLOAD: 1 = text encoders on the device */
    int fits;
    uint64_t peak_device;         /* as planned (after degradation)          */
    double time_per_step, time_per_generation;
    char note[160];               /* what it had to do, or why it does not fit */
} vf_plan_candidate;

#define VF_PLAN_MAX_CANDIDATES 8

struct vf_plan {
    const vf_plan_model *model;   /* borrowed                                 */
    vf_plan_model *owned_model;   /* vf_model_plan's copy, freed with the plan */
    int what_if;                  /* planned for a device this machine lacks  */
    vf_plan_request request;      /* resolved (defaults filled in)            */
    vf_plan_resources res;
    vf_plan_policy policy;        /* budget resolved                          */
    vf_offload_strategy strategy; /* chosen                                   */
    int variant;                  /* CPU_OFFLOAD: 1 = text encoders on the device */
    int batch;                    /* UNet batch                               */
    int ring_depth;               /* 0: no ring                               */
    uint64_t ring_slot_bytes;
    int attn_slices;              /* 1: attention unsliced                    */
    int vae_tile;                 /* latent tile side; 0: untiled             */
    uint64_t peak_device, peak_host;
    uint64_t stage_peak[3];       /* device bytes per vf_generation_step      */
    double time_per_step;         /* denoising, seconds                       */
    double time_encode, time_decode, time_per_generation;
    char reason[512];
    vf_plan_rung rung;            /* AUTO: the rung chosen                    */
    vf_dtype fast_dtype;          /* FAST: F16 or Q8 storage                  */
    char dtype_reason[256];       /* why these storage dtypes                 */
    vf_plan_component comp[VF_COMPONENT_COUNT];
    vf_plan_candidate cand[VF_PLAN_MAX_CANDIDATES];
    int ncand;
    /* Activation estimates already computed while searching (a walk is ~100 blocks). */
    struct {
        int comp, esz, slices, tile;
        uint64_t bytes;
    } act_cache[64];
    int nact_cache;
};

/* Plans pm for the request. VF_ERR_BUDGET when nothing fits (the message says
 * how much would: "needs at least ..."), or when the strategy the policy names
 * cannot fit even degraded (the message names what does). */
vf_status vf_plan_make(const vf_plan_model *pm, const vf_plan_request *rq,
                       const vf_plan_resources *rs, const vf_plan_policy *po, vf_plan **out);

/* The end (exclusive) of the run of blocks from `first` that share dtype,
 * home tier and mode: plans print runs, not hundreds of blocks. */
int vf_plan_run_end(const vf_plan_component *pc, int first);

/* Fills pm from an open model (borrowing its block lists). */
vf_status vf_plan_model_from(const vf_model *m, vf_plan_model *pm);
/* Fills pm from configs (cJSON, borrowed only during the call) and described
 * block lists, for tests and for models not on disk. Absent: NULL. */
vf_status vf_plan_model_from_configs(vf_arch arch, const cJSON *const cfg[VF_COMPONENT_COUNT],
                                     const vf_blocklist *const bl[VF_COMPONENT_COUNT],
                                     vf_plan_model *pm);

/* ---- cost model (planner_cost.c) ---------------------------------------------------- */

/* Parameters of block b from its described shapes (exact; needs no binding). */
uint64_t vf_plan_block_params(const vf_blocklist *bl, int b);
/* FLOPs of one call of block b of component c at latent size (lh, lw) and batch
 * B (UNet; text encoders: number of prompts; VAE: images). */
double vf_plan_block_flops(const vf_plan_model *pm, vf_component c, int b, int lh, int lw, int B);
/* The largest live set (bytes) of one call of component c: activations of
 * act_bytes per element, attention computed in `slices` pieces, VAE decoding
 * latent tiles of side `tile` (0: whole). Without act_slack. */
uint64_t vf_plan_activation_bytes(const vf_plan_model *pm, vf_component c, int lh, int lw, int B,
                                  int act_bytes, int slices, int tile, int flash);

/* ---- streaming (planner_stream.c) --------------------------------------------------- */

/* Fills pc->order (allocated here; vf_free it) from the blocks' current
 * flops and bytes. */
vf_status vf_plan_rank_blocks(vf_plan_component *pc);
/* Marks blocks of the component RESIDENT or STREAMED so that at most `room`
 * bytes stay resident, taking blocks in pc->order (largest compute per byte
 * first when high_first, else smallest first); returns the resident bytes. */
uint64_t vf_plan_pick_resident(vf_plan_component *pc, uint64_t room, int high_first);
/* Seconds per call of the component with its blocks' modes: resident blocks
 * compute; STREAMED ones are copied through a ring of `depth` slots while
 * earlier blocks compute (steady state over repeated calls); ON_DEMAND ones are
 * copied just before use. Copies run at bw from PINNED homes and at disk_bw
 * from DISK ones (through bounce buffers). rate: FLOP/s. */
double vf_plan_simulate(const vf_plan_component *pc, int depth, double bw, double disk_bw,
                        double rate, double overhead_s);

#endif
