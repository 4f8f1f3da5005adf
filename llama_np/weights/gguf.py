"""Load a GGUF file (llama.cpp's format) into llama_np's flat float32 parameter dict.

A GGUF file holds three things: metadata (hyper-parameters and the whole tokenizer), tensor
descriptions (name, type, shape, offset), and the tensor data, often quantized: Q4_1 stores
blocks of 32 weights as 4-bit integers plus a float16 scale and minimum. We use the ``gguf``
package (maintained with llama.cpp) to read the file and to dequantize; here we only

  * build a ``ModelConfig`` from the ``llama.*`` metadata keys,
  * rename tensors to Meta's names (``blk.3.attn_q.weight`` -> ``layers.3.wq``),
  * dequantize each tensor once to float32, shaped (out, in) like PyTorch,
  * check every shape against ``model.param_shapes(cfg)``.

GGUF writes shapes fastest-dimension first (``[in, out]``); the reader's arrays are already
(out, in). The q and k rows are stored in Meta's interleaved RoPE layout: llama.cpp's converter
permutes Hugging Face's rows back (transformers permutes them again when it loads a GGUF), so
they need no change here. ``tests/test_smollm2_reference.py`` checks that claim against
transformers rather than trusting it.
"""
from __future__ import annotations

import os
import re

import numpy as np

from ..config import ModelConfig
from ..model import param_shapes
from ..tokenizer.gguf_meta import GGUFFormatError, open_reader, read_metadata
from ..tokenizer.gguf_meta import one_line as _one_line
from .progress import progress as show_progress

# GGUF's tensor names (llama.cpp's gguf-py/constants.py) -> Meta's model.py names.
TOP_LEVEL = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output"}
PER_LAYER = {"attn_norm": "attention_norm", "ffn_norm": "ffn_norm",
             "attn_q": "wq", "attn_k": "wk", "attn_v": "wv", "attn_output": "wo",
             "ffn_gate": "w1", "ffn_down": "w2", "ffn_up": "w3"}
# The tensor types we dequantize (all through gguf.quants.dequantize). K-quants and the IQ
# types would work the same way but are untested here, so they are refused by name.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")


def meta_name(gguf_name: str) -> str | None:
    """'blk.3.attn_q.weight' -> 'layers.3.wq'; None for a name llama_np does not use."""
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", gguf_name)
    if m:
        name = PER_LAYER.get(m.group(2))
        return f"layers.{m.group(1)}.{name}" if name else None
    m = re.fullmatch(r"(\w+)\.weight", gguf_name)
    return TOP_LEVEL.get(m.group(1)) if m else None


def dequantize(tensor) -> np.ndarray:
    """One ``ReaderTensor`` -> a C-contiguous float32 array we own, shaped (out, in) or (n,)."""
    from gguf.quants import dequantize as gguf_dequantize
    kind = tensor.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise GGUFFormatError(f"tensor {tensor.name} has type {kind}, which llama_np does not support "
                              f"(supported: {', '.join(SUPPORTED_TYPES)}); convert the model to one of them")
    try:
        w = gguf_dequantize(tensor.data, tensor.tensor_type)
    except Exception as e:
        raise GGUFFormatError(f"cannot read tensor {tensor.name} ({kind}): {_one_line(e)}") from None
    # F32 comes back as a view of the memory map: copy it so the file can close.
    return np.array(w, dtype=np.float32, order="C", copy=True)


