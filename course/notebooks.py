"""What build, execute and check share: where notebooks live, how to find lesson NN, how to
read and write notebooks deterministically, and how to compare outputs the way nbval does.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent          # the repository
SOLUTIONS = ROOT / "solutions"
LESSONS = ROOT / "lessons"
SANITIZE_CFG = Path(__file__).resolve().parent / "nbval_sanitize.cfg"

# nbgrader's markers (nbgrader matches the stripped line exactly, so do we).
BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CODE_STUB = ["# YOUR CODE HERE", "raise NotImplementedError()"]   # nbgrader's default stub
TEXT_STUB = ["YOUR ANSWER HERE"]

NAME_RE = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")

# Every notebook's first code cell. It must work before llama_np and course are importable (in
# Colab, Binder, a JupyterHub), so it cannot call a helper from them; it stays silent when they are
# installed (nbval compares its output). It never touches sys.path or the working directory: the
# data comes with the package (course.fixture), so a notebook runs wherever it is opened.
SETUP_CELL = """\
try:        # the library and the course's data (pip install, see course/README.md)
    import llama_np, course
except ModuleNotFoundError:     # Colab, Binder, a JupyterHub: installs from $LLAMA_NP_INSTALL
    import os, subprocess, sys
    if not os.environ.get("LLAMA_NP_INSTALL"):
        sys.exit("llama_np is not installed: pip install it, or set LLAMA_NP_INSTALL (course/README.md)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", os.environ["LLAMA_NP_INSTALL"]], check=True)
    import llama_np, course"""


class CourseError(Exception):
    """A problem with the course files or the command line: printed as one line."""


def warm_caches() -> None:
    """Build matplotlib's font cache in this process, before a kernel starts: otherwise the first
    notebook to import pyplot on a fresh machine prints "Matplotlib is building the font cache"
    on stderr, and nbval (and ``course check``) see an output the stored notebook does not have."""
    try:
        import logging
        logging.getLogger("matplotlib").setLevel(logging.ERROR)
        import matplotlib.font_manager  # noqa: F401
    except Exception:   # no matplotlib: nothing to warm
        pass


# ------------------------------------------------------------------------------------ finding
def notebook_paths(folder: Path) -> list[Path]:
    """The NN_name.ipynb notebooks in ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if NAME_RE.match(p.name))


def find_notebook(spec: str, folder: Path) -> Path:
    """'2', '02', '02_rmsnorm', 'rmsnorm', '02_rmsnorm.ipynb' or a path -> the notebook in ``folder``."""
    p = Path(spec)
    if p.suffix == ".ipynb" and p.is_file():
        return p
    key = p.name[:-len(".ipynb")] if p.name.endswith(".ipynb") else p.name
    found = notebook_paths(folder)
    for nb in found:
        stem = nb.stem
        num, name = stem[:2], stem[3:]
        if key in (stem, name) or (key.isdigit() and int(key) == int(num)):
            return nb
    have = ", ".join(nb.stem for nb in found) or "none"
    raise CourseError(f"no notebook matches {spec!r} in {_rel(folder)}/ (have: {have})")


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------ reading/writing
def read(path: Path):
    """Read a notebook. Cells without an id get a stable one (``c00``, ``c01``...): nbformat
    would invent random ids, and then the same solution would not always build the same lesson."""
    import json

    import nbformat
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CourseError(f"cannot read {path}: {e}") from None
    cells = raw.get("cells", []) if isinstance(raw, dict) else []
    if raw.get("nbformat") == 4 and raw.get("nbformat_minor", 0) >= 5:
        taken = {c.get("id") for c in cells}
        for i, cell in enumerate(cells):
            if not cell.get("id"):
                new = f"c{i:02d}"
                while new in taken:
                    new += "x"
                cell["id"] = new
                taken.add(new)
    return nbformat.reads(json.dumps(raw), as_version=4)


def dumps(nb) -> str:
    """Stable text for a notebook: nbformat's own JSON (sorted keys, indent 1) plus a newline.
    Same input -> same bytes, so ``build --check`` can compare files byte for byte."""
    import nbformat
    return nbformat.writes(nb, version=4) + "\n"


def write(nb, path: Path) -> bool:
    """Write ``nb`` to ``path`` if its text changed; True when the file was (re)written."""
    text = dumps(nb)
    path = Path(path)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return True


# ------------------------------------------------------------------------------- cell kinds
def nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def is_exercise(cell) -> bool:
    """A cell the learner writes (nbgrader ``solution: true``)."""
    return bool(nbgrader(cell).get("solution"))


