/* The model's memory: device, plan, arena and where each component lives.
 *
 * This is where the memory manager's pieces meet the pipeline. A model opens
 * a device ("cpu", the simulated one, or "cuda" over the CUDA backend).
 * Each generation asks for a plan for its request (vf_mm_prepare); the plan
 * comes from the planner (vf_model_plan, the very function `vramfit plan`
 * calls, so the two agree) and is turned into a placement per component:
 *
 *   on the CPU       a plain CPU residency (float32 host conversions), kept
 *   on the device    a device residency over the model's arena: RESIDENT
 *                    blocks get home DEVICE, streamed and on-demand ones keep
 *                    the plan's home (PINNED or DISK) and pass through a ring
 *                    (depth 1 for SEQUENTIAL's on-demand blocks: copied right
 *                    before use; the plan's depth for STREAM)
 *   per stage        SEQUENTIAL components, and under STREAM the text
 *                    encoders and VAE of which part streams, are created when
 *                    their stage needs them and freed right after
 *                    (vf_model_component_done), so only one of them holds
 *                    arena space at a time; everything else stays.
 *
 * On the simulated device the activations are host allocations (CPU kernels),
 * so the planner's activation estimate is reserved in the arena next to each
 * device component's weights: the arena then accounts for what a GPU run
 * would hold, and a budget that fits there fits on the GPU. On CUDA they are
 * real: the backend carves every buffer and kernel workspace from the arena
 * (vf_be_set_allocator), which is therefore sized with room for them, and a
 * request whose activations outgrow it fails like any device allocation
 * (re-plan, or a clear error).
 *
 * The arena is reserved once, exactly as large as the placement needs
 * (persistent components + the largest per-stage one, each allocation
 * rounded as the arena rounds it), and again only when a request needs a
 * different placement. Because the planner counts bytes and the arena rounds
 * each allocation (and keeps one ring per component where the planner counts
 * one), the placement's exact need is checked against the budget and, when
 * it is over, the plan is made again for a budget smaller by the difference.
 *
 * Failures: when the arena cannot be reserved or a device allocation fails
 * (a shared GPU, or the simulated device's fault hooks), everything on the
 * device is freed, the plan is made again for min(budget, what is free) and
 * the work continues; when nothing fits that, the error says what is free and
 * what the plan needs. Either way nothing is left half-built.
 */
#include "core/alloc.h"
#include "core/error.h"
#include "mem/monitor.h"
#include "pipeline/model.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define SIM_DEFAULT_MEMORY (8ull << 30)
#define FIT_TRIES 8                /* plans made to absorb arena rounding    */
#define RECOVER_TRIES 2            /* re-plans after device failures, per call */
/* CUDA: the default budget leaves max(this, 5%) of the card free; SLACK is
 * kept out of the arena for what the driver and libraries allocate on their
 * own (cuDNN internals, small backend scratch buffers). */
#define CUDA_MARGIN ((uint64_t)256 << 20)
#define CUDA_SLACK ((uint64_t)96 << 20)
#define CUDA_WORKSPACE ((uint64_t)256 << 20)

void vf_pipeline_options_init(vf_pipeline_options *o)
{
    if (!o)
        return;
    memset(o, 0, sizeof *o);
    o->offload = VF_OFFLOAD_AUTO;
    o->loading = VF_LOADING_ON_DEMAND;
    o->dtype_policy = VF_DTYPE_POLICY_AUTO;
}

void vf_mm_request_make(vf_mm_request *rq, int width, int height, int steps, float guidance)
{
    rq->width = width;
    rq->height = height;
    rq->steps = steps;
    rq->cfg = guidance > 1.0f;
}

/* ---- the device spec ---------------------------------------------------------------- */

static vf_status spec_size(const char *spec, const char *what, const char *text, uint64_t *out)
{
    vf_status st = vf_parse_size(text, out);
    if (st != VF_OK)
        return vf_error_prefix(st, "device '%s': %s", spec, what);
    return VF_OK;
}

/* One ",key=SIZE" of a sim spec (text is the part after the comma, up to the next). */
static vf_status sim_key(const char *spec, const char *text, vf_sim_options *so, int *has_mem)
{
    char key[16], val[64];
    const char *eq = strchr(text, '=');
    size_t kl = eq ? (size_t)(eq - text) : 0, vl = eq ? strlen(eq + 1) : 0;
    if (!eq || kl == 0 || kl >= sizeof key || vl == 0 || vl >= sizeof val)
        return vf_error(VF_ERR_INVALID_ARG, "device '%s': '%s' is not context=SIZE or memory=SIZE",
                        spec, text);
    memcpy(key, text, kl);
    key[kl] = 0;
    memcpy(val, eq + 1, vl + 1);
    if (strcasecmp(key, "context") == 0)
        return spec_size(spec, "context", val, &so->context_bytes);
    if (strcasecmp(key, "memory") == 0) {
        *has_mem = 1;
        return spec_size(spec, "memory", val, &so->memory);
    }
    return vf_error(VF_ERR_INVALID_ARG, "device '%s': unknown key '%s' (context, memory)", spec, key);
}

