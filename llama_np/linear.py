"""y = x W^T, the one operation that reads the weights.

Weights are stored like PyTorch and Meta store them, ``(out_features, in_features)``. A plain
array is multiplied directly (BLAS on the CPU, cuBLAS on the GPU). Weights kept in a compact
form (16-bit memory maps, int8 with scales: see ``llama_np.weights.packed``) are objects with a
``matmul(x)`` method (and ``is_packed = True``) that unpacks them block by block, so a 16 GB checkpoint never has to exist
as 32 GB of float32.
"""
from __future__ import annotations

from .weights.fuse import stack_of


def linear(x, w):
    """x: (T, in) float32, w: (out, in) -> (T, out) float32."""
    if getattr(w, "is_packed", False):
        return w.matmul(x)
    return x @ w.T


def linear_parts(x, *ws):
    """[linear(x, w) for w in ws], as one product when the ws are the consecutive row blocks of
    one stacked matrix (``weights.fuse`` stacks wq|wk|wv and w1|w3 so), split back by columns."""
    stacked = stack_of(ws)
    if stacked is None:
        return [linear(x, w) for w in ws]
    y, start, out = linear(x, stacked), 0, []
    for w in ws:
        out.append(y[:, start:start + w.shape[0]])
        start += w.shape[0]
    return out


def embed(tokens, w):
    """Rows of the embedding table. tokens: (T,) ints, w: (vocab, dim) -> (T, dim) float32."""
    if getattr(w, "is_packed", False):
        return w.rows(tokens)
    return w[tokens]


def stacked_view(ws):
    """The matrices ``ws`` (each (out_i, in)) as one (sum out_i, in) array *without copying*, when
    they already lie back to back in memory, in this order (as the weight cache stores wq|wk|wv
    and w1|w3); None otherwise. Stacking them by copy costs a pass over the weights at load."""
    import numpy as np
    if not all(isinstance(w, np.ndarray) and w.ndim == 2 and w.dtype == np.float32
               and w.flags.c_contiguous for w in ws):
        return None
    if any(w.shape[1] != ws[0].shape[1] for w in ws):
        return None
    # Views of one buffer only: two separately allocated arrays that happen to be adjacent must
    # not be joined, since the view would keep only the first alive.
    if any(_owner(w) is not _owner(ws[0]) or _owner(w) is w for w in ws):
        return None
    addr = [w.__array_interface__["data"][0] for w in ws]
    if any(addr[i] + ws[i].nbytes != addr[i + 1] for i in range(len(ws) - 1)):
        return None
    rows = sum(w.shape[0] for w in ws)
    return np.lib.stride_tricks.as_strided(ws[0], shape=(rows, ws[0].shape[1]), strides=ws[0].strides,
                                           writeable=ws[0].flags.writeable)


def _owner(a):
    """The object at the end of an array's ``.base`` chain (the buffer that keeps it alive)."""
    while True:
        if isinstance(a, memoryview):    # np.frombuffer (the weight cache's memory map)
            a = a.obj
        elif getattr(a, "base", None) is not None:
            a = a.base
        else:
            return a
