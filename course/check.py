"""``python -m course check NN``: run a lesson in a fresh kernel and say, exercise by exercise,
what is still wrong, in plain words.

It judges a cell the way ``pytest --nbval`` does (an error fails it; so does output that differs
from the stored expected output, after the same sanitizing, images ignored), so the two agree:
the exit code is 0 exactly when nbval would pass the notebook.

An exercise is a cell the learner writes (nbgrader ``solution: true``) together with the check
cells (nbgrader ``grade: true``) that follow it, up to the next exercise. Its name is its
``grade_id`` and the nearest markdown heading above it.

Cause before consequence: the run stops at the first exercise that fails (later cells use it, so
their failures would only repeat it); the later exercises are reported as depending on it.
``keep_going`` runs everything and marks later failures the same way. Every exercise and check
cell has a time limit (``check_timeout``) so that a very slow answer is reported in seconds.
"""
from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .build import kernel_env
from .notebooks import (_rel, _short, first_difference, is_check, is_exercise, nbgrader,
                        nbval_markers, read, sanitize_patterns, warm_caches)


@dataclass
class Exercise:
    grade_id: str
    title: str
    cells: list = field(default_factory=list)        # indices: the exercise cell, then its checks
    problem: str | None = None                       # None when it passes


def heading_before(nb, index: int) -> str:
    for cell in reversed(nb.cells[:index]):
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.lstrip().startswith("#"):
                    return line.strip().lstrip("#").strip()
    return ""


def group_exercises(nb) -> tuple[list[Exercise], list[int]]:
    """(exercises, indices of the other code cells)."""
    exercises, others, current = [], [], None
    for i, cell in enumerate(nb.cells):
        if is_exercise(cell) and cell.cell_type == "code":
            current = Exercise(nbgrader(cell).get("grade_id", f"cell{i}"), heading_before(nb, i), [i])
            exercises.append(current)
        elif is_check(cell) and current is not None:
            current.cells.append(i)
        elif cell.cell_type == "code":
            others.append(i)
    return exercises, others


def error_of(cell):
    for o in cell.get("outputs", []):
        if o.get("output_type") == "error":
            return o
    return None


def one_line(text: str, n: int = 160) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return _short(lines[0] if lines else "", n)


def judge(expected_cell, ran_cell, patterns) -> str | None:
    """What is wrong with one executed cell, in words; None when nbval would pass it."""
    marks = nbval_markers(expected_cell)
    if "NBVAL_SKIP" in marks:
        return None
    err = error_of(ran_cell)
    if err is not None and "NBVAL_RAISES_EXCEPTION" not in marks and "RAISES_EXCEPTION" not in marks:
        ename = err.get("ename", "Error")
        # a check's message (a known mistake and its fix) is worth up to 400 characters
        evalue = one_line(err.get("evalue", ""), 400 if ename in ("AssertionError", "CheckFailed") else 160)
        if ename == "NotImplementedError":
            return "not implemented yet (replace `raise NotImplementedError()` with your code)"
        if ename in ("Stopped", "NotRun"):     # made up by run_notebook, not raised by the code
            return evalue
        if ename in ("AssertionError", "CheckFailed"):
            return evalue or "a check failed"
        return f"raised {ename}: {evalue}" if evalue else f"raised {ename}"
    if "NBVAL_IGNORE_OUTPUT" in marks or expected_cell.get("execution_count") is None:
        return None
    diff = first_difference(expected_cell.get("outputs", []), ran_cell.get("outputs", []), patterns)
    return f"output differs: {diff}" if diff else None


