"""Expected values that public test suites assert for real Llama checkpoints.

So someone who has only the weights (no GPU, no transformers, no 28 GB for a float32 reference)
can still check that llama_np computes the right thing. Every number is copied from the file
cited next to it; none comes from llama_np.

What each check can catch: position 0 sees only the BOS token, so a slice of position-0 logits
checks the weights, norms, FFN and head but not RoPE or the causal mask. The per-position means
cover every position and so do catch RoPE and mask bugs. Greedy texts are the most
end-to-end check (tokenizer included) but need a full generation.
"""
from __future__ import annotations

import numpy as np

TRANSFORMERS_LLAMA_TESTS = ("huggingface/transformers tests/models/llama/test_modeling_llama.py, "
                            "LlamaIntegrationTest.test_model_7b_logits")

# Shapes that identify a checkpoint family (the config cannot tell a base model from its chat
# fine-tune: the folder name decides, see ``references_for``).
LLAMA2_7B = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "vocab_size": 32000, "hidden_dim": 11008}
LLAMA3_8B = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "hidden_dim": 14336}
LLAMA32_1B = {"dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, "hidden_dim": 8192}

# Logit checks: ``ids`` go in (BOS included); ``checks`` are (what, expected, atol, rtol) where
# what is "mean" (logits.mean(-1) per position) or "pos0" (logits[0, :len(expected)]).
# ``variants`` hold the same check measured on different hardware when the source lists several.
LOGIT_REFERENCES = [
    {
        "name": "Llama-2-7b-hf",
        "shape": LLAMA2_7B,
        "source": TRANSFORMERS_LLAMA_TESTS + " (float16 on GPU)",
        # BOS + "I believe the meaning of life is"
        "ids": [1, 306, 4658, 278, 6593, 310, 2834, 338],
        # The test accepts either row depending on the GPU ("8 is for A100 / A10 and 7 for T4":
        # CUDA compute capability); both are float16 runs and differ from each other by up to 0.04. The test's own
        # tolerance is atol = rtol = 1e-2 (torch.allclose: |a - b| <= atol + rtol * |b|).
        "variants": {
            "float16, A100/A10": [
                ("mean", [-6.6544, -4.1259, -4.9840, -3.2456, 0.8261, -3.0124, 1.2971, -3.3641], 1e-2, 1e-2),
                ("pos0", [-12.8281, -7.4609, -0.4668, -8.0703, -7.2539, -8.0078, -6.4961, -7.7734, -7.8516,
                          -7.0352, -6.2188, -7.1367, -1.8564, 1.9922, -8.6328], 1e-2, 1e-2),
            ],
            "float16, T4": [
                ("mean", [-6.6420, -4.1227, -4.9809, -3.2041, 0.8261, -3.0052, 1.2957, -3.3648], 1e-2, 1e-2),
                ("pos0", [-12.8125, -7.3359, -0.4846, -8.0234, -7.2383, -7.9922, -6.4805, -7.7344, -7.8125,
                          -7.0078, -6.1797, -7.1094, -1.8633, 1.9736, -8.6016], 1e-2, 1e-2),
            ],
        },
    },
    {
        "name": "Llama-2-7b-chat-hf",
        "shape": LLAMA2_7B,
        "chat": True,
        "source": "mlverse/minhub tests/testthat/test-llama.R (float32)",
        "ids": [1, 1, 1],
        # relative tolerance 1e-4 in the source, written here as rtol with a float32 atol floor
        "variants": {"float32": [("pos0", [0.2226, 0.0299, 0.2729, -0.7919, 1.6164], 1e-4, 1e-4)]},
    },
]

# Greedy continuations (no sampling). Text in, text out: they need the model's tokenizer.
GREEDY_REFERENCES = [
    {"name": "Llama-2-7b-hf", "shape": LLAMA2_7B, "bos": True, "new_tokens": 40,
     "source": TRANSFORMERS_LLAMA_TESTS.replace("test_model_7b_logits", "test_compile_static_cache") + " (float16)",
     "prompt": "Simply put, the theory of relativity states that ",
     "continuation": "1) the speed of light is constant in all inertial reference frames, and 2) the laws of "
                     "physics are the same for all inertial reference frames.\nThe theory of relativ"},
    {"name": "Llama-3.2-1B", "shape": LLAMA32_1B, "bos": True,
     "source": TRANSFORMERS_LLAMA_TESTS.replace("test_model_7b_logits", "test_export_static_cache") + " (bf16, CPU)",
     "prompt": "Simply put, the theory of relativity states that ",
     "continuation": "1) the speed of light is the same for all observers, regardless of their location, and 2) "
                     "the laws of physics are the same for all observers"},
    {"name": "Meta-Llama-3.1-8B-Instruct", "shape": LLAMA3_8B, "bos": True, "chat": True,
     "source": "huggingface/transformers tests/models/llama/test_modeling_llama.py, "
               "test_llama_3_1_hard (bf16, no chat template); compare a prefix: bf16 runs differ slightly",
     "prompt": "Tell me about the french revolution.",
     "continuation": " The french revolution was a period of radical political and social upheaval in France "
                     "that lasted from 1789 until 1799."},
]

# llama.cpp's perplexity of Llama 3 8B F16 on wikitext-2 (its own windowing: second half of each
# 512-token window); ggml-org/llama.cpp tools/perplexity/README.md.
LLAMA3_8B_F16_WIKITEXT2_PPL = 6.2332


def shape_of(cfg) -> dict:
    return {k: getattr(cfg, k) for k in LLAMA2_7B}


def references_for(cfg, name_hint: str = "") -> list:
    """The logit references whose shape matches ``cfg``. A base model and its chat fine-tune
    share a shape: ``name_hint`` (the folder name) containing "chat" or "instruct" picks the
    chat one, anything else the base one."""
    matches = [r for r in LOGIT_REFERENCES if r["shape"] == shape_of(cfg)]
    chat = any(w in name_hint.lower() for w in ("chat", "instruct"))
    return [r for r in matches if bool(r.get("chat")) == chat]


def check(ref: dict, logits: np.ndarray) -> list:
    """Compare ``logits`` (T, vocab) for ``ref["ids"]`` with every variant of ``ref``.

    Returns [(variant, passed, max_abs_diff, [(what, max_abs_diff, passed), ...]), ...]: a
    variant passes when all its checks pass with the source's own tolerance."""
    logits = np.asarray(logits, dtype=np.float64)
    out = []
    for variant, checks in ref["variants"].items():
        rows, ok_all, worst = [], True, 0.0
        for what, expected, atol, rtol in checks:
            expected = np.asarray(expected, dtype=np.float64)
            got = logits.mean(-1) if what == "mean" else logits[0, :len(expected)]
            diff = np.abs(got - expected)
            ok = bool((diff <= atol + rtol * np.abs(expected)).all())
            rows.append((what, float(diff.max()), ok))
            ok_all &= ok
            worst = max(worst, float(diff.max()))
        out.append((variant, ok_all, worst, rows))
    return out
