"""Decode product y = W x of GGUF block-quantized weights: weights/s by type, threads and shape.

    python benchmarks/quant_matvec.py                       # Q4_K Q6_K Q8_0 Q5_K Q4_0, 1 and 2 threads
    python benchmarks/quant_matvec.py --types Q4_K --repeats 9

``GGUFWeight.matmul`` with one token: the dot-product-domain path (``weights/qdot.py``); pass
``--T 16`` to time the dequantize + BLAS path that prefill takes. Random blocks (valid float16
scales) of Llama 3 8B's FFN shapes, 14336 x 4096 (w1, w3) and
4096 x 14336 (w2): 33-62 MB each, more than the L3 cache, so every product streams the packed
bytes from RAM as a decode step does. Beside each figure, in the same run: the float32
matrix-vector streaming rate (BLAS on a 1 GiB matrix) turned into the bandwidth limit in weights/s
for that type's bytes, and the float32 BLAS product itself in weights/s (what an ideal dequantizer
costing nothing would reach on float32 in cache).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llama_np.weights import packed, qdot, quants  # noqa: E402

SHAPES = [(14336, 4096), (4096, 14336)]
F16_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2],
              "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def random_weight(kind: str, n_out: int, n_in: int, seed: int = 0) -> quants.GGUFWeight:
    block, nbytes, _ = quants.TYPES[kind]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n_out * n_in // block, nbytes), dtype=np.uint8)
    for off in F16_FIELDS[kind]:
        d = (rng.standard_normal(len(raw)) * 1e-3).astype(np.float16)
        raw[:, off:off + 2] = d.view(np.uint8).reshape(-1, 2)
    return quants.GGUFWeight(raw.reshape(n_out, -1), kind, n_in)


def set_threads(n: int) -> None:
    os.environ["LLAMA_NP_THREADS"] = str(n)
    if packed._pool is not None:
        packed._pool.shutdown()
        packed._pool = None


def best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def stream_rate() -> float:
    """float32 BLAS matrix-vector bytes/s on a 1 GiB matrix (all cores: OpenBLAS's own threads)."""
    w = np.ones((16384, 16384), np.float32)
    x = np.ones(16384, np.float32)
    return max(w.nbytes / best_time(lambda: w @ x, 1) for _ in range(3))


def core_scaling(threads: int) -> float:
    """How many cores this run really had: a compute-bound NumPy loop (np.sin on 64 KB, which
    releases the GIL) on ``threads`` pool threads, as a speed-up over one. The machine is shared:
    the 2-thread column means nothing when this is near 1."""
    a = np.ones(1 << 14, np.float32)

    def work():
        b = np.empty_like(a)
        for _ in range(400):
            np.sin(a, out=b)

    set_threads(threads)
    pool = packed._get_pool()
    one = best_time(work, 3)
    many = best_time(lambda: [f.result() for f in [pool.submit(work) for _ in range(threads)]], 3)
    return threads * one / many


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", nargs="+", default=["Q4_K", "Q6_K", "Q8_0", "Q5_K", "Q4_0"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--T", type=int, default=1, help="tokens per product (decode: 1)")
    a = ap.parse_args(argv)
    rate = stream_rate()
    print(f"float32 stream rate {rate / 1e9:.1f} GB/s; G weights/s, best of {a.repeats}, T={a.T}")
    x_all = {n_in: np.random.default_rng(1).standard_normal((a.T, n_in)).astype(np.float32)
             for _, n_in in SHAPES}
    f32 = np.random.default_rng(2).standard_normal((256, 4096)).astype(np.float32)
    set_threads(1)     # in a pool thread: BLAS single-threaded there (packed._init_worker)
    f32_rate = f32.size / packed._get_pool().submit(best_time, lambda: f32 @ x_all[4096][0], 50).result()
    print(f"float32 BLAS matrix-vector, 1 MB in cache, 1 thread: {f32_rate / 1e9:.1f} G weights/s")
    for t in a.threads:
        if t > 1:
            print(f"{t} threads: compute-bound control ran {core_scaling(t):.2f}x one thread")
    head = "  ".join(f"{t} thr" for t in a.threads)
    print(f"{'type':<6} {'shape':<12} dot-domain: {head}   dequantize+BLAS: {head}   limit (bandwidth)")
    for kind in a.types:
        bpw = quants.bits_per_weight(kind) / 8
        for n_out, n_in in SHAPES:
            w = random_weight(kind, n_out, n_in)
            figs = {}
            for path, max_tokens in (("dot", qdot.MAX_TOKENS), ("dequant", 0)):
                qdot.MAX_TOKENS, saved = max_tokens, qdot.MAX_TOKENS
                try:
                    for t in a.threads:
                        set_threads(t)
                        figs[path, t] = n_out * n_in / best_time(lambda: w.matmul(x_all[n_in]), a.repeats)
                finally:
                    qdot.MAX_TOKENS = saved
            cells = "   ".join("  ".join(f"{figs[p, t] / 1e9:5.2f}" for t in a.threads) for p in ("dot", "dequant"))
            print(f"{kind:<6} {n_out}x{n_in:<6}        {cells}          {rate / bpw / 1e9:5.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
