"""The GPU path: the same Llama on an NVIDIA GPU with CuPy, close to the memory-bandwidth limit.

Two regimes, two tools:

* **Prefill** (a prompt of T tokens) is compute-bound: every weight is used T times. It runs the
  ordinary model code (``llama_np.model.forward``) on CuPy arrays. Each matrix product of 16-bit
  weights runs on the tensor cores (``PREFILL = "fp16"``, the default): the activations rounded
  to fp16, the weights as fp16 (bf16 converted, exactly for all but the tiniest), float32
  accumulation in cuBLAS. ``PREFILL = "float32"`` (or $LLAMA_NP_GPU_PREFILL=float32) widens the
  weights to float32 instead, on CUDA cores: slower, but its logits match the NumPy model on the
  same weights to float32 summation order (1e-4), which lesson 11 and the kernel tests rely on.
* **Decode** (one token) is bandwidth-bound: every weight is read once to do 2 flops, so the speed
  limit is (bytes of weights) / (HBM bandwidth): Llama 3 8B in 16 bits reads ~15 GB a token, an
  H100 SXM streams ~3.35 TB/s, so at most ~223 tokens/s. Getting near it takes three things:
  1. weights kept 16-bit on the GPU (bf16 as raw 16-bit words: CuPy has no bfloat16 dtype;
     bf16 -> float32 is ``bits << 16``, done inside the kernels);
  2. matrix-vector kernels that read the weights with wide (16-byte) loads, one warp per row
     (``gemv_*`` in llama_np/kernels/gemv.cu), instead of a generic GEMM tuned for big matrices;
  3. few launches: a decode step of Llama 3 8B is 162 kernels (5 a layer: RMSNorm fused into
     the products after it, SwiGLU into the w13 product, RoPE, the cache write and the merge of
     the attention's parts into one attention kernel); at ~5-10 us of CPU time per CuPy launch
     258 kernels (the 2026-11-27 step, 8 a layer) would cap decode near 400 tok/s and, worse,
     leave the GPU idle between kernels. ``Decoder`` records the whole step once as a CUDA graph
     and replays it with one launch. CuPy cannot capture cuBLAS in a graph, which is why decode
     uses only the hand-written kernels here (docs/design.md §6). Even in a graph each kernel
     costs a few microseconds of ramp-up and drain: small models (SmolLM2: ~2.4 us of weights a
     layer at H100 bandwidth) are bounded by how many kernels run one after another, which is
     why the 5-a-layer step fuses what it can.

Measured on an H100 80GB HBM3 (2026-11-27, benchmarks/gpu.py, Llama 3 8B shape, bf16): decode
163.4 tok/s = 82 % of the 199 tok/s HBM limit (transformers eager: 32.4). The graph took the
host-driven loop from 146 to 156 tok/s; fusing RMSNorm into the products, 139 -> 161 tok/s in an
earlier run; the on-device greedy argmax, 156 -> 163. The same step as separate CuPy array
operations (model.forward) ran 13.2 tok/s. (Those figures are of the 8-kernel step; the 5-kernel
step has not yet run on a GPU: benchmarks/gpu_session.sh measures it.)

**Quantized weights** stay packed on the GPU: GGUF's Q8_0, Q4_K and Q6_K blocks exactly as the
file stores them, and llama_np's int8 (codes and a scale per row), are uploaded as they are
(``PackedDeviceWeight``) and dequantized in registers by their own matrix-vector kernels
(llama_np/kernels/gemv_q8_0.cu, gemv_q4_k.cu, gemv_q6_k.cu, gemv_int8.cu), so Llama 3 8B Q4_K_M
takes its file's 4.9 GB of GPU memory, not 16 GB of bf16, and a decode step reads 4.6 GB instead
of 15. A prefill of more than ``FEW_TOKENS`` tokens dequantizes each such matrix a tile of rows at
a time (``PREFILL_TILE`` weights, fp16 or float32 after ``PREFILL``) into a reused scratch buffer
and multiplies the tile with cuBLAS; a shorter one runs ``gemm_few_<kind>``, dequantizing in
registers as decode does.
Which kernel a product runs is decided once, at upload, by the weight's class: the model code
calls ``matmul``/``gemv`` and never asks. (Not yet measured on a GPU: see benchmarks/gpu_session.sh.)

Importing this module never imports CuPy; everything that needs it calls ``_cp()``.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np

from . import kernels
from .backend import _cupy, to_numpy
from .kv_cache import new_cache
from .model import FUSED, flatten, forward, nest
from .rope import rope_angles, rope_frequencies
from .weights.quants import TYPES as QUANT_TYPES

#: how a prefill multiplies 16-bit weights: "fp16" (tensor cores, float32 accumulation) or
#: "float32" (exact: weights widened to float32). Rounding the activations to fp16 (11 significant
#: bits, 2^-11 relative) and the products' outputs once more moves SmolLM2's logits by far less
#: than bf16 weights do; tests bound it at 2e-2 of the largest logit, with the same greedy tokens.
#: fp16, not bf16, for the activations: 8x finer, and activations stay far inside fp16's 65504.
PREFILL = os.environ.get("LLAMA_NP_GPU_PREFILL", "fp16")
PREFILL_MODES = ("fp16", "float32")
BLOCK = 256   # threads per block in every kernel below (the reductions assume a power of two)
ATTN_CHUNK = 64   # keys per block in decode attention (attn_decode)
#: GGUF block types with kernels here, kept packed on the GPU (GGUF name -> kernel suffix). Any
#: other GGUF type (Q4_0, Q5_K, ...) is widened to the upload's 16-bit dtype instead.
GGUF_KINDS = {"Q8_0": "q8_0", "Q4_K": "q4_k", "Q6_K": "q6_k"}
#: kernel suffix -> (weights per block, bytes per block): the GGUF types' from weights/quants.py;
#: int8 is one byte a weight (rows in 16-byte loads) plus a scale a row
PACKED_BLOCKS = {**{k: QUANT_TYPES[g][:2] for g, k in GGUF_KINDS.items()}, "int8": (16, 16)}
#: weights of a packed matrix dequantized at a time in a prefill: 32 MB of fp16, 64 MB of float32
#: scratch, reused (Llama 3 8B's output head, 525 M weights, is 32 tiles)
PREFILL_TILE = 1 << 24
#: up to this many tokens a product runs ``gemm_few_<kind>`` (each warp a row, the row read from
#: memory once and from cache for the other tokens) rather than cuBLAS on a dequantized or fp16
#: copy of the whole matrix, which costs more than the product itself for a short prompt
FEW_TOKENS = 8


def _cp():
    """CuPy, checked once (``backend._cupy``). It does not select the device: the GPU functions
    here are called on every matrix product of a prefill, and must not switch ``use``'s choice."""
    return _cupy()


