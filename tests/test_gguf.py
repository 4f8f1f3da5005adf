"""The GGUF loader on small files written here with the ``gguf`` package's own writer.

* Names, shapes, config and q/k layout: the tiny random Llamas of ``course/fixtures/tiny`` written
  to GGUF (Meta layout, as llama.cpp's converter writes q/k), loaded back, and run: the logits
  must match the committed transformers logits for those same weights.
* Tensor types: each supported type dequantizes to within the rounding error its format allows
  (bounds derived from the format's definition, not from the dequantizer under test).
* Bad files: missing, not GGUF, truncated, unsupported tensor type, missing / extra tensors.
The real SmolLM2 file is covered by tests/test_smollm2_reference.py.
"""
from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf.quants import quantize  # noqa: E402

from llama_np import forward, nest  # noqa: E402
from llama_np.assets import AssetError  # noqa: E402
from llama_np.tokenizer.gguf_meta import GGUFFormatError  # noqa: E402
from llama_np.weights import detect_format, load_model  # noqa: E402
from llama_np.weights.gguf import load, meta_name  # noqa: E402
from course.fixtures.tiny.configs import config, make_weights  # noqa: E402
from course.fixtures.tiny.make_fixtures import HERE as TINY  # noqa: E402

GGUF_NAMES = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output",
              "attention_norm": "attn_norm", "ffn_norm": "ffn_norm", "wq": "attn_q", "wk": "attn_k",
              "wv": "attn_v", "wo": "attn_output", "w1": "ffn_gate", "w2": "ffn_down", "w3": "ffn_up"}


def gguf_name(meta: str) -> str:
    """Meta name -> GGUF name, written out here independently of the loader's table."""
    if meta.startswith("layers."):
        _, i, n = meta.split(".")
        return f"blk.{i}.{GGUF_NAMES[n]}.weight"
    return f"{GGUF_NAMES[meta]}.weight"


def write_gguf(path, cfg, weights: dict, qtype=Q.F32, extra=None, drop=(), arch="llama"):
    """Write ``weights`` (Meta names, float32) as a GGUF file; matrices stored as ``qtype``."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.dim)
    w.add_feed_forward_length(cfg.hidden_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    for name, arr in {**weights, **(extra or {})}.items():
        if name in drop:
            continue
        gname = name if "." in name and name.endswith(".weight") else gguf_name(name)
        if arr.ndim == 1 or qtype == Q.F32:
            w.add_tensor(gname, arr.astype(np.float32))
        elif qtype == Q.F16:
            w.add_tensor(gname, arr.astype(np.float16))
        else:
            w.add_tensor(gname, quantize(arr, qtype), raw_dtype=qtype)  # shape from the bytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_names():
    assert meta_name("token_embd.weight") == "tok_embeddings"
    assert meta_name("output_norm.weight") == "norm"
    assert meta_name("output.weight") == "output"
    assert meta_name("blk.12.attn_q.weight") == "layers.12.wq"
    assert meta_name("blk.0.ffn_gate.weight") == "layers.0.w1"
    assert meta_name("blk.0.ffn_down.weight") == "layers.0.w2"
    assert meta_name("blk.0.ffn_up.weight") == "layers.0.w3"
    assert meta_name("rope_freqs.weight") is None


@pytest.mark.parametrize("name", ["llama2_mha", "llama3_gqa", "tied", "llama3_bf16"])
def test_tiny_gguf_matches_transformers(tmp_path, name):
    """A GGUF of the tiny weights gives transformers' logits (committed in the tiny fixtures)."""
    cfg = config(name)
    path = write_gguf(tmp_path / "m.gguf", cfg, make_weights(name))
    cfg2, params, tok = load(path, progress=False)
    assert tok is None                                   # this file carries no tokenizer
    for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "head_dim",
              "max_seq_len", "tie_embeddings"):
        assert getattr(cfg2, k) == getattr(cfg, k), k
    assert cfg2.rope_theta == cfg.rope_theta
    assert cfg2.norm_eps == pytest.approx(cfg.norm_eps, rel=1e-6)  # stored as float32
    for v in params.values():
        assert v.dtype == np.float32 and v.flags.c_contiguous
    fx = np.load(TINY / f"{name}.npz")
    logits = forward(nest(params, cfg2), cfg2, fx["ids"])
    # float32 weights stored exactly; same tolerance and reason as tests/test_model_reference.py.
    np.testing.assert_allclose(logits, fx["logits"], atol=1e-4, rtol=0)