def run_notebook(nb, cwd: Path, timeout: int = 600, check_timeout: int | None = None,
                 stop_at=None):
    """Execute a copy of ``nb`` cell by cell in a fresh kernel; errors are kept as outputs, not
    raised. ``check_timeout``: the time limit of exercise and check cells (nbgrader) instead of
    ``timeout``. ``stop_at(i, ran_cell)`` -> a reason, after each cell: the cells after it are not
    run and get that reason as their error (the first failing exercise stops the run)."""
    import copy

    from nbclient import NotebookClient

    ran = copy.deepcopy(nb)
    quiet = logging.getLogger("course.check.kernel")     # nbclient logs timeouts; the report says them
    quiet.setLevel(logging.CRITICAL)
    client = NotebookClient(ran, timeout=timeout, allow_errors=True, record_timing=False, log=quiet,
                            kernel_name=nb.metadata.get("kernelspec", {}).get("name", "python3"),
                            resources={"metadata": {"path": str(cwd)}})
    warm_caches()
    n, stopped = 0, None
    # The kernel's own log (e.g. ipykernel's transport warning) is not the learner's business.
    with client.setup_kernel(env=kernel_env(), cwd=str(cwd), stderr=subprocess.DEVNULL):
        for i, cell in enumerate(ran.cells):
            if cell.cell_type != "code" or "NBVAL_SKIP" in nbval_markers(cell):
                continue
            if stopped:
                cell.outputs = [_error("NotRun", stopped)]
                continue
            n += 1
            graded = check_timeout and (is_exercise(cell) or is_check(cell))
            client.timeout = check_timeout if graded else timeout
            try:
                client.execute_cell(cell, i, execution_count=n)
            except Exception as e:           # a timeout or a dead kernel: later cells cannot run
                if "timeout" in type(e).__name__.lower():
                    what = (f"took longer than {client.timeout} s, the time limit of a check: the answer is "
                            f"much slower than it needs to be, or never ends (the solution takes seconds)"
                            if graded else f"timed out after {client.timeout} s")
                else:
                    what = f"{type(e).__name__} ({one_line(str(e)) or 'no message'})"
                cell.outputs = [_error("Stopped", what)]
                stopped = (stop_at(i, cell) if stop_at else None) or f"not run: cell {i} stopped the kernel"
                continue
            if stop_at is not None:
                stopped = stop_at(i, cell)
    return ran


def _error(ename: str, evalue: str):
    from nbformat.v4 import new_output
    return new_output("error", ename=ename, evalue=evalue, traceback=[])


def check(lesson_path: Path, timeout: int = 600, out=print, sanitize: Path | None = None,
          check_timeout: int | None = 60, keep_going: bool = False) -> int:
    """Run the lesson and print the report. Returns 0 when every exercise and cell passes."""
    lesson_path = Path(lesson_path)
    nb = read(lesson_path)
    patterns = sanitize_patterns(sanitize) if sanitize else sanitize_patterns()
    exercises, others = group_exercises(nb)
    owner = {i: ex for ex in exercises for i in ex.cells}
    first_failure = []

    def stop_at(i, ran_cell):
        """After cell i: stop at the first exercise that fails (later cells depend on it)."""
        ex = owner.get(i)
        if ex is None or first_failure or judge(nb.cells[i], ran_cell, patterns) is None:
            return None
        first_failure.append(ex)
        return None if keep_going else f"depends on exercise {ex.grade_id}, which fails"

    out(f"Checking {_rel(lesson_path)} (a fresh kernel runs every cell, up to the first failing exercise)...")
    t0 = time.perf_counter()
    ran = run_notebook(nb, lesson_path.parent, timeout, check_timeout, stop_at)
    seconds = time.perf_counter() - t0

    failed = first_failure[0] if first_failure else None
    for ex in exercises:
        problems = [(i, p) for i in ex.cells if (p := judge(nb.cells[i], ran.cells[i], patterns))]
        # An error (a failed check says most) comes before a mere difference in printed output.
        problems.sort(key=lambda ip: ip[1].startswith("output differs"))
        if problems:
            i, p = problems[0]
            in_check = i != ex.cells[0] and p.startswith("output differs")
            ex.problem = p + (" (in its check cell)" if in_check else "")
            if failed is not None and ex is not failed and exercises.index(ex) > exercises.index(failed) \
                    and not ex.problem.startswith("depends on"):
                ex.problem += f" (may depend on exercise {failed.grade_id}, which fails first)"
    failing_others = []
    for i in others:
        p = judge(nb.cells[i], ran.cells[i], patterns)
        if p and p.startswith("not implemented"):
            p = "uses an exercise that is not implemented yet"
        if p and not p.startswith("depends on"):
            failing_others.append((i, p))

    width = max([len(ex.grade_id) for ex in exercises] + [1])
    for ex in exercises:
        mark = "✓" if ex.problem is None else ("·" if ex.problem.startswith("depends on") else "✗")
        title = f"  {ex.title}" if ex.title else ""
        line = f"  {mark} {ex.grade_id:<{width}}{title}"
        out(line if ex.problem is None else f"{line}\n      {ex.problem}")
    if failing_others:
        out("  Other cells:")
        for i, p in failing_others:
            where = heading_before(nb, i)
            out(f"  ✗ cell {i}{f' (in {where!r})' if where else ''}: {p}")
    n_pass = sum(ex.problem is None for ex in exercises)
    summary = f"{n_pass} of {len(exercises)} exercises pass"
    if failed is not None and not keep_going:
        summary += f"; stopped at {failed.grade_id}: fix it first, the cells after it use it"
    if failing_others:
        summary += f"; {len(failing_others)} other cell(s) fail"
    out(f"{summary}. ({seconds:.0f} s)")
    return 0 if n_pass == len(exercises) and not failing_others else 1


__all__ = ["check", "group_exercises", "judge", "run_notebook"]
