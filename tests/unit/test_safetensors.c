/* safetensors reader and writer: round trips, a table of malformed headers that
 * must each be refused with a message naming the file (and tensor), files that
 * shrink while open, allocation failures at every step of open and write, and the
 * real reference checkpoints. Every case builds its files in its own mkdtemp dir.
 */
#include "core/alloc.h"
#include "core/dtype.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "test.h"
#include "test_tmp.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ---------------------------------------------------------------- */

static int file_exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

static void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f)
        return;
    CHECK(fwrite(data, 1, n, f) == n);
    fclose(f);
}

static void put_le64(unsigned char *b, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
}

/* Writes a safetensors file by hand: length prefix hlen (or the header's real
 * length when hlen is UINT64_MAX), the header text, and data_len bytes 0,1,2,... */
static void write_raw(const char *path, const char *header, uint64_t hlen, size_t data_len)
{
    size_t h = strlen(header);
    size_t total = 8 + h + data_len;
    unsigned char *buf = malloc(total);
    put_le64(buf, hlen == UINT64_MAX ? h : hlen);
    memcpy(buf + 8, header, h);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + h + i] = (unsigned char)i;
    write_bytes(path, buf, total);
    free(buf);
}

static int has(const char *needle) { return !needle || strstr(vf_last_error(), needle) != NULL; }

/* Opens path expecting failure with status want and a message containing the
 * file's name and each needle. */
static void expect_fail(const char *label, const char *path, vf_status want, const char *n1,
                        const char *n2)
{
    vf_st_file *f = (vf_st_file *)(uintptr_t)1;
    vf_clear_error();
    vf_status st = vf_st_open(path, &f);
    CHECK_MSG(st == want, "%s: status %s, want %s (%s)", label, vf_status_str(st),
              vf_status_str(want), vf_last_error());
    CHECK_MSG(f == NULL, "%s: out not NULL on failure", label);
    CHECK_MSG(has(path), "%s: message lacks the path: %s", label, vf_last_error());
    CHECK_MSG(has(n1) && has(n2), "%s: message lacks '%s' / '%s': %s", label, n1 ? n1 : "",
              n2 ? n2 : "", vf_last_error());
    if (st == VF_OK)
        vf_st_close(f);
}

static vf_st_write_tensor wt(const char *name, vf_dtype dt, int ndim, const int64_t *shape,
                             const void *data)
{
    vf_st_write_tensor t;
    memset(&t, 0, sizeof t);
    t.name = name;
    t.dtype = dt;
    t.ndim = ndim;
    memcpy(t.shape, shape, sizeof(int64_t) * (size_t)ndim);
    t.data = data;
    return t;
}

static uint64_t header_len_of(const char *path)
{
    unsigned char b[8] = {0};
    FILE *f = fopen(path, "rb");
    if (f) {
        CHECK(fread(b, 1, 8, f) == 8);
        fclose(f);
    }
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | b[i];
    return v;
}

/* ---- round trip --------------------------------------------------------------- */

static const float k_w[6] = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, -7.0f};
static const int64_t k_ids[2] = {-5, 1LL << 40};

static vf_status write_sample(const char *path, uint16_t *h)
{
    static const int64_t s23[2] = {2, 3}, s4[1] = {4}, s112[3] = {1, 1, 2}, s0[1] = {0};
    for (int i = 0; i < 4; i++)
        h[i] = vf_f32_to_f16((float)i * 0.5f);
    vf_st_write_tensor ts[4] = {
        wt("model.w", VF_DTYPE_F32, 2, s23, k_w),
        wt("half \"quoted\\\" \n", VF_DTYPE_F16, 1, s4, h),
        wt("ids", VF_DTYPE_I64, 3, s112, k_ids),
        wt("empty", VF_DTYPE_U8, 1, s0, NULL),
    };
    const char *meta[] = {"format", "pt", "note", "a \"quote\" \\ and\ttab", NULL};
    return vf_st_write(path, ts, 4, meta);
}

