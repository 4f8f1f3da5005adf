"""The decode product of GGUF weights (``weights/qdot.py``: dot-product domain, W never scaled)
against ``gguf.quants.dequantize`` then a float64 product.

Bound: both sides sum n products in floating point, ours in float32 and in another order (q . x
per group of 16-32, then scaled). The usual bound for a float32 dot product of length n is
n * eps32 * (|W| @ |x|); with rounding errors of random sign it grows like sqrt(n), and that is
what we test, with c = 1:

    |y - x @ W.T| <= eps32 * sqrt(n) * (|W| @ |x|)        (W and the reference in float64)

Measured: at most 0.09 of it over every type, seed and width here, where float32 BLAS on the
exactly dequantized W reaches 0.14 of it; a wrong code, scale or group lands at ~1e5 times it.
Blocks are random bytes (every code, scale and min value somewhere, finite float16 scales) and
blocks llama.cpp itself wrote (tests/fixtures/llamacpp). Tile and band edges are crossed:
300 rows (bands of 512, tiles of 128: not a multiple), 1 to 17 blocks a row (tiles of 8).
"""
from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf.quants import dequantize as ref_dequantize  # noqa: E402

from llama_np.weights import qdot, quants  # noqa: E402
from tests.fixtures.llamacpp import make_fixtures as mf  # noqa: E402
from tests.test_quants import random_blocks  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)


def assert_within_bound(y, x, W):
    """y (T, out) float32 against x @ W.T in float64, within eps32 * sqrt(n) * |W| @ |x|."""
    x64, W64 = x.astype(np.float64), W.astype(np.float64)
    ref = x64 @ W64.T
    bound = EPS32 * np.sqrt(W.shape[1]) * (np.abs(x64) @ np.abs(W64).T)
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= bound), f"worst |dy| / bound = {np.max(err / np.maximum(bound, 1e-300)):.3g}"


@pytest.mark.parametrize("kind", sorted(qdot.KERNELS))
@pytest.mark.parametrize("blocks_per_row", [1, 9, 17])
def test_dot_domain_matches_dequantize(monkeypatch, kind, blocks_per_row):
    monkeypatch.setenv("LLAMA_NP_THREADS", "1")
    n_out, n_in = 300, 256 * blocks_per_row
    block, nbytes, _ = quants.TYPES[kind]
    raw = random_blocks(kind, n_out * n_in // block, seed=blocks_per_row).reshape(n_out, -1)
    w = quants.GGUFWeight(raw, kind, n_in)
    W = ref_dequantize(raw, Q[kind])
    rng = np.random.default_rng(5)
    for T in (1, 3, qdot.MAX_TOKENS):
        x = rng.standard_normal((T, n_in)).astype(np.float32)
        assert_within_bound(w.matmul(x), x, W)
    assert_within_bound(w.matmul(x[0])[None], x[:1], W)          # a vector in, a vector out


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_threads_split_rows(monkeypatch, threads):
    """Any number of threads gives the same numbers: each row is computed by one thread, in the
    same order, whatever the split. (Bit for bit with this OpenBLAS; asserted to float32
    rounding, so that a BLAS choosing another kernel for a shorter tile cannot fail it.)"""
    from llama_np.weights import packed
    raw = random_blocks("Q4_K", 700 * 4, seed=3).reshape(700, -1)
    w = quants.GGUFWeight(raw, "Q4_K", 1024)
    x = np.random.default_rng(6).standard_normal((2, 1024)).astype(np.float32)
    monkeypatch.setattr(packed, "_pool", None)
    monkeypatch.setenv("LLAMA_NP_THREADS", "1")
    one = w.matmul(x)
    monkeypatch.setattr(packed, "_pool", None)
    monkeypatch.setenv("LLAMA_NP_THREADS", threads)
    scale = np.abs(x) @ np.abs(quants.dequantize(raw, "Q4_K")).T
    assert np.all(np.abs(w.matmul(x) - one) <= 4 * EPS32 * scale)
    monkeypatch.setattr(packed, "_pool", None)


@pytest.mark.parametrize("ftype", mf.FTYPES)
def test_llamacpp_blocks(ftype):
    """Every matrix llama.cpp quantized in the fixture files, decode (T = 1) and a few tokens."""
    rng = np.random.default_rng(7)
    seen = set()
    for t in gguf.GGUFReader(str(mf.path(ftype))).tensors:
        kind = t.tensor_type.name
        if kind not in qdot.KERNELS:
            continue
        seen.add(kind)
        raw = np.asarray(t.data)
        n_in = int(t.shape[0])                       # gguf lists dimensions innermost first
        w = quants.GGUFWeight(raw, kind, n_in)
        W = ref_dequantize(raw, t.tensor_type)
        for T in (1, 4):
            x = rng.standard_normal((T, n_in)).astype(np.float32)
            assert_within_bound(w.matmul(x), x, W)
    assert seen                                       # the file did hold quantized matrices


def test_more_tokens_use_the_exact_path(monkeypatch):
    """Past MAX_TOKENS (prefill) the product is dequantize + BLAS: the dequantized rows are
    bit-exact, so the product equals NumPy's on the whole matrix within BLAS's own rounding."""
    raw = random_blocks("Q6_K", 40 * 2, seed=8).reshape(40, -1)
    w = quants.GGUFWeight(raw, "Q6_K", 512)
    called = []
    monkeypatch.setattr(qdot, "run", lambda *a: called.append(a))
    x = np.random.default_rng(9).standard_normal((qdot.MAX_TOKENS + 1, 512)).astype(np.float32)
    W = ref_dequantize(raw, Q.Q6_K)
    assert_within_bound(w.matmul(x), x, W)
    assert not called


def test_types_without_kernel_still_multiply():
    """Types qdot does not handle (Q2_K, Q3_K, Q4_1, Q5_0, Q5_1) take the dequantize path."""
    for kind in sorted(set(quants.TYPES) - set(qdot.KERNELS)):
        block, _, _ = quants.TYPES[kind]
        raw = random_blocks(kind, 20 * 512 // block, seed=10).reshape(20, -1)
        w = quants.GGUFWeight(raw, kind, 512)
        x = np.random.default_rng(11).standard_normal((1, 512)).astype(np.float32)
        assert_within_bound(w.matmul(x), x, ref_dequantize(raw, Q[kind]))


def test_float16_by_integer_operations():
    """qdot's float16 -> float32 (integer operations, NumPy's cast being slow) gives NumPy's
    float32 for every one of the 65536 halves, infinities and NaNs included (bit for bit; NaNs as
    NaNs), in any layout."""
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    want = h.view(np.float16).astype(np.float32)
    finite = np.isfinite(want)
    got = qdot._f16(h[finite])
    assert np.array_equal(got.view(np.uint32), want[finite].view(np.uint32))
    got = qdot._f16(h)                                 # with inf and NaN: the same as NumPy
    assert np.array_equal(got[finite].view(np.uint32), want[finite].view(np.uint32))
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(got[np.isinf(want)], want[np.isinf(want)])
    strided = h[finite][:7 * 3000].reshape(-1, 7)[::2, ::3]
    assert np.array_equal(qdot._f16(strided), strided.view(np.float16).astype(np.float32))
