"""Known wrong answers to the course's exercises, so a failed check can say what went wrong.

Each ``Mistake`` is the wrong answer written as a learner would write it (``np.tile`` where
``np.repeat`` belongs, eps outside the square root, ...), with the same arguments as the function
the check calls, plus what it is and how to fix it, in plain words. ``checkers.check_function``
looks the exercise up by name when a learner's result is wrong, runs each known mistake on the
same inputs, and if one gives exactly the learner's result, leads with its message.

``CASES`` holds, for each exercise, the reference and the random inputs of its check cell (the
notebooks use the same input makers from here where they are defined here), so that
tests/test_mistakes.py runs every wrong answer through its real check without a notebook.

Only NumPy at import time; the wrong answers that need the library import it when they run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Mistake:
    what: str               # the mistake, in words: "eps outside the square root"
    fix: str                # what to do instead
    fn: Callable            # the wrong answer: same arguments as the checked function

    @property
    def message(self) -> str:
        return f"this looks like {self.what}. Fix: {self.fix}"


MISTAKES: dict[str, list[Mistake]] = {}


def mistake(exercise: str, what: str, fix: str):
    """Decorator: register ``fn`` as a known wrong answer to ``exercise``."""
    def register(fn):
        MISTAKES.setdefault(exercise, []).append(Mistake(what, fix, fn))
        return fn
    return register


def key(name: str) -> str:
    """The exercise a check's name refers to: "rms_norm on float16 input" -> "rms_norm"."""
    return name.split(" ")[0].split("(")[0].strip()


def lookup(name: str) -> list[Mistake]:
    return MISTAKES.get(key(name), [])


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _top_left_mask(T, S):
    """The mask a learner writes when forgetting start_pos: query i sees keys 0..i."""
    return np.triu(np.full((T, S), -np.inf, dtype=np.float32), k=1)


def _causal(T, S):
    return np.triu(np.full((T, S), -np.inf, dtype=np.float32), k=S - T + 1)


# ============================================================ lesson 01: the tokenizer
@mistake("merge", "a merge that does not skip the second id of the pair, so overlapping pairs "
         "merge twice ([5, 5, 5] with (5, 5) gives [256, 256, 5])",
         "after replacing a pair, move on by two ids (i += 2), not one")
def merge_no_skip(ids, pair, new_id):
    out = []
    for i in range(len(ids)):
        out.append(new_id if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair else ids[i])
    return out


@mistake("merge", "only the first occurrence of the pair merged",
         "keep scanning after the first match: every occurrence of the pair becomes new_id")
def merge_first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return ids[:i] + [new_id] + ids[i + 2:]
    return list(ids)


@mistake("merge", "a scan from right to left ([5, 5, 5] with (5, 5) gives [5, 256])",
         "scan from the left: [5, 5, 5] becomes [256, 5]")
def merge_right_to_left(ids, pair, new_id):
    out, i = [], len(ids) - 1
    while i >= 0:
        if i >= 1 and (ids[i - 1], ids[i]) == pair:
            out.append(new_id)
            i -= 2
        else:
            out.append(ids[i])
            i -= 1
    return out[::-1]


def _merge(ids, pair, new_id):
    from llama_np.tokenizer.train import merge
    return merge(ids, pair, new_id)


@mistake("encode", "merging the pair with the HIGHEST new id first",
         "merge the neighbouring pair with the LOWEST new id (the one learned first): min, not max")
def encode_highest_first(text, merges):
    ids = list(text.encode("utf-8"))
    while len(ids) >= 2:
        known = [p for p in zip(ids, ids[1:]) if p in merges]
        if not known:
            break
        pair = max(known, key=lambda p: merges[p])
        ids = _merge(ids, pair, merges[pair])
    return ids


@mistake("encode", "merging the most frequent neighbouring pair (the training rule)",
         "training picks the most frequent pair; encoding replays the learned merges: lowest new id first")
def encode_most_frequent(text, merges):
    from collections import Counter
    ids = list(text.encode("utf-8"))
    while len(ids) >= 2:
        counts = Counter(p for p in zip(ids, ids[1:]) if p in merges)
        if not counts:
            break
        pair = max(counts, key=counts.get)
        ids = _merge(ids, pair, merges[pair])
    return ids


@mistake("encode", "starting from characters (ord) instead of UTF-8 bytes",
         "start from list(text.encode('utf-8')): é is 2 bytes and 日 is 3, each its own id below 256")
def encode_chars(text, merges):
    ids = [ord(c) for c in text]
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            break
        ids = _merge(ids, pair, merges[pair])
    return ids


@mistake("decode", "decoding each token's bytes on its own: a character split across two tokens "
         "turns into two '\ufffd'",
         "join the bytes of all tokens first (b''.join(...)), then decode once")
def decode_per_token(ids, vocab):
    return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)


@mistake("decode", "errors='ignore': half a character vanishes instead of becoming '\ufffd'",
         "decode with errors='replace'")
def decode_ignore(ids, vocab):
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="ignore")


@mistake("decode", "decoding as Latin-1: every byte becomes one character",
         "decode the joined bytes as UTF-8: .decode('utf-8', errors='replace')")
def decode_latin1(ids, vocab):
    return b"".join(vocab[i] for i in ids).decode("latin-1")


def _split_with(pattern):
    import regex
    return lambda text: regex.findall(pattern, text)


_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
mistake("split", "no split at all: the whole text returned as one piece",
        "return regex.findall(pattern, text) with Meta's pattern: words, numbers, punctuation and spaces apart")(
    lambda text: [text] if text else [])
mistake("split", "contractions matched in lower case only ('S after a capital word stays apart)",
        "make the contractions case-insensitive: (?i:'s|'t|'re|'ve|'m|'ll|'d)")(
    lambda text: _split_with(_SPLIT.replace("(?i:'s|", "(?:'s|"))(text))
mistake("split", r"digits not grouped by at most three (\p{N}+ takes 1234 whole)",
        r"use \p{N}{1,3}: 1234 is split into 123 and 4")(
    lambda text: _split_with(_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}+"))(text))
mistake("split", r"the spaces alternative without (?!\S): the last space before a word is not left to the word",
        r"keep \s+(?!\S) before the plain \s+, so ' word' keeps its space")(
    lambda text: _split_with(_SPLIT.replace(r"|\s+(?!\S)", ""))(text))


# ============================================================ lesson 02: normalisation
@mistake("rms_norm", "eps outside the square root: x / (sqrt(mean(x**2)) + eps)",
         "add eps under the root: x / np.sqrt(mean(x**2) + eps)")
def rms_norm_eps_outside(x, weight, eps=1e-5):
    x = x.astype(np.float32)
    return x / (np.sqrt((x * x).mean(-1, keepdims=True)) + np.float32(eps)) * weight


@mistake("rms_norm", "eps forgotten: x / sqrt(mean(x**2))",
         "add eps under the root: x / np.sqrt(mean(x**2) + eps); it matters when x is small")
def rms_norm_no_eps(x, weight, eps=1e-5):
    x = x.astype(np.float32)
    return x / np.sqrt((x * x).mean(-1, keepdims=True)) * weight


@mistake("rms_norm", "the mean subtracted first: that is LayerNorm's variance, not RMSNorm's mean square",
         "RMSNorm does not centre: divide x by sqrt(mean(x**2) + eps)")
def rms_norm_centred(x, weight, eps=1e-5):
    x = x.astype(np.float32)
    c = x - x.mean(-1, keepdims=True)
    return x / np.sqrt((c * c).mean(-1, keepdims=True) + np.float32(eps)) * weight


@mistake("rms_norm", "the mean square taken over the whole array instead of each row",
         "average over the last axis only: (x * x).mean(axis=-1, keepdims=True)")
def rms_norm_global(x, weight, eps=1e-5):
    x = x.astype(np.float32)
    return x / np.sqrt((x * x).mean() + np.float32(eps)) * weight


@mistake("rms_norm", "the computation done in the input's precision (float16 stays float16)",
         "convert first: x = x.astype(np.float32)")
def rms_norm_no_upcast(x, weight, eps=1e-5):
    ms = (x * x).mean(-1, keepdims=True)
    return (x / np.sqrt(ms + x.dtype.type(eps)) * weight.astype(x.dtype)).astype(np.float32)


@mistake("layer_norm", "the unbiased variance (divided by dim - 1, as np.var(ddof=1) or torch.var)",
         "LayerNorm divides by dim: ((x - mean) ** 2).mean(axis=-1, keepdims=True)")
def layer_norm_unbiased(x, weight, bias, eps=1e-5):
    x = x.astype(np.float32)
    var = x.var(-1, ddof=1, keepdims=True)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(var + np.float32(eps)) * weight + bias


@mistake("layer_norm", "the bias forgotten", "add bias at the end: ... * weight + bias")
def layer_norm_no_bias(x, weight, bias, eps=1e-5):
    x = x.astype(np.float32)
    c = x - x.mean(-1, keepdims=True)
    return c / np.sqrt((c * c).mean(-1, keepdims=True) + np.float32(eps)) * weight


@mistake("layer_norm", "eps outside the square root", "add eps under the root: np.sqrt(var + eps)")
def layer_norm_eps_outside(x, weight, bias, eps=1e-5):
    x = x.astype(np.float32)
    c = x - x.mean(-1, keepdims=True)
    return c / (np.sqrt((c * c).mean(-1, keepdims=True)) + np.float32(eps)) * weight + bias


@mistake("layer_norm", "the mean not subtracted (that is RMSNorm)",
         "centre first: x - x.mean(axis=-1, keepdims=True), in the numerator and in the variance")
def layer_norm_not_centred(x, weight, bias, eps=1e-5):
    x = x.astype(np.float32)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + np.float32(eps)) * weight + bias


# ============================================================ lesson 03: RoPE
@mistake("rope_frequencies", "the exponent i / head_dim instead of 2i / head_dim",
         "use the even numbers 0, 2, 4, ...: np.arange(0, head_dim, 2) / head_dim")
