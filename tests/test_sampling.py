"""Repetition penalty, min-p and the order of the sampling processors.

The reference is transformers' own logits processors on the same logits, chained in the order
its ``generate`` uses (``_get_logits_processor``): RepetitionPenaltyLogitsProcessor, then
TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper. Small cases
worked out by hand cover the edge values.
"""
from __future__ import annotations

import numpy as np
import pytest

from llama_np.generate import (check_sampling_args, min_p_filter, repetition_penalty_filter, sample,
                               sample_probs)


# ------------------------------------------------------------------------------ by hand
def test_repetition_penalty_by_hand():
    x = np.array([2.0, -2.0, 1.0, 0.5], np.float32)
    out = repetition_penalty_filter(x, [0, 1, 1], 2.0)          # token 1 twice: penalised once
    np.testing.assert_array_equal(out, [1.0, -4.0, 1.0, 0.5])   # positive / 2, negative * 2
    assert x[0] == 2.0                                          # the input is not changed
    assert repetition_penalty_filter(x, [0, 1], 1.0) is x
    assert repetition_penalty_filter(x, [], 2.0) is x
    np.testing.assert_array_equal(repetition_penalty_filter(x, [0, 1], 0.5), [4.0, -1.0, 1.0, 0.5])


def test_min_p_by_hand():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    np.testing.assert_allclose(min_p_filter(p, 0.5), [0.5 / 0.8, 0.3 / 0.8, 0, 0])  # keep >= 0.25
    np.testing.assert_allclose(min_p_filter(p, 0.3), [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0])
    np.testing.assert_allclose(min_p_filter(p, 1.0), [1, 0, 0, 0])   # only the top token
    assert min_p_filter(p, 0.0) is p


def test_penalty_applies_to_greedy():
    """A processor, not a warper: at temperature 0 the penalised argmax wins (as in transformers)."""
    x = np.array([3.0, 2.0, 0.0])
    assert sample(x, temperature=0) == 0
    assert sample(x, temperature=0, repetition_penalty=2.0, seen=[0]) == 1


def test_defaults_draw_as_before():
    """min_p=0 and no penalty leave ``sample`` drawing exactly what it drew before they existed
    (lesson 08 compares the learner's sampler with this one draw for draw)."""
    logits = np.random.default_rng(1).standard_normal(500) * 2
    a = [sample(logits, 0.9, 40, 0.8, np.random.default_rng(5)) for _ in range(3)]
    b = [sample(logits, 0.9, 40, 0.8, np.random.default_rng(5), min_p=0.0, repetition_penalty=1.0,
                seen=[1, 2]) for _ in range(3)]
    assert a == b


@pytest.mark.parametrize("kw,word", [(dict(min_p=-0.1), "min_p"), (dict(min_p=1.5), "min_p"),
                                     (dict(min_p=float("nan")), "min_p"),
                                     (dict(repetition_penalty=0.0), "repetition_penalty"),
                                     (dict(repetition_penalty=-1.0), "repetition_penalty"),
                                     (dict(repetition_penalty=float("nan")), "repetition_penalty")])
def test_bad_arguments(kw, word):
    with pytest.raises(ValueError, match=word):
        check_sampling_args(**kw)


# ------------------------------------------------------------------- against transformers
CASES = [  # temperature, top_k, top_p, min_p, repetition_penalty
    (1.0, 0, 1.0, 0.05, 1.0), (0.7, 0, 1.0, 0.2, 1.0), (1.0, 0, 1.0, 0.0, 1.3), (1.0, 0, 1.0, 0.0, 0.8),
    (0.8, 50, 0.9, 0.1, 1.2), (1.5, 0, 0.7, 0.3, 1.1), (0.6, 10, 1.0, 0.02, 2.0),
]


