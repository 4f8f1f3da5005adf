"""``python -m course site``: the course as a static website, readable without installing anything.

    build/site/
      index.html                  the contents: documents, then every lesson and its solution
      README.html                 README.md; likewise the course guide and the design, each
                                  beside where its .md is in the repository
      lessons/NN_name.html        each notebook with its stored outputs (nothing is re-run)
      solutions/NN_name.html

Notebooks go through nbconvert's HTML exporter ("lab" template) and markdown files through the
same markdown renderer, so a page looks like the notebook. Nothing is fetched at build or at view
time: nbconvert's template would load require.js, MathJax and mermaid from a CDN, so our template
drops them, and formulas are turned into MathML at build time (latex2mathml), which browsers
draw without any script. Links between the
sources (``lessons/02_rmsnorm.ipynb``, ``../docs/design.md#5-...``) are rewritten to the pages.
Why not Jupyter Book: version 2 (MyST) downloads its theme at build time, which fails offline.
"""
from __future__ import annotations

import html
import itertools
import os
import re
import shutil
from pathlib import Path

from .notebooks import LESSONS, ROOT, SOLUTIONS, CourseError, notebook_paths

DEFAULT_OUT = ROOT / "build" / "site"
NAV = [("README.md", "README"), ("course/README.md", "Course guide"), ("docs/design.md", "Design")]
DOCUMENTS = [("README.md", "README"), ("course/README.md", "The course: syllabus and guides"),
             ("docs/design.md", "Design")]

# No favicon.ico: say so, or the browser asks for one and logs a 404.
NO_FAVICON = '<link rel="icon" href="data:,">'

