/* The planner on real SDXL sizes, without the 5 GB file.
 *
 * Block lists are described from the published SDXL-base configs (the synth
 * presets), so byte counts are the real ones: UNet 2,567,463,684 parameters,
 * CLIP-L 123,060,480, OpenCLIP-G 694,659,840, VAE decoder 49,490,199. On those:
 * the documented AUTO ladder with streaming off, STREAM replacing it only with
 * a reason, every accepted plan inside its budget across a 1..24 GB sweep,
 * SEQUENTIAL's peak being its largest stage, the "needs at least" figure of a
 * rejected budget being exactly enough, the ring simulation against hand
 * computed cases, size and name parsing, and allocation failures.
 *
 * The offload ladder is documented for an F16 UNet (with F32 text encoders
 * and VAE), so setup_init pins the dtype policy AUTO to that rung; the tests
 * of the dtype policy itself (test_dtype_*) let AUTO choose, which gives Q8
 * below 8 GB, F16 from 8 to 12 GB and F32 above (the documented thresholds).
 */
#include "test.h"
#include "io_convs.h"

#include "core/alloc.h"
#include "core/error.h"
#include "core/quant.h"
#include "mem/planner.h"
#include "pipeline/synth.h"

#define GB 1e9

static vf_blocklist g_bl[VF_COMPONENT_COUNT];
static cJSON *g_cfg[VF_COMPONENT_COUNT];
static vf_plan_model g_pm;

static void drop_model(void)
{
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (g_bl[c].blocks || g_bl[c].w)
            vf_bl_free(&g_bl[c]);
        cJSON_Delete(g_cfg[c]);
        g_cfg[c] = NULL;
        memset(&g_bl[c], 0, sizeof g_bl[c]);
    }
}

/* The published architecture of arch, described from its configs. */
static int load_model(vf_arch arch)
{
    const vf_blocklist *bl[VF_COMPONENT_COUNT] = {0};
    const cJSON *cfg[VF_COMPONENT_COUNT] = {0};
    drop_model();
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (arch == VF_ARCH_SD15 && c == VF_COMPONENT_TEXT_ENCODER_2)
            continue;
        vf_status st = vf_synth_config(arch, VF_SYNTH_FULL, (vf_component)c, 49408, VF_DTYPE_F16,
                                       &g_cfg[c], NULL);
        vf_bl_init(&g_bl[c], (vf_component)c);
        if (st == VF_OK && c == VF_COMPONENT_UNET)
            st = vf_unet_describe(g_cfg[c], arch, &g_bl[c]);
        else if (st == VF_OK && c == VF_COMPONENT_VAE)
            st = vf_vae_describe(g_cfg[c], &g_bl[c]);
        else if (st == VF_OK)
            st = vf_clip_describe(g_cfg[c], (vf_component)c, &g_bl[c]);
        CHECK_OK(st);
        if (st != VF_OK)
            return 0;
        bl[c] = &g_bl[c];
        cfg[c] = g_cfg[c];
    }
    vf_status st = vf_plan_model_from_configs(arch, cfg, bl, &g_pm);
    CHECK_OK(st);
    return st == VF_OK;
}

static uint64_t params_of(vf_component c)
{
    uint64_t n = 0;
    for (int b = 0; b < g_bl[c].nblocks; b++)
        n += vf_plan_block_params(&g_bl[c], b);
    return n;
}

typedef struct setup {
    vf_plan_request rq;
    vf_plan_resources rs;
    vf_plan_policy po;
} setup;

static void setup_init(setup *s, double budget_gb, vf_offload_strategy strategy, int stream)
{
    vf_plan_request_init(&s->rq);
    vf_plan_resources_init(&s->rs);
    vf_plan_policy_init(&s->po);
    s->po.budget = (uint64_t)(budget_gb * GB + 0.5);
    s->po.strategy = strategy;
    s->po.allow_stream = stream;
    s->po.auto_rung = VF_RUNG_F16; /* the ladder's dtypes; test_dtype_* let AUTO choose */
}

static vf_status plan(const setup *s, vf_plan **out)
{
    return vf_plan_make(&g_pm, &s->rq, &s->rs, &s->po, out);
}

/* "... needs at least 1.23 GB ..." -> 1.23e9; 0 when absent. */
static double needs_at_least(const char *msg)
{
    const char *p = strstr(msg, "needs at least ");
    return p ? atof(p + 15) * GB : 0;
}

/* ---- sizes ---------------------------------------------------------------------------- */

