"""The reference fixtures of lessons 07 and 08 (course/fixtures/07_*.npz, 08_*.npz).

With the reference extra installed (torch, transformers), each fixture is remade by its script
beside it and compared with the committed file, so a fixture cannot drift away from what its
script says it holds. Without torch, only the fixtures' own consistency is checked (the lessons'
nbval run checks llama_np and the learner's code against them).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "course" / "fixtures"


def _script(name: str):
    """Import course/fixtures/<name>.py by path (as a script would run)."""
    spec = importlib.util.spec_from_file_location(f"lesson_fixture_{name}", FIXTURES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load(path: Path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


# --------------------------------------------------------------------------- without torch
def test_07_fixture_shapes_match_the_tiny_configs():
    from course.fixtures.tiny.configs import CONFIGS, config
    fx = _load(FIXTURES / "07_transformer.npz")
    for name in _script("make_07_transformer").TINY:
        cfg = config(name)
        assert fx[f"{name}_resid"].shape == (cfg.n_layers + 1, CONFIGS[name]["seq"], cfg.dim)
        assert fx[f"{name}_resid"].dtype == np.float32
    T = len(fx["smollm2_ids"])
    assert fx["smollm2_resid_norm"].shape == (31, T) and fx["smollm2_last_logits"].shape == (49152,)
    # the SmolLM2 fixture of the test suite covers the same prompt: its top logits agree with ours
    sm = _load(FIXTURES / "smollm2" / "reference.npz")
    assert sm["p0_ids"].tolist() == fx["smollm2_ids"].tolist()
    np.testing.assert_allclose(fx["smollm2_last_logits"][sm["p0_top_ids"][T - 1]], sm["p0_top_logits"][T - 1],
                               atol=1e-4, rtol=0)   # two runs of the same transformers model
    json.loads(str(fx["made_with"]))


def test_08_fixture_is_consistent():
    fx = _load(FIXTURES / "08_sampling.npz")
    mk = _script("make_08_sampling")
    for key in ("temp_probs", "top_p_probs"):
        np.testing.assert_allclose(fx[key].sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(fx["combo_probs"].sum(-1), 1.0, atol=1e-12)
    for i, k in enumerate(mk.TOP_KS):     # random float32 rows have no ties: exactly k survive
        assert (np.isfinite(fx["top_k_logits"][i]).sum(-1) == k).all()
    for i, p in enumerate(mk.TOP_PS):     # the nucleus holds at least p of the mass
        probs = np.exp(fx["logits"].astype(np.float64) - fx["logits"].max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        kept = (fx["top_p_probs"][i] > 0)
        assert ((probs * kept).sum(-1) >= p - 1e-12).all()
    # the rows are NumPy's, from the script's seed: remade without torch
    rng = np.random.default_rng(mk.SEED)
    np.testing.assert_array_equal(mk.random_logits(rng, (mk.N_ROWS, mk.VOCAB)), fx["logits"])


# ------------------------------------------------------------------------------ with torch
def _compare(fresh: dict, old: dict, keys, atol: float):
    for k in keys:
        if fresh[k].dtype.kind in "iuU":
            assert fresh[k].tolist() == old[k].tolist(), k
        else:
            np.testing.assert_allclose(fresh[k], old[k], atol=atol, rtol=0, err_msg=k)


def test_07_remake_tiny():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    mk = _script("make_07_transformer")
    fresh, old = mk.make(smollm2=False), _load(mk.FIXTURE)
    # same seed, same float32 model: only thread scheduling in torch's matmuls can differ
    _compare(fresh, old, [f"{n}_resid" for n in mk.TINY], atol=1e-5)


@pytest.mark.slow
def test_07_remake_smollm2():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from llama_np.assets import AssetError
    mk = _script("make_07_transformer")
    try:
        fresh = mk.make()
    except AssetError as e:
        pytest.skip(f"SmolLM2 not available: {e}")
    old = _load(mk.FIXTURE)
    _compare(fresh, old, ["smollm2_ids"], atol=0)
    np.testing.assert_allclose(fresh["smollm2_resid_norm"], old["smollm2_resid_norm"], rtol=1e-5)
    np.testing.assert_allclose(fresh["smollm2_last_logits"], old["smollm2_last_logits"], atol=1e-4, rtol=0)


def test_08_remake():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    mk = _script("make_08_sampling")
    fresh, old = mk.make(), _load(mk.FIXTURE)
    assert set(fresh) == set(old)
    # float64 softmax and sorting of the same numbers: identical up to the last bit or two
    _compare(fresh, old, [k for k in old if k != "made_with"], atol=1e-14)
