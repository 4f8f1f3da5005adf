"""benchmarks/run_notebook.py, the Jupyter-less notebook runner used on the GPU machine."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run_notebook.py"


def test_runs_cells_in_order_and_reports_a_failing_one(tmp_path):
    cells = [{"cell_type": "markdown", "id": "m", "source": ["# title"]},
             {"cell_type": "code", "id": "a", "source": ["x = 2\n", "print('x is', x)"]},
             {"cell_type": "code", "id": "b", "source": ["1 / 0"]},
             {"cell_type": "code", "id": "c", "source": ["import matplotlib.pyplot as plt\n",
                                                         "plt.plot([1, 2]); plt.show(); print(x + 1)"]}]
    nb = tmp_path / "t.ipynb"
    nb.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    r = subprocess.run([sys.executable, str(SCRIPT), str(nb)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "x is 2" in r.stdout and "\n3\n" in r.stdout          # later cells still ran, same namespace
    assert "ZeroDivisionError" in r.stderr and "cells failed: b" in r.stdout
