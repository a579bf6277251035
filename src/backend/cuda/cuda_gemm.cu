/* GEMMs of the CUDA backend through cuBLASLt.
 *
 * Every linear layer is one cublasLtMatmul: fp16/bf16 operands, fp32
 * accumulation and scaling, the bias (and tanh-GELU) fused in the epilogue
 * and a residual fused as C with beta = 1 (in place when r == y). Row-major
 * y (M,N) = x (M,K) w (N,K)^T is computed as the column-major product
 * y^T = w^T x^T, so no operand is ever transposed in memory. Activations
 * cuBLASLt cannot fuse (SiLU, erf-GELU, quick GELU) run as one element-wise
 * pass after it.
 *
 * The heuristic query costs tens of microseconds, more than a small GEMM,
 * so descriptors, layouts and the chosen algorithm are cached per shape,
 * epilogue and operand alignment (a slice at an odd offset cannot use the
 * algorithm chosen for 256-byte-aligned operands).
 */
#include "cuda_common.cuh"

#include <string.h>

#define GEMM_CACHE 160

namespace {

struct gemm_key {
    int M, K, N, ldx, epi, has_r, al;
};

struct gemm_entry {
    gemm_key key;
    int used;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
};

/* Largest power of two (<= 256) dividing the address. */
int align_of(const void *p)
{
    uintptr_t v = (uintptr_t)p;
    int a = 256;
    while (a > 2 && (v % (uintptr_t)a) != 0)
        a /= 2;
    return a;
}

int align_code(const void *a, const void *b, const void *c, const void *d)
{
    int v[4] = {align_of(a), align_of(b), c ? align_of(c) : 256, align_of(d)}, code = 0;
    for (int i = 0; i < 4; i++)
        code = code * 16 + __builtin_ctz((unsigned)v[i]);
    return code;
}

vf_status lt_check(cuda_be *be, cublasStatus_t s, const char *what)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return VF_OK;
    return be_fail(be, s == CUBLAS_STATUS_ALLOC_FAILED ? VF_ERR_BUDGET : VF_ERR_DEVICE, "%s: %s", what,
                   cublasGetStatusString(s));
}

#define LT_TRY(be, expr, what)                              \
    do {                                                    \
        vf_status lt_st_ = lt_check((be), (expr), (what));   \
        if (lt_st_ != VF_OK)                                \
            return lt_st_;                                  \
    } while (0)

void entry_clear(gemm_entry *e)
{
    if (e->op)
        cublasLtMatmulDescDestroy(e->op);
    if (e->a)
        cublasLtMatrixLayoutDestroy(e->a);
    if (e->b)
        cublasLtMatrixLayoutDestroy(e->b);
    if (e->c)
        cublasLtMatrixLayoutDestroy(e->c);
    memset(e, 0, sizeof *e);
}

} // namespace

struct cuda_gemm_cache {
    gemm_entry e[GEMM_CACHE];
    int next;
};

vf_status cuda_gemm_init(cuda_be *be)
{
    be->gemm = (cuda_gemm_cache *)calloc(1, sizeof(cuda_gemm_cache));
    if (!be->gemm)
        return be_fail(be, VF_ERR_NO_MEMORY, "out of host memory for the GEMM cache");
    LT_TRY(be, cublasLtCreate(&be->lt), "cublasLtCreate");
    LT_TRY(be, cublasCreate(&be->blas), "cublasCreate");
    LT_TRY(be, cublasSetStream(be->blas, be->compute), "cublasSetStream");
    be->lt_ws_bytes = (size_t)32 << 20;
    CU_TRY(be, cudaMalloc(&be->lt_ws, be->lt_ws_bytes), "cuBLASLt workspace");
    LT_TRY(be, cublasSetWorkspace(be->blas, be->lt_ws, be->lt_ws_bytes), "cublasSetWorkspace");
    return VF_OK;
}

void cuda_gemm_free(cuda_be *be)
{
    if (be->gemm) {
        for (int i = 0; i < GEMM_CACHE; i++)
            entry_clear(&be->gemm->e[i]);
        free(be->gemm);
        be->gemm = NULL;
    }
    if (be->blas)
        cublasDestroy(be->blas);
    if (be->lt)
        cublasLtDestroy(be->lt);
    if (be->lt_ws)
        cudaFree(be->lt_ws);
    be->blas = NULL;
    be->lt = NULL;
    be->lt_ws = NULL;
}