/* "sim[:BANDWIDTH][,context=SIZE][,memory=SIZE]" after "sim". */
static vf_status parse_sim(const char *spec, const char *rest, vf_sim_options *so, int *has_mem)
{
    char buf[256];
    if (strlen(rest) >= sizeof buf)
        return vf_error(VF_ERR_INVALID_ARG, "device '%.40s...': too long", spec);
    snprintf(buf, sizeof buf, "%s", rest);
    char *p = buf;
    if (*p == ':') {
        char *comma = strchr(p + 1, ',');
        if (comma)
            *comma = 0;
        uint64_t bw;
        VF_TRY(spec_size(spec, "bandwidth", p + 1, &bw));
        if (bw == 0)
            return vf_error(VF_ERR_INVALID_ARG, "device '%s': bandwidth must be more than 0 "
                            "(leave it out for an unthrottled copy engine)", spec);
        so->bandwidth = (double)bw;
        p = comma ? comma + 1 : p + strlen(p);
    } else if (*p == ',') {
        p++;
    } else if (*p) {
        return vf_error(VF_ERR_INVALID_ARG, "device '%s': expected ':BANDWIDTH' or ',key=SIZE' "
                        "after 'sim'", spec);
    }
    while (*p) {
        char *comma = strchr(p, ',');
        if (comma)
            *comma = 0;
        VF_TRY(sim_key(spec, p, so, has_mem));
        p = comma ? comma + 1 : p + strlen(p);
    }
    return VF_OK;
}

static int word_is(const char *s, const char *w, const char **rest)
{
    size_t n = strlen(w);
    if (strncasecmp(s, w, n) != 0)
        return 0;
    *rest = s + n;
    return 1;
}

/* Pinned host -> device bytes per second, best of three 64 MiB copies on the
 * copy stream: what streaming plans are made with. 0 when it cannot be had. */
static double measure_link(vf_backend *be)
{
    const size_t n = (size_t)64 << 20;
    void *host = NULL, *dev = NULL;
    vf_bevent *a = NULL, *b = NULL;
    double best = 0;
    if (vf_be_pinned_alloc(be, n, &host) != VF_OK || vf_be_reserve(be, n, &dev) != VF_OK ||
        vf_be_event_create(be, &a) != VF_OK || vf_be_event_create(be, &b) != VF_OK)
        goto done;
    memset(host, 0, n);
    for (int i = 0; i < 3; i++) {
        float ms = 0;
        if (vf_be_record(be, a, VF_STREAM_COPY) != VF_OK || vf_be_h2d_async(be, dev, host, n) != VF_OK ||
            vf_be_record(be, b, VF_STREAM_COPY) != VF_OK || vf_be_event_sync(be, b) != VF_OK ||
            vf_be_elapsed_ms(be, a, b, &ms) != VF_OK)
            goto done;
        double bw = ms > 0 ? (double)n / (ms * 1e-3) : 0;
        best = bw > best ? bw : best;
    }
done:
    vf_clear_error();
    vf_be_event_destroy(be, a);
    vf_be_event_destroy(be, b);
    vf_be_unreserve(be, dev);
    vf_be_pinned_free(be, host);
    return best;
}

/* The CUDA device over the model's CUDA backend: context measured when the
 * backend was made, the link measured now, the budget defaulting to what is
 * free less a margin. */
static vf_status open_cuda(vf_model *m, const char *spec)
{
    vf_mm *mm = &m->mm;
    if (!m->be || vf_be_info(m->be)->kind != VF_BACKEND_CUDA)
        return vf_error(VF_ERR_INVALID_ARG, "device '%s' needs the CUDA backend (backend is %s)", spec,
                        m->be ? vf_be_info(m->be)->name : "none");
    if (mm->opt.dtype_policy == VF_DTYPE_POLICY_F32)
        return vf_error(VF_ERR_UNSUPPORTED, "device '%s': CUDA computes in f16 or bf16 (dtype policy f32 "
                        "is for cpu and sim)", spec);
    VF_TRY(vf_device_cuda_create(m->be, m->be_context, &mm->dev));
    uint64_t total = 0, freeb = 0;
    vf_device_mem_info(mm->dev, &total, &freeb);
    mm->cuda = 1;
    mm->image_dtype = vf_be_dtype(m->be);
    mm->context = m->be_context;
    mm->link_bandwidth = (uint64_t)measure_link(m->be);
    uint64_t margin = total / 20 > CUDA_MARGIN ? total / 20 : CUDA_MARGIN;
    mm->budget = mm->opt.vram_budget ? mm->opt.vram_budget
                 : freeb + mm->context > margin ? freeb + mm->context - margin : 0;
    if (mm->budget <= mm->context + CUDA_SLACK)
        return vf_error(VF_ERR_BUDGET, "device '%s': vram budget %llu bytes leaves nothing beside the %llu "
                        "bytes held at start (CUDA context, libraries) and %llu bytes of slack", spec,
                        (unsigned long long)mm->budget, (unsigned long long)mm->context,
                        (unsigned long long)CUDA_SLACK);
    return VF_OK;
}