def is_check(cell) -> bool:
    """A check cell (nbgrader ``grade: true`` code cell, locked)."""
    return cell.cell_type == "code" and bool(nbgrader(cell).get("grade")) and not is_exercise(cell)


def nbval_markers(cell) -> set[str]:
    """nbval's per-cell controls, from comments (``# NBVAL_SKIP``) or tags (``nbval-skip``)."""
    found = set()
    for line in cell.get("source", "").splitlines():
        s = line.strip()
        if s.startswith("#"):
            word = s.lstrip("#").strip()
            # nbval matches the whole comment: "# NBVAL_IGNORE_OUTPUT (why)" is NOT a marker.
            if word.startswith(("NBVAL_", "PYTEST_VALIDATE_IGNORE_OUTPUT")) and " " not in word:
                found.add(word)
    for tag in cell.get("metadata", {}).get("tags", []) or []:
        found.add(tag.upper().replace("-", "_"))
    if "PYTEST_VALIDATE_IGNORE_OUTPUT" in found:
        found.add("NBVAL_IGNORE_OUTPUT")
    return found


# ------------------------------------------------------------------ comparing outputs like nbval
# nbval 0.11 compares every output field except these (and images unless --nbdime is given).
SKIP_KEYS = {"metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
             "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg"}


def sanitize_patterns(path: Path = SANITIZE_CFG) -> list[tuple[str, str]]:
    """(regex, replacement) pairs from an nbval sanitize file (same parser as nbval's)."""
    if not Path(path).is_file():
        return []
    text = Path(path).read_text(encoding="utf-8")
    return re.findall(r"^regex: (.*)$\n^replace: (.*)$", text, flags=re.MULTILINE)


_CARRIAGE_RETURN = re.compile(r"^.*\r(?=[^\n])", re.MULTILINE)


def comparable(outputs, patterns) -> dict[str, list]:
    """Outputs flattened the way nbval compares them: {field or mime type: [values]}, streams
    merged per name (stdout, stderr), sanitized, errors and images left out."""
    streams: dict[str, str] = {}
    flat: dict[str, list] = {}

    def clean(v):
        if isinstance(v, list):
            v = "".join(v)
        if isinstance(v, str):
            for rx, rep in patterns:
                v = re.sub(rx, rep, v)
        return v

    for out in outputs:
        kind = out.get("output_type")
        if kind == "error":
            continue                     # an error is reported as an error, not as a diff
        if kind == "stream":
            text = out.get("text", "")
            streams[out.get("name", "stdout")] = streams.get(out.get("name", "stdout"), "") + (
                "".join(text) if isinstance(text, list) else text)
            continue
        for key, value in out.items():
            if key in SKIP_KEYS:
                continue
            if key == "data":
                for mime, v in value.items():
                    if mime not in SKIP_KEYS:
                        flat.setdefault(mime, []).append(clean(v))
            else:
                flat.setdefault(key, []).append(clean(value))
    for name, text in streams.items():
        text = _CARRIAGE_RETURN.sub("", text)   # a progress line rewritten with \r: keep the last
        flat.setdefault(name, []).append(clean(text))
    return flat


def first_difference(expected_outputs, got_outputs, patterns) -> str | None:
    """None when the outputs match as nbval would judge them; else a one-line description."""
    exp, got = comparable(expected_outputs, patterns), comparable(got_outputs, patterns)
    for key in sorted(set(exp) | set(got)):
        e, g = exp.get(key, []), got.get(key, [])
        if e == g:
            continue
        what = {"stdout": "printed", "stderr": "printed on stderr"}.get(key, f"shows ({key})")
        if not g:
            return f"{what} nothing; expected {_first_line(e[0])!r}"
        if not e:
            return f"{what} {_first_line(g[0])!r}, but the expected output has none"
        if len(e) != len(g):
            return f"{what} {len(g)} outputs; expected {len(e)}"
        for ev, gv in zip(e, g):
            if ev != gv:
                el, gl = str(ev).splitlines() or [""], str(gv).splitlines() or [""]
                for i in range(max(len(el), len(gl))):
                    a = el[i] if i < len(el) else "<nothing>"
                    b = gl[i] if i < len(gl) else "<nothing>"
                    if a != b:
                        return f"{what} {_short(b)!r} where the expected output has {_short(a)!r} (line {i + 1})"
    return None


def _first_line(v) -> str:
    lines = str(v).splitlines()
    return _short(lines[0] if lines else "")


def _short(s: str, n: int = 90) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"
