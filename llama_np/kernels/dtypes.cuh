// dtypes.cuh: 16-bit weights widened to float32 inside the kernels (included by gemv, widen, embed),
// the loads that read GGUF's packed blocks, and the one-warp-a-row skeleton that every matrix-vector
// kernel shares (included by the gemv*.cu files).
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

// ------------------------------------------------------------------ one warp a row
// Every matrix-vector kernel (gemv.cu, gemv_q8_0.cu, gemv_q4_k.cu, gemv_q6_k.cu, gemv_int8.cu) is the
// same skeleton around one weight format's inner loop: warp r computes output row r, each of its
// 32 lanes sums a share of the row, and a warp sum finishes it. A format is a struct M with
//     template <bool NORM> __device__ float lane_dot(int row, int lane, const float* x,
//                                                    const float* g, float& ss) const;
// which returns this lane's share of sum_j W[row, j] x'[j], where x' = x * g if NORM (adding its
// x[j]^2 to ss on the way) and x' = x otherwise, and an int n, the length of a row.
// NORM fuses RMSNorm in: y = W (x * g) / rms(x). Every warp reads all of x anyway, so it sums x^2
// for free; that saves a one-block RMSNorm launch before each normed product of a decode step.
template <class M, bool NORM>
__device__ __forceinline__ float row_dot(const M& m, int row, int lane, const float* x, const float* g, float eps) {
    float ss = 0.f;
    float acc = warp_sum(m.template lane_dot<NORM>(row, lane, x, g, ss));
    if (NORM) acc *= 1.0f / sqrtf(warp_sum(ss) / m.n + eps);
    return acc;
}

// y[r] (+)= sum_j W[r, j] x'[j]: accumulate for the residual adds after wo and w2; NORM (x' =
// rms_norm(x, g)) for the products after each RMSNorm (wqkv, a w13 of mixed kinds, the output head)
template <bool NORM, class M>
__device__ __forceinline__ void gemv_rows(const M& m, const float* x, const float* g, float* y, int rows,
                                          int accumulate, float eps) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= rows) return;
    float acc = row_dot<M, NORM>(m, row, lane, x, g, eps);
    if (lane == 0) y[row] = accumulate ? y[row] + acc : acc;
}

// SwiGLU's first half in one kernel: W = [w1 (F rows) ; w3 (F rows)] (model.FUSED's w13), and
// warp j computes rows j and F + j of W rms_norm(x, g), then writes a[j] = silu(gate) * up. This
// saves the separate swiglu launch and the round trip of h13 through memory; the warp reads x
// (from L1/L2) twice, the weights once.
template <class M>
__device__ __forceinline__ void gemv_norm_swiglu_rows(const M& m, const float* x, const float* g, float* a, int F,
                                                      float eps) {
    int j = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (j >= F) return;
    float gate = row_dot<M, true>(m, j, lane, x, g, eps);
    float up = row_dot<M, true>(m, F + j, lane, x, g, eps);
    if (lane == 0) a[j] = gate / (1.0f + expf(-gate)) * up;
}

// Y[t, r] = sum_j W[r, j] X[t, j] for a few tokens t < T (a short prompt, a chat turn: the Decoder's
// prefill runs the model code, whose products then come here for T <= gpu.FEW_TOKENS). Warp r
// reads its row from memory for the first token; for the others it reads it again from L1/L2,
// where it has just been. So memory traffic stays one read of the packed or 16-bit weights, where
// dequantizing them into a tile for cuBLAS writes and reads every weight again as fp16.
template <class M>
__device__ __forceinline__ void gemm_few_rows(const M& m, const float* X, float* Y, int rows, int T) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= rows) return;
    for (int t = 0; t < T; ++t) {
        float acc = row_dot<M, false>(m, row, lane, X + (size_t)t * m.n, nullptr, 0.f);
        if (lane == 0) Y[(size_t)t * rows + row] = acc;
    }
}