/* Creates the device the spec names into m->mm (dev NULL for the CPU). */
static vf_status open_device(vf_model *m, const char *spec)
{
    vf_mm *mm = &m->mm;
    const char *rest = "";
    if (word_is(spec, "cpu", &rest) && !*rest) {
        if (mm->opt.offload != VF_OFFLOAD_AUTO)
            return vf_error(VF_ERR_UNSUPPORTED,
                            "offload %s needs a device (sim or cuda): on the cpu every component "
                            "computes in host memory", vf_offload_strategy_name(mm->opt.offload));
        return VF_OK;
    }
    if (vf_mm_is_cuda_spec(spec))
        return open_cuda(m, spec);
    if (!word_is(spec, "sim", &rest))
        return vf_error(VF_ERR_INVALID_ARG, "device '%s': expected cpu, sim[:BANDWIDTH][,context=SIZE]"
                        "[,memory=SIZE] or cuda", spec);
    vf_sim_options so;
    vf_sim_options_init(&so);
    int has_mem = 0;
    VF_TRY(parse_sim(spec, rest, &so, &has_mem));
    if (!has_mem)
        so.memory = mm->opt.vram_budget ? mm->opt.vram_budget : SIM_DEFAULT_MEMORY;
    vf_status st = vf_device_sim_create(&so, &mm->dev);
    if (st != VF_OK)
        return vf_error_prefix(st, "device '%s'", spec);
    mm->context = so.context_bytes;
    mm->link_bandwidth = (uint64_t)so.bandwidth;
    mm->budget = mm->opt.vram_budget ? mm->opt.vram_budget : so.memory;
    return VF_OK;
}

/* The packed format a dtype policy stores weights in (F32: none). */
static vf_dtype policy_quant(vf_dtype_policy p)
{
    return p == VF_DTYPE_POLICY_F8 ? VF_DTYPE_F8_E4M3 : p == VF_DTYPE_POLICY_Q8 ? VF_DTYPE_Q8
           : p == VF_DTYPE_POLICY_Q4 ? VF_DTYPE_Q4 : VF_DTYPE_F32;
}

/* Components a quantized policy packs: the UNet and the text encoders. The
 * VAE stays in the compute dtype (small, and its convolutions are where
 * quantization shows in the image). */
static vf_dtype component_quant(const vf_mm *mm, vf_component c)
{
    return c == VF_COMPONENT_VAE ? VF_DTYPE_F32 : policy_quant(mm->opt.dtype_policy);
}

int vf_mm_is_cuda_spec(const char *d)
{
    return d && strncasecmp(d, "cuda", 4) == 0 && (d[4] == '\0' || d[4] == ':');
}

vf_dtype_policy vf_mm_plan_dtype_policy(const vf_mm *mm)
{
    if (policy_quant(mm->opt.dtype_policy) != VF_DTYPE_F32)
        return mm->opt.dtype_policy;
    return mm->cuda ? VF_DTYPE_POLICY_F16 : VF_DTYPE_POLICY_F32;
}

static vf_status check_options(const vf_pipeline_options *o)
{
    if ((unsigned)o->offload >= VF_OFFLOAD_COUNT || (unsigned)o->loading >= VF_LOADING_COUNT ||
        (unsigned)o->dtype_policy >= VF_DTYPE_POLICY_COUNT)
        return vf_error(VF_ERR_INVALID_ARG, "pipeline options: offload %d, loading %d or dtype policy "
                        "%d is out of range", (int)o->offload, (int)o->loading, (int)o->dtype_policy);
    if (policy_quant(o->dtype_policy) != VF_DTYPE_F32)
        return VF_OK; /* every device: packed storage, expanded for compute */
    if (vf_mm_is_cuda_spec(o->device) && (o->dtype_policy == VF_DTYPE_POLICY_F16 ||
                                     o->dtype_policy == VF_DTYPE_POLICY_BF16))
        return VF_OK;
    switch (o->dtype_policy) {
    case VF_DTYPE_POLICY_AUTO:
    case VF_DTYPE_POLICY_FAST:
    case VF_DTYPE_POLICY_F32:
        return VF_OK;
    default:
        return vf_error(VF_ERR_UNSUPPORTED, "dtype policy %s: the cpu and sim devices compute in f32 "
                        "only (use auto, fast or f32)", vf_dtype_policy_name(o->dtype_policy));
    }
}

vf_status vf_mm_open(vf_model *m, const vf_pipeline_options *o)
{
    vf_mm *mm = &m->mm;
    vf_pipeline_options def;
    if (!o) {
        vf_pipeline_options_init(&def);
        o = &def;
    }
    mm->opt = *o;
    /* The CUDA backend computes on the GPU: its device is "cuda", always. */
    int be_cuda = m->be && vf_be_info(m->be)->kind == VF_BACKEND_CUDA;
    if (be_cuda && (!o->device || !o->device[0]))
        mm->opt.device = "cuda";
    if (be_cuda && !vf_mm_is_cuda_spec(mm->opt.device))
        return vf_error(VF_ERR_INVALID_ARG, "device '%s': the cuda backend computes on the GPU (device cuda)",
                        mm->opt.device);
    VF_TRY(check_options(&mm->opt));
    mm->spec = vf_strdup(mm->opt.device ? mm->opt.device : "cpu");
    if (!mm->spec)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "device");
    mm->opt.device = mm->spec;
    return open_device(m, mm->spec);
}

vf_device *vf_mm_device(vf_model *m) { return m->mm.dev; }

void vf_mm_set_trace(vf_model *m, vf_component c, vf_residency_trace *tr, int cap)
{
    m->mm.trace[c] = tr;
    m->mm.trace_cap[c] = tr ? cap : 0;
}

