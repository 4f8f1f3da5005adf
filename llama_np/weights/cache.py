"""A memory-mappable cache of dequantized GGUF models: dequantize once, map in milliseconds.

Opening SmolLM2's 98 MB Q4_1 file costs ~9 s on a small machine: the ``gguf`` reader turns
100,000 tokenizer strings into Python objects (~5 s) and every tensor is dequantized (~3.5 s).
None of that changes between runs, so the first load writes what it produced to

    <cache>/dequantized/<file name>-<12 hex digits of its absolute path>/
        index         a header line, then JSON: the source (size, mtime, sha256), its metadata,
                      and every tensor's name, shape and offset in ``weights.f32``
        weights.f32   every tensor, float32, C order, 64-byte aligned, back to back

and later loads map ``weights.f32`` into memory (``mmap``, copy-on-write: a notebook may still
write into a weight; the file never changes) instead of computing anything.

Trust, but check cheaply:
  * the source is recognised by its size and modification time; if those changed, its sha256
    is computed again and compared with the one recorded at build time (same bytes: the entry
    is kept, e.g. after ``touch`` or a copy; other bytes: rebuilt);
  * the index carries the sha256 of its own JSON, and the data file's size and the sha256 of
    a 4 KiB sample from every MiB of it: a truncated, overwritten or half-copied cache is
    noticed on load, reported in one line and rebuilt, never trusted and never a crash.
An entry is built in a temporary folder and renamed into place whole, so a reader sees a
complete entry or none; two processes building at once each write their own folder and the
second rename loses harmlessly.

``LLAMA_NP_WEIGHT_CACHE=0`` turns the cache off. Files under ``MIN_SOURCE_BYTES`` are not
cached (they load in a fraction of a second anyway, and tests write many of them).
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from .. import assets

FORMAT = "llama_np-dequantized 1"   # first line of every index; bump when the layout changes
MIN_SOURCE_BYTES = 16 << 20
ALIGN = 64                          # tensor offsets: cache-line aligned, as BLAS likes
SAMPLE, STRIDE = 4096, 1 << 20      # the data check hashes SAMPLE bytes from every STRIDE


def enabled(path) -> bool:
    if os.environ.get("LLAMA_NP_WEIGHT_CACHE", "1").strip().lower() in ("0", "off", "no", "false"):
        return False
    return os.path.getsize(path) >= MIN_SOURCE_BYTES


def entry_dir(path) -> Path:
    """The cache folder for the model file at ``path`` (one entry per absolute path)."""
    real = os.path.realpath(path)
    tag = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return assets.cache_dir() / "dequantized" / f"{os.path.basename(real)}-{tag}"


def _note(msg: str, quiet: bool) -> None:
    if not quiet and not os.environ.get("LLAMA_NP_QUIET"):
        print(f"llama_np: {msg}", file=sys.stderr, flush=True)


def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _sample_sha256(path, size: int) -> str:
    """sha256 of SAMPLE bytes at every STRIDE of the file (and its last bytes): ~0.4 % of it."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in list(range(0, size, STRIDE)) + [max(0, size - SAMPLE)]:
            h.update(os.pread(fd, SAMPLE, off))
    finally:
        os.close(fd)
    return h.hexdigest()


def _source_key(path) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


# ------------------------------------------------------------------------------- read
class CacheDamaged(Exception):
    """An entry that fails a check: the caller rebuilds it."""


def _read_index(folder: Path) -> dict:
    raw = (folder / "index").read_bytes()
    head, _, body = raw.partition(b"\n")
    parts = head.decode("ascii", "replace").rsplit(" ", 1)
    if len(parts) != 2 or parts[0] != FORMAT:
        raise CacheDamaged("an index of another format")
    if hashlib.sha256(body).hexdigest() != parts[1]:
        raise CacheDamaged("its index fails its checksum")
    return json.loads(body)


def load(path, quiet: bool = False):
    """(metadata, {name: float32 array mapped from the cache}) for the GGUF at ``path``, or None
    when there is no usable entry yet (missing, stale or damaged: said in one line unless quiet)."""
    folder = entry_dir(path)
    if not (folder / "index").exists():
        return None
    try:
        index = _read_index(folder)
        src, now = index["source"], _source_key(path)
        if (src["size"], src["mtime_ns"]) != (now["size"], now["mtime_ns"]):
            if src["size"] != now["size"] or file_sha256(path) != src["sha256"]:
                _note(f"{os.path.basename(path)} changed since it was cached: dequantizing it again", quiet)
                return None
            index["source"].update(now)              # same bytes, new time stamp (touch, copy)
            try:
                _write_index(folder, index)
            except OSError:                          # a read-only cache: check the sha256 each time
                pass
        params = _map(folder / "weights.f32", index)
    except (CacheDamaged, OSError, ValueError, KeyError, TypeError) as e:
        _note(f"the weight cache {folder} is damaged ({e}): rebuilding it", quiet)
        return None
    return index["metadata"], params


