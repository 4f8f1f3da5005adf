"""CUDA kernels compiled for the CPU with g++ and run thread by thread: llama_np's own (so that
tests/test_gpu.py runs every line of them on machines without a GPU) and a learner's (lesson 11's
RMSNorm kernel, checked where there is no GPU).

    from llama_np.kernels import cpu
    k = cpu.RawKernel(source, "rms_norm")              # as cupy.RawKernel, on NumPy arrays
    k((T,), (256,), (x, w, y, np.int32(dim), np.float32(eps)))
    cpu.kernel("gemv_bf16")(grid, (256,), args)        # one of llama_np's kernels

The source is compiled as it is, with three mechanical rewrites (the PTX ``asm`` conversions
between fp16 and float32 become C++ ``_Float16`` casts; ``extern __shared__`` becomes the launch's
buffer); cuda_on_cpu.h, next to this file, supplies the rest of CUDA: thread and block indices,
float4/uint4, __ldg, atomics, a few math intrinsics, and warp shuffles and __syncthreads through a
fiber per thread (see its header). Each launch checks what a GPU would punish: a scalar of the
wrong type (CuPy passes Python ints as 64-bit), a non-contiguous or overlapping array, a write
outside an argument array (guard bytes before and after each one), a shuffle some lanes do not
reach, a barrier after some threads returned, a deadlock. Blocks run in a shuffled order.

What it cannot show: speed; the memory model between blocks running at the same time (here they
run one after another, so a missing __threadfence goes unnoticed); CUDA's own expf/sqrtf rounding;
register spills (tests/test_nvrtc.py checks those). A real GPU still decides. Needs g++ (with
_Float16: GCC 12 or newer on x86-64); ``unavailable()`` says why not.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from . import kernel_names, module_source

RUNTIME = "cuda_on_cpu.h"
GUARD = 256          # bytes of 0xff before and after each array argument (0xff..: NaN as float32)
# The source rewrites, each (pattern, replacement)
_F16_TO_F32 = (re.compile(r'asm\("cvt\.f32\.f16 %0, %1;" : "=f"\((\w+)\) : "h"\((\w+)\)\);'),
               r"\1 = cpu_f16_to_f32(\2);")
_F32_TO_F16 = (re.compile(r'asm\("cvt\.rn\.f16\.f32 %0, %1;" : "=h"\((\w+)\) : "f"\((.+?)\)\);'),
               r"\1 = cpu_f32_to_f16_bits(\2);")
_DYN_SHARED = (re.compile(r"extern __shared__ (?:__align__\(\d+\) )?float (\w+)\[\];"),
               r"float* \1 = (float*)cpu::shared_memory();")


class CudaOnCpuError(RuntimeError):
    """A kernel did something a GPU would not allow, or the harness could not be built."""


def cpu_source(src: str | None = None) -> str:
    """CUDA source (default: the kernel module) rewritten for g++; every ``asm`` must have been rewritten."""
    src = module_source() if src is None else src
    for pattern, repl in (_F16_TO_F32, _F32_TO_F16, _DYN_SHARED):
        src = pattern.sub(repl, src)
    if "asm(" in src or "extern __shared__" in src:
        raise CudaOnCpuError("a kernel uses an asm statement or extern __shared__ form that "
                             "llama_np.kernels.cpu does not rewrite")
    return src


def _program(cuda_source: str, names: list[str]) -> str:
    table = ",\n".join(f'    {{"{n}", [](void** a) {{ cpu::call({n}, a); }}, [] {{ return cpu::signature({n}); }}}}'
                       for n in names)
    return f'''#include "cuda_on_cpu.h"
#line 1 "kernel.cu"
{cpu_source(cuda_source)}
#line 1 "harness.cpp"
namespace {{
struct Entry {{ const char* name; void (*thunk)(void**); std::string (*sig)(); }};
const Entry table[] = {{
{table}
}};
const Entry* find(const char* name) {{
    for (const Entry& e : table) if (strcmp(e.name, name) == 0) return &e;
    return nullptr;
}}
void put(const std::string& s, char* out, int len) {{ snprintf(out, len, "%s", s.c_str()); }}
}}
extern "C" int cpu_signature(const char* name, char* out, int len) {{
    const Entry* e = find(name);
    if (!e) return 1;
    put(e->sig(), out, len);
    return 0;
}}
extern "C" int cpu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                          unsigned bz, unsigned long shared, void** args, unsigned seed, char* err, int len) {{
    const Entry* e = find(name);
    if (!e) {{ put(std::string("no kernel ") + name, err, len); return 1; }}
    std::string r = cpu::launch(e->thunk, args, dim3{{gx, gy, gz}}, dim3{{bx, by, bz}}, shared, seed);
    put(r, err, len);
    return r.empty() ? 0 : 1;
}}
'''


_PROBE = r"""
extern "C" __global__ void probe(const float* x, float* y) {
    __shared__ float s[64];
    float v = x[threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    s[threadIdx.x] = v;
    __syncthreads();
    y[threadIdx.x] = s[63 - threadIdx.x] + (float)(_Float16)0.5f;
}
"""


@functools.lru_cache(maxsize=None)
def unavailable() -> str | None:
    """Why CUDA cannot be compiled and run on the CPU here, or None: no g++, or one that cannot
    build or run the runtime (checked once a process by building and running a small kernel)."""
    if shutil.which("g++") is None:
        return "no C++ compiler (g++) to compile CUDA for the CPU"
    try:
        x = np.arange(64, dtype=np.float32)
        y = np.zeros(64, np.float32)
        launch("probe", (1,), (64,), 0, x, y, lib=_compile(_PROBE))
    except (CudaOnCpuError, OSError) as e:
        return f"g++ cannot build or run the CPU runtime for CUDA here ({str(e).splitlines()[0]})"
    sums = x.reshape(2, 32).sum(1)
    if not np.array_equal(y, sums[np.arange(64)[::-1] // 32] + 0.5):
        return "the CPU runtime for CUDA gives wrong results on this machine"
    return None


def _cache_dir() -> Path:
    d = Path(tempfile.gettempdir()) / f"llama_np_cuda_on_cpu_{os.getuid() if hasattr(os, 'getuid') else 0}"
    d.mkdir(parents=True, exist_ok=True)
    return d


@functools.lru_cache(maxsize=None)
def build(cuda_source: str | None = None):
    """The kernels of ``cuda_source`` (default: llama_np's module) compiled for the CPU, as a
    ctypes library; cached on disk by the hash of the source and the runtime. A compile error is a
    CudaOnCpuError whose first line is g++'s first error."""
    why = unavailable()
    if why:
        raise CudaOnCpuError(why)
    return _compile(module_source() if cuda_source is None else cuda_source)


def _compile(cuda_source: str):
    names = sorted(kernel_names(cuda_source))
    if not names:
        raise CudaOnCpuError('no extern "C" __global__ kernel in the source')
    program = _program(cuda_source, names)
    runtime = resources.files(__package__).joinpath(RUNTIME).read_text(encoding="utf-8")
    key = hashlib.sha256((program + runtime).encode()).hexdigest()[:16]
    cache = _cache_dir()
    lib = cache / f"kernels-{key}.so"
    if not lib.exists():
        work = Path(tempfile.mkdtemp(dir=cache))
        try:
            (work / RUNTIME).write_text(runtime, encoding="utf-8")
            (work / "kernels.cpp").write_text(program, encoding="utf-8")
            cmd = ["g++", "-std=c++17", "-O2", "-ffp-contract=off", "-fPIC", "-shared", "-Wno-unknown-pragmas",
                   f"-I{work}", "-o", str(work / "kernels.so"), str(work / "kernels.cpp")]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                errors = [ln for ln in r.stderr.splitlines() if "error" in ln]
                first = errors[0].split("kernel.cu:", 1)[-1] if errors else "see below"   # line:column: error
                raise CudaOnCpuError(f"the kernel does not compile: {first}\n{r.stderr[-3000:]}")
            os.replace(work / "kernels.so", lib)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    so = ctypes.CDLL(str(lib))
    so.cpu_launch.restype = so.cpu_signature.restype = ctypes.c_int
    return so


@functools.lru_cache(maxsize=None)
def signature(name: str, lib=None) -> str:
    """One letter an argument of kernel ``name``: p pointer, i int, l long long, f float."""
    buf = ctypes.create_string_buffer(256)
    if (lib or build()).cpu_signature(name.encode(), buf, 256):
        raise CudaOnCpuError(f"no kernel {name!r}")
    return buf.value.decode()


_SCALARS = {"i": (np.int32, ctypes.c_int32), "l": (np.int64, ctypes.c_int64), "f": (np.float32, ctypes.c_float)}


def launch(name: str, grid, block, shared_mem: int, *args, seed: int = 0, lib=None) -> None:
    """Run kernel ``name`` on NumPy arrays, as CuPy's RawKernel would on device arrays. ``lib``: a
    ``build`` of other CUDA source (default: llama_np's kernels)."""
    lib = lib or build()
    sig = signature(name, lib)
    if len(args) != len(sig):
        raise CudaOnCpuError(f"{name}: {len(args)} arguments, the kernel takes {len(sig)}")
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    for i, a in enumerate(arrays):
        for b in arrays[i + 1:]:
            if np.shares_memory(a, b):
                raise CudaOnCpuError(f"{name}: two array arguments overlap (not supported here)")
    keep, guarded = [], []
    for i, (code, a) in enumerate(zip(sig, args)):
        if code == "p":
            if not isinstance(a, np.ndarray):
                raise CudaOnCpuError(f"{name}: argument {i} must be an array, got {type(a).__name__}")
            if not a.flags.c_contiguous:
                raise CudaOnCpuError(f"{name}: argument {i} is not contiguous (a raw kernel reads it as one)")
            # the array's bytes between guards, at the same address modulo 16 (float4 loads)
            off = GUARD + a.ctypes.data % 16
            buf = np.full(a.nbytes + off + GUARD + 16, 0xFF, dtype=np.uint8)
            shift = (-buf.ctypes.data) % 16
            start = shift + off
            buf[start:start + a.nbytes] = a.reshape(-1).view(np.uint8)
            guarded.append((i, a, buf, start))
            v = ctypes.c_void_p(buf.ctypes.data + start)
        else:
            if code not in _SCALARS:
                raise CudaOnCpuError(f"{name}: argument {i} has a type the harness does not know")
            want, ctype = _SCALARS[code]
            if not isinstance(a, np.generic) or a.dtype != want:
                raise CudaOnCpuError(f"{name}: argument {i} must be a NumPy {np.dtype(want).name}, got "
                                     f"{getattr(a, 'dtype', type(a).__name__)} (CuPy would pass it wrongly)")
            v = ctype(a.item())
        keep.append(v)                 # alive until the launch returns: argv points at it
    argv = (ctypes.c_void_p * len(keep))(*[ctypes.addressof(v) for v in keep])
    grid = tuple(grid) + (1,) * (3 - len(grid))
    block = tuple(block) + (1,) * (3 - len(block))
    err = ctypes.create_string_buffer(512)
    rc = lib.cpu_launch(name.encode(), *[ctypes.c_uint(int(g)) for g in grid],
                        *[ctypes.c_uint(int(b)) for b in block], ctypes.c_ulong(int(shared_mem)),
                        argv, ctypes.c_uint(seed), err, 512)
    if rc:
        raise CudaOnCpuError(f"{name}: {err.value.decode()}")
    for i, a, buf, start in guarded:
        n = a.nbytes
        if (buf[:start] != 0xFF).any() or (buf[start + n:] != 0xFF).any():
            raise CudaOnCpuError(f"{name}: wrote outside array argument {i} ({a.dtype}, {a.shape})")
        out, now = a.reshape(-1).view(np.uint8), buf[start:start + n]
        if not np.array_equal(out, now):
            if not a.flags.writeable:
                raise CudaOnCpuError(f"{name}: wrote into array argument {i}, which is read-only")
            out[...] = now


def kernel(name: str, seed: int = 0, lib=None):
    """A launcher with CuPy's RawKernel call: ``kernel(name)(grid, block, args, shared_mem=0)``."""
    signature(name, lib)       # fails now for an unknown name, as CuPy's get_function would

    def run(grid, block, args, shared_mem=0, stream=None):
        launch(name, grid, block, shared_mem, *args, seed=seed, lib=lib)
    return run


class RawKernel:
    """``cupy.RawKernel(code, name)`` for the CPU: compile ``code`` with g++ and run kernel ``name``
    on NumPy arrays, ``k(grid, block, args, shared_mem=0)``. Lesson 11 checks a learner's kernel
    with it where there is no GPU."""

    def __init__(self, code: str, name: str, seed: int = 0):
        self.code, self.name = code, name
        self._run = kernel(name, seed=seed, lib=build(code))

    def __call__(self, grid, block, args, shared_mem: int = 0, stream=None) -> None:
        self._run(grid, block, args, shared_mem=shared_mem)


__all__ = ["CudaOnCpuError", "RawKernel", "build", "cpu_source", "kernel", "launch", "signature", "unavailable"]
