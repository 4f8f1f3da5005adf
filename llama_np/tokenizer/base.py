"""What every tokenizer in llama_np offers, whatever file it came from.

A tokenizer turns text into token ids and back. Encoding is one pipeline, here, for all formats:

1. check the input (a ``str``; ``allowed_special`` one of "all", "none" or a set of names);
2. cut the allowed special tokens (and the always-matched added tokens) out of the text: each
   becomes one id, and a user's text can't forge one unless the caller allows it;
3. encode each stretch of ordinary text between them: ``_encode_ordinary``, the one thing a
   subclass provides (tiktoken BPE, byte-level BPE, SentencePiece, a trained minbpe);
4. put BOS / EOS around it when asked (an error if the tokenizer has none).

Decoding is the subclass's ``id_to_bytes`` joined and read as UTF-8. Every mistake a caller can
make (non-str text, an unknown special token, a missing BOS, a token id out of range) raises the
same ``TokenizerError``, with a one-line message, whichever tokenizer it is.
"""
from __future__ import annotations

import codecs
import operator

import regex


class TokenizerError(ValueError):
    """A tokenizer file that cannot be read, or input it cannot handle: one line for the user."""


class Tokenizer:
    #: id -> raw bytes of the token (specials map to their text, UTF-8 encoded)
    vocab_size: int = 0
    bos_id: int | None = None
    eos_id: int | None = None
    #: ids that end generation (EOS plus e.g. Llama 3's <|eot_id|>, ChatML's <|im_end|>)
    stop_ids: set = set()
    #: special token text -> id (matched in the input only when allowed)
    special_tokens: dict = {}
    #: token text -> id matched whole in any input, allowed or not (Hugging Face's non-special
    #: "added tokens", GGUF's user-defined tokens)
    added_tokens: dict = {}
    #: "llama3" | "llama2" | "chatml" | None: which chat template ``llama_np.tokenizer.chat`` uses
    chat_format: str | None = None
    #: whether the model wants BOS in front of a prompt (Llama 2/3 yes, SmolLM2 no)
    add_bos: bool = True

    # -- what a subclass provides ---------------------------------------------------------------

    def _encode_ordinary(self, text: str) -> list[int]:
        """Text with no special tokens in it -> ids (the format's own BPE)."""
        raise NotImplementedError

    def id_to_bytes(self, i: int) -> bytes:
        """One id -> the bytes it stands for."""
        raise NotImplementedError

    # -- encoding ---------------------------------------------------------------------------------

    def encode(self, text: str, bos: bool = False, eos: bool = False, allowed_special="none") -> list[int]:
        """Text -> ids. ``allowed_special``: "all", "none" (special-token text is encoded as
        ordinary text, like tiktoken's ``disallowed_special=()``), or a set of special strings."""
        _check_text(text, "encode")
        ids = [self._required_id(self.bos_id, "BOS")] if bos else []
        splitter = self._special_splitter(allowed_special)
        if splitter is None:
            ids += self._encode_ordinary(text)
        else:
            # split with one capture group alternates: text, special, text, special, ..., text
            for k, part in enumerate(splitter.split(text)):
                if k % 2:
                    ids.append(self.special_tokens.get(part, self.added_tokens.get(part)))
                elif part:
                    ids += self._encode_ordinary(part)
        if eos:
            ids.append(self._required_id(self.eos_id, "EOS"))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids with nothing treated as special (tiktoken's ``encode_ordinary``)."""
        _check_text(text, "encode_ordinary")
        return self._encode_ordinary(text)

    def _special_splitter(self, allowed_special):
        """The regex that cuts the allowed specials and the added tokens out of a text, or None
        when there is nothing to cut. Compiled once per set of names."""
        if allowed_special == "all":
            allowed = frozenset(self.special_tokens)
        elif allowed_special is None or allowed_special == "none":
            allowed = frozenset()
        elif isinstance(allowed_special, (set, frozenset, list, tuple)):
            allowed = frozenset(allowed_special)
            unknown = allowed - self.special_tokens.keys()
            if unknown:
                shown = sorted(map(repr, unknown))[:3]
                raise TokenizerError(f"not special tokens of this tokenizer: {', '.join(shown)}")
        else:
            raise TokenizerError(f"allowed_special must be 'all', 'none' or a set of special "
                                 f"tokens, not {allowed_special!r:.60}")
        words = allowed | frozenset(self.added_tokens)
        if not words:
            return None
        cache = self.__dict__.setdefault("_splitters", {})
        if words not in cache:
            # longest first, so a name that is a prefix of another can't cut it short
            alternation = "|".join(regex.escape(w) for w in sorted(words, key=len, reverse=True))
            cache[words] = regex.compile(f"({alternation})")
        return cache[words]

    def _required_id(self, i, what: str) -> int:
        if i is None:
            raise TokenizerError(f"this tokenizer has no {what} token")
        return i

    # -- decoding ---------------------------------------------------------------------------------

    def decode(self, ids) -> str:
        """ids -> text (invalid UTF-8 is replaced by U+FFFD, as tiktoken and HF do)."""
        return b"".join([self.id_to_bytes(i) for i in self._token_ids(ids)]).decode("utf-8", errors="replace")

    def stream_decoder(self):
        """A function ids -> text that holds back incomplete UTF-8 sequences until they complete,
        so streaming never prints half an emoji."""
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda ids: dec.decode(b"".join(self.id_to_bytes(i) for i in self._token_ids(ids)))

    def _token_ids(self, ids) -> list[int]:
        """Check what decode was given: integers (Python or NumPy) within the vocabulary."""
        try:
            if isinstance(ids, (str, bytes)):
                raise TypeError
            ids = iter(ids)
        except TypeError:  # a str, a lone int, a 0-d array
            raise TokenizerError(f"decode() takes a sequence of token ids, not {type(ids).__name__}") from None
        out = []
        for i in ids:
            try:
                i = operator.index(i)  # int and NumPy integers; not floats, not strings
            except TypeError:
                raise TokenizerError(f"a token id must be an integer, not {i!r:.40}") from None
            if not 0 <= i < self.vocab_size:
                raise TokenizerError(f"token id {i} is outside this tokenizer's vocabulary "
                                     f"(0..{self.vocab_size - 1})")
            out.append(i)
        return out


def replace_lone_surrogates(text: str) -> str:
    """Lone surrogates ("\\ud800", what Python makes of invalid UTF-8 in argv) have no UTF-8 form:
    each becomes U+FFFD, as tiktoken does."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _check_text(text, where: str) -> None:
    if not isinstance(text, str):
        raise TokenizerError(f"{where}() takes a str, not {type(text).__name__}")
