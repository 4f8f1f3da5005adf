// gemv_q8_0.cu, one of llama_np.gpu's kernel files (llama_np/kernels/__init__.py joins them).
// GGUF Q8_0 weights, read as stored (llama_np/weights/quants.py has the format in NumPy):
// blocks of 32 weights, 34 bytes each: d (fp16), then 32 int8 codes q; weight = d * q.
#include "dtypes.cuh"

// y[r] (+)= sum_j W[r, j] x[j], W: (rows, n) as rows of n / 32 Q8_0 blocks.
// One warp per row (GEMV_KERNELS in dtypes.cuh). Four lanes share a block, 8 codes each (four
// 16-bit loads: a block is only 2-byte aligned), so the warp reads 8 blocks, 272 contiguous bytes,
// per step. The scale is taken out of the block's sum: d * sum(q x), one multiply per 8 weights
// per lane (modelled on llama.cpp's dequantize_mul_mat_vec; fp32 throughout, no integer dot
// products). NORM: x * g, and x^2 summed on the way: the warp reads every x[j] exactly once.
struct RowsQ8_0 {
    const unsigned char* W;
    int n;
    template <bool NORM>
    __device__ __forceinline__ float lane_dot(int row, int lane, const float* __restrict__ x,
                                              const float* __restrict__ g, float& ss) const {
        int nb = n / 32;
        const unsigned char* Wr = W + (size_t)row * nb * 34;
        int part = lane & 3;                  // codes 8 * part .. 8 * part + 7 of the block
        float acc = 0.f;
        #pragma unroll 2
        for (int b = lane >> 2; b < nb; b += 8) {
            const unsigned char* blk = Wr + (size_t)b * 34;
            float d = f16_to_f32(ld_u16(blk));
            unsigned int q0 = ld_u32_a2(blk + 2 + 8 * part), q1 = ld_u32_a2(blk + 6 + 8 * part);
            const float4* x4 = reinterpret_cast<const float4*>(x + 32 * b + 8 * part);
            float4 a = x4[0], c = x4[1];
            if (NORM) {
                ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w + c.x * c.x + c.y * c.y + c.z * c.z + c.w * c.w;
                const float4* g4 = reinterpret_cast<const float4*>(g + 32 * b + 8 * part);
                float4 ga = g4[0], gc = g4[1];
                a.x *= ga.x; a.y *= ga.y; a.z *= ga.z; a.w *= ga.w; c.x *= gc.x; c.y *= gc.y; c.z *= gc.z; c.w *= gc.w;
            }
            float s = byte_s8(q0, 0) * a.x + byte_s8(q0, 1) * a.y + byte_s8(q0, 2) * a.z + byte_s8(q0, 3) * a.w
                    + byte_s8(q1, 0) * c.x + byte_s8(q1, 1) * c.y + byte_s8(q1, 2) * c.z + byte_s8(q1, 3) * c.w;
            acc += d * s;
        }
        return acc;
    }
    __device__ __forceinline__ float weight(size_t row, int j) const {      // d * q
        const unsigned char* blk = W + (row * (n / 32) + j / 32) * 34;
        return __fmul_rn(f16_to_f32(ld_u16(blk)), (float)(signed char)blk[2 + j % 32]);
    }
};

GEMV_KERNELS(q8_0, (const unsigned char* W), (RowsQ8_0{W, n}))
DEQUANT_KERNELS(q8_0, (const unsigned char* W), (RowsQ8_0{W, n}))
