"""course.grading.run_problems: which errors in an autograded notebook mean "it did not run"."""
import json

from course.grading import run_problems


def _cell(grade_id=None, solution=False, grade=False, error=None):
    meta = {"nbgrader": {"grade_id": grade_id, "solution": solution, "grade": grade}} if grade_id else {}
    outputs = [{"output_type": "error", "ename": error, "evalue": "boom", "traceback": []}] if error else []
    return {"cell_type": "code", "metadata": meta, "source": "", "outputs": outputs, "execution_count": 1}


def _problems(tmp_path, cells):
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return run_problems(path)


def test_unfinished_exercise_is_the_learners(tmp_path):
    cells = [_cell(), _cell("f", solution=True), _cell("check_f", grade=True, error="NotImplementedError"),
             _cell(error="NameError"), _cell(error="AssertionError")]
    assert _problems(tmp_path, cells) == []


def test_setup_error_means_it_did_not_run(tmp_path):
    cells = [_cell(error="ValueError"), _cell("f", solution=True), _cell("check_f", grade=True, error="NameError")]
    assert _problems(tmp_path, cells) == ["cell 0 raised ValueError: boom"]


def test_environment_errors_anywhere(tmp_path):
    cells = [_cell(), _cell("f", solution=True), _cell(error="ModuleNotFoundError"),
             _cell("check_f", grade=True, error="FileNotFoundError")]
    assert _problems(tmp_path, cells) == ["cell 2 raised ModuleNotFoundError: boom",
                                          "check_f raised FileNotFoundError: boom"]
