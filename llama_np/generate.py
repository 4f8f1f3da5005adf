"""Text generation: prefill the prompt once, then decode one token at a time through the KV cache.

    prefill:  logits = forward(prompt, start_pos=0, cache)      # T tokens in one pass (matrix-matrix)
    decode:   logits = forward([token], start_pos=pos, cache)   # 1 token a step (matrix-vector)

Decoding reads every weight once per token, so its speed is set by memory bandwidth; prefill
reuses each weight for all T tokens, so it is set by arithmetic.

Choosing the next token from a row of logits (``sample``):
  * greedy (temperature 0): the argmax; deterministic.
  * temperature T: softmax(logits / T); T < 1 sharpens, T > 1 flattens.
  * top-k: keep only the k largest logits (Fan et al. 2018).
  * top-p / nucleus: keep the smallest set of tokens whose probability adds up to p
    (Holtzman et al. 2019), so the cut adapts to how confident the model is.
  * min-p: keep the tokens at least ``min_p`` times as likely as the most likely one
    (Nguyen et al. 2024), a cut that also follows the model's confidence.
  * repetition penalty: make every token already in the text less likely (Keskar et al. 2019,
    CTRL): its logit is divided by the penalty when positive, multiplied when negative.

The order is transformers' ``generate`` order (``_get_logits_processor``), so the same settings
give the same distribution there and here:

    repetition penalty -> temperature -> top-k -> top-p -> min-p -> draw

The repetition penalty is a "processor": it applies to greedy decoding too. The rest only
matter when sampling (temperature > 0). Like transformers, the penalty covers every token of
the prompt and of the answer so far (llama.cpp looks back only 64 tokens).
The random draws come from a seeded ``np.random.Generator``: the same seed gives the same text.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .backend import array_module, to_numpy
from .kv_cache import new_cache
from .model import forward, nest


# ------------------------------------------------------------------------------ sampling
def check_sampling_args(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                        max_new_tokens: int = 0, min_p: float = 0.0, repetition_penalty: float = 1.0) -> None:
    """One-line ValueErrors for arguments that make no sense (the ``not ... >=`` forms catch NaN)."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if int(top_k) != top_k or top_k < 0:
        raise ValueError(f"top_k must be a whole number >= 0 (0 means no limit), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 means no limit), got {top_p}")
    if not 0 <= min_p <= 1:
        raise ValueError(f"min_p must be in [0, 1] (0 means no limit), got {min_p}")
    if not 0 < repetition_penalty < float("inf"):
        raise ValueError(f"repetition_penalty must be > 0 (1 means none), got {repetition_penalty}")
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens}")


def repetition_penalty_filter(logits: np.ndarray, seen, penalty: float) -> np.ndarray:
    """Make the tokens in ``seen`` less likely: logit / penalty if > 0, logit * penalty if < 0.

    logits: (vocab,) -> (vocab,) (a new array); seen: token ids, repeats allowed (each token is
    penalised once, however often it came). penalty = 1: unchanged. Dividing a negative logit
    would raise it, hence the two cases (CTRL, Keskar et al. 2019, as transformers does it)."""
    if penalty == 1.0 or len(seen) == 0:
        return logits
    ids = np.unique(np.asarray(seen, dtype=np.int64))
    out = logits.copy()
    x = out[ids]
    out[ids] = np.where(x < 0, x * penalty, x / penalty)
    return out


def greedy(logits) -> int:
    """The most likely token. logits: (vocab,)."""
    return int(np.argmax(logits))


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Set all but the k largest logits to -inf. logits: (vocab,) -> (vocab,). k = 0: unchanged."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k)[-k]            # the k-th largest value, O(vocab)
    return np.where(logits >= kth, logits, -np.inf)  # ties with the k-th value are all kept