static void check_sample(vf_st_file *f, const uint16_t *h)
{
    CHECK(vf_st_count(f) == 4);
    /* File order is the write order. */
    static const char *order[4] = {"model.w", "half \"quoted\\\" \n", "ids", "empty"};
    for (size_t i = 0; i < 4; i++) {
        const vf_st_tensor *t = vf_st_at(f, i);
        CHECK(t && strcmp(t->name, order[i]) == 0);
        CHECK(t && vf_st_find(f, order[i]) == t);
    }
    CHECK(vf_st_at(f, 4) == NULL);
    CHECK(vf_st_find(f, "missing") == NULL);
    CHECK(vf_st_find(f, "model") == NULL);

    const vf_st_tensor *w = vf_st_find(f, "model.w");
    CHECK(w && w->dtype == VF_DTYPE_F32 && w->ndim == 2 && w->shape[0] == 2 && w->shape[1] == 3);
    CHECK(w && w->offset == 0 && w->nbytes == 24);
    float got[6] = {0};
    CHECK_OK(vf_st_read(f, w, 0, got, sizeof got));
    CHECK(memcmp(got, k_w, sizeof got) == 0);
    float part[2] = {0};
    CHECK_OK(vf_st_read(f, w, 8, part, 8));
    CHECK(part[0] == k_w[2] && part[1] == k_w[3]);
    CHECK_OK(vf_st_read(f, w, 24, part, 0));

    const vf_st_tensor *ht = vf_st_find(f, "half \"quoted\\\" \n");
    uint16_t hg[4] = {0};
    CHECK(ht && ht->dtype == VF_DTYPE_F16 && ht->offset == 24 && ht->nbytes == 8);
    CHECK_OK(vf_st_read(f, ht, 0, hg, 8));
    CHECK(memcmp(hg, h, 8) == 0);
    CHECK(vf_f16_to_f32(hg[3]) == 1.5f);

    const vf_st_tensor *it = vf_st_find(f, "ids");
    int64_t ig[2] = {0};
    CHECK(it && it->ndim == 3 && it->shape[2] == 2 && it->offset == 32);
    CHECK_OK(vf_st_read(f, it, 0, ig, 16));
    CHECK(ig[0] == -5 && ig[1] == (1LL << 40));

    const vf_st_tensor *e = vf_st_find(f, "empty");
    CHECK(e && e->nbytes == 0 && e->offset == 48 && e->ndim == 1 && e->shape[0] == 0);
    CHECK_OK(vf_st_read(f, e, 0, NULL, 0));

    CHECK(vf_st_metadata(f, "format") && strcmp(vf_st_metadata(f, "format"), "pt") == 0);
    CHECK(vf_st_metadata(f, "note") &&
          strcmp(vf_st_metadata(f, "note"), "a \"quote\" \\ and\ttab") == 0);
    CHECK(vf_st_metadata(f, "absent") == NULL);

    /* Reads outside the tensor are the caller's error, named. */
    vf_clear_error();
    CHECK(vf_st_read(f, w, 20, part, 8) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "'model.w'") != NULL);
    CHECK(vf_st_read(f, w, UINT64_MAX, part, 2) == VF_ERR_INVALID_ARG);
    vf_st_tensor foreign = *w;
    CHECK(vf_st_read(f, &foreign, 0, part, 4) == VF_ERR_INVALID_ARG);
}

