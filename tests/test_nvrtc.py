"""Every CUDA kernel compiles, without a GPU, for each GPU generation a learner may have.

NVRTC from the pip wheels (the ``gpu-compile`` extra) compiles llama_np's kernel module and lesson
11's RMSNorm kernel to SASS for sm_75 (T4) ... sm_120 (RTX 50) with both CUDA 12 and CUDA 13, and
ptxas's report must show no register spill. An architecture that a toolkit itself cannot target is
skipped with the reason; without the wheels the whole file skips.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from llama_np import kernels
from llama_np.kernels.nvrtc import ARCHS, WHEELS, NVRTC, NVRTCError
from tests.test_kernels import defined_kernels

REPO = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def nvrtc(major: int) -> NVRTC:
    try:
        return NVRTC.from_wheel(major)
    except NVRTCError as e:
        pytest.skip(str(e))


def lesson_11_kernel() -> str:
    """MY_RMS_NORM_SOURCE from the solved lesson 11 (the cell that defines it, run on its own)."""
    nb = json.loads((REPO / "solutions" / "11_gpu_cupy.ipynb").read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and "MY_RMS_NORM_SOURCE = r" in src:
            scope: dict = {}
            exec(src, scope)
            return scope["MY_RMS_NORM_SOURCE"]
    raise AssertionError("solutions/11_gpu_cupy.ipynb defines no MY_RMS_NORM_SOURCE")


SOURCES = {"llama_np.kernels": kernels.module_source, "lesson 11 rms_norm": lesson_11_kernel}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("major", sorted(WHEELS))
@pytest.mark.parametrize("what", SOURCES)
def test_compiles_without_spills(what, major, arch):
    nv = nvrtc(major)
    if arch not in nv.supported_archs():
        pytest.skip(f"NVRTC {nv.version[0]}.{nv.version[1]} cannot target sm_{arch}")
    src = SOURCES[what]()
    r = nv.compile_cubin(src, arch)
    assert r.ok, f"{what}, CUDA {major}, sm_{arch}:\n{r.log[-3000:]}"
    assert r.cubin
    # ptxas reported on every kernel (so "no spill" below is not vacuous), and none spills
    reported = {line.split()[-1] for line in r.log.splitlines() if "Function properties for" in line}
    assert defined_kernels(src) <= reported, r.log[-3000:]
    assert r.spills == [], f"{what}, CUDA {major}, sm_{arch}: register spills {r.spills}"


def test_every_supported_learner_gpu_is_a_target():
    """The newest wheels of both toolkits know every architecture in ARCHS (a pin to an old 12.x
    that did not know Blackwell, sm_100 / sm_120, would fail here rather than skip quietly)."""
    for major in sorted(WHEELS):
        missing = set(ARCHS) - set(nvrtc(major).supported_archs())
        assert not missing, f"CUDA {major} NVRTC {nvrtc(major).version} lacks sm_{sorted(missing)}"


def test_a_spill_and_an_error_are_seen():
    """The checks above can fail: too few registers force spills, and a typo is a compile error."""
    nv = nvrtc(12)
    r = nv.compile_cubin(kernels.module_source(), 75, options=("-std=c++14", "--maxrregcount=16"))
    assert r.ok and any(fn == "attn_decode" for fn, _, _ in r.spills), r.log[-3000:]
    bad = nv.compile_cubin('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }', 75)
    assert not bad.ok and "undefined_name" in bad.log
