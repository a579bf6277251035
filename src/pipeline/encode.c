/* ENCODE_PROMPT: text to the embeddings the UNet is conditioned on.
 *
 * It reproduces diffusers' encode_prompt for one prompt and its negative:
 *   SD1.5: CLIP-L last_hidden_state (after final_layer_norm), (77,768).
 *   SDXL:  concat(CLIP-L hidden_states[-2], OpenCLIP-G hidden_states[-2]) along
 *          channels, (77,768+1280), plus OpenCLIP-G's projected pooled output.
 * Each encoder sees its own tokenizer's window (SDXL's tokenizer_2 pads with "!").
 * With force_zeros_for_empty_prompt (SDXL), a negative prompt that is NULL gives
 * zero embeddings, exactly as diffusers does for negative_prompt=None; an
 * explicit "" is encoded like any other text, again as diffusers does.
 *
 * Prompt syntax (pipeline/prompt.h) turns each text into k windows of 77 ids
 * with a weight per id; every window goes through the encoder on its own, is
 * weighted with A1111's emphasis, and the windows are concatenated along the
 * sequence, (77k, D), as A1111 does. The prompt and its negative (and SDXL's
 * two tokenizers, should they ever disagree) are padded to the same k with
 * windows of "", A1111's pad_cond_uncond, because the UNet batch stacks them.
 * Windows are all made before any encoder runs, so a syntax error costs nothing.
 * One unweighted window takes exactly the path it took before windows existed:
 * the same ids through the same forward, so diffusers parity is bit for bit.
 */
#include "core/alloc.h"
#include "core/error.h"
#include "pipeline/finite.h"
#include "pipeline/model.h"
#include "pipeline/prompt.h"

#include <stdio.h>
#include <string.h>

void vf_embeddings_free(vf_embeddings *e)
{
    if (!e)
        return;
    vf_free(e->prompt);
    vf_free(e->negative);
    vf_free(e->pooled);
    vf_free(e->negative_pooled);
    vf_free(e);
}

static vf_status alloc_embeddings(int dim, int pooled_dim, int windows, vf_embeddings **out)
{
    *out = NULL;
    vf_embeddings *e = vf_calloc(1, sizeof *e);
    if (!e)
        return VF_ERR_NO_MEMORY;
    e->seq_len = VF_CONTEXT_LEN * windows;
    e->dim = dim;
    e->pooled_dim = pooled_dim;
    size_t n = (size_t)e->seq_len * (size_t)dim;
    e->prompt = vf_calloc(n, sizeof(float));
    e->negative = e->prompt ? vf_calloc(n, sizeof(float)) : NULL;
    if (e->negative && pooled_dim > 0) {
        e->pooled = vf_calloc((size_t)pooled_dim, sizeof(float));
        e->negative_pooled = e->pooled ? vf_calloc((size_t)pooled_dim, sizeof(float)) : NULL;
    }
    if (!e->negative || (pooled_dim > 0 && !e->negative_pooled)) {
        vf_embeddings_free(e);
        return VF_ERR_NO_MEMORY;
    }
    *out = e;
    return VF_OK;
}

/* Windows of text for tokenizer `which`; errors say which text was at fault. */
static vf_status make_windows(vf_model *m, int which, const char *text, vf_prompt_syntax syntax,
                              int negative, vf_prompt_windows *out)
{
    vf_tokenizer *tok;
    VF_TRY(vf_model_tokenizer(m, which, &tok));
    vf_status st = vf_prompt_windows_from_text(tok, text, syntax, out);
    if (st == VF_OK || !negative)
        return st;
    char msg[512];
    const char *e = vf_last_error();
    snprintf(msg, sizeof msg, "%s", strncmp(e, "prompt: ", 8) == 0 ? e + 8 : e);
    return vf_error(st, "negative prompt: %s", msg);
}

static int window_weighted(const vf_prompt_windows *w, int k)
{
    const float *ws = w->weights + (size_t)k * VF_CONTEXT_LEN;
    for (int i = 0; w->weighted && i < VF_CONTEXT_LEN; i++)
        if (ws[i] != 1.0f)
            return 1;
    return 0;
}

