"""After ``nbgrader autograde``: the scores, and the submissions that did not really run.

nbgrader runs a submission with errors allowed and scores each check cell that raised as 0. That
is right for a learner's wrong answer, but it also turns "this notebook could not run here" (a
missing data file, a package not installed in the grading kernel, a cell the learner broke before
the first exercise) into a quiet 0 with exit code 0. So, from the course directory:

    nbgrader autograde 02_rmsnorm
    python -m course grades 02_rmsnorm        # scores; exit 1 if a notebook did not run

A notebook "did not run" when a cell that is neither an exercise nor a check raised before the
first exercise (the setup: imports, data), or raised anywhere an error that no wrong answer
causes (a missing module or file, a dead kernel, a timeout). Errors that follow from an unfinished
exercise (NotImplementedError, NameError, AssertionError in the cells after it) are the
learner's, and only cost that exercise's points.
"""
from __future__ import annotations

import json
from pathlib import Path

from .notebooks import CourseError

# Errors that say "this environment", not "this answer".
ENVIRONMENT_ERRORS = {"ModuleNotFoundError", "ImportError", "FileNotFoundError", "PermissionError",
                      "DeadKernelError", "CellTimeoutError", "TimeoutError", "KeyboardInterrupt"}


def run_problems(notebook: Path) -> list[str]:
    """Why an autograded notebook did not run (empty when it did): one line per offending cell."""
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    problems, seen_exercise = [], False
    for i, cell in enumerate(nb["cells"]):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell["cell_type"] != "code":
            continue
        learner = meta.get("solution") or meta.get("grade")
        seen_exercise |= bool(meta.get("solution"))
        for out in cell.get("outputs", []):
            if out.get("output_type") != "error":
                continue
            ename = out.get("ename", "?")
            if ename in ENVIRONMENT_ERRORS or (not learner and not seen_exercise):
                where = meta.get("grade_id") or f"cell {i}"
                problems.append(f"{where} raised {ename}: {out.get('evalue', '')}".strip()[:300])
    return problems


def report(course_dir: Path, assignment: str, out=None) -> int:
    """Print each student's score on ``assignment`` and every notebook that did not run.
    Returns the exit code: 0 when every submission was autograded and ran, 1 otherwise."""
    import sys
    out = out or sys.stdout
    course_dir = Path(course_dir)
    db = course_dir / "gradebook.db"
    if not db.is_file():
        raise CourseError(f"no gradebook.db in {course_dir}: run this from the course directory, "
                          "after nbgrader autograde")
    from nbgrader.api import Gradebook, MissingEntry
    bad = 0
    with Gradebook(f"sqlite:///{db}") as gb:
        try:
            gb.find_assignment(assignment)
        except MissingEntry:
            raise CourseError(f"no assignment {assignment!r} in {db}") from None
        students = sorted(s.id for s in gb.students)
        for student in students:
            try:
                sub = gb.find_submission(assignment, student)
            except MissingEntry:
                continue
            folder = course_dir / "autograded" / student / assignment
            problems = []
            for nb in sub.notebooks:
                path = folder / f"{nb.name}.ipynb"
                if not path.is_file():
                    problems.append(f"{nb.name}.ipynb was not autograded (see nbgrader's log)")
                    continue
                problems += [f"{nb.name}.ipynb: {p}" for p in run_problems(path)]
                problems += [f"{nb.name}.ipynb: {g.name} has no score" for g in nb.grades
                             if g.auto_score is None and g.manual_score is None]
            status = "DID NOT RUN" if problems else "ok"
            print(f"{student:20s} {sub.score:6.1f} / {sub.max_score:.1f}  {status}", file=out)
            for p in problems:
                print(f"    {p}", file=out)
            bad += bool(problems)
    if bad:
        print(f"{bad} submission(s) of {assignment} did not run: their score is not a grade.", file=out)
    return 1 if bad else 0