# nbconvert's lab template without require.js, MathJax or mermaid (all from a CDN), with our nav bar.
TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}{{ resources.site_icon }}<style>{{ resources.site_css }}</style>{%- endblock extra_css -%}
{%- block body_header -%}{{ super() }}{{ resources.site_nav }}{%- endblock body_header -%}
"""

CSS = """
nav.site { font: 14px/1.5 system-ui, sans-serif; padding: 8px 16px; border-bottom: 1px solid #ddd;
           background: #f7f7f7; }
nav.site a { margin-right: 1.2em; }
main.doc { font: 16px/1.55 system-ui, sans-serif; max-width: 60em; margin: 1em auto; padding: 0 1em; }
main.doc pre { background: #f5f5f5; padding: 8px; overflow-x: auto; }
main.doc code { font-size: 90%; }
main.doc table { border-collapse: collapse; }
main.doc th, main.doc td { border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; }
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<style>{css}</style>
</head>
<body>
{nav}
<main class="doc">
{body}
</main>
</body>
</html>
"""


# ------------------------------------------------------------------------------------- helpers
def _page_of(src: str) -> str:
    """Repository path of a source -> path of its page in the site."""
    return str(Path(src).with_suffix(".html"))


def _rel(target: str, page: str) -> str:
    """Relative URL from ``page`` to ``target`` (both paths inside the site)."""
    return os.path.relpath(target, os.path.dirname(page) or ".").replace(os.sep, "/")


def _nav(page: str) -> str:
    links = [("index.html", "Contents")] + [(_page_of(src), label) for src, label in NAV]
    items = "".join(f'<a href="{_rel(t, page)}">{html.escape(label)}</a>' for t, label in links)
    return f'<nav class="site">llama-np · {items}</nav>'


HREF_RE = re.compile(r'(href|src)="([^"#:]+?\.(?:md|ipynb))(#[^"]*)?"')


def _rewrite_links(text: str, src: str, page: str, rendered: set[str]) -> str:
    """Point links to rendered sources (.md, .ipynb) at their pages; others are left alone (and
    the site check reports them if they are broken)."""
    def fix(m):
        target = os.path.normpath(os.path.join(os.path.dirname(src), m.group(2))).replace(os.sep, "/")
        if target not in rendered:
            return m.group(0)
        return f'{m.group(1)}="{_rel(_page_of(target), page)}{m.group(3) or ""}"'
    return HREF_RE.sub(fix, text)


CODE_RE = re.compile(r"(```.*?```|~~~.*?~~~|`[^`\n]+`)", re.S)         # never look for math in code
MATH_RE = re.compile(r"(?<!\\)\$\$(.+?)\$\$|(?<![\\$])\$([^$\n]+?)\$", re.S)


_COUNTER = itertools.count()


def _math_out(text: str) -> tuple[str, dict]:
    """Replace $...$ and $$...$$ (outside code) with placeholders; return the text and the MathML
    for each. Math becomes MathML at build time, which browsers draw natively: no MathJax, no
    fonts, nothing loaded. The placeholders keep the markdown renderer away from the TeX."""
    from latex2mathml.converter import convert
    found = {}

    def sub(m):
        tex, display = (m.group(1), "block") if m.group(1) is not None else (m.group(2), "inline")
        key = f"MATHPLACEHOLDER{next(_COUNTER)}X"   # unique over the whole build
        found[key] = convert(tex.strip(), display=display)
        return key
    parts = CODE_RE.split(text)
    return "".join(p if i % 2 else MATH_RE.sub(sub, p) for i, p in enumerate(parts)), found


def _math_in(html_text: str, found: dict) -> str:
    for key, mathml in found.items():
        html_text = html_text.replace(key, mathml)
    return html_text


def _markdown(text: str) -> str:
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    text, found = _math_out(text)
    return _math_in(markdown2html_mistune(text), found)   # headings get ids, as in notebooks


def _title(text: str, default: str) -> str:
    m = re.search(r"^#\s+(.+)$", text, re.M)
    return re.sub(r"[*_`]", "", m.group(1)).strip() if m else default


# --------------------------------------------------------------------------------------- build
def build_site(out: Path = DEFAULT_OUT, root: Path = ROOT, solutions: Path = SOLUTIONS,
               lessons: Path = LESSONS, quiet: bool = False) -> list[Path]:
    """Render every document and notebook into ``out`` (emptied first). Returns the pages."""
    try:
        import latex2mathml.converter  # noqa: F401
        from nbconvert import HTMLExporter
        from jinja2 import DictLoader
    except ModuleNotFoundError as e:
        raise CourseError(f"{e.name} is not installed: run pip install -e \".[site]\" first") from None
    out = Path(out)
    docs = [(src, title) for src, title in DOCUMENTS if (root / src).is_file()]
    if not docs:
        raise CourseError(f"no README.md in {root}: build the site from a clone of the project")
    nbs = [p for folder in (lessons, solutions) for p in notebook_paths(folder)]
    rendered = {src for src, _ in docs} | {f"{p.parent.name}/{p.name}" for p in nbs}

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pages = []

    def write(page: str, text: str):
        (out / page).parent.mkdir(parents=True, exist_ok=True)
        (out / page).write_text(text, encoding="utf-8")
        pages.append(out / page)
        if not quiet:
            print(f"  {page}")

    for src, default_title in docs:
        text = (root / src).read_text(encoding="utf-8")
        page = _page_of(src)
        body = _rewrite_links(_markdown(text), src, page, rendered)
        write(page, PAGE.format(title=html.escape(_title(text, default_title)), css=CSS,
                                nav=_nav(page), body=body))

    exporter = HTMLExporter(template_name="lab", extra_loaders=[DictLoader({"site.html.j2": TEMPLATE})],
                            template_file="site.html.j2")
    import nbformat
    for p in nbs:
        src = f"{p.parent.name}/{p.name}"
        page = _page_of(src)
        nb = nbformat.read(p, as_version=4)
        found = {}
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                cell.source, more = _math_out(cell.source)
                found.update(more)
        resources = {"site_nav": _nav(page), "site_css": CSS, "site_icon": NO_FAVICON,
                     "metadata": {"name": f"{p.stem} ({p.parent.name[:-1]})"}}
        body, _ = exporter.from_notebook_node(nb, resources=resources)
        write(page, _rewrite_links(_math_in(body, found), src, page, rendered))

    write("index.html", _index(docs, lessons, solutions))
    return pages


def _index(docs, lessons: Path, solutions: Path) -> str:
    rows = []
    sol = {p.stem: p for p in notebook_paths(solutions)}
    les = {p.stem: p for p in notebook_paths(lessons)}
    for stem in sorted(set(sol) | set(les)):
        num, name = stem[:2], stem[3:].replace("_", " ")
        cells = [f'<a href="lessons/{stem}.html">lesson</a>' if stem in les else "",
                 f'<a href="solutions/{stem}.html">solution, with outputs</a>' if stem in sol else ""]
        rows.append(f"<tr><td>{num}</td><td>{html.escape(name)}</td><td>{cells[0]}</td><td>{cells[1]}</td></tr>")
    doc_items = "".join(f'<li><a href="{_page_of(src)}">{html.escape(title)}</a> ({html.escape(src)})</li>'
                        for src, title in docs)
    body = ("<h1>llama-np</h1>\n<p>Meta's Llama built from scratch in NumPy, one verified piece at a "
            "time. These pages are rendered from the repository's notebooks with their stored "
            "outputs; to run a lesson, open it in Jupyter (see the README).</p>\n"
            f"<h2>Documents</h2>\n<ul>{doc_items}</ul>\n<h2>Lessons</h2>\n"
            "<table><tr><th>#</th><th>lesson</th><th>to work</th><th>solved</th></tr>\n"
            + "\n".join(rows) + "</table>")
    return PAGE.format(title="llama-np: contents", css=CSS, nav=_nav("index.html"), body=body)


def main(out: Path = DEFAULT_OUT) -> int:
    import time
    t0 = time.perf_counter()
    print(f"Building the site in {out} ...")
    pages = build_site(out)
    print(f"{len(pages)} pages in {time.perf_counter() - t0:.0f} s. Open {Path(out) / 'index.html'}, "
          f"or serve it: python -m http.server -d {out} 8000")
    return 0