def load(path, tokenizer: bool = True, progress: bool = True, dtype: str = "auto"):
    """GGUF file -> (cfg, flat params, tokenizer or None).

    params: {Meta name: float32 array}; nest with ``model.nest(params, cfg)`` before ``forward``.
    ``dtype``: "auto" or "float32" (quantized weights are always widened to float32 here: NumPy has
    no fast 4- or 8-bit matrix product, and a model small enough to ship as GGUF fits as float32).
    The first load of a large file also writes the result to the weight cache (``cache.py``); later
    loads map it from there and never open the GGUF reader.
    """
    from . import cache
    if dtype not in ("auto", "float32"):
        raise ValueError(f"GGUF weights load as float32 only (dtype={dtype!r} asked)")
    path = os.fspath(path)
    use_cache = os.path.isfile(path) and cache.enabled(path)
    hit = cache.load(path, quiet=not progress) if use_cache else None
    if hit is not None:
        md, params = hit
        cfg = _config(md, params["tok_embeddings"].shape[0], "output" not in params, path)
        if {k: v.shape for k, v in params.items()} == param_shapes(cfg):
            tok = tokenizer_from_metadata(path, md) if tokenizer else None
            return cfg, params, tok
    md, cfg, params = read(path, progress)
    if use_cache:
        cache.store(path, md, params, quiet=not progress)
    tok = tokenizer_from_metadata(path, md) if tokenizer else None
    return cfg, params, tok


def read(path: str, progress: bool = True):
    """Open and dequantize a GGUF file (no cache) -> (metadata, cfg, flat params)."""
    reader = open_reader(path)
    md = read_metadata(reader, path)
    tensors = {t.name: t for t in reader.tensors}
    cfg = config_from_metadata(md, tensors, path)

    expected = param_shapes(cfg)
    named = {}
    unexpected = []
    for t in reader.tensors:
        name = meta_name(t.name)
        if name is None and t.name == "rope_freqs.weight":
            raise GGUFFormatError(f"{path} stores Llama 3.1 rope scaling as a tensor "
                                  f"(rope_freqs), which llama_np does not read yet")
        if name is None or name not in expected:
            unexpected.append(t.name)
        else:
            named[name] = t
    missing = [n for n in expected if n not in named]
    if missing or unexpected:
        raise GGUFFormatError(f"{path} does not match a {cfg.n_layers}-layer Llama: "
                              f"missing {_few(missing)}, unexpected {_few(unexpected)}")

    params = {}
    bar = show_progress(named.items(), f"dequantizing {os.path.basename(path)}", unit="tensors",
                        enabled=None if progress else False)
    for name, t in bar:
        w = dequantize(t)
        if w.shape != expected[name]:
            raise GGUFFormatError(f"tensor {t.name} has shape {w.shape}, expected {expected[name]} "
                                  f"for {name} from the metadata")
        params[name] = w
    del reader, tensors, named  # release the memory map
    return md, cfg, params


def config_from_metadata(md: dict, tensors: dict, path: str = "") -> ModelConfig:
    """ModelConfig from metadata; tied embeddings when the file has no ``output.weight``."""
    try:
        emb = tensors["token_embd.weight"]
    except KeyError:
        raise GGUFFormatError(f"{path} has no token_embd.weight tensor: not a Llama model") from None
    return _config(md, int(emb.shape[-1]), "output.weight" not in tensors, path)  # GGUF shape: [dim, vocab]


def _config(md: dict, vocab: int, tied: bool, path: str = "") -> ModelConfig:
    try:
        return ModelConfig.from_gguf_metadata(md, vocab_size=vocab, tied=tied)
    except (KeyError, TypeError) as e:
        raise GGUFFormatError(f"{path} lacks the metadata of a Llama model ({_one_line(e)})") from None


def tokenizer_from_metadata(path: str, md: dict):
    """The tokenizer stored in the metadata, built from ``md`` we already have (reading the
    metadata again would take seconds: it holds every token string)."""
    kind = md.get("tokenizer.ggml.model")
    if kind is None:   # weights only (e.g. written by a test): use token ids directly
        return None
    if kind == "gpt2":
        from ..tokenizer.bytelevel import ByteLevelBPETokenizer
        return ByteLevelBPETokenizer.from_gguf(md)
    if kind == "llama":
        from ..tokenizer.sentencepiece import SentencePieceTokenizer
        return SentencePieceTokenizer.from_gguf(md)
    from ..tokenizer import load_tokenizer  # no or another tokenizer: its one-line error
    return load_tokenizer(path)


def _few(names, k: int = 4) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - k} more" if len(names) > k else ""
    return ", ".join(names[:k]) + more
