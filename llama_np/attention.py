"""Causal scaled dot-product attention with grouped-query attention (GQA).

    Attention(Q, K, V) = softmax(Q K^T / sqrt(head_dim) + mask) V

Multi-head attention gives every query head its own K and V head. GQA (Ainslie et al. 2023,
used by Llama 2 70B and all of Llama 3) lets a *group* of n_rep query heads share one KV head,
which divides the KV cache by n_rep. Query head h reads KV head h // n_rep: KV heads are
repeated, not tiled. Here the grouping is done by a reshape, so the shared K and V are never
copied (transformers' ``repeat_kv`` copies them; the result is the same).
"""
from __future__ import annotations

import math

from .backend import array_module
from .linear import linear, linear_parts


def softmax(x, axis: int = -1):
    """Numerically stable softmax: subtracting the row maximum changes nothing mathematically
    but keeps exp() from overflowing. x: any shape, float32."""
    xp = array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e *= 1.0 / e.sum(axis=axis, keepdims=True)   # in place, and one division per row, not per entry
    return e


def causal_mask(T: int, start_pos: int = 0, xp=None):
    """(T, start_pos + T) additive mask: 0 where query i (at start_pos + i) may see key j, -inf after it."""
    import numpy as np
    xp = xp or np
    S = start_pos + T
    m = xp.full((T, S), -xp.inf, dtype=xp.float32)
    return xp.triu(m, k=start_pos + 1)


def repeat_kv(k, n_rep: int):
    """(KV, S, d) -> (KV * n_rep, S, d), each KV head repeated n_rep times in a row (h // n_rep).
    Shown for teaching and tests; ``attention`` gets the same result without the copy."""
    xp = array_module(k)
    return xp.repeat(k, n_rep, axis=0)


def attention(q, k, v, start_pos: int = 0):
    """q: (H, T, d) queries at positions start_pos..start_pos+T-1,
    k, v: (KV, S, d) keys/values at positions 0..S-1 (S = start_pos + T) -> (H, T, d).
    """
    xp = array_module(q)
    H, T, d = q.shape
    KV, S, _ = k.shape
    n_rep = H // KV
    # Heads kv*n_rep .. kv*n_rep+n_rep-1 share KV head kv: fold them into one axis.
    # Scale q, not the scores: the same numbers, on d columns instead of S.
    qg = q.reshape(KV, n_rep * T, d) * (1.0 / math.sqrt(d))       # Python float: stays float32
    if T == 1:   # decoding: one row of scores per head, which may see every key
        probs = softmax(qg @ k.swapaxes(-1, -2), axis=-1)         # (KV, n_rep, S)
        return (probs @ v).reshape(H, T, d)
    # A prompt: the scores are built transposed, keys down the rows: (KV, S, n_rep*T). The
    # softmax then reduces over axis 1, which NumPy does with whole-row vector operations, ~3x
    # faster than the many short reductions along the last axis. Same numbers, same result.
    scores_t = k @ qg.swapaxes(-1, -2)                            # (KV, S, n_rep*T)
    # keys before start_pos are visible to every new query: only the last T rows get the mask
    s = scores_t.reshape(KV, S, n_rep, T)                         # a view: the mask lands in scores_t
    s[:, S - T:] += causal_mask(T, 0, xp).T[:, None, :]           # (key, 1, query)
    probs_t = softmax(scores_t, axis=1)
    return (probs_t.swapaxes(-1, -2) @ v).reshape(H, T, d)        # (KV, n_rep*T, S) @ (KV, S, d)


QUERY_BLOCK = 64   # query rows per ``attention`` call in a long prefill


def blocked_attention(q, k, v, start_pos: int = 0, block: int = QUERY_BLOCK, attend=attention):
    """``attend`` (``attention`` by default) for a long prompt, ``block`` queries at a time; same
    shapes and result.

    A causal mask throws away the upper half of the (T, S) score matrix: work done, then set to
    -inf. Queries a..b-1 can only see keys 0..start_pos+b-1, so each block gets just those keys
    and the masked work mostly disappears (n blocks do (n + 1) / 2n of it). Decoding (T = 1) and
    short prompts are one plain call."""
    T = q.shape[1]
    if T <= block:
        return attend(q, k, v, start_pos)
    out = array_module(q).empty(q.shape, dtype=q.dtype)
    for a in range(0, T, block):
        b = min(a + block, T)
        out[:, a:b] = attend(q[:, a:b], k[:, :start_pos + b], v[:, :start_pos + b], start_pos + a)
    return out


def chunked_attention(q, k, v, start_pos: int, chunk: int, attend=attention):
    """Llama 4's local attention on RoPE layers: a query at position p sees only keys of its own
    chunk, positions chunk * (p // chunk) .. p. Same shapes as ``attention``. Runs ``attend``
    once per chunk that the new queries touch (one call when decoding)."""
    xp = array_module(q)
    outs, a, end = [], start_pos, start_pos + q.shape[1]
    while a < end:
        c0 = a - a % chunk                   # first position of a's chunk
        b = min(c0 + chunk, end)             # queries a..b-1 share that chunk
        outs.append(attend(q[:, a - start_pos:b - start_pos], k[:, c0:b], v[:, c0:b], a - c0))
        a = b
    return outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=1)


# ----------------------------------------------------------------------------- the layer's projections
def qkv_projections(x, layer: dict, cfg):
    """x: (T, dim) -> q: (H, T, hd), k and v: (KV, T, hd), heads first (Meta's wq, wk, wv; one
    product when the loader stacked them, see ``weights.fuse``)."""
    T, hd = x.shape[0], cfg.head_dim
    q, k, v = linear_parts(x, layer["wq"], layer["wk"], layer["wv"])
    return (q.reshape(T, cfg.n_heads, hd).swapaxes(0, 1), k.reshape(T, cfg.n_kv_heads, hd).swapaxes(0, 1),
            v.reshape(T, cfg.n_kv_heads, hd).swapaxes(0, 1))


def remember(cache, layer_idx: int, start_pos: int, k, v):
    """Store this step's k, v (KV, T, hd) in the cache and return all keys and values so far;
    without a cache, k and v are all there is (so start_pos must be 0)."""
    if cache is not None:
        return cache.update(layer_idx, start_pos, k, v)
    if start_pos:
        raise ValueError("start_pos > 0 needs a KV cache holding the earlier positions")
    return k, v


def output_projection(out, layer: dict):
    """(H, T, hd) attention output -> (T, dim): heads side by side again, then wo."""
    H, T, hd = out.shape
    return linear(out.swapaxes(0, 1).reshape(T, H * hd), layer["wo"])
