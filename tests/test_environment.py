"""environment.yml (conda) and pyproject.toml (pip) must list the same packages."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_side = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    conda_side, section = set(), None
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if re.match(r"^\w", line):                            # a top-level key: channels, dependencies...
            section = line.split(":")[0]
        m = re.match(r"^  - ([A-Za-z0-9_.\-]+)", line)       # conda packages, not the nested pip list
        if m and section == "dependencies":
            conda_side.add(_name(m.group(1)))
    conda_side -= {"python", "pip"}
    assert conda_side == pip_side, (
        f"only in environment.yml: {sorted(conda_side - pip_side)}; only in pyproject.toml: {sorted(pip_side - conda_side)}")


def test_gpu_extra_is_optional():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any("cupy" in r for r in project["dependencies"])
    assert any("cupy" in r for r in project["optional-dependencies"]["gpu"])


def test_gpu_extras_bring_the_cuda_libraries_of_their_cuda():
    """gpu (CUDA 12) and gpu-cuda13 each name one CuPy and the NVRTC and cuBLAS wheels of the same
    CUDA major version (CuPy 14 loads them; without them a fresh venv cannot compile or multiply),
    as backend.EXTRAS tells the user to install them."""
    from llama_np.backend import EXTRAS
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for major, (extra, cupy, nvrtc, cublas) in EXTRAS.items():
        names = {_name(r) for r in extras[extra]}
        assert [n for n in names if n.startswith("cupy")] == [cupy], extra
        assert {nvrtc, cublas} <= names, extra
    assert {_name(r) for r in extras["gpu-compile"]} == {EXTRAS[12][2], EXTRAS[13][2]}