static void test_sdxl_sizes(void)
{
    if (!load_model(VF_ARCH_SDXL))
        return;
    CHECK(params_of(VF_COMPONENT_UNET) == 2567463684ull);
    CHECK(params_of(VF_COMPONENT_TEXT_ENCODER) == 123060480ull);
    CHECK(params_of(VF_COMPONENT_TEXT_ENCODER_2) == 694659840ull);
    CHECK(params_of(VF_COMPONENT_VAE) == 49490199ull);
    CHECK(g_pm.vae_force_upcast == 1);
    CHECK(g_pm.default_width == 1024 && g_pm.default_height == 1024);
    /* ANCHORS.md: one SDXL UNet forward at 1024x1024 with CFG is about 13.5 TFLOP. */
    double f = 0;
    for (int b = 0; b < g_bl[VF_COMPONENT_UNET].nblocks; b++)
        f += vf_plan_block_flops(&g_pm, VF_COMPONENT_UNET, b, 128, 128, 2);
    CHECK_MSG(f > 13.0e12 && f < 14.0e12, "UNet %.3f TFLOP", f / 1e12);
    /* Activations grow with resolution, shrink with slicing and tiling, vanish with flash. */
    uint64_t a = vf_plan_activation_bytes(&g_pm, VF_COMPONENT_UNET, 128, 128, 2, 2, 1, 0, 0);
    uint64_t a64 = vf_plan_activation_bytes(&g_pm, VF_COMPONENT_UNET, 64, 64, 2, 2, 1, 0, 0);
    uint64_t as = vf_plan_activation_bytes(&g_pm, VF_COMPONENT_UNET, 128, 128, 2, 2, 8, 0, 0);
    uint64_t af = vf_plan_activation_bytes(&g_pm, VF_COMPONENT_UNET, 128, 128, 2, 2, 1, 0, 1);
    CHECK(a64 < a && as < a && af < as);
    /* The materialised self-attention scores of level 1 dominate: B2 x H10 x 4096^2 x 2 maps x 2 bytes. */
    CHECK(a > 2ull * 10 * 4096 * 4096 * 2 * 2);
    uint64_t v = vf_plan_activation_bytes(&g_pm, VF_COMPONENT_VAE, 128, 128, 1, 4, 1, 0, 0);
    uint64_t vt = vf_plan_activation_bytes(&g_pm, VF_COMPONENT_VAE, 128, 128, 1, 4, 1, 32, 0);
    /* vae.h: full-size 128-channel maps dominate; at least three of them in F32. */
    CHECK(v > 3ull * 128 * 1024 * 1024 * 4);
    CHECK(vt < v / 4);
    drop_model();
}

/* ---- the documented ladder ------------------------------------------------------------ */

typedef struct rung {
    double gb;
    vf_offload_strategy s;
    int te_gpu, vae_gpu;
} rung;

static const rung g_ladder[] = {
    {6.0, VF_OFFLOAD_SEQUENTIAL, 1, 1},   {7.9, VF_OFFLOAD_SEQUENTIAL, 1, 1},
    {8.1, VF_OFFLOAD_CPU_OFFLOAD, 0, 0},  {10.0, VF_OFFLOAD_CPU_OFFLOAD, 0, 0},
    {12.5, VF_OFFLOAD_CPU_OFFLOAD, 1, 0}, {15.0, VF_OFFLOAD_CPU_OFFLOAD, 1, 0},
    {16.5, VF_OFFLOAD_FULL_GPU, 1, 1},    {24.0, VF_OFFLOAD_FULL_GPU, 1, 1},
};

static void test_ladder_without_streaming(void)
{
    if (!load_model(VF_ARCH_SDXL))
        return;
    for (size_t i = 0; i < sizeof g_ladder / sizeof g_ladder[0]; i++) {
        const rung *r = &g_ladder[i];
        setup s;
        setup_init(&s, r->gb, VF_OFFLOAD_AUTO, 0);
        vf_plan *p = NULL;
        CHECK_OK(plan(&s, &p));
        if (!p)
            continue;
        CHECK_MSG(p->strategy == r->s, "%.1f GB: %s, want %s (%s)", r->gb,
                  vf_offload_strategy_name(p->strategy), vf_offload_strategy_name(r->s), p->reason);
        CHECK_MSG(p->comp[VF_COMPONENT_TEXT_ENCODER].on_device == r->te_gpu &&
                      p->comp[VF_COMPONENT_TEXT_ENCODER_2].on_device == r->te_gpu,
                  "%.1f GB: text encoders on the GPU: %d", r->gb,
                  p->comp[VF_COMPONENT_TEXT_ENCODER].on_device);
        CHECK_MSG(p->comp[VF_COMPONENT_VAE].on_device == r->vae_gpu, "%.1f GB: VAE", r->gb);
        CHECK(p->comp[VF_COMPONENT_UNET].on_device);
        CHECK(p->peak_device <= s.po.budget);
        CHECK(p->ring_depth == 0);
        CHECK(p->reason[0] != 0);
        vf_plan_free(p);
    }
    drop_model();
}

static void test_ladder_with_streaming(void)
{
    if (!load_model(VF_ARCH_SDXL))
        return;
    int streamed = 0;
    for (size_t i = 0; i < sizeof g_ladder / sizeof g_ladder[0]; i++) {
        const rung *r = &g_ladder[i];
        setup s;
        setup_init(&s, r->gb, VF_OFFLOAD_AUTO, 1);
        vf_plan *p = NULL;
        CHECK_OK(plan(&s, &p));
        if (!p)
            continue;
        CHECK(p->peak_device <= s.po.budget);
        if (p->strategy != VF_OFFLOAD_STREAM) {
            CHECK_MSG(p->strategy == r->s, "%.1f GB: %s (%s)", r->gb,
                      vf_offload_strategy_name(p->strategy), p->reason);
        } else {
            streamed++;
            /* STREAM says why: its prediction against the best plan without streaming. */
            CHECK_MSG(strncmp(p->reason, "stream: predicted ", 18) == 0 && strstr(p->reason, " vs "),
                      "%.1f GB: %s", r->gb, p->reason);
            CHECK(strstr(p->reason, vf_offload_strategy_name(r->s)) != NULL);
            for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
                const vf_plan_component *pc = &p->comp[c];
                CHECK(pc->on_device);
                CHECK(pc->resident_bytes + pc->streamed_bytes == pc->weight_bytes);
                for (int b = 0; b < pc->nblocks; b++)
                    CHECK(pc->blocks[b].mode == VF_BLOCK_RESIDENT ||
                          pc->blocks[b].bytes <= p->ring_slot_bytes);
            }
        }
        vf_plan_free(p);
    }
    /* With a 55 GB/s link, streaming hides behind compute below 16 GB. */
    CHECK(streamed > 0);
    drop_model();
}

