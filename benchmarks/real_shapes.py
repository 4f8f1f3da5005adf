"""Real model shapes on this machine: does Llama 3 8B fit in 24 GiB, and how fast does it decode?

    python benchmarks/real_shapes.py --shape 1b --quick        # CI: a few minutes
    python benchmarks/real_shapes.py --shape 8b                # ~16 GB per format on disk, ~15 min

Writes random-weight checkpoints of real shapes (Llama 3.2 1B, Llama 2 7B, Llama 3 8B) in Meta
(``consolidated.00.pth`` + params.json) and Hugging Face (``model.safetensors`` + config.json)
formats, in bf16, a block of rows at a time (never a float32 copy, never a whole tensor in
memory). Then, each in a fresh subprocess so peak RSS means something, it measures:

  * llama_np ``--dtype bf16``: weights stay 16-bit memory maps, widened block by block;
  * llama_np ``--dtype int8``: quantised at load, per-row scales (and its logit error vs bf16);
  * transformers, bf16, same HF folder, when the memory allows;

reporting load time, peak RSS (VmHWM), prefill time and decode tokens/s, next to the bandwidth
limit: bytes read per token / the float32 matrix-vector streaming rate measured in the same run.
Random weights decode at exactly the speed of trained ones (same shapes, same bytes).
Targets for 8B on a 2-core 24 GiB machine: peak RSS <= weight bytes + 2 GiB, bf16 >= 0.8 tok/s,
int8 >= 1.5 tok/s. Timings on a shared machine are noisy: compare the ratios within one run.

Measured here (2 cores, 24 GiB, other jobs mostly idle; Llama 3 8B shape, HF format, 10 tokens):

    run                      load s  peak RSS GiB  decode tok/s  weight GB/s
    llama_np bf16               0.1         14.03          0.42          6.3
    llama_np int8              23.4          8.61          0.68          5.1
    transformers bf16           1.9         14.35          0.77
    float32 stream rate 27 GB/s -> bandwidth limit 1.8 tok/s (bf16), 3.6 tok/s (int8)

Memory fits (14.0 GiB <= 16.96 GiB), speed does not reach the targets: NumPy widens bf16 at
~4 G weights/s on both cores (int8 ~6 G/s) -- compute, not memory, is the limit; transformers
multiplies bf16 natively (AVX512-BF16). Llama 3.2 1B shape: bf16 1.5-2.4 tok/s, int8 3.0 tok/s,
transformers bf16 0.7-0.8 tok/s; the --quick run takes ~1-2 minutes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.checkpoint_writers import hf_key, meta_key  # noqa: E402  (Meta's and HF's names, written out once)

# Meta params.json as Meta ships them, and the matching Hugging Face config.json fields.
SHAPES = {
    "1b": {"name": "Llama 3.2 1B", "tied": True,
           "meta": {"dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
                    "ffn_dim_multiplier": 1.5, "multiple_of": 256, "norm_eps": 1e-5, "rope_theta": 500000.0,
                    "use_scaled_rope": True},
           "hf": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "head_dim": 64,
                  "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072,
                  "tie_word_embeddings": True,
                  "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}},
    "7b": {"name": "Llama 2 7B", "tied": False,
           "meta": {"dim": 4096, "n_layers": 32, "n_heads": 32, "multiple_of": 256, "norm_eps": 1e-5,
                    "vocab_size": -1},
           "hf": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 4096,
                  "tie_word_embeddings": False}},
    "8b": {"name": "Llama 3 8B", "tied": False,
           "meta": {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
                    "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "norm_eps": 1e-5, "rope_theta": 500000.0},
           "hf": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                  "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 8192,
                  "tie_word_embeddings": False}},
}
HF_COMMON = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
             "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16", "bos_token_id": 1,
             "eos_token_id": 2}
def config_of(shape: str):
    from llama_np.config import ModelConfig
    s = SHAPES[shape]
    cfg = ModelConfig.from_hf_config({**HF_COMMON, **s["hf"]})
    return cfg


# ----------------------------------------------------------------------------- writing
class RandomBF16:
    """Random bf16 bits, cheaply: a 32 MB pool of random values of magnitude 2^-6..2^-5 (like
    trained weights, ~0.02) with random signs, replayed from shifting offsets."""

    def __init__(self, seed: int = 0, n: int = 1 << 24):
        bits = np.random.default_rng(seed).integers(0, 1 << 16, n, dtype=np.uint16)
        # keep the sign bit and 7 mantissa bits; exponent fixed at 2^-6 (biased 121 << 7)
        self.pool = (bits & np.uint16(0x807F)) | np.uint16(121 << 7)
        self.pos = 0

    def write(self, f, n: int, is_norm: bool) -> None:
        if is_norm:   # norm weights are ~1 in trained models: bf16 1.0 is 0x3F80
            f.write(np.full(n, 0x3F80, dtype=np.uint16).tobytes())
            return
        while n:
            start = self.pos % (len(self.pool) - 1)
            k = min(n, len(self.pool) - start, 1 << 22)
            f.write(self.pool[start:start + k].tobytes())
            n -= k
            self.pos = start + k + 7919   # a prime stride: no two tensors start alike


def tensor_specs(shape: str) -> dict:
    """{meta name: (dtype, shape)} in Meta's order (tok_embeddings, layers..., norm, output)."""
    from llama_np.model import param_shapes
    shapes = param_shapes(config_of(shape))
    order = ["tok_embeddings"] + [k for k in shapes if k.startswith("layers.")] + ["norm", "output"]
    return {k: ("BF16", shapes[k]) for k in order if k in shapes}


