"""Train a byte-level BPE tokenizer, the way Llama 3's (and GPT-4's) vocabulary was made.

The algorithm is karpathy's minbpe ``RegexTokenizer``:

1. cut the text into chunks with a regex (Llama 3's pattern), so merges never cross a word
   boundary, a digit group or a punctuation run;
2. every chunk starts as its UTF-8 bytes: ids 0..255;
3. count all adjacent pairs of ids, merge the most frequent pair everywhere into a new id
   (256, 257, ...), and repeat until the vocabulary is big enough.

minbpe recounts every pair of every chunk after each merge. Two observations make that ~100x
cheaper without changing the result:

* text repeats: "the" appears thousands of times, so we keep each *distinct* chunk once with its
  frequency, and a pair's count is the sum of frequencies of the chunks it appears in;
* a merge only changes the chunks that contain the merged pair, so we keep an index
  pair -> chunks containing it and update just those counts.

Ties (two pairs with the same count) go to the pair that occurs first in the text, exactly as
minbpe's ``max(stats, key=stats.get)`` picks them, so the merges are minbpe's merges.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import regex

from .base import Tokenizer, TokenizerError
from .tiktoken_bpe import LLAMA3_PATTERN

FORMAT_LINE = "llama_np bpe v1"


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` in ``ids`` (left to right) by ``new_id``."""
    out, i, a, b = [], 0, pair[0], pair[1]
    while i < len(ids):
        if ids[i] == a and i + 1 < len(ids) and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe(text: str, vocab_size: int, pattern: str = LLAMA3_PATTERN, verbose: bool = False,
              log: list | None = None, tie_break=None) -> dict[tuple[int, int], int]:
    """Learn ``vocab_size - 256`` merges from ``text`` -> {(id_a, id_b): new_id}.

    ``log``, if given, receives (pair, count, number_of_pairs_tied_at_that_count) per merge.
    ``tie_break``, if given, picks one pair from the list of pairs tied at the top count
    (default: the first in the text, as minbpe). Stops early when no pair is left.
    """
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256 (the bytes), got {vocab_size}")
    # distinct chunks in order of first appearance, with how often each occurs
    chunk_freq = Counter(regex.findall(pattern, text))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_freq]
    freqs = list(chunk_freq.values())

    counts: dict[tuple[int, int], int] = defaultdict(int)  # pair -> occurrences in the text
    where: dict[tuple[int, int], set] = defaultdict(set)   # pair -> indices of words holding it
    for w, (ids, f) in enumerate(zip(words, freqs)):
        for pair in zip(ids, ids[1:]):
            counts[pair] += f
            where[pair].add(w)

    def first_occurrence(pair):
        """(first word holding the pair, position in it): where a left-to-right scan meets it."""
        w = min(where[pair])
        ids = words[w]
        return w, next(k for k in range(len(ids) - 1) if (ids[k], ids[k + 1]) == pair)

    merges: dict[tuple[int, int], int] = {}
    for new_id in range(256, vocab_size):
        if not counts:
            break
        best = max(counts.values())
        tied = [p for p, c in counts.items() if c == best]
        if tie_break is not None:
            pair = tie_break(tied)
        else:
            pair = tied[0] if len(tied) == 1 else min(tied, key=first_occurrence)
        merges[pair] = new_id
        if log is not None:
            log.append((pair, best, len(tied)))
        if verbose:
            print(f"merge {new_id - 255}/{vocab_size - 256}: {pair} -> {new_id} ({best} occurrences)")

        touched = set()
        for w in list(where[pair]):
            old, f = words[w], freqs[w]
            new = merge(old, pair, new_id)
            old_pairs, new_pairs = list(zip(old, old[1:])), list(zip(new, new[1:]))
            for p in old_pairs:
                counts[p] -= f
            for p in new_pairs:
                counts[p] += f
            for p in set(old_pairs) - set(new_pairs):
                where[p].discard(w)
            for p in new_pairs:
                where[p].add(w)
            touched.update(old_pairs)
            words[w] = new
        for p in touched:  # forget pairs that no longer occur anywhere
            if counts[p] <= 0:
                del counts[p]
                where.pop(p, None)
    return merges


