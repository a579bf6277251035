/* vramfit generate: the memory options and --stats (see gen_memory.h).
 *
 * --stats prints what the monitor measured, not what the plan predicted, next
 * to the plan that was run, so the two can be compared; figures are exact
 * bytes (scripts compare them with the budget). The plan line comes with the
 * `vramfit plan` arguments that reproduce the same plan without running it
 * (the budget and free memory the model planned for, which differ from the
 * requested budget only after a re-plan or to absorb the arena's rounding).
 */
#include "cli/gen_memory.h"
#include "cli/cli.h"
#include "mem/monitor.h"
#include "pipeline/model.h"

#include <string.h>

static const char *const k_names[] = {"--vram-budget", "--offload", "--device", "--loading", "--dtype"};

int vf_gen_mem_parse_arg(int argc, char **argv, int *i, vf_gen_mem_args *a)
{
    const char **slots[] = {&a->budget, &a->offload, &a->device, &a->loading, &a->dtype};
    if (strcmp(argv[*i], "--stats") == 0) {
        a->stats = 1;
        return 1;
    }
    for (size_t k = 0; k < sizeof k_names / sizeof k_names[0]; k++) {
        if (strcmp(argv[*i], k_names[k]) != 0)
            continue;
        if (*i + 1 >= argc) {
            fprintf(stderr, "vramfit generate: %s needs a value\n", argv[*i]);
            return -1;
        }
        *slots[k] = argv[++*i];
        return 1;
    }
    return 0;
}

static int bad(const char *opt, const char *value)
{
    fprintf(stderr, "vramfit generate: %s '%s': %s\n", opt, value, vf_last_error());
    return -1;
}

int vf_gen_mem_options(const vf_gen_mem_args *a, vf_pipeline_options *o)
{
    vf_pipeline_options_init(o);
    o->device = a->device;
    if (a->budget && vf_parse_size(a->budget, &o->vram_budget) != VF_OK)
        return bad("--vram-budget", a->budget);
    if (a->budget && o->vram_budget == 0) {
        fprintf(stderr, "vramfit generate: --vram-budget '%s': must be more than 0\n", a->budget);
        return -1;
    }
    if (a->offload && vf_offload_strategy_parse(a->offload, &o->offload) != VF_OK)
        return bad("--offload", a->offload);
    if (a->loading && vf_loading_strategy_parse(a->loading, &o->loading) != VF_OK)
        return bad("--loading", a->loading);
    if (a->dtype && vf_dtype_policy_parse(a->dtype, &o->dtype_policy) != VF_OK)
        return bad("--dtype", a->dtype);
    return 0;
}

void vf_gen_mem_usage(FILE *f)
{
    fprintf(f,
            "Memory (see `vramfit plan`, which prints the plan a run would use):\n"
            "  --device DEV      cpu (default): everything on the CPU, no device memory;\n"
            "                    sim[:BANDWIDTH][,context=SIZE][,memory=SIZE]: the simulated\n"
            "                    device (CPU kernels on their own capped \"device\" memory,\n"
            "                    copies throttled to BANDWIDTH bytes/s, e.g. sim:12G; context\n"
            "                    default 300M, memory default the budget or 8G); cuda: later\n"
            "  --vram-budget SIZE  device memory the run may hold, context included, never\n"
            "                    exceeded (6G, 512M, 1.5GiB binary; 8GB decimal); default:\n"
            "                    free memory at start minus max(256 MiB, 5%%) (sim: its memory)\n"
            "  --offload MODE    auto (default), full-gpu, cpu-offload, sequential, stream\n"
            "  --loading MODE    on-demand (default: weights read when a stage needs them) or\n"
            "                    eager (loaded when the model opens)\n"
            "  --dtype POLICY    auto (default), fast, f32 (cpu, sim), f16 or bf16 (cuda), or a quantized\n"
            "                    storage: f8, q8, q4 (UNet and text encoder weights kept packed, expanded\n"
            "                    right before use; the cpu rounds them so its results match a device's)\n"
            "  --stats           print the plan and the measured peak device and host memory\n"
            "                    per stage (encode_prompt, denoise, decode) and overall\n");
}

