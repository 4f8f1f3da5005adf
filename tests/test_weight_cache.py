"""The dequantized-weight cache (llama_np/weights/cache.py) on tiny GGUF files written here.

Build, hit (the GGUF reader is not opened again), the fused layout (``fuse`` stacks views of the
mapped file), damage of every kind (truncated data, overwritten data, garbage index) rebuilt with
a one-line note, key invalidation (size, mtime + sha256), atomic writes and two processes
building at once. The size threshold is lowered so that tiny files are cached.
"""
from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest

pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

from llama_np.model import fuse  # noqa: E402
from llama_np.weights import cache, gguf as gguf_loader  # noqa: E402
from course.fixtures.tiny.configs import config, make_weights  # noqa: E402
from tests.test_gguf import write_gguf  # noqa: E402

TINY = "llama3_gqa"


@pytest.fixture
def model(tmp_path, monkeypatch):
    """A Q8_0 tiny Llama as GGUF, an empty cache folder, and caching on for small files."""
    monkeypatch.setenv("LLAMA_NP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAMA_NP_WEIGHT_CACHE", raising=False)
    monkeypatch.delenv("LLAMA_NP_QUIET", raising=False)
    monkeypatch.setattr(cache, "MIN_SOURCE_BYTES", 0)
    cfg = config(TINY)
    return write_gguf(tmp_path / "tiny.gguf", cfg, make_weights(TINY), qtype=Q.Q8_0)


def load(path):
    cfg, params, _ = gguf_loader.load(path, tokenizer=False, progress=True)
    return cfg, params


def no_reader(monkeypatch):
    """Make opening the GGUF a test failure: a cache hit must not need it."""
    def fail(*a, **k):
        raise AssertionError("the GGUF file was read again")
    monkeypatch.setattr(gguf_loader, "read", fail)


def mapped(a: np.ndarray) -> bool:
    import mmap
    while a is not None and not isinstance(a, mmap.mmap):
        a = getattr(a, "base", None) if not isinstance(a, memoryview) else a.obj
    return a is not None


def same(p, q) -> None:
    assert p.keys() == q.keys()
    for k in p:
        np.testing.assert_array_equal(p[k], q[k], err_msg=k)


def test_build_then_hit(model, monkeypatch, capsys):
    cfg, first = load(model)
    folder = cache.entry_dir(model)
    assert (folder / "index").is_file() and (folder / "weights.f32").is_file()
    assert "cached the dequantized weights" in capsys.readouterr().err
    no_reader(monkeypatch)
    cfg2, again = load(model)
    assert cfg2 == cfg
    same(first, again)
    assert all(mapped(w) for w in again.values())
    assert capsys.readouterr().err == ""                # a hit says nothing
    # no temporary folders left beside the entry
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_tied_model(model, monkeypatch):
    cfg = config("tied")
    path = write_gguf(model.parent / "tied.gguf", cfg, make_weights("tied"))
    cfg1, first = load(path)
    assert cfg1.tie_embeddings and "output" not in first
    no_reader(monkeypatch)
    cfg2, again = load(path)
    assert cfg2 == cfg1
    same(first, again)


def test_quiet_when_progress_is_off(model, capsys):
    gguf_loader.load(model, tokenizer=False, progress=False)
    assert capsys.readouterr().err == ""


def test_fuse_stacks_views_of_the_mapped_file(model):
    load(model)
    cfg, params = load(model)
    wq, wk, wv = (np.array(params[f"layers.0.{n}"]) for n in ("wq", "wk", "wv"))
    fused = fuse(dict(params), cfg)
    wqkv = fused["layers.0.wqkv"]
    assert np.shares_memory(wqkv, params["layers.0.wq"])      # no copy was made
    np.testing.assert_array_equal(wqkv, np.concatenate([wq, wk, wv]))
    np.testing.assert_array_equal(fused["layers.0.w13"],
                                  np.concatenate([params["layers.0.w1"], params["layers.0.w3"]]))