class BPETokenizer(Tokenizer):
    """A trained byte-level BPE: merges + regex + optional special tokens; save/load/encode/decode."""

    add_bos = False

    def __init__(self, merges: dict[tuple[int, int], int] | None = None, pattern: str = LLAMA3_PATTERN,
                 special_tokens: dict[str, int] | None = None):
        self.merges = dict(merges or {})
        self.pattern = pattern
        self._split = regex.compile(pattern).findall
        # id -> bytes: the 256 bytes, then each merge is the concatenation of its pair
        self.vocab = {i: bytes([i]) for i in range(256)}
        for (a, b), i in sorted(self.merges.items(), key=lambda kv: kv[1]):
            self.vocab[i] = self.vocab[a] + self.vocab[b]
        self.special_tokens = {}
        self.register_special_tokens(special_tokens or {})
        self._cache: dict[str, tuple] = {}

    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str = LLAMA3_PATTERN,
              special_tokens: dict[str, int] | None = None, verbose: bool = False) -> "BPETokenizer":
        return cls(train_bpe(text, vocab_size, pattern, verbose), pattern, special_tokens)

    def register_special_tokens(self, special_tokens: dict[str, int]) -> None:
        """Add special tokens, e.g. {"<|endoftext|>": 100257}: ids must not collide with merges."""
        for name, i in special_tokens.items():
            if i in self.vocab and self.vocab[i] != name.encode("utf-8"):
                raise TokenizerError(f"special token {name!r} reuses id {i}, already a merged token")
            self.special_tokens[name] = i
            self.vocab[i] = name.encode("utf-8")
        self.vocab_size = max(self.vocab) + 1
        eos = self.special_tokens.get("<|endoftext|>")
        self.eos_id = eos
        self.stop_ids = {eos} if eos is not None else set()

    # -- encoding (special tokens, BOS/EOS and input checks: base.Tokenizer.encode) --------------

    def _encode_ordinary(self, text: str) -> list[int]:
        """Text with no special tokens in it -> ids: split with the regex, then merge each chunk."""
        ids: list[int] = []
        for chunk in self._split(text):
            chunk_ids = self._cache.get(chunk)
            if chunk_ids is None:
                chunk_ids = self._cache[chunk] = tuple(self._encode_chunk(
                    chunk.encode("utf-8", "surrogatepass")))
            ids += chunk_ids
        return ids

    def _encode_chunk(self, b: bytes) -> list[int]:
        """Apply the merges in the order they were learned (minbpe's encode)."""
        ids, inf = list(b), float("inf")
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: self.merges.get(p, inf))
            if pair not in self.merges:
                break  # nothing left to merge
            ids = merge(ids, pair, self.merges[pair])
        return ids

    # -- decoding -------------------------------------------------------------------------------

    def id_to_bytes(self, i: int) -> bytes:
        try:
            return self.vocab[i]
        except KeyError:
            raise TokenizerError(f"token id {i} is not in this tokenizer's vocabulary") from None

    # -- files ----------------------------------------------------------------------------------

    def save(self, path) -> None:
        """A small text file: a format line, the regex, the special tokens, then one merge a line
        ("id_a id_b"; the new id is 256 + the line number)."""
        lines = [FORMAT_LINE, self.pattern, str(len(self.special_tokens))]
        lines += [f"{name} {i}" for name, i in self.special_tokens.items()]
        lines += [f"{a} {b}" for (a, b), _ in sorted(self.merges.items(), key=lambda kv: kv[1])]
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path) -> "BPETokenizer":
        lines = Path(path).read_text(encoding="utf-8").split("\n")
        if not lines or lines[0] != FORMAT_LINE:
            raise TokenizerError(f"{path} is not a llama_np BPE file "
                                 f"(its first line must be {FORMAT_LINE!r})")
        try:
            pattern, n_special = lines[1], int(lines[2])
            special = {}
            for line in lines[3:3 + n_special]:
                name, i = line.rsplit(" ", 1)
                special[name] = int(i)
            merges = {}
            for line in lines[3 + n_special:]:
                if line:
                    a, b = map(int, line.split())
                    merges[(a, b)] = 256 + len(merges)
        except (IndexError, ValueError):
            raise TokenizerError(f"{path}: malformed BPE file") from None
        return cls(merges, pattern, special)
