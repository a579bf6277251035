/* Resource detection: the GPUs, RAM and CPU this process may use.
 *
 * CUDA is reached through the runtime library opened with dlopen at run time, so
 * one binary runs on machines with and without it. Only entry points whose
 * signatures have not changed since CUDA 4 are called: cudaDeviceProp changes
 * layout between releases, so properties come one at a time from
 * cudaDeviceGetAttribute, and the struct is used only for the device name, its
 * first member in every release, read from a buffer far larger than any
 * release's struct. VF_CUDART_PATH names the one library to load instead of the
 * usual names (tests point it at a missing file or at a non-CUDA library).
 *
 * RAM honours cgroup limits because in a container /proc/meminfo describes the
 * host: a job limited to 16 GiB on a 512 GiB host must plan for 16 GiB. Limits
 * apply at every level of the cgroup tree, so the walk goes from the process's
 * cgroup up to the root and keeps the tightest one. All files are read under a
 * root prefix so that tests can use a fake tree. Nothing here prints, and nothing
 * fails for lack of a GPU: detection always produces a usable answer.
 */
#include "mem/resources.h"
#include "core/alloc.h"
#include "core/error.h"

#include <cjson/cJSON.h>
#include <dlfcn.h>
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#define VF_PATH_CAP 4096
/* cgroup v1 writes "no limit" as 2^63 rounded down to a page; anything this
 * large is no limit at all. */
#define VF_CG_UNLIMITED ((uint64_t)1 << 62)
/* cudaDeviceProp is about 1 KiB in CUDA 11-13; the buffer leaves room to grow. */
#define VF_CUDA_PROPS_CAP 16384

/* snprintf for messages that may be cut short: a cut message is still useful. */
static void fmt_cut(char *dst, size_t cap, const char *fmt, ...) VF_PRINTF(3, 4);
static void fmt_cut(char *dst, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, cap, fmt, ap);
    va_end(ap);
}

/* ---- small file readers ------------------------------------------------------ */

/* Reads the first line of a small file (a cgroup value) without its newline. */
static int read_line(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int ok = fgets(buf, (int)cap, f) != NULL;
    fclose(f);
    if (ok)
        buf[strcspn(buf, "\n")] = '\0';
    return ok;
}

/* A whole decimal number, surrounding blanks allowed. */
static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    s += strspn(s, " \t");
    if (*s < '0' || *s > '9')
        return 0;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE)
        return 0;
    end += strspn(end, " \t\n");
    if (*end)
        return 0;
    *out = (uint64_t)v;
    return 1;
}

/* Finds the line that starts with key (then a blank or ':') and copies the rest,
 * past blanks and one ':', into val. Lines longer than the buffer (cpuinfo's
 * flags) are consumed in pieces; only a piece that starts a line can match. */
static int find_key(const char *path, const char *key, char *val, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[512];
    size_t klen = strlen(key);
    int at_start = 1, found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        int starts = at_start;
        at_start = len > 0 && line[len - 1] == '\n';
        if (!starts || strncmp(line, key, klen) != 0)
            continue;
        const char *p = line + klen;
        if (*p != ' ' && *p != '\t' && *p != ':')
            continue;
        p += strspn(p, " \t");
        p += *p == ':';
        p += strspn(p, " \t");
        snprintf(val, cap, "%s", p);
        val[strcspn(val, "\n")] = '\0';
        found = 1;
    }
    fclose(f);
    return found;
}

/* ---- RAM: /proc/meminfo ------------------------------------------------------ */

/* A meminfo value ("12345 kB") in bytes. */
static int meminfo_bytes(const char *path, const char *key, uint64_t *out)
{
    char val[128];
    if (!find_key(path, key, val, sizeof val))
        return 0;
    char *unit = strstr(val, "kB");
    uint64_t v;
    if (unit)
        *unit = '\0';
    if (!parse_u64(val, &v) || (unit && v > UINT64_MAX / 1024))
        return 0;
    *out = unit ? v * 1024 : v;
    return 1;
}