static void test_round_trip(void)
{
    tmpd d;
    if (!tmp_open(&d, "st"))
        return;
    const char *p = tmp_path(&d, "rt.safetensors");
    uint16_t h[4];
    CHECK_OK(write_sample(p, h));
    char tmp[TMP_PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    CHECK(!file_exists(tmp));
    uint64_t hl = header_len_of(p);
    CHECK(hl % 8 == 0 && hl > 0);
    for (int mode = 0; mode < 2; mode++) {
        vf_st_fault_no_mmap(mode);
        vf_st_file *f = NULL;
        CHECK_OK(vf_st_open(p, &f));
        if (!f)
            continue;
        CHECK(vf_st_is_mapped(f) == !mode);
        CHECK(strcmp(vf_st_path(f), p) == 0);
        CHECK(vf_st_file_size(f) == 8 + hl + 48);
        check_sample(f, h);
        vf_st_close(f);
    }
    vf_st_fault_no_mmap(0);
    /* Rewriting replaces the file whole. */
    static const int64_t s1[1] = {1};
    vf_st_write_tensor one = wt("x", VF_DTYPE_F32, 1, s1, k_w);
    CHECK_OK(vf_st_write(p, &one, 1, NULL));
    vf_st_file *f = NULL;
    CHECK_OK(vf_st_open(p, &f));
    CHECK(f && vf_st_count(f) == 1 && vf_st_metadata(f, "format") == NULL);
    vf_st_close(f);
    /* No tensors at all is a valid file. */
    CHECK_OK(vf_st_write(p, NULL, 0, NULL));
    CHECK_OK(vf_st_open(p, &f));
    CHECK(f && vf_st_count(f) == 0 && vf_st_find(f, "x") == NULL && vf_st_at(f, 0) == NULL);
    vf_st_close(f);
    tmp_close(&d);
}

/* Many names, written in a scrambled order: find must locate each. */
static void test_many_tensors(void)
{
    tmpd d;
    if (!tmp_open(&d, "st"))
        return;
    enum { N = 300 };
    static char names[N][32];
    static float vals[N];
    vf_st_write_tensor ts[N];
    static const int64_t s1[1] = {1};
    for (int i = 0; i < N; i++) {
        int k = (i * 7919) % N;
        snprintf(names[i], sizeof names[i], "blk.%d.w%d", k % 17, k);
        vals[i] = (float)k;
        ts[i] = wt(names[i], VF_DTYPE_F32, 1, s1, &vals[i]);
    }
    const char *p = tmp_path(&d, "many.safetensors");
    CHECK_OK(vf_st_write(p, ts, N, NULL));
    vf_st_file *f = NULL;
    CHECK_OK(vf_st_open(p, &f));
    if (f) {
        CHECK(vf_st_count(f) == N);
        int bad = 0;
        for (int i = 0; i < N; i++) {
            const vf_st_tensor *t = vf_st_find(f, names[i]);
            float v = -1;
            if (!t || vf_st_read(f, t, 0, &v, 4) != VF_OK || v != vals[i] ||
                vf_st_at(f, (size_t)i) != t)
                bad++;
        }
        CHECK_MSG(bad == 0, "%d of %d tensors not found or wrong", bad, N);
        vf_st_close(f);
    }
    tmp_close(&d);
}

/* Valid files that a careless reader might refuse. */
static void test_valid_edge_cases(void)
{
    tmpd d;
    if (!tmp_open(&d, "st"))
        return;
    const char *p = tmp_path(&d, "edge.safetensors");
    /* JSON order differs from file order; zero-sized tensors at shared offsets;
     * a scalar; padding after the object. */
    write_raw(p,
              "{ \"s\": {\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[4,5]},\n"
              "  \"z1\": {\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},\n"
              "  \"first\": {\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]},\n"
              "  \"z0\": {\"dtype\":\"BF16\",\"shape\":[3,0],\"data_offsets\":[0,0]},\n"
              "  \"__metadata__\": {},\n"
              "  \"z2\": {\"dtype\":\"BOOL\",\"shape\":[0,2.0],\"data_offsets\":[5,5]} }   \n\t ",
              UINT64_MAX, 5);
    vf_st_file *f = NULL;
    CHECK_OK(vf_st_open(p, &f));
    if (f) {
        CHECK(vf_st_count(f) == 5);
        uint64_t last = 0;
        for (size_t i = 0; i < vf_st_count(f); i++) {
            CHECK(vf_st_at(f, i)->offset >= last);
            last = vf_st_at(f, i)->offset;
        }
        CHECK(strcmp(vf_st_at(f, 0)->name, "z0") == 0);
        CHECK(strcmp(vf_st_at(f, 1)->name, "first") == 0);
        const vf_st_tensor *s = vf_st_find(f, "s");
        unsigned char b = 0;
        CHECK(s && s->ndim == 0 && s->nbytes == 1);
        CHECK_OK(vf_st_read(f, s, 0, &b, 1));
        CHECK(b == 4);
        CHECK(vf_st_find(f, "z2") && vf_st_find(f, "z2")->shape[1] == 2);
        vf_st_close(f);
    }
    write_raw(p, "{}", UINT64_MAX, 0);
    CHECK_OK(vf_st_open(p, &f));
    CHECK(f && vf_st_count(f) == 0);
    vf_st_close(f);
    tmp_close(&d);
}

/* ---- malformed headers ------------------------------------------------------ */

typedef struct {
    const char *label;
    const char *header;
    size_t data_len;
    const char *tensor; /* expected in the message as 'name', or NULL */
    const char *phrase; /* expected in the message */
} bad_case;

#define T(name, body) "\"" name "\":{" body "}"
#define F32x(shape, b, e) "\"dtype\":\"F32\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]"

static const bad_case k_bad[] = {
    {"not JSON", "{\"a\":", 0, NULL, "invalid JSON"},
    {"empty header", "", 0, NULL, "invalid JSON"},
    {"JSON array", "[1,2]", 0, NULL, "not an object"},
    {"JSON string", "\"x\"", 0, NULL, "not an object"},
    {"invalid UTF-8", "{\"a\xff\":{}}", 0, NULL, "UTF-8"},
    {"overlong UTF-8", "{\"a\xc0\xaf\":{}}", 0, NULL, "UTF-8"},
    {"text after object", "{} x", 0, NULL, "text after"},
    {"second object", "{}{}", 0, NULL, "text after"},
    {"entry not object", "{\"w\":5}", 0, "'w'", "not an object"},
    {"unknown dtype", "{" T("w", "\"dtype\":\"F12\",\"shape\":[1],\"data_offsets\":[0,4]") "}", 4,
     "'w'", "unknown dtype 'F12'"},
    {"dtype lower case", "{" T("w", "\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]") "}",
     4, "'w'", "unknown dtype"},
    {"dtype not string", "{" T("w", "\"dtype\":1,\"shape\":[1],\"data_offsets\":[0,4]") "}", 4,
     "'w'", "dtype is not a string"},
    {"missing dtype", "{" T("w", "\"shape\":[1],\"data_offsets\":[0,4]") "}", 4, "'w'",
     "missing \"dtype\""},
    {"missing shape", "{" T("w", "\"dtype\":\"F32\",\"data_offsets\":[0,4]") "}", 4, "'w'",
     "missing \"shape\""},
    {"missing data_offsets", "{" T("w", "\"dtype\":\"F32\",\"shape\":[1]") "}", 4, "'w'",
     "missing \"data_offsets\""},
    {"shape negative", "{" T("w", F32x("[-1]", 0, 4)) "}", 4, "'w'", "shape dimension 0"},
    {"shape non-integer", "{" T("w", F32x("[2, 1.5]", 0, 12)) "}", 12, "'w'", "shape dimension 1"},
    {"shape string dim", "{" T("w", F32x("[\"2\"]", 0, 8)) "}", 8, "'w'", "shape dimension 0"},
    {"shape huge dim", "{" T("w", F32x("[1e300]", 0, 8)) "}", 8, "'w'", "shape dimension 0"},
    {"shape not array", "{" T("w", F32x("3", 0, 12)) "}", 12, "'w'", "shape is not an array"},
    {"shape 9 dims", "{" T("w", F32x("[1,1,1,1,1,1,1,1,1]", 0, 4)) "}", 4, "'w'",
     "9 dimensions"},
    {"shape overflow", "{" T("w", F32x("[1099511627776,1099511627776]", 0, 4)) "}", 4, "'w'",
     "overflows"},
    {"shape dim over 2^53", "{" T("w", F32x("[4611686018427387904]", 0, 4)) "}", 4, "'w'",
     "not an integer in [0, 2^53]"},
    {"shape overflow numel", "{" T("w", F32x("[4503599627370496,4096]", 0, 4)) "}", 4, "'w'",
     "overflows"},
    {"shape overflow bytes", "{" T("w", F32x("[4503599627370496,1024]", 0, 4)) "}", 4, "'w'",
     "overflows"},
    {"offsets one number", "{" T("w", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]") "}",
     4, "'w'", "data_offsets is not a pair"},
    {"offsets three numbers",
     "{" T("w", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]") "}", 8, "'w'",
     "data_offsets is not a pair"},
    {"offsets strings",
     "{" T("w", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",\"4\"]") "}", 4, "'w'",
     "data_offsets is not a pair"},
    {"offsets object",
     "{" T("w", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{\"a\":0,\"b\":4}") "}", 4,
     "'w'", "data_offsets is not a pair"},
    {"offsets negative", "{" T("w", F32x("[1]", -4, 0)) "}", 4, "'w'", "not a pair"},
    {"offsets fractional", "{" T("w", F32x("[0]", 0.5, 0.5)) "}", 4, "'w'", "not a pair"},
    {"offsets end < begin", "{" T("w", F32x("[0]", 8, 4)) "}", 8, "'w'", "end before"},
    {"offsets do not match shape", "{" T("a.weight", F32x("[2, 3]", 0, 10)) "}", 10, "'a.weight'",
     "data_offsets [0, 10] do not match shape [2, 3] of F32 (24 bytes)"},
    {"offsets overlapping",
     "{" T("a", F32x("[2]", 0, 8)) "," T("b", F32x("[2]", 4, 12)) "}", 12, "'b'",
     "overlap tensor 'a'"},
    {"offsets inside another",
     "{" T("a", F32x("[4]", 0, 16)) "," T("b", F32x("[1]", 4, 8)) ","
         T("c", F32x("[2]", 8, 16)) "}",
     16, "'b'", "overlap tensor 'a'"},
    {"offsets with a gap",
     "{" T("a", F32x("[1]", 0, 4)) "," T("b", F32x("[1]", 8, 12)) "}", 12, "'b'",
     "gap of 4 bytes after tensor 'a'"},
    {"offsets gap at start", "{" T("a", F32x("[1]", 4, 8)) "}", 8, "'a'",
     "gap of 4 bytes after the start"},
    {"offsets past the end", "{" T("a", F32x("[1]", 0, 4)) "," T("b", F32x("[2]", 4, 12)) "}", 8,
     "'b'", "past the end of the data"},
    {"trailing bytes", "{" T("a", F32x("[1]", 0, 4)) "}", 6, NULL, "2 trailing bytes"},
    {"data but no tensors", "{}", 3, NULL, "3 trailing bytes"},
    {"duplicate names", "{" T("a", F32x("[1]", 0, 4)) "," T("a", F32x("[1]", 4, 8)) "}", 8, "'a'",
     "more than once"},
    {"duplicate names same offsets",
     "{" T("a", F32x("[1]", 0, 4)) "," T("a", F32x("[1]", 0, 4)) "}", 4, "'a'", "more than once"},
    {"metadata not object", "{\"__metadata__\":\"x\"}", 0, NULL, "__metadata__ is not an object"},
    {"metadata array", "{\"__metadata__\":[\"a\",\"b\"]}", 0, NULL,
     "__metadata__ is not an object"},
    {"metadata number value", "{\"__metadata__\":{\"ok\":\"1\",\"epochs\":3}}", 0, "'epochs'",
     "not a string"},
    {"metadata null value", "{\"__metadata__\":{\"n\":null}}", 0, "'n'", "not a string"},
    {"metadata object value", "{\"__metadata__\":{\"o\":{}}}", 0, "'o'", "not a string"},
    {"metadata twice", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, NULL, "appears twice"},
    {"metadata key twice", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, "'k'",
     "appears twice"},
};

