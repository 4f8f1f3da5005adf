"""Tokenizers: text <-> token ids, from whichever file a model ships.

    from llama_np.tokenizer import load_tokenizer
    tok = load_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf")   # or tokenizer.json / tokenizer.model
    ids = tok.encode("Hello world")
    tok.decode(ids)                                           # 'Hello world'

``load_tokenizer`` looks at the file's *content*, not its name (Meta's Llama 2 and Llama 3 both call
theirs ``tokenizer.model``, yet one is a SentencePiece protobuf and the other a tiktoken text file):

| first bytes                      | format                         | class                        |
|----------------------------------|--------------------------------|------------------------------|
| ``GGUF``                         | llama.cpp GGUF, ``gpt2`` vocab | ``ByteLevelBPETokenizer``    |
| ``GGUF``                         | llama.cpp GGUF, ``llama`` vocab| ``SentencePieceTokenizer``   |
| ``{`` and a ``"model"`` key      | Hugging Face ``tokenizer.json``| ``ByteLevelBPETokenizer``    |
| lines ``<base64> <rank>``        | tiktoken ranks (Llama 3)       | ``TiktokenTokenizer``        |
| protobuf (``0x0a`` ...)          | SentencePiece model (Llama 2)  | ``SentencePieceTokenizer``   |
"""
from __future__ import annotations

import json
import os
import re

from .base import Tokenizer, TokenizerError
from .gguf_meta import one_line as _one_line

__all__ = ["Tokenizer", "TokenizerError", "load_tokenizer", "detect_format"]

EXPECTED = "expected a GGUF file, a tokenizer.json, or a tiktoken / SentencePiece tokenizer.model"

# a tiktoken ranks line: the token's bytes in base64, a space, its rank
_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]+={0,2} \d+$")


def detect_format(path) -> str:
    """Which tokenizer format a file holds, from its first bytes:
    "gguf" | "tokenizer.json" | "tiktoken" | "sentencepiece". Raises TokenizerError otherwise."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        raise TokenizerError(f"{path} is empty, not a tokenizer file ({EXPECTED})")
    if head[:4] == b"GGUF":
        return "gguf"
    if head.lstrip()[:1] == b"{":
        return "tokenizer.json"
    lines = head.split(b"\n")
    complete = lines[:-1] if len(lines) > 1 else lines  # the last line may be cut off by read()
    complete = [ln.rstrip(b"\r") for ln in complete[:8]]
    if complete and all(_TIKTOKEN_LINE.match(ln) for ln in complete):
        return "tiktoken"
    # A SentencePiece ModelProto begins with field 1 (the pieces), a length-delimited message:
    # tag byte (1 << 3) | 2 = 0x0a. The SentencePiece parser then decides for real.
    if head[:1] == b"\x0a":
        return "sentencepiece"
    raise TokenizerError(f"{path} is not a tokenizer file ({EXPECTED})")


def load_tokenizer(path) -> Tokenizer:
    """A tokenizer from a file (or a folder holding tokenizer.json / tokenizer.model / one .gguf)."""
    path = _resolve(os.fspath(path))
    fmt = detect_format(path)
    if fmt == "gguf":
        return _from_gguf(path)
    if fmt == "tokenizer.json":
        return _from_tokenizer_json(path)
    if fmt == "tiktoken":
        from .tiktoken_bpe import TiktokenTokenizer
        return _wrap_errors(path, lambda: TiktokenTokenizer.from_file(path))
    from .sentencepiece import SentencePieceTokenizer
    return _wrap_errors(path, lambda: SentencePieceTokenizer.from_file(path))


def _resolve(path: str) -> str:
    if os.path.isdir(path):
        for name in ("tokenizer.json", "tokenizer.model"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        ggufs = sorted(n for n in os.listdir(path) if n.endswith(".gguf"))
        if len(ggufs) == 1:
            return os.path.join(path, ggufs[0])
        raise TokenizerError(f"{path} is a folder without a tokenizer.json, a tokenizer.model "
                             f"or exactly one .gguf file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return path


def _from_gguf(path: str) -> Tokenizer:
    from .gguf_meta import read_gguf_metadata

    try:
        md = read_gguf_metadata(path)
    except ValueError as e:  # GGUFFormatError: truncated / corrupt
        raise TokenizerError(str(e)) from None
    model = md.get("tokenizer.ggml.model")
    if model == "gpt2":
        from .bytelevel import ByteLevelBPETokenizer
        return ByteLevelBPETokenizer.from_gguf(md)
    if model == "llama":
        from .sentencepiece import SentencePieceTokenizer
        return _wrap_errors(path, lambda: SentencePieceTokenizer.from_gguf(md))
    if model is None:
        raise TokenizerError(f"{path} is a GGUF file without a tokenizer (no tokenizer.ggml.model)")
    raise TokenizerError(f"{path}: GGUF tokenizer type {model!r} is not supported "
                         f"(supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)")


def _from_tokenizer_json(path: str) -> Tokenizer:
    from .bytelevel import ByteLevelBPETokenizer

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path} is not valid JSON ({_one_line(e)}); {EXPECTED}") from None
    if not isinstance(data, dict) or "model" not in data:
        raise TokenizerError(f"{path} is JSON but not a tokenizer.json (no \"model\"); {EXPECTED}")
    return ByteLevelBPETokenizer.from_tokenizer_json(path, data)


def _wrap_errors(path: str, make):
    """Run a constructor from another module; whatever it raises becomes one TokenizerError line."""
    try:
        return make()
    except TokenizerError:
        raise
    except (ImportError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise TokenizerError(f"{path} could not be read as a tokenizer ({_one_line(e)}); "
                             f"{EXPECTED}") from None
