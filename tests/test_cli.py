"""``python -m llama_np`` as a user runs it: in a subprocess, reading stdout, stderr and the exit code.

Expected outputs come from elsewhere: token ids and logits from transformers (the committed
SmolLM2 and tiny-model fixtures), "Paris" from the model's known greedy answer. Bad input must
give one line on stderr, exit code 1 (2 for a malformed command line) and no traceback.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from course.fixtures.smollm2 import make_fixtures as smol
from course.fixtures.tiny.configs import config, make_weights
from course.fixtures.tiny.make_fixtures import HERE as TINY
from tests.test_gguf import write_gguf

ROOT = Path(__file__).resolve().parents[1]


def run(*args, stdin=None, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "llama_np", *map(str, args)], input=stdin, text=True,
                          capture_output=True, env=env, cwd=ROOT, timeout=timeout)


def one_line_error(p, code=1):
    assert p.returncode == code, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("dequantizing")]
    assert len(lines) == 1 and lines[0].startswith("llama_np: error: "), p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def smollm2():
    from llama_np.assets import AssetError, fetch
    try:
        return fetch(smol.ASSET)
    except AssetError as e:
        pytest.skip(f"SmolLM2 not available: {e}")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "llama3_gqa.gguf"
    return write_gguf(path, config("llama3_gqa"), make_weights("llama3_gqa"))


# ------------------------------------------------------------------------- happy paths
def test_generate_says_paris(smollm2):
    p = run("generate", "The capital of France is", "--temperature", "0", "--max-new-tokens", "16")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("The capital of France is") and "Paris" in p.stdout
    assert "tok/s" in p.stderr.splitlines()[-1]


def test_tokenize_text_and_json_lines_match_transformers(smollm2):
    fx = smol.load()
    p = run("tokenize", "--tokenizer", smollm2, "The capital of France is")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == fx["p0_ids"].tolist()
    n = int(fx["n_prompts"])
    lines = "".join(json.dumps(str(fx[f"p{i}_text"])) + "\n" for i in range(n))
    p = run("tokenize", "--tokenizer", smollm2, "--allow-special", stdin=lines)
    assert p.returncode == 0, p.stderr
    out = [json.loads(ln) for ln in p.stdout.splitlines()]
    assert out == [fx[f"p{i}_ids"].tolist() for i in range(n)]


def test_tokenize_bos_eos(smollm2):
    p = run("tokenize", "--tokenizer", smollm2, "--bos", "--eos", "hi")
    ids = json.loads(p.stdout)
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) == 3   # SmolLM2: BOS 1, EOS 2 (docs/design.md §3)


def test_logits_ids_match_transformers(tiny_gguf, tmp_path):
    fx = np.load(TINY / "llama3_gqa.npz")
    out = tmp_path / "l.npy"
    p = run("logits", "--model", tiny_gguf, "--ids", ",".join(map(str, fx["ids"])), "--out", out)
    assert p.returncode == 0, p.stderr
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == fx["logits"].shape
    np.testing.assert_allclose(got, fx["logits"], atol=1e-4, rtol=0)  # as in test_model_reference
    assert [f.name for f in tmp_path.iterdir()] == ["l.npy"]           # no temporary file left


def test_logits_prompt_matches_transformers(smollm2, tmp_path):
    fx = smol.load()
    out = tmp_path / "p.npy"
    p = run("logits", "--prompt", str(fx["p0_text"]), "--out", out)
    assert p.returncode == 0, p.stderr
    got = np.load(out)
    T = len(fx["p0_ids"])                                      # no BOS: SmolLM2's add_bos_token is False
    assert got.shape == (T, 49152)
    top = fx["p0_top_ids"][:T]
    # Same 1e-3 and reason as tests/test_smollm2_reference.py.
    np.testing.assert_allclose(np.take_along_axis(got, top, -1), fx["p0_top_logits"][:T], atol=1e-3, rtol=0)


def test_no_command_is_usage():
    p = run()
    assert p.returncode == 2 and "usage" in p.stderr


# --------------------------------------------------------------------------- bad input
def test_bad_model_path(tmp_path):
    line = one_line_error(run("generate", "hi", "--model", tmp_path / "nowhere" / "m.gguf"))
    assert "no model at" in line


def test_truncated_gguf(smollm2, tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(smollm2, "rb") as f:
        cut.write_bytes(f.read(20_000_000))
    line = one_line_error(run("generate", "hi", "--model", cut))
    assert "truncated or corrupt" in line


def test_unknown_asset_name():
    line = one_line_error(run("generate", "hi", "--model", "gpt-5"))
    assert "smollm2-135m-instruct" in line


@pytest.mark.parametrize("args,words", [(["--top-p", "2"], "top_p"), (["--max-new-tokens", "-3"], "max_new_tokens"),
                                        (["--temperature", "-1"], "temperature"), (["--top-k", "-2"], "top_k")])
def test_bad_sampling_arguments(args, words):
    assert words in one_line_error(run("generate", "hi", *args))


def test_malformed_command_line_is_usage():
    p = run("generate", "hi", "--top-k", "lots")
    assert p.returncode == 2 and "usage" in p.stderr and "Traceback" not in p.stderr


def test_prompt_longer_than_context(smollm2):
    line = one_line_error(run("generate", "hello " * 8300, "--max-new-tokens", "1"))
    assert "context of 8192" in line


def test_gpu_without_gpu():
    from llama_np.backend import DeviceError, use
    try:
        use("gpu")
        pytest.skip("a GPU is available here")
    except DeviceError:
        pass
    finally:
        use("cpu")
    assert "gpu" in one_line_error(run("generate", "hi", "--device", "gpu")).lower()


def test_cpu_allocator_keeps_freed_memory():
    """On Linux/glibc, use("cpu") asks malloc to reuse freed blocks (backend.reuse_freed_memory)."""
    import platform

    from llama_np.backend import reuse_freed_memory
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert reuse_freed_memory() is glibc


def test_logits_errors_leave_nothing(tiny_gguf, tmp_path):
    out = tmp_path / "x.npy"
    assert "outside the vocabulary" in one_line_error(run("logits", "--model", tiny_gguf, "--ids", "1,99999", "--out", out))
    assert "comma-separated" in one_line_error(run("logits", "--model", tiny_gguf, "--ids", "1,a", "--out", out))
    assert "folder does not exist" in one_line_error(
        run("logits", "--model", tiny_gguf, "--ids", "1,2", "--out", tmp_path / "no" / "x.npy"))
    assert "no tokenizer" in one_line_error(run("logits", "--model", tiny_gguf, "--prompt", "hi", "--out", out))
    assert list(tmp_path.iterdir()) == []


def test_tokenize_errors(tmp_path):
    assert "not found" in one_line_error(run("tokenize", "--tokenizer", tmp_path / "none.model", "hi"))
    bad = tmp_path / "bad.model"
    bad.write_text("this is not a tokenizer\n")
    one_line_error(run("tokenize", "--tokenizer", bad, "hi"))


def test_tokenize_bad_json_lines(smollm2):
    assert "line 2" in one_line_error(run("tokenize", "--tokenizer", smollm2, stdin='"ok"\nnot json\n'))


# --------------------------------------------------------------- verify and bench, in process
def test_verify_is_delegated(monkeypatch):
    from llama_np import cli
    seen = {}
    monkeypatch.setattr("llama_np.verify.cli_verify", lambda args: seen.setdefault("args", args) and 0)
    assert cli.main(["verify", "--model", "m.gguf", "--reference", "r.npz", "--prompt", "a", "--prompt", "b",
                     "--tolerance", "0.01"]) == 0
    a = seen["args"]
    assert (a.model, a.reference, a.prompt, a.tolerance) == ("m.gguf", "r.npz", ["a", "b"], 0.01)


def test_bench_runs(tiny_gguf, capsys):
    from llama_np import cli
    assert cli.main(["bench", "--model", str(tiny_gguf), "--prompt-tokens", "8", "--new-tokens", "4",
                     "--repeats", "1", "--no-peers"]) == 0
    out = capsys.readouterr().out
    assert "llama_np (numpy float32)" in out and "bandwidth limit" in out and "% of the bandwidth limit" in out
