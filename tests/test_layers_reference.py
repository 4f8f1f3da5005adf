"""Each layer on its own against transformers' Llama code (PyTorch), on random inputs."""
from __future__ import annotations

import numpy as np
import pytest

from llama_np.attention import attention, causal_mask, repeat_kv, softmax
from llama_np.config import ModelConfig
from llama_np.ffn import silu, swiglu
from llama_np.norm import rms_norm
from llama_np.rope import apply_rope, hf_to_meta, meta_to_hf, rope_angles, rope_frequencies

torch = pytest.importorskip("torch")
llama = pytest.importorskip("transformers.models.llama.modeling_llama")
from transformers import LlamaConfig  # noqa: E402
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor  # noqa: E402

rng = np.random.default_rng(0)
# float32 on both sides; differences are summation order and libm rounding, ~1e-7 relative.
ATOL = 1e-5


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def test_rms_norm_matches_llama_rmsnorm():
    x = rng.standard_normal((5, 64), dtype=np.float32) * 3
    w = rng.standard_normal(64, dtype=np.float32)
    ref = llama.LlamaRMSNorm(64, eps=1e-5)
    ref.weight.data = t(w)
    np.testing.assert_allclose(rms_norm(x, w, 1e-5), ref(t(x)).detach().numpy(), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("scaling", [None, {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 8192},
                                     {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192}])
def test_rope_frequencies_match_transformers(scaling):
    """Llama 3 (theta 500,000, head_dim 128), plain and with 3.1 (x8) and 3.2 (x32) scaling."""
    rope = {"rope_type": "default", "rope_theta": 500000.0}
    if scaling:
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, **scaling}
    cfg = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_parameters=rope, max_position_embeddings=131072)
    ref = llama.LlamaRotaryEmbedding(cfg).inv_freq.numpy()
    # transformers computes theta_i in float32; we compute in float64: ~1 ulp of float32 apart.
    np.testing.assert_allclose(rope_frequencies(128, 500000.0, scaling), ref, rtol=1e-6)


def test_rope_matches_transformers_after_permutation():
    """Meta's interleaved rotation of W_meta x == transformers' rotate_half rotation of W_hf x."""
    H, d, D, T = 4, 16, 32, 40
    w_meta = rng.standard_normal((H * d, D), dtype=np.float32)
    x = rng.standard_normal((T, D), dtype=np.float32)
    inv = rope_frequencies(d, 10000.0)
    cos, sin = rope_angles(inv, np.arange(T))
    ours = apply_rope((x @ w_meta.T).reshape(T, H, d).swapaxes(0, 1), cos, sin)       # (H, T, d)

    w_hf = LlamaTensorProcessor()._reverse_permute_weights(w_meta, H, H)
    q = t(x @ w_hf.T).reshape(1, T, H, d).transpose(1, 2)                                # (1, H, T, d)
    cfg = LlamaConfig(hidden_size=H * d, num_attention_heads=H, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    c, s = llama.LlamaRotaryEmbedding(cfg)(q, torch.arange(T)[None])
    ref, _ = llama.apply_rotary_pos_emb(q, q, c, s)
    # Same rotation, different order within each head: Meta's pair i is (2i, 2i+1), HF's is
    # (i, i + d/2). Reorder ours as [evens, odds] to compare element by element.
    ours_hf = np.concatenate([ours[..., 0::2], ours[..., 1::2]], axis=-1)
    np.testing.assert_allclose(ours_hf, ref[0].numpy(), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("H,KV", [(8, 8), (8, 2), (6, 3)])
def test_hf_to_meta_inverts_transformers_permutation(H, KV):
    """transformers' GGUF loader maps Meta-layout q/k to HF layout; hf_to_meta must undo it."""
    d, D = 8, 24
    wq = rng.standard_normal((H * d, D), dtype=np.float32)
    wk = rng.standard_normal((KV * d, D), dtype=np.float32)
    perm = LlamaTensorProcessor()._reverse_permute_weights
    np.testing.assert_array_equal(hf_to_meta(perm(wq, H, H), H), wq)
    np.testing.assert_array_equal(hf_to_meta(perm(wk, H, KV), KV), wk)
    np.testing.assert_array_equal(meta_to_hf(wk, KV), perm(wk, H, KV))


@pytest.mark.parametrize("H,KV,T,start", [(4, 4, 7, 0), (8, 2, 7, 0), (8, 2, 1, 9), (6, 3, 4, 5)])
def test_attention_matches_eager_attention(H, KV, T, start):
    d, S = 16, start + T
    q = rng.standard_normal((H, T, d), dtype=np.float32)
    k = rng.standard_normal((KV, S, d), dtype=np.float32)
    v = rng.standard_normal((KV, S, d), dtype=np.float32)
    mask = t(causal_mask(T, start))[None, None]

    class M(torch.nn.Module):
        num_key_value_groups = H // KV
        training = False

    ref, _ = llama.eager_attention_forward(M(), t(q)[None], t(k)[None], t(v)[None], mask,
                                           scaling=d ** -0.5, dropout=0.0)
    np.testing.assert_allclose(attention(q, k, v, start), ref[0].transpose(0, 1).numpy(), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("T,start,block", [(150, 0, 64), (130, 7, 32), (64, 3, 64)])
def test_blocked_attention_matches_eager_attention(T, start, block):
    """The prefill path: queries in blocks, each seeing only the keys it may see."""
    from llama_np.model import blocked_attention
    H, KV, d, S = 6, 2, 16, start + T
    q = rng.standard_normal((H, T, d), dtype=np.float32)
    k = rng.standard_normal((KV, S, d), dtype=np.float32)
    v = rng.standard_normal((KV, S, d), dtype=np.float32)

    class M(torch.nn.Module):
        num_key_value_groups = H // KV
        training = False

    ref, _ = llama.eager_attention_forward(M(), t(q)[None], t(k)[None], t(v)[None],
                                           t(causal_mask(T, start))[None, None], scaling=d ** -0.5, dropout=0.0)
    out = blocked_attention(q, k, v, start, block)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref[0].transpose(0, 1).numpy(), atol=ATOL, rtol=1e-5)


def test_repeat_kv_matches_transformers():
    k = rng.standard_normal((3, 5, 4), dtype=np.float32)
    np.testing.assert_array_equal(repeat_kv(k, 4), llama.repeat_kv(t(k)[None], 4)[0].numpy())


def test_softmax_is_stable_and_matches_torch():
    x = rng.standard_normal((4, 50), dtype=np.float32) * 30 + 1000   # exp(1000) would overflow
    p = softmax(x)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, torch.softmax(t(x), -1).numpy(), atol=1e-6)


def test_swiglu_matches_llama_mlp():
    D, F = 32, 88
    cfg = LlamaConfig(hidden_size=D, intermediate_size=F, num_attention_heads=4)
    mlp = llama.LlamaMLP(cfg)
    x = rng.standard_normal((6, D), dtype=np.float32)
    w1, w2, w3 = (m.weight.detach().numpy() for m in (mlp.gate_proj, mlp.down_proj, mlp.up_proj))
    np.testing.assert_allclose(swiglu(x, w1, w2, w3), mlp(t(x)).detach().numpy(), atol=ATOL, rtol=1e-5)
    np.testing.assert_allclose(silu(x), torch.nn.functional.silu(t(x)).numpy(), atol=1e-6)
