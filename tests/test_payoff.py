"""Every lesson's payoff cell runs the learner's function inside the model, and fails with a wrong one.

Each payoff cell is executed here from the solution notebook, with the learner's functions
replaced by (a) the library's own wrapped in a call counter and (b) a deliberately wrong one.
(a) must pass the cell's checks and be called on every layer; (b) must make the checks fail.
So a refactor that stops calling the learner's function (the check then passing on the
library's own numbers) fails here.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import llama_np
from course import mistakes
from course.checkers import check_close, check_dtype, check_equal
from llama_np import attention, ffn, moe, norm, rope
from llama_np.weights import hf, packed, safetensors
from llama_np.config import ModelConfig

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2_LAYERS = 30


def cell(lesson: str, cell_id: str) -> str:
    nb = json.loads((ROOT / "solutions" / f"{lesson}.ipynb").read_text(encoding="utf-8"))
    found = [c for c in nb["cells"] if c.get("id") == cell_id]
    assert found, f"{lesson}: no cell {cell_id} (payoff cell moved? update PAYOFFS)"
    return "".join(found[0]["source"])


class Counted:
    """fn, counting its calls."""
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kw):
        self.calls += 1
        return self.fn(*args, **kw)


def run(lesson: str, cell_ids, learner: dict) -> dict:
    """Execute the cells in a namespace holding the learner's functions and the notebook basics."""
    import course
    ns = {"np": np, "math": math, "llama_np": llama_np, "course": course, "check_close": check_close,
          "check_dtype": check_dtype, "check_equal": check_equal, **learner}
    for cid in cell_ids:
        exec(compile(cell(lesson, cid), f"{lesson}:{cid}", "exec"), ns)
    return ns


def causal(q, k, v):
    """The learner's attention of lessons 04/05: no start_pos, keys = queries + earlier ones."""
    return attention.attention(q, k, v, k.shape[1] - q.shape[1])


# lesson 09's loader steps: the library's, taken before any test swaps them (the wrong ones call these)
READ_HEADER, LOAD_SAFETENSORS = safetensors.read_header, safetensors.load
BF16_TO_F32, HF_TO_META = packed.bf16_to_f32, hf.hf_to_meta


def learner_quantize_q8_0(w):
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize
    return quantize(w, GGMLQuantizationType.Q8_0)


def learner_packed_matmul(x, raw, dequantize, block_rows=64):
    return np.concatenate([x @ dequantize(raw[a:a + block_rows]).T for a in range(0, len(raw), block_rows)], axis=1)


def known_wrong(exercise, what):
    """The wrong answer of course/mistakes.py whose description starts with ``what``."""
    return next(m.fn for m in mistakes.MISTAKES[exercise] if m.what.startswith(what))


def learner_moe_layer(x, layer, k, kind="mixtral", shared=False):
    cfg = ModelConfig(dim=x.shape[1], n_heads=1, n_experts=len(layer["router"]), n_experts_per_tok=k,
                      moe={"kind": kind, "shared_expert": shared})
    return moe.moe_forward(x, layer, cfg)


