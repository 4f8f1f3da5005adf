"""Decode products of GGUF block-quantized weights in the dot-product domain: y = W x, W never scaled.

A block-quantized weight is ``w = S * q + M``: a small integer code ``q`` and, per group of K
weights (a block or sub-block), a float32 scale ``S`` and offset ``M`` (Q4_K: S = d*sc, M =
-dmin*m; Q6_K: S = d*sc, M = -32*S; Q8_0: S = d, M = 0). So one output is

    y_r = sum_g S_rg * (q_rg . x_g)  +  sum_g M_rg * sum(x_g)

Decoding (a handful of tokens) reads every weight once and multiplies it once: instead of
writing the scaled float32 matrix (``quants.dequantize``: exact, but two more passes over it),
we cast the bare codes to float32, let BLAS take the short dot products q_rg . x_g, and apply
S and M once per group, on numbers 16-32x fewer than the weights. x is arranged, and its sums
per group taken, once per product.

NumPy's cost is per pass over the data, per inner loop (5-10 ns each, however short) and per call
(~1 us), so the work is cut in two sizes:

  * a *tile* of 128 rows x 8 blocks (256 K weights: 1 MB of float32, in the core's L2 cache):
    the codes are unpacked with whole-tile uint8/uint64 operations into *planes* (Q4_K: all low
    nibbles, then all high nibbles, in the file's byte layout: no interleaving), cast to float32
    one block-long run at a time, and multiplied with one batched matrix-vector product: for
    each (group, block) the (128, K) codes, a strided view of the tile, times K entries of x;
  * a *band* of 512 rows x all blocks: S and M from the scale bytes (one call per band for what
    would be a call per tile), and the two sums above.

Legacy types (Q8_0, Q4_0: blocks of 32) are read 8 blocks at a time (256 weights).

Summation order differs from dequantize-then-multiply, and q . x is scaled after the sum instead
of each product before it, so results differ by float32 rounding only (tests/test_quants_matvec.py
bounds it).
"""
from __future__ import annotations

import math
import threading

import numpy as np

TILE_ROWS, TILE_BLOCKS, BAND_ROWS = 128, 8, 512
MAX_TOKENS = 8      # more tokens per product: dequantize + BLAS (exact; faster from ~16-32 tokens)
_local = threading.local()
_consts: dict = {}   # shared read-only tables (shift patterns)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)


def _scratch(name: str, shape, dtype=np.uint8) -> np.ndarray:
    """This thread's reusable buffer ``name`` viewed as ``shape``, 64-byte aligned (so any uint64
    view of it is legal). The views are remembered: building one costs ~3 us, a tile ~60."""
    views = getattr(_local, "views", None)
    if views is None:
        views = _local.views = {}
    key = (name, shape, dtype)
    v = views.get(key)
    if v is not None:
        return v
    size = math.prod(shape) * np.dtype(dtype).itemsize
    buf = getattr(_local, name, None)
    if buf is None or buf.size < size + 64:
        buf = np.empty(size + 64, dtype=np.uint8)
        setattr(_local, name, buf)
        for k in [k for k in views if k[0] == name]:     # views of the old buffer
            del views[k]
    off = (-buf.ctypes.data) % 64
    v = views[key] = buf[off:off + size].view(dtype).reshape(shape)
    return v


def _f16(u16: np.ndarray) -> np.ndarray:
    """Raw float16 bits (uint16 array, any layout) -> float32, C-contiguous, in this thread's
    scratch buffer (valid until the next call). NumPy's float16 cast is scalar code (~2.3 ns a
    value: 0.07 ns a weight for Q8_0's scale per 32); integer operations give the same bits in
    ~0.6 ns: a finite half h is ((h & 0x7FFF) << 13, read as a float32) * 2**112, with the sign
    bit moved up 16, exact for normal and subnormal halves alike. Infinities and NaNs (which no
    quantizer writes) would come out finite: then NumPy's cast is used instead."""
    u = _scratch("f16", u16.shape, np.uint32)
    sign = _scratch("f16-sign", u16.shape, np.uint32)
    np.copyto(u, u16)
    np.bitwise_and(u, np.uint32(0x8000), out=sign)
    np.left_shift(sign, np.uint32(16), out=sign)
    np.bitwise_and(u, np.uint32(0x7FFF), out=u)
    np.left_shift(u, np.uint32(13), out=u)
    if u.size and u.max() >= np.uint32(0x7C00 << 13):          # exponent 31: inf or NaN
        return u16.view(np.float16).astype(np.float32, order="C")
    np.bitwise_or(u, sign, out=u)
    f = u.view(np.float32)
    np.multiply(f, np.float32(2.0 ** 112), out=f)
    return f


