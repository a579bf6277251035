/* vramfit: run Stable Diffusion family models in whatever GPU memory you have.
 *
 * The public C API. Handles are opaque; option structs are filled with defaults by
 * their *_init() function and then edited. Every call returns a vf_status; on
 * failure vf_last_error() gives a message for this thread that names the file,
 * tensor or argument at fault. The library never aborts, exits or prints to stdout.
 */
#ifndef VRAMFIT_H
#define VRAMFIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define VF_API __attribute__((visibility("default")))
#else
#define VF_API
#endif

/* ---- status and errors ---------------------------------------------------- */

typedef enum vf_status {
    VF_OK = 0,
    VF_ERR_INVALID_ARG,  /* a caller's argument is out of range or malformed  */
    VF_ERR_IO,           /* a file could not be opened, read or written       */
    VF_ERR_FORMAT,       /* a file's contents are malformed                   */
    VF_ERR_NOT_FOUND,    /* a required file, component or tensor is missing   */
    VF_ERR_SHAPE,        /* a tensor has the wrong shape for the architecture */
    VF_ERR_UNSUPPORTED,  /* valid, but not something vramfit handles          */
    VF_ERR_NO_MEMORY,    /* a host allocation failed                          */
    VF_ERR_DEVICE,       /* the GPU runtime reported an error                 */
    VF_ERR_BUDGET,       /* the request does not fit the memory budget        */
    VF_ERR_CANCELLED,    /* a callback asked to stop                          */
    VF_ERR_INTERNAL,     /* a bug in vramfit                                  */
    VF_ERR_NONFINITE     /* a stage produced NaN or infinity (bad weights, overflow) */
} vf_status;

/* A short fixed name for a status ("invalid argument", ...). */
VF_API const char *vf_status_str(vf_status st);
/* The message of the last failing call on this thread ("" when none). */
VF_API const char *vf_last_error(void);
VF_API const char *vf_version(void);

/* ---- dtypes ----------------------------------------------------------------- */

/* Element types: the safetensors set, plus vramfit's own quantized formats. */
typedef enum vf_dtype {
    VF_DTYPE_F32 = 0, VF_DTYPE_F16, VF_DTYPE_BF16, VF_DTYPE_F8_E4M3, VF_DTYPE_F8_E5M2,
    VF_DTYPE_I8, VF_DTYPE_U8, VF_DTYPE_I16, VF_DTYPE_I32, VF_DTYPE_I64, VF_DTYPE_F64,
    VF_DTYPE_BOOL,
    /* vramfit's blockwise-quantized weight formats (packed: data, then scales;
     * see src/core/quant.h); never element-addressable. */
    VF_DTYPE_Q8, VF_DTYPE_Q4,
    VF_DTYPE_COUNT
} vf_dtype;

VF_API const char *vf_dtype_name(vf_dtype t);   /* "F32", "F16", ... as safetensors spells them */

/* ---- resources -------------------------------------------------------------- */

#define VF_MAX_DEVICES 16

typedef struct vf_device_info {
    char name[256];
    int index;
    int cc_major, cc_minor;       /* compute capability                       */
    uint64_t total_vram;          /* bytes                                    */
    uint64_t free_vram;           /* bytes, as cudaMemGetInfo reports         */
    int multiprocessors;
} vf_device_info;

typedef struct vf_resources {
    int has_cuda;                 /* a CUDA runtime and at least one device   */
    int has_mps;                  /* Apple Metal; always 0 on Linux           */
    int device_count;
    int driver_version;           /* e.g. 13000 for 13.0; 0 when unknown      */
    int runtime_version;
    char cuda_error[256];         /* why CUDA is unavailable, when it is      */
    vf_device_info devices[VF_MAX_DEVICES];
    uint64_t total_ram;           /* bytes, the smaller of the machine's and the cgroup limit */
    uint64_t available_ram;       /* bytes, likewise                          */
    uint64_t cgroup_limit;        /* bytes; 0 when no limit applies           */
    int cpu_cores;                /* online logical cores usable by this process */
    char cpu_name[128];
    char simd[128];               /* e.g. "sse4.2 avx avx2 fma avx512f"       */
} vf_resources;

/* Never fails for lack of a GPU: without CUDA it reports has_cuda = 0. The CUDA
 * runtime is loaded at run time: libcudart.so, .so.13, .so.12, .so.11.0, or only
 * the library the environment variable VF_CUDART_PATH names when it is set. */
VF_API vf_status vf_detect_resources(vf_resources *out);
/* Writes the resources as a JSON object into buf (NUL-terminated). */
VF_API vf_status vf_resources_to_json(const vf_resources *r, char *buf, size_t cap);

/* ---- models ----------------------------------------------------------------- */

typedef enum vf_arch { VF_ARCH_UNKNOWN = 0, VF_ARCH_SD15, VF_ARCH_SDXL } vf_arch;

typedef enum vf_component {
    VF_COMPONENT_TEXT_ENCODER = 0,  /* CLIP-L                               */
    VF_COMPONENT_TEXT_ENCODER_2,    /* OpenCLIP-G with projection (SDXL)    */
    VF_COMPONENT_UNET,
    VF_COMPONENT_VAE,
    VF_COMPONENT_COUNT
} vf_component;

VF_API const char *vf_arch_name(vf_arch a);
VF_API const char *vf_component_name(vf_component c);

typedef struct vf_model vf_model;

