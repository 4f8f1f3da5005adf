"""``--device gpu`` on a machine that cannot run it: every failure is one line that says what to do.

A fake ``cupy`` package (written to a temporary folder, put first on PYTHONPATH) plays each broken
set-up a learner meets: two CuPy packages, CuPy that does not import, no driver, a driver too old
for CuPy's CUDA, no GPU, a GPU older than compute capability 7.5, NVRTC or cuBLAS missing, kernels
that do not compile. ``python -m llama_np generate --device gpu`` must exit 1 with one line on
stderr and no traceback. No GPU and no real CuPy needed (with a real CuPy installed, this skips:
its package would be counted beside the fake one).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llama_np import backend, gpu

ROOT = Path(__file__).resolve().parents[1]

if backend.cupy_distributions():
    pytest.skip("a real CuPy is installed: tests/test_gpu.py checks the GPU path instead",
                allow_module_level=True)

# A stand-in for the parts of CuPy that backend._cupy and gpu.compile_kernels call. The scenario
# comes from $FAKE_CUPY; exception classes carry the module names CuPy's own have.
FAKE_CUPY = '''
import os, types
S = os.environ.get("FAKE_CUPY", "ok")
if S == "import":
    raise ImportError("libcuda.so.1: cannot open shared object file: No such file or directory")
__version__ = "14.2.0"

def _error(name, module):
    return type(name, (RuntimeError,), {"__module__": module})

CUDARuntimeError = _error("CUDARuntimeError", "cupy_backends.cuda.api.runtime")
CompileException = type("CompileException", (Exception,), {"__module__": "cupy.cuda.compiler"})

def _raise(e):
    raise e

def driverGetVersion():
    return {"nodriver": 0, "olddriver": 12020, "cuda11driver": 11040}.get(S, 13000)

def getDeviceCount():
    if S == "nodevice":
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
    return 1

def getDeviceProperties(i):
    return {"name": b"Tesla P100-PCIE-16GB" if S == "oldarch" else b"Tesla T4"}

class Device:
    def __init__(self, i=0):
        self.compute_capability = "60" if S == "oldarch" else "75"

class RawModule:
    def __init__(self, code, options=()):
        self.code = code

    def get_function(self, name):
        if S == "compile":
            raise CompileException("/tmp/x/kernel.cu(12): warning: unused\\n/tmp/x/kernel.cu(40): "
                                   "error: identifier \\"bf16_to_f32\\" is undefined\\n\\n1 error detected\\n" + self.code)
        return lambda *a: None

runtime = types.SimpleNamespace(driverGetVersion=driverGetVersion, getDeviceCount=getDeviceCount,
                                getDeviceProperties=getDeviceProperties)
nvrtc = types.SimpleNamespace(getVersion=lambda: _raise(RuntimeError(
    "CuPy failed to load libnvrtc.so.12: OSError: libnvrtc.so.12: cannot open shared object file"))
    if S == "nonvrtc" else (12, 9))
device = types.SimpleNamespace(get_cublas_handle=lambda: _raise(RuntimeError(
    "CuPy failed to load libcublas.so.12")) if S == "nocublas" else 1)
cuda = types.SimpleNamespace(runtime=runtime, Device=Device, nvrtc=nvrtc, device=device)
'''


def fake_site(tmp_path: Path, scenario: str) -> Path:
    """A folder holding the fake cupy and the installed-package records ("dist-info") a scenario
    has: cupy-cuda12x, cupy-cuda13x for a CUDA 13 CuPy, or both."""
    if scenario != "absent":
        (tmp_path / "cupy").mkdir()
        (tmp_path / "cupy" / "__init__.py").write_text(FAKE_CUPY)
    names = {"two": ["cupy-cuda12x", "cupy-cuda13x"], "olddriver": ["cupy-cuda13x"],
             "absent": []}.get(scenario, ["cupy-cuda12x"])
    for name in names:
        info = tmp_path / f"{name.replace('-', '_')}-14.2.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 14.2.0\n")
    return tmp_path


SCENARIOS = {   # scenario -> what the one line must say
    "absent": ["needs CuPy, which is not installed", "pip install -e '.[gpu]'", "gpu-cuda13"],
    "two": ["2 CuPy packages", "cupy-cuda12x 14.2.0, cupy-cuda13x 14.2.0",
            "pip uninstall cupy-cuda12x cupy-cuda13x"],
    "import": ["did not import", "libcuda.so.1", "pip install -e '.[gpu]'"],
    "nodriver": ["no NVIDIA driver found", "nvidia-smi"],
    "olddriver": ["supports CUDA 12.2", "cupy-cuda13x needs CUDA 13", "pip install -e '.[gpu]'"],
    "cuda11driver": ["supports CUDA 11.4, but cupy-cuda12x needs CUDA 12", "driver to 525 or newer"],
    "nodevice": ["no usable GPU", "cudaErrorNoDevice"],
    "oldarch": ["Tesla P100-PCIE-16GB has compute capability 6.0", "7.5 or newer", "--device cpu"],
    "nonvrtc": ["cannot load NVRTC", "pip install nvidia-cuda-nvrtc-cu12", "'gpu' extra"],
    "nocublas": ["cannot load cuBLAS", "pip install nvidia-cublas-cu12"],
    "compile": ['NVRTC could not compile a kernel', 'kernel.cu(40): error: identifier "bf16_to_f32" is undefined'],
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_cli_says_what_to_install(tmp_path, scenario):
    site = fake_site(tmp_path, scenario)
    env = {**os.environ, "FAKE_CUPY": scenario, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    p = subprocess.run([sys.executable, "-m", "llama_np", "generate", "hi", "--device", "gpu"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert p.returncode == 1, p.stderr
    assert p.stdout == "" and "Traceback" not in p.stderr
    line = p.stderr.strip()
    assert "\n" not in line and line.startswith("llama_np: error: --device gpu: "), p.stderr
    for words in SCENARIOS[scenario]:
        assert words in line, line
    if scenario == "compile":
        assert "extern" not in line       # the log's error line, not the kernels' source


@pytest.fixture
def fake_cupy(tmp_path, monkeypatch):
    """The fake cupy imported in this process (scenario "ok": a T4 with everything installed)."""
    monkeypatch.setenv("FAKE_CUPY", "ok")
    monkeypatch.syspath_prepend(str(fake_site(tmp_path, "ok")))
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    backend._cupy.cache_clear()
    monkeypatch.setattr(gpu, "_module", None)
    monkeypatch.setattr(gpu, "_functions", {})
    yield
    backend._cupy.cache_clear()
    backend.use("cpu")
    sys.modules.pop("cupy", None)


def test_use_gpu_compiles_the_kernels_once(fake_cupy, monkeypatch):
    built = []
    import cupy
    real = cupy.RawModule
    monkeypatch.setattr(cupy, "RawModule", lambda code, options=(): built.append(code) or real(code, options))
    assert backend.use("gpu") is cupy
    backend.use("cpu")
    assert backend.use("gpu") is cupy
    assert len(built) == 1 and "rms_norm" in built[0]


def test_cli_reports_a_cuda_error_mid_run_in_one_line(monkeypatch, capsys):
    """A CuPy error after set-up (e.g. a CUDA runtime error during upload) is one line, exit 1."""
    from llama_np import cli
    err = type("CUDARuntimeError", (RuntimeError,), {"__module__": "cupy_backends.cuda.api.runtime"})

    def boom(args):
        raise err("cudaErrorIllegalAddress: an illegal memory access was encountered\n(more)")
    monkeypatch.setattr(cli, "cmd_generate", boom)
    assert cli.main(["generate", "hi"]) == 1
    line = capsys.readouterr().err.strip()
    assert line == ("llama_np: error: --device gpu: CUDA error: CUDARuntimeError: cudaErrorIllegalAddress: "
                    "an illegal memory access was encountered (more)")


def test_other_errors_are_not_taken_for_cuda_errors():
    assert backend.cuda_error(RuntimeError("a bug")) is None
    assert backend.cuda_error(ValueError("bad input")) is None