def freq_i(head_dim, theta=10000.0):
    return 1.0 / theta ** (np.arange(head_dim // 2, dtype=np.float64) / head_dim)


@mistake("rope_frequencies", "theta ** (+2i / head_dim): the minus sign (or the 1 /) forgotten",
         "theta_i = 1 / theta ** (2i / head_dim): the frequencies fall from 1 towards 1/theta")
def freq_no_minus(head_dim, theta=10000.0):
    return theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


@mistake("rope_frequencies", "i counted from 1 instead of 0",
         "start at i = 0 (np.arange(0, head_dim, 2)): the first pair turns by exactly 1 radian per position")
def freq_from_one(head_dim, theta=10000.0):
    return 1.0 / theta ** (np.arange(2, head_dim + 2, 2, dtype=np.float64) / head_dim)


@mistake("apply_rope", "rotate-half: pairs (i, i + head_dim/2) instead of neighbours (2i, 2i + 1); "
         "that is Hugging Face's layout, not Meta's",
         "rotate x[..., 0::2] with x[..., 1::2] and write the results back to the even and odd places")
def rope_rotate_half(x, cos, sin):
    h = x.shape[-1] // 2
    a, b = x[..., :h], x[..., h:]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1).astype(np.float32)


@mistake("apply_rope", "a rotation the wrong way (the signs of sin swapped)",
         "(a, b) -> (a cos - b sin, a sin + b cos)")
def rope_backwards(x, cos, sin):
    return rope_ref(x, cos, -sin)


@mistake("apply_rope", "the second formula computed from the already rotated first number (in place)",
         "keep copies of both numbers of the pair before writing either")
def rope_in_place(x, cos, sin):
    out = x.astype(np.float32).copy()
    out[..., 0::2] = out[..., 0::2] * cos - out[..., 1::2] * sin
    out[..., 1::2] = out[..., 0::2] * sin + out[..., 1::2] * cos
    return out


def rope_ref(x, cos, sin):
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty(x.shape, dtype=np.float32)
    out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
    return out


def _scale(inv_freq, factor, low, high, L, smooth=True, swap=False):
    wavelen = 2 * np.pi / inv_freq
    if swap:
        low, high = high, low
    with np.errstate(divide="ignore", invalid="ignore"):
        g = (L / wavelen - low) / (high - low)
        blended = (1 - g) * inv_freq / factor + g * inv_freq if smooth else inv_freq
    out = np.where(wavelen < L / high, inv_freq, blended)
    return np.where(wavelen > L / low, inv_freq / factor, out)


mistake("llama3_scale_frequencies", "the middle band left unscaled (no blend between the two ends)",
        "in between, blend: (1 - gamma) * theta / factor + gamma * theta, gamma = (L / wavelen - low) / (high - low)")(
    lambda inv_freq, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings:
    _scale(inv_freq, factor, low_freq_factor, high_freq_factor, float(original_max_position_embeddings), smooth=False))
mistake("llama3_scale_frequencies", "low_freq_factor and high_freq_factor swapped",
        "long wavelengths (> L / low_freq_factor) are divided by factor; short ones (< L / high_freq_factor) are kept")(
    lambda inv_freq, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings:
    _scale(inv_freq, factor, low_freq_factor, high_freq_factor, float(original_max_position_embeddings), swap=True))
mistake("llama3_scale_frequencies", "the frequencies multiplied by factor instead of divided",
        "slow pairs turn factor times slower: theta / factor")(
    lambda inv_freq, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings:
    _scale(inv_freq, 1 / factor, low_freq_factor, high_freq_factor, float(original_max_position_embeddings)))


@mistake("hf_to_meta", "the permutation the other way round (Meta to Hugging Face: reshape(H, d/2, 2, ...))",
         "undo transformers' permute: w.reshape(n_heads, 2, d // 2, ...).swapaxes(1, 2).reshape(w.shape)")
def hf_to_meta_inverse(w, n_heads):
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@mistake("hf_to_meta", "all rows permuted as one head (n_heads ignored)",
         "permute each head's head_dim rows on its own: reshape(n_heads, 2, head_dim // 2, ...)")
def hf_to_meta_one_head(w, n_heads):
    return w.reshape(1, 2, w.shape[0] // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ============================================================ lesson 04: attention
@mistake("softmax", "the maximum of the whole array subtracted instead of each row's: rows far below "
         "the top row underflow to 0/0",
         "subtract each row's max: x - x.max(axis=axis, keepdims=True)")
def softmax_global_max(x, axis=-1):
    e = np.exp(x - x.max())
    return e / e.sum(axis=axis, keepdims=True)


@mistake("softmax", "no maximum subtracted: exp overflows for logits near 1000",
         "subtract the max before exp: e = np.exp(x - x.max(axis=axis, keepdims=True))")
def softmax_unstable(x, axis=-1):
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


@mistake("softmax", "the last axis used whatever `axis` says",
         "pass axis=axis (with keepdims=True) to both the max and the sum")
def softmax_last_axis(x, axis=-1):
    return _softmax(x, -1)


@mistake("causal_mask", "a diagonal that is masked too (query i cannot see its own key): off by one",
         "np.triu(..., k=start_pos + 1): a query sees the key at its own position")
def mask_diagonal(T, start_pos=0):
    return np.triu(np.full((T, start_pos + T), -np.inf, dtype=np.float32), k=start_pos)


@mistake("causal_mask", "start_pos ignored in the diagonal: query i sees keys 0..i instead of 0..start_pos + i",
         "shift the diagonal by start_pos: np.triu(mask, k=start_pos + 1)")
def mask_top_left(T, start_pos=0):
    return _top_left_mask(T, start_pos + T)


@mistake("causal_mask", "the past masked instead of the future (tril for triu)",
         "-inf goes ABOVE the diagonal (keys after the query): np.triu, not np.tril")
def mask_tril(T, start_pos=0):
    return np.tril(np.full((T, start_pos + T), -np.inf, dtype=np.float32), k=start_pos - 1)


@mistake("attention_weights", "scores not divided by sqrt(d)",
         "scale the scores: q @ k.T / math.sqrt(d) (a Python float keeps float32)")
def weights_no_scale(q, k):
    T, S = q.shape[0], k.shape[0]
    return _softmax(q @ k.T + _causal(T, S))


@mistake("attention_weights", "the mask aligned to the first key instead of the last: with fewer queries "
         "than keys, query i must see keys 0..S-T+i",
         "use causal_mask(T, S - T): the queries are the LAST T positions")
def weights_top_left(q, k):
    T, S = q.shape[0], k.shape[0]
    return _softmax(q @ k.T / np.float32(math.sqrt(q.shape[1])) + _top_left_mask(T, S))


@mistake("attention_weights", "scores divided by d instead of sqrt(d)", "divide by math.sqrt(d)")
def weights_over_d(q, k):
    T, S = q.shape[0], k.shape[0]
    return _softmax(q @ k.T / np.float32(q.shape[1]) + _causal(T, S))


@mistake("attention_weights", "the softmax over the queries (axis 0) instead of the keys",
         "each query's row sums to 1: softmax(..., axis=-1)")
def weights_axis0(q, k):
    T, S = q.shape[0], k.shape[0]
    s = q @ k.T / np.float32(math.sqrt(q.shape[1])) + _causal(T, S)
    with np.errstate(invalid="ignore"):
        return _softmax(s, 0)


def _head(q, k, v, scale=True, mask=_causal):
    T, S = q.shape[-2], k.shape[-2]
    s = q @ k.swapaxes(-1, -2)
    if scale:
        s = s / np.float32(math.sqrt(q.shape[-1]))
    return _softmax(s + mask(T, S)) @ v


for _ex in ("attention_head", "multi_head_attention"):
    mistake(_ex, "scores not divided by sqrt(d)", "scale the scores: ... / math.sqrt(d)")(
        lambda q, k, v: _head(q, k, v, scale=False))
    mistake(_ex, "the mask aligned to the first key instead of the last (start_pos ignored)",
            "use causal_mask(T, S - T): the queries are the LAST T positions")(
        lambda q, k, v: _head(q, k, v, mask=_top_left_mask))
    mistake(_ex, "no causal mask: every query sees the future",
            "add causal_mask(T, S - T) to the scores before the softmax")(
        lambda q, k, v: _head(q, k, v, mask=lambda T, S: np.zeros((T, S), np.float32)))


# ============================================================ lesson 05: grouped-query attention
@mistake("repeat_kv", "np.tile's order: query head h reads KV head h % n_kv",
         "use np.repeat(k, n_rep, axis=0): heads 0..n_rep-1 all read KV head 0 (h // n_rep)")
def repeat_kv_tile(k, n_rep):
    return np.tile(k, (n_rep, 1, 1))


@mistake("repeat_kv", "repeated along the positions (axis 1) instead of the heads",
         "repeat along axis 0, the heads: np.repeat(k, n_rep, axis=0)")
def repeat_kv_axis1(k, n_rep):
    return np.repeat(k, n_rep, axis=1)


def _gqa(q, k, v, order="repeat", mask=_causal):
    n_rep = q.shape[0] // k.shape[0]
    if order == "repeat":
        k, v = np.repeat(k, n_rep, 0), np.repeat(v, n_rep, 0)
    else:
        k, v = np.tile(k, (n_rep, 1, 1)), np.tile(v, (n_rep, 1, 1))
    return _head(q, k, v, mask=mask)


for _ex in ("gqa_attention", "gqa_attention_grouped"):
    mistake(_ex, "np.tile's order: query head h reads KV head h % n_kv",
            "query head h reads KV head h // n_rep: np.repeat, or group the queries as q.reshape(KV, n_rep * T, d)")(
        lambda q, k, v: _gqa(q, k, v, order="tile"))
    mistake(_ex, "the mask aligned to the first key instead of the last (start_pos ignored)",
            "use causal_mask(T, S - T): the queries are the LAST T positions")(
        lambda q, k, v: _gqa(q, k, v, mask=_top_left_mask))


@mistake("kv_cache_bytes", "keys only (the 2 for keys AND values forgotten)",
         "a cache keeps keys and values: 2 * n_layers * n_kv_heads * head_dim * seq_len * bytes")
def cache_keys_only(cfg, seq_len, bytes_per_value=2):
    return int(cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * seq_len * bytes_per_value)


@mistake("kv_cache_bytes", "n_heads where n_kv_heads belongs (no saving from GQA)",
         "only the KV heads are cached: use cfg.n_kv_heads")
def cache_n_heads(cfg, seq_len, bytes_per_value=2):
    return int(2 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len * bytes_per_value)


@mistake("kv_cache_bytes", "one layer only (n_layers forgotten)", "every layer has its own cache: multiply by cfg.n_layers")
def cache_one_layer(cfg, seq_len, bytes_per_value=2):
    return int(2 * cfg.n_kv_heads * cfg.head_dim * seq_len * bytes_per_value)


# ============================================================ lesson 06: SwiGLU
@mistake("silu", "the sigmoid alone (the factor x forgotten)", "SiLU is x * sigmoid(x) = x / (1 + np.exp(-x))")
def silu_sigmoid(x):
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


@mistake("silu", "exp(x) where exp(-x) belongs", "x / (1 + np.exp(-x))")
def silu_sign(x):
    with np.errstate(over="ignore"):
        return (x / (1.0 + np.exp(x))).astype(np.float32)


@mistake("swiglu", "w1 and w3 swapped (SiLU on the up projection)",
         "SiLU goes on the gate, x @ w1.T; x @ w3.T is the plain 'up' branch")
def swiglu_swapped(x, w1, w2, w3):
    a = x @ w3.T
    return ((a / (1 + np.exp(-a))) * (x @ w1.T)) @ w2.T


@mistake("swiglu", "no SiLU (a bilinear layer)", "apply silu to x @ w1.T before the product")
def swiglu_no_silu(x, w1, w2, w3):
    return ((x @ w1.T) * (x @ w3.T)) @ w2.T


@mistake("swiglu", "SiLU applied after the product of the two branches",
         "silu(x @ w1.T) * (x @ w3.T): only the gate goes through SiLU")
def swiglu_silu_after(x, w1, w2, w3):
    h = (x @ w1.T) * (x @ w3.T)
    return (h / (1 + np.exp(-h))) @ w2.T


@mistake("ffn_hidden_size", "rounded down to a multiple of multiple_of instead of up",
         "round up: multiple_of * ((hidden + multiple_of - 1) // multiple_of)")
def width_round_down(dim, multiple_of=256, ffn_dim_multiplier=None):
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * (hidden // multiple_of)


@mistake("ffn_hidden_size", "the 2/3 forgotten (4 * dim)", "start from int(2 * 4 * dim / 3): SwiGLU has three matrices, not two")
def width_no_two_thirds(dim, multiple_of=256, ffn_dim_multiplier=None):
    hidden = 4 * dim
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@mistake("ffn_hidden_size", "ffn_dim_multiplier ignored", "multiply by ffn_dim_multiplier when it is not None, before rounding")
def width_no_multiplier(dim, multiple_of=256, ffn_dim_multiplier=None):
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@mistake("block_params", "wk and wv counted with n_heads (GQA ignored)",
         "wk and wv have n_kv_heads * head_dim rows: 2 * dim * n_kv_heads * head_dim")
def block_no_gqa(cfg):
    return int(4 * cfg.dim * cfg.n_heads * cfg.head_dim), int(3 * cfg.dim * cfg.hidden_dim)


@mistake("block_params", "two FFN matrices instead of three (w3 forgotten)",
         "SwiGLU has w1, w2 and w3: 3 * dim * hidden_dim")
def block_two_ffn(cfg):
    att = 2 * cfg.dim * cfg.n_heads * cfg.head_dim + 2 * cfg.dim * cfg.n_kv_heads * cfg.head_dim
    return int(att), int(2 * cfg.dim * cfg.hidden_dim)


@mistake("block_params", "dim // n_heads where cfg.head_dim belongs",
         "use cfg.head_dim: some models set it apart from dim // n_heads")
def block_head_dim(cfg):
    hd = cfg.dim // cfg.n_heads
    return int(2 * cfg.dim * cfg.n_heads * hd + 2 * cfg.dim * cfg.n_kv_heads * hd), int(3 * cfg.dim * cfg.hidden_dim)


# ============================================================ lesson 07: the transformer
def one_block_logits(block, params, cfg, tokens):
    """The check's 1-layer Llama: embedding -> ``block`` -> final norm -> head."""
    from llama_np.norm import rms_norm
    from llama_np.rope import rope_angles, rope_frequencies
    x = params["tok_embeddings"][tokens]
    cos, sin = rope_angles(rope_frequencies(cfg.head_dim, cfg.rope_theta), np.arange(len(tokens)))
    x = block(x, params["layers"][0], cfg, cos, sin)
    return rms_norm(x, params["norm"], cfg.norm_eps) @ params["output"].T


def _block(kind):
    def block(x, layer, cfg, cos, sin):
        from llama_np.model import attention_block, feed_forward
        from llama_np.norm import rms_norm
        an = rms_norm(x, layer["attention_norm"], cfg.norm_eps)
        if kind == "post-norm":
            h = rms_norm(x + attention_block(x, layer, cfg, cos, sin), layer["attention_norm"], cfg.norm_eps)
            return rms_norm(h + feed_forward(h, layer, cfg), layer["ffn_norm"], cfg.norm_eps)
        if kind in ("normed residual", "both normed residuals"):
            h = an + attention_block(an, layer, cfg, cos, sin)
            hn = rms_norm(h, layer["ffn_norm"], cfg.norm_eps)
            return (hn if kind == "both normed residuals" else h) + feed_forward(hn, layer, cfg)
        if kind == "parallel":
            return (x + attention_block(an, layer, cfg, cos, sin)
                    + feed_forward(rms_norm(x, layer["ffn_norm"], cfg.norm_eps), layer, cfg))
        if kind == "no residual":
            h = attention_block(an, layer, cfg, cos, sin)
            return feed_forward(rms_norm(h, layer["ffn_norm"], cfg.norm_eps), layer, cfg)
        raise ValueError(kind)
    return lambda p, c, t: one_block_logits(block, p, c, t)


mistake("transformer_block", "post-norm: the norm after the residual add (the original Transformer), not before the branch",
        "pre-norm: h = x + attention(rms_norm(x)); out = h + ffn(rms_norm(h))")(_block("post-norm"))
mistake("transformer_block", "the residual taken from the normalised x instead of x itself",
        "add the branch to the raw stream: h = x + attention(rms_norm(x, ...))")(_block("normed residual"))
mistake("transformer_block", "both residuals taken from the normalised stream instead of the stream itself",
        "add each branch to the raw stream: h = x + attention(rms_norm(x)); out = h + ffn(rms_norm(h))")(
    _block("both normed residuals"))
mistake("transformer_block", "the FFN fed from the block's input instead of h (the stream after attention)",
        "the FFN reads rms_norm(h) where h = x + attention(...)")(_block("parallel"))
mistake("transformer_block", "the residual connections forgotten",
        "add each branch to the stream: h = x + ...; return h + ...")(_block("no residual"))


def _forward(kind):
    def forward(params, cfg, tokens):
        from llama_np.model import attention_block, feed_forward, nest
        from llama_np.norm import rms_norm
        from llama_np.rope import rope_angles, rope_frequencies
        p = nest(params, cfg)
        x = p["tok_embeddings"][np.asarray(tokens)]
        inv = rope_frequencies(cfg.head_dim, cfg.rope_theta, None if kind == "no scaling" else cfg.rope_scaling)
        start = 1 if kind == "from one" else 0
        cos, sin = rope_angles(inv, np.arange(start, start + len(tokens)))
        for layer in p["layers"]:
            x = x + attention_block(rms_norm(x, layer["attention_norm"], cfg.norm_eps), layer, cfg, cos, sin)
            x = x + feed_forward(rms_norm(x, layer["ffn_norm"], cfg.norm_eps), layer, cfg)
        if kind != "no final norm":
            x = rms_norm(x, p["norm"], cfg.norm_eps)
        head = p["tok_embeddings"] if (cfg.tie_embeddings or kind == "always tied") else p["output"]
        return x @ head.T
    return forward


mistake("forward", "the final RMSNorm forgotten", "normalise with params['norm'] before the output head")(_forward("no final norm"))
mistake("forward", "cfg.rope_scaling ignored (Llama 3.1's frequency scaling)",
        "pass cfg.rope_scaling to rope_frequencies")(_forward("no scaling"))
mistake("forward", "the embedding table used as the output head although the model is not tied",
        "use params['output'] unless cfg.tie_embeddings")(_forward("always tied"))


# ============================================================ lesson 08: KV cache and sampling
def run_updates(make_cache, cfg, steps):
    """The check's driver: feed the steps to a fresh cache of 16 positions, collect copies."""
    cache, out = make_cache(cfg, 16), []
    for start_pos, k, v in steps:
        for layer in range(cfg.n_layers):
            keys, values = cache.update(layer, start_pos, k[layer], v[layer])
            out += [np.array(keys), np.array(values)]
    return out


def update_labels(n_layers: int = 2):
    """Names for run_updates' list: "the keys returned at step 2 (block 1)"."""
    return lambda i: (f"the {'keys' if i % 2 == 0 else 'values'} returned at step {i // (2 * n_layers) + 1}"
                      f" (block {i // 2 % n_layers})")


class _Cache:
    def __init__(self, cfg, max_seq_len, kind):
        shape = (cfg.n_layers, cfg.n_kv_heads, max_seq_len, cfg.head_dim)
        self.k, self.v, self.kind = np.zeros(shape, np.float32), np.zeros(shape, np.float32), kind

    def update(self, layer, start_pos, k, v):
        T = k.shape[1]
        at = 0 if self.kind == "at zero" else start_pos
        self.k[layer, :, at:at + T], self.v[layer, :, at:at + T] = k, v
        if self.kind == "only new":
            return k, v
        if self.kind == "whole":
            return self.k[layer], self.v[layer]
        if self.kind == "one short":
            return self.k[layer, :, :start_pos + T - 1], self.v[layer, :, :start_pos + T - 1]
        return self.k[layer, :, :start_pos + T], self.v[layer, :, :start_pos + T]


for _kind, _what, _fix in [
        ("only new", "returning only the new keys and values", "return everything stored so far: self.k[layer, :, :start_pos + T]"),
        ("whole", "returning the whole preallocated cache, empty positions included",
         "slice up to the last position written: self.k[layer, :, :start_pos + T]"),
        ("at zero", "writing at position 0 every time (start_pos ignored)", "store at self.k[layer, :, start_pos:start_pos + T]"),
        ("one short", "a slice one position short (the newest key is missing)", "slice up to start_pos + T, not start_pos + T - 1")]:
    mistake("Cache.update", _what, _fix)(
        (lambda kind: lambda cfg, steps: run_updates(lambda c, n: _Cache(c, n, kind), cfg, steps))(_kind))


mistake("greedy", "np.argmin: the LEAST likely token", "np.argmax(logits)")(lambda logits: int(np.argmin(logits)))
mistake("greedy", "the largest logit returned instead of its index", "return its index: int(np.argmax(logits))")(
    lambda logits: float(np.max(logits)))


@mistake("softmax_probs", "the logits multiplied by the temperature instead of divided",
         "softmax(logits / temperature): a low temperature sharpens")
def probs_times_t(logits, temperature=1.0):
    return _softmax(logits.astype(np.float64) * temperature)


@mistake("softmax_probs", "the softmax computed in float32 (then converted)",
         "convert first: logits.astype(np.float64) / temperature")
def probs_float32(logits, temperature=1.0):
    return _softmax(logits / np.float32(temperature)).astype(np.float64)


@mistake("softmax_probs", "the temperature ignored", "divide the logits by temperature before the softmax")
def probs_no_t(logits, temperature=1.0):
    return _softmax(logits.astype(np.float64))


@mistake("top_k_filter", "a strict comparison (> the k-th value): only k - 1 tokens kept",
         "keep logits >= the k-th largest value")
def top_k_strict(logits, k):
    if k <= 0 or k >= len(logits):
        return logits.copy()
    kth = np.partition(logits, -k)[-k]
    return np.where(logits > kth, logits, -np.inf).astype(logits.dtype)


@mistake("top_k_filter", "the others set to 0 instead of -inf (0 is still a likely logit)",
         "set them to -np.inf, so that their probability is exactly 0")
def top_k_zero(logits, k):
    if k <= 0 or k >= len(logits):
        return logits.copy()
    kth = np.partition(logits, -k)[-k]
    return np.where(logits >= kth, logits, 0).astype(logits.dtype)


@mistake("top_k_filter", "the k SMALLEST kept", "keep the k largest: np.partition(logits, -k)[-k] is the k-th largest")
def top_k_smallest(logits, k):
    if k <= 0 or k >= len(logits):
        return logits.copy()
    kth = np.partition(logits, k - 1)[k - 1]
    return np.where(logits <= kth, logits, -np.inf).astype(logits.dtype)


@mistake("top_p_filter", "the token that reaches p left out (the kept set adds up to less than p)",
         "keep tokens up to AND including the one where the running sum reaches p: searchsorted(cum, p) + 1")
def top_p_exclusive(probs, p):
    if p >= 1.0:
        return probs.copy()
    order = np.argsort(-probs, kind="stable")
    n = max(1, int(np.searchsorted(np.cumsum(probs[order]), p)))
    out = np.zeros_like(probs)
    out[order[:n]] = probs[order[:n]]
    return out / out.sum()


@mistake("top_p_filter", "the kept probabilities not renormalised", "divide by their sum so they add up to 1")
def top_p_no_renorm(probs, p):
    if p >= 1.0:
        return probs.copy()
    order = np.argsort(-probs, kind="stable")
    n = int(np.searchsorted(np.cumsum(probs[order]), p)) + 1
    out = np.zeros_like(probs)
    out[order[:n]] = probs[order[:n]]
    return out


@mistake("top_p_filter", "the least likely tokens kept (ascending order)", "sort the most likely first: np.argsort(-probs)")
def top_p_ascending(probs, p):
    if p >= 1.0:
        return probs.copy()
    order = np.argsort(probs, kind="stable")
    n = int(np.searchsorted(np.cumsum(probs[order]), p)) + 1
    out = np.zeros_like(probs)
    out[order[:n]] = probs[order[:n]]
    return out / out.sum()


def draws(sampler, logits, temperature, top_k, top_p, seed):
    """The check's driver: 50 draws from one row with one seeded generator."""
    rng = np.random.default_rng(seed)
    return [sampler(logits, temperature, top_k, top_p, rng) for _ in range(50)]


def _sampler(kind):
    def sample(logits, temperature=1.0, top_k=0, top_p=1.0, rng=None):
        import llama_np.generate as lib
        if temperature == 0 or kind == "always greedy":
            return int(np.argmax(logits))
        t = 1.0 if kind == "no temperature" else temperature
        k = 0 if kind == "no top-k" else top_k
        probs = lib.top_p_filter(lib.softmax_probs(lib.top_k_filter(logits, k), t), top_p)
        cdf = np.cumsum(probs)
        return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(probs) - 1))
    return lambda *a: draws(sample, *a)


mistake("sample", "always the most likely token (argmax) even when temperature > 0",
        "only temperature 0 means greedy; otherwise draw from the filtered probabilities")(_sampler("always greedy"))
mistake("sample", "the temperature ignored", "pass temperature to softmax_probs")(_sampler("no temperature"))
mistake("sample", "top_k ignored", "apply top_k_filter to the logits first")(_sampler("no top-k"))


def _generate(kind):
    def generate(params, cfg, prompt_ids, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, seed=None,
                 stop_ids=()):
        import llama_np.generate as lib
        from llama_np.kv_cache import new_cache
        from llama_np.model import forward
        rng = np.random.default_rng(seed)
        prompt_ids = [int(t) for t in prompt_ids]
        cache = new_cache(cfg, len(prompt_ids) + max_new_tokens + 1)
        logits = forward(params, cfg, prompt_ids, 0, cache)
        row = logits[0] if kind == "first row" else logits[-1]
        pos, new = len(prompt_ids), []
        for _ in range(max_new_tokens):
            if kind == "new rng":
                rng = np.random.default_rng(seed)
            token = lib.sample(row, temperature, top_k, top_p, rng)
            if token in stop_ids and kind == "stop dropped":
                break
            new.append(token)
            if token in stop_ids or len(new) == max_new_tokens:
                break
            row = forward(params, cfg, [token], pos, cache)[-1]
            if kind != "stuck":
                pos += 1
        return new
    return generate


mistake("generate", "the stop token left out of the result", "append the stop token, then stop: it is the last id")(
    _generate("stop dropped"))
mistake("generate", "the first new token drawn from the prompt's FIRST position",
        "the next token comes from the logits of the LAST position: logits[-1]")(_generate("first row"))
mistake("generate", "the position not advanced after each decoded token (pos += 1 missing)",
        "each decoded token sits one position further: pos += 1 after every forward")(_generate("stuck"))
mistake("generate", "a new random generator made for every token (the same draw each time)",
        "make one np.random.default_rng(seed) before the loop")(_generate("new rng"))


# ============================================================ lesson 09: real weights
def _header(path, kind):
    import json
    import struct
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    if kind != "metadata kept":
        header.pop("__metadata__", None)
    return header, (n if kind == "no 8" else 8 + n)


mistake("read_header", "the '__metadata__' entry left in the header (it is not a tensor)",
        "header.pop('__metadata__', None)")(lambda path: _header(path, "metadata kept"))
mistake("read_header", "data_start without the 8 bytes of the length field",
        "the data starts after the 8-byte length AND the header: 8 + n")(lambda path: _header(path, "no 8"))


mistake("bf16_to_float32", "the bit patterns converted as numbers (raw.astype(np.float32))",
        "bfloat16 is the top half of a float32: (raw.astype(np.uint32) << 16).view(np.float32)")(
    lambda raw: np.asarray(raw).astype(np.float32))
mistake("bf16_to_float32", "the bits put in the low half of the float32 (no shift by 16)",
        "shift left by 16: (raw.astype(np.uint32) << 16).view(np.float32)")(
    lambda raw: np.asarray(raw, dtype=np.uint16).astype(np.uint32).view(np.float32))
mistake("bf16_to_float32", "the bits read as float16 (a different 16-bit format: 5 exponent bits, not 8)",
        "(raw.astype(np.uint32) << 16).view(np.float32)")(
    lambda raw: np.asarray(raw, dtype=np.uint16).view(np.float16).astype(np.float32))


def listing(tensors):
    """What load_safetensors' check compares: (name, dtype, shape, memory-mapped?, values) by name."""
    return [(k, str(v.dtype), list(v.shape), isinstance(v, np.memmap), np.asarray(v, dtype=np.float64))
            for k, v in sorted(tensors.items())]


_ST = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32, "I8": np.int8}


