"""How fast are llama_np's pure-Python tokenizers beside the compiled references? One run, one text.

    python benchmarks/tokenizer_speed.py [--mb 3] [--merges 1000] [--no-spm]

Prints encode MB/s of the Llama 3 tokenizer (ours vs tiktoken, cold and warm piece cache) and
where our time goes, BPE training time for 1,000 merges on 1 MB, and the SentencePiece encoder
vs sentencepiece. The text is Python's own standard library sources (code, docstrings and
comments: English prose plus code), so the run needs no download. Numbers are noisy: compare the
ratios printed by one run, not numbers from different machines.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def corpus(n_bytes: int) -> str:
    parts, size = [], 0
    stdlib = os.path.dirname(os.__file__)
    for path in sorted(glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True)):
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text.encode("utf-8"))
        if size >= n_bytes:
            break
    return "".join(parts).encode("utf-8")[:n_bytes].decode("utf-8", "ignore")


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def llama3(text: str) -> None:
    import tiktoken
    import tiktoken.load

    from llama_np.assets import fetch
    from llama_np.tokenizer.tiktoken_bpe import LLAMA3_PATTERN, TiktokenTokenizer

    path = fetch("llama3-tokenizer")
    ours = TiktokenTokenizer.from_file(path)
    ref = tiktoken.Encoding("llama3", pat_str=LLAMA3_PATTERN, special_tokens=ours.special_tokens,
                            mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(path)))
    mb = len(text.encode("utf-8")) / 1e6
    ref_ids, t_ref = timed(ref.encode_ordinary, text)  # tiktoken's batch API would use threads
    ids, t_cold = timed(ours.encode, text)
    _, t_warm = timed(ours.encode, text)
    assert ids == ref_ids, "llama_np and tiktoken disagree on the benchmark text"
    print(f"Llama 3 encode, {mb:.2f} MB, {len(ids):,} tokens, one thread")
    print(f"  tiktoken                 {mb / t_ref:7.2f} MB/s")
    print(f"  llama_np (cold cache)    {mb / t_cold:7.2f} MB/s   = 1/{t_cold / t_ref:.1f} of tiktoken")
    print(f"  llama_np (warm cache)    {mb / t_warm:7.2f} MB/s   = 1/{t_warm / t_ref:.1f} of tiktoken")

    # where the cold-cache time goes: the regex split, the BPE of new pieces, the rest (lookups)
    from llama_np.tokenizer.tiktoken_bpe import bpe_merge
    pieces, t_split = timed(ours._split, text)
    distinct = {p.encode("utf-8") for p in set(pieces)}
    unmerged = [b for b in distinct if b not in ours.ranks]
    _, t_bpe = timed(lambda: [bpe_merge(b, ours.ranks) for b in unmerged])
    rest = max(t_cold - t_split - t_bpe, 0.0)
    print(f"  cold time: regex split {t_split / t_cold:4.0%}, BPE merges of {len(unmerged):,} new "
          f"pieces {t_bpe / t_cold:4.0%}, cache lookups and list building {rest / t_cold:4.0%} "
          f"({len(pieces):,} pieces, {len(distinct):,} distinct)")


def training(text: str, n_merges: int) -> None:
    from llama_np.tokenizer.train import train_bpe
    one_mb = text.encode("utf-8")[:1_000_000].decode("utf-8", "ignore")
    merges, t = timed(train_bpe, one_mb, 256 + n_merges)
    print(f"BPE training: {len(merges)} merges on 1.00 MB in {t:.1f} s")


def sentencepiece_speed(text: str) -> None:
    import io

    import sentencepiece as spm

    from llama_np.tokenizer.sentencepiece import SentencePieceTokenizer
    lines = [ln for ln in text.splitlines() if ln.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines[:20000]), model_writer=model,
                                   vocab_size=4000, model_type="bpe", byte_fallback=True,
                                   split_digits=True, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
                                   minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    ours = SentencePieceTokenizer.from_bytes(model.getvalue())
    sample = lines[:20000]
    mb = sum(len(s.encode("utf-8")) for s in sample) / 1e6
    ref_ids, t_ref = timed(lambda: [sp.encode(s) for s in sample])
    ids, t = timed(lambda: [ours.encode(s) for s in sample])
    assert ids == ref_ids, "llama_np and sentencepiece disagree on the benchmark text"
    print(f"SentencePiece BPE (vocab 4000, Llama 2 settings) encode, {len(sample):,} lines, {mb:.2f} MB")
    print(f"  sentencepiece            {mb / t_ref:7.2f} MB/s")
    print(f"  llama_np                 {mb / t:7.2f} MB/s   = 1/{t / t_ref:.1f} of sentencepiece")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=3.0, help="size of the benchmark text in MB")
    ap.add_argument("--merges", type=int, default=1000, help="merges for the training benchmark")
    ap.add_argument("--no-spm", action="store_true", help="skip the SentencePiece comparison")
    args = ap.parse_args()
    text = corpus(int(args.mb * 1e6))
    llama3(text)
    training(text, args.merges)
    if not args.no_spm:
        sentencepiece_speed(text)


if __name__ == "__main__":
    main()