# lesson: (payoff cells, {learner's name: (right function, wrong function)}, calls expected of each)
PAYOFFS = {
    "02_rmsnorm": (["c25"], {"rms_norm": (norm.rms_norm,
                                          lambda x, w, eps: norm.rms_norm(x, np.ones_like(w), eps))},  # no gain
                   2 * SMOLLM2_LAYERS + 1),
    "03_rope": (["c31"], {"apply_rope": (rope.apply_rope,
                                         lambda x, cos, sin: rope.apply_rope(x, cos, -sin)),          # turns backwards
                          "rope_frequencies": (lambda d, theta: rope.rope_frequencies(d, theta),
                                               lambda d, theta: rope.rope_frequencies(d, 10 * theta)),
                          "llama3_scale_frequencies": (rope.llama3_scale_frequencies,) * 2},
                1),       # rope_frequencies once a forward pass, apply_rope 2 per layer
    "04_attention": (["c32"], {"multi_head_attention": (causal,
                                                        lambda q, k, v: causal(q * math.sqrt(q.shape[-1]), k, v))},
                     SMOLLM2_LAYERS),                                                             # no 1/sqrt(d)
    "05_gqa": (["c25"], {"gqa_attention_grouped": (causal,
                                                   lambda q, k, v: causal(q, k[::-1].copy(), v[::-1].copy()))},
               SMOLLM2_LAYERS),                                                                   # wrong grouping
    "06_swiglu": (["c24"], {"swiglu": (ffn.swiglu, lambda x, w1, w2, w3: ffn.swiglu(x, w3, w2, w1))},
                  SMOLLM2_LAYERS),                                                                # gate <-> up
    "09_real_weights": (["c02", "c44"], {
        "read_header": (READ_HEADER, lambda path: (READ_HEADER(path)[0], READ_HEADER(path)[1] - 8)),  # no length prefix
        "load_safetensors": (LOAD_SAFETENSORS, lambda path: {k: v[::-1] for k, v in LOAD_SAFETENSORS(path).items()}),
        "bf16_to_float32": (BF16_TO_F32, lambda raw: BF16_TO_F32(np.asarray(raw) & np.uint16(0xFF80))),  # no mantissa
        "hf_to_meta": (HF_TO_META, lambda w, n_heads: w)},                                   # q/k rows left permuted
        1),       # the tiny model's loading calls each at least once
    "10_moe_router": (["c17", "c18"], {"route": (moe.route,
                                                 lambda logits, k, kind: moe.route(-logits, k, kind)),  # the worst k
                                       "moe_layer": (learner_moe_layer,
                                                     lambda x, layer, k, kind, shared: learner_moe_layer(
                                                         x, layer, k, {"mixtral": "llama4"}.get(kind, "mixtral"),
                                                         shared))},                     # the other routing rule
                      2 + 4),                                                           # MoE layers of the two models
    # c02 loads SmolLM2 and the fixture, c15 defines dequantize_q8_0 (given); every matrix quantized once
    "13_quantization": (["c02", "c15", "c37", "c38"],
                        {"quantize_q8_0": (learner_quantize_q8_0, known_wrong("quantize_q8_0", "one scale per row")),
                         "packed_matmul": (learner_packed_matmul, known_wrong("packed_matmul", "every block of rows"))},
                        7 * SMOLLM2_LAYERS),
}


@pytest.mark.parametrize("lesson", sorted(PAYOFFS))
def test_payoff_calls_the_learners_functions(lesson):
    cells, fns, at_least = PAYOFFS[lesson]
    counted = {name: Counted(right) for name, (right, *_) in fns.items()}
    run(lesson, cells, counted)
    for name, c in counted.items():
        if name != "llama3_scale_frequencies":     # SmolLM2 has no rope scaling: never needed
            assert c.calls >= at_least, f"{lesson}: the learner's {name} was called {c.calls} times"


@pytest.mark.filterwarnings("ignore:overflow encountered")      # a wrong norm lets activations blow up
@pytest.mark.parametrize("lesson", sorted(PAYOFFS))
def test_payoff_fails_with_a_wrong_function(lesson):
    cells, fns, _ = PAYOFFS[lesson]
    for name, (right, wrong) in fns.items():
        if wrong is right:
            continue
        learner = {n: (wrong if n == name else r) for n, (r, _) in fns.items()}
        with pytest.raises(AssertionError):
            run(lesson, cells, learner)


def test_lesson_02_spy_sees_every_norm():
    ns = run("02_rmsnorm", ["c04"], {})
    assert ns["acts"].shape[0] == 2 * SMOLLM2_LAYERS + 1


def test_swapped_puts_back_and_refuses_a_missing_name():
    """course.payoff.swapped (lesson 09's loaders): the real function is back after the block,
    even after an error; a name the module lacks would never be called, so it is an error."""
    from course.payoff import swapped
    with pytest.raises(RuntimeError):
        with swapped((packed, "bf16_to_f32", lambda raw: raw)):
            assert packed.bf16_to_f32 is not BF16_TO_F32
            raise RuntimeError("inside")
    assert packed.bf16_to_f32 is BF16_TO_F32
    with pytest.raises(AttributeError, match="llama_np.weights.packed has no function bf16_to_float32"):
        with swapped((packed, "bf16_to_float32", BF16_TO_F32)):
            pass
    assert not hasattr(packed, "bf16_to_float32")
