"""The reference fixtures of lessons 02 (RMSNorm) and 03 (RoPE).

Without torch: the committed numbers agree with llama_np's library functions (which the lessons
use as the reference on random inputs), so the two references a learner is checked against agree
with each other. With the reference extra: the make scripts, rerun now, give the committed numbers
(the fixtures are what transformers says, not a stale copy).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from course.fixtures import make_02_rmsnorm as m02
from course.fixtures import make_03_rope as m03
from llama_np.norm import rms_norm
from llama_np.rope import apply_rope, hf_to_meta, meta_to_hf, rope_angles, rope_frequencies


@pytest.fixture(scope="module")
def fx02():
    return m02.load()


@pytest.fixture(scope="module")
def fx03():
    return m03.load()


# ------------------------------------------------------------------------- without torch
def test_02_inputs_come_from_the_seed(fx02):
    for k, v in m02.inputs().items():
        np.testing.assert_array_equal(fx02[k], v, err_msg=k)


def test_02_llama_np_rms_norm_matches_the_fixture(fx02):
    for name in fx02["cases"]:
        name = str(name)
        got = rms_norm(fx02[f"{name}_x"], fx02[f"{name}_weight"], float(fx02[f"{name}_eps"]))
        # float32 on both sides: a mean of <= 576 squares and an rsqrt, ~1e-7 relative apart
        np.testing.assert_allclose(got, fx02[f"{name}_rms_norm"], rtol=1e-5, atol=1e-6, err_msg=name)


def test_02_layer_norm_fixture_is_a_layer_norm(fx02):
    """The LayerNorm numbers satisfy the formula (computed here in float64)."""
    for name in fx02["cases"]:
        name = str(name)
        x = fx02[f"{name}_x"].astype(np.float64)
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        want = (x - mu) / np.sqrt(var + float(fx02[f"{name}_eps"])) * fx02[f"{name}_weight"] + fx02[f"{name}_bias"]
        # torch computes in float32: ~1e-6 relative of values up to ~24 (the massive case)
        np.testing.assert_allclose(fx02[f"{name}_layer_norm"], want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_03_frequencies_match_llama_np(fx03):
    for name in m03.FREQS:
        got = rope_frequencies(int(fx03[f"{name}_head_dim"]), float(fx03[f"{name}_theta"]),
                               json.loads(str(fx03[f"{name}_scaling"])))
        # transformers computes theta_i in float32, llama_np in float64: ~1 ulp of float32
        np.testing.assert_allclose(got, fx03[f"freq_{name}"], rtol=1e-6, err_msg=name)


def test_03_permutation_matches_llama_np(fx03):
    H, KV = int(fx03["rot_n_heads"]), int(fx03["rot_n_kv_heads"])
    # a permutation moves numbers without changing them: exact
    np.testing.assert_array_equal(hf_to_meta(fx03["rot_wq_hf"], H), fx03["rot_wq_meta"])
    np.testing.assert_array_equal(hf_to_meta(fx03["rot_wk_hf"], KV), fx03["rot_wk_meta"])
    np.testing.assert_array_equal(meta_to_hf(fx03["rot_wq_meta"], H), fx03["rot_wq_hf"])


def test_03_meta_rotation_gives_transformers_scores(fx03):
    H, KV, d, T = (int(fx03[f"rot_{k}"]) for k in ("n_heads", "n_kv_heads", "head_dim", "T"))
    x = fx03["rot_x"]
    q = (x @ fx03["rot_wq_meta"].T).reshape(T, H, d).swapaxes(0, 1)
    k = (x @ fx03["rot_wk_meta"].T).reshape(T, KV, d).swapaxes(0, 1)
    cos, sin = rope_angles(rope_frequencies(d, float(fx03["rot_theta"])), fx03["rot_positions"])
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    # per-head pairs: Meta's position 2i is HF's i, 2i+1 is HF's i + d/2
    meta_order = np.stack([np.arange(d // 2), np.arange(d // 2) + d // 2], -1).ravel()
    # float32 products of numbers ~1-10; transformers builds the angles in float32: ~1e-6 relative
    np.testing.assert_allclose(q, fx03["rot_q_hf_rotated"][..., meta_order], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(k, fx03["rot_k_hf_rotated"][..., meta_order], rtol=1e-5, atol=1e-5)
    scores = q @ np.repeat(k, H // KV, axis=0).swapaxes(1, 2)
    np.testing.assert_allclose(scores, fx03["rot_scores"], rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- with the reference extra
@pytest.mark.parametrize("module", [m02, m03], ids=["02_rmsnorm", "03_rope"])
def test_remade_fixture_matches_the_committed_one(module):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    fresh, stored = module.make(), module.load()
    assert set(fresh) == set(stored)
    for key in sorted(fresh):
        if key == "made_with":
            continue
        a, b = np.asarray(fresh[key]), stored[key]
        if a.dtype.kind in "f":
            # another torch build may round the last bit differently; real changes are far larger
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(a, b, err_msg=key)
