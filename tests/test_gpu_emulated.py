"""The GPU path's plumbing on the CPU: llama_np.gpu with CuPy and its kernels replaced by the NumPy
emulator in tests/gpu_emulator.py. Upload layouts, kernel arguments, the decode step's buffers and
the CUDA-graph replay are checked against llama_np's NumPy model (itself checked against
transformers). The kernels' CUDA code runs in tests/test_gpu.py, on a GPU machine."""
from __future__ import annotations

import numpy as np
import pytest

from llama_np import gpu
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
    return r


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
    per_step = 2 + 8 * cfg.n_layers        # embed, normed head + 8 per layer
    assert len(dec.graph.calls) == per_step
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
        in gpu.RMS_NORM_SOURCE
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
    monkeypatch.setattr(bench, "LLAMA3_8B", dict(bench.TINY, vocab_size=600))
    monkeypatch.setattr("llama_np.weights.load_model", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    rc = bench.main(["--prompt-tokens", "16", "--new-tokens", "4", "--skip-transformers"])
    cap = capsys.readouterr()
    out = cap.out
    assert rc == 0, out + cap.err
    assert "all stages ran" in out and "limit" in out and "graph=True" in out
    assert "decode step by kernel" in out and "gemv w13" in out      # the per-kernel profile
    pytest.importorskip("transformers")    # the peer's loop, on the CPU at a tiny shape
    cfg = bench.ModelConfig(**bench.TINY)
    t = bench.transformers_8b(cfg, list(range(1, 17)), 3, device="cpu")
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
    """attn_partial + attn_combine (as emulated) = softmax attention, parts empty or partly filled."""
    rng = np.random.default_rng(0)
    H, KV, hd, max_len, layer = 8, 2, 16, 200, 1
    kc = rng.standard_normal((2, KV, max_len, hd), dtype=np.float32)
    vc = rng.standard_normal((2, KV, max_len, hd), dtype=np.float32)
    q = rng.standard_normal(H * hd, dtype=np.float32) * 3
    for pos in (0, 63, 64, 130, 199):
        n_parts = -(-max_len // 64)
        pm, pl = np.zeros(H * n_parts, np.float32), np.zeros(H * n_parts, np.float32)
        pacc, out = np.zeros(H * n_parts * hd, np.float32), np.zeros(H * hd, np.float32)
        state = np.array([0, pos], np.int32)
        gpu_emulator.attn_partial(q, kc, vc, pm, pl, pacc, state, H, KV, hd, max_len, layer, 0.25, 64)
        gpu_emulator.attn_combine(pm, pl, pacc, out, hd, n_parts)
        ref = gpu_emulator.attention_ref(q, kc, vc, pos, H, KV, hd, layer, 0.25)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


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
