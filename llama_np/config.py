"""Model hyper-parameters, read from the three formats real checkpoints come in.

One dataclass, three constructors:
  * ``from_meta_params``: Meta's ``params.json`` (llama-models / llama repos),
  * ``from_hf_config``:   Hugging Face ``config.json`` (``LlamaForCausalLM``),
  * ``from_gguf_metadata``: the ``llama.*`` keys of a GGUF file.
Names follow Meta's ``model.py`` (``dim``, ``n_heads``, ``n_kv_heads``, ``rope_theta``...).
"""
from __future__ import annotations

from dataclasses import dataclass, replace


def ffn_hidden_size(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """Meta's FFN width rule (``FeedForward.__init__`` in Meta's model.py).

    Start from 4*dim, take 2/3 of it (SwiGLU has three matrices instead of two, so this keeps
    the parameter count of a plain 4*dim MLP), optionally scale, then round *up* to a multiple.
    7B: dim 4096, multiple_of 256 -> 11008.   8B: dim 4096, x1.3, multiple_of 1024 -> 14336.
    """
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1's "llama3" RoPE frequency scaling (``rope.llama3_scale_frequencies``): a model
    trained at ``original_max_position_embeddings`` positions reads ``factor`` times more."""
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    # GGUF's form of the same scaling (llama.cpp's converter writes it as the ``rope_freqs``
    # tensor): one divisor per rotary pair, already computed. When set, it alone is used.
    freq_factors: tuple | None = None

    def __post_init__(self):
        if self.freq_factors is not None:
            object.__setattr__(self, "freq_factors", tuple(float(f) for f in self.freq_factors))


@dataclass(frozen=True)
class MoE:
    """How a mixture-of-experts model routes (moe.py). The expert count and top-k are
    ``ModelConfig.n_experts`` / ``n_experts_per_tok``."""
    kind: str = "mixtral"             # the routing rule: "mixtral" or "llama4"
    expert_dim: int | None = None     # each expert's FFN width; None: the config's hidden_dim
    layers: tuple | None = None       # indices of the MoE layers; None: every layer
    shared_expert: bool | None = None  # a shared expert every token goes through; None: llama4 has one

    def __post_init__(self):
        if self.kind not in ("mixtral", "llama4"):
            raise ValueError(f"unknown MoE routing {self.kind!r} (mixtral, llama4)")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if self.shared_expert is None:
            object.__setattr__(self, "shared_expert", self.kind == "llama4")


def _typed(cls, value):
    """A settings dataclass from itself, a dict of its fields, or None (dicts are accepted so that
    configs can be written out as plain keyword arguments)."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls(**value)
    raise TypeError(f"expected {cls.__name__}, a dict of its fields or None; got {type(value).__name__}")


@dataclass(frozen=True)
class AttnTemperature:
    """Llama 4's query scale on NoPE layers (``llama4.attn_temperature``)."""
    floor_scale: float = 8192.0
    attn_scale: float = 0.1


@dataclass(frozen=True)
class Llama4Attention:
    """How Llama 4's attention differs from Llama 1-3 (llama4.py). Each default is Llama 1-3's
    behaviour, so an instance lists exactly the changes a model makes; ``from_hf_config`` fills in
    transformers' Llama 4 defaults for what a config.json leaves out."""
    rope_layers: tuple | None = None   # rope_layers[i] == 0: layer i is "NoPE"; None: RoPE on every layer
    qk_norm: bool = False              # RMS-normalise q and k (no gain) on RoPE layers
    attn_temperature: AttnTemperature | None = None   # scale NoPE queries up with position
    attention_chunk_size: int | None = None           # RoPE layers attend only within their chunk

    def __post_init__(self):
        if self.rope_layers is not None:
            object.__setattr__(self, "rope_layers", tuple(int(f) for f in self.rope_layers))
        object.__setattr__(self, "attn_temperature", _typed(AttnTemperature, self.attn_temperature))
        # 0 and None both mean "no chunks", as in transformers' config
        object.__setattr__(self, "attention_chunk_size", int(self.attention_chunk_size or 0) or None)


@dataclass
class ModelConfig:
    dim: int = 4096                 # width of the residual stream
    n_layers: int = 32
    n_heads: int = 32               # query heads
    n_kv_heads: int | None = None   # key/value heads (GQA); None means = n_heads
    vocab_size: int = 32000
    hidden_dim: int = 11008         # FFN width (w1/w3 out, w2 in)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None   # Llama 3.1 "llama3" frequency scaling; None: plain RoPE
    tie_embeddings: bool = False    # output head shares tok_embeddings (Llama 3.2 1B/3B, SmolLM2)
    max_seq_len: int = 4096         # context length the model was trained for
    head_dim: int | None = None     # None means dim // n_heads
    # Mixture of experts (Mixtral / Llama 4); n_experts == 0 means a dense model (moe None).
    n_experts: int = 0
    n_experts_per_tok: int = 0
    moe: MoE | None = None
    llama4: Llama4Attention | None = None   # Llama 4's attention (NoPE layers, qk-norm...); None: Llama 1-3's

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        # Every default of the settings below is decided here, once.
        self.rope_scaling = _typed(RopeScaling, self.rope_scaling)
        self.llama4 = _typed(Llama4Attention, self.llama4)
        if self.llama4 and self.llama4.rope_layers is not None and len(self.llama4.rope_layers) != self.n_layers:
            raise ValueError(f"llama4.rope_layers has {len(self.llama4.rope_layers)} flags for {self.n_layers} layers")
        moe = _typed(MoE, self.moe or None)
        if moe is None and self.n_experts:
            moe = MoE()
        if moe is not None and moe.expert_dim is None:
            moe = replace(moe, expert_dim=self.hidden_dim)
        self.moe = moe if self.n_experts else None

    @property
    def is_dense_llama(self) -> bool:
        """A plain dense Llama (1, 2, 3): RoPE on every layer, no qk-norm, full attention, no experts."""
        return self.llama4 is None and not self.n_experts

    @property
    def n_rep(self) -> int:
        """How many query heads share one KV head (1 for multi-head attention)."""
        return self.n_heads // self.n_kv_heads

    def replace(self, **kw) -> "ModelConfig":
        return replace(self, **kw)

    # ------------------------------------------------------------------ Meta
    @classmethod
    def from_meta_params(cls, params: dict, vocab_size: int | None = None) -> "ModelConfig":
        """Meta's params.json. Llama 2 says ``vocab_size: -1``: pass the tokenizer's size."""
        dim = params["dim"]
        vs = params.get("vocab_size", -1)
        if vs is None or vs <= 0:
            if vocab_size is None:
                raise ValueError("params.json has vocab_size -1; pass the tokenizer's vocab size")
            vs = vocab_size
        hidden = params.get("hidden_dim") or ffn_hidden_size(
            dim, params.get("multiple_of", 256), params.get("ffn_dim_multiplier"))
        scaling = None
        if params.get("use_scaled_rope"):
            # Meta's params.json says only "use_scaled_rope"; the factor depends on the release:
            # 8 for Llama 3.1 (8B/70B/405B), 32 for Llama 3.2 (1B: dim 2048, 3B: dim 3072), as
            # transformers' convert_llama_weights_to_hf.py sets it by llama_version. Some newer
            # params.json files carry "rope_scaling_factor" themselves.
            llama32 = params.get("vocab_size") == 128256 and dim in (2048, 3072)
            factor = params.get("rope_scaling_factor") or (32.0 if llama32 else 8.0)
            scaling = RopeScaling(factor=float(factor))     # Llama 3.1's other settings are the defaults
        theta = float(params.get("rope_theta", 10000.0))
        return cls(dim=dim, n_layers=params["n_layers"], n_heads=params["n_heads"],
                   n_kv_heads=params.get("n_kv_heads"), vocab_size=vs, hidden_dim=hidden,
                   norm_eps=float(params.get("norm_eps", 1e-5)), rope_theta=theta, rope_scaling=scaling,
                   tie_embeddings=False, max_seq_len=int(params.get("max_seq_len", 8192 if theta > 10000 else 4096)))

    # ------------------------------------------------------------ Hugging Face
    @classmethod
    def from_hf_config(cls, cfg: dict) -> "ModelConfig":
        """A transformers ``config.json``: Llama/Mistral, Mixtral, or a Llama 4 text model (MoE, NoPE...)."""
        if "text_config" in cfg:  # Llama 4 wraps the text model
            cfg = {**cfg["text_config"], "tie_word_embeddings": cfg.get("tie_word_embeddings",
                   cfg["text_config"].get("tie_word_embeddings", False))}
        # transformers v5 renamed rope_scaling -> rope_parameters (which also carries rope_theta)
        rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        theta = float(cfg.get("rope_theta", rp.get("rope_theta", 10000.0)))
        rtype = rp.get("rope_type", rp.get("type"))
        scaling = None
        if rtype == "llama3":
            scaling = RopeScaling(**{k: float(rp[k]) for k in ("factor", "low_freq_factor", "high_freq_factor")},
                                  original_max_position_embeddings=int(rp["original_max_position_embeddings"]))
        elif rtype not in (None, "default"):
            raise ValueError(f"unsupported rope scaling type {rtype!r}")
        n_heads = cfg["num_attention_heads"]
        n_experts = int(cfg.get("num_local_experts", 0) or 0)
        hidden, moe, llama4 = cfg["intermediate_size"], None, None
        kind = str(cfg.get("model_type") or "mixtral")
        if kind.startswith("llama4"):
            hidden, moe, llama4 = _llama4_fields(cfg)
        elif n_experts:
            if kind != "mixtral":
                raise ValueError(f"unsupported mixture-of-experts model_type {kind!r} (mixtral, llama4)")
            moe = MoE(kind="mixtral", expert_dim=hidden, shared_expert=False)
        return cls(dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"], n_heads=n_heads,
                   n_kv_heads=cfg.get("num_key_value_heads") or n_heads, vocab_size=cfg["vocab_size"],
                   hidden_dim=hidden, norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                   rope_theta=theta, rope_scaling=scaling,
                   tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   max_seq_len=int(cfg.get("max_position_embeddings", 4096)),
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
                   n_experts=n_experts, n_experts_per_tok=int(cfg.get("num_experts_per_tok", 0) or 0), moe=moe,
                   llama4=llama4)

    # -------------------------------------------------------------------- GGUF
    @classmethod
    def from_gguf_metadata(cls, md: dict, vocab_size: int | None = None, tied: bool | None = None) -> "ModelConfig":
        """``md`` maps GGUF keys (``llama.embedding_length``...) to Python values."""
        arch = md.get("general.architecture", "llama")
        g = lambda k, d=None: md.get(f"{arch}.{k}", d)  # noqa: E731
        if arch not in ("llama",):
            raise ValueError(f"unsupported GGUF architecture {arch!r} (only 'llama')")
        n_heads = int(g("attention.head_count"))
        dim = int(g("embedding_length"))
        vs = g("vocab_size") or vocab_size or len(md.get("tokenizer.ggml.tokens", []))
        scaling = None
        if g("rope.scaling.type") not in (None, "none") or float(g("rope.scaling.factor") or 1.0) != 1.0:
            # llama.cpp's converter writes Llama 3.1 scaling as the rope_freqs tensor (read by
            # weights/gguf.py), never as these keys; linear and YaRN scaling are other models'.
            raise ValueError(f"GGUF rope scaling type {g('rope.scaling.type')!r} is not supported "
                             f"(Llama 3.1's scaling comes as the rope_freqs tensor, which is)")
        return cls(dim=dim, n_layers=int(g("block_count")), n_heads=n_heads,
                   n_kv_heads=int(g("attention.head_count_kv", n_heads)), vocab_size=int(vs),
                   hidden_dim=int(g("feed_forward_length")),
                   norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)),
                   rope_theta=float(g("rope.freq_base", 10000.0)), rope_scaling=scaling,
                   tie_embeddings=bool(tied) if tied is not None else False,
                   max_seq_len=int(g("context_length", 4096)),
                   head_dim=int(g("attention.key_length", dim // n_heads)))


def _llama4_fields(cfg: dict):
    """Llama 4 text config -> (dense FFN width, MoE, Llama4Attention), with the defaults of
    transformers' ``Llama4TextConfig`` for keys a config.json leaves out (or leaves empty)."""
    n = cfg["num_hidden_layers"]
    step = int(cfg.get("interleave_moe_layer_step", 1))
    layers = cfg.get("moe_layers")
    layers = list(range(step - 1, n, step)) if layers is None else [int(i) for i in layers]
    moe = MoE(kind="llama4", expert_dim=int(cfg["intermediate_size"]), layers=layers, shared_expert=True)
    # "no_rope_layers" is a list of flags where 1 means *use* RoPE; by default every 4th layer is NoPE.
    interval = int(cfg.get("no_rope_layer_interval", 4))
    rope_layers = cfg.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
    temperature = None
    if cfg.get("attn_temperature_tuning", True):
        temperature = AttnTemperature(floor_scale=float(cfg.get("floor_scale", AttnTemperature.floor_scale)),
                                      attn_scale=float(cfg.get("attn_scale", AttnTemperature.attn_scale)))
    attention = Llama4Attention(rope_layers=rope_layers, qk_norm=bool(cfg.get("use_qk_norm", True)),
                                attn_temperature=temperature,
                                attention_chunk_size=cfg.get("attention_chunk_size", 8192))
    # Dense layers use intermediate_size_mlp; every expert (and the shared one) intermediate_size.
    return int(cfg.get("intermediate_size_mlp", cfg["intermediate_size"])), moe, attention
