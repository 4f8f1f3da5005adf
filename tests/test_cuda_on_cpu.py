"""llama_np/kernels/cpu.py, which runs the CUDA kernels on the CPU for tests/test_gpu.py, can fail:
it refuses what a GPU would punish (a write past an array, a shuffle or barrier some threads skip,
a scalar CuPy would pass wrongly), it does what CUDA does where a kernel is right (warp sums, shared
memory, blocks in any order), and a bug put into one of llama_np's own kernels makes the comparison
with the kernel's NumPy emulation fail."""
from __future__ import annotations

import numpy as np
import pytest

from llama_np import gpu, kernels
from llama_np.kernels import cpu as cuda_on_cpu
from llama_np.kernels.cpu import CudaOnCpuError
from tests import gpu_emulator as emu

pytestmark = pytest.mark.skipif(cuda_on_cpu.unavailable() is not None, reason=str(cuda_on_cpu.unavailable()))

SMALL = r'''
extern "C" __global__ void writes_past_end(float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i] = 1.f;                        // one too many
}
extern "C" __global__ void copies_one_too_many(const float* x, int n, float* y) {
    int i = threadIdx.x;
    if (i <= n) y[i] = 2.f;
}
extern "C" __global__ void half_warp_shuffle(float* y) {
    if ((threadIdx.x & 31) < 16) y[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
}
extern "C" __global__ void barrier_after_return(float* y) {
    if (threadIdx.x >= 128) return;
    __syncthreads();
    y[threadIdx.x] = 1.f;
}
extern "C" __global__ void warp_sums(const float* x, float* y) {
    float v = x[threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    float d = __shfl_down_sync(0xffffffffu, x[threadIdx.x], 3);
    y[threadIdx.x] = v + 1000.f * d;
}
extern "C" __global__ void reversed(const float* x, float* y) {
    extern __shared__ float sh[];
    sh[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    y[threadIdx.x] = sh[blockDim.x - 1 - threadIdx.x];
}
extern "C" __global__ void block_order(int* order, int* count) {
    if (threadIdx.x == 0) order[atomicAdd(count, 1)] = blockIdx.x;
}
'''


def small(name, *args, grid=(1,), block=(64,), shared=0, seed=0):
    cuda_on_cpu.launch(name, grid, block, shared, *args, seed=seed, lib=cuda_on_cpu.build(SMALL))


def test_a_write_past_an_array_is_caught():
    with pytest.raises(CudaOnCpuError, match="wrote outside array argument 0"):
        small("writes_past_end", np.zeros(64, np.float32), np.int32(64), grid=(2,))
    small("writes_past_end", np.zeros(65, np.float32), np.int32(64), grid=(2,))
    with pytest.raises(CudaOnCpuError, match="outside array argument 2"):      # the argument's position
        small("copies_one_too_many", np.zeros(64, np.float32), np.int32(32), np.zeros(32, np.float32))


def test_a_shuffle_or_barrier_that_some_threads_skip_is_caught():
    with pytest.raises(CudaOnCpuError, match="shuffle reached by 16 of 32 lanes"):
        small("half_warp_shuffle", np.zeros(64, np.float32))
    with pytest.raises(CudaOnCpuError, match="returned before a __syncthreads"):
        small("barrier_after_return", np.zeros(256, np.float32), block=(256,))


def test_arguments_a_gpu_would_misread_are_refused():
    y = np.zeros(128, np.float32)
    with pytest.raises(CudaOnCpuError, match="must be a NumPy int32"):
        small("writes_past_end", y, 64)                         # a Python int: 64-bit in CuPy
    with pytest.raises(CudaOnCpuError, match="must be a NumPy int32"):
        small("writes_past_end", y, np.int64(64))
    with pytest.raises(CudaOnCpuError, match="not contiguous"):
        small("writes_past_end", y[::2], np.int32(10))
    with pytest.raises(CudaOnCpuError, match="read-only"):
        ro = np.zeros(64, np.float32)
        ro.flags.writeable = False
        small("writes_past_end", ro, np.int32(63))
    with pytest.raises(CudaOnCpuError, match="overlap"):
        small("warp_sums", y[:64], y[32:96])