typedef struct vf_model_options {
    /* A folder holding tokenizer/ (and tokenizer_2/), used for single-file
     * checkpoints, which carry no tokenizer. NULL: look next to the model. */
    const char *tokenizer_dir;
    /* A diffusers folder whose component config.json files supply what a
     * single-file checkpoint's shapes cannot tell (attention head counts).
     * NULL: use tokenizer_dir when it holds configs, else the published
     * defaults of the detected architecture. */
    const char *config_dir;
    /* Device, offload strategy, VRAM budget, loading and dtype policy (see
     * vf_pipeline_options under "memory manager"); copied by vf_model_open.
     * NULL: vf_pipeline_options_init's defaults (the CPU, on demand). */
    const struct vf_pipeline_options *pipeline;
    /* Compute backend: NULL or "cpu" (float32, the reference), "cuda" (=
     * "cuda:f16") or "cuda:bf16": the GPU through libvramfit-cuda.so, loaded
     * at run time ($VF_CUDA_LIB, the loader's path, or beside the program);
     * VF_ERR_DEVICE at open when it cannot be had. On CUDA every component's
     * weights are kept on the GPU in the compute dtype once first used
     * (budgets and offload strategies do not apply to them yet). */
    const char *backend;
} vf_model_options;

VF_API void vf_model_options_init(vf_model_options *o);
/* Opens a diffusers folder or a single-file checkpoint. Every header is read and
 * every tensor checked against the architecture before this returns; weights
 * themselves are read later, when a stage needs them (or before this returns
 * with EAGER loading, see vf_pipeline_options). */
VF_API vf_status vf_model_open(const char *path, const vf_model_options *o, vf_model **out);
VF_API void vf_model_close(vf_model *m);
VF_API vf_arch vf_model_arch(const vf_model *m);

typedef struct vf_component_info {
    int present;
    uint64_t params;              /* parameters of the tensors inference uses  */
    uint64_t bytes;               /* bytes of those tensors as stored          */
    uint64_t bytes_by_dtype[VF_DTYPE_COUNT];
    int ntensors;
} vf_component_info;

VF_API vf_status vf_model_component_info(const vf_model *m, vf_component c, vf_component_info *out);

/* ---- tokenizer -------------------------------------------------------------- */

#define VF_CONTEXT_LEN 77

typedef struct vf_tokenizer vf_tokenizer;

/* dir holds vocab.json + merges.txt (+ tokenizer_config.json for the pad token),
 * or path names a bpe_simple_vocab_16e6.txt.gz. */
VF_API vf_status vf_tokenizer_load(const char *path, vf_tokenizer **out);
/* The same from explicit files; config_json (tokenizer_config.json) may be NULL,
 * then the special tokens are CLIP's defaults and the pad is <|endoftext|>. */
VF_API vf_status vf_tokenizer_load_files(const char *vocab_json, const char *merges_txt,
                                         const char *config_json, vf_tokenizer **out);
VF_API void vf_tokenizer_free(vf_tokenizer *t);
/* The ids of the BOS, EOS and pad tokens (49406, 49407, 49407 or 0 for "!"). */
VF_API void vf_tokenizer_special_ids(const vf_tokenizer *t, int32_t *bos, int32_t *eos,
                                     int32_t *pad);
/* One more than the largest id in the vocabulary (49408 for CLIP). */
VF_API int32_t vf_tokenizer_vocab_size(const vf_tokenizer *t);
/* Untruncated ids including BOS and EOS. *n_out receives the count; when it
 * exceeds cap only cap ids are written and the call still succeeds. */
VF_API vf_status vf_tokenize(vf_tokenizer *t, const char *utf8, int32_t *ids, size_t cap, size_t *n_out);
/* One 77-token window: BOS, up to 75 tokens, EOS, then the pad token. */
VF_API vf_status vf_tokenize_window(vf_tokenizer *t, const char *utf8, int32_t ids[VF_CONTEXT_LEN]);
/* Both take valid UTF-8 of at most 1 MiB (else VF_ERR_INVALID_ARG). A tokenizer
 * caches results, so one handle is not for concurrent use from several threads. */

/* ---- prompt encoding -------------------------------------------------------- */

/* How prompt text is read (`--prompt-syntax`). Names: "a1111", "plain", "diffusers".
 * A1111 (the default): AUTOMATIC1111's syntax: (word:1.2), (word) = x1.1,
 *   [word] = /1.1, nesting multiplies, \( \) \[ \] \\ literal, BREAK starts a
 *   new window; prompts past 75 tokens continue in further 77-token windows
 *   (BOS + 75 + EOS), each encoded on its own and concatenated, so seq_len is
 *   77 * windows; weights scale each token's embedding and the window is then
 *   rescaled to its original mean, as A1111 does. A prompt without brackets,
 *   backslashes or BREAK that fits 75 tokens gives exactly diffusers' embeddings.
 * PLAIN: the literal text (no weights, no BREAK), still in as many windows as it needs.
 * DIFFUSERS: the literal text in one window, truncated at 75 tokens, as diffusers does. */
typedef enum vf_prompt_syntax {
    VF_PROMPT_SYNTAX_A1111 = 0,
    VF_PROMPT_SYNTAX_PLAIN,
    VF_PROMPT_SYNTAX_DIFFUSERS,
    VF_PROMPT_SYNTAX_COUNT
} vf_prompt_syntax;

/* "a1111", "plain", "diffusers"; "?" out of range. */
VF_API const char *vf_prompt_syntax_name(vf_prompt_syntax s);
/* The inverse (case-insensitive); VF_ERR_INVALID_ARG naming the text otherwise. */
VF_API vf_status vf_prompt_syntax_parse(const char *name, vf_prompt_syntax *out);

typedef struct vf_embeddings {
    /* 77 * windows: the prompt and its negative are padded to the same number
     * of windows with the encoding of "" (A1111's pad_cond_uncond); SDXL's
     * pooled outputs come from the first window. */
    int seq_len;
    int dim;                      /* 768 (SD1.5), 2048 (SDXL)                  */
    int pooled_dim;               /* 1280 (SDXL), 0 (SD1.5)                    */
    float *prompt;                /* seq_len * dim                             */
    float *negative;              /* seq_len * dim                             */
    float *pooled;                /* pooled_dim, NULL for SD1.5                */
    float *negative_pooled;       /* pooled_dim, NULL for SD1.5                */
} vf_embeddings;

/* ENCODE_PROMPT on the CPU. negative may be NULL (treated as ""). */
VF_API vf_status vf_encode_prompt(vf_model *m, const char *prompt, const char *negative,
                                  vf_embeddings **out);