def _view(f: np.ndarray, shape, strides, offset: int = 0) -> np.ndarray:
    """A read-only strided view of the contiguous float32 array ``f`` (offset and strides in
    elements). np.ndarray directly: as_strided costs ~2 us a call, this ~0.3."""
    v = np.ndarray(shape, np.float32, f, 4 * offset, tuple(4 * s for s in strides))
    v.flags.writeable = False
    return v


# ----------------------------------------------------------------------------- kernels
class Kernel:
    """How one GGUF type is multiplied in the dot-product domain. A *block* is 256 weights (a
    K-quant super-block, or 8 legacy blocks) in ``nbytes`` bytes. Groups (K weights, one scale)
    are indexed by ``pos.shape``; ``pos`` is each group's first weight inside the block.

    ``dots(raw, X, out)``: raw (R, nb * nbytes) uint8 (a tile), X (groups..., nb, K, T)
        -> out (groups..., nb, R, T) = q . x.
    ``scales(raw)``: raw (R, nb * nbytes) (a band) -> S, M (groups..., nb, R) float32, M or None,
        in this thread's scratch buffers (valid until the next call)."""
    K = 32
    nbytes: int
    pos: np.ndarray

    def dots(self, raw, X, out):
        raise NotImplementedError

    def scales(self, raw):
        raise NotImplementedError


def _nibble_planes(raw, nbytes: int, first: int, n_code: int):
    """Low and high nibbles of every byte of the tile ``raw`` (R, nb * nbytes), then the bytes
    ``first:first + n_code`` of each block of both, as float32 (2, nb, R, n_code)."""
    R, n = raw.shape
    nb = n // nbytes
    w = _scratch("w", (R, n))
    np.copyto(w, raw)                                  # contiguous: fast uint64 operations
    u = _scratch("u", (2, R, n))
    w64, u64 = w.view(np.uint64), u.view(np.uint64)
    np.bitwise_and(w64, _M4, out=u64[0])
    np.right_shift(w64, np.uint64(4), out=u64[1])
    u64[1] &= _M4
    f = _scratch("f", (2, nb, R, n_code), np.float32)
    np.copyto(f, u.reshape(2, R, nb, nbytes)[..., first:first + n_code].transpose(0, 2, 1, 3), casting="unsafe")
    return f


