"""Llama 2's tokenizer (SentencePiece BPE) against Google's sentencepiece, id for id.

No Llama 2 tokenizer.model is reachable here (it is gated), so the test trains small BPE models
with sentencepiece itself, one with exactly Llama 2's training settings, and compares our
hand-written protobuf reader + encoder + decoder with sentencepiece's own on them. Exact
equality throughout: there is no tolerance in tokenization.
"""
import random

import pytest

spm = pytest.importorskip("sentencepiece")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from llama_np.tokenizer.base import TokenizerError  # noqa: E402
from llama_np.tokenizer.sentencepiece import SentencePieceTokenizer  # noqa: E402

# Training text: English prose, code, numbers, whitespace oddities, accents, CJK, emoji, so that
# merges, split digits, whitespace-only pieces and byte fallback all get exercised.
TRAIN_TEXT = """\
The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.
Once upon a time there was a little girl who lived in a village near the forest.
Whenever she went out, the little girl wore a red riding cloak, so everyone called her Little Red.
It was the best of times, it was the worst of times, it was the age of wisdom.
In 1969, 600 million people watched the landing; 12 men have walked on the Moon since then.
Prices rose 3.5% in 2023 and 4.25% in 2024, to $1,299.99 per unit.
def tokenize(text):
    return [t for t in text.split() if t]
for (int i = 0; i < n; ++i) { total += values[i]; }
    indented    line   with     many      spaces
tabs\tseparate\tthese\tcolumns
Café, naïve, résumé, façade, jalapeño, Zürich, Ångström, coöperate.
Les élèves étudient à l'école près de la forêt.
Der schnelle braune Fuchs springt über den faulen Hund.
Быстрая коричневая лиса прыгает через ленивую собаку.
日本語の文章も少し入れておきます。東京は大きな都市です。
中文句子也在这里，我们一起学习分词。
Emoji make text fun 😀 🎉 👍 and sometimes 🙂 twice 🙂.
"Quotes", 'single quotes', (parentheses), [brackets], {braces}, <angles>.
hello hello hello world world world tokenization tokenizer tokens token
"""
LINES = [ln for ln in TRAIN_TEXT.splitlines() if ln.strip()]

# Llama 2's trainer_spec/normalizer_spec (read from Meta's tokenizer.model), scaled down.
LLAMA2_SETTINGS = dict(model_type="bpe", split_digits=True, byte_fallback=True,
                       add_dummy_prefix=True, allow_whitespace_only_pieces=True,
                       normalization_rule_name="identity", remove_extra_whitespaces=False,
                       split_by_unicode_script=True, max_sentencepiece_length=16,
                       character_coverage=0.99995, pad_id=-1, unk_id=0, bos_id=1, eos_id=2)
# sentencepiece's defaults (NFKC rules, whitespace clean-up) plus user-defined and control pieces
DEFAULT_SETTINGS = dict(model_type="bpe", byte_fallback=True, character_coverage=0.98,
                        user_defined_symbols=["<tool>", "@@"], control_symbols=["<ctrl>"])
# no byte fallback (unknown characters -> <unk>), no dummy prefix
NO_FALLBACK_SETTINGS = dict(model_type="bpe", byte_fallback=False, add_dummy_prefix=False,
                            normalization_rule_name="identity", character_coverage=0.98)