/* The same with a syntax (vf_encode_prompt reads VF_PROMPT_SYNTAX_A1111). */
VF_API vf_status vf_encode_prompt_ex(vf_model *m, const char *prompt, const char *negative,
                                     vf_prompt_syntax syntax, vf_embeddings **out);
VF_API void vf_embeddings_free(vf_embeddings *e);

/* ---- samplers ----------------------------------------------------------------- */

/* DEFAULT follows the model's scheduler_config.json (_class_name); the others
 * override it the way diffusers' Class.from_config(config) does, keeping the
 * config's beta schedule, spacing and prediction type. DPMPP_2M is DPM++ 2M with
 * Karras sigmas (DPMSolverMultistepScheduler, dpmsolver++, order 2). */
typedef enum vf_sampler {
    VF_SAMPLER_DEFAULT = 0,
    VF_SAMPLER_EULER,      /* EulerDiscreteScheduler                   */
    VF_SAMPLER_EULER_A,    /* EulerAncestralDiscreteScheduler          */
    VF_SAMPLER_DDIM,       /* DDIMScheduler, eta 0                     */
    VF_SAMPLER_DPMPP_2M,   /* DPMSolverMultistepScheduler, Karras      */
    VF_SAMPLER_PNDM        /* PNDMScheduler with skip_prk_steps (PLMS), SD 1.x's default */
} vf_sampler;

/* "default", "euler", "euler_a", "ddim", "dpmpp_2m", "pndm". */
VF_API const char *vf_sampler_name(vf_sampler s);
/* The inverse of vf_sampler_name; VF_ERR_INVALID_ARG naming the text otherwise. */
VF_API vf_status vf_sampler_parse(const char *name, vf_sampler *out);

/* ---- generation ----------------------------------------------------------------- */

/* The stages of a text-to-image run, in order (Python: GenerationStep). Each is
 * callable on its own: vf_encode_prompt, vf_denoise, vf_decode; vf_generate runs
 * the three. The arithmetic is diffusers' StableDiffusion(XL)Pipeline's, so a
 * seed gives diffusers' image. */
typedef enum vf_generation_step {
    VF_STEP_ENCODE_PROMPT = 0,
    VF_STEP_DENOISE,
    VF_STEP_DECODE
} vf_generation_step;

/* "encode_prompt", "denoise", "decode". */
VF_API const char *vf_generation_step_name(vf_generation_step s);

/* Progress and cancel: called with step 0 when a stage starts and with step k
 * after each of its total units of work (a denoising step is one UNet call;
 * encode and decode count as one unit). A nonzero return cancels: the running
 * call returns VF_ERR_CANCELLED, having freed everything it made. */
typedef int (*vf_progress_fn)(void *user, vf_generation_step stage, int step, int total);

struct vf_latents;
/* Called after denoising step `step` (1..total) with the latents so far,
 * (1,C,h,w) and not yet divided by the VAE's scaling factor (what
 * vf_latents_preview takes); they are valid during the call only. A nonzero
 * return cancels, as from vf_progress_fn. */
typedef int (*vf_latents_fn)(void *user, int step, int total, const struct vf_latents *latents);

typedef struct vf_generate_params {
    const char *prompt;           /* UTF-8 in prompt_syntax; NULL means ""    */
    /* NULL: no negative prompt (SDXL then conditions on zeros when the model
     * sets force_zeros_for_empty_prompt, as diffusers does for None). */
    const char *negative_prompt;
    int steps;                    /* default 20                               */
    /* default 7.5; > 1 enables classifier-free guidance (UNet batch 2: negative,
     * positive), otherwise one UNet pass on the prompt alone. */
    float guidance_scale;
    /* Pixels; 0 = the model's default (unet sample_size * VAE scale). Each must
     * be a multiple of 8 * 2^(UNet levels - 1) (64 for SD1.5 and 32 for SDXL)
     * and at most VF_MAX_IMAGE_SIDE. */
    int width, height;
    uint64_t seed;                /* torch.Generator().manual_seed(seed); default 0 */
    vf_sampler sampler;           /* default: the model's scheduler_config.json */
    /* SDXL micro-conditioning (time ids), ignored for SD1.5. 0 = diffusers'
     * defaults: original and target size (height, width), crop (0, 0). */
    int original_width, original_height;
    int crop_top, crop_left;
    int target_width, target_height;
    vf_progress_fn on_step;       /* NULL: none                               */
    void *user;                   /* passed to on_step                        */
    /* NULL, or a .safetensors file that receives the intermediates under the
     * reference fixtures' names (see vf_generate). */
    const char *dump_path;
    vf_prompt_syntax prompt_syntax; /* default VF_PROMPT_SYNTAX_A1111           */
    vf_latents_fn on_latents;     /* NULL: none; gets `user` too              */
} vf_generate_params;

#define VF_MAX_IMAGE_SIDE 16384

VF_API void vf_generate_params_init(vf_generate_params *p);

/* Latents (batch, channels, height, width), float32, row-major. */
typedef struct vf_latents {
    int batch, channels, height, width;
    float *data;
} vf_latents;
VF_API void vf_latents_free(vf_latents *l);

/* An image: rgb is (height, width, 3) uint8; pixels the same in float [0,1]
 * before quantization (diffusers' output_type="np"). */
typedef struct vf_image {
    int width, height;
    uint8_t *rgb;
    float *pixels;
} vf_image;
VF_API void vf_image_free(vf_image *img);
/* Writes img's rgb plane as an 8-bit RGB PNG (through "<path>.tmp" and a
 * rename) with a "Software" text chunk and, when parameters is not NULL, a
 * "parameters" chunk (UTF-8; the generation record other tools read). */
VF_API vf_status vf_image_save_png(const vf_image *img, const char *path, const char *parameters);

