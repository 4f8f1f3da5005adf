"""Meta's own checkpoint folders (the ``llama`` / ``llama-models`` download):

    params.json            {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, ...}
    consolidated.00.pth    torch.save'd state dict, bf16 (one file per model-parallel rank)
    consolidated.01.pth    ... (13B: 2, 70B: 8)
    tokenizer.model        SentencePiece (Llama 2) or tiktoken ranks (Llama 3.x)

Tensor names are those of Meta's ``model.py``: ``layers.0.attention.wq.weight``,
``layers.0.feed_forward.w1.weight``, ``tok_embeddings.weight``... and q/k rows are already in
Meta's interleaved RoPE layout (no permutation, unlike Hugging Face).

Shards: Meta splits each matrix across model-parallel ranks the way its
``ColumnParallelLinear`` / ``RowParallelLinear`` layers need, so merging concatenates along
that axis: wq, wk, wv, w1, w3, output by rows (dim 0); wo, w2 by columns (dim 1); norms are
copied on every rank. tok_embeddings is split by columns in Llama 2 (``ParallelEmbedding``) but
by rows in Llama 3 (``VocabParallelEmbedding``): we tell them apart by the shard's shape.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from . import torch_zip
from .checkpoint import build_params, check_tensors, read_json
from .errors import CheckpointError, CheckpointNotFound

ROW_SPLIT = ("wq", "wk", "wv", "w1", "w3", "output")     # ColumnParallelLinear: out features split
COL_SPLIT = ("wo", "w2")                                   # RowParallelLinear: in features split
IGNORED = ("rope.freqs",)   # Llama 2 saved its RoPE frequencies; we recompute them from params.json


def meta_name(key: str) -> str:
    """'layers.0.attention.wq.weight' -> 'layers.0.wq'; 'norm.weight' -> 'norm'."""
    name = key[:-len(".weight")] if key.endswith(".weight") else key
    return re.sub(r"\.(attention|feed_forward)\.(w[qkvo123])$", r".\2", name)


def merge_axis(name: str, shards: list, dim: int) -> int | None:
    """Which axis the shards of ``name`` were split along (None: replicated)."""
    short = name.rsplit(".", 1)[-1]
    if shards[0].ndim == 1:
        return None
    if short in COL_SPLIT:
        return 1
    if short == "tok_embeddings":
        return 0 if shards[0].shape[1] == dim else 1     # Llama 3 splits the vocab, Llama 2 the width
    return 0


def merge_shards(states: list, dim: int) -> dict:
    """[{key: array} per consolidated.NN.pth] -> {meta name: array}. One shard: no copy at all;
    several: concatenated in memory (13B/70B do not fit a 24 GiB machine anyway)."""
    names = list(states[0])
    for i, s in enumerate(states[1:], 1):
        if set(s) != set(names):
            diff = sorted(set(s) ^ set(names))[:4]
            raise CheckpointError(f"consolidated.{i:02d}.pth has different tensors than consolidated.00.pth: {diff}")
    out = {}
    for key in names:
        name = meta_name(key)
        if name in IGNORED:
            continue
        parts = [s[key] for s in states]
        axis = merge_axis(name, parts, dim) if len(parts) > 1 else None
        out[name] = parts[0] if axis is None else np.concatenate(parts, axis=axis)
    return out


def read_params(folder: Path) -> dict:
    params = read_json(folder / "params.json")
    for key in ("dim", "n_layers", "n_heads"):
        if not isinstance(params.get(key), int) or params[key] <= 0:
            raise CheckpointError(f"{folder / 'params.json'}: needs a positive integer {key!r}, "
                                  f"got {params.get(key)!r}")
    return params


def load_tokenizer_if_present(path: Path):
    """llama_np's tokenizer for ``path`` (type detected from the content), or None if absent."""
    if not path.is_file():
        return None
    try:
        from ..tokenizer import load_tokenizer
    except ImportError:   # tokenizer package not available: weights still load
        print(f"warning: cannot import llama_np.tokenizer; {path} not loaded", file=sys.stderr)
        return None
    return load_tokenizer(path)


def load(folder, dtype: str = "auto", progress: bool = True, tokenizer: bool = True):
    """A Meta checkpoint folder -> (ModelConfig, flat params {Meta name: weight}, tokenizer or None).
    ``model.nest(params, cfg)`` makes them what ``model.forward`` takes.

    dtype: "float32" (everything in memory as float32: small models), "bf16" (16-bit weights stay
    memory-mapped and are widened block by block: Llama 3 8B in 24 GiB), "int8" (quantised now,
    per-row scales) or "auto" (float32 if it fits in half the available memory, else bf16).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointNotFound(f"{folder}: not a folder")
    params = read_params(folder)
    paths = sorted(folder.glob("consolidated.*.pth"))
    if not paths:
        raise CheckpointNotFound(f"{folder}: no consolidated.NN.pth files")
    expect = [folder / f"consolidated.{i:02d}.pth" for i in range(len(paths))]
    if paths != expect:
        raise CheckpointError(f"{folder}: shards should be consolidated.00.pth .. {expect[-1].name}, "
                              f"found {', '.join(p.name for p in paths)}")
    tensors = merge_shards([torch_zip.load(p) for p in paths], params["dim"])
    if "tok_embeddings" not in tensors:
        raise CheckpointError(f"{paths[0]}: missing tensor tok_embeddings")
    # Llama 2 says vocab_size -1 (the tokenizer decides); the embedding table knows the answer.
    n_vocab = tensors["tok_embeddings"].shape[0]
    try:
        cfg = ModelConfig.from_meta_params(params, vocab_size=n_vocab)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / 'params.json'}: {e}") from None
    if "output" not in tensors:   # no separate head saved: the embedding is the head
        cfg = cfg.replace(tie_embeddings=True)
    where = paths[0].name if len(paths) == 1 else f"{paths[0].name}..{paths[-1].name}"
    check_tensors(tensors, cfg, f"{folder}/{where}", "params.json")
    tok = load_tokenizer_if_present(folder / "tokenizer.model") if tokenizer else None
    return cfg, build_params(tensors, cfg, dtype, show_progress=progress), tok
