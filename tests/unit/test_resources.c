/* Resource detection: RAM parsing against fake /proc and /sys/fs/cgroup trees
 * with exact expected byte counts, the CUDA probe's failure paths without CUDA,
 * and the real machine's answer checked for consistency (it may or may not have
 * a GPU) and for a faithful JSON form.
 */
#include "test.h"

#include "mem/resources.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#define KIB 1024ull
#define MIB (1024ull * KIB)
#define GIB (1024ull * MIB)

/* ---- fake root trees ----------------------------------------------------------- */

static char g_root[256];

static void make_root(void)
{
    snprintf(g_root, sizeof g_root, "/tmp/vf_test_resources_XXXXXX");
    if (!mkdtemp(g_root)) {
        fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
        exit(1);
    }
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void drop_root(void)
{
    nftw(g_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Writes <root>/<rel> with text, creating the folders on the way. */
static void put(const char *rel, const char *text)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", g_root, rel);
    for (char *p = path + strlen(g_root) + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        mkdir(path, 0755);
        *p = '/';
    }
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        exit(1);
    }
    fputs(text, f);
    fclose(f);
}

static const char *g_meminfo = "MemTotal:       16384000 kB\n"
                               "MemFree:         1000000 kB\n"
                               "MemAvailable:    8192000 kB\n"
                               "Buffers:           12345 kB\n";

/* ---- RAM ------------------------------------------------------------------------ */

static void test_meminfo_only(void)
{
    vf_ram_info r;
    make_root();
    put("proc/meminfo", g_meminfo);
    CHECK_OK(vf_detect_ram_at(g_root, &r));
    CHECK(r.machine_total == 16384000 * KIB);
    CHECK(r.machine_available == 8192000 * KIB);
    CHECK(r.total == 16384000 * KIB);
    CHECK(r.available == 8192000 * KIB);
    CHECK(r.cgroup_limit == 0);
    drop_root();
}

static void test_meminfo_without_available(void)
{
    vf_ram_info r;
    make_root();
    put("proc/meminfo", "MemTotal: 2048 kB\nMemFree: 512 kB\nMemAvailableX: 999 kB\n");
    CHECK_OK(vf_detect_ram_at(g_root, &r));
    CHECK(r.total == 2048 * KIB);
    CHECK(r.available == 512 * KIB);
    drop_root();
}

static void test_meminfo_missing_or_bad(void)
{
    vf_ram_info r;
    make_root();
    CHECK(vf_detect_ram_at(g_root, &r) == VF_ERR_NOT_FOUND);
    CHECK(strstr(vf_last_error(), "/proc/meminfo") != NULL);
    put("proc/meminfo", "MemFree: 512 kB\n");
    CHECK(vf_detect_ram_at(g_root, &r) == VF_ERR_FORMAT);
    CHECK(strstr(vf_last_error(), "MemTotal") != NULL);
    put("proc/meminfo", "MemTotal: lots kB\nMemFree: 512 kB\n");
    CHECK(vf_detect_ram_at(g_root, &r) == VF_ERR_FORMAT);
    CHECK(vf_detect_ram_at(g_root, NULL) == VF_ERR_INVALID_ARG);
    drop_root();
}

/* v2: the parent's limit is the tighter; the leaf says "max". Headroom at the
 * parent is 8 GiB - (6 GiB used - 1 GiB inactive cache) = 3 GiB. */
static void test_cgroup_v2_nested(void)
{
    vf_ram_info r;
    make_root();
    put("proc/meminfo", g_meminfo);
    put("proc/self/cgroup", "0::/user.slice/app.scope\n");
    put("sys/fs/cgroup/user.slice/memory.max", "8589934592\n");
    put("sys/fs/cgroup/user.slice/memory.current", "6442450944\n");
    put("sys/fs/cgroup/user.slice/memory.stat", "anon 100\nfile 200\ninactive_file 1073741824\n"
                                                "active_file 5\n");
    put("sys/fs/cgroup/user.slice/app.scope/memory.max", "max\n");
    put("sys/fs/cgroup/user.slice/app.scope/memory.current", "1048576\n");
    CHECK_OK(vf_detect_ram_at(g_root, &r));
    CHECK(r.cgroup_limit == 8 * GIB);
    CHECK(r.total == 8 * GIB);
    CHECK(r.available == 3 * GIB);
    CHECK(r.machine_total == 16384000 * KIB);

    /* A tighter leaf wins; its headroom (2 GiB - 1.5 GiB) is the smallest. */
    put("sys/fs/cgroup/user.slice/app.scope/memory.max", "2147483648\n");
    put("sys/fs/cgroup/user.slice/app.scope/memory.current", "1610612736\n");
    CHECK_OK(vf_detect_ram_at(g_root, &r));
    CHECK(r.cgroup_limit == 2 * GIB);
    CHECK(r.total == 2 * GIB);
    CHECK(r.available == 512 * MIB);

    /* Usage over the limit leaves nothing, not a wrapped-around huge number. */
    put("sys/fs/cgroup/user.slice/app.scope/memory.current", "3221225472\n");
    CHECK_OK(vf_detect_ram_at(g_root, &r));
    CHECK(r.available == 0);
    drop_root();
}

/* A limit above the machine's RAM is reported but does not raise total; the
 * machine's MemAvailable stays the bound when the headroom is larger. */
static void test_cgroup_v2_limit_above_machine(void)
{
    vf_ram_info r;
    make_root();
    put("proc/meminfo", g_meminfo);
    put("proc/self/cgroup", "0::/\n");
    put("sys/fs/cgroup/memory.max", "68719476736\n");
    put("sys/fs/cgroup/memory.current", "1073741824\n");
    CHECK_OK(vf_detect_ram_at(g_root, &r));
    CHECK(r.cgroup_limit == 64 * GIB);
    CHECK(r.total == 16384000 * KIB);
    CHECK(r.available == 8192000 * KIB);
    drop_root();
}

/* Hybrid hosts mount v2 at /sys/fs/cgroup/unified. */
static void test_cgroup_v2_unified(void)
{
    vf_ram_info r;
    make_root();
    put("proc/meminfo", g_meminfo);
    put("proc/self/cgroup", "1:name=systemd:/\n0::/job\n");
    put("sys/fs/cgroup/unified/job/memory.max", "4294967296\n");
    CHECK_OK(vf_detect_ram_at(g_root, &r));
    CHECK(r.cgroup_limit == 4 * GIB);
    CHECK(r.total == 4 * GIB);
    CHECK(r.available == 4 * GIB); /* no memory.current: no usage known */
    drop_root();
}

/* v1: the memory controller's line, the walk to the root, the huge "no limit"
 * value at the root, and total_inactive_file rather than inactive_file. */
static void test_cgroup_v1(void)
{
    vf_ram_info r;
    make_root();
    put("proc/meminfo", g_meminfo);
    put("proc/self/cgroup", "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n");
    put("sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
    put("sys/fs/cgroup/memory/memory.usage_in_bytes", "12000000000\n");
    put("sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "4294967296\n");
    put("sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes", "1610612736\n");
    put("sys/fs/cgroup/memory/docker/abc/memory.stat",
        "cache 5\ninactive_file 7\ntotal_inactive_file 536870912\n");
    CHECK_OK(vf_detect_ram_at(g_root, &r));
    CHECK(r.cgroup_limit == 4 * GIB);
    CHECK(r.total == 4 * GIB);
    CHECK(r.available == 3 * GIB);

    /* A controller listed with others ("cpu,memory") is found too. */
    put("proc/self/cgroup", "3:cpu,memory:/docker/abc\n");
    CHECK_OK(vf_detect_ram_at(g_root, &r));
    CHECK(r.cgroup_limit == 4 * GIB);
    drop_root();
}

static void test_cgroup_v1_unlimited(void)
{
    vf_ram_info r;
    make_root();
    put("proc/meminfo", g_meminfo);
    put("sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
    put("sys/fs/cgroup/memory/memory.usage_in_bytes", "99999999999\n");
    CHECK_OK(vf_detect_ram_at(g_root, &r)); /* no /proc/self/cgroup at all */
    CHECK(r.cgroup_limit == 0);
    CHECK(r.total == 16384000 * KIB);
    CHECK(r.available == 8192000 * KIB);
    drop_root();
}

/* Garbage in a cgroup file and a path escaping the namespace are no limit,
 * never an error or a read outside the hierarchy. */
static void test_cgroup_malformed(void)
{
    vf_ram_info r;
    make_root();
    put("proc/meminfo", g_meminfo);
    put("proc/self/cgroup", "0::/a\n");
    put("sys/fs/cgroup/a/memory.max", "12abc\n");
    CHECK_OK(vf_detect_ram_at(g_root, &r));
    CHECK(r.cgroup_limit == 0);
    CHECK(r.total == 16384000 * KIB);

    put("proc/self/cgroup", "0::/../../outside\n");
    put("sys/fs/cgroup/outside/memory.max", "1024\n");
    put("sys/outside/memory.max", "1024\n");
    CHECK_OK(vf_detect_ram_at(g_root, &r));
    CHECK(r.cgroup_limit == 0);

    put("proc/self/cgroup", "garbage line\n0:\n");
    CHECK_OK(vf_detect_ram_at(g_root, &r));
    CHECK(r.cgroup_limit == 0);
    drop_root();
}

/* ---- CUDA failure paths ----------------------------------------------------------- */

static void test_cuda_missing_library(void)
{
    vf_resources r;
    const char *libs[] = {"/nonexistent/libcudart.so.99"};
    memset(&r, 0x5a, sizeof r);
    vf_detect_cuda_from(libs, 1, &r);
    CHECK(r.has_cuda == 0);
    CHECK(r.device_count == 0);
    CHECK(r.driver_version == 0 && r.runtime_version == 0);
    CHECK_MSG(strstr(r.cuda_error, "/nonexistent/libcudart.so.99") != NULL, "%s", r.cuda_error);
}

static void test_cuda_not_a_runtime(void)
{
    vf_resources r;
    const char *libs[] = {"/nonexistent/libcudart.so", "libz.so.1"};
    vf_detect_cuda_from(libs, 2, &r);
    CHECK(r.has_cuda == 0);
    CHECK(r.device_count == 0);
    CHECK_MSG(strstr(r.cuda_error, "libz.so.1: no symbol cudaGetDeviceCount") != NULL, "%s",
              r.cuda_error);
}

/* VF_CUDART_PATH replaces the search, so the answer is the same with or
 * without CUDA on this machine. */
static void test_cuda_env_override(void)
{
    vf_resources r;
    setenv("VF_CUDART_PATH", "libz.so.1", 1);
    CHECK_OK(vf_detect_resources(&r));
    CHECK(r.has_cuda == 0 && r.device_count == 0);
    CHECK_MSG(strstr(r.cuda_error, "cudaGetDeviceCount") != NULL, "%s", r.cuda_error);
    CHECK(r.total_ram > 0 && r.cpu_cores >= 1); /* the rest is still detected */

    setenv("VF_CUDART_PATH", "/nonexistent/libcudart.so", 1);
    CHECK_OK(vf_detect_resources(&r));
    CHECK(r.has_cuda == 0 && r.device_count == 0);
    CHECK_MSG(strstr(r.cuda_error, "/nonexistent/libcudart.so") != NULL, "%s", r.cuda_error);
    unsetenv("VF_CUDART_PATH");
}

/* ---- this machine --------------------------------------------------------------------- */

static void test_detect_here(void)
{
    vf_resources r;
    CHECK_OK(vf_detect_resources(&r));
    CHECK(r.has_mps == 0);
    CHECK(r.cpu_cores >= 1);
    CHECK(r.cpu_cores <= sysconf(_SC_NPROCESSORS_CONF) || sysconf(_SC_NPROCESSORS_CONF) < 1);
    CHECK(r.total_ram > 0);
    CHECK(r.available_ram <= r.total_ram);
    CHECK(r.cgroup_limit == 0 || r.total_ram <= r.cgroup_limit);
    CHECK(r.cpu_name[0] != '\0');
    if (r.has_cuda) {
        CHECK(r.device_count > 0 && r.device_count <= VF_MAX_DEVICES);
        CHECK(r.cuda_error[0] == '\0');
        for (int i = 0; i < r.device_count; i++) {
            CHECK(r.devices[i].index == i);
            CHECK(r.devices[i].name[0] != '\0');
            CHECK(r.devices[i].cc_major >= 3);
            CHECK(r.devices[i].multiprocessors > 0);
            CHECK(r.devices[i].total_vram > 0);
            CHECK(r.devices[i].free_vram <= r.devices[i].total_vram);
        }
    } else {
        CHECK(r.device_count == 0);
        CHECK(r.cuda_error[0] != '\0');
    }
#if defined(__x86_64__)
    CHECK(strstr(r.simd, "sse4.2") != NULL); /* every x86-64 host vramfit targets */
#endif
    printf("     has_cuda=%d (%s) ram=%llu/%llu cgroup=%llu cores=%d simd='%s'\n", r.has_cuda,
           r.cuda_error, (unsigned long long)r.available_ram, (unsigned long long)r.total_ram,
           (unsigned long long)r.cgroup_limit, r.cpu_cores, r.simd);
}

/* ---- JSON ---------------------------------------------------------------------------- */

static double num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : -12345.0;
}

static const char *str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : "<missing>";
}

static void check_json_matches(const vf_resources *r, const char *text)
{
    cJSON *o = cJSON_Parse(text);
    CHECK_MSG(o != NULL, "unparsable: %s", text);
    if (!o)
        return;
    CHECK(cJSON_IsBool(cJSON_GetObjectItem(o, "has_cuda")));
    CHECK(cJSON_IsTrue(cJSON_GetObjectItem(o, "has_cuda")) == (r->has_cuda != 0));
    CHECK(cJSON_IsFalse(cJSON_GetObjectItem(o, "has_mps")));
    CHECK(num(o, "device_count") == r->device_count);
    CHECK(num(o, "driver_version") == r->driver_version);
    CHECK(num(o, "runtime_version") == r->runtime_version);
    CHECK(strcmp(str(o, "cuda_error"), r->cuda_error) == 0);
    CHECK(num(o, "total_ram") == (double)r->total_ram);
    CHECK(num(o, "available_ram") == (double)r->available_ram);
    CHECK(num(o, "cgroup_limit") == (double)r->cgroup_limit);
    CHECK(num(o, "cpu_cores") == r->cpu_cores);
    CHECK(strcmp(str(o, "cpu_name"), r->cpu_name) == 0);
    CHECK(strcmp(str(o, "simd"), r->simd) == 0);
    const cJSON *devs = cJSON_GetObjectItem(o, "devices");
    CHECK(cJSON_IsArray(devs) && cJSON_GetArraySize(devs) == r->device_count);
    for (int i = 0; i < r->device_count && cJSON_IsArray(devs); i++) {
        const cJSON *d = cJSON_GetArrayItem(devs, i);
        const vf_device_info *e = &r->devices[i];
        char cc[32];
        snprintf(cc, sizeof cc, "%d.%d", e->cc_major, e->cc_minor);
        CHECK(num(d, "index") == e->index);
        CHECK(strcmp(str(d, "name"), e->name) == 0);
        CHECK(strcmp(str(d, "compute_capability"), cc) == 0);
        CHECK(num(d, "total_vram") == (double)e->total_vram);
        CHECK(num(d, "free_vram") == (double)e->free_vram);
        CHECK(num(d, "multiprocessors") == e->multiprocessors);
    }
    cJSON_Delete(o);
}

static void test_json_here(void)
{
    vf_resources r;
    char buf[16384];
    CHECK_OK(vf_detect_resources(&r));
    CHECK_OK(vf_resources_to_json(&r, buf, sizeof buf));
    check_json_matches(&r, buf);
}

/* A made-up two-GPU machine: every field, quotes in a name, bytes past 2^32. */
static void test_json_fake_gpus(void)
{
    vf_resources r;
    char buf[16384];
    memset(&r, 0, sizeof r);
    r.has_cuda = 1;
    r.device_count = 2;
    r.driver_version = 13000;
    r.runtime_version = 12080;
    r.devices[0] = (vf_device_info){"NVIDIA H100 80GB HBM3", 0, 9, 0, 85045379072ull,
                                    84460011520ull, 132};
    r.devices[1] = (vf_device_info){"GPU \"two\"\\", 1, 8, 6, 25769803776ull, 1ull, 84};
    r.total_ram = 540000000000ull;
    r.available_ram = 500000000000ull;
    r.cgroup_limit = 540000000000ull;
    r.cpu_cores = 128;
    snprintf(r.cpu_name, sizeof r.cpu_name, "AMD EPYC 9654 96-Core Processor");
    snprintf(r.simd, sizeof r.simd, "sse4.2 avx avx2 fma");
    CHECK_OK(vf_resources_to_json(&r, buf, sizeof buf));
    check_json_matches(&r, buf);
    CHECK(strstr(buf, "\"compute_capability\":\"8.6\"") != NULL);
}

static void test_json_errors(void)
{
    vf_resources r;
    char big[16384], small[16];
    memset(&r, 0, sizeof r);
    r.cpu_cores = 1;
    CHECK_OK(vf_resources_to_json(&r, big, sizeof big));
    size_t need = strlen(big) + 1;
    CHECK(vf_resources_to_json(&r, small, sizeof small) == VF_ERR_INVALID_ARG);
    CHECK(small[0] == '\0');
    CHECK(strstr(vf_last_error(), "too small") != NULL);
    CHECK(vf_resources_to_json(&r, big, need - 1) == VF_ERR_INVALID_ARG);
    CHECK_OK(vf_resources_to_json(&r, big, need)); /* exactly enough */
    CHECK(strlen(big) + 1 == need);
    CHECK(vf_resources_to_json(NULL, big, sizeof big) == VF_ERR_INVALID_ARG);
    CHECK(vf_resources_to_json(&r, NULL, 10) == VF_ERR_INVALID_ARG);
    CHECK(vf_detect_resources(NULL) == VF_ERR_INVALID_ARG);
}

TEST_MAIN(TEST(test_meminfo_only), TEST(test_meminfo_without_available),
          TEST(test_meminfo_missing_or_bad), TEST(test_cgroup_v2_nested),
          TEST(test_cgroup_v2_limit_above_machine), TEST(test_cgroup_v2_unified),
          TEST(test_cgroup_v1), TEST(test_cgroup_v1_unlimited), TEST(test_cgroup_malformed),
          TEST(test_cuda_missing_library), TEST(test_cuda_not_a_runtime),
          TEST(test_cuda_env_override), TEST(test_detect_here), TEST(test_json_here),
          TEST(test_json_fake_gpus), TEST(test_json_errors))