def top_p_filter(probs: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probabilities sum to >= p; renormalise.

    probs: (vocab,) summing to 1 -> (vocab,). The most likely token is always kept."""
    if p >= 1.0:
        return probs
    order = np.argsort(-probs, kind="stable")
    cum = np.cumsum(probs[order])
    # Token j is kept if the tokens before it add up to less than p.
    n_keep = int(np.searchsorted(cum, p) + 1)
    out = np.zeros_like(probs)
    keep = order[:n_keep]
    out[keep] = probs[keep]
    return out / out.sum()


def min_p_filter(probs: np.ndarray, min_p: float) -> np.ndarray:
    """Keep the tokens whose probability is at least ``min_p`` times the largest; renormalise.

    probs: (vocab,) summing to 1 -> (vocab,). min_p = 0: unchanged. The top token always stays."""
    if min_p <= 0.0:
        return probs
    out = np.where(probs >= min_p * probs.max(), probs, 0.0)
    return out / out.sum()


def softmax_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) in float64 (one row: precision is free, and tiny
    probabilities in the tail then still add up right)."""
    x = logits.astype(np.float64) / temperature
    e = np.exp(x - x.max())
    return e / e.sum()


def sample_probs(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 min_p: float = 0.0, repetition_penalty: float = 1.0, seen=()) -> np.ndarray:
    """The distribution ``sample`` draws from: (vocab,) logits -> (vocab,) probabilities, with the
    processors in transformers' order (module docstring). temperature must be > 0 here."""
    logits = repetition_penalty_filter(logits, seen, repetition_penalty)
    probs = softmax_probs(top_k_filter(logits, top_k), temperature)
    return min_p_filter(top_p_filter(probs, top_p), min_p)


def sample(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, rng=None,
           min_p: float = 0.0, repetition_penalty: float = 1.0, seen=()) -> int:
    """Pick the next token id from one row of logits (vocab,). ``seen``: the ids so far (prompt
    and answer), for the repetition penalty."""
    logits = np.asarray(to_numpy(logits)).reshape(-1)
    if temperature == 0:
        return greedy(repetition_penalty_filter(logits, seen, repetition_penalty))
    rng = rng if rng is not None else np.random.default_rng()
    probs = sample_probs(logits, temperature, top_k, top_p, min_p, repetition_penalty, seen)
    # Inverse-CDF draw: one uniform number, one binary search (rng.choice checks p every call).
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(probs) - 1))


