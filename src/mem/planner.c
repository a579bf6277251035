/* The planner: strategies, AUTO, budgets (see planner.h for the cost model).
 *
 * One function, eval(), turns a configuration (strategy, CPU_OFFLOAD variant,
 * attention slices, VAE tile, ring depth) into block modes, device and host
 * peaks and times. Everything else searches configurations with it and keeps
 * the best one that fits; the winner is evaluated once more into the plan.
 *
 * Memory accounting, by strategy:
 * - FULL_GPU and CPU_OFFLOAD keep their device components for the whole run,
 *   each with its own activation region, so switching stages never re-plans:
 *   peak = context + their weights + the sum of their activation regions.
 * - SEQUENTIAL holds one component (weights + region) at a time: peak = the
 *   largest stage. A component that does not fit whole keeps what fits
 *   resident and copies the rest in right before use, without overlap (what
 *   "sequential offload" does elsewhere).
 * - STREAM keeps all components on the device, as many blocks resident as fit
 *   (the UNet's first: it runs every step) and streams the rest through a ring.
 * Degradations (attention in slices, the VAE in tiles) shrink activation
 * regions at a small cost in time.
 *
 * AUTO minimises the predicted time per denoising step and breaks near-ties
 * (within 1%) by the time per generation. FULL_GPU and CPU_OFFLOAD enter AUTO
 * as they are (a degraded one is what the documented ladder calls the next
 * strategy down); SEQUENTIAL and STREAM enter degraded as far as needed. With
 * real SDXL sizes this reproduces the documented ladder (below 8 GB
 * SEQUENTIAL, 8-12 GB CPU_OFFLOAD, 12-16 GB CPU_OFFLOAD with the text encoders
 * on the device, above 16 GB FULL_GPU), and STREAM replaces it where it is
 * predicted faster, which the plan's reason says.
 *
 * Storage dtypes (device_dtype). The dtype policy AUTO picks the highest
 * precision rung (planner.h: F32, F16, Q8) whose plan fits without streaming
 * at full speed: its best plan without streaming (for the offload strategy
 * asked for) predicts a denoising step within FULL_SPEED (14%) of the same
 * rung's unconstrained step, so what that rung costs here (attention slices,
 * reloading the UNet every image under SEQUENTIAL, blocks copied on demand)
 * stays small; failing both, Q8. With real SDXL sizes at 1024x1024 this is
 * the documented behaviour: F32 needs 15.6 GB undegraded, but SEQUENTIAL in
 * 4 attention slices from 12.3 GB is 13% slower, within the margin (at 12.0
 * GB: 8 slices, 16%); F16 fits undegraded from 8.03 GB, and below it the
 * best is SEQUENTIAL in 2 slices at 16% (the UNet reload weighs more against
 * F16's faster step). So Q8 below 8 GB, F16 from 8 to 12 GB, F32 above 12 GB
 * (test_planner.c). The margin sits between those measured costs; a cost
 * model that moves them by a few percent moves the thresholds.
 * FAST plans F16 and Q8 storage and keeps the lower predicted step time,
 * F16 on ties: Q8 pays a dequantization per block call (bytes / dequant_bw)
 * and wins only where halving the streamed bytes pays for it.
 * Packed storage computes in F16: its activations are F16 and each
 * component holds a buffer its largest block dequantizes into.
 */
#include "core/alloc.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/quant.h"
#include "mem/planner.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define GB 1e9
#define TIE 0.01                   /* relative difference that counts as a tie */
#define HOST_RESERVE 1000000000ull /* RAM left to the OS and everything else   */
#define FULL_SPEED 1.14            /* AUTO: a rung's step within this of its best */

const char *vf_block_mode_name(vf_block_mode m)
{
    static const char *const n[] = {"resident", "streamed", "on-demand", "cpu"};
    return (unsigned)m < 4 ? n[m] : "?";
}

/* ---- defaults ---------------------------------------------------------------------- */

void vf_plan_request_init(vf_plan_request *r)
{
    memset(r, 0, sizeof *r);
    r->steps = 20;
    r->cfg = 1;
}

void vf_plan_resources_init(vf_plan_resources *r)
{
    memset(r, 0, sizeof *r);
    r->has_device = 1;
    r->free_vram = 80000000000ull;
    r->available_ram = 64000000000ull;
    r->link_bw = 55.1e9;
    r->pageable_bw = 6.7e9;
    r->disk_bw = 2e9;
    r->device_flops = 400e12;
    r->device_f32_flops = 100e12;
    r->host_flops = 50e9;
    r->block_overhead_s = 20e-6;
    r->context_bytes = 500000000ull;
    r->act_slack = 1.6;
    r->flash_attention = 0;
    r->dequant_bw = 1.5e12;
}

void vf_plan_resources_from(vf_plan_resources *r, const vf_resources *det)
{
    r->has_device = det->has_cuda && det->device_count > 0;
    r->free_vram = r->has_device ? det->devices[0].free_vram : 0;
    if (det->available_ram)
        r->available_ram = det->available_ram;
    if (det->cpu_cores > 0)
        r->host_flops = 25e9 * det->cpu_cores;
}

void vf_plan_policy_init(vf_plan_policy *p)
{
    memset(p, 0, sizeof *p);
    p->strategy = VF_OFFLOAD_AUTO;
    p->allow_stream = 1;
    p->dtype_policy = VF_DTYPE_POLICY_AUTO;
}

uint64_t vf_plan_default_budget(uint64_t free_vram)
{
    uint64_t margin = free_vram / 20;
    if (margin < (256ull << 20))
        margin = 256ull << 20;
    return free_vram > margin ? free_vram - margin : 0;
}

/* ---- configurations and their evaluation ------------------------------------------- */

typedef struct config {
    vf_offload_strategy s;
    int variant;                  /* CPU_OFFLOAD: 1 = text encoders on the device */
    int slices, tile, depth;
    int high_first;               /* STREAM: UNet residency ranking */
} config;

typedef struct metrics {
    int fits;
    uint64_t peak_dev, peak_host, stage_peak[3];
    double t_step, t_enc, t_dec, t_gen;
    int depth;
    uint64_t slot;
} metrics;