/* ---- placement ------------------------------------------------------------------------ */

static void comps_free(vf_mm_comp *v)
{
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        vf_free(v[c].home);
        memset(&v[c], 0, sizeof v[c]);
    }
}

static int comps_equal(const vf_mm_comp *a, const vf_mm_comp *b, const vf_model *m)
{
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (a[c].on_device != b[c].on_device || a[c].per_stage != b[c].per_stage || a[c].quant != b[c].quant ||
            a[c].ring_depth != b[c].ring_depth || a[c].act != b[c].act)
            return 0;
        if (a[c].on_device &&
            memcmp(a[c].home, b[c].home, sizeof(vf_tier) * (size_t)m->bl[c].nblocks) != 0)
            return 0;
    }
    return 1;
}

/* Component c's placement under plan p. */
static vf_status place_component(const vf_model *m, const vf_plan *p, vf_component c, vf_mm_comp *mc)
{
    const vf_plan_component *pc = &p->comp[c];
    const vf_blocklist *bl = &m->bl[c];
    memset(mc, 0, sizeof *mc);
    mc->on_device = m->mm.dev && pc->present && pc->on_device;
    if (!mc->on_device)
        return VF_OK;
    mc->home = vf_malloc(sizeof(vf_tier) * (size_t)(bl->nblocks ? bl->nblocks : 1));
    if (!mc->home)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "placement of %s", vf_component_name(c));
    int nstream = 0, on_demand = 0;
    for (int b = 0; b < bl->nblocks; b++) {
        const vf_plan_block *pb = &pc->blocks[b];
        if (pb->mode == VF_BLOCK_RESIDENT) {
            mc->home[b] = VF_TIER_DEVICE;
            continue;
        }
        /* Streamed homes are PINNED or DISK in a plan; anything else streams from pinned. */
        mc->home[b] = pb->home == VF_TIER_DISK ? VF_TIER_DISK : VF_TIER_PINNED;
        on_demand |= pb->mode == VF_BLOCK_ON_DEMAND;
        nstream++;
    }
    if (nstream) {
        int depth = on_demand || p->ring_depth < 1 ? 1 : p->ring_depth;
        mc->ring_depth = depth < nstream ? depth : nstream;
    }
    mc->per_stage = p->strategy == VF_OFFLOAD_SEQUENTIAL ||
                    (p->strategy == VF_OFFLOAD_STREAM && c != VF_COMPONENT_UNET && nstream > 0);
    mc->quant = component_quant(&m->mm, c);
    vf_residency_plan_bytes_ex(bl, mc->home, mc->ring_depth ? mc->ring_depth : 1, m->mm.image_dtype, mc->quant,
                               &mc->resident, &mc->ring);
    /* the expansion scratch is in mc->resident already (the residency's) */
    uint64_t act = pc->act_bytes > pc->scratch_bytes ? pc->act_bytes - pc->scratch_bytes : 0;
    mc->act = act ? vf_arena_round(act) : 0;
    return VF_OK;
}

/* Arena bytes of a placement: components kept between stages, plus the
 * largest of those that live for one stage (one at a time). */
static uint64_t arena_need(const vf_mm_comp *v)
{
    uint64_t keep = 0, stage = 0;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        uint64_t n = v[c].on_device ? v[c].resident + v[c].ring + v[c].act : 0;
        if (v[c].per_stage)
            stage = n > stage ? n : stage;
        else
            keep += n;
    }
    return keep + stage;
}

static vf_status place(const vf_model *m, const vf_plan *p, vf_mm_comp *v, uint64_t *need)
{
    memset(v, 0, sizeof(vf_mm_comp) * VF_COMPONENT_COUNT);
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (!m->present[c])
            continue;
        vf_status st = place_component(m, p, (vf_component)c, &v[c]);
        if (st != VF_OK) {
            comps_free(v);
            return st;
        }
    }
    *need = arena_need(v);
    return VF_OK;
}

/* ---- planning --------------------------------------------------------------------------- */

/* The CPU plan: every component on the CPU (what `vramfit plan` prints without a GPU). */
static vf_status plan_cpu(const vf_model *m, const vf_mm_request *rq, vf_plan **out)
{
    vf_plan_model *pm = vf_calloc(1, sizeof *pm);
    if (!pm)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "plan");
    vf_plan_resources rs;
    vf_plan_request prq;
    vf_plan_policy po;
    vf_plan_resources_init(&rs);
    rs.has_device = 0;
    vf_plan_request_init(&prq);
    prq.width = rq->width;
    prq.height = rq->height;
    prq.steps = rq->steps;
    prq.cfg = rq->cfg;
    vf_plan_policy_init(&po);
    vf_status st = vf_plan_model_from(m, pm);
    if (st == VF_OK)
        st = vf_plan_make(pm, &prq, &rs, &po, out);
    if (st != VF_OK) {
        vf_free(pm);
        return st;
    }
    (*out)->owned_model = pm;
    return VF_OK;
}

/* The plan `vramfit plan --vram-budget B --free-vram F --context C
 * [--bandwidth BW] --dtype f32 --offload S` makes. */
