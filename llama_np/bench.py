"""How fast is llama_np, and how fast could it be? One run, one machine, one set of weights.

    python -m llama_np bench [--model ...] [--prompt-tokens 256] [--new-tokens 128]

Prints, side by side:
  * llama_np: prefill tokens/s (the prompt in one pass) and decode tokens/s (one token a step
    through the KV cache), from ``generate``;
  * transformers + PyTorch, eager attention, float32, on the same file (when installed);
  * the bandwidth limit of decoding: every weight is read once per token, so
        limit (tokens/s) = matrix-vector streaming rate (bytes/s) / bytes read per token,
    with the rate measured here and now by a float32 matrix-vector product on a matrix as large
    as the model's weights (so it cannot hide in the CPU caches).
Timings on a shared machine are noisy: compare the ratios printed by one run, not numbers
from different runs. Each figure is the best of ``--repeats`` runs.
"""
from __future__ import annotations

import math
import os
import platform
import sys
import time

import numpy as np

from .generate import generate
from .model import nest


# ---------------------------------------------------------------------- bandwidth limit
def weight_bytes_per_token(params: dict, cfg) -> int:
    """Bytes of weights one decode step reads: every matrix and norm once, except the input
    embedding table, of which only one row is read (unless it is also the output head)."""
    total = 0
    seen = set()
    for name, w in _walk(params):
        if id(w) in seen:          # a tied output head is the embedding table: read once
            continue
        seen.add(id(w))
        total += int(getattr(w, "nbytes", 0))
    if not cfg.tie_embeddings and "tok_embeddings" in params:
        emb = params["tok_embeddings"]
        total -= int(emb.nbytes) - int(emb.nbytes // emb.shape[0])
    return total


def _walk(params: dict, prefix: str = ""):
    """(name, array) for every array in nested params (``model.nest``'s layout)."""
    for k, v in params.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        elif isinstance(v, (list, tuple)):
            for i, layer in enumerate(v):
                yield from _walk(layer, f"{prefix}{k}.{i}.")
        else:
            yield prefix + k, v


def kv_bytes_per_token(cfg, mean_pos: float) -> float:
    """Bytes of K and V cache a decode step reads at an average position ``mean_pos``."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 4 * mean_pos


def gemv_rate(n_bytes: int, repeats: int = 5) -> float:
    """Bytes/s of a float32 matrix-vector product over an (n_bytes / 16 KiB, 4096) matrix.
    The matrix is filled first (so no page faults are timed); the best of ``repeats`` counts."""
    rows = max(1, n_bytes // (4 * 4096))
    w = np.ones((rows, 4096), dtype=np.float32)
    x = np.ones(4096, dtype=np.float32)
    w @ x
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        w @ x
        best = min(best, time.perf_counter() - t)
    return w.nbytes / best


def sweep_seconds(params: dict, repeats: int = 5) -> float:
    """Seconds for one matrix-vector product with every weight matrix of the model, nothing else:
    the floor for a decode step built from separate BLAS calls (best of ``repeats``)."""
    mats, seen = [], set()
    for name, w in _walk(params):
        if getattr(w, "ndim", 0) == 2 and id(w) not in seen and not name.startswith("tok_embeddings"):
            seen.add(id(w))
            mats.append(w)
    if "output" in params and id(params["output"]) not in seen:
        mats.append(params["output"])
    xs = {w.shape[1]: np.ones((1, w.shape[1]), dtype=np.float32) for w in mats}
    best = math.inf
    for _ in range(repeats + 1):  # the first pass warms up
        t = time.perf_counter()
        for w in mats:
            xs[w.shape[1]] @ w.T
        best = min(best, time.perf_counter() - t)
    return best


# ---------------------------------------------------------------------------- llama_np
def bench_llama_np(params, cfg, prompt, new_tokens: int, repeats: int = 2) -> dict:
    generate(params, cfg, None, prompt[:16], max_new_tokens=4, stop_ids=set())  # warm up
    best = {"prefill": 0.0, "decode": 0.0}
    for _ in range(repeats):
        r = generate(params, cfg, None, prompt, max_new_tokens=new_tokens, temperature=0.0, stop_ids=set())
        best["prefill"] = max(best["prefill"], r.prefill_tok_s)
        best["decode"] = max(best["decode"], r.decode_tok_s)
    return best


# ------------------------------------------------------------------------ transformers
def load_transformers(path, threads: int):
    """transformers' model on the same file (GGUF or Hugging Face folder), float32, eager, or None."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None, "transformers/torch not installed (pip install -e '.[reference]')"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(threads)
    path = os.fspath(path)
    kw = dict(dtype=torch.float32, attn_implementation="eager")
    if path.endswith(".gguf") or os.path.isfile(path):
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path) or ".",
                                                     gguf_file=os.path.basename(path), **kw)
    elif os.path.isfile(os.path.join(path, "config.json")):
        model = AutoModelForCausalLM.from_pretrained(path, **kw)
    else:
        return None, "transformers cannot load this format (Meta checkpoint folder)"
    return model.eval(), None


