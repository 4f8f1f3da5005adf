"""Sampling and the generation loop.

Sampling filters are checked against transformers' own logits warpers (TemperatureLogitsWarper,
TopKLogitsWarper, TopPLogitsWarper) when installed, and against small cases worked out by hand.
The loop (stop tokens, limits, context, streaming, seeds) runs on a tiny random Llama; whether
generation matches transformers on real weights is in tests/test_smollm2_reference.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from llama_np import ModelConfig, random_params
from llama_np.generate import (check_sampling_args, generate, greedy, sample, softmax_probs, top_k_filter,
                               top_p_filter)
from llama_np.tokenizer.base import Tokenizer

CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=64, max_seq_len=24)
PARAMS = random_params(CFG, seed=3, std=0.3)   # large weights: peaked, varied next-token choices


class ByteTokenizer(Tokenizer):
    """Token i is byte i (ids >= 60 are multi-byte pieces of a UTF-8 char); 63 is a stop token."""
    vocab_size, eos_id, stop_ids = 64, 63, {63}
    PIECES = {60: "é".encode()[:1], 61: "é".encode()[1:], 62: "🦙".encode()[:2]}

    def id_to_bytes(self, i):
        return self.PIECES.get(i, bytes([i + 32]))


# ------------------------------------------------------------------------------ sampling
def test_greedy_and_temperature_zero():
    x = np.array([0.1, 3.0, -1.0, 2.9], np.float32)
    assert greedy(x) == 1 and sample(x, temperature=0) == 1


def test_top_k_by_hand():
    x = np.array([1.0, 5.0, 3.0, 4.0, 2.0])
    out = top_k_filter(x, 2)
    assert np.isinf(out[[0, 2, 4]]).all() and (out[[1, 3]] == [5.0, 4.0]).all()
    assert top_k_filter(x, 0) is x and top_k_filter(x, 99) is x


def test_top_p_by_hand():
    p = np.array([0.1, 0.5, 0.25, 0.15])
    # sorted: 0.5, 0.25, 0.15, 0.1; cumulative 0.5, 0.75, 0.9, 1.0
    np.testing.assert_allclose(top_p_filter(p, 0.5), [0, 1, 0, 0])      # 0.5 already reaches 0.5
    np.testing.assert_allclose(top_p_filter(p, 0.6), [0, 0.5 / 0.75, 0.25 / 0.75, 0])
    np.testing.assert_allclose(top_p_filter(p, 0.01), [0, 1, 0, 0])     # the top token always stays
    assert top_p_filter(p, 1.0) is p


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 1.0),
                                                     (1.0, 0, 0.9), (0.8, 20, 0.5), (2.0, 3, 0.3)])
def test_filters_match_transformers_warpers(temperature, top_k, top_p):
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 3
    warpers = [tr.TemperatureLogitsWarper(temperature)]
    if top_k:
        warpers.append(tr.TopKLogitsWarper(top_k))
    if top_p < 1:
        warpers.append(tr.TopPLogitsWarper(top_p))
    x = torch.from_numpy(logits)[None]
    for w in warpers:
        x = w(None, x)
    ref = torch.softmax(x, -1)[0].double().numpy()
    ours = top_p_filter(softmax_probs(top_k_filter(logits, top_k), temperature), top_p)
    # float32 softmax in torch vs float64 here: 1e-6 covers the rounding.
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert ((ours > 0) == (ref > 0)).all()


def test_sampling_follows_the_distribution():
    """With a fixed seed, 20,000 draws land on each token in proportion to softmax(logits / T)
    within 4 standard deviations of a binomial count (a fixed seed makes this deterministic)."""
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0], np.float32)
    p = softmax_probs(logits, 0.8)
    rng = np.random.default_rng(7)
    n = 20000
    counts = np.bincount([sample(logits, 0.8, rng=rng) for _ in range(n)], minlength=5)
    assert (np.abs(counts - n * p) <= 4 * np.sqrt(n * p * (1 - p)) + 1).all()


def test_filtered_tokens_are_never_drawn():
    logits = np.array([3.0, 2.9, 2.8, -5.0, -6.0], np.float32)
    rng = np.random.default_rng(0)
    assert {sample(logits, 5.0, top_k=2, rng=rng) for _ in range(500)} == {0, 1}
    assert {sample(logits, 5.0, top_p=0.5, rng=rng) for _ in range(500)} <= {0, 1, 2}


@pytest.mark.parametrize("kw", [dict(temperature=-0.1), dict(temperature=float("nan")), dict(top_k=-1),
                                dict(top_k=1.5), dict(top_p=0.0), dict(top_p=2.0), dict(max_new_tokens=-1)])
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        check_sampling_args(**kw)
    with pytest.raises(ValueError):
        generate(PARAMS, CFG, None, [1, 2], **{"max_new_tokens": 3, **kw})


# ---------------------------------------------------------------------------- the loop
def test_same_seed_same_ids_and_greedy_is_deterministic():
    a = generate(PARAMS, CFG, None, [5, 6, 7], max_new_tokens=10, temperature=1.0, seed=11, stop_ids=set())
    b = generate(PARAMS, CFG, None, [5, 6, 7], max_new_tokens=10, temperature=1.0, seed=11, stop_ids=set())
    c = generate(PARAMS, CFG, None, [5, 6, 7], max_new_tokens=10, temperature=1.0, seed=12, stop_ids=set())
    assert a.ids == b.ids and a.ids != c.ids
    g = generate(PARAMS, CFG, None, [5, 6, 7], max_new_tokens=10, temperature=0, stop_ids=set())
    assert g.ids == generate(PARAMS, CFG, None, [5, 6, 7], max_new_tokens=10, temperature=0, seed=99,
                             stop_ids=set()).ids


def test_greedy_equals_argmax_of_full_forward():
    """Each greedy token is the argmax of an uncached forward over everything before it."""
    from llama_np import forward
    ids = [5, 6, 7]
    r = generate(PARAMS, CFG, None, ids, max_new_tokens=8, temperature=0, stop_ids=set())
    seq = ids + r.ids
    full = forward(PARAMS, CFG, seq)
    assert r.ids == full[len(ids) - 1:-1].argmax(-1).tolist()


def test_limits_and_stop_tokens():
    r = generate(PARAMS, CFG, None, [1, 2, 3], max_new_tokens=5, stop_ids=set())
    assert len(r.ids) == 5 and r.stop_reason == "length" and r.decode_steps == 4
    first = r.ids[0]
    s = generate(PARAMS, CFG, None, [1, 2, 3], max_new_tokens=5, stop_ids={r.ids[2]})
    assert s.ids == r.ids[:3] and s.stop_reason == "stop"
    assert generate(PARAMS, CFG, None, [1, 2, 3], max_new_tokens=0).ids == []
    assert generate(PARAMS, CFG, ByteTokenizer(), [1, 2, 3], max_new_tokens=1, stop_ids={first}).stop_reason == "stop"


def test_context_is_respected():
    # 20-token prompt, context 24: 4 more positions, then one last token from the final logits.
    r = generate(PARAMS, CFG, None, list(range(20)), max_new_tokens=50, stop_ids=set())
    assert r.stop_reason == "context" and len(r.ids) == CFG.max_seq_len - 20 + 1
    r = generate(PARAMS, CFG, None, list(range(24)), max_new_tokens=3, stop_ids=set())
    assert len(r.ids) == 1 and r.stop_reason == "context"
    with pytest.raises(ValueError, match="more than the model's context of 24"):
        generate(PARAMS, CFG, None, list(range(25)), max_new_tokens=1)
    with pytest.raises(ValueError, match="empty"):
        generate(PARAMS, CFG, None, [], max_new_tokens=1)


def test_stream_gives_whole_characters_and_skips_stop(monkeypatch):
    tok = ByteTokenizer()
    seen = []
    # A scripted "model" whose logits make greedy pick these ids in order.
    script = [60, 61, 10, 62, 63]
    step = {"i": 0}

    def fake_forward(params, cfg, tokens, start_pos=0, cache=None, last_only=False):
        row = np.zeros((1, 64), np.float32)
        row[0, script[step["i"]]] = 1.0
        step["i"] += 1
        return row
    monkeypatch.setattr("llama_np.generate.forward", fake_forward)
    r = generate(PARAMS, CFG, tok, [1], max_new_tokens=10, temperature=0, stream=seen.append)
    assert r.ids == script and r.stop_reason == "stop"
    # "é" arrives whole once its second byte comes; half an emoji (62) is held back, the stop not shown.
    assert "".join(seen) == "é*" and "é" in seen


def test_timings_are_reported():
    r = generate(PARAMS, CFG, None, [1, 2, 3, 4], max_new_tokens=6, stop_ids=set())
    assert r.prompt_tokens == 4 and r.prefill_s > 0 and r.decode_s > 0
    assert r.prefill_tok_s > 0 and r.decode_tok_s > 0 and "tok/s" in r.summary()


def test_flat_params_accepted():
    from llama_np.model import param_shapes
    flat = {}
    for name in param_shapes(CFG):
        if name.startswith("layers."):
            _, i, k = name.split(".")
            flat[name] = PARAMS["layers"][int(i)][k]
        else:
            flat[name] = PARAMS[name]
    a = generate(flat, CFG, None, [3, 4], max_new_tokens=4, temperature=0, stop_ids=set())
    b = generate(PARAMS, CFG, None, [3, 4], max_new_tokens=4, temperature=0, stop_ids=set())
    assert a.ids == b.ids