/* A cheap look at latents without the VAE: each latent pixel's channels times
 * a fixed (C,3) matrix plus a bias (the latent-to-RGB factors other tools use
 * for SD1.5 and SDXL previews), mapped from [-1,1] to [0,255], each latent
 * pixel drawn as a scale x scale block (scale 1..64; 8 gives the image's own
 * size). Only the first latent of a batch. VF_ERR_UNSUPPORTED for latents that
 * are not 4 channels or an unknown architecture. *out: rgb filled, pixels NULL. */
VF_API vf_status vf_latents_preview(vf_arch arch, const struct vf_latents *l, int scale, vf_image **out);

/* The sampler a generation with `requested` runs on this model (resolves
 * VF_SAMPLER_DEFAULT from scheduler_config.json; never returns DEFAULT). */
VF_API vf_status vf_model_sampler(vf_model *m, vf_sampler requested, vf_sampler *out);

/* DENOISE: initial noise from the seed, then p->steps sampler steps of the UNet
 * conditioned on e (from vf_encode_prompt on the same model). *out receives the
 * final latents (1, 4, height/8, width/8), not yet divided by the VAE's
 * scaling factor. p->prompt and p->negative_prompt are not read (e holds
 * them); p->dump_path receives e and this stage's intermediates. */
VF_API vf_status vf_denoise(vf_model *m, const vf_generate_params *p, const vf_embeddings *e,
                            vf_latents **out);
/* DECODE: the VAE decoder, then (x / 2 + 0.5) clamped to [0,1] and rounded to
 * uint8. l is what vf_denoise returned (any batch; only the first image is
 * returned). */
VF_API vf_status vf_decode(vf_model *m, const vf_latents *l, vf_image **out);
/* The three stages. With p->dump_path the file receives, all float32:
 * prompt_embeds, negative_prompt_embeds [1,77,D] (+ pooled_prompt_embeds,
 * negative_pooled_prompt_embeds [1,P] for SDXL), timesteps [steps], sigmas
 * [steps+1], init_latents [1,4,h,w] (before init_noise_sigma), unet0_sample,
 * unet0_timestep, unet0_encoder_hidden_states (+ unet0_text_embeds, unet0_time_ids),
 * unet0_out [B,4,h,w] (the first UNet call's inputs and output, B = 2 with
 * guidance), latents_after_step0..N-1, vae_decoded [1,3,H,W] in [-1,1] and
 * image [H,W,3] in [0,1]. */
VF_API vf_status vf_generate(vf_model *m, const vf_generate_params *p, vf_image **out);

/* ---- memory manager ----------------------------------------------------------- */

/* Where a model's components compute and how their weights reach the device.
 * Names (for --offload and JSON): "auto", "full-gpu", "cpu-offload",
 * "sequential", "stream". */
typedef enum vf_offload_strategy {
    VF_OFFLOAD_AUTO = 0,      /* the fitting plan with the lowest predicted time   */
    VF_OFFLOAD_FULL_GPU,      /* every component resident on the device            */
    VF_OFFLOAD_CPU_OFFLOAD,   /* UNet on the device; text encoders and VAE on CPU  */
    VF_OFFLOAD_SEQUENTIAL,    /* one component on the device at a time             */
    VF_OFFLOAD_STREAM,        /* blocks streamed through a staging ring            */
    VF_OFFLOAD_COUNT
} vf_offload_strategy;

/* "eager", "on-demand". */
typedef enum vf_loading_strategy {
    VF_LOADING_EAGER = 0,     /* every component loaded when the model opens       */
    VF_LOADING_ON_DEMAND,     /* nothing loaded until a stage needs it             */
    VF_LOADING_COUNT
} vf_loading_strategy;

/* Storage dtype of weights. "auto", "fast", "f32", "f16", "bf16", "f8", "q8", "q4". */
typedef enum vf_dtype_policy {
    VF_DTYPE_POLICY_AUTO = 0, /* highest precision whose plan fits at full speed   */
    VF_DTYPE_POLICY_FAST,     /* the lowest predicted time that fits               */
    VF_DTYPE_POLICY_F32,
    VF_DTYPE_POLICY_F16,
    VF_DTYPE_POLICY_BF16,
    VF_DTYPE_POLICY_F8,       /* F8_E4M3 with per-output-channel scale             */
    VF_DTYPE_POLICY_Q8,       /* int8, blockwise scale                             */
    VF_DTYPE_POLICY_Q4,       /* 4-bit, blockwise scale                            */
    VF_DTYPE_POLICY_COUNT
} vf_dtype_policy;

/* "lru", "lfu", "largest". */
typedef enum vf_eviction_policy {
    VF_EVICT_LRU = 0,
    VF_EVICT_LFU,
    VF_EVICT_LARGEST,
    VF_EVICT_COUNT
} vf_eviction_policy;

/* Memory tiers, slowest first. "disk", "host", "pinned", "device". */
typedef enum vf_tier {
    VF_TIER_DISK = 0,         /* the checkpoint file only                          */
    VF_TIER_HOST,             /* pageable RAM                                      */
    VF_TIER_PINNED,           /* page-locked RAM: streams at full link speed       */
    VF_TIER_DEVICE,           /* inside the device arena                           */
    VF_TIER_COUNT
} vf_tier;

/* Each *_name returns "?" for an out-of-range value; each *_parse accepts the
 * names above (case-insensitive, '_' for '-') and otherwise returns
 * VF_ERR_INVALID_ARG naming the text and the accepted names. */
VF_API const char *vf_offload_strategy_name(vf_offload_strategy s);
VF_API vf_status vf_offload_strategy_parse(const char *name, vf_offload_strategy *out);
VF_API const char *vf_loading_strategy_name(vf_loading_strategy s);
VF_API vf_status vf_loading_strategy_parse(const char *name, vf_loading_strategy *out);
VF_API const char *vf_dtype_policy_name(vf_dtype_policy p);
VF_API vf_status vf_dtype_policy_parse(const char *name, vf_dtype_policy *out);
VF_API const char *vf_eviction_policy_name(vf_eviction_policy p);
VF_API vf_status vf_eviction_policy_parse(const char *name, vf_eviction_policy *out);
VF_API const char *vf_tier_name(vf_tier t);
VF_API vf_status vf_tier_parse(const char *name, vf_tier *out);

