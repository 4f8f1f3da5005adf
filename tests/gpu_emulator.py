"""A NumPy stand-in for CuPy and for llama_np.gpu's CUDA kernels, so the GPU path's orchestration
(upload, buffer layouts, kernel arguments, CUDA-graph replay) is tested on machines without a GPU.

Each emulated kernel takes exactly the arguments its CUDA twin in ``llama_np/kernels/*.cu`` takes,
in the same order, and computes the same thing with NumPy: so a wrong offset, a swapped argument
or a value baked into the graph at capture time fails here too. What this cannot catch is a bug
*inside* a kernel's CUDA code; tests/test_gpu.py checks those on a real GPU.

Graph capture is emulated as CUDA does it: between ``begin_capture`` and ``end_capture`` launches
are recorded with their arguments (arrays by reference, like device pointers; scalars by value)
and not run; ``Graph.launch`` replays them.
"""
from __future__ import annotations

import time
import types

import numpy as np

from llama_np.weights.packed import bf16_to_f32


def _f16(bits):
    return np.asarray(bits).view(np.float16).astype(np.float32)


def _widen(kind: str, data):
    return {"bf16": bf16_to_f32, "f16": _f16, "f32": lambda a: np.asarray(a, dtype=np.float32)}[kind](data)


def _gemv(kind):
    def run(W, x, y, rows, n, acc):
        assert W.shape == (int(rows), int(n)) and x.shape == (int(n),) and y.shape == (int(rows),)
        r = _widen(kind, W) @ x
        y[...] = y + r if int(acc) else r
    return run


def _gemv_norm(kind):
    def run(W, x, g, y, rows, n, eps):
        assert W.shape == (int(rows), int(n)) and x.shape == g.shape == (int(n),) and y.shape == (int(rows),)
        xn = x / np.sqrt((x * x).mean() + np.float32(eps)) * g
        y[...] = _widen(kind, W) @ xn
    return run


def argmax_next(logits, n, state, tokens):
    """state = (argmax of logits[:n], position + 1); tokens[new position] = that token."""
    tok, pos = int(np.argmax(logits[: int(n)])), int(state[1]) + 1
    state[0], state[1], tokens[pos] = tok, pos, tok


def _widen_kernel(kind):
    def run(src, dst, n):
        dst.reshape(-1)[: int(n)] = _widen(kind, src.reshape(-1)[: int(n)])
    return run


def bf16_to_f16(src, dst, n):
    dst.reshape(-1)[: int(n)] = bf16_to_f32(src.reshape(-1)[: int(n)]).astype(np.float16).view(np.uint16)


def rms_norm(x, w, y, dim, eps):
    xr = x.reshape(-1, int(dim))
    r = 1.0 / np.sqrt((xr * xr).mean(axis=-1, keepdims=True) + np.float32(eps))
    y.reshape(-1, int(dim))[...] = xr * r * w


def _embed(kind):
    def run(E, state, x, dim):
        x[: int(dim)] = _widen(kind, E[int(state[0])])
    return run


