"""Byte-level BPE: the tokenizer of GPT-2, SmolLM2 and (in Hugging Face's spelling) Llama 3.

Three steps turn text into ids (the same as in minbpe and Hugging Face ``tokenizers``):

1. **Special tokens** such as ``<|im_start|>`` are cut out of the text first (only when the caller
   allows them: text from a user must not be able to forge a control token).
2. **Pre-tokenization**: a regex splits the rest into pieces ("words"): ``"Hello world!"`` ->
   ``["Hello", " world", "!"]``. Merges never cross a piece boundary, so a space stays glued to the
   word after it and digits or punctuation never merge with letters.
3. **BPE** on each piece: write the piece's UTF-8 bytes as one symbol each, then repeatedly merge
   the adjacent pair with the lowest merge rank (learned during training) until no pair can merge.

"Byte-level" means the symbols are bytes, so any text can be encoded with no unknown token. The
vocabulary files write each byte as a printable character (GPT-2's ``bytes_to_unicode`` map: a
space is ``Ġ``, a newline ``Ċ``) because the files are JSON/text and the merges are space-separated.

Where the vocabulary comes from:
- a GGUF file (llama.cpp) with ``tokenizer.ggml.model == "gpt2"``: ``ByteLevelBPETokenizer.from_gguf``;
- a Hugging Face ``tokenizer.json`` of type BPE: ``ByteLevelBPETokenizer.from_tokenizer_json``.
"""
from __future__ import annotations

import heapq
import json
import os
from functools import lru_cache

import regex

from .base import Tokenizer, TokenizerError, replace_lone_surrogates

# ---------------------------------------------------------------------------------------------
# 1. bytes <-> printable characters


@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each of the 256 byte values to a printable character.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves; the other
    68 (control characters, space, ...) are shifted to U+0100 and above, in byte order. So byte 32
    (space) -> ``Ġ`` (U+0120) and byte 10 (newline) -> ``Ċ`` (U+010A).
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
# str.translate tables: much faster than a Python loop over the characters of every piece.
# bytes -> chars: decode the bytes as Latin-1 (byte b -> chr(b)), then map chr(b) -> BYTE_TO_CHAR[b].
_LATIN1_TO_CHAR = {b: c for b, c in BYTE_TO_CHAR.items()}
# chars -> bytes: the inverse, then encode as Latin-1.
_CHAR_TO_LATIN1 = {ord(c): b for b, c in BYTE_TO_CHAR.items()}


def text_to_symbols(text: str) -> str:
    """Text -> its UTF-8 bytes, each written as one printable character: ``"é!"`` -> ``"Ã©!"``."""
    return text.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_CHAR)


def symbols_to_bytes(token: str) -> bytes:
    """A vocabulary entry in the printable alphabet -> the raw bytes it stands for."""
    return token.translate(_CHAR_TO_LATIN1).encode("latin-1")


# ---------------------------------------------------------------------------------------------
# 2. pre-tokenizers: which regexes split the text before BPE
#
# A pre-tokenizer here is a list of regexes applied one after another, as llama.cpp does
# (``unicode_regex_split``) and as a Hugging Face ``Sequence`` of ``Split(..., "isolated")`` does:
# each regex splits every piece from the previous step into its matches and the text between them.

# GPT-2's pattern, exactly as HF ``ByteLevel(use_regex=True)`` has it. Contractions, then letters
# with one optional leading space, numbers likewise, other symbols likewise; ``\s+(?!\S)`` takes a
# run of whitespace but leaves its last space to the following word.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Llama 3 (= tiktoken's cl100k_base pattern): case-insensitive contractions, a letter run may take
# one leading non-letter (" Hello", "_init"), numbers go in groups of at most 3 digits, newlines
# get their own pieces.
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
                  r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# SmolLM2's tokenizer.json: Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)],
# i.e. every digit is a piece of its own ("2024" -> "2","0","2","4"), then GPT-2's pattern.
# llama.cpp maps ``pre = "smollm"`` to exactly this pair of regexes (llama-vocab.cpp).
DIGIT_PATTERN = r"\p{N}"

