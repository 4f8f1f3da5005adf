"""solutions/NN_name.ipynb -> lessons/NN_name.ipynb, and re-running a solution to refresh it.

The solution notebook is the source of truth. Building a lesson does what nbgrader's
``generate_assignment`` does to a source notebook, and nothing else:

* a ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region becomes ``# YOUR CODE HERE`` +
  ``raise NotImplementedError()`` at the marker's indentation (so a region inside a function
  body keeps the ``def`` line and the docstring above it);
* a solution cell without markers is replaced whole by that stub (markdown: "YOUR ANSWER HERE");
* ``### BEGIN HIDDEN TESTS`` regions in check cells are removed;
* locked cells (the checks) are made read-only in JupyterLab (``editable``/``deletable`` false);
* **answer outputs are cleared** (outputs and execution count), so a lesson does not show what
  the learner is asked to produce. A code cell's output is an answer output when the cell is
  1. an exercise (nbgrader ``solution: true``), or
  2. a check (nbgrader ``grade: true``), or
  3. after an exercise, a cell that reads a name an answer cell binds: a function, class or
     variable it defines, or an object whose attribute or item it assigns (``ops.norm =
     rms_norm``); imports do not count (a module is never an answer). A cell that binds a name
     before reading it (``for name in ...``) does not depend on its earlier value. The rule is
     transitive: ``y = rms_norm(x)`` in one cell makes a later ``print(y)`` an answer cell too.
     Names come from the *solution's* source (the lesson's stub binds nothing). A cell Python
     cannot parse counts as an answer cell.

Every other output stays: the figures, tables and printouts of given code teach. nbval does not
compare a cell without an execution count, so ``pytest --nbval`` on a lesson checks the answer
cells only for errors; a check cell prints its ✓ line when the answer is right and stops with an
AssertionError saying what differs when it is not. ``build --check`` fails on a lesson that
keeps an answer output (``answer_outputs``).
Volatile metadata (timings, scroll state, widget state) is dropped, so the same solution always
gives the same bytes and ``build --check`` can compare files byte for byte.
"""
from __future__ import annotations

import ast
import copy
import os
import subprocess
import time
from pathlib import Path

from .notebooks import (BEGIN_HIDDEN, BEGIN_SOLUTION, CODE_STUB, END_HIDDEN, END_SOLUTION, LESSONS,
                        ROOT, TEXT_STUB, CourseError, _rel, dumps, is_check, is_exercise, nbgrader,
                        nbval_markers, notebook_paths, read, warm_caches, write)

GRADE_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
DROP_CELL_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled", "heading_collapsed",
                      "hidden")
KEEP_NB_METADATA = ("kernelspec", "language_info")
MAX_BYTES = 1_000_000   # the repository keeps files under 1 MB; figures are the usual culprit


# ------------------------------------------------------------------------------- the transform
def replace_regions(source: str, stub: list[str], where: str) -> tuple[str, bool]:
    """Replace every BEGIN/END SOLUTION region of ``source`` by ``stub``, indented like the
    BEGIN marker. Returns (new source, whether a region was found)."""
    out, inside, found = [], False, False
    for n, line in enumerate(source.split("\n"), 1):
        s = line.strip()
        if s == BEGIN_SOLUTION:
            if inside:
                raise CourseError(f"{where}: nested {BEGIN_SOLUTION} at line {n}")
            inside = found = True
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + stub_line for stub_line in stub)
        elif s == END_SOLUTION:
            if not inside:
                raise CourseError(f"{where}: {END_SOLUTION} without a {BEGIN_SOLUTION} (line {n})")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise CourseError(f"{where}: {BEGIN_SOLUTION} without an {END_SOLUTION}")
    return "\n".join(out), found


