"""The reference fixture of lesson 13 (quantization), and the checks the lesson adds.

Without torch: the stored int8 inputs come from the seed and llama_np's per-row int8 gives torch's
codes and scales; the Q4_K blocks are those of the llama.cpp-written file, and llama_np's Q4_K
quantizer writes the same bytes from the float32 weights stored beside them; llama_np with the
gguf package's Q8_0 weights gives transformers' stored logits. With the reference extra: the make
script, rerun now, gives the committed numbers, and ``llama_np.verify.kl_top1`` equals torch's
``kl_div``. Plus ``check_peak_memory``: a product that widens the whole matrix fails it.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from course.checkers import CheckFailed, check_peak_memory
from course.fixtures import make_13_quantization as m13
from course.mistakes import gguf_q4_k_rows, random_q4_k
from llama_np.verify import kl_top1
from llama_np.weights.packed import quantize_int8


@pytest.fixture(scope="module")
def fx():
    return m13.load()


def test_int8_inputs_come_from_the_seed(fx):
    for k, v in m13.int8_inputs().items():
        np.testing.assert_array_equal(fx[k], v, err_msg=k)


def test_llama_np_int8_gives_torchs_codes_and_scales(fx):
    for i in range(m13.INT8_CASES):
        w = fx[f"int8_w{i}"]
        q, s = quantize_int8(w)
        np.testing.assert_array_equal(q, fx[f"int8_q{i}"])
        np.testing.assert_array_equal(s, fx[f"int8_s{i}"])
        # and a learner's division gives the same codes on these inputs (exact ties on a power-of-two scale)
        np.testing.assert_array_equal(np.rint(w / s[:, None]).astype(np.int8), fx[f"int8_q{i}"])


def test_q4k_blocks_are_llamacpps(fx):
    fresh = m13.make_q4k()
    np.testing.assert_array_equal(fresh["q4k_raw"], fx["q4k_raw"])
    np.testing.assert_array_equal(fresh["q4k_float"], fx["q4k_float"])


def test_llama_np_q4_k_quantizer_writes_llamacpps_blocks(fx):
    from llama_np.weights.quantize import quantize
    np.testing.assert_array_equal(quantize(fx["q4k_float"], "Q4_K"), fx["q4k_raw"])


def test_llama_np_on_gguf_q8_0_weights_gives_transformers_logits(fx):
    import llama_np
    from course.payoff import smollm2
    cfg, weights, _ = smollm2()
    flat = {k: (m13.q8_0_roundtrip(w) if w.ndim == 2 else w) for k, w in weights.items()}
    logits = llama_np.forward(llama_np.nest(flat, cfg), cfg, fx["q8_ids"])
    # same weights, float32 on both sides: ~4e-5 (course/payoff.py's bound is 1e-3)
    np.testing.assert_allclose(np.take_along_axis(logits, fx["q8_top_ids"], -1), fx["q8_top_logits"], atol=1e-3)
    np.testing.assert_allclose(logits[:, fx["q8_slice"]], fx["q8_slice_logits"], atol=1e-3)


def _peak(fn):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            check_peak_memory(fn, 8 << 20, "packed_matmul", "an 8192 x 1024 Q4_K matrix times a vector")
            return True, out.getvalue()
        except CheckFailed:
            return False, out.getvalue()


def test_peak_memory_check_passes_blocks_and_fails_a_whole_widening():
    rng = np.random.default_rng(0)
    raw, x = random_q4_k(rng, 8192 * 4).reshape(8192, 4 * 144), rng.standard_normal((1, 1024), dtype=np.float32)

    def blocks(block_rows=64):
        y = np.empty((1, len(raw)), np.float32)
        for a in range(0, len(raw), block_rows):
            y[:, a:a + block_rows] = x @ gguf_q4_k_rows(raw[a:a + block_rows]).T
        return y

    ok, out = _peak(blocks)
    assert ok and out.startswith("✓ packed_matmul: an 8192 x 1024 Q4_K matrix times a vector (at most 8 MiB"), out
    ok, out = _peak(lambda: x @ gguf_q4_k_rows(raw).T)
    assert not ok and "more than the 8 MiB allowed" in out.splitlines()[0], out
    ok, out = _peak(lambda: blocks(block_rows=8192))
    assert not ok, out


# ---------------------------------------------------------------- with the reference extra
def test_kl_top1_is_torchs_kl_div():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    ref = 4 * rng.standard_normal((9, 300))
    got = ref + 0.3 * rng.standard_normal((9, 300))
    got[:4] = ref[:4]                                     # some positions agree exactly
    lp = torch.log_softmax(torch.from_numpy(ref), -1)
    lq = torch.log_softmax(torch.from_numpy(got), -1)
    # kl_div(input=log Q, target=log P, log_target) = sum P (log P - log Q); batchmean = over positions
    want = float(torch.nn.functional.kl_div(lq, lp, reduction="batchmean", log_target=True))
    kl, top1 = kl_top1(ref.astype(np.float32), got.astype(np.float32))
    np.testing.assert_allclose(kl, want, rtol=1e-5)     # float32 inputs: logits rounded at ~1e-7
    assert top1 == float((ref.argmax(-1) == got.argmax(-1)).mean())


def test_remade_int8_matches_the_committed_one(fx):
    pytest.importorskip("torch")
    for k, v in m13.make_int8().items():
        np.testing.assert_array_equal(v, fx[k], err_msg=k)


@pytest.mark.slow
def test_remade_q8_logits_match_the_committed_ones(fx):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    for k, v in m13.make_q8().items():
        if v.dtype.kind == "f":
            # another torch build may round differently; a real change moves logits by far more
            np.testing.assert_allclose(v, fx[k], rtol=1e-5, atol=1e-4, err_msg=k)
        else:
            np.testing.assert_array_equal(v, fx[k], err_msg=k)
