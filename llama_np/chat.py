"""Multi-turn chat: a conversation kept inside the context window, and the REPL around it.

    python -m llama_np chat                        # type a message, Enter; /exit or Ctrl-D to leave
    printf 'My name is Ada.\\nWhat is my name?\\n' | python -m llama_np chat   # one line a turn

Every turn, the whole conversation goes through the model's own chat template
(``tokenizer.chat``: Llama 2, Llama 3 or ChatML, as the checkpoint says) and is prefilled again.
That costs a prefill of the history per answer (fast next to decoding: a prompt runs as
matrix-matrix products), and keeps one simple rule: what the model sees is exactly the
template of the messages shown.

When the conversation plus room for the answer no longer fits the context, the oldest
exchanges (a user message and its answer) are dropped and the user is told; the system prompt
and the newest message always stay (``trim_history``).
"""
from __future__ import annotations

import sys

import numpy as np

from .generate import GenerationInterrupted, GenerationResult, generate
from .tokenizer.chat import encode_chat

HELP = "commands: /reset (forget the conversation), /system TEXT (new system prompt), /exit (or Ctrl-D)"


def trim_history(messages: list[dict], n_tokens, budget: int) -> tuple[list[dict], int]:
    """Drop the oldest exchanges until ``n_tokens(messages) <= budget``.

    messages: [system?] + [user, assistant, user, ..., user]; n_tokens: messages -> prompt length
    in tokens; budget: the tokens the prompt may take (the context minus room for the answer).
    The system message and the last message always stay; an exchange is a message and the reply
    after it, dropped together so that the roles keep alternating (Llama 2's template needs it).
    Returns (the messages kept, how many were dropped). A ValueError when even the system prompt
    and the last message alone do not fit.
    """
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    body = messages[len(head):]
    dropped = 0
    while n_tokens(head + body) > budget:
        if len(body) <= 1:
            raise ValueError(f"the message is too long: with the system prompt it takes "
                             f"{n_tokens(head + body)} tokens, and {budget} fit beside the answer")
        k = 2 if len(body) > 2 else 1
        body, dropped = body[k:], dropped + k
    return head + body, dropped


class Chat:
    """A conversation with one model. ``ask(text)`` answers, streaming, and remembers both sides.

    system: the system prompt (None: the template's default, e.g. SmolLM2's; "": none at all).
    sampling: generate's keywords (temperature, top_k, top_p, min_p, repetition_penalty);
    seed: one seed for the whole conversation (each answer draws its own from it).
    """

    def __init__(self, params, cfg, tokenizer, system: str | None = None, max_new_tokens: int = 512,
                 seed: int | None = None, **sampling):
        if not getattr(tokenizer, "chat_format", None):
            raise ValueError("this model's tokenizer has no known chat template (llama3, llama2 or chatml)")
        if not 0 < max_new_tokens < cfg.max_seq_len:
            raise ValueError(f"max_new_tokens must be in 1..{cfg.max_seq_len - 1} for a chat "
                             f"(the context is {cfg.max_seq_len}), got {max_new_tokens}")
        self.params, self.cfg, self.tok = params, cfg, tokenizer
        self.system, self.max_new_tokens, self.sampling = system, max_new_tokens, sampling
        self.rng = np.random.default_rng(seed)
        self.history: list[dict] = []       # user and assistant messages, oldest first
        self.results: list[GenerationResult] = []

    def messages(self, history=None) -> list[dict]:
        history = self.history if history is None else history
        return ([{"role": "system", "content": self.system}] if self.system else []) + history

    def encode(self, messages) -> list[int]:
        # "" asks for no system prompt at all; the ChatML template would otherwise add SmolLM2's.
        options = {"default_system": ""} if self.system == "" else {}
        return encode_chat(self.tok, messages, **options)

    def reset(self) -> None:
        self.history = []

    def ask(self, text: str, stream=None, on_trim=None) -> GenerationResult:
        """Answer ``text``, streaming the answer to ``stream(piece)``; returns its statistics.

        ``on_trim(n)`` is told, before the answer starts, that the n oldest messages were dropped
        to make room. Ctrl-C raises GenerationInterrupted; the partial answer is kept."""
        budget = self.cfg.max_seq_len - self.max_new_tokens
        kept, dropped = trim_history(self.messages(self.history + [{"role": "user", "content": text}]),
                                     lambda m: len(self.encode(m)), budget)
        self.history = kept[1:] if self.system else kept
        if dropped and on_trim is not None:
            on_trim(dropped)
        stops = set(getattr(self.tok, "stop_ids", None) or ()) or {self.tok.eos_id}
        try:
            r = generate(self.params, self.cfg, self.tok, self.encode(kept), self.max_new_tokens,
                         seed=int(self.rng.integers(2**63)), stream=stream, **self.sampling)
        except GenerationInterrupted as e:
            self._remember(e.result, stops)
            raise
        self._remember(r, stops)
        return r

    def _remember(self, r: GenerationResult, stops) -> None:
        answer = self.tok.decode([i for i in r.ids if i not in stops])
        self.history.append({"role": "assistant", "content": answer})
        self.results.append(r)

    def totals(self) -> str:
        n = sum(len(r.ids) for r in self.results)
        return f"{len(self.results)} answers, {n} tokens generated"


