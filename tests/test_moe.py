"""Mixture of experts (Mixtral, Llama 4 text) against transformers on tiny random models.

The committed fixtures (course/fixtures/moe/*.npz, made by ``make_fixtures.py`` there) hold
transformers' prefill logits, its KV-cached decode logits, each MoE layer's router logits and
chosen experts, and its load-balancing loss: so everything here checks against the reference
even without torch. ``test_fixtures_remake`` remakes them when transformers is installed, and the
loader tests read checkpoints that transformers itself wrote with ``save_pretrained``.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from llama_np import ffn, moe
from llama_np.ops import DEFAULT
from llama_np.config import AttnTemperature, ModelConfig, MoE
from llama_np.model import forward, nest, param_shapes, random_params
from llama_np.kv_cache import new_cache
from course.fixtures.moe import make_fixtures
from course.fixtures.moe.configs import CONFIGS, config, make_weights, weights_sha256
from tests.tolerance import REFERENCE_ULPS, REMAKE_ULPS, assert_close

NAMES = list(CONFIGS)
# The bound for full logits. Both sides compute in float32 with the same weights and
# the same eager math, so what remains is BLAS summation order and exp/sin/cos rounding: we
# measure 1e-6..2e-5 (the larger on the tied-head config, whose logits reach 40). An MoE model
# adds one failure mode a dense model lacks: a near-tie in the router can flip an expert and
# move logits by O(0.1), so the fixtures record the smallest top-k margin (>= 7e-3 here, far
# above the 1e-6 noise) and the routing itself is compared exactly. 2e-3 stays 100x above the
# noise and 10x below what a wrong gate, rule or layout does (see test_each_feature_matters).
ATOL = 2e-3

os.environ.setdefault("LLAMA_NP_QUIET", "1")


def load(name):
    return np.load(make_fixtures.HERE / f"{name}.npz")


def params(name):
    return nest(make_weights(name), config(name))


def decode(p, cfg, ids):
    """Prefill the first third of ids, then one token per call through the KV cache (as the
    fixture's transformers run did)."""
    cache = new_cache(cfg, len(ids))
    n0 = len(ids) // 3
    out = [forward(p, cfg, ids[:n0], 0, cache)]
    out += [forward(p, cfg, ids[pos:pos + 1], pos, cache) for pos in range(n0, len(ids))]
    return np.concatenate(out)


# ----------------------------------------------------------------------------- against transformers
@pytest.mark.parametrize("name", NAMES)
def test_weights_match_fixture(name):
    assert str(load(name)["weights_sha256"]) == weights_sha256(make_weights(name)), (
        "the random weights differ from those the fixture was made with (NumPy's random stream "
        "changed?): remake them with `python -m course.fixtures.moe.make_fixtures`")


@pytest.mark.parametrize("name", NAMES)
def test_prefill_matches_transformers(name):
    fx = load(name)
    logits = forward(params(name), config(name), fx["ids"])
    assert logits.dtype == np.float32
    err = np.abs(logits - fx["logits"]).max()
    assert err <= ATOL, f"max |logit diff| {err:.3g}"
    assert (logits.argmax(-1) == fx["logits"].argmax(-1)).all()


@pytest.mark.parametrize("name", NAMES)
def test_cached_decode_matches_transformers(name):
    """Compared with transformers' own cached decode (its DynamicCache, same split)."""
    fx, cfg = load(name), config(name)
    logits = decode(params(name), cfg, fx["ids"])
    err = np.abs(logits - fx["decode_logits"]).max()
    assert err <= ATOL, f"max |logit diff| {err:.3g}"


@pytest.mark.parametrize("name", NAMES)
def test_router_choices_match_transformers(name):
    """Every MoE layer picks exactly transformers' experts, in the same order, for every token."""
    fx, cfg = load(name), config(name)
    # The comparison means something only if no choice is a near-tie (see ATOL).
    assert float(fx["margin"]) > 1e-3
    with moe.recording() as rec:
        forward(params(name), cfg, fx["ids"])
    assert len(rec) == len(fx["experts"]) == sum(moe.is_moe_layer(cfg, i) for i in range(cfg.n_layers))
    for layer, r in enumerate(rec):
        np.testing.assert_array_equal(r["experts"], fx["experts"][layer])
        # Router logits: one float32 matmul deep into the model, so ~1e-6 apart.
        assert_close(r["logits"], fx["router_logits"][layer], REFERENCE_ULPS, f"router logits, layer {layer}")
        assert r["gates"].dtype == np.float32


@pytest.mark.parametrize("name", NAMES)
def test_load_balance_stats_match_transformers(name):
    """aux loss = transformers' load_balancing_loss_func, entropy = torch.distributions', both on
    transformers' router logits (pure arithmetic: float32 rounding only, hence rtol 1e-5)."""
    fx, cfg = load(name), config(name)
    logits = list(fx["router_logits"])
    loss = moe.aux_loss(logits, cfg.n_experts, cfg.n_experts_per_tok)
    np.testing.assert_allclose(loss, fx["aux_loss"], rtol=1e-5)
    for layer, l in enumerate(logits):
        np.testing.assert_allclose(moe.router_entropy(l), fx["router_entropy"][layer], rtol=1e-5)
    counts = moe.tokens_per_expert(fx["experts"], cfg.n_experts)
    assert counts.sum() == fx["experts"].size


def test_each_feature_matters():
    """Switching off any one Mixtral/Llama 4 feature must break the match with transformers, or
    the tests above would not prove that feature is right."""
    cases = [
        ("mixtral_e8_k2", lambda c: c.replace(moe=dataclasses.replace(c.moe, kind="llama4"))),       # routing rule
        ("llama4_e6_k2_noshared", lambda c: c.replace(moe=dataclasses.replace(c.moe, kind="mixtral"))),
        ("llama4_scout", lambda c: llama4(c, rope_layers=None)),                       # NoPE layer
        ("llama4_scout", lambda c: llama4(c, qk_norm=False)),                          # qk-norm
        ("llama4_scout", lambda c: llama4(c, attention_chunk_size=None)),              # chunked attention
        ("llama4_scout", lambda c: llama4(c, attn_temperature=None)),                  # temperature
        ("llama4_scout", lambda c: c.replace(rope_scaling=None)),                      # Scout's rope scaling
        ("llama4_maverick", lambda c: llama4(c, attn_temperature=None)),
        ("llama4_scout", lambda c: c.replace(moe=dataclasses.replace(c.moe, shared_expert=False))),  # shared expert
    ]
    for name, change in cases:
        fx = load(name)
        cfg = change(config(name))
        err = np.abs(forward(params(name), cfg, fx["ids"]) - fx["logits"]).max()
        assert err > 10 * ATOL, (name, err)


def llama4(cfg, **change):
    """cfg with some of its Llama 4 attention settings changed."""
    return cfg.replace(llama4=dataclasses.replace(cfg.llama4, **change))


def test_activations_stay_float32(monkeypatch):
    """docs/design.md §8: a float64 scalar (a gate, a temperature) would silently turn every later
    matmul into float64. Every product in an MoE model, prefill and decode, sees float32."""
    import llama_np.ffn
    import llama_np.linear as lin
    import llama_np.model
    seen = []

    def spy(x, w):
        seen.append(x.dtype)
        return lin.linear(x, w)

    for mod in (llama_np.model, llama_np.ffn, moe):
        monkeypatch.setattr(mod, "linear", spy)
    for name in ("llama4_scout", "mixtral_e8_k2"):
        out = decode(params(name), config(name), load(name)["ids"][:6])
        assert out.dtype == np.float32
    assert seen and set(seen) == {np.dtype(np.float32)}


# ----------------------------------------------------------------------------- dispatch and cost
@pytest.mark.parametrize("kind,k,shared", [("mixtral", 2, False), ("mixtral", 1, False),
                                           ("llama4", 1, True), ("llama4", 2, False)])
def test_grouped_dispatch_equals_dense_computation(kind, k, shared):
    """Grouping tokens by expert gives what running every expert on every token with zero gates
    gives (transformers' Llama 4 code computes it that dense way)."""
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=4, vocab_size=16, hidden_dim=48, n_experts=5,
                      n_experts_per_tok=k, moe={"kind": kind, "expert_dim": 24, "shared_expert": shared})
    layer = random_params(cfg, seed=3, std=0.3)["layers"][0]
    x = np.random.default_rng(4).standard_normal((37, 32), dtype=np.float32)
    got = moe.moe_forward(x, layer, cfg)
    want = moe.moe_forward_dense(x, layer, cfg)
    assert got.dtype == np.float32
    assert_close(got, want, REMAKE_ULPS)   # same float32 ops, other order: measured <= 5 ulps