def _load(path, how):
    header, data_start = _header(path, "")
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = np.float16 if (how == "bf16 as f16" and info["dtype"] == "BF16") else _ST[info["dtype"]]
        offset = begin if how == "no data_start" else data_start + begin
        if how == "copies":
            with open(path, "rb") as f:
                f.seek(offset)
                out[name] = np.frombuffer(f.read(end - begin), dtype=dtype).reshape(info["shape"]).copy()
        else:
            out[name] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(info["shape"]))
    return listing(out)


mistake("load_safetensors", "offsets counted from the start of the file (data_start forgotten)",
        "data_offsets count from the end of the header: offset=data_start + begin")(lambda path: _load(path, "no data_start"))
mistake("load_safetensors", "BF16 read as np.float16 (another 16-bit format)",
        "keep BF16 as its np.uint16 bit patterns; bf16_to_float32 widens them")(lambda path: _load(path, "bf16 as f16"))
mistake("load_safetensors", "tensors read into memory (copies) instead of memory-mapped",
        "np.memmap(path, dtype=..., mode='r', offset=..., shape=...) reads only what is used")(lambda path: _load(path, "copies"))


# ============================================================ lesson 10: mixture of experts
def _route(logits, k, kind="mixtral", how=""):
    experts = np.argsort((logits if how == "ascending" else -logits), axis=-1, kind="stable")[:, :k]
    chosen = np.take_along_axis(logits, experts, axis=-1)
    if (kind == "mixtral") != (how == "swapped"):
        kept = np.take_along_axis(_softmax(logits), experts, axis=-1)
        gates = kept if how == "no renorm" else kept / kept.sum(-1, keepdims=True)
    else:
        gates = 1 / (1 + np.exp(-chosen))
    return experts, gates.astype(np.float32)


