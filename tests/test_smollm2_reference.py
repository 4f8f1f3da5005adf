"""The real default model, SmolLM2-135M-Instruct (Q4_1 GGUF), against transformers.

transformers loads the same GGUF with its own dequantizer and runs its eager float32 Llama; the
numbers it gave are committed in course/fixtures/smollm2/reference.npz (made by make_fixtures.py
beside it), so these tests check llama_np against the reference even without torch. With torch
installed, the slow test compares full-vocabulary rows directly and remakes the fixture.

Tolerance: both sides compute in float32 from identical float32 weights (both dequantize the same
Q4_1 blocks exactly); the differences are summation order in BLAS and exp/sin/cos rounding over 30
layers. docs/design.md §2: 4.3e-5 measured for a plain NumPy forward; 1e-3 leaves 20x room for other BLAS
builds yet is far below any real bug (a wrong q/k layout moves logits by whole units, below).
"""
from __future__ import annotations

import numpy as np
import pytest

from llama_np import forward, nest
from llama_np.generate import generate
from course.fixtures.smollm2 import make_fixtures as mf

ATOL = 1e-3


@pytest.fixture(scope="module")
def fx():
    return mf.load()


@pytest.fixture(scope="module")
def smollm2():
    from llama_np.assets import AssetError
    from llama_np.weights import load_model
    try:
        cfg, flat, tok = load_model(mf.ASSET, progress=False)
    except AssetError as e:  # no cached copy and no network: nothing to compare
        pytest.skip(f"SmolLM2 not available: {e}")
    return cfg, nest(flat, cfg), tok


def _prompts(fx):
    return range(int(fx["n_prompts"]))


def _seq(fx, i):
    return np.concatenate([fx[f"p{i}_ids"], fx[f"p{i}_greedy"]])


def test_fixture_is_for_this_file(fx):
    import json
    from llama_np.assets import ASSETS
    assert json.loads(str(fx["made_with"]))["gguf_sha256"] == ASSETS[mf.ASSET].sha256


def test_config(smollm2):
    cfg, _, _ = smollm2  # docs/design.md §3
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.hidden_dim) == (30, 576, 9, 3, 64, 1536)
    assert (cfg.vocab_size, cfg.rope_theta, cfg.max_seq_len, cfg.tie_embeddings) == (49152, 100000.0, 8192, True)


def test_prompt_ids_match_transformers_tokenizer(smollm2, fx):
    _, _, tok = smollm2
    for i in _prompts(fx):
        text = str(fx[f"p{i}_text"])
        assert tok.encode(text, allowed_special="all") == fx[f"p{i}_ids"].tolist(), text


def _check_rows(logits, fx, i, atol=ATOL):
    """Compare (T, vocab) llama_np logits with the fixture's per-position summaries."""
    assert logits.dtype == np.float32
    x = logits.astype(np.float64)
    top = fx[f"p{i}_top_ids"]
    np.testing.assert_allclose(np.take_along_axis(x, top, -1), fx[f"p{i}_top_logits"], atol=atol, rtol=0)
    np.testing.assert_allclose(x[:, fx["slice"]], fx[f"p{i}_slice_logits"], atol=atol, rtol=0)
    m = x.max(-1)
    lse = m + np.log(np.exp(x - m[:, None]).sum(-1))
    for name, val in (("mean", x.mean(-1)), ("std", x.std(-1)), ("max", m), ("logsumexp", lse)):
        np.testing.assert_allclose(val, fx[f"p{i}_{name}"], atol=atol, rtol=0, err_msg=name)
    # The argmax agrees wherever transformers' top two are further apart than the tolerance.
    srt = fx[f"p{i}_top_logits"]
    clear = srt[:, 0] - srt[:, 1] > 2 * atol
    assert (x.argmax(-1)[clear] == top[clear, 0]).all()