# llama.cpp's fallback for a GGUF that names no (or the "default") pre-tokenizer.
DEFAULT_PATTERNS = [r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", r"[0-9][0-9][0-9]"]

# ``tokenizer.ggml.pre`` -> (regexes, ignore_merges). Names and groups follow llama.cpp's
# llama-vocab.cpp. ignore_merges: a piece that is already a whole vocabulary entry is emitted as
# that one token without merging (Llama 3 / tiktoken behaviour; some entries cannot be reached
# through merges alone).
PRE_TOKENIZERS = {
    "default": (DEFAULT_PATTERNS, False),
    "gpt2": ([GPT2_PATTERN], False),
    "smollm": ([DIGIT_PATTERN, GPT2_PATTERN], False),
    "llama3": ([LLAMA3_PATTERN], True),
}
PRE_ALIASES = {
    "gpt-2": "gpt2", "mpt": "gpt2", "olmo": "gpt2", "jais": "gpt2",
    "starcoder": "smollm", "refact": "smollm", "command-r": "smollm", "codeshell": "smollm",
    "exaone": "smollm",
    "llama-bpe": "llama3", "llama-v3": "llama3", "falcon3": "llama3", "dbrx": "llama3",
    "smaug-bpe": "llama3",
}


def pre_tokenizer_for(name: str | None) -> tuple[list[str], bool]:
    """GGUF ``tokenizer.ggml.pre`` value -> (list of regexes, ignore_merges)."""
    key = PRE_ALIASES.get(name or "default", name or "default")
    if key not in PRE_TOKENIZERS:
        known = ", ".join(sorted(set(PRE_TOKENIZERS) | set(PRE_ALIASES)))
        raise TokenizerError(f"unsupported pre-tokenizer {name!r} (supported: {known})")
    return PRE_TOKENIZERS[key]


def split_pieces(pattern: regex.Pattern, text: str) -> list[str]:
    """Split ``text`` into the matches of ``pattern`` *and* the text between them (nothing is lost)."""
    pieces = [p for p in pattern.findall(text) if p]
    if sum(map(len, pieces)) == len(text):  # the usual case: the pattern matched every character
        return pieces
    pieces, pos = [], 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            pieces.append(text[pos:m.start()])
        if m.end() > m.start():
            pieces.append(m.group())
        pos = max(pos, m.end())
    if pos < len(text):
        pieces.append(text[pos:])
    return pieces


def pre_tokenize(text: str, patterns: list[regex.Pattern]) -> list[str]:
    """Apply each regex in turn to every piece of the previous step: str -> list of pieces."""
    pieces = [text] if text else []
    for pattern in patterns:
        # a one-character piece cannot be split further (and SmolLM2's digit step makes many)
        pieces = [p for piece in pieces
                  for p in (split_pieces(pattern, piece) if len(piece) > 1 else (piece,))]
    return pieces


# ---------------------------------------------------------------------------------------------
# 3. BPE merging inside one piece


def bpe(symbols: list[str], ranks: dict) -> list[str]:
    """Merge adjacent symbols, lowest rank first (leftmost on ties), until no pair has a rank.

    symbols: one printable character per byte, e.g. ``list("Ġhello")``;
    ranks: (left, right) -> rank, from the merges list (position 0 = merged first).
    Simple O(n^2) loop, fine for the short pieces of ordinary text; long pieces go to the heap.
    """
    if len(symbols) > 64:
        return _bpe_heap(symbols, ranks)
    symbols = list(symbols)
    while len(symbols) > 1:
        best_rank, best_i = None, -1
        for i in range(len(symbols) - 1):
            r = ranks.get((symbols[i], symbols[i + 1]))
            if r is not None and (best_rank is None or r < best_rank):
                best_rank, best_i = r, i
        if best_i < 0:
            break
        symbols[best_i:best_i + 2] = [symbols[best_i] + symbols[best_i + 1]]
    return symbols


def _bpe_heap(symbols: list[str], ranks: dict) -> list[str]:
    """The same merges as ``bpe`` in O(n log n), for long pieces (a 10k-character word, a long run
    of spaces): a heap of candidate pairs (rank, left position) over a linked list of symbols, as
    llama.cpp and HF tokenizers do. Stale heap entries (a side already merged) are skipped."""
    sym = list(symbols)
    n = len(sym)
    nxt = list(range(1, n)) + [-1]
    prv = list(range(-1, n - 1))
    heap = [(r, i, sym[i], sym[i + 1]) for i in range(n - 1)
            if (r := ranks.get((sym[i], sym[i + 1]))) is not None]
    heapq.heapify(heap)

    def push(i):
        j = nxt[i]
        if i >= 0 and j >= 0 and (r := ranks.get((sym[i], sym[j]))) is not None:
            heapq.heappush(heap, (r, i, sym[i], sym[j]))

    while heap:
        _, i, left, right = heapq.heappop(heap)
        j = nxt[i]
        if j < 0 or sym[i] != left or sym[j] != right:
            continue  # stale: one side has changed since this pair was pushed
        sym[i], sym[j] = left + right, None
        nxt[i] = nxt[j]
        if nxt[j] >= 0:
            prv[nxt[j]] = i
        push(prv[i])
        push(i)
    return [s for s in sym if s is not None]


# ---------------------------------------------------------------------------------------------
# 4. the tokenizer

# names of tokens that end a turn or a document in the families we know (Llama 3, ChatML, GPT-2)
STOP_TOKEN_NAMES = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>")


def chat_format_of(chat_template: str | None, special_tokens: dict) -> str | None:
    """Which chat template family a model uses: from its Jinja template, else from its specials."""
    for text in (chat_template or "", " ".join(special_tokens)):
        if "<|start_header_id|>" in text:
            return "llama3"
        if "<|im_start|>" in text:
            return "chatml"
    return None


class ByteLevelBPETokenizer(Tokenizer):
    """GPT-2-style byte-level BPE with special tokens.

    tokens: id -> vocabulary string (printable alphabet; specials as plain text);
    merges: list of (left, right), in merge order (or a dict (left, right) -> rank, where pairs
        may share a rank: merges derived from tiktoken ranks rank a pair by the token it makes);
    patterns: the pre-tokenizer regexes; special_tokens: text -> id, matched only when allowed;
    added_tokens: text -> id, always matched whole (HF non-special added tokens, GGUF user-defined).
    """

    def __init__(self, tokens: list[str], merges, patterns: list[str],
                 special_tokens: dict | None = None, added_tokens: dict | None = None,
                 bos_id: int | None = None, eos_id: int | None = None, add_bos: bool = False,
                 ignore_merges: bool = False, add_prefix_space: bool = False,
                 chat_template: str | None = None, extra_stop_ids=(), name: str = "bytelevel"):
        self.name = name
        self.tokens = list(tokens)
        self.vocab_size = len(self.tokens)
        self.token_to_id = {}
        for i, t in enumerate(self.tokens):
            self.token_to_id.setdefault(t, i)  # first id wins if a string repeats (as llama.cpp)
        self.merge_ranks = dict(merges) if isinstance(merges, dict) else \
            {tuple(pair): rank for rank, pair in enumerate(merges)}
        self.patterns = [regex.compile(p) for p in patterns]
        self.special_tokens = dict(special_tokens or {})
        self.added_tokens = dict(added_tokens or {})
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, bool(add_bos)
        self.ignore_merges, self.add_prefix_space = ignore_merges, add_prefix_space
        self.chat_template = chat_template
        self.chat_format = chat_format_of(chat_template, self.special_tokens)
        named = {self.special_tokens.get(n, self.token_to_id.get(n)) for n in STOP_TOKEN_NAMES}
        self.stop_ids = ({eos_id} | named | set(extra_stop_ids)) - {None}

        # id -> bytes, computed once. A vocabulary entry written outside the byte alphabet (a
        # special token, or a user-defined token stored as plain text) stands for its UTF-8 text.
        alphabet = set(CHAR_TO_BYTE)
        self._id_bytes = [symbols_to_bytes(t) if set(t) <= alphabet else t.encode("utf-8")
                          for t in self.tokens]
        for text, i in {**self.added_tokens, **self.special_tokens}.items():
            self._id_bytes[i] = text.encode("utf-8")
        self._missing_bytes = set(CHAR_TO_BYTE) - set(self.token_to_id)
        self._cache: dict[str, list[int]] = {}

    # -- constructors ------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, md: dict) -> "ByteLevelBPETokenizer":
        """From GGUF metadata (``read_gguf_metadata``) whose ``tokenizer.ggml.model`` is ``"gpt2"``."""
        if md.get("tokenizer.ggml.model") != "gpt2":
            raise TokenizerError(f"not a byte-level BPE GGUF (tokenizer.ggml.model = "
                                 f"{md.get('tokenizer.ggml.model')!r}, expected 'gpt2')")
        try:
            tokens = md["tokenizer.ggml.tokens"]
            merges = [_split_merge(m) for m in md["tokenizer.ggml.merges"]]
        except KeyError as e:
            raise TokenizerError(f"GGUF tokenizer metadata lacks {e.args[0]}") from None
        types = md.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        # token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
        special = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3}
        added = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 4}
        pre = md.get("tokenizer.ggml.pre", "default")
        patterns, ignore_merges = pre_tokenizer_for(pre)
        # llama.cpp adds BOS by default only for the Llama 3 family; the file's flag wins.
        add_bos = md.get("tokenizer.ggml.add_bos_token", ignore_merges)
        extra_stops = [md[k] for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
                       if k in md]
        return cls(tokens, merges, patterns, special_tokens=special, added_tokens=added,
                   bos_id=md.get("tokenizer.ggml.bos_token_id"),
                   eos_id=md.get("tokenizer.ggml.eos_token_id"), add_bos=add_bos,
                   ignore_merges=ignore_merges, chat_template=md.get("tokenizer.chat_template"),
                   extra_stop_ids=extra_stops, name=f"gguf:{pre}")

    @classmethod
    def from_tokenizer_json(cls, path, data: dict | None = None) -> "ByteLevelBPETokenizer":
        """From a Hugging Face ``tokenizer.json`` with a BPE model and a ByteLevel pre-tokenizer.

        BOS/EOS, add_bos and the chat template live in ``tokenizer_config.json`` beside it; it is
        read when present (otherwise the usual special-token names are recognised).
        """
        path = os.fspath(path)
        if data is None:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        model = data.get("model") or {}
        if model.get("type", "BPE") != "BPE" or "merges" not in model:
            raise TokenizerError(f"{path}: only BPE tokenizer.json files are supported here "
                                 f"(model type {model.get('type')!r})")
        if model.get("byte_fallback") or model.get("continuing_subword_prefix") \
                or model.get("end_of_word_suffix"):
            raise TokenizerError(f"{path}: this BPE is not byte-level (byte_fallback / subword "
                                 f"prefixes are SentencePiece-style features)")
        if data.get("normalizer") is not None:
            raise TokenizerError(f"{path}: tokenizer.json normalizers are not supported "
                                 f"({data['normalizer'].get('type')})")
        patterns, add_prefix_space, byte_level = _hf_pre_tokenizer(data.get("pre_tokenizer"), path)
        if not byte_level:
            raise TokenizerError(f"{path}: no ByteLevel pre-tokenizer, so not a byte-level BPE")

        vocab = dict(model["vocab"])
        special, added = {}, {}
        for t in data.get("added_tokens", []):
            vocab[t["content"]] = t["id"]
            (special if t.get("special") else added)[t["content"]] = t["id"]
        tokens = [""] * (max(vocab.values()) + 1)
        for t, i in vocab.items():
            tokens[i] = t
        merges = [_split_merge(m) for m in model["merges"]]

        cfg = _read_sibling_json(path, "tokenizer_config.json")
        bos = _token_text(cfg.get("bos_token")) or _first_present(
            ("<|begin_of_text|>", "<s>", "<|startoftext|>"), special)
        eos = _token_text(cfg.get("eos_token")) or _first_present(
            ("<|end_of_text|>", "</s>", "<|endoftext|>"), special)
        chat_template = cfg.get("chat_template")
        if isinstance(chat_template, list):  # [{"name": "default", "template": ...}, ...]
            chat_template = next((c["template"] for c in chat_template
                                  if c.get("name") == "default"), None)
        if "add_bos_token" in cfg:
            add_bos = bool(cfg["add_bos_token"])
        elif (data.get("post_processor") or {}).get("type") == "TemplateProcessing":
            first = data["post_processor"]["single"][0]
            add_bos = "SpecialToken" in first and first["SpecialToken"]["id"] == bos
        else:  # the file does not say: follow llama.cpp, which adds BOS for the Llama 3 family
            add_bos = LLAMA3_PATTERN in patterns
        return cls(tokens, merges, patterns, special_tokens=special, added_tokens=added,
                   bos_id=vocab.get(bos), eos_id=vocab.get(eos), add_bos=add_bos,
                   ignore_merges=bool(model.get("ignore_merges", False)),
                   add_prefix_space=add_prefix_space, chat_template=chat_template,
                   name="tokenizer.json")

    # -- encoding (special and added tokens, BOS/EOS and input checks: base.Tokenizer.encode) ---

    def _encode_ordinary(self, text: str) -> list[int]:
        """Text with no special tokens in it -> ids: pre-tokenize, then BPE each piece (cached)."""
        try:
            return self._encode_pieces(text)
        except UnicodeEncodeError:  # lone surrogates: U+FFFD, as tiktoken (HF refuses the text)
            return self._encode_pieces(replace_lone_surrogates(text))

    def _encode_pieces(self, text: str) -> list[int]:
        if self.add_prefix_space and text and not text.startswith(" "):
            text = " " + text  # GPT-2's own tokenizer.json does this (ByteLevel add_prefix_space)
        ids, cache = [], self._cache
        for piece in pre_tokenize(text, self.patterns):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                piece_ids = self._encode_piece(piece)
                if len(cache) < 200_000:  # bound the memory a long, varied input can take
                    cache[piece] = piece_ids
            ids.extend(piece_ids)
        return ids

    def _encode_piece(self, piece: str) -> list[int]:
        symbols = text_to_symbols(piece)
        if self.ignore_merges and symbols in self.token_to_id:
            return [self.token_to_id[symbols]]
        if self._missing_bytes:
            # A vocabulary may lack bytes never seen in training (SmolLM2 lacks 21 of the 256,
            # e.g. 0xF5-0xFF, which UTF-8 never uses, and the rare 4-byte lead 0xF1). Hugging Face
            # tokenizers (with no unknown token) drops such a byte before merging; so do we.
            symbols = "".join(c for c in symbols if c not in self._missing_bytes)
        return [self.token_to_id[s] for s in bpe(list(symbols), self.merge_ranks)]

    # -- decoding ----------------------------------------------------------------------------

    def id_to_bytes(self, i: int) -> bytes:
        if not 0 <= i < self.vocab_size:
            raise TokenizerError(f"token id {i} is out of range (vocabulary size {self.vocab_size})")
        return self._id_bytes[i]

    def __repr__(self):
        return (f"ByteLevelBPETokenizer({self.name}, vocab={self.vocab_size}, "
                f"merges={len(self.merge_ranks)}, specials={len(self.special_tokens)})")


