/* Fuzz target: prompt bytes through the A1111 prompt syntax and the windows.
 *
 * The parser (vf_prompt_parse) takes raw bytes; its fragments are then cut into
 * 77-token windows with the small vocabulary that `vramfit synth` writes (never
 * CLIP's). Checked beyond "no crash, no leak": a refused input leaves a
 * message; an accepted one gives at least one fragment, each NUL-terminated at
 * its length, valid UTF-8, with a finite weight (A1111 allows 0 and negatives);
 * its windows number 1..VF_PROMPT_MAX_WINDOWS (or the too-long error), start
 * with BOS, hold only ids of the vocabulary and finite weights.
 */
#include "fuzz_util.h"
#include "io/json.h"
#include "pipeline/prompt.h"
#include "pipeline/synth.h"
#include "pipeline/tokenizer.h"

#include <math.h>

static vf_tokenizer *g_tok;
static int32_t g_bos, g_eos, g_pad, g_vocab;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    g_tok = vf_fuzz_synth_tokenizer("prompt");
    vf_tokenizer_special_ids(g_tok, &g_bos, &g_eos, &g_pad);
    g_vocab = vf_tokenizer_vocab_size(g_tok);
    return 0;
}

static void fail(const char *what)
{
    fprintf(stderr, "fuzz: prompt: %s\n", what);
    abort();
}

static void check_fragments(const vf_prompt_fragments *f)
{
    if (f->n < 1)
        fail("no fragment");
    for (size_t i = 0; i < f->n; i++) {
        const vf_prompt_fragment *x = &f->items[i];
        if (x->text[x->len] != '\0' || strlen(x->text) != x->len)
            fail("fragment not NUL-terminated at its length");
        if (!vf_utf8_valid(x->text, x->len))
            fail("fragment is not valid UTF-8");
        if (!isfinite(x->weight)) /* A1111 allows zero and negative weights */
            fail("weight not finite");
    }
}

static void check_windows(const vf_prompt_fragments *f)
{
    vf_prompt_windows w = {0};
    vf_status st = vf_prompt_windows_make(g_tok, f, &w);
    if (st != VF_OK) {
        if (st != VF_ERR_INVALID_ARG && st != VF_ERR_NO_MEMORY)
            fail("windows: unexpected status");
        vf_fuzz_check_message("vf_prompt_windows_make", NULL);
        return;
    }
    if (w.n < 1 || w.n > VF_PROMPT_MAX_WINDOWS)
        fail("window count out of range");
    for (int k = 0; k < w.n; k++) {
        const int32_t *ids = w.ids + (size_t)k * VF_CONTEXT_LEN;
        const float *wt = w.weights + (size_t)k * VF_CONTEXT_LEN;
        if (ids[0] != g_bos)
            fail("window does not start with BOS");
        for (int i = 0; i < VF_CONTEXT_LEN; i++) {
            if (ids[i] < 0 || ids[i] >= g_vocab)
                fail("id outside the vocabulary");
            if (!isfinite(wt[i]))
                fail("weight not finite");
        }
    }
    vf_prompt_windows_free(&w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vf_prompt_fragments f = {0};
    if (vf_prompt_parse((const char *)data, size, &f) != VF_OK) {
        vf_fuzz_check_message("vf_prompt_parse", NULL);
        if (f.n != 0)
            fail("a refused input left fragments");
    } else {
        check_fragments(&f);
        check_windows(&f);
        vf_prompt_fragments_free(&f);
    }
    vf_prompt_fragments p = {0};
    if (vf_prompt_parse_plain((const char *)data, size, &p) == VF_OK) {
        check_fragments(&p);
        vf_prompt_fragments_free(&p);
    } else {
        vf_fuzz_check_message("vf_prompt_parse_plain", NULL);
    }
    return 0;
}
