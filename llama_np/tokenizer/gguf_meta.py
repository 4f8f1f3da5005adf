"""Read the metadata of a GGUF file (llama.cpp's model format) as plain Python values.

A GGUF file is a header, a list of key/value pairs ("metadata": architecture, hyper-parameters,
the whole tokenizer), a list of tensor descriptions, then the tensor data. Both the tokenizer and
the weights loader need the key/value part, so this module only does that and leaves the tensors
alone. We let the ``gguf`` package (maintained with llama.cpp) do the parsing:

    md = read_gguf_metadata("SmolLM2-135M-Instruct.Q4_1.gguf")
    md["general.architecture"]        # 'llama'
    md["tokenizer.ggml.model"]        # 'gpt2'   (byte-level BPE; 'llama' means SentencePiece)
    len(md["tokenizer.ggml.tokens"])  # 49152
"""
from __future__ import annotations

import os

GGUF_MAGIC = b"GGUF"


class GGUFFormatError(ValueError):
    """A file that is not a readable GGUF (wrong magic, truncated, corrupt): one line for the user."""


def is_gguf(path) -> bool:
    """True when the file starts with the 4-byte GGUF magic (how llama.cpp recognises it too)."""
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def read_gguf_metadata(path) -> dict:
    """All key/value metadata of a GGUF file -> {key: str | int | float | bool | list}.

    The reader's own header fields (``GGUF.version``, ``GGUF.tensor_count``, ``GGUF.kv_count``) are
    left out: they describe the container, not the model. Tensor data is never read (the reader
    memory-maps the file and only the key/value section is turned into Python values).
    """
    path = os.fspath(path)
    return read_metadata(open_reader(path), path)


def open_reader(path):
    """A ``gguf.GGUFReader`` for ``path``, or a one-line error (missing, not GGUF, truncated)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    if not is_gguf(path):
        raise GGUFFormatError(f"{path} is not a GGUF file (it does not start with b'GGUF')")
    from gguf import GGUFReader  # imported here: only GGUF users need the package
    try:
        return GGUFReader(path, "r")
    except Exception:  # the reader raises many types (ValueError, IndexError, struct errors...)
        raise corrupt(path) from None


def read_metadata(reader, path) -> dict:
    """The key/value metadata of an open reader as plain Python values (``GGUF.*`` fields left out)."""
    try:
        return {key: _plain(field.contents()) for key, field in reader.fields.items()
                if not key.startswith("GGUF.")}
    except Exception:
        raise corrupt(path) from None


def corrupt(path) -> GGUFFormatError:
    """Our message for a file the reader cannot parse. The reader's own exception is left out:
    it comes from deep inside NumPy ("cannot reshape array of size 5768 into shape (224,64)")
    and says nothing a user can act on; the size tells a cut-short download at a glance."""
    try:
        size = f"{os.path.getsize(path):,} bytes"
    except OSError:
        size = "size unknown"
    return GGUFFormatError(f"{path} is a truncated or corrupt GGUF file ({size}; its header describes "
                           f"data that is not there or makes no sense): download or copy it again")


def one_line(e: Exception) -> str:
    """An exception's message on one line, at most 200 characters (its type when it has none)."""
    return (" ".join(str(e).split()) or type(e).__name__)[:200]


def _plain(value):
    """numpy scalars / arrays -> Python values, so callers can json.dump or compare them freely."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
