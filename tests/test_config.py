"""ModelConfig from the three formats, and the FFN size rule against published model sizes."""
import pytest

from llama_np.config import ModelConfig, ffn_hidden_size
from llama_np.kv_cache import cache_bytes


@pytest.mark.parametrize("dim,multiple_of,mult,expected", [
    (4096, 256, None, 11008),    # Llama 2 7B (published config.json intermediate_size)
    (5120, 256, None, 13824),    # Llama 2 13B
    (8192, 4096, 1.3, 28672),    # Llama 2 70B / Llama 3 70B
    (4096, 1024, 1.3, 14336),    # Llama 3 8B
    (2048, 256, 1.5, 8192),      # Llama 3.2 1B
    (3072, 256, 1.0, 8192),      # Llama 3.2 3B
])
def test_ffn_hidden_size(dim, multiple_of, mult, expected):
    assert ffn_hidden_size(dim, multiple_of, mult) == expected


def test_from_meta_params_llama3_8b():
    # Meta-Llama-3.1-8B original/params.json
    p = {"dim": 4096, "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "n_heads": 32, "n_kv_heads": 8,
         "n_layers": 32, "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": True, "vocab_size": 128256}
    c = ModelConfig.from_meta_params(p)
    assert (c.hidden_dim, c.n_rep, c.head_dim, c.vocab_size) == (14336, 4, 128, 128256)
    assert c.rope_scaling.factor == 8.0 and c.rope_theta == 500000.0


def test_from_meta_params_llama32_rope_factor():
    """Meta's Llama-3.2-1B params.json names no factor; the release's is 32 (HF config.json,
    transformers' converter for llama_version 3.2); an explicit rope_scaling_factor wins."""
    p = {"dim": 2048, "ffn_dim_multiplier": 1.5, "multiple_of": 256, "n_heads": 32, "n_kv_heads": 8,
         "n_layers": 16, "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": True, "vocab_size": 128256}
    assert ModelConfig.from_meta_params(p).rope_scaling.factor == 32.0
    assert ModelConfig.from_meta_params({**p, "dim": 3072, "n_heads": 24, "n_layers": 28}).rope_scaling.factor == 32.0
    assert ModelConfig.from_meta_params({**p, "rope_scaling_factor": 16.0}).rope_scaling.factor == 16.0


def test_from_meta_params_llama2_needs_vocab():
    p = {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05, "vocab_size": -1}
    with pytest.raises(ValueError, match="vocab_size -1"):
        ModelConfig.from_meta_params(p)
    c = ModelConfig.from_meta_params(p, vocab_size=32000)
    assert (c.hidden_dim, c.n_kv_heads, c.rope_theta) == (11008, 32, 10000.0)


def test_from_hf_config_llama32_1b():
    # meta-llama/Llama-3.2-1B config.json (transformers v4 spelling: rope_scaling)
    cfg = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
           "max_position_embeddings": 131072, "tie_word_embeddings": True, "head_dim": 64,
           "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                            "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
    c = ModelConfig.from_hf_config(cfg)
    assert c.tie_embeddings and c.rope_scaling.factor == 32.0 and c.head_dim == 64
    # transformers v5 spelling: rope_parameters carries rope_theta too
    cfg5 = dict(cfg)
    cfg5.pop("rope_theta")
    cfg5["rope_parameters"] = {**cfg5.pop("rope_scaling"), "rope_theta": 500000.0}
    assert ModelConfig.from_hf_config(cfg5) == c


def test_from_gguf_metadata_smollm2():
    md = {"general.architecture": "llama", "llama.block_count": 30, "llama.context_length": 8192,
          "llama.embedding_length": 576, "llama.feed_forward_length": 1536, "llama.attention.head_count": 9,
          "llama.attention.head_count_kv": 3, "llama.rope.freq_base": 100000.0,
          "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": 49152}
    c = ModelConfig.from_gguf_metadata(md, tied=True)
    assert (c.head_dim, c.n_rep, c.rope_theta, c.tie_embeddings) == (64, 3, 100000.0, True)


def test_bad_heads_rejected():
    with pytest.raises(ValueError, match="multiple"):
        ModelConfig(dim=64, n_heads=6, n_kv_heads=4)


def test_kv_cache_sizes():
    """7B (MHA) needs 4 GiB at 4096 tokens, 8B (GQA, 8 KV heads) 2 GiB at 8192, in float32."""
    l2 = ModelConfig(dim=4096, n_layers=32, n_heads=32)
    l3 = ModelConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8)
    assert cache_bytes(l2, 4096) == 4 * 2**30
    assert cache_bytes(l3, 8192) == 2 * 2**30