# ---------------------------------------------------------------------------- generation
@dataclass
class GenerationResult:
    ids: list                     # the new token ids (a stop token, if one came, is the last)
    prompt_tokens: int = 0
    prefill_s: float = 0.0        # time of the prompt's forward pass (first new token included)
    decode_s: float = 0.0         # time of the one-token steps after it
    decode_steps: int = 0
    stop_reason: str = "length"   # "stop" (a stop token), "length" (max_new_tokens), "context",
                                  # "interrupted" (Ctrl-C: see GenerationInterrupted)

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else float("nan")

    @property
    def decode_tok_s(self) -> float:
        return self.decode_steps / self.decode_s if self.decode_s > 0 else float("nan")

    def summary(self) -> str:
        """One line of statistics; a rate is shown only when it was measured (no "nan tok/s":
        --max-new-tokens 0 runs no forward pass, one new token takes no decode step)."""
        prompt = f"prompt {self.prompt_tokens} tokens"
        if self.prefill_s > 0:
            prompt += f": {self.prefill_tok_s:.1f} tok/s"
        gen = f"generated {len(self.ids)} tokens"
        if self.decode_steps > 0 and self.decode_s > 0:
            gen += f": {self.decode_tok_s:.1f} tok/s"
        return f"{prompt}; {gen} ({self.stop_reason})"


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``generate``: still a KeyboardInterrupt, carrying the ``GenerationResult``
    so far (``.result``, stop_reason "interrupted") so a caller can print what was done."""

    def __init__(self, result: GenerationResult):
        super().__init__("interrupted")
        self.result = result


def generate(params, cfg, tokenizer, prompt_ids, max_new_tokens: int = 128, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, seed: int | None = None, stream=None,
             stop_ids=None, on_logits=None, decoder=None, min_p: float = 0.0,
             repetition_penalty: float = 1.0) -> GenerationResult:
    """Continue ``prompt_ids`` by up to ``max_new_tokens`` tokens.

    params: flat (Meta names) or nested (``model.nest``) weights; tokenizer: used for stop ids and to
    decode the text passed to ``stream(text)`` as each token arrives (may be None with
    ``stream=None``). Stops at a stop token (``tokenizer.stop_ids`` unless ``stop_ids`` is given),
    at ``max_new_tokens``, or when the context is full. ``on_logits(row)`` sees every (vocab,)
    row used to choose a token (for tests: cached decode vs a full forward).

    ``decoder`` (optional) replaces the forward-with-cache steps by an object with
    ``prefill(ids) -> (vocab,)``, ``step(token) -> (vocab,)`` and ``max_len``, such as
    ``llama_np.gpu.Decoder`` (fused GPU kernels); sampling, stopping and streaming stay here.

    ``min_p`` and ``repetition_penalty``: see ``sample``. Ctrl-C raises ``GenerationInterrupted``
    with the tokens and timings so far.
    """
    check_sampling_args(temperature, top_k, top_p, max_new_tokens, min_p, repetition_penalty)
    if "layers" not in params:
        params = nest(params, cfg)
    prompt = [int(t) for t in np.asarray(prompt_ids).reshape(-1)]
    T = len(prompt)
    if T == 0:
        raise ValueError("the prompt is empty: give at least one token")
    if T > cfg.max_seq_len:
        raise ValueError(f"the prompt has {T} tokens, more than the model's context of {cfg.max_seq_len}: "
                         f"shorten it")
    if stop_ids is None:
        stop_ids = set(getattr(tokenizer, "stop_ids", None) or ())
        if not stop_ids and getattr(tokenizer, "eos_id", None) is not None:
            stop_ids = {tokenizer.eos_id}
    stop_ids = {int(s) for s in stop_ids}
    rng = np.random.default_rng(seed)
    decode_text = tokenizer.stream_decoder() if (stream is not None and tokenizer is not None) else None
    result = GenerationResult(ids=[], prompt_tokens=T)
    if max_new_tokens == 0:
        return result

    if decoder is None:
        # The last generated token is never fed back, so the cache needs T + max_new - 1 positions.
        # On the device the weights live on (NumPy or CuPy arrays alike).
        cache = new_cache(cfg, min(T + max_new_tokens - 1, cfg.max_seq_len), xp=array_module(params["norm"]))
        max_len = cache.max_seq_len

        def prefill(ids):
            return forward(params, cfg, ids, 0, cache, last_only=True)[-1]

        def step(token, pos):
            return forward(params, cfg, [token], pos, cache)[-1]
    else:
        max_len = decoder.max_len

        def prefill(ids):
            return decoder.prefill(ids)

        def step(token, pos):
            return decoder.step(token)

    def emit(logits_row) -> bool:
        """Choose, record and stream one token; True when generation must stop."""
        row = to_numpy(logits_row).reshape(-1)
        if on_logits is not None:
            on_logits(row)
        return record(sample(row, temperature, top_k, top_p, rng, min_p, repetition_penalty,
                             prompt + result.ids if repetition_penalty != 1.0 else ()))

    def record(tok) -> bool:
        """Record and stream one chosen token; True when generation must stop."""
        result.ids.append(tok)
        if tok in stop_ids:
            result.stop_reason = "stop"
            return True
        if decode_text is not None:
            piece = decode_text([tok])
            if piece:
                stream(piece)
        if len(result.ids) >= max_new_tokens:
            result.stop_reason = "length"
            return True
        return False

    def run() -> GenerationResult:
        """The loop proper; it fills ``result`` as it goes, so Ctrl-C still finds the timings."""
        if decoder is not None and temperature == 0 and repetition_penalty == 1.0 and on_logits is None \
                and hasattr(decoder, "greedy"):
            # Greedy on the device: the argmax runs on the GPU and the next step is launched before
            # the host reads this token, so the GPU never waits for Python (gpu.Decoder.greedy).
            t0 = time.perf_counter()
            stamps, done = [], [False]

            def on_token(tok):
                stamps.append(time.perf_counter())
                done[0] = record(int(tok))
                return done[0]
            decoder.greedy(prompt, max_new_tokens, on_token=on_token)   # it also stops when its cache is full
            if not done[0]:                      # neither a stop token nor max_new_tokens: the cache is full
                result.stop_reason = "context"
            result.prefill_s = stamps[0] - t0 if stamps else time.perf_counter() - t0
            result.decode_steps = max(0, len(result.ids) - 1)
            result.decode_s = stamps[-1] - stamps[0] if stamps else 0.0
            return result

        t0 = time.perf_counter()
        done = emit(prefill(prompt))
        t1 = time.perf_counter()
        result.prefill_s = t1 - t0
        pos = T
        while not done:
            if pos >= max_len:                  # the context is full
                result.stop_reason = "context"
                break
            logits = step(result.ids[-1], pos)
            pos += 1
            result.decode_steps += 1
            result.decode_s = time.perf_counter() - t1   # kept current: Ctrl-C may come at any step
            done = emit(logits)
        result.decode_s = time.perf_counter() - t1
        return result

    try:
        return run()
    except KeyboardInterrupt:
        result.stop_reason = "interrupted"
        raise GenerationInterrupted(result) from None
