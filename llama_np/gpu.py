"""The GPU path: the same Llama on an NVIDIA GPU with CuPy, close to the memory-bandwidth limit.

Two regimes, two tools:

* **Prefill** (a prompt of T tokens) is compute-bound: every weight is used T times. It runs the
  ordinary model code (``llama_np.model.forward``) on CuPy arrays; each matrix product widens its
  16-bit weight to float32 and calls cuBLAS. Nothing here is GPU-specific except the arrays.
* **Decode** (one token) is bandwidth-bound: every weight is read once to do 2 flops, so the speed
  limit is (bytes of weights) / (HBM bandwidth): Llama 3 8B in 16 bits reads ~15 GB a token, an
  H100 SXM streams ~3.35 TB/s, so at most ~223 tokens/s. Getting near it takes three things:
  1. weights kept 16-bit on the GPU (bf16 as raw 16-bit words: CuPy has no bfloat16 dtype;
     bf16 -> float32 is ``bits << 16``, done inside the kernels);
  2. matrix-vector kernels that read the weights with wide (16-byte) loads, one warp per row
     (``gemv_*`` below), instead of a generic GEMM tuned for big matrices;
  3. few launches: a decode step of Llama 3 8B is 258 kernels (8 a layer, RMSNorm fused into
     the products after it); at ~5-10 us of CPU time per CuPy launch that alone would cap decode
     near 400 tok/s and, worse, leave the GPU idle between kernels. ``Decoder`` records the whole
     step once as a CUDA graph and replays it with one launch. CuPy cannot capture cuBLAS in a
     graph, which is why decode uses only the hand-written kernels here (docs/design.md §6).

Measured on an H100 80GB HBM3 (2026-11-27, benchmarks/gpu.py, Llama 3 8B shape, bf16): decode
163.4 tok/s = 82 % of the 199 tok/s HBM limit (transformers eager: 32.4). The graph took the
host-driven loop from 146 to 156 tok/s; fusing RMSNorm into the products, 139 -> 161 tok/s in an
earlier run; the on-device greedy argmax, 156 -> 163. The same step as separate CuPy array
operations (model.forward) ran 13.2 tok/s.

Importing this module never imports CuPy; everything that needs it calls ``_cp()``.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import _cupy, to_numpy
from .kv_cache import KVCache
from .model import FUSED, flatten, forward, nest
from .rope import rope_angles, rope_frequencies

BLOCK = 256   # threads per block in every kernel below (the reductions assume a power of two)
ATTN_CHUNK = 64   # keys per block in decode attention (attn_partial)


def _cp():
    """CuPy, checked once (``backend._cupy``). It does not select the device: the GPU functions
    here are called on every matrix product of a prefill, and must not switch ``use``'s choice."""
    return _cupy()


def decode_limit(weight_bytes_per_token: float, bandwidth_bytes_per_s: float) -> float:
    """Tokens/s if decoding did nothing but read its weights once at full bandwidth."""
    return bandwidth_bytes_per_s / weight_bytes_per_token


