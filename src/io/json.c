/* JSON and small-file helpers (see json.h). */
#include "io/json.h"
#include "core/alloc.h"
#include "core/error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define VF_JSON_CAP (64u << 20)

int vf_is_dir(const char *path)
{
    struct stat st;
    return path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int vf_is_file(const char *path)
{
    struct stat st;
    return path && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

char *vf_path_join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    int slash = la > 0 && a[la - 1] != '/';
    char *p = vf_malloc(la + lb + 2);
    if (!p)
        return NULL;
    memcpy(p, a, la);
    if (slash)
        p[la] = '/';
    memcpy(p + la + slash, b, lb + 1);
    return p;
}

vf_status vf_read_file(const char *path, size_t cap, char **data, size_t *len)
{
    *data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return vf_error(errno == ENOENT ? VF_ERR_NOT_FOUND : VF_ERR_IO, "%s: cannot open: %s",
                        path, strerror(errno));
    vf_status st = VF_OK;
    struct stat sb;
    char *buf = NULL;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = vf_error(VF_ERR_IO, "%s: not a regular file", path);
        goto out;
    }
    if ((uint64_t)sb.st_size > cap) {
        st = vf_error(VF_ERR_FORMAT, "%s: file is %lld bytes, over the %zu-byte limit", path,
                      (long long)sb.st_size, cap);
        goto out;
    }
    size_t n = (size_t)sb.st_size;
    buf = vf_malloc(n + 1);
    if (!buf) {
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "%s", path);
        goto out;
    }
    if (fread(buf, 1, n, f) != n) {
        st = vf_error(VF_ERR_IO, "%s: short read", path);
        goto out;
    }
    buf[n] = '\0';
    *data = buf;
    buf = NULL;
    if (len)
        *len = n;
out:
    vf_free(buf);
    fclose(f);
    return st;
}

int vf_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        uint32_t cp, min;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xe0) == 0xc0) { k = 1; cp = c & 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { k = 2; cp = c & 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { k = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        if (n - i < k + 1)
            return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* Python's json module writes NaN, Infinity and -Infinity (diffusers saves
 * "lambda_min_clipped": -Infinity), which strict JSON and cJSON reject. Outside
 * strings they are copied as "null", which the typed getters treat as unset:
 * the meaning diffusers gives them. dst needs room for 2 * len + 1 bytes
 * ("NaN" grows by one byte); returns the new length. */
static size_t null_out_nonfinite(char *dst, const char *t, size_t len)
{
    static const char *const words[] = {"-Infinity", "Infinity", "NaN"};
    int in_string = 0;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (in_string) {
            if (t[i] == '\\' && i + 1 < len)
                dst[o++] = t[i++];
            else if (t[i] == '"')
                in_string = 0;
            dst[o++] = t[i];
            continue;
        }
        in_string = t[i] == '"';
        size_t w = 0, n = 0;
        for (; w < sizeof words / sizeof words[0]; w++) {
            n = strlen(words[w]);
            if (len - i >= n && memcmp(t + i, words[w], n) == 0)
                break;
        }
        if (w == sizeof words / sizeof words[0]) {
            dst[o++] = t[i];
            continue;
        }
        memcpy(dst + o, "null", 4);
        o += 4;
        i += n - 1;
    }
    dst[o] = '\0';
    return o;
}

vf_status vf_json_parse(const char *text, size_t len, const char *what, cJSON **out)
{
    *out = NULL;
    if (!vf_utf8_valid(text, len))
        return vf_error(VF_ERR_FORMAT, "%s: not valid UTF-8", what);
    size_t cap;
    char *copy = vf_mul_overflow(len, 2, &cap) ? NULL : vf_malloc(cap + 1);
    if (!copy)
        return vf_error(VF_ERR_NO_MEMORY, "%s: out of memory parsing %zu bytes of JSON", what, len);
    size_t n = null_out_nonfinite(copy, text, len);
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(copy, n, &end, 0);
    size_t at = end && end >= copy ? (size_t)(end - copy) : 0;
    vf_free(copy);
    if (!j)
        return vf_error(VF_ERR_FORMAT, "%s: invalid JSON near byte %zu", what, at);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return vf_error(VF_ERR_FORMAT, "%s: JSON top level is not an object", what);
    }
    *out = j;
    return VF_OK;
}

vf_status vf_json_load(const char *path, cJSON **out)
{
    char *text;
    size_t len;
    *out = NULL;
    VF_TRY(vf_read_file(path, VF_JSON_CAP, &text, &len));
    vf_status st = vf_json_parse(text, len, path, out);
    vf_free(text);
    return st;
}

static const cJSON *get(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

double vf_json_num(const cJSON *o, const char *key, double def, int *bad)
{
    const cJSON *v = get(o, key);
    if (!v)
        return def;
    if (!cJSON_IsNumber(v)) {
        if (bad)
            *bad = 1;
        return def;
    }
    return v->valuedouble;
}

int vf_json_bool(const cJSON *o, const char *key, int def, int *bad)
{
    const cJSON *v = get(o, key);
    if (!v)
        return def;
    if (!cJSON_IsBool(v)) {
        if (bad)
            *bad = 1;
        return def;
    }
    return cJSON_IsTrue(v);
}

const char *vf_json_str(const cJSON *o, const char *key, const char *def, int *bad)
{
    const cJSON *v = get(o, key);
    if (!v)
        return def;
    if (!cJSON_IsString(v)) {
        if (bad)
            *bad = 1;
        return def;
    }
    return v->valuestring;
}
