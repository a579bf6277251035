/* Fuzz target: prompt bytes through the CLIP BPE tokenizer.
 *
 * The tokenizer is built once, at start, from the small vocabulary that
 * `vramfit synth` writes (pipeline/synth.h), never from CLIP's: its merges are
 * few, but the text clean-up, the Unicode split pattern, the byte-level
 * fallback and the cache are the same code. Each input is tokenized whole and
 * as a 77-token window.
 *
 * Checked beyond "no crash, no leak": invalid UTF-8 (and only that, or a NUL
 * inside, which ends the C string) is refused with a message; otherwise the ids
 * are BOS ... EOS, all inside the vocabulary, the count does not depend on the
 * capacity given, and the window is BOS, the first <= 75 ids, EOS, then pads.
 */
#include "fuzz_util.h"
#include "io/json.h"
#include "pipeline/synth.h"
#include "pipeline/tokenizer.h"

#include <sys/stat.h>

#define MAX_IDS 4096

static vf_tokenizer *g_tok;
static int32_t g_bos, g_eos, g_pad, g_vocab;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    g_tok = vf_fuzz_synth_tokenizer("tok");
    vf_tokenizer_special_ids(g_tok, &g_bos, &g_eos, &g_pad);
    g_vocab = vf_tokenizer_vocab_size(g_tok);
    return 0;
}

static void fail(const char *what)
{
    fprintf(stderr, "fuzz: tokenizer: %s\n", what);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int32_t ids[MAX_IDS];
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    size_t len = strlen(text);
    size_t n = 0;
    vf_status st = vf_tokenize(g_tok, text, ids, MAX_IDS, &n);
    int valid = vf_utf8_valid(text, len);
    if (st != VF_OK) {
        if (valid && len <= VF_TOKENIZER_MAX_PROMPT)
            fail("valid UTF-8 refused");
        vf_fuzz_check_message("vf_tokenize", NULL);
        free(text);
        return 0;
    }
    if (!valid)
        fail("invalid UTF-8 accepted");
    size_t m = n < MAX_IDS ? n : MAX_IDS;
    if (n < 2 || ids[0] != g_bos || (n <= MAX_IDS && ids[n - 1] != g_eos))
        fail("ids are not BOS ... EOS");
    for (size_t i = 0; i < m; i++)
        if (ids[i] < 0 || ids[i] >= g_vocab)
            fail("id outside the vocabulary");
    int32_t few[3];
    size_t n2 = 0;
    if (vf_tokenize(g_tok, text, few, 3, &n2) != VF_OK || n2 != n ||
        memcmp(few, ids, (n < 3 ? n : 3) * sizeof *few) != 0)
        fail("a smaller capacity changed the result");
    int32_t win[VF_CONTEXT_LEN];
    if (vf_tokenize_window(g_tok, text, win) != VF_OK)
        fail("window refused what vf_tokenize took");
    size_t body = n - 2 < VF_CONTEXT_LEN - 2 ? n - 2 : VF_CONTEXT_LEN - 2;
    if (win[0] != g_bos || memcmp(win + 1, ids + 1, body * sizeof *win) != 0 || win[1 + body] != g_eos)
        fail("the window is not BOS, the first ids, EOS");
    for (size_t i = 2 + body; i < VF_CONTEXT_LEN; i++)
        if (win[i] != g_pad)
            fail("the window is not padded");
    free(text);
    return 0;
}
