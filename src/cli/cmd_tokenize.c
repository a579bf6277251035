/* vramfit tokenize: the CLIP token ids of a text, as the text encoder sees them.
 *
 * For checking prompts (how many tokens, what falls past the 77-token window)
 * and for comparing against Hugging Face's tokenizer in scripts: the default
 * prints every id (BOS ... EOS, untruncated), --window the 77 ids the encoder
 * gets, --json the same ids as a JSON array.
 */
#include "cli/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: vramfit tokenize --tokenizer DIR_OR_GZ [--window] [--json] TEXT\n\n"
            "Prints the CLIP token ids of TEXT on one line, separated by spaces:\n"
            "BOS, the tokens, EOS, untruncated.\n\n"
            "  --tokenizer P  a folder with vocab.json and merges.txt (and\n"
            "                 tokenizer_config.json, whose pad_token is used), such as\n"
            "                 a diffusers model's tokenizer/, or bpe_simple_vocab_16e6.txt.gz\n"
            "  --window       print the 77 ids the text encoder gets: BOS, at most 75\n"
            "                 tokens, EOS, then the pad token\n"
            "  --json         print the ids as a JSON array\n"
            "  -h, --help     show this help\n");
}

static void print_ids(const int32_t *ids, size_t n, int json)
{
    fputs(json ? "[" : "", stdout);
    for (size_t i = 0; i < n; i++)
        printf("%s%d", i ? (json ? ", " : " ") : "", (int)ids[i]);
    fputs(json ? "]\n" : "\n", stdout);
}

static int run(const char *path, const char *text, int window, int json)
{
    vf_tokenizer *t = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    vf_status st = vf_tokenizer_load(path, &t);
    if (st != VF_OK)
        return vf_cli_fail(st);
    if (window) {
        int32_t w[VF_CONTEXT_LEN];
        st = vf_tokenize_window(t, text, w);
        if (st == VF_OK)
            print_ids(w, VF_CONTEXT_LEN, json);
    } else {
        st = vf_tokenize(t, text, NULL, 0, &n);
        if (st == VF_OK && !(ids = malloc(n * sizeof *ids))) {
            vf_tokenizer_free(t);
            fprintf(stderr, "vramfit: out of memory for %zu ids\n", n);
            return VF_EXIT_FAIL;
        }
        if (st == VF_OK)
            st = vf_tokenize(t, text, ids, n, &n);
        if (st == VF_OK)
            print_ids(ids, n, json);
    }
    int rc = st == VF_OK ? VF_EXIT_OK : vf_cli_fail(st);
    free(ids);
    vf_tokenizer_free(t);
    return rc;
}

int vf_cmd_tokenize(int argc, char **argv)
{
    const char *path = NULL, *text = NULL;
    int window = 0, json = 0, opts = 1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (opts && vf_cli_is_help(a)) {
            usage(stdout);
            return VF_EXIT_OK;
        } else if (opts && strcmp(a, "--") == 0) {
            opts = 0;
        } else if (opts && strcmp(a, "--tokenizer") == 0 && i + 1 < argc) {
            path = argv[++i];
        } else if (opts && strcmp(a, "--window") == 0) {
            window = 1;
        } else if (opts && strcmp(a, "--json") == 0) {
            json = 1;
        } else if (opts && a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "vramfit tokenize: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return VF_EXIT_USAGE;
        } else if (!text) {
            text = a;
        } else {
            fprintf(stderr, "vramfit tokenize: one TEXT only (quote it)\n");
            return VF_EXIT_USAGE;
        }
    }
    if (!path || !text) {
        fprintf(stderr, "vramfit tokenize: %s\n", !path ? "--tokenizer is required" : "TEXT is missing");
        usage(stderr);
        return VF_EXIT_USAGE;
    }
    return run(path, text, window, json);
}
