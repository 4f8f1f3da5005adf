"""Models that Ollama has already downloaded, by name: ``ollama:llama3.1:8b`` -> a GGUF blob.

Ollama keeps a content-addressed store:

    MODELS/manifests/registry.ollama.ai/library/llama3.1/8b      a JSON manifest
    MODELS/blobs/sha256-<hex>                                     the files it names

The manifest lists layers ``{"mediaType": ..., "digest": "sha256:<hex>"}``; the weights are the
layer with media type ``application/vnd.ollama.image.model``, and for the models llama_np runs
that blob is a plain GGUF file, which ``gguf.load`` reads in place (no copy). MODELS is
``$OLLAMA_MODELS``, else ``~/.ollama/models`` (Ollama run by the user), else
``/usr/share/ollama/.ollama/models`` (Ollama's Linux system service).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .errors import CheckpointError, CheckpointNotFound

PREFIX = "ollama:"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
REGISTRY = "registry.ollama.ai"


def stores() -> list[Path]:
    """Where Ollama keeps models, in the order we look."""
    env = os.environ.get("OLLAMA_MODELS")
    if env:
        return [Path(env).expanduser()]
    return [Path("~/.ollama/models").expanduser(), Path("/usr/share/ollama/.ollama/models")]


def parse(spec: str) -> tuple[str, str, str]:
    """'ollama:llama3.1:8b' -> ('library', 'llama3.1', '8b'); the tag defaults to 'latest', the
    namespace to 'library' (Ollama's own models; 'user/model' names someone else's)."""
    name = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    name, _, tag = name.partition(":")
    namespace, _, model = name.rpartition("/")
    word = r"\w[\w.-]*"   # no leading dot: a name must not climb out of the store ("..")
    ok = re.fullmatch(word, model) and re.fullmatch(f"({word})?", namespace) and re.fullmatch(f"({word})?", tag)
    if not ok:
        raise CheckpointError(f"{spec!r} is not an Ollama model name: use ollama:NAME or ollama:NAME:TAG "
                              f"(e.g. ollama:llama3.1:8b)")
    return namespace or "library", model, tag or "latest"


def resolve(spec: str) -> Path:
    """'ollama:NAME[:TAG]' -> the path of its GGUF blob; a one-line error when it is not there."""
    namespace, model, tag = parse(spec)
    rel = Path("manifests", REGISTRY, namespace, model, tag)
    looked = stores()
    for root in looked:
        if (root / rel).is_file():
            return _model_blob(root, root / rel, f"{model}:{tag}")
    where = " or ".join(str(r) for r in looked)
    present = [f"{m}:{t}" for r in looked for m, t in _installed(r, namespace)]
    hint = f"; it has {', '.join(sorted(present)[:8])}" if present else ""
    raise CheckpointNotFound(f"no Ollama model {model}:{tag} in {where} (looked for {rel}){hint}; "
                             f"run `ollama pull {model}:{tag}` or set OLLAMA_MODELS")


def _installed(root: Path, namespace: str):
    base = root / "manifests" / REGISTRY / namespace
    if base.is_dir():
        for d in base.iterdir():
            if d.is_dir():
                for t in d.iterdir():
                    yield d.name, t.name


def _model_blob(root: Path, manifest: Path, name: str) -> Path:
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8"))["layers"]
        digests = {layer["mediaType"]: layer["digest"] for layer in layers}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{manifest}: not a readable Ollama manifest ({type(e).__name__})") from None
    if MODEL_MEDIA_TYPE not in digests:
        kinds = ", ".join(sorted(digests)) or "no layers"
        raise CheckpointError(f"Ollama model {name} has no {MODEL_MEDIA_TYPE} layer (found: {kinds})")
    digest = digests[MODEL_MEDIA_TYPE]
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", str(digest)):
        raise CheckpointError(f"{manifest}: model layer digest {digest!r} is not sha256:<64 hex digits>")
    blob = root / "blobs" / digest.replace(":", "-")
    if not blob.is_file():
        raise CheckpointNotFound(f"Ollama model {name}: its manifest names {blob.name}, which is not in "
                                 f"{blob.parent} (an interrupted pull? run `ollama pull {name}`)")
    with open(blob, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CheckpointError(f"Ollama model {name}: its model layer {blob} is not a GGUF file "
                              f"(starts with {magic!r}); llama_np reads Ollama's GGUF models only")
    return blob
