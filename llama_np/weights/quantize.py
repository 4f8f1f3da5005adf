"""GGUF quantizers: float32 weights -> the exact bytes llama.cpp writes for each block type.

``quantize(w, kind)`` is the inverse of ``quants.dequantize`` (up to the quantization error): it
cuts every row of ``w`` into blocks of 32 (legacy types) or super-blocks of 256 (K-quants) and
finds the scales and integer codes the way llama.cpp's reference quantizers in ggml-quants.c do,
float32 operation for float32 operation, so the bytes are the same:

    type   llama.cpp function              scale search
    Q8_0   quantize_row_q8_0_ref           d = max|x| / 127, round half away from zero
    Q4_0   quantize_row_q4_0_ref           d = (signed value of max|x|) / -8
    Q4_1   quantize_row_q4_1_ref           d = (max - min) / 15, offset = min
    Q5_0   quantize_row_q5_0_ref           d = (signed value of max|x|) / -16
    Q5_1   quantize_row_q5_1_ref           d = (max - min) / 31, offset = min
    Q2_K   quantize_row_q2_K_ref           make_qkx2_quants per 16 (absolute error); 4-bit codes
    Q3_K   quantize_row_q3_K_ref           make_q3_quants per 16: coordinate descent on codes;
                                             then 6-bit codes for the 16 scales
    Q4_K   quantize_row_q4_K_ref           make_qkx2_quants per 32: 21 trial scales, weighted
    Q5_K   quantize_row_q5_K_ref             least squares for scale and min; then 6-bit codes
                                             for them, relative to the super-block's largest
    Q6_K   quantize_row_q6_K_ref           make_qx_quants per 16: 19 trial scales around
                                             max|x| / 32; then int8 codes for the 16 scales

Without an importance matrix (``--imatrix``), llama.cpp's ``quantize_q2_K`` ... ``quantize_q6_K``
(what ``llama-quantize`` and ``llama_model_quantize`` call through
``ggml_quantize_chunk``) run exactly these ``_ref`` functions; with one they run ``*_impl``,
a different search that this module does not reproduce. The legacy types take the ``_ref`` path
without an importance matrix too, and ``quantize_q8_0`` always does.

Floating point: llama-cpp-python's ``libggml-base`` (where ggml-quants.c is compiled) is built for
baseline x86-64 (SSE2): no FMA instruction appears in it, so no ``a*b + c`` is contracted, and
without -ffast-math no sum is reordered. Each sum below is therefore accumulated in float32, left
to right, exactly as the C loops do (``_seqsum``). The order matters: NumPy's pairwise sums, or
sums in float64, change the bytes of ~2 % of Q4_K and Q6_K super-blocks (measured on Gaussian
weights) because a trial scale wins or loses by one rounding.

Layout: the K-quant searches work on ``X (n, m)``, one *column* per sub-block (n = 32 or 16
weights, m sub-blocks), so every step of the search is a handful of NumPy operations over all
sub-blocks at once, and sums over a sub-block run down axis 0. ``quantize`` feeds them 1024
super-blocks at a time, which keeps the working set in cache (4096 was ~25 % slower here).
"""
from __future__ import annotations

import numpy as np

from .quants import QK, QK_K, TYPES

GROUP_MAX_EPS = np.float32(1e-15)   # ggml-quants.c: below this a group counts as all zero
_CHUNK = 1024                       # super-blocks (or 8x as many legacy blocks) per pass

f32 = np.float32


# ----------------------------------------------------------------------------- helpers
def _fp16(d: np.ndarray) -> np.ndarray:
    """float32 (n,) -> the two bytes of its float16 (n, 2). NumPy rounds to nearest even,
    subnormals included, as GGML_FP32_TO_FP16 does; beyond 65504 both give inf."""
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(d, dtype=np.float32).astype(np.float16).view(np.uint8).reshape(-1, 2)


