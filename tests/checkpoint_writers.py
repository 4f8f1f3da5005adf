"""Tiny random checkpoints in Meta and Hugging Face formats, written by the *reference* tools.

Meta folders are written with ``torch.save`` (as Meta's own code does), Hugging Face folders
with the ``safetensors`` package and q/k rows permuted by transformers' own permutation
(``LlamaTensorProcessor._reverse_permute_weights``, which turns Meta/GGUF's interleaved RoPE
layout into Hugging Face's). So the loaders under test read files that llama_np did not write.
Both formats come from the same random weights (``llama_np.model.random_params``).

``meta_key`` and ``hf_key`` (the two naming schemes, written out independently of llama_np's
loaders) also serve course/fixtures/make_09_real_weights.py and benchmarks/real_shapes.py.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from llama_np.config import ModelConfig
from llama_np.model import flatten, random_params

# Llama 2 style: multi-head attention, rope 10k, vocab_size -1 in params.json.
LLAMA2 = {"dim": 64, "n_layers": 2, "n_heads": 4, "multiple_of": 32, "norm_eps": 1e-5,
          "vocab_size": -1, "_vocab": 102}
# Llama 3.1 style: GQA (4 query heads, 2 KV heads), rope 500k with llama3 scaling, ffn multiplier.
LLAMA3 = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 128, "multiple_of": 32,
          "ffn_dim_multiplier": 1.3, "norm_eps": 1e-5, "rope_theta": 500000.0, "use_scaled_rope": True}
KINDS = {"llama2": LLAMA2, "llama3": LLAMA3}


def tiny(kind: str, seed: int = 0, std: float = 0.1):
    """-> (params.json dict, ModelConfig, flat {meta name: float32 array})."""
    spec = dict(KINDS[kind])
    vocab = spec.pop("_vocab", spec["vocab_size"])
    cfg = ModelConfig.from_meta_params(spec, vocab_size=vocab)
    return spec, cfg, flatten(random_params(cfg, seed=seed, std=std))


def meta_key(name: str) -> str:
    """'layers.0.wq' -> 'layers.0.attention.wq.weight' (Meta's model.py names)."""
    parts = name.split(".")
    if len(parts) == 3:
        group = "attention." if parts[2] in ("wq", "wk", "wv", "wo") else \
            "feed_forward." if parts[2] in ("w1", "w2", "w3") else ""
        return f"layers.{parts[1]}.{group}{parts[2]}.weight"
    return name + ".weight"


def _torch(a, dtype: str):
    import torch
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.bfloat16() if dtype == "bf16" else t.float()


SPLIT_AXIS = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1}


def write_meta(folder, spec: dict, flat: dict, dtype: str = "bf16", n_shards: int = 1, llama2_embed: bool = True):
    """params.json + consolidated.NN.pth via torch.save, split the way Meta's model-parallel
    layers split them (tok_embeddings by columns for Llama 2 style, by rows otherwise)."""
    import torch
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(spec))
    for r in range(n_shards):
        sd = {}
        for name, a in flat.items():
            short = name.rsplit(".", 1)[-1]
            axis = SPLIT_AXIS.get(short)
            if short == "tok_embeddings":
                axis = 1 if llama2_embed else 0
            if n_shards > 1 and axis is not None:
                a = np.split(a, n_shards, axis=axis)[r]
            sd[meta_key(name)] = _torch(a, dtype)
        if "rope_theta" not in spec:   # Llama 2 checkpoints carry their RoPE frequencies
            sd["rope.freqs"] = torch.ones(flat["layers.0.wq"].shape[1] // spec["n_heads"] // 2)
        torch.save(sd, folder / f"consolidated.{r:02d}.pth")
    return folder


def hf_config(spec: dict, cfg: ModelConfig, tie: bool = False) -> dict:
    """The config.json transformers' converter would write for this model (v4-style keys, as
    the real Llama checkpoints on the hub have them)."""
    out = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg.dim,
           "intermediate_size": cfg.hidden_dim, "num_hidden_layers": cfg.n_layers,
           "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
           "vocab_size": cfg.vocab_size, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
           "max_position_embeddings": 131072 if cfg.rope_scaling else cfg.max_seq_len, "tie_word_embeddings": tie,
           "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
           "bos_token_id": 1, "eos_token_id": 2}
    if cfg.rope_scaling:
        out["rope_scaling"] = {"rope_type": "llama3", **dataclasses.asdict(cfg.rope_scaling)}
    return out


HF_NAMES = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj", "wo": "self_attn.o_proj",
            "w1": "mlp.gate_proj", "w2": "mlp.down_proj", "w3": "mlp.up_proj",
            "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
HF_TOP = {"tok_embeddings": "model.embed_tokens.weight", "norm": "model.norm.weight", "output": "lm_head.weight"}


def hf_key(name: str) -> str:
    """'layers.0.wq' -> 'model.layers.0.self_attn.q_proj.weight' (transformers' Llama names).
    Written out here, not taken from llama_np's loader, so a wrong name there cannot hide."""
    if name in HF_TOP:
        return HF_TOP[name]
    _, i, short = name.split(".")
    return f"model.layers.{i}.{HF_NAMES[short]}.weight"


def to_hf_state(flat: dict, cfg: ModelConfig, tie: bool = False) -> dict:
    """Meta names/layout -> Hugging Face names/layout, q/k permuted by transformers' own code."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor
    permute = LlamaTensorProcessor()._reverse_permute_weights
    out = {}
    for name, a in flat.items():
        if name == "output" and tie:
            continue
        short = name.rsplit(".", 1)[-1]
        if short == "wq":
            a = permute(a, cfg.n_heads, cfg.n_heads)
        elif short == "wk":
            a = permute(a, cfg.n_heads, cfg.n_kv_heads)
        out[hf_key(name)] = a
    return out


def write_hf(folder, spec: dict, cfg: ModelConfig, flat: dict, dtype: str = "bf16", n_shards: int = 1,
             tie: bool = False):
    """config.json + model.safetensors (or n shards + index), written by the safetensors package."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config(spec, cfg, tie)))
    state = {k: _torch(v, dtype).contiguous() for k, v in to_hf_state(flat, cfg, tie).items()}
    if n_shards == 1:
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        return folder
    names = list(state)
    weight_map = {}
    for r, chunk in enumerate(np.array_split(np.arange(len(names)), n_shards)):
        fname = f"model-{r + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file({names[j]: state[names[j]] for j in chunk}, folder / fname, metadata={"format": "pt"})
        weight_map.update({names[j]: fname for j in chunk})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def transformers_logits(folder, ids) -> np.ndarray:
    """Reference logits: transformers' LlamaForCausalLM, float32, eager attention, offline."""
    import os
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].float().numpy()