/* Parses a byte size: a number (one decimal point allowed) and an optional
 * unit, case-insensitive, as dd counts: K, M, G, T and KiB..TiB (Ki..Ti) are
 * binary ("6G" = "6GiB" = 6 * 2^30, "1.5GiB"), KB, MB, GB, TB are decimal
 * ("6GB" = 6e9); "B" or no unit = bytes. The CLI's budget flags use it.
 * VF_ERR_INVALID_ARG naming the text for anything else (empty, a sign,
 * an unknown unit, past 2^63). */
VF_API vf_status vf_parse_size(const char *text, uint64_t *out);

/* ---- memory monitor (Python: MemoryManager) ------------------------------------- */

/* Bytes the process holds, as the memory manager accounts them (exact, not
 * sampled). device_reserved: device context + reserved arenas (what the
 * driver sees; the budget caps it). device_allocated: context + bytes in use
 * inside arenas. host: host memory held for weights (conversions, pinned
 * copies). Without a device both device figures are 0. */
typedef struct vf_memory_usage {
    uint64_t device_reserved;
    uint64_t device_allocated;
    uint64_t host;
} vf_memory_usage;

/* Scopes, nestable up to 16: end gives the peaks since the matching begin and
 * records them under the stage name (see vf_usage_stage). */
VF_API vf_status vf_track_usage_begin(const char *stage);
VF_API vf_status vf_track_usage_end(vf_memory_usage *peak);
/* Recorded stages, oldest first (the last 64); VF_ERR_INVALID_ARG past the end.
 * name receives the stage name (cap bytes, NUL-terminated). */
VF_API int vf_usage_stage_count(void);
VF_API vf_status vf_usage_stage(int i, char *name, size_t cap, vf_memory_usage *peak);
/* Now and at most since start (or the last reset). Either may be NULL. */
VF_API void vf_get_memory_usage(vf_memory_usage *current, vf_memory_usage *peak);
/* Peak device_allocated bytes (PyTorch's max_memory_allocated). */
VF_API uint64_t vf_get_peak_vram_usage(void);
VF_API void vf_reset_peak_usage(void);
/* Frees cached weight conversions that can be rebuilt from the checkpoint
 * (not those of blocks in use, not device-resident weights, not what a model
 * pool holds as a model's HOST or PINNED tier), among them the images that
 * per-stage components keep between prompts; returns the bytes freed. Not
 * while a generation runs on another thread. */
VF_API uint64_t vf_clear_cache(void);

/* A plan: per component its compute device and stage, per block its dtype,
 * home tier and resident/streamed; ring depth; predicted peak device and host
 * memory and time per step. Computed from headers and shapes only. */
typedef struct vf_plan vf_plan;

typedef struct vf_plan_options {
    /* Device bytes the process may hold, CUDA context included; never
     * exceeded. 0: the free VRAM of device 0 at start minus max(256 MiB, 5%). */
    uint64_t vram_budget;
    vf_offload_strategy offload;  /* default AUTO                                */
    int allow_stream;             /* AUTO may choose STREAM (default 1)          */
    vf_dtype_policy dtype_policy; /* default AUTO: the highest precision (F32, F16
                                     or Q8) that fits without streaming at full
                                     speed; FAST: F16, or Q8 where faster; the
                                     others force one (F8/Q8/Q4: UNet and text
                                     encoders packed, the VAE F16/F32) */
    int width, height;            /* 0: the model's default size                 */
    int steps;                    /* default 20                                  */
    int cfg;                      /* default 1: guidance, UNet batch 2           */
    /* 0 = default / detected: */
    double link_bandwidth;        /* pinned host->device bytes/s (55.1e9)         */
    double device_flops;          /* effective F16 FLOP/s (400e12)                */
    double host_flops;            /* effective F32 FLOP/s of the CPU (25e9 a core) */
    uint64_t context_overhead;    /* CUDA context bytes (500 MB)                 */
    uint64_t free_vram;           /* device 0's free VRAM; 0: detect. Set it (with
                                     a budget) to plan for a GPU this machine lacks */
    uint64_t available_ram;       /* 0: detect                                   */
    /* 1: the device's attention never materialises the score matrix, as
     * vramfit's CUDA kernels (flash attention) do, so activations are planned
     * without it; 0 (default): planned with scores (sliced when short);
     * -1: 1 where a CUDA device is found (what `vramfit plan` uses). */
    int flash_attention;
} vf_plan_options;

VF_API void vf_plan_options_init(vf_plan_options *o);
/* Plans a text-to-image run of m. Without a GPU (and without o->free_vram or a
 * budget) every component is planned on the CPU. VF_ERR_BUDGET when nothing
 * fits the budget: the message says how much would ("needs at least ..."). The
 * plan borrows m: free it first. */
VF_API vf_status vf_model_plan(const vf_model *m, const vf_plan_options *o, vf_plan **out);
VF_API void vf_plan_free(vf_plan *p);

typedef struct vf_plan_summary {
    vf_offload_strategy strategy; /* never AUTO                                  */
    int has_device;               /* 0: planned for the CPU alone                */
    uint64_t budget;              /* bytes                                       */
    uint64_t peak_device;         /* bytes, context included                     */
    uint64_t peak_host;           /* bytes                                       */
    double time_per_step;         /* seconds per denoising step                  */
    double time_per_generation;   /* seconds: encode + steps + decode            */
    int ring_depth;               /* 0: nothing streams                          */
    const char *reason;           /* why this strategy; valid while the plan is  */
} vf_plan_summary;

VF_API void vf_plan_get_summary(const vf_plan *p, vf_plan_summary *out);
/* The whole plan as a JSON object (see `vramfit plan --json`). *out is a new
 * string; free it with vf_string_free. */
