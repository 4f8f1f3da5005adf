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
    """The requested device cannot be used (no CuPy, no GPU, a missing CUDA library...)."""


#: the pip extra, the CuPy package and the CUDA libraries for each CUDA major version (README "GPU")
EXTRAS = {12: ("gpu", "cupy-cuda12x", "nvidia-cuda-nvrtc-cu12", "nvidia-cublas-cu12"),
          13: ("gpu-cuda13", "cupy-cuda13x", "nvidia-cuda-nvrtc", "nvidia-cublas")}
MIN_COMPUTE_CAPABILITY = 75   # Turing (T4, RTX 20xx): CUDA 13 targets nothing older
INSTALL = ("pip install -e '.[gpu]' for a CUDA 12 driver (Colab, driver 525-579), "
           "or '.[gpu-cuda13]' for driver >= 580")


def _fail(msg: str):
    raise DeviceError("--device gpu: " + msg)


def cupy_distributions() -> list[tuple[str, str]]:
    """(name, version) of every installed CuPy package: cupy, cupy-cuda12x, cupy-cuda13x, ..."""
    from importlib import metadata
    found = set()
    for d in metadata.distributions():
        name = (d.metadata["Name"] or "").lower().replace("_", "-")
        if name == "cupy" or name.startswith("cupy-cuda") or name.startswith("cupy-rocm"):
            found.add((name, d.version))
    return sorted(found)


def _one_line(e: BaseException, limit: int = 200) -> str:
    """An exception as a short single line (CuPy's compile errors carry the whole source)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


@functools.lru_cache(maxsize=None)   # checked once per process (a failure is not cached: it retries)
def _cupy():
    """CuPy if it can run llama_np's GPU path here, else DeviceError saying what to install or do.

    Checked in the order a failure would otherwise surface: one CuPy package, CuPy importable, an
    NVIDIA driver new enough for that CuPy's CUDA, a GPU, compute capability >= 7.5, NVRTC and
    cuBLAS loadable. (``use("gpu")`` then compiles the kernels: ``gpu.compile_kernels``.)"""
    dists = cupy_distributions()
    if len(dists) > 1:
        listed = ", ".join(f"{n} {v}" for n, v in dists)
        _fail(f"{len(dists)} CuPy packages are installed ({listed}) and overwrite each other's files: "
              f"pip uninstall {' '.join(n for n, _ in dists)}, then {INSTALL}")
    try:
        import cupy
    except ModuleNotFoundError as e:
        if e.name != "cupy":
            _fail(f"needs CuPy, which did not import ({_one_line(e)}): {INSTALL}")
        _fail(f"needs CuPy, which is not installed: {INSTALL}")
    except Exception as e:  # ImportError, or a CUDA library that fails to load
        _fail(f"needs CuPy, which did not import ({_one_line(e)}): {INSTALL}")
    # the CUDA major version this CuPy was built for: from its package name (cupy-cuda12x -> 12)
    name = dists[0][0] if dists else ""
    built = int(name[len("cupy-cuda"):-1]) if name.startswith("cupy-cuda") and name[-1] == "x" \
        and name[len("cupy-cuda"):-1].isdigit() else None
    extra = EXTRAS.get(built, EXTRAS[12])
    runtime = cupy.cuda.runtime
    try:
        driver = runtime.driverGetVersion()     # e.g. 12020 = CUDA 12.2; 0 = no driver
    except Exception as e:
        _fail(f"CuPy cannot load the CUDA runtime ({_one_line(e)}): {INSTALL}")
    if driver == 0:
        _fail("no NVIDIA driver found (nvidia-smi must list the GPU): install the driver, or use --device cpu")
    if built is not None and driver // 1000 < built:
        has = f"the NVIDIA driver supports CUDA {driver // 1000}.{driver % 1000 // 10}, but {name} needs CUDA {built}"
        if driver // 1000 == 12:    # a CUDA 13 CuPy on a CUDA 12 driver: the CUDA 12 extra fits
            _fail(f"{has} (driver >= 580): pip uninstall {name}, then pip install -e '.[gpu]' (CUDA 12), "
                  "or update the driver")
        _fail(f"{has}: update the NVIDIA driver to 525 or newer (CUDA 12), or use --device cpu")
    try:
        n = runtime.getDeviceCount()
    except Exception as e:
        _fail(f"CuPy found no usable GPU ({_one_line(e)}); nvidia-smi must list one")
    if n < 1:
        _fail("CuPy found no GPU; nvidia-smi must list one")
    try:
        cc = int(cupy.cuda.Device(0).compute_capability)     # "75" on a T4
        gpu_name = runtime.getDeviceProperties(0)["name"]
        gpu_name = gpu_name.decode() if isinstance(gpu_name, bytes) else str(gpu_name)
    except Exception as e:
        _fail(f"cannot query GPU 0 ({_one_line(e)})")
    if cc < MIN_COMPUTE_CAPABILITY:
        _fail(f"{gpu_name} has compute capability {cc // 10}.{cc % 10}; llama_np's GPU path needs "
              f"7.5 or newer (T4, RTX 20xx and later): use --device cpu")
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as e:
        _fail(f"CuPy cannot load NVRTC, CUDA's runtime compiler ({_one_line(e)}): "
              f"pip install {extra[2]} (in the '{extra[0]}' extra)")
    try:
        cupy.cuda.device.get_cublas_handle()
    except Exception as e:
        _fail(f"CuPy cannot load cuBLAS ({_one_line(e)}): pip install {extra[3]} (in the '{extra[0]}' extra)")
    return cupy


def cuda_error(e: BaseException) -> DeviceError | None:
    """A CuPy or CUDA error (CompileException, CUDARuntimeError, CUDADriverError, CUBLASError...)
    as a one-line DeviceError, or None if ``e`` is not one. The CLI reports these in one line."""
    if isinstance(e, DeviceError):
        return e
    if not type(e).__module__.startswith(("cupy", "cupy_backends")):
        return None
    if type(e).__name__ == "CompileException":   # the log's first error, not the whole source
        errors = [line.strip() for line in str(e).splitlines() if "error" in line]
        return DeviceError(f"--device gpu: NVRTC could not compile a kernel: {errors[0] if errors else _one_line(e)}")
    return DeviceError(f"--device gpu: CUDA error: {type(e).__name__}: {_one_line(e)}")


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
    xp = np
    if device == "gpu":
        xp = _cupy()
        from . import gpu
        gpu.compile_kernels()   # once, up front: a compile error here, not in the middle of a run
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
