"""How fast is llama_np, and how fast could it be? One run, one machine, one set of weights.

    python -m llama_np bench [--model ...] [--prompt-tokens 256] [--new-tokens 128]

Prints, side by side:
  * llama_np: prefill tokens/s (the prompt in one pass) and decode tokens/s (one token a step
    through the KV cache, greedy: the loop ``generate`` runs);
  * transformers + PyTorch, eager attention, float32, on the same file (when installed);
  * the bandwidth limit of decoding: every weight is read once per token, so
        limit (tokens/s) = matrix-vector streaming rate (bytes/s) / bytes read per token,
    with the rate measured here and now by a float32 matrix-vector product on a matrix as large
    as the model's weights (so it cannot hide in the CPU caches);
  * a "gemv-only sweep": one matrix-vector product with each of the model's own matrices and
    nothing else, the floor for any decode step made of separate BLAS calls.

Shared machines are noisy, so the measurements are *interleaved*: each decode round times one
llama_np step, one transformers step, one streaming gemv and one sweep, in turn, and each figure
is the median over the rounds. A burst of load from elsewhere then slows all of them alike and
the ratios stay fair. Prefill figures are the best of ``--repeats`` alternating runs.
"""
from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np

from .kv_cache import new_cache
from .model import forward, fuse, nest


