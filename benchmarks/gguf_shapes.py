"""GGUF at real shapes: peak memory and decode speed of packed quantized weights, llama.cpp beside.

    python benchmarks/gguf_shapes.py --shape 1b --ftype Q4_K_M --layers 2    # a few minutes
    python benchmarks/gguf_shapes.py --shape 1b --ftype Q8_0 --layers 4      # CI (no llama.cpp needed)
    python benchmarks/gguf_shapes.py --shape 8b --ftype Q4_K_M               # by hand: ~16 GB F16 on disk
    python benchmarks/gguf_shapes.py --shape 8b --ftype Q8_0
    python benchmarks/gguf_shapes.py --shape 1b --ftype Q4_K_M --check-transformers   # logits, ~2 min, 6.5 GiB

Needs llama-cpp-python (the ``llamacpp`` extra), except for Q8_0, which the ``gguf`` package can
write itself (then there is no llama.cpp column: CI does not build llama.cpp). Steps:
  1. a random-weight F16 GGUF of the shape (Llama 3.2 1B or Llama 3 8B, from real_shapes.py),
     written one tensor at a time (never the whole model in memory);
  2. llama.cpp quantizes it to FTYPE (``llama_model_quantize``, as ``llama-quantize`` does);
  3. each in a fresh subprocess, so peak RSS (VmHWM) means something:
       * llama_np, weights packed (memory-mapped, dequantized a few rows at a time);
       * llama.cpp (llama-cpp-python), same file, same number of threads;
     reporting load time, peak RSS against the file size, decode tokens/s and the ratio;
  4. the bandwidth limit: packed weight bytes read per token / the float32 streaming rate.
``--check-transformers`` instead compares llama_np's logits (a 16-token prefill, then 8 cached
decode steps) with transformers loading the same file (issue 16: within 1e-3). Measured at the 1B
shape, all 16 layers: max |diff| <= 1.2e-5 for Q4_K_M, Q5_K_M, Q6_K and Q8_0 (logits of max |x|
~5), greedy tokens 24/24 (docs/design.md 5.4).
Random weights decode at the speed of trained ones (same shapes, same bytes). Targets (issue 16)
for 8B on 2 cores: Q4_K_M peak RSS <= file + 1.5 GiB, >= 0.3 tok/s; Q8_0 >= 0.5 tok/s. Timings
on a shared machine are noisy: compare the ratios within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.real_shapes import PROMPT, SHAPES, child, stream_rate, vm_hwm, vm_rss  # noqa: E402


def config_of(shape: str, layers: int | None = None):
    from llama_np.config import ModelConfig
    h = SHAPES[shape]["hf"]
    return ModelConfig(dim=h["hidden_size"], n_layers=layers or h["num_hidden_layers"],
                       n_heads=h["num_attention_heads"], n_kv_heads=h["num_key_value_heads"],
                       vocab_size=h["vocab_size"], hidden_dim=h["intermediate_size"],
                       norm_eps=h["rms_norm_eps"], rope_theta=h["rope_theta"],
                       tie_embeddings=h["tie_word_embeddings"], max_seq_len=h["max_position_embeddings"])


def gguf_name(meta: str) -> str:
    top = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output"}
    per = {"attention_norm": "attn_norm", "ffn_norm": "ffn_norm", "wq": "attn_q", "wk": "attn_k",
           "wv": "attn_v", "wo": "attn_output", "w1": "ffn_gate", "w2": "ffn_down", "w3": "ffn_up"}
    if meta.startswith("layers."):
        _, i, n = meta.split(".")
        return f"blk.{i}.{per[n]}.weight"
    return f"{top[meta]}.weight"


def write_f16(cfg, path: Path, q8: bool = False) -> float:
    """Random F16 GGUF of ``cfg``, one tensor in memory at a time; returns seconds taken.
    ``q8``: matrices quantized to Q8_0 by the ``gguf`` package instead (no llama.cpp needed)."""
    import gguf
    from gguf.quants import quantize as gguf_quantize

    from llama_np.model import param_shapes
    from llama_np.weights.gguf import write_metadata
    t0 = time.perf_counter()
    shapes = param_shapes(cfg)
    w = gguf.GGUFWriter(str(path), "llama")
    write_metadata(w, cfg)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    # llama.cpp will not load a model without a vocabulary: placeholder SentencePiece pieces.
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>" for i in range(cfg.vocab_size)])
    w.add_token_scores([0.0] * cfg.vocab_size)
    w.add_token_types([gguf.TokenType.NORMAL] * cfg.vocab_size)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    Q8 = gguf.GGMLQuantizationType.Q8_0
    for n, s in shapes.items():
        if len(s) == 1:
            w.add_tensor_info(gguf_name(n), s, np.dtype(np.float32), 4 * s[0])
        elif q8:
            byte_shape = (s[0], s[1] // 32 * 34)
            w.add_tensor_info(gguf_name(n), byte_shape, np.dtype(np.uint8), byte_shape[0] * byte_shape[1], raw_dtype=Q8)
        else:
            w.add_tensor_info(gguf_name(n), s, np.dtype(np.float16), 2 * s[0] * s[1])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(0)
    for n, s in shapes.items():
        if len(s) == 1:
            a = np.ones(s, np.float32)
        else:
            a = rng.standard_normal(s, dtype=np.float32) / np.float32(np.sqrt(s[1]))
            a = gguf_quantize(a, Q8) if q8 else a.astype(np.float16)
        w.write_tensor_data(a)
        del a
    w.close()
    return time.perf_counter() - t0


def quantize(src: Path, dest: Path, ftype: str, threads: int) -> float:
    import llama_cpp
    t0 = time.perf_counter()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dest).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to {ftype}")
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- children
def run_llama_np(path: Path, tokens: int) -> dict:
    from llama_np.bench import weight_bytes_per_token
    from llama_np.kv_cache import new_cache
    from llama_np.model import forward, nest
    from llama_np.weights.gguf import load
    t0 = time.perf_counter()
    cfg, flat, _ = load(path, tokenizer=False, progress=False, dtype="packed")
    load_s = time.perf_counter() - t0
    params = nest(flat, cfg)
    prompt = [i % cfg.vocab_size for i in PROMPT]
    cache = new_cache(cfg, max_seq_len=len(prompt) + tokens + 1)
    logits = forward(params, cfg, prompt, 0, cache, last_only=True)
    nxt, times = int(logits[-1].argmax()), []
    for i in range(tokens):
        t0 = time.perf_counter()
        row = forward(params, cfg, [nxt], len(prompt) + i, cache, last_only=True)[-1]
        times.append(time.perf_counter() - t0)
        nxt = int(row.argmax())
    steady = times[1:] or times   # the first step also reads the file's pages in
    return {"load_s": load_s, "decode_tok_s": len(steady) / sum(steady), "peak_rss": vm_hwm(),
            "rss": vm_rss(), "bytes_per_token": weight_bytes_per_token(params, cfg)}


def run_llamacpp(path: Path, tokens: int, threads: int) -> dict:
    import llama_cpp
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(str(path), n_ctx=len(PROMPT) + tokens + 8, n_threads=threads, n_threads_batch=threads,
                          vocab_only=False, verbose=False, use_mmap=True)
    load_s = time.perf_counter() - t0
    vocab = llm.n_vocab()
    llm.eval([i % vocab for i in PROMPT])
    times = []
    for _ in range(tokens):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t0 = time.perf_counter()
        llm.eval([nxt])
        times.append(time.perf_counter() - t0)
    steady = times[1:] or times
    return {"load_s": load_s, "decode_tok_s": len(steady) / sum(steady), "peak_rss": vm_hwm(), "rss": vm_rss()}


CHECK_IDS, CHECK_PREFILL = 24, 16       # tokens compared with transformers; the first 16 as one prompt
CHECK_ATOL = 1e-3                       # issue 16: logits within 1e-3 of transformers on the same file


def check_transformers(path: Path) -> dict:
    """llama_np's logits on ``path`` against transformers loading the same GGUF (it dequantizes
    with ``gguf``, to float32): a 16-token prompt at once (prefill: dequantize + BLAS), then 8
    tokens one at a time through the KV cache (decode: llama_np's dot-product-domain product),
    against transformers' logits of the whole sequence. Random ids, seed 0."""
    import gc
    from llama_np.kv_cache import new_cache
    from llama_np.model import forward, nest
    from llama_np.weights.gguf import load
    cfg, flat, _ = load(path, tokenizer=False, progress=False, dtype="packed")
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, CHECK_IDS)
    params = nest(flat, cfg)
    cache = new_cache(cfg, max_seq_len=CHECK_IDS)
    ours = [forward(params, cfg, ids[:CHECK_PREFILL], 0, cache)]
    ours += [forward(params, cfg, ids[t:t + 1], t, cache) for t in range(CHECK_PREFILL, CHECK_IDS)]
    ours = np.concatenate(ours)
    del params, flat, cache
    gc.collect()
    import torch
    from transformers import AutoModelForCausalLM
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, torch_dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)[None]).logits[0].numpy().astype(np.float32)
    hf_s = time.perf_counter() - t0
    diff = np.abs(ours - ref)
    p = CHECK_PREFILL
    return {"prefill_max_abs": float(diff[:p].max()), "decode_max_abs": float(diff[p:].max()),
            "logit_scale": float(np.abs(ref).max()), "logit_std": float(ref.std()),
            "greedy_agree": int((ours.argmax(-1) == ref.argmax(-1)).sum()), "tokens": int(len(ids)),
            "transformers_s": hf_s, "peak_rss": vm_hwm()}


