"""Helpers for writing a solution notebook from a Python script (optional: editing the notebook
in JupyterLab and setting the nbgrader metadata by hand gives the same file).

    from course.author import md, code, exercise, check, notebook, save
    nb = notebook([
        md("# 02 · RMSNorm\\n..."),
        code(SETUP),
        exercise('''def rms_norm(x, weight, eps=1e-5):
        \"\"\"x: (..., dim) float32 -> (..., dim) float32\"\"\"
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION''', grade_id="rms_norm"),
        check("check_function(rms_norm, llama_np.norm.rms_norm, make_inputs)", grade_id="check_rms_norm"),
    ])
    save(nb, "solutions/02_rmsnorm.ipynb")     # then: python -m course execute 02

Cell ids are derived from the position (and grade_id), so re-running the script gives the
same file.
"""
from __future__ import annotations

from pathlib import Path

from .notebooks import SETUP_CELL as SETUP   # every lesson's first code cell (see notebooks.py)


def _nbf():
    import nbformat
    return nbformat.v4


def md(source: str, **metadata):
    return _nbf().new_markdown_cell(source.strip("\n"), metadata=metadata)


def code(source: str, tags: tuple[str, ...] = (), **metadata):
    """A plain code cell. tags: e.g. ("nbval-ignore-output",) for a timing cell."""
    if tags:
        metadata["tags"] = list(tags)
    return _nbf().new_code_cell(source.strip("\n"), metadata=metadata)


def exercise(source: str, grade_id: str, tags: tuple[str, ...] = ()):
    """A cell the learner writes: the solution sits between ### BEGIN/END SOLUTION."""
    cell = code(source, tags)
    cell.metadata["nbgrader"] = {"grade": False, "grade_id": grade_id, "locked": False,
                                 "schema_version": 3, "solution": True, "task": False}
    return cell


def check(source: str, grade_id: str, points: float = 1, tags: tuple[str, ...] = ()):
    """A locked check cell (nbgrader autograder test) that calls course.checkers."""
    cell = code(source, tags)
    cell.metadata["nbgrader"] = {"grade": True, "grade_id": grade_id, "locked": True,
                                 "points": points, "schema_version": 3, "solution": False, "task": False}
    return cell


def notebook(cells):
    nb = _nbf().new_notebook(cells=list(cells))
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, cell in enumerate(nb.cells):
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        cell.id = f"c{i:02d}-{gid}" if gid else f"c{i:02d}"
        cell.id = cell.id[:64]
    return nb


def save(nb, path) -> Path:
    from .notebooks import write
    path = Path(path)
    write(nb, path)
    return path
