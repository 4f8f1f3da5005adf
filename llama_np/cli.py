"""``python -m llama_np``: generate, chat, tokenize, logits, verify, bench (docs/design.md §4).

Every mistake a user can make ends in one line on stderr ("llama_np: error: ...") and no
traceback. Exit codes:
    2    a wrong command line: an unknown flag, a value out of range, an empty prompt, a --model or
         --tokenizer that does not exist. All of these are checked before anything loads, and
         the message names the flag.
    1    anything found later: a damaged file, an id outside the vocabulary, no GPU, a full disk.
    130  Ctrl-C (after the statistics of what was generated so far), as for any Unix program
         killed by SIGINT (128 + 2).
Tracebacks are for bugs only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np


# ------------------------------------------------------------------------------ helpers
def _err(msg: str) -> None:
    print(f"llama_np: error: {msg}", file=sys.stderr, flush=True)


def _load(model, device: str = "cpu"):
    """(cfg, nested params on the device, tokenizer) for --model (None: the default model)."""
    from .backend import use
    from .model import fuse, nest
    from .weights import load_model
    use(device)  # first: a missing GPU is reported before seconds of loading
    kw = {}
    if device == "gpu" and model is not None and str(model).endswith(".gguf") \
            and not os.environ.get("LLAMA_NP_GGUF_DTYPE"):
        kw["dtype"] = "packed"   # Q8_0/Q4_K/Q6_K blocks go to the GPU as stored (gpu.upload): 8B Q4_K_M in 4.9 GB
    cfg, flat, tok = load_model(model, **kw)
    if device == "gpu":   # uploaded once, 16-bit ($LLAMA_NP_GPU_DTYPE: bf16, fp16 or float32) or packed
        from .gpu import upload
        return cfg, upload(flat, cfg, os.environ.get("LLAMA_NP_GPU_DTYPE", "bf16")), tok
    params = nest(fuse(flat, cfg), cfg)   # wq|wk|wv and w1|w3 stacked: fewer, larger products
    return cfg, params, tok


def _need_tokenizer(tok, what: str):
    if tok is None:
        raise ValueError(f"this model file carries no tokenizer, so {what} needs token ids "
                         f"(use `logits --ids 1,2,3`)")
    return tok


def _encode_prompt(tok, text: str) -> list[int]:
    """Prompt text -> ids the way the model's own metadata says: BOS where it asks for one
    (Llama 2/3), none for SmolLM2; special-token text (e.g. "<|im_start|>") becomes the special
    token, as transformers' tokenizers do."""
    return tok.encode(text, bos=bool(getattr(tok, "add_bos", False)), allowed_special="all")


class UsageError(ValueError):
    """A bad command line found after parsing (an empty prompt, a missing --model): exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors as one line (``llama_np: error: argument --seed: ...``) and a
    pointer to --help, instead of the usage block followed by the error."""

    def error(self, message):
        _err(f"{message} (see `{self.prog} --help`)")
        sys.exit(2)