// out[r, j] = W[ids[r], j] as float32 or fp16 bits (OUT = float or unsigned short), one thread a
// weight: the embedding lookup (ids = the decoder's state: state[0] is the token) and a long
// prefill's tiles (ids = the rows of the tile, then cuBLAS). A packed format's struct M has
// ``float weight(size_t row, int j) const``, the float32 operations of quants.py in its order with
// no fused multiply-add (__fmul_rn, __fsub_rn), so the float32 output equals the NumPy
// dequantizer's bit for bit.
template <class M, typename OUT>
__device__ __forceinline__ void dequant_rows(const M& m, const int* __restrict__ ids, OUT* __restrict__ out,
                                             int n_rows) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n_rows * m.n) return;
    int r = (int)(i / m.n), j = (int)(i % m.n);
    store_w(out + i, m.weight((size_t)ids[r], j));
}

// The four kernels of a weight format NAME, whose data pointers are PARAMS and whose struct is
// made by MAKE (both in parentheses; n, the row length, is in scope for MAKE):
//   gemv_NAME(PARAMS, x, y, rows, n, accumulate), gemv_norm_NAME(PARAMS, x, g, y, rows, n, eps),
//   gemv_norm_swiglu_NAME(PARAMS, x, g, a, F, n, eps)   (F = rows / 2: a's length),
//   gemm_few_NAME(PARAMS, X, Y, rows, n, T)             (X: (T, n), Y: (T, rows))
#define LLAMA_NP_UNPAREN(...) __VA_ARGS__
#define GEMV_KERNELS(NAME, PARAMS, MAKE)                                                                  \
extern "C" __global__ void gemv_##NAME(LLAMA_NP_UNPAREN PARAMS, const float* x, float* y, int rows, int n,  \
                                       int accumulate) {                                                  \
    gemv_rows<false>(LLAMA_NP_UNPAREN MAKE, x, nullptr, y, rows, accumulate, 0.f);                        \
}                                                                                                         \
extern "C" __global__ void gemv_norm_##NAME(LLAMA_NP_UNPAREN PARAMS, const float* x, const float* g, float* y, \
                                            int rows, int n, float eps) {                                 \
    gemv_rows<true>(LLAMA_NP_UNPAREN MAKE, x, g, y, rows, 0, eps);                                        \
}                                                                                                         \
extern "C" __global__ void gemv_norm_swiglu_##NAME(LLAMA_NP_UNPAREN PARAMS, const float* x, const float* g, \
                                                   float* a, int F, int n, float eps) {                   \
    gemv_norm_swiglu_rows(LLAMA_NP_UNPAREN MAKE, x, g, a, F, eps);                                        \
}                                                                                                         \
extern "C" __global__ void gemm_few_##NAME(LLAMA_NP_UNPAREN PARAMS, const float* X, float* Y, int rows,    \
                                           int n, int T) {                                                \
    gemm_few_rows(LLAMA_NP_UNPAREN MAKE, X, Y, rows, T);                                                  \
}

// The two dequantizing kernels of a packed format (PARAMS, MAKE as above):
//   dequant_NAME_f32(PARAMS, ids, out, n_rows, n), dequant_NAME_f16(PARAMS, ids, out, n_rows, n)
#define DEQUANT_KERNELS(NAME, PARAMS, MAKE)                                                               \
extern "C" __global__ void dequant_##NAME##_f32(LLAMA_NP_UNPAREN PARAMS, const int* ids, float* out,       \
                                                int n_rows, int n) {                                      \
    dequant_rows(LLAMA_NP_UNPAREN MAKE, ids, out, n_rows);                                                \
}                                                                                                         \
extern "C" __global__ void dequant_##NAME##_f16(LLAMA_NP_UNPAREN PARAMS, const int* ids, unsigned short* out, \
                                                int n_rows, int n) {                                      \
    dequant_rows(LLAMA_NP_UNPAREN MAKE, ids, out, n_rows);                                                \
}

#endif
