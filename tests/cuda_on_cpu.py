"""llama_np's CUDA kernels compiled for the CPU with g++ and run thread by thread, so that
tests/test_gpu.py runs the kernels' own code on machines without a GPU (CI, a laptop).

    from tests import cuda_on_cpu
    k = cuda_on_cpu.kernel("gemv_bf16")                 # what llama_np.gpu.kernel returns, for NumPy
    k(grid, (256,), (W, x, y, np.int32(rows), np.int32(n), np.int32(0)))

The source is llama_np.kernels.module_source() itself, with three mechanical rewrites (the PTX
``asm`` conversions between fp16 and float32 become C++ ``_Float16`` casts; ``extern __shared__``
becomes the launch's buffer); tests/cuda_on_cpu.h supplies the rest of CUDA: thread and block
indices, float4/uint4, __ldg, atomics, and warp shuffles and __syncthreads through a fiber per thread
(see its header). Each launch checks what a GPU would punish: a scalar of the wrong type (CuPy
passes Python ints as 64-bit), a non-contiguous or overlapping array, a write outside an argument
array (guard bytes before and after each one), a shuffle some lanes do not reach, a barrier after
some threads returned, a deadlock. Blocks run in a shuffled order.

What it cannot show: speed; the memory model between blocks running at the same time (here they
run one after another, so a missing __threadfence goes unnoticed); CUDA's own expf/sqrtf rounding;
register spills (tests/test_nvrtc.py checks those). tests/test_gpu.py on a real GPU still decides.
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
from pathlib import Path

import numpy as np

from llama_np import kernels

HERE = Path(__file__).resolve().parent
GUARD = 256          # bytes of 0xff before and after each array argument (0xff..: NaN as float32)
# The source rewrites, each (pattern, replacement, how many times it must match)
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
    src = kernels.module_source() if src is None else src
    for pattern, repl in (_F16_TO_F32, _F32_TO_F16, _DYN_SHARED):
        src = pattern.sub(repl, src)
    if "asm(" in src or "extern __shared__" in src:
        raise CudaOnCpuError("a kernel uses an asm statement or extern __shared__ form that "
                             "tests/cuda_on_cpu.py does not rewrite")
    return src


def _program(cuda_source: str, names: list[str]) -> str:
    table = ",\n".join(f'    {{"{n}", [](void** a) {{ cpu::call({n}, a); }}, [] {{ return cpu::signature({n}); }}}}'
                       for n in names)
    return f'''#include "cuda_on_cpu.h"
{cpu_source(cuda_source)}
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


def unavailable() -> str | None:
    """Why the kernels cannot be built for the CPU here (no g++), or None."""
    return None if shutil.which("g++") else "no g++ to compile the CUDA kernels for the CPU"


@functools.lru_cache(maxsize=None)
def build(cuda_source: str | None = None):
    """The kernels of ``cuda_source`` (default: llama_np's module) compiled for the CPU, as a
    ctypes library; cached on disk by the hash of the source and the harness."""
    from tests.test_kernels import defined_kernels
    why = unavailable()
    if why:
        raise CudaOnCpuError(why)
    cuda_source = kernels.module_source() if cuda_source is None else cuda_source
    program = _program(cuda_source, sorted(defined_kernels(cuda_source)))
    header = (HERE / "cuda_on_cpu.h").read_text(encoding="utf-8")
    key = hashlib.sha256((program + header).encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"llama_np_cuda_on_cpu_{os.getuid()}"
    lib = cache / f"kernels-{key}.so"
    if not lib.exists():
        cache.mkdir(parents=True, exist_ok=True)
        src = cache / f"kernels-{key}.{os.getpid()}.cpp"
        src.write_text(program, encoding="utf-8")
        tmp = cache / f"kernels-{key}.{os.getpid()}.so"
        cmd = ["g++", "-std=c++17", "-O2", "-ffp-contract=off", "-fPIC", "-shared", "-Wno-unknown-pragmas",
               f"-I{HERE}", "-o", str(tmp), str(src)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        src.unlink()
        if r.returncode != 0:
            raise CudaOnCpuError(f"g++ could not compile the kernels for the CPU:\n{r.stderr[-4000:]}")
        os.replace(tmp, lib)
    so = ctypes.CDLL(str(lib))
    so.cpu_launch.restype = so.cpu_signature.restype = ctypes.c_int
    return so


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
    keep, guarded, values = [], [], []
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
            guarded.append((a, buf, start))
            v = ctypes.c_void_p(buf.ctypes.data + start)
        else:
            if code not in _SCALARS:
                raise CudaOnCpuError(f"{name}: argument {i} has a type the harness does not know")
            want, ctype = _SCALARS[code]
            if not isinstance(a, np.generic) or a.dtype != want:
                raise CudaOnCpuError(f"{name}: argument {i} must be a NumPy {np.dtype(want).name}, got "
                                     f"{getattr(a, 'dtype', type(a).__name__)} (CuPy would pass it wrongly)")
            v = ctype(a.item())
        keep.append(v)
        values.append(ctypes.cast(ctypes.pointer(v), ctypes.c_void_p))
    argv = (ctypes.c_void_p * len(values))(*[v.value for v in values])
    grid = tuple(grid) + (1,) * (3 - len(grid))
    block = tuple(block) + (1,) * (3 - len(block))
    err = ctypes.create_string_buffer(512)
    rc = lib.cpu_launch(name.encode(), *[ctypes.c_uint(int(g)) for g in grid],
                               *[ctypes.c_uint(int(b)) for b in block], ctypes.c_ulong(int(shared_mem)),
                               argv, ctypes.c_uint(seed), err, 512)
    if rc:
        raise CudaOnCpuError(f"{name}: {err.value.decode()}")
    for i, (a, buf, start) in enumerate(guarded):
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


__all__ = ["CudaOnCpuError", "build", "cpu_source", "kernel", "launch", "signature", "unavailable"]
