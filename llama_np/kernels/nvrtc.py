"""Compile CUDA source with NVRTC through ctypes: no GPU, no driver and no CuPy needed.

NVRTC (CUDA's runtime compiler, what CuPy calls) is a plain shared library, and NVIDIA ships it
on PyPI: ``nvidia-cuda-nvrtc-cu12`` (libnvrtc.so.12) and ``nvidia-cuda-nvrtc`` (CUDA 13,
libnvrtc.so.13), both in the ``gpu-compile`` extra. So a machine without a GPU can check that the
kernels compile for every GPU generation a learner may have, and that ptxas keeps every variable
in registers (a *spill* to local memory would slow the bandwidth-bound decode kernels):

    python -m llama_np.kernels.nvrtc      # a table: each CUDA version x each architecture

``compile_cubin`` compiles to SASS (``sm_XX``, a cubin), so ptxas runs and reports its register
use and spills with ``--ptxas-options=-v``; tests/test_nvrtc.py fails on any error or spill.
"""
from __future__ import annotations

import ctypes
import re
import sys
from dataclasses import dataclass
from importlib import metadata

#: CUDA major version -> (pip distribution, the library's path inside it)
WHEELS = {
    12: ("nvidia-cuda-nvrtc-cu12", "nvidia/cuda_nvrtc/lib/libnvrtc.so.12"),
    13: ("nvidia-cuda-nvrtc", "nvidia/cu13/lib/libnvrtc.so.13"),
}
#: compute capabilities a learner's GPU may have: T4 (7.5) to Blackwell consumer cards (12.0)
ARCHS = (75, 80, 86, 89, 90, 100, 120)
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


class NVRTCError(RuntimeError):
    """NVRTC could not be loaded, or a call into it failed."""


@dataclass
class Result:
    ok: bool              # compiled without error
    log: str              # the compiler's log (errors, warnings, ptxas -v lines)
    cubin: bytes = b""    # the SASS binary when ok

    @property
    def spills(self) -> list[tuple[str, int, int]]:
        """(function, bytes spilled by stores, bytes by loads) for each function that spills."""
        out, fn = [], "?"
        for line in self.log.splitlines():
            m = re.search(r"Compiling entry function '(\w+)'|Function properties for (\w+)", line)
            if m:
                fn = m.group(1) or m.group(2)
            s = _SPILL.search(line)
            if s and (int(s.group(1)) or int(s.group(2))):
                out.append((fn, int(s.group(1)), int(s.group(2))))
        return out


class NVRTC:
    """One loaded libnvrtc.so.N. ``NVRTC.from_wheel(12)`` finds it in the pip wheel."""

    def __init__(self, path: str):
        try:
            self.lib = ctypes.CDLL(path)
        except OSError as e:
            raise NVRTCError(f"cannot load {path}: {e}") from None
        self.path = path
        lib = self.lib
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version = (major.value, minor.value)

    @classmethod
    def from_wheel(cls, cuda_major: int) -> "NVRTC":
        """NVRTC of CUDA ``cuda_major`` from its pip wheel; NVRTCError (one line) if not installed."""
        dist, rel = WHEELS[cuda_major]
        try:
            path = metadata.distribution(dist).locate_file(rel)
        except metadata.PackageNotFoundError:
            raise NVRTCError(f"CUDA {cuda_major} NVRTC is not installed (pip install {dist}, "
                             "or pip install -e '.[gpu-compile]')") from None
        return cls(str(path))

    def _check(self, status: int, call: str) -> None:
        if status != 0:
            raise NVRTCError(f"{call}: {self.lib.nvrtcGetErrorString(status).decode()}")

    def supported_archs(self) -> list[int]:
        """The compute capabilities this NVRTC can target, e.g. [75, 80, ..., 120]."""
        n = ctypes.c_int()
        self._check(self.lib.nvrtcGetNumSupportedArchs(ctypes.byref(n)), "nvrtcGetNumSupportedArchs")
        archs = (ctypes.c_int * n.value)()
        self._check(self.lib.nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs")
        return list(archs)

    def compile_cubin(self, source: str, arch: int, options: tuple = ("-std=c++14",),
                      name: str = "kernels.cu") -> Result:
        """Compile ``source`` to SASS for ``sm_{arch}``, with ptxas's verbose report in the log."""
        lib, prog = self.lib, ctypes.c_void_p()
        self._check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(),
                                           0, None, None), "nvrtcCreateProgram")
        try:
            opts = [f"--gpu-architecture=sm_{arch}", "--ptxas-options=-v", *options]
            argv = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
            status = lib.nvrtcCompileProgram(prog, len(opts), argv)
            size = ctypes.c_size_t()
            self._check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
            log = ctypes.create_string_buffer(size.value)
            self._check(lib.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
            text = log.value.decode(errors="replace")
            if status != 0:
                return Result(False, text)
            self._check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
            cubin = ctypes.create_string_buffer(size.value)
            self._check(lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
            return Result(True, text, cubin.raw)
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))


def main() -> int:
    """Compile llama_np's kernels for every architecture in ARCHS with each installed NVRTC."""
    from . import module_source
    src, failed = module_source(), False
    for major in WHEELS:
        try:
            nv = NVRTC.from_wheel(major)
        except NVRTCError as e:
            print(f"CUDA {major}: skipped ({e})")
            continue
        supported = nv.supported_archs()
        print(f"CUDA {major}: NVRTC {nv.version[0]}.{nv.version[1]}, targets sm_{min(supported)}..sm_{max(supported)}")
        for arch in ARCHS:
            if arch not in supported:
                print(f"  sm_{arch}: skipped (this NVRTC cannot target it)")
                continue
            r = nv.compile_cubin(src, arch)
            bad = not r.ok or r.spills
            failed |= bool(bad)
            what = "compile error" if not r.ok else f"spills {r.spills}" if r.spills else f"ok, {len(r.cubin):,} bytes of SASS"
            print(f"  sm_{arch}: {what}")
            if not r.ok:
                print(r.log.strip()[-2000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