def _train(tmp_path_factory, name, vocab_size, **settings):
    import io
    model = io.BytesIO()
    # repeat the lines so that pair counts differ and the merges are not all ties
    sentences = [ln for k in range(1, 4) for ln in LINES[: len(LINES) // k]]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model,
                                   vocab_size=vocab_size, hard_vocab_limit=False,
                                   minloglevel=2, num_threads=1, **settings)
    path = tmp_path_factory.mktemp("spm") / f"{name}.model"
    path.write_bytes(model.getvalue())
    return path


@pytest.fixture(scope="module", params=["llama2", "default", "nofallback"])
def model(request, tmp_path_factory):
    settings, vocab = {"llama2": (LLAMA2_SETTINGS, 700), "default": (DEFAULT_SETTINGS, 600),
                       "nofallback": (NO_FALLBACK_SETTINGS, 300)}[request.param]
    path = _train(tmp_path_factory, request.param, vocab, **settings)
    return path, spm.SentencePieceProcessor(model_file=str(path)), SentencePieceTokenizer.from_file(path)


@pytest.fixture(scope="module")
def llama2_model(tmp_path_factory):
    path = _train(tmp_path_factory, "llama2", 700, **LLAMA2_SETTINGS)
    return path, spm.SentencePieceProcessor(model_file=str(path))


CORPUS = LINES + [
    "", " ", "  ", "a", "Hello", " Hello", "Hello ", "  Hello  world  ", "\tHello\n", "\n\n",
    "hello world", "The quick brown fox", "tokenization tokenizer", "12345 67890 3.14159",
    "Ünïcödé characters never seen: ÿ ŵ ǆ", "unseen CJK 龘 and 𠜎 and emoji 🦙🦙",
    "fullwidth ＡＢＣ１２３ and ligature ﬁ ﬂ and ① ㈱ (NFKC rewrites these)",
    "space\u3000ideographic and nbsp\u00a0here", "zero\u200bwidth\ufeffbom", "e\u0301 vs é",
    "a  b   c    d", "▁already▁escaped▁", "<s> not a bos </s>", "<unk> <ctrl> <tool> x@@y",
    "mixed\r\nline\rends", "\x00nul\x01 controls\x7f", "x" * 500, "the " * 200,
]


def test_model_settings_are_read(model):
    path, sp, tok = model
    assert tok.vocab_size == sp.get_piece_size()
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (sp.bos_id(), sp.eos_id(), sp.unk_id())
    for i in range(sp.get_piece_size()):
        assert tok.pieces[i] == sp.id_to_piece(i)
        assert tok.scores[i] == sp.get_score(i)  # float32 read exactly


def test_models_exercise_every_path(model):
    """Guard against a vacuous comparison: each model must hit the code paths it is here for."""
    path, sp, tok = model
    ids = sp.encode("\n".join(CORPUS))
    kinds = {tok.types[i] for i in ids}
    if path.stem == "llama2":
        assert 6 in kinds and tok.charsmap is None  # byte pieces, identity normalization
    if path.stem == "default":
        assert tok.charsmap is not None and tok.remove_extra_whitespaces and 4 in kinds  # user-defined
        assert tok.normalize("\ufb01  \uff21 ") == "\u2581fi\u2581A"  # NFKC rules, spaces cleaned
    if path.stem == "nofallback":
        assert 2 in kinds and not tok.byte_fallback  # <unk>


@pytest.mark.parametrize("text", CORPUS)
def test_encode_decode_match_sentencepiece(model, text):
    _, sp, tok = model
    ids = tok.encode(text)
    assert ids == sp.encode(text)
    assert tok.decode(ids) == sp.decode(ids)
    assert tok.encode(text, bos=True, eos=True) == sp.encode(text, add_bos=True, add_eos=True)


def test_whole_corpus_as_one_text(model):
    _, sp, tok = model
    text = "\n".join(CORPUS)
    assert tok.encode(text) == sp.encode(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_random_unicode_matches_sentencepiece(model, text):
    # lone surrogates excluded: sentencepiece's Python binding refuses them
    _, sp, tok = model
    ids = tok.encode(text)
    assert ids == sp.encode(text)
    assert tok.decode(ids) == sp.decode(ids)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from(list("  \t\nthe quick 0123 éü中😀▁<>s/")), max_size=80))
def test_random_tricky_text_matches_sentencepiece(model, text):
    _, sp, tok = model
    assert tok.encode(text) == sp.encode(text)


def test_decode_random_ids_matches_sentencepiece(model):
    """Any id sequence, including BOS/EOS, <unk>, broken byte sequences and leading spaces."""
    _, sp, tok = model
    rng = random.Random(0)
    n = sp.get_piece_size()
    for _ in range(500):
        ids = [rng.randrange(n) for _ in range(rng.randint(0, 12))]
        assert tok.decode(ids) == sp.decode(ids), ids


