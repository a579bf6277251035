/* vramfit encode: a prompt to its embeddings, written as safetensors.
 *
 * The output uses the key names of the reference fixtures (and of diffusers'
 * encode_prompt outputs) so it can be compared with them or fed to other tools:
 * prompt_embeds and negative_prompt_embeds [1,77k,D] (k windows of 77 tokens,
 * see --prompt-syntax), and for SDXL
 * pooled_prompt_embeds and negative_pooled_prompt_embeds [1,P], all F32.
 */
#include "cli/cli.h"
#include "io/safetensors.h"

#include <stdio.h>
#include <string.h>

typedef struct encode_args {
    const char *model, *prompt, *negative, *tokenizer, *config, *output, *syntax;
} encode_args;

static void encode_usage(FILE *f)
{
    fprintf(f,
            "usage: vramfit encode --model PATH --prompt TEXT [--negative TEXT]\n"
            "                      [--prompt-syntax a1111|plain|diffusers] [--tokenizer DIR]\n"
            "                      [--config DIR] --output FILE.safetensors\n\n"
            "Encodes a prompt (and its negative) with the model's text encoders on the CPU and\n"
            "writes prompt_embeds, negative_prompt_embeds [1,77k,D] (k windows of 77 tokens)\n"
            "and, for SDXL, pooled_prompt_embeds, negative_pooled_prompt_embeds [1,P], as\n"
            "float32.\n\n"
            "  --model PATH      diffusers folder or single-file .safetensors checkpoint\n"
            "  --prompt TEXT     the prompt\n"
            "  --negative TEXT   the negative prompt (default: none; SDXL then uses zeros,\n"
            "                    as diffusers does with force_zeros_for_empty_prompt)\n"
            "  --prompt-syntax S a1111 (default): AUTOMATIC1111's (word:1.2), (word), [word],\n"
            "                    escapes and BREAK, and 75-token windows for long prompts;\n"
            "                    plain: literal text in windows; diffusers: literal, one window\n"
            "  --tokenizer DIR   folder holding tokenizer/ (and tokenizer_2/) for single files;\n"
            "                    default: tokenizer/ beside the file, else the Hugging Face cache\n"
            "  --config DIR      diffusers folder whose configs describe a single file\n"
            "  --output FILE     where to write the embeddings\n");
}

/* 0 on success, -1 for --help, VF_EXIT_USAGE after printing why. */
static int parse_args(int argc, char **argv, encode_args *a)
{
    static const char *const names[] = {"--model", "--prompt", "--negative", "--tokenizer", "--config",
                                        "--output", "--prompt-syntax"};
    const char **slots[] = {&a->model, &a->prompt, &a->negative, &a->tokenizer, &a->config, &a->output,
                            &a->syntax};
    memset(a, 0, sizeof *a);
    for (int i = 0; i < argc; i++) {
        if (vf_cli_is_help(argv[i]))
            return -1;
        int k = -1;
        for (int j = 0; j < 7 && k < 0; j++)
            k = strcmp(argv[i], names[j]) == 0 ? j : -1;
        if (k < 0) {
            fprintf(stderr, "vramfit encode: unknown argument '%s' (vramfit encode --help lists the options)\n",
                    argv[i]);
            return VF_EXIT_USAGE;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "vramfit encode: %s needs a value\n", argv[i]);
            return VF_EXIT_USAGE;
        }
        *slots[k] = argv[++i];
    }
    const char *missing = !a->model ? "--model" : !a->prompt ? "--prompt" : !a->output ? "--output" : NULL;
    if (missing) {
        fprintf(stderr, "vramfit encode: %s is required\n", missing);
        encode_usage(stderr);
        return VF_EXIT_USAGE;
    }
    return 0;
}

static vf_status write_embeddings(const encode_args *a, vf_model *m, const vf_embeddings *e)
{
    vf_st_write_tensor ts[4];
    memset(ts, 0, sizeof ts);
    const char *names[4] = {"prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                            "negative_pooled_prompt_embeds"};
    const float *data[4] = {e->prompt, e->negative, e->pooled, e->negative_pooled};
    size_t n = e->pooled_dim > 0 ? 4 : 2;
    for (size_t i = 0; i < n; i++) {
        ts[i].name = names[i];
        ts[i].dtype = VF_DTYPE_F32;
        ts[i].data = data[i];
        ts[i].shape[0] = 1;
        if (i < 2) {
            ts[i].ndim = 3;
            ts[i].shape[1] = e->seq_len;
            ts[i].shape[2] = e->dim;
        } else {
            ts[i].ndim = 2;
            ts[i].shape[1] = e->pooled_dim;
        }
    }
    const char *meta[] = {"arch", vf_arch_name(vf_model_arch(m)), "prompt", a->prompt,
                          a->negative ? "negative_prompt" : NULL, a->negative, NULL};
    return vf_st_write(a->output, ts, n, meta);
}

int vf_cmd_encode(int argc, char **argv)
{
    encode_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc < 0)
        encode_usage(stdout);
    if (rc)
        return rc < 0 ? VF_EXIT_OK : rc;
    vf_prompt_syntax syntax = VF_PROMPT_SYNTAX_A1111;
    if (a.syntax && vf_prompt_syntax_parse(a.syntax, &syntax) != VF_OK) {
        fprintf(stderr, "vramfit encode: --prompt-syntax '%s': use a1111, plain or diffusers\n", a.syntax);
        return VF_EXIT_USAGE;
    }
    vf_model_options o;
    vf_model_options_init(&o);
    o.tokenizer_dir = a.tokenizer;
    o.config_dir = a.config;
    vf_model *m = NULL;
    vf_embeddings *e = NULL;
    vf_status st = vf_model_open(a.model, &o, &m);
    if (st == VF_OK)
        st = vf_encode_prompt_ex(m, a.prompt, a.negative, syntax, &e);
    if (st == VF_OK)
        st = write_embeddings(&a, m, e);
    if (st == VF_OK) {
        printf("%s (%s): prompt_embeds [1,%d,%d]", a.model, vf_arch_name(vf_model_arch(m)), e->seq_len, e->dim);
        if (e->pooled_dim)
            printf(", pooled_prompt_embeds [1,%d]", e->pooled_dim);
        printf(" -> %s\n", a.output);
    }
    vf_embeddings_free(e);
    vf_model_close(m);
    return st == VF_OK ? VF_EXIT_OK : vf_cli_fail(st);
}
