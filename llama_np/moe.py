"""Mixture of experts (MoE): many FFNs per layer, a router picks a few of them for each token.

A dense layer multiplies every token by all of its FFN weights. An MoE layer holds E expert FFNs
(each a SwiGLU like ``ffn.swiglu``) and a *router*, one linear layer that scores the experts for
each token; only the top k experts run. The model stores E FFNs' worth of parameters but each
token pays for k of them: Mixtral 8x7B has 47 B parameters and 13 B active per token, Llama 4
Scout 109 B and 17 B.

    logits = x @ router.T                          (T, E)   one score per expert
    experts, gates = top-k of logits, turned into weights    (T, k) each
    y[t] = sum_j  gate[t, j] * Expert_{experts[t, j]}(x[t])              Mixtral
    y[t] = Shared(x[t]) + sum_j Expert_{experts[t, j]}(gate[t, j] * x[t]) Llama 4

The two routing rules (docs/design.md §7):
  * Mixtral: softmax over *all* E logits, keep the top k, renormalise them to sum to 1, and
    weight the expert *outputs*.
  * Llama 4: take the top k *logits*, squash each with a sigmoid (so gates need not sum to 1),
    scale the expert *inputs*, and always add a shared expert that every token goes through.

Dispatch groups tokens by expert: sort the (T, k) assignments by expert id, then run each
expert once on the rows that chose it. There is no loop over tokens, the loop over experts
skips those nobody chose, so a prefill costs about k/E of the dense equivalent and a decode
step (one token) reads only k experts' weights.

Per-layer weights (Meta-style names; matrices (out, in) like the rest of llama_np):
    router              (E, dim)
    experts_w1 / w3     (E, F, dim)    gate / up projection of each expert
    experts_w2          (E, dim, F)    down projection
    shared_w1 / w3      (F, dim)       Llama 4's shared expert (when ``cfg.moe.shared_expert``)
    shared_w2           (dim, F)
``experts_w*`` may also be a list of E matrices (packed 16-bit weights from a loader): the code
only ever indexes ``w[e]``.
"""
from __future__ import annotations

import contextlib

import numpy as np

from .attention import softmax
from .backend import array_module, to_numpy
from .ffn import swiglu
from .linear import linear


# ----------------------------------------------------------------------------- config
def moe_kind(cfg) -> str:
    """'mixtral' or 'llama4': which routing rule the layers use."""
    return cfg.moe.kind


def is_moe_layer(cfg, i: int) -> bool:
    """Is layer i an MoE layer? Mixtral: all of them. Llama 4 interleaves: Scout has MoE in every
    layer, Maverick in every second one (``interleave_moe_layer_step``), the rest dense."""
    if not cfg.n_experts:
        return False
    return cfg.moe.layers is None or i in cfg.moe.layers


def moe_param_shapes(cfg, i: int | None = None) -> dict:
    """Shapes of the MoE tensors of layer ``i`` by per-layer name ({} for a dense layer).
    With ``i`` None, those of any MoE layer (they are all alike)."""
    if i is not None and not is_moe_layer(cfg, i):
        return {}
    E, D, F = cfg.n_experts, cfg.dim, cfg.moe.expert_dim
    shapes = {"router": (E, D), "experts_w1": (E, F, D), "experts_w2": (E, D, F), "experts_w3": (E, F, D)}
    if cfg.moe.shared_expert:
        shapes.update({"shared_w1": (F, D), "shared_w2": (D, F), "shared_w3": (F, D)})
    return shapes


def param_counts(cfg) -> tuple[int, int]:
    """(total, active per token) parameter counts of a model: active counts k experts per MoE layer."""
    from .model import param_shapes
    total = sum(int(np.prod(s)) for s in param_shapes(cfg).values())
    idle = 0
    for i in range(cfg.n_layers):
        for name, shape in moe_param_shapes(cfg, i).items():
            if name.startswith("experts_"):
                idle += int(np.prod(shape)) // cfg.n_experts * (cfg.n_experts - cfg.n_experts_per_tok)
    # The input embedding is only indexed (one row per token), but it is counted as a parameter
    # in published sizes, as here.
    return total, total - idle


# ----------------------------------------------------------------------------- routing
def top_k(logits, k: int):
    """Indices of the k largest scores in each row, largest first. logits: (T, E) -> (T, k) int64.
    A stable sort on -logits breaks exact ties towards the lower expert id."""
    xp = array_module(logits)
    return xp.argsort(-logits, axis=-1, kind="stable")[:, :k]


