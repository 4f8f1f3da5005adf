"""Rotary position embeddings (Su et al. 2021, "RoFormer"), in Meta's layout.

Each head vector of q and k is cut into head_dim/2 pairs; pair i at position m is rotated by
the angle m * theta_i, with theta_i = rope_theta ** (-2i / head_dim). Fast-turning pairs (small i)
encode fine position, slow ones coarse position. Because a rotation by a then b is a rotation by
a + b, the dot product q_m . k_n depends only on m - n: attention sees *relative* positions.

Which numbers form a pair is a convention, and checkpoints disagree:
  * Meta (``model.py``, GGUF): neighbours (x[2i], x[2i+1]) -- "interleaved".
  * Hugging Face Llama: halves (x[i], x[i + d/2]) -- ``rotate_half``. Their converter permuted the
    rows of wq and wk so that the half-split rotation computes exactly Meta's result.
llama_np uses Meta's layout; ``hf_to_meta`` undoes Hugging Face's permutation of q/k weights.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import array_module
from .config import RopeScaling


def llama3_scale_frequencies(inv_freq: np.ndarray, factor: float, low_freq_factor: float,
                             high_freq_factor: float, original_max_position_embeddings: int) -> np.ndarray:
    """Llama 3.1's frequency scaling ("llama3" rope type), so a model trained at 8K reads 128K.

    Wavelength lambda = 2 pi / theta. Short wavelengths (< L / high_freq_factor) carry local
    position and are kept; long ones (> L / low_freq_factor) are divided by ``factor`` (stretched
    to the new length); in between, a linear blend in L / lambda.
    """
    L = float(original_max_position_embeddings)
    wavelen = 2 * math.pi / inv_freq
    # Llama 4 Scout sets low == high: no blended band, and the 0/0 below is never selected.
    with np.errstate(divide="ignore", invalid="ignore"):
        smooth = (L / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = np.where(wavelen < L / high_freq_factor, inv_freq, blended)
    return np.where(wavelen > L / low_freq_factor, inv_freq / factor, out)


def rope_frequencies(head_dim: int, theta: float = 10000.0, scaling: RopeScaling | dict | None = None) -> np.ndarray:
    """theta_i for each pair: (head_dim // 2,) float64 (computed once, in double precision).

    ``scaling``: a ``config.RopeScaling`` (or a dict of its fields), None for plain RoPE. Llama
    3.1's parameters go through ``llama3_scale_frequencies``; ``freq_factors``, the same scaling as
    GGUF files store it (``rope_freqs.weight``), divides each theta_i by its factor, as llama.cpp does."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if scaling:
        s = scaling if isinstance(scaling, RopeScaling) else RopeScaling(**scaling)
        if s.freq_factors is not None:
            return inv_freq / np.asarray(s.freq_factors, dtype=np.float64)
        inv_freq = llama3_scale_frequencies(inv_freq, s.factor, s.low_freq_factor, s.high_freq_factor,
                                            s.original_max_position_embeddings)
    return inv_freq


def rope_angles(inv_freq: np.ndarray, positions, xp=np):
    """cos and sin of m * theta_i. positions: (T,) ints -> two (T, head_dim // 2) float32 arrays."""
    angles = np.outer(np.asarray(positions, dtype=np.float64), inv_freq)
    return xp.asarray(np.cos(angles), dtype=np.float32), xp.asarray(np.sin(angles), dtype=np.float32)


def apply_rope(x, cos, sin):
    """Rotate neighbouring pairs. x: (..., T, head_dim), cos/sin: (T, head_dim // 2) -> same shape as x.

    Pair (a, b) at angle t becomes (a cos t - b sin t, a sin t + b cos t). Read as the complex
    number a + ib, that is one product with cos t + i sin t: Meta's ``model.py`` does exactly
    this (``torch.view_as_complex``). Viewing the float32 pairs as complex64 costs nothing, and
    one complex product reads x once instead of in two strided halves (5x faster here).
    """
    xp = array_module(x)
    x = x.astype(xp.float32, copy=False)
    if x.strides[-1] != x.itemsize:          # the pairs must be adjacent in memory to be viewed
        x = xp.ascontiguousarray(x)
    try:
        pairs = x.view(xp.complex64)                              # (..., T, head_dim // 2)
    except ValueError:                       # CuPy changes the dtype of C-contiguous arrays only
        pairs = xp.ascontiguousarray(x).view(xp.complex64)
    cis = (cos + 1j * sin).astype(xp.complex64, copy=False)      # complex64: cos t + i sin t
    return (pairs * cis).view(xp.float32)


def hf_to_meta(w, n_heads: int):
    """Undo Hugging Face's q/k row permutation: (n_heads * head_dim, dim) -> same shape, Meta layout.

    transformers' ``convert_llama_weights_to_hf.permute`` does
    ``w.view(H, d/2, 2, D).transpose(1, 2).reshape(H*d, D)``; this is its inverse. For wk pass the
    number of KV heads. wv and wo are never permuted (RoPE touches only q and k).
    """
    rows, cols = w.shape[0], w.shape[1:]
    d = rows // n_heads
    return w.reshape(n_heads, 2, d // 2, *cols).swapaxes(1, 2).reshape(rows, *cols)


def meta_to_hf(w, n_heads: int):
    """Meta layout -> Hugging Face layout (what transformers' converter does)."""
    rows, cols = w.shape[0], w.shape[1:]
    d = rows // n_heads
    return w.reshape(n_heads, d // 2, 2, *cols).swapaxes(1, 2).reshape(rows, *cols)
