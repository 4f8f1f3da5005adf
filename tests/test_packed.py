"""Packed weights: 16-bit memory maps widened block by block, and int8 with per-row scales.

Reference for bf16 -> float32: torch's own bfloat16 conversion. Reference for the products:
NumPy's float32 ``x @ W.T`` on the widened matrix (the same BLAS, so for one token -- the
decode case -- the blocked product must be bit-identical).
"""
from __future__ import annotations

import numpy as np
import pytest

from llama_np.linear import embed, linear
from llama_np.weights import packed as P

RNG = np.random.default_rng(0)
W32 = (0.05 * RNG.standard_normal((1000, 384))).astype(np.float32)   # 1000 rows: 4 blocks, uneven split


def test_bf16_conversion_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.concatenate([W32.ravel(), [0.0, -0.0, 1e-40, 3e38, np.inf, -np.inf]]).astype(np.float32)
    t = torch.from_numpy(x).bfloat16()
    raw = P.f32_to_bf16(x)
    assert np.array_equal(raw, t.view(torch.int16).numpy().view(np.uint16))   # round to nearest even
    assert np.array_equal(P.bf16_to_f32(raw), t.float().numpy())                # widening is exact


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_bf16_matmul_equals_float32(monkeypatch, threads):
    monkeypatch.setenv("LLAMA_NP_THREADS", threads)
    raw = P.f32_to_bf16(W32)
    w = P.BF16Weight(raw)
    ref_w = P.bf16_to_f32(raw)
    x1 = RNG.standard_normal((1, 384), dtype=np.float32)
    assert w.is_packed and w.shape == (1000, 384)
    # Widening is exact, but BLAS may sum a block of rows in another order than the whole
    # matrix: float32 rounding differences only (~1e-7 relative; sums of size ~1: atol 1e-5 is
    # ~100 ulps).
    np.testing.assert_allclose(linear(x1, w), x1 @ ref_w.T, rtol=1e-5, atol=1e-5)
    x = RNG.standard_normal((20, 384), dtype=np.float32)
    y = linear(x, w)
    assert y.dtype == np.float32 and y.shape == (20, 1000)
    np.testing.assert_allclose(y, x @ ref_w.T, rtol=1e-5, atol=1e-5)
    assert np.array_equal(embed(np.array([3, 999, 3]), w), ref_w[[3, 999, 3]])
    assert np.array_equal(w.to_float32(), ref_w)


def test_f16_matmul():
    w16 = W32.astype(np.float16)
    w = P.pack(w16, "bf16")
    assert w.kind == "f16"
    x1 = RNG.standard_normal((1, 384), dtype=np.float32)
    # exact widening; float32 rounding of the sums only (BLAS may sum a row block differently)
    np.testing.assert_allclose(w.matmul(x1), x1 @ w16.astype(np.float32).T, rtol=1e-5, atol=1e-5)


def test_output_permutation():
    """Hugging Face q/k: permuting the outputs after the product == permuting rows before."""
    raw = P.f32_to_bf16(W32)
    perm = RNG.permutation(1000)
    x1 = RNG.standard_normal((1, 384), dtype=np.float32)
    w = P.pack(raw, "bf16", perm)
    # float32 rounding only (see above)
    np.testing.assert_allclose(w.matmul(x1), x1 @ P.bf16_to_f32(raw)[perm].T, rtol=1e-5, atol=1e-5)
    assert np.array_equal(w.to_float32(), P.bf16_to_f32(raw)[perm])
    assert np.array_equal(P.pack(raw, "float32", perm), P.bf16_to_f32(raw)[perm])


def test_int8_quantisation():
    raw = P.f32_to_bf16(W32)
    w = P.pack(raw, "int8")
    ref_w = P.bf16_to_f32(raw)
    assert w.kind == "int8" and w.data.dtype == np.int8 and w.nbytes < raw.nbytes * 0.6
    # Per-row symmetric rounding: each weight is off by at most half a step, max|row| / 254.
    step = np.abs(ref_w).max(axis=1, keepdims=True) / 127
    assert (np.abs(w.to_float32() - ref_w) <= step / 2 * (1 + 1e-5)).all()   # + float32 rounding of s * q
    x = RNG.standard_normal((3, 384), dtype=np.float32)
    # The product equals x @ (q * s).T up to float32 rounding (scales applied to the outputs).
    np.testing.assert_allclose(w.matmul(x), x @ w.to_float32().T, rtol=1e-5, atol=1e-5)
    rel = np.abs(w.matmul(x) - x @ ref_w.T).max() / np.abs(x @ ref_w.T).max()
    print(f"int8 matmul relative error vs bf16: {rel:.4f}")
    assert rel < 0.02
    np.testing.assert_allclose(w.rows([5]), w.to_float32()[[5]], rtol=0, atol=0)


def test_zero_rows_quantise_safely():
    w = np.zeros((4, 8), np.float32)
    w[1] = 1.0
    q = P.pack(w, "int8")
    assert np.array_equal(q.to_float32(), w)


def test_memory_mapped_bf16_is_not_copied(tmp_path):
    """A 16-bit memory map stays a memory map: the packed weight holds a view, not a copy."""
    raw = P.f32_to_bf16(W32)
    raw.tofile(tmp_path / "w.bin")
    mm = np.memmap(tmp_path / "w.bin", dtype=np.uint16, mode="r", shape=raw.shape)
    w = P.pack(mm, "bf16")
    assert np.shares_memory(w.data, mm)
    x1 = RNG.standard_normal((1, 384), dtype=np.float32)
    np.testing.assert_allclose(w.matmul(x1), x1 @ P.bf16_to_f32(raw).T, rtol=1e-5, atol=1e-5)


def test_bf16_odd_width_and_strided():
    """Odd widths and non-contiguous (transposed) tensors work too (float32 rounding only)."""
    raw = P.f32_to_bf16(W32[:, :383])
    x1 = RNG.standard_normal((1, 383), dtype=np.float32)
    w = P.BF16Weight(raw)
    np.testing.assert_allclose(w.matmul(x1), x1 @ P.bf16_to_f32(raw).T, rtol=1e-5, atol=1e-5)
    t = P.f32_to_bf16(W32[:384, :]).T          # (384, 384) transposed view
    x2 = RNG.standard_normal((1, 384), dtype=np.float32)
    np.testing.assert_allclose(P.BF16Weight(t).matmul(x2), x2 @ P.bf16_to_f32(t).T, rtol=1e-5, atol=1e-5)


def test_bad_mode_and_shape():
    with pytest.raises(ValueError, match="unknown weight mode"):
        P.pack(W32, "int4")
    w = P.pack(P.f32_to_bf16(W32), "bf16")
    with pytest.raises(ValueError, match="expects 384"):
        w.matmul(np.ones((1, 10), np.float32))