def test_stream_decoder_joins_to_decode(model):
    _, sp, tok = model
    rng = random.Random(1)
    for text in CORPUS[:40]:
        ids = tok.encode(text, bos=True)
        dec, out, k = tok.stream_decoder(), [], 0
        while k < len(ids):  # feed chunks of random size
            step = rng.randint(1, 3)
            out.append(dec(ids[k:k + step]))
            k += step
        assert "".join(out) == sp.decode(ids)


def test_special_tokens_are_text_unless_allowed(llama2_model):
    path, sp = llama2_model
    tok = SentencePieceTokenizer.from_file(path)
    text = "<s>[INST] hi [/INST] ok </s>"
    assert tok.encode(text) == sp.encode(text)  # plain text by default, like sentencepiece
    # allowed: each stretch between specials is encoded on its own, dummy prefix included
    expected = [1] + sp.encode("[INST] hi [/INST] ok ") + [2]
    assert tok.encode(text, allowed_special="all") == expected


def test_llama2_flags(llama2_model):
    path, _ = llama2_model
    tok = SentencePieceTokenizer.from_file(path)
    assert tok.chat_format == "llama2" and tok.add_bos and tok.stop_ids == {2}
    assert tok.byte_fallback and tok.add_dummy_prefix and not tok.remove_extra_whitespaces
    try:  # the package's loader must recognise the protobuf by its content
        from llama_np.tokenizer import load_tokenizer
    except ImportError:
        return
    assert isinstance(load_tokenizer(path), SentencePieceTokenizer)


def test_truncated_model_raises_one_line(llama2_model):
    path, _ = llama2_model
    data = path.read_bytes()
    for cut in [1, 2, 7, len(data) // 3, len(data) // 2, len(data) - 40, len(data) - 3, len(data) - 1]:
        with pytest.raises(TokenizerError) as e:
            SentencePieceTokenizer.from_bytes(data[:cut])
        assert "\n" not in str(e.value)


def test_garbage_raises(tmp_path):
    for junk in [b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x0f\x00", b"\x0a\x05abc"]:
        with pytest.raises(TokenizerError):
            SentencePieceTokenizer.from_bytes(junk)


def test_unigram_model_is_refused(tmp_path_factory):
    path = _train(tmp_path_factory, "unigram", 300, model_type="unigram")
    with pytest.raises(TokenizerError, match="unigram"):
        SentencePieceTokenizer.from_file(path)


# -- the same vocabulary from a GGUF file (llama.cpp's "llama" tokenizer type) --------------

def _gguf_metadata(path):
    """GGUF key/values with the gguf package's reader (independent of llama_np)."""
    import gguf
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_from_gguf_matches_sentencepiece(llama2_model, tmp_path):
    gguf = pytest.importorskip("gguf")
    path, sp = llama2_model
    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    types = [1 + (sp.is_unknown(i)) + 2 * sp.is_control(i) + 5 * sp.is_byte(i) for i in range(n)]
    assert types[0] == 2 and types[1] == types[2] == 3 and types[3] == 6  # unk, ctrl, byte
    out = tmp_path / "tiny-llama-vocab.gguf"
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    tok = SentencePieceTokenizer.from_gguf(_gguf_metadata(out))
    for text in CORPUS:
        ids = tok.encode(text)
        assert ids == sp.encode(text)
        assert tok.decode(ids) == sp.decode(ids)
    assert tok.add_bos and tok.bos_id == 1 and tok.eos_id == 2

    try:  # and through the package's own loader, when it is there
        from llama_np.tokenizer import load_tokenizer
    except ImportError:
        return
    tok2 = load_tokenizer(out)
    assert isinstance(tok2, SentencePieceTokenizer)
    assert tok2.encode(CORPUS[0]) == sp.encode(CORPUS[0])


def test_from_gguf_rejects_inconsistent_vocab():
    md = {"tokenizer.ggml.tokens": ["<unk>", "a"], "tokenizer.ggml.scores": [0.0],
          "tokenizer.ggml.token_type": [2, 1]}
    with pytest.raises(TokenizerError):
        SentencePieceTokenizer.from_gguf(md)