static vf_status plan_device(const vf_model *m, const vf_mm_request *rq, uint64_t budget,
                             uint64_t free_vram, vf_plan **out)
{
    const vf_mm *mm = &m->mm;
    vf_plan_options o;
    vf_plan_options_init(&o);
    /* CUDA keeps CUDA_SLACK of the budget out of the arena: plans are made for the rest */
    o.vram_budget = mm->cuda && budget > CUDA_SLACK ? budget - CUDA_SLACK : budget;
    o.offload = mm->opt.offload;
    o.dtype_policy = vf_mm_plan_dtype_policy(mm);
    o.width = rq->width;
    o.height = rq->height;
    o.steps = rq->steps;
    o.cfg = rq->cfg;
    o.link_bandwidth = (double)mm->link_bandwidth;
    o.context_overhead = mm->context ? mm->context : 1;
    o.free_vram = free_vram ? free_vram : 1;
    o.flash_attention = mm->cuda; /* every CUDA attention kernel is a flash kernel */
    vf_status st = vf_model_plan(m, &o, out);
    if (st != VF_OK && o.vram_budget != budget) {
        char why[1024];
        snprintf(why, sizeof why, "%s", vf_last_error());
        return vf_error(st, "%s (of a %llu-byte budget, %llu bytes are kept free for the CUDA libraries)", why,
                        (unsigned long long)budget, (unsigned long long)CUDA_SLACK);
    }
    return st;
}

/* Device bytes free to this model: what the device reports, plus its own context. */
static uint64_t device_free(const vf_mm *mm)
{
    uint64_t total, freeb;
    vf_device_mem_info(mm->dev, &total, &freeb);
    return freeb + mm->context;
}

/* A plan for rq within budget whose placement, as the arena rounds it, fits
 * the budget too: made again for a budget smaller by the excess until it does. */
static vf_status plan_fitting(vf_model *m, const vf_mm_request *rq, uint64_t budget, vf_plan **out,
                              vf_mm_comp *v, uint64_t *need)
{
    *out = NULL;
    if (!m->mm.dev) {
        VF_TRY(plan_cpu(m, rq, out));
        return place(m, *out, v, need);
    }
    uint64_t b = budget, free_vram = device_free(&m->mm);
    for (int i = 0; i < FIT_TRIES; i++) {
        vf_plan *p;
        vf_status st = plan_device(m, rq, b, free_vram, &p);
        if (st != VF_OK && b != budget)
            return vf_error_prefix(st, "vram budget %llu bytes, less %llu for the arena's alignment",
                                   (unsigned long long)budget, (unsigned long long)(budget - b));
        VF_TRY(st);
        st = place(m, p, v, need);
        if (st != VF_OK) {
            vf_plan_free(p);
            return st;
        }
        uint64_t total = m->mm.context + *need + (m->mm.cuda ? CUDA_SLACK : 0);
        if (total <= budget) {
            *out = p;
            return VF_OK;
        }
        comps_free(v);
        vf_plan_free(p);
        uint64_t over = total - budget;
        over = over < VF_ARENA_ALIGN ? VF_ARENA_ALIGN : over;
        if (over >= b)
            break;
        b -= over;
    }
    return vf_error(VF_ERR_BUDGET, "vram budget %llu bytes: no plan fits once the arena's alignment "
                    "and rings are counted", (unsigned long long)budget);
}

/* ---- residencies ---------------------------------------------------------------------- */

static void free_component(vf_model *m, int c)
{
    vf_mm_comp *mc = &m->mm.comp[c];
    vf_residency_free(m->res[c]);
    m->res[c] = NULL;
    if (mc->has_act && m->mm.arena)
        vf_arena_release(m->mm.arena, mc->act_off);
    mc->has_act = 0;
}

/* Frees the residencies that live on the device (all == 0) or all of them. */
static void free_components(vf_model *m, int all)
{
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (all || m->mm.comp[c].on_device)
            free_component(m, c);
    }
}

/* CUDA: activations and kernel workspaces are carved from the arena too
 * (backend.h, vf_be_allocator), freed in issue order = stream order. */
static vf_status arena_be_alloc(void *ctx, size_t bytes, void **p)
{
    vf_arena *a = ((vf_model *)ctx)->mm.arena;
    uint64_t off;
    *p = NULL;
    VF_TRY(vf_arena_alloc(a, bytes, "activations", &off));
    *p = vf_arena_ptr(a, off);
    return VF_OK;
}

static void arena_be_free(void *ctx, void *p)
{
    vf_arena *a = ((vf_model *)ctx)->mm.arena;
    vf_arena_release(a, (uint64_t)((char *)p - (char *)vf_arena_ptr(a, 0)));
}

static void free_arena(vf_model *m)
{
    free_components(m, 0);
    if (m->mm.cuda && m->mm.arena) {
        (void)vf_be_sync(m->be);
        vf_be_set_allocator(m->be, NULL);
    }
    vf_arena_free(m->mm.arena);
    m->mm.arena = NULL;
    m->mm.arena_bytes = 0;
}

/* On CUDA activations and workspaces come from the arena at run time and
 * their planned size is an estimate, so the arena gets twice the estimate
 * plus a workspace allowance on top of the placement, within what the budget
 * leaves (the budget less the context and the slack). Elsewhere it is exactly
 * the placement. */