def sigmoid(x):
    xp = array_module(x)
    return 1.0 / (1.0 + xp.exp(-x))


def route(logits, k: int, kind: str = "mixtral"):
    """Router logits (T, E) -> (experts (T, k) int64, gates (T, k) float32).

    mixtral: softmax over all E experts, top k, renormalised so each row's gates sum to 1
             (with k=1 the single gate is 1: the output is the expert's, unscaled).
    llama4:  top k of the raw logits, then an independent sigmoid per chosen expert.
    Either way the *choice* is the top k logits (softmax is monotonic); only the gates differ.
    """
    xp = array_module(logits)
    logits = logits.astype(xp.float32, copy=False)
    experts = top_k(logits, k)
    chosen = xp.take_along_axis(logits, experts, axis=-1)
    if kind == "mixtral":
        probs = xp.take_along_axis(softmax(logits, axis=-1), experts, axis=-1)
        gates = probs / probs.sum(axis=-1, keepdims=True)
    elif kind == "llama4":
        gates = sigmoid(chosen)
    else:
        raise ValueError(f"unknown MoE routing {kind!r} (mixtral, llama4)")
    return experts, gates.astype(xp.float32, copy=False)


def group_by_expert(experts, n_experts: int):
    """Sort the (T, k) assignments by expert so each expert's tokens are contiguous.

    Returns (order, bounds): ``order`` (T*k,) are positions in ``experts.ravel()`` sorted by
    expert id, and expert e's assignments are order[bounds[e]:bounds[e+1]]; position p is token
    p // k, slot p % k. One argsort replaces E boolean scans of the whole (T, k) array.
    """
    xp = array_module(experts)
    flat = experts.reshape(-1)
    order = xp.argsort(flat, kind="stable")           # stable: tokens stay in order within an expert
    counts = xp.bincount(flat, minlength=n_experts)
    bounds = np.concatenate([[0], np.cumsum(to_numpy(counts))])
    return order, bounds


# ----------------------------------------------------------------------------- the layer
_records: list | None = None


@contextlib.contextmanager
def recording():
    """Collect what every MoE layer routed while inside the block (like a PyTorch forward hook):

        with moe.recording() as rec:
            forward(params, cfg, tokens)
        rec[0]["experts"]   # (T, k) chosen experts of the first MoE layer called

    Each entry: {"logits" (T, E), "experts" (T, k), "gates" (T, k)}, in call order."""
    global _records
    saved, _records = _records, []
    try:
        yield _records
    finally:
        _records = saved


def _default_ops(ops):
    # ops.py imports this module (its defaults are ``route`` and ``moe_forward``), so the default
    # instance can only be looked up once both are loaded, i.e. at call time.
    if ops is None:
        from .ops import DEFAULT as ops
    return ops


def moe_forward(x, layer: dict, cfg, ops=None):
    """x: (T, dim) normalised hidden states -> (T, dim), the MoE replacement for the FFN.
    ``ops.router`` chooses the experts and ``ops.swiglu`` runs them (``llama_np.ops``; the
    library's own by default)."""
    ops = _default_ops(ops)
    xp = array_module(x)
    kind = moe_kind(cfg)
    T, k = x.shape[0], cfg.n_experts_per_tok
    logits = linear(x, layer["router"])                               # (T, E)
    experts, gates = ops.router(logits, k, kind)                      # (T, k) each
    if _records is not None:
        _records.append({"logits": logits, "experts": experts, "gates": gates})
    out = xp.zeros_like(x)
    flat_gates = gates.reshape(-1)
    order, bounds = group_by_expert(experts, cfg.n_experts)
    for e in range(cfg.n_experts):
        if bounds[e] == bounds[e + 1]:
            continue                                  # nobody chose e: its weights are never read
        pos = order[bounds[e]:bounds[e + 1]]          # assignments to e, in token order
        tok = pos // k                                # (n_e,) distinct tokens (top-k ids differ)
        g = flat_gates[pos][:, None]                  # (n_e, 1)
        w1, w2, w3 = layer["experts_w1"][e], layer["experts_w2"][e], layer["experts_w3"][e]
        if kind == "llama4":
            y = ops.swiglu(x[tok] * g, w1, w2, w3)    # gate scales the expert's input
        else:
            y = ops.swiglu(x[tok], w1, w2, w3) * g    # gate scales the expert's output
        out[tok] += y                                 # tok has no repeats within one expert
    if cfg.moe.shared_expert:                         # Llama 4: every token also gets the shared FFN
        out += ops.swiglu(x, layer["shared_w1"], layer["shared_w2"], layer["shared_w3"])
    return out