# ---------------------------------------------------------------------------------------------
# helpers for the file formats


def _split_merge(m) -> tuple[str, str]:
    """A merge as GGUF / old tokenizer.json write it (``"Ġ t"``) or as new tokenizer.json (``["Ġ", "t"]``)."""
    if isinstance(m, str):
        left, sep, right = m.partition(" ")
        if not sep:
            raise TokenizerError(f"malformed merge {m!r} (expected 'left right')")
        return left, right
    left, right = m
    return left, right


def _hf_pre_tokenizer(spec, path) -> tuple[list[str], bool, bool]:
    """A tokenizer.json ``pre_tokenizer`` -> (regexes, add_prefix_space, has a ByteLevel step)."""
    if spec is None:
        return [], False, False
    kind = spec.get("type")
    if kind == "Sequence":
        patterns, prefix, byte_level = [], False, False
        for sub in spec["pretokenizers"]:
            p, a, b = _hf_pre_tokenizer(sub, path)
            patterns += p
            prefix, byte_level = prefix or a, byte_level or b
        return patterns, prefix, byte_level
    if kind == "ByteLevel":
        return ([GPT2_PATTERN] if spec.get("use_regex", True) else []), \
            bool(spec.get("add_prefix_space", False)), True
    if kind == "Digits":
        return [DIGIT_PATTERN if spec.get("individual_digits") else r"\p{N}+"], False, False
    if kind == "Split":
        if spec.get("behavior", "Isolated").lower() != "isolated" or spec.get("invert"):
            raise TokenizerError(f"{path}: Split pre-tokenizer with behavior "
                                 f"{spec.get('behavior')!r} / invert is not supported")
        pat = spec["pattern"]
        return [pat["Regex"] if "Regex" in pat else regex.escape(pat["String"])], False, False
    raise TokenizerError(f"{path}: pre-tokenizer {kind!r} is not supported")


def _read_sibling_json(path, name) -> dict:
    other = os.path.join(os.path.dirname(os.path.abspath(path)), name)
    try:
        with open(other, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _token_text(tok) -> str | None:
    """tokenizer_config.json writes a token as a string or as {"content": ...}."""
    if isinstance(tok, dict):
        return tok.get("content")
    return tok if isinstance(tok, str) else None


def _first_present(names, table) -> str | None:
    return next((n for n in names if n in table), None)
