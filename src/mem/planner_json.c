/* The planner's public face: vf_model_plan, the summary and the JSON form.
 *
 * The JSON is the plan itself, for scripts and the Python package: exact byte
 * counts (integers up to 2^53 print exactly), times in seconds, names as the
 * CLI spells them, and blocks grouped into runs of equal placement so that a
 * 1,700-block SDXL model prints as a handful of lines.
 */
#include "core/alloc.h"
#include "core/error.h"
#include "mem/planner.h"
#include "pipeline/model.h"

#include <cjson/cJSON.h>
#include <string.h>

void vf_plan_options_init(vf_plan_options *o)
{
    memset(o, 0, sizeof *o);
    o->offload = VF_OFFLOAD_AUTO;
    o->allow_stream = 1;
    o->dtype_policy = VF_DTYPE_POLICY_AUTO;
    o->steps = 20;
    o->cfg = 1;
}

int vf_plan_run_end(const vf_plan_component *pc, int first)
{
    const vf_plan_block *a = &pc->blocks[first];
    int e = first + 1;
    while (e < pc->nblocks && pc->blocks[e].mode == a->mode && pc->blocks[e].home == a->home &&
           pc->blocks[e].dtype == a->dtype)
        e++;
    return e;
}

/* Resources from the options, detecting only what they leave open. */
static vf_status plan_resources(const vf_plan_options *o, vf_plan_resources *rs, int *what_if)
{
    vf_plan_resources_init(rs);
    *what_if = 0;
    vf_resources det;
    vf_status st = vf_detect_resources(&det);
    if (st != VF_OK)
        return st;
    vf_plan_resources_from(rs, &det);
    rs->flash_attention = o->flash_attention < 0 ? rs->has_device : o->flash_attention != 0;
    if (o->free_vram) {
        *what_if = !rs->has_device;
        rs->has_device = 1;
        rs->free_vram = o->free_vram;
    } else if (!rs->has_device && o->vram_budget) {
        *what_if = 1;
        rs->has_device = 1;
        rs->free_vram = o->vram_budget;
    }
    if (!rs->has_device && o->offload != VF_OFFLOAD_AUTO)
        return vf_error(VF_ERR_UNSUPPORTED,
                        "plan: offload %s needs a GPU and none was found (%s); give a vram "
                        "budget to plan for one", vf_offload_strategy_name(o->offload),
                        det.cuda_error[0] ? det.cuda_error : "no CUDA device");
    if (o->available_ram)
        rs->available_ram = o->available_ram;
    if (o->link_bandwidth > 0)
        rs->link_bw = o->link_bandwidth;
    if (o->device_flops > 0) {
        rs->device_f32_flops *= o->device_flops / rs->device_flops;
        rs->device_flops = o->device_flops;
    }
    if (o->host_flops > 0)
        rs->host_flops = o->host_flops;
    if (o->context_overhead)
        rs->context_bytes = o->context_overhead;
    return VF_OK;
}

vf_status vf_model_plan(const vf_model *m, const vf_plan_options *o, vf_plan **out)
{
    *out = NULL;
    if (!m || !o)
        return vf_error(VF_ERR_INVALID_ARG, "plan: model and options are required");
    if (o->width < 0 || o->height < 0 || o->steps < 0)
        return vf_error(VF_ERR_INVALID_ARG, "plan: width, height and steps must not be negative");
    vf_plan_model *pm = vf_calloc(1, sizeof *pm);
    if (!pm)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "plan");
    vf_plan_resources rs;
    vf_plan_request rq;
    vf_plan_policy po;
    int what_if = 0;
    vf_status st = vf_plan_model_from(m, pm);
    if (st == VF_OK)
        st = plan_resources(o, &rs, &what_if);
    if (st != VF_OK) {
        vf_free(pm);
        return st;
    }
    vf_plan_request_init(&rq);
    rq.width = o->width;
    rq.height = o->height;
    rq.steps = o->steps;
    rq.cfg = o->cfg != 0;
    vf_plan_policy_init(&po);
    po.budget = o->vram_budget;
    po.strategy = o->offload;
    po.allow_stream = o->allow_stream;
    po.dtype_policy = o->dtype_policy;
    st = vf_plan_make(pm, &rq, &rs, &po, out);
    if (st != VF_OK) {
        vf_free(pm);
        return vf_error_prefix(st, "%s", m->path);
    }
    (*out)->owned_model = pm;
    (*out)->what_if = what_if;
    return VF_OK;
}