# ------------------------------------------------------------------------------- kernels
# One CUDA source, compiled once per process (cupy.RawModule caches the binary on disk too).
# Scalars are passed as NumPy int32/float32: CuPy passes Python ints as 64-bit.
KERNELS = r"""
__device__ __forceinline__ float bf16_to_f32(unsigned int h) { return __uint_as_float(h << 16); }
__device__ __forceinline__ float f16_to_f32(unsigned int h) {
    float f; unsigned short s = (unsigned short)h;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(s));
    return f;
}

// y[r] (+)= sum_j W[r, j] x[j].  W: (rows, n) 16-bit, row-major, n % 8 == 0.
// One warp per row; each lane reads 16 bytes (8 weights) at a time, so a warp reads 512
// contiguous bytes per step: full-width, coalesced loads are what reach the HBM bandwidth.
// NORM: x is first RMS-normalised with gain g, y = W (x * g) / rms(x): every warp reads all of
// x anyway, so it sums x^2 on the way for free. This saves a separate one-block RMSNorm launch
// before each of the three normed products of a decode step (~7 us each on an H100, 65 a token
// of Llama 3 8B: 0.43 ms of a 7 ms step, measured).
template <int KIND, bool NORM>   // KIND 0: bf16, 1: fp16
__device__ __forceinline__ void gemv16(const unsigned short* __restrict__ W, const float* __restrict__ x,
                                       const float* __restrict__ g, float* __restrict__ y,
                                       int rows, int n, int accumulate, float eps) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const uint4* w4 = reinterpret_cast<const uint4*>(W + (size_t)row * n);
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const float4* g4 = reinterpret_cast<const float4*>(g);
    float acc = 0.f, ss = 0.f;
    #pragma unroll 4
    for (int i = lane; i < n / 8; i += 32) {
        uint4 p = __ldg(w4 + i);
        float4 a = x4[2 * i], b = x4[2 * i + 1];
        if (NORM) {
            ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w + b.x * b.x + b.y * b.y + b.z * b.z + b.w * b.w;
            float4 ga = g4[2 * i], gb = g4[2 * i + 1];
            a.x *= ga.x; a.y *= ga.y; a.z *= ga.z; a.w *= ga.w; b.x *= gb.x; b.y *= gb.y; b.z *= gb.z; b.w *= gb.w;
        }
        if (KIND == 0) {
            acc += bf16_to_f32(p.x & 0xffffu) * a.x + bf16_to_f32(p.x >> 16) * a.y
                 + bf16_to_f32(p.y & 0xffffu) * a.z + bf16_to_f32(p.y >> 16) * a.w
                 + bf16_to_f32(p.z & 0xffffu) * b.x + bf16_to_f32(p.z >> 16) * b.y
                 + bf16_to_f32(p.w & 0xffffu) * b.z + bf16_to_f32(p.w >> 16) * b.w;
        } else {
            acc += f16_to_f32(p.x & 0xffffu) * a.x + f16_to_f32(p.x >> 16) * a.y
                 + f16_to_f32(p.y & 0xffffu) * a.z + f16_to_f32(p.y >> 16) * a.w
                 + f16_to_f32(p.z & 0xffffu) * b.x + f16_to_f32(p.z >> 16) * b.y
                 + f16_to_f32(p.w & 0xffffu) * b.z + f16_to_f32(p.w >> 16) * b.w;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        acc += __shfl_down_sync(0xffffffffu, acc, o);
        if (NORM) ss += __shfl_down_sync(0xffffffffu, ss, o);
    }
    if (NORM) acc *= 1.0f / sqrtf(ss / n + eps);
    if (lane == 0) y[row] = accumulate ? y[row] + acc : acc;
}

// float32 weights (n % 4 == 0): the same warp-per-row scheme, 4 weights per 16-byte load.
template <bool NORM>
__device__ __forceinline__ void gemv32(const float* __restrict__ W, const float* __restrict__ x,
                                       const float* __restrict__ g, float* __restrict__ y,
                                       int rows, int n, int accumulate, float eps) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float4* w4 = reinterpret_cast<const float4*>(W + (size_t)row * n);
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const float4* g4 = reinterpret_cast<const float4*>(g);
    float acc = 0.f, ss = 0.f;
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
    for (int o = 16; o > 0; o >>= 1) {
        acc += __shfl_down_sync(0xffffffffu, acc, o);
        if (NORM) ss += __shfl_down_sync(0xffffffffu, ss, o);
    }
    if (NORM) acc *= 1.0f / sqrtf(ss / n + eps);
    if (lane == 0) y[row] = accumulate ? y[row] + acc : acc;
}

extern "C" __global__ void gemv_bf16(const unsigned short* W, const float* x, float* y, int rows, int n, int acc) {
    gemv16<0, false>(W, x, nullptr, y, rows, n, acc, 0.f);
}
extern "C" __global__ void gemv_f16(const unsigned short* W, const float* x, float* y, int rows, int n, int acc) {
    gemv16<1, false>(W, x, nullptr, y, rows, n, acc, 0.f);
}
extern "C" __global__ void gemv_f32(const float* W, const float* x, float* y, int rows, int n, int acc) {
    gemv32<false>(W, x, nullptr, y, rows, n, acc, 0.f);
}
extern "C" __global__ void gemv_norm_bf16(const unsigned short* W, const float* x, const float* g, float* y,
                                          int rows, int n, float eps) {
    gemv16<0, true>(W, x, g, y, rows, n, 0, eps);
}
extern "C" __global__ void gemv_norm_f16(const unsigned short* W, const float* x, const float* g, float* y,
                                         int rows, int n, float eps) {
    gemv16<1, true>(W, x, g, y, rows, n, 0, eps);
}
extern "C" __global__ void gemv_norm_f32(const float* W, const float* x, const float* g, float* y,
                                         int rows, int n, float eps) {
    gemv32<true>(W, x, g, y, rows, n, 0, eps);
}

// Widen a whole 16-bit matrix to float32 (for cuBLAS in the prefill).
extern "C" __global__ void widen_bf16(const unsigned short* src, float* dst, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = bf16_to_f32(src[i]);
}
extern "C" __global__ void widen_f16(const unsigned short* src, float* dst, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = f16_to_f32(src[i]);
}

// RMSNorm, one block of 256 threads per row: y = x / sqrt(mean(x^2) + eps) * w.
extern "C" __global__ void rms_norm(const float* x, const float* w, float* y, int dim, float eps) {
    __shared__ float red[256];
    const float* xr = x + (size_t)blockIdx.x * dim;
    float* yr = y + (size_t)blockIdx.x * dim;
    float s = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) { float v = xr[i]; s += v * v; }
    red[threadIdx.x] = s;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) red[threadIdx.x] += red[threadIdx.x + k];
        __syncthreads();
    }
    float r = 1.0f / sqrtf(red[0] / dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * r * w[i];
}

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

// RoPE on the new token's q and k (Meta's neighbouring pairs), then k and v into the cache.
// One launch, 1.5 us on an H100, where model.forward's RoPE and cache writes are ~10 CuPy ops.
// qkv: [q (H*hd) | k (KV*hd) | v (KV*hd)]; cos/sin: (max_len, hd/2); state[1] = position.
// Cache: (n_layers, KV, max_len, hd) float32, the layout of llama_np.kv_cache.KVCache.
extern "C" __global__ void rope_store(float* qkv, const float* cos_t, const float* sin_t, const int* state,
                                      float* k_cache, float* v_cache, int H, int KV, int hd,
                                      int max_len, int layer) {
    int pos = state[1], half = hd / 2;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int n_rot = (H + KV) * half;
    if (i < n_rot) {
        int head = i / half, p = i % half;
        float c = cos_t[(size_t)pos * half + p], s = sin_t[(size_t)pos * half + p];
        float* v = qkv + (size_t)head * hd + 2 * p;
        float a = v[0], b = v[1];
        float ra = a * c - b * s, rb = a * s + b * c;      // (a + ib)(c + is)
        if (head < H) { v[0] = ra; v[1] = rb; }
        else {
            float* dst = k_cache + (((size_t)layer * KV + (head - H)) * max_len + pos) * hd + 2 * p;
            dst[0] = ra; dst[1] = rb;
        }
    } else if (i < n_rot + KV * hd) {
        int j = i - n_rot, kv = j / hd, d = j % hd;
        v_cache[(((size_t)layer * KV + kv) * max_len + pos) * hd + d] = qkv[(size_t)(H + KV) * hd + j];
    }
}

// Attention of one new query per head over positions 0..pos (state[1]), split over the keys
// ("flash-decoding"): block (h, part) takes keys part*chunk .. part*chunk+chunk-1 of head h and
// writes its own max m, sum l = sum exp(score - m) and acc = sum exp(score - m) v; attn_combine
// then merges the parts. One block per head would leave most of the GPU idle (32 blocks for
// Llama 3 8B) while each block reads its whole K and V alone. H100, ~600 positions: 10.5 us
// here + 3.5 us in attn_combine a layer, 0.45 ms of a 6.2 ms Llama 3 8B step.
// Threads work in groups of G = hd/4 (<= 32, so a group sits inside one warp), each thread one
// float4 of a key or value row: every load is 16 bytes and a group reads a row in one go.
// Shared memory: chunk scores (padded to 4), then 4 * blockDim floats for the reductions.
extern "C" __global__ void attn_partial(const float* q, const float* k_cache, const float* v_cache,
                                        float* pm, float* pl, float* pacc, const int* state,
                                        int H, int KV, int hd, int max_len, int layer, float scale,
                                        int chunk) {
    extern __shared__ float sh[];
    float* scores = sh;
    float* red = sh + ((chunk + 3) & ~3);
    int h = blockIdx.x, part = blockIdx.y, n_parts = gridDim.y;
    int kv = h / (H / KV), S = state[1] + 1;
    int s0 = part * chunk, n = min(s0 + chunk, S) - s0;          // keys of this part (may be <= 0)
    size_t o = (size_t)h * n_parts + part;
    int tid = threadIdx.x, G = hd / 4, g = tid / G, c = tid % G, n_groups = blockDim.x / G;
    if (n <= 0) {                                         // past the last position: an empty part
        if (tid == 0) { pm[o] = __int_as_float(0xff800000); pl[o] = 0.f; }
        if (tid < G) reinterpret_cast<float4*>(pacc + o * hd)[tid] = make_float4(0.f, 0.f, 0.f, 0.f);
        return;                                           // the whole block leaves together
    }
    size_t head = (((size_t)layer * KV + kv) * max_len + s0) * G;   // in float4s
    const float4* K4 = reinterpret_cast<const float4*>(k_cache) + head;
    const float4* V4 = reinterpret_cast<const float4*>(v_cache) + head;
    float4 qc = reinterpret_cast<const float4*>(q + (size_t)h * hd)[c];
    // 1. scores: group g takes keys g, g + n_groups, ...; every lane of a warp runs the same
    //    number of rounds, so the shuffles below always have all 32 lanes.
    for (int base = 0; base < n; base += n_groups) {
        int j = base + g;
        float v = 0.f;
        if (j < n) { float4 k = K4[(size_t)j * G + c]; v = qc.x * k.x + qc.y * k.y + qc.z * k.z + qc.w * k.w; }
        for (int off = G / 2; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
        if (c == 0 && j < n) scores[j] = v * scale;
    }
    __syncthreads();
    // 2. this part's max and sum of exp
    float m = __int_as_float(0xff800000);                 // -inf
    for (int j = tid; j < n; j += blockDim.x) m = fmaxf(m, scores[j]);
    red[tid] = m;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (tid < k) red[tid] = fmaxf(red[tid], red[tid + k]);
        __syncthreads();
    }
    m = red[0];
    __syncthreads();
    float sum = 0.f;
    for (int j = tid; j < n; j += blockDim.x) { float e = expf(scores[j] - m); scores[j] = e; sum += e; }
    red[tid] = sum;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (tid < k) red[tid] += red[tid + k];
        __syncthreads();
    }
    if (tid == 0) { pm[o] = m; pl[o] = red[0]; }
    // 3. acc = sum_j exp(score_j - m) v_j: group g sums keys g, g + n_groups, ... for its float4
    //    column c, then the groups' partial sums of each column meet in shared memory.
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int j = g; j < n; j += n_groups) {
        float p = scores[j];
        float4 v = V4[(size_t)j * G + c];
        acc.x += p * v.x; acc.y += p * v.y; acc.z += p * v.z; acc.w += p * v.w;
    }
    __syncthreads();                                      // red[0] has been read
    float4* part4 = reinterpret_cast<float4*>(red);
    part4[tid] = acc;                                     // tid == g * G + c
    __syncthreads();
    if (tid < G) {
        float4 t = part4[tid];
        for (int k = 1; k < n_groups; ++k) {
            float4 u = part4[k * G + tid];
            t.x += u.x; t.y += u.y; t.z += u.z; t.w += u.w;
        }
        reinterpret_cast<float4*>(pacc + o * hd)[tid] = t;
    }
}

// Merge the parts of each head: out = sum_p exp(m_p - M) acc_p / sum_p exp(m_p - M) l_p, M = max m_p.
// (An empty part has m = -inf, so its weight exp(-inf) is 0.)  One block per head.
extern "C" __global__ void attn_combine(const float* pm, const float* pl, const float* pacc, float* out,
                                        int hd, int n_parts) {
    int h = blockIdx.x;
    const float* m = pm + (size_t)h * n_parts;
    const float* l = pl + (size_t)h * n_parts;
    float M = m[0];                                       // part 0 always holds position 0
    for (int p = 1; p < n_parts; ++p) M = fmaxf(M, m[p]);
    float L = 0.f;
    for (int p = 0; p < n_parts; ++p) L += l[p] * expf(m[p] - M);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.f;
        for (int p = 0; p < n_parts; ++p) a += pacc[((size_t)h * n_parts + p) * hd + d] * expf(m[p] - M);
        out[(size_t)h * hd + d] = a / L;
    }
}

// SwiGLU's middle: a = silu(gate) * up, from h13 = [gate (F) | up (F)]. 1.5 us (H100), one
// launch for what is four array operations (exp, add, divide, multiply) in NumPy.
extern "C" __global__ void swiglu(const float* h13, float* a, int F) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < F) { float g = h13[i]; a[i] = g / (1.0f + expf(-g)) * h13[F + i]; }
}

// Greedy decoding on the device: the next token = argmax(logits) (the first of equal maxima, as
// NumPy's), written as state = (token, position + 1) for the next step and logged in
// tokens[position + 1] for the host to read while the GPU already runs the next step.
// One block of 1024 threads (a 128K vocabulary is 512 KB, just written, in L2).
extern "C" __global__ void argmax_next(const float* logits, int n, int* state, int* tokens) {
    __shared__ float bv[32];
    __shared__ int bi[32];
    float v = __int_as_float(0xff800000);
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float u = logits[i];
        if (u > v) { v = u; idx = i; }            // strided: a thread's first max has its smallest index
    }
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_down_sync(0xffffffffu, v, o);
        int j = __shfl_down_sync(0xffffffffu, idx, o);
        if (u > v || (u == v && j < idx)) { v = u; idx = j; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { bv[warp] = v; bi[warp] = idx; }
    __syncthreads();
    if (warp == 0) {
        int n_warps = blockDim.x >> 5;
        v = lane < n_warps ? bv[lane] : __int_as_float(0xff800000);
        idx = lane < n_warps ? bi[lane] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1) {
            float u = __shfl_down_sync(0xffffffffu, v, o);
            int j = __shfl_down_sync(0xffffffffu, idx, o);
            if (u > v || (u == v && j < idx)) { v = u; idx = j; }
        }
        if (lane == 0) {
            if (idx == 0x7fffffff) idx = 0;           // all NaN: a valid id rather than garbage
            int pos = state[1] + 1;
            state[0] = idx; state[1] = pos; tokens[pos] = idx;
        }
    }
}
"""

