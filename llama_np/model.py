"""The Llama decoder: embedding -> n_layers x (attention block, FFN block) -> norm -> output head.

    h = x + Attention(RMSNorm(x))      # pre-norm residual blocks
    x = h + FFN(RMSNorm(h))

Weights are a plain dict with Meta's names (see ``param_shapes``); matrices are (out, in),
q/k rows in Meta's interleaved RoPE layout. Loaders in ``llama_np.weights`` produce this dict
from Meta, Hugging Face and GGUF checkpoints.
"""
from __future__ import annotations

import numpy as np

from .attention import attention
from .backend import array_module
from .ffn import silu, swiglu
from .linear import embed, linear, stacked_view
from .moe import is_moe_layer, moe_param_shapes
from .norm import rms_norm
from .rope import apply_rope, rope_angles, rope_frequencies


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
    The output head of a tied model is the embedding table itself (no copy)."""
    params = {k: v for k, v in flat.items() if not k.startswith("layers.")}
    params["layers"] = [{} for _ in range(cfg.n_layers)]
    for k, v in flat.items():
        if k.startswith("layers."):
            _, i, name = k.split(".", 2)
            params["layers"][int(i)][name] = v
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


# The stacked matrices and their parts, in row order: qkv_projections and feed_forward split
# them back at these boundaries, so every place that stacks must use this order.
FUSED = (("wqkv", ("wq", "wk", "wv")), ("w13", ("w1", "w3")))


def fuse(flat: dict, cfg) -> dict:
    """Stack wq|wk|wv into one ``wqkv`` and w1|w3 into one ``w13`` per layer, in place.

    Same numbers, fewer and larger matrix products: one BLAS call instead of three reads x once
    and pays the call overhead once, which matters when decoding a small model (211 -> 151
    products a token for SmolLM2). wq, wk, ... stay in the dict as views into the stacked
    matrices, so nothing is stored twice. Packed (16-bit / int8) weights are left as they are.
    """
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


def qkv_projections(x, layer: dict, cfg):
    """x: (T, dim) -> q: (H, T, hd), k and v: (KV, T, hd), heads first."""
    T, hd = x.shape[0], cfg.head_dim
    if "wqkv" in layer:    # one product, then split the columns (see ``fuse``)
        y = linear(x, layer["wqkv"])
        nq, nkv = cfg.n_heads * hd, cfg.n_kv_heads * hd
        q, k, v = y[:, :nq], y[:, nq:nq + nkv], y[:, nq + nkv:]
    else:
        q, k, v = linear(x, layer["wq"]), linear(x, layer["wk"]), linear(x, layer["wv"])
    return (q.reshape(T, cfg.n_heads, hd).swapaxes(0, 1), k.reshape(T, cfg.n_kv_heads, hd).swapaxes(0, 1),
            v.reshape(T, cfg.n_kv_heads, hd).swapaxes(0, 1))


def attention_block(x, layer: dict, cfg, cos, sin, start_pos: int = 0, cache=None, layer_idx: int = 0):
    """x: (T, dim) normalised input -> (T, dim) attention output (before the residual add)."""
    T = x.shape[0]
    hd = cfg.head_dim
    q, k, v = qkv_projections(x, layer, cfg)
    use_rope = cfg.rope_layers is None or bool(cfg.rope_layers[layer_idx])
    if use_rope:
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cfg.qk_norm:   # Llama 4: each head's q and k RMS-normalised, no gain ("L2Norm")
            ones = array_module(q).ones(hd, dtype=q.dtype)
            q, k = rms_norm(q, ones, cfg.norm_eps), rms_norm(k, ones, cfg.norm_eps)
    elif cfg.attn_temperature:   # Llama 4 NoPE layers: sharper attention far into the context
        q = q * attn_temperature(start_pos, T, **cfg.attn_temperature, xp=array_module(q))
    if cache is not None:
        k, v = cache.update(layer_idx, start_pos, k, v)
    elif start_pos:
        raise ValueError("start_pos > 0 needs a KV cache holding the earlier positions")
    if use_rope and cfg.attention_chunk_size:
        out = chunked_attention(q, k, v, start_pos, cfg.attention_chunk_size)
    else:
        out = blocked_attention(q, k, v, start_pos)                             # (H, T, hd)
    return linear(out.swapaxes(0, 1).reshape(T, cfg.n_heads * hd), layer["wo"])


QUERY_BLOCK = 64   # query rows per ``attention`` call in a long prefill


def blocked_attention(q, k, v, start_pos: int = 0, block: int = QUERY_BLOCK):
    """``attention`` for a long prompt, QUERY_BLOCK queries at a time; same shapes and result.

    A causal mask throws away the upper half of the (T, S) score matrix: work done, then set to
    -inf. Queries a..b-1 can only see keys 0..start_pos+b-1, so each block gets just those keys
    and the masked work mostly disappears (n blocks do (n + 1) / 2n of it). Decoding (T = 1) and
    short prompts are one plain call."""
    T = q.shape[1]
    if T <= block:
        return attention(q, k, v, start_pos)
    out = array_module(q).empty(q.shape, dtype=q.dtype)
    for a in range(0, T, block):
        b = min(a + block, T)
        out[:, a:b] = attention(q[:, a:b], k[:, :start_pos + b], v[:, :start_pos + b], start_pos + a)
    return out


def attn_temperature(start_pos: int, T: int, floor_scale: float, attn_scale: float, xp=np):
    """Llama 4's query scale on NoPE layers (arXiv 2501.19399): 1 + attn_scale * log(1 + floor((p + 1) /
    floor_scale)) at position p, so attention does not flatten out over 100K+ keys. -> (T, 1) float32."""
    pos = np.arange(start_pos, start_pos + T, dtype=np.float32)
    scale = np.log1p(np.floor((pos + 1.0) / np.float32(floor_scale))) * np.float32(attn_scale) + np.float32(1.0)
    return xp.asarray(scale.astype(np.float32)[:, None])


def chunked_attention(q, k, v, start_pos: int, chunk: int):
    """Llama 4's local attention on RoPE layers: a query at position p sees only keys of its own
    chunk, positions chunk * (p // chunk) .. p. Same shapes as ``attention``. Runs ``attention``
    once per chunk that the new queries touch (one call when decoding)."""
    xp = array_module(q)
    outs, a, end = [], start_pos, start_pos + q.shape[1]
    while a < end:
        c0 = a - a % chunk                   # first position of a's chunk
        b = min(c0 + chunk, end)             # queries a..b-1 share that chunk
        outs.append(attention(q[:, a - start_pos:b - start_pos], k[:, c0:b], v[:, c0:b], a - c0))
        a = b
    return outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=1)


def feed_forward(x, layer: dict, cfg):
    """x: (T, dim) -> (T, dim): SwiGLU, or a mixture of experts where the layer has a router."""
    if "router" in layer:
        from .moe import moe_forward
        return moe_forward(x, layer, cfg)
    if "w13" in layer:     # gate and up in one product (see ``fuse``)
        h = linear(x, layer["w13"])
        F = h.shape[1] // 2
        a = silu(h[:, :F])
        a *= h[:, F:]
        return linear(a, layer["w2"])
    return swiglu(x, layer["w1"], layer["w2"], layer["w3"])


def forward(params: dict, cfg, tokens, start_pos: int = 0, cache=None, last_only: bool = False):
    """Logits for ``tokens`` at positions start_pos, start_pos+1, ...

    tokens: (T,) ints. Without a cache, the whole sequence (start_pos must be 0). With a cache
    (``kv_cache.new_cache``), earlier positions come from it: prefill with T tokens at
    start_pos=0, then decode one token at a time at start_pos = number of tokens seen.
    Returns (T, vocab_size) float32, or (1, vocab_size) for the last position if ``last_only``
    (generation needs only that one, and the output head is the largest matrix of a small model).
    """
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    T = tokens.shape[0]
    if start_pos + T > cfg.max_seq_len and cache is None:
        raise ValueError(f"{start_pos + T} tokens exceed the context length {cfg.max_seq_len}")
    x = embed(tokens, params["tok_embeddings"])
    xp = array_module(x)
    x = xp.asarray(x, dtype=xp.float32)
    inv_freq = rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)   # head_dim/2 numbers: cheap
    cos, sin = rope_angles(inv_freq, np.arange(start_pos, start_pos + T), xp)
    n = len(params["layers"])
    for i, layer in enumerate(params["layers"]):
        x = x + attention_block(rms_norm(x, layer["attention_norm"], cfg.norm_eps), layer, cfg,
                                cos, sin, start_pos, cache, i)
        if last_only and i == n - 1:
            # Past the last attention nothing mixes positions any more: only the last row can
            # reach the output, so the last FFN runs on one row instead of T.
            x = x[-1:]
        x = x + feed_forward(rms_norm(x, layer["ffn_norm"], cfg.norm_eps), layer, cfg)
    if last_only:
        x = x[-1:]
    return linear(rms_norm(x, params["norm"], cfg.norm_eps), params["output"])
