"""Weights that stay small in memory: 16-bit (bf16/fp16) memory maps and int8 with scales.

Llama 3 8B holds 8.0 G parameters: 16 GB in bf16, 32 GB in float32. A 24 GiB machine can only
run it if the weights stay 16-bit and are widened to float32 *a block of rows at a time*,
right where the matrix product needs them:

    for each block of rows of W (out, in), ~1 MB once widened:
        buf  <- float32(W[rows])          # reused every time; still in the L2 cache for BLAS
        y[:, rows] = x @ buf.T            # BLAS on a block that sits in the CPU cache

NumPy has no BLAS for 16-bit floats (an fp16 matrix-vector product ran 36x slower than fp32
here), so computing in float32 is also the fast way. The weights are read once per token:
decode speed is bounded by how fast the machine streams them (docs/design.md §5). Two
threads widen different halves of the rows at the same time; NumPy releases the GIL inside
ufuncs and BLAS calls, so the threads really run in parallel.

bfloat16 is the top half of a float32: same sign and exponent, 7 instead of 23 mantissa bits.
Widening it is exact: ``(raw.astype(np.uint32) << 16).view(np.float32)``.

int8 (optional): each row is scaled so its largest magnitude maps to 127, rounded, and the scale
kept (per-row, "weight-only" quantisation). Half the bytes of bf16, so about twice the speed,
at a small cost in accuracy (see tests/test_packed.py for the logit error it causes).

Every packed weight has ``is_packed = True``, ``shape``, ``matmul(x)`` (= x @ W.T, float32) and
``rows(ids)`` (= W[ids], float32); ``llama_np.linear`` dispatches to them.
"""
from __future__ import annotations

import ctypes
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BLOCK_ROWS = 256   # rows at a time for whole-matrix conversions (to_float32)
# float32 bytes widened at a time in a product: small enough that the widened block is still in
# the core's L2 cache (2 MB here) when BLAS reads it, large enough that NumPy's per-call
# overhead (a few microseconds) stays small next to the work. Override: $LLAMA_NP_BLOCK_BYTES.
BLOCK_BYTES = int(os.environ.get("LLAMA_NP_BLOCK_BYTES", 1 << 20))


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """Raw bfloat16 bits (uint16, any shape) -> float32, exactly (bf16 is a truncated float32)."""
    return (np.asarray(raw).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> raw bfloat16 bits (uint16), rounding to nearest even, as torch does."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), out)


# ----------------------------------------------------------------------------- threads
def _openblas_set_local():
    """OpenBLAS's per-thread thread count setter, or None. BLAS must run single-threaded inside
    our worker threads: two OpenBLAS thread teams fighting over 2 cores ran 5-10x slower here."""
    try:
        maps = open("/proc/self/maps").read()
    except OSError:
        return None
    for path in sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", maps))):
        fn = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None)
        if fn is not None:
            fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
            return fn
    return None


def _init_worker():
    fn = _openblas_set_local()
    if fn is not None:
        fn(1)


_local = threading.local()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def n_threads() -> int:
    """Worker threads for packed products: $LLAMA_NP_THREADS, else the number of CPUs."""
    return max(1, int(os.environ.get("LLAMA_NP_THREADS", 0) or os.cpu_count() or 1))


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(n_threads(), thread_name_prefix="llama_np", initializer=_init_worker)
        return _pool