static vf_status read_meminfo(const char *root, vf_ram_info *out)
{
    char path[VF_PATH_CAP];
    if (snprintf(path, sizeof path, "%s/proc/meminfo", root) >= (int)sizeof path)
        return vf_error(VF_ERR_INVALID_ARG, "%s: root path is too long", root);
    if (access(path, R_OK) != 0)
        return vf_error(VF_ERR_NOT_FOUND, "%s: cannot read: %s", path, strerror(errno));
    if (!meminfo_bytes(path, "MemTotal", &out->machine_total) || out->machine_total == 0)
        return vf_error(VF_ERR_FORMAT, "%s: no valid MemTotal line", path);
    /* Kernels before 3.14 have no MemAvailable; MemFree undercounts but is safe. */
    if (!meminfo_bytes(path, "MemAvailable", &out->machine_available) &&
        !meminfo_bytes(path, "MemFree", &out->machine_available))
        return vf_error(VF_ERR_FORMAT, "%s: neither MemAvailable nor MemFree", path);
    if (out->machine_available > out->machine_total)
        out->machine_available = out->machine_total;
    return VF_OK;
}

/* ---- RAM: cgroups -------------------------------------------------------------- */

/* The file names of one cgroup version. */
typedef struct cg_files {
    const char *limit;
    const char *usage;
    const char *inactive; /* key in memory.stat of the reclaimable file cache */
} cg_files;

static const cg_files g_cg_v2 = {"memory.max", "memory.current", "inactive_file"};
static const cg_files g_cg_v1 = {"memory.limit_in_bytes", "memory.usage_in_bytes",
                                 "total_inactive_file"};

/* The tightest constraint found so far: the smallest limit (0: none) and the
 * smallest headroom under any limit (UINT64_MAX: none). */
typedef struct cg_state {
    uint64_t limit;
    uint64_t headroom;
} cg_state;

/* The limit in a cgroup file; "max", a huge v1 value, a missing or a malformed
 * file all mean none (0). */
static uint64_t cg_limit(const char *path)
{
    char line[64];
    uint64_t v;
    if (!read_line(path, line, sizeof line) || !parse_u64(line, &v) || v >= VF_CG_UNLIMITED)
        return 0;
    return v;
}

/* Folds one cgroup directory into st. Its headroom is the limit less the working
 * set, usage less inactive file cache, since the kernel reclaims that cache
 * before it enforces the limit (the measure container runtimes report). */
static void cg_level(const char *dir, const cg_files *cf, cg_state *st)
{
    char path[2 * VF_PATH_CAP + 64], val[64];
    uint64_t used = 0, inactive = 0;
    if (snprintf(path, sizeof path, "%s/%s", dir, cf->limit) >= (int)sizeof path)
        return;
    uint64_t lim = cg_limit(path);
    if (lim == 0)
        return;
    if (st->limit == 0 || lim < st->limit)
        st->limit = lim;
    snprintf(path, sizeof path, "%s/%s", dir, cf->usage);
    if (!read_line(path, val, sizeof val) || !parse_u64(val, &used))
        used = 0;
    snprintf(path, sizeof path, "%s/memory.stat", dir);
    if (!find_key(path, cf->inactive, val, sizeof val) || !parse_u64(val, &inactive))
        inactive = 0;
    uint64_t ws = used - (inactive < used ? inactive : used);
    uint64_t room = ws < lim ? lim - ws : 0;
    if (room < st->headroom)
        st->headroom = room;
}

/* Visits base + cgpath, then each parent up to base itself. A path that climbs
 * ("/.." appears when the cgroup lies outside this cgroup namespace) cannot be
 * mapped under base, so only base is read then. */