def decode_limit(weight_bytes_per_token: float, bandwidth_bytes_per_s: float) -> float:
    """Tokens/s if decoding did nothing but read its weights once at full bandwidth."""
    return bandwidth_bytes_per_s / weight_bytes_per_token


# ------------------------------------------------------------------------------- kernels
# The CUDA source lives in llama_np/kernels/*.cu (one file per kernel family), compiled as one
# module once per process (cupy.RawModule caches the binary on disk too).
# Scalars are passed as NumPy int32/float32: CuPy passes Python ints as 64-bit.
_module = None
_functions = {}


def kernel(name: str):
    """A compiled kernel from llama_np/kernels by name (compiled on first use, then looked up in a
    dict: asking CuPy's module for the function on every launch costs more than the launch)."""
    global _module
    f = _functions.get(name)
    if f is None:
        if _module is None:
            _module = _cp().RawModule(code=kernels.module_source(), options=("-std=c++14",))
        f = _functions[name] = _module.get_function(name)
    return f


def compile_kernels() -> None:
    """Compile (and load) every kernel now, once per process; a failure is a one-line DeviceError.
    ``backend.use("gpu")`` calls this so that no compile error surfaces in the middle of a run."""
    global _module
    if "rms_norm" in _functions:
        return
    from .backend import cuda_error
    try:
        kernel("rms_norm")   # one module: its first function compiles and loads all of them
    except Exception as e:
        _module = None       # not half-built: the next call tries again
        err = cuda_error(e)
        if err is None:
            raise
        raise err from None


def _prefill_mode() -> str:
    if PREFILL not in PREFILL_MODES:
        raise ValueError(f"unknown GPU prefill mode {PREFILL!r} (LLAMA_NP_GPU_PREFILL): use fp16 or float32")
    return PREFILL


