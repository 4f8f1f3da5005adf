"""A tiny progress bar on stderr (loading 16 GB takes a while; say how far it got).

    for item in progress(items, "loading", total_bytes=...):   # or unit="tensors"
        ...

On a terminal the bar redraws in place (``\\r``) at most 10 times a second; when stderr is not a
terminal (a log file, CI) it prints one summary line at the end instead of hundreds. Set
``LLAMA_NP_QUIET=1`` to silence it.
"""
from __future__ import annotations

import os
import sys
import time


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Progress:
    """Counts done/total and draws ``desc [#####.....] 45% 7.2/16.0 GB 3.1 s``."""

    def __init__(self, total: float, desc: str = "", unit: str = "", stream=None, enabled: bool | None = None):
        self.total, self.desc, self.unit = max(float(total), 1.0), desc, unit
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = not os.environ.get("LLAMA_NP_QUIET")
        self.enabled = enabled
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = 0.0
        self.start = self._last = time.perf_counter()

    def _line(self) -> str:
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        elapsed = time.perf_counter() - self.start
        if self.unit == "bytes":   # with the speed: a download or a disk read is judged by it
            count = f"{_fmt_bytes(self.done)}/{_fmt_bytes(self.total)} {_fmt_bytes(self.done / max(elapsed, 1e-9))}/s"
        else:
            count = f"{self.done:.0f}/{self.total:.0f} {self.unit}".rstrip()
        return f"{self.desc} [{bar}] {100 * frac:3.0f}% {count} {elapsed:.1f} s"

    def update(self, n: float = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.live and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            self.stream.write("\r" + self._line())
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write(("\r" if self.live else "") + self._line() + "\n")
            self.stream.flush()
            self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(items, desc: str = "", total: float | None = None, unit: str = "", size=None, enabled=None):
    """Iterate over ``items`` with a bar; ``size(item)`` says how much each counts (default 1)."""
    items = list(items)
    with Progress(total if total is not None else len(items), desc, unit, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update(size(item) if size else 1)
