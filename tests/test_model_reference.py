"""llama_np's full logits against transformers' LlamaForCausalLM on tiny random models.

The committed fixtures (course/fixtures/tiny/*.npz) hold transformers' logits, so these tests
check against the reference even where torch is not installed; ``test_fixtures_remake`` remakes
them with transformers when it is (CI installs the reference extra).
"""
from __future__ import annotations

import numpy as np
import pytest

import llama_np
from llama_np import forward, nest, new_cache
from llama_np.model import fuse
from course.fixtures.tiny import make_fixtures
from course.fixtures.tiny.configs import CONFIGS, config, make_ids, make_weights, weights_sha256

NAMES = list(CONFIGS)
# float32 end to end on both sides, same weights, same eager math: the only differences are
# summation order in BLAS and exp/sin/cos rounding, ~1e-6 relative. Logits here are O(1-10),
# so 1e-4 absolute is ~100x the observed noise and far below any real bug (a wrong RoPE
# layout or mask moves logits by > 0.1).
ATOL = 1e-4


def load(name):
    return np.load(make_fixtures.HERE / f"{name}.npz")


def params(name, fused=False):
    w = make_weights(name)
    if fused:
        w = fuse(w, config(name))
    return nest(w, config(name))


@pytest.mark.parametrize("name", NAMES)
def test_weights_match_fixture(name):
    assert str(load(name)["weights_sha256"]) == weights_sha256(make_weights(name)), (
        "the random weights differ from those the fixture was made with (NumPy's random stream "
        "changed?): remake the fixtures with `python -m course.fixtures.tiny.make_fixtures`")


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused"])
@pytest.mark.parametrize("name", NAMES)
def test_prefill_matches_transformers(name, fused):
    fx = load(name)
    logits = forward(params(name, fused), config(name), fx["ids"])
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, fx["logits"], atol=ATOL, rtol=0)
    assert (logits.argmax(-1) == fx["logits"].argmax(-1)).all()


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused"])
@pytest.mark.parametrize("name", NAMES)
def test_cached_decode_matches_transformers(name, fused):
    """Prefill part of the prompt, then decode one token at a time through the KV cache."""
    fx, cfg, p = load(name), config(name), params(name, fused)
    ids = fx["ids"]
    cache = new_cache(cfg, len(ids))
    n0 = len(ids) // 3
    out = [forward(p, cfg, ids[:n0], 0, cache)]
    for pos in range(n0, len(ids)):
        out.append(forward(p, cfg, ids[pos:pos + 1], pos, cache))
    np.testing.assert_allclose(np.concatenate(out), fx["logits"], atol=ATOL, rtol=0)


def test_scaled_rope_is_exercised():
    """The llama3 scaling must matter for this fixture, or the test above would prove nothing."""
    cfg, fx = config("llama31_scaled"), load("llama31_scaled")
    plain = forward(params("llama31_scaled"), cfg.replace(rope_scaling=None), fx["ids"])
    assert np.abs(plain - fx["logits"]).max() > 0.05


def test_wrong_rope_layout_is_caught():
    """Feeding Hugging Face-layout q/k (not permuted back) to Meta's RoPE must break the match."""
    from llama_np.rope import meta_to_hf
    cfg, fx = config("llama3_gqa"), load("llama3_gqa")
    w = make_weights("llama3_gqa")
    for i in range(cfg.n_layers):
        w[f"layers.{i}.wq"] = meta_to_hf(w[f"layers.{i}.wq"], cfg.n_heads)
        w[f"layers.{i}.wk"] = meta_to_hf(w[f"layers.{i}.wk"], cfg.n_kv_heads)
    assert np.abs(forward(nest(w, cfg), cfg, fx["ids"]) - fx["logits"]).max() > 0.05


def test_activations_stay_float32(monkeypatch):
    """docs/design.md §8: one float64 scalar silently turns every later matmul into float64."""
    import llama_np.linear as lin
    import llama_np.model as model
    seen = []
    real = lin.linear

    def spy(x, w):
        seen.append(x.dtype)
        return real(x, w)

    monkeypatch.setattr(model, "linear", spy)
    monkeypatch.setattr("llama_np.ffn.linear", spy)
    cfg = config("llama3_gqa")
    cache = new_cache(cfg, 8)
    p = params("llama3_gqa")
    out = [forward(p, cfg, [1, 2, 3], 0, cache), forward(p, cfg, [4], 3, cache)]
    assert seen and set(seen) == {np.dtype(np.float32)}
    assert all(o.dtype == np.float32 for o in out)
    assert cache.k.dtype == np.float32


def test_last_only_is_the_last_row():
    cfg, fx = config("tied"), load("tied")
    last = forward(params("tied"), cfg, fx["ids"], last_only=True)
    np.testing.assert_allclose(last[0], fx["logits"][-1], atol=ATOL, rtol=0)


@pytest.mark.reference
@pytest.mark.parametrize("name", NAMES)
def test_fixtures_remake(name):
    """Remake each fixture with transformers and compare with the committed one."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    fresh = make_fixtures.make(name)
    old = load(name)
    np.testing.assert_array_equal(fresh["ids"], old["ids"])
    # Same library versions give identical bits; across torch/BLAS builds allow summation-order noise.
    np.testing.assert_allclose(fresh["logits"], old["logits"], atol=1e-5, rtol=0)


def test_fuse_stores_nothing_twice():
    """After fuse, wq/wk/wv and w1/w3 are views into the stacked matrices, not copies."""
    layer = params("llama3_gqa", fused=True)["layers"][0]
    for fused, parts in (("wqkv", ("wq", "wk", "wv")), ("w13", ("w1", "w3"))):
        assert layer[fused].shape[0] == sum(layer[n].shape[0] for n in parts)
        assert all(np.shares_memory(layer[n], layer[fused]) for n in parts)
    np.testing.assert_array_equal(layer["wk"], make_weights("llama3_gqa")["layers.0.wk"])


@pytest.mark.parametrize("name", ["llama3_gqa", "tied"])
def test_flatten_inverts_nest(name):
    """flatten(nest(flat)) gives back the same arrays under the same names (a tied head once)."""
    flat = make_weights(name)
    back = llama_np.model.flatten(nest(dict(flat), config(name)))
    assert back.keys() == flat.keys() and all(back[k] is flat[k] for k in flat)
