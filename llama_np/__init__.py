"""llama_np: the LLaMA family in NumPy, one small module per idea.

    from llama_np import ModelConfig, forward, new_cache
"""
from .config import ModelConfig, ffn_hidden_size
from .kv_cache import KVCache, new_cache
from .model import forward, nest, param_shapes, random_params

__all__ = ["ModelConfig", "ffn_hidden_size", "KVCache", "new_cache", "forward", "nest",
           "param_shapes", "random_params"]
__version__ = "0.1.0"