/* The winner at 6 GB streams, is faster per step than the best classic plan,
 * and is what a plain STREAM request gives. */
static void test_stream_beats_sequential(void)
{
    if (!load_model(VF_ARCH_SDXL))
        return;
    setup s;
    setup_init(&s, 6.0, VF_OFFLOAD_AUTO, 1);
    vf_plan *p = NULL, *q = NULL;
    CHECK_OK(plan(&s, &p));
    setup_init(&s, 6.0, VF_OFFLOAD_SEQUENTIAL, 1);
    CHECK_OK(plan(&s, &q));
    if (p && q) {
        CHECK(p->strategy == VF_OFFLOAD_STREAM);
        CHECK(p->ring_depth >= 1 && p->ring_slot_bytes > 0);
        CHECK(p->comp[VF_COMPONENT_UNET].streamed_bytes > 0);
        CHECK(p->time_per_step < q->time_per_step);
        CHECK(strstr(p->reason, "sequential") != NULL);
        /* Streaming costs time: never faster than the unconstrained plan. */
        setup_init(&s, 24.0, VF_OFFLOAD_FULL_GPU, 1);
        vf_plan *f = NULL;
        CHECK_OK(plan(&s, &f));
        if (f)
            CHECK(p->time_per_step >= f->time_per_step);
        vf_plan_free(f);
    }
    vf_plan_free(p);
    vf_plan_free(q);
    drop_model();
}

/* ---- budgets --------------------------------------------------------------------------- */

static void check_plan_in_budget(const vf_plan *p, double gb, const char *what)
{
    CHECK_MSG(p->peak_device <= p->policy.budget, "%s at %.1f GB: peak %.3f GB", what, gb,
              p->peak_device / GB);
    for (int st = 0; st < 3; st++)
        CHECK(p->stage_peak[st] <= p->peak_device);
    CHECK(p->peak_device >= p->res.context_bytes);
    CHECK(p->time_per_step > 0 && p->time_per_generation >= p->time_per_step * p->request.steps);
    CHECK(p->peak_host > 0);
}

static void test_budget_sweep(void)
{
    if (!load_model(VF_ARCH_SDXL))
        return;
    static const vf_offload_strategy strategies[] = {VF_OFFLOAD_AUTO, VF_OFFLOAD_FULL_GPU,
                                                     VF_OFFLOAD_CPU_OFFLOAD, VF_OFFLOAD_SEQUENTIAL,
                                                     VF_OFFLOAD_STREAM};
    int accepted = 0, rejected = 0;
    for (size_t k = 0; k < sizeof strategies / sizeof strategies[0]; k++) {
        for (double gb = 1; gb <= 24; gb += (k == 0 ? 0.5 : 1)) {
            setup s;
            setup_init(&s, gb, strategies[k], 1);
            vf_plan *p = NULL;
            vf_status st = plan(&s, &p);
            if (st == VF_OK) {
                accepted++;
                check_plan_in_budget(p, gb, vf_offload_strategy_name(strategies[k]));
                if (strategies[k] != VF_OFFLOAD_AUTO)
                    CHECK(p->strategy == strategies[k]);
                vf_plan_free(p);
                continue;
            }
            rejected++;
            CHECK_MSG(st == VF_ERR_BUDGET, "%s at %.1f GB: %s", vf_offload_strategy_name(strategies[k]),
                      gb, vf_last_error());
            CHECK_MSG(needs_at_least(vf_last_error()) > gb * GB, "%s", vf_last_error());
            CHECK(p == NULL);
        }
    }
    CHECK(accepted > 0 && rejected > 0);
    drop_model();
}

/* SEQUENTIAL holds one component at a time: its peak is the largest stage. */
static void test_sequential_peak_is_largest_stage(void)
{
    if (!load_model(VF_ARCH_SDXL))
        return;
    setup s;
    setup_init(&s, 24.0, VF_OFFLOAD_SEQUENTIAL, 1);
    vf_plan *p = NULL;
    CHECK_OK(plan(&s, &p));
    if (!p)
        goto out;
    uint64_t ctx = p->res.context_bytes, sum = ctx, stage_max = 0;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        const vf_plan_component *pc = &p->comp[c];
        uint64_t own = pc->weight_bytes + pc->act_bytes;
        sum += own;
        stage_max = ctx + own > stage_max ? ctx + own : stage_max;
        CHECK(pc->on_device && pc->resident_bytes == pc->weight_bytes);
        CHECK(p->stage_peak[pc->stage] >= ctx + own);
    }
    CHECK(p->peak_device == stage_max);
    CHECK(p->peak_device == p->stage_peak[VF_STEP_DENOISE]);
    CHECK(p->peak_device < sum);
    /* FULL_GPU at the same budget holds everything at once: the sum. */
    setup_init(&s, 24.0, VF_OFFLOAD_FULL_GPU, 1);
    vf_plan *f = NULL;
    CHECK_OK(plan(&s, &f));
    if (f)
        CHECK(f->peak_device == sum);
    vf_plan_free(f);
out:
    vf_plan_free(p);
    drop_model();
}

