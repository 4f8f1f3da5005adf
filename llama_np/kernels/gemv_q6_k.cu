// gemv_q6_k.cu, one of llama_np.gpu's kernel files (llama_np/kernels/__init__.py joins them).
// GGUF Q6_K weights, read as stored (llama_np/weights/quants.py has the format in NumPy):
// super-blocks of 256 weights, 210 bytes, in two halves of 128 weights (h = 0, 1):
//   ql, bytes 0-127: the low 4 bits; half h, l = 0..31: ql[64h + l] low nibble -> weight 128h + l,
//       ql[64h + 32 + l] low -> 128h + 32 + l, ql[64h + l] high -> 128h + 64 + l, ql[64h + 32 + l] high -> + 96;
//   qh, bytes 128-191: the top 2 bits of those four weights, in bits 0-1, 2-3, 4-5, 6-7 of qh[32h + l];
//   scales, bytes 192-207: one int8 scale per 16 weights; d, bytes 208-209 (fp16).
// Weight = (d * scale) * (q - 32), q the 6-bit code.
#include "dtypes.cuh"

// y[r] (+)= sum_j W[r, j] x[j], W: (rows, n) as rows of n / 256 Q6_K super-blocks.
// One warp per row (GEMV_KERNELS in dtypes.cuh); eight lanes share a super-block: lane part p takes half h = p / 4 and
// l = 8 (p % 4) .. + 7, i.e. 8 bytes of ql at l, 8 at l + 32, 8 of qh, and so 32 weights in four
// groups of 8 that each have one scale. A super-block is only 2-byte aligned (210 bytes), so the
// bytes come in 16-bit loads (ld_u32_a2); the warp reads 4 super-blocks, 840 contiguous bytes, a
// step. Each group's scale is taken out of its sum: (d * scale) * sum (q - 32) x.
// NORM: x * g, and x^2 summed on the way: the warp reads every x[j] exactly once.
struct RowsQ6_K {
    const unsigned char* W;
    int n;
    template <bool NORM>
    __device__ __forceinline__ float lane_dot(int row, int lane, const float* __restrict__ x,
                                              const float* __restrict__ g, float& ss) const {
        int nsb = n / 256;
        const unsigned char* Wr = W + (size_t)row * nsb * 210;
        int part = lane & 7, h = part >> 2, l0 = 8 * (part & 3), is = l0 >> 4;
        float acc = 0.f;
        for (int sb = lane >> 3; sb < nsb; sb += 4) {
            const unsigned char* blk = Wr + (size_t)sb * 210;
            const unsigned char* ql = blk + 64 * h + l0;
            unsigned int A[2] = {ld_u32_a2(ql), ld_u32_a2(ql + 4)};            // ql[l], l = l0 .. l0 + 7
            unsigned int B[2] = {ld_u32_a2(ql + 32), ld_u32_a2(ql + 36)};      // ql[l + 32]
            unsigned int H[2] = {ld_u32_a2(blk + 128 + 32 * h + l0), ld_u32_a2(blk + 132 + 32 * h + l0)};
            unsigned int s0 = ld_u32_a2(blk + 192 + 8 * h), s1 = ld_u32_a2(blk + 196 + 8 * h);  // scales 8h .. 8h + 7
            float d = f16_to_f32(ld_u16(blk + 208));
            // the four groups' scales: scale[8h + is + 2 * quarter], quarter = 0..3
            float d1 = d * (float)byte_s8(s0, is), d2 = d * (float)byte_s8(s0, is + 2);
            float d3 = d * (float)byte_s8(s1, is), d4 = d * (float)byte_s8(s1, is + 2);
            const float* xb = x + 256 * sb + 128 * h + l0;
            const float* gb = g + 256 * sb + 128 * h + l0;
            float t[4] = {0.f, 0.f, 0.f, 0.f};              // sum (q - 32) x of each quarter
            #pragma unroll
            for (int quarter = 0; quarter < 4; quarter++) {
                #pragma unroll
                for (int half4 = 0; half4 < 2; half4++) {     // l = l0 + 4 * half4 .. + 3
                    float4 a = *reinterpret_cast<const float4*>(xb + 32 * quarter + 4 * half4);
                    if (NORM) {
                        ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
                        float4 ga = *reinterpret_cast<const float4*>(gb + 32 * quarter + 4 * half4);
                        a.x *= ga.x; a.y *= ga.y; a.z *= ga.z; a.w *= ga.w;
                    }
                    unsigned int lo = (quarter & 1) ? B[half4] : A[half4];    // quarters 1, 3: ql[l + 32]
                    int shift = (quarter & 2) ? 4 : 0;                        // quarters 2, 3: high nibble
                    float xs[4] = {a.x, a.y, a.z, a.w};
                    #pragma unroll
                    for (int b = 0; b < 4; b++) {
                        int q = (int)(((byte_u8(lo, b) >> shift) & 15u) | (((byte_u8(H[half4], b) >> (2 * quarter)) & 3u) << 4)) - 32;
                        t[quarter] += (float)q * xs[b];
                    }
                }
            }
            acc += d1 * t[0] + d2 * t[1] + d3 * t[2] + d4 * t[3];
        }
        return acc;
    }
    __device__ __forceinline__ float weight(size_t row, int j) const {      // (d * scale) * (q - 32)
        const unsigned char* blk = W + (row * (n / 256) + j / 256) * 210;
        int jj = j % 256, h = jj / 128, quarter = (jj % 128) / 32, l = jj % 32;
        unsigned int lo = blk[64 * h + 32 * (quarter & 1) + l];
        unsigned int hi = (blk[128 + 32 * h + l] >> (2 * quarter)) & 3u;
        int q = (int)((((quarter & 2) ? lo >> 4 : lo) & 15u) | (hi << 4)) - 32;
        float d = f16_to_f32(ld_u16(blk + 208));
        float sc = (float)(signed char)blk[192 + 8 * h + 2 * quarter + l / 16];
        return __fmul_rn(__fmul_rn(d, sc), (float)q);
    }
};

GEMV_KERNELS(q6_k, (const unsigned char* W), (RowsQ6_K{W, n}))
DEQUANT_KERNELS(q6_k, (const unsigned char* W), (RowsQ6_K{W, n}))