def _bound(qtype, x: np.ndarray) -> np.ndarray:
    """Largest rounding error each weight may have in format ``qtype`` (per 32-weight block for the
    block formats), from the format's definition plus float16 rounding of the block scales."""
    ax = np.abs(x)
    if qtype == Q.F16:
        return ax * 2.0 ** -11 + 1e-7
    if qtype == Q.BF16:
        return ax * 2.0 ** -8 + 1e-30
    b = x.reshape(-1, 32)
    amax = np.abs(b).max(1, keepdims=True)
    if qtype == Q.Q8_0:      # scale d = amax/127, error <= d/2
        e = amax / 127 / 2 + amax * 2.0 ** -10
    elif qtype == Q.Q4_0:    # d = signed max / -8, 16 levels; the far end can be clamped: error <= |d|
        e = amax / 8 + amax * 2.0 ** -10
    else:                    # Q4_1: d = (max - min)/15, offset min; error <= d/2
        lo, hi = b.min(1, keepdims=True), b.max(1, keepdims=True)
        e = (hi - lo) / 15 / 2 + (np.abs(lo) + (hi - lo)) * 2.0 ** -10
    return np.broadcast_to(e, b.shape).reshape(x.shape)


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_tensor_types(tmp_path, qtype):
    cfg = config("llama3_gqa")
    w = make_weights("llama3_gqa")
    _, params, _ = load(write_gguf(tmp_path / "m.gguf", cfg, w, qtype), progress=False)
    assert set(params) == set(w)
    for k, v in w.items():
        got = params[k]
        assert got.dtype == np.float32 and got.shape == v.shape and got.flags.c_contiguous, k
        if v.ndim == 1:
            np.testing.assert_array_equal(got, v)        # norms stay F32, as llama.cpp writes them
        else:
            err = np.abs(got - v)
            assert (err <= _bound(qtype, v)).all(), (k, float(err.max()))
            assert err.max() > 0                         # it really was stored in that format


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load(tmp_path / "nope.gguf")


def test_not_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04 not a gguf at all")
    with pytest.raises(GGUFFormatError, match="not a GGUF"):
        load(p)


@pytest.mark.parametrize("frac", [0.001, 0.3, 0.99])
def test_truncated(tmp_path, frac):
    cfg = config("llama3_gqa")
    data = write_gguf(tmp_path / "m.gguf", cfg, make_weights("llama3_gqa")).read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[:max(8, int(len(data) * frac))])
    with pytest.raises(GGUFFormatError, match="truncated or corrupt") as e:
        load(p, progress=False)
    assert "\n" not in str(e.value)


def test_unsupported_type_names_type_and_tensor(tmp_path):
    cfg = config("llama3_gqa")
    path = write_gguf(tmp_path / "m.gguf", cfg, make_weights("llama3_gqa"), Q.Q5_0)
    with pytest.raises(GGUFFormatError, match=r"Q5_0") as e:
        load(path, progress=False)
    assert "token_embd.weight" in str(e.value) or "blk." in str(e.value)


def test_missing_and_unexpected_tensors(tmp_path):
    cfg = config("llama3_gqa")
    w = make_weights("llama3_gqa")
    path = write_gguf(tmp_path / "a.gguf", cfg, w, drop=("layers.1.wk",))
    with pytest.raises(GGUFFormatError, match=r"missing layers\.1\.wk"):
        load(path, progress=False)
    path = write_gguf(tmp_path / "b.gguf", cfg, w, extra={"blk.0.attn_qkv.weight": np.zeros((4, 64), np.float32)})
    with pytest.raises(GGUFFormatError, match=r"unexpected blk\.0\.attn_qkv\.weight"):
        load(path, progress=False)


def test_wrong_shape(tmp_path):
    cfg = config("llama3_gqa")
    w = make_weights("llama3_gqa")
    w["layers.2.w1"] = w["layers.2.w1"][:-32]
    with pytest.raises(GGUFFormatError, match=r"blk\.2\.ffn_gate\.weight has shape"):
        load(write_gguf(tmp_path / "m.gguf", cfg, w), progress=False)


def test_other_architecture_refused(tmp_path):
    cfg = config("llama3_gqa")
    path = write_gguf(tmp_path / "m.gguf", cfg, make_weights("llama3_gqa"), arch="gpt2")
    with pytest.raises(ValueError, match="architecture"):
        load(path, progress=False)


def test_progress_on_stderr(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LLAMA_NP_QUIET", raising=False)
    path = write_gguf(tmp_path / "m.gguf", config("tied"), make_weights("tied"))
    load(path)
    err = capsys.readouterr().err
    assert "dequantizing m.gguf" in err and "tensors" in err
    load(path, progress=False)
    assert capsys.readouterr().err == ""


def test_load_model_detects_formats(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", config("tied"), make_weights("tied"))
    assert detect_format(path) == "gguf"
    cfg, params, _ = load_model(path, progress=False)
    assert cfg.tie_embeddings and "output" not in params
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "params.json").write_text("{}")
    assert detect_format(tmp_path / "meta") == "meta"
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert detect_format(tmp_path / "hf") == "hf"
    with pytest.raises(ValueError, match="neither params.json"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model at"):
        load_model(tmp_path / "missing" / "model.gguf")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a GGUF"):
        load_model(tmp_path / "notes.txt")


def test_unknown_asset_name():
    with pytest.raises(AssetError, match="smollm2-135m-instruct"):
        load_model("llama-9000")
