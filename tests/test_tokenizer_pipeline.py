"""The one encode pipeline (tokenizer/base.py): the four tokenizer classes handle special tokens,
BOS/EOS and bad input the same way, because only base.Tokenizer does it.

Each class gets a tiny vocabulary of its own format (bytes, "a", "b", "ab" and one EOS special),
so these tests need no files. The reference tests (test_tokenizer_*.py) check the real ones."""
import re

import numpy as np
import pytest

from llama_np.tokenizer import TokenizerError
from llama_np.tokenizer.bytelevel import BYTE_TO_CHAR, GPT2_PATTERN, ByteLevelBPETokenizer
from llama_np.tokenizer.sentencepiece import CONTROL, NORMAL, SPACE, UNKNOWN, SentencePieceTokenizer
from llama_np.tokenizer.tiktoken_bpe import TiktokenTokenizer
from llama_np.tokenizer.train import BPETokenizer

KINDS = ["tiktoken", "bytelevel", "sentencepiece", "trained"]


def make(kind: str, eos: bool = True):
    """A tiny tokenizer of each class, with an EOS special token (or no specials at all) and no BOS."""
    if kind == "tiktoken":
        ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256}
        return TiktokenTokenizer(ranks, {"<|end_of_text|>": 257} if eos else {})
    if kind == "bytelevel":
        tokens = [BYTE_TO_CHAR[b] for b in range(256)] + ["ab", "<|end_of_text|>"]
        return ByteLevelBPETokenizer(tokens, [("a", "b")], [GPT2_PATTERN],
                                     special_tokens={"<|end_of_text|>": 257} if eos else {},
                                     eos_id=257 if eos else None)
    if kind == "sentencepiece":
        pieces = ["<unk>", "</s>", SPACE, "a", "b", "ab", SPACE + "a", SPACE + "ab"]
        scores = [0, 0, -1, -2, -3, -0.5, -0.6, -0.1]
        types = [UNKNOWN, CONTROL if eos else NORMAL] + [NORMAL] * 6
        return SentencePieceTokenizer(pieces, scores, types, bos_id=-1, eos_id=1 if eos else -1)
    if kind == "trained":
        return BPETokenizer({(97, 98): 256}, special_tokens={"<|endoftext|>": 257} if eos else {})
    raise AssertionError(kind)


def eos_text(tok) -> str:
    return next(name for name, i in tok.special_tokens.items() if i == tok.eos_id)


# Each mistake a caller can make, as a call on a tokenizer.
MISTAKES = {
    "encode bytes": lambda t: t.encode(b"ab"),
    "encode None": lambda t: t.encode(None),
    "encode a list": lambda t: t.encode(["ab"]),
    "encode_ordinary bytes": lambda t: t.encode_ordinary(b"ab"),
    "BOS it does not have": lambda t: t.encode("ab", bos=True),
    "unknown special token": lambda t: t.encode("ab", allowed_special={"<|not_a_special|>"}),
    "allowed_special a word": lambda t: t.encode("ab", allowed_special="some"),
    "allowed_special a number": lambda t: t.encode("ab", allowed_special=1),
    "decode id -1": lambda t: t.decode([0, -1]),
    "decode id vocab_size": lambda t: t.decode([t.vocab_size]),
    "decode a float id": lambda t: t.decode([97.0]),
    "decode a str id": lambda t: t.decode(["a"]),
    "decode a str": lambda t: t.decode("ab"),
    "decode an int": lambda t: t.decode(97),
    "stream-decode id -1": lambda t: t.stream_decoder()([-1]),
}


def message(tok, call) -> str:
    with pytest.raises(TokenizerError) as e:
        call(tok)
    return str(e.value)


@pytest.mark.parametrize("mistake", MISTAKES)
def test_same_mistake_same_error_in_all_four(mistake):
    """One error type, one line, and the same words (numbers aside) from every tokenizer."""
    messages = {kind: message(make(kind), MISTAKES[mistake]) for kind in KINDS}
    for kind, text in messages.items():
        assert text and "\n" not in text, (kind, text)
    assert len({re.sub(r"-?\d+", "N", m) for m in messages.values()}) == 1, messages


def test_missing_eos_is_the_same_error_in_all_four():
    messages = {kind: message(make(kind, eos=False), lambda t: t.encode("ab", eos=True))
                for kind in KINDS}
    assert set(messages.values()) == {"this tokenizer has no EOS token"}, messages


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_bos_eos_one_pipeline(kind):
    """Specials are cut out only when allowed; the text between them is encoded on its own."""
    tok = make(kind)
    eos = eos_text(tok)
    text = f"ab{eos}ab"
    ab = tok.encode_ordinary("ab")
    assert tok.decode(ab) == "ab"
    for allowed in ("all", {eos}, [eos]):
        assert tok.encode(text, allowed_special=allowed) == ab + [tok.eos_id] + ab
    as_text = tok.encode(text)  # default "none": the special's text is ordinary text
    assert tok.eos_id not in as_text and as_text == tok.encode_ordinary(text)
    assert tok.encode(text, allowed_special=None) == tok.encode(text, allowed_special=set()) == as_text
    assert tok.encode("ab", eos=True) == ab + [tok.eos_id]
    assert tok.encode("") == [] and tok.encode("", eos=True) == [tok.eos_id]
    # NumPy ids (what the model returns) decode like Python ints
    assert tok.decode(np.array(ab + [tok.eos_id])) == tok.decode(ab + [tok.eos_id])


def test_bos_goes_first_whatever_the_tokenizer():
    ranks = {bytes([b]): b for b in range(256)}
    tok = TiktokenTokenizer(ranks, {"<|begin_of_text|>": 256, "<|end_of_text|>": 257})
    assert tok.encode("a", bos=True, eos=True) == [256, 97, 257]
    pieces = ["<unk>", "<s>", "</s>", SPACE, "a"]
    sp = SentencePieceTokenizer(pieces, [0] * 5, [UNKNOWN, CONTROL, CONTROL, NORMAL, NORMAL])
    assert sp.add_bos and sp.encode("a", bos=True, eos=True) == [1, 3, 4, 2]
    no_bos = SentencePieceTokenizer(pieces, [0] * 5, [UNKNOWN, CONTROL, CONTROL, NORMAL, NORMAL],
                                    bos_id=-1)
    assert not no_bos.add_bos  # so `encode(text, bos=tok.add_bos)` never asks for a missing BOS


def test_lone_surrogates_never_raise():
    """Invalid UTF-8 in argv reaches Python as lone surrogates. Each format keeps its reference's
    rule (tiktoken and byte-level BPE: U+FFFD; SentencePiece: "?"; minbpe: the surrogate's bytes),
    and none raises UnicodeEncodeError."""
    text = "a\udcffb"
    fffd = list("\ufffd".encode("utf-8"))
    assert make("tiktoken").encode(text) == make("bytelevel").encode(text) == [97, *fffd, 98]
    for kind in ("sentencepiece", "trained"):
        assert make(kind).encode(text)
