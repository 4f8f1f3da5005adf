"""``python -m llama_np bench`` on a tiny GGUF: the table, the first-token rows, the child timer.

No timing is asserted (the machine is shared): only what is printed and which commands run.
The llama.cpp peer is covered by its own test when llama-cpp-python is installed.
"""
from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("gguf")
from course.fixtures.tiny.configs import config, make_weights  # noqa: E402
from tests.test_gguf import write_gguf  # noqa: E402


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "llama3_gqa.gguf"
    return write_gguf(path, config("llama3_gqa"), make_weights("llama3_gqa"))


def test_bench_reports_time_to_first_token(tiny_gguf, capsys, monkeypatch):
    """The first-token rows with the timer replaced: which commands run, in what cache, printed how."""
    from llama_np import bench, cli
    from llama_np.weights import gguf as gguf_loader
    calls = []
    real_load = gguf_loader.load
    # the tiny file has no tokenizer; pretend it has one, so that bench times `generate` on it
    monkeypatch.setattr(gguf_loader, "load", lambda *a, **k: real_load(*a, **k)[:2] + (object(),))

    def timer(cmd, env=None, echo=""):
        calls.append((cmd, (env or {}).get("LLAMA_NP_CACHE")))
        return 0.5 * len(calls)
    monkeypatch.setattr(bench, "first_output_time", timer)
    assert cli.main(["bench", "--model", str(tiny_gguf), "--prompt-tokens", "8", "--new-tokens", "4",
                     "--repeats", "1", "--no-peers", "--ttft-runs", "3"]) == 0
    out = capsys.readouterr().out
    assert "llama_np (numpy float32)" in out and "llama.cpp: skipped (--no-peers)" in out
    assert "time to first token, each in a new process" in out
    assert "llama_np generate, weight cache empty      0.50 s  dequantizes, writes the cache" in out
    assert "llama_np generate, weight cache filled     1.50 s  memory-mapped; median of 3, best 1.00 s" in out
    assert len(calls) == 4 and all(c[0][1:4] == ["-m", "llama_np", "generate"] for c in calls)
    assert all(str(tiny_gguf) in c[0] for c in calls)
    caches = {c[1] for c in calls}
    assert len(caches) == 1 and not os.path.exists(caches.pop())   # one fresh cache, removed after


def test_bench_skips_first_token_without_a_tokenizer(tiny_gguf, capsys, monkeypatch):
    from llama_np import bench, cli
    monkeypatch.setattr(bench, "first_output_time", lambda *a, **k: pytest.fail("should not run"))
    assert cli.main(["bench", "--model", str(tiny_gguf), "--prompt-tokens", "8", "--new-tokens", "4",
                     "--repeats", "1", "--no-peers"]) == 0
    assert "time to first token: skipped (the model file carries no tokenizer" in capsys.readouterr().out


def test_bench_without_first_token_timing(tiny_gguf, capsys, monkeypatch):
    from llama_np import bench, cli
    monkeypatch.setattr(bench, "first_output_time", lambda *a, **k: pytest.fail("should not run"))
    assert cli.main(["bench", "--model", str(tiny_gguf), "--prompt-tokens", "8", "--new-tokens", "4",
                     "--repeats", "1", "--no-peers", "--ttft-runs", "0"]) == 0
    assert "time to first token" not in capsys.readouterr().out


def test_first_output_time_skips_the_echoed_prompt():
    from llama_np.bench import first_output_time
    child = ("import sys, time; sys.stdout.write('The prompt'); sys.stdout.flush(); "
             "time.sleep(0.3); sys.stdout.write(' token'); sys.stdout.flush()")
    # the token is written after the sleep, so its time cannot be less (the echo's could)
    assert first_output_time([sys.executable, "-c", child], echo="The prompt") >= 0.3
    with pytest.raises(RuntimeError, match="boom"):
        first_output_time([sys.executable, "-c", "import sys; sys.exit('boom')"])


def test_llamacpp_peer_on_the_same_weights(tmp_path, monkeypatch):
    """llama.cpp's F32 conversion of the tiny model, cached, and its greedy step agrees with ours."""
    pytest.importorskip("llama_cpp")
    import numpy as np

    from llama_np import bench
    from llama_np.model import fuse, nest
    from llama_np.weights import load_model
    import gguf

    class NoVocab(gguf.GGUFWriter):   # llama.cpp loads a model without a tokenizer if it says so
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.add_string("tokenizer.ggml.model", "no_vocab")
    monkeypatch.setattr(gguf, "GGUFWriter", NoVocab)
    path = write_gguf(tmp_path / "tiny.gguf", config("llama3_gqa"), make_weights("llama3_gqa"))
    monkeypatch.setenv("LLAMA_NP_CACHE", str(tmp_path / "cache"))
    f32, why = bench.llamacpp_f32(path)
    assert why is None and f32.is_file()
    assert bench.llamacpp_f32(path)[0] == f32               # made once
    cfg, flat, _ = load_model(path, progress=False, tokenizer=False)
    ids = list(range(3, 11))
    ours, cpp = bench.NumpyRunner(nest(fuse(flat, cfg), cfg), cfg, 16), bench.LlamaCppRunner(f32, 1, 16)
    for r in (ours, cpp):
        r.prefill(ids)
        r.step()
    assert (ours.tok, ours.pos) == (cpp.tok, 9), "greedy tokens differ"
    assert np.isfinite(cpp.step())