static void test_malformed_headers(void)
{
    tmpd d;
    if (!tmp_open(&d, "st"))
        return;
    size_t n = sizeof k_bad / sizeof k_bad[0];
    for (size_t i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "bad-%02zu.safetensors", i);
        const char *p = tmp_path(&d, name);
        write_raw(p, k_bad[i].header, UINT64_MAX, k_bad[i].data_len);
        expect_fail(k_bad[i].label, p, VF_ERR_FORMAT, k_bad[i].tensor, k_bad[i].phrase);
        /* The same bytes through the pread path give the same verdict. */
        vf_st_fault_no_mmap(1);
        expect_fail(k_bad[i].label, p, VF_ERR_FORMAT, k_bad[i].tensor, k_bad[i].phrase);
        vf_st_fault_no_mmap(0);
    }
    CHECK(n >= 40);
    tmp_close(&d);
}

/* Faults in the length prefix and in the file as a whole. */
static void test_malformed_files(void)
{
    tmpd d;
    if (!tmp_open(&d, "st"))
        return;
    const char *p = tmp_path(&d, "short.safetensors");
    write_bytes(p, "\x02\0\0\0\0", 5);
    expect_fail("5-byte file", p, VF_ERR_FORMAT, "5 bytes", "too short");
    write_bytes(p, "", 0);
    expect_fail("empty file", p, VF_ERR_FORMAT, "0 bytes", "too short");

    p = tmp_path(&d, "past-end.safetensors");
    write_raw(p, "{}      ", 100, 0);
    expect_fail("header length past end", p, VF_ERR_FORMAT, "header length 100",
                "past the end of the file");
    write_raw(p, "{}      ", 9, 0);
    expect_fail("header length one past end", p, VF_ERR_FORMAT, "header length 9",
                "past the end of the file");
    write_raw(p, "{}", UINT64_MAX - 3, 0);
    expect_fail("header length near 2^64", p, VF_ERR_FORMAT, "over the", "limit");

    /* A header over the cap in a file that really is that long (sparse). */
    p = tmp_path(&d, "huge-header.safetensors");
    write_raw(p, "{}", (uint64_t)VF_ST_HEADER_CAP + 8, 0);
    CHECK(truncate(p, (off_t)VF_ST_HEADER_CAP + 64) == 0);
    expect_fail("header over the cap", p, VF_ERR_FORMAT, "104857608", "over the");
    /* Exactly at the cap is allowed: the failure is then the padding, not the size. */
    write_raw(p, "{}", (uint64_t)VF_ST_HEADER_CAP, 0);
    CHECK(truncate(p, (off_t)VF_ST_HEADER_CAP + 8) == 0);
    expect_fail("header at the cap", p, VF_ERR_FORMAT, "header", "text after");

    /* A valid file whose data was cut short. */
    p = tmp_path(&d, "cut.safetensors");
    static const int64_t s4[1] = {4};
    vf_st_write_tensor ts[2] = {wt("first", VF_DTYPE_F32, 1, s4, k_w),
                                wt("second", VF_DTYPE_F32, 1, s4, k_w)};
    CHECK_OK(vf_st_write(p, ts, 2, NULL));
    uint64_t hl = header_len_of(p);
    CHECK(truncate(p, (off_t)(8 + hl + 20)) == 0);
    expect_fail("truncated data", p, VF_ERR_FORMAT, "'second'", "past the end of the data");
    CHECK(truncate(p, (off_t)(8 + hl - 3)) == 0);
    expect_fail("truncated header", p, VF_ERR_FORMAT, "header length", "past the end of the file");

    p = tmp_path(&d, "absent.safetensors");
    expect_fail("missing file", p, VF_ERR_NOT_FOUND, "cannot open", NULL);
    expect_fail("directory", d.dir, VF_ERR_IO, "not a regular file", NULL);
    tmp_close(&d);
}

