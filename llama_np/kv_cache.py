"""The key/value cache: why decoding one token does not recompute the whole prompt.

At step t the new token's query must attend to the keys and values of every earlier token.
Those never change, so we keep them. The cache is allocated once for the whole context
(``max_seq_len``) and filled in place: no per-token allocation, no concatenation.

Memory: 2 (K and V) * n_layers * n_kv_heads * head_dim * max_seq_len * 4 bytes in float32.
Llama 2 7B (32 KV heads) needs 4 GiB for 4096 tokens; Llama 3 8B (8 KV heads, GQA) 2 GiB for
8192 tokens: twice the context in half the memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class KVCache:
    k: "np.ndarray"  # (n_layers, n_kv_heads, max_seq_len, head_dim) float32
    v: "np.ndarray"  # same

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[2]

    def update(self, layer: int, start_pos: int, k, v):
        """Write k, v: (KV, T, d) at positions start_pos.. and return views of everything so far,
        (KV, start_pos + T, d) each. Head-major storage keeps each head's keys contiguous, so the
        attention matmuls run on BLAS without a copy."""
        end = start_pos + k.shape[1]
        if end > self.max_seq_len:
            raise ValueError(f"sequence of {end} tokens does not fit the cache ({self.max_seq_len})")
        self.k[layer, :, start_pos:end] = k
        self.v[layer, :, start_pos:end] = v
        return self.k[layer, :, :end], self.v[layer, :, :end]


def new_cache(cfg, max_seq_len: int | None = None, xp=np) -> KVCache:
    """An empty cache for ``cfg`` (a ModelConfig) holding ``max_seq_len`` positions.

    Not zeroed: ``update`` returns only the positions written so far, so nothing unwritten is
    ever read. ``zeros`` would ask the kernel for fresh zero pages and pay a page fault on the
    first write to each 4 KiB during the prefill; ``empty`` can reuse memory already mapped."""
    shape = (cfg.n_layers, cfg.n_kv_heads, max_seq_len or cfg.max_seq_len, cfg.head_dim)
    return KVCache(xp.empty(shape, dtype=xp.float32), xp.empty(shape, dtype=xp.float32))


def cache_bytes(cfg, seq_len: int, bytes_per_value: int = 4) -> int:
    """Bytes a full cache of ``seq_len`` positions takes."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * seq_len * bytes_per_value
