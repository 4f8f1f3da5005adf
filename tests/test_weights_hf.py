"""Hugging Face checkpoints (config.json + safetensors) and the hand-written safetensors reader.

References: files written by the ``safetensors`` package, q/k permuted by transformers' own
code, logits of transformers' LlamaForCausalLM (float32, eager) loaded from the same folder,
and the Meta-format copy of the same weights written by ``torch.save``.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from llama_np.model import forward as _forward, nest
from llama_np.weights import hf, meta
from llama_np.weights import safetensors as st
from llama_np.weights.errors import CheckpointError

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("transformers")
from tests import checkpoint_writers as W  # noqa: E402
from tests.tolerance import REFERENCE_ULPS, assert_close  # noqa: E402

os.environ.setdefault("LLAMA_NP_QUIET", "1")


def forward(flat, cfg, ids):
    """Loaders return flat {Meta name: weight}; forward takes them nested."""
    return _forward(nest(flat, cfg), cfg, ids)
IDS = np.random.default_rng(1).integers(0, 100, 40)


# ----------------------------------------------------------------------------- safetensors reader
def test_safetensors_reads_what_the_package_writes(tmp_path):
    from safetensors.torch import save_file
    a = torch.linspace(-2, 2, 42).reshape(6, 7)
    save_file({"bf16": a.bfloat16(), "f16": a.half(), "f32": a, "empty": torch.zeros(0, 3)}, tmp_path / "x.safetensors")
    got = st.load(tmp_path / "x.safetensors")
    assert got["bf16"].dtype == np.uint16 and isinstance(got["bf16"], np.memmap)
    assert np.array_equal(got["bf16"], a.bfloat16().view(torch.int16).numpy().view(np.uint16))
    assert np.array_equal(got["f16"], a.half().numpy()) and np.array_equal(got["f32"], a.numpy())
    assert got["empty"].shape == (0, 3)


def test_safetensors_writer_is_read_by_the_package(tmp_path):
    from safetensors.numpy import load_file
    a = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    st.save(tmp_path / "y.safetensors", {"a": a, "h": a.astype(np.float16)}, metadata={"format": "pt"})
    got = load_file(tmp_path / "y.safetensors")
    assert np.array_equal(got["a"], a) and np.array_equal(got["h"], a.astype(np.float16))


def test_safetensors_errors(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "x.safetensors"
    save_file({"w": torch.ones(100, 100)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="truncated: tensor 'w' ends at byte"):
        st.load(path)
    path.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        st.load(path)
    path.write_bytes(struct.pack("<Q", 10**12) + data[8:])
    with pytest.raises(CheckpointError, match="bad safetensors header length"):
        st.load(path)
    path.write_bytes(struct.pack("<Q", 6) + b"{oops}" + b"\0" * 10)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        st.load(path)
    header = json.dumps({"w": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 12]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 36)
    with pytest.raises(CheckpointError, match=r"has 12 bytes, shape \[3, 3\] F32 needs 36"):
        st.load(path)


# ----------------------------------------------------------------------------- whole checkpoints
@pytest.mark.parametrize("kind", ["llama2", "llama3"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_hf_matches_transformers_and_meta(tmp_path, kind, dtype):
    """Same weights, both formats: identical logits from both loaders (the q/k permutation is
    undone exactly), and within 1e-4 of transformers (float32 both sides, from identical weights:
    only summation order differs, ~2e-6 measured)."""
    spec, cfg, flat = W.tiny(kind)
    W.write_hf(tmp_path / "hf", spec, cfg, flat, dtype)
    W.write_meta(tmp_path / "meta", spec, flat, dtype)
    ref = W.transformers_logits(tmp_path / "hf", IDS)
    c_meta, p_meta, _ = meta.load(tmp_path / "meta", "float32")
    from_meta = forward(p_meta, c_meta, IDS)
    for mode in ("float32", "bf16"):
        c, p, tok = hf.load(tmp_path / "hf", mode)
        assert tok is None and c.head_dim == cfg.head_dim and c.rope_scaling == cfg.rope_scaling
        logits = forward(p, c, IDS)
        # float32: identical matrices, identical arithmetic. bf16: the q/k outputs are reordered
        # after the product instead of the rows before it, which BLAS may sum differently.
        np.testing.assert_allclose(logits, from_meta, atol=0 if mode == "float32" else 1e-5, rtol=0)
        assert_close(logits, ref, REFERENCE_ULPS)
        assert (logits.argmax(-1) == ref.argmax(-1)).all()


def test_tied_embeddings_and_shards(tmp_path):
    """Llama 3.2 style: no lm_head (tie_word_embeddings), weights in 3 shards + index."""
    spec, cfg, flat = W.tiny("llama3", seed=3)
    flat = dict(flat)
    flat["output"] = flat["tok_embeddings"]
    W.write_hf(tmp_path / "one", spec, cfg, flat, "bf16", tie=True)
    W.write_hf(tmp_path / "three", spec, cfg, flat, "bf16", tie=True, n_shards=3)
    assert (tmp_path / "three" / "model-00003-of-00003.safetensors").exists()
    ref = W.transformers_logits(tmp_path / "one", IDS)
    c1, p1, _ = hf.load(tmp_path / "one", "bf16")
    c3, p3, _ = hf.load(tmp_path / "three", "bf16")
    assert c1.tie_embeddings and "output" not in p1 and nest(p1, c1)["output"] is p1["tok_embeddings"]
    l1, l3 = forward(p1, c1, IDS), forward(p3, c3, IDS)
    assert np.array_equal(l1, l3)
    assert_close(l1, ref, REFERENCE_ULPS)   # as above: float32 both sides


def test_missing_lm_head_means_tied(tmp_path):
    spec, cfg, flat = W.tiny("llama2")
    W.write_hf(tmp_path, spec, cfg, flat, "bf16", tie=True)
    cfg_json = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg_json, "tie_word_embeddings": False}))
    c, p, _ = hf.load(tmp_path)
    assert c.tie_embeddings


def test_int8_mode_close_to_bf16(tmp_path):
    spec, cfg, flat = W.tiny("llama3")
    W.write_hf(tmp_path, spec, cfg, flat, "bf16")
    c, p16, _ = hf.load(tmp_path, "bf16")
    _, p8, _ = hf.load(tmp_path, "int8")
    assert p8["layers.0.wq"].kind == "int8"
    l16, l8 = forward(p16, c, IDS), forward(p8, c, IDS)
    # Per-row int8 rounds each weight by up to half a step (max|row| / 254): ~0.4 % of the row's
    # largest weight. Through 2 layers on logits of size ~3 that gave ~0.07 here.
    err = np.abs(l8 - l16).max()
    print(f"int8 vs bf16: max abs logit difference {err:.4f} (logits up to {np.abs(l16).max():.2f})")
    assert err < 0.05 * np.abs(l16).max()


# ----------------------------------------------------------------------------- clear errors
@pytest.fixture
def folder(tmp_path):
    spec, cfg, flat = W.tiny("llama2")
    return W.write_hf(tmp_path / "h", spec, cfg, flat, "bf16", n_shards=2)


def test_missing_shard(folder):
    os.remove(folder / "model-00002-of-00002.safetensors")
    with pytest.raises(FileNotFoundError, match="shard model-00002-of-00002.safetensors .* is missing"):
        hf.load(folder)


def test_truncated_shard(folder):
    path = folder / "model-00002-of-00002.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors: truncated"):
        hf.load(folder)


def test_wrong_config(folder):
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 256}))
    with pytest.raises(CheckpointError, match=r"w1 has shape \(192, 64\), but config\.json implies \(256, 64\)"):
        hf.load(folder)
    del cfg["hidden_size"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json: bad or missing field.*hidden_size"):
        hf.load(folder)


def test_missing_and_unexpected_tensor(folder):
    from safetensors.torch import load_file, save_file
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.layers.1.mlp.up_proj.weight"
    path = folder / weight_map[name]
    sd = load_file(path)
    del sd[name]
    sd["model.layers.0.mlp.extra.weight"] = torch.zeros(2)
    save_file(sd, path)
    with pytest.raises(CheckpointError, match=r"missing tensors layers\.1\.w3 "):
        hf.load(folder)
    sd[name] = torch.zeros(192, 64)
    save_file(sd, path)
    with pytest.raises(CheckpointError, match=r"unexpected tensors model\.layers\.0\.mlp\.extra\.weight"):
        hf.load(folder)
