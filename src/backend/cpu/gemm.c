/* Matrix products through OpenBLAS. Linear layers keep PyTorch's weight layout
 * (out_features, in_features) so checkpoint tensors are used without a copy. */
#include "backend/cpu/ops.h"

#include <cblas.h>
#include <string.h>

// y is (M,N), x is (M,K), w is (N,K), b is (N) or NULL
void vf_cpu_linear(float *y, const float *x, const float *w, const float *b, int M, int K, int N)
{
    if (b) {
        for (int i = 0; i < M; i++)
            memcpy(y + (size_t)i * N, b, sizeof(float) * (size_t)N);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, w, K, b ? 1.0f : 0.0f,
                y, N);
}

// c is (M,N), a is (M,K), b is (K,N)
void vf_cpu_gemm(float *c, const float *a, const float *b, int M, int K, int N, float alpha, float beta)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, alpha, a, K, b, N, beta, c, N);
}
