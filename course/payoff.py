"""The payoff of a lesson: the learner's function inside a real model, checked against transformers.

    from course.payoff import check_smollm2, with_ops
    logits = check_smollm2(with_ops(rms_norm=rms_norm), "SmolLM2 with your rms_norm")

``with_ops`` is the one way a lesson puts its function into the model: it returns a
``llama_np.ops.Ops`` with that function in place of the library's, which ``llama_np.forward``
then calls on every layer (nothing in the library is patched, so nothing needs putting back).
Loading has no ops: lesson 09 puts its loader functions into ``load_model`` with ``swapped``.
``check_smollm2`` runs SmolLM2-135M-Instruct with those ops on "The capital of France is" and the
30 tokens transformers generated after it, and compares with transformers' logits for the 35
positions (``course/fixtures/smollm2/reference.npz``, installed with the package, made by ``make_fixtures.py`` beside it:
transformers loads the same GGUF with its own code and runs its float32 ``LlamaForCausalLM``).
tests/test_payoff.py runs every lesson's payoff cell with a counting and with a wrong function.
"""
from __future__ import annotations

import contextlib
import functools
import numpy as np

from .checkers import check_close, check_dtype, check_equal

# Same float32 weights on both sides; only the order of operations differs, over 30 layers:
# measured ~4e-5, so 1e-3 is safe on any machine and far below a real bug,
# which moves logits by whole units.
ATOL = 1e-3


def with_ops(**fns):
    """The library's ops with some replaced: ``with_ops(attention=my_attention)``. Names:
    rms_norm, rope_frequencies, apply_rope, attention, swiglu, router, moe (see ``llama_np.ops``)."""
    from llama_np.ops import DEFAULT
    return DEFAULT.replace(**fns)


@contextlib.contextmanager
def swapped(*patches):
    """patches: (module, name, function); ``module.name`` is that function inside the ``with``
    block only. For the loaders of lesson 09, which ``load_model`` reaches through module
    attributes (a model's steps take ``with_ops`` instead). A name the module does not have is an
    error: set anyway, it would never be called and the check would pass on the library's code."""
    for module, name, fn in patches:
        if not callable(getattr(module, name, None)):
            raise AttributeError(f"{module.__name__} has no function {name} to swap")
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, fn in patches:
        setattr(module, name, fn)
    try:
        yield
    finally:
        for module, name, real in reversed(saved):
            setattr(module, name, real)


@functools.lru_cache(maxsize=1)
def smollm2():
    """``load_model()``'s (cfg, flat float32 weights, tokenizer) of SmolLM2-135M-Instruct, loaded
    once per kernel (``llama_np.nest(weights, cfg)`` shares the arrays: no second copy)."""
    from llama_np.weights import load_model
    return load_model(progress=False)


@functools.lru_cache(maxsize=1)
def reference() -> dict:
    """transformers' numbers: p0_ids (the prompt), p0_greedy (its 30-token answer), and at each of
    the 35 positions the 16 largest logits (p0_top_ids, p0_top_logits) and a fixed slice of 48
    vocabulary entries (slice, p0_slice_logits)."""
    from . import fixture
    return fixture("smollm2/reference")


def reference_tokens() -> np.ndarray:
    """The 35 token ids: the prompt and transformers' greedy answer."""
    ref = reference()
    return np.concatenate([ref["p0_ids"], ref["p0_greedy"]])


def smollm2_logits(ops, tokens=None, params=None) -> np.ndarray:
    """SmolLM2's (T, vocab) logits for ``tokens`` (the 35 reference tokens by default) with ``ops``,
    from its own weights or from ``params`` (nested, as ``llama_np.nest`` makes them)."""
    import llama_np
    cfg, weights, _ = smollm2()
    params = llama_np.nest(weights, cfg) if params is None else params
    return llama_np.forward(params, cfg, reference_tokens() if tokens is None else tokens, ops=ops)


def position_errors(logits) -> np.ndarray:
    """Largest |logit - transformers'| at each position, over the entries the fixture stores."""
    ref = reference()
    T = len(logits)
    got = np.concatenate([np.take_along_axis(logits, ref["p0_top_ids"][:T], -1), logits[:, ref["slice"]]], -1)
    want = np.concatenate([ref["p0_top_logits"][:T], ref["p0_slice_logits"][:T]], -1)
    return np.abs(got - want).max(axis=-1)


def check_smollm2(ops, what: str, params=None) -> np.ndarray:
    """Run the 35 reference tokens through SmolLM2 with ``ops`` (and ``params``, see
    ``smollm2_logits``) and check the logits against transformers' (atol ``ATOL``) and the next
    token at every position. Returns the logits."""
    ref, logits = reference(), smollm2_logits(ops, params=params)
    check_dtype(logits, np.float32, f"{what}: logits")
    check_close(np.take_along_axis(logits, ref["p0_top_ids"], -1), ref["p0_top_logits"],
                f"{what}: top-16 logits at all {len(logits)} positions", atol=ATOL)
    check_close(logits[:, ref["slice"]], ref["p0_slice_logits"], f"{what}: 48 fixed vocabulary entries", atol=ATOL)
    check_equal(logits.argmax(-1).tolist(), ref["p0_top_ids"][:, 0].tolist(), f"{what}: the next token at every position")
    tok, n = smollm2()[2], len(ref["p0_ids"])
    print(f"{tok.decode(ref['p0_ids'].tolist())!r} -> {tok.decode([int(logits[n - 1].argmax())])!r}")
    return logits