void vf_plan_get_summary(const vf_plan *p, vf_plan_summary *out)
{
    memset(out, 0, sizeof *out);
    out->strategy = p->strategy;
    out->has_device = p->res.has_device;
    out->budget = p->policy.budget;
    out->peak_device = p->peak_device;
    out->peak_host = p->peak_host;
    out->time_per_step = p->time_per_step;
    out->time_per_generation = p->time_per_generation;
    out->ring_depth = p->ring_depth;
    out->reason = p->reason;
}

void vf_string_free(char *s)
{
    cJSON_free(s);
}

/* ---- JSON ---------------------------------------------------------------------------- */

static void num(cJSON *o, const char *k, double v)
{
    cJSON_AddNumberToObject(o, k, v);
}

static cJSON *block_runs(const vf_plan *p, const vf_plan_component *pc)
{
    const vf_blocklist *bl = p->model->bl[pc->comp];
    cJSON *runs = cJSON_CreateArray();
    for (int b = 0; runs && b < pc->nblocks;) {
        int e = vf_plan_run_end(pc, b);
        uint64_t bytes = 0;
        for (int i = b; i < e; i++)
            bytes += pc->blocks[i].bytes;
        cJSON *r = cJSON_CreateObject();
        if (!r || !cJSON_AddItemToArray(runs, r)) {
            cJSON_Delete(r);
            cJSON_Delete(runs);
            return NULL;
        }
        num(r, "first", b);
        num(r, "count", e - b);
        cJSON_AddStringToObject(r, "from", bl->blocks[b].name);
        cJSON_AddStringToObject(r, "to", bl->blocks[e - 1].name);
        cJSON_AddStringToObject(r, "dtype", vf_dtype_name(pc->blocks[b].dtype));
        cJSON_AddStringToObject(r, "home", vf_tier_name(pc->blocks[b].home));
        cJSON_AddStringToObject(r, "mode", vf_block_mode_name(pc->blocks[b].mode));
        num(r, "bytes", (double)bytes);
        b = e;
    }
    return runs;
}

static cJSON *component_json(const vf_plan *p, const vf_plan_component *pc)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddStringToObject(o, "component", vf_component_name(pc->comp));
    cJSON_AddStringToObject(o, "device", pc->on_device ? "gpu" : "cpu");
    cJSON_AddStringToObject(o, "stage", vf_generation_step_name(pc->stage));
    cJSON_AddStringToObject(o, "dtype", vf_dtype_name(pc->dtype));
    num(o, "blocks_total", pc->nblocks);
    num(o, "params", (double)pc->params);
    num(o, "weight_bytes", (double)pc->weight_bytes);
    num(o, "resident_bytes", (double)pc->resident_bytes);
    num(o, "streamed_bytes", (double)pc->streamed_bytes);
    num(o, "activation_bytes", (double)pc->act_bytes);
    num(o, "flops_per_call", pc->flops);
    num(o, "calls", pc->calls);
    num(o, "time_s", pc->time_s);
    cJSON *runs = block_runs(p, pc);
    if (!runs || !cJSON_AddItemToObject(o, "blocks", runs)) {
        cJSON_Delete(runs);
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static int add_components(const vf_plan *p, cJSON *root)
{
    cJSON *arr = cJSON_AddArrayToObject(root, "components");
    for (int c = 0; arr && c < VF_COMPONENT_COUNT; c++) {
        if (!p->comp[c].present)
            continue;
        cJSON *o = component_json(p, &p->comp[c]);
        if (!o || !cJSON_AddItemToArray(arr, o)) {
            cJSON_Delete(o);
            return 0;
        }
    }
    return arr != NULL;
}

static void add_candidates(const vf_plan *p, cJSON *root)
{
    cJSON *arr = cJSON_AddArrayToObject(root, "candidates");
    for (int i = 0; arr && i < p->ncand; i++) {
        const vf_plan_candidate *c = &p->cand[i];
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddItemToArray(arr, o)) {
            cJSON_Delete(o);
            return;
        }
        cJSON_AddStringToObject(o, "strategy", vf_offload_strategy_name(c->strategy));
        cJSON_AddBoolToObject(o, "text_encoders_on_gpu", c->variant == 1);
        cJSON_AddBoolToObject(o, "fits", c->fits);
        num(o, "peak_device_bytes", (double)c->peak_device);
        num(o, "time_per_step_s", c->time_per_step);
        num(o, "time_per_generation_s", c->time_per_generation);
        cJSON_AddStringToObject(o, "note", c->note);
    }
}

