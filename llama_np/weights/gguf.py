"""Load a GGUF file (llama.cpp's format) into llama_np's flat parameter dict.

A GGUF file holds three things: metadata (hyper-parameters and the whole tokenizer), tensor
descriptions (name, type, shape, offset), and the tensor data, often quantized: Q4_K stores
super-blocks of 256 weights as 4-bit codes with 6-bit scales and mins (see ``quants.py``). We use
the ``gguf`` package (maintained with llama.cpp) to read the file; here we

  * build a ``ModelConfig`` from the ``llama.*`` metadata keys,
  * rename tensors to Meta's names (``blk.3.attn_q.weight`` -> ``layers.3.wq``),
  * check every name, type and shape against ``model.param_shapes(cfg)`` before reading any data
    (``checkpoint.check_tensors``, shared with the other loaders),
  * turn each matrix into what ``linear`` multiplies with, in one of two modes:
      - "float32": dequantized once, whole (plain BLAS afterwards: fastest, 4 bytes a weight);
      - "packed": kept as stored, as a view of the file's memory map (``quants.GGUFWeight``,
        ``packed.BF16Weight``/``F16Weight``), dequantized a few rows at a time in each product.
    "auto" picks float32 when float32 copies of the weights take under half the available
    memory (SmolLM2-135M: 0.5 GB), else packed (Llama 3.1 8B Q4_K_M: 4.9 GB packed, 32 GB as
    float32). Set ``$LLAMA_NP_GGUF_DTYPE`` to float32 or packed to choose.
  * read ``rope_freqs.weight`` (Llama 3.1's RoPE scaling: one divisor per rotary frequency).

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
from .checkpoint import available_memory, check_tensors
from .errors import CheckpointError
from .packed import BF16Weight, F16Weight
from .progress import progress as show_progress
from .quants import SUPPORTED as SUPPORTED_TYPES
from .quants import GGUFWeight, dequantize as dequantize_raw

# GGUF's tensor names (llama.cpp's gguf-py/constants.py) -> Meta's model.py names.
TOP_LEVEL = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output"}
PER_LAYER = {"attn_norm": "attention_norm", "ffn_norm": "ffn_norm",
             "attn_q": "wq", "attn_k": "wk", "attn_v": "wv", "attn_output": "wo",
             "ffn_gate": "w1", "ffn_down": "w2", "ffn_up": "w3"}
MODES = ("auto", "float32", "packed")
# rope_freqs, kept with the metadata in the weight cache (the tensor itself is not a parameter)
ROPE_FREQS_KEY = "llama_np.rope_freqs"


def meta_name(gguf_name: str) -> str | None:
    """'blk.3.attn_q.weight' -> 'layers.3.wq'; None for a name llama_np does not use."""
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", gguf_name)
    if m:
        name = PER_LAYER.get(m.group(2))
        return f"layers.{m.group(1)}.{name}" if name else None
    m = re.fullmatch(r"(\w+)\.weight", gguf_name)
    return TOP_LEVEL.get(m.group(1)) if m else None


def _check_type(tensor) -> str:
    kind = tensor.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise GGUFFormatError(f"tensor {tensor.name} has type {kind}, which llama_np does not support "
                              f"(supported: {', '.join(SUPPORTED_TYPES)}); convert the model to one of them")
    return kind


def dequantize(tensor) -> np.ndarray:
    """One ``ReaderTensor`` -> a C-contiguous float32 array we own, shaped (out, in) or (n,)."""
    kind = _check_type(tensor)
    try:
        w = dequantize_raw(tensor.data, kind)
    except Exception as e:
        raise GGUFFormatError(f"cannot read tensor {tensor.name} ({kind}): {_one_line(e)}") from None
    # F32 comes back as a view of the memory map: copy it so the file can close.
    return np.array(w, dtype=np.float32, order="C", copy=True)


def packed(tensor):
    """One ``ReaderTensor`` matrix -> a packed weight over the memory map (nothing is read yet)."""
    kind = _check_type(tensor)
    n_out, n_in = _shape(tensor)
    if kind == "F32":
        return tensor.data.view(np.ndarray)
    if kind == "F16":
        return F16Weight(tensor.data)
    if kind == "BF16":
        return BF16Weight(tensor.data.view(np.uint16).reshape(n_out, n_in))
    return GGUFWeight(tensor.data, kind, n_in)


def _shape(tensor) -> tuple:
    """The logical shape, (out, in) like PyTorch: GGUF lists dimensions fastest first."""
    return tuple(int(n) for n in reversed(tensor.shape))


def requested_mode(dtype: str = "auto") -> str:
    """``dtype`` as asked: "auto" defers to $LLAMA_NP_GGUF_DTYPE when that is set."""
    if dtype == "auto":
        dtype = os.environ.get("LLAMA_NP_GGUF_DTYPE", "auto")
        if dtype not in MODES:
            raise ValueError(f"LLAMA_NP_GGUF_DTYPE={dtype!r}: use float32 or packed")
    return dtype


def choose_mode(tensors, dtype: str = "auto") -> str:
    """"auto" -> $LLAMA_NP_GGUF_DTYPE if set, else "float32" when float32 copies of ``tensors``
    take under half the available memory, else "packed"."""
    dtype = requested_mode(dtype)
    if dtype != "auto":
        return dtype
    n = sum(int(np.prod(_shape(t))) for t in tensors)
    avail = available_memory()
    return "float32" if avail and 4 * n < avail / 2 else "packed"


def load(path, tokenizer: bool = True, progress: bool = True, dtype: str = "auto"):
    """GGUF file -> (cfg, flat params, tokenizer or None).

    params: {Meta name: weight}; nest with ``model.nest(params, cfg)`` before ``forward``.
    ``dtype``: "auto", "float32" (every weight a float32 array) or "packed" (matrices stay as
    stored, memory-mapped; see the module docstring). Vectors (norms) are always float32.
    The first float32 load of a large file also writes the result to the weight cache
    (``cache.py``); later loads map it from there and never open the GGUF reader.
    """
    from . import cache
    if dtype not in MODES:
        raise ValueError(f"unknown GGUF dtype {dtype!r}: use {', '.join(MODES)}")
    path = os.fspath(path)
    # Only a float32 load is cached (a packed one is already a memory map of the file itself).
    use_cache = requested_mode(dtype) != "packed" and os.path.isfile(path) and cache.enabled(path)
    hit = cache.load(path, quiet=not progress) if use_cache else None
    if hit is not None:
        md, params = hit
        cfg = _config(md, params["tok_embeddings"].shape[0], "output" not in params, path)
        if ROPE_FREQS_KEY in md:
            cfg = cfg.replace(rope_scaling={"freq_factors": md[ROPE_FREQS_KEY]})
        if {k: v.shape for k, v in params.items()} == param_shapes(cfg):
            tok = tokenizer_from_metadata(path, md) if tokenizer else None
            return cfg, params, tok
    md, cfg, params, mode = read(path, progress, dtype)
    if use_cache and mode == "float32":
        if cfg.rope_scaling is not None and cfg.rope_scaling.freq_factors is not None:
            md = {**md, ROPE_FREQS_KEY: list(cfg.rope_scaling.freq_factors)}
        cache.store(path, md, params, quiet=not progress)
    tok = tokenizer_from_metadata(path, md) if tokenizer else None
    return cfg, params, tok


def read(path: str, progress: bool = True, dtype: str = "auto"):
    """Open a GGUF file and load its weights (no cache) -> (metadata, cfg, flat params, mode),
    mode being what ``choose_mode`` made of ``dtype``: "float32" or "packed"."""
    reader = open_reader(path)
    md = read_metadata(reader, path)
    tensors = {t.name: t for t in reader.tensors}
    cfg = config_from_metadata(md, tensors, path)
    if "rope_freqs.weight" in tensors:
        cfg = cfg.replace(rope_scaling={"freq_factors": rope_freq_factors(tensors["rope_freqs.weight"], cfg, path)})

    named, declared = {}, {}
    for t in reader.tensors:
        name = meta_name(t.name)
        if t.name == "rope_freqs.weight":     # read above, into cfg.rope_scaling
            continue
        # What each tensor will be once loaded, checked before the slow part: float32 of the
        # declared shape (GGUF lists dimensions fastest first, so reversed), at no cost.
        shape = tuple(int(d) for d in reversed(t.shape))
        declared[name or t.name] = np.broadcast_to(np.float32(0), shape)
        if name is not None:
            named[name] = t
    try:
        check_tensors(declared, cfg, path, f"its metadata ({cfg.n_layers}-layer Llama)")
    except CheckpointError as e:
        raise GGUFFormatError(str(e)) from None
    for t in named.values():    # every type, before reading any data
        _check_type(t)

    mode = choose_mode(named.values(), dtype)
    params = {}
    verb = "dequantizing" if mode == "float32" else "mapping"
    bar = show_progress(named.items(), f"{verb} {os.path.basename(path)}", unit="tensors",
                        enabled=None if progress else False)
    for name, t in bar:
        params[name] = dequantize(t) if mode == "float32" or len(t.shape) == 1 else packed(t)
    # float32 mode: nothing refers to the memory map any more, so the file closes here. Packed
    # weights hold views of it: it stays mapped, and pages are read as the products touch them.
    del reader, tensors, named
    return md, cfg, params, mode


def rope_freq_factors(tensor, cfg, path: str = "") -> tuple:
    """``rope_freqs.weight``: one divisor per rotary pair (head_dim / 2 of them, float32), written by
    llama.cpp's converter for Llama 3.1 scaling; llama.cpp divides each frequency by its factor."""
    f = dequantize(tensor).reshape(-1)
    if f.shape != (cfg.head_dim // 2,) or not np.all(np.isfinite(f)) or np.any(f <= 0):
        raise GGUFFormatError(f"{path}: rope_freqs.weight should hold {cfg.head_dim // 2} positive factors "
                              f"(one per rotary pair), found shape {f.shape}")
    return tuple(float(v) for v in f)


def write_metadata(writer, cfg: ModelConfig) -> None:
    """Write ``cfg`` as the ``llama.*`` keys that ``ModelConfig.from_gguf_metadata`` reads, with a
    ``gguf.GGUFWriter`` (tests and benchmarks that make GGUF files; the inverse of reading)."""
    writer.add_block_count(cfg.n_layers)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.dim)
    writer.add_feed_forward_length(cfg.hidden_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_vocab_size(cfg.vocab_size)


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