// out is (77k, D): encoder `which` on each window (last_hidden, or hidden_states[-2]
// with penultimate), weighted; pooled (P) from the first window, or NULL
static vf_status encode_windows(vf_model *m, int which, const vf_prompt_windows *w, int penultimate,
                                float *out, float *pooled)
{
    vf_component c = which ? VF_COMPONENT_TEXT_ENCODER_2 : VF_COMPONENT_TEXT_ENCODER;
    const int D = m->clip[which].hidden;
    vf_residency *r;
    VF_TRY(vf_model_residency(m, c, &r));
    for (int k = 0; k < w->n; k++) {
        float *z = out + (size_t)k * VF_CONTEXT_LEN * (size_t)D;
        vf_status st = vf_model_run_clip(m, c, r, w->ids + (size_t)k * VF_CONTEXT_LEN,
                                         penultimate ? NULL : z, penultimate ? z : NULL, k == 0 ? pooled : NULL);
        if (st != VF_OK)
            return vf_error_prefix(st, "%s: %s", m->path, vf_component_name(c));
        char where[64];
        snprintf(where, sizeof where, "encode_prompt: the %s output", vf_component_name(c));
        VF_TRY(vf_check_finite(m, c, z, (size_t)VF_CONTEXT_LEN * (size_t)D, where));
        if (k == 0 && pooled)
            VF_TRY(vf_check_finite(m, c, pooled, (size_t)m->clip[which].proj_dim, where));
        if (window_weighted(w, k))
            vf_prompt_emphasis(z, D, w->weights + (size_t)k * VF_CONTEXT_LEN);
    }
    return VF_OK;
}

// h is (77k, DL) then (77k, DG) back to back; out (77k, DL+DG) has them side by side per token
static void concat_sdxl(const float *h, size_t L, int DL, int DG, float *out)
{
    const float *hl = h, *hg = h + L * DL;
    for (size_t t = 0; t < L; t++) {
        memcpy(out + t * (DL + DG), hl + t * DL, sizeof(float) * (size_t)DL);
        memcpy(out + t * (DL + DG) + DL, hg + t * DG, sizeof(float) * (size_t)DG);
    }
}

/* e->prompt (and e->negative unless zeros) = concat(CLIP-L hidden_states[-2] (77k,DL),
 * CLIP-G hidden_states[-2] (77k,DG)); w = prompt L, prompt G, negative L, negative G.
 * CLIP-L runs on both texts before CLIP-G starts, and each is then done with, so
 * that a placement holding one component at a time (SEQUENTIAL) holds one encoder. */
static vf_status encode_sdxl_texts(vf_model *m, const vf_prompt_windows *w, int zeros, vf_embeddings *e)
{
    const size_t L = (size_t)w[0].n * VF_CONTEXT_LEN;
    const int DL = m->clip[0].hidden, DG = m->clip[1].hidden;
    const size_t one = L * (size_t)(DL + DG);
    float *h = vf_malloc(sizeof(float) * one * 2);  /* per text: (77k,DL) then (77k,DG) */
    if (!h)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: prompt embeddings", m->path);
    vf_status st = encode_windows(m, 0, &w[0], 1, h, NULL);
    if (st == VF_OK && !zeros)
        st = encode_windows(m, 0, &w[2], 1, h + one, NULL);
    vf_model_component_done(m, VF_COMPONENT_TEXT_ENCODER);
    if (st == VF_OK)
        st = encode_windows(m, 1, &w[1], 1, h + L * DL, e->pooled);
    if (st == VF_OK && !zeros)
        st = encode_windows(m, 1, &w[3], 1, h + one + L * DL, e->negative_pooled);
    vf_model_component_done(m, VF_COMPONENT_TEXT_ENCODER_2);
    if (st == VF_OK) {
        concat_sdxl(h, L, DL, DG, e->prompt);
        if (!zeros)
            concat_sdxl(h + one, L, DL, DG, e->negative);
    }
    vf_free(h);
    return st;
}

static int max_windows(const vf_prompt_windows *w, int n)
{
    int k = 1;
    for (int i = 0; i < n; i++)
        k = w[i].n > k ? w[i].n : k;
    return k;
}

/* w[i] made with tokenizer tok_of[i], each padded to the longest. */
static vf_status pad_all(vf_model *m, vf_prompt_windows *w, const int *tok_of, int n)
{
    int k = max_windows(w, n);
    for (int i = 0; i < n; i++) {
        vf_tokenizer *t;
        VF_TRY(vf_model_tokenizer(m, tok_of[i], &t));
        VF_TRY(vf_prompt_windows_pad(t, &w[i], k));
    }
    return VF_OK;
}

