// dtypes.cuh: 16-bit weights widened to float32 inside the kernels (included by gemv, widen, embed).
// CuPy has no bfloat16 dtype, so bf16 weights stay raw 16-bit words on the GPU: bf16 -> float32
// is just `bits << 16`; fp16 -> float32 is one PTX conversion.
#ifndef LLAMA_NP_DTYPES_CUH
#define LLAMA_NP_DTYPES_CUH

__device__ __forceinline__ float bf16_to_f32(unsigned int h) { return __uint_as_float(h << 16); }
__device__ __forceinline__ float f16_to_f32(unsigned int h) {
    float f; unsigned short s = (unsigned short)h;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(s));
    return f;
}

#endif
