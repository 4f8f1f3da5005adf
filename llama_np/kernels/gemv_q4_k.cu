// gemv_q4_k.cu, one of llama_np.gpu's kernel files (llama_np/kernels/__init__.py joins them).
// GGUF Q4_K weights, read as stored (llama_np/weights/quants.py has the format in NumPy):
// super-blocks of 256 weights, 144 bytes = 9 x 16 bytes:
//   bytes 0-1  d (fp16), 2-3 dmin (fp16), 4-15 eight 6-bit scales and eight 6-bit mins, packed;
//   bytes 16-143  128 bytes of 4-bit codes q: byte 32 * k + l holds weight 64 * k + l in its low
//                 nibble (sub-block 2k) and weight 64 * k + 32 + l in its high nibble (sub-block 2k+1).
// Weight = (d * scale[s]) * q - dmin * min[s], s = its sub-block of 32.
#include "dtypes.cuh"

// The 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes, held as the words
// s0, s1, s2 (bytes 0-3, 4-7, 8-11): llama.cpp's get_scale_min_k4. Scales and mins 0-3 are the low
// 6 bits of bytes 0-3 and 4-7; 4-7 take their low 4 bits from bytes 8-11 (scale: low nibble, min:
// high nibble) and their top 2 bits from the top of bytes 0-3 (scale) and 4-7 (min).
__device__ __forceinline__ void q4_k_scale_min(unsigned int s0, unsigned int s1, unsigned int s2, int j,
                                               unsigned int& sc, unsigned int& m) {
    if (j < 4) {
        sc = byte_u8(s0, j) & 63u;
        m = byte_u8(s1, j) & 63u;
    } else {
        sc = (byte_u8(s2, j - 4) & 15u) | ((byte_u8(s0, j - 4) >> 6) << 4);
        m = (byte_u8(s2, j - 4) >> 4) | ((byte_u8(s1, j - 4) >> 6) << 4);
    }
}

// y[r] (+)= sum_j W[r, j] x[j], W: (rows, n) as rows of n / 256 Q4_K super-blocks.
// One warp per row (GEMV_KERNELS in dtypes.cuh). Super-blocks are 16-byte aligned, so every load
// is 16 bytes wide: eight lanes share a super-block, each loading its header (the same 16 bytes for
// all eight: one transaction) and one 16-byte slice of the codes, i.e. 16 weights of sub-block 2k
// and 16 of 2k + 1. The warp reads 4 super-blocks, 576 contiguous bytes, per step. Scales and mins
// come out of the sums:
//   sum_j w_j x_j = (d * scale) * sum_j q_j x_j - (dmin * min) * sum_j x_j   over a sub-block,
// so the inner loop is one multiply-add per weight (as llama.cpp's dequantize_mul_mat_vec_q4_k).
// NORM: x * g, and x^2 summed on the way: the warp reads every x[j] exactly once.
struct RowsQ4_K {
    const unsigned char* W;
    int n;
    template <bool NORM>
    __device__ __forceinline__ float lane_dot(int row, int lane, const float* __restrict__ x,
                                              const float* __restrict__ g, float& ss) const {
        int nsb = n / 256;
        const uint4* Wr = reinterpret_cast<const uint4*>(W + (size_t)row * nsb * 144);   // 9 uint4 a super-block
        int part = lane & 7;             // codes 16 * part .. 16 * part + 15
        int k = part >> 1;               // ... in the 64 weights 64 * k .. (sub-blocks 2k, 2k + 1)
        int l0 = 16 * (part & 1);        // ... at l = l0 .. l0 + 15
        float acc = 0.f;
        for (int sb = lane >> 3; sb < nsb; sb += 4) {
            uint4 h = __ldg(Wr + 9 * sb);               // d, dmin, the 12 scale bytes
            uint4 q = __ldg(Wr + 9 * sb + 1 + part);    // 16 bytes of codes
            float d = f16_to_f32(h.x & 0xffffu), dmin = f16_to_f32(h.x >> 16);
            unsigned int sc1, m1, sc2, m2;
            q4_k_scale_min(h.y, h.z, h.w, 2 * k, sc1, m1);
            q4_k_scale_min(h.y, h.z, h.w, 2 * k + 1, sc2, m2);
            const float4* xl = reinterpret_cast<const float4*>(x + 256 * sb + 64 * k + l0);   // low nibbles
            const float4* xh = xl + 8;                                                          // high: 32 further
            const float4* gl = reinterpret_cast<const float4*>(g + 256 * sb + 64 * k + l0);
            const float4* gh = gl + 8;
            unsigned int words[4] = {q.x, q.y, q.z, q.w};
            float sl = 0.f, sh = 0.f, xsl = 0.f, xsh = 0.f;   // sum q x and sum x, each sub-block
            #pragma unroll
            for (int i = 0; i < 4; i++) {
                float4 a = xl[i], c = xh[i];
                if (NORM) {
                    ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w + c.x * c.x + c.y * c.y + c.z * c.z + c.w * c.w;
                    float4 ga = gl[i], gc = gh[i];
                    a.x *= ga.x; a.y *= ga.y; a.z *= ga.z; a.w *= ga.w; c.x *= gc.x; c.y *= gc.y; c.z *= gc.z; c.w *= gc.w;
                }
                unsigned int v = words[i];
                sl += (float)(v & 15u) * a.x + (float)((v >> 8) & 15u) * a.y
                    + (float)((v >> 16) & 15u) * a.z + (float)((v >> 24) & 15u) * a.w;
                sh += (float)((v >> 4) & 15u) * c.x + (float)((v >> 12) & 15u) * c.y
                    + (float)((v >> 20) & 15u) * c.z + (float)(v >> 28) * c.w;
                xsl += a.x + a.y + a.z + a.w;
                xsh += c.x + c.y + c.z + c.w;
            }
            acc += (d * (float)sc1) * sl - (dmin * (float)m1) * xsl + (d * (float)sc2) * sh - (dmin * (float)m2) * xsh;
        }
        return acc;
    }
    __device__ __forceinline__ float weight(size_t row, int j) const {      // (d * scale) * q - dmin * min
        const unsigned char* blk = W + (row * (n / 256) + j / 256) * 144;
        uint4 h = __ldg(reinterpret_cast<const uint4*>(blk));
        int jj = j % 256, k = jj / 64, hi = (jj % 64) / 32, l = jj % 32;
        unsigned int byte = blk[16 + 32 * k + l], sc, m;
        q4_k_scale_min(h.y, h.z, h.w, 2 * k + hi, sc, m);
        float q = (float)(hi ? byte >> 4 : byte & 15u);
        float d = f16_to_f32(h.x & 0xffffu), dmin = f16_to_f32(h.x >> 16);
        return __fsub_rn(__fmul_rn(__fmul_rn(d, (float)sc), q), __fmul_rn(dmin, (float)m));
    }
};

GEMV_KERNELS(q4_k, (const unsigned char* W), (RowsQ4_K{W, n}))
DEQUANT_KERNELS(q4_k, (const unsigned char* W), (RowsQ4_K{W, n}))