def test_shuffles_shared_memory_and_block_order_behave_as_in_cuda():
    x = np.arange(64, dtype=np.float32)
    y = np.zeros(64, np.float32)
    small("warp_sums", x, y)
    lane, warp = np.arange(64) % 32, np.arange(64) // 32
    down = np.where(lane + 3 < 32, x + 3, x)                   # out of range: the lane's own value
    np.testing.assert_array_equal(y, x.reshape(2, 32).sum(1)[warp] + 1000 * down)
    small("reversed", x, y, shared=64 * 4)
    np.testing.assert_array_equal(y, x[::-1])
    orders = []
    for seed in (1, 2):
        order, count = np.zeros(40, np.int32), np.zeros(1, np.int32)
        small("block_order", order, count, grid=(40,), seed=seed)
        assert sorted(order) == list(range(40)) and count[0] == 40
        orders.append(order.tolist())
    assert orders[0] != orders[1] and orders[0] != list(range(40))


# ----------------------------------------------------------------- bugs put into the real kernels
def mutated(old: str, new: str):
    src = kernels.module_source()
    assert src.count(old) == 1, old
    return cuda_on_cpu.build(src.replace(old, new))


def attention_case(lib, seed: int = 0):
    """attn_decode on a GQA case by ``lib``'s kernel and by the emulation: (got, want, counters)."""
    rng = np.random.default_rng(seed)
    H, KV, hd, max_len, pos = 8, 2, 64, 200, 130
    n_parts = -(-max_len // gpu.ATTN_CHUNK)
    cos, sin = (rng.standard_normal((max_len, hd // 2), dtype=np.float32) for _ in range(2))
    kc, vc = (rng.standard_normal((1, KV, max_len, hd), dtype=np.float32) for _ in range(2))
    qkv = rng.standard_normal((H + 2 * KV) * hd, dtype=np.float32)
    state = np.array([0, pos], np.int32)

    def bufs():
        return [np.zeros(H * n_parts, np.float32), np.zeros(H * n_parts, np.float32),
                np.zeros(H * n_parts * hd, np.float32), np.zeros(H, np.int32), np.zeros(H * hd, np.float32)]
    got, want = bufs(), bufs()
    i32 = np.int32
    cuda_on_cpu.launch("attn_decode", (H, n_parts), (gpu.BLOCK,), gpu.Decoder._shared_bytes(hd), qkv, cos, sin,
                       state, kc.copy(), vc.copy(), *got, i32(H), i32(KV), i32(hd), i32(max_len), i32(0),
                       np.float32(hd ** -0.5), i32(gpu.ATTN_CHUNK), seed=seed, lib=lib)
    emu.attn_decode(qkv, cos, sin, state, kc.copy(), vc.copy(), *want, H, KV, hd, max_len, 0, hd ** -0.5,
                    gpu.ATTN_CHUNK)
    return got[4], want[4], got[3]


def q4_k_case(lib):
    W = emu.random_gguf("Q4_K", 24, 512, seed=3)
    x = np.random.default_rng(4).standard_normal(512, dtype=np.float32)
    y = np.zeros(24, np.float32)
    cuda_on_cpu.launch("gemv_q4_k", gpu._grid(24 * 32), (gpu.BLOCK,), 0, W.data, x, y, np.int32(24),
                       np.int32(512), np.int32(0), lib=lib)
    return y, W.to_float32(), x


def swiglu_case(lib):
    rng = np.random.default_rng(5)
    F, n = 40, 64
    w = (rng.standard_normal((2 * F, n), dtype=np.float32) * 0.2)
    x, g = rng.standard_normal(n, dtype=np.float32), np.ones(n, np.float32)
    a, ref = np.zeros(F, np.float32), np.zeros(F, np.float32)
    args = (x, g, a, np.int32(F), np.int32(n), np.float32(1e-5))
    cuda_on_cpu.launch("gemv_norm_swiglu_f32", gpu._grid(F * 32), (gpu.BLOCK,), 0, w, *args, lib=lib)
    emu.KERNELS["gemv_norm_swiglu_f32"](w, x, g, ref, np.int32(F), np.int32(n), np.float32(1e-5))
    return a, ref


def test_the_real_kernels_pass_and_a_bug_put_into_them_fails():
    """The comparisons test_gpu.py makes, on llama_np's kernels as they are and with one bug each."""
    for seed in (0, 1, 2):                       # any order of blocks: the last one merges
        got, want, counters = attention_case(None, seed)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        assert not counters.any()
    y, w32, x = q4_k_case(None)
    emu.assert_fp32_sum(y, w32, x)
    a, ref = swiglu_case(None)
    np.testing.assert_allclose(a, ref, rtol=1e-4, atol=1e-6)

    got, want, counters = attention_case(mutated("== n_parts - 1;", "== n_parts;"))   # the merge never runs
    assert not np.allclose(got, want) and counters.all()
    y, w32, x = q4_k_case(mutated("q4_k_scale_min(h.y, h.z, h.w, 2 * k + 1, sc2, m2);",
                                  "q4_k_scale_min(h.y, h.z, h.w, 2 * k, sc2, m2);"))    # one scale off
    with pytest.raises(AssertionError, match="ulps"):
        emu.assert_fp32_sum(y, w32, x)
    a, ref = swiglu_case(mutated("a[j] = gate / (1.0f + expf(-gate)) * up;",
                                 "a[j] = up / (1.0f + expf(-up)) * gate;"))            # gate and up swapped
    assert not np.allclose(a, ref, rtol=1e-4, atol=1e-6)


def test_lesson_11_kernel_runs_on_the_cpu_and_its_usual_bugs_do_not():
    """Lesson 11's exercise 4 without a GPU: the solved RMSNorm kernel, compiled by RawKernel,
    matches llama_np.norm.rms_norm; with its tree's barrier dropped the numbers go wrong, and
    with the barrier inside the `if` the harness names the error a GPU would hang or misbehave on."""
    from llama_np.norm import rms_norm
    from tests.test_nvrtc import lesson_11_kernel
    src = lesson_11_kernel()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 576), dtype=np.float32)
    w = (1 + 0.1 * rng.standard_normal(576)).astype(np.float32)

    def run(source):
        y = np.zeros_like(x)
        cuda_on_cpu.RawKernel(source, "rms_norm")((3,), (256,), (x, w, y, np.int32(576), np.float32(1e-5)))
        return y
    np.testing.assert_allclose(run(src), rms_norm(x, w, 1e-5), atol=1e-5)
    tree = "            partial[threadIdx.x] += partial[threadIdx.x + s];\n        __syncthreads();"
    assert src.count(tree) == 1
    no_barrier = src.replace(tree, "            partial[threadIdx.x] += partial[threadIdx.x + s];")
    assert not np.allclose(run(no_barrier), rms_norm(x, w, 1e-5), atol=1e-5)
    inside_if = src.replace(tree, "        {\n            partial[threadIdx.x] += partial[threadIdx.x + s];\n"
                                  "            __syncthreads();\n        }")
    with pytest.raises(CudaOnCpuError, match="__syncthreads"):
        run(inside_if)
    with pytest.raises(CudaOnCpuError, match="does not compile: .*error"):
        run(src.replace("rsqrtf(", "rsqrt_typo("))


def test_without_a_compiler_it_says_why(monkeypatch):
    import shutil
    monkeypatch.setattr(shutil, "which", lambda name: None)
    cuda_on_cpu.unavailable.cache_clear()
    try:
        assert cuda_on_cpu.unavailable() == "no C++ compiler (g++) to compile CUDA for the CPU"
        with pytest.raises(CudaOnCpuError, match="no C"):
            cuda_on_cpu.build("extern \"C\" __global__ void k(float* y) { y[0] = 1.f; }")
    finally:
        cuda_on_cpu.unavailable.cache_clear()
