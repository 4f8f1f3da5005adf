"""llama_np/kernels: the GPU decoder's CUDA source as .cu files, read as package data.

No GPU needed: these read the files, check that the joined module defines exactly the kernels the
NumPy emulator (tests/gpu_emulator.py) stands in for, and that a non-editable install ships them.
tests/test_gpu.py compiles and runs them on a GPU machine."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from llama_np import kernels
from tests import gpu_emulator

REPO = Path(__file__).resolve().parents[1]


defined_kernels = kernels.kernel_names


def test_every_file_is_in_the_joined_module_in_order():
    src = kernels.module_source()
    assert "#include" not in src           # NVRTC gets one self-contained string
    assert src.startswith(kernels.source(kernels.HEADER))
    pos = 0
    for name in kernels.FILES:
        body = kernels.source(name).replace(f'#include "{kernels.HEADER}"\n', "")
        pos = src.index(body, pos) + len(body)   # each file whole, after the one before it
    shipped = {p.name for p in resources.files(kernels).iterdir() if p.name.endswith((".cu", ".cuh"))}
    assert shipped == {kernels.HEADER, *kernels.FILES}, "a .cu file that module_source leaves out"


def test_each_file_includes_what_it_uses():
    """So every file compiles on its own (nvcc -c gemv.cu) as well as joined: a file includes the
    header exactly when it calls one of the header's helpers."""
    helpers = re.findall(r"__device__ __forceinline__ [\w ]+? (\w+)\(", kernels.source(kernels.HEADER))
    assert {"bf16_to_f32", "f16_to_f32", "ld_u32_a2", "warp_sum"} <= set(helpers)
    pattern = re.compile(rf"\b({'|'.join(helpers)})\b")     # called, or passed (embed.cu's macro)
    for name in kernels.FILES:
        src = kernels.source(name)
        uses = pattern.search(src) is not None
        assert uses == (f'#include "{kernels.HEADER}"' in src), name


def test_the_emulator_stands_in_for_exactly_these_kernels():
    assert defined_kernels(kernels.module_source()) == set(gpu_emulator.KERNELS)
    assert defined_kernels(kernels.source("rmsnorm.cu")) == {"rms_norm"}


def test_unknown_file_is_a_one_line_error():
    with pytest.raises(ValueError, match="no kernel file 'rmsnorm.cpp'") as e:
        kernels.source("rmsnorm.cpp")
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_a_non_editable_install_ships_the_kernels(tmp_path):
    """pip install (not editable) from a copy of the sources, then read every kernel from outside
    the repo: the .cu files must be package data of the installed llama_np."""
    src, target = tmp_path / "src", tmp_path / "site"
    keep = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("llama_np", "course"):
        shutil.copytree(REPO / name, src / name, ignore=keep)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(target), str(src)], check=True)
    code = ("import sys, llama_np, llama_np.gpu; from llama_np import kernels\n"
            f"assert llama_np.__file__.startswith({str(target)!r}), llama_np.__file__\n"
            "assert 'cupy' not in sys.modules\n"
            "for name in (kernels.HEADER, *kernels.FILES): sys.stdout.write(kernels.source(name))\n"
            "sys.stdout.write(kernels.module_source())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    expected = "".join(kernels.source(n) for n in (kernels.HEADER, *kernels.FILES)) + kernels.module_source()
    assert out.stdout == expected
