"""The GGUF loader on small files written here with the ``gguf`` package's own writer.

* Names, shapes, config and q/k layout: the tiny random Llamas of ``course/fixtures/tiny`` written
  to GGUF (Meta layout, as llama.cpp's converter writes q/k), loaded back, and run: the logits
  must match the committed transformers logits for those same weights.
* Tensor types: each supported type dequantizes to within the rounding error its format allows
  (bounds derived from the format's definition, not from the dequantizer under test).
* Packed mode: every type loads as a packed weight over the memory map that equals the float32
  mode's array bit for bit; the logits of both modes agree.
* rope_freqs: Llama 3.1 scaling stored as a tensor gives transformers' logits for the same model
  with the scaling in its Hugging Face config.
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
from llama_np.weights.gguf import load, meta_name, write_metadata  # noqa: E402
from course.fixtures.tiny.configs import config, make_weights  # noqa: E402
from course.fixtures.tiny.make_fixtures import HERE as TINY  # noqa: E402
from tests.tolerance import REFERENCE_ULPS, assert_close  # noqa: E402
from tests.test_quants import random_blocks  # noqa: E402

GGUF_NAMES = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output",
              "attention_norm": "attn_norm", "ffn_norm": "ffn_norm", "wq": "attn_q", "wk": "attn_k",
              "wv": "attn_v", "wo": "attn_output", "w1": "ffn_gate", "w2": "ffn_down", "w3": "ffn_up"}


def gguf_name(meta: str) -> str:
    """Meta name -> GGUF name, written out here independently of the loader's table."""
    if meta.startswith("layers."):
        _, i, n = meta.split(".")
        return f"blk.{i}.{GGUF_NAMES[n]}.weight"
    return f"{GGUF_NAMES[meta]}.weight"


def write_gguf(path, cfg, weights: dict, qtype=Q.F32, extra=None, drop=(), arch="llama", label=None):
    """Write ``weights`` (Meta names, float32) as a GGUF file; matrices stored as ``qtype``
    (``label``: a type to claim in the header instead, for bad files). K-quants, which the
    ``gguf`` package cannot quantize, get random valid blocks (see tests/test_quants.py)."""
    w = gguf.GGUFWriter(str(path), arch)
    write_metadata(w, cfg)
    for name, arr in {**weights, **(extra or {})}.items():
        if name in drop:
            continue
        gname = name if "." in name and name.endswith(".weight") else gguf_name(name)
        if arr.ndim == 1 or qtype == Q.F32:
            w.add_tensor(gname, arr.astype(np.float32))
        elif qtype == Q.F16:
            w.add_tensor(gname, arr.astype(np.float16))
        elif qtype.name.endswith("_K"):
            raw = random_blocks(qtype.name, arr.size // 256, seed=arr.size, scale=1e-4).reshape(arr.shape[0], -1)
            w.add_tensor(gname, raw, raw_dtype=qtype)
        else:
            w.add_tensor(gname, quantize(arr, qtype), raw_dtype=label or qtype)  # shape from the bytes
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
    assert_close(logits, fx["logits"], REFERENCE_ULPS)


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
    lo, hi = b.min(1, keepdims=True), b.max(1, keepdims=True)
    if qtype == Q.Q8_0:      # scale d = amax/127, error <= d/2
        e = amax / 127 / 2 + amax * 2.0 ** -10
    elif qtype == Q.Q4_0:    # d = signed max / -8, 16 levels; the far end can be clamped: error <= |d|
        e = amax / 8 + amax * 2.0 ** -10
    elif qtype == Q.Q5_0:    # d = signed max / -16, 32 levels: error <= |d|
        e = amax / 16 + amax * 2.0 ** -10
    elif qtype == Q.Q4_1:    # d = (max - min)/15, offset min; error <= d/2
        e = (hi - lo) / 15 / 2 + (np.abs(lo) + (hi - lo)) * 2.0 ** -10
    else:                    # Q5_1: d = (max - min)/31, offset min; error <= d/2
        e = (hi - lo) / 31 / 2 + (np.abs(lo) + (hi - lo)) * 2.0 ** -10
    return np.broadcast_to(e, b.shape).reshape(x.shape)


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1])
def test_tensor_types(tmp_path, qtype):
    cfg = config("llama3_gqa")
    w = make_weights("llama3_gqa")
    _, params, _ = load(write_gguf(tmp_path / "m.gguf", cfg, w, qtype), progress=False, dtype="float32")
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