class Spy(list):
    """A list of expert matrices that records which experts were read."""

    def __init__(self, mats, seen):
        super().__init__(mats)
        self.seen = seen

    def __getitem__(self, e):
        self.seen.add(int(e))
        return super().__getitem__(e)


def test_decode_step_reads_only_the_chosen_experts():
    cfg, fx = config("llama4_maverick"), load("llama4_maverick")
    p = params("llama4_maverick")
    seen = {}
    for i, layer in enumerate(p["layers"]):
        if moe.is_moe_layer(cfg, i):
            seen[i] = set()
            for w in ("experts_w1", "experts_w2", "experts_w3"):
                layer[w] = Spy(list(layer[w]), seen[i])
    ids = fx["ids"]
    cache = new_cache(cfg, len(ids))
    forward(p, cfg, ids[:-1], 0, cache)
    for s in seen.values():
        s.clear()
    with moe.recording() as rec:
        forward(p, cfg, ids[-1:], len(ids) - 1, cache)
    chosen = [set(r["experts"].ravel().tolist()) for r in rec]
    assert [seen[i] for i in sorted(seen)] == chosen
    assert all(len(c) == cfg.n_experts_per_tok for c in chosen)   # 1 of 8 experts read per layer


def test_prefill_work_grows_with_active_not_total_experts():
    """The experts see T*k token rows in all, not T*E: cost follows active parameters."""
    rows = []
    spy = DEFAULT.replace(swiglu=lambda x, *w: rows.append(x.shape[0]) or ffn.swiglu(x, *w))
    cfg, fx = config("mixtral_e8_k2"), load("mixtral_e8_k2")
    forward(params("mixtral_e8_k2"), cfg, fx["ids"], ops=spy)
    T, k = len(fx["ids"]), cfg.n_experts_per_tok
    assert sum(rows) == cfg.n_layers * T * k                        # 2 of 8 experts per token
    assert len(rows) <= cfg.n_layers * cfg.n_experts                 # one call per expert used