static int is_text(vf_component c)
{
    return c == VF_COMPONENT_TEXT_ENCODER || c == VF_COMPONENT_TEXT_ENCODER_2;
}

static vf_generation_step stage_of(vf_component c)
{
    return is_text(c) ? VF_STEP_ENCODE_PROMPT
                      : c == VF_COMPONENT_UNET ? VF_STEP_DENOISE : VF_STEP_DECODE;
}

/* Storage dtype of component c on the device under the policy (planner.h
 * for AUTO's rungs). Explicit F8/Q8/Q4 quantize the UNet and the text
 * encoders and leave the VAE, small and the most visible in the image, at
 * F16 (F32 where its config asks for force_upcast: SDXL's VAE overflows F16). */
static vf_dtype device_dtype(const vf_plan *p, vf_component c)
{
    vf_dtype vae = p->model->vae_force_upcast ? VF_DTYPE_F32 : VF_DTYPE_F16;
    int is_vae = c == VF_COMPONENT_VAE;
    switch (p->policy.dtype_policy) {
    case VF_DTYPE_POLICY_F32:
        return VF_DTYPE_F32;
    case VF_DTYPE_POLICY_BF16:
        return VF_DTYPE_BF16;
    case VF_DTYPE_POLICY_F16:
        return VF_DTYPE_F16;
    case VF_DTYPE_POLICY_FAST:
        return p->fast_dtype == VF_DTYPE_Q8 && !is_vae ? VF_DTYPE_Q8 : VF_DTYPE_F16;
    case VF_DTYPE_POLICY_F8:
        return is_vae ? vae : VF_DTYPE_F8_E4M3;
    case VF_DTYPE_POLICY_Q8:
        return is_vae ? vae : VF_DTYPE_Q8;
    case VF_DTYPE_POLICY_Q4:
        return is_vae ? vae : VF_DTYPE_Q4;
    default:
        break;
    }
    if (p->rung == VF_RUNG_F32)
        return VF_DTYPE_F32;
    if (is_vae)
        return vae;
    if (p->rung == VF_RUNG_Q8)
        return VF_DTYPE_Q8;
    return c == VF_COMPONENT_UNET ? VF_DTYPE_F16 : VF_DTYPE_F32;
}

/* Index of a packed format in vf_plan_block.packed_bytes, or -1. */
static int packed_index(vf_dtype t)
{
    return t == VF_DTYPE_F8_E4M3 ? 0 : t == VF_DTYPE_Q8 ? 1 : t == VF_DTYPE_Q4 ? 2 : -1;
}

static int on_device(const vf_plan *p, const config *k, vf_component c)
{
    if (!p->res.has_device)
        return 0;
    if (k->s != VF_OFFLOAD_CPU_OFFLOAD)
        return 1;
    if (c == VF_COMPONENT_UNET)
        return 1;
    return is_text(c) && k->variant == 1;
}

static int batch_of(const vf_plan *p, vf_component c)
{
    return c == VF_COMPONENT_UNET ? p->batch : 1;
}

/* Latent tiles per axis with a quarter overlap. */
static int tiles_along(int n, int tile)
{
    if (tile <= 0 || tile >= n)
        return 1;
    int stride = tile - tile / 4;
    return (n - tile + stride - 1) / stride + 1;
}

static double rate_of(const vf_plan *p, const vf_plan_component *pc)
{
    if (!pc->on_device)
        return p->res.host_flops;
    return pc->dtype == VF_DTYPE_F32 ? p->res.device_f32_flops : p->res.device_flops;
}

/* Bytes a value takes in the compute dtype: packed formats compute in F16. */
static size_t compute_size(vf_dtype t)
{
    return vf_quant_is_packed(t) ? 2 : vf_dtype_size(t);
}

static uint64_t activation(vf_plan *p, vf_component c, int esz, int slices, int tile)
{
    int n = p->nact_cache < 64 ? p->nact_cache : 64;
    for (int i = 0; i < n; i++) {
        if (p->act_cache[i].comp == (int)c && p->act_cache[i].esz == esz &&
            p->act_cache[i].slices == slices && p->act_cache[i].tile == tile)
            return p->act_cache[i].bytes;
    }
    uint64_t v = vf_plan_activation_bytes(p->model, c, p->request.height / 8, p->request.width / 8,
                                          batch_of(p, c), esz, slices, tile,
                                          p->res.flash_attention);
    int slot = p->nact_cache++ % 64;
    p->act_cache[slot].comp = (int)c;
    p->act_cache[slot].esz = esz;
    p->act_cache[slot].slices = slices;
    p->act_cache[slot].tile = tile;
    p->act_cache[slot].bytes = v;
    return v;
}

/* Sets dtype, bytes and FLOPs of every block for the configuration, and the
 * component's activation region. */
static void size_component(vf_plan *p, const config *k, vf_plan_component *pc)
{
    const vf_plan_model *pm = p->model;
    vf_component c = pc->comp;
    int lh = p->request.height / 8, lw = p->request.width / 8;
    int th = lh, tw = lw, ntiles = 1;
    if (c == VF_COMPONENT_VAE && k->tile > 0) {
        th = k->tile < lh ? k->tile : lh;
        tw = k->tile < lw ? k->tile : lw;
        ntiles = tiles_along(lh, k->tile) * tiles_along(lw, k->tile);
    }
    pc->on_device = on_device(p, k, c);
    pc->dtype = pc->on_device ? device_dtype(p, c) : VF_DTYPE_F32;
    size_t esz = compute_size(pc->dtype);
    int q = packed_index(pc->dtype);
    uint64_t largest = 0;
    pc->weight_bytes = 0;
    pc->flops = 0;
    for (int b = 0; b < pc->nblocks; b++) {
        vf_plan_block *pb = &pc->blocks[b];
        pb->dtype = pc->dtype;
        pb->bytes = q >= 0 ? pb->packed_bytes[q] : pb->params * esz;
        pb->extra_s = q >= 0 ? (double)(pb->params * esz) / p->res.dequant_bw : 0;
        pb->flops = ntiles == 1 && th == lh && tw == lw
                        ? pb->base_flops
                        : vf_plan_block_flops(pm, c, b, th, tw, batch_of(p, c)) * ntiles;
        pc->weight_bytes += pb->bytes;
        pc->flops += pb->flops;
        largest = pb->params > largest ? pb->params : largest;
    }
    uint64_t raw = activation(p, c, (int)esz, k->slices, c == VF_COMPONENT_VAE ? k->tile : 0);
    /* packed blocks expand into two scratch slots (mem/residency.c) */
    pc->scratch_bytes = q >= 0 ? 2 * largest * esz : 0;
    pc->act_bytes = (uint64_t)((double)raw * p->res.act_slack) + pc->scratch_bytes;
}

