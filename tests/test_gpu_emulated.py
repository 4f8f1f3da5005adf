"""The GPU path's plumbing on the CPU: llama_np.gpu with CuPy and its kernels replaced by the NumPy
emulator in tests/gpu_emulator.py. Upload layouts, kernel arguments, the decode step's buffers and
the CUDA-graph replay are checked against llama_np's NumPy model (itself checked against
transformers). The kernels' CUDA code runs in tests/test_gpu.py, on a GPU machine."""
from __future__ import annotations

import numpy as np
import pytest

from llama_np import gpu, kernels
from llama_np.kv_cache import new_cache
from llama_np.model import forward, fuse, nest
from llama_np.weights.packed import BF16Weight, f32_to_bf16
from tests import gpu_emulator
from course.fixtures.tiny.configs import config, make_ids, make_weights, round_to_bf16

NAMES = ["llama2_mha", "llama3_gqa", "tied", "llama31_scaled"]


def bf16_matrices(w):
    """What upload(..., "bf16") keeps: matrices rounded to bf16, norm gains float32."""
    return {k: round_to_bf16(v) if v.ndim == 2 else v for k, v in w.items()}


@pytest.fixture
def rec(monkeypatch):
    r = gpu_emulator.Recorder()
    fake = gpu_emulator.fake_cupy(r)
    monkeypatch.setattr(gpu, "_cp", lambda: fake)
    monkeypatch.setattr(gpu, "kernel", gpu_emulator.fake_kernel(r))
    # exact prefill: these tests compare with NumPy at float32 tolerances; the tensor-core
    # prefill (the default) has its own bound, tested below with `fp16_prefill`
    monkeypatch.setattr(gpu, "PREFILL", "float32")
    return r


@pytest.fixture
def fp16_prefill(rec, monkeypatch):
    monkeypatch.setattr(gpu, "PREFILL", "fp16")
    return rec


def numpy_decode(w, cfg, ids, n_steps, next_ids):
    """Reference: llama_np's NumPy model, prefill then cached decode of ``next_ids``."""
    params = nest(dict(w), cfg)
    cache = new_cache(cfg, len(ids) + n_steps)
    rows = [forward(params, cfg, ids, 0, cache, last_only=True)[0]]
    for i, t in enumerate(next_ids[:n_steps]):
        rows.append(forward(params, cfg, [t], len(ids) + i, cache)[0])
    return np.stack(rows)


def test_upload_stacks_and_ties(rec):
    cfg = config("tied")
    w = make_weights("tied")
    dev = gpu.upload(w, cfg, "bf16")
    layer = dev["layers"][1]
    np.testing.assert_array_equal(layer["wqkv"].data, np.concatenate(
        [f32_to_bf16(w["layers.1." + n]) for n in ("wq", "wk", "wv")]))
    np.testing.assert_array_equal(layer["w13"].data, np.concatenate(
        [f32_to_bf16(w["layers.1." + n]) for n in ("w1", "w3")]))
    assert dev["output"] is dev["tok_embeddings"] and layer["wo"].kind == "bf16"
    assert layer["ffn_norm"].dtype == np.float32


def test_upload_takes_packed_bf16_as_is(rec):
    """A memory-mapped bf16 checkpoint goes up as its own bits, in Meta's row order."""
    raw = f32_to_bf16(np.random.default_rng(0).standard_normal((8, 16), dtype=np.float32))
    perm = np.arange(8)[::-1].copy()
    bits, kind = gpu._to_bits(BF16Weight(raw, perm), "bf16")
    assert kind == "bf16"
    np.testing.assert_array_equal(bits, raw[perm])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_model_code_on_uploaded_weights(rec, name, dtype):
    """Prefill through model.forward on DeviceWeights (widen + matmul, gemv for one row)."""
    cfg, w, ids = config(name), make_weights(name), make_ids(name)[:20]
    ref_w = w if dtype == "float32" else bf16_matrices(w)
    ref = forward(nest(dict(ref_w), cfg), cfg, ids)
    out = forward(gpu.upload(w, cfg, dtype), cfg, ids)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("graph", [True, False])
def test_decoder_matches_numpy(rec, name, graph):
    cfg, w, ids = config(name), make_weights(name), make_ids(name)
    prompt, nxt = ids[:12], ids[12:20]
    ref = numpy_decode(w, cfg, prompt, len(nxt), nxt)
    dec = gpu.Decoder(gpu.upload(w, cfg, "float32"), cfg, max_len=32, graph=graph)
    rows = [dec.prefill(prompt).copy()]
    for t in nxt:
        rows.append(dec.step(int(t)).copy())
    np.testing.assert_allclose(np.stack(rows), ref, atol=1e-5, rtol=1e-5)
    assert (dec.graph is not None) == graph and dec.graph_error is None


def test_graph_replays_the_same_launches(rec):
    """After the first step the graph replays exactly the launches one step makes."""
    cfg, w, ids = config("llama3_gqa"), make_weights("llama3_gqa"), make_ids("llama3_gqa")
    dec = gpu.Decoder(gpu.upload(w, cfg, "bf16"), cfg, max_len=32)
    dec.prefill(ids[:5])
    dec.step(int(ids[5]))
    per_step = 2 + 5 * cfg.n_layers        # embed, normed head + 5 per layer
    assert len(dec.graph.calls) == per_step
    names = [name for name, _ in dec.launches()]
    assert names[1:6] == ["gemv wqkv", "attention", "gemv wo", "gemv w13 swiglu", "gemv w2"], names
    before = rec.launches
    dec.step(int(ids[6]))
    assert rec.launches - before == per_step


