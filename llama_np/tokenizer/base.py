"""What every tokenizer in llama_np offers, whatever file it came from.

A tokenizer turns text into token ids and back. Subclasses implement ``encode`` (with their own
special-token splitting and BOS/EOS, since each format decides differently which specials are
matched) and ``id_to_bytes``; this base gives them the shared ``decode`` and a streaming decoder.
"""
from __future__ import annotations

import codecs


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
    #: "llama3" | "llama2" | "chatml" | None: which chat template ``llama_np.tokenizer.chat`` uses
    chat_format: str | None = None
    #: whether the model wants BOS in front of a prompt (Llama 2/3 yes, SmolLM2 no)
    add_bos: bool = True

    def encode(self, text: str, bos: bool = False, eos: bool = False, allowed_special="none") -> list[int]:
        """Text -> ids. ``allowed_special``: "all", "none" (specials are plain text), or a set of strings."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        """ids -> text (invalid UTF-8 is replaced by U+FFFD, as tiktoken and HF do)."""
        return b"".join(self.id_to_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def id_to_bytes(self, i: int) -> bytes:
        raise NotImplementedError

    def stream_decoder(self):
        """A function ids -> text that holds back incomplete UTF-8 sequences until they complete,
        so streaming never prints half an emoji."""
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda ids: dec.decode(b"".join(self.id_to_bytes(int(i)) for i in ids))
