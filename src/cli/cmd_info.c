/* vramfit info: what this machine offers vramfit, for people and for scripts.
 *
 * The human text answers "what will vramfit see?" in a few lines: each GPU with
 * its VRAM, or why there is none; RAM as this process may use it (cgroup limit
 * included); CPU cores and SIMD. --json prints vf_resources_to_json's object
 * unchanged so that scripts and the Python package read one format.
 */
#include "cli/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GIB (1024.0 * 1024.0 * 1024.0)

static void usage(FILE *f)
{
    fprintf(f,
            "usage: vramfit info [--json]\n\n"
            "Shows the CUDA GPUs (VRAM, compute capability), RAM (respecting cgroup\n"
            "limits) and CPU (cores, SIMD) that vramfit will plan with.\n\n"
            "  --json      print one JSON object instead of text\n"
            "  -h, --help  show this help\n\n"
            "environment:\n"
            "  VF_CUDART_PATH  the CUDA runtime library to load instead of searching for\n"
            "                  libcudart.so, libcudart.so.13, .so.12 and .so.11.0\n");
}

/* 12080 -> "12.8"; 0 -> "unknown". */
static const char *cuda_version(int v, char *buf, size_t cap)
{
    if (v <= 0)
        return "unknown";
    snprintf(buf, cap, "%d.%d", v / 1000, (v % 1000) / 10);
    return buf;
}

static void print_gpus(const vf_resources *r)
{
    char drv[32], rt[32];
    if (!r->has_cuda) {
        printf("GPU:  no CUDA GPU: %s\n", r->cuda_error[0] ? r->cuda_error : "unknown reason");
        return;
    }
    printf("GPU:  %d CUDA device%s (driver %s, runtime %s)\n", r->device_count,
           r->device_count == 1 ? "" : "s", cuda_version(r->driver_version, drv, sizeof drv),
           cuda_version(r->runtime_version, rt, sizeof rt));
    for (int i = 0; i < r->device_count && i < VF_MAX_DEVICES; i++) {
        const vf_device_info *d = &r->devices[i];
        printf("  [%d] %s, compute %d.%d, %d SMs, VRAM %.2f GiB total, %.2f GiB free\n", d->index,
               d->name, d->cc_major, d->cc_minor, d->multiprocessors, d->total_vram / GIB,
               d->free_vram / GIB);
    }
}

static void print_text(const vf_resources *r)
{
    print_gpus(r);
    printf("RAM:  %.2f GiB total, %.2f GiB available", r->total_ram / GIB,
           r->available_ram / GIB);
    if (r->cgroup_limit)
        printf(" (cgroup limit %.2f GiB)\n", r->cgroup_limit / GIB);
    else
        printf(" (no cgroup limit)\n");
    printf("CPU:  %s, %d core%s usable\n", r->cpu_name[0] ? r->cpu_name : "unknown",
           r->cpu_cores, r->cpu_cores == 1 ? "" : "s");
    printf("SIMD: %s\n", r->simd[0] ? r->simd : "none detected");
}

static int print_json(const vf_resources *r)
{
    /* 16 devices at a few hundred bytes each fit many times over. */
    size_t cap = 1 << 16;
    char *buf = malloc(cap);
    if (!buf) {
        fprintf(stderr, "vramfit: out of memory\n");
        return VF_EXIT_FAIL;
    }
    vf_status st = vf_resources_to_json(r, buf, cap);
    if (st == VF_OK)
        printf("%s\n", buf);
    free(buf);
    return st == VF_OK ? VF_EXIT_OK : vf_cli_fail(st);
}

int vf_cmd_info(int argc, char **argv)
{
    int json = 0;
    for (int i = 0; i < argc; i++) {
        if (vf_cli_is_help(argv[i])) {
            usage(stdout);
            return VF_EXIT_OK;
        }
        if (strcmp(argv[i], "--json") == 0) {
            json = 1;
            continue;
        }
        fprintf(stderr, "vramfit info: unknown argument '%s'\n", argv[i]);
        usage(stderr);
        return VF_EXIT_USAGE;
    }
    vf_resources r;
    vf_status st = vf_detect_resources(&r);
    if (st != VF_OK)
        return vf_cli_fail(st);
    if (json)
        return print_json(&r);
    print_text(&r);
    return VF_EXIT_OK;
}
