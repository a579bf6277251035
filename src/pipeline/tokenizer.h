/* CLIP BPE tokenizer: internal limits and test hooks.
 *
 * The public API is in vramfit.h (vf_tokenizer_*, vf_tokenize*). The limits live
 * here so that the tests and the CLI can name them instead of repeating numbers.
 */
#ifndef VF_PIPELINE_TOKENIZER_H
#define VF_PIPELINE_TOKENIZER_H

#include "vramfit.h"

#include <stddef.h>

/* Longest prompt accepted, in bytes. Work and memory are linear in it (about
 * 50 bytes per input byte at worst, for one 1 MiB word). */
#define VF_TOKENIZER_MAX_PROMPT ((size_t)1 << 20)

/* HF reads only this many merge lines after the header (49152 - 256 - 2). */
#define VF_TOKENIZER_MAX_MERGES 48894

/* Makes token (a vocabulary string) the pad token and, as Hugging Face does
 * with special tokens, a piece the text is split on. For SDXL's tokenizer_2
 * when its files come from a repository that pads otherwise ("!"). */
vf_status vf_tokenizer_set_pad(vf_tokenizer *t, const char *token);

/* Entries in the pre-token -> ids cache (test hook; the cache empties itself
 * when full). */
size_t vf_tokenizer_cache_entries(const vf_tokenizer *t);

#endif
