"""The course tooling: lessons built from solutions, kept in sync, and checked both ways.

The demo lesson in tests/fixtures/course (two exercises, a figure, a cell that uses an exercise;
remade by its make_demo.py) stands in for a real lesson so that the kernel-running tests take
seconds: the untouched student lesson must FAIL under `pytest --nbval` and `course check`, and
the same lesson with the solution code pasted back must PASS both.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

from course import checkers  # noqa: E402
from course.__main__ import main as course_main  # noqa: E402
from course.build import (answer_cells, answer_outputs, lint, make_lesson,  # noqa: E402
                          remove_hidden_tests, replace_regions)
from course.notebooks import (BEGIN_SOLUTION, END_SOLUTION, ROOT, SANITIZE_CFG, SETUP_CELL,  # noqa: E402
                              CourseError, comparable, dumps, first_difference, notebook_paths, read,
                              sanitize_patterns)

FIXTURE = ROOT / "tests" / "fixtures" / "course"
DEMO_SOLUTION = FIXTURE / "solutions" / "99_demo.ipynb"
DEMO_LESSON = FIXTURE / "lessons" / "99_demo.ipynb"


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    return e


def run_course(*args):
    """`python -m course ARGS` in this process (the kernels it starts are separate processes)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = course_main([str(a) for a in args])
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def run_nbval(notebook: Path):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--nbval",
                           "--nbval-current-env", f"--nbval-sanitize-with={SANITIZE_CFG}",
                           f"--rootdir={notebook.parent}", str(notebook)],
                          cwd=notebook.parent, env=env(), capture_output=True, text=True, timeout=300)


def demo_dirs(tmp_path: Path) -> tuple[Path, Path]:
    sol, les = tmp_path / "solutions", tmp_path / "lessons"
    sol.mkdir()
    shutil.copy(DEMO_SOLUTION, sol / DEMO_SOLUTION.name)
    return sol, les


def paste_solutions(lesson: Path, solution: Path) -> None:
    """What a learner who finished every exercise has: the solution code in each exercise cell."""
    sol = nbformat.read(solution, 4)
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in sol.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    nb = nbformat.read(lesson, 4)
    for c in nb.cells:
        gid = c.metadata.get("nbgrader", {}).get("grade_id")
        if gid in answers:
            c.source = "\n".join(line for line in answers[gid].split("\n")
                                 if line.strip() not in (BEGIN_SOLUTION, END_SOLUTION))
    nbformat.write(nb, lesson)


# ------------------------------------------------------------------------------ the repository
def test_lessons_in_repo_are_up_to_date(capsys):
    """Every lessons/NN is exactly what `python -m course build` makes from solutions/NN, every
    solution is well formed (markers, nbgrader metadata, all cells run, no stored errors)."""
    rc = course_main(["build", "--check"])
    assert rc == 0, capsys.readouterr().out


def test_every_lesson_is_linked_from_the_syllabus():
    readme = (ROOT / "course" / "README.md").read_text(encoding="utf-8")
    for lesson in sorted((ROOT / "lessons").glob("*.ipynb")):
        assert f"(../lessons/{lesson.name})" in readme, f"link {lesson.name} in course/README.md's syllabus"


def test_repo_notebooks_are_small():
    for folder in ("solutions", "lessons"):
        for nb in (ROOT / folder).glob("*.ipynb"):
            assert nb.stat().st_size < 1_000_000, f"{nb} is over 1 MB (figures?)"


# ------------------------------------------------------------------------------------- build
def test_region_becomes_stub_keeping_def_and_indentation():
    src = ("def f(x):\n    \"\"\"doc\"\"\"\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n"
           "    ### END SOLUTION\n\nz = 3")
    out, found = replace_regions(src, ["# YOUR CODE HERE", "raise NotImplementedError()"], "t")
    assert found
    assert out == ("def f(x):\n    \"\"\"doc\"\"\"\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"
                   "\nz = 3")


