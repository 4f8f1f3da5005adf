"""nbgrader end to end, as the instructor's guide (course/README.md) tells an instructor to do it.

One course directory outside the repository, with course/nbgrader_config.py and every solution as
an nbgrader source notebook; ``nbgrader generate_assignment`` releases them all; fake students
hand in submissions; ``nbgrader autograde`` grades them; ``python -m course grades`` reports.

  * ``full``: the release with the solutions' code typed into each exercise -> full points;
  * ``untouched``: the release as handed out -> zero points;
  * ``wrong_*``: one exercise wrong in 02 and in 05 -> exactly that exercise's points lost;
  * ``broken``: lesson 02 with its data cell pointed at a file that does not exist. nbgrader
    itself scores it 0 and exits 0; ``course grades`` must call it a notebook that did not run.

Grading all 14 lessons twice runs 28 notebooks: several minutes on 2 cores (see the report in
the module fixture's output). ``LLAMA_NP_NBGRADER_LESSONS=02,05`` narrows it while developing.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from course.notebooks import BEGIN_SOLUTION, END_SOLUTION, ROOT, SOLUTIONS, notebook_paths

pytestmark = pytest.mark.slow
pytest.importorskip("nbgrader", reason="nbgrader is not installed (dev extra)")

# (lesson, exercise, wrong body): a classic mistake, not a crash. The other exercises stay right.
WRONG = [("02_rmsnorm", "rms_norm",
          "x = x.astype(np.float32)\nreturn x / np.sqrt((x * x).sum(axis=-1, keepdims=True) + eps) * weight"),
         ("05_gqa", "kv_cache_bytes",   # forgets that K and V are both cached
          "return int(cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * seq_len * bytes_per_value)")]
BROKEN = ("02_rmsnorm", 'course.fixture("02_rmsnorm")', 'course.fixture("02_rmsnorm_missing")')


def _lessons() -> list[str]:
    names = [p.stem for p in notebook_paths(SOLUTIONS)]
    only = os.environ.get("LLAMA_NP_NBGRADER_LESSONS")
    if only:
        keep = {s.strip().zfill(2)[:2] for s in only.split(",")}
        names = [n for n in names if n[:2] in keep]
    return names


def _nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _grade_id(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def _solution_code(source: str, replace: str | None = None) -> str:
    """The exercise as a learner who typed the solution (or ``replace``) would hand it in."""
    lines, out, inside = source.split("\n"), [], False
    for line in lines:
        s = line.strip()
        if s == BEGIN_SOLUTION:
            inside, indent = True, line[:len(line) - len(line.lstrip())]
            if replace is not None:
                out += [indent + r for r in replace.split("\n")]
            continue
        if s == END_SOLUTION:
            inside = False
            continue
        if not inside or replace is None:
            out.append(line)
    return "\n".join(out)


def _submit(course: Path, lesson: str, student: str, solved: dict[str, str]):
    """Copy the released notebook into submitted/<student>/, with these exercise cells filled in."""
    nb = json.loads((course / "release" / lesson / f"{lesson}.ipynb").read_text())
    for cell in nb["cells"]:
        if _grade_id(cell) in solved:
            cell["source"] = solved[_grade_id(cell)]
    dest = course / "submitted" / student / lesson
    dest.mkdir(parents=True)
    (dest / f"{lesson}.ipynb").write_text(json.dumps(nb, indent=1))


@pytest.fixture(scope="module")
def course_dir(tmp_path_factory):
    """Build the course directory and grade everything once; the tests read the results."""
    lessons = _lessons()
    course = tmp_path_factory.mktemp("nbgrader") / "mycourse"
    course.mkdir()
    shutil.copy(ROOT / "course" / "nbgrader_config.py", course / "nbgrader_config.py")
    for lesson in lessons:
        (course / "source" / lesson).mkdir(parents=True)
        shutil.copy(SOLUTIONS / f"{lesson}.ipynb", course / "source" / lesson)

    t0 = time.perf_counter()
    _nbgrader(course, "generate_assignment", "*")
    t_release = time.perf_counter() - t0

    for lesson in lessons:
        source = json.loads((SOLUTIONS / f"{lesson}.ipynb").read_text())
        exercises = {_grade_id(c): "".join(c["source"]) for c in source["cells"]
                     if c.get("metadata", {}).get("nbgrader", {}).get("solution") and c["cell_type"] == "code"}
        _submit(course, lesson, "full", {g: _solution_code(s) for g, s in exercises.items()})
        _submit(course, lesson, "untouched", {})
        for wl, gid, body in WRONG:
            if wl == lesson:
                solved = {g: _solution_code(s, body if g == gid else None) for g, s in exercises.items()}
                _submit(course, lesson, f"wrong_{gid}", solved)
        if BROKEN[0] == lesson:
            _submit(course, lesson, "broken", {g: _solution_code(s) for g, s in exercises.items()})
            path = course / "submitted" / "broken" / lesson / f"{lesson}.ipynb"
            text = path.read_text()
            assert json.dumps(BROKEN[1])[1:-1] in text
            path.write_text(text.replace(json.dumps(BROKEN[1])[1:-1], json.dumps(BROKEN[2])[1:-1]))

    t0 = time.perf_counter()
    _nbgrader(course, "autograde", "*")
    t_grade = time.perf_counter() - t0
    t0 = time.perf_counter()
    _nbgrader(course, "generate_feedback", lessons[0], "--student", "full")
    t_feedback = time.perf_counter() - t0
    print(f"\nnbgrader on {len(lessons)} lessons: generate_assignment {t_release:.0f} s, "
          f"autograde {t_grade:.0f} s, generate_feedback {t_feedback:.0f} s")
    return course, lessons


def _scores(course: Path, lesson: str, student: str):
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        sub = gb.find_submission(lesson, student)
        per_check = {g.name: g.score for nb in sub.notebooks for g in nb.grades}
        points = {g.name: g.max_score for nb in sub.notebooks for g in nb.grades}
        return sub.score, sub.max_score, per_check, points


def _grades(course: Path, lesson: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "course", "grades", lesson], cwd=course,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_release_has_no_answers(course_dir):
    course, lessons = course_dir
    for lesson in lessons:
        text = (course / "release" / lesson / f"{lesson}.ipynb").read_text()
        assert BEGIN_SOLUTION not in text and "raise NotImplementedError()" in text, lesson


def test_solutions_score_full_points(course_dir):
    course, lessons = course_dir
    short = []
    for lesson in lessons:
        score, max_score, per_check, _ = _scores(course, lesson, "full")
        assert max_score > 0, lesson
        if score != max_score:
            short.append(f"{lesson}: {score}/{max_score} {per_check}")
    assert not short, "\n".join(short)


def test_untouched_release_scores_zero(course_dir):
    course, lessons = course_dir
    for lesson in lessons:
        score, max_score, per_check, _ = _scores(course, lesson, "untouched")
        assert score == 0, f"{lesson}: {per_check}"


@pytest.mark.parametrize("lesson,exercise,body", WRONG, ids=[w[0] for w in WRONG])
def test_one_wrong_exercise_loses_exactly_its_points(course_dir, lesson, exercise, body):
    course, lessons = course_dir
    if lesson not in lessons:
        pytest.skip(f"{lesson} not graded in this run (LLAMA_NP_NBGRADER_LESSONS)")
    score, max_score, per_check, points = _scores(course, lesson, f"wrong_{exercise}")
    lost = {name for name, s in per_check.items() if s != points[name]}
    assert lost == {f"check_{exercise}"}
    assert score == max_score - points[f"check_{exercise}"]


def test_every_graded_notebook_ran(course_dir):
    """``course grades`` finds no notebook that failed to run among the real submissions."""
    course, lessons = course_dir
    for lesson in lessons:
        proc = _grades(course, lesson)
        assert proc.returncode in (0, 1), proc.stderr
        lines = [ln for ln in proc.stdout.splitlines() if not ln.startswith("broken ")]
        assert "DID NOT RUN" not in "\n".join(lines), proc.stdout


def test_a_notebook_that_did_not_run_is_not_a_silent_zero(course_dir):
    course, lessons = course_dir
    lesson = BROKEN[0]
    if lesson not in lessons:
        pytest.skip(f"{lesson} not graded in this run")
    score, _, _, _ = _scores(course, lesson, "broken")
    assert score == 0                  # what nbgrader alone says, with exit code 0
    proc = _grades(course, lesson)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("broken "))
    assert "DID NOT RUN" in line
    assert re.search(r"raised FileNotFoundError: .*02_rmsnorm_missing", proc.stdout), proc.stdout


def test_feedback_is_generated(course_dir):
    course, lessons = course_dir
    html = course / "feedback" / "full" / lessons[0] / f"{lessons[0]}.html"
    assert html.is_file() and "Score:" in html.read_text()