def _parse_ids(s: str) -> list[int]:
    try:
        ids = [int(x) for x in s.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,3, got {s!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("no token ids given")
    if min(ids) < 0:
        raise argparse.ArgumentTypeError(f"token ids are >= 0, got {min(ids)}")
    return ids


def _check_ids(ids, cfg) -> None:
    bad = [i for i in ids if not 0 <= i < cfg.vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{cfg.vocab_size - 1})")
    if len(ids) > cfg.max_seq_len:
        raise ValueError(f"{len(ids)} tokens exceed the model's context of {cfg.max_seq_len}: shorten the input")


def _int(lo: int):
    """An argparse type: a whole number >= lo (argparse adds the flag's name to the message)."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    return parse


def _float(ok, rule: str):
    """An argparse type: a finite number with ok(v) true; ``rule`` says which ones, for the error."""
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not (np.isfinite(v) and ok(v)):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {s}")
        return v
    return parse


_nonneg_int, _pos_int = _int(0), _int(1)


def _read_prompt(prompt: str | None) -> str:
    """PROMPT, or standard input without its final newline (``echo "text" | ...`` means "text",
    the same prompt as the argument would be). Empty: a usage error."""
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("give a PROMPT (or pipe the prompt text into standard input)")
        prompt = sys.stdin.read()
        prompt = prompt[:-2] if prompt.endswith("\r\n") else prompt[:-1] if prompt.endswith("\n") else prompt
    if not prompt.strip():
        raise UsageError("PROMPT is empty")
    return prompt


def _check_model(model) -> None:
    """--model names an asset or something that exists: a typo costs no import and no load."""
    from . import assets
    if model is None or model in assets.ASSETS or os.path.exists(os.path.expanduser(model)):
        return
    if model.startswith("ollama:"):         # reading a manifest is cheap: find it before loading
        from .weights.errors import CheckpointError
        from .weights.ollama import resolve
        try:
            resolve(model)
        except CheckpointError as e:
            raise UsageError(f"--model: {e}") from None
        return
    known = ", ".join(sorted(assets.ASSETS))
    if os.sep not in model and not os.path.splitext(model)[1]:   # a bare word: a mistyped asset name?
        raise UsageError(f"--model: no file or folder {model!r} and no such asset; known assets: {known}")
    raise UsageError(f"--model: no model at {model}: give a .gguf file, a Meta or Hugging Face folder, "
                     f"or an asset name ({known})")


def _tokenizer_path(name: str) -> str:
    """--tokenizer: an asset name (fetched into the cache on first use), or a path. A path to where
    an asset lives in the cache also fetches it, so a path copied from the docs works on a
    fresh machine."""
    from . import assets
    if name in assets.ASSETS:
        return str(assets.fetch(name))
    path = os.path.expanduser(name)
    if not os.path.exists(path):
        for asset in assets.ASSETS:
            if os.path.abspath(path) == os.path.abspath(assets.asset_path(asset)):
                return str(assets.fetch(asset))
        raise UsageError(f"--tokenizer: file not found: {name} (or give an asset name: "
                         f"{', '.join(sorted(assets.ASSETS))})")
    return path


def _context_note(n_prompt: int, max_new: int, ctx: int) -> int:
    """max_new_tokens capped to what the context leaves after the prompt, saying so up front."""
    room = ctx - n_prompt
    if max_new > room:
        print(f"llama_np: note: the prompt ({n_prompt} tokens) + --max-new-tokens {max_new} exceed the "
              f"context of {ctx} tokens: generating at most {room}", file=sys.stderr, flush=True)
        return room
    return max_new


def _write_npy_atomic(path: str, arr: np.ndarray) -> None:
    """np.save into a temporary file beside ``path``, then rename: never a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder does not exist: {folder}")
    fd, tmp = tempfile.mkstemp(prefix=".llama_np-", suffix=".npy.part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# ---------------------------------------------------------------------------- commands
def _sampling(args) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=args.repetition_penalty)


def cmd_generate(args) -> int:
    from .generate import GenerationInterrupted, generate
    # Everything the command line says is checked before loading: a typo should not cost a load.
    prompt = _read_prompt(args.prompt)
    _check_model(args.model)
    cfg, params, tok = _load(args.model, args.device)
    tok = _need_tokenizer(tok, "generate")
    if args.chat:
        from .tokenizer.chat import encode_chat
        if not tok.chat_format:
            raise ValueError("--chat: this model's tokenizer has no known chat template")
        ids = encode_chat(tok, [{"role": "user", "content": prompt}])
    else:
        ids = _encode_prompt(tok, prompt)
    if len(ids) > cfg.max_seq_len:
        raise ValueError(f"the prompt has {len(ids)} tokens, more than the model's context of "
                         f"{cfg.max_seq_len}: shorten it")
    max_new = _context_note(len(ids), args.max_new_tokens, cfg.max_seq_len)
    if not args.chat:
        sys.stdout.write(prompt)  # show the prompt, then the continuation streams after it
        sys.stdout.flush()

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    decoder = None
    if args.device == "gpu":   # the fused, graph-captured decode loop where the model allows it
        from .gpu import Decoder
        max_len = min(len(ids) + max_new, cfg.max_seq_len)
        try:
            decoder = Decoder(params, cfg, max_len) if len(ids) < max_len else None
        except ValueError:     # Llama 4 / MoE, odd sizes, very long contexts: the model code on CuPy
            decoder = None
    try:
        r = generate(params, cfg, tok, ids, max_new_tokens=max_new, seed=args.seed, stream=stream,
                     decoder=decoder, **_sampling(args))
    except GenerationInterrupted as e:   # Ctrl-C: what was done so far, then 130 like any Unix tool
        sys.stdout.write("\n")
        sys.stdout.flush()
        print(f"llama_np: {e.result.summary()}", file=sys.stderr)
        return 130
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(f"llama_np: {r.summary()}", file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    from .chat import Chat, repl
    if args.max_new_tokens == 0:
        raise UsageError("--max-new-tokens must be >= 1 for chat (answers need at least one token)")
    _check_model(args.model)
    cfg, params, tok = _load(args.model, args.device)
    tok = _need_tokenizer(tok, "chat")
    if not tok.chat_format:
        raise ValueError("this model's tokenizer has no known chat template (llama3, llama2 or chatml)")
    max_new = args.max_new_tokens
    if max_new >= cfg.max_seq_len:
        max_new = cfg.max_seq_len // 2
        print(f"llama_np: note: --max-new-tokens {args.max_new_tokens} leaves no room for the conversation "
              f"in a context of {cfg.max_seq_len} tokens: answers stop at {max_new}", file=sys.stderr)
    chat = Chat(params, cfg, tok, system=args.system, max_new_tokens=max_new, seed=args.seed, **_sampling(args))
    return repl(chat)


def cmd_tokenize(args) -> int:
    from .tokenizer import load_tokenizer
    tok = load_tokenizer(_tokenizer_path(args.tokenizer))
    special = "all" if args.allow_special else "none"

    def encode(text: str) -> str:
        return json.dumps(tok.encode(text, bos=args.bos, eos=args.eos, allowed_special=special))

    if args.text is not None:
        print(encode(args.text))
        return 0
    # JSON Lines: one JSON string a line in, one JSON list a line out (blank lines are skipped).
    for n, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)
        except ValueError:
            raise ValueError(f"standard input line {n} is not JSON (expected one JSON string a line, "
                             f'e.g. "hello world")') from None
        if not isinstance(text, str):
            raise ValueError(f"standard input line {n} is JSON but not a string")
        sys.stdout.write(encode(text) + "\n")
    sys.stdout.flush()
    return 0


def cmd_logits(args) -> int:
    from .model import forward
    if not args.out.endswith(".npy"):
        raise UsageError(f"--out must name a .npy file, got {args.out!r}")
    if args.prompt is not None and not args.prompt.strip():
        raise UsageError("--prompt is empty")
    _check_model(args.model)
    ids = args.ids
    cfg, params, tok = _load(args.model)
    if ids is None:
        ids = _encode_prompt(_need_tokenizer(tok, "--prompt"), args.prompt)
        if not ids:
            raise ValueError("the prompt encodes to no tokens")
    _check_ids(ids, cfg)
    logits = np.ascontiguousarray(forward(params, cfg, ids), dtype=np.float32)
    _write_npy_atomic(args.out, logits)
    last = int(logits[-1].argmax())
    shown = f" {tok.decode([last])!r}" if tok is not None else ""
    print(f"llama_np: wrote {args.out}: {logits.shape} float32 logits for {len(ids)} tokens; "
          f"next token after the last: {last}{shown}", file=sys.stderr)
    return 0


def cmd_verify(args) -> int:
    from .verify import cli_verify
    _check_model(args.model)
    return cli_verify(args)


def cmd_bench(args) -> int:
    from .bench import run
    _check_model(args.model)
    run(args.model, args.device, args.prompt_tokens, args.new_tokens, threads=args.threads,
        repeats=args.repeats, peers=not args.no_peers, ttft_runs=args.ttft_runs)
    return 0


# ------------------------------------------------------------------------------ parser
MODEL_HELP = ("a .gguf file, a Meta folder (params.json), a Hugging Face folder (config.json), or an "
              "asset name; default: smollm2-135m-instruct (fetched once into the cache)")
DEVICE_HELP = "where the model runs: cpu (NumPy, default) or gpu (CuPy on an NVIDIA GPU)"


def _add_sampling(p, max_new: int, max_new_help: str) -> None:
    """The flags generate and chat share. Applied in transformers' order: repetition penalty,
    temperature, top-k, top-p, min-p (``llama_np.generate``)."""
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--max-new-tokens", type=_nonneg_int, default=max_new, metavar="N",
                   help=f"stop after N new tokens (default {max_new}; {max_new_help})")
    p.add_argument("--temperature", type=_float(lambda v: v >= 0, ">= 0 (0 = greedy)"), default=0.7,
                   metavar="T", help="divide the logits by T before sampling; 0 = greedy (default 0.7)")
    p.add_argument("--top-k", type=_nonneg_int, default=0, metavar="K", help="keep the K most likely tokens (0 = all)")
    p.add_argument("--top-p", type=_float(lambda v: 0 < v <= 1, "in (0, 1]"), default=0.9, metavar="P",
                   help="keep the most likely tokens up to probability mass P, in (0, 1] (default 0.9)")
    p.add_argument("--min-p", type=_float(lambda v: 0 <= v <= 1, "in [0, 1]"), default=0.0, metavar="P",
                   help="keep tokens at least P times as likely as the most likely one, in [0, 1] (0 = off)")
    p.add_argument("--repetition-penalty", type=_float(lambda v: v > 0, "> 0 (1 = off)"), default=1.0,
                   metavar="R", help="make tokens already in the text less likely: logit / R when positive, "
                                     "* R when negative (> 0; 1 = off; 1.1-1.3 stops loops; greedy too)")
    p.add_argument("--seed", type=_nonneg_int, default=None, metavar="S",
                   help="random seed, >= 0 (same seed, same text)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help=DEVICE_HELP)


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="python -m llama_np",
                        description="Meta's LLaMA family in NumPy: generate text, chat, tokenize, "
                                    "dump logits, verify against references, benchmark.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND",
                            help="what to do; `python -m llama_np COMMAND --help` lists its options")

    g = sub.add_parser("generate", help="continue a prompt, streaming the text")
    g.add_argument("prompt", nargs="?", metavar="PROMPT",
                   help="the text to continue (default: standard input, without its final newline, so "
                        "`echo TEXT | ...` is the same prompt as TEXT)")
    _add_sampling(g, 128, "capped, with a note, to what the context leaves after the prompt; "
                          "0 = only load and tokenize")
    g.add_argument("--chat", action="store_true", help="wrap PROMPT in the model's chat template as a user turn")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="talk with an instruct model, turn by turn (one line a turn from a pipe)",
                       description="A conversation in the model's own chat template (Llama 2, Llama 3 or "
                                   "ChatML). Type a message and Enter; /reset forgets the conversation, "
                                   "/system TEXT sets the system prompt, /exit or Ctrl-D leaves, Ctrl-C stops "
                                   "an answer. Piped, each line of standard input is one turn. When the "
                                   "conversation outgrows the context, the oldest turns are dropped (you are "
                                   "told).")
    c.add_argument("--system", metavar="TEXT",
                   help="the system prompt (default: the template's own, e.g. SmolLM2's; \"\" for none)")
    _add_sampling(c, 512, "per answer; the history is trimmed to leave room for it")
    c.set_defaults(func=cmd_chat)

    t = sub.add_parser("tokenize", help="print token ids as JSON (JSON Lines from stdin without TEXT)")
    t.add_argument("--tokenizer", required=True, metavar="PATH",
                   help="an asset name (llama3-tokenizer, smollm2-135m-instruct: fetched once into the "
                        "cache), or a file: tokenizer.model (tiktoken or SentencePiece), tokenizer.json, .gguf")
    t.add_argument("text", nargs="?", metavar="TEXT",
                   help="the text to encode (default: JSON Lines on standard input, one JSON string a line)")
    t.add_argument("--bos", action="store_true", help="add the BOS token in front")
    t.add_argument("--eos", action="store_true", help="add the EOS token at the end")
    t.add_argument("--allow-special", action="store_true",
                   help="encode special-token text such as <|eot_id|> as the special token")
    t.set_defaults(func=cmd_tokenize)

    lg = sub.add_parser("logits", help="write the full (T, vocab) float32 logits to a .npy file")
    lg.add_argument("--model", help=MODEL_HELP)
    src = lg.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", metavar="TEXT", help="text, tokenized as the model's metadata says")
    src.add_argument("--ids", type=_parse_ids, metavar="1,2,3", help="token ids, used as they are")
    lg.add_argument("--out", required=True, metavar="FILE.npy", help="where to write the logits (.npy)")
    lg.set_defaults(func=cmd_logits)

    v = sub.add_parser("verify", help="compare llama_np's logits with reference numbers")
    v.add_argument("--model", required=True, metavar="PATH",
                   help="the checkpoint to check (required): a .gguf file, a Meta folder, a Hugging Face "
                        "folder, or an asset name")
    v.add_argument("--reference", metavar="FILE.npz", help="reference logits (default: published values)")
    v.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt to check (repeatable)")
    v.add_argument("--tolerance", type=_float(lambda v: v > 0, "> 0"), metavar="ATOL",
                   help="max abs logit difference allowed")
    v.set_defaults(func=cmd_verify)

    b = sub.add_parser("bench", help="prefill/decode tokens/s beside transformers and the bandwidth limit")
    b.add_argument("--model", help=MODEL_HELP)
    b.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help=DEVICE_HELP)
    b.add_argument("--prompt-tokens", type=_pos_int, default=256, metavar="N",
                   help="prompt length for the prefill timing (default 256)")
    b.add_argument("--new-tokens", type=_pos_int, default=128, metavar="N",
                   help="decode steps to time (default 128)")
    b.add_argument("--threads", type=_pos_int, default=2, metavar="N", help="PyTorch and llama.cpp threads (default 2)")
    b.add_argument("--repeats", type=_pos_int, default=5, metavar="N",
                   help="prefill runs, the best counts (decode: the median of all steps)")
    b.add_argument("--ttft-runs", type=_nonneg_int, default=3, metavar="N",
                   help="warm time-to-first-token runs, each a new process (0: skip that timing)")
    b.add_argument("--no-peers", action="store_true", help="skip transformers and llama.cpp")
    b.set_defaults(func=cmd_bench)
    return ap


def main(argv=None) -> int:
    from .assets import AssetError
    from .backend import DeviceError, cuda_error
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except UsageError as e:
        _err(" ".join(str(e).split()))
        return 2
    except KeyboardInterrupt:   # Ctrl-C before any token (loading, tokenizing): 128 + SIGINT
        print(file=sys.stderr)
        _err("interrupted")
        return 130
    except BrokenPipeError:  # e.g. `... | head`: the reader left; not an error worth a message
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 1
    except (ValueError, OSError, DeviceError, AssetError, MemoryError) as e:
        # ValueError covers TokenizerError, GGUFFormatError, CheckpointError; OSError covers
        # FileNotFoundError, permissions and a full disk.
        msg = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, MemoryError):
            msg = "out of memory: " + msg
        _err(msg)
        return 1
    except Exception as e:   # CuPy's CompileException and CUDA runtime/driver/library errors
        err = cuda_error(e)
        if err is None:
            raise
        _err(str(err))
        return 1
