"""GGUF block types: llama_np's dequantizers against the ``gguf`` package's, bit for bit.

``gguf.quants`` (maintained with llama.cpp, a port of its ``dequantize_row_*``) is the reference.
Blocks come from three places:
  * ``gguf.quants.quantize`` of random weights, for the types it can quantize (Q8_0, Q4_0, Q4_1,
    Q5_0, Q5_1, BF16);
  * random bytes with finite float16 scales, for every type (each code, scale and min field
    takes all its values somewhere);
  * blocks llama.cpp itself wrote: the fixture files of tests/fixtures/llamacpp (see there).
Then the packed product: ``GGUFWeight.matmul`` equals ``x @ W.T`` on the dequantized matrix.
"""
from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf.quants import dequantize as ref_dequantize  # noqa: E402
from gguf.quants import quantize  # noqa: E402

from llama_np.linear import embed, linear  # noqa: E402
from llama_np.weights import quants  # noqa: E402

# Where each type keeps its float16 scales (byte offsets in a block): random bytes there could
# be NaN or inf, which no quantizer writes.
F16_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2],
              "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}
QUANTIZABLE = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def random_blocks(kind: str, n_blocks: int, seed: int = 0, scale: float = 0.01) -> np.ndarray:
    """n_blocks random blocks of ``kind`` as (n_blocks, bytes) uint8, with finite float16 scales
    (normal, standard deviation ``scale``)."""
    rng = np.random.default_rng(seed)
    _, nbytes, _ = quants.TYPES[kind]
    raw = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint8)
    for off in F16_FIELDS[kind]:
        d = (rng.standard_normal(n_blocks) * scale).astype(np.float16)
        raw[:, off:off + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    return raw


def assert_bits_equal(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert a.shape == b.shape
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), f"{np.sum(a != b)} values differ"


def test_supported_list():
    assert quants.SUPPORTED == ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                                "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
    for kind, (block, nbytes, _) in quants.TYPES.items():   # our table agrees with gguf's
        assert gguf.GGML_QUANT_SIZES[Q[kind]] == (block, nbytes), kind


@pytest.mark.parametrize("kind", list(quants.TYPES))
def test_random_blocks_bit_exact(kind):
    raw = random_blocks(kind, 512).reshape(8, -1)          # 8 rows of 64 blocks each
    assert_bits_equal(quants.dequantize(raw, kind), ref_dequantize(raw, Q[kind]))


@pytest.mark.parametrize("kind", QUANTIZABLE + ["BF16"])
def test_quantized_blocks_bit_exact(kind):
    w = (np.random.default_rng(1).standard_normal((16, 512)) * 0.02).astype(np.float32)
    w[0, :32] = 0.0                                        # an all-zero block (d = 0)
    raw = quantize(w, Q[kind])
    got = quants.dequantize(raw, kind)
    assert_bits_equal(got, ref_dequantize(raw, Q[kind]))
    assert np.abs(got - w).max() <= np.abs(w).max() / 7    # and it is w, to 4 bits or better


def test_f16_and_f32():
    w = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    assert_bits_equal(quants.dequantize(w, "F32"), w)
    assert_bits_equal(quants.dequantize(w.astype(np.float16), "F16"), ref_dequantize(w.astype(np.float16), Q.F16))


def test_unsupported_type_is_one_line():
    with pytest.raises(ValueError, match=r"IQ4_XS is not supported \(supported: F32, F16, BF16, Q8_0") as e:
        quants.dequantize(np.zeros((1, 136), np.uint8), "IQ4_XS")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_1", "Q3_K", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("threads", ["1", "2"])
def test_packed_product(monkeypatch, kind, threads):
    """y = x W^T with W dequantized a few rows at a time equals the product with W widened whole."""
    monkeypatch.setenv("LLAMA_NP_THREADS", threads)
    monkeypatch.setattr("llama_np.weights.packed.BLOCK_BYTES", 64 * 1024)   # several row blocks
    n_out, n_in = 300, 512
    block, nbytes, _ = quants.TYPES[kind]
    raw = random_blocks(kind, n_out * n_in // block, seed=3).reshape(n_out, -1)
    w = quants.GGUFWeight(raw, kind, n_in)
    full = ref_dequantize(raw, Q[kind])
    assert w.shape == (n_out, n_in) and w.nbytes == raw.nbytes and w.is_packed
    assert_bits_equal(w.to_float32(), full)
    rng = np.random.default_rng(4)
    for T in (1, 20):
        x = rng.standard_normal((T, n_in)).astype(np.float32)
        # Same float32 weights; BLAS may sum a block of rows in another order than the whole
        # matrix: rounding of sums only, relative to the size of the terms.
        scale = np.abs(x) @ np.abs(full).T
        np.testing.assert_allclose(linear(x, w), x @ full.T, rtol=0, atol=1e-5 * scale.max())
    assert_bits_equal(embed(np.array([0, 299, 7]), w), full[[0, 299, 7]])


def test_bad_shapes():
    with pytest.raises(ValueError, match="does not hold rows of 500 weights"):
        quants.GGUFWeight(np.zeros((4, 144 * 2), np.uint8), "Q4_K", 500)
    with pytest.raises(ValueError, match="not a whole number"):
        quants.dequantize(np.zeros((1, 35), np.uint8), "Q8_0")
