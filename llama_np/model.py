"""The Llama decoder: embedding -> n_layers x (attention block, FFN block) -> norm -> output head.

    h = x + Attention(RMSNorm(x))      # pre-norm residual blocks
    x = h + FFN(RMSNorm(h))

Weights are a plain dict with Meta's names (see ``param_shapes``); matrices are (out, in),
q/k rows in Meta's interleaved RoPE layout. Loaders in ``llama_np.weights`` produce this dict
from Meta, Hugging Face and GGUF checkpoints.

Everything a model does differently is decided before the first token: how the weights are laid
out (``weights.fuse``, at load time), which attention and FFN each layer runs (from the config:
``layer_functions``; Llama 4's attention lives in ``llama4.py``, experts in ``moe.py``) and which
functions compute the steps (``ops``, passed to ``forward``). The block itself has one path.
"""
from __future__ import annotations

import numpy as np

from . import llama4
from .attention import blocked_attention, output_projection, qkv_projections, remember
from .backend import array_module
from .linear import embed, linear
from .moe import is_moe_layer, moe_param_shapes
from .ops import DEFAULT
from .rope import rope_angles
from .weights.fuse import FUSED, fuse, split_stacks  # noqa: F401  (FUSED, fuse: for callers)


def param_shapes(cfg) -> dict:
    """The expected shape of every tensor, by name (``layers.{i}.`` prefix for per-layer ones)."""
    D, hd = cfg.dim, cfg.head_dim
    shapes = {"tok_embeddings": (cfg.vocab_size, D), "norm": (D,)}
    if not cfg.tie_embeddings:
        shapes["output"] = (cfg.vocab_size, D)
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        shapes.update({p + "attention_norm": (D,), p + "ffn_norm": (D,),
                       p + "wq": (cfg.n_heads * hd, D), p + "wk": (cfg.n_kv_heads * hd, D),
                       p + "wv": (cfg.n_kv_heads * hd, D), p + "wo": (D, cfg.n_heads * hd)})
        if is_moe_layer(cfg, i):   # router + experts instead of w1/w2/w3 (moe.py)
            shapes.update({p + name: shape for name, shape in moe_param_shapes(cfg, i).items()})
        else:
            shapes.update({p + "w1": (cfg.hidden_dim, D), p + "w2": (D, cfg.hidden_dim),
                           p + "w3": (cfg.hidden_dim, D)})
    return shapes


def nest(flat: dict, cfg) -> dict:
    """{'layers.0.wq': ..., 'norm': ...} -> {'layers': [{'wq': ...}, ...], 'norm': ...}.
    The output head of a tied model is the embedding table itself (no copy). A layer that holds
    only stacked matrices (wqkv, w13) gets its parts by name as well (``weights.fuse``)."""
    params = {k: v for k, v in flat.items() if not k.startswith("layers.")}
    params["layers"] = [{} for _ in range(cfg.n_layers)]
    for k, v in flat.items():
        if k.startswith("layers."):
            _, i, name = k.split(".", 2)
            params["layers"][int(i)][name] = v
    for layer in params["layers"]:
        split_stacks(layer, cfg)      # stacked-only layers (gpu.upload) get wq, wk, ... by name
    if cfg.tie_embeddings or "output" not in params:
        params["output"] = params["tok_embeddings"]
    return params


def flatten(params: dict) -> dict:
    """The inverse of ``nest``: {'layers': [{'wq': ...}, ...], ...} -> {'layers.0.wq': ..., ...}.
    A tied output head (the embedding table itself) is left out, as a tied checkpoint stores the
    table once. Flat params come back as they are."""
    if "layers" not in params:
        return params
    flat = {k: v for k, v in params.items() if k != "layers"}
    for i, layer in enumerate(params["layers"]):
        flat.update({f"layers.{i}.{k}": v for k, v in layer.items()})
    if flat.get("output") is flat.get("tok_embeddings"):
        flat.pop("output")
    return flat


def random_params(cfg, seed: int = 0, std: float = 0.02) -> dict:
    """Random float32 weights of the right shapes (norm weights near 1), for tests and benchmarks."""
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in param_shapes(cfg).items():
        if len(shape) == 1:
            flat[name] = (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32))
        else:
            flat[name] = std * rng.standard_normal(shape, dtype=np.float32)
    return nest(flat, cfg)


