"""The array module, chosen once: NumPy on the CPU, CuPy on an NVIDIA GPU.

Model code never asks "which device?": it calls ``array_module(x)`` on an array it already
has and gets ``numpy`` or ``cupy`` back (the same trick as ``cupy.get_array_module``), so one
piece of code runs on both. Importing llama_np never imports CuPy.
"""
from __future__ import annotations

import functools
import os
import sys

import numpy as np

_DEVICE = "cpu"
_ALLOCATOR_SET = False


class DeviceError(RuntimeError):
    """The requested device cannot be used (no CuPy, no GPU)."""


@functools.lru_cache(maxsize=None)   # checked once per process (a failure is not cached: it retries)
def _cupy():
    """CuPy if it is importable *and* sees a GPU, else raise DeviceError with the reason."""
    try:
        import cupy  # noqa: F401
    except Exception as e:  # ImportError, or a CUDA library that fails to load
        raise DeviceError(f"--device gpu needs CuPy (pip install -e '.[gpu]'): {e.__class__.__name__}: {e}") from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise DeviceError(f"--device gpu: CuPy found no usable GPU ({e})") from None
    if n < 1:
        raise DeviceError("--device gpu: CuPy found no GPU")
    return cupy


def reuse_freed_memory(mmap_threshold: int = 64 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse instead of handing them back to the kernel.

    NumPy allocates every temporary afresh. glibc gives blocks of more than ~128 KiB straight back
    (munmap, or a heap trim), so the next layer's temporaries, of the same sizes, fault in freshly
    zeroed pages: ~53,000 page faults in one 256-token SmolLM2 prefill here, ~15 % of its time.
    Blocks under ``mmap_threshold`` now come from the heap, and up to ``trim_threshold`` bytes of
    free heap are kept. Linux with glibc only (elsewhere it does nothing and returns False).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3        # from <malloc.h>
        return bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)) and \
            bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold))
    except (OSError, AttributeError):                    # musl, or no libc.so.6
        return False


def use(device: str | None = None):
    """Select ``"cpu"`` or ``"gpu"`` (default: $LLAMA_NP_DEVICE or cpu) and return its array module.
    On the CPU this also sets the allocator to reuse NumPy's freed temporaries (``reuse_freed_memory``)."""
    global _DEVICE, _ALLOCATOR_SET
    device = (device or os.environ.get("LLAMA_NP_DEVICE") or "cpu").lower()
    if device not in ("cpu", "gpu"):
        raise DeviceError(f"unknown device {device!r}: use cpu or gpu")
    xp = _cupy() if device == "gpu" else np
    if not _ALLOCATOR_SET:   # once: the setting lasts for the process (host temporaries exist on both devices)
        reuse_freed_memory()
        _ALLOCATOR_SET = True
    _DEVICE = device
    return xp


def device() -> str:
    return _DEVICE


def xp():
    """The array module of the selected device."""
    return sys.modules["cupy"] if _DEVICE == "gpu" else np


def array_module(x):
    """``numpy`` or ``cupy``, whichever ``x`` belongs to."""
    cp = sys.modules.get("cupy")
    if cp is not None and isinstance(x, cp.ndarray):
        return cp
    return np


def to_numpy(x) -> np.ndarray:
    """Bring any array back to host memory (a no-op for NumPy arrays)."""
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)
