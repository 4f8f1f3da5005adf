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

import ast
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


def _stored(node) -> set[str]:
    out = set()
    for t in ast.walk(node):
        if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store):
            out.add(t.id)
        elif isinstance(t, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(t.name)
        elif isinstance(t, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split(".")[0] for a in t.names}
    return out


class _Reads(ast.NodeVisitor):
    """Names a cell reads before binding them itself (so their values come from earlier cells).
    Statements are visited in order; loop targets, with-targets, comprehension targets and
    function arguments are bound before the code that uses them."""

    def __init__(self):
        self.bound, self.reads = [set()], set()

    def _bind(self, target):
        self.bound[-1] |= {t.id for t in ast.walk(target) if isinstance(t, ast.Name)}

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load) and not any(node.id in b for b in self.bound):
            self.reads.add(node.id)
        elif isinstance(node.ctx, ast.Store):
            self.bound[-1].add(node.id)

    def visit_Assign(self, node):
        self.visit(node.value)
        for t in node.targets:
            self.visit(t)

    def visit_For(self, node):
        self.visit(node.iter)
        self._bind(node.target)
        for n in node.body + node.orelse:
            self.visit(n)

    def visit_With(self, node):
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self._bind(item.optional_vars)
        for n in node.body:
            self.visit(n)

    def _scope(self, args, body, name=None):
        if name:
            self.bound[-1].add(name)
        self.bound.append({a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
                          | {a.arg for a in (args.vararg, args.kwarg) if a})
        for n in body if isinstance(body, list) else [body]:
            self.visit(n)
        self.bound.pop()

    def visit_FunctionDef(self, node):
        for d in node.decorator_list + node.args.defaults + node.args.kw_defaults:
            if d is not None:
                self.visit(d)
        self._scope(node.args, node.body, node.name)

    def visit_Lambda(self, node):
        self._scope(node.args, node.body)

    def _comprehension(self, node, parts):
        self.bound.append(set())
        for gen in node.generators:
            self.visit(gen.iter)
            self._bind(gen.target)
            for cond in gen.ifs:
                self.visit(cond)
        for part in parts:
            self.visit(part)
        self.bound.pop()

    def visit_ListComp(self, node):
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node):
        self._comprehension(node, [node.key, node.value])

    def visit_Import(self, node):
        self.bound[-1] |= {(a.asname or a.name).split(".")[0] for a in node.names}

    visit_ImportFrom = visit_Import


def _loaded(tree) -> set[str]:
    v = _Reads()
    v.visit(tree)
    return v.reads


def deferrable(nb) -> set[int]:
    """Demonstration cells that nothing later depends on, which ``check`` runs after all exercises
    pass instead of in place: so a failing exercise is reported without waiting for, e.g., a
    timing demonstration of 100 s. A cell qualifies when nbval ignores its output (a timing or
    memory measurement: NBVAL_IGNORE_OUTPUT), no later cell reads a name it binds or changes one it
    reads, and it changes no object it did not create (no assignment to an attribute or item of an
    outside name, no method call on one other than a module's, no global). Any doubt (a syntax
    error, IPython magics) keeps the cell in place. Files are not tracked: hence only measurements."""
    trees = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            try:
                trees[i] = ast.parse(cell.source)
            except SyntaxError:
                trees[i] = None
    modules = {(a.asname or a.name).split(".")[0] for t in trees.values() if t for n in ast.walk(t)
               if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    out = set()
    for i, tree in trees.items():
        cell = nb.cells[i]
        if tree is None or is_exercise(cell) or is_check(cell) or "NBVAL_IGNORE_OUTPUT" not in nbval_markers(cell):
            continue
        mine, reads = _stored(tree), _loaded(tree)
        later = [t for j, t in trees.items() if j > i]
        if any(t is None for t in later):
            continue
        if any(_loaded(t) & mine or (_stored(t) | _touched(t, modules)) & reads for t in later):
            continue
        touched = _touched(tree, modules)
        if touched - mine or touched & {"sys", "os", "warnings", "importlib"} or _touches_outside(tree):
            continue
        out.add(i)
    return out


def _base(node):
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _touched(tree, modules: set[str]) -> set[str]:
    """Names whose objects a cell may change in place: item or attribute assignments, augmented
    assignments, del, and method calls (a module's functions aside, sys's and os's included)."""
    out = set()
    for n in ast.walk(tree):
        targets = (n.targets if isinstance(n, (ast.Assign, ast.Delete)) else
                   [n.target] if isinstance(n, (ast.AugAssign, ast.AnnAssign)) else [])
        for t in targets:
            if isinstance(t, (ast.Attribute, ast.Subscript)) or isinstance(n, (ast.AugAssign, ast.Delete)):
                out.add(_base(t))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
            b = _base(n.func)
            if b not in modules or b in ("sys", "os", "warnings", "importlib"):
                out.add(b)
    return out - {None}


def _touches_outside(tree) -> bool:
    return any(isinstance(n, (ast.Global, ast.Nonlocal)) for n in ast.walk(tree))


def run_notebook(nb, cwd: Path, timeout: int = 600, check_timeout: int | None = None,
                 stop_at=None, deferred=frozenset()):
    """Execute a copy of ``nb`` cell by cell in a fresh kernel; errors are kept as outputs, not
    raised. ``check_timeout``: the time limit of exercise and check cells (nbgrader) instead of
    ``timeout``. ``stop_at(i, ran_cell)`` -> a reason, after each cell: the cells after it are not
    run and get that reason as their error (the first failing exercise stops the run).
    ``deferred``: cells run last, in their order (see ``deferrable``)."""
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
        order = [i for i in range(len(ran.cells)) if i not in deferred] + sorted(deferred)
        for i in order:
            cell = ran.cells[i]
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
        return None if keep_going else (f"not checked: exercise {ex.grade_id} fails first, and later cells "
                                        f"may use it (--keep-going checks them anyway)")

    out(f"Checking {_rel(lesson_path)} (a fresh kernel runs every cell, up to the first failing exercise)...")
    t0 = time.perf_counter()
    ran = run_notebook(nb, lesson_path.parent, timeout, check_timeout, stop_at, deferrable(nb))
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
                    and not ex.problem.startswith("not checked"):
                ex.problem += f" (may depend on exercise {failed.grade_id}, which fails first)"
    failing_others = []
    for i in others:
        p = judge(nb.cells[i], ran.cells[i], patterns)
        if p and p.startswith("not implemented"):
            p = "uses an exercise that is not implemented yet"
        if p and not p.startswith("not checked"):
            failing_others.append((i, p))

    width = max([len(ex.grade_id) for ex in exercises] + [1])
    for ex in exercises:
        mark = "✓" if ex.problem is None else ("·" if ex.problem.startswith("not checked") else "✗")
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


__all__ = ["check", "deferrable", "group_exercises", "judge", "run_notebook"]