/* Rejected budgets name a figure, and that figure is enough. */
static void test_needs_at_least(void)
{
    if (!load_model(VF_ARCH_SDXL))
        return;
    static const vf_offload_strategy strategies[] = {VF_OFFLOAD_AUTO, VF_OFFLOAD_SEQUENTIAL,
                                                     VF_OFFLOAD_STREAM, VF_OFFLOAD_FULL_GPU};
    for (size_t k = 0; k < sizeof strategies / sizeof strategies[0]; k++) {
        setup s;
        setup_init(&s, 0.6, strategies[k], 1);
        vf_plan *p = NULL;
        vf_status st = plan(&s, &p);
        CHECK(st == VF_ERR_BUDGET && p == NULL);
        double need = needs_at_least(vf_last_error());
        CHECK_MSG(need > 0.6 * GB, "%s", vf_last_error());
        CHECK(strstr(vf_last_error(), "0.60 GB") != NULL);
        /* The figure is rounded up: given back as the budget, it fits. */
        setup_init(&s, need / GB, strategies[k], 1);
        CHECK_OK(plan(&s, &p));
        if (p)
            CHECK(p->peak_device <= s.po.budget);
        vf_plan_free(p);
    }
    /* Below the CUDA context itself nothing can fit. */
    setup s;
    setup_init(&s, 0.3, VF_OFFLOAD_AUTO, 1);
    vf_plan *p = NULL;
    CHECK(plan(&s, &p) == VF_ERR_BUDGET);
    drop_model();
}

/* Pinned homes are budgeted against RAM: short of it, blocks stay on DISK and
 * stream at the disk's speed, which the times show. */
static void test_ram_short(void)
{
    if (!load_model(VF_ARCH_SDXL))
        return;
    setup s;
    setup_init(&s, 4.0, VF_OFFLOAD_SEQUENTIAL, 1);
    vf_plan *a = NULL, *b = NULL;
    CHECK_OK(plan(&s, &a));
    s.rs.available_ram = 4000000000ull;
    CHECK_OK(plan(&s, &b));
    if (a && b) {
        int disk_a = 0, disk_b = 0;
        for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
            for (int k = 0; k < a->comp[c].nblocks; k++)
                disk_a += a->comp[c].blocks[k].home == VF_TIER_DISK;
            for (int k = 0; k < b->comp[c].nblocks; k++)
                disk_b += b->comp[c].blocks[k].home == VF_TIER_DISK;
        }
        CHECK(disk_a == 0 && disk_b > 0);
        CHECK(b->time_per_step > a->time_per_step);
        CHECK(b->peak_host < a->peak_host);
        CHECK(b->peak_device <= s.po.budget);
    }
    vf_plan_free(a);
    vf_plan_free(b);
    drop_model();
}

/* Text encoders at F16 instead of F32 move the CPU-offload rung by exactly
 * the bytes saved. */
static void test_dtype_policy_moves_rungs(void)
{
    if (!load_model(VF_ARCH_SDXL))
        return;
    vf_plan *a = NULL, *b = NULL;
    setup s;
    setup_init(&s, 24.0, VF_OFFLOAD_FULL_GPU, 0);
    CHECK_OK(plan(&s, &a));
    s.po.dtype_policy = VF_DTYPE_POLICY_F16;
    CHECK_OK(plan(&s, &b));
    if (a && b) {
        const vf_plan_component *ta = &a->comp[VF_COMPONENT_TEXT_ENCODER_2];
        const vf_plan_component *tb = &b->comp[VF_COMPONENT_TEXT_ENCODER_2];
        CHECK(ta->dtype == VF_DTYPE_F32 && tb->dtype == VF_DTYPE_F16);
        CHECK(ta->weight_bytes == 694659840ull * 4 && tb->weight_bytes == 694659840ull * 2);
        CHECK(a->comp[VF_COMPONENT_UNET].weight_bytes == 2567463684ull * 2);
        CHECK(a->comp[VF_COMPONENT_VAE].dtype == VF_DTYPE_F32);  /* force_upcast */
        CHECK(b->peak_device < a->peak_device);
    }
    vf_plan_free(a);
    vf_plan_free(b);
    /* packed formats plan with their packed bytes (test_dtype_packed_bytes) */
    s.po.dtype_policy = VF_DTYPE_POLICY_Q4;
    CHECK_OK(plan(&s, &a));
    if (a)
        CHECK(a->comp[VF_COMPONENT_UNET].dtype == VF_DTYPE_Q4 &&
              a->comp[VF_COMPONENT_UNET].weight_bytes < 2567463684ull * 2 / 3);
    vf_plan_free(a);
    drop_model();
}

/* ---- the dtype policy ------------------------------------------------------------------ */

/* Exact bytes of a component stored in fmt, from the weight shapes: packed
 * where vf_quant_can() takes the weight and it is not an input or output
 * convolution, F16 elsewhere. */
static uint64_t packed_component_bytes(vf_component c, vf_dtype fmt, uint64_t *largest_block)
{
    uint64_t total = 0;
    *largest_block = 0;
    for (int b = 0; b < g_bl[c].nblocks; b++) {
        const vf_block *blk = &g_bl[c].blocks[b];
        uint64_t params = 0;
        for (int i = blk->first_w; i < blk->first_w + blk->nw; i++) {
            const vf_wspec *w = &g_bl[c].w[i];
            int64_t cols = 1;
            for (int d = 1; d < w->ndim; d++)
                cols *= w->shape[d];
            params += (uint64_t)(w->shape[0] * cols);
            int pack = vf_quant_can(fmt, w->ndim, w->shape) && !is_io_conv(c, w->name);
            total += pack ? vf_quant_packed_bytes(fmt, w->shape[0], cols) : (uint64_t)(w->shape[0] * cols) * 2;
        }
        *largest_block = params > *largest_block ? params : *largest_block;
    }
    return total;
}

