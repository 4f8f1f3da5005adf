"""Hugging Face names and layouts of mixture-of-experts checkpoints -> llama_np's (see moe.py).

``hf.load`` reads every tensor, renames the ones it knows (attention, norms) and keeps the rest
under their Hugging Face names; for a config with experts it then calls ``convert`` here.

Mixtral (``MixtralForCausalLM``), as published and as transformers 5 still writes it with
``save_pretrained`` (it fuses the experts in memory but un-fuses them on save):

    model.layers.{i}.block_sparse_moe.gate.weight           (E, D)   -> router
    model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight (F, D)   -> experts_w1[e]   gate
    model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight (D, F)   -> experts_w2[e]   down
    model.layers.{i}.block_sparse_moe.experts.{e}.w3.weight (F, D)   -> experts_w3[e]   up

and transformers 5's in-memory (fused) names, should a checkpoint carry them:

    model.layers.{i}.mlp.gate.weight                        (E, D)
    model.layers.{i}.mlp.experts.gate_up_proj               (E, 2F, D) = [w1; w3] per expert
    model.layers.{i}.mlp.experts.down_proj                  (E, D, F)

q/k rows are in Hugging Face's half-split RoPE layout, as for Llama (``hf.qk_perms``).

Llama 4 (``Llama4ForCausalLM``; the multimodal ``Llama4ForConditionalGeneration`` checkpoints put
the same names under ``language_model.`` beside ``vision_model.*`` and ``multi_modal_projector.*``,
which a text model does not need):

    model.layers.{i}.feed_forward.router.weight             (E, D)   -> router
    model.layers.{i}.feed_forward.experts.gate_up_proj      (E, D, 2F), used as x @ W: the first
                                                            F columns are the gates (w1), the rest up (w3)
    model.layers.{i}.feed_forward.experts.down_proj         (E, F, D), x @ W   -> experts_w2 transposed
    model.layers.{i}.feed_forward.shared_expert.{gate,up,down}_proj.weight -> shared_w1/w3/w2
    model.layers.{i}.feed_forward.{gate,up,down}_proj.weight (dense layers) -> w1/w3/w2

Llama 4 rotates *interleaved* pairs (``torch.view_as_complex``), Meta's own layout, so its q/k
rows are used as stored: no permutation.

Expert tensors become (E, out, in) arrays in the stored dtype (raw bf16 stays 16-bit), which
copies them out of the memory map (stacking Mixtral's per-expert files, transposing Llama 4's
x @ W layout). ``build_params`` then packs each expert separately in "bf16"/"int8" modes.
"""
from __future__ import annotations

import re

import numpy as np

from .checkpoint import build_params as build_dense, choose_mode
from .errors import CheckpointError
from .packed import pack

DROP_PREFIXES = ("vision_model.", "multi_modal_projector.", "model.vision_model.", "model.multi_modal_projector.")
LLAMA4_FFN = {"feed_forward.gate_proj.weight": "w1", "feed_forward.down_proj.weight": "w2",
              "feed_forward.up_proj.weight": "w3", "feed_forward.router.weight": "router",
              "feed_forward.shared_expert.gate_proj.weight": "shared_w1",
              "feed_forward.shared_expert.down_proj.weight": "shared_w2",
              "feed_forward.shared_expert.up_proj.weight": "shared_w3"}
MIXTRAL_ROUTER = ("block_sparse_moe.gate.weight", "mlp.gate.weight")
LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
MIXTRAL_EXPERT = re.compile(r"(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(w[123])\.weight")


def convert(tensors: dict, cfg) -> tuple[dict, dict]:
    """``hf.read_tensors`` output for an MoE config -> (tensors with llama_np names, q/k row
    permutations for ``build_params``). Raises CheckpointError for an expert set with holes."""
    from .hf import meta_name, qk_perms   # (hf imports this module lazily; avoid a cycle)

    kind = cfg.moe.kind
    out, per_expert = {}, {}              # per_expert[(layer, "w1")][e] = (F, D) raw
    for key, arr in tensors.items():
        if key in ("tok_embeddings", "norm", "output") or key.startswith("layers."):
            out[key] = arr                # already renamed by hf.read_tensors
            continue
        if key.startswith(DROP_PREFIXES):
            continue                      # Llama 4's image encoder: not part of the text model
        key = key.removeprefix("language_model.")
        name = meta_name(key)
        if name:
            out[name] = arr
            continue
        m = LAYER.fullmatch(key)
        if not m:
            out[key] = arr                # unknown: check_tensors names it
            continue
        i, suffix = int(m[1]), m[2]
        p = f"layers.{i}."
        if kind == "llama4":
            if suffix in LLAMA4_FFN:
                out[p + LLAMA4_FFN[suffix]] = arr
            elif suffix == "feed_forward.experts.gate_up_proj":        # (E, D, 2F), x @ W
                F = arr.shape[-1] // 2
                out[p + "experts_w1"] = np.ascontiguousarray(np.swapaxes(arr[:, :, :F], 1, 2))
                out[p + "experts_w3"] = np.ascontiguousarray(np.swapaxes(arr[:, :, F:], 1, 2))
            elif suffix == "feed_forward.experts.down_proj":           # (E, F, D), x @ W
                out[p + "experts_w2"] = np.ascontiguousarray(np.swapaxes(arr, 1, 2))
            else:
                out[key] = arr
            continue
        e = MIXTRAL_EXPERT.fullmatch(suffix)
        if suffix in MIXTRAL_ROUTER:
            out[p + "router"] = arr
        elif e:
            per_expert.setdefault((i, e[2]), {})[int(e[1])] = arr
        elif suffix == "mlp.experts.gate_up_proj":                     # (E, 2F, D), F.linear
            F = arr.shape[1] // 2
            out[p + "experts_w1"], out[p + "experts_w3"] = arr[:, :F], arr[:, F:]
        elif suffix == "mlp.experts.down_proj":                        # (E, D, F)
            out[p + "experts_w2"] = arr
        else:
            out[key] = arr
    for (i, w), mats in per_expert.items():
        missing = sorted(set(range(cfg.n_experts)) - set(mats))
        if missing or len(mats) != cfg.n_experts:
            raise CheckpointError(f"layer {i}: expert {w} tensors for experts {missing or sorted(mats)} "
                                  f"missing or extra (config has {cfg.n_experts} experts)")
        out[f"layers.{i}.experts_{w}"] = np.stack([mats[e] for e in range(cfg.n_experts)])
    perms = {} if kind == "llama4" else qk_perms(cfg)
    return out, perms


def build_params(tensors: dict, cfg, mode: str = "auto", perms: dict | None = None,
                 show_progress: bool = True) -> dict:
    """``checkpoint.build_params`` for MoE models -> flat params. A stacked expert tensor
    (E, out, in) becomes one float32 array in "float32" mode, else a list of E packed matrices
    (``packed`` works on matrices; ``moe_forward`` only ever indexes ``w[e]``)."""
    mode = choose_mode(tensors, mode)
    experts = {}
    if mode != "float32":
        experts = {n: tensors.pop(n) for n in list(tensors) if np.ndim(tensors[n]) == 3}
    flat = build_dense(tensors, cfg, mode, perms=perms, show_progress=show_progress)
    for name, arr in experts.items():
        flat[name] = [pack(arr[e], mode) for e in range(arr.shape[0])]
    return flat