def test_top_k_order_and_ties():
    logits = np.array([[0.1, 3.0, 3.0, -1.0], [2.0, 0.0, 5.0, 1.0]], np.float32)
    np.testing.assert_array_equal(moe.top_k(logits, 2), [[1, 2], [2, 0]])


def test_routing_rules_by_hand():
    logits = np.array([[2.0, 1.0, 0.0, -1.0]], np.float32)
    e, g = moe.route(logits, 2, "mixtral")
    # softmax then renormalise over the kept two = softmax of the kept two logits
    np.testing.assert_allclose(g, [[1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(1.0))]], rtol=1e-6)
    e, g = moe.route(logits, 2, "llama4")
    np.testing.assert_allclose(g, 1 / (1 + np.exp(-np.array([[2.0, 1.0]]))), rtol=1e-6)
    np.testing.assert_array_equal(e, [[0, 1]])
    _, g = moe.route(logits, 1, "mixtral")
    assert g[0, 0] == 1.0                                    # top-1 Mixtral: the gate is exactly 1
    with pytest.raises(ValueError, match="routing"):
        moe.route(logits, 1, "switch")


def test_aux_loss_limits():
    """Uniform routing gives k (the minimum); collapse onto one expert gives about E."""
    E, T = 4, 400
    uniform = np.zeros((T, E), np.float32)
    uniform[np.arange(T), np.arange(T) % E] = 1e-3          # balanced choices, flat probabilities
    assert moe.aux_loss(uniform, E, 1) == pytest.approx(1.0, abs=1e-3)
    collapsed = np.zeros((T, E), np.float32)
    collapsed[:, 0] = 20.0
    assert moe.aux_loss(collapsed, E, 1) == pytest.approx(E, rel=1e-6)
    assert moe.load_entropy(moe.tokens_per_expert(np.zeros((T, 1), int), E)) == 0.0
    assert moe.load_entropy(np.full(E, 10)) == pytest.approx(np.log(E))
    assert moe.router_entropy(np.zeros((3, E))) == pytest.approx(np.log(E))
    stats = moe.load_balance(collapsed, np.zeros((T, 1), int), E, 1)
    assert stats["tokens_per_expert"].tolist() == [T, 0, 0, 0]


