// widen.cu, one of llama_np.gpu's kernel files (llama_np/kernels/__init__.py joins them).
#include "dtypes.cuh"

// Widen a whole 16-bit matrix to float32 (for cuBLAS in the prefill).
extern "C" __global__ void widen_bf16(const unsigned short* src, float* dst, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = bf16_to_f32(src[i]);
}
extern "C" __global__ void widen_f16(const unsigned short* src, float* dst, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = f16_to_f32(src[i]);
}

// bf16 -> fp16 bits, for the tensor-core prefill (cuBLAS multiplies fp16, CuPy has no bf16).
// Exact for every weight of fp16's normal range, 6.1e-5 <= |w| <= 65504: bf16's 8 significant
// bits fit in fp16's 11. Smaller weights lose low bits as fp16 subnormals (under 6e-8 they become 0).
extern "C" __global__ void bf16_to_f16(const unsigned short* src, unsigned short* dst, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        unsigned short h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(bf16_to_f32(src[i])));
        dst[i] = h;
    }
}
