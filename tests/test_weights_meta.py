"""Meta checkpoints (params.json + consolidated.NN.pth) and the torch-free .pth reader.

References: files written by ``torch.save`` (what Meta's code writes), logits of transformers'
LlamaForCausalLM (float32, eager) on the same weights converted to Hugging Face's layout by
transformers' own permutation, and ``torch.load`` for what our .pth writer produces.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from llama_np.model import forward as _forward, nest
from llama_np.weights import meta, torch_zip
from llama_np.weights.errors import CheckpointError

torch = pytest.importorskip("torch")
from tests import checkpoint_writers as W  # noqa: E402

os.environ.setdefault("LLAMA_NP_QUIET", "1")


def forward(flat, cfg, ids):
    """Loaders return flat {Meta name: weight}; forward takes them nested."""
    return _forward(nest(flat, cfg), cfg, ids)
IDS = np.random.default_rng(1).integers(0, 100, 40)   # 40 positions: enough for RoPE scaling to matter


# ----------------------------------------------------------------------------- the .pth reader
def test_torch_zip_reads_what_torch_saves(tmp_path):
    a = np.arange(35, dtype=np.float32).reshape(5, 7) / 7
    sd = {"bf16": torch.from_numpy(a).bfloat16(), "f16": torch.from_numpy(a).half(),
          "transposed": torch.from_numpy(a).t(), "slice": torch.from_numpy(a)[1:4, 2:5],
          "param": torch.nn.Parameter(torch.from_numpy(a[0]))}
    torch.save(sd, tmp_path / "x.pth")
    got = torch_zip.load(tmp_path / "x.pth")
    assert got["bf16"].dtype == np.uint16   # raw bfloat16 bits: NumPy has no bfloat16
    assert np.array_equal(got["bf16"], sd["bf16"].view(torch.int16).numpy().view(np.uint16))
    for k in ("f16", "transposed", "slice", "param"):
        assert np.array_equal(got[k], sd[k].detach().numpy()), k
    assert isinstance(got["transposed"].base, np.ndarray) or got["transposed"].base is not None  # a view, not a copy


def test_torch_zip_writer_is_read_by_torch(tmp_path):
    """Our hand-written .pth (used by the benchmark for 16 GB files) is a valid torch checkpoint."""
    from llama_np.weights.packed import f32_to_bf16
    a = np.linspace(-3, 3, 600, dtype=np.float32).reshape(20, 30)
    torch_zip.save(tmp_path / "w.pth", {"a": f32_to_bf16(a), "b": a, "c": a[0].astype(np.float16)})
    got = torch.load(tmp_path / "w.pth", weights_only=True)
    assert got["a"].dtype == torch.bfloat16 and torch.equal(got["a"], torch.from_numpy(a).bfloat16())
    assert torch.equal(got["b"], torch.from_numpy(a)) and torch.equal(got["c"], torch.from_numpy(a[0]).half())


def test_restricted_unpickler_refuses_os_system(tmp_path):
    """A pickle that calls os.system must be refused before anything runs."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
        zf.writestr("evil/version", "3\n")
    with pytest.raises(CheckpointError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        torch_zip.load(path)
    assert not marker.exists()
    # The same through the public loader, in a checkpoint folder.
    (tmp_path / "params.json").write_text(json.dumps({"dim": 8, "n_layers": 1, "n_heads": 2}))
    os.replace(path, tmp_path / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match="malicious"):
        meta.load(tmp_path)
    assert not marker.exists()


def test_restricted_unpickler_refuses_builtins_eval(tmp_path):
    payload = b"\x80\x02cbuiltins\neval\nX\x08\x00\x00\x00__name__\x85R."
    with pytest.raises(CheckpointError, match="builtins.eval"):
        torch_zip.RestrictedUnpickler(io.BytesIO(payload), None).load()


# ----------------------------------------------------------------------------- whole checkpoints
@pytest.mark.parametrize("kind", ["llama2", "llama3"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_meta_checkpoint_matches_transformers(tmp_path, kind, dtype):
    """Meta folder -> llama_np logits == transformers' logits on the same weights (HF layout).

    Tolerance 1e-4: both sides compute in float32 from identical (exactly widened) weights, so
    they differ only by summation order: ~2e-6 measured on logits of size ~3."""
    spec, cfg, flat = W.tiny(kind)
    W.write_meta(tmp_path / "meta", spec, flat, dtype)
    W.write_hf(tmp_path / "hf", spec, cfg, flat, dtype)
    ref = W.transformers_logits(tmp_path / "hf", IDS)
    for mode in ("float32", "bf16"):
        c, p, tok = meta.load(tmp_path / "meta", mode)
        assert tok is None and c.vocab_size == cfg.vocab_size and c.n_kv_heads == cfg.n_kv_heads
        assert c.rope_scaling == cfg.rope_scaling
        logits = forward(p, c, IDS)
        assert logits.dtype == np.float32
        np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)
        assert (logits.argmax(-1) == ref.argmax(-1)).all()


def test_bf16_mode_keeps_memory_maps(tmp_path):
    spec, cfg, flat = W.tiny("llama3")
    W.write_meta(tmp_path, spec, flat, "bf16")
    _, p, _ = meta.load(tmp_path, "bf16")
    wq = p["layers.0.wq"]
    assert wq.is_packed and wq.kind == "bf16" and isinstance(wq.data.base, np.memmap)
    assert p["layers.0.attention_norm"].dtype == np.float32   # norms always float32


@pytest.mark.parametrize("kind", ["llama2", "llama3"])
def test_two_shards_load_like_one(tmp_path, kind):
    """Meta splits matrices across model-parallel ranks; merged, they must give the same model.
    (Llama 2 splits tok_embeddings by columns, Llama 3 by rows: both are covered.)"""
    spec, cfg, flat = W.tiny(kind)
    W.write_meta(tmp_path / "one", spec, flat, "bf16")
    W.write_meta(tmp_path / "two", spec, flat, "bf16", n_shards=2, llama2_embed=(kind == "llama2"))
    assert (tmp_path / "two" / "consolidated.01.pth").exists()
    c1, p1, _ = meta.load(tmp_path / "one")
    c2, p2, _ = meta.load(tmp_path / "two")
    assert c1 == c2
    f1, f2 = p1, p2
    assert f1.keys() == f2.keys()
    for k in f1:
        assert np.array_equal(f1[k], f2[k]), k
    assert np.array_equal(forward(p1, c1, IDS), forward(p2, c2, IDS))


# ----------------------------------------------------------------------------- clear errors
@pytest.fixture
def folder(tmp_path):
    spec, cfg, flat = W.tiny("llama2")
    return W.write_meta(tmp_path / "m", spec, flat, "bf16")


def test_truncated_shard(folder):
    path = folder / "consolidated.00.pth"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a PyTorch zip checkpoint.*truncated"):
        meta.load(folder)


def test_storage_cut_short(folder, tmp_path):
    """Central directory intact but a storage shorter than its tensor says: caught at load."""
    path = folder / "consolidated.00.pth"
    sd = torch.load(path, weights_only=True)
    sd["layers.1.feed_forward.w3.weight"] = sd["layers.1.feed_forward.w3.weight"][:10].clone()
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"layers\.1\.w3 has shape \(10, 64\).*params\.json"):
        meta.load(folder)


def test_corrupted_pickle(folder):
    path = folder / "consolidated.00.pth"
    data = bytearray(path.read_bytes())
    start = data.index(b"data.pkl") + len(b"data.pkl") + 40   # inside the pickle's bytes
    data[start:start + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        meta.load(folder)


def test_wrong_params_json(folder):
    params = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps({**params, "dim": 128}))
    with pytest.raises(CheckpointError, match=r"attention_norm has shape \(64,\), but params\.json implies \(128,\)"):
        meta.load(folder)
    (folder / "params.json").write_text(json.dumps({**params, "n_layers": 3}))
    with pytest.raises(CheckpointError, match=r"missing tensors layers\.2\.attention_norm"):
        meta.load(folder)
    (folder / "params.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        meta.load(folder)
    (folder / "params.json").write_text(json.dumps({"dim": 64}))
    with pytest.raises(CheckpointError, match="n_layers"):
        meta.load(folder)


def test_missing_and_unexpected_tensors(folder):
    path = folder / "consolidated.00.pth"
    sd = torch.load(path, weights_only=True)
    del sd["layers.1.feed_forward.w3.weight"]
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing tensors layers\.1\.w3 "):
        meta.load(folder)
    sd["layers.1.feed_forward.w3.weight"] = torch.zeros(192, 64)
    sd["layers.0.attention.bias"] = torch.zeros(4)
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"unexpected tensors layers\.0\.attention\.bias"):
        meta.load(folder)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        meta.load(tmp_path / "nowhere")
    (tmp_path / "params.json").write_text(json.dumps({"dim": 8, "n_layers": 1, "n_heads": 2}))
    with pytest.raises(FileNotFoundError, match="consolidated"):
        meta.load(tmp_path)


def test_meta_tokenizer_detected(tmp_path):
    """A Llama 3 folder's tokenizer.model (tiktoken ranks) is loaded with the model."""
    tk = pytest.importorskip("llama_np.tokenizer")
    if not hasattr(tk, "load_tokenizer"):
        pytest.skip("llama_np.tokenizer.load_tokenizer not available")
    from llama_np.assets import fetch
    src = fetch("llama3-tokenizer")         # fetched once into the cache on a fresh machine
    spec, cfg, flat = W.tiny("llama3")
    W.write_meta(tmp_path, spec, flat, "bf16")
    os.symlink(src, tmp_path / "tokenizer.model")
    _, _, tok = meta.load(tmp_path)
    assert tok.encode("hello world") == [15339, 1917]   # tiktoken's ids for Llama 3 (docs/design.md §2)


def test_progress_bar_one_line_when_not_a_terminal():
    from llama_np.weights.progress import Progress, progress
    buf = io.StringIO()
    with Progress(2e9, "loading", unit="bytes", stream=buf, enabled=True) as bar:
        bar.update(1e9)
        bar.update(1e9)
    assert buf.getvalue().count("\n") == 1 and "100% 2.0 GB/2.0 GB" in buf.getvalue()
    assert list(progress(range(3), "x", enabled=False)) == [0, 1, 2]