# ---------------------------------------------------------------------- bandwidth limit
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
    emb = params.get("tok_embeddings")
    if emb is not None and params.get("output") is not emb:
        total -= int(emb.nbytes) - int(emb.nbytes // emb.shape[0])
    return total


def kv_bytes_per_token(cfg, mean_pos: float) -> float:
    """Bytes of K and V cache a decode step reads at an average position ``mean_pos``."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 4 * mean_pos


class GemvProbe:
    """Times one float32 matrix-vector product over an (n_bytes / 16 KiB, 4096) matrix."""

    def __init__(self, n_bytes: int):
        rows = max(1, n_bytes // (4 * 4096))
        self.w = np.ones((rows, 4096), dtype=np.float32)  # filled: no page faults in the timing
        self.x = np.ones(4096, dtype=np.float32)
        self.w @ self.x

    def step(self) -> float:
        """Bytes per second of one product."""
        t = time.perf_counter()
        self.w @ self.x
        return self.w.nbytes / (time.perf_counter() - t)


class Sweep:
    """One matrix-vector product with every weight matrix of the model, nothing else."""

    def __init__(self, params: dict):
        self.mats, seen = [], set()
        for name, w in _walk(params):
            if getattr(w, "ndim", 0) == 2 and id(w) not in seen and not name.startswith("tok_embeddings"):
                seen.add(id(w))
                self.mats.append(w)
        if "output" in params and id(params["output"]) not in seen:
            self.mats.append(params["output"])
        self.xs = {w.shape[1]: np.ones((1, w.shape[1]), dtype=np.float32) for w in self.mats}
        self.step()

    def step(self) -> float:
        """Seconds for one sweep."""
        t = time.perf_counter()
        for w in self.mats:
            self.xs[w.shape[1]] @ w.T
        return time.perf_counter() - t


# ---------------------------------------------------------------------------- runners
class NumpyRunner:
    """llama_np's greedy loop, one step at a time: prefill, then one token per call."""
    name = "llama_np (numpy float32)"

    def __init__(self, params, cfg, max_len: int):
        self.params, self.cfg, self.max_len = params, cfg, max_len

    def prefill(self, ids) -> float:
        self.cache = new_cache(self.cfg, self.max_len)
        t = time.perf_counter()
        logits = forward(self.params, self.cfg, ids, 0, self.cache, last_only=True)
        self.tok, self.pos = int(np.argmax(logits[-1])), len(ids)
        return time.perf_counter() - t

    def step(self) -> float:
        t = time.perf_counter()
        logits = forward(self.params, self.cfg, [self.tok], self.pos, self.cache)
        self.tok, self.pos = int(np.argmax(logits[-1])), self.pos + 1
        return time.perf_counter() - t


class TorchRunner:
    """The same greedy loop with transformers' model and its KV cache (``model.generate`` does
    this plus logits processors)."""

    def __init__(self, model, threads: int):
        import torch
        self.torch, self.model, self.threads = torch, model, threads
        self.name = f"transformers eager fp32, {threads} threads"

    def prefill(self, ids) -> float:
        from transformers import DynamicCache
        torch = self.torch
        x = torch.tensor([[int(i) for i in ids]])
        with torch.inference_mode():
            self.cache = DynamicCache(config=self.model.config)
            t = time.perf_counter()
            out = self.model(x, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
            self.tok = out.logits[:, -1].argmax(-1, keepdim=True)
            return time.perf_counter() - t

    def step(self) -> float:
        with self.torch.inference_mode():
            t = time.perf_counter()
            out = self.model(self.tok, past_key_values=self.cache, use_cache=True)
            self.tok = out.logits[:, -1].argmax(-1, keepdim=True)
            return time.perf_counter() - t


def load_transformers(path, threads: int):
    """transformers' model on the same file (GGUF or Hugging Face folder), float32, eager; or
    (None, why not)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None, "transformers/torch not installed (pip install -e '.[reference]')"
    import warnings
    warnings.filterwarnings("ignore", message=".*past_key_values.*")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(threads)
    path = os.fspath(path)
    kw = dict(dtype=torch.float32, attn_implementation="eager")
    if os.path.isfile(path):
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                                     gguf_file=os.path.basename(path), **kw)
    elif os.path.isfile(os.path.join(path, "config.json")):
        model = AutoModelForCausalLM.from_pretrained(path, **kw)
    else:
        return None, "transformers cannot load this format (Meta checkpoint folder)"
    return model.eval(), None


# ------------------------------------------------------------------------------ measure
def measure(runners, prompt, new_tokens: int, repeats: int, probe=None, sweep=None) -> dict:
    """Interleaved timings -> {name: {"prefill": tok/s, "decode": tok/s}, "rate": B/s, "sweep_s": s}."""
    res = {r.name: {"prefill": 0.0} for r in runners}
    for r in runners:                       # warm up (first calls allocate, fault pages in)
        r.prefill(prompt[:8])
        r.step()
    for _ in range(repeats):
        for r in runners:
            res[r.name]["prefill"] = max(res[r.name]["prefill"], len(prompt) / r.prefill(prompt))
    steps = {r.name: [] for r in runners}
    rates, sweeps = [], []
    for _ in range(new_tokens - 1):
        for r in runners:
            steps[r.name].append(r.step())
        if probe is not None:
            rates.append(probe.step())
        if sweep is not None:
            sweeps.append(sweep.step())
    for r in runners:
        res[r.name]["decode"] = 1.0 / float(np.median(steps[r.name]))
    res["rate"] = float(np.median(rates)) if rates else float("nan")
    res["sweep_s"] = float(np.median(sweeps)) if sweeps else float("nan")
    return res


# ------------------------------------------------------------------------------- report
def run(model=None, device: str = "cpu", prompt_tokens: int = 256, new_tokens: int = 128,
        threads: int = 2, repeats: int = 5, peers: bool = True, out=None) -> dict:
    from .backend import use
    from .weights import load_model, resolve

    if prompt_tokens < 1 or new_tokens < 2:
        raise ValueError("bench needs --prompt-tokens >= 1 and --new-tokens >= 2")
    use(device)
    if device == "gpu":
        raise ValueError("bench --device gpu: run `python benchmarks/gpu.py` (checks the GPU path, then "
                         "measures Llama 3 8B's shape against transformers and the HBM limit)")
    path = resolve(model)
    cfg, flat, _ = load_model(model)
    params = nest(flat, cfg)                      # as stored: for the byte count and the gemv sweep
    fused = nest(fuse(dict(flat), cfg), cfg)      # what generate runs (same numbers, fewer products)
    if prompt_tokens + new_tokens > cfg.max_seq_len:
        raise ValueError(f"--prompt-tokens + --new-tokens must fit the context ({cfg.max_seq_len})")
    # Token ids drawn at random (fixed seed) away from the special tokens at either end: speed
    # does not depend on which tokens they are.
    margin = min(1000, cfg.vocab_size // 4)
    prompt = np.random.default_rng(0).integers(margin, cfg.vocab_size - margin, prompt_tokens).tolist()

    out = out or sys.stdout   # looked up now: a default bound at import would keep a stale stream
    p = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    p(f"llama_np bench: {path.name}, {cfg.n_layers} layers, dim {cfg.dim}; prompt {prompt_tokens} tokens, "
      f"decode {new_tokens} tokens")
    p(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}"
      + ("; OPENBLAS_CORETYPE is set (slows a current numpy: see the env notes)"
         if os.environ.get("OPENBLAS_CORETYPE") else ""))

    runners = [NumpyRunner(fused, cfg, prompt_tokens + new_tokens)]
    skipped = "--no-peers"
    if peers:
        hf, why = load_transformers(path, threads)
        if hf is not None:
            runners.append(TorchRunner(hf, threads))
        else:
            skipped = why
    w_bytes = weight_bytes_per_token(params, cfg)
    kv = kv_bytes_per_token(cfg, prompt_tokens + new_tokens / 2)
    probe = GemvProbe(max(w_bytes, 256 << 20))
    res = measure(runners, prompt, new_tokens, repeats, probe, Sweep(params))
    rate, sweep = res["rate"], res["sweep_s"]
    limit = rate / (w_bytes + kv)
    res["limit"] = limit
    ours = res[runners[0].name]

    p("")
    p(f"{'':34s}{'prefill tok/s':>14s}{'decode tok/s':>14s}")
    for r in runners:
        p(f"{r.name:34s}{res[r.name]['prefill']:14.1f}{res[r.name]['decode']:14.1f}")
    if len(runners) == 1:
        p(f"transformers: skipped ({skipped})")
    p(f"{'bandwidth limit (decode)':34s}{'':14s}{limit:14.1f}")
    p(f"  = {rate / 1e9:.1f} GB/s (float32 gemv on {probe.w.nbytes / 1e6:.0f} MB, measured now) / "
      f"{(w_bytes + kv) / 1e6:.0f} MB a token ({w_bytes / 1e6:.0f} MB weights + {kv / 1e6:.1f} MB KV cache)")
    p(f"{'gemv-only sweep of its matrices':34s}{'':14s}{1 / sweep:14.1f}")
    p("")
    p(f"llama_np decode = {100 * ours['decode'] / limit:.0f}% of the bandwidth limit, "
      f"{100 * ours['decode'] * sweep:.0f}% of the gemv-only sweep")
    if len(runners) > 1:
        t = res[runners[1].name]
        p(f"llama_np / transformers: decode {ours['decode'] / t['decode']:.2f}x, "
          f"prefill {ours['prefill'] / t['prefill']:.2f}x")
    p("(decode: median step of interleaved rounds; prefill: best of "
      f"{repeats}; compare ratios within one run)")
    return res
