"""What the Meta and Hugging Face loaders share once tensors have Meta's names.

    tensors (name -> raw array, memory-mapped) --check_tensors--> --build_params--> params

``check_tensors`` compares every tensor with ``model.param_shapes(cfg)`` and names what is
missing, unexpected or the wrong shape, so a wrong config or an incomplete download fails at
load time with one line instead of a shape error deep inside ``forward``.
``build_params`` turns raw tensors into what ``forward`` multiplies with (``packed.pack``).
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..model import param_shapes
from .errors import CheckpointError, CheckpointNotFound
from .packed import pack, to_float32
from .progress import Progress

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.uint16))   # uint16 = bf16 bits
MODES = ("float32", "bf16", "int8")


def available_memory() -> int:
    """Bytes the OS says a new allocation can get (MemAvailable), or 0 if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def choose_mode(tensors: dict, mode: str) -> str:
    """"auto" -> "float32" when float32 copies of all weights take under half the available memory
    (fastest: plain BLAS, no widening), else "bf16" (weights stay 16-bit; same numbers, since
    widening bf16 to float32 is exact)."""
    if mode != "auto":
        return mode
    n = sum(int(np.prod(t.shape)) for t in tensors.values())
    avail = available_memory()
    return "float32" if avail and 4 * n < avail / 2 else "bf16"


def read_json(path) -> dict:
    """A config file -> dict, with one-line errors."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFound(f"{path}: not found")
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(out, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return out


def _names(names, limit: int = 6) -> str:
    names = sorted(names, key=_natural)
    more = f" ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in name.split(".")]


def check_tensors(tensors: dict, cfg, source: str, config_name: str) -> None:
    """Raise CheckpointError unless ``tensors`` has exactly the tensors ``cfg`` needs, each of the
    right shape and a float dtype. ``source``/``config_name`` name the files in the message."""
    expected = param_shapes(cfg)
    missing = set(expected) - set(tensors)
    unexpected = set(tensors) - set(expected)
    if missing:
        raise CheckpointError(f"{source}: missing tensors {_names(missing)} (needed by {config_name})")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensors {_names(unexpected)} (not in a model of {config_name})")
    for name in sorted(expected, key=_natural):
        arr = tensors[name]
        if tuple(arr.shape) != tuple(expected[name]):
            raise CheckpointError(f"{source}: {name} has shape {tuple(arr.shape)}, but {config_name} implies "
                                  f"{tuple(expected[name])}")
        if arr.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{source}: {name} has dtype {arr.dtype}; expected bf16, float16 or float32")


def build_params(tensors: dict, cfg, mode: str = "auto", perms: dict | None = None,
                 show_progress: bool = True, desc: str = "loading") -> dict:
    """Raw tensors (Meta names) -> flat params {Meta name: weight} (``model.nest`` before ``forward``).

    Vectors (norms) always become float32 in memory (tiny). Matrices go through
    ``packed.pack(raw, mode)``: float32 copies, 16-bit memory maps, or int8. ``perms``: row
    permutations to apply (Hugging Face q/k). Each raw array is dropped once converted, so in
    int8 mode its memory map is unmapped and its pages can leave RSS. (In bf16 mode nothing is
    read here: the 16-bit maps are wrapped as they are, and read during the first token.)
    """
    mode = choose_mode(tensors, mode)
    if mode not in MODES:
        raise ValueError(f"unknown dtype {mode!r}: use auto or one of {', '.join(MODES)}")
    perms = perms or {}
    total = sum(int(t.nbytes) for t in tensors.values())
    flat = {}
    with Progress(total, desc=f"{desc} ({mode})", unit="bytes", enabled=None if show_progress else False) as bar:
        for name in sorted(tensors, key=_natural):
            raw = tensors.pop(name)   # (empties the caller's dict: the last reference to the map)
            if raw.ndim == 1:
                flat[name] = to_float32(raw)
            else:
                flat[name] = pack(raw, mode, perms.get(name))
            bar.update(raw.nbytes)
            del raw
    return flat