def moe_forward_dense(x, layer: dict, cfg):
    """The same layer computed the slow, obvious way: every expert on every token, gates zero
    where not chosen. E/k times the work; for checking ``moe_forward`` and for the lesson."""
    xp = array_module(x)
    kind = moe_kind(cfg)
    experts, gates = route(linear(x, layer["router"]), cfg.n_experts_per_tok, kind)
    full = xp.zeros((x.shape[0], cfg.n_experts), dtype=xp.float32)   # (T, E) gate, 0 if unchosen
    xp.put_along_axis(full, experts, gates, axis=-1)
    out = xp.zeros_like(x)
    for e in range(cfg.n_experts):
        w1, w2, w3 = layer["experts_w1"][e], layer["experts_w2"][e], layer["experts_w3"][e]
        g = full[:, e:e + 1]
        # SwiGLU(0) = 0 (no biases), so a zero input gate is a zero output, as in transformers.
        out += swiglu(x * g, w1, w2, w3) if kind == "llama4" else swiglu(x, w1, w2, w3) * g
    if cfg.moe.shared_expert:
        out += swiglu(x, layer["shared_w1"], layer["shared_w2"], layer["shared_w3"])
    return out


# ----------------------------------------------------------------------------- load balance
def tokens_per_expert(experts, n_experts: int) -> np.ndarray:
    """How many (token, slot) assignments each expert got: (E,) int64, summing to T*k."""
    return np.bincount(to_numpy(experts).reshape(-1), minlength=n_experts)


def aux_loss(router_logits, n_experts: int, k: int) -> float:
    """The Switch Transformer / Mixtral load-balancing loss (Fedus et al. 2021, eqs. 4-6), as
    transformers' ``load_balancing_loss_func`` computes it (no padding mask):

        loss = E * sum_e f_e * P_e
        f_e = (assignments to e) / (number of tokens)       (so sum_e f_e = k)
        P_e = mean over tokens of softmax(logits)[e]

    f is what the router did (not differentiable), P what it wanted (differentiable): pushing
    P down where f is high evens the load. Perfectly uniform routing gives k (the minimum);
    a router that sends everything to the same expert(s) with certainty gives about E. ``router_logits``: (T, E), or a list of them (one per layer; pooled).
    """
    if not isinstance(router_logits, (list, tuple)):
        router_logits = [router_logits]
    logits = np.concatenate([np.asarray(to_numpy(l), dtype=np.float32) for l in router_logits])
    probs = softmax(logits, axis=-1)                                    # (N, E)
    f = tokens_per_expert(top_k(probs, k), n_experts) / logits.shape[0]
    P = probs.mean(axis=0)
    return float(n_experts * np.sum(f * P))


def router_entropy(router_logits) -> float:
    """Mean entropy (nats) of each token's softmax over experts: log E when the router cannot
    decide, 0 when it is certain. (T, E) -> float."""
    logits = np.asarray(to_numpy(router_logits), dtype=np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(-(np.exp(logp) * logp).sum(-1).mean())


def load_entropy(counts) -> float:
    """Entropy (nats) of the share of assignments each expert got: log E when perfectly balanced,
    0 when one expert takes everything. Collapse shows up here."""
    p = np.asarray(counts, dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


def load_balance(router_logits, experts, n_experts: int, k: int) -> dict:
    """All the statistics above for one layer's routing: tokens per expert, aux loss, entropies."""
    counts = tokens_per_expert(experts, n_experts)
    return {"tokens_per_expert": counts, "aux_loss": aux_loss(router_logits, n_experts, k),
            "router_entropy": router_entropy(router_logits), "load_entropy": load_entropy(counts)}


def capacity_dispatch(experts, n_experts: int, capacity: int):
    """Switch-style capacity (training-time systems trick): each expert takes at most ``capacity``
    assignments per batch, in token order; the rest are dropped (those tokens skip the expert and
    ride the residual connection). Inference in Mixtral/Llama 4 uses no capacity limit.
    Returns kept: (T, k) bool."""
    experts = to_numpy(experts)
    order, bounds = group_by_expert(experts, n_experts)
    # Place of each assignment in its expert's queue: its index in the sorted list minus where
    # that expert's run starts.
    rank = np.empty(order.shape[0], dtype=np.int64)
    rank[order] = np.arange(order.shape[0]) - bounds[experts.reshape(-1)[order]]
    return (rank < capacity).reshape(experts.shape)
