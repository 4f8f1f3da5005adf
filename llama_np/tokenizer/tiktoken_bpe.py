"""Llama 3's tokenizer: byte-level BPE from a tiktoken rank file, in plain Python.

Meta ships Llama 3 / 3.1 / 3.2 / 3.3 with ``tokenizer.model``: 128,000 lines ``base64(token) rank``.
A token's rank is both its id and its merge priority (lower merges first). Encoding a text:

1. split out the special tokens that are allowed (``<|begin_of_text|>`` ...), they become one id each;
2. cut the rest into pieces with Meta's regex (words with their leading space, 1-3 digits,
   punctuation runs, newlines ...); BPE never merges across two pieces;
3. a piece that is itself a token becomes that id (about 588 tokens can't be reached by merging);
4. otherwise start from its bytes and repeatedly merge the adjacent pair whose concatenation
   has the lowest rank, until no adjacent pair is a token.

This is exactly what tiktoken does (in Rust); the tests check we agree id for id.
"""
from __future__ import annotations

import base64
import binascii
import heapq
from pathlib import Path

import regex  # not `re`: the pattern needs \p{L} / \p{N} Unicode classes

from .base import Tokenizer, TokenizerError, replace_lone_surrogates

# Meta's pre-tokenizer pattern (llama3 tokenizer.py; the same as OpenAI's cl100k_base).
# In words: English contractions (any case), an optional non-letter then letters, 1-3 digits,
# an optional space then punctuation (plus trailing newlines), newline runs, trailing spaces,
# other whitespace.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_RESERVED_SPECIAL_TOKENS = 256


