"""Hugging Face checkpoint folders (``LlamaForCausalLM``):

    config.json                          hidden_size, num_attention_heads, rope_theta, ...
    model.safetensors                    one file, or
    model-00001-of-00004.safetensors     shards + model.safetensors.index.json ("weight_map")
    tokenizer.json / tokenizer.model     (optional)

(Older folders have ``pytorch_model.bin`` shards instead: the same zip format as Meta's .pth.)

Names differ from Meta's (``model.layers.0.self_attn.q_proj.weight`` is ``layers.0.wq``), and
q/k rows are permuted: transformers' converter reorders each head's rows so that its
``rotate_half`` RoPE (pairs (i, i + d/2)) computes what Meta's interleaved RoPE (pairs
(2i, 2i+1)) computes. We undo that with ``rope.hf_to_meta``: for a 16-bit memory map as an
output reordering (free) rather than by rewriting the weights.

Mixture of experts (Mixtral, Llama 4): ``hf_moe.convert`` renames and restacks the expert
tensors that this module leaves under their Hugging Face names. Other extensions: per-layer
names go through ``layer_name`` (``LAYER_NAMES``, ``LAYER_RULES``) and must then also be in
``model.param_shapes(cfg)``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..rope import hf_to_meta
from . import safetensors, torch_zip
from .checkpoint import build_params, check_tensors, read_json
from .errors import CheckpointError, CheckpointNotFound
from .meta import load_tokenizer_if_present

TOP_NAMES = {"model.embed_tokens.weight": "tok_embeddings", "model.norm.weight": "norm",
             "lm_head.weight": "output"}
LAYER_NAMES = {"self_attn.q_proj.weight": "wq", "self_attn.k_proj.weight": "wk",
               "self_attn.v_proj.weight": "wv", "self_attn.o_proj.weight": "wo",
               "mlp.gate_proj.weight": "w1", "mlp.down_proj.weight": "w2", "mlp.up_proj.weight": "w3",
               "input_layernorm.weight": "attention_norm", "post_attention_layernorm.weight": "ffn_norm"}
LAYER_RULES: list = []            # extra functions suffix -> meta suffix | None (MoE experts, ...)
IGNORED = ("self_attn.rotary_emb.inv_freq",)   # old checkpoints saved RoPE frequencies: recomputed


def layer_name(suffix: str) -> str | None:
    """'self_attn.q_proj.weight' -> 'wq'; None if unknown."""
    if suffix in LAYER_NAMES:
        return LAYER_NAMES[suffix]
    for rule in LAYER_RULES:
        out = rule(suffix)
        if out is not None:
            return out
    return None


def meta_name(key: str) -> str | None:
    """A Hugging Face tensor name -> Meta's name ('' for tensors to ignore, None if unknown)."""
    if key in TOP_NAMES:
        return TOP_NAMES[key]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key)
    if not m:
        return None
    if m[2] in IGNORED:
        return ""
    short = layer_name(m[2])
    return None if short is None else f"layers.{m[1]}.{short}"


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a folder, from the index when there is one."""
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (folder / index).is_file():
            weight_map = read_json(folder / index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{folder / index}: no weight_map")
            files = [folder / f for f in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointNotFound(f"{folder}: shard {missing[0]} listed in {index} is missing"
                                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
            return files
        if (folder / single).is_file():
            return [folder / single]
    raise CheckpointNotFound(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def read_tensors(files: list[Path]) -> dict:
    """{meta name: raw array} from all weight files; unknown names kept as-is (reported later)."""
    out = {}
    for path in files:
        reader = safetensors.load if path.suffix == ".safetensors" else torch_zip.load
        for key, arr in reader(path).items():
            name = meta_name(key)
            if name == "":
                continue
            name = name or key
            if name in out:
                raise CheckpointError(f"{path}: tensor {key} appears in more than one shard")
            out[name] = arr
    return out


def qk_perms(cfg) -> dict:
    """Row permutations that take Hugging Face's wq/wk to Meta's layout, per layer."""
    pq = hf_to_meta(np.arange(cfg.n_heads * cfg.head_dim).reshape(-1, 1), cfg.n_heads)[:, 0]
    pk = hf_to_meta(np.arange(cfg.n_kv_heads * cfg.head_dim).reshape(-1, 1), cfg.n_kv_heads)[:, 0]
    perms = {}
    for i in range(cfg.n_layers):
        perms[f"layers.{i}.wq"], perms[f"layers.{i}.wk"] = pq, pk
    return perms


def load(folder, dtype: str = "auto", progress: bool = True, tokenizer: bool = True):
    """A Hugging Face Llama folder -> (ModelConfig, flat params {Meta name: weight}, tokenizer or None).
    ``dtype`` as in ``meta.load``: "float32", "bf16" (16-bit memory maps), "int8" or "auto"."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointNotFound(f"{folder}: not a folder")
    hf_cfg = read_json(folder / "config.json")
    try:
        cfg = ModelConfig.from_hf_config(hf_cfg)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: bad or missing field ({type(e).__name__}: {e})") from None
    files = weight_files(folder)
    tensors = read_tensors(files)
    perms, build = qk_perms(cfg), build_params
    if cfg.n_experts:   # Mixtral / Llama 4 expert tensors: see hf_moe.py
        from . import hf_moe
        (tensors, perms), build = hf_moe.convert(tensors, cfg), hf_moe.build_params
    # Tied head: transformers reuses the embedding when the config says so (ignoring a saved
    # lm_head), and some exports simply leave lm_head out.
    if cfg.tie_embeddings or "output" not in tensors:
        cfg = cfg.replace(tie_embeddings=True)
        tensors.pop("output", None)
    where = files[0].name if len(files) == 1 else f"{files[0].name}..{files[-1].name}"
    check_tensors(tensors, cfg, f"{folder}/{where}", "config.json")
    tok = None
    for name in ("tokenizer.json", "tokenizer.model") if tokenizer else ():
        if (folder / name).is_file():
            tok = load_tokenizer_if_present(folder / name)
            break
    params = build(tensors, cfg, dtype, perms=perms, show_progress=progress)
    return cfg, params, tok