def test_capacity_drops_the_overflow_in_token_order():
    experts = np.array([[0], [0], [1], [0], [1], [0]])
    kept = moe.capacity_dispatch(experts, 3, capacity=2)
    np.testing.assert_array_equal(kept[:, 0], [True, True, True, False, True, False])


def test_param_shapes_interleave_dense_and_moe():
    cfg = config("llama4_maverick")
    shapes = param_shapes(cfg)
    assert shapes["layers.0.w1"] == (cfg.hidden_dim, cfg.dim)                 # dense, FFN 160
    assert "layers.0.router" not in shapes
    assert shapes["layers.1.experts_w1"] == (8, 48, cfg.dim)                 # MoE, experts 48 wide
    assert shapes["layers.1.shared_w2"] == (cfg.dim, 48)
    assert "layers.1.w1" not in shapes
    assert set(shapes) == set(make_weights("llama4_maverick"))               # the fixture's own list
    assert moe.moe_param_shapes(cfg, 0) == {}


# ----------------------------------------------------------------------------- configs
MIXTRAL_8X7B = {  # mistralai/Mixtral-8x7B-v0.1 config.json
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 32000, "num_local_experts": 8, "num_experts_per_tok": 2, "rope_theta": 1e6,
    "rms_norm_eps": 1e-5, "max_position_embeddings": 32768, "sliding_window": None, "tie_word_embeddings": False}
