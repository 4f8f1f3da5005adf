// dtypes.cuh: 16-bit weights widened to float32 inside the kernels (included by gemv, widen, embed),
// and the loads that read GGUF's packed blocks (included by the gemv_q*.cu files).
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
// float32 -> fp16 bits, rounded to nearest even (the prefill's fp16 tiles).
__device__ __forceinline__ unsigned short f32_to_f16_bits(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
// A dequantized weight stored as float32, or as fp16 bits (an unsigned short: CuPy's float16).
__device__ __forceinline__ void store_w(float* p, float w) { *p = w; }
__device__ __forceinline__ void store_w(unsigned short* p, float w) { *p = f32_to_f16_bits(w); }

// GGUF blocks are 34 (Q8_0), 144 (Q4_K) and 210 (Q6_K) bytes, stored back to back: a Q4_K block
// starts on a 16-byte boundary (144 = 9 * 16), but Q8_0 and Q6_K blocks only on a 2-byte one.
// So those are read 16 bits at a time; ld_u32_a2 puts two such loads together (little-endian).
__device__ __forceinline__ unsigned int ld_u16(const unsigned char* p) {
    return __ldg(reinterpret_cast<const unsigned short*>(p));
}
__device__ __forceinline__ unsigned int ld_u32_a2(const unsigned char* p) {
    return ld_u16(p) | (ld_u16(p + 2) << 16);
}
// byte k (0..3) of a 32-bit word, as a signed or unsigned number
__device__ __forceinline__ int byte_s8(unsigned int w, int k) { return (int)(signed char)(w >> (8 * k)); }
__device__ __forceinline__ unsigned int byte_u8(unsigned int w, int k) { return (w >> (8 * k)) & 0xffu; }

// Sum over the 32 lanes of a warp; every lane gets the total.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

#endif