# A model whose widths are multiples of 256, so K-quant super-blocks fit its rows.
K_CFG = dict(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, hidden_dim=512,
             norm_eps=1e-5, rope_theta=10000.0, max_seq_len=64)


def _k_weights(cfg):
    from llama_np.model import param_shapes
    rng = np.random.default_rng(7)
    return {k: (1 + 0.1 * rng.standard_normal(s) if len(s) == 1 else 0.05 * rng.standard_normal(s)).astype(np.float32)
            for k, s in param_shapes(cfg).items()}


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1,
                                   Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_packed_mode(tmp_path, qtype):
    """Packed weights over the memory map hold exactly the float32 mode's numbers, and run."""
    from llama_np.config import ModelConfig
    cfg = ModelConfig(**K_CFG)
    path = write_gguf(tmp_path / "m.gguf", cfg, _k_weights(cfg), qtype)
    _, wide, _ = load(path, progress=False, dtype="float32")
    cfg2, packed, _ = load(path, progress=False, dtype="packed")
    for k, v in packed.items():
        if wide[k].ndim == 1 or qtype == Q.F32:
            assert isinstance(v, np.ndarray) and np.array_equal(v, wide[k]), k
        else:
            assert v.is_packed and v.shape == wide[k].shape, k
            assert np.array_equal(v.to_float32(), wide[k]), k        # dequantized bit for bit
            assert v.nbytes < wide[k].nbytes                           # and kept small
            assert _maps_file(v.data), k                               # a view of the file's memory map
    ids = np.arange(0, 96, 7)
    a = forward(nest(wide, cfg2), cfg2, ids)
    b = forward(nest(packed, cfg2), cfg2, ids)
    # Same weights; only the summation order of the blocked products differs (float32 rounding).
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * np.abs(a).max())


def _maps_file(a) -> bool:
    """Whether array ``a`` is a view of a memory-mapped file (following .base to the owner)."""
    import mmap
    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return True
        a = getattr(a, "base", None)
    return False


def test_mode_from_environment(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "m.gguf", config("llama3_gqa"), make_weights("llama3_gqa"), Q.Q8_0)
    monkeypatch.setenv("LLAMA_NP_GGUF_DTYPE", "packed")
    _, params, _ = load(path, progress=False)
    assert params["layers.0.wq"].is_packed
    monkeypatch.setenv("LLAMA_NP_GGUF_DTYPE", "float32")
    _, params, _ = load(path, progress=False)
    assert isinstance(params["layers.0.wq"], np.ndarray)
    monkeypatch.setenv("LLAMA_NP_GGUF_DTYPE", "int3")
    with pytest.raises(ValueError, match="LLAMA_NP_GGUF_DTYPE='int3': use float32 or packed"):
        load(path, progress=False)


