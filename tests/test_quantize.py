"""GGUF quantizers (llama_np.weights.quantize) against what other people's quantizers write.

* Legacy types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1): byte for byte equal to ``gguf.quants.quantize``
  (gguf-py's port of llama.cpp's ``quantize_row_*_ref``) on random and adversarial rows.
* K-quants (Q2_K ... Q6_K), which gguf-py cannot quantize: byte for byte equal to the tensors
  llama.cpp wrote into tests/fixtures/llamacpp (Q4_K, Q5_K, Q6_K; their float source is remade
  from its seed); and, where llama-cpp-python is installed, to a fresh F32 / F16 model with
  adversarial rows that llama.cpp's ``llama_model_quantize`` quantizes in the test (every type,
  Q2_K and Q3_K only there), and to the types llama.cpp falls back to for rows of 288.
* Round trip: ``dequantize(quantize(w))`` is within the rounding noise of each type's step.
"""
from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

from llama_np.weights import quantize as qz  # noqa: E402
from llama_np.weights.gguf import meta_name  # noqa: E402
from llama_np.weights.quants import TYPES, dequantize  # noqa: E402
from tests.fixtures.llamacpp import make_fixtures as mf  # noqa: E402

LEGACY = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
KQUANTS = ["Q4_K", "Q5_K", "Q6_K"]


