/* JSON and small-file helpers over cJSON (Debian's libcjson).
 *
 * Config files (model_index.json, config.json, scheduler_config.json, shard
 * indexes, vocab.json) are read whole, size-capped, checked to be UTF-8 and parsed
 * with errors that name the file. The typed getters return a default when a key
 * is absent or null and report through *bad when it has the wrong type, so that
 * a config's mistakes are errors rather than silent defaults.
 */
#ifndef VF_IO_JSON_H
#define VF_IO_JSON_H

#include "vramfit.h"

#include <cjson/cJSON.h>
#include <stddef.h>

/* Reads a whole file of at most cap bytes, NUL-terminated. */
vf_status vf_read_file(const char *path, size_t cap, char **data, size_t *len);
/* 1 when path exists and is a directory / a regular file. */
int vf_is_dir(const char *path);
int vf_is_file(const char *path);
/* Joins a and b with '/' into a new string (NULL and VF_ERR_NO_MEMORY on failure). */
char *vf_path_join(const char *a, const char *b);

/* 1 when s[0..n) is valid UTF-8 (no overlongs, no surrogates). */
int vf_utf8_valid(const char *s, size_t n);

/* Loads and parses a JSON file (cap 64 MiB) whose top level must be an object. */
vf_status vf_json_load(const char *path, cJSON **out);
/* Parses JSON text; what names the source in errors. */
vf_status vf_json_parse(const char *text, size_t len, const char *what, cJSON **out);

/* Typed getters. On a present value of the wrong type they set *bad = 1. */
double vf_json_num(const cJSON *o, const char *key, double def, int *bad);
int vf_json_bool(const cJSON *o, const char *key, int def, int *bad);
const char *vf_json_str(const cJSON *o, const char *key, const char *def, int *bad);

#endif
