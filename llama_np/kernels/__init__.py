"""The CUDA kernels of ``llama_np.gpu``'s decoder, one ``.cu`` file per kernel family (as in llm.c).

    from llama_np import kernels
    print(kernels.source("rmsnorm.cu"))     # one file, e.g. for lesson 11
    kernels.module_source()                 # all of them, as the one module llama_np.gpu compiles

| file             | kernels                                                        |
|------------------|----------------------------------------------------------------|
| ``dtypes.cuh``   | bf16 / fp16 <-> float32 helpers, 2-byte-aligned loads, warp    |
|                  | sum, and GEMV_KERNELS: the one-warp-a-row skeleton of every    |
|                  | matrix-vector kernel, given a weight format's inner loop       |
| ``gemv.cu``      | ``gemv_{bf16,f16,f32}``, ``gemv_norm_*`` (RMSNorm fused in),   |
|                  | ``gemv_norm_swiglu_*`` (and SwiGLU: [w1; w3] -> silu(g) * u),  |
|                  | ``gemm_few_*`` (a few tokens: a short prefill)                 |
| ``gemv_q8_0.cu`` | GGUF Q8_0 kept packed: the same four, and                      |
|                  | ``dequant_q8_0_{f32,f16}`` (embedding rows, prefill tiles)     |
| ``gemv_q4_k.cu`` | the same six for GGUF Q4_K                                     |
| ``gemv_q6_k.cu`` | the same six for GGUF Q6_K                                     |
| ``gemv_int8.cu`` | the same six for llama_np's int8 (codes + a scale per row)     |
| ``widen.cu``     | ``widen_{bf16,f16}``, ``bf16_to_f16``: for the prefill         |
| ``rmsnorm.cu``   | ``rms_norm``                                                   |
| ``embed.cu``     | ``embed_{bf16,f16,f32}``: the token's embedding row            |
| ``attention.cu`` | ``attn_decode``: RoPE, the cache write, split-key attention    |
|                  | and the merge of its parts, one launch a layer                 |
| ``swiglu.cu``    | ``swiglu``: silu(gate) * up (for a w13 of two weight formats)  |
| ``argmax.cu``    | ``argmax_next``: greedy decoding on the device                 |
| ``cuda_on_cpu.h``| not a kernel: the small CUDA runtime with which ``cpu.py``     |
|                  | compiles these files (or lesson 11's kernel) for the CPU       |

Each file stands on its own for an editor, ``nvcc -c`` or compute-sanitizer (the files that widen
16-bit weights or read packed blocks ``#include "dtypes.cuh"``). CuPy compiles one string with NVRTC, and an installed
package need not be a folder NVRTC could search for headers, so ``module_source`` joins the header
and the files in a fixed order and drops those include lines. The files are package data, read with importlib.resources,
so they come with a wheel or a non-editable install (and from a zip, if the package is in one).
Reading them does not need CuPy or a GPU. ``llama_np.kernels.cpu`` compiles them (or any CUDA
source, such as lesson 11's) for the CPU with g++, to run and check them where there is no GPU.
"""
from __future__ import annotations

import re
from importlib import resources

HEADER = "dtypes.cuh"
#: the order the files are joined in (every file's kernels after the helpers they use)
FILES = ("gemv.cu", "gemv_q8_0.cu", "gemv_q4_k.cu", "gemv_q6_k.cu", "gemv_int8.cu", "widen.cu", "rmsnorm.cu",
         "embed.cu", "attention.cu", "swiglu.cu", "argmax.cu")
_INCLUDE = re.compile(rf'^#include "{re.escape(HEADER)}"\n', re.MULTILINE)


def source(name: str) -> str:
    """The CUDA source of one kernel file, e.g. ``source("rmsnorm.cu")``."""
    if name not in (HEADER, *FILES):
        raise ValueError(f"no kernel file {name!r} in llama_np.kernels (files: {', '.join((HEADER, *FILES))})")
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def module_source() -> str:
    """Every kernel as one CUDA source: the header, then each file without its include line."""
    return "\n".join([source(HEADER)] + [_INCLUDE.sub("", source(name)) for name in FILES])


def kernel_names(src: str) -> set[str]:
    """Names of the __global__ functions in CUDA source: those written out, three made by each
    EMBED(name, ...) in embed.cu, four by each GEMV_KERNELS(kind, ...) of dtypes.cuh (gemv_kind,
    gemv_norm_kind, gemv_norm_swiglu_kind, gemm_few_kind) and two by each DEQUANT_KERNELS(kind, ...)
    (dequant_kind_f32, dequant_kind_f16); not the macros' templates."""
    names = {n for n in re.findall(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(', src) if "NAME" not in n}
    names |= set(re.findall(r"^EMBED\((\w+),", src, re.M))
    for kind in re.findall(r"^GEMV_KERNELS\((\w+),", src, re.M):
        names |= {f"gemv_{kind}", f"gemv_norm_{kind}", f"gemv_norm_swiglu_{kind}", f"gemm_few_{kind}"}
    for kind in re.findall(r"^DEQUANT_KERNELS\((\w+),", src, re.M):
        names |= {f"dequant_{kind}_f32", f"dequant_{kind}_f16"}
    return names


__all__ = ["FILES", "HEADER", "kernel_names", "module_source", "source"]
