"""``python -m llama_np`` as a user runs it: in a subprocess, reading stdout, stderr and the exit code.

Expected outputs come from elsewhere: token ids and logits from transformers (the committed
SmolLM2 and tiny-model fixtures), "Paris" from the model's known greedy answer. Bad input must
give one line on stderr, exit code 1 (2 for a bad command line, found before anything loads)
and no traceback.
"""
from __future__ import annotations

import json
import os
import re
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
    line = one_line_error(run("generate", "hi", "--model", tmp_path / "nowhere" / "m.gguf"), code=2)
    assert "--model: no model at" in line


def test_truncated_gguf(smollm2, tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(smollm2, "rb") as f:
        cut.write_bytes(f.read(20_000_000))
    line = one_line_error(run("generate", "hi", "--model", cut))
    assert "truncated or corrupt" in line


def test_unknown_asset_name():
    line = one_line_error(run("generate", "hi", "--model", "gpt-5"), code=2)
    assert "smollm2-135m-instruct" in line


def test_malformed_command_line_is_one_line():
    line = one_line_error(run("generate", "hi", "--top-k", "lots"), code=2)
    assert "argument --top-k: expected a whole number" in line and "--help" in line


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
    assert "comma-separated" in one_line_error(run("logits", "--model", tiny_gguf, "--ids", "1,a", "--out", out),
                                               code=2)
    assert "folder does not exist" in one_line_error(
        run("logits", "--model", tiny_gguf, "--ids", "1,2", "--out", tmp_path / "no" / "x.npy"))
    assert "no tokenizer" in one_line_error(run("logits", "--model", tiny_gguf, "--prompt", "hi", "--out", out))
    assert list(tmp_path.iterdir()) == []


def test_tokenize_errors(tmp_path):
    assert "not found" in one_line_error(run("tokenize", "--tokenizer", tmp_path / "none.model", "hi"), code=2)
    bad = tmp_path / "bad.model"
    bad.write_text("this is not a tokenizer\n")
    one_line_error(run("tokenize", "--tokenizer", bad, "hi"))


def test_tokenize_bad_json_lines(smollm2):
    assert "line 2" in one_line_error(run("tokenize", "--tokenizer", smollm2, stdin='"ok"\nnot json\n'))


# --------------------------------------------------------------- verify and bench, in process
def test_verify_is_delegated(monkeypatch, tmp_path):
    from llama_np import cli
    seen = {}
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")                      # only checked to exist before verify is called
    monkeypatch.setattr("llama_np.verify.cli_verify", lambda args: seen.setdefault("args", args) and 0)
    assert cli.main(["verify", "--model", str(model), "--reference", "r.npz", "--prompt", "a", "--prompt", "b",
                     "--tolerance", "0.01"]) == 0
    a = seen["args"]
    assert (a.model, a.reference, a.prompt, a.tolerance) == (str(model), "r.npz", ["a", "b"], 0.01)


def test_bench_runs(tiny_gguf, capsys):
    from llama_np import cli
    assert cli.main(["bench", "--model", str(tiny_gguf), "--prompt-tokens", "8", "--new-tokens", "4",
                     "--repeats", "1", "--no-peers"]) == 0
    out = capsys.readouterr().out
    assert "llama_np (numpy float32)" in out and "bandwidth limit" in out and "% of the bandwidth limit" in out


# ------------------------------------------------- arguments checked before anything loads
@pytest.fixture
def no_loading(monkeypatch):
    """Any model load fails the test: every check below must come first."""
    from llama_np import cli

    def loader(*a, **kw):
        raise AssertionError("the model was loaded before the arguments were checked")
    monkeypatch.setattr(cli, "_load", loader)
    return cli


def main_code(cli, argv, capsys):
    """cli.main as the shell sees it: (exit code, stderr)."""
    try:
        code = cli.main(argv)
    except SystemExit as e:          # argparse leaves through sys.exit
        code = e.code
    return code, capsys.readouterr().err


BAD = [(["--seed", "-1"], "--seed"), (["--temperature", "-1"], "--temperature"),
       (["--temperature", "nan"], "--temperature"), (["--top-k", "-2"], "--top-k"),
       (["--top-p", "0"], "--top-p"), (["--top-p", "1.5"], "--top-p"), (["--min-p", "-0.1"], "--min-p"),
       (["--min-p", "2"], "--min-p"), (["--repetition-penalty", "0"], "--repetition-penalty"),
       (["--repetition-penalty", "-1.2"], "--repetition-penalty"), (["--max-new-tokens", "-5"], "--max-new-tokens"),
       (["--max-new-tokens", "1.5"], "--max-new-tokens"), (["--device", "tpu"], "--device"),
       (["--model", "/no/such/model.gguf"], "--model"), (["--model", "gpt-5"], "--model")]


@pytest.mark.parametrize("command", ["generate", "chat"])
@pytest.mark.parametrize("args,flag", BAD)
def test_bad_flags_are_one_line_naming_the_flag(no_loading, capsys, command, args, flag):
    prompt = ["hi"] if command == "generate" else []
    code, err = main_code(no_loading, [command, *prompt, *args], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("llama_np: error: "), err
    assert flag in lines[0] and "max_new_tokens" not in lines[0]     # the flag, never the Python name


@pytest.mark.parametrize("argv,words", [
    (["generate", ""], "PROMPT is empty"), (["generate", "  \n"], "PROMPT is empty"),
    (["logits", "--prompt", "", "--out", "x.npy"], "--prompt is empty"),
    (["logits", "--ids", "1,-2", "--out", "x.npy"], "--ids"), (["logits", "--ids", ",", "--out", "x.npy"], "--ids"),
    (["logits", "--ids", "1", "--out", "x.txt"], "--out"), (["verify"], "--model"),
    (["verify", "--model", "/no/such/dir"], "--model"), (["verify", "--model", "m.gguf", "--tolerance", "-1"], "--tolerance"),
    (["bench", "--new-tokens", "0"], "--new-tokens"), (["chat", "--max-new-tokens", "0"], "--max-new-tokens"), (["tokenize", "--tokenizer", "/no/such.model", "hi"], "--tokenizer"),
])
def test_other_bad_command_lines(no_loading, capsys, argv, words):
    code, err = main_code(no_loading, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and words in lines[0], err


def test_empty_piped_prompt(no_loading, capsys, monkeypatch):
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    code, err = main_code(no_loading, ["generate"], capsys)
    assert code == 2 and "PROMPT is empty" in err


def test_every_option_has_help():
    from llama_np.cli import build_parser
    ap = build_parser()
    sub = next(a for a in ap._actions if a.choices and isinstance(a.choices, dict))
    parsers = {"": ap, **sub.choices}
    missing = [f"{name} {a.option_strings or a.dest}" for name, p in parsers.items() for a in p._actions
               if not (a.help and a.help.strip())]
    assert not missing, f"options without help text: {missing}"
    assert set(sub.choices) >= {"generate", "chat", "tokenize", "logits", "verify", "bench"}


def test_help_says_what_is_required():
    """verify's --model is required, and its help must not promise a default."""
    p = run("verify", "--help")
    assert p.returncode == 0 and "required" in p.stdout and "default: smollm2" not in p.stdout
    p = run("generate", "--help")
    assert "final newline" in " ".join(p.stdout.split())


# ------------------------------------------------------ generate on a tiny model, in process
@pytest.fixture
def tiny_chat_model(monkeypatch):
    """cli._load returns the tiny random Llama with a byte tokenizer of tests/test_chat.py."""
    from llama_np import cli
    from tests.test_chat import CFG, PARAMS, TOK
    calls = []

    def load(model, device="cpu"):
        calls.append(model)
        return CFG, PARAMS, TOK
    monkeypatch.setattr(cli, "_load", load)
    return cli, calls


def test_max_new_tokens_zero(tiny_chat_model, capsys):
    cli, _ = tiny_chat_model
    assert cli.main(["generate", "hello", "--max-new-tokens", "0"]) == 0
    out, err = capsys.readouterr()
    assert out == "hello\n"
    assert err.strip() == "llama_np: prompt 5 tokens; generated 0 tokens (length)"


def test_past_the_context_is_said_up_front(tiny_chat_model, capsys):
    cli, _ = tiny_chat_model
    assert cli.main(["generate", "hello", "--max-new-tokens", "1000", "--temperature", "1", "--seed", "0"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("llama_np: note: the prompt (5 tokens) + --max-new-tokens 1000 exceed the context of "
                      "256 tokens: generating at most 251")
    assert "nan" not in err[-1]


def test_piped_prompt_loses_its_final_newline(tiny_chat_model, capsys, monkeypatch):
    import io

    from llama_np import generate as gen
    cli, _ = tiny_chat_model
    seen, real = [], gen.generate
    monkeypatch.setattr(gen, "generate", lambda p, c, t, ids, **kw: seen.append(ids) or real(p, c, t, ids, **kw))
    assert cli.main(["generate", "The capital of France is", "--max-new-tokens", "1"]) == 0
    for piped in ["The capital of France is\n", "The capital of France is\r\n"]:
        monkeypatch.setattr("sys.stdin", io.StringIO(piped))
        assert cli.main(["generate", "--max-new-tokens", "1"]) == 0
    assert seen[0] == seen[1] == seen[2]
    monkeypatch.setattr("sys.stdin", io.StringIO("two lines\n\n"))   # only the last newline goes
    assert cli.main(["generate", "--max-new-tokens", "1"]) == 0
    assert seen[3] == list(b"two lines\n")


def test_truncated_tiny_gguf_is_our_message(tiny_gguf, tmp_path):
    data = Path(tiny_gguf).read_bytes()
    for cut in (10, 200, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        line = one_line_error(run("logits", "--model", path, "--ids", "1,2", "--out", tmp_path / "x.npy"))
        assert "truncated or corrupt" in line and f"{cut:,} bytes" in line
        for numpy_words in ("array", "axis", "dtype", "unpack", "shape"):
            assert numpy_words not in line, line


# ------------------------------------------------------------------------------ Ctrl-C
@pytest.mark.slow
def test_ctrl_c_exits_130_with_statistics(smollm2):
    """SIGINT after the first generated text appears: exit 130 and the statistics so far."""
    import signal
    import time
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    prompt = "Once upon a time"
    p = subprocess.Popen([sys.executable, "-m", "llama_np", "generate", prompt, "--temperature", "0",
                          "--repetition-penalty", "1.3", "--max-new-tokens", "200"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT,
                         # A shell without job control starts background jobs with SIGINT ignored,
                         # and Python keeps it so; a terminal's Ctrl-C is never ignored.
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        out = b""
        while len(out) <= len(prompt):                       # the prompt, then the first token
            chunk = os.read(p.stdout.fileno(), 100)
            assert chunk, p.stderr.read().decode()
            out += chunk
        time.sleep(0.5)                                      # a few more tokens (not a threshold)
        p.send_signal(signal.SIGINT)
        rest, err = p.communicate(timeout=300)
    finally:
        p.kill()
    assert p.returncode == 130, err.decode()
    last = err.decode().strip().splitlines()[-1]
    assert "Traceback" not in err.decode()
    m = re.match(r"llama_np: prompt \d+ tokens: [\d.]+ tok/s; generated (\d+) tokens.*\(interrupted\)$", last)
    assert m and 1 <= int(m.group(1)) < 200, last


# ---------------------------------------------------------------------- the README's commands
def readme_commands():
    """Every `python -m llama_np ...` line in the README's ```bash blocks."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip().startswith("python -m llama_np")]


def skip_reason(cmd: str) -> str | None:
    if "--device gpu" in cmd:
        return "needs a GPU"
    if "/path/to" in cmd:
        return "needs a real checkpoint the user downloads"
    return None


def test_readme_has_the_commands():
    cmds = readme_commands()
    assert any(c.split()[3] == "chat" for c in cmds if len(c.split()) > 3)
    assert len(cmds) >= 6


@pytest.mark.slow
@pytest.mark.parametrize("cmd", readme_commands())
def test_readme_command_runs_on_a_fresh_home(cmd, smollm2, tmp_path):
    """As a new user: an empty HOME (the cache is pointed at the warm one, so nothing is fetched
    again), run in an empty folder, the chat one with two piped turns."""
    import shlex
    if skip_reason(cmd):
        pytest.skip(skip_reason(cmd))
    from llama_np.assets import cache_dir
    args = [os.path.expanduser(a) if a.startswith("~") else a for a in shlex.split(cmd)[3:]]
    args = [a.replace(os.path.expanduser("~"), str(tmp_path / "home")) for a in args]   # ~ is the fresh home
    (tmp_path / "home").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path / "home"),
           "LLAMA_NP_CACHE": str(cache_dir())}
    if args[0] in ("generate", "chat"):
        args += ["--max-new-tokens", "8"]                    # the same command, shorter answers
    if args[0] == "bench":
        args += ["--prompt-tokens", "16", "--new-tokens", "4", "--repeats", "1", "--no-peers"]
    stdin = "Hello!\nAnd again?\n" if args[0] == "chat" else None
    p = subprocess.run([sys.executable, "-m", "llama_np", *args], input=stdin, text=True, capture_output=True,
                       env=env, cwd=tmp_path, timeout=900)
    assert p.returncode == 0, (cmd, p.stderr)
    assert "Traceback" not in p.stderr
