"""How fast is llama_np, and how fast could it be? One run, one machine, one set of weights.

    python -m llama_np bench [--model ...] [--prompt-tokens 256] [--new-tokens 128] [--ttft-runs 3]

Prints, side by side:
  * llama_np: prefill tokens/s (the prompt in one pass) and decode tokens/s (one token a step
    through the KV cache, greedy: the loop ``generate`` runs);
  * transformers + PyTorch, eager attention, float32, on the same file (when installed);
  * the bandwidth limit of decoding: every weight is read once per token, so
        limit (tokens/s) = matrix-vector streaming rate (bytes/s) / bytes read per token,
    with the rate measured here and now by a float32 matrix-vector product on a matrix as large
    as the model's weights (so it cannot hide in the CPU caches);
  * a "gemv-only sweep": one matrix-vector product with each of the model's own matrices and
    nothing else, the floor for any decode step made of separate BLAS calls;
  * llama.cpp on an F32 GGUF of the same model (when llama-cpp-python is installed: the
    ``llamacpp`` extra), made by llama.cpp's own quantizer, so both read the same float32 weights;
  * time to first token, each in a new process as a user meets it: ``generate`` with the weight
    cache empty (cold: dequantize and write it) and filled (warm: map it), transformers loading
    the same file, and llama.cpp loading its F32 GGUF.

Shared machines are noisy, so the measurements are *interleaved*: each decode round times one
llama_np step, one transformers step, one streaming gemv and one sweep, in turn, and each figure
is the median over the rounds. A burst of load from elsewhere then slows all of them alike and
the ratios stay fair. Prefill figures are the best of ``--repeats`` alternating runs.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


class LlamaCppRunner:
    """The same greedy loop in llama.cpp (through llama-cpp-python), on its own F32 GGUF."""

    def __init__(self, gguf_path, threads: int, max_len: int):
        import llama_cpp
        self.lib = llama_cpp
        self.llm = llama_cpp.Llama(os.fspath(gguf_path), n_threads=threads, n_threads_batch=threads,
                                   n_ctx=max_len, n_batch=max_len, n_ubatch=max_len, verbose=False)
        self.n_vocab = self.llm.n_vocab()
        self.name = f"llama.cpp F32 GGUF, {threads} threads"

    def _next(self) -> int:
        logits = np.ctypeslib.as_array(self.lib.llama_get_logits(self.llm.ctx), shape=(self.n_vocab,))
        return int(np.argmax(logits))

    def prefill(self, ids) -> float:
        self.llm.reset()
        t = time.perf_counter()
        self.llm.eval([int(i) for i in ids])
        self.tok = self._next()
        return time.perf_counter() - t

    def step(self) -> float:
        t = time.perf_counter()
        self.llm.eval([self.tok])
        self.tok = self._next()
        return time.perf_counter() - t


def llamacpp_f32(path, out=None):
    """An F32 GGUF of the GGUF at ``path``, made once by llama.cpp's own quantizer
    (``LLAMA_FTYPE_ALL_F32``, requantizing allowed: it dequantizes every tensor, as llama_np does),
    kept in ``<cache>/llamacpp/``; or (None, why not)."""
    try:
        import ctypes
        import llama_cpp
    except ImportError:
        return None, "llama-cpp-python not installed (pip install -e '.[llamacpp]': builds llama.cpp, ~20 min)"
    from . import assets
    from .weights import cache, detect_format
    path = Path(path)
    if detect_format(path) != "gguf":
        return None, "llama.cpp needs a GGUF file"
    st = path.stat()
    dest = assets.cache_dir() / "llamacpp" / (cache.entry_dir(path).name + ".F32.gguf")
    stamp = dest.with_name(dest.name + ".source")
    key = f"{path.resolve()} {st.st_size} {st.st_mtime_ns}\n"
    if dest.is_file() and stamp.is_file() and stamp.read_text() == key:
        return dest, None
    dest.parent.mkdir(parents=True, exist_ok=True)
    if out is not None:
        print(f"(making {dest.name} with llama.cpp's quantizer, once)", file=out, flush=True)
    import logging
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)   # its quantizer logs every tensor
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
    params.allow_requantize = True
    params.nthread = 2
    fd, tmp = tempfile.mkstemp(prefix=".f32-", suffix=".gguf", dir=dest.parent)
    os.close(fd)
    try:
        rc = llama_cpp.llama_model_quantize(os.fspath(path).encode(), tmp.encode(), ctypes.byref(params))
        if rc != 0:
            return None, f"llama.cpp could not convert {path.name} to F32 (code {rc})"
        os.replace(tmp, dest)
        stamp.write_text(key)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest, None


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


# ---------------------------------------------------------------- time to first token
TTFT_PROMPT = "The capital of France is"

# transformers and llama.cpp, each in a fresh process: load the file, one greedy token, print it.
TRANSFORMERS_CHILD = """
import os, sys, warnings
warnings.filterwarnings("ignore")
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, prompt, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
d, f = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="eager")
with torch.inference_mode():
    nxt = model(tok(prompt, return_tensors="pt").input_ids).logits[0, -1].argmax()
