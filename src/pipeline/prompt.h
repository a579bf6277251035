/* Prompt syntax: AUTOMATIC1111's emphasis, BREAK and 75-token windows.
 *
 * Users bring prompts written for AUTOMATIC1111's web UI ("A1111"), so vramfit
 * reads them the same way, in three steps that mirror A1111's code:
 *
 *   1. vf_prompt_parse: text -> fragments (text, weight), A1111's
 *      parse_prompt_attention: "(a)" x1.1, "[a]" /1.1, "(a:1.3)" x1.3, nesting
 *      multiplies, "\(" "\)" "\[" "\]" "\\" are literal, a lone "\" vanishes,
 *      unclosed brackets apply to the end of the text, unmatched closers are
 *      literal text, BREAK becomes a ("BREAK", -1) marker, and neighbours of
 *      equal weight merge. Weights are doubles multiplied in A1111's order, so
 *      they are Python's values bit for bit.
 *   2. vf_prompt_windows_make: each fragment is tokenized on its own (no
 *      BOS/EOS) and the tokens are cut into chunks of 75 as A1111's
 *      tokenize_line does, including its comma backtrack (when a chunk fills
 *      up, text after a comma within the last 20 tokens moves to the next
 *      chunk) and BREAK (ends the chunk). Each chunk becomes a 77-token window
 *      BOS, tokens, EOS, pad... with a weight per position (1 for BOS, EOS and
 *      pad). That is the layout diffusers feeds CLIP and the one A1111 ends up
 *      with for both CLIP-L (pad = EOS) and OpenCLIP-G (pad "!" after the
 *      first EOS), so a short prompt without syntax gives exactly the ids of
 *      vf_tokenize_window and therefore diffusers' embeddings.
 *   3. vf_prompt_emphasis: after the text encoder ran on a window, A1111's
 *      "Original" emphasis: each position's vector times its weight, then the
 *      window rescaled so the mean of all its values is what it was.
 *
 * The parser is a pure function of bytes (easy to fuzz): anything that is not
 * valid UTF-8, has a NUL byte, nests brackets deeper than VF_PROMPT_MAX_DEPTH
 * or yields a weight that is not a finite number is an error naming the byte
 * offset, never a crash. The depth limit is what keeps the work linear: each
 * fragment is multiplied once per bracket open around it.
 *
 * Known differences from A1111 (all in inputs nobody writes on purpose): a
 * weight's digits are ASCII only (Python's \d also takes other scripts'
 * digits); where A1111 raises on "(a:1.2.3)" or "(a:.)" we return an error;
 * textual-inversion embeddings are not looked up.
 */
#ifndef VF_PIPELINE_PROMPT_H
#define VF_PIPELINE_PROMPT_H

#include "vramfit.h"

#include <stddef.h>
#include <stdint.h>

#define VF_PROMPT_CHUNK (VF_CONTEXT_LEN - 2)   /* content tokens per window (75)          */
#define VF_PROMPT_COMMA_BACKTRACK 20           /* A1111's comma_padding_backtrack default */
#define VF_PROMPT_MAX_DEPTH 256                /* open '(' (and, separately, '[') at once  */
/* 53 windows = 4081 context tokens: the most the UNet accepts (4096). */
#define VF_PROMPT_MAX_WINDOWS 53

typedef struct vf_prompt_fragment {
    const char *text;             /* NUL-terminated UTF-8, owned by the list   */
    size_t len;
    double weight;                /* A1111's multiplier; -1 on a BREAK marker  */
} vf_prompt_fragment;

typedef struct vf_prompt_fragments {
    vf_prompt_fragment *items;
    size_t n;
    char *text;                   /* storage for every fragment's text         */
} vf_prompt_fragments;

/* data[0..len) -> A1111's parse_prompt_attention list (never empty: "" gives
 * one fragment ("", 1)). On error *out is left empty. len may be at most
 * VF_PROMPT_MAX_BYTES. */
vf_status vf_prompt_parse(const char *data, size_t len, vf_prompt_fragments *out);
/* The whole text as one fragment of weight 1 (plain syntax; same checks). */
vf_status vf_prompt_parse_plain(const char *data, size_t len, vf_prompt_fragments *out);
void vf_prompt_fragments_free(vf_prompt_fragments *f);
/* 1 for the marker BREAK leaves: text "BREAK" with weight exactly -1 (A1111's
 * test; a marker inside brackets gets multiplied and is then plain text). */
int vf_prompt_fragment_is_break(const vf_prompt_fragment *f);

#define VF_PROMPT_MAX_BYTES ((size_t)1 << 20)

typedef struct vf_prompt_windows {
    int n;                        /* windows                                   */
    int32_t *ids;                 /* (n, 77)                                   */
    float *weights;               /* (n, 77): 1 at BOS, EOS and pad            */
    int token_count;              /* A1111's count: 75 per full chunk + the last's tokens */
    int weighted;                 /* some weight differs from 1                */
} vf_prompt_windows;

/* Tokenizes fragments with t and cuts them into windows (step 2 above).
 * VF_ERR_INVALID_ARG when more than VF_PROMPT_MAX_WINDOWS windows result. */
vf_status vf_prompt_windows_make(vf_tokenizer *t, const vf_prompt_fragments *f, vf_prompt_windows *out);
/* Text to windows with a syntax: A1111 (parse + windows), PLAIN (the literal
 * text, windows), DIFFUSERS (the literal text in one window, truncated). */
vf_status vf_prompt_windows_from_text(vf_tokenizer *t, const char *text, vf_prompt_syntax syntax,
                                      vf_prompt_windows *out);
/* Appends empty windows (BOS, EOS, pad...: the encoding of "") until w has n. */
vf_status vf_prompt_windows_pad(vf_tokenizer *t, vf_prompt_windows *w, int n);
void vf_prompt_windows_free(vf_prompt_windows *w);

// z is (77, D), one window's encoder output; weights (77)
/* A1111's "Original" emphasis in place: z[i,:] *= weights[i], then z *= old
 * mean / new mean (means over all 77*D values). When the new mean is 0 the
 * rescale is skipped (A1111 would divide by zero). */
void vf_prompt_emphasis(float *z, int D, const float *weights);

#endif