def remove_hidden_tests(source: str, where: str) -> str:
    out, inside = [], False
    for line in source.split("\n"):
        s = line.strip()
        if s == BEGIN_HIDDEN:
            if inside:
                raise CourseError(f"{where}: nested {BEGIN_HIDDEN}")
            inside = True
        elif s == END_HIDDEN:
            if not inside:
                raise CourseError(f"{where}: {END_HIDDEN} without a {BEGIN_HIDDEN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise CourseError(f"{where}: {BEGIN_HIDDEN} without an {END_HIDDEN}")
    return "\n".join(out)


def clean_metadata(nb) -> None:
    """Drop what changes from run to run or from one JupyterLab session to the next."""
    for key in list(nb.metadata):
        if key not in KEEP_NB_METADATA:
            del nb.metadata[key]
    for cell in nb.cells:
        for key in DROP_CELL_METADATA:
            cell.metadata.pop(key, None)


# ------------------------------------------------------------------------ answer outputs
def _stores(node) -> set[str]:
    """Names an assignment target binds (``a``, ``a, b``, ``*rest``); for ``obj.x = ...`` or
    ``table[k] = ...`` the object's name, whose contents change."""
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, (ast.Tuple, ast.List)):
        return set().union(*(_stores(e) for e in node.elts)) if node.elts else set()
    if isinstance(node, ast.Starred):
        return _stores(node.value)
    if isinstance(node, (ast.Attribute, ast.Subscript)):
        return _stores(node.value)
    return set()