static void set_modes(vf_plan_component *pc, vf_block_mode mode, vf_tier home)
{
    for (int b = 0; b < pc->nblocks; b++) {
        pc->blocks[b].mode = mode;
        pc->blocks[b].home = home;
    }
    pc->resident_bytes = mode == VF_BLOCK_RESIDENT ? pc->weight_bytes : 0;
    pc->streamed_bytes = 0;
}

static uint64_t max_block(const vf_plan_component *pc, int only_nonresident)
{
    uint64_t m = 0;
    for (int b = 0; b < pc->nblocks; b++) {
        if (only_nonresident && pc->blocks[b].mode == VF_BLOCK_RESIDENT)
            continue;
        if (pc->blocks[b].bytes > m)
            m = pc->blocks[b].bytes;
    }
    return m;
}

static void count_modes(vf_plan_component *pc)
{
    pc->resident_bytes = pc->streamed_bytes = 0;
    for (int b = 0; b < pc->nblocks; b++) {
        if (pc->blocks[b].mode == VF_BLOCK_RESIDENT)
            pc->resident_bytes += pc->blocks[b].bytes;
        else if (pc->blocks[b].mode != VF_BLOCK_CPU)
            pc->streamed_bytes += pc->blocks[b].bytes;
    }
}

/* Slicing costs a little efficiency per halving (smaller GEMMs, more launches). */
static double slice_penalty(int slices)
{
    return 1.0 + 0.03 * log2(slices > 1 ? slices : 1);
}

static double call_time(const vf_plan *p, const config *k, const vf_plan_component *pc, int depth)
{
    if (!pc->on_device)
        return pc->flops / p->res.host_flops * slice_penalty(k->slices);
    double t = vf_plan_simulate(pc, depth, p->res.link_bw, p->res.disk_bw, rate_of(p, pc),
                                p->res.block_overhead_s);
    return t * slice_penalty(k->slices);
}

/* Pinned homes are budgeted against RAM: what does not fit stays on DISK and
 * is read from the file through bounce buffers. Returns host bytes in use. */
static uint64_t place_host(vf_plan *p)
{
    uint64_t cpu_w = 0, cpu_act = 0, pinned = 0, dev_block = 0;
    for (int i = 0; i < VF_COMPONENT_COUNT; i++) {
        vf_plan_component *pc = &p->comp[i];
        if (!pc->present)
            continue;
        if (!pc->on_device) {
            cpu_w += pc->weight_bytes;
            cpu_act = pc->act_bytes > cpu_act ? pc->act_bytes : cpu_act;
            continue;
        }
        uint64_t mb = max_block(pc, 0);
        dev_block = mb > dev_block ? mb : dev_block;
        for (int b = 0; b < pc->nblocks; b++)
            pinned += pc->blocks[b].home == VF_TIER_PINNED ? pc->blocks[b].bytes : 0;
    }
    uint64_t ram = p->res.available_ram, other = cpu_w + cpu_act + 2 * dev_block + HOST_RESERVE;
    uint64_t cap = ram > other ? ram - other : 0;
    if (ram == 0)
        cap = UINT64_MAX;
    /* Demote the components that run once per generation first; the UNet last. */
    static const vf_component demote[VF_COMPONENT_COUNT] = {
        VF_COMPONENT_VAE, VF_COMPONENT_TEXT_ENCODER, VF_COMPONENT_TEXT_ENCODER_2, VF_COMPONENT_UNET};
    for (int i = 0; i < VF_COMPONENT_COUNT && pinned > cap; i++) {
        vf_plan_component *pc = &p->comp[demote[i]];
        for (int b = pc->nblocks - 1; pc->present && b >= 0 && pinned > cap; b--) {
            if (pc->blocks[b].home == VF_TIER_PINNED) {
                pc->blocks[b].home = VF_TIER_DISK;
                pinned -= pc->blocks[b].bytes;
            }
        }
    }
    return cpu_w + cpu_act + pinned + 2 * dev_block;
}

/* FULL_GPU / CPU_OFFLOAD: device components resident for the whole run. */
static void eval_resident(vf_plan *p, const config *k, metrics *m)
{
    uint64_t peak = p->res.context_bytes;
    for (int i = 0; i < VF_COMPONENT_COUNT; i++) {
        vf_plan_component *pc = &p->comp[i];
        if (!pc->present)
            continue;
        if (pc->on_device) {
            set_modes(pc, VF_BLOCK_RESIDENT, VF_TIER_DEVICE);
            peak += pc->weight_bytes + pc->act_bytes;
        } else {
            set_modes(pc, VF_BLOCK_CPU, VF_TIER_HOST);
        }
    }
    m->peak_dev = peak;
    for (int s = 0; s < 3; s++)
        m->stage_peak[s] = peak;
}

