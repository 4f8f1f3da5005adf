"""Stacked projections, decided once when a model is loaded: wq|wk|wv -> wqkv, w1|w3 -> w13.

Same numbers, fewer and larger matrix products: one BLAS call instead of three reads x once and
pays the call overhead once, which matters when decoding a small model (211 -> 151 products a
token for SmolLM2). gpt-fast does the same in its ``load_hook``.

The forward pass never asks whether a model was fused. It always names wq, wk, wv (and w1, w3),
as Meta's ``model.py`` does, and ``linear_parts`` multiplies them: in one product when they are
consecutive row blocks of one stacked matrix (what ``fuse`` leaves behind), else one by one.
"""
from __future__ import annotations

import weakref

from ..backend import array_module

# The stacked matrices and their parts, in row order: every place that stacks (``fuse``, and
# ``gpu.upload``) uses this order, and ``linear_parts`` splits the product back at these rows.
FUSED = (("wqkv", ("wq", "wk", "wv")), ("w13", ("w1", "w3")))


def fuse(flat: dict, cfg) -> dict:
    """Stack wq|wk|wv into one ``wqkv`` and w1|w3 into one ``w13`` per layer, in place.

    wq, wk, ... stay in the dict as views into the stacked matrices, so nothing is stored twice
    and the model code reads them by their usual names. Packed (16-bit / int8) weights and MoE
    layers (no w1/w3) are left as they are."""
    from ..linear import stacked_view      # here: linear imports this module
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        for fused, parts in FUSED:
            ws = [flat.get(p + n) for n in parts]
            if any(w is None or getattr(w, "is_packed", False) for w in ws):
                continue
            xp = array_module(ws[0])
            stacked = stacked_view(ws)     # already side by side (the weight cache): no copy
            if stacked is None:
                stacked = xp.concatenate([xp.asarray(w, dtype=xp.float32) for w in ws], axis=0)
            flat[p + fused] = stacked
            start = 0
            for n, w in zip(parts, ws):
                flat[p + n] = stacked[start:start + w.shape[0]]
                start += w.shape[0]
    return flat


class RowSlice:
    """Rows start..stop of a stacked weight that cannot be sliced itself (a packed or GPU weight),
    so that a model holding only ``wqkv`` / ``w13`` still has wq, wk, ... by name (see
    ``split_stacks``). Multiplying one part alone computes the whole stack: ``linear_parts``
    avoids that by multiplying the stack once."""
    is_packed = True

    def __init__(self, parent, start: int, stop: int):
        self.parent, self.start, self.stop = parent, start, stop
        self.shape = (stop - start, *parent.shape[1:])

    def matmul(self, x):
        return self.parent.matmul(x)[:, self.start:self.stop]


def split_stacks(layer: dict, cfg) -> dict:
    """Give a layer that holds only stacked matrices (``gpu.upload`` makes them) its parts by
    name, as views (arrays) or ``RowSlice``s (anything else). Called once, by ``model.nest``."""
    sizes = {"wq": cfg.n_heads * cfg.head_dim, "wk": cfg.n_kv_heads * cfg.head_dim,
             "wv": cfg.n_kv_heads * cfg.head_dim, "w1": cfg.hidden_dim, "w3": cfg.hidden_dim}
    for fused, parts in FUSED:
        if fused not in layer or all(n in layer for n in parts):
            continue
        w, start = layer[fused], 0
        for n in parts:
            stop = start + sizes[n]
            layer[n] = RowSlice(w, start, stop) if getattr(w, "is_packed", False) else w[start:stop]
            start = stop
    return layer


def _address(a) -> int:
    ptr = getattr(getattr(a, "data", None), "ptr", None)    # CuPy: a.data is a MemoryPointer
    return ptr if ptr is not None else a.ctypes.data


# stack_of's answers, by the ids of the parts, checked against weak references on every hit (an
# id can be reused once its array is gone). The check below reads memory addresses, which costs
# ~20 us a part in NumPy: 5 ms a token for SmolLM2 if it ran on every product.
_answers: dict = {}


def _none():
    return None


def stack_of(ws):
    """The one matrix whose consecutive row blocks, in order and covering all of it, are ``ws``
    (as ``fuse`` and ``split_stacks`` leave them); None otherwise."""
    key = tuple(map(id, ws))
    known = _answers.get(key)
    if known is not None and all(ref() is w for ref, w in zip(known[0], ws)):
        return known[1]()
    stacked = _stack_of(ws)
    try:
        refs = tuple(weakref.ref(w) for w in ws)
        if len(_answers) > 4096:           # models come and go in a long session: start afresh
            _answers.clear()
        _answers[key] = (refs, _none if stacked is None else weakref.ref(stacked))
    except TypeError:                      # an object without weak references: just not remembered
        pass
    return stacked


def _stack_of(ws):
    first = ws[0]
    if isinstance(first, RowSlice):
        parent, row = first.parent, 0
        for w in ws:
            if not isinstance(w, RowSlice) or w.parent is not parent or w.start != row:
                return None
            row = w.stop
        return parent if row == parent.shape[0] else None
    parent = getattr(first, "base", None)
    flags = getattr(parent, "flags", None)            # NumPy and CuPy arrays only
    if flags is None or not flags.c_contiguous or parent.ndim != 2:
        return None
    offset, row_bytes = _address(parent), parent.strides[0]
    for w in ws:
        if getattr(w, "base", None) is not parent or _address(w) != offset or w.shape[1:] != parent.shape[1:]:
            return None
        offset += w.shape[0] * row_bytes
    return parent if offset == _address(parent) + parent.shape[0] * row_bytes else None
