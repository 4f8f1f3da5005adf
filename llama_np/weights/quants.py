"""GGUF's block-quantized tensor types, dequantized in NumPy and kept packed in memory.

llama.cpp stores a weight matrix row by row; each row is cut into blocks of 32 weights (the
"legacy" types Q4_0 ... Q8_0) or *super-blocks* of 256 (the K-quants Q2_K ... Q6_K), and every
block is a fixed number of bytes: small integer codes plus one or two float16 scales.

    type   block  bytes  bits/weight  one weight is
    Q8_0     32     34     8.5        d * q                 q int8
    Q4_0     32     18     4.5        d * (q - 8)           q 4 bits
    Q4_1     32     20     5.0        d * q + m             q 4 bits
    Q5_0     32     22     5.5        d * (q - 16)          q 5 bits (4 + 1 high bit)
    Q5_1     32     24     6.0        d * q + m             q 5 bits
    Q2_K    256     84     2.625      d*s * q - dmin*m      16 sub-blocks of 16, 4-bit s and m
    Q3_K    256    110     3.4375     d*(s - 32) * (q - 4h) 16 sub-blocks of 16, 6-bit s
    Q4_K    256    144     4.5        d*s * q - dmin*m      8 sub-blocks of 32, 6-bit s and m
    Q5_K    256    176     5.5        d*s * q - dmin*m      8 sub-blocks of 32, 6-bit s and m
    Q6_K    256    210     6.5625     d*s * (q - 32)        16 sub-blocks of 16, int8 s

Each ``_TYPE(blocks, out)`` below turns ``blocks`` (n, bytes) uint8 into ``out`` (n, block)
float32, vectorised over the blocks, with the same float32 operations in the same order as
llama.cpp's ``dequantize_row_*`` (and the ``gguf`` package's Python port): the results are equal
bit for bit (tests/test_quants.py checks every type against ``gguf.quants.dequantize``).

``GGUFWeight`` is a ``PackedWeight`` over the raw bytes (a view of the file's memory map), so a
4.9 GB Q4_K_M 8B model stays 4.9 GB in memory instead of 32 GB of float32. Its product:

  * a few tokens (decode, T <= ``qdot.MAX_TOKENS``), for Q8_0, Q4_0, Q4_K, Q5_K and Q6_K: in the
    dot-product domain (``qdot.py``): the codes cast to float32, short dot products with x, the
    scales applied per group afterwards; equal to the exact product up to float32 rounding;
  * more tokens (prefill), and the other types: the exact dequantization above, a few rows at a
    time into a reused buffer, multiplied with BLAS.
"""
from __future__ import annotations

import numpy as np

from . import qdot
from .packed import PackedWeight

QK = 32     # weights per block, legacy types
QK_K = 256  # weights per super-block, K-quants

_NIBBLES = np.array([0, 4], dtype=np.uint8)
_CRUMBS = np.array([0, 2, 4, 6], dtype=np.uint8)
_BITS = np.arange(8, dtype=np.uint8)


def _f16(b: np.ndarray) -> np.ndarray:
    """Two bytes per block -> the float16 they hold, as float32 (n, 1)."""
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray, width: int) -> np.ndarray:
    """Bytes (n, k*width) -> 4-bit codes (n, 2*k*width): each group of ``width`` bytes gives its
    low nibbles first, then its high nibbles (the order llama.cpp uses)."""
    n = qs.shape[0]
    q = qs.reshape(n, -1, 1, width) >> _NIBBLES.reshape(1, 1, 2, 1)
    return (q & np.uint8(0x0F)).reshape(n, -1)


def _high_bits(qh: np.ndarray, shifts: np.ndarray, mask: int, width: int = 32) -> np.ndarray:
    """Bit planes: bytes (n, k*width) -> (n, k*len(shifts), width), plane j = (byte >> shifts[j]) & mask."""
    n = qh.shape[0]
    q = qh.reshape(n, -1, 1, width) >> shifts.reshape(1, 1, -1, 1)
    return (q & np.uint8(mask)).reshape(n, -1, width)


# ----------------------------------------------------------------------------- legacy (32)
def _q8_0(b, out):
    np.multiply(b[:, 2:].view(np.int8), _f16(b[:, :2]), out=out)


def _q4_0(b, out):
    q = _nibbles(b[:, 2:], 16).astype(np.int8) - np.int8(8)
    np.multiply(_f16(b[:, :2]), q, out=out)