/* SEQUENTIAL: one component at a time, whole when it fits, else partly on demand. */
static void eval_sequential(vf_plan *p, const config *k, metrics *m)
{
    uint64_t ctx = p->res.context_bytes, budget = p->policy.budget;
    m->peak_dev = ctx;
    for (int i = 0; i < VF_COMPONENT_COUNT; i++) {
        vf_plan_component *pc = &p->comp[i];
        if (!pc->present)
            continue;
        set_modes(pc, VF_BLOCK_RESIDENT, VF_TIER_PINNED);
        uint64_t need = ctx + pc->act_bytes + pc->weight_bytes;
        if (need > budget) {
            uint64_t fixed = ctx + pc->act_bytes + max_block(pc, 0);
            uint64_t room = budget > fixed ? budget - fixed : 0;
            vf_plan_pick_resident(pc, room, 1);
            for (int b = 0; b < pc->nblocks; b++) {
                if (pc->blocks[b].mode == VF_BLOCK_STREAMED)
                    pc->blocks[b].mode = VF_BLOCK_ON_DEMAND;
            }
            count_modes(pc);
            need = ctx + pc->act_bytes + pc->resident_bytes + max_block(pc, 1);
        }
        int s = stage_of(pc->comp);
        m->stage_peak[s] = need > m->stage_peak[s] ? need : m->stage_peak[s];
        m->peak_dev = need > m->peak_dev ? need : m->peak_dev;
    }
}

/* STREAM: residency for the UNet first, then the others; the rest streams. */
static void pick_stream(vf_plan *p, const config *k, uint64_t room)
{
    static const vf_component prio[VF_COMPONENT_COUNT] = {
        VF_COMPONENT_UNET, VF_COMPONENT_TEXT_ENCODER_2, VF_COMPONENT_TEXT_ENCODER, VF_COMPONENT_VAE};
    for (int i = 0; i < VF_COMPONENT_COUNT; i++) {
        vf_plan_component *pc = &p->comp[prio[i]];
        if (!pc->present)
            continue;
        set_modes(pc, VF_BLOCK_STREAMED, VF_TIER_PINNED);
        uint64_t used = vf_plan_pick_resident(pc, room, prio[i] == VF_COMPONENT_UNET ? k->high_first : 1);
        for (int b = 0; b < pc->nblocks; b++) {
            if (pc->blocks[b].mode == VF_BLOCK_RESIDENT)
                pc->blocks[b].home = VF_TIER_DEVICE;
        }
        count_modes(pc);
        room -= used;
    }
}

static uint64_t stream_slot(const vf_plan *p, int only_streamed)
{
    uint64_t slot = 0;
    for (int i = 0; i < VF_COMPONENT_COUNT; i++) {
        if (!p->comp[i].present)
            continue;
        uint64_t mb = max_block(&p->comp[i], only_streamed);
        slot = mb > slot ? mb : slot;
    }
    return slot;
}

static void eval_stream(vf_plan *p, const config *k, metrics *m)
{
    uint64_t fixed = p->res.context_bytes, budget = p->policy.budget;
    for (int i = 0; i < VF_COMPONENT_COUNT; i++)
        fixed += p->comp[i].present ? p->comp[i].act_bytes : 0;
    uint64_t slot = stream_slot(p, 0), ring = (uint64_t)k->depth * slot;
    uint64_t room = budget > fixed + ring ? budget - fixed - ring : 0;
    pick_stream(p, k, room);
    /* The ring needs only the largest streamed block: give the rest back once. */
    uint64_t slot2 = stream_slot(p, 1);
    if (slot2 < slot) {
        uint64_t room2 = budget > fixed + k->depth * slot2 ? budget - fixed - k->depth * slot2 : 0;
        pick_stream(p, k, room2);
        if (stream_slot(p, 1) > slot2)
            pick_stream(p, k, room);
    }
    uint64_t resident = 0, streamed = 0;
    for (int i = 0; i < VF_COMPONENT_COUNT; i++) {
        resident += p->comp[i].present ? p->comp[i].resident_bytes : 0;
        streamed += p->comp[i].present ? p->comp[i].streamed_bytes : 0;
    }
    m->slot = streamed ? stream_slot(p, 1) : 0;
    m->depth = streamed ? k->depth : 0;
    m->peak_dev = fixed + resident + (uint64_t)m->depth * m->slot;
    for (int s = 0; s < 3; s++)
        m->stage_peak[s] = m->peak_dev;
}

static void eval_times(vf_plan *p, const config *k, metrics *m)
{
    m->t_step = m->t_enc = m->t_dec = 0;
    for (int i = 0; i < VF_COMPONENT_COUNT; i++) {
        vf_plan_component *pc = &p->comp[i];
        if (!pc->present)
            continue;
        int depth = k->s == VF_OFFLOAD_STREAM ? (m->depth ? m->depth : 1) : 1;
        double t = call_time(p, k, pc, depth);
        /* SEQUENTIAL copies the resident part in at the start of the stage. */
        double load = 0;
        if (k->s == VF_OFFLOAD_SEQUENTIAL && pc->on_device) {
            for (int b = 0; b < pc->nblocks; b++) {
                const vf_plan_block *pb = &pc->blocks[b];
                if (pb->mode == VF_BLOCK_RESIDENT)
                    load += (double)pb->bytes /
                            (pb->home == VF_TIER_DISK ? p->res.disk_bw : p->res.link_bw);
            }
        }
        pc->time_s = t * pc->calls + load;
        if (pc->comp == VF_COMPONENT_UNET)
            m->t_step = t + load / p->request.steps;
        else if (is_text(pc->comp))
            m->t_enc += pc->time_s;
        else
            m->t_dec += pc->time_s;
    }
    m->t_gen = m->t_enc + m->t_dec + m->t_step * p->request.steps;
}

static void eval(vf_plan *p, const config *k, metrics *m)
{
    memset(m, 0, sizeof *m);
    for (int i = 0; i < VF_COMPONENT_COUNT; i++) {
        if (p->comp[i].present)
            size_component(p, k, &p->comp[i]);
    }
    if (k->s == VF_OFFLOAD_SEQUENTIAL)
        eval_sequential(p, k, m);
    else if (k->s == VF_OFFLOAD_STREAM)
        eval_stream(p, k, m);
    else
        eval_resident(p, k, m);
    m->peak_host = place_host(p);
    eval_times(p, k, m);
    m->fits = m->peak_dev <= p->policy.budget;
}

/* ---- search ------------------------------------------------------------------------ */

static int better(const metrics *a, const metrics *b)
{
    if (a->t_step < b->t_step * (1 - TIE))
        return 1;
    if (b->t_step < a->t_step * (1 - TIE))
        return 0;
    return a->t_gen < b->t_gen * (1 - TIE);
}