static void add_resources(const vf_plan *p, cJSON *root)
{
    cJSON *r = cJSON_AddObjectToObject(root, "resources");
    if (!r)
        return;
    cJSON_AddBoolToObject(r, "gpu", p->res.has_device);
    cJSON_AddBoolToObject(r, "what_if", p->what_if);
    num(r, "free_vram_bytes", (double)p->res.free_vram);
    num(r, "available_ram_bytes", (double)p->res.available_ram);
    num(r, "link_bandwidth", p->res.link_bw);
    num(r, "device_flops", p->res.device_flops);
    num(r, "device_f32_flops", p->res.device_f32_flops);
    num(r, "host_flops", p->res.host_flops);
    num(r, "context_bytes", (double)p->res.context_bytes);
    num(r, "activation_slack", p->res.act_slack);
    cJSON_AddBoolToObject(r, "flash_attention", p->res.flash_attention);
}

static void add_summary(const vf_plan *p, cJSON *root)
{
    cJSON_AddStringToObject(root, "arch", vf_arch_name(p->model->arch));
    cJSON_AddStringToObject(root, "strategy", vf_offload_strategy_name(p->strategy));
    cJSON_AddStringToObject(root, "requested", vf_offload_strategy_name(p->policy.strategy));
    cJSON_AddBoolToObject(root, "text_encoders_on_gpu", p->comp[VF_COMPONENT_TEXT_ENCODER].on_device ||
                                                           p->comp[VF_COMPONENT_TEXT_ENCODER_2].on_device);
    cJSON_AddStringToObject(root, "dtype_policy", vf_dtype_policy_name(p->policy.dtype_policy));
    cJSON_AddStringToObject(root, "dtype_reason", p->dtype_reason);
    cJSON_AddStringToObject(root, "reason", p->reason);
    cJSON *rq = cJSON_AddObjectToObject(root, "request");
    if (rq) {
        num(rq, "width", p->request.width);
        num(rq, "height", p->request.height);
        num(rq, "steps", p->request.steps);
        cJSON_AddBoolToObject(rq, "cfg", p->request.cfg);
        num(rq, "batch", p->batch);
    }
    num(root, "budget_bytes", (double)p->policy.budget);
    num(root, "peak_device_bytes", (double)p->peak_device);
    num(root, "peak_host_bytes", (double)p->peak_host);
    cJSON *sp = cJSON_AddObjectToObject(root, "stage_peak_device_bytes");
    for (int s = 0; sp && s < 3; s++)
        num(sp, vf_generation_step_name((vf_generation_step)s), (double)p->stage_peak[s]);
    num(root, "time_per_step_s", p->time_per_step);
    num(root, "time_encode_s", p->time_encode);
    num(root, "time_decode_s", p->time_decode);
    num(root, "time_per_generation_s", p->time_per_generation);
    num(root, "ring_depth", p->ring_depth);
    num(root, "ring_slot_bytes", (double)p->ring_slot_bytes);
    num(root, "attention_slices", p->attn_slices);
    num(root, "vae_tile_latent", p->vae_tile);
}

vf_status vf_plan_to_json(const vf_plan *p, char **out)
{
    *out = NULL;
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return vf_error(VF_ERR_NO_MEMORY, "plan: JSON");
    add_summary(p, root);
    add_resources(p, root);
    int ok = add_components(p, root);
    add_candidates(p, root);
    *out = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!*out)
        return vf_error(VF_ERR_NO_MEMORY, "plan: JSON");
    return VF_OK;
}