def print_check(r: dict) -> bool:
    if "error" in r:
        print(f"  transformers check: {r['error']}")
        return False
    ok = max(r["prefill_max_abs"], r["decode_max_abs"]) <= CHECK_ATOL
    print(f"  llama_np vs transformers on the same file ({r['tokens']} random ids; transformers load + "
          f"forward {r['transformers_s']:.0f} s, peak RSS {r['peak_rss'] / 2**30:.1f} GiB):")
    print(f"    logits: max |x| {r['logit_scale']:.2f}, std {r['logit_std']:.3f}")
    for what in ("prefill", "decode"):
        a = r[f"{what}_max_abs"]
        print(f"    {what:<8} ({'first ' + str(CHECK_PREFILL) + ' at once' if what == 'prefill' else 'one at a time, KV cache'}): "
              f"max |diff| {a:.2e} = {a / r['logit_scale']:.1e} of max |logit|")
    print(f"    greedy tokens agree: {r['greedy_agree']}/{r['tokens']}; within {CHECK_ATOL:g}: {'yes' if ok else 'NO'}")
    return ok


# ----------------------------------------------------------------------------- parent
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=["1b", "8b"], default="1b")
    ap.add_argument("--ftype", default="Q4_K_M", help="llama.cpp file type: Q4_K_M, Q5_K_M, Q6_K, Q8_0, ...")
    ap.add_argument("--layers", type=int, help="fewer layers than the real model (a quick run)")
    ap.add_argument("--tokens", type=int, default=6, help="decode steps to time")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/llama_np_gguf_shapes"))
    ap.add_argument("--keep", action="store_true", help="keep the GGUF files")
    ap.add_argument("--check-transformers", action="store_true",
                    help="instead of timing: compare prefill and cached-decode logits with transformers on the "
                         f"same file (needs torch + transformers; ~5 GB for the 1B shape), within {CHECK_ATOL:g}")
    ap.add_argument("--child", nargs=2, metavar=("WHICH", "PATH"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        which, path = a.child[0], Path(a.child[1])
        if which == "check":
            res = check_transformers(path)
        elif which == "llama_np":
            res = run_llama_np(path, a.tokens)
        else:
            res = run_llamacpp(path, a.tokens, a.threads)
        print(json.dumps(res))
        return 0
    try:
        import llama_cpp  # noqa: F401
        have_llamacpp = True
    except ImportError:   # CI: Q8_0 written by the gguf package, no llama.cpp column
        have_llamacpp = False
        if a.ftype != "Q8_0":
            print(f"gguf_shapes: {a.ftype} needs llama-cpp-python to quantize (pip install -e '.[llamacpp]'); "
                  f"without it only --ftype Q8_0 runs", file=sys.stderr)
            return 2
    cfg = config_of(a.shape, a.layers)
    a.workdir.mkdir(parents=True, exist_ok=True)
    tag = f"{a.shape}{'-' + str(a.layers) + 'l' if a.layers else ''}"
    src, dest = a.workdir / f"{tag}-F16.gguf", a.workdir / f"{tag}-{a.ftype}.gguf"
    name = SHAPES[a.shape]["name"] + (f", {a.layers} of {SHAPES[a.shape]['hf']['num_hidden_layers']} layers"
                                      if a.layers else "")
    if dest.exists():     # kept by an earlier --keep run
        print(f"{name}: reusing {dest}", flush=True)
    elif not have_llamacpp:
        print(f"{name}: writing {dest.name} (Q8_0 by the gguf package; no llama-cpp-python here) ...", flush=True)
        print(f"  written in {write_f16(cfg, dest, q8=True):.0f} s", flush=True)
    else:
        print(f"{name}: writing {src.name} ...", flush=True)
        write_s = write_f16(cfg, src)
        q_s = quantize(src, dest, a.ftype, a.threads)
        src.unlink()
        print(f"  F16 written in {write_s:.0f} s, quantized to {a.ftype} by llama.cpp in {q_s:.0f} s", flush=True)
    size = dest.stat().st_size
    print(f"  {dest.name}: {size / 2**30:.2f} GiB", flush=True)
    env_args = ["--tokens", str(a.tokens), "--threads", str(a.threads)]
    os.environ["LLAMA_NP_THREADS"] = str(a.threads)
    if a.check_transformers:
        ok = print_check(child([*env_args, "--child", "check", str(dest)], timeout=3600, script=__file__))
        if not a.keep:
            dest.unlink()
        return 0 if ok else 1
    ours = child([*env_args, "--child", "llama_np", str(dest)], timeout=3600, script=__file__)
    peer = (child([*env_args, "--child", "llamacpp", str(dest)], timeout=3600, script=__file__) if have_llamacpp
            else {"error": "not installed (pip install -e '.[llamacpp]')"})
    rate = stream_rate()
    print(f"  {'run':<12} {'load s':>7} {'peak RSS GiB':>13} {'RSS - file GiB':>15} {'decode tok/s':>13}")
    for label, r in (("llama_np", ours), ("llama.cpp", peer)):
        if "error" in r:
            print(f"  {label:<12} {r['error']}")
            continue
        print(f"  {label:<12} {r['load_s']:>7.1f} {r['peak_rss'] / 2**30:>13.2f} "
              f"{(r['peak_rss'] - size) / 2**30:>15.2f} {r['decode_tok_s']:>13.3f}")
    if "error" not in ours and "error" not in peer:
        print(f"  llama_np / llama.cpp decode speed: {ours['decode_tok_s'] / peer['decode_tok_s']:.3f}")
    if "error" not in ours:
        b = ours["bytes_per_token"]
        print(f"  packed weights read per token {b / 1e9:.2f} GB; float32 stream rate {rate / 1e9:.1f} GB/s "
              f"-> bandwidth limit {rate / b:.2f} tok/s")
    if not a.keep:
        dest.unlink()
    return 0 if "error" not in ours else 1   # llama.cpp failing is reported, not ours to fail on


if __name__ == "__main__":
    sys.exit(main())