/* ---- files changed while open ---------------------------------------------- */

static void test_truncated_while_open(void)
{
    tmpd d;
    if (!tmp_open(&d, "st"))
        return;
    enum { BIG = 8192 };
    static float big[BIG];
    for (int i = 0; i < BIG; i++)
        big[i] = (float)i;
    static const int64_t sb[1] = {BIG}, s4[1] = {4};
    for (int mode = 0; mode < 2; mode++) {
        const char *p = tmp_path(&d, mode ? "shrink-pread.safetensors" : "shrink-mmap.safetensors");
        vf_st_write_tensor ts[2] = {wt("big", VF_DTYPE_F32, 1, sb, big),
                                    wt("tail", VF_DTYPE_F32, 1, s4, k_w)};
        CHECK_OK(vf_st_write(p, ts, 2, NULL));
        uint64_t hl = header_len_of(p);
        vf_st_fault_no_mmap(mode);
        vf_st_file *f = NULL;
        CHECK_OK(vf_st_open(p, &f));
        vf_st_fault_no_mmap(0);
        if (!f)
            continue;
        CHECK(vf_st_is_mapped(f) == !mode);
        const vf_st_tensor *tb = vf_st_find(f, "big"), *tt = vf_st_find(f, "tail");
        CHECK(tb && tt);
        if (!tb || !tt) {
            vf_st_close(f);
            continue;
        }
        int fd2 = open(p, O_RDWR);
        CHECK(fd2 >= 0);
        /* Keep the header and the first 100 bytes of "big". */
        CHECK(ftruncate(fd2, (off_t)(8 + hl + 100)) == 0);
        float got[BIG];
        /* Bytes still in the file are refused too: the file changed. */
        CHECK(vf_st_read(f, tb, 0, got, 100) == VF_ERR_IO);
        CHECK(strstr(vf_last_error(), "'big'") && strstr(vf_last_error(), "changed"));
        vf_clear_error();
        CHECK(vf_st_read(f, tb, 0, got, sizeof got) == VF_ERR_IO);
        CHECK(strstr(vf_last_error(), p) && strstr(vf_last_error(), "'big'") &&
              strstr(vf_last_error(), "truncated"));
        CHECK(vf_st_read(f, tt, 0, got, 16) == VF_ERR_IO);
        CHECK(strstr(vf_last_error(), "'tail'") && strstr(vf_last_error(), "truncated"));
        CHECK(ftruncate(fd2, 0) == 0);
        CHECK(vf_st_read(f, tb, 0, got, 4) == VF_ERR_IO);
        CHECK(vf_st_read(f, tb, 4000, got, 4) == VF_ERR_IO);
        /* Growing back (zeros) puts the range in bounds again: no fault, but
         * the file is not the one opened, so reads are refused. */
        CHECK(ftruncate(fd2, (off_t)vf_st_file_size(f)) == 0);
        CHECK(vf_st_read(f, tt, 0, got, 16) == VF_ERR_IO);
        CHECK(strstr(vf_last_error(), "'tail'") && strstr(vf_last_error(), "changed"));
        close(fd2);
        vf_st_close(f);

        /* Replacing the file by rename keeps the open one's bytes. */
        CHECK_OK(vf_st_write(p, ts, 2, NULL));
        CHECK_OK(vf_st_open(p, &f));
        if (!f)
            continue;
        vf_st_write_tensor other = wt("other", VF_DTYPE_F32, 1, s4, k_w);
        CHECK_OK(vf_st_write(p, &other, 1, NULL));
        tb = vf_st_find(f, "big");
        CHECK(tb != NULL);
        if (tb) {
            CHECK_OK(vf_st_read(f, tb, 0, got, sizeof got));
            CHECK(memcmp(got, big, sizeof got) == 0);
        }
        vf_st_close(f);
    }
    tmp_close(&d);
}

