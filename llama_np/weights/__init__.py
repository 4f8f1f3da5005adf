"""Checkpoint loaders: one per format, all returning ``(cfg, flat params, tokenizer)``.

    cfg, params, tok = load_model("smollm2-135m-instruct")   # a named asset (the default)
    cfg, params, tok = load_model("model.gguf")               # llama.cpp's GGUF
    cfg, params, tok = load_model("ollama:llama3.1:8b")       # a GGUF Ollama has downloaded
    cfg, params, tok = load_model("Llama-3.1-8B/original")   # Meta: params.json + consolidated.*.pth
    cfg, params, tok = load_model("Llama-3.1-8B")            # Hugging Face: config.json + *.safetensors

``params`` uses Meta's names (see ``llama_np.model.param_shapes``); ``model.nest(params, cfg)``
turns it into what ``forward`` takes.
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import assets


def resolve(path_or_name=None) -> Path:
    """An asset name (or None for the default model) -> its cached file; ``ollama:NAME[:TAG]``
    -> the GGUF blob in Ollama's store; a path -> itself."""
    if path_or_name is None:
        return assets.fetch(assets.DEFAULT_MODEL)
    s = os.fspath(path_or_name)
    if s.startswith("ollama:"):
        from .ollama import resolve as ollama_resolve
        return ollama_resolve(s)
    if s in assets.ASSETS:
        return assets.fetch(s)
    return Path(s).expanduser()


def detect_format(path: Path) -> str:
    """'gguf', 'meta' or 'hf', from what is at ``path``; a one-line error otherwise."""
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) == b"GGUF" or path.suffix == ".gguf":
                return "gguf"
        raise ValueError(f"{path} is a file but not a GGUF model; give a .gguf file, a Meta folder "
                         f"(params.json) or a Hugging Face folder (config.json)")
    if path.is_dir():
        if (path / "params.json").is_file():
            return "meta"
        if (path / "config.json").is_file():
            return "hf"
        raise ValueError(f"{path} has neither params.json (Meta) nor config.json (Hugging Face)")
    known = ", ".join(sorted(assets.ASSETS))
    raise FileNotFoundError(f"no model at {path}: give a .gguf file, a Meta or Hugging Face folder, "
                            f"or an asset name ({known})")


def load_model(path_or_name=None, **kw):
    """Load any supported checkpoint -> (cfg, flat float32 params, tokenizer)."""
    name = None if path_or_name is None else os.fspath(path_or_name)
    if name is not None and name not in assets.ASSETS and not name.startswith("ollama:"):
        p = Path(os.fspath(path_or_name)).expanduser()
        if not p.exists() and os.sep not in os.fspath(path_or_name) and not p.suffix:
            # A bare word that is neither a file nor an asset: most likely a mistyped asset name.
            raise assets.AssetError(f"no file or folder {path_or_name!r} and no such asset; known assets: "
                                    f"{', '.join(sorted(assets.ASSETS))}")
    path = resolve(path_or_name)
    fmt = detect_format(path)
    if fmt == "gguf":
        from .gguf import load
    elif fmt == "meta":
        from .meta import load
    else:
        from .hf import load
    return load(path, **kw)
