"""The ops passed to ``forward`` are what runs, whatever the layout of the weights."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from llama_np import attention, ffn, kv_cache, llama4, model, moe, ops
from llama_np.config import AttnTemperature, Llama4Attention, ModelConfig
from llama_np.linear import linear_parts
from llama_np.model import flatten, forward, nest, random_params
from llama_np.weights.fuse import RowSlice, fuse, stack_of
from course.fixtures.moe.configs import config as moe_config, make_weights

CFG = ModelConfig(dim=32, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=40, hidden_dim=48, max_seq_len=32)
IDS = [3, 1, 4, 1, 5, 9, 2, 6]


def counting(**names):
    """(ops with each named default wrapped in a counter, the counts)."""
    counts = dict.fromkeys(names, 0)

    def wrap(name):
        real = getattr(ops.DEFAULT, name)

        def fn(*args, **kw):
            counts[name] += 1
            return real(*args, **kw)
        return fn
    return ops.DEFAULT.replace(**{n: wrap(n) for n in names}), counts


def layouts():
    """The same model as loaded (separate matrices), fused on the host, and stacked-only (as
    gpu.upload leaves it: wqkv and w13 with no parts, here as packed-like objects)."""
    separate = random_params(CFG, seed=1)
    fused = nest(fuse(dict(flatten(separate)), CFG), CFG)

    class Packed:                     # a weight that can only multiply, like packed / GPU weights
        is_packed = True

        def __init__(self, w):
            self.w, self.shape = w, w.shape

        def matmul(self, x):
            return x @ self.w.T

    flat = {k: v for k, v in flatten(fused).items()
            if k.rsplit(".", 1)[-1] not in ("wq", "wk", "wv", "w1", "w3")}
    stacked = nest({k: Packed(v) if k.endswith(("wqkv", "w13")) else v for k, v in flat.items()}, CFG)
    return {"separate": separate, "fused": fused, "stacked": stacked}


@pytest.mark.parametrize("layout", ["separate", "fused", "stacked"])
def test_every_op_runs_in_every_layout(layout):
    params = layouts()[layout]
    want = forward(layouts()["separate"], CFG, IDS)
    counted, counts = counting(rms_norm=1, rope_frequencies=1, apply_rope=1, attention=1, swiglu=1)
    got = forward(params, CFG, IDS, ops=counted)
    # same weights, same products, possibly grouped differently: float32 rounding only
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    L = CFG.n_layers
    assert counts == {"rms_norm": 2 * L + 1, "rope_frequencies": 1, "apply_rope": 2 * L, "attention": L, "swiglu": L}


def test_fused_layout_multiplies_each_stack_once():
    layer = layouts()["fused"]["layers"][0]
    assert stack_of([layer["wq"], layer["wk"], layer["wv"]]) is layer["wqkv"]
    assert stack_of([layer["w1"], layer["w3"]]) is layer["w13"]
    assert stack_of([layer["w3"], layer["w1"]]) is None          # out of order: separate products
    assert stack_of([layer["wq"], layer["wv"]]) is None          # a gap
    separate = layouts()["separate"]["layers"][0]
    assert stack_of([separate["w1"], separate["w3"]]) is None
    stacked = layouts()["stacked"]["layers"][0]
    assert isinstance(stacked["wq"], RowSlice) and stack_of([stacked["wq"], stacked["wk"], stacked["wv"]]) is stacked["wqkv"]
    x = np.random.default_rng(0).standard_normal((5, CFG.dim), dtype=np.float32)
    for got, w in zip(linear_parts(x, layer["w1"], layer["w3"]), (layer["w1"], layer["w3"])):
        np.testing.assert_allclose(got, x @ w.T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["mixtral_e8_k2", "llama4_scout", "llama4_maverick"])
def test_moe_and_llama4_layers_call_the_ops(name):
    cfg = moe_config(name)
    params = nest(make_weights(name), cfg)
    counted, counts = counting(moe=1, router=1, swiglu=1, attention=1, apply_rope=1, rms_norm=1)
    with np.errstate(divide="ignore", invalid="ignore"):     # Scout's rope scaling: an unused 0/0
        got = forward(params, cfg, IDS, ops=counted)
        want = forward(params, cfg, IDS)
    np.testing.assert_array_equal(got, want)
    n_moe = cfg.n_layers if cfg.moe.layers is None else len(cfg.moe.layers)
    rope_layers = sum(cfg.llama4.rope_layers) if cfg.llama4 and cfg.llama4.rope_layers else cfg.n_layers
    assert counts["moe"] == counts["router"] == n_moe and counts["attention"] >= cfg.n_layers
    # every dense FFN, and in each MoE layer each expert used (and the shared one), runs ops.swiglu
    assert counts["swiglu"] >= cfg.n_layers + (n_moe if cfg.moe.shared_expert else 0)
    assert counts["apply_rope"] == 2 * rope_layers
    assert counts["rms_norm"] == 2 * cfg.n_layers + 1 + (2 * rope_layers if cfg.llama4 and cfg.llama4.qk_norm else 0)


def test_forward_path_has_no_dictionary_key_branches():
    """The block chooses nothing by the keys of a layer: layouts are fixed at load time, layer
    kinds by the config."""
    for module in (model, llama4, moe, attention, ffn, kv_cache):
        src = inspect.getsource(module)
        assert '" in layer' not in src and "' in layer" not in src, module.__name__
        assert "layer.get(" not in src, module.__name__


def test_unknown_op_is_a_clear_error():
    with pytest.raises(TypeError, match="no op named rmsnorm"):
        ops.DEFAULT.replace(rmsnorm=lambda x, w, eps: x)
    with pytest.raises(TypeError, match="must be a function"):
        ops.DEFAULT.replace(attention=None)


def test_config_settings_are_typed_with_one_default():
    cfg = ModelConfig(n_experts=4, n_experts_per_tok=2, moe={"kind": "llama4"}, hidden_dim=64,
                      rope_scaling={"factor": 32.0}, llama4={"attn_temperature": {"attn_scale": 0.2}})
    assert cfg.moe.shared_expert and cfg.moe.expert_dim == 64
    assert cfg.rope_scaling.original_max_position_embeddings == 8192
    assert cfg.llama4 == Llama4Attention(attn_temperature=AttnTemperature(floor_scale=8192.0, attn_scale=0.2))
    assert not cfg.is_dense_llama and ModelConfig().is_dense_llama
    assert not ModelConfig(llama4={"qk_norm": True}).is_dense_llama
    assert model.layer_functions(ModelConfig(llama4={}))[0][0] is llama4.attention_block
    with pytest.raises(ValueError, match="2 flags for 3 layers"):
        ModelConfig(n_layers=3, llama4={"rope_layers": [1, 0]})
    assert ModelConfig().moe is None and ModelConfig(n_experts=2, n_experts_per_tok=1).moe.kind == "mixtral"
    with pytest.raises(ValueError, match="unknown MoE routing"):
        ModelConfig(n_experts=2, n_experts_per_tok=1, moe={"kind": "switch"})