typedef struct found {
    int ok;
    config k;
    metrics m;
    config min_k;                 /* the configuration with the smallest peak */
    uint64_t min_peak;
} found;

/* Returns the ring depth the configuration used (0: nothing streams). */
static int consider(vf_plan *p, const config *k, found *f)
{
    metrics m;
    eval(p, k, &m);
    if (m.peak_dev < f->min_peak) {
        f->min_peak = m.peak_dev;
        f->min_k = *k;
    }
    if (m.fits && (!f->ok || better(&m, &f->m))) {
        f->ok = 1;
        f->k = *k;
        f->m = m;
    }
    return m.depth;
}

static void found_init(found *f)
{
    memset(f, 0, sizeof *f);
    f->min_peak = UINT64_MAX;
}

/* Tries the strategy plain and, when degrade, with every slicing / tiling /
 * ring depth, keeping the best that fits (a less degraded one on ties). */
static void search(vf_plan *p, vf_offload_strategy s, int variant, int degrade, found *f)
{
    static const int tiles[] = {0, 128, 96, 64, 48, 32, 24, 16};
    static const int depths[] = {1, 2, 3, 4, 6, 8};
    int lh = p->request.height / 8, lw = p->request.width / 8, side = lh > lw ? lh : lw;
    int stream = s == VF_OFFLOAD_STREAM;
    int nd = stream ? (int)(sizeof depths / sizeof depths[0]) : 1;
    int max_slices = degrade ? 4096 : 1;
    uint64_t prev_min = UINT64_MAX;
    for (int sl = 1; sl <= max_slices; sl *= 2) {
        for (size_t t = 0; t < (degrade ? sizeof tiles / sizeof tiles[0] : 1); t++) {
            if (tiles[t] && tiles[t] >= side)
                continue;
            for (int d = 0; d < nd; d++) {
                config k = {s, variant, sl, tiles[t], stream ? depths[d] : 0, 1};
                if (stream && !consider(p, &k, f))
                    break;  /* nothing streams: ring depth and ranking are moot */
                if (stream) {
                    k.high_first = 0;
                    consider(p, &k, f);
                } else {
                    consider(p, &k, f);
                }
            }
        }
        if (f->ok && f->k.slices * 4 <= sl)
            break;  /* two doublings without a better plan: more only costs time */
        if (!f->ok && f->min_peak >= prev_min)
            break;  /* slicing no longer shrinks anything */
        prev_min = f->min_peak;
    }
}

/* ---- text for people --------------------------------------------------------------- */

static const char *fmt_time(double s, char *buf, size_t cap)
{
    if (s < 0.01)
        snprintf(buf, cap, "%.1f ms", s * 1e3);
    else if (s < 1.0)
        snprintf(buf, cap, "%.0f ms", s * 1e3);
    else
        snprintf(buf, cap, "%.1f s", s);
    return buf;
}

static const char *label(const config *k)
{
    if (k->s == VF_OFFLOAD_CPU_OFFLOAD && k->variant == 1)
        return "cpu-offload (VAE on the CPU)";
    if (k->s == VF_OFFLOAD_CPU_OFFLOAD && k->variant == 2)
        return "cpu (no GPU)";
    return vf_offload_strategy_name(k->s);
}

/* "attention in 8 slices, VAE in 64x64 latent tiles" or "". */
static void degradations(const config *k, char *buf, size_t cap)
{
    buf[0] = 0;
    size_t n = 0;
    if (k->slices > 1)
        n += (size_t)snprintf(buf + n, cap - n, "attention in %d slices", k->slices);
    if (k->tile > 0 && n < cap)
        snprintf(buf + n, cap - n, "%sVAE in %dx%d latent tiles", n ? ", " : "", k->tile, k->tile);
}

static void note_candidate(vf_plan *p, const config *k, const metrics *m, int fits, uint64_t need)
{
    if (p->ncand >= VF_PLAN_MAX_CANDIDATES)
        return;
    vf_plan_candidate *c = &p->cand[p->ncand++];
    c->strategy = k->s;
    c->variant = k->variant;
    c->fits = fits;
    c->peak_device = fits ? m->peak_dev : need;
    c->time_per_step = fits ? m->t_step : 0;
    c->time_per_generation = fits ? m->t_gen : 0;
    char d[96];
    degradations(k, d, sizeof d);
    if (!fits)
        snprintf(c->note, sizeof c->note, "%s needs %.2f GB", label(k), need / GB);
    else
        snprintf(c->note, sizeof c->note, "%s%s%s", label(k), d[0] ? ": " : "", d);
}

/* ---- AUTO and explicit strategies ------------------------------------------------- */

typedef struct choice {
    found f;
    char reason[512];
} choice;

static void reason_classic(vf_plan *p, const found *tried, int ntried, const found *win, char *buf,
                           size_t cap)
{
    char d[96], t1[32];
    degradations(&win->k, d, sizeof d);
    /* The rung just above the winner (the last one tried before it that did
     * not fit) says why the winner was needed. */
    const found *above = NULL;
    for (int i = 0; i < ntried; i++) {
        if (&tried[i] == win)
            break;
        if (!tried[i].ok)
            above = &tried[i];
    }
    if (above) {
        snprintf(buf, cap, "%s: %s needs %.2f GB > budget %.2f GB%s%s; predicted %s/step",
                 label(&win->k), label(&above->min_k), above->min_peak / GB,
                 p->policy.budget / GB, d[0] ? "; " : "", d,
                 fmt_time(win->m.t_step, t1, sizeof t1));
    } else {
        snprintf(buf, cap, "%s: fits (%.2f GB of %.2f GB)%s%s; predicted %s/step", label(&win->k),
                 win->m.peak_dev / GB, p->policy.budget / GB, d[0] ? "; " : "", d,
                 fmt_time(win->m.t_step, t1, sizeof t1));
    }
}

static uint64_t total_streamed(const vf_plan *p)
{
    uint64_t s = 0;
    for (int i = 0; i < VF_COMPONENT_COUNT; i++)
        s += p->comp[i].present ? p->comp[i].streamed_bytes : 0;
    return s;
}