class Q8_0(Kernel):
    """Blocks of [d f16][32 int8], w = d * q. The tile is cast whole, as int8 (the scale bytes with
    it: 6 % more work, but one loop a row instead of one per 32 codes)."""
    nbytes = 8 * 34
    pos = np.arange(8) * 32

    def dots(self, raw, X, out):
        R, n = raw.shape
        nb = n // self.nbytes
        f = _scratch("f", (R, n), np.float32)
        np.copyto(f, raw.view(np.int8), casting="unsafe")
        # legacy block j of block b, row r: f[r, 272 b + 34 j + 2 :+ 32]
        np.matmul(_view(f, (8, nb, R, 32), (34, 272, n, 1), 2), X, out=out)

    def scales(self, raw):
        R, n = raw.shape
        d = _f16(raw.view(np.uint16)[:, ::17]).reshape(R, -1, 8)         # (R, nb, 8)
        S = _scratch("S", (8, n // self.nbytes, R), np.float32)
        S[...] = d.transpose(2, 1, 0)
        return S, None


class Q4_0(Kernel):
    """Blocks of [d f16][16 bytes: codes 0-15 in the low nibbles, 16-31 in the high], w = d*(q - 8).
    Groups of 16: [low/high nibbles, legacy block]."""
    nbytes = 8 * 18
    K = 16
    pos = np.stack([np.arange(8) * 32, np.arange(8) * 32 + 16])

    def dots(self, raw, X, out):
        R, n = raw.shape
        nb = n // self.nbytes
        f = _nibble_planes(raw, 18, 2, 16)                                # (2, 8 nb, R, 16)
        np.matmul(_view(f, (2, 8, nb, R, 16), (8 * nb * R * 16, R * 16, 8 * R * 16, 16, 1)), X, out=out)

    def scales(self, raw):
        R, n = raw.shape
        d = _f16(raw.view(np.uint16)[:, ::9]).reshape(R, -1, 8)          # (R, nb, 8)
        S = _scratch("S", (2, 8, n // self.nbytes, R), np.float32)
        S[...] = d.transpose(2, 1, 0)
        return S, np.multiply(S, np.float32(-8.0), out=_scratch("M", S.shape, np.float32))


def _k_scales(raw, nbytes: int):
    """Q4_K/Q5_K: [d, dmin f16][12 bytes: eight 6-bit scales and mins] at the start of each block
    (see quants._k_scale_min) -> S = d * sc, M = -dmin * m, (2, 4, nb, R) for sub-block 2c + h at [h, c]."""
    R, n = raw.shape
    nb = n // nbytes
    # the first 16 bytes of each block as four words: d|dmin, then the scales' three words. One
    # strided loop each (a band's rows are contiguous), not a 16-byte loop per block.
    head = _scratch("s-head", (4, R, nb), np.uint32)
    w32 = raw.view(np.uint32)
    for k in range(4):
        np.copyto(head[k], w32[:, k::nbytes // 4])
    dm, d, m, md = head
    words = _scratch("s-words", (2, 2, R, nb), np.uint32)   # [scales/mins, bytes 0-3/4-7]
    np.bitwise_and(head[1:3], np.uint32(0x3F3F3F3F), out=words[:, 0])
    hi2 = np.uint32(0x30303030)
    np.bitwise_or(md & np.uint32(0x0F0F0F0F), (d >> np.uint32(2)) & hi2, out=words[0, 1])
    np.bitwise_or((md >> np.uint32(4)) & np.uint32(0x0F0F0F0F), (m >> np.uint32(2)) & hi2, out=words[1, 1])
    # byte b of word w is sub-block s = 4w + b = 2c + h: c = 2w + b // 2, h = b % 2
    b = words.view(np.uint8).reshape(2, 2, R, nb, 2, 2)              # [kind, w, r, blk, c%2, h]
    out = _scratch("S", (2, 2, 2, 2, nb, R), np.float32)              # [kind, h, w, c%2, blk, r]
    np.copyto(out, b.transpose(0, 5, 1, 4, 3, 2), casting="unsafe")
    f = _f16(dm.view(np.uint16).reshape(R, nb, 2).transpose(2, 1, 0))   # d, dmin: (2, nb, R)
    out = out.reshape(2, 2, 4, nb, R)
    out[0] *= f[0]
    out[1] *= -f[1]
    return out[0], out[1]


class Q4_K(Kernel):
    """[d, dmin f16][12 bytes scales, mins][128 bytes: 4 chunks of 32, low nibble = sub-block
    2c, high = 2c + 1]. Groups [h, c]."""
    nbytes = 144
    pos = np.array([[0, 64, 128, 192], [32, 96, 160, 224]])

    def dots(self, raw, X, out):
        R, n = raw.shape
        nb = n // self.nbytes
        f = _nibble_planes(raw, 144, 16, 128)                                # (2, nb, R, 128)
        np.matmul(_view(f, (2, 4, nb, R, 32), (nb * R * 128, 32, R * 128, 128, 1)), X, out=out)

    def scales(self, raw):
        return _k_scales(raw, self.nbytes)


def _compact(raw, nbytes: int, lo: int, hi: int, name: str) -> np.ndarray:
    """Bytes lo:hi of every block of the tile raw (R, nb * nbytes), side by side: (R * nb, hi - lo)
    uint8, in this thread's scratch buffer ``name`` (one copy loop a block)."""
    R, n = raw.shape
    nb = n // nbytes
    out = _scratch(name, (R * nb, hi - lo))
    np.copyto(out.reshape(R, nb, hi - lo), raw.reshape(R, nb, nbytes)[..., lo:hi])
    return out


def _pattern(M: int, words) -> np.ndarray:
    """A per-word constant (e.g. shift counts) repeated for M blocks: (M, len(words)) uint64.
    Whole arrays, not one row broadcast: a broadcast operand costs one loop per block."""
    key = tuple(words)
    v = _consts.get(key)
    if v is None or len(v) < M:
        v = _consts[key] = np.repeat(np.array([words], np.uint64), max(M, TILE_ROWS * TILE_BLOCKS), axis=0)
    return v[:M]


def _high_planes(ql, g, lo_shift, hi_shift, bits: int):
    """Codes (2, M, 128) uint8 = nibbles of ql (M, 128) (low, then high) | top bits from g (M, 128):
    the top ``bits`` bits of plane h, word w, are (g >> shift_h[w]) & mask, put at bit 4."""
    M = ql.shape[0]
    u = _scratch("u", (2, M, 16), np.uint64)
    tmp = _scratch("tmp", (M, 16), np.uint64)
    q64, g64 = ql.view(np.uint64), g.view(np.uint64)
    mask = np.uint64(0x0101010101010101 * ((1 << bits) - 1))
    for h, shift in enumerate((lo_shift, hi_shift)):
        np.right_shift(g64, _pattern(M, shift), out=u[h])
        u[h] &= mask
        u[h] <<= np.uint64(4)
        if h == 0:
            np.bitwise_and(q64, _M4, out=tmp)
        else:
            np.right_shift(q64, np.uint64(4), out=tmp)
            tmp &= _M4
        u[h] |= tmp
    return u.view(np.uint8).reshape(2, M, 128)


def _cast_blocks(u, R: int, nb: int):
    """Codes u (2, R * nb, 128) uint8 -> float32 (2, nb, R, 128), block-major: a group's (R, K)
    codes are then one matrix with rows 128 floats apart."""
    f = _scratch("f", (2, nb, R, 128), np.float32)
    np.copyto(f, u.reshape(2, R, nb, 128).transpose(0, 2, 1, 3), casting="unsafe")
    return f


class Q5_K(Kernel):
    """[d, dmin f16][12 bytes scales, mins][32 bytes qh][128 bytes qs]: Q4_K's nibbles, and bit 4
    of weight 64c + 32h + l is bit 2c + h of qh[l]. qh is repeated for the 4 chunks c (np.take of
    32-byte chunks: ~2 ns each) and shifted by 2c + h, word by word."""
    nbytes = 176
    pos = Q4_K.pos

    def dots(self, raw, X, out):
        R, n = raw.shape
        nb = n // 176
        qs = _compact(raw, 176, 48, 176, "ql")
        qh = _compact(raw, 176, 16, 48, "qh")
        g = _scratch("g", (R * nb, 4, 32))
        np.take(qh.reshape(-1, 1, 32), [0, 0, 0, 0], axis=1, out=g, mode="clip")   # "raise" buffers out
        u = _high_planes(qs, g.reshape(-1, 128), [2 * c for c in range(4) for _ in range(4)],
                         [2 * c + 1 for c in range(4) for _ in range(4)], 1)
        f = _cast_blocks(u, R, nb)
        np.matmul(_view(f, (2, 4, nb, R, 32), (nb * R * 128, 32, R * 128, 128, 1)), X, out=out)

    def scales(self, raw):
        return _k_scales(raw, self.nbytes)


class Q6_K(Kernel):
    """[128 bytes ql][64 bytes qh][16 int8 scales][d f16]: 16 sub-blocks of 16, w = d*sc*(q - 32).
    Weight 128n + 32j + l (half n, l < 32) has its low 4 bits in ql[64n + 32(j % 2) + l] (low
    nibble for j < 2, high for j >= 2) and its top 2 bits in qh[32n + l] >> 2j.
    qh chunks are laid beside the ql chunks they complete (np.take: n, n for j % 2 = 0, 1) and
    shifted by 2j word by word. Groups [plane h, n, m]: 16 codes at 64n + 16m of plane h."""
    nbytes = 210
    K = 16
    pos = np.array([[[128 * n + 64 * h + 16 * m for m in range(4)] for n in range(2)] for h in range(2)])
    _shift = [[2 * (2 * h + j) for n in range(2) for j in range(2) for _ in range(4)] for h in range(2)]

    def dots(self, raw, X, out):
        R, n = raw.shape
        nb = n // 210
        ql = _compact(raw, 210, 0, 128, "ql")
        qh = _compact(raw, 210, 128, 192, "qh")
        g = _scratch("g", (R * nb, 4, 32))
        np.take(qh.reshape(-1, 2, 32), [0, 0, 1, 1], axis=1, out=g, mode="clip")   # "raise" buffers out
        u = _high_planes(ql, g.reshape(-1, 128), self._shift[0], self._shift[1], 2)
        f = _cast_blocks(u, R, nb)
        np.matmul(_view(f, (2, 2, 4, nb, R, 16), (nb * R * 128, 64, 16, R * 128, 128, 1)), X, out=out)

    def scales(self, raw):
        R, n = raw.shape
        nb = n // 210
        tail = _compact(raw, 210, 192, 210, "s-rows").reshape(R, nb, 18)   # scales and d
        # sub-block 8n + 4h + m -> [h, n, m]
        sc = tail[..., :16].view(np.int8).reshape(R, nb, 2, 2, 4).transpose(3, 2, 4, 1, 0)
        S = _scratch("S", (2, 2, 4, nb, R), np.float32)
        np.copyto(S, sc, casting="unsafe")
        S *= _f16(tail.view(np.uint16)[..., 8].T)
        return S, np.multiply(S, np.float32(-32.0), out=_scratch("M", S.shape, np.float32))


KERNELS = {"Q8_0": Q8_0(), "Q4_0": Q4_0(), "Q4_K": Q4_K(), "Q5_K": Q5_K(), "Q6_K": Q6_K()}


# ----------------------------------------------------------------------------- the product
def prepare(kern: Kernel, x: np.ndarray):
    """x (T, n_in) -> X (groups..., nb, K, T) with X[g, b, :, t] = x[t, 256 b + pos[g] :+ K], and
    the group sums xs (groups..., nb, T). Once per product, shared by the threads."""
    T, n = x.shape
    idx = kern.pos[..., None] + np.arange(kern.K)                     # (groups..., K)
    xb = x.reshape(T, n // 256, 256)[:, :, idx]                       # (T, nb, groups..., K)
    g = kern.pos.ndim
    X = np.ascontiguousarray(np.moveaxis(xb, (0, 1), (g + 2, g)))       # (groups..., nb, K, T)
    return X, X.sum(axis=-2)


def _band(kern: Kernel, raw: np.ndarray, X, xs) -> np.ndarray:
    """x @ W.T for the rows of ``raw`` (a band): (T, R)."""
    R, n = raw.shape
    nb = n // kern.nbytes
    S, M = kern.scales(raw)                                           # (groups..., nb, R)
    P = _scratch("P", (*S.shape, X.shape[-1]), np.float32)            # q . x, the same layout
    for c0 in range(0, nb, TILE_BLOCKS):
        c1 = min(c0 + TILE_BLOCKS, nb)
        for r0 in range(0, R, TILE_ROWS):
            r1 = min(r0 + TILE_ROWS, R)
            tile = raw[r0:r1, c0 * kern.nbytes:c1 * kern.nbytes]
            kern.dots(tile, X[..., c0:c1, :, :], P[..., c0:c1, r0:r1, :])
    G = S.size // R
    S, P = S.reshape(G, R), P.reshape(G, R, -1)
    y = np.einsum("gr,gr->r", S, P[..., 0])[None] if P.shape[-1] == 1 else np.einsum("gr,grt->tr", S, P)
    if M is not None:
        y += xs.reshape(G, -1).T @ M.reshape(G, R)
    return y


def run(kern: Kernel, raw: np.ndarray, X, xs, y: np.ndarray, r0: int, r1: int) -> None:
    """y[:, r0:r1] = x @ W[r0:r1].T for raw (out, bytes per row) uint8; X, xs from ``prepare``."""
    for a in range(r0, r1, BAND_ROWS):
        b = min(a + BAND_ROWS, r1)
        y[:, a:b] = _band(kern, raw[a:b], X, xs)