mistake("route", "the k largest probabilities not renormalised (mixtral)",
        "Mixtral divides the kept k probabilities by their sum")(lambda logits, k, kind="mixtral": _route(logits, k, kind, "no renorm"))
mistake("route", "the experts chosen by the SMALLEST logits", "sort descending: np.argsort(-logits, axis=-1)[:, :k]")(
    lambda logits, k, kind="mixtral": _route(logits, k, kind, "ascending"))
mistake("route", "the two kinds' gates swapped (softmax for llama4, sigmoid for mixtral)",
        "mixtral: softmax over all experts, renormalised over the kept k; llama4: a sigmoid of each kept logit")(
    lambda logits, k, kind="mixtral": _route(logits, k, kind, "swapped"))


def _moe(how):
    def moe_layer(x, layer, k, kind="mixtral", shared=False):
        import llama_np.moe as moe
        from llama_np.ffn import swiglu
        experts, gates = moe.route(x @ layer["router"].T, k, kind)
        out = np.zeros_like(x)
        for t in range(x.shape[0]):
            for j in range(k):
                e, g = experts[t, j], gates[t, j]
                w = layer["experts_w1"][e], layer["experts_w2"][e], layer["experts_w3"][e]
                if how == "no gates":
                    out[t] += swiglu(x[t:t + 1], *w)[0]
                elif (kind == "llama4") != (how == "gate swapped"):
                    out[t] += swiglu(x[t:t + 1] * g, *w)[0]
                else:
                    out[t] += swiglu(x[t:t + 1], *w)[0] * g
        if shared and how != "no shared":
            out += swiglu(x, layer["shared_w1"], layer["shared_w2"], layer["shared_w3"])
        return out
    return moe_layer


