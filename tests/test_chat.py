"""The chat REPL: history trimming (a pure function), the prompt each turn sends, the commands,
and the REPL in a real terminal (a pty) and through a pipe with the default model.

Fast tests use a tiny random Llama with a byte-level ChatML tokenizer; what they check is the
bookkeeping (which tokens go in), not the model's answers. The slow ones run
``python -m llama_np chat`` on SmolLM2-135M-Instruct as a user would.
"""
from __future__ import annotations

import io
import os
import re
import select
import sys
import time
from pathlib import Path

import pytest

from llama_np import ModelConfig, random_params
from llama_np.chat import Chat, repl, trim_history
from llama_np.tokenizer.base import Tokenizer
from llama_np.tokenizer.chat import encode_chat

ROOT = Path(__file__).resolve().parents[1]
CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=259, hidden_dim=64, max_seq_len=256)
PARAMS = random_params(CFG, seed=0, std=0.3)


class ByteChatML(Tokenizer):
    """Ids 0-255 are bytes; 256-258 are ChatML's specials (the last two stop generation)."""
    vocab_size, eos_id, add_bos, chat_format = 259, 258, False, "chatml"
    special_tokens = {"<|im_start|>": 256, "<|im_end|>": 257, "<|endoftext|>": 258}
    stop_ids = {257, 258}

    def encode(self, text, bos=False, eos=False, allowed_special="none"):
        return list(text.encode())

    def id_to_bytes(self, i):
        names = {v: k for k, v in self.special_tokens.items()}
        return names[i].encode() if i in names else bytes([i])


TOK = ByteChatML()


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# --------------------------------------------------------------------------- trimming
def chars(messages):
    return sum(len(m["content"]) for m in messages)


def test_trim_keeps_what_fits():
    msgs = [user("aaaa"), assistant("bb"), user("c")]
    assert trim_history(msgs, chars, 7) == (msgs, 0)


def test_trim_drops_oldest_exchanges_first():
    msgs = [user("aaaa"), assistant("bb"), user("cc"), assistant("dd"), user("e")]
    assert trim_history(msgs, chars, 6) == (msgs[2:], 2)    # 5 chars left: fits
    assert trim_history(msgs, chars, 4) == (msgs[4:], 4)    # only the newest message fits


def test_trim_keeps_the_system_prompt():
    msgs = [{"role": "system", "content": "sys"}, user("aaaa"), assistant("bb"), user("c")]
    kept, dropped = trim_history(msgs, chars, 5)
    assert kept == [msgs[0], msgs[3]] and dropped == 2


def test_trim_message_too_long():
    with pytest.raises(ValueError, match="too long"):
        trim_history([{"role": "system", "content": "sys"}, user("x" * 10)], chars, 8)


# ------------------------------------------------------------------ what each turn sends
def spy(monkeypatch):
    """Record the prompt ids of every generate() call the chat makes."""
    import llama_np.chat as chat_mod
    prompts, real = [], chat_mod.generate

    def recording(params, cfg, tok, ids, *a, **kw):
        prompts.append(list(ids))
        return real(params, cfg, tok, ids, *a, **kw)
    monkeypatch.setattr(chat_mod, "generate", recording)
    return prompts


def test_second_turn_sends_the_first(monkeypatch):
    prompts = spy(monkeypatch)
    chat = Chat(PARAMS, CFG, TOK, max_new_tokens=8, seed=0, temperature=1.0)
    chat.ask("My name is Ada.")
    answer = chat.history[-1]["content"]
    chat.ask("What is my name?")
    want = encode_chat(TOK, [user("My name is Ada."), assistant(answer), user("What is my name?")])
    assert prompts[1] == want
    assert prompts[1][:len(prompts[0])] == prompts[0]        # the first turn, as it was sent
    assert b"My name is Ada." in bytes(i for i in prompts[1] if i < 256)


