/* vramfit inspect: what a checkpoint is and what it weighs, before running it.
 *
 * Opening the model through the public API (vf_model_open) checks every tensor
 * against the architecture, so a successful inspect means the checkpoint will
 * load. The counts are those of the tensors inference uses, as stored: a
 * single file and the diffusers folder of the same model print the same
 * numbers, which is also how the key maps are checked from the command line.
 * --json prints one object for scripts.
 */
#include "cli/cli.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: vramfit inspect MODEL [--config DIR] [--json]\n\n"
            "Shows a checkpoint's architecture, layout and, per component, the parameters\n"
            "and bytes (by stored dtype) of the tensors inference uses. MODEL is a diffusers\n"
            "folder or a single .safetensors file (SD1.5 or SDXL).\n\n"
            "  --config DIR  a diffusers folder of the same model whose component configs\n"
            "                supply what a single file's shapes cannot tell (head counts)\n"
            "  --json        print one JSON object instead of text\n"
            "  -h, --help    show this help\n");
}

typedef struct inspect_args {
    const char *model;
    const char *config;
    int json;
} inspect_args;

/* Returns -1 to go on, else the exit code. */
static int parse_args(int argc, char **argv, inspect_args *a)
{
    memset(a, 0, sizeof *a);
    for (int i = 0; i < argc; i++) {
        if (vf_cli_is_help(argv[i])) {
            usage(stdout);
            return VF_EXIT_OK;
        }
        if (strcmp(argv[i], "--json") == 0) {
            a->json = 1;
        } else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            a->config = argv[++i];
        } else if (argv[i][0] == '-' || a->model) {
            fprintf(stderr, "vramfit inspect: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            return VF_EXIT_USAGE;
        } else {
            a->model = argv[i];
        }
    }
    if (!a->model) {
        fprintf(stderr, "vramfit inspect: no MODEL given\n");
        usage(stderr);
        return VF_EXIT_USAGE;
    }
    return -1;
}

/* 1234567 -> "1,234,567" */
static const char *grouped(uint64_t v, char *buf, size_t cap)
{
    char digits[32];
    int n = snprintf(digits, sizeof digits, "%llu", (unsigned long long)v);
    size_t o = 0;
    for (int i = 0; i < n && o + 2 < cap; i++) {
        if (i > 0 && (n - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = digits[i];
    }
    buf[o] = '\0';
    return buf;
}

static const char *human(uint64_t v, char *buf, size_t cap)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double x = (double)v;
    int u = 0;
    while (x >= 1024.0 && u < 4) {
        x /= 1024.0;
        u++;
    }
    snprintf(buf, cap, u ? "%.2f %s" : "%.0f %s", x, units[u]);
    return buf;
}

static void arch_upper(vf_arch a, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", vf_arch_name(a));
    for (char *p = buf; *p; p++)
        *p = (char)toupper((unsigned char)*p);
}

static void print_dtypes(const uint64_t *by)
{
    char b[32];
    for (int d = 0; d < VF_DTYPE_COUNT; d++)
        if (by[d])
            printf("  %s %s", vf_dtype_name((vf_dtype)d), human(by[d], b, sizeof b));
}

static void print_text(const char *model, vf_arch arch, int folder, const vf_component_info *ci,
                       const vf_component_info *total)
{
    char a[32], p[32], b[32], h[32];
    arch_upper(arch, a, sizeof a);
    printf("model:         %s\n", model);
    printf("architecture:  %s\n", a);
    printf("layout:        %s\n", folder ? "diffusers folder" : "single file");
    printf("%-16s %16s %18s  %s\n", "component", "parameters", "bytes", "by dtype");
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (!ci[c].present)
            continue;
        printf("%-16s %16s %18s ", vf_component_name((vf_component)c), grouped(ci[c].params, p, sizeof p),
               grouped(ci[c].bytes, b, sizeof b));
        print_dtypes(ci[c].bytes_by_dtype);
        printf("\n");
    }
    printf("%-16s %16s %18s ", "total", grouped(total->params, p, sizeof p),
           grouped(total->bytes, b, sizeof b));
    print_dtypes(total->bytes_by_dtype);
    printf("\n(%s of weights)\n", human(total->bytes, h, sizeof h));
}

static void json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void json_counts(const vf_component_info *ci)
{
    printf("{\"parameters\": %llu, \"bytes\": %llu, \"tensors\": %d, \"bytes_by_dtype\": {",
           (unsigned long long)ci->params, (unsigned long long)ci->bytes, ci->ntensors);
    int first = 1;
    for (int d = 0; d < VF_DTYPE_COUNT; d++) {
        if (!ci->bytes_by_dtype[d])
            continue;
        printf("%s\"%s\": %llu", first ? "" : ", ", vf_dtype_name((vf_dtype)d),
               (unsigned long long)ci->bytes_by_dtype[d]);
        first = 0;
    }
    printf("}}");
}

static void print_json(const char *model, vf_arch arch, int folder, const vf_component_info *ci,
                       const vf_component_info *total)
{
    printf("{\"path\": ");
    json_string(model);
    printf(", \"architecture\": \"%s\", \"layout\": \"%s\", \"components\": {", vf_arch_name(arch),
           folder ? "diffusers" : "single_file");
    int first = 1;
    for (int c = 0; c < VF_COMPONENT_COUNT; c++) {
        if (!ci[c].present)
            continue;
        printf("%s\"%s\": ", first ? "" : ", ", vf_component_name((vf_component)c));
        json_counts(&ci[c]);
        first = 0;
    }
    printf("}, \"total\": ");
    json_counts(total);
    printf("}\n");
}

int vf_cmd_inspect(int argc, char **argv)
{
    inspect_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0)
        return rc;
    vf_model_options o;
    vf_model_options_init(&o);
    o.config_dir = a.config;
    vf_model *m = NULL;
    vf_status st = vf_model_open(a.model, &o, &m);
    if (st != VF_OK)
        return vf_cli_fail(st);
    vf_component_info ci[VF_COMPONENT_COUNT], total;
    memset(&total, 0, sizeof total);
    for (int c = 0; c < VF_COMPONENT_COUNT && st == VF_OK; c++) {
        st = vf_model_component_info(m, (vf_component)c, &ci[c]);
        if (st != VF_OK || !ci[c].present)
            continue;
        total.present = 1;
        total.params += ci[c].params;
        total.bytes += ci[c].bytes;
        total.ntensors += ci[c].ntensors;
        for (int d = 0; d < VF_DTYPE_COUNT; d++)
            total.bytes_by_dtype[d] += ci[c].bytes_by_dtype[d];
    }
    if (st != VF_OK) {
        vf_model_close(m);
        return vf_cli_fail(st);
    }
    struct stat sb;
    int folder = stat(a.model, &sb) == 0 && S_ISDIR(sb.st_mode);
    if (a.json)
        print_json(a.model, vf_model_arch(m), folder, ci, &total);
    else
        print_text(a.model, vf_model_arch(m), folder, ci, &total);
    vf_model_close(m);
    return VF_EXIT_OK;
}