def _grid(n: int, block: int = BLOCK) -> tuple:
    return (max(1, -(-n // block)),)


def rms_norm(x, w, eps: float = 1e-5, out=None):
    """Fused RMSNorm (one kernel launch). x: (T, dim) float32 cupy, w: (dim,) float32 -> (T, dim)."""
    cp = _cp()
    x = cp.ascontiguousarray(x, dtype=cp.float32)
    out = cp.empty_like(x) if out is None else out
    T, dim = x.reshape(-1, x.shape[-1]).shape
    kernel("rms_norm")((T,), (BLOCK,), (x, w, out, np.int32(dim), np.float32(eps)))
    return out


def device_bandwidth(n_bytes: int = 2 << 30, repeats: int = 5) -> float:
    """HBM bandwidth in bytes/s, from the best of ``repeats`` device-to-device copies of
    ``n_bytes`` (a copy reads and writes each byte: 2 * n_bytes moved)."""
    cp = _cp()
    a = cp.ones(n_bytes // 4, dtype=cp.float32)
    b = cp.empty_like(a)
    b[...] = a
    start, end = cp.cuda.Event(), cp.cuda.Event()
    best = 0.0
    for _ in range(repeats):
        start.record()
        b[...] = a
        end.record()
        end.synchronize()
        best = max(best, 2 * a.nbytes / (cp.cuda.get_elapsed_time(start, end) / 1e3))
    del a, b
    return best


# -------------------------------------------------------------------------- device weights
class _RowKernels:
    """The products of a weight on the GPU that run one warp a row (GEMV_KERNELS in
    llama_np/kernels/dtypes.cuh): ``gemv_<kind>`` and ``gemv_norm_<kind>`` (decode),
    ``gemv_norm_swiglu_<kind>`` (decode's w13) and ``gemm_few_<kind>`` (up to FEW_TOKENS tokens).
    A subclass has ``kind``, ``shape`` and ``_packed()``, the kernels' first arguments."""

    def gemv(self, x, y, accumulate: bool = False, norm=None) -> None:
        """y (+)= W @ x for one vector: x (in,), y (out,) float32, both contiguous cupy arrays.
        ``norm=(g, eps)``: y = W @ rms_norm(x, g, eps) in the same kernel (no accumulate)."""
        rows, n = self.shape
        grid, i32 = _grid(rows * 32), np.int32
        if norm is None:
            kernel("gemv_" + self.kind)(grid, (BLOCK,), (*self._packed(), x, y, i32(rows), i32(n), i32(accumulate)))
        else:
            g, eps = norm
            kernel("gemv_norm_" + self.kind)(grid, (BLOCK,), (*self._packed(), x, g, y, i32(rows), i32(n),
                                                              np.float32(eps)))

    def gemm_few(self, x2):
        """x2 @ W.T for a few tokens (T <= FEW_TOKENS): x2 (T, in) float32 -> (T, out) float32."""
        cp = _cp()
        rows, n = self.shape
        y = cp.empty((x2.shape[0], rows), dtype=cp.float32)
        kernel("gemm_few_" + self.kind)(_grid(rows * 32), (BLOCK,), (
            *self._packed(), x2, y, np.int32(rows), np.int32(n), np.int32(x2.shape[0])))
        return y

    def gemv_swiglu(self, x, a, norm, scratch=None) -> None:
        """a = silu(gate) * up, where [gate; up] = W @ rms_norm(x, g, eps), ``norm=(g, eps)``: W is
        w1 over w3 (model.FUSED's w13), a (out/2,). One kernel: each warp computes a row of gate and
        the same row of up and writes their product (``scratch`` is not needed here)."""
        rows, n = self.shape
        F, (g, eps) = rows // 2, norm
        kernel("gemv_norm_swiglu_" + self.kind)(_grid(F * 32), (BLOCK,), (
            *self._packed(), x, g, a, np.int32(F), np.int32(n), np.float32(eps)))


class DeviceWeight(_RowKernels):
    """A (out, in) matrix on the GPU, stored as ``kind`` = "bf16" (raw uint16 bits), "f16" or
    "f32". ``matmul(x)`` = x @ W.T in float32: ``gemm_few_*`` for up to FEW_TOKENS tokens, cuBLAS
    for more (fp16 on tensor cores, or widened to float32: ``PREFILL``). ``rows(ids)`` = W[ids] in
    float32 (the embedding lookup)."""
    is_packed = True

    def __init__(self, data, kind: str):
        self.data, self.kind = data, kind

    @property
    def shape(self):
        return self.data.shape

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def widen(self, data=None):
        """The matrix (or ``data``, rows of it) as float32."""
        cp = _cp()
        data = self.data if data is None else data
        if self.kind == "f32":
            return data
        out = cp.empty(data.shape, dtype=cp.float32)
        n = data.size
        kernel("widen_bf16" if self.kind == "bf16" else "widen_f16")(
            _grid(n), (BLOCK,), (cp.ascontiguousarray(data), out, np.int64(n)))
        return out

    def half(self):
        """The matrix as a float16 CuPy array (fp16: a view; bf16: converted by a kernel)."""
        cp = _cp()
        if self.kind == "f16":
            return self.data.view(cp.float16)
        out = cp.empty(self.data.shape, dtype=cp.uint16)
        kernel("bf16_to_f16")(_grid(self.data.size), (BLOCK,), (self.data, out, np.int64(self.data.size)))
        return out.view(cp.float16)

    def _packed(self) -> tuple:
        return (self.data,)

    def matmul(self, x):
        cp = _cp()
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[0] <= FEW_TOKENS and self.data.shape[1] % 8 == 0:    # decode, a short prompt
            y = self.gemm_few(x2)
        elif self.kind != "f32" and _prefill_mode() == "fp16":   # many tokens: tensor cores
            y = (x2.astype(cp.float16) @ self.half().T).astype(cp.float32)
        else:     # many tokens, exact: cuBLAS on a float32 copy of W
            y = x2 @ self.widen().T
        return y.reshape(*x.shape[:-1], self.data.shape[0])

    def rows(self, ids):
        cp = _cp()
        return self.widen(self.data[cp.asarray(np.asarray(ids, dtype=np.int64).reshape(-1))])

    def embed_launch(self, state, x):
        """(kernel, grid, args) that writes row state[0] of W, widened, into x (the Decoder's
        embedding lookup, recorded in its graph)."""
        dim = self.data.shape[1]
        return "embed_" + self.kind, _grid(dim), (self.data, state, x, np.int32(dim))


_scratch = {}


def _scratch_buffer(n: int, dtype):
    """A reused device buffer of at least n elements of dtype (the prefill's dequantized tiles):
    allocated once per process and dtype, grown when a larger tile asks for it."""
    cp = _cp()
    key = np.dtype(dtype).str
    buf = _scratch.get(key)
    if buf is None or buf.size < n:
        buf = _scratch[key] = cp.empty(n, dtype=dtype)
    return buf[:n]


class PackedDeviceWeight(_RowKernels):
    """A (out, in) matrix on the GPU kept as it was stored: ``kind`` "q8_0", "q4_k" or "q6_k"
    (GGUF blocks, ``data`` (out, bytes a row) uint8, the file's own bytes) or "int8" (``data``
    (out, in) int8 codes and ``scales`` (out,) float32). Same interface as ``DeviceWeight``:
    ``gemv``, ``gemv_swiglu`` and ``gemm_few`` dequantize in registers; ``matmul`` of more than
    FEW_TOKENS tokens dequantizes tiles of rows into a scratch buffer for cuBLAS; ``rows`` and
    ``embed_launch`` dequantize single rows (``dequant_<kind>_f32``)."""
    is_packed = True

    def __init__(self, data, kind: str, n_in: int, scales=None):
        if kind not in PACKED_BLOCKS:
            raise ValueError(f"no GPU kernels for packed weights of kind {kind!r}")
        block, nbytes = PACKED_BLOCKS[kind]
        if n_in % block or data.shape[1] != n_in // block * nbytes or (kind == "int8") != (scales is not None):
            raise ValueError(f"{kind}: packed data of shape {data.shape} does not hold rows of {n_in} weights")
        self.data, self.kind, self.n_in, self.scales = data, kind, n_in, scales

    @property
    def shape(self):
        return (self.data.shape[0], self.n_in)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes) + (int(self.scales.nbytes) if self.scales is not None else 0)

    def _packed(self) -> tuple:
        """The kernels' first arguments: the blocks (and int8's scales)."""
        return (self.data,) if self.scales is None else (self.data, self.scales)

    def dequant_launch(self, ids, out, n_rows: int):
        """(kernel, grid, args): rows ids[0:n_rows] of W into ``out`` (n_rows * in values), float32
        or fp16 after out's dtype (uint16 bits or float16 for fp16)."""
        suffix = "_f32" if out.dtype == np.float32 else "_f16"
        n = self.n_in
        return ("dequant_" + self.kind + suffix, _grid(n_rows * n),
                (*self._packed(), ids, out, np.int32(n_rows), np.int32(n)))

    def embed_launch(self, state, x):
        """(kernel, grid, args) that writes row state[0] of W, dequantized, into x."""
        return self.dequant_launch(state, x, 1)

    def _run(self, launch) -> None:
        name, grid, args = launch
        kernel(name)(grid, (BLOCK,), args)

    def rows(self, ids):
        """W[ids] as float32 (T, in): the embedding lookup of a prefill."""
        cp = _cp()
        ids = cp.asarray(np.asarray(ids, dtype=np.int32).reshape(-1))
        out = cp.empty((ids.size, self.n_in), dtype=cp.float32)
        self._run(self.dequant_launch(ids, out, int(ids.size)))
        return out

    def matmul(self, x):
        """x @ W.T in float32: ``gemm_few`` for up to FEW_TOKENS tokens; for more, tiles of
        PREFILL_TILE weights dequantized (fp16 for the tensor cores, or float32: ``PREFILL``) and cuBLAS."""
        cp = _cp()
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        x2 = x.reshape(-1, x.shape[-1])
        rows, n = self.shape
        if x2.shape[0] <= FEW_TOKENS:             # decode, a short prompt: no dequantized copy
            return self.gemm_few(x2).reshape(*x.shape[:-1], rows)
        y = cp.empty((x2.shape[0], rows), dtype=cp.float32)
        half = _prefill_mode() == "fp16"
        xh = x2.astype(cp.float16) if half else x2
        tile = max(1, min(rows, PREFILL_TILE // n))
        buf = _scratch_buffer(tile * n, cp.uint16 if half else cp.float32)
        for r0 in range(0, rows, tile):
            r1 = min(rows, r0 + tile)
            w = buf[:(r1 - r0) * n]
            self._run(self.dequant_launch(cp.arange(r0, r1, dtype=cp.int32), w, r1 - r0))
            if half:
                y[:, r0:r1] = (xh @ w.view(cp.float16).reshape(r1 - r0, n).T).astype(cp.float32)
            else:
                y[:, r0:r1] = xh @ w.reshape(r1 - r0, n).T
        return y.reshape(*x.shape[:-1], rows)

    def __repr__(self):
        return f"PackedDeviceWeight(shape={self.shape}, kind={self.kind}, {self.nbytes / 2**20:.1f} MiB)"


class DeviceStack:
    """Row blocks of different kinds stacked as one matrix: wq|wk|wv of a Q4_K_M file are Q4_K,
    Q4_K and Q6_K. ``parts`` are device weights with the same ``in``; each runs its own kernel
    into its rows of the output (same-kind neighbours are joined into one part at upload)."""
    is_packed = True
    kind = "stack"

    def __init__(self, parts):
        self.parts = list(parts)
        self.bounds, start = [], 0
        for w in self.parts:
            self.bounds.append((start, start + w.shape[0]))
            start += w.shape[0]

    @property
    def shape(self):
        return (self.bounds[-1][1], self.parts[0].shape[1])

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in self.parts)

    def gemv(self, x, y, accumulate: bool = False, norm=None) -> None:
        for w, (a, b) in zip(self.parts, self.bounds):
            w.gemv(x, y[a:b], accumulate=accumulate, norm=norm)

    def gemv_swiglu(self, x, a, norm, scratch) -> None:
        """As ``DeviceWeight.gemv_swiglu``, in two steps: each part's rows into ``scratch`` (out,),
        then the ``swiglu`` kernel (the fused kernel needs gate and up rows of one kind)."""
        F = self.shape[0] // 2
        self.gemv(x, scratch, norm=norm)
        kernel("swiglu")(_grid(F), (BLOCK,), (scratch, a, np.int32(F)))

    def matmul(self, x):
        cp = _cp()
        return cp.concatenate([w.matmul(x) for w in self.parts], axis=-1)

    def __repr__(self):
        return f"DeviceStack({', '.join(repr(w) for w in self.parts)})"


def _to_bits(w, dtype: str):
    """Host matrix (float32 array or a llama_np.weights.packed weight) -> (host array, kind)."""
    from .weights.packed import BF16Weight, F16Weight, f32_to_bf16
    if isinstance(w, BF16Weight) and dtype == "bf16":
        raw = w.data if w.out_perm is None else w.data[w.out_perm]
        return np.ascontiguousarray(raw), "bf16"
    if isinstance(w, F16Weight) and dtype == "f16":
        raw = w.data if w.out_perm is None else w.data[w.out_perm]
        return np.ascontiguousarray(raw).view(np.uint16), "f16"
    w32 = w.to_float32() if getattr(w, "is_packed", False) else np.asarray(w, dtype=np.float32)
    if dtype == "bf16":
        return f32_to_bf16(w32), "bf16"
    if dtype == "f16":
        return w32.astype(np.float16).view(np.uint16), "f16"
    return np.ascontiguousarray(w32), "f32"


class Packed(NamedTuple):
    """A matrix to upload as stored (``PackedDeviceWeight``): kernel kind, the packed data (host or
    device), the number of weights a row, int8's scales."""
    kind: str
    data: object
    n_in: int
    scales: object = None


def _stored_form(w, kind: str, packed: bool = True):
    """Host matrix -> what ``assemble`` uploads: a ``Packed`` for GGUF blocks with kernels here and
    int8 weights (when ``packed``), else ``kind`` bits (``_to_bits``)."""
    from .weights.packed import Int8Weight
    from .weights.quants import GGUFWeight
    perm = getattr(w, "out_perm", None)
    if packed and isinstance(w, GGUFWeight) and w.kind in GGUF_KINDS:
        return Packed(GGUF_KINDS[w.kind], w.data if perm is None else w.data[perm], w.n_in)
    if packed and isinstance(w, Int8Weight):
        q, s = (w.data, w.scales) if perm is None else (w.data[perm], w.scales[perm])
        return Packed("int8", q, q.shape[1], s)
    return _to_bits(w, kind)[0]


def upload(params: dict, cfg, dtype: str = "bf16", packed: bool = True) -> dict:
    """Weights (flat or nested, as loaded on the host) -> nested weights on the GPU, uploaded once.

    Matrices become ``DeviceWeight``s in ``dtype`` ("bf16", "f16" or "float32"), except, with
    ``packed`` (the default), GGUF Q8_0/Q4_K/Q6_K matrices and int8 ones, which go up as stored
    (``PackedDeviceWeight``: no widening, the file's bytes). wq|wk|wv and w1|w3 are stacked
    (``model.FUSED``) so a decode step reads x once per stack (a stack of mixed kinds is a
    ``DeviceStack``); norms stay float32. Only plain Llama layers (no mixture of experts).
    """
    kind = {"bf16": "bf16", "fp16": "f16", "f16": "f16", "float32": "f32", "f32": "f32"}.get(dtype)
    if kind is None:
        raise ValueError(f"unknown GPU weight dtype {dtype!r}: use bf16, fp16 or float32")
    if not cfg.is_dense_llama:
        raise ValueError("the GPU path supports plain dense Llama models only (no experts, no Llama 4 attention)")
    flat = flatten(params)

    def stored(name):     # converted one tensor at a time: never a second host copy of the model
        w = flat[name]
        return _stored_form(w, kind, packed) if len(w.shape) == 2 else np.asarray(w, dtype=np.float32)
    return assemble(stored, cfg, kind)


def _device_weight(forms: list, kind: str):
    """Stored forms of row blocks (one matrix, or the parts of a stack) -> one device weight:
    neighbours of the same kind are concatenated into one weight; a stack of several kinds
    becomes a ``DeviceStack`` of them."""
    cp = _cp()
    groups = []          # [(kind of the group, [forms])]
    for f in forms:
        k = f.kind if isinstance(f, Packed) else kind
        if groups and groups[-1][0] == k:
            groups[-1][1].append(f)
        else:
            groups.append((k, [f]))

    def join(arrays):
        arrays = [cp.asarray(a) for a in arrays]
        return arrays[0] if len(arrays) == 1 else cp.concatenate(arrays)
    weights = []
    for k, fs in groups:
        if isinstance(fs[0], Packed):
            scales = None if fs[0].scales is None else join([f.scales for f in fs])
            weights.append(PackedDeviceWeight(join([f.data for f in fs]), k, fs[0].n_in, scales))
        else:
            weights.append(DeviceWeight(join(fs), k))
    return weights[0] if len(weights) == 1 else DeviceStack(weights)


def assemble(stored, cfg, kind: str) -> dict:
    """Nested params of device weights from ``stored(name)``, which returns each tensor of
    ``model.param_shapes(cfg)`` in its stored form (matrices as ``kind`` bits or float32, or a
    ``Packed``; norm gains float32), on the host or already on the GPU. Stacks wq|wk|wv and w1|w3
    as ``model.FUSED`` orders them; a tied model's head is its embedding table."""
    cp = _cp()
    out = {}
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        for fused, parts in FUSED:
            out[p + fused] = _device_weight([stored(p + n) for n in parts], kind)
        for n in ("wo", "w2"):
            out[p + n] = _device_weight([stored(p + n)], kind)
        for n in ("attention_norm", "ffn_norm"):
            out[p + n] = cp.asarray(stored(p + n), dtype=cp.float32)
    out["norm"] = cp.asarray(stored("norm"), dtype=cp.float32)
    out["tok_embeddings"] = _device_weight([stored("tok_embeddings")], kind)
    out["output"] = (out["tok_embeddings"] if cfg.tie_embeddings
                     else _device_weight([stored("output")], kind))
    return nest(out, cfg)


def device_nbytes(params: dict) -> int:
    """Bytes the uploaded weights hold on the GPU: every weight and norm once (a stack's parts,
    which the model also names wq, wk, ..., and a tied head are not counted twice)."""
    from .weights.fuse import RowSlice
    seen, total = set(), 0

    def walk(v):
        nonlocal total
        if isinstance(v, dict):
            for u in v.values():
                walk(u)
        elif isinstance(v, (list, tuple)):
            for u in v:
                walk(u)
        elif not isinstance(v, RowSlice) and id(v) not in seen:
            seen.add(id(v))
            total += int(v.nbytes)
    walk(params)
    return total


# ----------------------------------------------------------------------------- decoding
class Decoder:
    """Prefill with the model code, then decode one token at a time with fused kernels, the
    whole step recorded once as a CUDA graph and replayed.

        dec = Decoder(upload(params, cfg), cfg, max_len=640)
        logits = dec.prefill(prompt_ids)         # (vocab,) float32 on the GPU
        logits = dec.step(next_id)               # the same buffer, overwritten each step
        ids = dec.greedy(prompt_ids, 128)        # greedy, the argmax on the GPU, pipelined

    A step is 5 kernels a layer: RMSNorm + wqkv, attention (RoPE, the cache write, split-key
    attention and the merge of its parts, ``attn_decode``), wo + residual, RMSNorm + w13 + SwiGLU,
    w2 + residual; then the final RMSNorm + output head.
    ``graph=False`` launches them one by one instead (to see what the graph saves). Works for
    plain Llama configs (RoPE on every layer, no qk-norm, no chunked attention).
    """

    def __init__(self, params, cfg, max_len: int, graph: bool = True):
        cp = _cp()
        if not cfg.is_dense_llama:
            raise ValueError("Decoder supports plain Llama models (Llama 2/3); use generate() for others")
        hd = cfg.head_dim
        if hd % 4 or hd // 4 > 32 or BLOCK % (hd // 4):
            raise ValueError(f"Decoder's attention kernel needs head_dim a multiple of 4, at most 128, "
                             f"dividing {4 * BLOCK}: got {hd}")
        for name, n in (("dim", cfg.dim), ("n_heads * head_dim", cfg.n_heads * cfg.head_dim),
                        ("hidden_dim", cfg.hidden_dim)):
            if n % 8:
                raise ValueError(f"Decoder's matrix-vector kernels read 8 weights at a time: {name} = {n} "
                                 f"is not a multiple of 8")
        if cfg.n_heads % cfg.n_kv_heads:
            raise ValueError("n_heads must be a multiple of n_kv_heads")
        self.params, self.cfg, self.max_len = params, cfg, max_len
        # Uploads ran on the default stream, which our own stream does not wait for: let them land.
        cp.cuda.Device().synchronize()
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.copy_stream = cp.cuda.Stream(non_blocking=True)   # greedy(): reads tokens meanwhile
        H, KV, hd, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.dim
        with self.stream:
            self.cache = new_cache(cfg, max_len, cp)       # attn_decode writes the new row, reads them all
            cos, sin = rope_angles(rope_frequencies(hd, cfg.rope_theta, cfg.rope_scaling), np.arange(max_len), cp)
            self.cos, self.sin = cp.ascontiguousarray(cos), cp.ascontiguousarray(sin)
            self.state = cp.zeros(2, dtype=cp.int32)                # [token, its position]
            self.tokens = cp.zeros(max_len + 1, dtype=cp.int32)     # greedy: token chosen for each position
            self.x = cp.zeros(D, dtype=cp.float32)                  # the residual stream
            self.qkv = cp.zeros((H + 2 * KV) * hd, dtype=cp.float32)
            self.att = cp.zeros(H * hd, dtype=cp.float32)
            self.n_parts = -(-max_len // ATTN_CHUNK)             # attention split over the keys
            self.pm = cp.zeros(H * self.n_parts, dtype=cp.float32)
            self.pl = cp.zeros(H * self.n_parts, dtype=cp.float32)
            self.pacc = cp.zeros(H * self.n_parts * hd, dtype=cp.float32)
            self.done = cp.zeros(H, dtype=cp.int32)               # parts finished, per head (reset by the last)
            self.h13 = cp.zeros(2 * cfg.hidden_dim, dtype=cp.float32)   # only for a w13 of mixed kinds
            self.a = cp.zeros(cfg.hidden_dim, dtype=cp.float32)
            self.logits = cp.zeros(cfg.vocab_size, dtype=cp.float32)
        self.pos = 0
        self.use_graph = graph
        self.graph = self.greedy_graph = None      # recorded on first use
        self.graph_error = None
        self._launches = {}

    @staticmethod
    def _shared_bytes(hd: int, chunk: int = None) -> int:
        """attn_decode's shared memory: the rotated query (hd), a chunk of scores (padded to 4),
        then 4 floats a thread."""
        chunk = ATTN_CHUNK if chunk is None else chunk
        return (hd + -(-chunk // 4) * 4 + 4 * BLOCK) * 4

    def launches(self, greedy: bool = False) -> list:
        """The decode step as (name, launch) pairs in order: the graph records exactly these, and
        benchmarks/gpu.py times each kind on its own. ``greedy`` adds the on-device argmax."""
        cfg, P = self.cfg, self.params
        H, KV, hd, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.dim
        i32, f32 = np.int32, np.float32
        eps = cfg.norm_eps
        scale = f32(1.0 / math.sqrt(hd))

        def k(name, grid, args, shared_mem=0, block=BLOCK):   # one kernel launch, bound now, run later
            f = kernel(name)
            return lambda: f(grid, (block,), args, shared_mem=shared_mem)

        out = [("embed", k(*P["tok_embeddings"].embed_launch(self.state, self.x)))]
        for i, layer in enumerate(P["layers"]):
            out += [
                ("gemv wqkv", lambda L=layer: L["wqkv"].gemv(self.x, self.qkv, norm=(L["attention_norm"], eps))),
                ("attention", k("attn_decode", (H, self.n_parts), (
                    self.qkv, self.cos, self.sin, self.state, self.cache.k, self.cache.v, self.pm, self.pl,
                    self.pacc, self.done, self.att, i32(H), i32(KV), i32(hd), i32(self.max_len), i32(i), scale,
                    i32(ATTN_CHUNK)), self._shared_bytes(hd))),
                ("gemv wo", lambda L=layer: L["wo"].gemv(self.att, self.x, accumulate=True)),   # x += wo @ att
                ("gemv w13 swiglu", lambda L=layer: L["w13"].gemv_swiglu(self.x, self.a, (L["ffn_norm"], eps),
                                                                        self.h13)),
                ("gemv w2", lambda L=layer: L["w2"].gemv(self.a, self.x, accumulate=True)),      # x += w2 @ a
            ]
        out.append(("gemv output", lambda: P["output"].gemv(self.x, self.logits, norm=(P["norm"], eps))))
        if greedy:
            out.append(("argmax", k("argmax_next", (1,), (self.logits, i32(cfg.vocab_size), self.state,
                                                          self.tokens), block=1024)))
        return out

    def _launch(self, greedy: bool = False) -> None:
        if greedy not in self._launches:
            self._launches[greedy] = self.launches(greedy)
        for _, launch in self._launches[greedy]:
            launch()

    def _run_step(self, greedy: bool = False) -> None:
        """One decode step on our stream: the recorded graph, or (first time, or without graphs)
        the launches one by one. The first step compiles the kernels, then records them."""
        graph = self.greedy_graph if greedy else self.graph
        if graph is not None:
            graph.launch(self.stream)
            return
        self._launch(greedy)
        if self.use_graph:
            self.stream.synchronize()
            try:
                self.stream.begin_capture()
                try:
                    self._launch(greedy)
                finally:
                    graph = self.stream.end_capture()
                if greedy:
                    self.greedy_graph = graph
                else:
                    self.graph = graph
            except Exception as e:     # an old CuPy or driver: correct either way, only slower
                self.use_graph, self.graph_error = False, f"{type(e).__name__}: {e}"

    def prefill(self, ids):
        """Run the prompt through the model code (cuBLAS), filling the cache. -> (vocab,) logits."""
        ids = [int(t) for t in np.asarray(ids).reshape(-1)]
        if not 0 < len(ids) < self.max_len:
            raise ValueError(f"the prompt must have 1..{self.max_len - 1} tokens for this Decoder")
        with self.stream:
            logits = forward(self.params, self.cfg, ids, 0, self.cache, last_only=True)
            self.logits[...] = logits[0]
        self.stream.synchronize()   # see step()
        self.pos = len(ids)
        return self.logits

    def _set_state(self, token: int, pos: int) -> None:
        # read by the kernels; one host-to-device copy, ordered on our stream
        self.state.set(np.array([int(token), int(pos)], dtype=np.int32), stream=self.stream)

    def step(self, token: int):
        """Feed one token at the next position -> (vocab,) logits (a buffer reused every step)."""
        if self.pos >= self.max_len:
            raise ValueError(f"the Decoder's cache is full ({self.max_len} positions)")
        with self.stream:
            self._set_state(token, self.pos)
            self._run_step()
        # Our stream does not wait for, nor is waited for by, CuPy's default stream: without this
        # a caller reading the logits (cupy.asnumpy, argmax) on the default stream could see the
        # previous step's. The host needs the logits to choose the next token anyway.
        self.stream.synchronize()
        self.pos += 1
        return self.logits

    def greedy(self, ids, n_new: int, on_token=None) -> list:
        """Prefill, then up to ``n_new`` greedy tokens, chosen on the GPU (``argmax_next`` ends each
        recorded step and feeds the next one), so the host never waits between steps: it launches
        step k+1, then reads token k while the GPU computes. ``on_token(tok) -> True`` stops early
        (the one step already launched is wasted). Returns the tokens."""
        cp = _cp()
        ids = [int(t) for t in np.asarray(ids).reshape(-1)]
        self.prefill(ids)
        T, out, events = len(ids), [], []
        if n_new <= 0:
            return out

        def launched():                  # mark the end of the work just queued
            ev = cp.cuda.Event()
            ev.record(self.stream)
            events.append(ev)

        def read() -> bool:              # the next token, once its step is done -> stop?
            k = len(out)
            events[k].synchronize()
            with self.copy_stream:       # not behind the step now running on self.stream
                out.append(int(self.tokens[T + k]))
            return bool(on_token(out[-1])) if on_token is not None else False

        stopped = False
        with self.stream:
            self._set_state(ids[-1], T - 1)       # (last prompt token, its position) ...
            kernel("argmax_next")((1,), (1024,), (self.logits, np.int32(self.cfg.vocab_size), self.state,
                                                  self.tokens))     # ... -> (first new token, T)
            launched()
            # step k feeds token k-1 at position T+k-1 and chooses token k
            while not stopped and len(events) < n_new and T + len(events) - 1 < self.max_len:
                self._run_step(greedy=True)
                launched()
                stopped = read()
            while not stopped and len(out) < len(events):
                stopped = read()
        self.stream.synchronize()
        self.pos = T + len(out) - 1     # the last token returned has not been fed yet
        return out


def forward_gpu(params, cfg, tokens, start_pos: int = 0, cache=None, last_only: bool = False):
    """``model.forward`` on uploaded params, returning NumPy logits (for tests and the CLI)."""
    return to_numpy(forward(params, cfg, tokens, start_pos, cache, last_only))


__all__ = ["Decoder", "DeviceStack", "DeviceWeight", "Packed", "PackedDeviceWeight", "assemble", "decode_limit",
           "device_bandwidth", "device_nbytes", "forward_gpu", "kernel", "rms_norm", "upload"]
