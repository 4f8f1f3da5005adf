"""BPE training (llama_np.tokenizer.train) against three independent references:

* minbpe's published example ("aaabdaaabac", karpathy/minbpe tests/test_tokenizer.py);
* minbpe's algorithm itself, written out naively below (recount everything after each merge),
  so the incremental bookkeeping and the tie-breaking must reproduce it merge for merge;
* Hugging Face ``tokenizers``' BpeTrainer. Its tie-breaking differs from minbpe's (it takes the
  smallest pair id among equal counts), so merge lists can't be compared directly. Instead we
  replay HF's merges through our trainer: at every step HF's choice must be one of the pairs our
  counts say are tied at the top. Any counting error would show up as a pair we don't rank first.
* tiktoken encodes with the learned vocabulary as ranks: its encoding must equal ours.
"""
import functools
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_np.tokenizer.base import TokenizerError
from llama_np.tokenizer.tiktoken_bpe import LLAMA3_PATTERN
from llama_np.tokenizer.train import BPETokenizer, train_bpe


def naive_minbpe_train(text, vocab_size, pattern=LLAMA3_PATTERN):
    """minbpe's RegexTokenizer.train, as written there: recount all pairs after every merge."""
    import regex
    ids = [list(ch.encode("utf-8")) for ch in regex.findall(pattern, text)]
    merges = {}
    for new_id in range(256, vocab_size):
        stats = {}
        for chunk in ids:
            for pair in zip(chunk, chunk[1:]):
                stats[pair] = stats.get(pair, 0) + 1
        if not stats:
            break
        pair = max(stats, key=stats.get)  # first inserted wins ties
        merges[pair] = new_id
        new_ids = []
        for chunk in ids:
            out, i = [], 0
            while i < len(chunk):
                if i + 1 < len(chunk) and (chunk[i], chunk[i + 1]) == pair:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(chunk[i])
                    i += 1
            new_ids.append(out)
        ids = new_ids
    return merges


def synthetic_text(kind: str, seed: int = 0) -> str:
    """A few hundred kB of Zipf-distributed made-up words: counts large enough to be interesting."""
    rng = random.Random(seed)
    if kind == "syllables":  # multi-byte characters, contractions, digits, double spaces
        syll = ["ka", "to", "ri", "en", "the", "ing", "qu", "é", "中", "ß", "ld", "st", "ar", "  ",
                "\n", "'S", "'ll", "12", "345"]
        words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
        return " ".join(rng.choices(words, [1 / (k + 1) for k in range(3000)], k=60000))
    letters = "abcdefghijklmnopqrstuvwxyz"
    weights = [rng.random() ** 2 for _ in letters]
    words = ["".join(rng.choices(letters, weights, k=rng.randint(1, 7))) for _ in range(5000)]
    seps = [" ", " ", " ", ", ", ". ", "\n", "  ", "'s ", " 1", "0 "]
    return "".join(w + rng.choice(seps)
                   for w in rng.choices(words, [1 / (k + 1) ** 1.1 for k in range(5000)], k=80000))


SAMPLE = """The quick brown fox jumps over the lazy dog. It's 2024; they'll pay $1,234.56!
def f(x):\n    return x ** 2\n\n\tCafé naïve 日本語 😀👍🏽   spaces   and\r\nnewlines"""


def test_minbpe_wikipedia_example():
    # karpathy/minbpe tests/test_tokenizer.py::test_wikipedia_example
    tok = BPETokenizer.train("aaabdaaabac", 256 + 3)
    assert tok.merges == {(97, 97): 256, (256, 97): 257, (257, 98): 258}
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.decode(tok.encode("aaabdaaabac")) == "aaabdaaabac"


@pytest.mark.parametrize("text", [SAMPLE, SAMPLE * 3 + "aaaa bbbb aaaa", synthetic_text("syllables")[:20000]])
def test_same_merges_as_naive_minbpe(text):
    assert train_bpe(text, 256 + 120) == naive_minbpe_train(text, 256 + 120)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aab cd\n'sé中")), max_size=60))