def repl(chat: Chat, stdin=None, stdout=None, stderr=None, interactive: bool | None = None) -> int:
    """Read turns (one line each) and answer them until /exit or end of input; the exit code.

    interactive (default: stdin is a terminal): a "> " prompt, line editing, and Ctrl-C stops the
    answer being written (Ctrl-C at the prompt leaves, code 130). Piped: no prompt, and Ctrl-C
    leaves at once (130) after the statistics. Answers stream to stdout; statistics and notices
    go to stderr, one "llama_np: ..." line each.
    """
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    interactive = stdin.isatty() if interactive is None else interactive

    def say(msg: str) -> None:
        print(f"llama_np: {msg}", file=stderr, flush=True)

    def write(piece: str) -> None:
        stdout.write(piece)
        stdout.flush()

    def trimmed(n: int) -> None:
        say(f"the conversation outgrew the context ({chat.cfg.max_seq_len} tokens): "
            f"dropped the oldest {n} messages")

    def read() -> str:
        if interactive and stdin is sys.stdin:
            return input("> ")           # readline's line editing on the terminal
        if interactive:
            write("> ")
        line = stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")

    if interactive:
        try:
            import readline  # noqa: F401  (arrow keys and line history for input())
        except ImportError:
            pass
        say(f"chat ({chat.tok.chat_format} template, context {chat.cfg.max_seq_len} tokens); {HELP}")
    while True:
        try:
            line = read().strip()
        except EOFError:
            if interactive:
                write("\n")
            return 0
        except KeyboardInterrupt:
            write("\n")
            say(f"interrupted: {chat.totals()}")
            return 130
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, rest = line.partition(" ")
            if cmd == "/exit":
                return 0
            if cmd == "/reset":
                chat.reset()
                say("conversation cleared")
            elif cmd == "/system":
                if rest.strip():
                    chat.system = rest.strip()
                    say("system prompt set (the conversation so far is kept)")
                else:
                    say("/system needs the new system prompt: /system TEXT")
            elif cmd == "/help":
                say(HELP)
            else:
                say(f"unknown command {line!r}; {HELP}")
            continue
        try:
            r = chat.ask(line, stream=write, on_trim=trimmed)
        except GenerationInterrupted as e:
            write("\n")
            say(f"{e.result.summary()}")
            if not interactive:
                return 130
            continue
        except ValueError as e:        # a message too long for the context: say so, go on
            say(f"error: {e}")
            continue
        write("\n")
        say(r.summary())
