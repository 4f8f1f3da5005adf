"""The reference fixture of lesson 01 (the tokenizer).

Without the reference extra: the committed text is the one the fixture was made from, the samples
are the make script's, and llama_np agrees with the stored library outputs, so the two references a
learner is checked against (llama_np on random inputs, the libraries' stored numbers) agree.
With sentencepiece, tokenizers and transformers installed: the make script, rerun now, gives the
committed fixture (it is what the libraries say, not a stale copy).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import regex

from course.fixtures import make_01_tokenizer as m01
from llama_np.tokenizer.chat import apply_chat_template
from llama_np.tokenizer.sentencepiece import SentencePieceTokenizer
from llama_np.tokenizer.tiktoken_bpe import LLAMA3_PATTERN


@pytest.fixture(scope="module")
def fx():
    return m01.load()


@pytest.fixture(scope="module")
def book():
    return m01.read_botchan()


# ------------------------------------------------------------------------- without the extra
def test_the_committed_text_is_the_one_the_fixture_was_made_from(fx, book):
    assert hashlib.sha256(book.encode("utf-8")).hexdigest() == str(fx["botchan_sha256"])
    assert int(fx["train_chars"]) == m01.train_chars(book)
    assert book.startswith("BOTCHAN (MASTER DARLING)\n") and book.endswith("--(THE END)--\n")
    assert "Gutenberg" not in book and "\r" not in book


def test_samples_are_the_make_scripts(fx, book):
    want = m01.samples(book)
    assert [str(n) for n in fx["sample_names"]] == list(want)
    for k, text in enumerate(want.values()):
        assert str(fx[f"sample_{k}"]) == text
    assert str(fx["sample_0"]) == m01.VARIED
    assert json.loads(str(fx["messages"])) == m01.MESSAGES


def test_llama_np_sentencepiece_gives_the_stored_ids(fx):
    sp = SentencePieceTokenizer.from_bytes(fx["sp_model"].tobytes())
    assert sp.vocab_size == m01.VOCAB_SIZE
    for k in range(len(fx["sample_names"])):
        assert sp.encode(str(fx[f"sample_{k}"])) == fx[f"sp_ids_{k}"].tolist(), str(fx["sample_names"][k])


def test_meta_pattern_gives_the_stored_hf_pieces(fx):
    text = str(fx["sample_0"])
    assert regex.findall(LLAMA3_PATTERN, text) == [text[s:e] for s, e in fx["hf_pieces"]]
    assert fx["hf_pieces"][0, 0] == 0 and fx["hf_pieces"][-1, 1] == len(text)   # nothing lost


def test_llama_np_chat_texts_are_the_stored_ones(fx):
    assert apply_chat_template(m01.MESSAGES, "llama3") == str(fx["llama3_chat_text"])
    assert apply_chat_template(m01.MESSAGES, "llama2") == str(fx["llama2_chat_text"])


def test_clean_botchan_keeps_the_novel_only():
    raw = ("\ufeffProject Gutenberg's Botchan\r\nlicence\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\n"
           "Produced by someone\r\nBOTCHAN\r\nOnce upon a time.\r\n--(THE END)--\r\n[A: note]\r\nEnd of it\r\n")
    assert m01.clean_botchan(raw) == "BOTCHAN\nOnce upon a time.\n--(THE END)--\n"


# ---------------------------------------------------------------------------- with the extra
def pieces_and_scores(model: bytes):
    """What a SentencePiece model says, read by the library itself: (piece, score) per id. The file's
    bytes may also hold trainer fields that a newer sentencepiece adds; the vocabulary is the point."""
    import sentencepiece
    sp = sentencepiece.SentencePieceProcessor(model_proto=model)
    return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]


@pytest.mark.slow   # ~12 s alone (transformers converts 128,000 ranks, reads the SmolLM2 GGUF); more on a busy machine
def test_remade_fixture_matches_the_committed_one(fx, book):
    pytest.importorskip("sentencepiece")
    pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")
    new = m01.make(book)
    assert set(new) == set(fx)
    assert pieces_and_scores(new["sp_model"].tobytes()) == pieces_and_scores(fx["sp_model"].tobytes())
    for key in sorted(set(fx) - {"made_with", "sp_model"}):
        np.testing.assert_array_equal(new[key], fx[key], err_msg=key)
