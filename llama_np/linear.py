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