def attention_block(x, layer: dict, cfg, cos, sin, start_pos: int = 0, cache=None, layer_idx: int = 0,
                    ops=DEFAULT):
    """x: (T, dim) normalised input -> (T, dim) attention output (before the residual add).
    Meta's ``Attention.forward``: project, rotate q and k, cache k and v, attend, project back."""
    q, k, v = qkv_projections(x, layer, cfg)
    q, k = ops.apply_rope(q, cos, sin), ops.apply_rope(k, cos, sin)
    k, v = remember(cache, layer_idx, start_pos, k, v)
    return output_projection(blocked_attention(q, k, v, start_pos, attend=ops.attention), layer)


def feed_forward(x, layer: dict, cfg, ops=DEFAULT):
    """x: (T, dim) -> (T, dim): SwiGLU, w2(silu(w1 x) * w3 x) (one product for w1|w3 when fused)."""
    return ops.swiglu(x, layer["w1"], layer["w2"], layer["w3"])


def experts_feed_forward(x, layer: dict, cfg, ops=DEFAULT):
    """x: (T, dim) -> (T, dim): a mixture of experts in place of the FFN (moe.py)."""
    return ops.moe(x, layer, cfg, ops)


def layer_functions(cfg, n_layers: int | None = None) -> list:
    """[(attention, feed_forward)] of each layer (cfg.n_layers of them unless given), from the
    config alone: a plain Llama layer, Llama 4's attention (NoPE layers, qk-norm, chunks), and
    experts where the config puts them."""
    attention = attention_block if cfg.llama4 is None else llama4.attention_block
    n = cfg.n_layers if n_layers is None else n_layers
    return [(attention, experts_feed_forward if is_moe_layer(cfg, i) else feed_forward) for i in range(n)]


def transformer_block(x, layer: dict, cfg, cos, sin, start_pos: int = 0, cache=None, layer_idx: int = 0,
                      ops=DEFAULT, last_only: bool = False, functions=(attention_block, feed_forward)):
    """Meta's ``TransformerBlock.forward``: x (T, dim) -> (T, dim), or (1, dim) if ``last_only``.
    ``functions``: this layer's (attention, feed_forward), from ``layer_functions``."""
    attention, ffn = functions
    h = x + attention(ops.rms_norm(x, layer["attention_norm"], cfg.norm_eps), layer, cfg,
                      cos, sin, start_pos, cache, layer_idx, ops)
    if last_only:
        # Past the last attention nothing mixes positions any more: only the last row can reach
        # the output, so the last FFN runs on one row instead of T.
        h = h[-1:]
    return h + ffn(ops.rms_norm(h, layer["ffn_norm"], cfg.norm_eps), layer, cfg, ops)


def forward(params: dict, cfg, tokens, start_pos: int = 0, cache=None, last_only: bool = False, ops=DEFAULT):
    """Logits for ``tokens`` at positions start_pos, start_pos+1, ...

    tokens: (T,) ints. Without a cache, the whole sequence (start_pos must be 0). With a cache
    (``kv_cache.new_cache``), earlier positions come from it: prefill with T tokens at
    start_pos=0, then decode one token at a time at start_pos = number of tokens seen.
    Returns (T, vocab_size) float32, or (1, vocab_size) for the last position if ``last_only``
    (generation needs only that one, and the output head is the largest matrix of a small model).
    ``ops``: the functions each step calls (``llama_np.ops``; the library's own by default).
    """
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    T = tokens.shape[0]
    if start_pos + T > cfg.max_seq_len and cache is None:
        raise ValueError(f"{start_pos + T} tokens exceed the context length {cfg.max_seq_len}")
    x = embed(tokens, params["tok_embeddings"])
    xp = array_module(x)
    x = xp.asarray(x, dtype=xp.float32)
    inv_freq = ops.rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)   # head_dim/2 numbers: cheap
    cos, sin = rope_angles(inv_freq, np.arange(start_pos, start_pos + T), xp)
    n = len(params["layers"])
    for i, (layer, functions) in enumerate(zip(params["layers"], layer_functions(cfg, n))):
        x = transformer_block(x, layer, cfg, cos, sin, start_pos, cache, i, ops, last_only and i == n - 1, functions)
    if last_only:
        x = x[-1:]
    return linear(ops.rms_norm(x, params["norm"], cfg.norm_eps), params["output"])