def bench_transformers(model, prompt, new_tokens: int, repeats: int = 2) -> dict:
    """Prefill once, then greedy decode one token a step with transformers' KV cache: the same
    work llama_np's ``generate`` does (``model.generate`` adds only logits processors)."""
    import torch
    from transformers import DynamicCache
    ids = torch.tensor([list(map(int, prompt))])
    best = {"prefill": 0.0, "decode": 0.0}
    with torch.inference_mode():
        model(ids[:, :16])  # warm up
        for _ in range(repeats):
            cache = DynamicCache(config=model.config)
            t0 = time.perf_counter()
            out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            t1 = time.perf_counter()
            for _ in range(new_tokens - 1):
                out = model(tok, past_key_values=out.past_key_values, use_cache=True)
                tok = out.logits[:, -1].argmax(-1, keepdim=True)
            t2 = time.perf_counter()
            best["prefill"] = max(best["prefill"], ids.shape[1] / (t1 - t0))
            best["decode"] = max(best["decode"], (new_tokens - 1) / (t2 - t1))
    return best


# ------------------------------------------------------------------------------- report
def run(model=None, device: str = "cpu", prompt_tokens: int = 256, new_tokens: int = 128,
        threads: int = 2, repeats: int = 2, peers: bool = True, out=sys.stdout) -> dict:
    from .backend import use
    from .weights import load_model, resolve

    if prompt_tokens < 1 or new_tokens < 2:
        raise ValueError("bench needs --prompt-tokens >= 1 and --new-tokens >= 2")
    use(device)
    if device == "gpu":
        raise ValueError("bench --device gpu is not implemented yet (the CPU figures are what it measures)")
    path = resolve(model)
    cfg, flat, _ = load_model(model)
    params = nest(flat, cfg)
    if prompt_tokens + new_tokens > cfg.max_seq_len:
        raise ValueError(f"--prompt-tokens + --new-tokens must fit the context ({cfg.max_seq_len})")
    # Token ids drawn at random (fixed seed) away from the special tokens at either end: speed
    # does not depend on which tokens they are.
    rng = np.random.default_rng(0)
    prompt = rng.integers(min(1000, cfg.vocab_size // 4), cfg.vocab_size - min(1000, cfg.vocab_size // 4),
                          prompt_tokens)

    p = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    p(f"llama_np bench: {path.name}, {cfg.n_layers} layers, dim {cfg.dim}; prompt {prompt_tokens} tokens, "
      f"decode {new_tokens} tokens; best of {repeats}")
    p(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}"
      + ("; OPENBLAS_CORETYPE is set (slows a current numpy: see the env notes)"
         if os.environ.get("OPENBLAS_CORETYPE") else ""))

    res = {"llama_np": bench_llama_np(params, cfg, prompt, new_tokens, repeats)}

    w_bytes = weight_bytes_per_token(params, cfg)
    kv = kv_bytes_per_token(cfg, prompt_tokens + new_tokens / 2)
    rate = gemv_rate(max(w_bytes, 256 << 20))
    limit = rate / (w_bytes + kv)
    sweep = sweep_seconds(params)
    res["limit"] = {"decode": limit, "rate": rate, "bytes": w_bytes + kv, "sweep_s": sweep}

    res["transformers_skipped"] = "--no-peers"
    if peers:
        hf, why = load_transformers(path, threads)
        if hf is not None:
            res["transformers"] = bench_transformers(hf, prompt, new_tokens, repeats)
            del hf
        else:
            res["transformers_skipped"] = why

    p("")
    p(f"{'':34s}{'prefill tok/s':>14s}{'decode tok/s':>14s}")
    p(f"{'llama_np (numpy float32)':34s}{res['llama_np']['prefill']:14.1f}{res['llama_np']['decode']:14.1f}")
    if "transformers" in res:
        t = res["transformers"]
        p(f"{f'transformers eager fp32, {threads} threads':34s}{t['prefill']:14.1f}{t['decode']:14.1f}")
    else:
        p(f"transformers: skipped ({res['transformers_skipped']})")
    p(f"{'bandwidth limit (decode)':34s}{'':14s}{limit:14.1f}")
    p(f"  = {rate / 1e9:.1f} GB/s (float32 gemv, measured now) / {(w_bytes + kv) / 1e6:.0f} MB a token "
      f"({w_bytes / 1e6:.0f} MB weights + {kv / 1e6:.1f} MB KV cache)")
    p(f"  the model's own matrices, one gemv each and nothing else: {sweep * 1e3:.1f} ms a token "
      f"({1 / sweep:.1f} tok/s)")
    p("")
    p(f"llama_np decode = {100 * res['llama_np']['decode'] / limit:.0f}% of the bandwidth limit, "
      f"{100 * res['llama_np']['decode'] * sweep:.0f}% of the gemv-only sweep")
    if "transformers" in res:
        t = res["transformers"]
        p(f"llama_np / transformers: decode {res['llama_np']['decode'] / t['decode']:.2f}x, "
          f"prefill {res['llama_np']['prefill'] / t['prefill']:.2f}x")
    return res
