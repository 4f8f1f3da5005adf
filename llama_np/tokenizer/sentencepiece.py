"""Llama 2's tokenizer: a SentencePiece BPE model, read and run in plain Python.

Meta ships Llama 2 (and TinyLlama, Mistral 7B v0.1, ...) with ``tokenizer.model``: a protobuf
``ModelProto`` holding 32,000 *pieces*, each a string with a score and a type. Encoding a text:

1. normalize: Llama 2 keeps the text as is ("identity"); other models apply NFKC-like rules
   stored in the file as a compiled trie (``precompiled_charsmap``, supported below);
2. spaces become "▁" (U+2581) and a "▁" is put in front (the *dummy prefix*), so "Hello" and
   " Hello" inside a sentence both start with "▁Hello";
3. start from single characters and repeatedly merge the adjacent pair whose merged string is a
   piece with the *highest score* (leftmost on ties). Unlike tiktoken there is no regex pre-split:
   the whole text is one sequence;
4. a character that is not a piece becomes its UTF-8 bytes ``<0xE2>`` ... if the model has byte
   fallback (Llama 2 does), else ``<unk>``.

Decoding turns "▁" back into spaces and drops the dummy-prefix space at the start.

The protobuf is parsed by hand (the wire format is a few lines), so the ``sentencepiece`` and
``protobuf`` packages are only needed by the tests, as the reference.
"""
from __future__ import annotations

import codecs
import heapq
import struct
from pathlib import Path

from .base import Tokenizer, TokenizerError

SPACE = "\u2581"  # "▁": SentencePiece's visible stand-in for a space
# piece types (sentencepiece_model.proto, ModelProto.SentencePiece.Type); GGUF uses the same numbers
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# TrainerSpec.ModelType
UNIGRAM, BPE, WORD, CHAR = 1, 2, 3, 4
_MODEL_TYPES = {UNIGRAM: "unigram", BPE: "bpe", WORD: "word", CHAR: "char"}


# -- the protobuf wire format -----------------------------------------------------------------
# A message is a run of fields. Each starts with a varint key = field_number << 3 | wire_type;
# wire type 0 is a varint, 1 eight bytes, 2 a varint length then that many bytes (strings,
# bytes, nested messages), 5 four bytes (float). A varint stores 7 bits a byte, low bits first;
# the top bit says "more bytes follow".

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise TokenizerError("truncated SentencePiece model (a number runs past the end of the file)")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TokenizerError("corrupt SentencePiece model (a number is longer than 10 bytes)")


def _fields(buf: bytes):
    """Yield (field_number, value) of one message: int for varints, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise TokenizerError(f"corrupt SentencePiece model (field {number} has unknown "
                                 f"wire type {wire})")
        if pos > len(buf):
            raise TokenizerError("truncated SentencePiece model (a field runs past the end of the file)")
        yield number, value


def _int32(v: int) -> int:
    """Negative int32s are sent as 64-bit two's complement (e.g. pad_id = -1)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _text(b: bytes, what: str) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenizerError(f"corrupt SentencePiece model ({what} is not UTF-8)") from None