def test_bf16_decoder_matches_numpy_on_rounded_weights(rec):
    cfg, w, ids = config("llama3_gqa"), make_weights("llama3_gqa"), make_ids("llama3_gqa")
    ref = numpy_decode(bf16_matrices(w), cfg, ids[:10], 6, ids[10:])
    dec = gpu.Decoder(gpu.upload(w, cfg, "bf16"), cfg, max_len=24)
    rows = [dec.prefill(ids[:10]).copy()] + [dec.step(int(t)).copy() for t in ids[10:16]]
    np.testing.assert_allclose(np.stack(rows), ref, atol=1e-5, rtol=1e-5)


def test_greedy_matches_numpy_greedy(rec):
    cfg, w, ids = config("tied"), make_weights("tied"), make_ids("tied")[:6]
    params, cache, out, t = nest(dict(w), cfg), new_cache(cfg, 16), [], None
    logits = forward(params, cfg, ids, 0, cache, last_only=True)
    for i in range(8):
        t = int(np.argmax(logits[-1]))
        out.append(t)
        logits = forward(params, cfg, [t], len(ids) + i, cache)
    assert gpu.Decoder(gpu.upload(w, cfg, "float32"), cfg, max_len=16).greedy(ids, 8) == out


@pytest.mark.parametrize("graph", [True, False])
def test_greedy_stops_early_and_at_a_full_cache_then_steps_on(rec, graph):
    """greedy(): on_token stops it (the extra launched step is harmless); a full cache ends it;
    afterwards step() goes on from the last returned token as if it had been fed by hand."""
    cfg, w, ids = config("tied"), make_weights("tied"), make_ids("tied")[:6]
    params = nest(dict(w), cfg)
    cache, ref = new_cache(cfg, 32), []
    logits = forward(params, cfg, ids, 0, cache, last_only=True)
    for i in range(12):
        ref.append(int(np.argmax(logits[-1])))
        logits = forward(params, cfg, [ref[-1]], len(ids) + i, cache)
    dev = gpu.upload(w, cfg, "float32")
    dec = gpu.Decoder(dev, cfg, max_len=32, graph=graph)
    seen = []
    got = dec.greedy(ids, 10, on_token=lambda t: seen.append(t) or len(seen) == 4)
    assert got == seen == ref[:4] and dec.pos == len(ids) + 3
    rows = [dec.step(t).copy() for t in ref[3:6]]             # feed the 4th token by hand, and on
    assert [int(np.argmax(r)) for r in rows] == ref[4:7]
    small = gpu.Decoder(dev, cfg, max_len=len(ids) + 3, graph=graph)
    assert small.greedy(ids, 10) == ref[:4]                     # positions T..T+2 fed: 4 tokens chosen
    assert dec.greedy(ids, 0) == []


def test_capture_failure_falls_back(rec, monkeypatch):
    cfg, w, ids = config("tied"), make_weights("tied"), make_ids("tied")
    dec = gpu.Decoder(gpu.upload(w, cfg, "float32"), cfg, max_len=16)

    def refuse(mode=None):
        raise RuntimeError("capture not supported")
    monkeypatch.setattr(dec.stream, "begin_capture", refuse)
    ref = numpy_decode(w, cfg, ids[:4], 3, ids[4:])
    rows = [dec.prefill(ids[:4]).copy()] + [dec.step(int(t)).copy() for t in ids[4:7]]
    np.testing.assert_allclose(np.stack(rows), ref, atol=1e-5, rtol=1e-5)
    assert dec.graph is None and "capture not supported" in dec.graph_error


def test_decoder_refuses_what_it_cannot_run(rec):
    cfg = config("tied")
    w = gpu.upload(make_weights("tied"), cfg, "float32")
    gpu.Decoder(w, cfg, max_len=20_000)       # attention is split over the keys: no shared-memory limit
    bad = config("tied").__class__(**{**config("tied").__dict__, "dim": 44, "n_heads": 4, "n_kv_heads": 2})
    with pytest.raises(ValueError, match="multiple of 8"):
        gpu.Decoder(w, bad, max_len=16)
    dec = gpu.Decoder(w, cfg, max_len=8)
    with pytest.raises(ValueError, match="1..7 tokens"):
        dec.prefill(list(range(8)))


def test_limits_and_sources_without_a_gpu():
    assert gpu.decode_limit(15.0e9, 3.35e12) == pytest.approx(223.3, abs=0.1)
    assert 'extern "C" __global__ void rms_norm(const float* x, const float* w, float* y, int dim, float eps)' \
        in kernels.source("rmsnorm.cu")
    import subprocess
    import sys
    code = "import sys, llama_np.gpu, llama_np.cli; assert 'cupy' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0   # CuPy only when used


