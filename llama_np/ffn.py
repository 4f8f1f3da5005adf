"""The SwiGLU feed-forward network (Shazeer 2020, "GLU Variants Improve Transformer").

    FFN(x) = w2( silu(w1 x) * (w3 x) )

w1 is the "gate" projection, w3 the "up" projection, w2 the "down" projection (Meta's names;
transformers calls them gate_proj, up_proj, down_proj). The gate decides, per hidden unit, how
much of the up-projected value passes.
"""
from __future__ import annotations

from .backend import array_module
from .linear import linear, linear_parts


def silu(x):
    """SiLU / swish: x * sigmoid(x). x: any shape, float32."""
    xp = array_module(x)
    e = xp.exp(-x)
    e += 1.0                         # in place: a prefill's (T, hidden) temporaries are megabytes
    return xp.divide(x, e, out=e)


def swiglu(x, w1, w2, w3):
    """x: (T, dim); w1, w3: (hidden, dim); w2: (dim, hidden) -> (T, dim).
    One product for gate and up when w1|w3 are stacked in memory (``weights.fuse``)."""
    gate, up = linear_parts(x, w1, w3)
    a = silu(gate)
    a *= up
    return linear(a, w2)