static void reason_stream(vf_plan *p, const found *st, const found *classic, char *buf, size_t cap)
{
    char a[32], b[32], c[32], e[32], d[96];
    metrics m;
    eval(p, &st->k, &m);
    degradations(&st->k, d, sizeof d);
    uint64_t streamed = total_streamed(p), unet = p->comp[VF_COMPONENT_UNET].streamed_bytes;
    char what[160];
    if (unet)
        snprintf(what, sizeof what, "%.2f GB of UNet weights streamed per step through a %d-slot ring%s",
                 unet / GB, m.depth, streamed > unet ? ", the rest once per image" : "");
    else if (streamed)
        snprintf(what, sizeof what, "the UNet resident, %.2f GB streamed once per image through a "
                 "%d-slot ring", streamed / GB, m.depth);
    else
        snprintf(what, sizeof what, "every block resident");
    if (!classic || !classic->ok) {
        snprintf(buf, cap, "stream: the only plan that fits (%s%s%s); predicted %s/step",
                 what, d[0] ? "; " : "", d, fmt_time(m.t_step, a, sizeof a));
        return;
    }
    snprintf(buf, cap,
             "stream: predicted %s/step, %s/image vs %s %s/step, %s/image (%s%s%s)",
             fmt_time(m.t_step, a, sizeof a), fmt_time(m.t_gen, b, sizeof b), label(&classic->k),
             fmt_time(classic->m.t_step, c, sizeof c), fmt_time(classic->m.t_gen, e, sizeof e),
             what, d[0] ? "; " : "", d);
}

static vf_status need_error(vf_plan *p, const found *f, const char *what)
{
    char d[96];
    degradations(&f->min_k, d, sizeof d);
    /* Rounded up to 10 MB so that the figure, given back as a budget, fits. */
    double need = ceil((double)f->min_peak / 1e7) / 100.0;
    return vf_error(VF_ERR_BUDGET,
                    "vram budget %.2f GB: %s needs at least %.2f GB (%s%s%s, %.2f GB CUDA context)",
                    p->policy.budget / GB, what, need, label(&f->min_k), d[0] ? ": " : "", d,
                    p->res.context_bytes / GB);
}

static vf_status choose_auto(vf_plan *p, choice *ch)
{
    found tried[4], st;
    int n = 0;
    config full = {VF_OFFLOAD_FULL_GPU, 0, 1, 0, 0, 1};
    int has_te = p->comp[VF_COMPONENT_TEXT_ENCODER].present ||
                 p->comp[VF_COMPONENT_TEXT_ENCODER_2].present;
    found_init(&tried[n]);
    consider(p, &full, &tried[n++]);
    for (int v = has_te ? 1 : 0; v >= 0; v--) {
        config off = {VF_OFFLOAD_CPU_OFFLOAD, v, 1, 0, 0, 1};
        found_init(&tried[n]);
        consider(p, &off, &tried[n++]);
    }
    found_init(&tried[n]);
    search(p, VF_OFFLOAD_SEQUENTIAL, 0, 1, &tried[n++]);
    const found *best = NULL;
    for (int i = 0; i < n; i++) {
        note_candidate(p, tried[i].ok ? &tried[i].k : &tried[i].min_k, &tried[i].m, tried[i].ok,
                       tried[i].min_peak);
        if (tried[i].ok && (!best || better(&tried[i].m, &best->m)))
            best = &tried[i];
    }
    found_init(&st);
    if (p->policy.allow_stream) {
        search(p, VF_OFFLOAD_STREAM, 0, 1, &st);
        note_candidate(p, st.ok ? &st.k : &st.min_k, &st.m, st.ok, st.min_peak);
    }
    if (st.ok && (!best || better(&st.m, &best->m))) {
        ch->f = st;
        reason_stream(p, &st, best, ch->reason, sizeof ch->reason);
        return VF_OK;
    }
    if (best) {
        ch->f = *best;
        reason_classic(p, tried, n, best, ch->reason, sizeof ch->reason);
        if (p->policy.allow_stream && st.ok) {
            size_t len = strlen(ch->reason);
            char a[32];
            snprintf(ch->reason + len, sizeof ch->reason - len, " (stream: %s/step)",
                     fmt_time(st.m.t_step, a, sizeof a));
        }
        return VF_OK;
    }
    found *lo = &tried[n - 1];
    if (p->policy.allow_stream && st.min_peak < lo->min_peak)
        lo = &st;
    return need_error(p, lo, "the smallest plan");
}

static vf_status choose_explicit(vf_plan *p, choice *ch)
{
    vf_offload_strategy s = p->policy.strategy;
    found f;
    found_init(&f);
    search(p, s, 0, 1, &f);
    note_candidate(p, f.ok ? &f.k : &f.min_k, &f.m, f.ok, f.min_peak);
    if (!f.ok)
        return need_error(p, &f, vf_offload_strategy_name(s));
    ch->f = f;
    char d[96], t[32];
    degradations(&f.k, d, sizeof d);
    snprintf(ch->reason, sizeof ch->reason, "%s (requested)%s%s%s; predicted %s/step",
             vf_offload_strategy_name(s), d[0] ? ": " : "", d, d[0] ? " to fit" : "",
             fmt_time(f.m.t_step, t, sizeof t));
    return VF_OK;
}

/* ---- storage dtypes --------------------------------------------------------------- */

/* The best plan without streaming for the strategy asked for: what AUTO
 * weighs before streaming, or the named strategy (degraded as needed). */
static void best_without_stream(vf_plan *p, found *best)
{
    vf_offload_strategy s = p->policy.strategy;
    found_init(best);
    if (s != VF_OFFLOAD_AUTO) {
        search(p, s, 0, 1, best);
        return;
    }
    config full = {VF_OFFLOAD_FULL_GPU, 0, 1, 0, 0, 1};
    consider(p, &full, best);
    for (int v = 1; v >= 0; v--) {
        config off = {VF_OFFLOAD_CPU_OFFLOAD, v, 1, 0, 0, 1};
        consider(p, &off, best);
    }
    search(p, VF_OFFLOAD_SEQUENTIAL, 0, 1, best);
}