VF_API vf_status vf_plan_to_json(const vf_plan *p, char **out);
VF_API void vf_string_free(char *s);

/* ---- the pipeline's memory (Python: IntelligentGenerationPipeline) ----------------- */

/* How an open model uses memory; set through vf_model_options.pipeline.
 *
 * Every generation runs from a plan (vf_model_get_plan) made for its request
 * (size, steps, guidance) and the device: per component the compute device and
 * stage, per block resident or streamed, the ring depth. Device memory is one
 * arena reserved once (context + arena <= budget) and re-reserved only when a
 * request needs a different plan; the planner's activation estimate is
 * reserved in it too. If the arena cannot be reserved or a device allocation
 * fails (a shared GPU), the model re-plans for what is free and continues, or
 * fails with VF_ERR_BUDGET saying what is free and what would be needed; the
 * next request starts afresh either way.
 *
 * Devices (the `device` string):
 *   "cpu"   every component computes on the CPU in float32 (the default);
 *           offload strategies other than AUTO are VF_ERR_UNSUPPORTED, and
 *           vram_budget is ignored.
 *   "sim[:BANDWIDTH][,context=SIZE][,memory=SIZE]"
 *           the simulated device: kernels run on the CPU in float32 but read
 *           weights from their own "device" memory, filled by explicit copies
 *           on a copy-engine thread, so the plans, budgets, streaming and
 *           failures of a GPU run for real without one (tests, CI, exploring
 *           budgets). BANDWIDTH: copy bytes per second as a size (vf_parse_size:
 *           "12G" = 12 GiB/s; default unthrottled); context: bytes the device
 *           holds from creation, counted in the budget (default 300 MiB, like
 *           a CUDA context); memory: its capacity (default: the budget, or
 *           8 GiB without one). Without vram_budget the budget is its memory.
 *   "cuda[:f16|:bf16]"
 *           the GPU through libvramfit-cuda.so (the same as backend "cuda";
 *           either implies the other). Device memory held when the backend
 *           was created (CUDA context, library handles; measured with
 *           cudaMemGetInfo) counts in the budget; the arena is the rest of the
 *           budget less 96 MiB of slack for what libraries allocate on their
 *           own, and every weight, ring slot, activation and kernel workspace
 *           is carved from it. The host link is measured at open (pinned
 *           copies) and plans are made with it. Dtype policy f32 is refused:
 *           CUDA computes in f16 (default) or bf16.
 * Sizes in the spec are case-insensitive vf_parse_size sizes. */
typedef struct vf_pipeline_options {
    const char *device;            /* NULL: "cpu"                                  */
    vf_offload_strategy offload;   /* default AUTO                                 */
    /* Device bytes the model may hold, context included; never exceeded.
     * 0: the free memory at start minus max(256 MiB, 5%) (sim: its memory). */
    uint64_t vram_budget;
    /* default ON_DEMAND: weights are read when a stage first needs them, so
     * opening stays cheap (inspect, plan). EAGER: vf_model_open loads what the
     * plan for the model's default request keeps between stages. */
    vf_loading_strategy loading;
    /* default AUTO. The cpu and sim devices compute in F32 only: AUTO, FAST
     * and F32 mean F32 there, the others are VF_ERR_UNSUPPORTED. */
    vf_dtype_policy dtype_policy;
} vf_pipeline_options;

VF_API void vf_pipeline_options_init(vf_pipeline_options *o);

/* 1 while the model holds memory for generation: weights of a component
 * (host conversions or device arena) or its reserved arena. With ON_DEMAND,
 * 0 from open until a stage first runs; then 1 until vf_model_unload. Under
 * SEQUENTIAL components come and go with their stages, and the arena stays. */
VF_API int vf_model_is_loaded(const vf_model *m);
/* What EAGER does at open, now: plans for the last request (the model's
 * default one when none ran), reserves the arena and loads every component
 * the plan keeps between stages. */
VF_API vf_status vf_model_load(vf_model *m);
/* Frees every loaded weight and the arena; the next stage loads on demand. */
VF_API void vf_model_unload(vf_model *m);
/* "cpu", "sim" (later "cuda"): the device the model was opened on. */
VF_API const char *vf_model_device_name(const vf_model *m);

/* Where a component runs under the model's plan (Python: a component's device
 * and dtype). */
typedef struct vf_component_placement {
    int present;
    const char *device;           /* "cpu", "sim", "cuda"                     */
    vf_dtype dtype;               /* of its weights where it computes          */
    vf_generation_step stage;
    int loaded;                   /* its weights are held now                  */
    /* 1: created for its stage and freed after it (SEQUENTIAL; under STREAM a
     * text encoder or VAE part of which streams): its device memory goes, its
     * block images stay in host memory for the next stage unless the plan
     * streams some from disk (vf_clear_cache drops them); 0: kept between
     * stages. */
    int per_stage;
    uint64_t resident_bytes;      /* device: arena bytes of resident blocks    */
    uint64_t streamed_bytes;      /* device: bytes copied in per call          */
    uint64_t ring_bytes;          /* device: the staging ring                  */
    uint64_t activation_bytes;    /* device: the activation reservation        */
    int ring_depth;               /* 0: nothing streams                        */
} vf_component_placement;

/* Plans (without loading) when no plan exists yet. */
VF_API vf_status vf_model_component_placement(vf_model *m, vf_component c,
                                              vf_component_placement *out);
/* The plan the model runs: made for the last request (the default request
 * when none ran yet; planning loads nothing). Borrowed: valid until the next
 * call on the model. Under "cpu" it is the CPU plan. */
VF_API vf_status vf_model_get_plan(vf_model *m, const vf_plan **out);

/* ---- model pool ------------------------------------------------------------------ */

