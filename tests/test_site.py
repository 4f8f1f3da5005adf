"""The rendered course site (``python -m course site``), opened page by page in headless Chromium.

Chromium is driven through its DevTools protocol (a websocket; ``websocket-client``). For every
page: no console error, no uncaught exception, no failed request (the site must work with no
network), every <img> loaded (naturalWidth > 0), and every relative href/src in the built site
resolves to a file. Needs Debian's ``chromium`` package (``.ci/run`` installs it); skipped without.
"""
from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0"]
PAGE_TIMEOUT = 120   # seconds to give up on a page that never loads: a hang, not a speed limit


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("nbconvert")
    pytest.importorskip("latex2mathml", reason="the site extra is not installed")
    from course.site import build_site
    out = tmp_path_factory.mktemp("site") / "site"
    pages = build_site(out, quiet=True)
    return out, pages


def test_site_has_every_notebook_and_document(site):
    out, pages = site
    from course.notebooks import LESSONS, SOLUTIONS, notebook_paths
    from course.site import DOCUMENTS, _page_of
    want = {f"{p.parent.name}/{p.stem}.html" for d in (LESSONS, SOLUTIONS) for p in notebook_paths(d)}
    docs = {_page_of(src) for src, _ in DOCUMENTS}
    assert want | docs | {"index.html"} <= {str(p.relative_to(out)) for p in pages}
    index = (out / "index.html").read_text()   # the contents page links every page
    for page in want | docs:
        assert f'href="{page}"' in index, page


def test_no_broken_internal_links(site):
    """Every relative href/src in every page names a file of the site (fragments aside)."""
    out, pages = site
    broken = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for url in re.findall(r'(?:href|src)="([^"]*)"', text):
            parts = urlsplit(url)
            if parts.scheme or url.startswith(("#", "//")) or not parts.path:
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            if not target.is_file():
                broken.append(f"{page.relative_to(out)} -> {url}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_nothing_loaded_from_the_network(site):
    """A page may link to the web (<a href>) but must not load scripts, styles or images from it."""
    out, pages = site
    for page in pages:
        text = page.read_text(encoding="utf-8")
        remote = re.findall(r'<(?:script|img|link|iframe)\b[^>]*\b(?:src|href)="((?:https?:)?//[^"]*)"', text)
        assert not remote, f"{page.relative_to(out)} loads {remote[:3]}"


# ---------------------------------------------------------------------------------- the browser
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(site):
    out, pages = site
    handler = functools.partial(_Quiet, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)   # port 0: a free port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", out, pages
    server.shutdown()
    server.server_close()


class DevTools:
    """The few DevTools-protocol calls this test needs, over one websocket to one page."""

    def __init__(self, ws_url):
        import websocket
        self.ws = websocket.create_connection(ws_url, timeout=PAGE_TIMEOUT)
        self.next_id = 0
        self.events = []

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method):
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == method:
                return msg
            self.events.append(msg)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    pytest.importorskip("websocket", reason="websocket-client is not installed (site extra)")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = Path(profile) / "DevToolsActivePort"   # Chromium writes its port here
        deadline = time.monotonic() + PAGE_TIMEOUT
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chromium did not start (exit code {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        dt = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            dt.call(f"{domain}.enable")
        yield dt
        dt.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


BAD_IMAGES = ("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
              ".map(i => i.src.slice(0, 80))")


def _problems(events):
    out = []
    for ev in events:
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
        elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
        elif m == "Network.loadingFailed" and not p.get("canceled"):
            out.append(f"request failed: {p.get('errorText')}")
    return out


def test_every_page_renders_in_chromium(served, browser):
    base, out, pages = served
    failures = []
    for page in sorted(pages):
        rel = page.relative_to(out).as_posix()
        browser.events.clear()
        browser.call("Page.navigate", url=f"{base}/{rel}")
        browser.wait_for("Page.loadEventFired")
        bad = browser.call("Runtime.evaluate", expression=BAD_IMAGES, returnByValue=True)["result"]["value"]
        title = browser.call("Runtime.evaluate", expression="document.title", returnByValue=True)["result"]["value"]
        problems = _problems(browser.events) + [f"image not loaded: {src}" for src in bad]
        if not title:
            problems.append("no title")
        failures += [f"{rel}: {p}" for p in problems]
    assert not failures, "\n".join(failures)


def test_math_is_drawn(served, browser):
    """Lesson 02's formulas are MathML that Chromium lays out (no TeX left, nothing to load)."""
    base, out, pages = served
    text = (out / "solutions" / "02_rmsnorm.html").read_text(encoding="utf-8")
    assert "<math" in text and "MATHPLACEHOLDER" not in text and "\\frac" not in text
    browser.call("Page.navigate", url=f"{base}/solutions/02_rmsnorm.html")
    browser.wait_for("Page.loadEventFired")
    sizes = browser.call("Runtime.evaluate", returnByValue=True, expression=(
        "Array.from(document.querySelectorAll('math')).map(m => m.getBoundingClientRect().height)"))
    sizes = sizes["result"]["value"]
    assert sizes and min(sizes) > 0