def llama3_rope_factors(head_dim, theta, factor, low_freq_factor, high_freq_factor,
                        original_max_position_embeddings):
    """What llama.cpp's convert_hf_to_gguf.py writes as rope_freqs for "llama3" rope scaling:
    1 for short wavelengths, ``factor`` for long ones, a blend in between (written out here from
    the converter's loop, not from llama_np.rope)."""
    import math
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / theta ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < original_max_position_embeddings / high_freq_factor:
            out.append(1.0)
        elif wavelen > original_max_position_embeddings / low_freq_factor:
            out.append(factor)
        else:
            smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def test_rope_freqs_tensor(tmp_path):
    """Llama 3.1 scaling as a rope_freqs tensor == transformers with the scaling in its config."""
    cfg = config("llama31_scaled")
    rs = cfg.rope_scaling
    factors = llama3_rope_factors(cfg.head_dim, cfg.rope_theta, rs.factor, rs.low_freq_factor,
                                  rs.high_freq_factor, rs.original_max_position_embeddings)
    assert ((factors > 1) & (factors < 8)).any()             # the blended band is exercised
    plain = cfg.replace(rope_scaling=None)                  # the file's metadata has no scaling
    path = write_gguf(tmp_path / "m.gguf", plain, make_weights("llama31_scaled"),
                      extra={"rope_freqs.weight": factors})
    cfg2, params, _ = load(path, progress=False)
    assert cfg2.rope_scaling.freq_factors == tuple(float(f) for f in factors)
    fx = np.load(TINY / "llama31_scaled.npz")               # 320 positions, past the "original" 64
    logits = forward(nest(params, cfg2), cfg2, fx["ids"])
    # The factors are float32 (llama.cpp's) where transformers computes them in float64:
    # angles differ by ~1e-7 relative; float32 weights otherwise, as in test_tiny_gguf_matches_transformers.
    np.testing.assert_allclose(logits, fx["logits"], atol=1e-4, rtol=0)
    # and without the tensor the logits are clearly different (the test would notice it ignored)
    path = write_gguf(tmp_path / "n.gguf", plain, make_weights("llama31_scaled"))
    cfg3, params3, _ = load(path, progress=False)
    assert np.abs(forward(nest(params3, cfg3), cfg3, fx["ids"]) - fx["logits"]).max() > 1e-2


def test_rope_scaling_keys():
    """Scaling written as metadata keys (linear, YaRN: other models') is refused by name."""
    from llama_np.config import ModelConfig
    md = {"general.architecture": "llama", "llama.attention.head_count": 4, "llama.embedding_length": 64,
          "llama.block_count": 1, "llama.feed_forward_length": 128, "llama.vocab_size": 10}
    assert ModelConfig.from_gguf_metadata({**md, "llama.rope.scaling.type": "none",
                                           "llama.rope.scaling.factor": 1.0}).rope_scaling is None
    with pytest.raises(ValueError, match="rope scaling type 'linear' is not supported"):
        ModelConfig.from_gguf_metadata({**md, "llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0})


def test_rope_freqs_wrong_size(tmp_path):
    cfg = config("llama31_scaled").replace(rope_scaling=None)
    path = write_gguf(tmp_path / "m.gguf", cfg, make_weights("llama31_scaled"),
                      extra={"rope_freqs.weight": np.ones(3, np.float32)})
    with pytest.raises(GGUFFormatError, match="rope_freqs.weight should hold 8 positive factors"):
        load(path, progress=False)


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
    # IQ4_NL blocks are 32 weights in 18 bytes, like Q4_0: Q4_0 bytes labelled IQ4_NL make a
    # well-formed file of a type llama_np does not read.
    path = write_gguf(tmp_path / "m.gguf", cfg, make_weights("llama3_gqa"), Q.Q4_0, label=Q.IQ4_NL)
    for dtype in ("float32", "packed"):
        with pytest.raises(GGUFFormatError, match=r"type IQ4_NL, .*\(supported: F32, F16, BF16, Q8_0, Q4_0, "
                                                  r"Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K\)") as e:
            load(path, progress=False, dtype=dtype)
        assert "token_embd.weight" in str(e.value) or "blk." in str(e.value)
        assert "\n" not in str(e.value)


def test_missing_and_unexpected_tensors(tmp_path):
    cfg = config("llama3_gqa")
    w = make_weights("llama3_gqa")
    path = write_gguf(tmp_path / "a.gguf", cfg, w, drop=("layers.1.wk",))
    with pytest.raises(GGUFFormatError, match=r"missing tensors layers\.1\.wk"):
        load(path, progress=False)
    path = write_gguf(tmp_path / "b.gguf", cfg, w, extra={"blk.0.attn_qkv.weight": np.zeros((4, 64), np.float32)})
    with pytest.raises(GGUFFormatError, match=r"unexpected tensors blk\.0\.attn_qkv\.weight"):
        load(path, progress=False)


def test_wrong_shape(tmp_path):
    cfg = config("llama3_gqa")
    w = make_weights("llama3_gqa")
    w["layers.2.w1"] = w["layers.2.w1"][:-32]
    with pytest.raises(GGUFFormatError, match=r"layers\.2\.w1 has shape \(192, 64\), but its metadata"):
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
