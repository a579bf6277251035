/* A reference fixture's request (../shared/reference/NAME/reference.json:
 * prompt, negative prompt, steps, size, guidance, seed) and the generate
 * parameters that repeat it. Shared by the CPU and GPU pipeline parity tests;
 * header-only, like test.h. */
#ifndef VF_TEST_REF_PARAMS_H
#define VF_TEST_REF_PARAMS_H

#include "vramfit.h"

#include "io/json.h"

#include <stdint.h>
#include <stdio.h>

typedef struct ref_params {
    char prompt[256], negative[256];
    int steps, width, height;
    float guidance;
    uint64_t seed;
} ref_params;

/* 1 when NAME's reference.json reads completely (a failure to load it is
 * printed to stderr). */
static inline int read_ref_params(const char *shared, const char *name, ref_params *r)
{
    char path[512];
    cJSON *j = NULL;
    snprintf(path, sizeof path, "%s/reference/%s/reference.json", shared, name);
    if (vf_json_load(path, &j) != VF_OK) {
        fprintf(stderr, "%s\n", vf_last_error());
        return 0;
    }
    int bad = 0;
    snprintf(r->prompt, sizeof r->prompt, "%s", vf_json_str(j, "prompt", "", &bad));
    snprintf(r->negative, sizeof r->negative, "%s", vf_json_str(j, "negative_prompt", "", &bad));
    r->steps = (int)vf_json_num(j, "steps", 0, &bad);
    r->width = (int)vf_json_num(j, "width", 0, &bad);
    r->height = (int)vf_json_num(j, "height", 0, &bad);
    r->guidance = (float)vf_json_num(j, "guidance_scale", 0, &bad);
    r->seed = (uint64_t)vf_json_num(j, "seed", 0, &bad);
    cJSON_Delete(j);
    return !bad && r->steps > 0;
}

/* The reference's request as generate parameters (the strings stay r's). */
static inline void ref_to_params(const ref_params *r, vf_generate_params *p)
{
    vf_generate_params_init(p);
    p->prompt = r->prompt;
    p->negative_prompt = r->negative;
    p->steps = r->steps;
    p->guidance_scale = r->guidance;
    p->width = r->width;
    p->height = r->height;
    p->seed = r->seed;
}

#endif