/* AUTO from free VRAM with real SDXL sizes: Q8 below 8 GB, F16 from 8 to 12
 * GB, F32 above 12 GB, with streaming allowed or not (the choice weighs
 * plans without streaming either way), every plan inside its budget. */
static void test_dtype_auto_thresholds(void)
{
    if (!load_model(VF_ARCH_SDXL))
        return;
    static const struct {
        double gb;
        vf_dtype unet;
    } want[] = {{2.0, VF_DTYPE_Q8},   {4.0, VF_DTYPE_Q8},   {6.0, VF_DTYPE_Q8},   {7.9, VF_DTYPE_Q8},
                {8.1, VF_DTYPE_F16},  {10.0, VF_DTYPE_F16}, {11.9, VF_DTYPE_F16}, {12.5, VF_DTYPE_F32},
                {14.0, VF_DTYPE_F32}, {16.5, VF_DTYPE_F32}, {24.0, VF_DTYPE_F32}, {40.0, VF_DTYPE_F32}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        for (int stream = 0; stream < 2; stream++) {
            setup s;
            setup_init(&s, want[i].gb, VF_OFFLOAD_AUTO, stream);
            s.po.auto_rung = VF_RUNG_CHOOSE;
            vf_plan *p = NULL;
            CHECK_OK(plan(&s, &p));
            if (!p)
                continue;
            const vf_plan_component *u = &p->comp[VF_COMPONENT_UNET];
            CHECK_MSG(u->dtype == want[i].unet, "%.1f GB%s: UNet %s, want %s (%s)", want[i].gb,
                      stream ? " with streaming" : "", vf_dtype_name(u->dtype), vf_dtype_name(want[i].unet),
                      p->dtype_reason);
            CHECK(strncmp(p->dtype_reason, "auto: ", 6) == 0);
            CHECK(p->peak_device <= s.po.budget);
            /* the rung's other components: F32 everything; F16 the ladder's; Q8 the text encoders too */
            vf_dtype te = p->comp[VF_COMPONENT_TEXT_ENCODER_2].dtype, vae = p->comp[VF_COMPONENT_VAE].dtype;
            if (p->comp[VF_COMPONENT_TEXT_ENCODER_2].on_device)
                CHECK(te == (want[i].unet == VF_DTYPE_F16 ? VF_DTYPE_F32 : want[i].unet));
            if (p->comp[VF_COMPONENT_VAE].on_device)
                CHECK(vae == VF_DTYPE_F32); /* SDXL's VAE: force_upcast */
            vf_plan_free(p);
        }
    }
    drop_model();
}

/* Packed storage counts packed bytes, exactly: per block the packed size of
 * every weight the format takes and F16 for the rest (the UNet's conv_in and
 * conv_out among them: they stay F16); the activation region
 * grows by the F16 buffer of the largest block, which dequantizes into it. */
static void test_dtype_packed_bytes(void)
{
    if (!load_model(VF_ARCH_SDXL))
        return;
    static const vf_dtype_policy pols[] = {VF_DTYPE_POLICY_F8, VF_DTYPE_POLICY_Q8, VF_DTYPE_POLICY_Q4};
    static const vf_dtype fmts[] = {VF_DTYPE_F8_E4M3, VF_DTYPE_Q8, VF_DTYPE_Q4};
    setup s;
    setup_init(&s, 40.0, VF_OFFLOAD_FULL_GPU, 0);
    s.po.dtype_policy = VF_DTYPE_POLICY_F16;
    vf_plan *f16 = NULL;
    CHECK_OK(plan(&s, &f16));
    for (size_t i = 0; f16 && i < 3; i++) {
        vf_plan *p = NULL;
        s.po.dtype_policy = pols[i];
        CHECK_OK(plan(&s, &p));
        if (!p)
            continue;
        for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
            const vf_plan_component *pc = &p->comp[c];
            uint64_t largest, want = packed_component_bytes((vf_component)c, fmts[i], &largest);
            if (c == VF_COMPONENT_VAE) {
                CHECK(pc->dtype == VF_DTYPE_F32); /* the VAE stays, at its force_upcast F32 */
                continue;
            }
            CHECK_MSG(pc->dtype == fmts[i] && pc->weight_bytes == want, "%s %s: %s, %llu bytes, want %llu",
                      vf_dtype_name(fmts[i]), vf_component_name((vf_component)c), vf_dtype_name(pc->dtype),
                      (unsigned long long)pc->weight_bytes, (unsigned long long)want);
            for (int b = 0; b < pc->nblocks; b++)
                CHECK(pc->blocks[b].dtype == fmts[i] && pc->blocks[b].extra_s > 0);
            if (c == VF_COMPONENT_UNET)
                /* + two scratch slots, each the largest block expanded to F16 */
                CHECK_MSG(pc->act_bytes == f16->comp[c].act_bytes + 2 * largest * 2, "%s: activations %llu, F16 %llu",
                          vf_dtype_name(fmts[i]), (unsigned long long)pc->act_bytes,
                          (unsigned long long)f16->comp[c].act_bytes);
        }
        uint64_t u = p->comp[VF_COMPONENT_UNET].weight_bytes;
        printf("SDXL UNet stored as %s: %.3f GB (F16 %.3f GB)\n", vf_dtype_name(fmts[i]), u / GB,
               f16->comp[VF_COMPONENT_UNET].weight_bytes / GB);
        /* Q8 is about 17/32 of F16, Q4 about 10/32, F8 about half */
        double r = (double)u / (double)f16->comp[VF_COMPONENT_UNET].weight_bytes;
        CHECK(fmts[i] == VF_DTYPE_Q4 ? r < 0.33 : r < 0.54);
        CHECK(p->peak_device < f16->peak_device);
        /* the JSON carries the dtype per component and per run of blocks */
        char *text = NULL;
        CHECK_OK(vf_plan_to_json(p, &text));
        CHECK(text && strstr(text, vf_dtype_name(fmts[i])) && strstr(text, "\"dtype_reason\""));
        vf_string_free(text);
        vf_plan_free(p);
    }
    vf_plan_free(f16);
    drop_model();
}