def test_system_prompt_reset_and_empty_system(monkeypatch):
    prompts = spy(monkeypatch)
    chat = Chat(PARAMS, CFG, TOK, system="Be brief.", max_new_tokens=4, seed=0)
    chat.ask("hi")
    assert prompts[0] == encode_chat(TOK, [{"role": "system", "content": "Be brief."}, user("hi")])
    chat.reset()
    chat.system = ""            # "" = no system prompt at all (not SmolLM2's default one)
    chat.ask("hi")
    assert prompts[1] == encode_chat(TOK, [user("hi")], default_system="")


def test_long_conversation_is_trimmed_and_says_so(monkeypatch):
    prompts = spy(monkeypatch)
    cfg = ModelConfig(**{**CFG.__dict__, "max_seq_len": 160})
    chat = Chat(PARAMS, cfg, TOK, system="", max_new_tokens=16, seed=1, temperature=1.0)
    told = []
    for k in range(6):
        chat.ask(f"message number {k}, which is long enough to fill", on_trim=told.append)
    assert told and all(n % 2 == 0 for n in told)            # whole exchanges
    assert all(len(p) <= 160 - 16 for p in prompts)          # room left for every answer
    assert chat.history[-1]["role"] == "assistant" and "number 5" in chat.history[-2]["content"]


# ---------------------------------------------------------------------------- the REPL
def run_repl(text, chat=None, stdout=None):
    chat = chat or Chat(PARAMS, CFG, TOK, max_new_tokens=4, seed=0)
    out, err = stdout or io.StringIO(), io.StringIO()
    code = repl(chat, io.StringIO(text), out, err, interactive=False)
    return code, chat, err.getvalue()


def test_repl_commands():
    code, chat, err = run_repl("hello\n\n/system Be kind.\nagain\n/bogus\n/reset\n/exit\nnever read\n")
    assert code == 0
    assert chat.history == [] and chat.system == "Be kind."
    assert len(chat.results) == 2                            # "hello" and "again"; the blank line is no turn
    lines = err.splitlines()
    assert sum("tok/s" in ln or "generated" in ln for ln in lines) == 2
    assert any("unknown command '/bogus'" in ln for ln in lines)
    assert any("conversation cleared" in ln for ln in lines)


def test_repl_end_of_input_is_exit():
    code, chat, _ = run_repl("one\ntwo")                    # no final newline: still a turn
    assert code == 0 and [m["content"] for m in chat.history[::2]] == ["one", "two"]


def test_repl_ctrl_c_while_piped_exits_130_with_statistics():
    class Interrupting(io.StringIO):
        pressed = False

        def write(self, s):                                 # Ctrl-C as the first piece arrives
            if not self.pressed:
                self.pressed = True
                raise KeyboardInterrupt
            return super().write(s)
    chat = Chat(PARAMS, CFG, TOK, max_new_tokens=8, seed=0, temperature=1.0)
    chat.tok = type("NoStop", (ByteChatML,), {"stop_ids": set(), "eos_id": None})()   # always streams
    code, chat, err = run_repl("hello\nnever answered\n", chat, Interrupting())
    assert code == 130 and "(interrupted)" in err.splitlines()[-1]
    assert len(chat.results) == 1


def test_repl_interactive_ctrl_c():
    """At a terminal, Ctrl-C during an answer stops that answer only; at the prompt it leaves (130)."""
    class Keys(io.StringIO):
        def readline(self):
            line = super().readline()
            if line == "^C\n":
                raise KeyboardInterrupt
            return line

    class Interrupting(io.StringIO):
        pieces = 0

        def write(self, s):
            self.pieces += s != "> "
            if self.pieces == 2:                                # during the first answer
                raise KeyboardInterrupt
            return super().write(s)
    chat = Chat(PARAMS, CFG, TOK, max_new_tokens=6, seed=0, temperature=1.0)
    chat.tok = type("NoStop", (ByteChatML,), {"stop_ids": set(), "eos_id": None})()
    out, err = Interrupting(), io.StringIO()
    code = repl(chat, Keys("first\nsecond\n^C\nnever\n"), out, err, interactive=True)
    assert code == 130
    first, second = chat.results                               # (a piece can hold several byte tokens)
    assert first.stop_reason == "interrupted" and len(first.ids) < 6 and len(second.ids) == 6
    n = len(first.ids) + 6
    assert err.getvalue().splitlines()[-1] == f"llama_np: interrupted: 2 answers, {n} tokens generated"
    assert out.getvalue().count("> ") == 3


