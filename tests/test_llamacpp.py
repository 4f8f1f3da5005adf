"""GGUF files quantized by llama.cpp itself (tests/fixtures/llamacpp), against other people's numbers.

* Every block llama.cpp wrote dequantizes bit for bit as ``gguf.quants.dequantize`` does.
* Logits equal those of transformers loading the same file (committed in reference.npz), for
  the whole sequence at once and for prefill + one token at a time through the KV cache, with the
  weights dequantized at load (float32) or kept packed.
* Where torch + transformers are installed, the committed logits are remade live; where
  llama-cpp-python is installed, the files are remade and must be the committed bytes.
* A tiny Llama 3.1 converted by llama.cpp's convert_hf_to_gguf.py (rope scaling as rope_freqs)
  gives transformers' logits on the original Hugging Face folder.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from llama_np import forward, nest  # noqa: E402
from llama_np.kv_cache import new_cache  # noqa: E402
from llama_np.weights import quants  # noqa: E402
from llama_np.weights.gguf import load  # noqa: E402
from tests.fixtures.llamacpp import make_fixtures as mf  # noqa: E402

# Both sides compute in float32 from bit-identical weights: only summation order and exp/cos
# rounding differ (measured 3e-6 on logits of size ~3); 1e-3 is the bound.
ATOL = 1e-3


@pytest.fixture(scope="module")
def ref():
    return np.load(mf.FIXTURE)


@pytest.mark.parametrize("ftype", mf.FTYPES)
def test_llamacpp_blocks_bit_exact(ftype):
    kinds = set()
    for t in gguf.GGUFReader(str(mf.path(ftype))).tensors:
        kinds.add(t.tensor_type.name)
        got = quants.dequantize(t.data, t.tensor_type.name)
        want = gguf.quants.dequantize(t.data, t.tensor_type)
        assert np.array_equal(got.view(np.uint32), want.astype(np.float32).view(np.uint32)), t.name
    expected = {"Q4_K_M": {"Q4_K", "Q6_K"}, "Q5_K_M": {"Q5_K", "Q6_K"}, "Q6_K": {"Q6_K"}, "Q8_0": {"Q8_0"}}
    assert kinds == expected[ftype] | {"F32"}     # the file really holds the types it is named for


@pytest.mark.parametrize("dtype", ["float32", "packed"])
@pytest.mark.parametrize("ftype", mf.FTYPES)
def test_llamacpp_logits(ref, ftype, dtype):
    cfg, params, _ = load(mf.path(ftype), progress=False, dtype=dtype)
    params = nest(params, cfg)
    want = ref[f"logits_{ftype}"]
    ids = ref["ids"]
    np.testing.assert_allclose(forward(params, cfg, ids), want, atol=ATOL, rtol=0)
    # prefill 16 tokens, then decode the rest one at a time from the cache
    cache = new_cache(cfg)
    rows = [forward(params, cfg, ids[:16], 0, cache)]
    rows += [forward(params, cfg, ids[t:t + 1], t, cache) for t in range(16, len(ids))]
    np.testing.assert_allclose(np.concatenate(rows), want, atol=ATOL, rtol=0)


@pytest.mark.reference
def test_reference_made_by_transformers(ref):
    """The committed logits are what transformers gives now (skipped without torch)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    for ftype in mf.FTYPES:
        np.testing.assert_allclose(mf.transformers_logits(mf.path(ftype)), ref[f"logits_{ftype}"], atol=1e-5, rtol=0)


def test_files_remade_by_llamacpp(ref, tmp_path):
    """Quantizing again gives the committed files (skipped without llama-cpp-python; CI does not
    build llama.cpp)."""
    pytest.importorskip("llama_cpp")
    made_with = json.loads(str(ref["made_with"]))["llama_cpp_python"]
    if mf.llamacpp_version() != made_with:
        pytest.skip(f"files made with llama-cpp-python {made_with}, this is {mf.llamacpp_version()}")
    for ftype, p in mf.make_files(tmp_path).items():
        new = {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(str(p)).tensors}
        old = {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(str(mf.path(ftype))).tensors}
        assert new == old, ftype


def test_llama31_converted_by_llamacpp():
    """A Llama 3.1 (rope scaling "llama3") converted by llama.cpp's convert_hf_to_gguf.py gives
    transformers' logits on the original Hugging Face folder (committed in course/fixtures/tiny):
    the converter stores the scaling as rope_freqs, which llama_np reads."""
    from course.fixtures.tiny.configs import config as tiny_config
    from course.fixtures.tiny.make_fixtures import HERE as TINY
    cfg, params, tok = load(mf.CONVERTED, progress=False)
    assert cfg.rope_scaling.freq_factors is not None and tok is not None
    want = tiny_config("llama31_scaled")
    for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "head_dim"):
        assert getattr(cfg, k) == getattr(want, k), k
    fx = np.load(TINY / "llama31_scaled.npz")            # 320 positions, 5x the "original" context
    np.testing.assert_allclose(forward(nest(params, cfg), cfg, fx["ids"]), fx["logits"], atol=ATOL, rtol=0)


def test_llama31_remade_by_converter(tmp_path):
    """Converting again gives the committed tensors (needs $LLAMA_NP_CONVERT_HF_TO_GGUF: the
    path of convert_hf_to_gguf.py, e.g. from llama-cpp-python's sdist; and torch)."""
    import os
    from pathlib import Path
    converter = os.environ.get(mf.CONVERTER_ENV)
    if not converter:
        pytest.skip(f"set {mf.CONVERTER_ENV} to llama.cpp's convert_hf_to_gguf.py to remake the file")
    pytest.importorskip("torch")
    pytest.importorskip("sentencepiece")
    new = mf.convert_llama31(Path(converter), tmp_path / "c.gguf")
    read = lambda p: {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(str(p)).tensors}  # noqa: E731
    assert read(new) == read(mf.CONVERTED)
