"""The reference fixtures of lessons 04 (attention), 05 (GQA) and 06 (SwiGLU).

Each ``course/fixtures/0N_*.npz`` is made by ``course/fixtures/make_0N_*.py`` with transformers
(PyTorch) alone, so a learner without torch still checks against transformers' numbers. With the
reference extra installed, these tests run the scripts again and compare with the committed files:
a fixture that no longer matches what transformers computes fails here, not in a lesson.
Without torch only the cheap checks run (the files hold what the notebooks read).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "course" / "fixtures"
# Same torch/transformers versions give identical bits; another build of torch or BLAS sums in
# another order: float32 noise ~1e-7 relative on values of order 1, so 1e-5 is ample and still
# far below any real change (a wrong mask or scale moves values by ~0.1).
ATOL = 1e-5


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, FIXTURES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _stored(mod) -> dict:
    with np.load(mod.FIXTURE) as f:
        return {k: f[k] for k in f.files}


def _compare(fresh: dict, stored: dict, keys, atol: float = ATOL):
    for k in keys:
        assert k in fresh, f"the script no longer makes {k!r}"
        a, b = np.asarray(fresh[k]), stored[k]
        assert a.shape == b.shape, (k, a.shape, b.shape)
        if b.dtype.kind == "f":
            np.testing.assert_allclose(a, b, atol=atol, rtol=0, err_msg=k)
        else:
            np.testing.assert_array_equal(a, b, err_msg=k)


def _reference():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")


@pytest.mark.parametrize("name,keys", [
    ("make_04_attention", ["softmax_x", "softmax_torch", "mask_hf", "prefill_q", "prefill_out",
                           "prefill_probs", "decode_k", "decode_out", "decode_probs", "smollm2_text",
                           "smollm2_ids", "smollm2_tokens", "smollm2_layers", "smollm2_probs"]),
    ("make_05_gqa", ["repeat_k", "repeat_out", "prefill_out", "decode_out", "models",
                     "model_names", "kv_bytes_per_token_gqa", "kv_bytes_per_token_mha"]),
    ("make_06_swiglu", ["grid", "silu", "gelu", "mlp_x", "mlp_w1", "mlp_w2", "mlp_w3", "mlp_out",
                        "models", "attn_params", "mlp_params"]),
])
def test_fixture_holds_what_the_lesson_reads(name, keys):
    stored = _stored(_script(name))
    assert set(keys) <= set(stored), set(keys) - set(stored)
    made = json.loads(str(stored["made_with"]))
    assert made["torch"] and made["transformers"]
    assert (FIXTURES / f"{name}.py").stat().st_size and _script(name).FIXTURE.stat().st_size < 200_000


def test_fixture_probabilities_are_distributions():
    """A cheap sanity check that needs no torch: rows of stored softmaxes sum to one, masked
    entries are exactly zero (the causal mask holds in transformers' numbers too)."""
    fx = _stored(_script("make_04_attention"))
    for k in ("softmax_torch", "prefill_probs", "decode_probs", "smollm2_probs"):
        np.testing.assert_allclose(fx[k].sum(-1), 1.0, atol=1e-5, err_msg=k)   # float32 sums of <= 12 terms
    p = fx["smollm2_probs"]
    assert (np.triu(np.ones(p.shape[-2:], bool), 1) <= (p == 0)).all()


@pytest.mark.reference
def test_04_attention_fixture_remakes():
    _reference()
    mod = _script("make_04_attention")
    stored, fresh = _stored(mod), mod.make(smollm2=False)
    _compare(fresh, stored, [k for k in fresh if k != "made_with"])


@pytest.mark.slow
@pytest.mark.reference
def test_04_attention_smollm2_probabilities_remake():
    """transformers loads the SmolLM2 GGUF itself (about a minute here) and gives the same
    attention probabilities. After 16-17 layers of float32 arithmetic in another build, a
    probability may move by ~1e-6 (measured against llama_np: 2e-6); 1e-4 is ample."""
    _reference()
    from llama_np.assets import AssetError, fetch
    try:
        fetch("smollm2-135m-instruct")
    except AssetError as e:
        pytest.skip(f"SmolLM2 not available: {e}")
    mod = _script("make_04_attention")
    stored, fresh = _stored(mod), mod.make_smollm2()
    _compare(fresh, stored, [k for k in fresh if k != "smollm2_probs"])
    _compare(fresh, stored, ["smollm2_probs"], atol=1e-4)


@pytest.mark.reference
def test_05_gqa_fixture_remakes():
    _reference()
    mod = _script("make_05_gqa")
    stored, fresh = _stored(mod), mod.make()
    _compare(fresh, stored, [k for k in fresh if k != "made_with"])
    # MHA keeps one KV head per query head; GQA divides the cache by n_heads / n_kv_heads.
    models = json.loads(str(stored["models"]))
    for name, gqa, mha in zip(stored["model_names"], stored["kv_bytes_per_token_gqa"], stored["kv_bytes_per_token_mha"]):
        c = models[str(name)]
        assert mha == gqa * c["num_attention_heads"] // c["num_key_value_heads"]


@pytest.mark.reference
def test_06_swiglu_fixture_remakes():
    _reference()
    mod = _script("make_06_swiglu")
    stored, fresh = _stored(mod), mod.make()
    _compare(fresh, stored, [k for k in fresh if k != "made_with"])
