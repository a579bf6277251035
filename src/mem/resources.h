/* Resource detection, internal pieces (the public entry is vf_detect_resources).
 *
 * Each source of facts is its own function so that tests can drive it without
 * the machine's real state: RAM parsing reads every file under a root prefix
 * (a fake tree in tests, "" in production), and the CUDA probe takes the list of
 * runtime library names to try (a missing file or a non-CUDA library in tests).
 * None of them prints; none of them fails for lack of a GPU.
 */
#ifndef VF_MEM_RESOURCES_H
#define VF_MEM_RESOURCES_H

#include "vramfit.h"

typedef struct vf_ram_info {
    uint64_t total;             /* bytes: min(MemTotal, cgroup limit)                */
    uint64_t available;         /* bytes: min(MemAvailable, limit - working set)     */
    uint64_t cgroup_limit;      /* bytes: the smallest cgroup limit found; 0 if none */
    uint64_t machine_total;     /* bytes: MemTotal                                   */
    uint64_t machine_available; /* bytes: MemAvailable (MemFree on kernels without)  */
} vf_ram_info;

/* Reads <root>/proc/meminfo, <root>/proc/self/cgroup and the cgroup v2
 * (<root>/sys/fs/cgroup[/unified]/<path>/memory.{max,current,stat}) and v1
 * (<root>/sys/fs/cgroup/memory/<path>/memory.{limit_in_bytes,usage_in_bytes,stat})
 * files, walking from the process's cgroup up to the hierarchy's root and taking
 * the tightest limit. root NULL or "" means the real "/". Missing or malformed
 * cgroup files mean "no limit there"; a missing or malformed meminfo is an error
 * (VF_ERR_NOT_FOUND / VF_ERR_FORMAT) naming the file. */
vf_status vf_detect_ram_at(const char *root, vf_ram_info *out);

/* Probes CUDA through the first of libs[0..n) that loads and exports the CUDA
 * runtime API (dlopen names: a bare soname or a path), filling the
 * has_cuda, device_count, driver/runtime versions, cuda_error and devices
 * fields of r (the others are untouched). Any failure leaves has_cuda = 0,
 * device_count = 0 and cuda_error saying why. */
void vf_detect_cuda_from(const char *const *libs, int n, vf_resources *r);

/* Fills cpu_cores, cpu_name and simd. */
void vf_detect_cpu(vf_resources *r);

#endif