static void cg_walk(const char *base, const char *cgpath, const cg_files *cf, cg_state *st)
{
    char rel[VF_PATH_CAP], dir[2 * VF_PATH_CAP];
    if (cgpath[0] != '/' || strstr(cgpath, "/..") ||
        snprintf(rel, sizeof rel, "%s", cgpath) >= (int)sizeof rel)
        rel[0] = '\0';
    for (;;) {
        size_t n = strlen(rel);
        while (n > 0 && rel[n - 1] == '/')
            rel[--n] = '\0';
        snprintf(dir, sizeof dir, "%s%s", base, rel);
        cg_level(dir, cf, st);
        char *slash = strrchr(rel, '/');
        if (!slash)
            break;
        *slash = '\0';
    }
}

/* This process's cgroup paths from <root>/proc/self/cgroup: v2's "0::<path>"
 * and the v1 hierarchy whose controller list holds "memory". Both default to
 * "/", the hierarchy's root, when the file or the line is missing. */
static void cg_paths(const char *root, char *v2, char *v1, size_t cap)
{
    char path[VF_PATH_CAP], line[VF_PATH_CAP + 256];
    snprintf(v2, cap, "/");
    snprintf(v1, cap, "/");
    if (snprintf(path, sizeof path, "%s/proc/self/cgroup", root) >= (int)sizeof path)
        return;
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *ctl = strchr(line, ':');
        char *cg = ctl ? strchr(ctl + 1, ':') : NULL;
        if (!cg)
            continue;
        *ctl++ = '\0';
        *cg++ = '\0';
        if (strcmp(line, "0") == 0 && ctl[0] == '\0') {
            snprintf(v2, cap, "%s", cg);
            continue;
        }
        for (char *save = NULL, *tok = strtok_r(ctl, ",", &save); tok;
             tok = strtok_r(NULL, ",", &save)) {
            if (strcmp(tok, "memory") == 0)
                snprintf(v1, cap, "%s", cg);
        }
    }
    fclose(f);
}

vf_status vf_detect_ram_at(const char *root, vf_ram_info *out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_detect_ram_at: out is NULL");
    memset(out, 0, sizeof *out);
    if (!root)
        root = "";
    VF_TRY(read_meminfo(root, out));

    char v2[VF_PATH_CAP], v1[VF_PATH_CAP], base[VF_PATH_CAP];
    cg_state st = {0, UINT64_MAX};
    cg_paths(root, v2, v1, sizeof v2);
    /* v2 is mounted at /sys/fs/cgroup, or beside v1 at .../unified (hybrid). */
    snprintf(base, sizeof base, "%s/sys/fs/cgroup", root);
    cg_walk(base, v2, &g_cg_v2, &st);
    snprintf(base, sizeof base, "%s/sys/fs/cgroup/unified", root);
    cg_walk(base, v2, &g_cg_v2, &st);
    snprintf(base, sizeof base, "%s/sys/fs/cgroup/memory", root);
    cg_walk(base, v1, &g_cg_v1, &st);

    out->cgroup_limit = st.limit;
    out->total = out->machine_total;
    if (st.limit && st.limit < out->total)
        out->total = st.limit;
    out->available = out->machine_available;
    if (st.headroom < out->available)
        out->available = st.headroom;
    if (out->available > out->total)
        out->available = out->total;
    return VF_OK;
}

/* Without /proc/meminfo: what the C library knows, with no cgroup view. */
static void ram_fallback(vf_ram_info *r)
{
    long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES);
    long page = sysconf(_SC_PAGESIZE);
    memset(r, 0, sizeof *r);
    if (pages > 0 && page > 0)
        r->total = r->machine_total = (uint64_t)pages * (uint64_t)page;
    if (avail > 0 && page > 0)
        r->available = r->machine_available = (uint64_t)avail * (uint64_t)page;
}

/* ---- CPU ------------------------------------------------------------------------ */