/* FAST keeps F16 wherever Q8 is not faster (Q8 pays for dequantizing), and
 * takes Q8 where streaming half the bytes wins: its step is then the lower. */
static void test_dtype_fast(void)
{
    if (!load_model(VF_ARCH_SDXL))
        return;
    int q8 = 0, f16 = 0;
    for (double gb = 1.5; gb <= 24; gb *= 1.5) {
        setup s;
        setup_init(&s, gb, VF_OFFLOAD_AUTO, 1);
        s.po.dtype_policy = VF_DTYPE_POLICY_FAST;
        vf_plan *p = NULL, *q = NULL;
        CHECK_OK(plan(&s, &p));
        s.po.dtype_policy = VF_DTYPE_POLICY_F16;
        vf_status st = plan(&s, &q);
        if (p) {
            vf_dtype u = p->comp[VF_COMPONENT_UNET].dtype;
            CHECK(u == VF_DTYPE_F16 || u == VF_DTYPE_Q8);
            CHECK(strncmp(p->dtype_reason, "fast: ", 6) == 0);
            CHECK(p->peak_device <= s.po.budget);
            q8 += u == VF_DTYPE_Q8;
            f16 += u == VF_DTYPE_F16;
            /* F16 everywhere (as the F16 policy plans it) unless Q8 is faster */
            if (u == VF_DTYPE_F16 && q)
                CHECK(p->time_per_step == q->time_per_step);
            if (u == VF_DTYPE_Q8 && st == VF_OK)
                CHECK_MSG(p->time_per_step < q->time_per_step, "%.1f GB: q8 %.4f s, f16 %.4f s", gb,
                          p->time_per_step, q->time_per_step);
        }
        vf_plan_free(p);
        vf_plan_free(q);
    }
    CHECK(q8 > 0 && f16 > 0);
    /* resident everything: F16, even the VAE (FAST computes in F16) */
    setup s;
    setup_init(&s, 40.0, VF_OFFLOAD_AUTO, 1);
    s.po.dtype_policy = VF_DTYPE_POLICY_FAST;
    vf_plan *p = NULL;
    CHECK_OK(plan(&s, &p));
    for (int c = 0; p && c < VF_COMPONENT_COUNT; c++)
        CHECK(p->comp[c].dtype == VF_DTYPE_F16);
    vf_plan_free(p);
    drop_model();
}

static void test_cpu_only_and_bad_requests(void)
{
    if (!load_model(VF_ARCH_SD15))
        return;
    setup s;
    setup_init(&s, 0, VF_OFFLOAD_AUTO, 1);
    s.rs.has_device = 0;
    vf_plan *p = NULL;
    CHECK_OK(plan(&s, &p));
    if (p) {
        CHECK(p->peak_device == 0 && p->request.width == 512 && p->request.height == 512);
        for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
            if (!p->comp[c].present)
                continue;
            CHECK(!p->comp[c].on_device && p->comp[c].dtype == VF_DTYPE_F32);
            CHECK(p->comp[c].blocks[0].mode == VF_BLOCK_CPU);
        }
        CHECK(!p->comp[VF_COMPONENT_TEXT_ENCODER_2].present);
        /* 1.6 TFLOP per CFG step at 512x512 on a 50 GFLOP/s CPU: about 32 s. */
        CHECK_MSG(p->time_per_step > 25 && p->time_per_step < 40, "%.1f s", p->time_per_step);
    }
    vf_plan_free(p);
    setup_init(&s, 8, VF_OFFLOAD_AUTO, 1);
    s.rq.width = 500;
    CHECK(plan(&s, &p) == VF_ERR_INVALID_ARG && strstr(vf_last_error(), "500x512"));
    s.rq.width = 512;
    s.rq.steps = -1;
    CHECK(plan(&s, &p) == VF_ERR_INVALID_ARG);
    s.rq.steps = 20;
    s.rs.link_bw = 0;
    CHECK(plan(&s, &p) == VF_ERR_INVALID_ARG);
    drop_model();
}

/* Every allocation failure is reported and leaks nothing (ASan checks). */
static void test_allocation_failures(void)
{
    if (!load_model(VF_ARCH_SD15))
        return;
    setup s;
    setup_init(&s, 3, VF_OFFLOAD_AUTO, 1);
    int failed = 0;
    for (uint64_t n = 1; n < 64; n++) {
        vf_plan *p = NULL;
        vf_fault_alloc_fail_at(n);
        vf_status st = plan(&s, &p);
        vf_fault_alloc_fail_at(0);
        if (st == VF_OK) {
            vf_plan_free(p);
            break;
        }
        failed++;
        CHECK(p == NULL);
    }
    CHECK(failed > 0);
    drop_model();
}

