/* The model handle's insides, for pipeline code (encode, denoise, decode).
 *
 * vf_model_open() reads every header and binds every present component's block
 * list, so that all shape errors surface at open; nothing heavier happens there.
 * Weights are converted when a stage first needs them (the residency of a
 * component is created on first use) and tokenizers are loaded on first
 * encode: `vramfit inspect` on a single file needs neither, and must not fail
 * for want of a tokenizer.
 */
#ifndef VF_PIPELINE_MODEL_H
#define VF_PIPELINE_MODEL_H

#include "io/checkpoint.h"
#include "mem/residency.h"
#include "model/blocks.h"
#include "model/clip.h"
#include "vramfit.h"

struct vf_model {
    char *path;
    vf_checkpoint *ck;
    vf_arch arch;
    /* Where tokenizers come from: a folder holding tokenizer/ (and tokenizer_2/),
     * a tokenizer folder itself (vocab.json), or a bpe .txt.gz file; NULL when
     * none was given or found (encoding then fails, naming --tokenizer). */
    char *tokenizer_root;
    vf_tokenizer *tok[2];                          /* lazily loaded               */
    int present[VF_COMPONENT_COUNT];
    vf_blocklist bl[VF_COMPONENT_COUNT];           /* bound, for present ones     */
    vf_residency *res[VF_COMPONENT_COUNT];         /* lazily created              */
    vf_clip_config clip[2];                        /* text_encoder, text_encoder_2 */
};

/* The component's residency, created on first use. VF_ERR_NOT_FOUND when the
 * component is absent. */
vf_status vf_model_residency(vf_model *m, vf_component c, vf_residency **out);
/* Tokenizer 0 (tokenizer/) or 1 (tokenizer_2/), loaded on first use. */
vf_status vf_model_tokenizer(vf_model *m, int which, vf_tokenizer **out);

#endif