/* Cores in this process's affinity mask; the mask grows for hosts past 1024. */
static int cpu_cores(void)
{
    for (size_t n = 1024; n <= 65536; n *= 4) {
        size_t sz = CPU_ALLOC_SIZE(n);
        cpu_set_t *set = vf_calloc(1, sz);
        if (!set)
            break;
        int rc = sched_getaffinity(0, sz, set);
        int einval = rc != 0 && errno == EINVAL;
        int count = rc == 0 ? CPU_COUNT_S(sz, set) : 0;
        vf_free(set);
        if (count > 0)
            return count;
        if (!einval)
            break;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void cpu_name(char *out, size_t cap)
{
    struct utsname u;
    out[0] = '\0';
    if (find_key("/proc/cpuinfo", "model name", out, cap)) {
        size_t n = strlen(out);
        while (n > 0 && out[n - 1] == ' ')
            out[--n] = '\0';
        if (n > 0)
            return;
    }
    /* Arm kernels give no model name; the architecture is better than nothing. */
    if (uname(&u) == 0)
        snprintf(out, cap, "%s", u.machine);
}

static void append_word(char *out, size_t cap, const char *w)
{
    size_t n = strlen(out);
    snprintf(out + n, cap - n, "%s%s", n ? " " : "", w);
}

#if defined(__x86_64__) || defined(__i386__)
/* F16C and AVX512-BF16 are read from CPUID because not every compiler's
 * __builtin_cpu_supports knows them (clang 14 knows neither); the builtin's
 * AVX / AVX-512 answer, which includes the OS saving the registers, gates them. */
static int x86_f16c(void)
{
    unsigned a, b, c, d;
    if (!__builtin_cpu_supports("avx") || !__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    return (c >> 29) & 1;
}

static int x86_avx512_bf16(void)
{
    unsigned a, b, c, d;
    if (!__builtin_cpu_supports("avx512f") || !__get_cpuid_count(7, 0, &a, &b, &c, &d) || a < 1)
        return 0;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d))
        return 0;
    return (a >> 5) & 1;
}
#endif

/* The SIMD extensions vramfit's kernels may pick between, as /proc/cpuinfo
 * spells them. __builtin_cpu_supports also checks that the OS enables them. */
static void cpu_simd(char *out, size_t cap)
{
    out[0] = '\0';
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    const struct {
        const char *name;
        int on;
    } f[] = {
        {"sse4.2", __builtin_cpu_supports("sse4.2")},
        {"avx", __builtin_cpu_supports("avx")},
        {"avx2", __builtin_cpu_supports("avx2")},
        {"fma", __builtin_cpu_supports("fma")},
        {"f16c", x86_f16c()},
        {"avx512f", __builtin_cpu_supports("avx512f")},
        {"avx512bw", __builtin_cpu_supports("avx512bw")},
        {"avx512vl", __builtin_cpu_supports("avx512vl")},
        {"avx512_bf16", x86_avx512_bf16()},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (f[i].on)
            append_word(out, cap, f[i].name);
    }
#endif
}

void vf_detect_cpu(vf_resources *r)
{
    r->cpu_cores = cpu_cores();
    cpu_name(r->cpu_name, sizeof r->cpu_name);
    cpu_simd(r->simd, sizeof r->simd);
}

/* ---- CUDA ----------------------------------------------------------------------- */

/* cudaError_t and cudaDeviceAttr are C enums: int in the ABI. */
enum {
    CUDA_ATTR_MULTIPROCESSORS = 16,
    CUDA_ATTR_CC_MAJOR = 75,
    CUDA_ATTR_CC_MINOR = 76,
};

typedef int (*cuda_int_fn)(int *);
typedef int (*cuda_attr_fn)(int *, int, int);
typedef int (*cuda_set_fn)(int);
typedef int (*cuda_mem_fn)(size_t *, size_t *);
typedef const char *(*cuda_errstr_fn)(int);
typedef int (*cuda_props_fn)(void *, int);

typedef struct cuda_api {
    cuda_int_fn get_count, driver_version, runtime_version;
    cuda_attr_fn attr;
    cuda_set_fn set_device;
    cuda_mem_fn mem_info;
    /* optional */
    cuda_int_fn get_device;
    cuda_errstr_fn errstr;
    cuda_props_fn props;
} cuda_api;

/* Resolves the entry points; returns the first required name missing, or NULL. */
static const char *cuda_resolve(void *lib, cuda_api *a)
{
    memset(a, 0, sizeof *a);
    if (!(a->get_count = (cuda_int_fn)dlsym(lib, "cudaGetDeviceCount")))
        return "cudaGetDeviceCount";
    if (!(a->driver_version = (cuda_int_fn)dlsym(lib, "cudaDriverGetVersion")))
        return "cudaDriverGetVersion";
    if (!(a->runtime_version = (cuda_int_fn)dlsym(lib, "cudaRuntimeGetVersion")))
        return "cudaRuntimeGetVersion";
    if (!(a->attr = (cuda_attr_fn)dlsym(lib, "cudaDeviceGetAttribute")))
        return "cudaDeviceGetAttribute";
    if (!(a->set_device = (cuda_set_fn)dlsym(lib, "cudaSetDevice")))
        return "cudaSetDevice";
    if (!(a->mem_info = (cuda_mem_fn)dlsym(lib, "cudaMemGetInfo")))
        return "cudaMemGetInfo";
    a->get_device = (cuda_int_fn)dlsym(lib, "cudaGetDevice");
    a->errstr = (cuda_errstr_fn)dlsym(lib, "cudaGetErrorString");
    /* CUDA 12 keeps the old layout under the plain name and adds _v2. */
    a->props = (cuda_props_fn)dlsym(lib, "cudaGetDeviceProperties_v2");
    if (!a->props)
        a->props = (cuda_props_fn)dlsym(lib, "cudaGetDeviceProperties");
    return NULL;
}

/* Opens the first of libs that loads and exports the runtime API. The library
 * stays loaded: the CUDA runtime does not support being unloaded. */
static int cuda_open(const char *const *libs, int n, cuda_api *a, vf_resources *r)
{
    char why[256] = "no library names given";
    for (int i = 0; i < n; i++) {
        dlerror();
        void *lib = dlopen(libs[i], RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
            const char *e = dlerror();
            snprintf(why, sizeof why, "%s", e ? e : libs[i]);
            continue;
        }
        const char *missing = cuda_resolve(lib, a);
        if (!missing)
            return 1;
        fmt_cut(why, sizeof why, "%s: no symbol %s (not a CUDA runtime)", libs[i], missing);
        dlclose(lib);
    }
    char tried[160] = "";
    for (int i = 0; i < n; i++)
        append_word(tried, sizeof tried, libs[i]);
    fmt_cut(r->cuda_error, sizeof r->cuda_error, "cannot load a CUDA runtime (tried %s): %s",
             tried, why);
    return 0;
}

/* Records a failed runtime call and forgets whatever was found before it. */
static void cuda_fail(vf_resources *r, const cuda_api *a, int dev, const char *what, int err)
{
    const char *s = a->errstr ? a->errstr(err) : NULL;
    char where[32] = "";
    if (dev >= 0)
        snprintf(where, sizeof where, "device %d: ", dev);
    fmt_cut(r->cuda_error, sizeof r->cuda_error, "%s%s: %s (cudaError %d)", where, what,
             s ? s : "error", err);
    r->has_cuda = 0;
    r->device_count = 0;
    memset(r->devices, 0, sizeof r->devices);
}

static void cuda_name(const cuda_api *a, int dev, char *name, size_t cap)
{
    char *props = a->props ? vf_calloc(1, VF_CUDA_PROPS_CAP) : NULL;
    name[0] = '\0';
    if (props && a->props(props, dev) == 0) {
        size_t n = strnlen(props, 256);
        n = n < cap - 1 ? n : cap - 1;
        memcpy(name, props, n);
        name[n] = '\0';
    }
    vf_free(props);
    if (!name[0])
        snprintf(name, cap, "CUDA device %d", dev);
}

/* Fills d for device dev; on failure returns the cudaError and names the call. */
static int cuda_device(const cuda_api *a, int dev, vf_device_info *d, const char **what)
{
    size_t free_b = 0, total_b = 0;
    int err;
    d->index = dev;
    *what = "cudaDeviceGetAttribute";
    if ((err = a->attr(&d->cc_major, CUDA_ATTR_CC_MAJOR, dev)) ||
        (err = a->attr(&d->cc_minor, CUDA_ATTR_CC_MINOR, dev)) ||
        (err = a->attr(&d->multiprocessors, CUDA_ATTR_MULTIPROCESSORS, dev)))
        return err;
    cuda_name(a, dev, d->name, sizeof d->name);
    *what = "cudaSetDevice";
    if ((err = a->set_device(dev)))
        return err;
    *what = "cudaMemGetInfo";
    if ((err = a->mem_info(&free_b, &total_b)))
        return err;
    d->total_vram = total_b;
    d->free_vram = free_b;
    return 0;
}

static void cuda_probe(const cuda_api *a, vf_resources *r)
{
    int count = 0, prev = -1, err;
    const char *what = "";
    if (a->driver_version(&r->driver_version))
        r->driver_version = 0;
    if (a->runtime_version(&r->runtime_version))
        r->runtime_version = 0;
    if ((err = a->get_count(&count))) {
        /* Without libcuda.so.1 the runtime says "driver version is insufficient",
         * which reads as "upgrade" when the driver is simply absent. */
        cuda_fail(r, a, -1,
                  r->driver_version ? "cudaGetDeviceCount"
                                    : "no NVIDIA driver found; cudaGetDeviceCount",
                  err);
        return;
    }
    if (count <= 0) {
        snprintf(r->cuda_error, sizeof r->cuda_error, "cudaGetDeviceCount: no CUDA device");
        return;
    }
    count = count < VF_MAX_DEVICES ? count : VF_MAX_DEVICES;
    /* cudaSetDevice is per thread: give the caller's thread its device back. */
    if (a->get_device && a->get_device(&prev))
        prev = -1;
    for (int i = 0; i < count; i++) {
        if ((err = cuda_device(a, i, &r->devices[i], &what))) {
            cuda_fail(r, a, i, what, err);
            break;
        }
    }
    if (prev >= 0)
        a->set_device(prev);
    if (err)
        return;
    r->has_cuda = 1;
    r->device_count = count;
}

void vf_detect_cuda_from(const char *const *libs, int n, vf_resources *r)
{
    cuda_api a;
    r->has_cuda = 0;
    r->device_count = 0;
    r->driver_version = 0;
    r->runtime_version = 0;
    r->cuda_error[0] = '\0';
    memset(r->devices, 0, sizeof r->devices);
    if (cuda_open(libs, n, &a, r))
        cuda_probe(&a, r);
}

/* ---- public API ------------------------------------------------------------------ */

static const char *const g_cudart_names[] = {"libcudart.so", "libcudart.so.13", "libcudart.so.12",
                                             "libcudart.so.11.0"};

vf_status vf_detect_resources(vf_resources *out)
{
    vf_ram_info ram;
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_detect_resources: out is NULL");
    memset(out, 0, sizeof *out);
    if (vf_detect_ram_at("", &ram) != VF_OK) {
        ram_fallback(&ram);
        vf_clear_error();
    }
    out->total_ram = ram.total;
    out->available_ram = ram.available;
    out->cgroup_limit = ram.cgroup_limit;
    out->has_mps = 0;
    vf_detect_cpu(out);

    const char *env = getenv("VF_CUDART_PATH");
    if (env && env[0])
        vf_detect_cuda_from(&env, 1, out);
    else
        vf_detect_cuda_from(g_cudart_names, (int)(sizeof g_cudart_names / sizeof g_cudart_names[0]),
                            out);
    return VF_OK;
}

/* A fixed-size char field as a C string even if a caller left it unterminated. */
static const char *field(char *tmp, size_t cap, const char *src, size_t src_cap)
{
    size_t n = strnlen(src, src_cap);
    n = n < cap - 1 ? n : cap - 1;
    memcpy(tmp, src, n);
    tmp[n] = '\0';
    return tmp;
}

static cJSON *device_json(const vf_device_info *d)
{
    char cc[32], name[sizeof d->name + 1];
    cJSON *o = cJSON_CreateObject();
    snprintf(cc, sizeof cc, "%d.%d", d->cc_major, d->cc_minor);
    if (!o || !cJSON_AddNumberToObject(o, "index", d->index) ||
        !cJSON_AddStringToObject(o, "name", field(name, sizeof name, d->name, sizeof d->name)) ||
        !cJSON_AddStringToObject(o, "compute_capability", cc) ||
        !cJSON_AddNumberToObject(o, "total_vram", (double)d->total_vram) ||
        !cJSON_AddNumberToObject(o, "free_vram", (double)d->free_vram) ||
        !cJSON_AddNumberToObject(o, "multiprocessors", d->multiprocessors)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* Byte counts become JSON numbers (doubles): exact below 2^53, 8 PiB. */
static cJSON *resources_json(const vf_resources *r)
{
    char err[sizeof r->cuda_error + 1], cpu[sizeof r->cpu_name + 1], simd[sizeof r->simd + 1];
    int count = r->device_count < 0 ? 0 : r->device_count;
    count = count < VF_MAX_DEVICES ? count : VF_MAX_DEVICES;
    cJSON *o = cJSON_CreateObject();
    cJSON *devs = cJSON_CreateArray();
    if (!o || !devs)
        goto fail;
    for (int i = 0; i < count; i++) {
        cJSON *d = device_json(&r->devices[i]);
        if (!d || !cJSON_AddItemToArray(devs, d)) {
            cJSON_Delete(d);
            goto fail;
        }
    }
    if (!cJSON_AddBoolToObject(o, "has_cuda", r->has_cuda != 0) ||
        !cJSON_AddBoolToObject(o, "has_mps", r->has_mps != 0) ||
        !cJSON_AddNumberToObject(o, "device_count", count) ||
        !cJSON_AddNumberToObject(o, "driver_version", r->driver_version) ||
        !cJSON_AddNumberToObject(o, "runtime_version", r->runtime_version) ||
        !cJSON_AddStringToObject(
            o, "cuda_error", field(err, sizeof err, r->cuda_error, sizeof r->cuda_error)) ||
        !cJSON_AddItemToObject(o, "devices", devs))
        goto fail;
    devs = NULL; /* owned by o now */
    if (!cJSON_AddNumberToObject(o, "total_ram", (double)r->total_ram) ||
        !cJSON_AddNumberToObject(o, "available_ram", (double)r->available_ram) ||
        !cJSON_AddNumberToObject(o, "cgroup_limit", (double)r->cgroup_limit) ||
        !cJSON_AddNumberToObject(o, "cpu_cores", r->cpu_cores) ||
        !cJSON_AddStringToObject(o, "cpu_name",
                                 field(cpu, sizeof cpu, r->cpu_name, sizeof r->cpu_name)) ||
        !cJSON_AddStringToObject(o, "simd", field(simd, sizeof simd, r->simd, sizeof r->simd)))
        goto fail;
    return o;
fail:
    cJSON_Delete(devs);
    cJSON_Delete(o);
    return NULL;
}

vf_status vf_resources_to_json(const vf_resources *r, char *buf, size_t cap)
{
    if (!r || !buf || cap == 0)
        return vf_error(VF_ERR_INVALID_ARG, "vf_resources_to_json: %s",
                        !r ? "r is NULL" : !buf ? "buf is NULL" : "cap is 0");
    buf[0] = '\0';
    cJSON *o = resources_json(r);
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s)
        return vf_error(VF_ERR_NO_MEMORY, "vf_resources_to_json: cannot build the JSON text");
    size_t n = strlen(s);
    vf_status st = VF_OK;
    if (n >= cap)
        st = vf_error(VF_ERR_INVALID_ARG,
                      "vf_resources_to_json: cap: %zu bytes is too small, %zu needed", cap, n + 1);
    else
        memcpy(buf, s, n + 1);
    cJSON_free(s);
    return st;
}
