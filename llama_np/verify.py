"""``python -m llama_np verify``: is this checkpoint computed correctly? Compare logits.

Feed prompts with known token ids through llama_np and through a reference, and compare the
(T, vocab) logits: the largest absolute difference and how often the top token agrees.
References, in the order they are tried:

  1. a ``.npz`` the user passes (``--reference``): ``ids`` (T,) + ``logits`` (T, vocab), or
     ``ids_0``/``logits_0``, ``ids_1``/... for several prompts. ``write_reference`` makes one
     with transformers on a machine that has the memory for it;
  2. transformers on the same checkpoint (Hugging Face folder or GGUF file), float32 with eager
     attention, when the ``reference`` extra is installed and it fits: float32 needs about
     4 bytes per parameter (7B: ~28 GB, more than a 24 GiB machine has);
  3. the published values that transformers' own integration tests assert for a real
     checkpoint, when the shape is recognised (``llama_np.published``). Those are logits of the
     16-bit weights: a quantized GGUF (Q4_K_M, Q8_0, ...) computes other numbers by design, so
     for one of those only 1 or 2 apply, and the report says which was used.

llama_np itself runs with 16-bit weights kept 16-bit when float32 copies would not fit; that
changes nothing in the numbers (widening bf16 to float32 is exact, the sums are float32).
"""
from __future__ import annotations

import gc
import os
import re
from pathlib import Path

import numpy as np

from . import published
from .model import forward, nest, param_shapes

DEFAULT_TEXTS = ["The capital of France is", "I believe the meaning of life is"]
DEFAULT_IDS = [1, 306, 4658, 278, 6593, 310, 2834, 338]   # Llama 2: BOS + "I believe the meaning of life is"
# float32 against float32: only summation order differs. On 2-30 layer models we measured
# 2e-6 (tiny random) to 4e-5 (SmolLM2-135M); a 32-layer 7B with logits near 20 stays well under 1e-3.
DEFAULT_TOLERANCE = 2e-3


# ----------------------------------------------------------------------------- prompts
def parse_prompts(prompts, tokenizer, vocab_size: int) -> list[list[int]]:
    """Prompts as token-id lists. Each item: a list of ints, a string of comma-separated ids
    ("1,306,4658"), or text (tokenized with the model's tokenizer, BOS where the model wants it).
    None: two default sentences, or fixed ids when the model has no tokenizer."""
    if not prompts:
        if tokenizer is None:
            return [[i % vocab_size for i in DEFAULT_IDS]]
        prompts = DEFAULT_TEXTS
    out = []
    for p in prompts:
        if isinstance(p, (list, tuple, np.ndarray)):
            ids = [int(i) for i in p]
        elif re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", str(p)):
            ids = [int(i) for i in str(p).split(",")]
        else:
            if tokenizer is None:
                raise ValueError("this model has no tokenizer: give prompts as token ids, e.g. --prompt 1,306,4658")
            ids = tokenizer.encode(str(p), bos=bool(getattr(tokenizer, "add_bos", True)))
        if not ids:
            raise ValueError(f"prompt {p!r} has no tokens")
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})")
        out.append(ids)
    return out