sys.stdout.write(tok.decode([int(nxt)]) or "?")
sys.stdout.flush()
"""
LLAMACPP_CHILD = """
import sys
import numpy as np
import llama_cpp
path, prompt, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
llm = llama_cpp.Llama(path, n_threads=threads, n_threads_batch=threads, n_ctx=256, verbose=False)
llm.eval(llm.tokenize(prompt.encode(), add_bos=False, special=True))
logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(llm.n_vocab(),))
sys.stdout.write(llm.detokenize([int(np.argmax(logits))]).decode(errors="replace") or "?")
sys.stdout.flush()
"""


def first_output_time(cmd, env=None, echo: str = "", timeout: float = 900) -> float:
    """Seconds from starting ``cmd`` until it prints its first output past an echo of ``echo``
    (``generate`` prints the prompt, then the continuation). Raises RuntimeError with the
    command's last stderr line if it fails."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env)
        arrivals, got = [], b""
        while chunk := os.read(p.stdout.fileno(), 65536):   # each chunk as soon as it is written
            arrivals.append((len(got) + len(chunk), time.perf_counter() - t0))
            got += chunk
        p.stdout.close()
        rc = p.wait(timeout=timeout)
        err.seek(0)
        lines = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
    if rc != 0 or not arrivals:
        raise RuntimeError(lines[-1].strip() if lines else f"exit code {rc}, no output")
    skip = len(echo.encode()) if got.startswith(echo.encode()) else 0
    for n, t in arrivals:
        if n > skip:
            return t
    raise RuntimeError("printed the prompt but no token")