mistake("moe_layer", "the gates not applied (each expert's output added unweighted)",
        "weight each expert by its gate (mixtral: its output; llama4: its input)")(_moe("no gates"))
mistake("moe_layer", "the gate applied on the wrong side (input for mixtral, output for llama4, or the reverse)",
        "mixtral scales each expert's OUTPUT by its gate; llama4 scales the expert's INPUT")(_moe("gate swapped"))
mistake("moe_layer", "the shared expert forgotten", "add swiglu(x, shared_w1, shared_w2, shared_w3) for every token")(_moe("no shared"))


def _aux(how):
    def aux_loss(router_logits, n_experts, k):
        p = _softmax(router_logits.astype(np.float64))
        chosen = np.argsort(-p, axis=-1)[:, :k]
        f = np.bincount(chosen.ravel(), minlength=n_experts) / len(p)
        if how == "f sums to 1":
            f = f / k
        P = p.mean(0)
        if how == "logits":
            P = router_logits.mean(0)
        scale = 1 if how == "no E" else n_experts
        return float(scale * (f * P).sum())
    return aux_loss


mistake("aux_loss", "the fractions f divided by k as well (they should add up to k)",
        "f_e = assignments to e / number of tokens: with k choices per token they add up to k")(_aux("f sums to 1"))
mistake("aux_loss", "the factor n_experts forgotten", "loss = n_experts * sum(f * P)")(_aux("no E"))
mistake("aux_loss", "P taken from the raw logits instead of the softmax probabilities",
        "P_e is the mean over tokens of softmax(logits)[e]")(_aux("logits"))


# ============================================================ lesson 13: quantization
def _int8(how):
    def quantize_int8(w):
        amax = w.max(axis=1) if how == "max w" else np.abs(w).max(axis=1)
        if how == "per tensor":
            amax = np.full(len(w), np.abs(w).max(), dtype=np.float32)
        s = np.where(amax > 0, amax / np.float32(128.0 if how == "128" else 127.0), np.float32(1.0)).astype(np.float32)
        x = w / s[:, None]
        if how == "truncate":
            q = x
        elif how == "half up":
            q = np.floor(x + np.float32(0.5))
        else:
            q = np.rint(x)
        with np.errstate(invalid="ignore"):       # max w: codes beyond int8, as a learner's cast gives them
            return q.astype(np.int8), s
    return quantize_int8


mistake("quantize_int8", "the scale taken from max(w) instead of max(|w|): a row whose largest magnitude is "
        "negative gets codes below -127", "s = np.abs(w).max(axis=1) / 127")(_int8("max w"))
mistake("quantize_int8", "one scale for the whole matrix instead of one per row",
        "reduce over each row: np.abs(w).max(axis=1), shape (rows,)")(_int8("per tensor"))
mistake("quantize_int8", "codes truncated toward zero (astype(np.int8) without rounding)",
        "round first: np.rint(w / s[:, None]).astype(np.int8)")(_int8("truncate"))
mistake("quantize_int8", "rounding half up (np.floor(x + 0.5)) where round half to even belongs",
        "np.rint (or np.round) rounds 2.5 to 2 and 3.5 to 4, as torch does")(_int8("half up"))
mistake("quantize_int8", "the scale max|w| / 128: the largest weight is not mapped to 127",
        "divide by 127, so the codes use -127..127 symmetrically")(_int8("128"))


def roundf(x):
    """C's roundf, which llama.cpp uses: half away from zero (2.5 -> 3, -2.5 -> -3)."""
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