/* ---- writer errors ----------------------------------------------------------- */

static void test_write_errors(void)
{
    tmpd d;
    if (!tmp_open(&d, "st"))
        return;
    static const int64_t s1[1] = {1}, sneg[1] = {-1};
    const char *p = tmp_path(&d, "w.safetensors");
    vf_st_write_tensor dup[2] = {wt("a", VF_DTYPE_F32, 1, s1, k_w),
                                 wt("a", VF_DTYPE_F32, 1, s1, k_w)};
    CHECK(vf_st_write(p, dup, 2, NULL) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), p) && strstr(vf_last_error(), "'a'"));
    CHECK(!file_exists(p));
    vf_st_write_tensor meta_name = wt("__metadata__", VF_DTYPE_F32, 1, s1, k_w);
    CHECK(vf_st_write(p, &meta_name, 1, NULL) == VF_ERR_INVALID_ARG);
    vf_st_write_tensor neg = wt("n", VF_DTYPE_F32, 1, sneg, k_w);
    CHECK(vf_st_write(p, &neg, 1, NULL) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "'n'") != NULL);
    vf_st_write_tensor nodata = wt("n", VF_DTYPE_F32, 1, s1, NULL);
    CHECK(vf_st_write(p, &nodata, 1, NULL) == VF_ERR_INVALID_ARG);
    vf_st_write_tensor badutf = wt("\xff", VF_DTYPE_F32, 1, s1, k_w);
    CHECK(vf_st_write(p, &badutf, 1, NULL) == VF_ERR_INVALID_ARG);
    vf_st_write_tensor ok = wt("ok", VF_DTYPE_F32, 1, s1, k_w);
    CHECK_OK(vf_st_write(p, &ok, 1, NULL));
    /* Failed writes leave the existing file as it was. */
    const char *odd_meta[] = {"k", NULL};
    CHECK(vf_st_write(p, &ok, 1, odd_meta) == VF_ERR_INVALID_ARG);
    CHECK(strstr(vf_last_error(), "'k'") != NULL);
    const char *bad_meta[] = {"k", "\xfe", NULL};
    CHECK(vf_st_write(p, &ok, 1, bad_meta) == VF_ERR_INVALID_ARG);
    CHECK(vf_st_write(p, dup, 2, NULL) == VF_ERR_INVALID_ARG);
    vf_st_file *f = NULL;
    CHECK_OK(vf_st_open(p, &f));
    CHECK(f && vf_st_count(f) == 1 && vf_st_find(f, "ok"));
    vf_st_close(f);
    const char *nodir = tmp_path(&d, "no/such/dir/x.safetensors");
    char keep[TMP_PATH_MAX];
    snprintf(keep, sizeof keep, "%s", nodir);
    CHECK(vf_st_write(keep, &ok, 1, NULL) == VF_ERR_IO);
    CHECK(strstr(vf_last_error(), keep) != NULL);
    tmp_close(&d);
}

