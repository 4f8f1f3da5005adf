"""Run a notebook's code cells in order, in one namespace, without Jupyter (the GPU machine has
none): each cell is reported by its id, a failing cell prints its traceback and the rest still run.

    cd solutions && python ../benchmarks/run_notebook.py 11_gpu_cupy.ipynb

Figures are closed instead of shown. Exits 1 if any cell failed. nbval (in CI) remains the check
of stored outputs; this only says whether every cell runs, e.g. lesson 11's GPU cells on a GPU.
"""
import json
import sys
import traceback

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(path: str) -> int:
    plt.show = lambda *a, **k: plt.close("all")
    nb = json.load(open(path))
    namespace = {"__name__": "__main__"}
    failed = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        print(f"== {cell.get('id')}", flush=True)
        try:
            exec(compile("".join(cell["source"]), cell.get("id", "cell"), "exec"), namespace)
        except Exception:
            traceback.print_exc()
            failed.append(cell.get("id"))
    print("cells failed:", ", ".join(failed) if failed else "none", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