/* ---- the ring ---------------------------------------------------------------------------- */

static void test_ring_simulation(void)
{
    vf_plan_block blocks[10];
    vf_plan_component pc;
    memset(&pc, 0, sizeof pc);
    pc.blocks = blocks;
    pc.nblocks = 10;
    /* Ten blocks of 1 GB at 50 GB/s (20 ms each), computing 10 ms each. */
    for (int i = 0; i < 10; i++)
        blocks[i] = (vf_plan_block){.params = 1, .bytes = 1000000000ull, .flops = 10e-3 * 1e12,
                                    .home = VF_TIER_PINNED, .mode = VF_BLOCK_STREAMED};
    double t = vf_plan_simulate(&pc, 2, 50e9, 50e9, 1e12, 0);
    CHECK_MSG(fabs(t - 0.200) < 1e-9, "copy bound %.6f", t);  /* the link is the limit */
    for (int i = 0; i < 10; i++)
        blocks[i].flops = 30e-3 * 1e12;
    t = vf_plan_simulate(&pc, 2, 50e9, 50e9, 1e12, 0);
    CHECK_MSG(fabs(t - 0.300) < 1e-9, "compute bound %.6f", t);  /* copies hidden */
    /* One slot: the copy of block i+1 waits for block i to finish. */
    t = vf_plan_simulate(&pc, 1, 50e9, 50e9, 1e12, 0);
    CHECK_MSG(fabs(t - 0.500) < 1e-9, "depth 1 %.6f", t);
    /* On demand: copy then compute, never overlapped. */
    for (int i = 0; i < 10; i++)
        blocks[i].mode = VF_BLOCK_ON_DEMAND;
    t = vf_plan_simulate(&pc, 2, 50e9, 50e9, 1e12, 0);
    CHECK_MSG(fabs(t - 0.500) < 1e-9, "on demand %.6f", t);
    /* Resident blocks compute only; blocks homed on DISK copy at the disk's speed. */
    for (int i = 0; i < 10; i++)
        blocks[i].mode = i < 5 ? VF_BLOCK_RESIDENT : VF_BLOCK_STREAMED;
    t = vf_plan_simulate(&pc, 4, 50e9, 50e9, 1e12, 0);
    CHECK_MSG(fabs(t - 0.300) < 1e-9, "half resident %.6f", t);
    for (int i = 5; i < 10; i++)
        blocks[i].home = VF_TIER_DISK;
    t = vf_plan_simulate(&pc, 4, 50e9, 5e9, 1e12, 0);
    CHECK_MSG(fabs(t - 1.000) < 1e-9, "from disk %.6f", t);  /* 5 x 200 ms of copies */
    /* Residency keeps what fits, by compute per byte. */
    for (int i = 0; i < 10; i++)
        blocks[i].flops = (double)(i + 1);
    CHECK_OK(vf_plan_rank_blocks(&pc));
    if (!pc.order)
        return;
    CHECK(pc.order[0] == 9 && pc.order[9] == 0);
    CHECK(vf_plan_pick_resident(&pc, 3500000000ull, 1) == 3000000000ull);
    CHECK(blocks[9].mode == VF_BLOCK_RESIDENT && blocks[7].mode == VF_BLOCK_RESIDENT &&
          blocks[6].mode == VF_BLOCK_STREAMED && blocks[0].mode == VF_BLOCK_STREAMED);
    CHECK(vf_plan_pick_resident(&pc, 3500000000ull, 0) == 3000000000ull);
    CHECK(blocks[0].mode == VF_BLOCK_RESIDENT && blocks[2].mode == VF_BLOCK_RESIDENT &&
          blocks[3].mode == VF_BLOCK_STREAMED && blocks[9].mode == VF_BLOCK_STREAMED);
    vf_free(pc.order);
}

/* ---- parsing ------------------------------------------------------------------------------ */

static void test_parse_size(void)
{
    static const struct {
        const char *text;
        uint64_t want;
    } good[] = {
        {"6G", 6ull << 30},        {"6g", 6ull << 30},          {"6GiB", 6ull << 30},
        {"6Gi", 6ull << 30},       {"6GB", 6000000000ull},      {"512M", 512ull << 20},
        {"512MB", 512000000ull},   {"1.5GiB", 3ull << 29},      {"1.5G", 3ull << 29},
        {"0.5T", 1ull << 39},      {"2K", 2048},                {"2kb", 2000},
        {"100", 100},              {"100B", 100},               {" 6 G ", 6ull << 30},
        {".5G", 1ull << 29},       {"24GB", 24000000000ull},    {"0", 0},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        uint64_t v = 1;
        vf_status st = vf_parse_size(good[i].text, &v);
        CHECK_MSG(st == VF_OK && v == good[i].want, "'%s' -> %llu (%s)", good[i].text,
                  (unsigned long long)v, st ? vf_last_error() : "ok");
    }
    static const char *const bad[] = {"", "G", "-1G", "+1G", "1.2.3G", "6X", "6GX", "1e3",
                                      "abc", "nan", "inf", "0x10", "99999999999T", "6 G B",
                                      "6GiBB", ".", "1,5G"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t v = 7;
        vf_status st = vf_parse_size(bad[i], &v);
        CHECK_MSG(st == VF_ERR_INVALID_ARG && v == 7, "'%s' accepted as %llu", bad[i],
                  (unsigned long long)v);
        if (st != VF_OK && bad[i][0])
            CHECK(strstr(vf_last_error(), bad[i]) != NULL);  /* the message names the text */
    }
    CHECK(vf_parse_size(NULL, NULL) == VF_ERR_INVALID_ARG);
}

