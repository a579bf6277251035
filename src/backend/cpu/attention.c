/* Scaled dot-product attention on the CPU, chunked over queries.
 *
 * For each (batch, head) a chunk of queries is scored against all keys with one
 * sgemm, soft-maxed in place and multiplied by V with a second sgemm. Scratch is
 * one (chunk, Lk) score block, capped at VF_ATTN_SCRATCH floats, so memory does
 * not grow with the square of the token count (a 1024x1024 SDXL VAE has 16k
 * tokens: a full score matrix would be 1 GiB per head).
 */
#include "backend/cpu/ops.h"
#include "core/alloc.h"
#include "core/error.h"

#include <cblas.h>
#include <math.h>

#define VF_ATTN_SCRATCH (4u << 20) /* floats: 16 MiB */

static void softmax_rows(float *s, int rows, int cols, int causal, int first_row)
{
    for (int r = 0; r < rows; r++) {
        float *sr = s + (size_t)r * cols;
        int n = causal ? first_row + r + 1 : cols;
        if (n > cols)
            n = cols;
        float mx = -INFINITY;
        for (int j = 0; j < n; j++)
            mx = sr[j] > mx ? sr[j] : mx;
        double sum = 0;
        for (int j = 0; j < n; j++) {
            sr[j] = expf(sr[j] - mx);
            sum += sr[j];
        }
        float inv = (float)(1.0 / sum);
        for (int j = 0; j < n; j++)
            sr[j] *= inv;
        for (int j = n; j < cols; j++)
            sr[j] = 0.0f;
    }
}

// q and out are (B,Lq,H*D), k and v are (B,Lk,H*D)
vf_status vf_cpu_attention(float *out, const float *q, const float *k, const float *v, int B, int Lq,
                           int Lk, int H, int D, int causal, float scale)
{
    size_t HD = (size_t)H * D;
    int chunk = (int)(VF_ATTN_SCRATCH / (size_t)(Lk > 0 ? Lk : 1));
    if (chunk < 1)
        chunk = 1;
    if (chunk > Lq)
        chunk = Lq;
    float *s = vf_malloc(sizeof(float) * (size_t)chunk * (size_t)Lk);
    if (!s)
        return vf_error_prefix(VF_ERR_NO_MEMORY, "attention scores (%d x %d)", chunk, Lk);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            const float *kb = k + (size_t)b * Lk * HD + (size_t)h * D;
            const float *vb = v + (size_t)b * Lk * HD + (size_t)h * D;
            for (int r0 = 0; r0 < Lq; r0 += chunk) {
                int nr = Lq - r0 < chunk ? Lq - r0 : chunk;
                const float *qb = q + ((size_t)b * Lq + r0) * HD + (size_t)h * D;
                float *ob = out + ((size_t)b * Lq + r0) * HD + (size_t)h * D;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, Lk, D, scale, qb, (int)HD, kb,
                            (int)HD, 0.0f, s, Lk);
                softmax_rows(s, nr, Lk, causal, r0);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, D, Lk, 1.0f, s, Lk, vb,
                            (int)HD, 0.0f, ob, (int)HD);
            }
        }
    }
    vf_free(s);
    return VF_OK;
}