def test_writing_a_weight_does_not_change_the_cache(model):
    load(model)
    _, params = load(model)
    before = params["norm"].copy()
    params["norm"][:] = 0                   # copy-on-write: this process only
    _, again = load(model)
    np.testing.assert_array_equal(again["norm"], before)


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "index", "empty index", "no data"])
def test_damaged_entry_is_rebuilt_with_a_note(model, monkeypatch, capsys, damage):
    _, good = load(model)
    folder = cache.entry_dir(model)
    data, index = folder / "weights.f32", folder / "index"
    if damage == "truncate":
        os.truncate(data, data.stat().st_size // 2)
    elif damage == "overwrite":
        with open(data, "r+b") as f:
            f.write(b"\xff" * 64)
    elif damage == "index":
        index.write_bytes(index.read_bytes()[:-10] + b"0123456789")
    elif damage == "empty index":
        index.write_bytes(b"")
    else:
        data.unlink()
    capsys.readouterr()
    _, rebuilt = load(model)
    err = capsys.readouterr().err
    same(good, rebuilt)
    notes = [line for line in err.splitlines() if " is damaged (" in line]
    assert len(notes) == 1 and "rebuilding" in notes[0], err
    assert "Traceback" not in err
    no_reader(monkeypatch)                  # and the new entry is good
    _, again = load(model)
    same(good, again)


def test_touched_source_keeps_its_entry(model, monkeypatch):
    _, good = load(model)
    st = os.stat(model)
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # same bytes, new time
    no_reader(monkeypatch)
    _, again = load(model)
    same(good, again)
    assert cache._read_index(cache.entry_dir(model))["source"]["mtime_ns"] == st.st_mtime_ns + 10**9


@pytest.mark.parametrize("same_size", [True, False])
def test_changed_source_is_dequantized_again(model, capsys, same_size):
    load(model)
    cfg = config(TINY)
    other = {k: v * 1.5 for k, v in make_weights(TINY).items()}
    st = os.stat(model)
    write_gguf(model, cfg, other, qtype=Q.Q8_0 if same_size else Q.F32)
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # whatever the clock's resolution
    capsys.readouterr()
    _, params = load(model)
    assert "changed since it was cached" in capsys.readouterr().err
    fresh = gguf_loader.read(os.fspath(model), progress=False)[2]
    same(fresh, params)


def test_failed_write_leaves_nothing(model, monkeypatch, capsys):
    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(cache, "_write_index", disk_full)
    _, params = load(model)                  # still loads, uncached
    assert "could not cache" in capsys.readouterr().err
    assert list(cache.entry_dir(model).parent.iterdir()) == []
    assert params["norm"].shape == (config(TINY).dim,)


def test_switched_off(model, monkeypatch):
    monkeypatch.setenv("LLAMA_NP_WEIGHT_CACHE", "0")
    load(model)
    assert not cache.entry_dir(model).exists()


def _build(path, queue):
    try:
        queue.put(gguf_loader.load(path, tokenizer=False, progress=False)[1]["norm"].tolist())
    except BaseException as e:  # reported to the test, not lost in a child
        queue.put(repr(e))


def test_two_processes_building_at_once(model):
    ctx = multiprocessing.get_context("fork")     # children inherit the lowered threshold
    q = ctx.Queue()
    procs = [ctx.Process(target=_build, args=(model, q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=120)
    assert all(isinstance(r, list) for r in results), results
    assert results[0] == results[1]
    folder = cache.entry_dir(model)
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]   # one entry, no leftovers
    index = cache._read_index(folder)
    cache._check_data(folder, index)


def test_stacked_view_only_joins_views_of_one_buffer():
    from llama_np.linear import stacked_view
    buf = np.arange(24, dtype=np.float32).reshape(6, 4)
    a, b = buf[:2], buf[2:5]
    v = stacked_view([a, b])
    assert v is not None and np.shares_memory(v, buf) and v.shape == (5, 4)
    np.testing.assert_array_equal(v, buf[:5])
    assert stacked_view([b, a]) is None                        # not in this order in memory
    assert stacked_view([buf[:2], buf[3:5]]) is None           # a gap between them
    assert stacked_view([a.copy(), b.copy()]) is None          # separate allocations: never joined