static uint64_t cuda_arena_bytes(const vf_mm *mm)
{
    uint64_t act = 0, cap = mm->planned_budget > mm->context + CUDA_SLACK
                               ? mm->planned_budget - mm->context - CUDA_SLACK : 0;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++)
        act = mm->comp[c].on_device && mm->comp[c].act > act ? mm->comp[c].act : act;
    uint64_t want = mm->arena_need + act + CUDA_WORKSPACE;
    return want < cap ? want : cap > mm->arena_need ? cap : mm->arena_need;
}

static vf_status reserve_arena(vf_model *m)
{
    vf_mm *mm = &m->mm;
    if (mm->arena || !mm->dev || mm->arena_need == 0)
        return VF_OK;
    uint64_t bytes = mm->cuda ? cuda_arena_bytes(mm) : mm->arena_need;
    VF_TRY(vf_arena_create(mm->dev, bytes, &mm->arena));
    mm->arena_bytes = bytes;
    if (mm->cuda) {
        uint64_t weights = 0;
        for (int c = 0; c < VF_COMPONENT_COUNT; c++)
            weights += mm->comp[c].on_device ? mm->comp[c].resident + mm->comp[c].ring : 0;
        uint64_t spare = bytes > weights ? bytes - weights : 0, ws = spare / 4;
        vf_be_allocator a = {arena_be_alloc, arena_be_free, m,
                             (size_t)(ws < ((uint64_t)16 << 20) ? ((uint64_t)16 << 20) : ws)};
        vf_be_set_allocator(m->be, &a);
    }
    return VF_OK;
}

/* A model with a host store (the pool's) keeps its device-resident weights
 * through a new placement: they go back to the store, and the new
 * residencies load them from there rather than from the checkpoint. Best
 * effort: what cannot be kept (host memory short) is read again. */
static void keep_resident_weights(vf_model *m)
{
    for (int c = 0; m->pool_hook && m->mm.store && c < VF_COMPONENT_COUNT; c++) {
        if (m->mm.comp[c].on_device && vf_residency_store_save(m->res[c]) != VF_OK) {
            vf_clear_error();
            return;
        }
    }
}

/* Installs plan p and placement v (taking both). Residencies whose placement
 * changes are freed; a CPU component that stays on the CPU keeps its weights. */
static void install(vf_model *m, uint64_t budget, vf_plan *p, vf_mm_comp *v, uint64_t need)
{
    vf_mm *mm = &m->mm;
    if (mm->plan && comps_equal(mm->comp, v, m) && mm->arena_need == need) {
        comps_free(v);                 /* the same placement: residencies stay */
    } else {
        keep_resident_weights(m);
        free_arena(m);
        for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
            if (mm->comp[c].on_device != v[c].on_device)
                free_component(m, c);
        }
        comps_free(mm->comp);
        memcpy(mm->comp, v, sizeof mm->comp);
        mm->arena_need = need;
    }
    vf_plan_free(mm->plan);
    mm->plan = p;
    mm->planned_budget = budget;
    mm->key.width = p->request.width;
    mm->key.height = p->request.height;
    mm->key.steps = p->request.steps;
    mm->key.cfg = p->request.cfg;
}

static int key_matches(const vf_mm *mm, const vf_mm_request *rq)
{
    return mm->plan && (rq->width == 0 || rq->width == mm->key.width) &&
           (rq->height == 0 || rq->height == mm->key.height) &&
           (rq->steps == 0 || rq->steps == mm->key.steps) && rq->cfg == mm->key.cfg;
}

/* Plans for rq within budget and installs the result. */
static vf_status replan(vf_model *m, const vf_mm_request *rq, uint64_t budget)
{
    vf_mm_comp v[VF_COMPONENT_COUNT];
    vf_plan *p;
    uint64_t need;
    VF_TRY(plan_fitting(m, rq, budget, &p, v, &need));
    install(m, budget, p, v, need);
    return VF_OK;
}

/* Plans for min(budget, what the device has free now) and reserves, after
 * freeing everything on the device; a reservation that fails again (the
 * memory went meanwhile, or a fault) is tried once more. */
static vf_status replan_for_free(vf_model *m, uint64_t *budget, uint64_t *avail)
{
    vf_mm *mm = &m->mm;
    vf_status st = VF_OK;
    for (int i = 0; i < RECOVER_TRIES; i++) {
        free_arena(m);
        *avail = device_free(mm);
        *budget = mm->budget < *avail ? mm->budget : *avail;
        vf_mm_request rq = mm->key;
        st = replan(m, &rq, *budget);
        if (st != VF_OK)
            return st;
        st = reserve_arena(m);
        if (st == VF_OK)
            return VF_OK;
    }
    free_arena(m);
    return st;
}

/* After a device failure (its message is current): re-plan for what is free.
 * The plan stays marked degraded until a request finds the memory back. */
static vf_status recover(vf_model *m)
{
    vf_mm *mm = &m->mm;
    char why[400];
    snprintf(why, sizeof why, "%s", vf_last_error());
    uint64_t budget = 0, avail = 0;
    vf_status st = replan_for_free(m, &budget, &avail);
    if (st != VF_OK)
        return vf_error_prefix(st, "%s: %llu bytes free, context included (budget %llu), after \"%s\"; "
                               "re-planning for them", vf_device_name(mm->dev), (unsigned long long)avail,
                               (unsigned long long)mm->budget, why);
    mm->replans++;
    mm->degraded = budget < mm->budget;
    snprintf(mm->note, sizeof mm->note, "re-planned for %llu bytes (%llu free) after: %s",
             (unsigned long long)budget, (unsigned long long)avail, why);
    return VF_OK;
}