def _q4_1(b, out):
    q = _nibbles(b[:, 4:], 16)
    np.multiply(_f16(b[:, :2]), q, out=out)
    out += _f16(b[:, 2:4])


def _q5_bits(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """5-bit codes: low nibbles from qs, bit 4 of weight j from bit j of the 32-bit word qh."""
    n = len(qh)
    hi = (np.ascontiguousarray(qh).view(np.uint32) >> np.arange(32, dtype=np.uint32)) & np.uint32(1)
    return _nibbles(qs, 16) | (hi.astype(np.uint8) << np.uint8(4))


def _q5_0(b, out):
    q = _q5_bits(b[:, 2:6], b[:, 6:]).astype(np.int8) - np.int8(16)
    np.multiply(_f16(b[:, :2]), q, out=out)


def _q5_1(b, out):
    q = _q5_bits(b[:, 4:8], b[:, 8:])
    np.multiply(_f16(b[:, :2]), q, out=out)
    out += _f16(b[:, 2:4])


# ----------------------------------------------------------------------------- K-quants (256)
def _k_scale_min(s: np.ndarray):
    """Q4_K/Q5_K: 12 bytes -> eight 6-bit scales and eight 6-bit mins (n, 8) each.
    Bytes 0-3 hold scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7; bytes 4-7 the same
    for the mins; bytes 8-11 the low 4 bits of scales 4-7 (low nibble) and mins 4-7 (high)."""
    d, m, md = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=1)
    return sc, mn


def _q2_k(b, out):
    n = len(b)
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0x0F)).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4)).reshape(n, 16, 1)
    q = _high_bits(qs, _CRUMBS, 0x03).reshape(n, 16, 16)
    o = out.reshape(n, 16, 16)
    np.multiply(dl, q, out=o)
    o -= ml


def _q3_k(b, out):
    n = len(b)
    hmask, qs, s = b[:, :32], b[:, 32:96], b[:, 96:108]
    d = _f16(b[:, 108:110])
    # 16 6-bit scales: low 4 bits in bytes 0-7 (low nibbles = scales 0-7, high = 8-15), top 2 bits
    # in bytes 8-11 (2 bits per scale, scales j, j+4, j+8, j+12 in byte 8 + j).
    lo = (s[:, :8].reshape(n, 1, 8) >> _NIBBLES.reshape(1, 2, 1)).reshape(n, 16) & np.uint8(0x0F)
    hi = (s[:, 8:].reshape(n, 1, 4) >> _CRUMBS.reshape(1, 4, 1)).reshape(n, 16) & np.uint8(0x03)
    sc = (lo | (hi << np.uint8(4))).astype(np.int8) - np.int8(32)
    dl = (d * sc).reshape(n, 16, 1)
    ql = _high_bits(qs, _CRUMBS, 0x03).reshape(n, 16, 16)
    # the high bit is stored inverted: code = low 2 bits - 4 when the hmask bit is 0
    h = _high_bits(hmask, _BITS, 0x01).reshape(n, 16, 16) ^ np.uint8(1)
    q = ql.astype(np.int8) - (h << np.uint8(2)).astype(np.int8)
    np.multiply(dl, q, out=out.reshape(n, 16, 16))


def _q4_k(b, out):
    n = len(b)
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k_scale_min(b[:, 4:16])
    q = _nibbles(b[:, 16:], 32).reshape(n, 8, 32)
    o = out.reshape(n, 8, 32)
    np.multiply((d * sc).reshape(n, 8, 1), q, out=o)
    o -= (dmin * mn).reshape(n, 8, 1)


def _q5_k(b, out):
    n = len(b)
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k_scale_min(b[:, 4:16])
    qh, qs = b[:, 16:48], b[:, 48:]
    q = _nibbles(qs, 32).reshape(n, 8, 32) | (_high_bits(qh, _BITS, 0x01) << np.uint8(4))
    o = out.reshape(n, 8, 32)
    np.multiply((d * sc).reshape(n, 8, 1), q, out=o)
    o -= (dmin * mn).reshape(n, 8, 1)


def _q6_k(b, out):
    n = len(b)
    ql, qh, s = b[:, :128], b[:, 128:192], b[:, 192:208]
    d = _f16(b[:, 208:210])
    q = _nibbles(ql, 64).reshape(n, 8, 32) | (_high_bits(qh, _CRUMBS, 0x03) << np.uint8(4))
    q = q.astype(np.int8) - np.int8(32)
    dl = (d * s.view(np.int8)).reshape(n, 16, 1)
    np.multiply(dl, q.reshape(n, 16, 16), out=out.reshape(n, 16, 16))