static vf_status entry_build(cuda_be *be, gemm_entry *e, const gemm_key *k, const int al[4])
{
    cudaDataType_t t = cuda_dtype(be->dtype);
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtEpilogue_t epi = (cublasLtEpilogue_t)k->epi;
    LT_TRY(be, cublasLtMatmulDescCreate(&e->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul descriptor");
    LT_TRY(be, cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "transa");
    LT_TRY(be, cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "transb");
    LT_TRY(be, cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi), "epilogue");
    if (epi == CUBLASLT_EPILOGUE_BIAS || epi == CUBLASLT_EPILOGUE_GELU_BIAS)
        LT_TRY(be, cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &t, sizeof t),
               "bias type");
    /* Column-major: A = w stored (K x N), B = x stored (K x M), C = D = (N x M). */
    LT_TRY(be, cublasLtMatrixLayoutCreate(&e->a, t, k->K, k->N, k->K), "layout A");
    LT_TRY(be, cublasLtMatrixLayoutCreate(&e->b, t, k->K, k->M, k->ldx), "layout B");
    LT_TRY(be, cublasLtMatrixLayoutCreate(&e->c, t, k->N, k->M, k->N), "layout C");

    cublasLtMatmulPreference_t pref;
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    uint32_t a32[4] = {(uint32_t)al[0], (uint32_t)al[1], (uint32_t)al[2], (uint32_t)al[3]};
    LT_TRY(be, cublasLtMatmulPreferenceCreate(&pref), "matmul preference");
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &be->lt_ws_bytes,
                                         sizeof be->lt_ws_bytes);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a32[0], 4);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &a32[1], 4);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &a32[2], 4);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &a32[3], 4);
    cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(be->lt, e->op, e->a, e->b, e->c, e->c, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    LT_TRY(be, s, "cuBLASLt heuristic");
    if (found < 1)
        return be_fail(be, VF_ERR_UNSUPPORTED, "cuBLASLt has no algorithm for M=%d K=%d N=%d", k->M, k->K, k->N);
    e->algo = res.algo;
    e->key = *k;
    e->used = 1;
    return VF_OK;
}

static vf_status entry_get(cuda_be *be, const gemm_key *k, const int al[4], gemm_entry **out)
{
    cuda_gemm_cache *c = be->gemm;
    for (int i = 0; i < GEMM_CACHE; i++) {
        if (c->e[i].used && memcmp(&c->e[i].key, k, sizeof *k) == 0) {
            *out = &c->e[i];
            return VF_OK;
        }
    }
    gemm_entry *e = &c->e[c->next];
    c->next = (c->next + 1) % GEMM_CACHE;
    entry_clear(e);
    vf_status st = entry_build(be, e, k, al);
    if (st != VF_OK) {
        entry_clear(e);
        return st;
    }
    *out = e;
    return VF_OK;
}

// x is (M,K) with row stride ldx, w (N,K), b (N), r and y (M,N)
vf_status cuda_linear_ex(cuda_be *be, void *y, const void *x, const void *w, const void *b, const void *r, int M,
                         int K, int N, int act, int ldx)
{
    gemm_key k;
    memset(&k, 0, sizeof k);
    int fuse_gelu = act == VF_ACT_GELU_TANH;
    k.M = M;
    k.K = K;
    k.N = N;
    k.ldx = ldx ? ldx : K;
    k.has_r = r != NULL;
    k.epi = b ? (fuse_gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
              : (fuse_gelu ? CUBLASLT_EPILOGUE_GELU : CUBLASLT_EPILOGUE_DEFAULT);
    int al[4] = {align_of(w), align_of(x), r ? align_of(r) : 256, align_of(y)};
    k.al = align_code(w, x, r, y);
    gemm_entry *e;
    VF_TRY(entry_get(be, &k, al, &e));
    if (b)
        LT_TRY(be, cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof b),
               "bias pointer");
    float alpha = 1.0f, beta = r ? 1.0f : 0.0f;
    const void *c = r ? r : y;
    LT_TRY(be, cublasLtMatmul(be->lt, e->op, &alpha, w, e->a, x, e->b, &beta, c, e->c, y, e->c, &e->algo, be->lt_ws,
                              be->lt_ws_bytes, be->compute),
           "cublasLtMatmul");
    if (!fuse_gelu && act != VF_ACT_NONE)
        return cuda_act_inplace(be, y, (size_t)M * N, act);
    return VF_OK;
}

vf_status cuda_linear(void *impl, void *y, const void *x, const void *w, const void *b, const void *r, int M, int K,
                      int N, vf_act act)
{
    return cuda_linear_ex((cuda_be *)impl, y, x, w, b, r, M, K, N, act, 0);
}
