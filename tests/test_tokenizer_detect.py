"""load_tokenizer tells tokenizer files apart by content, and bad files give a one-line error.

Small files are written by the tests themselves (a GGUF with ``gguf.GGUFWriter``, a tiktoken ranks
file, a tokenizer.json, a SentencePiece model trained on the spot), so this runs without assets.
"""
import base64
import json
import os
import sys
import types

import numpy as np
import pytest

from llama_np.tokenizer import Tokenizer, TokenizerError, detect_format, load_tokenizer
from llama_np.tokenizer.bytelevel import BYTE_TO_CHAR, ByteLevelBPETokenizer
from llama_np.tokenizer.gguf_meta import GGUFFormatError, read_gguf_metadata

gguf = pytest.importorskip("gguf")

TINY_TOKENS = [BYTE_TO_CHAR[b] for b in range(256)] + ["he", "ll", "hell", "hello", "Ġw", "<|endoftext|>"]
TINY_MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w"]


def write_gguf(path, tokenizer_model="gpt2", tokens=TINY_TOKENS, merges=TINY_MERGES, extra=None):
    """A small but complete GGUF: a byte-level vocabulary, some merges, one tensor."""
    w = gguf.GGUFWriter(str(path), arch="llama")
    if tokenizer_model is not None:
        w.add_tokenizer_model(tokenizer_model)
        w.add_tokenizer_pre("gpt2")
        w.add_token_list(tokens)
        w.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
        if merges:
            w.add_token_merges(merges)
        w.add_eos_token_id(len(tokens) - 1)
        w.add_add_bos_token(False)
    for key, value in (extra or {}).items():
        w.add_string(key, value)
    w.add_tensor("token_embd.weight", np.arange(64 * 4, dtype=np.float32).reshape(64, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def assert_one_line(excinfo):
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, repr(msg)
    return msg


# --------------------------------------------------------------------------- GGUF


def test_gguf_gpt2_is_byte_level(tmp_path):
    path = write_gguf(tmp_path / "tiny.gguf")
    assert detect_format(path) == "gguf"
    tok = load_tokenizer(path)
    assert isinstance(tok, ByteLevelBPETokenizer) and isinstance(tok, Tokenizer)
    # the merges in the file decide: "hello" is one token, " world" starts with the merged "Ġw"
    assert tok.encode("hello world") == [259, 260, 111, 114, 108, 100]
    assert tok.decode(tok.encode("hello world")) == "hello world"
    assert tok.eos_id == 261 and tok.stop_ids == {261} and tok.add_bos is False


def test_content_not_name_decides(tmp_path):
    """A GGUF named tokenizer.json is still a GGUF."""
    path = write_gguf(tmp_path / "tokenizer.json")
    assert isinstance(load_tokenizer(path), ByteLevelBPETokenizer)


def test_gguf_metadata_is_plain_python(tmp_path):
    md = read_gguf_metadata(write_gguf(tmp_path / "tiny.gguf"))
    assert md["general.architecture"] == "llama"
    assert md["tokenizer.ggml.tokens"] == TINY_TOKENS
    assert md["tokenizer.ggml.merges"] == TINY_MERGES
    assert type(md["tokenizer.ggml.eos_token_id"]) is int
    assert md["tokenizer.ggml.add_bos_token"] is False
    assert not any(k.startswith("GGUF.") for k in md)  # the container header is not metadata
    json.dumps(md)  # plain values only


def test_gguf_without_tokenizer(tmp_path):
    path = write_gguf(tmp_path / "weights_only.gguf", tokenizer_model=None)
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(path)
    assert "without a tokenizer" in assert_one_line(e)


def test_gguf_unsupported_tokenizer_type(tmp_path):
    path = write_gguf(tmp_path / "bert.gguf", tokenizer_model="bert")
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(path)
    assert "'bert'" in assert_one_line(e)


def test_gguf_llama_goes_to_sentencepiece(tmp_path, monkeypatch):
    """tokenizer.ggml.model == "llama" is SentencePiece: handed to SentencePieceTokenizer.from_gguf.
    (The real class is tested in its own file; a stand-in records the call here.)"""
    seen = {}

    class FakeSentencePiece(Tokenizer):
        @classmethod
        def from_gguf(cls, md):
            seen["model"] = md["tokenizer.ggml.model"]
            return cls()

    fake = types.ModuleType("llama_np.tokenizer.sentencepiece")
    fake.SentencePieceTokenizer = FakeSentencePiece
    monkeypatch.setitem(sys.modules, "llama_np.tokenizer.sentencepiece", fake)
    path = write_gguf(tmp_path / "spm.gguf", tokenizer_model="llama", merges=None)
    assert isinstance(load_tokenizer(path), FakeSentencePiece)
    assert seen == {"model": "llama"}


@pytest.mark.parametrize("keep", [4, 10, 100, 1000, -100, -1])
def test_truncated_gguf(tmp_path, keep):
    data = write_gguf(tmp_path / "tiny.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:keep])
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(cut)
    assert_one_line(e)
    with pytest.raises(GGUFFormatError):  # the metadata reader alone: a ValueError, one line
        read_gguf_metadata(cut)


def test_gguf_magic_then_garbage(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        path = tmp_path / f"garbage{i}.gguf"
        path.write_bytes(b"GGUF" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
        with pytest.raises(TokenizerError) as e:
            load_tokenizer(path)
        assert_one_line(e)


# --------------------------------------------------------------------------- tokenizer.json


def tiny_tokenizer_json():
    vocab = {t: i for i, t in enumerate(TINY_TOKENS[:-1])}
    return {
        "version": "1.0",
        "added_tokens": [{"id": 261, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "fuse_unk": False,
                  "byte_fallback": False, "vocab": vocab, "merges": TINY_MERGES},
    }


def test_tokenizer_json(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(tiny_tokenizer_json()))
    assert detect_format(path) == "tokenizer.json"
    tok = load_tokenizer(path)
    assert isinstance(tok, ByteLevelBPETokenizer)
    assert tok.encode("hello world<|endoftext|>", allowed_special="all") == [259, 260, 111, 114, 108,
                                                                            100, 261]
    assert tok.eos_id == 261


def test_folder_with_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps(tiny_tokenizer_json()))
    assert isinstance(load_tokenizer(tmp_path), ByteLevelBPETokenizer)


def test_folder_without_tokenizer(tmp_path):
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(tmp_path)
    assert_one_line(e)


@pytest.mark.parametrize("text", ['{"model": {"type": "BPE", "vocab": {', '{"version": "1.0"}', "[1, 2]",
                                  '{"model": {"type": "WordPiece", "vocab": {}}}'])
def test_bad_json(tmp_path, text):
    path = tmp_path / "tokenizer.json"
    path.write_text(text)
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(path)
    assert_one_line(e)


def test_sentencepiece_style_tokenizer_json_is_refused(tmp_path):
    """A Llama 2 tokenizer.json (BPE with byte_fallback, Metaspace) is not byte-level BPE."""
    data = tiny_tokenizer_json()
    data["model"]["byte_fallback"] = True
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁"}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(path)
    assert_one_line(e)


# --------------------------------------------------------------------------- tiktoken


def test_tiktoken_ranks_detected(tmp_path):
    path = tmp_path / "tokenizer.model"
    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    path.write_text("\n".join(lines) + "\n")
    assert detect_format(path) == "tiktoken"


def test_llama3_tiktoken_file_loads():
    assets = pytest.importorskip("llama_np.assets")
    tiktoken_bpe = pytest.importorskip("llama_np.tokenizer.tiktoken_bpe")
    try:
        path = assets.fetch("llama3-tokenizer")
    except Exception as e:  # offline and not cached
        pytest.skip(f"Llama 3 tokenizer asset unavailable: {e}")
    assert detect_format(path) == "tiktoken"
    tok = load_tokenizer(path)
    assert isinstance(tok, tiktoken_bpe.TiktokenTokenizer)
    assert tok.encode("hello world") == [15339, 1917]  # tiktoken with these ranks (docs/design.md §2)


# --------------------------------------------------------------------------- SentencePiece


def test_sentencepiece_model_detected(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    sp_module = pytest.importorskip("llama_np.tokenizer.sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["the quick brown fox jumps over the lazy dog"] * 50
                                + ["hello world, a tokenizer for a course"] * 50))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"),
                                   vocab_size=320, model_type="bpe", byte_fallback=True,
                                   minloglevel=2)
    path = tmp_path / "sp.model"
    assert detect_format(path) == "sentencepiece"
    tok = load_tokenizer(path)
    assert isinstance(tok, sp_module.SentencePieceTokenizer)
    ref = spm.SentencePieceProcessor(model_file=str(path))
    assert tok.encode("hello fox") == ref.encode("hello fox")


def test_protobuf_lookalike_garbage(tmp_path):
    pytest.importorskip("llama_np.tokenizer.sentencepiece")
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"\x0a\xff\xff\xff\x0f" + bytes(range(256)) * 4)
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(path)
    assert_one_line(e)


# --------------------------------------------------------------------------- garbage


@pytest.mark.parametrize("content", [b"", b"hello, I am a text file\n", b"\x89PNG\r\n\x1a\n" + bytes(200),
                                     bytes(range(1, 256)), b"   \n\n"])
def test_not_a_tokenizer(tmp_path, content):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(content)
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(path)
    msg = assert_one_line(e)
    assert "not a tokenizer file" in msg or "is empty" in msg


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_tokenizer(tmp_path / "nope" / "tokenizer.model")
    assert "tokenizer file not found" in assert_one_line(e)
    with pytest.raises(FileNotFoundError):
        read_gguf_metadata(os.path.join(tmp_path, "nope.gguf"))