def test_random_texts_same_merges_as_naive_minbpe(text):
    # tiny texts are full of ties and of chunks that become one token: the hard cases
    assert train_bpe(text, 256 + 30) == naive_minbpe_train(text, 256 + 30)


@pytest.mark.parametrize("kind", ["syllables", "letters"])
def test_counts_agree_with_hf_bpe_trainer(kind):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Regex, models, pre_tokenizers, trainers
    text, n_merges = synthetic_text(kind), 800
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=256 + n_merges, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    merges = [m if isinstance(m, list) else m.split(" ")
              for m in json.loads(hf.to_str())["model"]["merges"]]
    # HF stores bytes as printable characters (GPT-2's byte-to-unicode table): map them back
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    char_of = {b: chr(b) for b in printable}
    char_of.update({b: chr(256 + k) for k, b in enumerate(b for b in range(256) if b not in printable)})
    byte_of = {c: b for b, c in char_of.items()}
    hf_merges = iter([(bytes(byte_of[c] for c in a), bytes(byte_of[c] for c in b)) for a, b in merges])

    vocab = {i: bytes([i]) for i in range(256)}
    ties_seen = []

    def follow_hf(tied):
        a, b = next(hf_merges)
        ours = [p for p in tied if (vocab[p[0]], vocab[p[1]]) == (a, b)]
        assert ours, f"merge {len(vocab) - 256}: HF merged {a!r}+{b!r}, not among our top pairs"
        vocab[len(vocab)] = a + b
        ties_seen.append(len(tied) > 1)
        return ours[0]

    learned = train_bpe(text, 256 + n_merges, tie_break=follow_hf)
    assert len(learned) == len(merges) == n_merges
    assert sum(ties_seen) > 100  # the replay really went through many tied steps


@pytest.fixture(scope="module")
def trained():
    return BPETokenizer.train(synthetic_text("syllables") + SAMPLE * 20, 256 + 500)


def test_encode_matches_tiktoken_with_learned_ranks(trained):
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {trained.vocab[i]: i for i in range(256 + len(trained.merges))}
    assert len(ranks) == 256 + len(trained.merges)  # no two tokens with the same bytes
    ref = tiktoken.Encoding("trained", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens={})
    for text in [SAMPLE, synthetic_text("syllables", seed=1)[:30000], synthetic_text("letters", 2)[:30000]]:
        assert trained.encode(text) == ref.encode_ordinary(text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=100))
def test_round_trip(text):
    tok = _small_tokenizer()
    # lone surrogates can't round-trip through UTF-8; everything else must
    if all(not 0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert tok.decode(tok.encode(text)) == text


@functools.lru_cache(maxsize=None)
def _small_tokenizer():
    return BPETokenizer.train(SAMPLE * 5, 256 + 60)


def test_save_load_round_trip(tmp_path, trained):
    trained = BPETokenizer(trained.merges, special_tokens={"<|endoftext|>": 100000,
                                                           "<|fim prefix|>": 100001})
    p = tmp_path / "toy.bpe"
    trained.save(p)
    loaded = BPETokenizer.load(p)
    assert loaded.merges == trained.merges and loaded.pattern == trained.pattern
    assert loaded.special_tokens == trained.special_tokens
    text = SAMPLE + "<|endoftext|>" + "<|fim prefix|>more"
    assert loaded.encode(text, allowed_special="all") == trained.encode(text, allowed_special="all")
    ids = loaded.encode(text, allowed_special="all", eos=True)
    assert ids[-1] == 100000 and 100001 in ids
    assert loaded.decode(ids) == text + "<|endoftext|>"
    assert loaded.encode("<|endoftext|>") != [100000]  # not special unless allowed


def test_bad_files_and_ids_raise(tmp_path):
    p = tmp_path / "bad.bpe"
    p.write_text("something else\n")
    with pytest.raises(TokenizerError):
        BPETokenizer.load(p)
    p.write_text("llama_np bpe v1\npattern\nnot-a-number\n")
    with pytest.raises(TokenizerError):
        BPETokenizer.load(p)
    with pytest.raises(TokenizerError):
        _small_tokenizer().decode([10**6])
    with pytest.raises(ValueError):
        train_bpe("abc", 100)