def test_bad_markers_are_one_line_errors():
    with pytest.raises(CourseError, match="without an ### END SOLUTION"):
        replace_regions("### BEGIN SOLUTION\nx = 1", ["stub"], "cell 3")
    with pytest.raises(CourseError, match="nested"):
        replace_regions("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", ["stub"], "cell 3")
    with pytest.raises(CourseError, match="without a ### BEGIN SOLUTION"):
        replace_regions("x = 1\n### END SOLUTION", ["stub"], "cell 3")


def test_hidden_tests_are_removed():
    src = "check(a)\n### BEGIN HIDDEN TESTS\ncheck(b)\n### END HIDDEN TESTS\ncheck(c)"
    assert remove_hidden_tests(src, "t") == "check(a)\ncheck(c)"


def test_build_demo_gives_the_expected_lesson(tmp_path):
    sol, les = demo_dirs(tmp_path)
    r = run_course("build", "--solutions", sol, "--lessons", les)
    assert r.returncode == 0, r.stdout + r.stderr
    built = (les / DEMO_LESSON.name).read_bytes()
    assert built == DEMO_LESSON.read_bytes()          # the committed expected lesson

    solution, lesson = nbformat.read(DEMO_SOLUTION, 4), nbformat.reads(built.decode(), 4)
    assert len(lesson.cells) == len(solution.cells)
    text = "\n".join(c.source for c in lesson.cells)
    assert BEGIN_SOLUTION not in text and "e.sum(axis=-1" not in text and "words.count" not in text
    ex = lesson.cells[3]
    assert ex.source.splitlines() == ["def softmax(x):",
                                      '    """x: (..., n) float32 -> (..., n) float32, each row sums to 1."""',
                                      "    # YOUR CODE HERE", "    raise NotImplementedError()"]
    answers = answer_cells(solution)        # exercises, checks, and the last cell (uses softmax)
    assert sorted(answers) == [3, 4, 6, 7, 10], answers
    for i, (s, l) in enumerate(zip(solution.cells, lesson.cells)):
        if i in answers:                                    # no answer outputs in the lesson
            assert l.get("outputs") == [] and l.get("execution_count") is None, i
        else:                                               # given code's outputs stay (the figure)
            assert s.get("outputs") == l.get("outputs")
            assert s.get("execution_count") == l.get("execution_count")
    assert any("image/png" in o.get("data", {}) for o in lesson.cells[9].outputs)
    checks = [c for c in lesson.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert checks and all(c.metadata["editable"] is False for c in checks)
    # deterministic: building again gives the same bytes
    assert dumps(make_lesson(solution)) == built.decode()


def test_build_check_names_stale_and_orphan_lessons(tmp_path):
    sol, les = demo_dirs(tmp_path)
    assert run_course("build", "--solutions", sol, "--lessons", les).returncode == 0
    assert run_course("build", "--check", "--solutions", sol, "--lessons", les).returncode == 0

    nb = nbformat.read(sol / "99_demo.ipynb", 4)
    nb.cells[0].source += "\nEdited."
    nbformat.write(nb, sol / "99_demo.ipynb")
    shutil.copy(les / "99_demo.ipynb", les / "98_orphan.ipynb")
    r = run_course("build", "--check", "--solutions", sol, "--lessons", les)
    assert r.returncode == 1
    assert "99_demo.ipynb is out of date" in r.stdout and "98_orphan.ipynb has no solution" in r.stdout
    assert (les / "99_demo.ipynb").read_bytes() == DEMO_LESSON.read_bytes()   # --check writes nothing


def test_answer_cells_follow_what_each_cell_reads():
    """The rule of course/build.py: exercises, checks, and cells that read what an answer bound,
    transitively; given code (even given lines inside an exercise cell) and rebound names do not count."""
    from course.author import check, code, exercise, notebook
    from course.build import cell_names
    nb = notebook([
        code("import numpy as np\nx = np.ones(3)\nprint(x)"),                             # 0 given
        exercise("words = 'a b'.split()\n### BEGIN SOLUTION\nn = len(words)\n### END SOLUTION", "n"),
        check("check_equal(n, 2, 'n')", "check_n"),                                         # 2
        code("print(words)"),                                                                # 3 given line
        code("twice = 2 * n"),                                                               # 4 reads n
        code("print(twice)"),                                                                # 5 transitive
        code("n = 7\nprint(n)"),                                                            # 6 rebinds n
        code("print(n)"),                                                                    # 7 given again
        exercise("def f(a):\n    ### BEGIN SOLUTION\n    return a\n    ### END SOLUTION", "f"),
        code("for n in range(2):\n    print(n)"),                                           # 9 own n
        code("ops.f = f"),                                                                   # 10 ops changed
        code("ops = ops\nprint(ops)"),                                                      # 11 still ops
        code("%timeit f(1)\nplt.plot([1, 2])"),                                             # 12 magic, given
        code("print(sum(f(i) for i in range(3)))"),                                          # 13 reads f
        code("y = f(3)\nz = y + 1"),                                                       # 14 reads f
        code("print(z)"),                                                                    # 15 z from y
        code("y = np.zeros(2)\nprint(y)"),                                                 # 16 rebinds y
        code("w = 2\nv = w * 3\nprint(v)"),                                               # 17 given
        code("from numpy import f\nprint(f)"),                                             # 18 imported f
    ])
    answers = answer_cells(nb)
    assert sorted(answers) == [1, 2, 4, 5, 8, 10, 11, 13, 14, 15], answers
    assert answers[4] == "uses n from an answer cell" and answers[1] == "an exercise"
    assert cell_names("def g(a):\n    b = a + c\n    return b") == ({"c"}, {"g"})
    assert cell_names("y = [k * w for k in ks]\nt[k] = y") == ({"w", "ks", "t", "k"}, {"y", "t"})
    assert cell_names("print(") is None


def test_build_check_fails_on_a_lesson_with_answer_outputs(tmp_path):
    sol, les = demo_dirs(tmp_path)
    assert run_course("build", "--solutions", sol, "--lessons", les).returncode == 0
    solution, lesson = nbformat.read(sol / "99_demo.ipynb", 4), nbformat.read(les / "99_demo.ipynb", 4)
    lesson.cells[4].outputs, lesson.cells[4].execution_count = solution.cells[4].outputs, 4
    nbformat.write(lesson, les / "99_demo.ipynb")
    r = run_course("build", "--check", "--solutions", sol, "--lessons", les)
    assert r.returncode == 1
    assert "99_demo.ipynb: cell 4 (a check) keeps its output" in r.stdout


def test_lessons_in_repo_show_no_answer_outputs():
    for sp in notebook_paths(ROOT / "solutions"):
        lesson = read(ROOT / "lessons" / sp.name)
        assert answer_outputs(lesson, answer_cells(read(sp))) == [], sp.name


def test_notebooks_start_with_the_setup_cell_and_never_touch_the_working_directory():
    """Every notebook runs wherever it is opened: the data comes from the installed package."""
    for folder in ("solutions", "lessons"):
        for path in notebook_paths(ROOT / folder):
            nb = read(path)
            first = next(c for c in nb.cells if c.cell_type == "code")
            assert first.source == SETUP_CELL, f"{folder}/{path.name}: first code cell is not SETUP_CELL"
            for c in nb.cells:
                if c.cell_type == "code":
                    for bad in ("sys.path", "Path.cwd()", "os.chdir", "ROOT /", "tests.fixtures"):
                        assert bad not in c.source, f"{folder}/{path.name}: {bad}"


def test_lint_catches_authoring_mistakes():
    from course.author import check, exercise, notebook
    nb = notebook([exercise("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", "same"),
                   check("print(x)", "same"),
                   nbformat.v4.new_code_cell("### BEGIN SOLUTION\ny = 2\n### END SOLUTION")])
    problems = "\n".join(lint(nb, "00_x.ipynb"))
    assert "grade_id 'same' is used by cell 0 too" in problems
    assert "cell 2 has ### BEGIN SOLUTION but is not marked as an exercise" in problems
    assert "was never run" in problems
    assert lint(nb, "00_x.ipynb", executed=False) and "never run" not in "\n".join(lint(nb, "x", executed=False))


def test_unknown_lesson_is_a_one_line_error(tmp_path):
    sol, les = demo_dirs(tmp_path)
    r = run_course("build", "42", "--solutions", sol, "--lessons", les)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: no notebook matches '42' in {sol}/ (have: 99_demo)"]


# ------------------------------------------------------------------- both directions, for real
def test_untouched_lesson_fails_and_solved_lesson_passes_nbval(tmp_path):
    sol, les = demo_dirs(tmp_path)
    assert run_course("build", "--solutions", sol, "--lessons", les).returncode == 0
    lesson = les / "99_demo.ipynb"
    r = run_nbval(lesson)
    assert r.returncode == 1, r.stdout
    assert "NotImplementedError" in r.stdout

    paste_solutions(lesson, sol / "99_demo.ipynb")
    r = run_nbval(lesson)                     # the figure cell's Line2D address is sanitized
    assert r.returncode == 0, r.stdout[-3000:]


def test_course_check_reports_each_exercise(tmp_path):
    sol, les = demo_dirs(tmp_path)
    assert run_course("build", "--solutions", sol, "--lessons", les).returncode == 0
    r = run_course("check", "99", "--solutions", sol, "--lessons", les)
    assert r.returncode == 1
    out = r.stdout
    # cause before consequence: the first unfinished exercise stops the run
    assert "✗ softmax" in out and "· count_the" in out and "not checked: exercise softmax fails first" in out
    assert out.count("not implemented yet") == 1
    assert "0 of 2 exercises pass; stopped at softmax" in out
    r = run_course("check", "99", "--keep-going", "--solutions", sol, "--lessons", les)
    assert "✗ count_the" in r.stdout and "may depend on exercise softmax" in r.stdout

    lesson = les / "99_demo.ipynb"
    paste_solutions(lesson, sol / "99_demo.ipynb")
    r = run_course("check", "99", "--solutions", sol, "--lessons", les)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "✓ softmax" in r.stdout and "2 of 2 exercises pass." in r.stdout
    assert r.stderr == ""

    # one exercise right, one wrong in the classic way: float64 creeping in
    nb = nbformat.read(lesson, 4)
    nb.cells[3].source = nb.cells[3].source.replace("return e / e.sum(axis=-1, keepdims=True)",
                                                    "return e / np.float64(e.sum(axis=-1, keepdims=True))")
    nb.cells[6].source = nb.cells[6].source.replace('words.count("the")', "3")
    nbformat.write(nb, lesson)
    r = run_course("check", "99", "--keep-going", "--solutions", sol, "--lessons", les)
    assert r.returncode == 1
    assert "softmax: wrong dtype: expected float32, got float64" in r.stdout
    assert "n_the: expected 2, got 3" in r.stdout
    assert "raised CheckFailed" not in r.stdout
    assert "0 of 2 exercises pass" in r.stdout


def test_course_check_time_limit_per_check(tmp_path):
    """An answer that never ends is reported after the check's time limit, in words."""
    sol, les = demo_dirs(tmp_path)
    assert run_course("build", "--solutions", sol, "--lessons", les).returncode == 0
    lesson = les / "99_demo.ipynb"
    paste_solutions(lesson, sol / "99_demo.ipynb")
    nb = nbformat.read(lesson, 4)
    nb.cells[3].source = nb.cells[3].source.replace("def softmax(x):", "def softmax(x):\n    while True: pass")
    nbformat.write(nb, lesson)
    r = run_course("check", "99", "--check-timeout", "3", "--solutions", sol, "--lessons", les)
    assert r.returncode == 1
    assert "took longer than 3 s, the time limit of a check" in r.stdout, r.stdout
    assert "· count_the" in r.stdout
    assert run_course("check", "99", "--check-timeout", "0", "--solutions", sol, "--lessons", les).returncode == 2


def test_execute_reproduces_the_stored_outputs(tmp_path):
    """`course execute` re-runs a solution in a fresh kernel: the demo's outputs come back the
    same (as nbval compares them), and the lesson is rebuilt from it."""
    sol, les = demo_dirs(tmp_path)
    nb = nbformat.read(sol / "99_demo.ipynb", 4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nbformat.write(nb, sol / "99_demo.ipynb")
    r = run_course("execute", "99", "--solutions", sol, "--lessons", les)
    assert r.returncode == 0, r.stdout + r.stderr
    fresh, stored = nbformat.read(sol / "99_demo.ipynb", 4), nbformat.read(DEMO_SOLUTION, 4)
    patterns = sanitize_patterns()
    for f, s in zip(fresh.cells, stored.cells):
        assert f.get("execution_count") == s.get("execution_count")
        assert first_difference(s.get("outputs", []), f.get("outputs", []), patterns) is None
    assert any("image/png" in o.get("data", {}) for c in fresh.cells for o in c.get("outputs", []))
    assert (les / "99_demo.ipynb").is_file()


# ----------------------------------------------------------------- comparing outputs like nbval
def test_comparison_ignores_images_and_sanitizes_addresses():
    a = [nbformat.v4.new_output("execute_result", {"text/plain": "[<Line2D at 0x7f00aa11bb22>]"}, execution_count=1),
         nbformat.v4.new_output("display_data", {"image/png": "AAAA", "text/plain": "<Figure size 120x80 with 1 Axes>"})]
    b = [nbformat.v4.new_output("execute_result", {"text/plain": "[<Line2D at 0x7f99cc33dd44>]"}, execution_count=7),
         nbformat.v4.new_output("display_data", {"image/png": "BBBB", "text/plain": "<Figure size 120x80 with 1 Axes>"})]
    patterns = sanitize_patterns()
    assert first_difference(a, b, patterns) is None
    c = [nbformat.v4.new_output("stream", name="stdout", text="n = 3\n")]
    d = [nbformat.v4.new_output("stream", name="stdout", text="n = 2\n")]
    assert first_difference(c, d, patterns) == "printed 'n = 2' where the expected output has 'n = 3' (line 1)"
    assert comparable(c, patterns) == {"stdout": ["n = 3\n"]}


# ----------------------------------------------------------------------------------- checkers
def _ref_norm(x, w):
    x = x.astype(np.float32)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * w


def _inputs(rng):
    return rng.standard_normal((2, 8), dtype=np.float32), rng.standard_normal(8, dtype=np.float32)


def test_check_function_pass_message_is_the_same_for_any_correct_answer(capsys):
    def mine(x, w):   # a different but correct float32 computation
        return (x * (1.0 / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + 1e-5))) * w
    checkers.check_function(mine, _ref_norm, _inputs, name="rms_norm", ref_name="the reference", atol=1e-6)
    checkers.check_function(_ref_norm, _ref_norm, _inputs, name="rms_norm", ref_name="the reference", atol=1e-6)
    a, b = capsys.readouterr().out.splitlines()
    assert a == b == "✓ rms_norm matches the reference on 3 random inputs (within atol 1e-06, rtol 1e-05)"


@pytest.mark.parametrize("bad, message", [
    (lambda x, w: _ref_norm(x, w).T, "rms_norm: wrong shape: expected (2, 8), got (8, 2)"),
    (lambda x, w: _ref_norm(x, w).astype(np.float64), "rms_norm: wrong dtype: expected float32, got float64"),
    (lambda x, w: _ref_norm(x, w).tolist(), "rms_norm: expected a NumPy array, got list"),
    (lambda x, w: None, "rms_norm: returned None (is a `return` missing?)"),
    (lambda x, w: np.where(np.arange(8) == 5, np.float32(np.nan), _ref_norm(x, w)),
     "rms_norm: got NaN at index (0, 5)"),
])
def test_check_function_names_the_first_difference(bad, message, capsys):
    with pytest.raises(AssertionError) as e:
        checkers.check_function(bad, _ref_norm, _inputs, name="rms_norm")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    out = capsys.readouterr().out
    assert out.startswith("✗ " + message)
    if "float64" in message:
        assert "np.sqrt" in out       # points at the silent-float64 pitfall


def test_check_function_reports_where_values_differ(capsys):
    def off(x, w):
        y = _ref_norm(x, w)
        y[1, 3] += 0.5
        return y
    with pytest.raises(AssertionError, match=r"values differ at 1 of 16 positions; max abs error 5.00e-01 at index \(1, 3\)"):
        checkers.check_function(off, _ref_norm, _inputs, name="rms_norm")
    assert "first at index (1, 3): expected" in capsys.readouterr().out


def test_check_function_catches_in_place_changes_and_passes_errors_through():
    def in_place(x, w):
        x *= 1.0
        x[0, 0] = 0.0
        return _ref_norm(x, w)
    with pytest.raises(AssertionError, match="changed its input argument 1 in place|values differ"):
        checkers.check_function(in_place, _ref_norm, _inputs, name="f")

    def todo(x, w):
        raise NotImplementedError()
    with pytest.raises(NotImplementedError):
        checkers.check_function(todo, _ref_norm, _inputs)


def test_check_close_equal_dtype(capsys):
    checkers.check_close(np.array([1.0, 2.0000001], np.float32), [1.0, 2.0], "logits", atol=1e-4)
    checkers.check_equal([791, 6864, 315], [791, 6864, 315], "tokens")
    checkers.check_equal(8_030_261_248, 8_030_261_248, "Llama 3 8B parameters")
    checkers.check_dtype(np.zeros(2, np.float32), np.float32, "x")
    assert capsys.readouterr().out.splitlines() == [
        "✓ logits matches the reference (2 values within atol 1e-04)",
        "✓ tokens matches (3 items)",
        "✓ Llama 3 8B parameters = 8030261248",
        "✓ x is float32"]
    with pytest.raises(AssertionError, match=r"tokens: item 2 differs: expected 315, got 316 \(items counted from 0\)"):
        checkers.check_equal([791, 6864, 316], [791, 6864, 315], "tokens")
    with pytest.raises(AssertionError, match=r"tokens: expected 3 items, got 2 \(the first 2 match\)"):
        checkers.check_equal([791, 6864], [791, 6864, 315], "tokens")
    with pytest.raises(AssertionError, match=r"logits: values differ at 1 of 2 positions"):
        checkers.check_close(np.array([1.0, 2.1]), [1.0, 2.0], "logits", atol=1e-4)
    with pytest.raises(AssertionError, match="x: wrong dtype: expected float32, got float64"):
        checkers.check_dtype(np.zeros(2), np.float32, "x")


def test_course_check_defers_only_cells_nothing_later_needs():
    """`course check` runs such given cells last, so a failing exercise is reported without
    waiting for them (lesson 08's 100-s timing demo); any doubt keeps a cell in place."""
    from course.check import deferrable
    nb = nbformat.v4.new_notebook()
    m = "# NBVAL_IGNORE_OUTPUT\n"                 # only measurements (output ignored) may move
    nb.cells = [nbformat.v4.new_code_cell(s) for s in [
        "import numpy as np",
        "x = np.ones(3)",
        m + "print(x.sum())",                    # reads x, which cell 4 changes in place
        m + "z = np.arange(4)\nfor i in z:\n    print(i)",  # nothing later reads z or i: deferrable
        m + "x.fill(0)",                         # changes an object it did not create
        m + "import sys\nsys.path.insert(0, 'a')",   # changes the interpreter
        m + "w = 1",                             # read by the next cell
        m + "print(w)",
        "print(3)"]]                             # output compared: stays in place
    assert deferrable(nb) == {3, 7}