def parse_model_proto(data: bytes) -> dict:
    """ModelProto bytes -> {"pieces": [(piece, score, type)], "trainer": {...}, "normalizer": {...}}.

    Only the fields a BPE encoder needs are read; the proto2 defaults apply when a field is
    absent (that is how protobuf saves space), e.g. add_dummy_prefix defaults to true.
    """
    pieces, trainer_raw, normalizer_raw, denormalizer_raw = [], None, None, None
    for number, value in _fields(data):
        if number == 1:  # repeated SentencePiece
            piece, score, ptype = "", 0.0, NORMAL
            for n, v in _fields(value):
                if n == 1:
                    piece = _text(v, f"piece {len(pieces)}")
                elif n == 2:
                    (score,) = struct.unpack("<f", v)
                elif n == 3:
                    ptype = v
            pieces.append((piece, score, ptype))
        elif number == 2:
            trainer_raw = value
        elif number == 3:
            normalizer_raw = value
        elif number == 5:
            denormalizer_raw = value
    if not pieces or trainer_raw is None or normalizer_raw is None:
        # spm_train always writes pieces, then trainer_spec, then normalizer_spec: a file cut
        # exactly between two fields still parses, so we check that all three arrived.
        raise TokenizerError("truncated or not a SentencePiece model (pieces, trainer_spec or "
                             "normalizer_spec missing)")

    trainer = dict(model_type=UNIGRAM, byte_fallback=False, unk_id=0, bos_id=1, eos_id=2,
                   pad_id=-1, unk_surface=" \u2047 ", treat_whitespace_as_suffix=False)
    names = {3: "model_type", 35: "byte_fallback", 40: "unk_id", 41: "bos_id", 42: "eos_id",
             43: "pad_id", 24: "treat_whitespace_as_suffix"}
    for n, v in _fields(trainer_raw):
        if n in names:
            trainer[names[n]] = _int32(v) if isinstance(v, int) else v
        elif n == 44:
            trainer["unk_surface"] = _text(v, "unk_surface")
    normalizer = dict(name="", precompiled_charsmap=b"", add_dummy_prefix=True,
                      remove_extra_whitespaces=True, escape_whitespaces=True)
    names = {3: "add_dummy_prefix", 4: "remove_extra_whitespaces", 5: "escape_whitespaces"}
    for n, v in _fields(normalizer_raw):
        if n == 1:
            normalizer["name"] = _text(v, "normalizer name")
        elif n == 2:
            normalizer["precompiled_charsmap"] = bytes(v)
        elif n in names:
            normalizer[names[n]] = bool(v)
    if denormalizer_raw is not None and any(n == 2 and v for n, v in _fields(denormalizer_raw)):
        raise TokenizerError("SentencePiece models with denormalization rules are not supported")
    return {"pieces": pieces, "trainer": trainer, "normalizer": normalizer}


# -- normalization rules: a Darts double-array trie -------------------------------------------

class CharsMap:
    """NFKC-like rewrite rules compiled into ``precompiled_charsmap`` (not used by Llama 2).

    Blob layout: uint32 trie size, the trie (a darts-clone double array of uint32 units), then
    the replacement strings, each ending in NUL. ``longest_match`` walks the trie byte by byte
    and returns the longest rule that matches the start of the input.
    """

    def __init__(self, blob: bytes):
        if len(blob) <= 4:
            raise TokenizerError("corrupt SentencePiece model (normalization rules are cut short)")
        (trie_size,) = struct.unpack_from("<I", blob)
        if trie_size % 4 or 4 + trie_size > len(blob):
            raise TokenizerError("corrupt SentencePiece model (normalization trie size)")
        self.units = struct.unpack_from(f"<{trie_size // 4}I", blob, 4)
        self.replacements = blob[4 + trie_size:]

    def longest_match(self, data: bytes, pos: int) -> tuple[int, bytes] | None:
        """(length, replacement) of the longest rule matching data[pos:], or None."""
        units, best = self.units, None
        # A unit packs: bits 0-7 label, bit 8 "has a leaf", bits 10+ the offset to the children
        # (shifted by 8 more when bit 9 is set). Child of node p for byte c: p ^ offset ^ c.
        node = units[0]
        p = (node >> 10) << ((node & (1 << 9)) >> 6)
        for i in range(pos, len(data)):
            c = data[i]
            p ^= c
            if p >= len(units):
                break
            node = units[p]
            if node & ((1 << 31) | 0xFF) != c:  # the label must be the byte we followed
                break
            p ^= (node >> 10) << ((node & (1 << 9)) >> 6)
            if (node >> 8) & 1:  # a rule ends here; its value points into the replacements
                start = units[p] & ((1 << 31) - 1)
                end = self.replacements.find(b"\0", start)
                best = (i + 1 - pos, self.replacements[start:end if end >= 0 else None])
        return best


# -- decoding helper ------------------------------------------------------------------------

def _per_byte_replace(err: UnicodeDecodeError):
    # SentencePiece turns *each* invalid byte into U+FFFD (Python's "replace" would give one
    # U+FFFD for a whole broken sequence).
    return "\ufffd" * (err.end - err.start), err.end