def write_checkpoint(shape: str, fmt: str, folder: Path) -> float:
    """Write a random bf16 checkpoint; returns seconds. Skips if a complete one is there."""
    from llama_np.weights import safetensors, torch_zip
    done = folder / ".complete"
    if done.exists():
        return 0.0
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    specs = tensor_specs(shape)
    rnd = RandomBF16()
    if fmt == "meta":
        (folder / "params.json").write_text(json.dumps(SHAPES[shape]["meta"]))
        specs = {meta_key(k): v for k, v in specs.items()}
        torch_zip.write(folder / "consolidated.00.pth", specs,
                        lambda name, f: rnd.write(f, math.prod(specs[name][1]), len(specs[name][1]) == 1))
    else:
        (folder / "config.json").write_text(json.dumps({**HF_COMMON, **SHAPES[shape]["hf"]}))
        specs = {hf_key(k): v for k, v in specs.items()}
        safetensors.write(folder / "model.safetensors", specs,
                          lambda name, f: rnd.write(f, math.prod(specs[name][1]), len(specs[name][1]) == 1),
                          metadata={"format": "pt"})
    done.write_text("ok")
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- measuring (child)
def vm_hwm() -> int:
    """Peak resident set size of this process in bytes (VmHWM: includes memory-mapped file pages
    that were read, which is what a 16-bit memory-mapped model costs)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def vm_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


PROMPT = [128000, 791, 6864, 315, 9822, 374, 12366, 13]   # 8 token ids valid for every vocab here


def run_llama_np(folder: Path, dtype: str, tokens: int, logits_out: str | None) -> dict:
    from llama_np.bench import weight_bytes_per_token
    from llama_np.kv_cache import new_cache
    from llama_np.model import forward, nest
    from llama_np.weights import load_model
    t0 = time.perf_counter()
    cfg, flat, _ = load_model(folder, dtype=dtype, progress=False)
    load_s = time.perf_counter() - t0
    params = nest(flat, cfg)
    prompt = [i % cfg.vocab_size for i in PROMPT]
    cache = new_cache(cfg, max_seq_len=len(prompt) + tokens + 1)
    t0 = time.perf_counter()
    logits = forward(params, cfg, prompt, 0, cache)
    prefill_s = time.perf_counter() - t0
    if logits_out:
        np.save(logits_out, logits)
    nxt, times = int(logits[-1].argmax()), []
    for i in range(tokens):
        t0 = time.perf_counter()
        row = forward(params, cfg, [nxt], len(prompt) + i, cache, last_only=True)[-1]
        times.append(time.perf_counter() - t0)
        assert row.dtype == np.float32 and np.isfinite(row).all()
        nxt = int(row.argmax())
    steady = times[1:] or times   # the first step also faults in pages of the memory map
    return {"load_s": load_s, "prefill_s": prefill_s, "first_token_s": times[0],
            "decode_tok_s": len(steady) / sum(steady), "peak_rss": vm_hwm(), "rss": vm_rss(),
            "bytes_per_token": weight_bytes_per_token(params, cfg)}


def run_transformers(folder: Path, tokens: int) -> dict:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="eager")
    model.eval()
    load_s = time.perf_counter() - t0
    vocab = model.config.vocab_size
    ids = torch.tensor([[i % vocab for i in PROMPT]])
    times = []
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(ids, use_cache=True)
        prefill_s = time.perf_counter() - t0
        past, nxt = out.past_key_values, out.logits[0, -1].argmax().view(1, 1)
        for _ in range(tokens):
            t0 = time.perf_counter()
            out = model(nxt, past_key_values=past, use_cache=True)
            times.append(time.perf_counter() - t0)
            past, nxt = out.past_key_values, out.logits[0, -1].argmax().view(1, 1)
    steady = times[1:] or times
    return {"load_s": load_s, "prefill_s": prefill_s, "first_token_s": times[0],
            "decode_tok_s": len(steady) / sum(steady), "peak_rss": vm_hwm(), "rss": vm_rss()}


# ----------------------------------------------------------------------------- measuring (parent)
def stream_rate(gib: float = 1.0, repeats: int = 3) -> float:
    """float32 matrix-vector streaming rate in bytes/s, on a matrix too big for any cache."""
    n = int(math.sqrt(gib * 2**30 / 4))
    w = np.ones((n, n), dtype=np.float32)
    x = np.ones(n, dtype=np.float32)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        w @ x
        best = max(best, w.nbytes / (time.perf_counter() - t0))
    return best


def widen_rate(repeats: int = 3) -> float:
    """bytes/s of bf16 weights through ``BF16Weight.matmul`` (widen + BLAS, all threads) on a
    352 MB matrix in RAM (3 x an 8B FFN matrix: larger than the L3 caches of these machines):
    the practical limit of the bf16 path."""
    from llama_np.weights.packed import BF16Weight
    raw = np.random.default_rng(0).integers(0, 1 << 16, (3 * 14336, 4096), dtype=np.uint16)
    raw = (raw & np.uint16(0x807F)) | np.uint16(121 << 7)
    w, x = BF16Weight(raw), np.ones((1, 4096), np.float32)
    w.matmul(x)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        w.matmul(x)
        best = max(best, raw.nbytes / (time.perf_counter() - t0))
    return best


def child(args_list: list, timeout: float, script: str = __file__) -> dict:
    """Run ``script`` (this file, or another benchmark) in a new process, so that its peak RSS is
    its own; -> the dict it prints as its last JSON line, or {"error": one line}."""
    cmd = [sys.executable, script, *args_list]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {p.returncode}: {tail}"}
    return json.loads(lines[-1])


def available_memory() -> int:
    from llama_np.weights.checkpoint import available_memory as avail
    return avail()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--dir", default=os.environ.get("LLAMA_NP_BENCH_DIR", "/tmp/llama_np_real_shapes"),
                    help="where the random checkpoints go (needs ~2 bytes per parameter per format)")
    ap.add_argument("--formats", default="meta,hf", help="comma-separated: meta, hf")
    ap.add_argument("--dtypes", default="bf16,int8", help="llama_np weight modes to measure")
    ap.add_argument("--tokens", type=int, default=None, help="decode steps per run (default 16, quick 6)")
    ap.add_argument("--quick", action="store_true", help="CI: HF format only, few tokens")
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints (default: delete them at the end)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--run", help=argparse.SUPPRESS)            # child: measure llama_np on this folder
    ap.add_argument("--run-transformers", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="bf16", help=argparse.SUPPRESS)
    ap.add_argument("--logits-out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    tokens = a.tokens or (6 if a.quick else 16)
    if a.run:
        print(json.dumps(run_llama_np(Path(a.run), a.dtype, tokens, a.logits_out)))
        return 0
    if a.run_transformers:
        print(json.dumps(run_transformers(Path(a.run_transformers), tokens)))
        return 0

    os.environ.setdefault("LLAMA_NP_QUIET", "1")
    formats = ["hf"] if a.quick else [f for f in a.formats.split(",") if f]
    cfg = config_of(a.shape)
    n = sum(math.prod(s) for _, s in tensor_specs(a.shape).values())
    weight_bytes = 2 * n
    base = Path(a.dir) / a.shape
    print(f"{SHAPES[a.shape]['name']} shape: {n / 1e9:.2f} G parameters, {weight_bytes / 1e9:.2f} GB in bf16; "
          f"{os.cpu_count()} CPUs, {available_memory() / 2**30:.1f} GiB available")
    free = shutil.disk_usage(Path(a.dir).parent if not Path(a.dir).exists() else a.dir).free
    if free < weight_bytes * len(formats) * 1.05 and not all((base / f / ".complete").exists() for f in formats):
        print(f"not enough disk in {a.dir}: need {weight_bytes * len(formats) / 1e9:.1f} GB, have {free / 1e9:.1f} GB")
        return 2
    for fmt in formats:
        s = write_checkpoint(a.shape, fmt, base / fmt)
        print(f"wrote {fmt} checkpoint in {s:.1f} s" if s else f"{fmt} checkpoint already in {base / fmt}")

    rate, widen = stream_rate(), widen_rate()
    results = {"shape": a.shape, "params": n, "weight_bytes": weight_bytes, "stream_GBps": rate / 1e9,
               "bf16_widen_GBps": widen / 1e9, "runs": {}}
    print(f"float32 matrix-vector stream rate {rate / 1e9:.1f} GB/s; bf16 widen+multiply {widen / 1e9:.1f} GB/s "
          "(of bf16 bytes)")
    timeout = 600 if a.shape == "1b" else 1800
    logits = {}
    for fmt in formats:
        for dt in [d for d in a.dtypes.split(",") if d]:
            out = str(base / f"logits-{fmt}-{dt}.npy")
            r = child(["--run", str(base / fmt), "--dtype", dt, "--tokens", str(tokens), "--logits-out", out], timeout)
            if "error" not in r:
                logits[(fmt, dt)] = np.load(out)
                r["limit_tok_s"] = rate / r["bytes_per_token"]
            results["runs"][f"llama_np {dt} ({fmt})"] = r
    for fmt in formats:
        if (fmt, "bf16") in logits and (fmt, "int8") in logits:
            a16, a8 = logits[(fmt, "bf16")], logits[(fmt, "int8")]
            results[f"int8_logit_error_{fmt}"] = {
                "max_abs": float(np.abs(a8 - a16).max()), "logit_scale": float(np.abs(a16).max()),
                "argmax_agree": float((a8.argmax(-1) == a16.argmax(-1)).mean())}
    if not a.no_transformers and "hf" in formats:
        need = weight_bytes + 3 * 2**30
        if available_memory() < need:
            results["runs"]["transformers bf16 (hf)"] = {
                "error": f"skipped: needs ~{need / 2**30:.0f} GiB, {available_memory() / 2**30:.0f} GiB available"}
        else:
            results["runs"]["transformers bf16 (hf)"] = child(
                ["--run-transformers", str(base / "hf"), "--tokens", str(tokens)], timeout)

    print(f"\n{'run':28s} {'load s':>7s} {'peak RSS GiB':>12s} {'prefill s':>9s} {'1st tok s':>9s} "
          f"{'decode tok/s':>12s} {'GB/s':>5s} {'limit tok/s':>11s}")
    for name, r in results["runs"].items():
        if "error" in r:
            print(f"{name:28s} {r['error']}")
            continue
        lim = f"{r['limit_tok_s']:.2f}" if "limit_tok_s" in r else ""
        gbs = f"{r['bytes_per_token'] * r['decode_tok_s'] / 1e9:.1f}" if "bytes_per_token" in r else ""
        print(f"{name:28s} {r['load_s']:7.1f} {r['peak_rss'] / 2**30:12.2f} {r['prefill_s']:9.2f} "
              f"{r['first_token_s']:9.2f} {r['decode_tok_s']:12.2f} {gbs:>5s} {lim:>11s}")
    print(f"(GB/s: weight bytes read per second while decoding; "
          f"limit = stream rate / weight bytes read per token; peak RSS target: weights "
          f"{weight_bytes / 2**30:.2f} GiB + 2 GiB = {weight_bytes / 2**30 + 2:.2f} GiB)")
    for k, v in results.items():
        if k.startswith("int8_logit_error"):
            print(f"int8 vs bf16 prefill logits ({k.rsplit('_', 1)[-1]}): max abs diff {v['max_abs']:.3g} "
                  f"on logits up to {v['logit_scale']:.3g}; argmax agreement {100 * v['argmax_agree']:.0f} %")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    if not a.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