def test_fuse_is_not_needed_before_upload(rec):
    """upload() stacks the matrices itself, from fused or unfused host params alike."""
    cfg, w = config("llama3_gqa"), make_weights("llama3_gqa")
    a = gpu.upload(w, cfg, "float32")
    b = gpu.upload(fuse(dict(w), cfg), cfg, "float32")
    np.testing.assert_array_equal(a["layers"][0]["wqkv"].data, b["layers"][0]["wqkv"].data)


def test_gpu_benchmark_script_runs(rec, monkeypatch, capsys):
    """benchmarks/gpu.py end to end on the emulator, shapes shrunk: the script must not be the
    thing that fails on the GPU machine."""
    import importlib.util
    from pathlib import Path

    import llama_np.backend as backend
    spec = importlib.util.spec_from_file_location(
        "gpu_bench", Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    fake = gpu._cp()
    real_use = backend.use
    fake_use = lambda device=None: fake if device == "gpu" else real_use("cpu")  # noqa: E731
    monkeypatch.setattr(bench, "use", fake_use)
    monkeypatch.setattr(gpu, "device_bandwidth", lambda *a, **k: 3.0e12)
    monkeypatch.setattr(bench, "SMOLLM2", dict(bench.SMOLLM2, n_layers=2, vocab_size=512))
    # widths that hold whole Q4_K super-blocks (256), for the Q4_K_M stage
    monkeypatch.setattr(bench, "LLAMA3_8B", dict(bench.TINY, dim=256, hidden_dim=512, vocab_size=600))
    monkeypatch.setattr("llama_np.weights.load_model", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    rc = bench.main(["--prompt-tokens", "16", "--new-tokens", "4", "--skip-transformers"])
    cap = capsys.readouterr()
    out = cap.out
    assert rc == 0, out + cap.err
    assert "all stages ran" in out and "limit" in out and "graph=True" in out
    assert "decode step by kernel" in out and "gemv w13 swiglu" in out and "attention" in out   # the profile
    assert "SmolLM2-135M, bf16" in out and "5 a layer" in out
    assert "Q4_K_M, packed" in out and "llama_np Q4_K_M (greedy)" in out and "logits finite: True" in out
    assert "an 8-token prefill (model code): gemm_few" in out and "tiles + cuBLAS" in out
    pytest.importorskip("transformers")    # the peer's loop, on the CPU at a tiny shape
    cfg = bench.ModelConfig(**bench.TINY)
    t = bench.transformers_eager(cfg, list(range(1, 17)), 3, device="cpu")
    assert t["decode_tok_s"] > 0 and t["prefill_tok_s"] > 0


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_generate_with_the_decoder(rec, temperature):
    """generate(..., decoder=Decoder) picks the same tokens as generate() on the NumPy model."""
    from llama_np.generate import generate
    cfg, w, ids = config("llama3_gqa"), make_weights("llama3_gqa"), make_ids("llama3_gqa")[:8]
    ref = generate(nest(dict(w), cfg), cfg, None, ids, max_new_tokens=10, temperature=temperature, seed=3,
                   stop_ids=set())
    dev = gpu.upload(w, cfg, "float32")
    dec = gpu.Decoder(dev, cfg, max_len=len(ids) + 10)
    got = generate(dev, cfg, None, ids, max_new_tokens=10, temperature=temperature, seed=3, stop_ids=set(),
                   decoder=dec)
    assert got.ids == ref.ids and got.stop_reason == ref.stop_reason == "length"


def test_split_attention_matches_the_plain_one():
    """attn_decode (as emulated: RoPE and the cache write, attention in parts of 64 keys, their
    merge) = RoPE then softmax attention, with parts empty or partly filled; it writes the new key
    and value into the cache at pos, leaves qkv alone and its counters at 0."""
    rng = np.random.default_rng(0)
    H, KV, hd, max_len, layer, chunk = 8, 2, 16, 200, 1, 64
    cos, sin = (rng.standard_normal((max_len, hd // 2), dtype=np.float32) for _ in range(2))
    for pos in (0, 63, 64, 130, 199):
        kc = rng.standard_normal((2, KV, max_len, hd), dtype=np.float32)
        vc = rng.standard_normal((2, KV, max_len, hd), dtype=np.float32)
        qkv = rng.standard_normal((H + 2 * KV) * hd, dtype=np.float32) * 3
        n_parts = -(-max_len // chunk)
        pm, pl = np.zeros(H * n_parts, np.float32), np.zeros(H * n_parts, np.float32)
        pacc, out = np.zeros(H * n_parts * hd, np.float32), np.zeros(H * hd, np.float32)
        done, state = np.zeros(H, np.int32), np.array([0, pos], np.int32)
        before = qkv.copy()
        gpu_emulator.attn_decode(qkv, cos, sin, state, kc, vc, pm, pl, pacc, done, out, H, KV, hd, max_len,
                                 layer, 0.25, chunk)
        np.testing.assert_array_equal(qkv, before)
        assert not done.any()
        # the reference: RoPE on q and k as complex pairs, then plain softmax attention
        rot = (before[:(H + KV) * hd].reshape(-1, hd // 2, 2) @ [1, 1j]) * (cos[pos] + 1j * sin[pos])
        rot = np.stack([rot.real, rot.imag], -1).reshape(H + KV, hd).astype(np.float32)
        np.testing.assert_allclose(kc[layer, :, pos], rot[H:], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(vc[layer, :, pos], before[(H + KV) * hd:].reshape(KV, hd))
        ref = gpu_emulator.attention_ref(rot[:H].reshape(-1), kc, vc, pos, H, KV, hd, layer, 0.25)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bf16", "f16", "f32", "int8", "q8_0", "q4_k", "q6_k"])
def test_swiglu_product_is_silu_of_gate_times_up(kind):
    """gemv_norm_swiglu_<kind> (emulated) = silu(gate) * up of the normed product with [w1; w3],
    for every weight format, and a launch with too few warps is refused (check_launch)."""
    rng = np.random.default_rng(1)
    F, n = 48, 256
    x, g = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    if kind in ("q8_0", "q4_k", "q6_k"):
        w = gpu_emulator.random_gguf(kind.upper(), 2 * F, n, seed=2)
        data, dense = (w.data,), w.to_float32()
    elif kind == "int8":
        q = rng.integers(-127, 128, (2 * F, n), dtype=np.int8)
        s = rng.random(2 * F, dtype=np.float32) * 0.01
        data, dense = (q, s), q.astype(np.float32) * s[:, None]
    else:
        w32 = rng.standard_normal((2 * F, n), dtype=np.float32) * 0.05
        bits, _ = gpu._to_bits(w32, kind)
        data, dense = (bits,), gpu_emulator._widen(kind, bits)
    g *= np.float32(3 / np.sqrt((dense.astype(np.float64) ** 2).sum(1)).max())   # gate, up ~ +-3: silu's bend
    a = np.full(F, np.nan, np.float32)
    gpu_emulator.KERNELS[f"gemv_norm_swiglu_{kind}"](*data, x, g, a, np.int32(F), np.int32(n), np.float32(1e-5))
    h = dense.astype(np.float64) @ (x / np.sqrt((x.astype(np.float64) ** 2).mean() + 1e-5) * g)
    ref = h[:F] / (1 + np.exp(-h[:F])) * h[F:]
    np.testing.assert_allclose(a, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    launch = gpu_emulator.fake_kernel(gpu_emulator.Recorder())(f"gemv_norm_swiglu_{kind}")
    args = (*data, x, g, a, np.int32(F), np.int32(n), np.float32(1e-5))
    launch(gpu._grid(F * 32), (gpu.BLOCK,), args)
    with pytest.raises(AssertionError):
        launch(gpu._grid(F), (gpu.BLOCK,), args)       # a thread a row, not a warp


def test_a_stack_of_mixed_kinds_takes_the_two_step_swiglu(rec):
    """w13 as a DeviceStack (w1 and w3 of different kinds) cannot use the fused kernel: its parts'
    products go into the scratch buffer, then the swiglu kernel, with the same result."""
    rng = np.random.default_rng(3)
    F, n = 32, 256
    w1, w3 = gpu_emulator.random_gguf("Q4_K", F, n, seed=4), gpu_emulator.random_gguf("Q6_K", F, n, seed=5)
    stack = gpu.DeviceStack([gpu.PackedDeviceWeight(w1.data, "q4_k", n), gpu.PackedDeviceWeight(w3.data, "q6_k", n)])
    dense = np.concatenate([w1.to_float32(), w3.to_float32()])
    x = rng.standard_normal(n, dtype=np.float32)
    g = np.full(n, 3 / np.sqrt((dense.astype(np.float64) ** 2).sum(1)).max(), np.float32)   # gate, up ~ +-3
    a, scratch = np.zeros(F, np.float32), np.zeros(2 * F, np.float32)
    before = rec.launches
    stack.gemv_swiglu(x, a, (g, np.float32(1e-5)), scratch)
    assert rec.launches - before == 3
    h = dense.astype(np.float64) @ (x / np.sqrt((x.astype(np.float64) ** 2).mean() + 1e-5) * g)
    np.testing.assert_allclose(a, h[:F] / (1 + np.exp(-h[:F])) * h[F:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["llama2_mha", "llama3_gqa", "llama31_scaled", "tied", "llama3_bf16"])
def test_gpu_path_matches_transformers(rec, name):
    """Against the independent reference too: transformers' committed logits, float32 weights,
    model code and Decoder (the check itself: gpu_emulator.check_against_transformers)."""
    gpu_emulator.check_against_transformers(gpu, name)


def test_generate_greedy_on_the_decoder_stops_like_the_model_code(rec):
    """generate(temperature=0, decoder=...) goes through Decoder.greedy: a stop token, a full
    cache and max_new_tokens end it as they end the model-code loop."""
    from llama_np.generate import generate
    cfg, w, ids = config("llama3_gqa"), make_weights("llama3_gqa"), make_ids("llama3_gqa")[:8]
    ref = generate(nest(dict(w), cfg), cfg, None, ids, max_new_tokens=6, temperature=0, stop_ids=set())
    dev = gpu.upload(w, cfg, "float32")
    full = generate(dev, cfg, None, ids, max_new_tokens=10, temperature=0, stop_ids=set(),
                    decoder=gpu.Decoder(dev, cfg, max_len=len(ids) + 3))
    assert full.ids == ref.ids[:4] and full.stop_reason == "context"
    stop = generate(dev, cfg, None, ids, max_new_tokens=10, temperature=0, stop_ids={ref.ids[2]},
                    decoder=gpu.Decoder(dev, cfg, max_len=32))
    assert stop.ids == ref.ids[:ref.ids.index(ref.ids[2]) + 1] and stop.stop_reason == "stop"
    length = generate(dev, cfg, None, ids, max_new_tokens=6, temperature=0, stop_ids=set(),
                      decoder=gpu.Decoder(dev, cfg, max_len=32))
    assert length.ids == ref.ids and length.stop_reason == "length" and length.decode_steps == 5


# ------------------------------------------------------------------ tensor-core prefill (fp16)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_tensor_core_prefill_within_its_bound(fp16_prefill, name, dtype):
    cfg, w, ids = config(name), make_weights(name), make_ids(name)[:20]
    rounded = bf16_matrices(w) if dtype == "bf16" else \
        {k: v.astype(np.float16).astype(np.float32) if v.ndim == 2 else v for k, v in w.items()}
    ref = forward(nest(dict(rounded), cfg), cfg, ids)
    dev = gpu.upload(w, cfg, dtype)
    out = forward(dev, cfg, ids)
    gpu_emulator.assert_within_fp16_prefill_bound(out, ref)
    assert np.abs(out - ref).max() > 0            # the fp16 products ran, not the exact path
    gpu.PREFILL = "float32"                       # the exact path stays an option (monkeypatch restores)
    np.testing.assert_allclose(forward(dev, cfg, ids), ref, atol=1e-5, rtol=1e-5)


def test_bf16_to_f16_is_exact_in_fp16_range(rec):
    """bf16's 8 significant bits fit fp16's 11: the conversion loses nothing for 6.1e-5 <= |w| <= 65504."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 64)) * np.exp(rng.uniform(-9, 9, (16, 64)))).astype(np.float32)
    bits = f32_to_bf16(w)
    dw = gpu.DeviceWeight(bits, "bf16")
    h = np.asarray(dw.half()).astype(np.float32)
    wide = np.asarray(dw.widen())
    normal = (np.abs(wide) >= 2.0 ** -14) & (np.abs(wide) <= 65504)
    assert normal.mean() > 0.5
    np.testing.assert_array_equal(h[normal], wide[normal])


def test_decoder_greedy_after_a_tensor_core_prefill(fp16_prefill):
    """The default prefill leaves the decoder's greedy tokens those of NumPy on the same weights."""
    cfg, w, ids = config("llama3_gqa"), make_weights("llama3_gqa"), make_ids("llama3_gqa")[:8]
    params, cache, want = nest(bf16_matrices(w), cfg), new_cache(cfg, 24), []
    logits = forward(params, cfg, ids, 0, cache, last_only=True)
    for i in range(8):
        want.append(int(np.argmax(logits[-1])))
        logits = forward(params, cfg, [want[-1]], len(ids) + i, cache)
    assert gpu.Decoder(gpu.upload(w, cfg, "bf16"), cfg, max_len=24).greedy(ids, 8) == want


def test_unknown_prefill_mode_is_one_line(fp16_prefill):
    cfg, w = config("tied"), make_weights("tied")
    gpu.PREFILL = "tf32"
    with pytest.raises(ValueError, match="unknown GPU prefill mode 'tf32'.*use fp16 or float32") as e:
        forward(gpu.upload(w, cfg, "bf16"), cfg, list(range(1, gpu.FEW_TOKENS + 2)))   # past gemm_few
    assert "\n" not in str(e.value)


def test_tensor_core_prefill_on_smollm2(fp16_prefill):
    """SmolLM2's real weights (30 layers, logits up to ~27): the tensor-core prefill within its bound
    of NumPy on the same bf16 weights (measured: 0.040, 1.5e-3 of the largest logit), same top tokens."""
    from llama_np.assets import AssetError
    from llama_np.weights import load_model
    from llama_np.weights.packed import bf16_to_f32
    try:
        cfg, flat, tok = load_model(None, progress=False)
    except AssetError as e:
        pytest.skip(f"SmolLM2 not available: {e}")
    ids = tok.encode("The capital of France is")
    rounded = {k: bf16_to_f32(f32_to_bf16(v)) if v.ndim == 2 else v for k, v in flat.items()}
    ref = forward(nest(rounded, cfg), cfg, ids)
    gpu_emulator.assert_within_fp16_prefill_bound(forward(gpu.upload(flat, cfg, "bf16"), cfg, ids), ref)


# ------------------------------------------------------------------ quantized weights, packed
# The kernels' arithmetic (gpu_emulator's _dot_* and _deq_*, which follow gemv_q8_0/q4_k/q6_k/
# int8.cu lane by lane) against quants.dequantize + a product: on blocks llama.cpp wrote and on
# random blocks, where every code, scale and min field takes all its values.
from llama_np.weights import quants  # noqa: E402
from llama_np.weights.packed import Int8Weight, pack, quantize_int8  # noqa: E402
from tests.fixtures.llamacpp import make_fixtures as llamacpp  # noqa: E402

from tests.gpu_emulator import PACKED, assert_fp32_sum, llamacpp_matrices, random_gguf  # noqa: E402


@pytest.mark.parametrize("kind", list(PACKED))
@pytest.mark.parametrize("source", ["llamacpp", "random"])
def test_packed_gemv_arithmetic(kind, source):
    rng = np.random.default_rng(1)
    mats = llamacpp_matrices(kind) if source == "llamacpp" else \
        [random_gguf(kind, 24, 256), random_gguf(kind, 16, 1024, seed=1), random_gguf(kind, 5, 4096, seed=2)]
    for W in mats:
        rows, n = W.shape
        w32 = quants.dequantize(W.data, kind)
        x = rng.standard_normal(n, dtype=np.float32)
        g = (1 + 0.2 * rng.standard_normal(n)).astype(np.float32)
        y = rng.standard_normal(rows, dtype=np.float32)
        y0 = y.copy()
        gpu_emulator.KERNELS["gemv_" + PACKED[kind]](W.data, x, y, np.int32(rows), np.int32(n), np.int32(1))
        assert_fp32_sum(y - y0, w32, x, ulps=32)      # accumulate: y0 + W x (one more rounding)
        gpu_emulator.KERNELS["gemv_" + PACKED[kind]](W.data, x, y, np.int32(rows), np.int32(n), np.int32(0))
        assert_fp32_sum(y, w32, x)
        gpu_emulator.KERNELS["gemv_norm_" + PACKED[kind]](W.data, x, g, y, np.int32(rows), np.int32(n),
                                                          np.float32(1e-5))
        xn = (x / np.sqrt((x.astype(np.float64) ** 2).mean() + 1e-5) * g).astype(np.float32)
        assert_fp32_sum(y, w32, xn)


@pytest.mark.parametrize("kind", list(PACKED))
def test_packed_dequant_is_bit_exact(kind):
    """dequant_<kind>_f32 (embedding rows, prefill tiles) = quants.dequantize, bit for bit; the
    fp16 variant is that rounded to nearest even."""
    for W in llamacpp_matrices(kind) + [random_gguf(kind, 7, 512, seed=3)]:
        rows, n = W.shape
        ids = np.array([rows - 1, 0, rows // 2, rows - 1], dtype=np.int32)
        want = quants.dequantize(W.data, kind)[ids]
        out = np.full(len(ids) * n, np.nan, np.float32)
        gpu_emulator.KERNELS[f"dequant_{PACKED[kind]}_f32"](W.data, ids, out, np.int32(len(ids)), np.int32(n))
        np.testing.assert_array_equal(out.reshape(want.shape).view(np.uint32), want.view(np.uint32))
        half = np.zeros(len(ids) * n, np.uint16)
        gpu_emulator.KERNELS[f"dequant_{PACKED[kind]}_f16"](W.data, ids, half, np.int32(len(ids)), np.int32(n))
        np.testing.assert_array_equal(half.reshape(want.shape), want.astype(np.float16).view(np.uint16))


def test_int8_kernels_arithmetic():
    rng = np.random.default_rng(4)
    q, s = quantize_int8(rng.standard_normal((37, 4096), dtype=np.float32))
    W = Int8Weight(q, s)
    w32 = W.to_float32()
    x, g = rng.standard_normal(4096, dtype=np.float32), (1 + 0.1 * rng.standard_normal(4096)).astype(np.float32)
    y = np.zeros(37, np.float32)
    gpu_emulator.gemv_int8(q, s, x, y, np.int32(37), np.int32(4096), np.int32(0))
    assert_fp32_sum(y, w32, x)
    gpu_emulator.gemv_norm_int8(q, s, x, g, y, np.int32(37), np.int32(4096), np.float32(1e-5))
    assert_fp32_sum(y, w32, (x / np.sqrt((x.astype(np.float64) ** 2).mean() + 1e-5) * g).astype(np.float32))
    ids = np.array([3, 36], np.int32)
    out = np.zeros(2 * 4096, np.float32)
    gpu_emulator.KERNELS["dequant_int8_f32"](q, s, ids, out, np.int32(2), np.int32(4096))
    np.testing.assert_array_equal(out.reshape(2, 4096), W.rows(ids))


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q6_K", "Q8_0"])
def test_llamacpp_fixture_uploaded_packed(rec, ftype):
    """The orchestration: packed upload (Q4_K_M's wq|wk|wv is Q4_K, Q4_K, Q6_K: a DeviceStack),
    tiled prefill, the Decoder's gemv and embedding kernels, vs the NumPy packed path."""
    gpu_emulator.check_packed_fixture(gpu, ftype)


def test_packed_upload_keeps_the_files_bytes(rec):
    from llama_np.weights import gguf as gguf_loader
    cfg, flat, _ = gguf_loader.load(str(llamacpp.path("Q4_K_M")), tokenizer=False, progress=False, dtype="packed")
    dev = gpu.upload(flat, cfg)
    layer = dev["layers"][0]
    assert isinstance(layer["wqkv"], gpu.DeviceStack) and [w.kind for w in layer["wqkv"].parts] == ["q4_k", "q6_k"]
    np.testing.assert_array_equal(layer["wqkv"].parts[0].data, np.concatenate([flat["layers.0.wq"].data,
                                                                              flat["layers.0.wk"].data]))
    assert layer["w2"].kind == "q6_k" and layer["w2"].data is not None
    np.testing.assert_array_equal(layer["w2"].data, flat["layers.0.w2"].data)
    assert dev["tok_embeddings"].kind == "q4_k" and dev["output"].kind == "q6_k"
    assert gpu.device_nbytes(dev) == sum(w.nbytes for w in flat.values())


def test_unsupported_gguf_types_are_widened(rec):
    """Q5_K has no kernel here: it goes up as bf16 (Q5_K_M's Q6_K tensors stay packed)."""
    from llama_np.weights import gguf as gguf_loader
    cfg, flat, _ = gguf_loader.load(str(llamacpp.path("Q5_K_M")), tokenizer=False, progress=False, dtype="packed")
    dev = gpu.upload(flat, cfg)
    layer = dev["layers"][0]
    assert layer["wo"].kind == "bf16" and layer["w2"].kind == "q6_k"
    assert [w.kind for w in layer["wqkv"].parts] == ["bf16", "q6_k"]
    w32 = {k: v.to_float32() if hasattr(v, "to_float32") else v for k, v in flat.items()}
    rounded = {k: round_to_bf16(v) if v.ndim == 2 and flat[k].kind == "Q5_K" else v for k, v in w32.items()}
    ids = [int(t) for t in llamacpp.IDS]
    ref = forward(nest(rounded, cfg), cfg, ids)
    assert np.abs(gpu.forward_gpu(dev, cfg, ids) - ref).max() <= 1e-3 * np.abs(ref).max()
    assert gpu.upload(flat, cfg, packed=False)["layers"][0]["w2"].kind == "bf16"


@pytest.mark.parametrize("name", ["llama3_gqa", "tied"])
def test_int8_weights_uploaded_packed(rec, name):
    """llama_np's int8 mode on the GPU: codes and scales uploaded as they are, logits as NumPy's
    on the same Int8Weights (model code and Decoder)."""
    cfg, w, ids = config(name), make_weights(name), make_ids(name)[:16]
    flat = {k: pack(v, "int8") if v.ndim == 2 else v for k, v in w.items()}
    params = nest(dict(flat), cfg)
    ref = numpy_decode(flat, cfg, ids[:10], 6, ids[10:])
    dev = gpu.upload(flat, cfg)
    assert dev["layers"][0]["w13"].kind == "int8" and dev["tok_embeddings"].kind == "int8"
    np.testing.assert_allclose(gpu.forward_gpu(dev, cfg, ids[:10]), forward(params, cfg, ids[:10]), atol=1e-5, rtol=1e-5)
    dec = gpu.Decoder(dev, cfg, max_len=24)
    rows = [dec.prefill(ids[:10]).copy()] + [dec.step(int(t)).copy() for t in ids[10:16]]
    np.testing.assert_allclose(np.stack(rows), ref, atol=1e-5, rtol=1e-5)


def test_packed_prefill_tiles_and_fp16(fp16_prefill, monkeypatch):
    """A prefill dequantizes PREFILL_TILE weights at a time: tiles that do not divide the rows give
    the same product; the fp16 prefill stays within its bound of the exact one."""
    W = random_gguf("Q4_K", 40, 512, seed=5)
    dw = gpu.PackedDeviceWeight(W.data, "q4_k", 512)
    x = np.random.default_rng(6).standard_normal((gpu.FEW_TOKENS + 3, 512), dtype=np.float32)   # past gemm_few
    ref = x @ quants.dequantize(W.data, "Q4_K").T
    gpu.PREFILL = "float32"
    monkeypatch.setattr(gpu, "PREFILL_TILE", 512 * 7)      # 7 rows a tile: 6 tiles, the last of 5 rows
    np.testing.assert_allclose(dw.matmul(x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    gpu.PREFILL = "fp16"
    gpu_emulator.assert_within_fp16_prefill_bound(dw.matmul(x), ref)
    np.testing.assert_array_equal(dw.rows([3, 39]), quants.dequantize(W.data, "Q4_K")[[3, 39]])


def gpu_benchmark():
    """benchmarks/gpu.py as a module (it is a script, not a package)."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "gpu_bench", Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_q4_k_m_type_map_is_llamacpps():
    """The benchmark's rule for llama.cpp's Q4_K_M types (q4_k_m_type, used below for 8B) gives,
    on the fixture llama.cpp quantized (1 layer), the types it wrote."""
    q4_k_m_type = gpu_benchmark().q4_k_m_type
    from llama_np.weights import gguf as gguf_loader
    cfg, flat, _ = gguf_loader.load(str(llamacpp.path("Q4_K_M")), tokenizer=False, progress=False, dtype="packed")
    for name, w in flat.items():
        if isinstance(w, np.ndarray):
            continue
        assert w.kind == q4_k_m_type(name, cfg.n_layers), name


def test_llama3_8b_q4_k_m_fits_in_6_gb(rec, monkeypatch):
    """upload() of Llama 3 8B Q4_K_M, with stand-ins that hold shapes but no memory (zero-stride
    views): what goes on the GPU is exactly the GGUF's packed bytes (4.9 GB; the published file is
    4.92 GB with its tokenizer), and with the KV cache of 2048 positions and the prefill's scratch
    tile it stays under 6 GB."""
    from llama_np.config import ModelConfig
    from llama_np.model import param_shapes
    cfg = ModelConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, hidden_dim=14336,
                      norm_eps=1e-5, rope_theta=500000.0, max_seq_len=8192)
    fake, q4_k_m_type = gpu._cp(), gpu_benchmark().q4_k_m_type

    def ghost(a, dtype=None):          # no copy: shapes and byte counts only
        return np.asarray(a, dtype=dtype) if dtype is not None else a

    def ghost_concat(arrays, axis=0):
        rows = sum(a.shape[0] for a in arrays)
        return np.broadcast_to(np.zeros((1, *arrays[0].shape[1:]), arrays[0].dtype), (rows, *arrays[0].shape[1:]))
    monkeypatch.setattr(fake, "asarray", ghost)
    monkeypatch.setattr(fake, "concatenate", ghost_concat)
    flat, host = {}, 0
    for name, shape in param_shapes(cfg).items():
        if len(shape) == 1:
            flat[name] = np.ones(shape, np.float32)
            host += 4 * shape[0]
            continue
        kind = q4_k_m_type(name, cfg.n_layers)
        block, nbytes, _ = quants.TYPES[kind]
        row = np.zeros((1, shape[1] // block * nbytes), np.uint8)
        flat[name] = quants.GGUFWeight(np.broadcast_to(row, (shape[0], row.shape[1])), kind, shape[1])
        host += flat[name].nbytes
    on_gpu = gpu.device_nbytes(gpu.upload(flat, cfg))
    assert on_gpu == host
    assert 4.85e9 < on_gpu < 4.95e9, on_gpu
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 4 * 2048       # float32 K and V
    assert on_gpu + kv + 4 * gpu.PREFILL_TILE < 6e9


def test_cli_loads_a_gguf_packed_for_the_gpu(rec, monkeypatch):
    """--device gpu --model x.gguf maps the file packed, so its quantized blocks go up as stored
    (not dequantized to float32 on the host and widened to bf16 on the GPU)."""
    import llama_np.backend as backend
    from llama_np import cli
    monkeypatch.setattr(backend, "use", lambda device=None: gpu._cp())
    monkeypatch.delenv("LLAMA_NP_GGUF_DTYPE", raising=False)
    cfg, params, _ = cli._load(str(llamacpp.path("Q8_0")), "gpu")
    assert params["layers"][0]["w13"].kind == "q8_0" and params["output"].kind == "q8_0"
    monkeypatch.setenv("LLAMA_NP_GGUF_DTYPE", "float32")        # the user's choice still wins
    assert cli._load(str(llamacpp.path("Q8_0")), "gpu")[1]["output"].kind == "bf16"


def test_lesson_11_counts_the_kernels_the_decoder_launches(rec):
    """Lesson 11's table of the fused step ("llama_np.gpu.Decoder.launches() lists exactly these")
    has as many kernels a layer as the Decoder's step."""
    import ast
    import json
    import re
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "solutions" / "11_gpu_cupy.ipynb"
    if not path.exists():
        pytest.skip("solutions/ is in the repository, not in an installed copy")
    nb = json.loads(path.read_text("utf-8"))
    src = next("".join(c["source"]) for c in nb["cells"] if "fused = {" in "".join(c["source"]))
    fused = ast.literal_eval(re.search(r"fused = (\{.*?\n\})", src, re.S).group(1))
    cfg, w = config("llama3_gqa"), make_weights("llama3_gqa")
    dec = gpu.Decoder(gpu.upload(w, cfg, "bf16"), cfg, max_len=16)
    per_layer = (len(dec.launches()) - 2) // cfg.n_layers         # minus the embedding and the head
    assert sum(fused.values()) == per_layer == len(fused), (fused, per_layer)


@pytest.mark.parametrize("T", [1, 2, 5, 8])
def test_a_few_tokens_take_gemm_few_without_a_dequantized_copy(rec, monkeypatch, T):
    """Up to FEW_TOKENS tokens, packed and 16-bit weights multiply in one gemm_few_<kind> launch
    (no dequantize tile, no fp16 copy of the matrix), equal to the float64 product within float32
    rounding; one token more goes to the tiles."""
    names = []
    real = gpu.kernel
    monkeypatch.setattr(gpu, "kernel", lambda name: (names.append(name), real(name))[1])
    rng = np.random.default_rng(T)
    W = random_gguf("Q6_K", 24, 512, seed=T)
    w16 = gpu._to_bits(rng.standard_normal((24, 512), dtype=np.float32) * 0.05, "bf16")[0]
    x = rng.standard_normal((T, 512), dtype=np.float32)
    for dw, dense in ((gpu.PackedDeviceWeight(W.data, "q6_k", 512), quants.dequantize(W.data, "Q6_K")),
                      (gpu.DeviceWeight(w16, "bf16"), gpu_emulator._widen("bf16", w16))):
        names.clear()
        y = dw.matmul(x)
        assert names == [f"gemm_few_{dw.kind}"], names
        ref = x.astype(np.float64) @ dense.T.astype(np.float64)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    names.clear()
    gpu.PackedDeviceWeight(W.data, "q6_k", 512).matmul(np.zeros((gpu.FEW_TOKENS + 1, 512), np.float32))
    assert "gemm_few_q6_k" not in names and "dequant_q6_k_f32" in names