def transformers_probs(logits, seen, temperature, top_k, top_p, min_p, penalty):
    """transformers' processors in generate's order on one row -> float64 probabilities."""
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    chain = []
    if penalty != 1.0:
        chain.append(tr.RepetitionPenaltyLogitsProcessor(penalty))
    chain.append(tr.TemperatureLogitsWarper(temperature))
    if top_k:
        chain.append(tr.TopKLogitsWarper(top_k))
    if top_p < 1:
        chain.append(tr.TopPLogitsWarper(top_p))
    if min_p > 0:
        chain.append(tr.MinPLogitsWarper(min_p))
    ids = torch.tensor([seen])
    x = torch.from_numpy(logits)[None]
    for proc in chain:
        x = proc(ids, x)
    return torch.softmax(x.double(), -1)[0].numpy()


@pytest.mark.reference
@pytest.mark.parametrize("temperature,top_k,top_p,min_p,penalty", CASES)
def test_processors_match_transformers(temperature, top_k, top_p, min_p, penalty):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(2000) * 3).astype(np.float32)
    seen = rng.integers(0, 2000, 40).tolist() + [int(logits.argmax())] * 2   # the top token repeated
    ref = transformers_probs(logits, seen, temperature, top_k, top_p, min_p, penalty)
    ours = sample_probs(logits, temperature, top_k, top_p, min_p, penalty, seen)
    assert ((ours > 0) == (ref > 0)).all()        # the same tokens survive every cut
    # float32 logits through the same steps in both; the probabilities differ only by rounding.
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * ref.max())


@pytest.mark.reference
def test_penalty_then_greedy_matches_transformers():
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    logits = (np.random.default_rng(2).standard_normal(300) * 2).astype(np.float32)
    seen = np.argsort(-logits)[:3].tolist()      # the three most likely tokens were already said
    ref = tr.RepetitionPenaltyLogitsProcessor(1.5)(torch.tensor([seen]), torch.from_numpy(logits)[None])
    np.testing.assert_array_equal(repetition_penalty_filter(logits, seen, 1.5), ref[0].numpy())
    assert sample(logits, temperature=0, repetition_penalty=1.5, seen=seen) == int(ref.argmax())


# ------------------------------------------------------------------- inside generate()
def tiny():
    from llama_np import ModelConfig, random_params
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=64, max_seq_len=48)
    return cfg, random_params(cfg, seed=3, std=0.3)


def test_generate_penalises_prompt_and_answer():
    """Each greedy choice is the argmax of that step's logits after the penalty over everything
    before it: the prompt and the tokens generated so far."""
    from llama_np.generate import generate
    cfg, params = tiny()
    rows = []
    prompt = [5, 9, 5, 30]
    r = generate(params, cfg, None, prompt, max_new_tokens=20, temperature=0, repetition_penalty=1.8,
                 stop_ids=set(), on_logits=rows.append)
    for k, (row, tok) in enumerate(zip(rows, r.ids)):
        assert tok == int(np.argmax(repetition_penalty_filter(row, prompt + r.ids[:k], 1.8)))
    plain = generate(params, cfg, None, prompt, max_new_tokens=20, temperature=0, stop_ids=set())
    assert len(set(r.ids)) > len(set(plain.ids))       # the penalty spreads the choices out


def test_ctrl_c_keeps_the_statistics():
    from llama_np.generate import GenerationInterrupted, generate
    cfg, params = tiny()

    class Tok:                                          # streams every token as one character
        stop_ids, eos_id = set(), None

        def stream_decoder(self):
            return lambda ids: "x"
    pieces = []

    def stream(piece):
        pieces.append(piece)
        if len(pieces) == 5:
            raise KeyboardInterrupt
    with pytest.raises(GenerationInterrupted) as e:
        generate(params, cfg, Tok(), [1, 2, 3], max_new_tokens=30, temperature=0, stream=stream)
    r = e.value.result
    assert isinstance(e.value, KeyboardInterrupt)      # still Ctrl-C to anyone who does not know it
    assert r.stop_reason == "interrupted" and len(r.ids) == 5 and r.decode_steps == 4
    assert r.prefill_s > 0 and r.decode_s > 0 and "nan" not in r.summary()