SCOUT_TEXT = {  # meta-llama/Llama-4-Scout-17B-16E config.json, text_config (the fields that matter)
    "model_type": "llama4_text", "hidden_size": 5120, "intermediate_size": 8192, "intermediate_size_mlp": 16384,
    "num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 202048, "num_local_experts": 16, "num_experts_per_tok": 1, "interleave_moe_layer_step": 1,
    "use_qk_norm": True, "no_rope_layers": [], "rope_theta": 500000.0, "attention_chunk_size": 8192,
    "rope_scaling": {"factor": 16.0, "high_freq_factor": 1.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "attn_temperature_tuning": True, "floor_scale": 8192, "attn_scale": 0.1,
    "max_position_embeddings": 10485760, "rms_norm_eps": 1e-5}
MAVERICK_TEXT = {**SCOUT_TEXT, "num_local_experts": 128, "interleave_moe_layer_step": 2, "use_qk_norm": False,
                 "rope_scaling": None, "max_position_embeddings": 1048576}


def test_config_mixtral_8x7b_and_its_size():
    cfg = ModelConfig.from_hf_config(MIXTRAL_8X7B)
    assert (cfg.n_experts, cfg.n_experts_per_tok, cfg.moe.kind, cfg.moe.expert_dim) == (8, 2, "mixtral", 14336)
    assert all(moe.is_moe_layer(cfg, i) for i in range(32)) and cfg.llama4 is None
    total, active = moe.param_counts(cfg)
    # Mistral's announcement: 46.7B total parameters, 12.9B used per token.
    assert round(total / 1e9, 1) == 46.7 and round(active / 1e9, 1) == 12.9


def test_config_llama4_scout_and_maverick_sizes():
    scout = ModelConfig.from_hf_config({"model_type": "llama4", "text_config": SCOUT_TEXT})
    assert scout.moe == MoE(kind="llama4", expert_dim=8192, layers=tuple(range(48)), shared_expert=True)
    assert scout.hidden_dim == 16384 and scout.llama4.qk_norm and scout.llama4.attention_chunk_size == 8192
    assert scout.llama4.rope_layers[:8] == (1, 1, 1, 0, 1, 1, 1, 0)          # every 4th layer NoPE
    assert scout.llama4.attn_temperature == AttnTemperature(floor_scale=8192.0, attn_scale=0.1)
    assert scout.rope_scaling.factor == 16.0
    maverick = ModelConfig.from_hf_config({"model_type": "llama4", "text_config": MAVERICK_TEXT})
    assert maverick.moe.layers == tuple(range(1, 48, 2)) and not maverick.llama4.qk_norm
    # Meta's model cards: Scout 17B active / 109B total, Maverick 17B active / 400B total (both
    # with the ~1B vision encoder, which a text model leaves out).
    s_total, s_active = moe.param_counts(scout)
    m_total, m_active = moe.param_counts(maverick)
    assert round(s_active / 1e9) == 17 and 107e9 < s_total < 109e9
    assert round(m_active / 1e9) == 17 and round(m_total / 1e9) == 401


def test_config_rejects_unknown_moe():
    with pytest.raises(ValueError, match="qwen2_moe"):
        ModelConfig.from_hf_config({**MIXTRAL_8X7B, "model_type": "qwen2_moe"})


# ----------------------------------------------------------------------------- reference extra
@pytest.mark.reference
@pytest.mark.parametrize("name", NAMES)
def test_fixtures_remake(name):
    """Remake each fixture with transformers and compare with the committed one."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    fresh, old = make_fixtures.make(name), load(name)
    np.testing.assert_array_equal(fresh["ids"], old["ids"])
    np.testing.assert_array_equal(fresh["experts"], old["experts"])
    # Same library versions give identical bits; across torch/BLAS builds (or thread schedules on
    # a loaded machine) allow summation noise, on the logits' scale (they reach 40 here).
    for key in ("logits", "decode_logits", "router_logits"):
        assert_close(fresh[key], old[key], REMAKE_ULPS, key)
    np.testing.assert_allclose(fresh["aux_loss"], old["aux_loss"], rtol=1e-5)


def _hf_forward(folder, dtype="float32"):
    from llama_np.weights import hf
    cfg, flat, _ = hf.load(folder, dtype=dtype, progress=False)
    return cfg, nest(flat, cfg)


@pytest.mark.reference
def test_hf_loader_reads_mixtral_save_pretrained(tmp_path):
    """transformers' own save_pretrained (per-expert block_sparse_moe names), float32 and bf16."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import MixtralForCausalLM
    from llama_np.weights import safetensors as st
    fx = load("mixtral_e8_k2")
    model = make_fixtures.hf_model("mixtral_e8_k2")
    model.save_pretrained(tmp_path / "f32")
    assert "model.layers.0.block_sparse_moe.experts.7.w3.weight" in st.load(tmp_path / "f32" / "model.safetensors")
    cfg, p = _hf_forward(tmp_path / "f32")
    assert cfg.moe.kind == "mixtral" and cfg.n_experts == 8
    assert np.abs(forward(p, cfg, fx["ids"]) - fx["logits"]).max() <= ATOL
    # bf16 on disk, kept 16-bit in memory: each expert a packed matrix. Reference: transformers
    # reading the same bf16 file, computing in float32 (bf16 -> float32 is exact on both sides).
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    cfg, p = _hf_forward(tmp_path / "bf16", "bf16")
    assert getattr(p["layers"][0]["experts_w1"][0], "is_packed", False)
    ref = MixtralForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32,
                                             attn_implementation="eager").eval()
    with torch.no_grad():
        want = ref(torch.from_numpy(fx["ids"])[None]).logits[0].numpy()
    assert np.abs(forward(p, cfg, fx["ids"]) - want).max() <= ATOL