static vf_status encode_sd15(vf_model *m, const char *prompt, const char *negative, vf_prompt_syntax syntax,
                             vf_embeddings **out)
{
    if (!m->present[VF_COMPONENT_TEXT_ENCODER])
        return vf_error(VF_ERR_NOT_FOUND, "%s: no text_encoder component", m->path);
    static const int tok_of[2] = {0, 0};
    vf_prompt_windows w[2];
    memset(w, 0, sizeof w);
    vf_embeddings *e = NULL;
    vf_status st = make_windows(m, 0, prompt, syntax, 0, &w[0]);
    if (st == VF_OK)
        st = make_windows(m, 0, negative ? negative : "", syntax, 1, &w[1]);
    if (st == VF_OK)
        st = pad_all(m, w, tok_of, 2);
    if (st == VF_OK && alloc_embeddings(m->clip[0].hidden, 0, w[0].n, &e) != VF_OK)
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "%s: prompt embeddings", m->path);
    if (st == VF_OK)
        st = encode_windows(m, 0, &w[0], 0, e->prompt, NULL);
    if (st == VF_OK)
        st = encode_windows(m, 0, &w[1], 0, e->negative, NULL);
    vf_model_component_done(m, VF_COMPONENT_TEXT_ENCODER);
    for (int i = 0; i < 2; i++)
        vf_prompt_windows_free(&w[i]);
    if (st != VF_OK) {
        vf_embeddings_free(e);
        return st;
    }
    *out = e;
    return VF_OK;
}

static vf_status encode_sdxl(vf_model *m, const char *prompt, const char *negative, vf_prompt_syntax syntax,
                             vf_embeddings **out)
{
    for (int c = VF_COMPONENT_TEXT_ENCODER; c <= VF_COMPONENT_TEXT_ENCODER_2; c++) {
        if (!m->present[c])
            return vf_error(VF_ERR_NOT_FOUND, "%s: no %s component", m->path,
                            vf_component_name((vf_component)c));
    }
    /* Zeros are already there (calloc) when the negative is left out. */
    int zeros = !negative && vf_checkpoint_force_zeros_for_empty_prompt(m->ck);
    const char *neg = negative ? negative : "";
    static const int tok_of[4] = {0, 1, 0, 1};
    int nw = zeros ? 2 : 4;
    vf_prompt_windows w[4];
    memset(w, 0, sizeof w);
    vf_embeddings *e = NULL;
    vf_status st = VF_OK;
    for (int i = 0; st == VF_OK && i < nw; i++)
        st = make_windows(m, tok_of[i], i < 2 ? prompt : neg, syntax, i >= 2, &w[i]);
    if (st == VF_OK)
        st = pad_all(m, w, tok_of, nw);
    if (st == VF_OK &&
        alloc_embeddings(m->clip[0].hidden + m->clip[1].hidden, m->clip[1].proj_dim, w[0].n, &e) != VF_OK)
        st = vf_error_prefix(VF_ERR_NO_MEMORY, "%s: prompt embeddings", m->path);
    if (st == VF_OK)
        st = encode_sdxl_texts(m, w, zeros, e);
    for (int i = 0; i < 4; i++)
        vf_prompt_windows_free(&w[i]);
    if (st != VF_OK) {
        vf_embeddings_free(e);
        return st;
    }
    *out = e;
    return VF_OK;
}

vf_status vf_encode_prompt_ex(vf_model *m, const char *prompt, const char *negative, vf_prompt_syntax syntax,
                              vf_embeddings **out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_encode_prompt: out is NULL");
    *out = NULL;
    if (!m || !prompt)
        return vf_error(VF_ERR_INVALID_ARG, "vf_encode_prompt: %s is NULL", m ? "prompt" : "model");
    if ((int)syntax < 0 || syntax >= VF_PROMPT_SYNTAX_COUNT)
        return vf_error(VF_ERR_INVALID_ARG, "vf_encode_prompt: prompt syntax %d is not a vf_prompt_syntax",
                        (int)syntax);
    switch (m->arch) {
    case VF_ARCH_SD15: return encode_sd15(m, prompt, negative, syntax, out);
    case VF_ARCH_SDXL: return encode_sdxl(m, prompt, negative, syntax, out);
    default: return vf_error(VF_ERR_UNSUPPORTED, "%s: unknown architecture", m->path);
    }
}

vf_status vf_encode_prompt(vf_model *m, const char *prompt, const char *negative, vf_embeddings **out)
{
    return vf_encode_prompt_ex(m, prompt, negative, VF_PROMPT_SYNTAX_A1111, out);
}