static void test_names(void)
{
    for (int i = 0; i < VF_OFFLOAD_COUNT; i++) {
        vf_offload_strategy s;
        CHECK(vf_offload_strategy_parse(vf_offload_strategy_name((vf_offload_strategy)i), &s) == VF_OK &&
              (int)s == i);
    }
    for (int i = 0; i < VF_LOADING_COUNT; i++) {
        vf_loading_strategy s;
        CHECK(vf_loading_strategy_parse(vf_loading_strategy_name((vf_loading_strategy)i), &s) == VF_OK &&
              (int)s == i);
    }
    for (int i = 0; i < VF_DTYPE_POLICY_COUNT; i++) {
        vf_dtype_policy s;
        CHECK(vf_dtype_policy_parse(vf_dtype_policy_name((vf_dtype_policy)i), &s) == VF_OK && (int)s == i);
    }
    for (int i = 0; i < VF_EVICT_COUNT; i++) {
        vf_eviction_policy s;
        CHECK(vf_eviction_policy_parse(vf_eviction_policy_name((vf_eviction_policy)i), &s) == VF_OK &&
              (int)s == i);
    }
    for (int i = 0; i < VF_TIER_COUNT; i++) {
        vf_tier s;
        CHECK(vf_tier_parse(vf_tier_name((vf_tier)i), &s) == VF_OK && (int)s == i);
    }
    vf_offload_strategy s = VF_OFFLOAD_AUTO;
    CHECK(vf_offload_strategy_parse("CPU_Offload", &s) == VF_OK && s == VF_OFFLOAD_CPU_OFFLOAD);
    CHECK(vf_offload_strategy_parse("gpu", &s) == VF_ERR_INVALID_ARG && s == VF_OFFLOAD_CPU_OFFLOAD);
    CHECK(strstr(vf_last_error(), "'gpu'") && strstr(vf_last_error(), "full-gpu"));
    CHECK(strcmp(vf_offload_strategy_name(VF_OFFLOAD_COUNT), "?") == 0);
    CHECK(strcmp(vf_tier_name((vf_tier)-1), "?") == 0);
}

/* The JSON form carries the plan's figures exactly. */
static void test_json(void)
{
    if (!load_model(VF_ARCH_SDXL))
        return;
    setup s;
    setup_init(&s, 6.0, VF_OFFLOAD_AUTO, 1);
    vf_plan *p = NULL;
    char *text = NULL;
    CHECK_OK(plan(&s, &p));
    if (!p)
        goto out;
    vf_plan_summary sum;
    vf_plan_get_summary(p, &sum);
    CHECK(sum.strategy == p->strategy && sum.peak_device == p->peak_device &&
          sum.peak_host == p->peak_host && sum.budget == 6000000000ull && sum.has_device &&
          sum.ring_depth == p->ring_depth && sum.time_per_step == p->time_per_step &&
          sum.reason == p->reason);
    CHECK_OK(vf_plan_to_json(p, &text));
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    CHECK(j != NULL);
    if (j) {
        const cJSON *peak = cJSON_GetObjectItemCaseSensitive(j, "peak_device_bytes");
        const cJSON *strat = cJSON_GetObjectItemCaseSensitive(j, "strategy");
        const cJSON *comps = cJSON_GetObjectItemCaseSensitive(j, "components");
        CHECK(cJSON_IsNumber(peak) && (uint64_t)peak->valuedouble == p->peak_device);
        CHECK(cJSON_IsString(strat) && strcmp(strat->valuestring, "stream") == 0);
        CHECK(cJSON_GetArraySize(comps) == 4);
        /* Runs cover every block exactly once, in order. */
        const cJSON *c;
        cJSON_ArrayForEach(c, comps)
        {
            int next = 0;
            uint64_t bytes = 0;
            const cJSON *r;
            cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(c, "blocks"))
            {
                CHECK((int)cJSON_GetObjectItemCaseSensitive(r, "first")->valuedouble == next);
                next += (int)cJSON_GetObjectItemCaseSensitive(r, "count")->valuedouble;
                bytes += (uint64_t)cJSON_GetObjectItemCaseSensitive(r, "bytes")->valuedouble;
            }
            CHECK(next == (int)cJSON_GetObjectItemCaseSensitive(c, "blocks_total")->valuedouble);
            CHECK(bytes == (uint64_t)cJSON_GetObjectItemCaseSensitive(c, "weight_bytes")->valuedouble);
        }
        cJSON_Delete(j);
    }
out:
    vf_string_free(text);
    vf_plan_free(p);
    drop_model();
}

TEST_MAIN(TEST(test_sdxl_sizes), TEST(test_ladder_without_streaming), TEST(test_ladder_with_streaming),
          TEST(test_stream_beats_sequential), TEST(test_budget_sweep),
          TEST(test_sequential_peak_is_largest_stage), TEST(test_needs_at_least),
          TEST(test_dtype_policy_moves_rungs), TEST(test_dtype_auto_thresholds), TEST(test_dtype_packed_bytes),
          TEST(test_dtype_fast), TEST(test_ram_short), TEST(test_cpu_only_and_bad_requests),
          TEST(test_allocation_failures), TEST(test_ring_simulation), TEST(test_parse_size),
          TEST(test_names), TEST(test_json))