# ----------------------------------------------------------------------------- references
def read_reference(path) -> list[tuple[list[int], np.ndarray]]:
    """A reference .npz -> [(ids, logits (T, vocab)), ...]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference file {path} not found")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{path}: not a readable .npz ({e})") from None
    keys = set(z.files)
    if {"ids", "logits"} <= keys:
        pairs = [("ids", "logits")]
    else:
        n = sorted(int(k[4:]) for k in keys if re.fullmatch(r"ids_\d+", k))
        pairs = [(f"ids_{i}", f"logits_{i}") for i in n]
        if not pairs or any(lg not in keys for _, lg in pairs):
            raise ValueError(f"{path}: expected arrays 'ids' and 'logits' (or ids_0/logits_0, ...), "
                             f"found {sorted(keys)}")
    out = []
    for ik, lk in pairs:
        ids, logits = np.asarray(z[ik]).reshape(-1), np.asarray(z[lk], dtype=np.float32)
        if logits.ndim == 3 and logits.shape[0] == 1:
            logits = logits[0]
        if logits.ndim != 2 or logits.shape[0] != len(ids):
            raise ValueError(f"{path}: {lk} has shape {logits.shape}, expected ({len(ids)}, vocab)")
        out.append(([int(i) for i in ids], logits))
    return out


def write_reference(path, pairs) -> None:
    """[(ids, logits), ...] -> a reference .npz that ``verify --reference`` reads."""
    arrays = {}
    for i, (ids, logits) in enumerate(pairs):
        arrays[f"ids_{i}"] = np.asarray(ids, dtype=np.int64)
        arrays[f"logits_{i}"] = np.asarray(logits, dtype=np.float32)
    np.savez_compressed(path, **arrays)


def transformers_available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except Exception:
        return False
    return True


def transformers_logits(model_path, prompts) -> list[np.ndarray]:
    """Reference logits from transformers (float32, eager attention, offline) for a Hugging Face
    folder or a GGUF file (which transformers dequantizes to float32 itself)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM
    path = Path(model_path)
    kw = dict(dtype=torch.float32, attn_implementation="eager")
    if path.is_file():
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kw)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kw)
    model.eval()
    out = []
    with torch.no_grad():
        for ids in prompts:
            out.append(model(torch.tensor([ids])).logits[0].float().numpy())
    del model
    gc.collect()
    return out


def quantized_types(path) -> list[str]:
    """The quantized tensor types of a GGUF file (e.g. ['Q4_K', 'Q6_K']); [] for anything else."""
    path = Path(path)
    if not path.is_file():
        return []
    from .tokenizer.gguf_meta import open_reader
    kinds = {t.tensor_type.name for t in open_reader(os.fspath(path)).tensors}
    return sorted(kinds - {"F32", "F16", "BF16"})


def n_params(cfg) -> int:
    return sum(int(np.prod(shape)) for shape in param_shapes(cfg).values())