/* Many registered models (checkpoints and LoRAs, by id) sharing device and host
 * memory whose capacities are set separately (Python: ModelPool).
 *
 * A model lives whole in one tier at a time. Its size is exact: the stored bytes
 * of the tensors inference uses, read from the file headers when it is
 * registered (a LoRA: all its tensors). Each load and each vf_pool_touch counts
 * one use (uses, and the time of the last use on a logical clock).
 *
 * Loading a model into a tier that lacks room evicts other models of that tier by
 * the policy (LRU: least recently used; LFU: fewest uses; LARGEST: most bytes;
 * ties go to the least recently used) until it fits. Eviction demotes rather than
 * drops: a model pushed off the device goes to PINNED if the pinned and host
 * capacities allow, else to HOST if the host capacity allows, else to DISK only;
 * one pushed out of pinned memory goes to HOST; one pushed out of host memory goes
 * to DISK. A demotion never evicts in turn. A model that alone exceeds the
 * capacity is VF_ERR_BUDGET, with both sizes in the message. A failed load leaves
 * the pool as it was.
 *
 * Weights move when the pool has a device (vf_pool_options.pipeline): each
 * checkpoint is opened (once, on its first load) with those pipeline options,
 * and its tier is where its weights are:
 *   DISK    nothing held; the model stays open (headers only)
 *   HOST    every block's image as the device takes it (compute dtype, filter
 *           layout, packed weights, LoRAs merged) in pageable RAM
 *   PINNED  the same in page-locked RAM: promotion to DEVICE then runs at
 *           link speed, with no checkpoint read and no conversion
 *   DEVICE  loaded on the device as its plan places it (vf_model_load); the
 *           host keeps only the blocks the device does not (streamed ones)
 * Demotion from DEVICE copies the resident blocks back from the device
 * rather than reading the file again. vf_pool_model hands out the pool's open
 * model to generate with; every stage of a generation first asks the pool to
 * bring the model to its top tier (DEVICE; HOST on the cpu device), so a model
 * demoted since comes back through the pool's eviction. On the cpu device
 * HOST and PINNED hold the float32 conversions and DEVICE is unsupported. The
 * pool's sizes stay the stored bytes of the headers (exact and
 * comparable between models), whatever image dtype the device uses.
 * Without a device the pool is the accounting and the policy only: a load
 * changes where the pool says the model is and reads no weights. LoRAs are
 * accounted for only (their factors live with the model that adds them).
 * Models of one pool are used from one thread at a time: an eviction frees
 * the weights of the model it demotes.
 *
 * Registry file (vf_pool_load_registry), JSON:
 *
 *   {"models": {
 *      "sdxl-base": {"path": "sdxl-base", "kind": "checkpoint"},
 *      "sd15":      "v1-5-pruned-emaonly.safetensors",
 *      "custom":    {"path": "custom.safetensors", "config": "sdxl-base"},
 *      "my-lora":   {"path": "loras/my-lora.safetensors", "kind": "lora"}}}
 *
 * "models" maps each id to a path, or to an object with "path" (required),
 * "kind" ("checkpoint", the default, or "lora") and "config" (a diffusers folder
 * whose config.json files describe a single-file checkpoint; see
 * vf_model_options.config_dir). Relative paths are resolved against the folder of
 * the registry file. Other keys are errors. Ids are 1 to 255 bytes of UTF-8
 * without control characters. Errors name the registry file and the id.
 *
 * Every call but vf_pool_free is thread safe (one lock per pool). */

typedef struct vf_pool vf_pool;

typedef enum vf_pool_kind {
    VF_POOL_CHECKPOINT = 0,   /* a diffusers folder or single-file checkpoint      */
    VF_POOL_LORA,             /* a LoRA .safetensors file                          */
    VF_POOL_KIND_COUNT
} vf_pool_kind;

/* A capacity without limit. */
#define VF_POOL_UNLIMITED UINT64_MAX

typedef struct vf_pool_options {
    uint64_t device_capacity;         /* bytes for DEVICE (default unlimited)      */
    uint64_t host_capacity;           /* bytes for HOST and PINNED together (default unlimited) */
    uint64_t pinned_capacity;         /* bytes of the host capacity that may be PINNED
                                         (default unlimited; 0: no pinned tier)     */
    vf_eviction_policy eviction;      /* default VF_EVICT_LRU                      */
    /* NULL (default): accounting only. Else the options every checkpoint is
     * opened with (device, budget, offload, dtype policy; copied at create). */
    const struct vf_pipeline_options *pipeline;
} vf_pool_options;

typedef struct vf_pool_model_info {
    const char *id;                   /* valid until vf_pool_free                  */
    const char *path;                 /* as registered (resolved for a registry)   */
    vf_pool_kind kind;
    vf_tier tier;                     /* where the model is now                    */
    uint64_t bytes;                   /* its exact size                            */
    /* Bytes held in each tier: all in `tier`, and [VF_TIER_DISK] = bytes always
     * (the file holds the model whatever else does). */
    uint64_t bytes_at[VF_TIER_COUNT];
    uint64_t component_bytes[VF_COMPONENT_COUNT]; /* checkpoints; 0 for a LoRA     */
    uint64_t uses;                    /* loads and touches                         */
    uint64_t last_use;                /* logical time of the last use; 0: never    */
} vf_pool_model_info;

typedef struct vf_pool_usage {
    /* Bytes of the models now in each tier ([VF_TIER_DISK]: those on disk only). */
    uint64_t bytes[VF_TIER_COUNT];
    uint64_t device_capacity, host_capacity, pinned_capacity;
    size_t models;                    /* registered                                */
    size_t loaded;                    /* in a tier above DISK                      */
    uint64_t evictions;               /* demotions made to fit a load so far       */
} vf_pool_usage;

/* "checkpoint", "lora"; "?" out of range. */
VF_API const char *vf_pool_kind_name(vf_pool_kind k);
VF_API void vf_pool_options_init(vf_pool_options *o);
/* o NULL: the defaults. */
VF_API vf_status vf_pool_create(const vf_pool_options *o, vf_pool **out);
/* Moves loaded models back to DISK first. */
VF_API void vf_pool_free(vf_pool *p);

