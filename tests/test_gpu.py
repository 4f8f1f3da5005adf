"""The GPU path on a real GPU: each CUDA kernel against its NumPy emulation (tests/gpu_emulator.py),
and the model's logits on CuPy against llama_np's NumPy model, prefill and decode.

Tolerances. float32 weights: both sides compute the same float32 sums in a different order, so
differences are rounding only: <= 1e-4 on logits of size ~1-10. bf16 / fp16 weights: compared with
the NumPy model run on the *same rounded weights* (round_to_bf16 / float16), so again only the
summation order differs (plus expf vs NumPy's exp): <= 1e-3. Against the original float32 weights
a bf16 model differs by the rounding of every weight (8 significant bits, ~0.4 % each); that
difference is reported, not bounded, except that the greedy tokens must mostly agree.

The tensor-core prefill (gpu.PREFILL = "fp16", the default) rounds activations to fp16 as well:
its bound is 2e-2 of the largest logit, same top tokens (gpu_emulator.assert_within_fp16_prefill_bound).
Every other test here runs the exact float32 prefill.

Without a GPU (CI, a laptop) the same tests run the kernels' CUDA source compiled for the CPU by g++
(llama_np/kernels/cpu.py: a fiber per CUDA thread, real shuffles and barriers, guard bytes around every
array), on NumPy arrays behind the emulator's fake CuPy (tests/gpu_emulator.py): every line of every
kernel runs and is checked, but nothing about the GPU's speed, memory model or libraries (cuBLAS)
is. Tests that need those are marked ``gpu_only`` and skip there, with the reason. Without g++
either, the whole file skips.
"""
from __future__ import annotations

import numpy as np
import pytest

from llama_np.backend import DeviceError, use

from llama_np import gpu  # noqa: E402
from llama_np.kv_cache import new_cache  # noqa: E402
from llama_np.model import forward, nest  # noqa: E402
from llama_np.kernels import cpu as cuda_on_cpu  # noqa: E402
from tests import gpu_emulator as emu  # noqa: E402
from course.fixtures.tiny.configs import config, make_ids, make_weights, round_to_bf16  # noqa: E402

try:
    cp = use("gpu")
    ON_GPU = True
except DeviceError as e:
    if cuda_on_cpu.unavailable():
        pytest.skip(f"no usable CUDA GPU here ({e}), and {cuda_on_cpu.unavailable()}; this file runs on a GPU "
                    f"machine (see benchmarks/gpu_session.sh)", allow_module_level=True)
    ON_GPU = False
    _rec = emu.Recorder()
    cp = emu.fake_cupy(_rec)
finally:
    use("cpu")

gpu_only = pytest.mark.skipif(not ON_GPU, reason="needs a real GPU (cuBLAS, CuPy, or a model too big for "
                                                 "the kernels run on the CPU)")
rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def on_gpu(monkeypatch):
    # the exact prefill: the tolerances above; the tensor-core one is tested at its own bound below
    monkeypatch.setattr(gpu, "PREFILL", "float32")
    if ON_GPU:
        use("gpu")
        yield
        use("cpu")
    else:       # CuPy -> the emulator's fake; llama_np.gpu.kernel -> the CUDA kernels compiled for the CPU
        monkeypatch.setattr(gpu, "_cp", lambda: cp)
        monkeypatch.setattr(gpu, "kernel", emu.fake_kernel(_rec, cuda=cuda_on_cpu))
        yield


def to_host():
    """Run the model code on NumPy (the reference side of a comparison)."""
    use("cpu")


def to_device():
    """Back to the device after ``to_host`` (on the CPU harness the model code always runs NumPy)."""
    if ON_GPU:
        use("gpu")


def run(name, grid, block, host_args, out_idx, shared_mem=0):
    """Run kernel ``name`` on copies of host_args; return the arrays at out_idx, back on the host."""
    dev = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in host_args]
    gpu.kernel(name)(grid, block, tuple(dev), shared_mem=shared_mem)
    cp.cuda.Device().synchronize()
    return [cp.asnumpy(dev[i]) for i in out_idx]