static const char *rung_name(vf_plan_rung r)
{
    return r == VF_RUNG_F32 ? "f32" : r == VF_RUNG_F16 ? "f16" : "q8";
}

/* AUTO: the highest rung whose best plan without streaming is within
 * FULL_SPEED of that rung's unconstrained step (see the top of the file). */
static void choose_rung(vf_plan *p)
{
    static const vf_plan_rung rungs[2] = {VF_RUNG_F32, VF_RUNG_F16};
    char why[2][96], t1[32], t2[32];
    for (int i = 0; i < 2; i++) {
        p->rung = rungs[i];
        config full = {VF_OFFLOAD_FULL_GPU, 0, 1, 0, 0, 1};
        metrics ref;
        found f;
        eval(p, &full, &ref);
        best_without_stream(p, &f);
        if (f.ok && f.m.t_step <= FULL_SPEED * ref.t_step) {
            snprintf(p->dtype_reason, sizeof p->dtype_reason,
                     "auto: %s, the highest precision that fits without streaming at full speed (%s/step, "
                     "unconstrained %s)%s%s",
                     rung_name(p->rung), fmt_time(f.m.t_step, t1, sizeof t1), fmt_time(ref.t_step, t2, sizeof t2),
                     i ? "; " : "", i ? why[0] : "");
            return;
        }
        if (f.ok)
            snprintf(why[i], sizeof why[i], "%s: %s/step without streaming, %.0f%% slower than unconstrained",
                     rung_name(p->rung), fmt_time(f.m.t_step, t1, sizeof t1),
                     100.0 * (f.m.t_step / ref.t_step - 1));
        else
            snprintf(why[i], sizeof why[i], "%s: needs %.2f GB without streaming", rung_name(p->rung),
                     f.min_peak / GB);
    }
    p->rung = VF_RUNG_Q8;
    snprintf(p->dtype_reason, sizeof p->dtype_reason, "auto: q8 (%s; %s)", why[0], why[1]);
}

static vf_status choose(vf_plan *p, choice *ch)
{
    return p->policy.strategy == VF_OFFLOAD_AUTO ? choose_auto(p, ch) : choose_explicit(p, ch);
}

/* FAST: F16 storage, or Q8 where its plan predicts a faster step (F16 on a
 * tie). Each try notes its own candidates; the winner's are kept. */
static vf_status choose_fast(vf_plan *p, choice *ch)
{
    vf_plan_candidate cand16[VF_PLAN_MAX_CANDIDATES];
    int n16;
    char t1[32], t2[32];
    p->fast_dtype = VF_DTYPE_F16;
    p->ncand = 0;
    vf_status s16 = choose(p, ch);
    memcpy(cand16, p->cand, sizeof cand16);
    n16 = p->ncand;
    choice q8;
    memset(&q8, 0, sizeof q8);
    p->fast_dtype = VF_DTYPE_Q8;
    p->ncand = 0;
    vf_status s8 = choose(p, &q8);
    if (s8 == VF_OK && (s16 != VF_OK || better(&q8.f.m, &ch->f.m))) {
        snprintf(p->dtype_reason, sizeof p->dtype_reason, "fast: q8, %s/step against f16's %s",
                 fmt_time(q8.f.m.t_step, t1, sizeof t1),
                 s16 == VF_OK ? fmt_time(ch->f.m.t_step, t2, sizeof t2) : "(does not fit)");
        *ch = q8;
        return VF_OK;
    }
    p->fast_dtype = VF_DTYPE_F16;
    memcpy(p->cand, cand16, sizeof cand16);
    p->ncand = n16;
    if (s16 == VF_OK)
        snprintf(p->dtype_reason, sizeof p->dtype_reason, "fast: f16, %s/step%s%s", fmt_time(ch->f.m.t_step, t1, sizeof t1),
                 s8 == VF_OK ? " against q8's " : "", s8 == VF_OK ? fmt_time(q8.f.m.t_step, t2, sizeof t2) : "");
    return s16 == VF_OK ? VF_OK : s8;
}

/* ---- making the plan --------------------------------------------------------------- */

static void apply(vf_plan *p, const config *k, const char *reason)
{
    metrics m;
    eval(p, k, &m);
    p->strategy = k->s;
    p->variant = k->variant;
    p->attn_slices = k->slices;
    p->vae_tile = k->tile;
    p->ring_depth = m.depth;
    p->ring_slot_bytes = m.slot;
    p->peak_device = p->res.has_device ? m.peak_dev : 0;
    p->peak_host = m.peak_host;
    for (int s = 0; s < 3; s++)
        p->stage_peak[s] = p->res.has_device ? m.stage_peak[s] : 0;
    p->time_per_step = m.t_step;
    p->time_encode = m.t_enc;
    p->time_decode = m.t_dec;
    p->time_per_generation = m.t_gen;
    snprintf(p->reason, sizeof p->reason, "%s", reason);
}

static vf_status resolve_request(const vf_plan_model *pm, const vf_plan_request *rq,
                                 vf_plan_request *out)
{
    *out = *rq;
    if (out->width == 0)
        out->width = pm->default_width;
    if (out->height == 0)
        out->height = pm->default_height;
    if (out->steps == 0)
        out->steps = 20;
    int mult = 8 << (pm->bl[VF_COMPONENT_UNET] ? pm->unet.levels - 1 : 0);
    if (out->width <= 0 || out->height <= 0 || out->width > VF_MAX_IMAGE_SIDE ||
        out->height > VF_MAX_IMAGE_SIDE || out->width % mult || out->height % mult)
        return vf_error(VF_ERR_INVALID_ARG,
                        "plan: size %dx%d: width and height must be multiples of %d in 1..%d",
                        out->width, out->height, mult, VF_MAX_IMAGE_SIDE);
    if (out->steps < 1 || out->steps > 10000)
        return vf_error(VF_ERR_INVALID_ARG, "plan: steps %d out of range (1..10000)", out->steps);
    return VF_OK;
}

/* Bytes of block b of bl stored in each packed format: a weight stored packed
 * (vf_wspec_packed) at its packed size, any other in F16 (the compute dtype). */
