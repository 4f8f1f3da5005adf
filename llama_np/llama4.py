"""What Llama 4's attention does differently from Llama 1-3, built from the same pieces.

    * NoPE layers: every 4th layer (``cfg.llama4.rope_layers[i] == 0``) skips RoPE and sees positions
      only through the causal mask; there the queries are scaled up with position
      (``attn_temperature``) so attention does not flatten out over 100K+ keys.
    * qk-norm: on RoPE layers, each head's q and k are RMS-normalised without a gain (Scout).
    * chunked attention: on RoPE layers a query sees only the keys of its own chunk of
      ``cfg.llama4.attention_chunk_size`` positions (8192); the NoPE layers keep the whole context.

The settings are one ``config.Llama4Attention``, ``cfg.llama4``. Its experts (sigmoid gates
scaling the input, a shared expert) are in ``moe.py`` beside Mixtral's. ``model.layer_functions``
picks ``attention_block`` below for a config that has ``cfg.llama4``.
"""
from __future__ import annotations

import numpy as np

from .attention import blocked_attention, chunked_attention, output_projection, qkv_projections, remember
from .backend import array_module
from .ops import DEFAULT


def attn_temperature(start_pos: int, T: int, floor_scale: float, attn_scale: float, xp=np):
    """Llama 4's query scale on NoPE layers (arXiv 2501.19399): 1 + attn_scale * log(1 + floor((p + 1) /
    floor_scale)) at position p, so attention does not flatten out over 100K+ keys. -> (T, 1) float32."""
    pos = np.arange(start_pos, start_pos + T, dtype=np.float32)
    scale = np.log1p(np.floor((pos + 1.0) / np.float32(floor_scale))) * np.float32(attn_scale) + np.float32(1.0)
    return xp.asarray(scale.astype(np.float32)[:, None])


def uses_rope(settings, i: int) -> bool:
    """Does layer i rotate q and k? All layers unless ``settings.rope_layers`` marks it NoPE (0).
    settings: the config's ``Llama4Attention``."""
    return settings.rope_layers is None or bool(settings.rope_layers[i])


def attention_block(x, layer: dict, cfg, cos, sin, start_pos: int = 0, cache=None, layer_idx: int = 0,
                    ops=DEFAULT):
    """x: (T, dim) normalised input -> (T, dim), like ``model.attention_block`` with Llama 4's changes."""
    settings = cfg.llama4
    q, k, v = qkv_projections(x, layer, cfg)
    if uses_rope(settings, layer_idx):
        q, k = ops.apply_rope(q, cos, sin), ops.apply_rope(k, cos, sin)
        if settings.qk_norm:   # "L2Norm" in Meta's code: RMSNorm with no gain
            ones = array_module(q).ones(cfg.head_dim, dtype=q.dtype)
            q, k = ops.rms_norm(q, ones, cfg.norm_eps), ops.rms_norm(k, ones, cfg.norm_eps)
        k, v = remember(cache, layer_idx, start_pos, k, v)
        if settings.attention_chunk_size:
            out = chunked_attention(q, k, v, start_pos, settings.attention_chunk_size, attend=ops.attention)
        else:
            out = blocked_attention(q, k, v, start_pos, attend=ops.attention)
    else:
        t = settings.attn_temperature
        if t:
            q = q * attn_temperature(start_pos, q.shape[1], t.floor_scale, t.attn_scale, xp=array_module(q))
        k, v = remember(cache, layer_idx, start_pos, k, v)
        out = blocked_attention(q, k, v, start_pos, attend=ops.attention)
    return output_projection(out, layer)