codecs.register_error("llama_np_spm", _per_byte_replace)


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece BPE (Llama 2 defaults: BOS 1, EOS 2, unk 0, byte fallback, dummy prefix)."""

    chat_format = "llama2"
    add_bos = True

    def __init__(self, pieces, scores, types, *, unk_id=0, bos_id=1, eos_id=2,
                 byte_fallback=None, add_dummy_prefix=True, remove_extra_whitespaces=False,
                 escape_whitespaces=True, charsmap: bytes = b"", unk_surface=" \u2047 "):
        if not (len(pieces) == len(scores) == len(types)) or not pieces:
            raise TokenizerError(f"SentencePiece vocabulary is inconsistent: {len(pieces)} pieces, "
                                 f"{len(scores)} scores, {len(types)} types")
        self.pieces, self.scores, self.types = list(pieces), [float(s) for s in scores], list(types)
        self.vocab_size = len(pieces)
        # Like sentencepiece: normal, user-defined and unused pieces can be reached by merges;
        # control, unknown and byte pieces only by id.
        self.piece_to_id, self.reserved_to_id = {}, {}
        for i, (p, t) in enumerate(zip(self.pieces, self.types)):
            table = self.piece_to_id if t in (NORMAL, USER_DEFINED, UNUSED) else self.reserved_to_id
            if p in table:
                raise TokenizerError(f"SentencePiece vocabulary has piece {p!r} twice "
                                     f"(ids {table[p]} and {i})")
            table[p] = i
        unk_ids = [i for i, t in enumerate(self.types) if t == UNKNOWN]
        if not unk_ids:
            raise TokenizerError("SentencePiece vocabulary has no unknown piece (<unk>)")
        named = unk_id is not None and 0 <= unk_id < len(pieces) and self.types[unk_id] == UNKNOWN
        self.unk_id = unk_id if named else unk_ids[0]

        def special(i):  # an id counts only if it names a control piece (-1 means "none")
            return i if i is not None and 0 <= i < len(pieces) and self.types[i] == CONTROL else None
        self.bos_id, self.eos_id = special(bos_id), special(eos_id)
        self.add_bos = self.bos_id is not None  # a model trained without BOS can't want one
        self.stop_ids = {self.eos_id} if self.eos_id is not None else set()
        # "<s>", "</s>", "<unk>" in the input become their ids only when encode() allows it
        self.special_tokens = {p: i for i, (p, t) in enumerate(zip(self.pieces, self.types))
                               if t in (CONTROL, UNKNOWN)}
        if byte_fallback is None:  # GGUF: byte fallback whenever the vocabulary has byte pieces
            byte_fallback = any(t == BYTE for t in self.types)
        self.byte_fallback = byte_fallback
        self.byte_ids = [self.reserved_to_id.get(f"<0x{b:02X}>", self.unk_id) for b in range(256)]
        self.add_dummy_prefix = add_dummy_prefix
        self.remove_extra_whitespaces = remove_extra_whitespaces
        self.escape_whitespaces = escape_whitespaces
        self.charsmap = CharsMap(charsmap) if charsmap else None
        self.unk_surface = unk_surface
        # User-defined pieces are matched whole in the text and never merged further.
        self.user_defined = sorted((p for p, t in zip(self.pieces, self.types) if t == USER_DEFINED),
                                   key=len, reverse=True)
        self._user_defined_bytes = sorted((u.encode("utf-8") for u in self.user_defined),
                                          key=len, reverse=True)

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path) -> "SentencePieceTokenizer":
        """Meta's Llama 2 ``tokenizer.model`` (any SentencePiece BPE model file)."""
        return cls.from_bytes(Path(path).read_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> "SentencePieceTokenizer":
        proto = parse_model_proto(data)
        tr, nm = proto["trainer"], proto["normalizer"]
        if tr["model_type"] != BPE:
            kind = _MODEL_TYPES.get(tr["model_type"], tr["model_type"])
            raise TokenizerError(f"this SentencePiece model is {kind!r}; only BPE models "
                                 f"(Llama 2's kind) are supported")
        if tr["treat_whitespace_as_suffix"]:
            raise TokenizerError("SentencePiece models with treat_whitespace_as_suffix are not supported")
        pieces, scores, types = zip(*proto["pieces"])
        return cls(pieces, scores, types, unk_id=tr["unk_id"], bos_id=tr["bos_id"], eos_id=tr["eos_id"],
                   byte_fallback=bool(tr["byte_fallback"]), add_dummy_prefix=nm["add_dummy_prefix"],
                   remove_extra_whitespaces=nm["remove_extra_whitespaces"],
                   escape_whitespaces=nm["escape_whitespaces"],
                   charsmap=nm["precompiled_charsmap"], unk_surface=tr["unk_surface"])

    @classmethod
    def from_gguf(cls, md: dict) -> "SentencePieceTokenizer":
        """From llama.cpp GGUF metadata with ``tokenizer.ggml.model == "llama"``.

        llama.cpp keeps the pieces, scores and types but no normalizer: it uses the text as is,
        adds the dummy prefix unless ``add_space_prefix`` is false, and falls back to byte
        pieces whenever the vocabulary has them.
        """
        tokens = md.get("tokenizer.ggml.tokens")
        if tokens is None or len(tokens) == 0:
            raise TokenizerError("GGUF metadata has no tokenizer.ggml.tokens")
        scores = md.get("tokenizer.ggml.scores")
        types = md.get("tokenizer.ggml.token_type")
        scores = [0.0] * len(tokens) if scores is None else scores
        types = [NORMAL] * len(tokens) if types is None else types
        tok = cls(list(tokens), list(scores), [int(t) for t in types],
                  unk_id=md.get("tokenizer.ggml.unknown_token_id", 0),
                  bos_id=md.get("tokenizer.ggml.bos_token_id", 1),
                  eos_id=md.get("tokenizer.ggml.eos_token_id", 2),
                  add_dummy_prefix=bool(md.get("tokenizer.ggml.add_space_prefix", True)),
                  remove_extra_whitespaces=bool(md.get("tokenizer.ggml.remove_extra_whitespaces", False)))
        tok.add_bos = bool(md.get("tokenizer.ggml.add_bos_token", True)) and tok.bos_id is not None
        template = md.get("tokenizer.chat_template") or ""
        if "<|im_start|>" in template:
            tok.chat_format = "chatml"
        elif "<|start_header_id|>" in template:
            tok.chat_format = "llama3"
        return tok

    # -- encoding (special tokens, BOS/EOS and input checks: base.Tokenizer.encode) ------------

    def _encode_ordinary(self, text: str) -> list[int]:
        """Text (no special tokens) -> ids: normalize, BPE by score, byte fallback.

        base.Tokenizer.encode calls this once per stretch of text between allowed special
        tokens, so each stretch gets its own dummy prefix, as in Meta's Llama 2 chat code (which
        encodes every turn separately)."""
        text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> "?"
        ids: list[int] = []
        prev_unk = False
        for piece in self.bpe(self.normalize(text)):
            i = self.piece_to_id.get(piece)
            if i is None:
                i = self.reserved_to_id.get(piece, self.unk_id)
            is_unk = self.types[i] == UNKNOWN
            if is_unk and self.byte_fallback:
                ids += [self.byte_ids[b] for b in piece.encode("utf-8")]
            elif not (is_unk and prev_unk):  # a run of unknown characters is one <unk>
                ids.append(i)
            prev_unk = is_unk
        return ids

    def normalize(self, text: str) -> str:
        """Text -> the string BPE sees, e.g. "Hello  world" -> "▁Hello▁▁world" (Llama 2)."""
        if not text:
            return ""
        units = self._units(text)
        if self.remove_extra_whitespaces:  # drop leading spaces
            while units and units[0] == " ":
                units.pop(0)
            if not units:
                return ""
        out = [SPACE if self.escape_whitespaces else " "] if self.add_dummy_prefix else []
        prev_space = self.remove_extra_whitespaces
        for u in units:
            if prev_space:  # collapse runs of spaces (only when removing extra whitespace)
                u = u.lstrip(" ")
            if u:
                out.append(u.replace(" ", SPACE) if self.escape_whitespaces else u)
                prev_space = self.remove_extra_whitespaces and u.endswith(" ")
        s = "".join(out)
        if self.remove_extra_whitespaces:  # and trailing ones
            s = s.rstrip(SPACE if self.escape_whitespaces else " ")
        return s

    def _units(self, text: str) -> list[str]:
        """Split text into normalization units, each already rewritten: user-defined pieces whole,
        then the longest charsmap rule, else one character."""
        if self.charsmap is None and not self.user_defined:
            return list(text)  # identity (Llama 2): every character stands for itself
        units, data, pos = [], text.encode("utf-8"), 0
        while pos < len(data):
            user = next((u for u in self._user_defined_bytes if data.startswith(u, pos)), None)
            if user is not None:
                units.append(user.decode("utf-8"))
                pos += len(user)
                continue
            rule = self.charsmap.longest_match(data, pos) if self.charsmap else None
            if rule is not None:
                units.append(rule[1].decode("utf-8", "replace"))
                pos += rule[0]
            else:
                n = _utf8_len(data[pos])
                units.append(data[pos:pos + n].decode("utf-8"))
                pos += n
        return units

    def bpe(self, s: str) -> list[str]:
        """Merge characters of a normalized string by score -> the final pieces (strings).

        As in sentencepiece's bpe_model.cc: a heap of candidate pairs ordered by (highest score,
        leftmost); symbols form a linked list; an entry whose symbols changed size since it was
        pushed is stale and skipped.
        """
        syms, frozen = self._initial_symbols(s)
        n = len(syms)
        nxt = list(range(1, n)) + [-1]
        prv = list(range(-1, n - 1))
        heap: list[tuple] = []
        unmerge: dict[str, tuple[str, str]] = {}  # unused pieces are split back at the end
        get, scores, types = self.piece_to_id.get, self.scores, self.types

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0 or frozen[left] or frozen[right]:
                return
            merged = syms[left] + syms[right]
            i = get(merged)
            if i is None:
                return
            heapq.heappush(heap, (-scores[i], left, right, len(merged)))
            if types[i] == UNUSED:
                unmerge[merged] = (syms[left], syms[right])

        for k in range(n - 1):
            push(k, k + 1)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if not syms[left] or not syms[right] or len(syms[left]) + len(syms[right]) != size:
                continue  # stale
            syms[left] += syms[right]
            syms[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            push(prv[left], left)
            push(left, nxt[left])

        out: list[str] = []

        def resegment(w: str) -> None:
            i = get(w)
            if i is not None and types[i] == UNUSED and w in unmerge:
                resegment(unmerge[w][0])
                resegment(unmerge[w][1])
            else:
                out.append(w)
        k = 0 if n else -1
        while k != -1:
            resegment(syms[k])
            k = nxt[k]
        return out

    def _initial_symbols(self, s: str) -> tuple[list[str], list[bool]]:
        if not self.user_defined:
            return list(s), [False] * len(s)
        syms, frozen, pos = [], [], 0
        while pos < len(s):
            user = next((u for u in self.user_defined if s.startswith(u, pos)), None)
            syms.append(user or s[pos])
            frozen.append(user is not None)
            pos += len(user) if user else 1
        return syms, frozen

    # -- decoding -----------------------------------------------------------------------------

    def id_to_bytes(self, i: int) -> bytes:
        """One id's bytes on its own: "▁" as a space, byte pieces as the byte, control pieces as
        nothing (decode() also drops the leading dummy-prefix space)."""
        if not 0 <= i < self.vocab_size:
            raise TokenizerError(f"token id {i} is outside this tokenizer's vocabulary "
                                 f"(0..{self.vocab_size - 1})")
        t, p = self.types[i], self.pieces[i]
        if t == BYTE:
            return bytes([int(p[3:5], 16)])
        if t == CONTROL:
            return b""
        if t == UNKNOWN:
            return self.unk_surface.encode("utf-8")
        return p.replace(SPACE, " ").encode("utf-8")

    def decode(self, ids) -> str:
        """ids -> text, as sentencepiece's DecodeIds does."""
        step = self._decoder_step()
        return b"".join([step(i) for i in self._token_ids(ids)]).decode("utf-8", errors="llama_np_spm")

    def stream_decoder(self):
        """ids -> text chunk by chunk; the chunks join to exactly ``decode(all ids)``."""
        step = self._decoder_step()
        dec = codecs.getincrementaldecoder("utf-8")(errors="llama_np_spm")
        return lambda ids: dec.decode(b"".join(step(i) for i in self._token_ids(ids)))

    def _decoder_step(self):
        """A function id -> bytes that remembers whether the dummy-prefix space is still to strip.

        sentencepiece strips one leading "▁" from the first piece that produces text (control
        tokens like BOS produce none). With remove_extra_whitespaces it keeps stripping until
        some text has appeared.
        """
        strip = self.add_dummy_prefix or self.remove_extra_whitespaces
        state = {"at_start": True, "stripped": False, "emitted": False}

        def step(i: int) -> bytes:
            b = self.id_to_bytes(i)
            t = self.types[i]
            if t != BYTE:
                if state["stripped"] or state["emitted"]:
                    state["at_start"] = False
                state["stripped"] = False
                if state["at_start"] and strip and t not in (CONTROL, UNKNOWN) \
                        and self.pieces[i].startswith(SPACE):
                    b = b[1:]
                    state["stripped"] = not self.remove_extra_whitespaces
            state["emitted"] = state["emitted"] or bool(b)
            return b
        return step


def _utf8_len(lead: int) -> int:
    """Bytes in the UTF-8 character that starts with byte ``lead``."""
    return 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