static void block_packed_bytes(const vf_blocklist *bl, int b, uint64_t out[3])
{
    static const vf_dtype fmts[3] = {VF_DTYPE_F8_E4M3, VF_DTYPE_Q8, VF_DTYPE_Q4};
    const vf_block *blk = &bl->blocks[b];
    out[0] = out[1] = out[2] = 0;
    for (int i = blk->first_w; i < blk->first_w + blk->nw; i++) {
        const vf_wspec *w = &bl->w[i];
        int64_t cols = 1, n;
        for (int d = 1; d < w->ndim; d++)
            cols *= w->shape[d];
        n = w->ndim ? w->shape[0] * cols : 1;
        for (int f = 0; f < 3; f++)
            out[f] += vf_wspec_packed(fmts[f], w) ? vf_quant_packed_bytes(fmts[f], w->shape[0], cols)
                                                  : (uint64_t)n * 2;
    }
}

static vf_status alloc_components(vf_plan *p)
{
    const vf_plan_model *pm = p->model;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        vf_plan_component *pc = &p->comp[c];
        const vf_blocklist *bl = pm->bl[c];
        pc->comp = (vf_component)c;
        pc->stage = stage_of(pc->comp);
        if (!bl)
            continue;
        pc->present = 1;
        pc->nblocks = bl->nblocks;
        pc->blocks = vf_calloc((size_t)(bl->nblocks ? bl->nblocks : 1), sizeof *pc->blocks);
        if (!pc->blocks)
            return vf_error_prefix(VF_ERR_NO_MEMORY, "plan: %s blocks",
                                   vf_component_name(pc->comp));
        for (int b = 0; b < bl->nblocks; b++) {
            vf_plan_block *pb = &pc->blocks[b];
            pb->params = vf_plan_block_params(bl, b);
            pb->bytes = pb->params;  /* the ranking needs only proportions */
            block_packed_bytes(bl, b, pb->packed_bytes);
            pb->flops = vf_plan_block_flops(pm, pc->comp, b, p->request.height / 8,
                                            p->request.width / 8, batch_of(p, pc->comp));
            pb->base_flops = pb->flops;
            pc->params += pb->params;
        }
        VF_TRY(vf_plan_rank_blocks(pc));
        pc->calls = c == VF_COMPONENT_UNET ? p->request.steps
                                           : is_text(pc->comp) ? (p->request.cfg ? 2 : 1) : 1;
    }
    return VF_OK;
}

void vf_plan_free(vf_plan *p)
{
    if (!p)
        return;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        vf_free(p->comp[c].blocks);
        vf_free(p->comp[c].order);
    }
    vf_free(p->owned_model);
    vf_free(p);
}

static vf_status check_inputs(const vf_plan_model *pm, const vf_plan_resources *rs,
                              const vf_plan_policy *po)
{
    if (!pm->bl[VF_COMPONENT_UNET])
        return vf_error(VF_ERR_INVALID_ARG, "plan: the model has no UNet");
    if ((unsigned)po->strategy >= VF_OFFLOAD_COUNT)
        return vf_error(VF_ERR_INVALID_ARG, "plan: offload strategy %d out of range", po->strategy);
    if ((unsigned)po->dtype_policy >= VF_DTYPE_POLICY_COUNT)
        return vf_error(VF_ERR_INVALID_ARG, "plan: dtype policy %d out of range", po->dtype_policy);
    if ((unsigned)po->auto_rung > VF_RUNG_Q8)
        return vf_error(VF_ERR_INVALID_ARG, "plan: precision rung %d out of range", (int)po->auto_rung);
    if (!(rs->link_bw > 0) || !(rs->disk_bw > 0) || !(rs->device_flops > 0) ||
        !(rs->device_f32_flops > 0) || !(rs->host_flops > 0) || !(rs->act_slack > 0) ||
        !(rs->dequant_bw > 0))
        return vf_error(VF_ERR_INVALID_ARG, "plan: bandwidths, FLOP rates and the activation "
                        "slack must be positive");
    return VF_OK;
}

vf_status vf_plan_make(const vf_plan_model *pm, const vf_plan_request *rq,
                       const vf_plan_resources *rs, const vf_plan_policy *po, vf_plan **out)
{
    *out = NULL;
    VF_TRY(check_inputs(pm, rs, po));
    vf_plan *p = vf_calloc(1, sizeof *p);
    if (!p)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "plan");
    p->model = pm;
    p->res = *rs;
    p->policy = *po;
    p->rung = po->auto_rung ? po->auto_rung : VF_RUNG_F16;
    p->fast_dtype = VF_DTYPE_F16;
    vf_status st = resolve_request(pm, rq, &p->request);
    p->batch = p->request.cfg ? 2 : 1;
    if (st == VF_OK)
        st = alloc_components(p);
    if (st != VF_OK)
        goto fail;
    if (!rs->has_device) {
        config cpu = {VF_OFFLOAD_CPU_OFFLOAD, 2, 1, 0, 0, 1};
        p->policy.budget = 0;
        apply(p, &cpu, "no GPU: every component computes on the CPU");
        snprintf(p->dtype_reason, sizeof p->dtype_reason, "no GPU: F32 on the CPU");
        *out = p;
        return VF_OK;
    }
    if (p->policy.budget == 0)
        p->policy.budget = vf_plan_default_budget(rs->free_vram);
    if (po->dtype_policy == VF_DTYPE_POLICY_AUTO && po->auto_rung == VF_RUNG_CHOOSE)
        choose_rung(p);
    else if (po->dtype_policy == VF_DTYPE_POLICY_AUTO)
        snprintf(p->dtype_reason, sizeof p->dtype_reason, "auto: %s (pinned)", rung_name(p->rung));
    choice ch;
    memset(&ch, 0, sizeof ch);
    st = po->dtype_policy == VF_DTYPE_POLICY_FAST ? choose_fast(p, &ch) : choose(p, &ch);
    if (st != VF_OK)
        goto fail;
    apply(p, &ch.f.k, ch.reason);
    *out = p;
    return VF_OK;
fail:
    vf_plan_free(p);
    return st;
}
