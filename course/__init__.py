"""The course tooling: solution notebooks -> student lessons, and the checks learners run.

    python -m course build [NN ...] [--check] [--execute]   # solutions/ -> lessons/
    python -m course execute NN [NN ...]                     # re-run a solution, store outputs
    python -m course check NN                                # run a lesson, report per exercise

``course.checkers`` holds the functions that check cells call (``check_function``,
``check_close``, ``check_equal``, ``check_dtype``). It imports only NumPy, so a notebook can use
it without Jupyter's tooling; the build and check commands import nbformat / nbclient lazily.
See course/README.md for the syllabus, the guides and the authoring rules.

The data the lessons read (reference numbers in ``course/fixtures/``) is package data: a notebook
finds it with ``course.fixture("05_gqa")`` / ``course.data_path("01_botchan.txt")`` wherever it
runs (a clone, a ``pip install`` without the repository, nbgrader's folders, Colab), never
through the working directory.
"""
from importlib import resources
from pathlib import Path


def data_path(name: str) -> Path:
    """The installed file ``course/fixtures/<name>`` (e.g. ``"01_botchan.txt"``, ``"tiny/tied.npz"``)."""
    path = Path(str(resources.files(__name__).joinpath("fixtures", *name.split("/"))))
    if not path.is_file():
        raise FileNotFoundError(f"course data {name!r} is not installed (looked for {path}); "
                                "reinstall llama-np (pip install .) from a complete checkout")
    return path


def fixture(name: str) -> dict:
    """Every array of ``course/fixtures/<name>.npz``, read into memory: ``course.fixture("05_gqa")``."""
    import numpy as np                 # here, so `import course` stays cheap for the command line
    with np.load(data_path(f"{name}.npz")) as f:
        return {k: f[k] for k in f.files}