@pytest.mark.reference
def test_hf_loader_reads_fused_mixtral_names(tmp_path):
    """transformers 5's in-memory names (mlp.gate, mlp.experts.gate_up_proj), written as they are."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from llama_np.weights import safetensors as st
    name = "mixtral_e4_k1_tied"
    make_fixtures.hf_config(name).to_json_file(tmp_path / "config.json")
    sd = make_fixtures.state_dict(name)
    assert "model.layers.0.mlp.experts.gate_up_proj" in sd
    st.save(tmp_path / "model.safetensors", sd, metadata={"format": "pt"})
    cfg, p = _hf_forward(tmp_path)
    fx = load(name)
    assert np.abs(forward(p, cfg, fx["ids"]) - fx["logits"]).max() <= ATOL


@pytest.mark.reference
@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_hf_loader_reads_llama4_save_pretrained(tmp_path, dtype):
    """Llama4ForCausalLM (fused experts, x @ W layout, dense layers between MoE layers)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    fx = load("llama4_maverick")
    make_fixtures.hf_model("llama4_maverick").save_pretrained(tmp_path)
    cfg, p = _hf_forward(tmp_path, dtype)
    assert cfg.moe.layers == (1, 3) and cfg.hidden_dim == 160 and cfg.llama4.rope_layers == (1, 1, 1, 0)
    assert np.abs(forward(p, cfg, fx["ids"]) - fx["logits"]).max() <= ATOL
    assert np.abs(decode(p, cfg, fx["ids"]) - fx["decode_logits"]).max() <= ATOL


@pytest.mark.reference
def test_hf_loader_reads_llama4_multimodal_checkpoint(tmp_path):
    """Llama4ForConditionalGeneration folders (as Meta publishes Scout/Maverick): the text model
    under language_model., the image encoder ignored."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import Llama4Config, Llama4ForConditionalGeneration
    name = "llama4_scout"
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                  vision_output_dim=32, projector_input_dim=32, projector_output_dim=32, image_size=28,
                  patch_size=14)
    model = Llama4ForConditionalGeneration(Llama4Config(text_config=make_fixtures.hf_config(name).to_dict(),
                                                        vision_config=vision))
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in make_fixtures.state_dict(name).items()}
    model.language_model.load_state_dict(sd, strict=True)
    model.save_pretrained(tmp_path)
    cfg, p = _hf_forward(tmp_path)
    assert cfg.llama4.attention_chunk_size == 8 and cfg.llama4.qk_norm
    fx = load(name)
    assert np.abs(forward(p, cfg, fx["ids"]) - fx["logits"]).max() <= ATOL


def test_hf_loader_names_a_missing_expert(tmp_path):
    """A checkpoint short of one expert fails at load time with one line (no torch needed)."""
    import json
    from llama_np.weights import hf
    from llama_np.weights import safetensors as st
    from llama_np.weights.errors import CheckpointError
    z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    q = "model.layers.0."
    sd = {"model.embed_tokens.weight": z(8, 16), "model.norm.weight": z(16), "lm_head.weight": z(8, 16),
          q + "input_layernorm.weight": z(16), q + "post_attention_layernorm.weight": z(16),
          q + "self_attn.q_proj.weight": z(16, 16), q + "self_attn.k_proj.weight": z(16, 16),
          q + "self_attn.v_proj.weight": z(16, 16), q + "self_attn.o_proj.weight": z(16, 16),
          q + "block_sparse_moe.gate.weight": z(3, 16)}
    for e in (0, 2):                                                    # expert 1 missing
        sd.update({q + f"block_sparse_moe.experts.{e}.w1.weight": z(8, 16),
                   q + f"block_sparse_moe.experts.{e}.w2.weight": z(16, 8),
                   q + f"block_sparse_moe.experts.{e}.w3.weight": z(8, 16)})
    st.save(tmp_path / "model.safetensors", sd, metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "mixtral", "hidden_size": 16, "intermediate_size": 8, "num_hidden_layers": 1,
         "num_attention_heads": 2, "vocab_size": 8, "num_local_experts": 3, "num_experts_per_tok": 1}))
    with pytest.raises(CheckpointError, match=r"experts \[1\] missing") as e:
        hf.load(tmp_path, progress=False)
    assert "\n" not in str(e.value)
