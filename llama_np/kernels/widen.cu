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
