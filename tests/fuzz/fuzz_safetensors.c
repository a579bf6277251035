/* Fuzz target: bytes as a .safetensors file.
 *
 * The input is written to a scratch file and opened twice, mapped and with the
 * pread fallback; every tensor is found by name and read at both ends, and
 * the metadata looked up. A file that opens is then opened as a
 * single-file checkpoint (vf_model_open), which runs the original-layout key
 * maps, architecture detection and config inference from shapes.
 *
 * A header-only input (exactly 8 + header length bytes) is completed with zero
 * data up to the largest data_offsets end (at most 16 MiB), so real headers
 * serve as seeds without their weights; every other input is used byte for
 * byte, so truncated and padded data stay fuzzed.
 *
 * Checked beyond "no crash, no leak": a failure leaves a message naming the
 * file, and a read of an opened file never fails.
 */
#include "fuzz_util.h"
#include "io/safetensors.h"

#include <cjson/cJSON.h>
#include <fcntl.h>

#define PAD_CAP (16u << 20)
#define READ_EDGE 4096

static const char *g_path;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    g_path = strdup(vf_fuzz_path(vf_fuzz_tmpdir("st"), "input.safetensors"));
    return 0;
}

/* The zero data a header-only input needs, or 0 to use the input as it is. */
static uint64_t pad_for_header_only(const uint8_t *data, size_t size)
{
    if (size < 8)
        return 0;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | data[i];
    if (hlen != size - 8)
        return 0;
    cJSON *root = cJSON_ParseWithLength((const char *)data + 8, (size_t)hlen);
    uint64_t end = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        const cJSON *hi = cJSON_IsArray(off) ? cJSON_GetArrayItem(off, 1) : NULL;
        if (cJSON_IsNumber(hi) && hi->valuedouble > (double)end && hi->valuedouble <= PAD_CAP)
            end = (uint64_t)hi->valuedouble;
    }
    cJSON_Delete(root);
    return end;
}

/* Every tensor is found by name and read at both ends: ASan does not watch
 * mapped memory, so what matters is that the first and last bytes the header
 * promises are inside the file, on both read paths. */
static void read_all(vf_st_file *f)
{
    static unsigned char buf[2 * READ_EDGE];
    for (size_t i = 0; i < vf_st_count(f); i++) {
        const vf_st_tensor *t = vf_st_at(f, i);
        if (vf_st_find(f, t->name) != t) {
            fprintf(stderr, "fuzz: tensor '%s' listed but not found by name\n", t->name);
            abort();
        }
        vf_status st;
        if (t->nbytes <= sizeof buf) {
            st = vf_st_read(f, t, 0, buf, t->nbytes);
        } else {
            st = vf_st_read(f, t, 0, buf, READ_EDGE);
            if (st == VF_OK)
                st = vf_st_read(f, t, t->nbytes - READ_EDGE, buf + READ_EDGE, READ_EDGE);
        }
        if (st != VF_OK) {
            fprintf(stderr, "fuzz: reading '%s' of an opened file failed: %s\n", t->name,
                    vf_last_error());
            abort();
        }
    }
    (void)vf_st_metadata(f, "format");
    (void)vf_st_find(f, "");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vf_fuzz_write(g_path, data, size);
    uint64_t pad = pad_for_header_only(data, size);
    if (pad && truncate(g_path, (off_t)(size + pad)) != 0)
        abort();
    int opened = 0;
    for (int mode = 0; mode < 2; mode++) {
        vf_st_fault_no_mmap(mode);
        vf_st_file *f = NULL;
        vf_status st = vf_st_open(g_path, &f);
        vf_st_fault_no_mmap(0);
        vf_fuzz_log("vf_st_open", st);
        if (st != VF_OK) {
            vf_fuzz_check_message("vf_st_open", g_path);
            continue;
        }
        opened++;
        read_all(f);
        vf_st_close(f);
    }
    if (opened == 1) {
        fprintf(stderr, "fuzz: the file opened mapped or with pread, not both\n");
        abort();
    }
    if (opened) {
        vf_model *m = NULL;
        vf_status st = vf_model_open(g_path, NULL, &m);
        vf_fuzz_log("vf_model_open", st);
        if (st != VF_OK)
            vf_fuzz_check_message("vf_model_open", g_path);
        vf_model_close(m);
    }
    return 0;
}