def _q8_0(how):
    def quantize_q8_0(w):
        rows, n = w.shape
        blocks = w.reshape(rows, n // 32, 32) if how != "per row" else w.reshape(rows, 1, n)
        d = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127.0)
        d16 = d.astype(np.float16)
        scale = d16.astype(np.float32) if how == "f16 d" else d
        with np.errstate(divide="ignore"):
            inv = np.where(scale == 0, np.float32(0.0), np.float32(1.0) / scale)
        x = np.divide(blocks, scale, out=np.zeros_like(blocks), where=scale > 0) if how == "divide" else blocks * inv
        q = (np.rint(x) if how == "half even" else roundf(x)).astype(np.int8)
        if how == "per row":
            q = q.reshape(rows, n // 32, 32)
            d16 = np.repeat(d16, n // 32, axis=1)
        scale_bytes = d16.view(np.uint8) if how != "f32 d" else d.astype(np.float32).view(np.uint8)
        parts = [q.view(np.uint8), scale_bytes] if how == "d last" else [scale_bytes, q.view(np.uint8)]
        return np.concatenate(parts, axis=-1).reshape(rows, -1)
    return quantize_q8_0


mistake("quantize_q8_0", "np.round / np.rint (round half to even) where llama.cpp rounds half away from zero "
        "(C's roundf)", "round half away from zero: np.sign(x) * np.floor(np.abs(x) + 0.5)")(_q8_0("half even"))
mistake("quantize_q8_0", "the codes computed with the float16 scale: llama.cpp divides by the float32 d and "
        "only stores it as float16", "q = roundf(x * (1 / d)) with d in float32; then d.astype(np.float16)")(_q8_0("f16 d"))
mistake("quantize_q8_0", "x / d where llama.cpp multiplies by the float32 reciprocal, x * (1 / d): the two "
        "round differently near k + 0.5", "inv = 1 / d (float32, 0 where d == 0), then roundf(x * inv)")(_q8_0("divide"))
mistake("quantize_q8_0", "one scale per row instead of one per block of 32",
        "reshape to (rows, n // 32, 32) and take max|w| over the last axis")(_q8_0("per row"))
mistake("quantize_q8_0", "the scale stored after the 32 codes", "each block is d (2 bytes) first, then the 32 codes")(_q8_0("d last"))
mistake("quantize_q8_0", "the scale stored as float32 (4 bytes): blocks of 36 bytes",
        "store d as float16: d.astype(np.float16).view(np.uint8), 2 bytes")(_q8_0("f32 d"))


def _q4_k(how):
    def dequantize_q4_k(blocks):
        n = len(blocks)
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
        dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
        if how == "d dmin swapped":
            d, dmin = dmin, d
        s = blocks[:, 4:16]
        lo, mi, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
        if how == "no top bits":
            sc = np.concatenate([lo & 63, hi & 15], axis=1)
            mn = np.concatenate([mi & 63, hi >> 4], axis=1)
        else:
            sc = np.concatenate([lo & 63, (hi & 15) | ((lo >> 6) << 4)], axis=1)
            mn = np.concatenate([mi & 63, (hi >> 4) | ((mi >> 6) << 4)], axis=1)
        qs = blocks[:, 16:].reshape(n, 4, 32)
        if how == "interleaved":
            q = np.stack([qs.reshape(n, 128) & 15, qs.reshape(n, 128) >> 4], axis=-1).reshape(n, 8, 32)
        else:
            q = np.stack([qs & 15, qs >> 4], axis=2).reshape(n, 8, 32)
        scale = (d * sc.astype(np.float32))[:, :, None]
        mins = (dmin * mn.astype(np.float32))[:, :, None]
        out = scale * q.astype(np.float32) + (mins if how == "plus min" else -mins)
        return out.reshape(n, 256).astype(np.float32)
    return dequantize_q4_k


mistake("dequantize_q4_k", "only the low 4 bits of scales and mins 4-7: their top 2 bits, in the top bits of bytes "
        "0-7, forgotten", "scale j >= 4 = (byte 8+j-4 & 0x0F) | (byte j-4 >> 6) << 4; min likewise with the high "
        "nibble and bytes 4-7")(_q4_k("no top bits"))
mistake("dequantize_q4_k", "the low and high nibbles of each byte taken as neighbouring weights",
        "each group of 32 bytes gives 64 weights: the 32 low nibbles first, then the 32 high nibbles")(_q4_k("interleaved"))
mistake("dequantize_q4_k", "the min added instead of subtracted", "w = d * scale * q - dmin * min")(_q4_k("plus min"))
mistake("dequantize_q4_k", "d and dmin swapped", "bytes 0-1 are d (the scales' unit), bytes 2-3 dmin (the mins')")(
    _q4_k("d dmin swapped"))


def _packed(how):
    def packed_matmul(x, raw, dequantize, block_rows=64):
        n_out = raw.shape[0]
        y = None
        stop = n_out - n_out % block_rows if how == "last block" else n_out
        for a in range(0, stop, block_rows):
            b = min(a + block_rows, n_out)
            w = dequantize(raw[a:b])
            if y is None:
                y = np.zeros((x.shape[0], n_out), dtype=np.float32)
            if how == "first columns":
                y[:, :b - a] = x @ w.T
            else:
                y[:, a:b] = x @ w.T
        return y
    return packed_matmul


mistake("packed_matmul", "every block of rows written to the first columns (y[:, :b - a] instead of y[:, a:b])",
        "the rows a:b of W give the outputs y[:, a:b]")(_packed("first columns"))
mistake("packed_matmul", "the last, shorter block of rows left out (n_out // block_rows blocks)",
        "loop with range(0, n_out, block_rows) and cut the last block at n_out: b = min(a + block_rows, n_out)")(
    _packed("last block"))


def _kl(how):
    def kl_top1(ref_logits, logits):
        def log_softmax(z):
            z = z.astype(np.float64) - z.max(-1, keepdims=True)
            return z - np.log(np.exp(z).sum(-1, keepdims=True))
        lp, lq = log_softmax(ref_logits), log_softmax(logits)
        if how == "reversed":
            lp, lq = lq, lp
        terms = np.exp(lp) * (lp - lq)
        kl = terms.mean(-1) if how == "mean over vocab" else terms.sum(-1)
        kl = kl.sum() if how == "sum over positions" else kl.mean()
        agree = (ref_logits.argmax(-1) == logits.argmax(-1))
        return float(kl), float(agree.sum() if how == "count" else agree.mean())
    return kl_top1


mistake("kl_top1", "KL the other way round, KL(P || P_ref): the reference distribution must weight the sum",
        "sum over the vocabulary of p_ref * (log p_ref - log p), p_ref = softmax(ref_logits)")(_kl("reversed"))
mistake("kl_top1", "a mean over the vocabulary where KL sums", "sum over the vocabulary, then average over positions")(
    _kl("mean over vocab"))
mistake("kl_top1", "the KL summed over positions instead of averaged", "take the mean over positions")(
    _kl("sum over positions"))
mistake("kl_top1", "top-1 agreement as a count of positions instead of a fraction",
        "divide by the number of positions (np.mean of the matches)")(_kl("count"))


# ============================================================ the checks' inputs
@dataclass(frozen=True)
class Case:
    """What a check cell passes to check_function, for the tests: reference, inputs, tolerance."""
    reference: Callable
    make_inputs: Callable
    atol: float = 1e-5
    rtol: float = 1e-5
    n_trials: int = 3
    labels: object = None


# ---- inputs the notebooks import (so the check and the tests use the same cases)
def softmax_inputs(rng):
    """Any shape and axis; each row along the other axes gets its own offset of 0 or +-1000, so
    rows have very different maxima (a global max underflows the low rows to 0/0)."""
    shape = tuple(int(n) for n in rng.integers(2, 12, size=int(rng.integers(1, 4))))
    axis = int(rng.integers(-len(shape), len(shape)))
    offset_shape = list(shape)
    offset_shape[axis] = 1
    offset = rng.choice([0.0, 1000.0, -1000.0], size=offset_shape)   # far beyond where exp() overflows
    x = (offset + 20 * rng.standard_normal(shape)).astype(np.float32)
    return x, axis


DECODE_TEXTS = ["🦙", "日本語", "é", "Ж", " the", "naïve", "\u200d", "😀", "!", " 42", "\n"]


def decode_inputs(tok, vocab):
    """Llama 3 ids that the decode check uses: half random ids (many are pieces of characters),
    a real encoding of text with multi-byte characters split across neighbouring tokens (🦙 is
    three tokens), whole or stopped in the middle of a character."""
    def make(rng):
        kind = int(rng.integers(3))
        if kind == 0:
            return [int(i) for i in rng.integers(0, 128000, size=int(rng.integers(0, 12)))], vocab
        ids = tok.encode("".join(rng.choice(DECODE_TEXTS, int(rng.integers(2, 10)))) + "🦙")
        halves = [n for n in range(1, len(ids)) if tok.decode(ids[:n]).endswith("\ufffd")]
        return (ids[:int(rng.choice(halves))] if kind == 2 else ids), vocab   # 2: stop inside a character
    return make


def heads(rng):
    """q (H, T, d), k, v (H, S, d) with T <= S: the queries are the last T positions (start_pos = S - T)."""
    H, d, S = int(rng.integers(1, 7)), 2 * int(rng.integers(1, 17)), int(rng.integers(2, 12))
    T = int(rng.integers(1, S)) if rng.random() < 0.7 else S       # mostly start_pos > 0
    return tuple(rng.standard_normal(shape, dtype=np.float32) for shape in ((H, T, d), (H, S, d), (H, S, d)))


def one_head(rng):
    q, k, v = heads(rng)
    return q[0], k[0]


def one_head_qkv(rng):
    q, k, v = heads(rng)
    return q[0], k[0], v[0]


def gqa_inputs(rng):
    KV, n_rep = int(rng.integers(1, 4)), int(rng.integers(2, 5))
    d, S = 2 * int(rng.integers(1, 17)), int(rng.integers(2, 12))
    T = int(rng.integers(1, S)) if rng.random() < 0.7 else S
    return tuple(rng.standard_normal(shape, dtype=np.float32)
                 for shape in ((KV * n_rep, T, d), (KV, S, d), (KV, S, d)))


def layer_norm_inputs(rng):
    """x of random shape and scale (small scales make eps matter), weight and bias near 1 and 0."""
    dim = int(rng.integers(4, 300))
    x = (rng.standard_normal((int(rng.integers(1, 5)), dim)) + rng.uniform(-3, 3)) * 10.0 ** rng.uniform(-3, 2)
    weight = (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(dim)).astype(np.float32)
    return x.astype(np.float32), weight, bias, float(rng.choice([1e-5, 1e-6]))


# ---- lesson 13
def int8_inputs(rng):
    """(rows, n) float32 for quantize_int8: rows of very different scales; one whose largest magnitude
    is negative; one all zero; one whose scale is a power of two with weights on half-integer
    multiples of it (exact ties: w / s = k + 0.5, where round-half-to-even and half-up differ)."""
    rows, n = int(rng.integers(5, 12)), int(rng.integers(16, 200))
    w = rng.standard_normal((rows, n)) * 10.0 ** rng.uniform(-3, 1, size=(rows, 1))
    r = rng.permutation(rows)
    w[r[0], int(rng.integers(n))] = -3 * np.abs(w[r[0]]).max()
    w[r[1]] = 0.0
    s = 2.0 ** -int(rng.integers(3, 10))
    w[r[2]] = rng.integers(-254, 255, n) / 2 * s
    w[r[2], int(rng.integers(n))] = 127 * s          # max|w| = 127 s, so the scale is s exactly
    return w.astype(np.float32)


def torch_int8(w):
    """torch.quantize_per_channel's (codes int8 (rows, n), scales float32 (rows,)) for ``w``, one of the
    matrices torch quantized in course/fixtures/make_13_quantization.py (int8_inputs, seeds 0-3)."""
    from course import fixture
    fx = fixture("13_quantization")
    i = 0
    while f"int8_w{i}" in fx:
        if fx[f"int8_w{i}"].shape == w.shape and np.array_equal(fx[f"int8_w{i}"], w):
            return fx[f"int8_q{i}"], fx[f"int8_s{i}"]
        i += 1
    raise KeyError(f"no stored torch answer for this {w.shape} input: torch quantized int8_inputs of seeds 0-{i - 1}")


def q8_inputs(rng):
    """(rows, 32 * blocks) float32 for quantize_q8_0: blocks of very different scales, an all-zero
    block, and a block of half-integer multiples of a power of two whose largest is 127 times it
    (exact ties, where C's roundf and np.round differ)."""
    rows, nb = int(rng.integers(1, 6)), int(rng.integers(3, 9))
    w = rng.standard_normal((rows * nb, 32)) * 10.0 ** rng.uniform(-3, 1, size=(rows * nb, 1))
    pick = rng.permutation(rows * nb)
    w[pick[0]] = 0.0
    s = 2.0 ** -int(rng.integers(3, 10))
    w[pick[1]] = rng.integers(-254, 255, 32) / 2 * s
    w[pick[1], int(rng.integers(32))] = -127 * s
    # near-ties: (k + 0.5) * d rounded to float32, where x / d and x * (1 / d) fall on either side of k + 0.5
    d = np.float32(rng.uniform(0.01, 1.0))
    near = (rng.integers(-127, 127, 32) + np.float32(0.5)).astype(np.float32) * d
    near[0] = np.float32(127) * d
    w[pick[2]] = near
    return w.reshape(rows, nb * 32).astype(np.float32)


def random_q4_k(rng, n_blocks, scale=1e-3):
    """n_blocks random Q4_K blocks (n_blocks, 144) uint8: random codes, scales and mins, and finite
    float16 d and dmin (normal, standard deviation ``scale``)."""
    raw = rng.integers(0, 256, size=(n_blocks, 144), dtype=np.uint8)
    for off in (0, 2):
        raw[:, off:off + 2] = (rng.standard_normal(n_blocks) * scale).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return raw


def q4k_inputs(rng):
    return random_q4_k(rng, int(rng.integers(1, 40)))


def gguf_q4_k_rows(raw):
    """Q4_K rows (rows, bytes) uint8 -> (rows, n_in) float32, by the gguf package (llama.cpp's port)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
    return dequantize(raw, GGMLQuantizationType.Q4_K)


def matmul_inputs(rng):
    """x (T, n_in) float32, raw Q4_K rows (n_out, n_in / 256 * 144), the dequantizer, block_rows; n_out
    mostly not a multiple of block_rows (a shorter last block)."""
    n_out, n_in, T = int(rng.integers(1, 300)), 256 * int(rng.integers(1, 4)), int(rng.integers(1, 6))
    raw = random_q4_k(rng, n_out * n_in // 256).reshape(n_out, -1)
    return rng.standard_normal((T, n_in), dtype=np.float32), raw, gguf_q4_k_rows, int(rng.choice([16, 64]))


def kl_inputs(rng):
    """Reference and perturbed logits (T, V) float32; some rows shifted by +-1000 (a softmax must
    subtract each row's maximum)."""
    T, V = int(rng.integers(1, 12)), int(rng.integers(5, 400))
    ref = 4 * rng.standard_normal((T, V))
    got = ref + rng.uniform(0.05, 1.0) * rng.standard_normal((T, V))
    shift = rng.choice([0.0, 0.0, 1000.0, -1000.0], size=(T, 1))
    return (ref + shift).astype(np.float32), (got + shift).astype(np.float32)


def _cases() -> dict[str, Case]:
    """Built on demand: some need the library or the Llama 3 vocabulary."""
    import llama_np
    import llama_np.attention as A
    import llama_np.config
    import llama_np.ffn
    import llama_np.generate as lib
    import llama_np.kv_cache
    import llama_np.model
    import llama_np.moe
    import llama_np.norm
    import llama_np.rope
    import llama_np.weights.packed
    import llama_np.weights.safetensors
    from llama_np.config import ModelConfig
    from llama_np.tokenizer.tiktoken_bpe import LLAMA3_PATTERN
    from llama_np.tokenizer.train import BPETokenizer, merge, train_bpe

    cases = {}
    # ---- 01
    def merge_in(rng):
        ids = [int(i) for i in rng.integers(0, 3, size=int(rng.integers(0, 30)))]
        return ids, (int(rng.integers(0, 3)), int(rng.integers(0, 3))), 256
    cases["merge"] = Case(merge, merge_in, n_trials=20)
    alphabet, whole = list("aaab b c\né日"), r"(?s).+"
    def encode_in(rng):
        merges = train_bpe("".join(rng.choice(alphabet, 400)), 256 + 40, pattern=whole)
        return "".join(rng.choice(alphabet, int(rng.integers(0, 60)))), merges
    cases["encode"] = Case(lambda text, merges: BPETokenizer(merges, pattern=whole).encode(text), encode_in, n_trials=10)
    cases["decode"] = Case(lambda ids, vocab: llama3().decode(ids), decode_inputs(llama3(), llama3_vocab()), n_trials=6)
    pieces = ["a", "Zz", "é", "Ж", "日本", "7", "42", "1234", " ", "  ", "\t", "\n", "\r\n", "'s", "'S", "'ll",
              "\u2019", "!", "?!", "...", "(", "_", "-", "🦙", "\u200d"]
    import regex
    cases["split"] = Case(lambda text: regex.findall(LLAMA3_PATTERN, text),
                          lambda rng: "".join(rng.choice(pieces, int(rng.integers(0, 40)))), n_trials=30)
    # ---- 02
    def rms_in(rng, dtype=np.float32):
        dim = int(rng.integers(4, 600))
        shape = tuple(int(n) for n in rng.integers(1, 5, size=int(rng.integers(0, 3)))) + (dim,)
        x = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-2, 2)).astype(dtype)
        return x, (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32), float(rng.choice([1e-5, 1e-6]))
    cases["rms_norm"] = Case(llama_np.norm.rms_norm, rms_in, atol=1e-6, n_trials=5)
    cases["rms_norm on float16 input"] = Case(llama_np.norm.rms_norm, lambda rng: rms_in(rng, np.float16), atol=1e-6)
    def layer_norm_ref(x, weight, bias, eps=1e-5):
        import torch
        return torch.nn.functional.layer_norm(torch.from_numpy(x), x.shape[-1:], torch.from_numpy(weight),
                                              torch.from_numpy(bias), eps).numpy()
    cases["layer_norm"] = Case(layer_norm_ref, layer_norm_inputs, n_trials=5)
    # ---- 03
    cases["rope_frequencies"] = Case(llama_np.rope.rope_frequencies,
                                     lambda rng: (2 * int(rng.integers(1, 129)), float(rng.choice([1e4, 1e5, 5e5]))),
                                     rtol=1e-12, atol=0, n_trials=5)
    def rope_in(rng):
        H, T, d = int(rng.integers(1, 5)), int(rng.integers(1, 20)), 2 * int(rng.integers(1, 33))
        start = int(rng.integers(0, 1000))
        cos, sin = llama_np.rope.rope_angles(llama_np.rope.rope_frequencies(d, 10000.0), np.arange(start, start + T))
        return rng.standard_normal((H, T, d)).astype(np.float32), cos, sin
    cases["apply_rope"] = Case(llama_np.rope.apply_rope, rope_in, atol=1e-6, n_trials=5)
    def scaling_in(rng):
        inv = llama_np.rope.rope_frequencies(2 * int(rng.integers(8, 129)), float(rng.choice([1e4, 5e5])))
        return (inv, float(rng.choice([8.0, 16.0, 32.0])), 1.0, float(rng.choice([2.0, 4.0])),
                int(rng.choice([2048, 8192])))
    cases["llama3_scale_frequencies"] = Case(llama_np.rope.llama3_scale_frequencies, scaling_in, rtol=1e-12, atol=0,
                                             n_trials=6)
    def weights_in(rng):
        H, d, D = int(rng.integers(1, 6)), 2 * int(rng.integers(1, 17)), int(rng.integers(1, 40))
        return rng.standard_normal((H * d, D)).astype(np.float32), H
    cases["hf_to_meta"] = Case(llama_np.rope.hf_to_meta, weights_in, rtol=0, atol=1e-6, n_trials=5)
    # ---- 04
    cases["softmax"] = Case(A.softmax, softmax_inputs, atol=1e-6, n_trials=6)
    cases["causal_mask"] = Case(A.causal_mask, lambda rng: (int(rng.integers(1, 9)), int(rng.integers(0, 6))),
                                atol=0, rtol=0, n_trials=8)
    def weights_ref(q, k):
        T, S = q.shape[0], k.shape[0]
        return A.softmax(q @ k.T * (1.0 / math.sqrt(q.shape[1])) + A.causal_mask(T, S - T))
    cases["attention_weights"] = Case(weights_ref, one_head, n_trials=6)
    cases["attention_head"] = Case(lambda q, k, v: A.attention(q[None], k[None], v[None], k.shape[0] - q.shape[0])[0],
                                   one_head_qkv, n_trials=6)
    mha = lambda q, k, v: A.attention(q, k, v, k.shape[1] - q.shape[1])
    cases["multi_head_attention"] = Case(mha, heads, n_trials=6)
    # ---- 05
    cases["repeat_kv"] = Case(A.repeat_kv, lambda rng: (
        rng.standard_normal((int(rng.integers(1, 5)), int(rng.integers(1, 7)), int(rng.integers(1, 9))),
                            dtype=np.float32), int(rng.integers(1, 5))), atol=0, rtol=0, n_trials=6)
    cases["gqa_attention"] = Case(mha, gqa_inputs, n_trials=8)
    cases["gqa_attention_grouped"] = Case(mha, gqa_inputs, n_trials=8)
    def cache_in(rng):
        n_kv = int(rng.integers(1, 9))
        cfg = ModelConfig(dim=64, n_layers=int(rng.integers(1, 81)), n_heads=n_kv * int(rng.integers(1, 5)),
                          n_kv_heads=n_kv, head_dim=2 * int(rng.integers(8, 129)))
        return cfg, int(rng.integers(1, 100_000)), int(rng.choice([1, 2, 4]))
    cases["kv_cache_bytes"] = Case(llama_np.kv_cache.cache_bytes, cache_in, n_trials=8)
    # ---- 06
    cases["silu"] = Case(llama_np.ffn.silu, lambda rng: (8 * rng.standard_normal(
        tuple(int(n) for n in rng.integers(1, 20, size=int(rng.integers(1, 3)))))).astype(np.float32),
        atol=1e-6, n_trials=6)
    def ffn_in(rng):
        T, D, F = int(rng.integers(1, 6)), int(rng.integers(2, 40)), int(rng.integers(2, 100))
        return (rng.standard_normal((T, D), dtype=np.float32),
                *(rng.standard_normal(s, dtype=np.float32) / np.float32(np.sqrt(s[1])) for s in ((F, D), (D, F), (F, D))))
    cases["swiglu"] = Case(llama_np.ffn.swiglu, ffn_in, n_trials=6)
    def width_in(rng):
        mult = [None, 1.0, 1.2, 1.3, 1.5][int(rng.integers(5))]
        return int(rng.integers(64, 20000)), int(rng.choice([32, 64, 256, 1024, 4096])), mult
    cases["ffn_hidden_size"] = Case(llama_np.config.ffn_hidden_size, width_in, n_trials=20)
    def shapes_count(cfg):
        shapes = llama_np.model.param_shapes(cfg.replace(n_layers=1))
        return (sum(math.prod(shapes[f"layers.0.{n}"]) for n in ("wq", "wk", "wv", "wo")),
                sum(math.prod(shapes[f"layers.0.{n}"]) for n in ("w1", "w2", "w3")))
    def block_in(rng):
        n_kv = int(rng.integers(1, 5))
        return ModelConfig(dim=int(rng.integers(8, 300)), n_layers=1, n_heads=n_kv * int(rng.integers(1, 5)),
                           n_kv_heads=n_kv, head_dim=2 * int(rng.integers(2, 40)), hidden_dim=int(rng.integers(8, 900)))
    cases["block_params"] = Case(shapes_count, block_in, n_trials=8)
    # ---- 07
    def one_layer(rng):
        cfg = ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=int(rng.choice([1, 2, 4])), vocab_size=50,
                          hidden_dim=48, max_seq_len=16)
        return llama_np.random_params(cfg, seed=int(rng.integers(1000)), std=0.3), cfg, rng.integers(0, 50, 9)
    cases["transformer_block"] = Case(llama_np.forward, one_layer, atol=1e-4, rtol=1e-4)
    def random_llama(rng):
        n_kv, tied = int(rng.choice([1, 2, 4])), bool(rng.integers(2))
        scaling = ({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8} if rng.integers(2) else None)
        cfg = ModelConfig(dim=32, n_layers=int(rng.integers(1, 4)), n_heads=4, n_kv_heads=n_kv, vocab_size=40,
                          hidden_dim=48, max_seq_len=32, tie_embeddings=tied, rope_scaling=scaling)
        flat = {name: (0.3 * rng.standard_normal(shape)).astype(np.float32) + (1.0 if len(shape) == 1 else 0.0)
                for name, shape in llama_np.model.param_shapes(cfg).items()}
        return flat, cfg, rng.integers(0, 40, 12)
    cases["forward"] = Case(lambda p, c, t: llama_np.forward(llama_np.nest(p, c), c, t), random_llama,
                            atol=1e-4, rtol=1e-4, n_trials=6)
    # ---- 08
    def updates_in(rng):
        cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=int(rng.choice([1, 2, 4])), vocab_size=8,
                          hidden_dim=8, max_seq_len=16)
        shape = lambda T: (cfg.n_layers, cfg.n_kv_heads, T, cfg.head_dim)
        T0 = int(rng.integers(1, 8))
        steps = [(0, rng.standard_normal(shape(T0), dtype=np.float32), rng.standard_normal(shape(T0), dtype=np.float32))]
        steps += [(pos, rng.standard_normal(shape(1), dtype=np.float32), rng.standard_normal(shape(1), dtype=np.float32))
                  for pos in range(T0, T0 + 4)]
        return cfg, steps
    cases["Cache.update"] = Case(lambda cfg, steps: run_updates(llama_np.kv_cache.new_cache, cfg, steps), updates_in,
                                 atol=1e-7, rtol=0, n_trials=4, labels=update_labels(2))
    cases["greedy"] = Case(lib.greedy, lambda rng: rng.standard_normal(1000).astype(np.float32), n_trials=5)
    cases["softmax_probs"] = Case(lib.softmax_probs, lambda rng: (3 * rng.standard_normal(500).astype(np.float32),
                                                                  float(rng.choice([0.3, 1.0, 2.5]))),
                                  atol=1e-12, rtol=1e-9, n_trials=4)
    cases["top_k_filter"] = Case(lib.top_k_filter, lambda rng: (rng.standard_normal(300).astype(np.float32),
                                                                int(rng.choice([0, 1, 7, 50, 300]))),
                                 atol=1e-7, rtol=0, n_trials=6)
    cases["top_p_filter"] = Case(lib.top_p_filter, lambda rng: (lib.softmax_probs(2 * rng.standard_normal(400)),
                                                                float(rng.choice([0.3, 0.9, 0.99, 1.0]))),
                                 atol=1e-12, rtol=1e-9, n_trials=6)
    cases["sample"] = Case(lambda *a: draws(lib.sample, *a), lambda rng: (
        2 * rng.standard_normal(200).astype(np.float32), float(rng.choice([0.0, 0.7, 1.0, 1.5])),
        int(rng.choice([0, 5, 40])), float(rng.choice([0.5, 0.9, 1.0])), int(rng.integers(100))), n_trials=6,
        labels=lambda i: f"draw {i + 1}")
    def tiny_generation(rng):
        cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=24, hidden_dim=48, max_seq_len=40)
        setting = [dict(temperature=0.0), dict(temperature=1.0),
                   dict(temperature=0.8, top_k=8, top_p=0.9)][int(rng.integers(3))]
        return dict(params=llama_np.random_params(cfg, seed=int(rng.integers(1000)), std=0.5), cfg=cfg,
                    prompt_ids=rng.integers(0, 24, 5).tolist(), max_new_tokens=12, seed=int(rng.integers(100)),
                    stop_ids={int(rng.integers(24))}, **setting)
    cases["generate"] = Case(lambda **kw: lib.generate(tokenizer=None, **kw).ids, tiny_generation, n_trials=6,
                             labels=lambda i: f"the token generated at step {i + 1}")
    # ---- 09
    import tempfile
    from pathlib import Path
    tmp = Path(tempfile.mkdtemp(prefix="llama_np_mistakes_"))
    dtypes = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32, "I8": np.int8}
    def random_safetensors(rng):
        path = tmp / f"random-{rng.integers(1 << 30)}.safetensors"
        tensors = {}
        for i in range(int(rng.integers(1, 7))):
            shape = tuple(int(s) for s in rng.integers(1, 9, size=int(rng.integers(1, 4))))
            kind = str(rng.choice(list(dtypes)))
            values = (rng.standard_normal(shape) * 100).astype(np.float32)
            tensors[f"layers.{i}.w{rng.integers(100)}"] = (llama_np.weights.packed.f32_to_bf16(values) if kind == "BF16"
                                                           else values.astype(dtypes[kind]))
        llama_np.weights.safetensors.save(path, tensors, metadata={"format": "pt"} if rng.random() < 0.5 else None)
        return str(path)
    cases["read_header"] = Case(llama_np.weights.safetensors.read_header, random_safetensors, n_trials=5)
    cases["load_safetensors"] = Case(lambda path: listing(llama_np.weights.safetensors.load(path)), random_safetensors,
                                     atol=0, rtol=0, n_trials=3, labels=lambda i: f"tensor {i + 1} (in name order)")
    def random_bits(rng):
        shape = tuple(int(s) for s in rng.integers(1, 7, size=int(rng.integers(1, 4))))
        return rng.integers(0, 1 << 16, size=shape).astype(np.uint16)
    cases["bf16_to_float32"] = Case(llama_np.weights.packed.bf16_to_f32, random_bits, atol=0, rtol=0, n_trials=5)
    # ---- 10
    def router_in(kind):
        def make(rng):
            T, dim, E = int(rng.integers(1, 40)), int(rng.integers(4, 64)), int(rng.choice([4, 8, 16]))
            x = rng.standard_normal((T, dim), dtype=np.float32)
            w = rng.standard_normal((E, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
            return x @ w.T, int(rng.integers(1, 3)), kind
        return make
    for kind in ("mixtral", "llama4"):
        cases[f"route ({kind})"] = Case(llama_np.moe.route, router_in(kind), n_trials=5)
    def layer_in(kind, shared):
        def make(rng):
            T, dim, F, E = int(rng.integers(1, 50)), 16, 24, int(rng.choice([4, 6, 8]))
            w = lambda *shape: (rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[-1])))
            layer = {"router": 3 * w(E, dim), "experts_w1": w(E, F, dim), "experts_w2": w(E, dim, F),
                     "experts_w3": w(E, F, dim)}
            if shared:
                layer.update({"shared_w1": w(F, dim), "shared_w2": w(dim, F), "shared_w3": w(F, dim)})
            return rng.standard_normal((T, dim), dtype=np.float32), layer, int(rng.integers(1, 3)), kind, shared
        return make
    def moe_ref(x, layer, k, kind, shared):
        cfg = ModelConfig(dim=x.shape[1], n_heads=1, n_experts=len(layer["router"]), n_experts_per_tok=k,
                          moe={"kind": kind, "shared_expert": shared})
        return llama_np.moe.moe_forward(x, layer, cfg)
    for kind, shared in [("mixtral", False), ("llama4", True), ("llama4", False)]:
        cases[f"moe_layer ({kind}{', shared expert' if shared else ''})"] = Case(moe_ref, layer_in(kind, shared), n_trials=3)
    def aux_in(rng):
        E = int(rng.choice([4, 8, 16]))
        return (rng.standard_normal((int(rng.integers(1, 200)), E), dtype=np.float32) * np.float32(rng.uniform(0.1, 5)),
                E, int(rng.integers(1, 3)))
    cases["aux_loss"] = Case(llama_np.moe.aux_loss, aux_in, atol=1e-6, n_trials=5)
    # ---- 13
    import llama_np.verify
    from gguf import GGMLQuantizationType as GQ
    from gguf.quants import quantize as gguf_quantize
    # torch's codes and scales (stored): exact. The inputs' scales make w / s and w * (1 / s) agree.
    cases["quantize_int8"] = Case(torch_int8, int8_inputs, atol=0, rtol=0, n_trials=4)
    cases["quantize_q8_0"] = Case(lambda w: gguf_quantize(w, GQ.Q8_0), q8_inputs, atol=0, rtol=0, n_trials=5)
    # |d * scale * q| <= ~1; float32 products in another order differ by an ulp (~1e-7)
    cases["dequantize_q4_k"] = Case(gguf_q4_k_rows, q4k_inputs, atol=1e-6, rtol=1e-6, n_trials=4)
    # sums of <= 768 products of size ~1: float32 rounding in another order, ~1e-5
    cases["packed_matmul"] = Case(lambda x, raw, deq, block_rows: x @ deq(raw).T, matmul_inputs,
                                  atol=1e-3, rtol=1e-4, n_trials=4)
    cases["kl_top1"] = Case(llama_np.verify.kl_top1, kl_inputs, atol=1e-6, rtol=1e-4, n_trials=6)
    return cases


_LLAMA3 = {}


def llama3():
    """llama_np's Llama 3 tokenizer (from the asset cache), loaded once."""
    if "tok" not in _LLAMA3:
        from llama_np import assets
        from llama_np.tokenizer.tiktoken_bpe import TiktokenTokenizer
        _LLAMA3["tok"] = TiktokenTokenizer.from_file(assets.fetch("llama3-tokenizer"))
    return _LLAMA3["tok"]


def llama3_vocab():
    if "vocab" not in _LLAMA3:
        _LLAMA3["vocab"] = {rank: token for token, rank in llama3().ranks.items()}
    return _LLAMA3["vocab"]


def cases() -> dict[str, Case]:
    if "cases" not in _LLAMA3:
        _LLAMA3["cases"] = _cases()
    return _LLAMA3["cases"]