def test_logits_match_transformers(smollm2, fx):
    """Every position of prompt + greedy continuation: top-16, a vocabulary slice, row statistics."""
    cfg, params, _ = smollm2
    for i in _prompts(fx):
        _check_rows(forward(params, cfg, _seq(fx, i)), fx, i)


@pytest.fixture(scope="module")
def greedy_runs(smollm2, fx):
    """llama_np's greedy generation on every prompt, with the logits rows it chose from."""
    cfg, params, tok = smollm2
    runs = []
    for i in _prompts(fx):
        rows = []
        r = generate(params, cfg, tok, fx[f"p{i}_ids"], max_new_tokens=mf.MAX_NEW, temperature=0,
                     on_logits=rows.append)
        runs.append((r, np.stack(rows)))
    return runs


def test_greedy_matches_transformers_generate(smollm2, fx, greedy_runs):
    """32 greedy tokens (or up to EOS) identical to transformers' generate."""
    _, _, tok = smollm2
    for i, (r, _) in zip(_prompts(fx), greedy_runs):
        # A fair test only where every step had a clear winner (the fixture stores the margins).
        assert fx[f"p{i}_margin"].min() > 2 * ATOL
        assert r.ids == fx[f"p{i}_greedy"].tolist(), (i, tok.decode(r.ids))


def test_cached_decode_equals_prefill(smollm2, fx, greedy_runs):
    """The rows generate() used (prefill, then one token at a time through the KV cache) equal an
    uncached forward over the whole sequence, at every step. Same weights and math, only the BLAS
    path differs (matrix-vector vs matrix-matrix): float32 summation-order noise, ~1e-5 here."""
    cfg, params, _ = smollm2
    for i, (r, rows) in zip(_prompts(fx), greedy_runs):
        ids = fx[f"p{i}_ids"]
        full = forward(params, cfg, np.concatenate([ids, r.ids]))[len(ids) - 1:len(ids) - 1 + len(rows)]
        np.testing.assert_allclose(rows, full, atol=1e-4, rtol=0)


def test_gguf_qk_are_in_meta_layout(smollm2, fx):
    """The loader uses GGUF's wq/wk as they are (Meta's interleaved RoPE pairs). Had llama.cpp
    stored them in Hugging Face's half-split layout, undoing that permutation would be needed;
    applying it must therefore break the match with transformers, and it does, by whole logits."""
    from llama_np.rope import hf_to_meta
    cfg, params, _ = smollm2
    wrong = {**params, "layers": [{**lyr, "wq": hf_to_meta(lyr["wq"], cfg.n_heads),
                                   "wk": hf_to_meta(lyr["wk"], cfg.n_kv_heads)} for lyr in params["layers"]]}
    x = forward(wrong, cfg, _seq(fx, 0))
    assert np.abs(np.take_along_axis(x, fx["p0_top_ids"], -1) - fx["p0_top_logits"]).max() > 0.5


@pytest.mark.slow
@pytest.mark.reference
def test_full_vocabulary_and_fixture_remake(smollm2, fx):
    """With torch: full (T, 49152) rows vs transformers on every prompt, transformers' greedy
    text vs the fixture, and the whole fixture remade and compared."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    cfg, params, _ = smollm2
    model = mf.hf_model()
    for i in _prompts(fx):
        seq = _seq(fx, i)
        ref = mf.hf_logits(model, seq)
        ours = forward(params, cfg, seq)
        assert np.abs(ours - ref).max() <= ATOL, i
        assert (ours.argmax(-1) == ref.argmax(-1)).all() or np.abs(ours - ref).max() < 1e-4
    fresh = mf.make(model=model)
    for k, v in fx.items():
        if v.dtype.kind in "iU" or k == "made_with":
            if k != "made_with":
                np.testing.assert_array_equal(fresh[k], v, err_msg=k)
        else:
            # Same library versions give identical bits; other torch/BLAS builds: summation noise.
            np.testing.assert_allclose(fresh[k], v, atol=1e-4, rtol=0, err_msg=k)