# name -> (weights per block, bytes per block, dequantizer)
TYPES = {
    "Q8_0": (QK, 34, _q8_0), "Q4_0": (QK, 18, _q4_0), "Q4_1": (QK, 20, _q4_1),
    "Q5_0": (QK, 22, _q5_0), "Q5_1": (QK, 24, _q5_1),
    "Q2_K": (QK_K, 84, _q2_k), "Q3_K": (QK_K, 110, _q3_k), "Q4_K": (QK_K, 144, _q4_k),
    "Q5_K": (QK_K, 176, _q5_k), "Q6_K": (QK_K, 210, _q6_k),
}
SUPPORTED = ("F32", "F16", "BF16") + tuple(TYPES)


def bits_per_weight(kind: str) -> float:
    if kind in TYPES:
        block, nbytes, _ = TYPES[kind]
        return 8 * nbytes / block
    return {"F32": 32.0, "F16": 16.0, "BF16": 16.0}[kind]


def dequantize(raw: np.ndarray, kind: str, out: np.ndarray | None = None) -> np.ndarray:
    """Raw bytes of whole blocks (any shape, last axis = bytes of a row) -> float32 weights.

    raw: (..., n_bytes) uint8 -> (..., n_bytes // bytes * block) float32. F32/F16/BF16 take the
    arrays the ``gguf`` reader gives for them (float32, float16, bf16 bytes)."""
    if kind == "F32":
        return np.asarray(raw, dtype=np.float32)
    if kind == "F16":
        return np.asarray(raw).astype(np.float32)
    if kind == "BF16":
        bits = np.ascontiguousarray(raw).view(np.uint16)
        return (bits.astype(np.uint32) << 16).view(np.float32)
    if kind not in TYPES:
        raise ValueError(f"tensor type {kind} is not supported (supported: {', '.join(SUPPORTED)})")
    block, nbytes, fn = TYPES[kind]
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if raw.shape[-1] % nbytes:
        raise ValueError(f"{kind}: a row of {raw.shape[-1]} bytes is not a whole number of {nbytes}-byte blocks")
    shape = (*raw.shape[:-1], raw.shape[-1] // nbytes * block)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    blocks = raw.reshape(-1, nbytes)
    fn(blocks, out.reshape(len(blocks), block))
    return out.reshape(shape)


class GGUFWeight(PackedWeight):
    """A (out, in) matrix kept as GGUF blocks: ``data`` is (out, bytes per row) uint8, usually a
    view of the file's memory map. Rows are dequantized a block of rows at a time (``_widen``)."""

    def __init__(self, raw: np.ndarray, kind: str, n_in: int):
        if kind not in TYPES:
            raise ValueError(f"GGUFWeight holds block-quantized types ({', '.join(TYPES)}), not {kind}")
        block, nbytes, _ = TYPES[kind]
        if raw.ndim != 2 or n_in % block or raw.shape[1] != n_in // block * nbytes:
            raise ValueError(f"{kind}: raw shape {raw.shape} does not hold rows of {n_in} weights")
        super().__init__(raw)
        self.kind = kind
        self.n_in = n_in

    @property
    def shape(self):
        return (self.data.shape[0], self.n_in)

    def _widen(self, r0, r1, out):
        w = out.view(np.float32).reshape(r1 - r0, self.n_in)
        return dequantize(self.data[r0:r1], self.kind, out=w)

    def _plan(self, x2, y):
        """A few tokens (decode): in the dot-product domain (``qdot``), W never widened, x arranged
        once for all the threads; more (prefill), or a type without a qdot kernel: W dequantized
        exactly, a few rows at a time, and multiplied by BLAS (``PackedWeight``)."""
        kern = qdot.KERNELS.get(self.kind)
        if kern is None or x2.shape[0] > qdot.MAX_TOKENS or self.n_in % 256:
            return super()._plan(x2, y)
        X, xs = qdot.prepare(kern, x2)
        return (lambda r0, r1: qdot.run(kern, self.data, X, xs, y, r0, r1)), qdot.TILE_ROWS

    def __repr__(self):
        return (f"GGUFWeight(shape={self.shape}, kind={self.kind}, {bits_per_weight(self.kind):g} bits/weight, "
                f"{self.nbytes / 2**20:.1f} MiB)")