def _loads(node, local: frozenset = frozenset()) -> set[str]:
    """Names an expression (or a function body) reads from outside, except ``local`` ones:
    comprehension variables, lambda and function parameters and a function's own locals."""
    if node is None:
        return set()
    if isinstance(node, ast.Name):
        return set() if node.id in local or not isinstance(node.ctx, ast.Load) else {node.id}
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
        local = local | {n for g in node.generators for n in _stores(g.target)}
    elif isinstance(node, ast.Lambda):
        local = local | {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        params = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
        own = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        reads = set().union(*(_loads(d, local) for d in node.decorator_list + node.args.defaults))
        return reads | set().union(*(_loads(s, local | params | own) for s in node.body))
    return set().union(*(_loads(child, local) for child in ast.iter_child_nodes(node)))


def _free(stmts, bound: set, binds: set) -> set[str]:
    """Names ``stmts`` read before binding them (the cell's inputs), in order. ``bound`` grows
    with what they bind; ``binds`` collects the bound names that carry a computed value (not
    imports: a module is never an answer)."""
    free = set()
    for s in stmts:
        if isinstance(s, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in s.names}
            continue
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            free |= _loads(s) - bound
            bound.add(s.name)
            binds.add(s.name)
            continue
        if isinstance(s, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = s.targets if isinstance(s, ast.Assign) else [s.target]
            free |= _loads(s.value) - bound
            for t in targets:                  # a[i] = v reads a and i; x += 1 reads x
                free |= (_loads(t) if not isinstance(t, ast.Name) else set()) - bound
                if isinstance(s, ast.AugAssign) or not isinstance(t, (ast.Name, ast.Tuple, ast.List)):
                    free |= _stores(t) - bound
                new = _stores(t)
                bound |= new
                binds |= new
            continue
        if isinstance(s, (ast.For, ast.AsyncFor)):
            free |= _loads(s.iter) - bound
            new = _stores(s.target)
            bound |= new
            binds |= new
            free |= _free(s.body, bound, binds) | _free(s.orelse, bound, binds)
            continue
        if isinstance(s, (ast.With, ast.AsyncWith)):
            for item in s.items:
                free |= _loads(item.context_expr) - bound
                new = _stores(item.optional_vars) if item.optional_vars is not None else set()
                bound |= new
                binds |= new
            free |= _free(s.body, bound, binds)
            continue
        if isinstance(s, (ast.If, ast.While)):
            free |= _loads(s.test) - bound
            free |= _free(s.body, bound, binds) | _free(s.orelse, bound, binds)
            continue
        if isinstance(s, ast.Try):
            free |= _free(s.body, bound, binds)
            for h in s.handlers:
                free |= _loads(h.type) - bound
                if h.name:
                    bound.add(h.name)
                free |= _free(h.body, bound, binds)
            free |= _free(s.orelse, bound, binds) | _free(s.finalbody, bound, binds)
            continue
        free |= _loads(s) - bound              # expressions, return, assert, del, ...
    return free


def _parse(source: str):
    """The cell as an ast.Module, or None when it is not plain Python. IPython's ``%magic`` and
    ``!shell`` lines become blank lines, so line numbers stay those of the cell."""
    lines = ["" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.split("\n")]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def cell_names(source: str) -> tuple[set[str], set[str]] | None:
    """(names the cell reads before binding them, names it binds to computed values), or None
    when it is not plain Python."""
    tree = _parse(source)
    if tree is None:
        return None
    binds: set[str] = set()
    return _free(tree.body, set(), binds), binds


def _region_lines(source: str) -> set[int]:
    """Line numbers (from 1) of the BEGIN/END SOLUTION regions, markers included."""
    lines, inside = set(), False
    for n, line in enumerate(source.split("\n"), 1):
        s = line.strip()
        if s == BEGIN_SOLUTION:
            inside = True
        if inside:
            lines.add(n)
        if s == END_SOLUTION:
            inside = False
    return lines


def _changed_objects(stmt) -> set[str]:
    """Names whose attribute or item ``stmt`` assigns: rebinding those does not clean them."""
    return {b for n in ast.walk(stmt) if isinstance(n, (ast.Attribute, ast.Subscript))
            and isinstance(n.ctx, ast.Store) for b in _stores(n)}


def answer_cells(solution) -> dict[int, str]:
    """{cell index: why} for the code cells whose outputs give an answer away (module docstring).

    Statement by statement: one that holds a solution region (the whole cell, for an exercise
    without markers) or reads an answer name makes the names it binds answer names; one that
    rebinds a name from given values only makes it given again."""
    answers, answer_names, seen_exercise = {}, set(), False
    for i, cell in enumerate(solution.cells):
        if cell.cell_type != "code":
            continue
        exercise, region = is_exercise(cell), _region_lines(cell.source)
        seen_exercise |= exercise
        tree, used = _parse(cell.source), set()
        if tree is not None:
            for stmt in tree.body:
                # Each statement's reads are checked against the answer names as they stand after
                # the statements before it, in this cell too: ``y = f(x); print(y)`` with f an
                # answer makes y one, and the print shows it.
                binds: set[str] = set()
                reads = _free([stmt], set(), binds)
                if isinstance(stmt, (ast.Import, ast.ImportFrom)):   # a module is never an answer
                    answer_names -= {(a.asname or a.name).split(".")[0] for a in stmt.names}
                    continue
                span = set(range(stmt.lineno, stmt.end_lineno + 1))
                if (exercise and (not region or span & region)) or reads & answer_names:
                    used |= reads & answer_names
                    answer_names |= binds
                else:
                    answer_names -= binds - _changed_objects(stmt)
        if exercise:
            answers[i] = "an exercise"
        elif is_check(cell):
            answers[i] = "a check"
        elif tree is None and seen_exercise:
            answers[i] = "not plain Python (cannot tell what it uses)"
        elif used:
            answers[i] = f"uses {', '.join(sorted(used))} from an answer cell"
    return answers


def answer_outputs(lesson, answers: dict[int, str]) -> list[str]:
    """Problems: answer cells of ``lesson`` that still show an output or an execution count."""
    return [f"cell {i} ({why}) keeps its output" for i, why in sorted(answers.items())
            if lesson.cells[i].get("outputs") or lesson.cells[i].get("execution_count") is not None]


def make_lesson(solution):
    """The student version of a solution notebook (a new notebook; the argument is not touched)."""
    nb = copy.deepcopy(solution)
    clean_metadata(nb)
    answers = answer_cells(solution)
    for i, cell in enumerate(nb.cells):
        if i in answers:
            cell.outputs, cell.execution_count = [], None
        where = f"cell {i}"
        stub = CODE_STUB if cell.cell_type == "code" else TEXT_STUB
        cell.source, replaced = replace_regions(cell.source, stub, where)
        if is_exercise(cell) and not replaced:
            cell.source = "\n".join(stub)          # nbgrader: a solution cell without markers
        if is_check(cell):
            cell.source = remove_hidden_tests(cell.source, where)
        if nbgrader(cell).get("locked") and not is_exercise(cell):
            # what nbgrader's LockCells does for the student version
            cell.metadata["editable"] = False
            cell.metadata["deletable"] = False
    return nb


# ------------------------------------------------------------------------------------ linting
def lint(nb, name: str, executed: bool = True) -> list[str]:
    """Problems that would break the lesson, nbgrader or nbval; [] when none.

    ``executed``: also require stored outputs (every code cell run, no error output), which is
    what makes nbval compare anything at all: nbval skips the comparison for a cell that was
    never run."""
    problems, ids = [], {}
    for i, cell in enumerate(nb.cells):
        where = f"{name}: cell {i}"
        meta = nbgrader(cell)
        src = cell.get("source", "")
        has_markers = any(line.strip() in (BEGIN_SOLUTION, END_SOLUTION) for line in src.split("\n"))
        try:
            replace_regions(src, CODE_STUB, where)
            remove_hidden_tests(src, where)
        except CourseError as e:
            problems.append(str(e))
        if has_markers and not meta.get("solution"):
            problems.append(f"{where} has {BEGIN_SOLUTION} but is not marked as an exercise "
                            f"(nbgrader metadata solution: true; see course/README.md, Authoring)")
        if "nbgrader" in cell.get("metadata", {}):
            for key in ("schema_version", "grade", "locked", "solution"):
                if key not in meta:
                    problems.append(f"{where}: nbgrader metadata lacks {key!r}")
            if meta.get("schema_version", 3) != 3:
                problems.append(f"{where}: nbgrader schema_version must be 3")
            gid = meta.get("grade_id", "")
            if meta.get("grade") or meta.get("solution") or meta.get("locked"):
                if not gid or not set(gid) <= GRADE_ID_CHARS:
                    problems.append(f"{where}: grade_id {gid!r} must be a non-empty [A-Za-z0-9_-] name")
                elif gid in ids:
                    problems.append(f"{where}: grade_id {gid!r} is used by cell {ids[gid]} too")
                else:
                    ids[gid] = i
            if meta.get("grade") and "points" not in meta:
                problems.append(f"{where}: a check cell (grade: true) needs points")
            if cell.cell_type == "markdown" and bool(meta.get("grade")) != bool(meta.get("solution")):
                problems.append(f"{where}: nbgrader wants markdown answer cells both grade and solution")
        if executed and cell.cell_type == "code" and src.strip() and "NBVAL_SKIP" not in nbval_markers(cell):
            if cell.get("execution_count") is None:
                problems.append(f"{where} was never run, so nbval would compare nothing "
                                f"(run: python -m course execute {name[:2]})")
            if any(o.get("output_type") == "error" for o in cell.get("outputs", [])) and \
                    not {"RAISES_EXCEPTION", "NBVAL_RAISES_EXCEPTION"} & nbval_markers(cell):
                problems.append(f"{where} stored an error output ({_error_line(cell)})")
    return problems


def _error_line(cell) -> str:
    for o in cell.get("outputs", []):
        if o.get("output_type") == "error":
            return f"{o.get('ename')}: {str(o.get('evalue', '')).splitlines()[0] if o.get('evalue') else ''}"
    return ""


# ------------------------------------------------------------------------------------ build
def lesson_path_for(solution_path: Path, lessons_dir: Path) -> Path:
    return Path(lessons_dir) / Path(solution_path).name


def build(solution_paths, lessons_dir: Path = LESSONS, check: bool = False, orphans=(),
          out=print) -> int:
    """Build (or, with ``check``, verify) the lessons of ``solution_paths``. Returns an exit code:
    0 when all is well, 1 when a lesson is stale (``check``) or a solution has problems.
    ``orphans``: lessons without a solution (see ``orphan_lessons``), reported as stale."""
    stale, bad = [], []
    orphans = list(orphans) if check else []
    for sp in solution_paths:
        nb = read(sp)
        problems = lint(nb, Path(sp).name, executed=check)
        if problems:
            bad.append(Path(sp).name)
            for p in problems:
                out(f"  ✗ {p}")
            continue
        lesson = make_lesson(nb)
        lp = lesson_path_for(sp, lessons_dir)
        size = len(dumps(nb).encode())
        if size > MAX_BYTES:
            bad.append(Path(sp).name)
            out(f"  ✗ {Path(sp).name} is {size / 1e6:.1f} MB; keep notebooks under 1 MB "
                f"(smaller or fewer figures: dpi, figsize)")
            continue
        if check:
            if not lp.is_file() or lp.read_text(encoding="utf-8") != dumps(lesson):
                stale.append(lp)
                if lp.is_file():                   # say so when the lesson gives answers away
                    for p in answer_outputs(read(lp), answer_cells(nb)):
                        out(f"  ✗ {_rel(lp)}: {p}")
        elif write(lesson, lp):
            out(f"wrote {_rel(lp)}")
        else:
            out(f"{_rel(lp)} is up to date")
    if check:
        for lp in stale:
            out(f"  ✗ {_rel(lp)} is out of date: run python -m course build {lp.name[:2]}")
        for lp in orphans:
            out(f"  ✗ {_rel(lp)} has no solution notebook to build it from; add "
                f"solutions/{lp.name} (lessons are generated, never edited by hand)")
        stale += orphans
    if bad:
        out(f"{len(bad)} solution notebook(s) with problems: {', '.join(bad)}")
    if check and not stale and not bad:
        out(f"{len(solution_paths)} lesson(s) up to date")
    return 1 if (stale or bad) else 0


def orphan_lessons(solutions_dir: Path, lessons_dir: Path) -> list[Path]:
    """Lessons with no solution notebook: they cannot be rebuilt, so they are out of date."""
    names = {p.name for p in notebook_paths(solutions_dir)}
    return [lp for lp in notebook_paths(lessons_dir) if lp.name not in names]


# ---------------------------------------------------------------------------------- execute
def kernel_env(extra_path: Path = ROOT) -> dict:
    """The kernel's environment: the repository importable without installing it, no model hub."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(extra_path)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def execute(solution_path: Path, timeout: int = 600, out=print) -> int:
    """Run a solution notebook top to bottom in a fresh kernel (cwd: its folder, as Jupyter and
    nbval use) and store its outputs. The file is written only if every cell ran without error."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    sp = Path(solution_path)
    nb = read(sp)
    problems = lint(nb, sp.name, executed=False)
    if problems:
        for p in problems:
            out(f"  ✗ {p}")
        return 1
    client = NotebookClient(nb, timeout=timeout, kernel_name=nb.metadata.get("kernelspec", {}).get("name", "python3"),
                            allow_errors=False, record_timing=False,
                            resources={"metadata": {"path": str(sp.parent)}})
    warm_caches()
    t0 = time.perf_counter()
    try:
        client.execute(env=kernel_env(), cwd=str(sp.parent), stderr=subprocess.DEVNULL)
    except CellExecutionError as e:
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        out(f"  ✗ {sp.name}: a cell failed, nothing written: {lines[-1] if lines else e}")
        return 1
    except Exception as e:                 # a cell timed out, or the kernel died (memory?)
        out(f"  ✗ {sp.name}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            f" (nothing written)")
        return 1
    seconds = time.perf_counter() - t0
    clean_metadata(nb)
    write(nb, sp)
    out(f"executed {_rel(sp)} in {seconds:.0f} s")
    if seconds > 180:
        out(f"  ! {sp.name} took more than 3 minutes; lessons should run in under 3 minutes")
    return 0
