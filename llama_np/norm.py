"""RMSNorm (Zhang & Sennrich 2019), as Llama uses it before attention, before the FFN and at the end.

    y = w * x / sqrt(mean(x^2) + eps)

Unlike LayerNorm there is no mean subtraction and no bias: rescaling alone works as well and
costs less. The statistic is computed in float32 even when weights are stored in 16 bits, because
a sum of 4096 squares overflows or loses precision in float16/bfloat16.
"""
from __future__ import annotations

from .backend import array_module


def rms_norm(x, weight, eps: float = 1e-5):
    """x: (..., dim) float32, weight: (dim,) -> (..., dim) float32."""
    xp = array_module(x)
    x = x.astype(xp.float32, copy=False)
    # mean(x^2) over the last axis; einsum sums the squares without a (..., dim) temporary.
    ms = xp.einsum("...i,...i->...", x, x)[..., None] * (1.0 / x.shape[-1])
    # eps is a Python float: a NumPy float64 scalar here would silently promote to float64.
    y = x * (1.0 / xp.sqrt(ms + float(eps)))
    y *= weight.astype(xp.float32, copy=False)
    return y