def _buffer(n_words: int) -> np.ndarray:
    """This thread's reusable 32-bit scratch buffer, at least n_words long. Allocated once per
    thread: a fresh multi-MB array per block would page-fault its memory in every time."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < n_words:
        buf = _local.buf = np.zeros(n_words, dtype=np.uint32)
    return buf[:n_words]


def _split(n_rows: int, parts: int, block: int):
    """Cut 0..n_rows into ``parts`` contiguous ranges aligned to ``block`` rows."""
    n_blocks = -(-n_rows // block)
    per = -(-n_blocks // parts)
    return [(i * per * block, min((i + 1) * per * block, n_rows))
            for i in range(parts) if i * per * block < n_rows]


# ----------------------------------------------------------------------------- weights
class PackedWeight:
    """Base: a (out, in) matrix stored compactly. Subclasses fill ``_widen(r0, r1, out)``."""
    is_packed = True
    kind = "?"

    def __init__(self, data: np.ndarray, out_perm: np.ndarray | None = None):
        if data.ndim != 2:
            raise ValueError(f"packed weights are matrices, got shape {data.shape}")
        self.data = data.view(np.ndarray)   # a plain view: np.memmap slicing has overhead
        # Optional output-row order: y = (x @ W_stored.T)[:, out_perm]. Hugging Face stores q/k
        # rows permuted (rope.hf_to_meta); reordering 4096 outputs is free, reordering 16 GB of
        # memory-mapped rows at load time is not.
        self.out_perm = out_perm

    @property
    def shape(self):
        return self.data.shape

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def _widen(self, r0: int, r1: int, out: np.ndarray) -> np.ndarray:
        """Write float32 rows r0:r1 into ``out`` (a uint32 scratch buffer) and return them as a
        (r1 - r0, in) float32 view."""
        raise NotImplementedError

    def _scale(self, y: np.ndarray, r0: int, r1: int) -> None:
        """Scale outputs r0:r1 of ``y`` (T, r1 - r0) by per-row scales (int8); none for 16 bits."""

    def _run(self, x: np.ndarray, y: np.ndarray, r0: int, r1: int, block: int) -> None:
        n_in = self.shape[1]
        buf = _buffer(block * n_in)
        for a in range(r0, r1, block):
            b = min(a + block, r1)
            w = self._widen(a, b, buf[: (b - a) * n_in])
            np.matmul(x, w.T, out=y[:, a:b])
            self._scale(y[:, a:b], a, b)

    def _plan(self, x2: np.ndarray, y: np.ndarray):
        """How ``matmul`` computes y = x2 @ W.T: (run(r0, r1), which fills y[:, r0:r1], and the
        row alignment of the threads' ranges). Here: W widened ``block`` rows at a time."""
        # Prefill (many tokens) is compute-bound: larger blocks give BLAS more work per call.
        block = max(8, BLOCK_BYTES // (4 * self.shape[1])) * (1 if x2.shape[0] < 16 else 4)
        return (lambda r0, r1: self._run(x2, y, r0, r1, block)), block

    def matmul(self, x: np.ndarray) -> np.ndarray:
        """x: (T, in) float32 -> x @ W.T: (T, out) float32, the rows split between the threads
        and computed as ``_plan`` says (by default W widened block by block)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        squeeze = x.ndim == 1
        x2 = x.reshape(-1, x.shape[-1])
        n_out, n_in = self.shape
        if x2.shape[1] != n_in:
            raise ValueError(f"matmul: x has {x2.shape[1]} features, weight {self.shape} expects {n_in}")
        y = np.empty((x2.shape[0], n_out), dtype=np.float32)
        run, align = self._plan(x2, y)
        futures = [_get_pool().submit(run, r0, r1) for r0, r1 in _split(n_out, n_threads(), align)]
        for f in futures:
            f.result()
        if self.out_perm is not None:
            y = y[:, self.out_perm]
        return y.reshape(n_out) if squeeze else y

    def rows(self, ids) -> np.ndarray:
        """Embedding lookup: W[ids] as float32, (T, in). Only those rows are read from disk."""
        if self.out_perm is not None:
            raise ValueError("rows() of a row-permuted weight is not supported")
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        n_in = self.shape[1]
        out = np.empty((len(ids), n_in), dtype=np.float32)
        buf = _buffer(n_in)
        for j, i in enumerate(ids):   # a handful of ids: one row each
            out[j] = self._widen(int(i), int(i) + 1, buf)[0]
            self._scale(out[j:j + 1].T, int(i), int(i) + 1)
        return out

    def to_float32(self) -> np.ndarray:
        """The whole matrix as float32, in Meta's row order (tests, GPU upload; 2x the bf16 bytes)."""
        n_out, n_in = self.shape
        w = np.empty((n_out, n_in), dtype=np.float32)
        buf = _buffer(BLOCK_ROWS * n_in)
        for a in range(0, n_out, BLOCK_ROWS):
            b = min(a + BLOCK_ROWS, n_out)
            w[a:b] = self._widen(a, b, buf[: (b - a) * n_in])
            self._scale(w[a:b].T, a, b)
        return w[self.out_perm] if self.out_perm is not None else w

    def __repr__(self):
        return f"{type(self).__name__}(shape={self.shape}, kind={self.kind}, {self.nbytes / 2**20:.1f} MiB)"


class BF16Weight(PackedWeight):
    """Raw bfloat16 bits (uint16), typically a memory map of the checkpoint file itself.

    Widening is the formula above, ``raw << 16`` in 32 bits, written by one ufunc call straight
    into the reused buffer (no temporary). We also tried a cleverer version (two bf16 values
    per 32-bit word, widened with a contiguous shift and a mask) that won in a cache-resident
    micro-benchmark but lost by ~30 % in the real product; measure before you optimise.
    """
    kind = "bf16"

    def _widen(self, r0, r1, out):
        w = out.reshape(r1 - r0, self.data.shape[1])
        np.left_shift(self.data[r0:r1], 16, out=w, dtype=np.uint32)
        return w.view(np.float32)

    def rows(self, ids) -> np.ndarray:
        if self.out_perm is not None:
            raise ValueError("rows() of a row-permuted weight is not supported")
        return bf16_to_f32(self.data[np.asarray(ids, dtype=np.int64).reshape(-1)])

    def to_float32(self) -> np.ndarray:
        w = bf16_to_f32(self.data)
        return w[self.out_perm] if self.out_perm is not None else w


class F16Weight(PackedWeight):
    """IEEE float16 (Llama 2's Hugging Face checkpoints): widened by NumPy's cast."""
    kind = "f16"

    def _widen(self, r0, r1, out):
        w = out.view(np.float32).reshape(r1 - r0, self.data.shape[1])
        np.copyto(w, self.data[r0:r1])
        return w


class Int8Weight(PackedWeight):
    """int8 codes q (out, in) and float32 scales s (out,): W ~= q * s[:, None]."""
    kind = "int8"

    def __init__(self, q: np.ndarray, scales: np.ndarray, out_perm=None):
        super().__init__(q, out_perm)
        self.scales = scales.astype(np.float32)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.scales.nbytes)

    def _widen(self, r0, r1, out):
        w = out.view(np.float32).reshape(r1 - r0, self.data.shape[1])
        np.copyto(w, self.data[r0:r1])
        return w

    def _scale(self, y, r0, r1):
        # x @ (q * s).T == (x @ q.T) * s: scale the few outputs, not the many weights.
        y *= self.scales[r0:r1]


def quantize_int8(w, block_rows: int = 1024):
    """Per-row symmetric int8: s = max|W_row| / 127, q = round(W / s). w: (out, in) float32,
    raw bf16 bits (uint16) or float16; read ``block_rows`` rows at a time, so a memory-mapped
    16-bit tensor is never widened whole. Returns (q int8 (out, in), s float32 (out,))."""
    n_out, n_in = w.shape
    q = np.empty((n_out, n_in), dtype=np.int8)
    s = np.empty(n_out, dtype=np.float32)

    def work(r0, r1):
        for a in range(r0, r1, block_rows):
            b = min(a + block_rows, r1)
            blk = bf16_to_f32(w[a:b]) if w.dtype == np.uint16 else np.array(w[a:b], dtype=np.float32)
            amax = np.maximum(blk.max(axis=1), -blk.min(axis=1))   # max |w| without an abs() copy
            scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
            blk *= (np.float32(1.0) / scale)[:, None]
            q[a:b] = np.rint(blk, out=blk)
            s[a:b] = scale

    # Quantising 8 G weights takes a while: both cores (ufuncs release the GIL).
    futures = [_get_pool().submit(work, r0, r1) for r0, r1 in _split(n_out, n_threads(), block_rows)]
    for f in futures:
        f.result()
    return q, s


def to_float32(raw: np.ndarray) -> np.ndarray:
    """Any stored tensor (float32, float16, raw bf16 uint16) -> a float32 array in memory."""
    if raw.dtype == np.uint16:
        return bf16_to_f32(raw)
    return np.array(raw, dtype=np.float32)


def pack(raw: np.ndarray, mode: str = "bf16", out_perm: np.ndarray | None = None):
    """A stored matrix -> what ``linear`` multiplies with, for a load ``mode``:

    * ``"float32"``: a float32 array in memory (small models; 2x the bytes of bf16);
    * ``"bf16"``: 16-bit tensors stay 16-bit (``BF16Weight``/``F16Weight`` over the memory map);
      a float32 tensor stays float32;
    * ``"int8"``: quantised now (per-row scales), from whatever precision was stored.
    ``out_perm`` reorders the rows (Hugging Face q/k -> Meta layout).
    """
    if mode == "float32":
        w = to_float32(raw)
        return np.ascontiguousarray(w[out_perm]) if out_perm is not None else w
    if mode == "int8":
        q, s = quantize_int8(raw)
        return Int8Weight(q, s, out_perm)
    if mode != "bf16":
        raise ValueError(f"unknown weight mode {mode!r}: use float32, bf16 or int8")
    if raw.dtype == np.uint16:
        return BF16Weight(raw, out_perm)
    if raw.dtype == np.float16:
        return F16Weight(raw, out_perm)
    w = np.asarray(raw, dtype=np.float32)
    return np.ascontiguousarray(w[out_perm]) if out_perm is not None else w
