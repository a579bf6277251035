/* Fuzz target: tokenizer files (vocab.json, merges.txt, tokenizer_config.json).
 *
 * Tokenizer folders come with downloaded models, so they are untrusted input
 * like the weights. An input is the three files back to back, separated by NUL
 * bytes (vocab.json, merges.txt, and optionally tokenizer_config.json); they
 * are written to the scratch folder and loaded with vf_tokenizer_load_files.
 * A tokenizer that loads then tokenizes a few fixed prompts (ASCII, accents,
 * CJK, emoji, special-token text).
 *
 * Checked beyond "no crash, no leak": a failure leaves a message naming the
 * file at fault; a loaded tokenizer gives BOS ... EOS with every id inside
 * its vocabulary, and pads a window with its pad id.
 */
#include "fuzz_util.h"

static const char *g_dir;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    g_dir = strdup(vf_fuzz_tmpdir("tokf"));
    return 0;
}

static void fail(const char *what)
{
    fprintf(stderr, "fuzz: tokenizer files: %s\n", what);
    abort();
}

static void use(vf_tokenizer *t)
{
    static const char *const prompts[] = {
        "a photo of a cat, 4k", "Ünïcödé straße", "日本語 한국어", "emoji 🐱🏳️‍🌈", "<|startoftext|>x<|endoftext|>",
        "it's don't", "",
    };
    int32_t bos, eos, pad, n = vf_tokenizer_vocab_size(t);
    vf_tokenizer_special_ids(t, &bos, &eos, &pad);
    if (bos < 0 || bos >= n || eos < 0 || eos >= n || pad < 0 || pad >= n)
        fail("a special id outside the vocabulary");
    for (size_t i = 0; i < sizeof prompts / sizeof prompts[0]; i++) {
        int32_t ids[256], win[VF_CONTEXT_LEN];
        size_t k = 0;
        if (vf_tokenize(t, prompts[i], ids, 256, &k) != VF_OK)
            fail("a valid prompt was refused");
        if (k < 2 || ids[0] != bos || (k <= 256 && ids[k - 1] != eos))
            fail("ids are not BOS ... EOS");
        for (size_t j = 0; j < k && j < 256; j++)
            if (ids[j] < 0 || ids[j] >= n)
                fail("an id outside the vocabulary");
        if (vf_tokenize_window(t, prompts[i], win) != VF_OK || win[0] != bos)
            fail("window");
        if (k < VF_CONTEXT_LEN && win[VF_CONTEXT_LEN - 1] != pad)
            fail("a short window is not padded");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *names[3] = {"vocab.json", "merges.txt", "tokenizer_config.json"};
    const uint8_t *part = data, *end = data + size;
    int nparts = 0;
    for (; nparts < 3 && part <= end; nparts++) {
        const uint8_t *nul = memchr(part, 0, (size_t)(end - part));
        const uint8_t *stop = nul ? nul : end;
        vf_fuzz_write(vf_fuzz_path(g_dir, names[nparts]), part, (size_t)(stop - part));
        if (!nul) {
            nparts++;
            break;
        }
        part = nul + 1;
    }
    if (nparts < 2)
        return 0;
    vf_tokenizer *t = NULL;
    vf_status st = vf_tokenizer_load_files(vf_fuzz_path(g_dir, names[0]), vf_fuzz_path(g_dir, names[1]),
                                           nparts == 3 ? vf_fuzz_path(g_dir, names[2]) : NULL, &t);
    vf_fuzz_log("vf_tokenizer_load_files", st);
    if (st != VF_OK) {
        vf_fuzz_check_message("vf_tokenizer_load_files", g_dir);
        return 0;
    }
    use(t);
    vf_tokenizer_free(t);
    return 0;
}