def llama3_special_tokens(num_base_tokens: int = 128000, version: str = "3.1") -> dict[str, int]:
    """The 256 special tokens that follow the ranks: name -> id.

    version "3": Meta's llama3 ``tokenizer.py`` (Llama 3.0): 10 named slots, the rest reserved.
    version "3.1": Llama 3.1+ gave three reserved slots a meaning: 128004 ``<|finetune_right_pad_id|>``,
    128008 ``<|eom_id|>`` (end of message, after a tool call), 128010 ``<|python_tag|>``; the
    reserved numbering shifts to match (as in Llama 3.1's tokenizer.json and transformers'
    ``convert_llama_weights_to_hf.py``). The ids of the shared names are the same in both.
    """
    if version == "3":
        names = ["<|begin_of_text|>", "<|end_of_text|>",
                 "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
                 "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
                 "<|start_header_id|>", "<|end_header_id|>",
                 "<|reserved_special_token_4|>", "<|eot_id|>"]
        names += [f"<|reserved_special_token_{i}|>" for i in range(5, NUM_RESERVED_SPECIAL_TOKENS - 5)]
    elif version == "3.1":
        names = ["<|begin_of_text|>", "<|end_of_text|>",
                 "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
                 "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                 "<|start_header_id|>", "<|end_header_id|>",
                 "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
        names += [f"<|reserved_special_token_{i}|>" for i in range(3, NUM_RESERVED_SPECIAL_TOKENS - 8)]
    else:
        raise ValueError(f"unknown Llama 3 special-token version {version!r} (use '3' or '3.1')")
    assert len(names) == NUM_RESERVED_SPECIAL_TOKENS
    return {name: num_base_tokens + i for i, name in enumerate(names)}


def load_tiktoken_ranks(path) -> dict[bytes, int]:
    """Read a tiktoken rank file (``base64 rank`` per line) and check it: token bytes -> rank.

    Ranks must be 0..N-1, each once, and every single byte must be a token (BPE starts from
    bytes, so a missing byte would make some text unencodable). Bad files raise TokenizerError.
    """
    path = Path(path)
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue  # tiktoken skips blank lines too
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise TokenizerError(f"{path}: line {lineno}: expected 'base64token rank', "
                                     f"got {line[:60]!r}")
            try:
                token = base64.b64decode(parts[0], validate=True)
            except binascii.Error:
                raise TokenizerError(f"{path}: line {lineno}: invalid base64 {parts[0][:40]!r}") from None
            rank = int(parts[1])
            if rank != len(ranks):
                raise TokenizerError(f"{path}: line {lineno}: rank {rank}, expected {len(ranks)} "
                                     f"(ranks must run 0, 1, 2, ... without gaps or repeats)")
            if token in ranks:
                raise TokenizerError(f"{path}: line {lineno}: token {token!r} already has rank "
                                     f"{ranks[token]}")
            ranks[token] = rank
    if not ranks:
        raise TokenizerError(f"{path}: no ranks found: not a tiktoken tokenizer file")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TokenizerError(f"{path}: {len(missing)} single bytes are not tokens (first: "
                             f"{bytes([missing[0]])!r}); byte-level BPE needs all 256")
    return ranks


def bpe_merge(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """BPE-encode one pre-token: merge the adjacent pair with the lowest rank until none is left.

    ``bounds`` holds where each current part starts (plus the end), so part i is
    piece[bounds[i]:bounds[i+1]]. ``pair_ranks[i]`` is the rank of parts i and i+1 joined (or
    infinity). One merge deletes a boundary and re-ranks only the two pairs that touch it;
    ``min`` and ``index`` scan the list at C speed. Ties go to the leftmost pair, as in tiktoken.
    """
    inf = float("inf")
    get = ranks.get
    bounds = list(range(len(piece) + 1))
    pair_ranks = [get(piece[i:i + 2], inf) for i in range(len(piece) - 1)]
    while pair_ranks:
        best = min(pair_ranks)
        if best == inf:
            break
        i = pair_ranks.index(best)
        del bounds[i + 1]       # parts i and i+1 become one
        del pair_ranks[i]
        if i < len(pair_ranks):  # the merged part and its right neighbour
            pair_ranks[i] = get(piece[bounds[i]:bounds[i + 2]], inf)
        if i > 0:                # its left neighbour and the merged part
            pair_ranks[i - 1] = get(piece[bounds[i - 1]:bounds[i + 1]], inf)
    return [ranks[piece[bounds[i]:bounds[i + 1]]] for i in range(len(bounds) - 1)]


def bpe_merge_long(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """The same merges as ``bpe_merge``, in O(n log n) for very long pieces (a 20 kB word).

    Rescanning all pairs after every merge costs O(n^2). Here the candidate pairs wait in a heap
    keyed (rank, start): the smallest is the lowest rank, leftmost on ties, as before. The parts
    form a linked list over byte offsets: the part starting at s ends at ``nxt[s]``, and the part
    before it starts at ``prv[s]``. A heap entry whose parts changed after it was pushed is stale
    and skipped.
    """
    n = len(piece)
    nxt = list(range(1, n + 1))
    prv = list(range(-1, n - 1))
    alive = [True] * n
    heap: list[tuple] = []

    def push(a: int) -> None:
        """Queue the pair (part at a, the part after it) if together they are a token."""
        if a < 0 or nxt[a] >= n:
            return
        b = nxt[a]
        rank = ranks.get(piece[a:nxt[b]])
        if rank is not None:
            heapq.heappush(heap, (rank, a, b, nxt[b]))

    for a in range(n - 1):
        push(a)
    while heap:
        _, a, b, end = heapq.heappop(heap)
        if not alive[a] or nxt[a] != b or nxt[b] != end:
            continue  # stale: one of the two parts has merged with something else since
        alive[b] = False  # part b joins part a
        nxt[a] = end
        if end < n:
            prv[end] = a
        push(prv[a])  # the two pairs that now contain the merged part
        push(a)
    out, s = [], 0
    while s < n:
        out.append(ranks[piece[s:nxt[s]]])
        s = nxt[s]
    return out


class TiktokenTokenizer(Tokenizer):
    """Byte-level BPE over tiktoken ranks plus special tokens (Llama 3 defaults)."""

    chat_format = "llama3"
    add_bos = True

    def __init__(self, ranks: dict[bytes, int], special_tokens: dict[str, int] | None = None,
                 pattern: str = LLAMA3_PATTERN):
        self.ranks = ranks
        if special_tokens is None:
            special_tokens = llama3_special_tokens(len(ranks))
        self.special_tokens = dict(special_tokens)
        self.pattern = pattern
        self._split = regex.compile(pattern).findall
        # id -> bytes for decoding; special tokens decode to their own text
        self.vocab_size = max([len(ranks) - 1, *self.special_tokens.values()]) + 1
        self._decoder: list = [None] * self.vocab_size
        for token, rank in ranks.items():
            self._decoder[rank] = token
        for name, i in self.special_tokens.items():
            self._decoder[i] = name.encode("utf-8")
        st = self.special_tokens
        self.bos_id = st.get("<|begin_of_text|>")
        self.eos_id = st.get("<|end_of_text|>")
        # Instruct models end a turn with <|eot_id|>; Llama 3.1 tool calls end with <|eom_id|>.
        # By id, so a version-"3" table (128008 = reserved_4) stops the same way.
        self.stop_ids = {i for i in (128001, 128008, 128009) if i < self.vocab_size} if st else set()
        self._cache: dict[str, tuple] = {}  # piece text -> ids: most words repeat

    @classmethod
    def from_file(cls, path, version: str = "3.1") -> "TiktokenTokenizer":
        """Meta's ``tokenizer.model`` for Llama 3.x; ``version`` picks the special-token names."""
        ranks = load_tiktoken_ranks(path)
        return cls(ranks, llama3_special_tokens(len(ranks), version))

    # -- encoding (special tokens, BOS/EOS and input checks: base.Tokenizer.encode) ----------

    def _encode_ordinary(self, text: str) -> list[int]:
        """Text with no special tokens in it -> ids."""
        try:
            return self._encode_pieces(text)
        except UnicodeEncodeError:  # lone surrogates: U+FFFD, as tiktoken
            return self._encode_pieces(replace_lone_surrogates(text))

    def _encode_pieces(self, text: str) -> list[int]:
        ids: list[int] = []
        cache, ranks = self._cache, self.ranks
        if len(cache) > 200_000:  # bound memory on endless streams of new words
            cache.clear()
        for piece in self._split(text):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                b = piece.encode("utf-8")
                rank = ranks.get(b)  # whole-piece lookup first
                if rank is not None:
                    piece_ids = (rank,)
                elif len(b) < 512:  # the simple scan is faster for ordinary words
                    piece_ids = tuple(bpe_merge(b, ranks))
                else:
                    piece_ids = tuple(bpe_merge_long(b, ranks))
                cache[piece] = piece_ids
            ids += piece_ids
        return ids

    # -- decoding ---------------------------------------------------------------------------

    def id_to_bytes(self, i: int) -> bytes:
        if not 0 <= i < self.vocab_size or self._decoder[i] is None:
            raise TokenizerError(f"token id {i} is outside this tokenizer's vocabulary "
                                 f"(0..{self.vocab_size - 1})")
        return self._decoder[i]