# ----------------------------------------------------------------------------- comparing
def compare(ours: np.ndarray, ref: np.ndarray, tolerance: float) -> dict:
    """Max abs difference and top-1 agreement. A disagreement only counts where the reference's
    top two logits are more than 2 * tolerance apart: a near-tie may flip on rounding alone."""
    if ours.shape != ref.shape:
        raise ValueError(f"reference logits have shape {ref.shape}, llama_np's {ours.shape}")
    diff = float(np.abs(ours.astype(np.float64) - ref).max())
    a, b = ours.argmax(-1), ref.argmax(-1)
    top2 = np.sort(ref, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * tolerance
    return {"max_abs": diff, "agree": int((a == b).sum()), "n": len(a),
            "bad_argmax": int(((a != b) & clear).sum())}


def kl_top1(ref_logits: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """How far ``logits`` (T, vocab) moved from ``ref_logits`` (T, vocab), as distributions: the mean
    over positions of KL(P_ref || P) in nats, with P = softmax of each row, and the fraction of
    positions whose top token agrees. Computed in float64 with log-softmax (no exp overflow, no
    log(0)); the measure llama.cpp's ``llama-perplexity --kl-divergence`` reports for quantized models."""
    ref, got = np.asarray(ref_logits, np.float64), np.asarray(logits, np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"logits have shape {got.shape}, the reference {ref.shape}")
    log_p = ref - ref.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    log_q = got - got.max(-1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    return float(kl.mean()), float((ref.argmax(-1) == got.argmax(-1)).mean())


def _report(label: str, results: list, tolerance: float, out) -> bool:
    worst = max(r["max_abs"] for r in results)
    agree, n = sum(r["agree"] for r in results), sum(r["n"] for r in results)
    bad = sum(r["bad_argmax"] for r in results)
    ok = worst <= tolerance and bad == 0
    for i, r in enumerate(results):
        print(f"  prompt {i + 1}: {r['n']} tokens, max |logit diff| {r['max_abs']:.3g}, "
              f"argmax agrees {r['agree']}/{r['n']}", file=out)
    print(f"{label}: max abs difference {worst:.3g} (tolerance {tolerance:g}), argmax agreement "
          f"{agree}/{n} ({100 * agree / n:.1f} %): {'PASS' if ok else 'FAIL'}", file=out)
    return ok


def run_llama_np(params, cfg, prompts) -> list[np.ndarray]:
    return [forward(params, cfg, ids) for ids in prompts]


def verify(model_path, reference=None, prompts=None, tolerance=None, out=None,
           use_transformers: bool = True) -> bool:
    """Compare llama_np's logits for ``model_path`` with the best reference available; prints a
    report to ``out`` (stdout) and returns True on PASS."""
    import sys

    from .weights import load_model, resolve
    from .weights.checkpoint import available_memory
    out = out or sys.stdout
    path = resolve(model_path)
    cfg, flat, tok = load_model(path)
    tolerance = DEFAULT_TOLERANCE if tolerance is None else float(tolerance)
    if reference is not None:
        pairs = read_reference(reference)
        ids_list, refs, label = [p[0] for p in pairs], [p[1] for p in pairs], f"reference {reference}"
    elif use_transformers and transformers_available() and not (path / "params.json").is_file():
        # transformers dequantizes a GGUF's blocks itself (with gguf), so it is a reference for the
        # very numbers the file holds, quantized or not.
        ids_list = parse_prompts(prompts, tok, cfg.vocab_size)
        need, avail = 4 * n_params(cfg) + 2**30, available_memory()
        if avail and need > avail:
            print(f"transformers in float32 needs ~{need / 1e9:.0f} GB, {avail / 1e9:.0f} GB available: skipped "
                  "(make a reference .npz with llama_np.verify.write_reference on a bigger machine)", file=out)
            refs = None
        else:
            del flat   # one model in memory at a time
            gc.collect()
            refs = transformers_logits(path, ids_list)
            label = ("transformers on the same GGUF file (float32, eager)" if path.is_file()
                     else "transformers (float32, eager)")
            cfg, flat, tok = load_model(path)
    else:
        refs = None
    params = nest(flat, cfg)
    if refs is None:
        quantized = quantized_types(path)
        if quantized:
            raise ValueError(f"{path.name} is quantized ({', '.join(quantized)}): the published Llama values "
                             f"apply to 16-bit checkpoints only; compare with transformers on the same file "
                             f"(install the reference extra; float32 needs ~{(4 * n_params(cfg) + 2**30) / 1e9:.0f} GB) "
                             f"or pass --reference FILE.npz made by llama_np.verify.write_reference")
        matches = published.references_for(cfg, path.name)
        if not matches:
            raise ValueError(f"no reference for {path}: pass --reference FILE.npz, install the reference extra "
                             "(torch + transformers) for a Hugging Face folder or GGUF file, or use a checkpoint "
                             "with published values (Llama-2-7b)")
        return _verify_published(matches, params, cfg, out)
    ours = run_llama_np(params, cfg, ids_list)
    results = [compare(o, r, tolerance) for o, r in zip(ours, refs)]
    return _report(label, results, tolerance, out)


def _verify_published(matches, params, cfg, out) -> bool:
    ok_any = False
    for ref in matches:
        logits = forward(params, cfg, ref["ids"])
        print(f"published values for {ref['name']} ({ref['source']}), ids {ref['ids']}:", file=out)
        for variant, ok, worst, rows in published.check(ref, logits):
            detail = ", ".join(f"{what} max diff {d:.3g}" for what, d, _ in rows)
            print(f"  {variant}: {detail}: {'PASS' if ok else 'FAIL'}", file=out)
            ok_any |= ok
        print(f"argmax agreement: n/a (the published values are means and a slice); "
              f"{'PASS' if ok_any else 'FAIL'}", file=out)
    return ok_any


def cli_verify(args) -> int:
    """Entry point for ``python -m llama_np verify``: args.model, args.reference (npz or None),
    args.prompt (list or None), args.tolerance (float or None). Exit code 0 on PASS, 1 on FAIL."""
    ok = verify(args.model, reference=getattr(args, "reference", None), prompts=getattr(args, "prompt", None),
                tolerance=getattr(args, "tolerance", None))
    return 0 if ok else 1