# The RMSNorm kernel on its own: lesson 11's exercise rewrites this one.
RMS_NORM_SOURCE = KERNELS[KERNELS.index("// RMSNorm"):KERNELS.index("// The token's embedding")]

_module = None
_functions = {}


def kernel(name: str):
    """A compiled kernel from KERNELS by name (compiled on first use, then looked up in a dict:
    asking CuPy's module for the function on every launch costs more than the launch)."""
    global _module
    f = _functions.get(name)
    if f is None:
        if _module is None:
            _module = _cp().RawModule(code=KERNELS, options=("-std=c++14",))
        f = _functions[name] = _module.get_function(name)
    return f


def _grid(n: int, block: int = BLOCK) -> tuple:
    return (max(1, -(-n // block)),)


def rms_norm(x, w, eps: float = 1e-5, out=None):
    """Fused RMSNorm (one kernel launch). x: (T, dim) float32 cupy, w: (dim,) float32 -> (T, dim)."""
    cp = _cp()
    x = cp.ascontiguousarray(x, dtype=cp.float32)
    out = cp.empty_like(x) if out is None else out
    T, dim = x.reshape(-1, x.shape[-1]).shape
    kernel("rms_norm")((T,), (BLOCK,), (x, w, out, np.int32(dim), np.float32(eps)))
    return out


def device_bandwidth(n_bytes: int = 2 << 30, repeats: int = 5) -> float:
    """HBM bandwidth in bytes/s, from the best of ``repeats`` device-to-device copies of
    ``n_bytes`` (a copy reads and writes each byte: 2 * n_bytes moved)."""
    cp = _cp()
    a = cp.ones(n_bytes // 4, dtype=cp.float32)
    b = cp.empty_like(a)
    b[...] = a
    start, end = cp.cuda.Event(), cp.cuda.Event()
    best = 0.0
    for _ in range(repeats):
        start.record()
        b[...] = a
        end.record()
        end.synchronize()
        best = max(best, 2 * a.nbytes / (cp.cuda.get_elapsed_time(start, end) / 1e3))
    del a, b
    return best


# -------------------------------------------------------------------------- device weights
class DeviceWeight:
    """A (out, in) matrix on the GPU, stored as ``kind`` = "bf16" (raw uint16 bits), "f16" or
    "f32". ``matmul(x)`` = x @ W.T in float32: a ``gemv_*`` kernel for one token, widen + cuBLAS
    for many. ``rows(ids)`` = W[ids] in float32 (the embedding lookup)."""
    is_packed = True

    def __init__(self, data, kind: str):
        self.data, self.kind = data, kind

    @property
    def shape(self):
        return self.data.shape

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def widen(self, data=None):
        """The matrix (or ``data``, rows of it) as float32."""
        cp = _cp()
        data = self.data if data is None else data
        if self.kind == "f32":
            return data
        out = cp.empty(data.shape, dtype=cp.float32)
        n = data.size
        kernel("widen_bf16" if self.kind == "bf16" else "widen_f16")(
            _grid(n), (BLOCK,), (cp.ascontiguousarray(data), out, np.int64(n)))
        return out

    def gemv(self, x, y, accumulate: bool = False, norm=None) -> None:
        """y (+)= W @ x for one vector: x (in,), y (out,) float32, both contiguous cupy arrays.
        ``norm=(g, eps)``: y = W @ rms_norm(x, g, eps) in the same kernel (no accumulate)."""
        rows, n = self.data.shape
        grid, i32 = _grid(rows * 32), np.int32
        if norm is None:
            kernel("gemv_" + self.kind)(grid, (BLOCK,), (self.data, x, y, i32(rows), i32(n), i32(accumulate)))
        else:
            g, eps = norm
            kernel("gemv_norm_" + self.kind)(grid, (BLOCK,), (self.data, x, g, y, i32(rows), i32(n), np.float32(eps)))

    def matmul(self, x):
        cp = _cp()
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[0] == 1 and self.data.shape[1] % 8 == 0:
            y = cp.empty((1, self.data.shape[0]), dtype=cp.float32)
            self.gemv(x2[0], y[0])
        else:     # many tokens: compute-bound, cuBLAS on a float32 copy of W
            y = x2 @ self.widen().T
        return y.reshape(*x.shape[:-1], self.data.shape[0])

    def rows(self, ids):
        cp = _cp()
        return self.widen(self.data[cp.asarray(np.asarray(ids, dtype=np.int64).reshape(-1))])


def _to_bits(w, dtype: str):
    """Host matrix (float32 array or a llama_np.weights.packed weight) -> (host array, kind)."""
    from .weights.packed import BF16Weight, F16Weight, f32_to_bf16
    if isinstance(w, BF16Weight) and dtype == "bf16":
        raw = w.data if w.out_perm is None else w.data[w.out_perm]
        return np.ascontiguousarray(raw), "bf16"
    if isinstance(w, F16Weight) and dtype == "f16":
        raw = w.data if w.out_perm is None else w.data[w.out_perm]
        return np.ascontiguousarray(raw).view(np.uint16), "f16"
    w32 = w.to_float32() if getattr(w, "is_packed", False) else np.asarray(w, dtype=np.float32)
    if dtype == "bf16":
        return f32_to_bf16(w32), "bf16"
    if dtype == "f16":
        return w32.astype(np.float16).view(np.uint16), "f16"
    return np.ascontiguousarray(w32), "f32"


def upload(params: dict, cfg, dtype: str = "bf16") -> dict:
    """Weights (flat or nested, as loaded on the host) -> nested weights on the GPU, uploaded once.

    Matrices become ``DeviceWeight``s in ``dtype`` ("bf16", "f16" or "float32"); wq|wk|wv and
    w1|w3 are stacked (``model.FUSED``) so a decode step reads x once per stack; norms stay float32.
    Only plain Llama layers (no mixture of experts) are supported here.
    """
    kind = {"bf16": "bf16", "fp16": "f16", "f16": "f16", "float32": "f32", "f32": "f32"}.get(dtype)
    if kind is None:
        raise ValueError(f"unknown GPU weight dtype {dtype!r}: use bf16, fp16 or float32")
    if cfg.n_experts:
        raise ValueError("the GPU path supports dense Llama models only (no mixture of experts)")
    flat = flatten(params)

    def stored(name):     # converted one tensor at a time: never a second host copy of the model
        w = flat[name]
        return _to_bits(w, kind)[0] if len(w.shape) == 2 else np.asarray(w, dtype=np.float32)
    return assemble(stored, cfg, kind)


def assemble(stored, cfg, kind: str) -> dict:
    """Nested params of DeviceWeights from ``stored(name)``, which returns each tensor of
    ``model.param_shapes(cfg)`` in its stored form (matrices as ``kind`` bits or float32, norm
    gains float32), on the host or already on the GPU. Stacks wq|wk|wv and w1|w3 as ``model.FUSED``
    orders them; a tied model's head is its embedding table."""
    cp = _cp()
    out = {}
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        for fused, parts in FUSED:
            out[p + fused] = DeviceWeight(cp.concatenate([cp.asarray(stored(p + n)) for n in parts]), kind)
        for n in ("wo", "w2"):
            out[p + n] = DeviceWeight(cp.asarray(stored(p + n)), kind)
        for n in ("attention_norm", "ffn_norm"):
            out[p + n] = cp.asarray(stored(p + n), dtype=cp.float32)
    out["norm"] = cp.asarray(stored("norm"), dtype=cp.float32)
    out["tok_embeddings"] = DeviceWeight(cp.asarray(stored("tok_embeddings")), kind)
    out["output"] = (out["tok_embeddings"] if cfg.tie_embeddings
                     else DeviceWeight(cp.asarray(stored("output")), kind))
    return nest(out, cfg)


# ----------------------------------------------------------------------------- decoding
class Decoder:
    """Prefill with the model code, then decode one token at a time with fused kernels, the
    whole step recorded once as a CUDA graph and replayed.

        dec = Decoder(upload(params, cfg), cfg, max_len=640)
        logits = dec.prefill(prompt_ids)         # (vocab,) float32 on the GPU
        logits = dec.step(next_id)               # the same buffer, overwritten each step
        ids = dec.greedy(prompt_ids, 128)        # greedy, the argmax on the GPU, pipelined

    A step is 8 kernels a layer (RMSNorm fused into the products that follow it).
    ``graph=False`` launches them one by one instead (to see what the graph saves). Works for
    plain Llama configs (RoPE on every layer, no qk-norm, no chunked attention).
    """

    def __init__(self, params, cfg, max_len: int, graph: bool = True):
        cp = _cp()
        if cfg.rope_layers is not None or cfg.qk_norm or cfg.attention_chunk_size or cfg.n_experts:
            raise ValueError("Decoder supports plain Llama models (Llama 2/3); use generate() for others")
        hd = cfg.head_dim
        if hd % 4 or hd // 4 > 32 or BLOCK % (hd // 4):
            raise ValueError(f"Decoder's attention kernel needs head_dim a multiple of 4, at most 128, "
                             f"dividing {4 * BLOCK}: got {hd}")
        for name, n in (("dim", cfg.dim), ("n_heads * head_dim", cfg.n_heads * cfg.head_dim),
                        ("hidden_dim", cfg.hidden_dim)):
            if n % 8:
                raise ValueError(f"Decoder's matrix-vector kernels read 8 weights at a time: {name} = {n} "
                                 f"is not a multiple of 8")
        if cfg.n_heads % cfg.n_kv_heads:
            raise ValueError("n_heads must be a multiple of n_kv_heads")
        self.params, self.cfg, self.max_len = params, cfg, max_len
        # Uploads ran on the default stream, which our own stream does not wait for: let them land.
        cp.cuda.Device().synchronize()
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.copy_stream = cp.cuda.Stream(non_blocking=True)   # greedy(): reads tokens meanwhile
        H, KV, hd, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.dim
        shape = (cfg.n_layers, KV, max_len, hd)
        with self.stream:
            self.cache = KVCache(cp.zeros(shape, dtype=cp.float32), cp.zeros(shape, dtype=cp.float32))
            cos, sin = rope_angles(rope_frequencies(hd, cfg.rope_theta, cfg.rope_scaling), np.arange(max_len), cp)
            self.cos, self.sin = cp.ascontiguousarray(cos), cp.ascontiguousarray(sin)
            self.state = cp.zeros(2, dtype=cp.int32)                # [token, its position]
            self.tokens = cp.zeros(max_len + 1, dtype=cp.int32)     # greedy: token chosen for each position
            self.x = cp.zeros(D, dtype=cp.float32)                  # the residual stream
            self.qkv = cp.zeros((H + 2 * KV) * hd, dtype=cp.float32)
            self.att = cp.zeros(H * hd, dtype=cp.float32)
            self.n_parts = -(-max_len // ATTN_CHUNK)             # attention split over the keys
            self.pm = cp.zeros(H * self.n_parts, dtype=cp.float32)
            self.pl = cp.zeros(H * self.n_parts, dtype=cp.float32)
            self.pacc = cp.zeros(H * self.n_parts * hd, dtype=cp.float32)
            self.h13 = cp.zeros(2 * cfg.hidden_dim, dtype=cp.float32)
            self.a = cp.zeros(cfg.hidden_dim, dtype=cp.float32)
            self.logits = cp.zeros(cfg.vocab_size, dtype=cp.float32)
        self.pos = 0
        self.use_graph = graph
        self.graph = self.greedy_graph = None      # recorded on first use
        self.graph_error = None
        self._launches = {}

    @staticmethod
    def _shared_bytes(chunk: int = None) -> int:
        """attn_partial's shared memory: a chunk of scores (padded to 4), then 4 floats a thread."""
        chunk = ATTN_CHUNK if chunk is None else chunk
        return (-(-chunk // 4) * 4 + 4 * BLOCK) * 4

    def launches(self, greedy: bool = False) -> list:
        """The decode step as (name, launch) pairs in order: the graph records exactly these, and
        benchmarks/gpu.py times each kind on its own. ``greedy`` adds the on-device argmax."""
        cfg, P = self.cfg, self.params
        H, KV, hd, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.dim
        i32, f32 = np.int32, np.float32
        eps = cfg.norm_eps
        scale = f32(1.0 / math.sqrt(hd))
        n_rot = (H + KV) * (hd // 2) + KV * hd

        def k(name, grid, args, shared_mem=0, block=BLOCK):   # one kernel launch, bound now, run later
            f = kernel(name)
            return lambda: f(grid, (block,), args, shared_mem=shared_mem)

        emb = P["tok_embeddings"]
        out = [("embed", k("embed_" + emb.kind, _grid(D), (emb.data, self.state, self.x, i32(D))))]
        for i, layer in enumerate(P["layers"]):
            out += [
                ("gemv wqkv", lambda L=layer: L["wqkv"].gemv(self.x, self.qkv, norm=(L["attention_norm"], eps))),
                ("rope_store", k("rope_store", _grid(n_rot), (
                    self.qkv, self.cos, self.sin, self.state, self.cache.k, self.cache.v,
                    i32(H), i32(KV), i32(hd), i32(self.max_len), i32(i)))),
                ("attn_partial", k("attn_partial", (H, self.n_parts), (
                    self.qkv, self.cache.k, self.cache.v, self.pm, self.pl, self.pacc, self.state, i32(H),
                    i32(KV), i32(hd), i32(self.max_len), i32(i), scale, i32(ATTN_CHUNK)), self._shared_bytes())),
                ("attn_combine", k("attn_combine", (H,), (self.pm, self.pl, self.pacc, self.att, i32(hd),
                                                          i32(self.n_parts)))),
                ("gemv wo", lambda L=layer: L["wo"].gemv(self.att, self.x, accumulate=True)),   # x += wo @ att
                ("gemv w13", lambda L=layer: L["w13"].gemv(self.x, self.h13, norm=(L["ffn_norm"], eps))),
                ("swiglu", k("swiglu", _grid(cfg.hidden_dim), (self.h13, self.a, i32(cfg.hidden_dim)))),
                ("gemv w2", lambda L=layer: L["w2"].gemv(self.a, self.x, accumulate=True)),      # x += w2 @ a
            ]
        out.append(("gemv output", lambda: P["output"].gemv(self.x, self.logits, norm=(P["norm"], eps))))
        if greedy:
            out.append(("argmax", k("argmax_next", (1,), (self.logits, i32(cfg.vocab_size), self.state,
                                                          self.tokens), block=1024)))
        return out

    def _launch(self, greedy: bool = False) -> None:
        if greedy not in self._launches:
            self._launches[greedy] = self.launches(greedy)
        for _, launch in self._launches[greedy]:
            launch()

    def _run_step(self, greedy: bool = False) -> None:
        """One decode step on our stream: the recorded graph, or (first time, or without graphs)
        the launches one by one. The first step compiles the kernels, then records them."""
        graph = self.greedy_graph if greedy else self.graph
        if graph is not None:
            graph.launch(self.stream)
            return
        self._launch(greedy)
        if self.use_graph:
            self.stream.synchronize()
            try:
                self.stream.begin_capture()
                try:
                    self._launch(greedy)
                finally:
                    graph = self.stream.end_capture()
                if greedy:
                    self.greedy_graph = graph
                else:
                    self.graph = graph
            except Exception as e:     # an old CuPy or driver: correct either way, only slower
                self.use_graph, self.graph_error = False, f"{type(e).__name__}: {e}"

    def prefill(self, ids):
        """Run the prompt through the model code (cuBLAS), filling the cache. -> (vocab,) logits."""
        ids = [int(t) for t in np.asarray(ids).reshape(-1)]
        if not 0 < len(ids) < self.max_len:
            raise ValueError(f"the prompt must have 1..{self.max_len - 1} tokens for this Decoder")
        with self.stream:
            logits = forward(self.params, self.cfg, ids, 0, self.cache, last_only=True)
            self.logits[...] = logits[0]
        self.stream.synchronize()   # see step()
        self.pos = len(ids)
        return self.logits

    def _set_state(self, token: int, pos: int) -> None:
        # read by the kernels; one host-to-device copy, ordered on our stream
        self.state.set(np.array([int(token), int(pos)], dtype=np.int32), stream=self.stream)

    def step(self, token: int):
        """Feed one token at the next position -> (vocab,) logits (a buffer reused every step)."""
        if self.pos >= self.max_len:
            raise ValueError(f"the Decoder's cache is full ({self.max_len} positions)")
        with self.stream:
            self._set_state(token, self.pos)
            self._run_step()
        # Our stream does not wait for, nor is waited for by, CuPy's default stream: without this
        # a caller reading the logits (cupy.asnumpy, argmax) on the default stream could see the
        # previous step's. The host needs the logits to choose the next token anyway.
        self.stream.synchronize()
        self.pos += 1
        return self.logits

    def greedy(self, ids, n_new: int, on_token=None) -> list:
        """Prefill, then up to ``n_new`` greedy tokens, chosen on the GPU (``argmax_next`` ends each
        recorded step and feeds the next one), so the host never waits between steps: it launches
        step k+1, then reads token k while the GPU computes. ``on_token(tok) -> True`` stops early
        (the one step already launched is wasted). Returns the tokens."""
        cp = _cp()
        ids = [int(t) for t in np.asarray(ids).reshape(-1)]
        self.prefill(ids)
        T, out, events = len(ids), [], []
        if n_new <= 0:
            return out

        def launched():                  # mark the end of the work just queued
            ev = cp.cuda.Event()
            ev.record(self.stream)
            events.append(ev)

        def read() -> bool:              # the next token, once its step is done -> stop?
            k = len(out)
            events[k].synchronize()
            with self.copy_stream:       # not behind the step now running on self.stream
                out.append(int(self.tokens[T + k]))
            return bool(on_token(out[-1])) if on_token is not None else False

        stopped = False
        with self.stream:
            self._set_state(ids[-1], T - 1)       # (last prompt token, its position) ...
            kernel("argmax_next")((1,), (1024,), (self.logits, np.int32(self.cfg.vocab_size), self.state,
                                                  self.tokens))     # ... -> (first new token, T)
            launched()
            # step k feeds token k-1 at position T+k-1 and chooses token k
            while not stopped and len(events) < n_new and T + len(events) - 1 < self.max_len:
                self._run_step(greedy=True)
                launched()
                stopped = read()
            while not stopped and len(out) < len(events):
                stopped = read()
        self.stream.synchronize()
        self.pos = T + len(out) - 1     # the last token returned has not been fed yet
        return out


def forward_gpu(params, cfg, tokens, start_pos: int = 0, cache=None, last_only: bool = False):
    """``model.forward`` on uploaded params, returning NumPy logits (for tests and the CLI)."""
    return to_numpy(forward(params, cfg, tokens, start_pos, cache, last_only))


__all__ = ["Decoder", "DeviceWeight", "KERNELS", "RMS_NORM_SOURCE", "assemble", "decode_limit",
           "device_bandwidth", "forward_gpu", "kernel", "rms_norm", "upload"]