static int device_failure(const vf_model *m, vf_status st)
{
    return m->mm.dev && (st == VF_ERR_DEVICE || st == VF_ERR_BUDGET);
}

/* A plan degraded by a recovery is made again for the budget once the device
 * has more free than it was made for (the other process went). Only when a
 * request starts (never while a stage holds a residency): everything on the
 * device is rebuilt then. */
static vf_status restore(vf_model *m)
{
    vf_mm *mm = &m->mm;
    uint64_t held = mm->arena ? vf_arena_size(mm->arena) : 0, avail = device_free(mm) + held;
    uint64_t target = mm->budget < avail ? mm->budget : avail;
    if (target <= mm->planned_budget)
        return VF_OK;
    free_arena(m);
    vf_mm_request rq = mm->key;
    VF_TRY(replan(m, &rq, target));
    mm->degraded = target < mm->budget;
    return VF_OK;
}

static vf_status ensure_plan(vf_model *m, const vf_mm_request *rq)
{
    vf_mm_request def = {0, 0, 20, 1};
    if (!rq) {
        if (m->mm.plan)
            return VF_OK;
        rq = &def;
    }
    if (!key_matches(&m->mm, rq)) {
        m->mm.degraded = 0;
        return replan(m, rq, m->mm.budget);
    }
    return m->mm.degraded && rq != &def ? restore(m) : VF_OK;
}

vf_status vf_mm_prepare(vf_model *m, const vf_mm_request *rq)
{
    if (m->pool_hook && !m->pool_busy)
        VF_TRY(m->pool_hook(m->pool, m->pool_id));
    VF_TRY(ensure_plan(m, rq));
    vf_status st = reserve_arena(m);
    if (st != VF_OK && device_failure(m, st))
        st = recover(m);
    return st;
}

/* What every residency of component c takes, on the CPU or the device. */
static void base_options(vf_model *m, vf_component c, vf_residency_options *o)
{
    vf_residency_options_init(o);
    o->quant = component_quant(&m->mm, c);
    vf_model_lora_patch(m, c, o);      /* LoRAs merge as weights convert (pipeline/lora.c) */
}

void vf_mm_device_options(vf_model *m, vf_component c, vf_residency_options *o)
{
    vf_mm *mm = &m->mm;
    base_options(m, c, o);
    o->device = mm->dev;
    o->image_dtype = mm->image_dtype;
    o->image_ohwi = mm->cuda && vf_be_info(m->be)->filter_layout == VF_FILTER_OHWI;
    o->store = mm->store;
    o->store_comp = (int)c;
}

static vf_status create_component(vf_model *m, vf_component c)
{
    vf_mm *mm = &m->mm;
    vf_mm_comp *mc = &mm->comp[c];
    vf_residency_options o;
    vf_host_store *store; /* per-stage images are kept there between stages */
    if (mc->on_device && mc->per_stage && vf_mm_store(m, &store) != VF_OK)
        vf_clear_error();
    if (mc->on_device)
        vf_mm_device_options(m, c, &o);
    else
        base_options(m, c, &o);
    o.trace = mm->trace[c];
    o.trace_cap = mm->trace_cap[c];
    if (mc->on_device) {
        VF_TRY(reserve_arena(m));
        char what[64];
        snprintf(what, sizeof what, "activations of %s", vf_component_name(c));
        if (mc->act && !mm->cuda) {
            VF_TRY(vf_arena_alloc(mm->arena, mc->act, what, &mc->act_off));
            mc->has_act = 1;
        }
        o.arena = mm->arena;
        o.home = mc->home;
        o.ring_depth = mc->ring_depth ? mc->ring_depth : 1;
    }
    vf_status st = vf_residency_create(m->ck, &m->bl[c], &o, &m->res[c]);
    if (st != VF_OK) {
        free_component(m, c);
        return vf_error_prefix(st, "%s: %s", m->path, vf_component_name(c));
    }
    return VF_OK;
}

vf_status vf_model_residency(vf_model *m, vf_component c, vf_residency **out)
{
    *out = NULL;
    if (!m->present[c])
        return vf_error(VF_ERR_NOT_FOUND, "%s: no %s component", m->path, vf_component_name(c));
    if (!m->res[c]) {
        VF_TRY(vf_mm_prepare(m, NULL));
        vf_status st = create_component(m, c);
        for (int i = 0; st != VF_OK && device_failure(m, st) && i < RECOVER_TRIES; i++) {
            st = recover(m);
            if (st != VF_OK)
                break;
            st = create_component(m, c);
        }
        VF_TRY(st);
    }
    *out = m->res[c];
    return VF_OK;
}

/* clear_cache: the host store is a cache of conversions (except in a pool,
 * where it is the model's tier); entries of a component with a live
 * residency may be borrowed by it and stay. */
static uint64_t drop_store_cb(void *owner)
{
    vf_model *m = owner;
    uint64_t freed = 0;
    for (int c = 0; !m->pool_hook && c < VF_COMPONENT_COUNT; c++)
        if (!m->res[c])
            freed += vf_host_store_drop_component(m->mm.store, c);
    return freed;
}

