"""A NumPy stand-in for CuPy and for llama_np.gpu's CUDA kernels, so the GPU path's orchestration
(upload, buffer layouts, kernel arguments, CUDA-graph replay) is tested on machines without a GPU.

Each emulated kernel takes exactly the arguments its CUDA twin in ``llama_np.gpu.KERNELS`` takes,
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


def rms_norm(x, w, y, dim, eps):
    xr = x.reshape(-1, int(dim))
    r = 1.0 / np.sqrt((xr * xr).mean(axis=-1, keepdims=True) + np.float32(eps))
    y.reshape(-1, int(dim))[...] = xr * r * w


def _embed(kind):
    def run(E, state, x, dim):
        x[: int(dim)] = _widen(kind, E[int(state[0])])
    return run


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
    """The decode attention the two kernels below compute together: (H * hd,) float32."""
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


KERNELS = {
    "gemv_bf16": _gemv("bf16"), "gemv_f16": _gemv("f16"), "gemv_f32": _gemv("f32"),
    "gemv_norm_bf16": _gemv_norm("bf16"), "gemv_norm_f16": _gemv_norm("f16"), "gemv_norm_f32": _gemv_norm("f32"),
    "argmax_next": argmax_next,
    "widen_bf16": _widen_kernel("bf16"), "widen_f16": _widen_kernel("f16"),
    "rms_norm": rms_norm, "embed_bf16": _embed("bf16"), "embed_f16": _embed("f16"), "embed_f32": _embed("f32"),
    "rope_store": rope_store, "attn_partial": attn_partial, "attn_combine": attn_combine, "swiglu": swiglu,
}


class Recorder:
    """Shared state of the fake device: whether a stream is capturing, and what it recorded."""

    def __init__(self):
        self.capturing = None       # a list while capturing
        self.launches = 0           # kernels actually run (not recorded)


def fake_kernel(rec: Recorder):
    def kernel(name):
        fn = KERNELS[name]

        def launch(grid, block, args, shared_mem=0, stream=None):
            assert all(isinstance(a, (np.ndarray, np.generic)) for a in args), \
                f"{name}: scalars must be NumPy int32/float32 (CuPy passes Python ints as 64-bit)"
            if rec.capturing is not None:
                rec.capturing.append((fn, args))
            else:
                rec.launches += 1
                fn(*args)
        return launch
    return kernel


class DeviceArray(np.ndarray):
    """A NumPy array with CuPy's ``set`` (host -> device copy), as cupy.zeros returns."""

    def set(self, arr, stream=None):
        self[...] = arr


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

    class Device:
        def synchronize(self):
            pass

    class Event:
        t = 0.0

        def record(self, stream=None):
            self.t = time.perf_counter()

        def synchronize(self):
            pass

    pool = types.SimpleNamespace(free_all_blocks=lambda: None)
    cp = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    cp.__version__ = "emulated"
    cp.zeros = lambda *a, **k: np.zeros(*a, **k).view(DeviceArray)
    cp.asnumpy = lambda a: np.array(a, copy=True)   # a copy, as from the device
    cp.random = types.SimpleNamespace(RandomState=RandomState)
    cp.get_default_memory_pool = lambda: pool
    cp.cuda = types.SimpleNamespace(
        Stream=Stream, Device=Device, Event=Event,
        get_elapsed_time=lambda a, b: 1e3 * (b.t - a.t),
        runtime=types.SimpleNamespace(getDeviceProperties=lambda i: {"name": b"NumPy emulation"}))
    return cp


# ------------------------------------------------------------------ shared by both GPU test files
def check_against_transformers(gpu, name: str) -> None:
    """The GPU path (model code and Decoder) on tiny model ``name`` with float32 weights vs
    transformers' logits committed in course/fixtures/tiny (made by make_fixtures.py), within 1e-4.
    Runs on the real GPU (tests/test_gpu.py) or on this emulation (tests/test_gpu_emulated.py)."""
    from llama_np.backend import to_numpy
    from course.fixtures.tiny import make_fixtures
    from course.fixtures.tiny.configs import config, make_weights
    fx = np.load(make_fixtures.HERE / f"{name}.npz")
    cfg, ids = config(name), fx["ids"]
    dev = gpu.upload(make_weights(name), cfg, "float32")
    np.testing.assert_allclose(gpu.forward_gpu(dev, cfg, ids), fx["logits"], atol=1e-4, rtol=0)
    n0 = len(ids) // 3
    dec = gpu.Decoder(dev, cfg, max_len=len(ids))
    host = lambda a: np.array(to_numpy(a))      # a copy: the Decoder reuses its logits buffer  # noqa: E731
    rows = [host(dec.prefill(ids[:n0]))] + [host(dec.step(int(t))) for t in ids[n0:]]
    np.testing.assert_allclose(np.stack(rows), fx["logits"][n0 - 1:], atol=1e-4, rtol=0)