# attn_decode's three steps (three kernels of their own before 2026-12-03): RoPE and the cache
# write, the attention of each part of the keys, the merge of the parts.
def rope_store(qkv, cos_t, sin_t, state, k_cache, v_cache, H, KV, hd, max_len, layer):
    H, KV, hd, layer, pos = int(H), int(KV), int(hd), int(layer), int(state[1])
    assert k_cache.shape[2] == int(max_len)
    heads = qkv[: (H + KV) * hd].reshape(H + KV, hd // 2, 2)
    a, b = heads[..., 0].copy(), heads[..., 1].copy()
    c, s = cos_t[pos], sin_t[pos]
    ra, rb = a * c - b * s, a * s + b * c
    heads[:H, :, 0], heads[:H, :, 1] = ra[:H], rb[:H]
    k_cache[layer, :, pos] = np.stack([ra[H:], rb[H:]], axis=-1).reshape(KV, hd)
    v_cache[layer, :, pos] = qkv[(H + KV) * hd:].reshape(KV, hd)


def attention_ref(q, k_cache, v_cache, pos, H, KV, hd, layer, scale):
    """The decode attention that attn_partial + attn_combine compute together: (H * hd,) float32."""
    S = pos + 1
    qh = q[: H * hd].reshape(KV, H // KV, hd)
    K, V = k_cache[layer, :, :S], v_cache[layer, :, :S]            # (KV, S, hd)
    scores = qh @ K.swapaxes(1, 2) * np.float32(scale)             # (KV, n_rep, S)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ V).reshape(H * hd)


def attn_partial(q, k_cache, v_cache, pm, pl, pacc, state, H, KV, hd, max_len, layer, scale, chunk):
    H, KV, hd, layer, chunk, S = int(H), int(KV), int(hd), int(layer), int(chunk), int(state[1]) + 1
    n_parts = pm.size // H
    pm2, pl2, pacc3 = pm.reshape(H, n_parts), pl.reshape(H, n_parts), pacc.reshape(H, n_parts, hd)
    for h in range(H):
        kv = h // (H // KV)
        for part in range(n_parts):
            s0 = part * chunk
            s1 = min(s0 + chunk, S)
            if s1 <= s0:
                pm2[h, part], pl2[h, part], pacc3[h, part] = -np.inf, 0.0, 0.0
                continue
            sc = k_cache[layer, kv, s0:s1] @ q[h * hd:(h + 1) * hd] * np.float32(scale)
            m = sc.max()
            e = np.exp(sc - m)
            pm2[h, part], pl2[h, part] = m, e.sum()
            pacc3[h, part] = e @ v_cache[layer, kv, s0:s1]


def attn_combine(pm, pl, pacc, out, hd, n_parts):
    hd, n_parts = int(hd), int(n_parts)
    m = pm.reshape(-1, n_parts)
    H = m.shape[0]
    w = np.exp(m - m.max(axis=1, keepdims=True))                   # exp(-inf) = 0 for empty parts
    L = (pl.reshape(H, n_parts) * w).sum(axis=1)
    out[: H * hd] = ((pacc.reshape(H, n_parts, hd) * w[..., None]).sum(axis=1) / L[:, None]).reshape(-1)


def swiglu(h13, a, F):
    F = int(F)
    g = h13[:F]
    a[:F] = g / (1.0 + np.exp(-g)) * h13[F:2 * F]


def attn_decode(qkv, cos_t, sin_t, state, k_cache, v_cache, pm, pl, pacc, done, out, H, KV, hd, max_len, layer,
                scale, chunk):
    """attention.cu's one-launch decode attention: rope_store's RoPE and cache write (on a copy:
    the kernel reads qkv, never writes it), attn_partial's parts, attn_combine's merge (done by the
    last block of each head in CUDA, which resets its counter ``done[h]`` to 0)."""
    assert done.shape == (int(H),) and done.dtype == np.int32
    assert not done.any(), "attn_decode's counters must be 0 when a step starts (the last block resets them)"
    q = np.array(qkv, copy=True)
    rope_store(q, cos_t, sin_t, state, k_cache, v_cache, H, KV, hd, max_len, layer)
    attn_partial(q, k_cache, v_cache, pm, pl, pacc, state, H, KV, hd, max_len, layer, scale, chunk)
    attn_combine(pm, pl, pacc, out, hd, pm.size // int(H))


def _gemv_norm_swiglu(gemv_norm):
    """GEMV_KERNELS' gemv_norm_swiglu_<kind>(*data, x, g, a, F, n, eps): rows j and F + j of the
    normed product (emulated by the kind's gemv_norm), then a[j] = silu(gate) * up."""
    def run(*args):
        *data, x, g, a, F, n, eps = args
        F = int(F)
        assert a.shape == (F,), (a.shape, F)
        h = np.zeros(2 * F, dtype=np.float32)
        gemv_norm(*data, x, g, h, np.int32(2 * F), n, eps)
        swiglu(h, a, F)
    return run


# ------------------------------------------------- packed weights (gemv_q8_0/q4_k/q6_k/int8.cu)
# Each ``_dot_*`` follows its kernel's arithmetic, vectorised over rows and blocks: the same split
# of a block between lanes (``part``), the same bytes and bit fields for each weight, the scales
# taken out of the same partial sums (Q4_K's min times the sum of x). tests/test_gpu_emulated.py
# checks them against quants.dequantize + a matrix product; tests/test_gpu.py the kernels against them.
def _blocks(W, rows, n, per: int, nbytes: int):
    """(rows, bytes a row) uint8 -> (rows, blocks a row, bytes a block)."""
    rows, n = int(rows), int(n)
    W = np.asarray(W)
    assert W.shape == (rows, n // per * nbytes) and W.dtype == np.uint8, (W.shape, W.dtype)
    return W.reshape(rows, n // per, nbytes)


def _f16_at(b, off: int):
    """The fp16 at byte ``off`` of every block, as float32 (rows, blocks)."""
    return np.ascontiguousarray(b[..., off:off + 2]).view(np.float16)[..., 0].astype(np.float32)


def _dot_q8_0(W, x, rows, n):
    b = _blocks(W, rows, n, 32, 34)
    d = _f16_at(b, 0)
    q = b[..., 2:].view(np.int8).astype(np.float32).reshape(*b.shape[:2], 4, 8)   # 4 lanes, 8 codes each
    s = (q * x.reshape(-1, 4, 8)).sum(-1)                                       # each lane's sum
    return (d[..., None] * s).sum((1, 2))


def _q4_k_scale_min(b, j: int):
    """q4_k_scale_min: sub-block j's 6-bit scale and min, from bytes 4-15 of every block."""
    s0, s1, s2 = b[..., 4:8].astype(np.uint32), b[..., 8:12].astype(np.uint32), b[..., 12:16].astype(np.uint32)
    if j < 4:
        return (s0[..., j] & 63).astype(np.float32), (s1[..., j] & 63).astype(np.float32)
    sc = (s2[..., j - 4] & 15) | ((s0[..., j - 4] >> 6) << 4)
    m = (s2[..., j - 4] >> 4) | ((s1[..., j - 4] >> 6) << 4)
    return sc.astype(np.float32), m.astype(np.float32)


def _dot_q4_k(W, x, rows, n):
    b = _blocks(W, rows, n, 256, 144)
    d, dmin = _f16_at(b, 0), _f16_at(b, 2)
    xs = x.reshape(-1, 256)
    acc = np.zeros(b.shape[:2], dtype=np.float32)
    for part in range(8):                          # the eight lanes of a super-block
        k, l0 = part >> 1, 16 * (part & 1)
        q = b[..., 16 + 16 * part: 32 + 16 * part]                        # its 16 bytes of codes
        xl, xh = xs[:, 64 * k + l0: 64 * k + l0 + 16], xs[:, 64 * k + 32 + l0: 64 * k + 48 + l0]
        sl = ((q & 15).astype(np.float32) * xl).sum(-1)
        sh = ((q >> 4).astype(np.float32) * xh).sum(-1)
        (sc1, m1), (sc2, m2) = _q4_k_scale_min(b, 2 * k), _q4_k_scale_min(b, 2 * k + 1)
        acc += (d * sc1) * sl - (dmin * m1) * xl.sum(-1) + (d * sc2) * sh - (dmin * m2) * xh.sum(-1)
    return acc.sum(1)


def _dot_q6_k(W, x, rows, n):
    b = _blocks(W, rows, n, 256, 210)
    d = _f16_at(b, 208)
    xs = x.reshape(-1, 256)
    acc = np.zeros(b.shape[:2], dtype=np.float32)
    for part in range(8):                          # the eight lanes of a super-block
        h, l0 = part >> 2, 8 * (part & 3)
        A = b[..., 64 * h + l0: 64 * h + l0 + 8]                  # ql[l]
        B = b[..., 64 * h + 32 + l0: 64 * h + 40 + l0]            # ql[l + 32]
        H = b[..., 128 + 32 * h + l0: 136 + 32 * h + l0]          # qh[l]
        sc = b[..., 192 + 8 * h: 200 + 8 * h].view(np.int8).astype(np.float32)
        for quarter in range(4):
            lo = B if quarter & 1 else A
            shift = 4 if quarter & 2 else 0
            q = (((lo >> shift) & 15) | (((H >> (2 * quarter)) & 3) << 4)).astype(np.int32) - 32
            t = (q.astype(np.float32) * xs[:, 128 * h + 32 * quarter + l0: 128 * h + 32 * quarter + l0 + 8]).sum(-1)
            acc += (d * sc[..., (l0 >> 4) + 2 * quarter]) * t
    return acc.sum(1)


def _dot_int8(Q, s, x, rows, n):
    assert Q.shape == (int(rows), int(n)) and Q.dtype == np.int8 and s.shape == (int(rows),)
    return (Q.astype(np.float32) @ x) * s


def _norm_x(x, g, n, eps):
    return x / np.sqrt((x * x).mean() + np.float32(eps)) * g


def _gemv_packed(dot):
    def run(W, x, y, rows, n, acc):
        assert x.shape == (int(n),) and y.shape == (int(rows),)
        r = dot(W, x, rows, n)
        y[...] = y + r if int(acc) else r
    return run


def _gemv_norm_packed(dot):
    def run(W, x, g, y, rows, n, eps):
        assert x.shape == g.shape == (int(n),) and y.shape == (int(rows),)
        y[...] = dot(W, _norm_x(x, g, n, eps), rows, n)
    return run


def gemv_int8(Q, s, x, y, rows, n, acc):
    assert x.shape == (int(n),) and y.shape == (int(rows),)
    r = _dot_int8(Q, s, x, rows, n)
    y[...] = y + r if int(acc) else r


def gemv_norm_int8(Q, s, x, g, y, rows, n, eps):
    y[...] = _dot_int8(Q, s, _norm_x(x, g, n, eps), rows, n)


def _row_ids(ids, n_rows):
    return np.asarray(ids).reshape(-1)[: int(n_rows)].astype(np.int64)


def _store(out, w, f16: bool):
    flat = out.reshape(-1)
    flat[: w.size] = w.astype(np.float16).view(np.uint16).reshape(-1) if f16 else w.reshape(-1)


def _deq_q8_0(W, ids, n):
    j = np.arange(n)
    b = W.reshape(W.shape[0], n // 32, 34)[_row_ids(*ids)]
    d = _f16_at(b, 0)[:, j // 32]
    return d * b[:, j // 32, 2 + j % 32].view(np.int8).astype(np.float32)


def _deq_q4_k(W, ids, n):
    j = np.arange(n)
    b = W.reshape(W.shape[0], n // 256, 144)[_row_ids(*ids)]
    sb, jj = j // 256, j % 256
    k, hi, l = jj // 64, (jj % 64) // 32, jj % 32
    scm = [_q4_k_scale_min(b, i) for i in range(8)]
    sc = np.stack([a for a, _ in scm], -1)[:, sb, 2 * k + hi]
    m = np.stack([c for _, c in scm], -1)[:, sb, 2 * k + hi]
    byte = b[:, sb, 16 + 32 * k + l]
    q = np.where(hi == 1, byte >> 4, byte & 15).astype(np.float32)
    return (_f16_at(b, 0)[:, sb] * sc) * q - _f16_at(b, 2)[:, sb] * m


def _deq_q6_k(W, ids, n):
    j = np.arange(n)
    b = W.reshape(W.shape[0], n // 256, 210)[_row_ids(*ids)]
    sb, jj = j // 256, j % 256
    h, quarter, l = jj // 128, (jj % 128) // 32, jj % 32
    lo = b[:, sb, 64 * h + 32 * (quarter & 1) + l]
    hi = (b[:, sb, 128 + 32 * h + l] >> (2 * quarter)) & 3
    q = (np.where(quarter & 2, lo >> 4, lo) & 15 | (hi << 4)).astype(np.int32) - 32
    sc = b[:, sb, 192 + 8 * h + 2 * quarter + l // 16].view(np.int8).astype(np.float32)
    return (_f16_at(b, 208)[:, sb] * sc) * q.astype(np.float32)


def _dequant(deq, f16: bool):
    def run(W, ids, out, n_rows, n):
        _store(out, deq(np.asarray(W), (ids, n_rows), int(n)), f16)
    return run


def _dequant_int8(f16: bool):
    def run(Q, s, ids, out, n_rows, n):
        r = _row_ids(ids, n_rows)
        _store(out, Q[r].astype(np.float32) * s[r][:, None], f16)
    return run


# ------------------------------------------------------------------ shared by both GPU test files
PACKED = {"Q8_0": "q8_0", "Q4_K": "q4_k", "Q6_K": "q6_k"}
F16_AT = {"Q8_0": [0], "Q4_K": [0, 2], "Q6_K": [208]}   # where each block keeps its fp16 scales


def random_gguf(kind: str, rows: int, n: int, seed: int = 0):
    """Random bytes in every code/scale/min field, finite fp16 scales (std 0.01)."""
    from llama_np.weights import quants
    rng = np.random.default_rng(seed)
    block, nbytes, _ = quants.TYPES[kind]
    raw = rng.integers(0, 256, size=(rows * (n // block), nbytes), dtype=np.uint8)
    for off in F16_AT[kind]:
        raw[:, off:off + 2] = (rng.standard_normal(len(raw)) * 0.01).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return quants.GGUFWeight(raw.reshape(rows, -1), kind, n)


def llamacpp_matrices(kind: str) -> list:
    """Every matrix of type ``kind`` in the llama.cpp-quantized fixtures."""
    from llama_np.weights import gguf as gguf_loader
    from tests.fixtures.llamacpp import make_fixtures as llamacpp
    out = []
    for ftype in ("Q4_K_M", "Q6_K", "Q8_0"):
        _, flat, _ = gguf_loader.load(str(llamacpp.path(ftype)), tokenizer=False, progress=False, dtype="packed")
        out += [w for w in flat.values() if getattr(w, "kind", None) == kind]
    assert out, kind
    return out


def assert_fp32_sum(y, w32, x, ulps: float = 16):
    """y = w32 @ x up to float32 summation order: within ``ulps`` float32 ulps of each row's
    scale sum_j |w_j x_j| (the sum's rounding grows with that, not with |y|). A single wrong weight
    moves y by |w_j x_j|, about 1/n of that scale: thousands of ulps for these n. Measured: at most
    0.3 (Q8_0), 0.6 (Q4_K), 0.5 (Q6_K) ulps on these matrices."""
    ref = w32.astype(np.float64) @ x.astype(np.float64)
    scale = np.abs(w32).astype(np.float64) @ np.abs(x).astype(np.float64)
    err = np.abs(y - ref) / (scale * np.finfo(np.float32).eps)
    assert err.max() <= ulps, f"{err.max():.1f} ulps of the row's sum of |w x|"


PACKED_DOTS = {"q8_0": _dot_q8_0, "q4_k": _dot_q4_k, "q6_k": _dot_q6_k}
DEQUANTS = {"q8_0": _deq_q8_0, "q4_k": _deq_q4_k, "q6_k": _deq_q6_k}


KERNELS = {
    "gemv_bf16": _gemv("bf16"), "gemv_f16": _gemv("f16"), "gemv_f32": _gemv("f32"),
    "gemv_norm_bf16": _gemv_norm("bf16"), "gemv_norm_f16": _gemv_norm("f16"), "gemv_norm_f32": _gemv_norm("f32"),
    "argmax_next": argmax_next,
    "widen_bf16": _widen_kernel("bf16"), "widen_f16": _widen_kernel("f16"), "bf16_to_f16": bf16_to_f16,
    "rms_norm": rms_norm, "embed_bf16": _embed("bf16"), "embed_f16": _embed("f16"), "embed_f32": _embed("f32"),
    "attn_decode": attn_decode, "swiglu": swiglu,
    "gemv_int8": gemv_int8, "gemv_norm_int8": gemv_norm_int8,
    "dequant_int8_f32": _dequant_int8(False), "dequant_int8_f16": _dequant_int8(True),
}
for _kind, _dot in PACKED_DOTS.items():
    KERNELS[f"gemv_{_kind}"] = _gemv_packed(_dot)
    KERNELS[f"gemv_norm_{_kind}"] = _gemv_norm_packed(_dot)
    KERNELS[f"dequant_{_kind}_f32"] = _dequant(DEQUANTS[_kind], False)
    KERNELS[f"dequant_{_kind}_f16"] = _dequant(DEQUANTS[_kind], True)
def _gemm_few(gemv):
    """GEMV_KERNELS' gemm_few_<kind>(*data, X, Y, rows, n, T): Y[t] = W @ X[t], by the kind's gemv."""
    def run(*args):
        *data, X, Y, rows, n, T = args
        T, rows, n = int(T), int(rows), int(n)
        assert X.size == T * n and Y.size == T * rows, (X.shape, Y.shape, T, rows, n)
        for t in range(T):
            y = np.zeros(rows, np.float32)
            gemv(*data, X.reshape(T, n)[t], y, np.int32(rows), np.int32(n), np.int32(0))
            Y.reshape(T, rows)[t] = y
    return run


for _kind in ("bf16", "f16", "f32", "int8", *PACKED_DOTS):
    KERNELS[f"gemv_norm_swiglu_{_kind}"] = _gemv_norm_swiglu(KERNELS[f"gemv_norm_{_kind}"])
    KERNELS[f"gemm_few_{_kind}"] = _gemm_few(KERNELS[f"gemv_{_kind}"])


def check_launch(name: str, grid, block, args, shared_mem: int) -> None:
    """What the emulated kernels cannot see but a CUDA launch depends on: the grid and shared memory.
    A matrix-vector kernel needs one warp per row, exactly enough blocks (rows, or F for
    gemv_norm_swiglu, is the third argument from the end); attn_decode one block per (head, part)
    and its shared memory (the rotated query, a chunk of scores, 4 floats a thread)."""
    threads = int(np.prod(grid)) * int(block[0])
    if name.startswith("gemv_"):
        rows = int(args[-3])
        assert len(grid) == 1 and threads >= 32 * rows > threads - int(block[0]), (name, grid, block, rows)
    elif name == "attn_decode":
        pm, H, hd, chunk = args[6], int(args[11]), int(args[13]), int(args[17])
        max_len = int(args[14])
        assert tuple(grid) == (H, pm.size // H) and (pm.size // H) * chunk >= max_len, (grid, H, pm.size, chunk)
        assert int(block[0]) % (hd // 4) == 0 and hd // 4 <= 32, (block, hd)
        assert shared_mem >= 4 * (hd + -(-chunk // 4) * 4 + 4 * int(block[0])), shared_mem


class Recorder:
    """Shared state of the fake device: whether a stream is capturing, and what it recorded."""

    def __init__(self):
        self.capturing = None       # a list while capturing
        self.launches = 0           # kernels actually run (not recorded)


def fake_kernel(rec: Recorder, cuda=None):
    """``llama_np.gpu.kernel`` for the fake device: each launch runs the kernel's NumPy emulation,
    or, with ``cuda`` (llama_np/kernels/cpu.py), the kernel's CUDA source compiled for the CPU; inside
    a graph capture it is recorded instead, with its arguments, and run at each replay."""
    def kernel(name):
        fn = KERNELS[name] if cuda is None else cuda.kernel(name)

        def launch(grid, block, args, shared_mem=0, stream=None):
            assert all(isinstance(a, (np.ndarray, np.generic)) for a in args), \
                f"{name}: scalars must be NumPy int32/float32 (CuPy passes Python ints as 64-bit)"
            check_launch(name, grid, block, args, shared_mem)
            run = fn if cuda is None else (lambda *a: fn(grid, block, a, shared_mem=shared_mem))
            if rec.capturing is not None:
                rec.capturing.append((run, args))
            else:
                rec.launches += 1
                run(*args)
        return launch
    return kernel


class DeviceArray(np.ndarray):
    """A NumPy array with CuPy's ``set`` (host -> device copy), as cupy.zeros returns."""

    def set(self, arr, stream=None):
        self[...] = arr


def _empty(shape, dtype=np.float32):
    """Uninitialised device memory: NaN here, so a kernel that reads what nothing wrote fails."""
    a = np.empty(shape, dtype=dtype)
    if a.dtype.kind == "f":
        a.fill(np.nan)
    return a.view(DeviceArray)


def fake_cupy(rec: Recorder):
    """numpy, plus the bits of cupy.cuda that llama_np.gpu touches."""

    class Graph:
        def __init__(self, calls):
            self.calls = calls

        def launch(self, stream=None):
            for fn, args in self.calls:
                rec.launches += 1
                fn(*args)

    class Stream:
        def __init__(self, non_blocking=False):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def synchronize(self):
            pass

        def begin_capture(self, mode=None):
            rec.capturing = []

        def end_capture(self):
            calls, rec.capturing = rec.capturing, None
            return Graph(calls)

    class RandomState:
        def __init__(self, seed=0):
            self.rng = np.random.default_rng(seed)

        def standard_normal(self, shape, dtype=np.float32):
            return self.rng.standard_normal(shape, dtype=dtype)

        def randint(self, low, high=None, size=None, dtype=np.int64):
            return self.rng.integers(low, high, size=size, dtype=dtype)

    class Device:
        def synchronize(self):
            pass

    class Event:
        t = 0.0

        def record(self, stream=None):
            self.t = time.perf_counter()

        def synchronize(self):
            pass

    pool = types.SimpleNamespace(free_all_blocks=lambda: None, total_bytes=lambda: 0)
    cp = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    cp.__version__ = "emulated"
    cp.zeros = lambda *a, **k: np.zeros(*a, **k).view(DeviceArray)
    cp.empty = _empty
    cp.asnumpy = lambda a: np.array(a, copy=True)   # a copy, as from the device
    cp.random = types.SimpleNamespace(RandomState=RandomState)
    cp.get_default_memory_pool = lambda: pool
    cp.cuda = types.SimpleNamespace(
        Stream=Stream, Device=Device, Event=Event,
        get_elapsed_time=lambda a, b: 1e3 * (b.t - a.t),
        runtime=types.SimpleNamespace(getDeviceProperties=lambda i: {"name": b"NumPy emulation"}))
    return cp


# ------------------------------------------------------------------ shared by both GPU test files
def assert_within_fp16_prefill_bound(out, ref):
    """The tensor-core prefill's bound: logits within 2e-2 of the largest |logit| of NumPy on the
    same 16-bit weights, and the same top token in every row. Its only extra rounding is the
    activations (and each product's output) to fp16, 2^-11 relative, mostly cancelling in sums."""
    out, ref = np.asarray(out), np.asarray(ref)
    assert np.abs(out - ref).max() <= 2e-2 * np.abs(ref).max(), np.abs(out - ref).max()
    np.testing.assert_array_equal(out.argmax(-1), ref.argmax(-1))


def check_against_transformers(gpu, name: str) -> None:
    """The GPU path (model code and Decoder) on tiny model ``name`` with float32 weights vs
    transformers' logits committed in course/fixtures/tiny (made by make_fixtures.py), within
    REFERENCE_ULPS float32 ulps at the logits' scale (tests/tolerance.py).
    Runs on the real GPU (tests/test_gpu.py) or on this emulation (tests/test_gpu_emulated.py)."""
    from llama_np.backend import to_numpy
    from course.fixtures.tiny import make_fixtures
    from tests.tolerance import REFERENCE_ULPS, assert_close
    from course.fixtures.tiny.configs import config, make_weights
    fx = np.load(make_fixtures.HERE / f"{name}.npz")
    cfg, ids = config(name), fx["ids"]
    dev = gpu.upload(make_weights(name), cfg, "float32")
    assert_close(gpu.forward_gpu(dev, cfg, ids), fx["logits"], REFERENCE_ULPS)
    n0 = len(ids) // 3
    dec = gpu.Decoder(dev, cfg, max_len=len(ids))
    host = lambda a: np.array(to_numpy(a))      # a copy: the Decoder reuses its logits buffer  # noqa: E731
    rows = [host(dec.prefill(ids[:n0]))] + [host(dec.step(int(t))) for t in ids[n0:]]
    assert_close(np.stack(rows), fx["logits"][n0 - 1:], REFERENCE_ULPS)


def check_packed_fixture(gpu, ftype: str, host=np.asarray) -> None:
    """A tiny model quantized by llama.cpp itself (tests/fixtures/llamacpp/tiny-<ftype>.gguf),
    uploaded packed (no widening), against llama_np's NumPy path on the same packed weights
    (``GGUFWeight.matmul``: quants.dequantize, checked bit for bit against the ``gguf`` package,
    then BLAS): the model code's prefill and the Decoder's steps within 1e-3 of the logits' scale,
    and the same greedy tokens. ``host`` brings an array back (cupy.asnumpy on a GPU).
    Runs on the real GPU (tests/test_gpu.py) or on this emulation (tests/test_gpu_emulated.py)."""
    from llama_np.kv_cache import new_cache
    from llama_np.model import forward, nest
    from llama_np.weights import gguf as gguf_loader
    from tests.fixtures.llamacpp import make_fixtures as mf
    cfg, flat, _ = gguf_loader.load(str(mf.path(ftype)), tokenizer=False, progress=False, dtype="packed")
    ids = [int(t) for t in mf.IDS]
    params = nest(dict(flat), cfg)
    ref = forward(params, cfg, ids)
    cache, want = new_cache(cfg, len(ids) + 8), []
    logits = forward(params, cfg, ids[:8], 0, cache, last_only=True)
    for i in range(8):
        want.append(int(np.argmax(logits[-1])))
        logits = forward(params, cfg, [want[-1]], 8 + i, cache)
    dev = gpu.upload(flat, cfg)
    kinds = {getattr(p, "kind", None) for layer in dev["layers"] for p in layer.values()}
    assert kinds & {"q8_0", "q4_k", "q6_k"}, kinds          # uploaded packed, not widened
    tol = 1e-3 * float(np.abs(ref).max())
    out = host(gpu.forward_gpu(dev, cfg, ids))
    assert np.abs(out - ref).max() <= tol, (ftype, np.abs(out - ref).max(), tol)
    n0 = len(ids) // 3
    dec = gpu.Decoder(dev, cfg, max_len=len(ids) + 8)
    rows = [np.array(host(dec.prefill(ids[:n0])))] + [np.array(host(dec.step(int(t)))) for t in ids[n0:]]
    assert np.abs(np.stack(rows) - ref[n0 - 1:]).max() <= tol, (ftype, np.abs(np.stack(rows) - ref[n0 - 1:]).max())
    assert gpu.Decoder(dev, cfg, max_len=len(ids) + 8).greedy(ids[:8], 8) == want