/* Registration reads the headers (to size the model) and fails on a duplicate id. */
VF_API vf_status vf_pool_register(vf_pool *p, const char *id, const char *path);
VF_API vf_status vf_pool_register_lora(vf_pool *p, const char *id, const char *path);
/* Registers every model of a registry file, or none of them on any error. */
VF_API vf_status vf_pool_load_registry(vf_pool *p, const char *path);

/* Makes the model resident in tier (HOST, PINNED or DEVICE), evicting as above;
 * a model already in that tier or a higher one stays where it is. Counts a use.
 * An unknown id is VF_ERR_NOT_FOUND naming it. */
VF_API vf_status vf_pool_load(vf_pool *p, const char *id, vf_tier tier);
/* The pool's open model of a checkpoint (pool with a device only), brought to
 * its top tier (DEVICE; HOST on the cpu) as vf_pool_load does. The pool owns
 * it: valid until vf_pool_free, never closed by the caller. Generate with it
 * as with any model. VF_ERR_NOT_FOUND for an unknown id, VF_ERR_INVALID_ARG for
 * a LoRA's id or a pool without a device. */
VF_API vf_status vf_pool_model(vf_pool *p, const char *id, vf_model **out);
/* Back to DISK only (no-op when it is there); its use history is kept. */
VF_API vf_status vf_pool_unload(vf_pool *p, const char *id);
/* *loaded = 1 while the model is in any tier above DISK. */
VF_API vf_status vf_pool_is_loaded(vf_pool *p, const char *id, int *loaded);
/* Records a use (for LRU and LFU) without moving anything. */
VF_API vf_status vf_pool_touch(vf_pool *p, const char *id);

VF_API vf_status vf_pool_info(vf_pool *p, const char *id, vf_pool_model_info *out);
/* Models in registration order: i in [0, vf_pool_count). */
VF_API size_t vf_pool_count(vf_pool *p);
VF_API vf_status vf_pool_info_at(vf_pool *p, size_t i, vf_pool_model_info *out);
VF_API vf_status vf_pool_get_usage(vf_pool *p, vf_pool_usage *out);

/* ---- LoRA ---------------------------------------------------------------------------- */

/* LoRAs on an open model (Python: IntelligentGenerationPipeline.add_lora), several
 * at once, each with its own strength (negative ones included).
 *
 * Files: .safetensors in kohya's format (lora_unet_*, lora_te_* for SD1.5,
 * lora_te1_* / lora_te2_* for SDXL; lora_down / lora_up / alpha; UNet names in
 * diffusers' or the original layout) or diffusers/PEFT's (unet.*, text_encoder.*,
 * text_encoder_2.* with lora_A / lora_B, and the adapter metadata's lora_alpha),
 * for linear and conv layers. A pair changes its weight W by
 * strength * alpha / rank * up @ down (no alpha: strength * up @ down).
 *
 * A LoRA is merged into each weight as the weight is converted for compute
 * (read as float32, before it goes to host memory, the device arena or the
 * staging ring), so resident, streamed and quantized blocks all get it and a
 * step costs what it costs without (except blocks streamed from DISK, which are
 * read and merged again each time they are used). Adding, removing or re-weighting a LoRA
 * therefore unloads the model's weights (vf_model_unload): the next stage reads
 * them again, and with no LoRA (or all at strength 0) they are bit for bit the
 * checkpoint's. Adding a LoRA at strength 0, or setting a strength to the value
 * it has, unloads nothing.
 *
 * Every file is checked whole when it is added: a malformed file, a factor
 * without its partner, a shape that differs from the model's weight (naming the
 * key and both shapes), a non-finite value (VF_ERR_NONFINITE naming the tensor),
 * or a LoRA none of whose keys matches a weight of the model (VF_ERR_FORMAT:
 * "... matches no weight of the sdxl model: is it for another architecture?")
 * is an error, and the model's LoRAs stay as they were. Keys that match no
 * weight are otherwise ignored and counted (unmatched_keys).
 *
 * Like the model's other calls, these are for one thread at a time, and not
 * from inside a callback of a running generation on the same model. */

typedef struct vf_lora_info {
    int id;                       /* the handle for set_strength / remove (1, 2, ...) */
    float strength;
    int rank;                     /* the largest rank of its pairs                     */
    int keys;                     /* tensors in the file                               */
    int matched_keys;             /* tensors used                                      */
    int unmatched_keys;           /* tensors that match no weight of the model         */
    int weights;                  /* weights of the model it changes                   */
    int weights_by_component[VF_COMPONENT_COUNT];
    uint64_t bytes;               /* host bytes it holds: its factors as stored        */
} vf_lora_info;

/* Loads the LoRA at path onto m at strength (finite); out (may be NULL) receives
 * its info, with the id the other calls take. */
VF_API vf_status vf_model_add_lora(vf_model *m, const char *path, float strength, vf_lora_info *out);
/* The same for a LoRA registered in a pool (vf_pool_register_lora, or kind
 * "lora" in a registry): the pool makes it resident in HOST (counting a use and
 * evicting by its policy; VF_ERR_BUDGET when it cannot) and the model loads it
 * from the registered path. On failure the pool is left as it was. An unknown
 * id is VF_ERR_NOT_FOUND, a checkpoint's id VF_ERR_INVALID_ARG. */
VF_API vf_status vf_model_add_pool_lora(vf_model *m, vf_pool *p, const char *id, float strength,
                                        vf_lora_info *out);
/* VF_ERR_NOT_FOUND for an id the model does not have. */
VF_API vf_status vf_model_set_lora_strength(vf_model *m, int id, float strength);
VF_API vf_status vf_model_remove_lora(vf_model *m, int id);
VF_API void vf_model_clear_loras(vf_model *m);
/* LoRAs in the order they were added (and are applied): i in [0, count). */
VF_API size_t vf_model_lora_count(const vf_model *m);
VF_API vf_status vf_model_lora_at(const vf_model *m, size_t i, vf_lora_info *out);

#ifdef __cplusplus
}
#endif
#endif