def _check_data(folder: Path, index: dict) -> int:
    """The size of weights.f32 if it matches the index (size and sampled checksum)."""
    size = os.path.getsize(folder / "weights.f32")
    if size != index["data_size"]:
        raise CacheDamaged(f"weights.f32 has {size:,} bytes, the index says {index['data_size']:,}")
    if _sample_sha256(folder / "weights.f32", size) != index["data_sample_sha256"]:
        raise CacheDamaged("weights.f32 fails its checksum")
    return size


def _map(data: Path, index: dict) -> dict:
    size = _check_data(data.parent, index)
    with open(data, "rb") as f:
        # ACCESS_COPY: private pages, so writing into a weight changes this process only.
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else b""
    params = {}
    for t in index["tensors"]:
        shape, off = tuple(t["shape"]), int(t["offset"])
        n = int(np.prod(shape, dtype=np.int64))
        if off % ALIGN or off + 4 * n > size:
            raise CacheDamaged(f"tensor {t['name']} lies outside weights.f32")
        params[t["name"]] = np.frombuffer(mm, dtype=np.float32, count=n, offset=off).reshape(shape)
    return params


# ------------------------------------------------------------------------------ write
def _write_index(folder: Path, index: dict) -> None:
    """Write ``index`` beside a temporary name, then rename: the old or the new, never half."""
    body = json.dumps(index, separators=(",", ":")).encode()
    fd, tmp = tempfile.mkstemp(prefix=".index-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(f"{FORMAT} {hashlib.sha256(body).hexdigest()}\n".encode() + body)
        os.chmod(tmp, 0o644)          # mkstemp makes a private file; a cache file is ordinary
        os.replace(tmp, folder / "index")
    except BaseException:
        _unlink(tmp)
        raise


def store(path, metadata: dict, params: dict, quiet: bool = False) -> Path | None:
    """Write an entry for the GGUF at ``path``; its folder, or None if it could not be written
    (a full or read-only disk: said in one line, and the model still loads, just not faster)."""
    folder = entry_dir(path)
    key = _source_key(path)
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        key["sha256"] = file_sha256(path)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=folder.parent))
        tensors, off = [], 0
        with open(tmp / "weights.f32", "wb") as f:
            for name in _layout(params):
                w = np.ascontiguousarray(params[name], dtype=np.float32)
                pad = -off % ALIGN
                f.write(b"\0" * pad)
                off += pad
                tensors.append({"name": name, "shape": list(w.shape), "offset": off})
                f.write(memoryview(w).cast("B"))
                off += w.nbytes
        index = {"source": {"path": os.path.realpath(path), **key}, "metadata": metadata,
                 "tensors": tensors, "data_size": off,
                 "data_sample_sha256": _sample_sha256(tmp / "weights.f32", off)}
        _write_index(tmp, index)
        os.chmod(tmp, 0o755)          # mkdtemp makes a private folder; a cache entry is ordinary
        _install(tmp, folder)
        tmp = None
    except OSError as e:
        _note(f"could not cache the dequantized weights in {folder.parent} ({e}); loading continues "
              f"uncached (set LLAMA_NP_CACHE to a writable folder with {_mb(params)} MB free)", quiet)
        return None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    _note(f"cached the dequantized weights ({_mb(params)} MB) in {folder}: later loads map them", quiet)
    return folder


def _layout(params: dict) -> list:
    """Tensor names in file order: each layer's wq, wk, wv back to back, then w1, w3, so that
    ``model.fuse`` can stack them as views of the mapped file instead of copying them."""
    from ..model import FUSED
    order, placed = [], set()
    for name in params:
        if name in placed:
            continue
        prefix, _, short = name.rpartition(".")
        group = [parts for _, parts in FUSED if short in parts]
        names = [f"{prefix}.{n}" for n in group[0]] if group and prefix else [name]
        if not all(n in params for n in names):
            names = [name]
        order += [n for n in names if n not in placed]
        placed.update(names)
    return order


def _install(tmp: Path, folder: Path) -> None:
    """Rename the finished ``tmp`` to ``folder``. An old entry there (stale or damaged) is moved
    aside first; if another process installed a fresh one meanwhile, ours is dropped."""
    for _ in range(3):
        try:
            os.rename(tmp, folder)           # atomic; fails if folder exists and is not empty
            return
        except OSError:
            if not folder.exists():
                continue
        try:   # a complete, valid entry for the same bytes (a concurrent build won): keep it
            if _same_source(folder, tmp):
                shutil.rmtree(tmp, ignore_errors=True)
                return
        except (CacheDamaged, OSError, ValueError, KeyError):
            pass
        old = Path(tempfile.mkdtemp(prefix=".old-", dir=folder.parent))
        try:
            os.rename(folder, old / "entry")
        except FileNotFoundError:
            pass
        shutil.rmtree(old, ignore_errors=True)
    os.rename(tmp, folder)                   # third time unlucky: let the OSError say why


def _same_source(folder: Path, tmp: Path) -> bool:
    """Is the installed entry intact and made from the same source bytes as the one in ``tmp``?"""
    index = _read_index(folder)
    _check_data(folder, index)
    a, b = index["source"], _read_index(tmp)["source"]
    return (a["size"], a["sha256"]) == (b["size"], b["sha256"])


def _mb(params: dict) -> int:
    return round(sum(int(np.asarray(w).nbytes) for w in params.values()) / 1e6)


def _unlink(p) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
