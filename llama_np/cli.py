"""``python -m llama_np``: generate, tokenize, logits, verify, bench (docs/design.md §4).

Every mistake a user can make (a wrong path, a bad number, no GPU, Ctrl-C) ends in one line on
stderr and exit code 1; a wrongly typed command line is argparse's usage message and code 2.
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
    cfg, flat, tok = load_model(model)
    if device == "gpu":   # uploaded once, 16-bit ($LLAMA_NP_GPU_DTYPE: bf16, fp16 or float32)
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


def _parse_ids(s: str) -> list[int]:
    try:
        ids = [int(x) for x in s.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise ValueError(f"--ids must be comma-separated integers like 1,2,3, got {s!r}") from None
    if not ids:
        raise ValueError("--ids is empty")
    return ids


def _check_ids(ids, cfg) -> None:
    bad = [i for i in ids if not 0 <= i < cfg.vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{cfg.vocab_size - 1})")
    if len(ids) > cfg.max_seq_len:
        raise ValueError(f"{len(ids)} tokens exceed the model's context of {cfg.max_seq_len}: shorten the input")


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _pos_int(s: str) -> int:
    v = _nonneg_int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


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
def cmd_generate(args) -> int:
    from .generate import check_sampling_args, generate
    # Validate before loading anything: a typo should not cost a model load.
    check_sampling_args(args.temperature, args.top_k, args.top_p, args.max_new_tokens)
    prompt = args.prompt
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise ValueError("give a PROMPT (or pipe the prompt text into standard input)")
        prompt = sys.stdin.read()
    cfg, params, tok = _load(args.model, args.device)
    tok = _need_tokenizer(tok, "generate")
    if args.chat:
        from .tokenizer.chat import encode_chat
        if not tok.chat_format:
            raise ValueError("--chat: this model's tokenizer has no known chat template")
        ids = encode_chat(tok, [{"role": "user", "content": prompt}])
    else:
        ids = _encode_prompt(tok, prompt)
        sys.stdout.write(prompt)  # show the prompt, then the continuation streams after it
        sys.stdout.flush()

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    decoder = None
    if args.device == "gpu":   # the fused, graph-captured decode loop where the model allows it
        from .gpu import Decoder
        max_len = min(len(ids) + args.max_new_tokens, cfg.max_seq_len)
        try:
            decoder = Decoder(params, cfg, max_len) if len(ids) < max_len else None
        except ValueError:     # Llama 4 / MoE, odd sizes, very long contexts: the model code on CuPy
            decoder = None
    r = generate(params, cfg, tok, ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                 top_k=args.top_k, top_p=args.top_p, seed=args.seed, stream=stream, decoder=decoder)
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(f"llama_np: {r.summary()}", file=sys.stderr)
    return 0


def cmd_tokenize(args) -> int:
    from . import assets
    from .tokenizer import load_tokenizer
    path = args.tokenizer
    if path in assets.ASSETS:
        path = assets.fetch(path)
    tok = load_tokenizer(path)
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
        raise ValueError(f"--out must name a .npy file, got {args.out!r}")
    ids = _parse_ids(args.ids) if args.ids is not None else None
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
    return cli_verify(args)


def cmd_bench(args) -> int:
    from .bench import run
    run(args.model, args.device, args.prompt_tokens, args.new_tokens, threads=args.threads,
        repeats=args.repeats, peers=not args.no_peers)
    return 0


# ------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m llama_np",
                                 description="Meta's LLaMA family in NumPy: generate text, tokenize, "
                                             "dump logits, verify against references, benchmark.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    model_help = ("a .gguf file, a Meta folder (params.json), a Hugging Face folder (config.json), or an "
                  "asset name; default: smollm2-135m-instruct (fetched once into the cache)")

    g = sub.add_parser("generate", help="continue a prompt, streaming the text")
    g.add_argument("prompt", nargs="?", metavar="PROMPT", help="the text to continue (default: standard input)")
    g.add_argument("--model", help=model_help)
    g.add_argument("--max-new-tokens", type=int, default=128, metavar="N")
    g.add_argument("--temperature", type=float, default=0.7, metavar="T", help="0 = greedy (default 0.7)")
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the K most likely tokens (0 = all)")
    g.add_argument("--top-p", type=float, default=0.9, metavar="P", help="nucleus sampling mass, in (0, 1]")
    g.add_argument("--seed", type=int, default=None, metavar="S", help="random seed (same seed, same text)")
    g.add_argument("--chat", action="store_true", help="wrap PROMPT in the model's chat template as a user turn")
    g.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("tokenize", help="print token ids as JSON (JSON Lines from stdin without TEXT)")
    t.add_argument("--tokenizer", required=True, metavar="PATH",
                   help="tokenizer.model (tiktoken or SentencePiece), tokenizer.json, a .gguf, or an asset name")
    t.add_argument("text", nargs="?", metavar="TEXT")
    t.add_argument("--bos", action="store_true", help="add the BOS token in front")
    t.add_argument("--eos", action="store_true", help="add the EOS token at the end")
    t.add_argument("--allow-special", action="store_true",
                   help="encode special-token text such as <|eot_id|> as the special token")
    t.set_defaults(func=cmd_tokenize)

    lg = sub.add_parser("logits", help="write the full (T, vocab) float32 logits to a .npy file")
    lg.add_argument("--model", help=model_help)
    src = lg.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", metavar="TEXT", help="text, tokenized as the model's metadata says")
    src.add_argument("--ids", metavar="1,2,3", help="token ids, used as they are")
    lg.add_argument("--out", required=True, metavar="FILE.npy")
    lg.set_defaults(func=cmd_logits)

    v = sub.add_parser("verify", help="compare llama_np's logits with reference numbers")
    v.add_argument("--model", required=True, metavar="PATH", help=model_help)
    v.add_argument("--reference", metavar="FILE.npz", help="reference logits (default: published values)")
    v.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt to check (repeatable)")
    v.add_argument("--tolerance", type=float, metavar="ATOL", help="max abs logit difference allowed")
    v.set_defaults(func=cmd_verify)

    b = sub.add_parser("bench", help="prefill/decode tokens/s beside transformers and the bandwidth limit")
    b.add_argument("--model", help=model_help)
    b.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    b.add_argument("--prompt-tokens", type=_pos_int, default=256, metavar="N")
    b.add_argument("--new-tokens", type=_pos_int, default=128, metavar="N")
    b.add_argument("--threads", type=_pos_int, default=2, metavar="N", help="PyTorch threads (default 2)")
    b.add_argument("--repeats", type=_pos_int, default=5, metavar="N",
                   help="prefill runs, the best counts (decode: the median of all steps)")
    b.add_argument("--no-peers", action="store_true", help="skip transformers")
    b.set_defaults(func=cmd_bench)
    return ap


def main(argv=None) -> int:
    from .assets import AssetError
    from .backend import DeviceError
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        _err("interrupted")
        return 1
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