@pytest.mark.parametrize("kind", ["bf16", "f16", "f32"])
@pytest.mark.parametrize("rows,n", [(1, 8), (37, 576), (512, 4096), (3, 14336)])
@pytest.mark.parametrize("acc", [0, 1])
def test_gemv_kernels(kind, rows, n, acc):
    w32 = rng.standard_normal((rows, n), dtype=np.float32) / np.float32(np.sqrt(n))
    W = {"bf16": gpu._to_bits(w32, "bf16")[0], "f16": w32.astype(np.float16).view(np.uint16), "f32": w32}[kind]
    x = rng.standard_normal(n, dtype=np.float32)
    y0 = rng.standard_normal(rows, dtype=np.float32)
    args = (W, x, y0.copy(), np.int32(rows), np.int32(n), np.int32(acc))
    (y,) = run(f"gemv_{kind}", gpu._grid(rows * 32), (gpu.BLOCK,), args, [2])
    ref = y0.copy()
    emu.KERNELS[f"gemv_{kind}"](W, x, ref, rows, n, acc)
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bf16", "f16", "f32"])
@pytest.mark.parametrize("rows,n", [(1, 8), (37, 576), (512, 4096), (3, 14336)])
def test_gemv_norm_kernels(kind, rows, n):
    """W @ rms_norm(x, g) in one kernel (the Decoder's normed products) vs the emulation."""
    w32 = rng.standard_normal((rows, n), dtype=np.float32) / np.float32(np.sqrt(n))
    W = {"bf16": gpu._to_bits(w32, "bf16")[0], "f16": w32.astype(np.float16).view(np.uint16), "f32": w32}[kind]
    x = rng.standard_normal(n, dtype=np.float32) * 5
    g = 1 + 0.1 * rng.standard_normal(n, dtype=np.float32)
    args = (W, x, g, np.zeros(rows, np.float32), np.int32(rows), np.int32(n), np.float32(1e-5))
    (y,) = run(f"gemv_norm_{kind}", gpu._grid(rows * 32), (gpu.BLOCK,), args, [3])
    ref = np.zeros(rows, np.float32)
    emu.KERNELS[f"gemv_norm_{kind}"](W, x, g, ref, rows, n, 1e-5)
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bf16", "f16", "f32", "int8", "q8_0", "q4_k", "q6_k"])
@pytest.mark.parametrize("T,rows,n", [(2, 37, 512), (8, 300, 4096), (5, 3, 14336)])
def test_gemm_few_kernels(kind, T, rows, n):
    """A few tokens through one weight read (a short prefill) vs the float64 product of the same
    weights, within float32 summation rounding (emu.assert_fp32_sum), every token."""
    from llama_np.weights import quants
    from llama_np.weights.packed import quantize_int8
    if kind in emu.PACKED_DOTS:
        W = emu.random_gguf(kind.upper(), rows, n, seed=T)
        data, w32 = (W.data,), quants.dequantize(W.data, kind.upper())
    elif kind == "int8":
        data = quantize_int8(rng.standard_normal((rows, n), dtype=np.float32))
        w32 = data[0].astype(np.float32) * data[1][:, None]
    else:
        data = (gpu._to_bits(rng.standard_normal((rows, n), dtype=np.float32) / np.float32(np.sqrt(n)), kind)[0],)
        w32 = emu._widen(kind, data[0])
    X = rng.standard_normal((T, n), dtype=np.float32)
    args = (*data, X, np.full((T, rows), np.nan, np.float32), np.int32(rows), np.int32(n), np.int32(T))
    (Y,) = run(f"gemm_few_{kind}", gpu._grid(rows * 32), (gpu.BLOCK,), args, [len(data) + 1])
    for t in range(T):
        emu.assert_fp32_sum(Y[t], w32, X[t])


