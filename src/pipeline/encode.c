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
 */
#include "core/alloc.h"
#include "core/error.h"
#include "pipeline/model.h"

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

static vf_status alloc_embeddings(int dim, int pooled_dim, vf_embeddings **out)
{
    *out = NULL;
    vf_embeddings *e = vf_calloc(1, sizeof *e);
    if (!e)
        return VF_ERR_NO_MEMORY;
    e->seq_len = VF_CONTEXT_LEN;
    e->dim = dim;
    e->pooled_dim = pooled_dim;
    size_t n = (size_t)VF_CONTEXT_LEN * (size_t)dim;
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

/* One text through one encoder: tokenizer `which` and text encoder `which`. */
static vf_status run_encoder(vf_model *m, int which, const char *text, float *last_hidden,
                             float *penultimate, float *pooled)
{
    vf_component c = which ? VF_COMPONENT_TEXT_ENCODER_2 : VF_COMPONENT_TEXT_ENCODER;
    vf_tokenizer *tok;
    vf_residency *r;
    int32_t ids[VF_CONTEXT_LEN];
    VF_TRY(vf_model_tokenizer(m, which, &tok));
    VF_TRY(vf_tokenize_window(tok, text, ids));
    VF_TRY(vf_model_residency(m, c, &r));
    vf_status st = vf_clip_forward(r, &m->bl[c], &m->clip[c], ids, last_hidden, penultimate, pooled);
    return st == VF_OK ? VF_OK : vf_error_prefix(st, "%s: %s", m->path, vf_component_name(c));
}

// out is (77, DL+DG) = concat(CLIP-L hidden_states[-2] (77,DL), CLIP-G hidden_states[-2] (77,DG))
static vf_status encode_sdxl_text(vf_model *m, const char *text, float *out, float *pooled)
{
    const int L = VF_CONTEXT_LEN, DL = m->clip[0].hidden, DG = m->clip[1].hidden;
    float *hl = vf_malloc(sizeof(float) * (size_t)L * (size_t)(DL + DG));
    if (!hl)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: prompt embeddings", m->path);
    float *hg = hl + (size_t)L * DL;
    vf_status st = run_encoder(m, 0, text, NULL, hl, NULL);
    if (st == VF_OK)
        st = run_encoder(m, 1, text, NULL, hg, pooled);
    for (int t = 0; st == VF_OK && t < L; t++) {
        memcpy(out + (size_t)t * (DL + DG), hl + (size_t)t * DL, sizeof(float) * (size_t)DL);
        memcpy(out + (size_t)t * (DL + DG) + DL, hg + (size_t)t * DG, sizeof(float) * (size_t)DG);
    }
    vf_free(hl);
    return st;
}

static vf_status encode_sd15(vf_model *m, const char *prompt, const char *negative, vf_embeddings **out)
{
    if (!m->present[VF_COMPONENT_TEXT_ENCODER])
        return vf_error(VF_ERR_NOT_FOUND, "%s: no text_encoder component", m->path);
    vf_embeddings *e;
    if (alloc_embeddings(m->clip[0].hidden, 0, &e) != VF_OK)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: prompt embeddings", m->path);
    vf_status st = run_encoder(m, 0, prompt, e->prompt, NULL, NULL);
    if (st == VF_OK)
        st = run_encoder(m, 0, negative ? negative : "", e->negative, NULL, NULL);
    if (st != VF_OK) {
        vf_embeddings_free(e);
        return st;
    }
    *out = e;
    return VF_OK;
}

static vf_status encode_sdxl(vf_model *m, const char *prompt, const char *negative, vf_embeddings **out)
{
    for (int c = VF_COMPONENT_TEXT_ENCODER; c <= VF_COMPONENT_TEXT_ENCODER_2; c++) {
        if (!m->present[c])
            return vf_error(VF_ERR_NOT_FOUND, "%s: no %s component", m->path,
                            vf_component_name((vf_component)c));
    }
    vf_embeddings *e;
    if (alloc_embeddings(m->clip[0].hidden + m->clip[1].hidden, m->clip[1].proj_dim, &e) != VF_OK)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "%s: prompt embeddings", m->path);
    vf_status st = encode_sdxl_text(m, prompt, e->prompt, e->pooled);
    /* Zeros are already there (calloc) when the negative is left out. */
    int zeros = !negative && vf_checkpoint_force_zeros_for_empty_prompt(m->ck);
    if (st == VF_OK && !zeros)
        st = encode_sdxl_text(m, negative ? negative : "", e->negative, e->negative_pooled);
    if (st != VF_OK) {
        vf_embeddings_free(e);
        return st;
    }
    *out = e;
    return VF_OK;
}

vf_status vf_encode_prompt(vf_model *m, const char *prompt, const char *negative, vf_embeddings **out)
{
    if (!out)
        return vf_error(VF_ERR_INVALID_ARG, "vf_encode_prompt: out is NULL");
    *out = NULL;
    if (!m || !prompt)
        return vf_error(VF_ERR_INVALID_ARG, "vf_encode_prompt: %s is NULL", m ? "prompt" : "model");
    switch (m->arch) {
    case VF_ARCH_SD15: return encode_sd15(m, prompt, negative, out);
    case VF_ARCH_SDXL: return encode_sdxl(m, prompt, negative, out);
    default: return vf_error(VF_ERR_UNSUPPORTED, "%s: unknown architecture", m->path);
    }
}
