// gemv_int8.cu, one of llama_np.gpu's kernel files (llama_np/kernels/__init__.py joins them).
// llama_np's int8 mode (llama_np/weights/packed.py, Int8Weight): codes Q (rows, n) int8 and one
// float32 scale s per row; weight = Q[r, j] * s[r].
#include "dtypes.cuh"

// y[r] (+)= s[r] * sum_j Q[r, j] x[j]. One warp per row (GEMV_KERNELS in dtypes.cuh), 16 codes per
// 16-byte load (n % 16 == 0: rows are then 16-byte aligned), so a warp reads 512 contiguous bytes per
// step, as gemv.cu does for 16-bit weights; the row's scale multiplies each lane's share of the sum
// (the CPU path multiplies the finished sum: the same up to float32 rounding). NORM: as in gemv.cu.
struct RowsInt8 {
    const signed char* Q;
    const float* s;
    int n;
    template <bool NORM>
    __device__ __forceinline__ float lane_dot(int row, int lane, const float* __restrict__ x,
                                              const float* __restrict__ g, float& ss) const {
        const uint4* q4 = reinterpret_cast<const uint4*>(Q + (size_t)row * n);
        const float4* x4 = reinterpret_cast<const float4*>(x);
        const float4* g4 = reinterpret_cast<const float4*>(g);
        float acc = 0.f;
        #pragma unroll 2
        for (int i = lane; i < n / 16; i += 32) {
            uint4 p = __ldg(q4 + i);
            unsigned int words[4] = {p.x, p.y, p.z, p.w};
            #pragma unroll
            for (int k = 0; k < 4; k++) {
                float4 a = x4[4 * i + k];
                if (NORM) {
                    ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
                    float4 ga = g4[4 * i + k];
                    a.x *= ga.x; a.y *= ga.y; a.z *= ga.z; a.w *= ga.w;
                }
                acc += (float)byte_s8(words[k], 0) * a.x + (float)byte_s8(words[k], 1) * a.y
                     + (float)byte_s8(words[k], 2) * a.z + (float)byte_s8(words[k], 3) * a.w;
            }
        }
        return acc * s[row];
    }
    __device__ __forceinline__ float weight(size_t row, int j) const {      // Q * s
        return __fmul_rn((float)Q[row * n + j], s[row]);
    }
};

GEMV_KERNELS(int8, (const signed char* Q, const float* s), (RowsInt8{Q, s, n}))
DEQUANT_KERNELS(int8, (const signed char* Q, const float* s), (RowsInt8{Q, s, n}))
