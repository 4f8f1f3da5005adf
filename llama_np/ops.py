"""The functions a forward pass is built from, passed to it explicitly.

    forward(params, cfg, ids)                                # the library's own: ops.DEFAULT
    forward(params, cfg, ids, ops=DEFAULT.replace(rms_norm=my_rms_norm))

``model.forward`` and ``llama4`` call these and nothing else for the steps a learner writes in
the course (lessons 02-06 and 10), so a function put in here is the one that runs, on every
layer and in every layout of the weights. The library's defaults are one instance, ``DEFAULT``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace as _replace
from typing import Callable

from . import attention as _attention, ffn, moe, norm, rope


@dataclass(frozen=True)
class Ops:
    rms_norm: Callable = norm.rms_norm                    # (x, weight, eps) -> like x
    rope_frequencies: Callable = rope.rope_frequencies    # (head_dim, theta, scaling) -> (head_dim // 2,)
    apply_rope: Callable = rope.apply_rope                # (x (..., T, d), cos, sin) -> like x
    attention: Callable = _attention.attention            # (q (H, T, d), k, v (KV, S, d), start_pos) -> (H, T, d)
    swiglu: Callable = ffn.swiglu                         # (x, w1, w2, w3) -> (T, dim)
    router: Callable = moe.route                          # (logits (T, E), k, kind) -> experts (T, k), gates (T, k)
    moe: Callable = moe.moe_forward                       # (x, layer, cfg, ops) -> (T, dim), an MoE layer's FFN

    def replace(self, **fns) -> "Ops":
        """A copy with some functions replaced: ``DEFAULT.replace(attention=mine)``."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(fns) - known)
        if unknown:
            raise TypeError(f"no op named {', '.join(unknown)}; the ops are {', '.join(sorted(known))}")
        bad = sorted(name for name, fn in fns.items() if not callable(fn))
        if bad:
            raise TypeError(f"op {', '.join(bad)} must be a function")
        return _replace(self, **fns)


DEFAULT = Ops()