def _fp16_round(d: np.ndarray) -> np.ndarray:
    """The value llama.cpp reads back after storing d as float16 (GGML_FP16_TO_FP32)."""
    with np.errstate(over="ignore"):
        return np.asarray(d, dtype=np.float32).astype(np.float16).astype(np.float32)


def _nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int, bit for bit: adding 1.5 * 2**23 pushes the fraction out of a float32's
    mantissa (rounding half to even), and the low 23 bits then hold the integer + 2**22. Equal to
    np.rint for |v| <= 2**22 - 1; beyond that (an assert in debug builds) it wraps as the C does."""
    bits = (np.asarray(v, dtype=np.float32) + f32(12582912.0)).view(np.int32)
    return (bits & np.int32(0x007FFFFF)) - np.int32(0x00400000)


def _seqsum(a: np.ndarray) -> np.ndarray:
    """a: (n, m) float32 -> (m,) sums down the columns, in float32, a[0] + a[1] + ... in order.

    NumPy reduces an outer axis of a C-ordered array this way (one running sum per column); a
    single column would be summed pairwise instead, so that case is done by hand."""
    if a.shape[1] < 2:
        acc = a[0].copy()
        for row in a[1:]:
            acc += row
        return acc
    return np.add.reduce(a, axis=0)


def _roundf(v: np.ndarray) -> np.ndarray:
    """C's roundf: to nearest, halves away from zero (np.rint rounds them to even)."""
    t = np.trunc(v)
    return t + np.where(np.abs(v - t) >= 0.5, np.sign(v), f32(0))   # v - t is exact


def _first_absmax(x: np.ndarray, axis: int) -> np.ndarray:
    """The signed value of the first element of largest |x| along ``axis`` (C's strict ``<``)."""
    i = np.expand_dims(np.abs(x).argmax(axis=axis), axis)
    # + 0 turns -0.0 into +0.0: when every |x| is 0 the C keeps its initial max = 0.0f
    return np.take_along_axis(x, i, axis=axis).squeeze(axis) + f32(0)


def _pack_nibbles(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return (lo & np.uint8(0x0F)) | (hi << np.uint8(4))


def _pack_bits(parts: np.ndarray, width: int) -> np.ndarray:
    """parts: (b, k, ...) uint8 fields of ``width`` bits -> (b, ...) bytes, part t at bit t*width."""
    out = np.zeros(parts[:, 0].shape, dtype=np.uint8)
    for t in range(parts.shape[1]):
        out |= parts[:, t] << np.uint8(t * width)
    return out


# ----------------------------------------------------------------------------- legacy (32)
# Each takes x: (b, 32) float32 and returns (b, bytes) uint8.
def _q8_0(x):
    d = np.abs(x).max(axis=1) / f32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, f32(1) / d, f32(0))
    q = _roundf(x * inv[:, None]).astype(np.int8)
    return np.concatenate([_fp16(d), q.view(np.uint8)], axis=1)


def _symmetric_4_5(x, nmax):
    """Q4_0 (nmax 8) / Q5_0 (16): d = the signed largest weight / -nmax, so it maps to code 0 and
    the other side gets one level more; codes are (int8_t)(x/d + nmax + 0.5), i.e. truncated."""
    d = _first_absmax(x, 1) / f32(-nmax)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, f32(1) / d, f32(0))
    q = np.trunc(x * inv[:, None] + f32(nmax + 0.5)).astype(np.int8)
    return d, np.minimum(q.view(np.uint8), np.uint8(2 * nmax - 1))


def _affine_4_5(x, nmax, clamp):
    """Q4_1 (nmax 15) / Q5_1 (31): the block's range cut into nmax steps above its minimum."""
    # the first minimum and maximum, as the C's strict comparisons find them (-0.0 vs 0.0 matters
    # for the stored float16 minimum)
    lo = np.take_along_axis(x, x.argmin(axis=1)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(x, x.argmax(axis=1)[:, None], axis=1)[:, 0]
    d = (hi - lo) / f32(nmax)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, f32(1) / d, f32(0))
    q = np.trunc((x - lo[:, None]) * inv[:, None] + f32(0.5)).astype(np.int8).view(np.uint8)
    # quantize_row_q4_1_ref clamps to 15; quantize_row_q5_1_ref does not clamp (it cannot exceed 31)
    return d, lo, (np.minimum(q, np.uint8(nmax)) if clamp else q)


