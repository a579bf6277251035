/* What the CUDA context and the libraries hold on the device before any
 * model byte: the driver's used memory (total - free, cudaMemGetInfo) after
 * each step the CUDA backend takes when it opens, and what the per-thread
 * stack limit changes (the driver reserves local memory for every thread the
 * GPU can hold: stack size x threads per SM x SMs).
 *
 * Build on the GPU machine: nvcc -O2 bench/ctx_probe.cu -lcublasLt -lcublas -ldl -o ctx_probe
 *   ctx_probe [STACK_BYTES]   STACK_BYTES: cudaLimitStackSize set first (default: left alone)
 */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static size_t used(void)
{
    size_t f = 0, t = 0;
    cudaMemGetInfo(&f, &t);
    return t - f;
}

static void line(const char *what, size_t before)
{
    size_t u = used();
    printf("%-44s used %8.1f MiB  (+%.1f)\n", what, u / 1048576.0, ((double)u - (double)before) / 1048576.0);
}

// a kernel with a large local array, to see the driver grow local memory past a small stack limit
__global__ void k_local(float *out, int n)
{
    volatile float buf[512];
    for (int i = 0; i < 512; i++)
        buf[i] = (float)(i * n);
    float s = 0;
    for (int i = 0; i < 512; i += 7)
        s += buf[(i * 13 + threadIdx.x) % 512];
    if (out)
        out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}

__global__ void k_plain(float *out) { if (out) out[threadIdx.x] = 1.0f; }

int main(int argc, char **argv)
{
    size_t stack_set = argc > 1 ? strtoull(argv[1], NULL, 10) : 0;
    cudaDeviceProp p;
    cudaFree(0);
    cudaGetDeviceProperties(&p, 0);
    size_t u0 = used(), stack = 0;
    cudaDeviceGetLimit(&stack, cudaLimitStackSize);
    printf("%s: %d SMs, %d threads per SM; default stack %zu bytes per thread (x all threads = %.1f MiB)\n", p.name,
           p.multiProcessorCount, p.maxThreadsPerMultiProcessor, stack,
           (double)stack * p.maxThreadsPerMultiProcessor * p.multiProcessorCount / 1048576.0);
    line("context (cudaFree(0))", 0);
    if (argc > 1) {
        cudaError_t e = cudaDeviceSetLimit(cudaLimitStackSize, stack_set);
        cudaDeviceGetLimit(&stack, cudaLimitStackSize);
        printf("cudaDeviceSetLimit(stack, %zu): %s, now %zu\n", stack_set, cudaGetErrorString(e), stack);
        line("after the stack limit", u0);
    }
    size_t u = used();
    cudaStream_t s1, s2;
    cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking);
    cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking);
    k_plain<<<1, 32, 0, s1>>>(NULL);
    cudaStreamSynchronize(s1);
    line("two streams, one kernel", u);
    u = used();
    cublasLtHandle_t lt;
    cublasHandle_t blas;
    cublasLtCreate(&lt);
    cublasCreate(&blas);
    line("cublasLtCreate + cublasCreate", u);
    u = used();
    void *ws = NULL;
    cudaMalloc(&ws, 32 << 20);
    cublasSetWorkspace(blas, ws, 32 << 20);
    line("32 MiB cuBLAS workspace", u);
    u = used();
    // one f16 GEMM through cuBLAS, as the first linear layer would
    {
        int n = 1024;
        void *a, *b, *c;
        cudaMalloc(&a, (size_t)n * n * 2);
        cudaMalloc(&b, (size_t)n * n * 2);
        cudaMalloc(&c, (size_t)n * n * 2);
        float one = 1, zero = 0;
        cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16F, n, b, CUDA_R_16F, n, &zero, c,
                     CUDA_R_16F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        cudaDeviceSynchronize();
        line("one f16 GEMM (6 MiB of operands)", u);
    }
    u = used();
    void *dl = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_LOCAL);
    if (dl) {
        typedef int (*create_fn)(void **);
        create_fn create = (create_fn)dlsym(dl, "cudnnCreate");
        void *h = NULL;
        int st = create ? create(&h) : -1;
        printf("cudnnCreate: %d\n", st);
        line("cuDNN loaded, handle created", u);
    } else {
        printf("cuDNN: %s\n", dlerror());
    }
    u = used();
    cudaDeviceGetLimit(&stack, cudaLimitStackSize);
    k_local<<<p.multiProcessorCount * 4, 256>>>(NULL, 3);
    cudaError_t e = cudaDeviceSynchronize();
    size_t stack2 = 0;
    cudaDeviceGetLimit(&stack2, cudaLimitStackSize);
    printf("kernel with 2 KiB of local memory per thread: %s; stack limit %zu -> %zu\n", cudaGetErrorString(e), stack,
           stack2);
    line("after it", u);
    line("total: context and libraries", 0);
    return 0;
}