void vf_gen_mem_stats_begin(void)
{
    vf_monitor_clear_stages();
    vf_reset_peak_usage();
}

/* The last recorded stage called name, or NULL. */
static const vf_mon_stage *last_stage(const char *name)
{
    for (int i = vf_monitor_stage_count() - 1; i >= 0; i--) {
        const vf_mon_stage *s = vf_monitor_stage_at(i);
        if (s && strcmp(s->name, name) == 0)
            return s;
    }
    return NULL;
}

static void print_plan(FILE *f, vf_model *m, const char *model_path)
{
    const vf_plan *p = NULL;
    if (vf_model_get_plan(m, &p) != VF_OK || !p) {
        fprintf(f, "stats: plan: none (%s)\n", vf_last_error());
        return;
    }
    vf_plan_summary s;
    vf_plan_get_summary(p, &s);
    fprintf(f, "stats: plan %s (requested %s): %s\n", vf_offload_strategy_name(s.strategy),
            vf_offload_strategy_name(p->policy.strategy), s.reason);
    fprintf(f, "stats: plan predicted peak device %llu bytes, host %llu bytes; ring depth %d\n",
            (unsigned long long)s.peak_device, (unsigned long long)s.peak_host, s.ring_depth);
    if (!s.has_device)
        return;
    fprintf(f, "stats: plan command: vramfit plan %s --vram-budget %llu --free-vram %llu --context %llu",
            model_path, (unsigned long long)s.budget, (unsigned long long)p->res.free_vram,
            (unsigned long long)p->res.context_bytes);
    if (m->mm.link_bandwidth)
        fprintf(f, " --bandwidth %llu", (unsigned long long)m->mm.link_bandwidth);
    fprintf(f, " --dtype %s --offload %s --width %d --height %d --steps %d --cfg %s\n",
            vf_dtype_policy_name(vf_mm_plan_dtype_policy(&m->mm)),
            vf_offload_strategy_name(p->policy.strategy), p->request.width, p->request.height,
            p->request.steps, p->request.cfg ? "2" : "1");
}

void vf_gen_mem_print_stats(FILE *f, vf_model *m, const char *model_path, const vf_gen_mem_args *a)
{
    (void)a;
    const vf_mm *mm = &m->mm;
    if (mm->dev)
        fprintf(f, "stats: device %s, context %llu bytes, budget %llu bytes\n", vf_model_device_name(m),
                (unsigned long long)mm->context, (unsigned long long)mm->budget);
    else
        fprintf(f, "stats: device cpu (no device memory; a budget does not apply)\n");
    print_plan(f, m, model_path);
    if (mm->replans)
        fprintf(f, "stats: re-planned %d time(s), last: %s\n", mm->replans, mm->note);
    static const vf_generation_step steps[] = {VF_STEP_ENCODE_PROMPT, VF_STEP_DENOISE, VF_STEP_DECODE};
    for (int i = 0; i < 3; i++) {
        const char *name = vf_generation_step_name(steps[i]);
        const vf_mon_stage *s = last_stage(name);
        if (!s)
            continue;
        fprintf(f, "stats: stage %s: device %llu bytes (allocated %llu), host %llu bytes, %.3f s\n", name,
                (unsigned long long)s->peak[VF_MON_DEVICE_RESERVED],
                (unsigned long long)s->peak[VF_MON_DEVICE_ALLOCATED],
                (unsigned long long)s->peak[VF_MON_HOST], s->seconds);
    }
    vf_memory_usage peak;
    vf_get_memory_usage(NULL, &peak);
    fprintf(f, "stats: peak device %llu bytes (allocated %llu), host %llu bytes", (unsigned long long)peak.device_reserved,
            (unsigned long long)peak.device_allocated, (unsigned long long)peak.host);
    if (mm->dev)
        fprintf(f, "; budget %llu bytes", (unsigned long long)mm->budget);
    fprintf(f, "\n");
}
