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