def _child_env(**extra) -> dict:
    """The environment for a child process: this llama_np importable, whatever the cwd."""
    env = dict(os.environ, **extra)
    here = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def time_to_first_token(path, runs: int = 3, threads: int = 2, peers: bool = True, f32=None,
                        timer=None) -> list:
    """[(label, seconds or None, note)] for a first token in a new process, each as a user meets it.

    llama_np runs ``python -m llama_np generate`` on the file itself with ``LLAMA_NP_CACHE`` set to
    a new empty folder: the first run dequantizes and writes the weight cache (cold), the next
    ``runs`` map it (warm: the median, and the best in the note)."""
    timer = timer or first_output_time
    gen = [sys.executable, "-m", "llama_np", "generate", TTFT_PROMPT, "--model", os.fspath(path),
           "--max-new-tokens", "1", "--temperature", "0"]
    rows = []
    tmp = tempfile.mkdtemp(prefix="llama_np-bench-cache-")
    try:
        env = _child_env(LLAMA_NP_CACHE=tmp, LLAMA_NP_WEIGHT_CACHE="1")
        try:
            rows.append(("llama_np generate, weight cache empty", timer(gen, env, TTFT_PROMPT),
                         "dequantizes, writes the cache"))
            warm = sorted(timer(gen, env, TTFT_PROMPT) for _ in range(runs))
            rows.append(("llama_np generate, weight cache filled", float(np.median(warm)),
                         f"memory-mapped; median of {runs}, best {warm[0]:.2f} s"))
        except RuntimeError as e:
            rows.append(("llama_np generate", None, f"failed: {e}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not peers:
        return rows
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        cmd = [sys.executable, "-c", TRANSFORMERS_CHILD, os.fspath(path), TTFT_PROMPT, str(threads)]
        rows.append(("transformers (import, load, 1 token)", timer(cmd, _child_env()), "dequantizes every run"))
    except ImportError:
        rows.append(("transformers", None, "not installed"))
    except RuntimeError as e:
        rows.append(("transformers", None, f"failed: {e}"))
    if f32 is not None:
        cmd = [sys.executable, "-c", LLAMACPP_CHILD, os.fspath(f32), TTFT_PROMPT, str(threads)]
        try:
            rows.append(("llama.cpp (load F32 GGUF, 1 token)", timer(cmd, _child_env()), "memory-mapped"))
        except RuntimeError as e:
            rows.append(("llama.cpp", None, f"failed: {e}"))
    return rows


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
        threads: int = 2, repeats: int = 5, peers: bool = True, out=None, ttft_runs: int = 3) -> dict:
    """Measure and print; ``ttft_runs`` warm first-token runs (0: no first-token timing)."""
    from .backend import use
    from .weights import load_model, resolve

    if prompt_tokens < 1 or new_tokens < 2:
        raise ValueError("bench needs --prompt-tokens >= 1 and --new-tokens >= 2")
    use(device)
    if device == "gpu":
        raise ValueError("bench --device gpu: run `python benchmarks/gpu.py` (checks the GPU path, then "
                         "measures Llama 3 8B's shape against transformers and the HBM limit)")
    path = resolve(model)
    cfg, flat, tok = load_model(model)
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
    skipped = skipped_cpp = "--no-peers"
    f32 = None
    if peers:
        hf, why = load_transformers(path, threads)
        if hf is not None:
            runners.append(TorchRunner(hf, threads))
        else:
            skipped = why
        f32, skipped_cpp = llamacpp_f32(path, out)
        if f32 is not None:
            runners.append(LlamaCppRunner(f32, threads, prompt_tokens + new_tokens))
    torch_runner = next((r for r in runners if isinstance(r, TorchRunner)), None)
    cpp_runner = next((r for r in runners if isinstance(r, LlamaCppRunner)), None)
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
    if torch_runner is None:
        p(f"transformers: skipped ({skipped})")
    if cpp_runner is None:
        p(f"llama.cpp: skipped ({skipped_cpp})")
    p(f"{'bandwidth limit (decode)':34s}{'':14s}{limit:14.1f}")
    p(f"  = {rate / 1e9:.1f} GB/s (float32 gemv on {probe.w.nbytes / 1e6:.0f} MB, measured now) / "
      f"{(w_bytes + kv) / 1e6:.0f} MB a token ({w_bytes / 1e6:.0f} MB weights + {kv / 1e6:.1f} MB KV cache)")
    p(f"{'gemv-only sweep of its matrices':34s}{'':14s}{1 / sweep:14.1f}")
    p("")
    p(f"llama_np decode = {100 * ours['decode'] / limit:.0f}% of the bandwidth limit, "
      f"{100 * ours['decode'] * sweep:.0f}% of the gemv-only sweep")
    for r, peer in ((torch_runner, "transformers"), (cpp_runner, "llama.cpp F32")):
        if r is not None:
            t = res[r.name]
            p(f"llama_np / {peer}: decode {ours['decode'] / t['decode']:.2f}x, "
              f"prefill {ours['prefill'] / t['prefill']:.2f}x")
    if cpp_runner is not None:   # the ceiling of any decode step made of one BLAS call per matrix
        p(f"gemv-only sweep / llama.cpp F32 decode: {1 / sweep / res[cpp_runner.name]['decode']:.2f}x")
    p("(decode: median step of interleaved rounds; prefill: best of "
      f"{repeats}; compare ratios within one run)")
    if ttft_runs > 0 and tok is None:
        p("")
        p("time to first token: skipped (the model file carries no tokenizer, so `generate` cannot run it)")
    elif ttft_runs > 0:
        p("")
        p(f"time to first token, each in a new process (prompt {TTFT_PROMPT!r}, greedy):")
        rows = time_to_first_token(path, ttft_runs, threads, peers, f32)
        for label, secs, note in rows:
            p(f"  {label:40s}{'' if secs is None else f'{secs:7.2f} s':>9s}  {note}")
        res["ttft"] = {label: secs for label, secs, _ in rows}
    return res
