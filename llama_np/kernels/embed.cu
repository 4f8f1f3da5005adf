// embed.cu, one of llama_np.gpu's kernel files (llama_np/kernels/__init__.py joins them).
#include "dtypes.cuh"

// The token's embedding row, widened. state[0] = token id.
#define EMBED(NAME, T, CONV) \
extern "C" __global__ void NAME(const T* E, const int* state, float* x, int dim) { \
    int j = blockIdx.x * blockDim.x + threadIdx.x; \
    if (j < dim) x[j] = CONV(E[(size_t)state[0] * dim + j]); \
}
__device__ __forceinline__ float f32_id(float v) { return v; }
EMBED(embed_bf16, unsigned short, bf16_to_f32)
EMBED(embed_f16, unsigned short, f16_to_f32)
EMBED(embed_f32, float, f32_id)