vf_status vf_mm_store(vf_model *m, vf_host_store **out)
{
    vf_mm *mm = &m->mm;
    if (!mm->store) {
        VF_TRY(vf_host_store_create(mm->dev, &mm->store));
        vf_status st = vf_monitor_register_cache(m, drop_store_cb);
        if (st != VF_OK) {
            vf_host_store_free(mm->store);
            mm->store = NULL;
            return st;
        }
    }
    *out = mm->store;
    return VF_OK;
}

/* A per-stage component's images stay in host memory for its next stage
 * (the store), so that the next prompt copies the text encoders back
 * instead of reading and converting them (and merging LoRAs) again. Not
 * when the plan streams some of its blocks from DISK: RAM was short. Best
 * effort: without the memory they are read again. */
static void keep_stage_images(vf_model *m, vf_component c)
{
    const vf_mm_comp *mc = &m->mm.comp[c];
    if (!mc->on_device || !m->res[c])
        return;
    for (int b = 0; b < m->bl[c].nblocks; b++)
        if (mc->home[b] == VF_TIER_DISK)
            return;
    vf_host_store *s;
    if (vf_mm_store(m, &s) != VF_OK || vf_residency_store_keep(m->res[c]) != VF_OK)
        vf_clear_error();
}

void vf_model_component_done(vf_model *m, vf_component c)
{
    if (!m || (unsigned)c >= VF_COMPONENT_COUNT || !m->mm.comp[c].per_stage)
        return;
    keep_stage_images(m, c);
    free_component(m, c);
}

void vf_mm_close(vf_model *m)
{
    vf_mm *mm = &m->mm;
    free_components(m, 1);
    free_arena(m);
    if (mm->store)
        vf_monitor_unregister_cache(m);
    vf_host_store_free(mm->store);
    mm->store = NULL;
    comps_free(mm->comp);
    vf_plan_free(mm->plan);
    mm->plan = NULL;
    vf_device_free(mm->dev);
    mm->dev = NULL;
    vf_free(mm->spec);
    mm->spec = NULL;
}

/* ---- public ------------------------------------------------------------------------------ */

int vf_model_is_loaded(const vf_model *m)
{
    if (!m)
        return 0;
    if (m->mm.arena || vf_host_store_entries(m->mm.store) > 0)
        return 1;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (m->res[c])
            return 1;
    }
    return 0;
}

vf_status vf_model_load(vf_model *m)
{
    if (!m)
        return vf_error(VF_ERR_INVALID_ARG, "vf_model_load: model is NULL");
    VF_TRY(vf_mm_prepare(m, NULL));
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (!m->present[c] || m->mm.comp[c].per_stage)
            continue;
        vf_residency *r;
        VF_TRY(vf_model_residency(m, (vf_component)c, &r));
        vf_status st = vf_residency_load(r);
        if (st != VF_OK)
            return vf_error_prefix(st, "%s: loading %s", m->path, vf_component_name((vf_component)c));
    }
    return VF_OK;
}

void vf_mm_release_device(vf_model *m)
{
    free_components(m, 1);
    free_arena(m);
}

void vf_model_unload(vf_model *m)
{
    if (!m)
        return;
    vf_mm_release_device(m);
    vf_host_store_clear(m->mm.store);
}

const char *vf_model_device_name(const vf_model *m)
{
    if (!m || !m->mm.dev)
        return "cpu";
    return vf_device_name(m->mm.dev);
}

vf_status vf_model_get_plan(vf_model *m, const vf_plan **out)
{
    if (!m || !out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_model_get_plan: model or out is NULL");
    *out = NULL;
    VF_TRY(ensure_plan(m, NULL));
    *out = m->mm.plan;
    return VF_OK;
}

vf_status vf_model_component_placement(vf_model *m, vf_component c, vf_component_placement *out)
{
    if (!m || !out || (unsigned)c >= VF_COMPONENT_COUNT)
        return vf_error(VF_ERR_INVALID_ARG, "vf_model_component_placement: bad model, component %d "
                        "or output", (int)c);
    memset(out, 0, sizeof *out);
    if (!m->present[c])
        return VF_OK;
    VF_TRY(ensure_plan(m, NULL));
    const vf_mm_comp *mc = &m->mm.comp[c];
    const vf_plan_component *pc = &m->mm.plan->comp[c];
    out->present = 1;
    out->device = mc->on_device ? vf_device_name(m->mm.dev) : "cpu";
    out->dtype = pc->dtype;
    /* what its weights are stored as: packed under a quantized policy */
    if (component_quant(&m->mm, c) != VF_DTYPE_F32)
        out->dtype = component_quant(&m->mm, c);
    out->stage = pc->stage;
    out->loaded = m->res[c] != NULL;
    out->per_stage = mc->per_stage;
    if (!mc->on_device)
        return VF_OK;
    out->resident_bytes = mc->resident;
    out->ring_bytes = mc->ring;
    out->activation_bytes = mc->act;
    out->ring_depth = mc->ring_depth;
    for (int b = 0; b < m->bl[c].nblocks; b++) {
        if (mc->home[b] != VF_TIER_DEVICE)
            out->streamed_bytes += vf_residency_block_stored_bytes(&m->bl[c], b, m->mm.image_dtype, mc->quant);
    }
    return VF_OK;
}