/* ---- allocation failures ------------------------------------------------------ */

static void test_alloc_failures(void)
{
    tmpd d;
    if (!tmp_open(&d, "st"))
        return;
    const char *p0 = tmp_path(&d, "fault.safetensors");
    char p[TMP_PATH_MAX];
    snprintf(p, sizeof p, "%s", p0);
    uint16_t h[4];

    /* Writing: every failure leaves neither the file nor its .tmp. */
    char tmp[TMP_PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    int write_failures = 0, wrote = 0;
    for (uint64_t n = 1; n < 200 && !wrote; n++) {
        vf_fault_alloc_fail_at(n);
        vf_status st = write_sample(p, h);
        vf_fault_alloc_fail_at(0);
        if (st == VF_OK) {
            wrote = 1;
            break;
        }
        write_failures++;
        CHECK_MSG(st == VF_ERR_NO_MEMORY, "write fail at %llu: %s", (unsigned long long)n,
                  vf_last_error());
        CHECK(strstr(vf_last_error(), p) != NULL);
        CHECK(!file_exists(p) && !file_exists(tmp));
    }
    CHECK(wrote && write_failures >= 2);

    /* Opening: each failing step reports, leaks nothing; the first success works. */
    for (int mode = 0; mode < 2; mode++) {
        vf_st_fault_no_mmap(mode);
        int failures = 0, opened = 0;
        for (uint64_t n = 1; n < 200; n++) {
            vf_st_file *f = (vf_st_file *)(uintptr_t)1;
            vf_fault_alloc_fail_at(n);
            vf_status st = vf_st_open(p, &f);
            vf_fault_alloc_fail_at(0);
            if (st == VF_OK) {
                opened = 1;
                check_sample(f, h);
                vf_st_close(f);
                break;
            }
            failures++;
            CHECK_MSG(st == VF_ERR_NO_MEMORY, "open fail at %llu: %s", (unsigned long long)n,
                      vf_last_error());
            CHECK(f == NULL);
            CHECK_MSG(strstr(vf_last_error(), p) != NULL, "no path in: %s", vf_last_error());
        }
        CHECK(opened && failures >= 5);
    }
    vf_st_fault_no_mmap(0);
    tmp_close(&d);
}

/* ---- the reference checkpoints -------------------------------------------------- */

static void test_shared_fixtures(void)
{
    const char *shared = vf_test_shared();
    if (!shared) {
        printf("skip test_shared_fixtures: no shared reference tree (set VF_SHARED)\n");
        return;
    }
    char p[1024];
    snprintf(p, sizeof p, "%s/reference/tiny-sdxl/tiny-sdxl.safetensors", shared);
    vf_st_file *f = NULL;
    CHECK_OK(vf_st_open(p, &f));
    if (f) {
        CHECK(vf_st_count(f) == 865);
        uint64_t hl = header_len_of(p), at = 0;
        int tiled = 1;
        for (size_t i = 0; i < vf_st_count(f); i++) {
            const vf_st_tensor *t = vf_st_at(f, i);
            tiled &= t->offset == at && vf_st_find(f, t->name) == t;
            at = t->offset + t->nbytes;
        }
        CHECK(tiled && 8 + hl + at == vf_st_file_size(f));
        const vf_st_tensor *t = vf_st_find(f, "model.diffusion_model.time_embed.2.weight");
        CHECK(t && t->dtype == VF_DTYPE_F16 && t->ndim == 2 && t->shape[0] == 64 &&
              t->shape[1] == 64 && t->nbytes == 8192);
        /* The mapped bytes equal what stdio reads at the same place. */
        const vf_st_tensor *pe = vf_st_find(f, "conditioner.embedders.0.transformer.text_model."
                                               "embeddings.position_embedding.weight");
        CHECK(pe && pe->offset == 0 && pe->shape[0] == 77 && pe->shape[1] == 16);
        if (pe) {
            unsigned char a[2464], b[2464];
            CHECK_OK(vf_st_read(f, pe, 0, a, sizeof a));
            FILE *fp = fopen(p, "rb");
            CHECK(fp && fseek(fp, (long)(8 + hl), SEEK_SET) == 0 &&
                  fread(b, 1, sizeof b, fp) == sizeof b);
            if (fp)
                fclose(fp);
            CHECK(memcmp(a, b, sizeof a) == 0);
        }
        vf_st_close(f);
    }
    static const char *others[] = {
        "tiny-sdxl/reference.safetensors",
        "tiny-sdxl/diffusers/unet/diffusion_pytorch_model.safetensors",
        "tiny-sdxl/diffusers/vae/diffusion_pytorch_model.safetensors",
        "tiny-sdxl/diffusers/text_encoder/model.safetensors",
        "tiny-sdxl/diffusers/text_encoder_2/model.safetensors",
        "tiny-sd15/tiny-sd15.safetensors",
        "tiny-sd15/reference.safetensors",
        "tiny-sd15/diffusers/unet/diffusion_pytorch_model.safetensors",
    };
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        snprintf(p, sizeof p, "%s/reference/%s", shared, others[i]);
        CHECK_OK(vf_st_open(p, &f));
        if (!f)
            continue;
        CHECK_MSG(vf_st_count(f) > 10, "%s: %zu tensors", p, vf_st_count(f));
        if (i == 0) {
            const char *seed = vf_st_metadata(f, "seed");
            const char *sched = vf_st_metadata(f, "scheduler");
            CHECK(seed && strcmp(seed, "1234") == 0);
            CHECK(sched && strcmp(sched, "EulerDiscreteScheduler") == 0);
            const vf_st_tensor *img = vf_st_find(f, "image");
            CHECK(img && img->dtype == VF_DTYPE_F32 && img->ndim == 3 && img->shape[2] == 3);
        }
        if (i == 1)
            CHECK(vf_st_metadata(f, "format") && strcmp(vf_st_metadata(f, "format"), "pt") == 0);
        vf_st_close(f);
    }
}

TEST_MAIN(TEST(test_round_trip), TEST(test_many_tensors), TEST(test_valid_edge_cases),
          TEST(test_malformed_headers), TEST(test_malformed_files), TEST(test_truncated_while_open),
          TEST(test_write_errors), TEST(test_alloc_failures), TEST(test_shared_fixtures))