def adversarial_rows(n: int = 256, seed: int = 0) -> np.ndarray:
    """Rows of n weights (n a multiple of 256) that stress the scale search: all zeros, constant,
    one sign only, a huge outlier among small weights, sub-blocks of very different sizes, weights
    so small that the float16 scale is subnormal, values on exact rounding ties, a float16
    overflow. (No -0.0: gguf-py and llama.cpp disagree on an all-(-0.0) block; the llama.cpp test
    below covers it.)"""
    rng = np.random.default_rng(seed)
    g = lambda s=1.0: rng.standard_normal(n) * s   # noqa: E731
    spread = g() * np.repeat(10.0 ** rng.integers(-4, 3, n // 16), 16)
    rows = [g(1e-6), g(1e-3), g(0.02), g(), g(300), np.zeros(n), np.full(n, 0.7), np.full(n, -0.7),
            -np.abs(g()), np.abs(g()), np.r_[g(0.01)[:-1], 1e4], np.r_[-1e4, g(0.01)[1:]], spread,
            rng.integers(-8, 8, n) * 0.125, (np.arange(n) % 32 - 16) / 16.0, g(1e-8), g(3e-5),
            np.where(np.arange(n) % 32 < 16, 0.0, g()), g(6e4)]
    return np.array(rows, dtype=np.float32)


def assert_blocks_equal(mine: np.ndarray, want: np.ndarray, kind: str, what: str = ""):
    nbytes = TYPES[kind][1]
    mine, want = mine.reshape(-1, nbytes), np.asarray(want, dtype=np.uint8).reshape(-1, nbytes)
    bad = np.nonzero((mine != want).any(axis=1))[0]
    assert len(bad) == 0, f"{what} {kind}: {len(bad)} of {len(mine)} blocks differ (first: {bad[:8]})"


# ----------------------------------------------------------------------------- legacy vs gguf-py
@pytest.mark.parametrize("kind", LEGACY)
def test_legacy_equal_gguf(kind):
    rng = np.random.default_rng(1)
    w = np.concatenate([adversarial_rows(), rng.standard_normal((64, 512)).reshape(-1, 256) * 0.05])
    w = w.astype(np.float32)
    with np.errstate(over="ignore"):                 # gguf-py's float16 cast of the 6e4 row
        want = gguf.quants.quantize(w, Q[kind])
    assert_blocks_equal(qz.quantize(w, kind), want, kind)


def test_shapes():
    w = np.random.default_rng(0).standard_normal((3, 2, 512)).astype(np.float32)
    assert qz.quantize(w, "Q4_K").shape == (3, 2, 2 * 144)
    assert qz.quantize(w[0, 0], "Q8_0").shape == (16 * 34,)
    assert qz.quantize(w.astype(np.float64), "Q6_K").dtype == np.uint8


# ----------------------------------------------------------------------------- K-quants vs llama.cpp's files
def fixture_tensors():
    """(ftype, tensor name, type, float32 source, bytes llama.cpp wrote) for every quantized tensor."""
    weights = mf.make_weights()
    for ftype in mf.FTYPES:
        for t in gguf.GGUFReader(str(mf.path(ftype))).tensors:
            if t.tensor_type.name != "F32":
                yield ftype, t.name, t.tensor_type.name, weights[meta_name(t.name)], t.data


def test_fixtures_equal_llamacpp():
    """Every quantized tensor of the committed Q4_K_M, Q5_K_M, Q6_K and Q8_0 files is what
    quantize() gives for the float weights they were made from."""
    seen = set()
    for ftype, name, kind, w, raw in fixture_tensors():
        assert_blocks_equal(qz.quantize(w, kind), raw, kind, f"{ftype} {name}")
        seen.add((ftype, kind))
    assert {("Q4_K_M", "Q4_K"), ("Q4_K_M", "Q6_K"), ("Q6_K", "Q6_K"), ("Q8_0", "Q8_0"),
            ("Q5_K_M", "Q5_K")} <= seen


def random_llama_weights(seed: int) -> dict:
    """make_fixtures' tiny Llama with fresh random weights, and adversarial rows in its matrices."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, w in mf.make_weights().items():
        w = rng.standard_normal(w.shape).astype(np.float32) * np.float32(w.std()) + (w.ndim == 1)
        if w.ndim == 2 and name != "output":
            bad = adversarial_rows(w.shape[1], seed=len(name))
            bad = bad[np.abs(bad).max(axis=1) < 6e4]         # must survive the F16 file too
            rows = rng.choice(w.shape[0], len(bad), replace=False)
            w[rows] = bad
            w[rows[0], :32] = -0.0      # an all-(-0.0) block (C keeps max = +0.0f: scale -0.0)
        out[name] = w
    return out


def quantized_by_llamacpp(src, tmp_path, ftype):
    """llama.cpp quantizes the GGUF file ``src`` to ``ftype``: yields (Meta name, GGUF type name,
    raw data) for each tensor of the result, which is deleted afterwards."""
    dest = tmp_path / f"{ftype}.gguf"
    mf.quantize(src, dest, ftype)
    for t in gguf.GGUFReader(str(dest)).tensors:
        yield meta_name(t.name), t.tensor_type.name, t.data
    dest.unlink()


def assert_blocks_like_llamacpp(src, tmp_path, weights: dict, ftypes) -> dict:
    """For each llama.cpp file type, every tensor of a type quantize() writes has llama.cpp's bytes.
    Returns the number of blocks compared, by type."""
    count = {}
    for ftype in ftypes:
        for name, kind, data in quantized_by_llamacpp(src, tmp_path, ftype):
            if kind in qz.QUANTIZERS:
                assert_blocks_equal(qz.quantize(weights[name], kind), data, kind, f"{ftype} {name}")
                count[kind] = count.get(kind, 0) + data.size // TYPES[kind][1]
    return count


@pytest.mark.parametrize("source", ["F32", "F16"])
def test_remade_by_llamacpp(tmp_path, source):
    """llama.cpp quantizes a fresh random model (F32 or F16 file, adversarial rows included) to
    Q4_K_M (Q4_K and Q6_K tensors), Q5_K_M, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1; quantize() gives the
    same bytes."""
    pytest.importorskip("llama_cpp")
    from tests.test_gguf import write_gguf
    weights = random_llama_weights(seed={"F32": 32, "F16": 16}[source])
    src = write_gguf(tmp_path / f"src-{source}.gguf", mf.config(), weights, qtype=Q[source])
    if source == "F16":                 # what llama.cpp reads back from the F16 file
        weights = {k: v.astype(np.float16).astype(np.float32) for k, v in weights.items()}
    count = assert_blocks_like_llamacpp(src, tmp_path, weights, ["Q4_K_M", "Q5_K_M", "Q8_0", "Q4_0", "Q4_1",
                                                                  "Q5_0", "Q5_1", "Q2_K", "Q3_K_S"])
    assert set(count) == set(qz.QUANTIZERS)


def test_many_blocks_like_llamacpp(tmp_path):
    """Rare ties in the scale searches need many blocks to show: a 2-layer model 512 wide (30,000
    to 110,000 super-blocks per K-quant type, ~300,000 legacy blocks) with Gaussian, heavy-tailed
    (Student t, 2 degrees of freedom), on-a-grid (exact rounding ties) and row-scaled matrices."""
    pytest.importorskip("llama_cpp")
    from dataclasses import replace

    from llama_np.model import param_shapes
    from tests.test_gguf import write_gguf
    cfg = replace(mf.config(), dim=512, hidden_dim=1536, n_layers=2, vocab_size=4096, head_dim=128)
    rng = np.random.default_rng(7)
    weights = {}
    for i, (name, s) in enumerate(param_shapes(cfg).items()):
        w = [lambda: rng.standard_normal(s) * 0.02, lambda: rng.standard_t(2, s) * 0.02,
             lambda: np.round(rng.standard_normal(s) * 8) / 64,
             lambda: rng.standard_normal(s) * np.exp(2 * rng.standard_normal((s[0], 1)))][i % 4]
        weights[name] = np.ones(s) if len(s) == 1 else w()
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    src = write_gguf(tmp_path / "src.gguf", cfg, weights)
    count = assert_blocks_like_llamacpp(src, tmp_path, weights, ["Q4_K_M", "Q5_K_M", "Q6_K", "Q2_K", "Q3_K_S",
                                                                  "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
    assert set(count) == set(qz.QUANTIZERS) and min(count.values()) > 20_000, count


def test_fallback_like_llamacpp(tmp_path):
    """A model 288 wide (rows of 288 weights: no whole super-block, as SmolLM2's 576) quantized by
    llama.cpp: those tensors get FALLBACK's types, and quantize() gives their bytes."""
    pytest.importorskip("llama_cpp")
    from dataclasses import replace

    from llama_np.model import param_shapes
    from tests.test_gguf import write_gguf
    cfg = replace(mf.config(), dim=288, hidden_dim=512, head_dim=72)
    rng = np.random.default_rng(288)
    weights = {k: (rng.standard_normal(s) * 0.05 + (len(s) == 1)).astype(np.float32)
               for k, s in param_shapes(cfg).items()}
    src = write_gguf(tmp_path / "src.gguf", cfg, weights)
    seen = set()
    targets = [("Q2_K", "Q2_K"), ("Q3_K_S", "Q3_K"), ("Q4_K_M", "Q4_K"), ("Q5_K_M", "Q5_K"), ("Q6_K", "Q6_K")]
    for ftype, target in targets:
        for name, kind, data in quantized_by_llamacpp(src, tmp_path, ftype):
            w = weights[name]
            if w.ndim == 2 and w.shape[1] == 288:    # llama.cpp's choice was a K-quant
                assert kind in qz.FALLBACK.values(), (ftype, name, kind)
                seen.add((target, kind))
            if kind in qz.QUANTIZERS:
                assert_blocks_equal(qz.quantize(w, kind), data, kind, f"{ftype} {name}")
    assert {(k, v) for k, v in qz.FALLBACK.items()} <= seen


# ----------------------------------------------------------------------------- round trip
# (group, steps across the span, symmetric): the step of plain round-to-nearest in each type is
# span / steps, span = 2 max|x| (symmetric) or max - min (affine; the K-quants' min is <= 0).
STEPS = {"Q8_0": (32, 254, True), "Q4_0": (32, 16, True), "Q5_0": (32, 32, True),
         "Q4_1": (32, 15, False), "Q5_1": (32, 31, False),
         "Q2_K": (16, 3, False), "Q3_K": (16, 8, True), "Q4_K": (32, 15, False), "Q5_K": (32, 31, False),
         "Q6_K": (16, 64, True)}


def naive_step(w, kind):
    g, steps, sym = STEPS[kind]
    b = w.reshape(-1, g)
    if sym:
        return 2 * np.abs(b).max(axis=1) / steps
    lo = b.min(axis=1) if kind.endswith(("_0", "_1")) else np.minimum(b.min(axis=1), 0)
    return (b.max(axis=1) - lo) / steps


@pytest.mark.parametrize("kind", list(qz.QUANTIZERS))
def test_round_trip_error(kind):
    """The error is rounding noise: its rms is at most that of plain rounding on the plain scale
    (uniform noise, step / sqrt(12)), with 5% for float16 scales (the K-quants' search must do at
    least as well as not searching); legacy types also keep every weight within one step."""
    rng = np.random.default_rng(3)
    for w in [rng.standard_normal((32, 1024)) * 0.05, rng.standard_t(3, (32, 1024)) * 0.05]:
        w = w.astype(np.float32)
        err = dequantize(qz.quantize(w, kind), kind) - w
        step = naive_step(w, kind)
        assert np.sqrt(np.mean(err ** 2)) <= 1.05 * np.sqrt(np.mean(step ** 2 / 12)), kind
        if kind in LEGACY:
            g = STEPS[kind][0]
            # at most half a step from rounding, a full one where the code is clamped (Q4_0/Q5_0's
            # positive end), plus the float16 rounding of the scale times the largest code
            assert (np.abs(err.reshape(-1, g)).max(axis=1) <= step * (1 + 2 ** -8)).all(), kind


def test_error_falls_with_bits():
    w = np.random.default_rng(4).standard_normal((16, 1024)).astype(np.float32)
    kinds = ["Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K"]
    rms = [np.sqrt(np.mean((dequantize(qz.quantize(w, k), k) - w) ** 2)) for k in kinds]
    assert rms == sorted(rms) and rms[-1] < 0.5, dict(zip(kinds, rms))


# ----------------------------------------------------------------------------- building blocks
@pytest.mark.parametrize("m", [1, 2, 3, 8, 1000])
def test_seqsum_is_left_to_right(m):
    """_seqsum must add in the C loops' order (a pairwise sum changes scales, hence bytes)."""
    rng = np.random.default_rng(m)
    a = (rng.standard_normal((32, m)) * np.exp(3 * rng.standard_normal((32, m)))).astype(np.float32)
    acc = a[0].copy()
    for row in a[1:]:
        acc = acc + row
    assert np.array_equal(qz._seqsum(a).view(np.uint32), acc.view(np.uint32))


def test_nearest_int():
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999998, 7.0, -31.6, 4194303.0], dtype=np.float32)
    assert qz._nearest_int(v).tolist() == [0, 2, 2, 0, -2, 2, 7, -32, 4194303]   # halves to even


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kind", ["IQ4_XS", "TQ1_0", "F16", "q4_k"])
def test_unsupported_kind(kind):
    with pytest.raises(ValueError, match=r"cannot quantize to .*supported types are Q8_0, Q4_0"):
        qz.quantize(np.zeros((1, 256), np.float32), kind)


def test_bad_rows():
    with pytest.raises(ValueError, match=r"576 weights are not a whole number of 256-weight blocks "
                                         r"\(llama.cpp stores such a tensor as Q8_0\)"):
        qz.quantize(np.zeros((2, 576), np.float32), "Q6_K")
    with pytest.raises(ValueError, match=r"rows of 40 weights are not a whole number of 32-weight blocks$"):
        qz.quantize(np.zeros((2, 40), np.float32), "Q4_0")
    with pytest.raises(ValueError, match="inf or NaN"):
        qz.quantize(np.full((1, 32), np.nan, np.float32), "Q8_0")
