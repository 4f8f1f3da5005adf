"""Every reference to a file of this repository points at a file that is in it.

Scanned: the tracked Markdown, Python and notebook files (notebooks: their cells' sources).
Checked: links with a relative target in Markdown (files and notebook markdown cells:
``[x](../lessons/02_rmsnorm.ipynb)``, resolved from the file's folder), and paths anywhere that
start with one of the repository's top-level folders (``docs/design.md``,
``course/fixtures/05_gqa.npz``; resolved from the root, or from the file's folder). A bare
``DESIGN.md`` fails too: the design is ``docs/design.md``. Skipped, as they name no file of this
repository: globs and placeholders (``make_*.py``, ``solutions/NN_name.ipynb``, ``<path>``,
``...``), URLs, and a path right after another project's name (``karpathy/minbpe
tests/test_tokenizer.py``).
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("docs", "course", "llama_np", "tests", "benchmarks", "solutions", "lessons")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
PATH = re.compile(r"(?<![\w./:@-])((?:%s)/[\w./*?<>{}…-]*[\w*>}])" % "|".join(TOP))
OTHER_PROJECT = re.compile(r"\b[\w.-]+/[\w.-]+\s+$")     # "owner/repo " just before the path
URL = re.compile(r"[a-z]+://\S+")
PLACEHOLDER = re.compile(r"[*?<>{}…]|\.\.\.|NN|\dN|\bN\b")


def tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "*.md", "*.py", "*.ipynb"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot tell which files are tracked")
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def texts(path: Path) -> list[tuple[str, bool]]:
    """(text, whether it is Markdown) for a file, or for each cell of a notebook."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".ipynb":
        return [(text, path.suffix == ".md")]
    return [("".join(c["source"]) if isinstance(c["source"], list) else c["source"],
             c["cell_type"] == "markdown") for c in json.loads(text)["cells"]]


def broken_references(path: Path) -> list[str]:
    """'what (file: line excerpt)' for each reference of ``path`` to a missing repo file."""
    found = []
    for text, markdown in texts(path):
        for line in text.splitlines():
            if "DESIGN.md" in line:
                found.append("DESIGN.md (the design is docs/design.md)")
            line = URL.sub(" ", line)
            for target in LINK.findall(line) if markdown else []:
                target = target.split("#")[0]
                if not target or ":" in target or PLACEHOLDER.search(target):
                    continue
                if not (path.parent / target).exists():
                    found.append(f"link {target}")
            for m in PATH.finditer(line):
                ref = m.group(1).rstrip(".")
                if PLACEHOLDER.search(ref) or OTHER_PROJECT.search(line[:m.start()]):
                    continue
                if (ROOT / ref).exists() or (path.parent / ref).exists():
                    continue
                found.append(ref)
    return found


def test_references_to_repo_files_exist():
    bad = {}
    for path in tracked():
        if path == Path(__file__).resolve():       # this file's examples are broken on purpose
            continue
        missing = broken_references(path)
        if missing:
            bad[str(path.relative_to(ROOT))] = sorted(set(missing))
    assert bad == {}, "references to files that are not in the repository:\n" + "\n".join(
        f"  {f}: {', '.join(m)}" for f, m in sorted(bad.items()))


def test_the_scanner_finds_what_it_should(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("See DESIGN.md and docs/nothing.md, [a](missing.md), [b](x.md#top), "
                  "https://github.com/meta-llama/llama3/blob/main/llama/model.py, "
                  "course/fixtures/make_*.py, llama_np/model.py, `tests/test_course.py`, "
                  "karpathy/minbpe tests/test_tokenizer.py, course/nothing.py.\n")
    assert broken_references(md) == ["DESIGN.md (the design is docs/design.md)", "link missing.md",
                                     "docs/nothing.md", "course/nothing.py"]