# ---------------------------------------------------------- the real model, as a user runs it
@pytest.fixture(scope="module")
def smollm2():
    from llama_np.assets import AssetError, fetch
    try:
        return fetch("smollm2-135m-instruct")
    except AssetError as e:
        pytest.skip(f"SmolLM2 not available: {e}")


STATS = re.compile(r"llama_np: prompt (\d+) tokens.*generated (\d+) tokens")


def read_until(fd, buf: bytearray, pattern: bytes, count: int = 1, timeout: float = 600) -> None:
    """Read from fd into buf until ``pattern`` has appeared ``count`` times (the timeout is a
    safety net only; nothing here asserts on time)."""
    end = time.monotonic() + timeout
    while buf.count(pattern) < count:
        if time.monotonic() > end:
            raise AssertionError(f"never saw {pattern!r}; got {bytes(buf)[-2000:]!r}")
        r, _, _ = select.select([fd], [], [], 1.0)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:                                  # the child closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"the program ended before {pattern!r}; got {bytes(buf)[-2000:]!r}")
            buf += chunk


@pytest.mark.slow
def test_chat_in_a_terminal(smollm2):
    """Two turns in a pseudo-terminal, the second about the first. SmolLM2-135M is too small to
    be relied on to answer "Ada", so the check is on the prompt: the second turn's prompt holds
    the first turn and its answer (the statistics line gives the token counts)."""
    pty = pytest.importorskip("pty")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TERM": "dumb"}
    pid, fd = pty.fork()
    if pid == 0:                                             # the child: the CLI on the terminal
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "llama_np", "chat", "--temperature", "0",
                                   "--max-new-tokens", "12"], env)
    buf = bytearray()
    try:
        read_until(fd, buf, b"> ")
        assert b"/exit" in buf                               # the greeting lists the commands
        os.write(fd, b"My name is Ada.\n")
        read_until(fd, buf, b"tok/s")
        read_until(fd, buf, b"> ", 2)
        first = len(buf)
        os.write(fd, b"What is my name?\n")
        read_until(fd, buf, b"tok/s", 2)
        read_until(fd, buf, b"> ", 3)
        os.write(fd, b"/exit\n")
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    text = buf.decode("utf-8", "replace")
    (p1, g1), (p2, g2) = [tuple(map(int, m)) for m in STATS.findall(text)]
    # The second prompt = the first + its answer + the new user turn (9 tokens or more here).
    assert p2 >= p1 + g1 + 5, (p1, g1, p2)
    print("second answer:", text[first:].splitlines()[1:2], "(mentions Ada:", "Ada" in text[first:], ")")


@pytest.mark.slow
def test_chat_from_a_pipe(smollm2):
    import subprocess
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "llama_np", "chat", "--temperature", "0", "--max-new-tokens", "6",
                        "--system", "Answer in one word."], input="What is the capital of France?\n/reset\nHi\n",
                       text=True, capture_output=True, env=env, cwd=ROOT, timeout=900)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "> " not in p.stdout     # no prompt when piped
    stats = [tuple(map(int, m)) for m in STATS.findall(p.stderr)]
    assert len(stats) == 2 and stats[1][0] < stats[0][0]           # after /reset: a shorter prompt
    assert "Paris" in p.stdout.splitlines()[0]
