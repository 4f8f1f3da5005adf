"""Every known wrong answer in course/mistakes.py fails its real check WITH its diagnosis; the
reference answers pass and trigger none; failure output stays short."""
import contextlib
import io

import numpy as np
import pytest

from course import mistakes
from course.checkers import CheckFailed, check_equal, check_function, diagnose

CASES = mistakes.cases()


def _case_for(exercise):
    """The check cases of an exercise: "route" has one per kind, "moe_layer" one per variant."""
    found = {name: c for name, c in CASES.items() if mistakes.key(name) == exercise}
    assert found, f"no check case for {exercise}"
    return found


def run_check(fn, name, case):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            with np.errstate(all="ignore"):
                check_function(fn, case.reference, case.make_inputs, name=name, atol=case.atol, rtol=case.rtol,
                               n_trials=case.n_trials, labels=case.labels)
            failed = False
        except CheckFailed:
            failed = True
    return failed, out.getvalue()


ALL = [(ex, i, m) for ex, ms in mistakes.MISTAKES.items() for i, m in enumerate(ms)]


@pytest.mark.parametrize("exercise,i,m", ALL, ids=[f"{ex}-{i}" for ex, i, _ in ALL])
def test_wrong_answer_fails_with_its_diagnosis(exercise, i, m):
    results = [run_check(m.fn, name, case) for name, case in _case_for(exercise).items()]
    assert any(failed for failed, _ in results), f"{m.what!r} passes the check of {exercise}"
    for failed, out in results:
        if failed:
            first = out.splitlines()[0]
            assert m.what in first, f"{exercise}: expected the diagnosis {m.what!r}, got:\n{out}"
            assert len(out) <= 1100, out


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_passes_and_is_never_diagnosed(name):
    case = CASES[name]
    failed, out = run_check(case.reference, name, case)
    assert not failed and out.startswith("✓"), out
    for trial in range(case.n_trials):       # the reference's own output matches no known mistake
        args = case.make_inputs(np.random.default_rng(trial))
        args, kwargs = (list(args), {}) if isinstance(args, tuple) else (([], args) if isinstance(args, dict) else ([args], {}))
        expected = case.reference(*args, **kwargs)
        assert diagnose(name, expected, expected, args, kwargs, case.atol, case.rtol) is None


def test_every_exercise_of_lessons_01_to_10_and_13_has_two_diagnoses():
    exercises = {"merge", "encode", "decode", "split", "rms_norm", "layer_norm", "rope_frequencies", "apply_rope",
                 "llama3_scale_frequencies", "hf_to_meta", "softmax", "causal_mask", "attention_weights",
                 "attention_head", "multi_head_attention", "repeat_kv", "gqa_attention", "gqa_attention_grouped",
                 "kv_cache_bytes", "silu", "swiglu", "ffn_hidden_size", "block_params", "transformer_block",
                 "forward", "Cache.update", "greedy", "softmax_probs", "top_k_filter", "top_p_filter", "sample",
                 "generate", "read_header", "bf16_to_float32", "load_safetensors", "route", "moe_layer", "aux_loss",
                 "quantize_int8", "quantize_q8_0", "dequantize_q4_k", "packed_matmul", "kl_top1"}
    few = {ex: len(mistakes.MISTAKES.get(ex, [])) for ex in exercises if len(mistakes.MISTAKES.get(ex, [])) < 2}
    assert not few, few


def test_huge_decode_failure_prints_little():
    """A failed decode over the whole Llama 3 vocabulary once printed 2.9 million characters."""
    vocab = mistakes.llama3_vocab()
    case = CASES["decode"]
    wrong = lambda ids, vocab: "x" * 10_000
    failed, out = run_check(wrong, "decode", case)
    assert failed and len(out) <= 1100, len(out)
    every = list(range(128000))
    out2 = io.StringIO()
    with contextlib.redirect_stdout(out2), pytest.raises(CheckFailed):
        check_equal(mistakes.decode_per_token(every, vocab), mistakes.llama3().decode(every), "decode of every id")
    assert len(out2.getvalue()) <= 1100, len(out2.getvalue())


def test_messages_name_outputs_in_words():
    case = CASES["Cache.update"]
    failed, out = run_check(lambda cfg, steps: [a + 1 for a in case.reference(cfg, steps)], "Cache.update", case)
    assert failed and "the keys returned at step 1 (block 0)" in out.splitlines()[0], out
    assert "result[" not in out


def test_structural_hints():
    from course.checkers import structural_hint
    rng = np.random.default_rng(0)
    e = rng.standard_normal((4, 6, 16)).astype(np.float32)
    hint = lambda g: structural_hint(g, e, ~np.isclose(g, e), 1e-6, 1e-5)
    assert "1/sqrt(16)" in hint(e * np.float32(0.25))
    assert "shifted by one position along axis 1" in hint(np.roll(e, 1, axis=1))
    sq = rng.standard_normal((3, 5, 5))
    assert "transposed" in structural_hint(sq.swapaxes(1, 2), sq, np.ones(sq.shape, bool), 1e-6, 1e-5)
    g = sq.copy()
    g[:, range(5), range(5)] += 1
    assert "diagonal" in structural_hint(g, sq, ~np.isclose(g, sq), 1e-6, 1e-5)