@pytest.mark.parametrize("n", [1, 1000, 128256])
def test_argmax_next_kernel(n):
    """The first of equal maxima, as NumPy's argmax; state and the token log move on by one."""
    logits = rng.standard_normal(n, dtype=np.float32)
    logits[n // 3] = logits[(2 * n) // 3] = logits.max() + 1        # a tie: the first one wins
    state, tokens = np.array([5, 9], np.int32), np.zeros(12, np.int32)
    st, tk = run("argmax_next", (1,), (1024,), (logits, np.int32(n), state, tokens), [2, 3])
    assert st.tolist() == [int(np.argmax(logits)), 10] and tk[10] == int(np.argmax(logits))


@pytest.mark.parametrize("T,dim", [(1, 576), (7, 4096), (3, 48)])
def test_rms_norm_kernel(T, dim):
    x = rng.standard_normal((T, dim), dtype=np.float32) * 3
    w = rng.standard_normal(dim, dtype=np.float32)
    from llama_np.norm import rms_norm
    out = cp.asnumpy(gpu.rms_norm(cp.asarray(x), cp.asarray(w), 1e-5))
    np.testing.assert_allclose(out, rms_norm(x, w, 1e-5), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("H,KV,hd,pos", [(8, 2, 64, 0), (32, 8, 128, 300), (9, 3, 64, 17), (4, 2, 8, 5),
                                         (6, 6, 16, 319)])
def test_attention_kernel(H, KV, hd, pos):
    """attn_decode (RoPE, the new key and value into the cache, split-key attention, the last
    block's merge) vs its emulation, for three steps in a row: the counters the last block resets
    must be 0 again after each launch, or the next step's merge would never run."""
    L, max_len, layer, i32 = 2, 320, 1, np.int32
    from llama_np.rope import rope_angles, rope_frequencies
    cos, sin = rope_angles(rope_frequencies(hd, 500000.0), np.arange(max_len))
    kc = rng.standard_normal((L, KV, max_len, hd), dtype=np.float32)
    vc = rng.standard_normal((L, KV, max_len, hd), dtype=np.float32)
    n_parts = -(-max_len // gpu.ATTN_CHUNK)
    parts = [np.zeros(H * n_parts, np.float32), np.zeros(H * n_parts, np.float32),
             np.zeros(H * n_parts * hd, np.float32), np.zeros(H, np.int32), np.zeros(H * hd, np.float32)]
    dev = {k: cp.asarray(v) for k, v in (("kc", kc), ("vc", vc))}
    dparts = [cp.asarray(a) for a in parts]
    ref_kc, ref_vc = kc.copy(), vc.copy()
    for p in (pos, min(pos + 1, max_len - 1), min(pos + 64, max_len - 1)):
        qkv = rng.standard_normal((H + 2 * KV) * hd, dtype=np.float32)
        state = np.array([0, p], dtype=np.int32)
        dq, dstate = cp.asarray(qkv), cp.asarray(state)
        gpu.kernel("attn_decode")((H, n_parts), (gpu.BLOCK,), (
            dq, cp.asarray(cos), cp.asarray(sin), dstate, dev["kc"], dev["vc"], *dparts, i32(H), i32(KV), i32(hd),
            i32(max_len), i32(layer), np.float32(hd ** -0.5), i32(gpu.ATTN_CHUNK)),
            shared_mem=gpu.Decoder._shared_bytes(hd))
        cp.cuda.Device().synchronize()
        ref_parts = [a.copy() for a in parts]
        emu.attn_decode(qkv, cos, sin, state, ref_kc, ref_vc, *ref_parts, H, KV, hd, max_len, layer, hd ** -0.5,
                        gpu.ATTN_CHUNK)
        np.testing.assert_array_equal(cp.asnumpy(dq), qkv)                     # read, never written
        assert not cp.asnumpy(dparts[3]).any(), "attn_decode left its counters non-zero"
        np.testing.assert_allclose(cp.asnumpy(dev["kc"]), ref_kc, atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(cp.asnumpy(dev["vc"]), ref_vc)
        np.testing.assert_allclose(cp.asnumpy(dparts[4]), ref_parts[4], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["bf16", "f16", "f32", "int8", "q8_0", "q4_k", "q6_k"])
@pytest.mark.parametrize("F,n", [(1, 256), (37, 576), (1536, 576), (700, 4096)])
def test_gemv_norm_swiglu_kernels(kind, F, n):
    """silu(gate) * up from one kernel over [w1; w3] (the Decoder's w13) vs the emulation, which
    is the kind's own gemv_norm followed by swiglu."""
    from llama_np.weights.packed import quantize_int8
    if n % 256 and kind in ("q4_k", "q6_k"):
        n = 512                                   # K-quant rows hold whole super-blocks of 256
    if kind in emu.PACKED_DOTS:
        w = emu.random_gguf(kind.upper(), 2 * F, n, seed=F)
        data, dense = (w.data,), w.to_float32()
    elif kind == "int8":
        data = quantize_int8(rng.standard_normal((2 * F, n), dtype=np.float32))
        dense = data[0] * data[1][:, None]
    else:
        dense = rng.standard_normal((2 * F, n), dtype=np.float32)
        data = (gpu._to_bits(dense, kind)[0],)
    x = rng.standard_normal(n, dtype=np.float32) * 5
    g_scale = 3 / np.sqrt((dense.astype(np.float64) ** 2).sum(1)).max()    # gate, up ~ +-3: silu's bend
    g = (g_scale * (1 + 0.1 * rng.standard_normal(n))).astype(np.float32)
    tail = (x, g, np.zeros(F, np.float32), np.int32(F), np.int32(n), np.float32(1e-5))
    (a,) = run(f"gemv_norm_swiglu_{kind}", gpu._grid(F * 32), (gpu.BLOCK,), (*data, *tail), [len(data) + 2])
    ref = np.zeros(F, np.float32)
    emu.KERNELS[f"gemv_norm_swiglu_{kind}"](*data, x, g, ref, np.int32(F), np.int32(n), np.float32(1e-5))
    np.testing.assert_allclose(a, ref, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


def test_swiglu_embed_widen_kernels():
    F = 1536
    h13 = rng.standard_normal(2 * F, dtype=np.float32) * 4
    (a,) = run("swiglu", gpu._grid(F), (gpu.BLOCK,), (h13, np.zeros(F, np.float32), np.int32(F)), [1])
    ref = np.zeros(F, np.float32)
    emu.swiglu(h13, ref, F)
    np.testing.assert_allclose(a, ref, atol=1e-5, rtol=1e-5)
    E = gpu._to_bits(rng.standard_normal((50, 64), dtype=np.float32), "bf16")[0]
    (x,) = run("embed_bf16", (1,), (gpu.BLOCK,), (E, np.array([17, 0], np.int32), np.zeros(64, np.float32),
                                                  np.int32(64)), [2])
    np.testing.assert_array_equal(x, emu._widen("bf16", E[17]))
    (w,) = run("widen_bf16", gpu._grid(E.size), (gpu.BLOCK,), (E, np.zeros(E.shape, np.float32), np.int64(E.size)), [1])
    np.testing.assert_array_equal(w, emu._widen("bf16", E))


def rounded(w, dtype):
    if dtype == "float32":
        return w
    r = round_to_bf16 if dtype == "bf16" else (lambda v: v.astype(np.float16).astype(np.float32))
    return {k: r(v) if v.ndim == 2 else v for k, v in w.items()}


ATOL = {"float32": 1e-4, "bf16": 1e-3, "fp16": 1e-3}


@pytest.mark.parametrize("name", ["llama2_mha", "llama3_gqa", "tied", "llama31_scaled"])
@pytest.mark.parametrize("dtype", ["float32", "bf16", "fp16"])
def test_tiny_models_prefill_and_decode(name, dtype):
    cfg, w, ids = config(name), make_weights(name), make_ids(name)
    prompt, nxt = ids[:12], ids[12:20]
    params = nest(dict(rounded(w, dtype)), cfg)
    cache = new_cache(cfg, 32)
    ref = [forward(params, cfg, prompt, 0, cache, last_only=True)[0]]
    ref += [forward(params, cfg, [t], 12 + i, cache)[0] for i, t in enumerate(nxt)]
    dev = gpu.upload(w, cfg, dtype)
    np.testing.assert_allclose(gpu.forward_gpu(dev, cfg, prompt), forward(params, cfg, prompt), atol=ATOL[dtype])
    for graph in (True, False):
        dec = gpu.Decoder(dev, cfg, max_len=32, graph=graph)
        rows = [cp.asnumpy(dec.prefill(prompt))] + [cp.asnumpy(dec.step(int(t))) for t in nxt]
        np.testing.assert_allclose(np.stack(rows), np.stack(ref), atol=ATOL[dtype])
        assert dec.graph_error is None


@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_pipelined_greedy_matches_numpy_greedy(dtype):
    """Decoder.greedy (argmax on the GPU, next step launched before the token is read) picks the
    NumPy model's greedy tokens on the same weights, and step() goes on from where it stopped."""
    cfg, w, ids = config("llama3_gqa"), make_weights("llama3_gqa"), make_ids("llama3_gqa")[:8]
    params = nest(dict(rounded(w, dtype)), cfg)
    cache, ref = new_cache(cfg, 40), []
    logits = forward(params, cfg, ids, 0, cache, last_only=True)
    for i in range(20):
        ref.append(int(np.argmax(logits[-1])))
        logits = forward(params, cfg, [ref[-1]], len(ids) + i, cache)
    dec = gpu.Decoder(gpu.upload(w, cfg, dtype), cfg, max_len=40)
    assert dec.greedy(ids, 16) == ref[:16]
    assert [int(cp.argmax(dec.step(t))) for t in ref[15:19]] == ref[16:20]
    assert dec.graph_error is None and dec.greedy_graph is not None


@pytest.fixture(scope="module")
def smollm2():
    from llama_np.assets import AssetError
    from llama_np.weights import load_model
    if not ON_GPU:
        pytest.skip("SmolLM2 through the CUDA kernels run on the CPU would take minutes a test: GPU only")
    use("cpu")
    try:
        return load_model(None, progress=False)
    except AssetError as e:  # no cached copy and no network
        pytest.skip(f"SmolLM2 not available: {e}")


@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_default_model_on_gpu(smollm2, dtype):
    cfg, flat, tok = smollm2
    ids = tok.encode("The capital of France is", bos=bool(getattr(tok, "add_bos", False)))
    params = nest(dict(rounded(flat, dtype)), cfg)
    cache = new_cache(cfg, len(ids) + 24)
    logits = forward(params, cfg, ids, 0, cache, last_only=True)
    ref_tokens, ref_rows = [], [logits[0]]
    for i in range(24):
        ref_tokens.append(int(np.argmax(logits[-1])))
        logits = forward(params, cfg, [ref_tokens[-1]], len(ids) + i, cache)
        ref_rows.append(logits[0])
    dec = gpu.Decoder(gpu.upload(flat, cfg, dtype), cfg, max_len=64)
    assert dec.greedy(ids, 24) == ref_tokens
    rows = [cp.asnumpy(dec.prefill(ids))] + [cp.asnumpy(dec.step(t)) for t in ref_tokens[:-1]]
    np.testing.assert_allclose(np.stack(rows), np.stack(ref_rows[:-1]), atol=ATOL[dtype])


def test_cli_generate_on_gpu(smollm2):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "llama_np", "generate", "The capital of France is", "--device", "gpu",
                        "--temperature", "0", "--max-new-tokens", "8"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_generate_decoder_matches_model_code(smollm2):
    """The CLI path: generate() with the fused Decoder gives the greedy tokens of the model code on CuPy."""
    from llama_np.generate import generate
    cfg, flat, tok = smollm2
    ids = tok.encode("Once upon a time", bos=bool(getattr(tok, "add_bos", False)))
    dev = gpu.upload(flat, cfg, "bf16")
    a = generate(dev, cfg, tok, ids, max_new_tokens=16, temperature=0)
    b = generate(dev, cfg, tok, ids, max_new_tokens=16, temperature=0, decoder=gpu.Decoder(dev, cfg, len(ids) + 16))
    assert a.ids == b.ids


@pytest.mark.parametrize("name", ["llama2_mha", "llama3_gqa", "llama31_scaled", "tied", "llama3_bf16"])
def test_gpu_path_matches_transformers(name):
    """Against the independent reference too: transformers' committed logits, float32 weights,
    model code and Decoder (the check itself: gpu_emulator.check_against_transformers)."""
    emu.check_against_transformers(gpu, name)


def test_bf16_to_f16_kernel():
    E = gpu._to_bits(rng.standard_normal((50, 64), dtype=np.float32) * np.float32(1e-3), "bf16")[0]
    (h,) = run("bf16_to_f16", gpu._grid(E.size), (gpu.BLOCK,), (E, np.zeros(E.shape, np.uint16), np.int64(E.size)), [1])
    ref = np.zeros(E.shape, np.uint16)
    emu.bf16_to_f16(E, ref, E.size)
    np.testing.assert_array_equal(h, ref)           # both round to nearest even


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_tensor_core_prefill_on_smollm2(smollm2, dtype, monkeypatch):
    """The default prefill: fp16 products on tensor cores, float32 accumulation. Logits within 2e-2
    of the largest logit of NumPy on the same 16-bit weights, the same top token in every row, and
    then the same 24 greedy tokens from the Decoder."""
    monkeypatch.setattr(gpu, "PREFILL", "fp16")
    cfg, flat, tok = smollm2
    ids = tok.encode("The capital of France is", bos=bool(getattr(tok, "add_bos", False)))
    params = nest(dict(rounded(flat, dtype)), cfg)
    use("cpu")
    ref = forward(params, cfg, ids)
    cache = new_cache(cfg, len(ids) + 24)
    logits, want = forward(params, cfg, ids, 0, cache, last_only=True), []
    for i in range(24):
        want.append(int(np.argmax(logits[-1])))
        logits = forward(params, cfg, [want[-1]], len(ids) + i, cache)
    use("gpu")
    dev = gpu.upload(flat, cfg, dtype)
    out = cp.asnumpy(gpu.forward_gpu(dev, cfg, ids))
    print(f"tensor-core prefill, {dtype}: max abs {np.abs(out - ref).max():.4f}, "
          f"relative to the largest logit {np.abs(out - ref).max() / np.abs(ref).max():.2e}")
    emu.assert_within_fp16_prefill_bound(out, ref)
    assert gpu.Decoder(dev, cfg, max_len=64).greedy(ids, 24) == want


# ------------------------------------------------------------------ quantized weights, packed
# GGUF Q8_0 / Q4_K / Q6_K blocks and llama_np's int8, uploaded as stored and dequantized in the
# kernels (llama_np/kernels/gemv_q8_0.cu, gemv_q4_k.cu, gemv_q6_k.cu, gemv_int8.cu). Products within
# emu.assert_fp32_sum of the float64 product of quants.dequantize's weights (float32 summation
# order only); dequantized rows bit for bit those of quants.dequantize.
@pytest.mark.parametrize("kind", list(emu.PACKED))
@pytest.mark.parametrize("rows,n", [(1, 256), (37, 512), (300, 4096), (3, 14336)])
def test_packed_gemv_kernels(kind, rows, n):
    from llama_np.weights import quants
    W = emu.random_gguf(kind, rows, n, seed=rows)
    w32 = quants.dequantize(W.data, kind)
    x = rng.standard_normal(n, dtype=np.float32)
    g = (1 + 0.2 * rng.standard_normal(n)).astype(np.float32)
    y0 = rng.standard_normal(rows, dtype=np.float32)
    name, i32 = emu.PACKED[kind], np.int32
    grid = gpu._grid(rows * 32)
    (y,) = run(f"gemv_{name}", grid, (gpu.BLOCK,), (W.data, x, np.zeros(rows, np.float32), i32(rows), i32(n), i32(0)), [2])
    emu.assert_fp32_sum(y, w32, x)
    (y,) = run(f"gemv_{name}", grid, (gpu.BLOCK,), (W.data, x, y0.copy(), i32(rows), i32(n), i32(1)), [2])
    emu.assert_fp32_sum(y - y0, w32, x, ulps=32)
    (y,) = run(f"gemv_norm_{name}", grid, (gpu.BLOCK,), (W.data, x, g, np.zeros(rows, np.float32), i32(rows), i32(n),
                                                          np.float32(1e-5)), [3])
    xn = (x / np.sqrt((x.astype(np.float64) ** 2).mean() + 1e-5) * g).astype(np.float32)
    emu.assert_fp32_sum(y, w32, xn)


@pytest.mark.parametrize("kind", list(emu.PACKED))
def test_packed_dequant_kernels(kind):
    from llama_np.weights import quants
    for W in emu.llamacpp_matrices(kind) + [emu.random_gguf(kind, 9, 1024, seed=7)]:
        rows, n = W.shape
        ids = np.array([rows - 1, 0, rows // 2], dtype=np.int32)
        want = quants.dequantize(W.data, kind)[ids]
        args = (W.data, ids, np.zeros(len(ids) * n, np.float32), np.int32(len(ids)), np.int32(n))
        (out,) = run(f"dequant_{emu.PACKED[kind]}_f32", gpu._grid(len(ids) * n), (gpu.BLOCK,), args, [2])
        np.testing.assert_array_equal(out.reshape(want.shape).view(np.uint32), want.view(np.uint32))
        args = (W.data, ids, np.zeros(len(ids) * n, np.uint16), np.int32(len(ids)), np.int32(n))
        (half,) = run(f"dequant_{emu.PACKED[kind]}_f16", gpu._grid(len(ids) * n), (gpu.BLOCK,), args, [2])
        np.testing.assert_array_equal(half.reshape(want.shape), want.astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("rows,n", [(5, 64), (300, 4096), (3, 14336)])
def test_int8_kernels(rows, n):
    from llama_np.weights.packed import Int8Weight, quantize_int8
    q, s = quantize_int8(rng.standard_normal((rows, n), dtype=np.float32))
    w32 = Int8Weight(q, s).to_float32()
    x = rng.standard_normal(n, dtype=np.float32)
    g = (1 + 0.2 * rng.standard_normal(n)).astype(np.float32)
    i32 = np.int32
    (y,) = run("gemv_int8", gpu._grid(rows * 32), (gpu.BLOCK,), (q, s, x, np.zeros(rows, np.float32), i32(rows), i32(n),
                                                                 i32(0)), [3])
    emu.assert_fp32_sum(y, w32, x)
    (y,) = run("gemv_norm_int8", gpu._grid(rows * 32), (gpu.BLOCK,), (q, s, x, g, np.zeros(rows, np.float32), i32(rows),
                                                                      i32(n), np.float32(1e-5)), [4])
    emu.assert_fp32_sum(y, w32, (x / np.sqrt((x.astype(np.float64) ** 2).mean() + 1e-5) * g).astype(np.float32))
    ids = np.array([rows - 1, 0], np.int32)
    (out,) = run("dequant_int8_f32", gpu._grid(2 * n), (gpu.BLOCK,), (q, s, ids, np.zeros(2 * n, np.float32), i32(2),
                                                                      i32(n)), [3])
    np.testing.assert_array_equal(out.reshape(2, n), w32[ids])


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q6_K", "Q8_0"])
def test_llamacpp_fixture_packed_on_gpu(ftype):
    """Tiny models quantized by llama.cpp, uploaded packed: logits within 1e-3 of the NumPy packed
    path's scale, prefill and decode, and the same greedy tokens (emu.check_packed_fixture)."""
    emu.check_packed_fixture(gpu, ftype, host=cp.asnumpy)


def test_llamacpp_fixture_packed_fp16_prefill(monkeypatch):
    """The default prefill on packed weights: fp16 tiles on the tensor cores, within its bound."""
    from llama_np.weights import gguf as gguf_loader
    from tests.fixtures.llamacpp import make_fixtures as mf
    cfg, flat, _ = gguf_loader.load(str(mf.path("Q4_K_M")), tokenizer=False, progress=False, dtype="packed")
    ids = [int(t) for t in mf.IDS]
    to_host()
    ref = forward(nest(dict(flat), cfg), cfg, ids)
    to_device()
    monkeypatch.setattr(gpu, "PREFILL", "fp16")
    emu.assert_within_fp16_prefill_bound(gpu.forward_gpu(gpu.upload(flat, cfg), cfg, ids), ref)


@pytest.mark.parametrize("name", ["llama3_gqa", "tied"])
def test_int8_model_on_gpu(name):
    from llama_np.weights.packed import pack
    cfg, w, ids = config(name), make_weights(name), make_ids(name)
    flat = {k: pack(v, "int8") if v.ndim == 2 else v for k, v in w.items()}
    params = nest(dict(flat), cfg)
    cache = new_cache(cfg, 32)
    ref = [forward(params, cfg, ids[:12], 0, cache, last_only=True)[0]]
    ref += [forward(params, cfg, [t], 12 + i, cache)[0] for i, t in enumerate(ids[12:20])]
    dev = gpu.upload(flat, cfg)
    assert dev["layers"][0]["wo"].kind == "int8"
    dec = gpu.Decoder(dev, cfg, max_len=32)
    rows = [cp.asnumpy(dec.prefill(ids[:12]))] + [cp.asnumpy(dec.step(int(t))) for t in ids[12:20]]
    np.testing.assert_allclose(np.stack(rows), np.stack(ref), atol=1e-4)