def _q5_high(q):
    """Bit 4 of the 32 codes (b, 32) as one little-endian 32-bit word (b, 4): bit j = code j."""
    return np.packbits((q >> np.uint8(4)) & np.uint8(1), axis=1, bitorder="little")


def _q4_0(x):
    d, q = _symmetric_4_5(x, 8)
    return np.concatenate([_fp16(d), _pack_nibbles(q[:, :16], q[:, 16:])], axis=1)


def _q5_0(x):
    d, q = _symmetric_4_5(x, 16)
    return np.concatenate([_fp16(d), _q5_high(q), _pack_nibbles(q[:, :16], q[:, 16:])], axis=1)


def _q4_1(x):
    d, m, q = _affine_4_5(x, 15, clamp=True)
    return np.concatenate([_fp16(d), _fp16(m), _pack_nibbles(q[:, :16], q[:, 16:])], axis=1)


def _q5_1(x):
    d, m, q = _affine_4_5(x, 31, clamp=False)
    return np.concatenate([_fp16(d), _fp16(m), _q5_high(q), _pack_nibbles(q[:, :16], q[:, 16:])], axis=1)


# ----------------------------------------------------------------------------- K-quant searches
def make_qkx2_quants(X, W, nmax, rmin, rdelta, nstep, use_mad=False):
    """Scale and minimum for x ~ scale * L - min, L in 0..nmax, minimising sum W (x - ...)**2
    (sum W |x - ...| with ``use_mad``, as Q2_K asks).

    X, W: (n, m), weights and their importances, one sub-block per column -> L (n, m) float32 codes,
    scale (m,), the_min (m,) (stored as a positive number: x ~ scale*L - the_min).

    The search (ggml-quants.c ``make_qkx2_quants``): start from the range [min(x, 0), max x] cut
    into nmax steps; then for each of nstep+1 trial inverse scales (nmax + rmin + rdelta*k) /
    (max - min), round every weight to its code and solve the 2x2 weighted least-squares problem
    for scale and min with those codes fixed (the min clamped to <= 0); keep the trial with the
    smallest weighted error. As in the C, a better trial's min moves the origin of later trials."""
    mn = np.minimum(X.min(axis=0), f32(0))
    mx = X.max(axis=0)
    flat = mx == mn
    sum_w = _seqsum(W)
    sum_x = _seqsum(W * X)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = f32(nmax) / (mx - mn)
        scale = f32(1) / iscale
        # iscale * (x - min) stays within a few steps of 0..nmax, far inside the range where
        # np.rint equals nearest_int (|v| < 2**22); np.rint is one operation instead of three.
        L = np.clip(np.rint(iscale * (X - mn)), 0, nmax)
        diff = scale * L + mn - X
        best = _seqsum(W * (np.abs(diff) if use_mad else diff * diff))
        for k in range(nstep + 1):
            iscale = (f32(rmin) + f32(rdelta) * f32(k) + f32(nmax)) / (mx - mn)
            laux = np.clip(np.rint(iscale * (X - mn)), 0, nmax)
            wl = W * laux
            sum_l, sum_l2, sum_xl = _seqsum(wl), _seqsum(wl * laux), _seqsum(wl * X)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            # a positive min is not allowed (x ~ scale*L + min with min <= 0): refit the scale alone
            pos = this_min > 0
            this_min = np.where(pos, f32(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            diff = this_scale * laux + this_min - X
            cur = _seqsum(W * (np.abs(diff) if use_mad else diff * diff))
            better = (D > 0) & (cur < best) & ~flat
            L = np.where(better, laux, L)
            best = np.where(better, cur, best)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    # max == min (a constant non-negative block, or all zeros): codes 0, scale 0
    L = np.where(flat, f32(0), L)
    scale = np.where(flat, f32(0), scale)
    return L, scale, -mn


def make_qx_quants(X, nmax):
    """Symmetric scale for x ~ scale * (L - nmax), L in 0..2*nmax-1, weighted by x**2 (rmse_type 1).

    X: (n, m), one group per column -> L (n, m) float32 codes, scale (m,).

    The search (ggml-quants.c ``make_qx_quants``): map the signed largest |x| to -nmax, round,
    take the least-squares scale for those codes; then try 18 nearby inverse scales
    -(nmax + 0.1 k) / max, k = -9..9, and keep codes whose least-squares fit explains more of x
    (larger sumlx**2 / suml2, which is the same as smaller weighted error)."""
    big = _first_absmax(X, 0)
    zero = np.abs(big) < GROUP_MAX_EPS
    W = X * X
    WX = W * X
    with np.errstate(divide="ignore", invalid="ignore"):
        def trial(iscale):
            # |iscale * x| <= nmax + 1: np.rint is nearest_int here
            lv = np.clip(np.rint(iscale * X), -nmax, nmax - 1)
            return lv, _seqsum(WX * lv), _seqsum((W * lv) * lv)

        lv, sumlx, suml2 = trial(f32(-nmax) / big)
        L = lv + f32(nmax)
        scale = np.where(suml2 != 0, sumlx / suml2, f32(0))
        best = scale * sumlx
        for k in range(-9, 10):
            if k == 0:
                continue
            lv, sumlx, suml2 = trial(-(f32(nmax) + f32(0.1) * f32(k)) / big)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2) & ~zero
            L = np.where(better, lv + f32(nmax), L)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
    L = np.where(zero, f32(0), L)
    scale = np.where(zero, f32(0), scale)
    return L, scale


def make_q3_quants(X, nmax):
    """Symmetric scale for x ~ scale * (L - nmax), L in 0..2*nmax-1, by coordinate descent (Q3_K).

    X: (n, m), one group per column -> L (n, m) float32 codes, scale (m,).

    The search (ggml-quants.c ``make_q3_quants`` with do_rmse): round with the largest |x| at
    -nmax, then up to 5 passes over the weights in order, moving one code at a time to the value
    that the least-squares scale of the *other* codes suggests, when that raises sumlx**2/suml2
    (weights x**2). Each move changes the sums the next weight sees, so the weights are visited
    one by one, each step vectorised over the groups. A pass that moves nothing would leave the
    next pass nothing to do, so running all 5 passes equals the C's early ``break``."""
    n = len(X)
    big = _first_absmax(X, 0)
    zero = np.abs(big) < GROUP_MAX_EPS
    W = X * X
    WX = W * X
    with np.errstate(divide="ignore", invalid="ignore"):
        L = np.clip(np.rint((f32(-nmax) / big) * X), -nmax, nmax - 1)
        sumlx, suml2 = _seqsum(WX * L), _seqsum((W * L) * L)
        for _ in range(5):
            changed = False
            for i in range(n):
                li = L[i]
                slx = sumlx - WX[i] * li
                sl2 = suml2 - (W[i] * li) * li
                # x * sl2 / slx can be huge when slx is tiny: the exact nearest_int, not np.rint
                new = np.clip(_nearest_int((X[i] * sl2) / slx), -nmax, nmax - 1).astype(np.float32)
                slx = slx + WX[i] * new
                sl2 = sl2 + (W[i] * new) * new
                take = ((sumlx - WX[i] * li) > 0) & (new != li) & (sl2 > 0) & \
                    ((slx * slx) * suml2 > (sumlx * sumlx) * sl2)
                if take.any():
                    changed = True
                    L[i] = np.where(take, new, li)
                    sumlx = np.where(take, slx, sumlx)
                    suml2 = np.where(take, sl2, suml2)
            if not changed:
                break
        scale = np.where(suml2 > 0, sumlx / suml2, f32(0))
    # an all-zero group returns early in the C with codes 0 (not nmax) and scale 0
    return np.where(zero, f32(0), L + f32(nmax)), np.where(zero, f32(0), scale)


def _columns(x, n):
    """x: (b, 256) -> (n, b*256/n): sub-block j of super-block i is column i*256/n + j."""
    return np.ascontiguousarray(x.reshape(-1, n).T)


# ----------------------------------------------------------------------------- K-quants (256)
def _scale_min_k(x, nmax, rmin, rdelta, nstep):
    """Q4_K / Q5_K: x (b, 256) -> d, dmin (b,) float32, 6-bit ls, lm (b, 8), codes L (b, 256) uint8."""
    b = len(x)
    X = _columns(x, 32)
    av_x = np.sqrt(_seqsum(X * X) / f32(32))
    W = av_x + np.abs(X)      # importance: the sub-block's rms plus the weight's own size
    L, scales, mins = make_qkx2_quants(X, W, nmax, rmin, rdelta, nstep)
    scales, mins = scales.reshape(b, 8), mins.reshape(b, 8)
    L = L.T.reshape(b, 8, 32)
    # The 8 scales (mins) become 6-bit multiples of the largest one, d (dmin) = largest / 63.
    max_scale = np.maximum(scales.max(axis=1), f32(0))
    max_min = np.maximum(mins.max(axis=1), f32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, f32(63) / max_scale, f32(0))
        inv_min = np.where(max_min > 0, f32(63) / max_min, f32(0))
    # uint8_t ls = nearest_int(...): C keeps the low byte, then MIN(63, ls)
    ls = np.minimum(_nearest_int(inv_scale[:, None] * scales).astype(np.uint8), np.uint8(63))
    lm = np.minimum(_nearest_int(inv_min[:, None] * mins).astype(np.uint8), np.uint8(63))
    d, dmin = max_scale / f32(63), max_min / f32(63)
    # Final codes against the scales as stored (float16 d times 6-bit code); a sub-block whose
    # stored scale is 0 keeps the codes of the search.
    dj = _fp16_round(d)[:, None] * ls
    dmj = _fp16_round(dmin)[:, None] * lm
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(_nearest_int((x.reshape(b, 8, 32) + dmj[..., None]) / dj[..., None]), 0, nmax)
    L = np.where(dj[..., None] != 0, q.astype(np.uint8), L.astype(np.uint8)).reshape(b, 256)
    return d, dmin, ls, lm, L


def _pack_scale_min_k(ls, lm):
    """Eight 6-bit scales and mins (b, 8) -> the 12 bytes of get_scale_min_k4 (see quants._k_scale_min)."""
    top = lambda v: (v[:, 4:] >> np.uint8(4)) << np.uint8(6)   # noqa: E731
    return np.concatenate([ls[:, :4] | top(ls), lm[:, :4] | top(lm),
                           _pack_nibbles(ls[:, 4:], lm[:, 4:])], axis=1)


def _q4_k(x):
    d, dmin, ls, lm, L = _scale_min_k(x, 15, -1.0, 0.1, 20)
    L = L.reshape(len(x), 4, 2, 32)          # 64 weights per 32 bytes: low nibbles, then high
    qs = _pack_nibbles(L[:, :, 0], L[:, :, 1]).reshape(len(x), 128)
    return np.concatenate([_fp16(d), _fp16(dmin), _pack_scale_min_k(ls, lm), qs], axis=1)


def _q5_k(x):
    d, dmin, ls, lm, L = _scale_min_k(x, 31, -0.5, 0.1, 15)
    b = len(x)
    qh = _pack_bits(L.reshape(b, 8, 32) >> np.uint8(4), 1)   # bit t of qh[j]: bit 4 of weight 32t + j
    L = L.reshape(b, 4, 2, 32)
    qs = _pack_nibbles(L[:, :, 0], L[:, :, 1]).reshape(b, 128)
    return np.concatenate([_fp16(d), _fp16(dmin), _pack_scale_min_k(ls, lm), qh, qs], axis=1)


def _q6_k(x):
    b = len(x)
    L, scales = make_qx_quants(_columns(x, 16), 32)
    scales = scales.reshape(b, 16)
    L = L.T.reshape(b, 16, 16)
    # The 16 scales become int8 multiples of d = the signed largest / -128.
    big = _first_absmax(scales, 1)
    zero = np.abs(big) < GROUP_MAX_EPS      # the whole super-block is written as zeros
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = f32(-128) / big
        d = f32(1) / iscale
        sc = np.minimum(_nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
        dj = _fp16_round(d)[:, None] * sc
        q = np.clip(_nearest_int(x.reshape(b, 16, 16) / dj[..., None]), -32, 31) + 32
    L = np.where(dj[..., None] != 0, q.astype(np.uint8), L.astype(np.uint8)).reshape(b, 2, 4, 32)
    # per 128 weights: ql holds the low nibbles of quarters 0|2 and 1|3, qh their top 2 bits
    ql = np.concatenate([_pack_nibbles(L[:, :, 0], L[:, :, 2]), _pack_nibbles(L[:, :, 1], L[:, :, 3])], axis=2)
    qh = _pack_bits((L >> np.uint8(4)).transpose(0, 2, 1, 3), 2)    # (b, 2, 32)
    out = np.concatenate([ql.reshape(b, 128), qh.reshape(b, 64), sc.view(np.uint8), _fp16(d)], axis=1)
    out[zero] = 0
    return out


def _pack_crumbs(L):
    """2-bit codes (b, 256) -> (b, 64): per 128 weights, byte l holds weights l, l+32, l+64, l+96."""
    return _pack_bits(L.reshape(len(L), 2, 4, 32).transpose(0, 2, 1, 3), 2).reshape(len(L), 64)


def _q2_k(x):
    b = len(x)
    X = _columns(x, 16)
    # importance |x|, and the absolute (not squared) error: 2-bit codes cannot afford outliers' pull
    L, scales, mins = make_qkx2_quants(X, np.abs(X), 3, -0.5, 0.1, 15, use_mad=True)
    scales, mins = scales.reshape(b, 16), mins.reshape(b, 16)
    L = L.T.reshape(b, 16, 16)
    max_scale = np.maximum(scales.max(axis=1), f32(0))
    max_min = np.maximum(mins.max(axis=1), f32(0))
    # 4-bit codes for the 16 scales (low nibble) and mins (high nibble), as multiples of max / 15
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.where(max_scale[:, None] > 0, _nearest_int((f32(15) / max_scale)[:, None] * scales), 0)
        lm = np.where(max_min[:, None] > 0, _nearest_int((f32(15) / max_min)[:, None] * mins), 0)
    sc = ((ls | (lm << 4)) & 0xFF).astype(np.uint8)            # C: uint8 = l; |= l << 4
    d = np.where(max_scale > 0, max_scale / f32(15), f32(0))
    dmin = np.where(max_min > 0, max_min / f32(15), f32(0))
    dj = _fp16_round(d)[:, None] * (sc & np.uint8(0x0F))
    dmj = _fp16_round(dmin)[:, None] * (sc >> np.uint8(4))
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(_nearest_int((x.reshape(b, 16, 16) + dmj[..., None]) / dj[..., None]), 0, 3)
    L = np.where(dj[..., None] != 0, q.astype(np.uint8), L.astype(np.uint8)).reshape(b, 256)
    return np.concatenate([sc, _pack_crumbs(L), _fp16(d), _fp16(dmin)], axis=1)


def _q3_k(x):
    b = len(x)
    L, scales = make_q3_quants(_columns(x, 16), 4)
    scales = scales.reshape(b, 16)
    L = L.T.reshape(b, 16, 16)
    # 6-bit codes for the 16 scales: the signed largest maps to -32
    big = _first_absmax(scales, 1)
    has = big != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = f32(-32) / big
        ls = np.clip(_nearest_int(iscale[:, None] * scales).astype(np.int8), -32, 31) + 32   # int8_t l
        ls = np.where(has[:, None], ls, 0).astype(np.uint8)
        d = np.where(has, f32(1) / iscale, f32(0))
    lo, hi = ls & np.uint8(0x0F), ls >> np.uint8(4)
    # low nibbles: scales 0-7 in bytes 0-7, 8-15 in their high halves; top 2 bits of scale j in
    # byte 8 + j%4 at bit 2*(j//4)
    sbytes = np.concatenate([_pack_nibbles(lo[:, :8], lo[:, 8:]), _pack_bits(hi.reshape(b, 4, 4), 2)], axis=1)
    dj = _fp16_round(d)[:, None] * (ls.astype(np.int8) - np.int8(32))
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(_nearest_int(x.reshape(b, 16, 16) / dj[..., None]), -4, 3) + 4
    L = np.where(dj[..., None] != 0, q.astype(np.uint8), L.astype(np.uint8)).reshape(b, 256)
    # the high bit (code > 3) of weight j goes to bit j // 32 of hmask[j % 32]
    hmask = _pack_bits((L > 3).reshape(b, 8, 32).astype(np.uint8), 1)
    L = np.where(L > 3, L - np.uint8(4), L)
    return np.concatenate([hmask, _pack_crumbs(L), sbytes, _fp16(d)], axis=1)


# What llama.cpp stores instead when a row is not a whole number of 256-weight super-blocks
# (llama-quant.cpp, tensor_type_fallback): SmolLM2-135M's rows of 576 are, in all but ffn_down.
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}

QUANTIZERS = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1,
              "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


def quantize(w: np.ndarray, kind: str) -> np.ndarray:
    """Quantize float weights to GGUF type ``kind``, byte for byte as llama.cpp does (no imatrix).

    w: (..., n) float32, n a multiple of the block (32, or 256 for K-quants) ->
    raw: (..., n // block * bytes) uint8, the rows as a GGUF file stores them
    (``quants.dequantize(raw, kind)`` gives w back, within the type's error).

    A matrix whose rows are not a multiple of 256 has no K-quant form in a GGUF file (llama.cpp
    writes it as ``FALLBACK[kind]``); to measure a K-quant's error on it anyway, cut it into
    super-blocks across rows: ``quantize(w.reshape(-1, 256), kind)``."""
    if kind not in QUANTIZERS:
        raise ValueError(f"cannot quantize to {kind}: supported types are {', '.join(QUANTIZERS)}")
    block, nbytes, _ = TYPES[kind]
    w = np.asarray(w, dtype=np.float32)
    if w.ndim == 0 or w.shape[-1] % block:
        instead = f" (llama.cpp stores such a tensor as {FALLBACK[kind]})" if kind in FALLBACK else ""
        raise ValueError(f"{kind}: rows of {w.shape[-1] if w.ndim else 0} weights are not a whole "
                         f"number of {block}-weight blocks{instead}")
    if not np.isfinite(w).all():
        raise ValueError(f"{kind}: the weights contain inf or NaN")
    blocks = w.reshape(-1, block)
    out = np.empty((len(blocks), nbytes), dtype=np.uint8)
    fn = QUANTIZERS[kind]
    step = _CHUNK if block == QK_K else _CHUNK * (QK_K // QK)
    for i in range(0, len(blocks), step):
        out[i:i + step] = fn(blocks[i:i + step])
    return out.reshape(*w.shape[:-1], w.shape[-1] // block * nbytes)
