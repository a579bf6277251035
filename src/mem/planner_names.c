/* Names of the memory manager's public enums, and byte-size parsing.
 *
 * One table per enum, used both ways, so that a name printed by `vramfit plan`
 * or written into JSON always parses back. Parsing is forgiving about case and
 * about '_' versus '-' because both spellings turn up in flags and configs.
 *
 * Sizes follow the coreutils (dd) convention, the one most people have typed:
 * a bare K/M/G/T is binary (6G = 6 GiB, like docker -m 6g), KiB/MiB/GiB/TiB
 * (or Ki/Mi/Gi/Ti) are binary too, and KB/MB/GB/TB are decimal (6GB = 6e9).
 */
#include "core/error.h"
#include "vramfit.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const g_offload[VF_OFFLOAD_COUNT] = {"auto", "full-gpu", "cpu-offload",
                                                       "sequential", "stream"};
static const char *const g_loading[VF_LOADING_COUNT] = {"eager", "on-demand"};
static const char *const g_dtype_policy[VF_DTYPE_POLICY_COUNT] = {
    "auto", "fast", "f32", "f16", "bf16", "f8", "q8", "q4"};
static const char *const g_evict[VF_EVICT_COUNT] = {"lru", "lfu", "largest"};
static const char *const g_tier[VF_TIER_COUNT] = {"disk", "host", "pinned", "device"};

/* Case-insensitive, '_' equal to '-'. */
static int name_eq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        char x = (char)tolower((unsigned char)*a), y = (char)tolower((unsigned char)*b);
        if (x == '_')
            x = '-';
        if (y == '_')
            y = '-';
        if (x != y)
            return 0;
    }
    return *a == *b;
}

static vf_status parse_name(const char *what, const char *const *names, int n, const char *text,
                            int *out)
{
    if (!text)
        return vf_error(VF_ERR_INVALID_ARG, "%s: no name given", what);
    for (int i = 0; i < n; i++) {
        if (name_eq(text, names[i])) {
            *out = i;
            return VF_OK;
        }
    }
    char list[160] = "";
    size_t used = 0;
    for (int i = 0; i < n && used < sizeof list; i++) {
        int k = snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", names[i]);
        if (k < 0)
            break;
        used += (size_t)k;
    }
    return vf_error(VF_ERR_INVALID_ARG, "%s: unknown name '%s' (expected one of: %s)", what, text,
                    list);
}

#define NAME_FN(fn, type, table, count)                       \
    const char *fn(type v)                                    \
    {                                                         \
        return (int)v >= 0 && (int)v < (count) ? table[v] : "?"; \
    }

#define PARSE_FN(fn, type, what, table, count)                   \
    vf_status fn(const char *name, type *out)                    \
    {                                                            \
        int i = 0;                                               \
        VF_TRY(parse_name(what, table, (count), name, &i));      \
        *out = (type)i;                                          \
        return VF_OK;                                            \
    }

NAME_FN(vf_offload_strategy_name, vf_offload_strategy, g_offload, VF_OFFLOAD_COUNT)
NAME_FN(vf_loading_strategy_name, vf_loading_strategy, g_loading, VF_LOADING_COUNT)
NAME_FN(vf_dtype_policy_name, vf_dtype_policy, g_dtype_policy, VF_DTYPE_POLICY_COUNT)
NAME_FN(vf_eviction_policy_name, vf_eviction_policy, g_evict, VF_EVICT_COUNT)
NAME_FN(vf_tier_name, vf_tier, g_tier, VF_TIER_COUNT)

PARSE_FN(vf_offload_strategy_parse, vf_offload_strategy, "offload strategy", g_offload,
         VF_OFFLOAD_COUNT)
PARSE_FN(vf_loading_strategy_parse, vf_loading_strategy, "loading strategy", g_loading,
         VF_LOADING_COUNT)
PARSE_FN(vf_dtype_policy_parse, vf_dtype_policy, "dtype policy", g_dtype_policy,
         VF_DTYPE_POLICY_COUNT)
PARSE_FN(vf_eviction_policy_parse, vf_eviction_policy, "eviction policy", g_evict,
         VF_EVICT_COUNT)
PARSE_FN(vf_tier_parse, vf_tier, "memory tier", g_tier, VF_TIER_COUNT)

/* The multiplier of a unit suffix ("" = bytes); 0 when unknown. */
static double unit_scale(const char *u)
{
    static const struct {
        const char *name;
        double scale;
    } units[] = {
        {"", 1.0},           {"b", 1.0},
        {"k", 0x1p10},       {"ki", 0x1p10},      {"kib", 0x1p10},      {"kb", 1e3},
        {"m", 0x1p20},       {"mi", 0x1p20},      {"mib", 0x1p20},      {"mb", 1e6},
        {"g", 0x1p30},       {"gi", 0x1p30},      {"gib", 0x1p30},      {"gb", 1e9},
        {"t", 0x1p40},       {"ti", 0x1p40},      {"tib", 0x1p40},      {"tb", 1e12},
    };
    char low[8] = {0};
    size_t n = strlen(u);
    if (n >= sizeof low)
        return 0;
    for (size_t i = 0; i < n && i < sizeof low - 1; i++)
        low[i] = (char)tolower((unsigned char)u[i]);
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(low, units[i].name) == 0)
            return units[i].scale;
    }
    return 0;
}

vf_status vf_parse_size(const char *text, uint64_t *out)
{
    if (!text || !*text)
        return vf_error(VF_ERR_INVALID_ARG, "size: empty (expected e.g. 6G, 512M, 1.5GiB)");
    const char *p = text;
    while (isspace((unsigned char)*p))
        p++;
    /* strtod would take "inf", "nan", hex and a sign: allow digits and one '.' only. */
    const char *num = p;
    int digits = 0, dots = 0;
    for (; isdigit((unsigned char)*p) || *p == '.'; p++) {
        digits += isdigit((unsigned char)*p) != 0;
        dots += *p == '.';
    }
    if (!digits || dots > 1)
        return vf_error(VF_ERR_INVALID_ARG, "size '%s': expected a number with an optional unit "
                        "(e.g. 6G, 512M, 1.5GiB)", text);
    char numbuf[64];
    size_t nlen = (size_t)(p - num);
    if (nlen >= sizeof numbuf)
        return vf_error(VF_ERR_INVALID_ARG, "size '%s': number too long", text);
    memcpy(numbuf, num, nlen);
    numbuf[nlen] = 0;
    while (isspace((unsigned char)*p))
        p++;
    const char *unit = p;
    size_t ulen = strlen(unit);
    while (ulen && isspace((unsigned char)unit[ulen - 1]))
        ulen--;
    char ubuf[8];
    if (ulen >= sizeof ubuf)
        return vf_error(VF_ERR_INVALID_ARG, "size '%s': unknown unit", text);
    memcpy(ubuf, unit, ulen);
    ubuf[ulen] = 0;
    double scale = unit_scale(ubuf);
    if (scale == 0)
        return vf_error(VF_ERR_INVALID_ARG, "size '%s': unknown unit '%s' (use B, K, M, G, T, "
                        "KiB..TiB or KB..TB)", text, ubuf);
    double v = strtod(numbuf, NULL) * scale;
    if (!(v < 0x1p63))
        return vf_error(VF_ERR_INVALID_ARG, "size '%s': too large", text);
    *out = (uint64_t)llround(v);
    return VF_OK;
}
