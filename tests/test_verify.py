"""``verify``: llama_np's logits against transformers, a reference .npz, or published values.

The reference .npz here is made by transformers (float32, eager) from the same checkpoint.
"""
from __future__ import annotations

import io
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from llama_np import published
from llama_np.config import ModelConfig
from llama_np.verify import cli_verify, compare, parse_prompts, read_reference, verify, write_reference

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from tests import checkpoint_writers as W  # noqa: E402

os.environ.setdefault("LLAMA_NP_QUIET", "1")
PROMPTS = [[1, 5, 9, 33, 2, 7, 64, 90, 11, 3], [1, 42, 17]]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("verify")
    spec, cfg, flat = W.tiny("llama3")
    W.write_hf(d / "hf", spec, cfg, flat, "bf16")
    W.write_meta(d / "meta", spec, flat, "bf16")
    write_reference(d / "ref.npz", [(ids, W.transformers_logits(d / "hf", ids)) for ids in PROMPTS])
    return d


def test_verify_against_transformers_npz(hf_folder, capsys):
    """Both formats of the checkpoint pass against transformers' logits from the HF folder."""
    for model in ("hf", "meta"):
        args = SimpleNamespace(model=str(hf_folder / model), reference=str(hf_folder / "ref.npz"),
                               prompt=None, tolerance=None)
        assert cli_verify(args) == 0
        out = capsys.readouterr().out
        assert "PASS" in out and "argmax agreement 13/13" in out and "max abs difference" in out


def test_verify_fails_on_wrong_reference(hf_folder, tmp_path, capsys):
    pairs = read_reference(hf_folder / "ref.npz")
    pairs[1][1][2, 5] += 0.5
    write_reference(tmp_path / "bad.npz", pairs)
    args = SimpleNamespace(model=str(hf_folder / "hf"), reference=str(tmp_path / "bad.npz"), prompt=None,
                           tolerance=None)
    assert cli_verify(args) == 1
    assert "FAIL" in capsys.readouterr().out
    # A looser tolerance accepts it (the argmax of that row did not change).
    args.tolerance = 0.6
    assert cli_verify(args) == 0


def test_verify_runs_transformers_itself(hf_folder):
    out = io.StringIO()
    assert verify(hf_folder / "hf", prompts=["1,2,3,4,5,6,7,8", [1, 100, 3]], out=out)
    assert "transformers (float32, eager)" in out.getvalue() and "PASS" in out.getvalue()


def test_unrecognised_meta_without_reference(hf_folder):
    """transformers cannot read a Meta folder and the tiny shape has no published values."""
    with pytest.raises(ValueError, match="no reference for .*--reference FILE.npz"):
        verify(hf_folder / "meta", out=io.StringIO())


def test_reference_file_errors(hf_folder, tmp_path):
    with pytest.raises(FileNotFoundError):
        verify(hf_folder / "hf", reference=tmp_path / "none.npz", out=io.StringIO())
    np.savez(tmp_path / "odd.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="expected arrays 'ids' and 'logits'"):
        read_reference(tmp_path / "odd.npz")
    np.savez(tmp_path / "short.npz", ids=np.arange(4), logits=np.zeros((3, 10)))
    with pytest.raises(ValueError, match=r"logits has shape \(3, 10\), expected \(4, vocab\)"):
        read_reference(tmp_path / "short.npz")


def test_parse_prompts():
    assert parse_prompts(["1, 2,3"], None, 10) == [[1, 2, 3]]
    assert parse_prompts(None, None, 1000) == [[1, 306, 4658 % 1000, 278, 6593 % 1000, 310, 2834 % 1000, 338]]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        parse_prompts(["1,99"], None, 50)
    with pytest.raises(ValueError, match="no tokenizer"):
        parse_prompts(["hello"], None, 50)


def test_compare_ignores_near_ties():
    ref = np.array([[0.0, 1.0, 1.0005], [3.0, 0.0, 0.0]], np.float32)
    ours = np.array([[0.0, 1.0004, 1.0003], [3.0, 0.0, 0.0]], np.float32)
    r = compare(ours, ref, 1e-3)
    assert r["agree"] == 1 and r["bad_argmax"] == 0 and r["max_abs"] < 1e-3


# ----------------------------------------------------------------------------- published values
LLAMA2_7B_CFG = ModelConfig(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, hidden_dim=11008)


def test_published_values_are_found_by_shape_and_name():
    assert [r["name"] for r in published.references_for(LLAMA2_7B_CFG, "Llama-2-7b-hf")] == ["Llama-2-7b-hf"]
    assert [r["name"] for r in published.references_for(LLAMA2_7B_CFG, "llama-2-7b-chat")] == ["Llama-2-7b-chat-hf"]
    assert published.references_for(LLAMA2_7B_CFG.replace(n_layers=2), "Llama-2-7b-hf") == []


def test_published_check_semantics():
    """The check applies the source's tolerance (|a - b| <= atol + rtol |b|) to per-position means
    and the position-0 slice; logits built to have exactly those values pass, shifted ones fail."""
    ref = published.LOGIT_REFERENCES[0]
    (_, means, _, _), (_, pos0, _, _) = ref["variants"]["float16, A100/A10"]
    logits = np.zeros((8, 32000))
    logits[0, :15] = pos0
    for t in range(8):   # fill the rest of each row so that its mean is the expected one
        logits[t, 15:] = (means[t] * 32000 - logits[t, :15].sum()) / (32000 - 15)
    results = dict((v, ok) for v, ok, _, _ in published.check(ref, logits))
    assert results["float16, A100/A10"]
    logits[:, 15:] += 0.05   # every mean off by ~0.05: more than 1e-2 + 1e-2 * |mean| for small means
    assert not any(ok for _, ok, _, _ in published.check(ref, logits))


def test_published_ids_are_what_the_llama2_tokenizer_gives():
    """BOS + "I believe the meaning of life is" with Llama 2's SentencePiece model, if one is around."""
    path = os.environ.get("LLAMA2_TOKENIZER")
    if not path or not os.path.exists(path):
        pytest.skip("set LLAMA2_TOKENIZER to a Llama 2 tokenizer.model to check the published ids")
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=path)
    assert [1] + sp.encode("I believe the meaning of life is") == published.LOGIT_REFERENCES[0]["ids"]


@pytest.mark.slow
def test_verify_default_model_against_transformers():
    """The real SmolLM2-135M GGUF: transformers dequantizes it itself and is the reference."""
    from llama_np.assets import fetch
    gguf = str(fetch("smollm2-135m-instruct"))
    pytest.importorskip("gguf")
    out = io.StringIO()
    ok = verify(gguf, prompts=["The capital of France is"], out=out)
    assert ok, out.getvalue()


def test_json_reference_not_needed(tmp_path):
    """A Meta folder whose tokenizer is absent and prompts given as ids works with an npz."""
    spec, cfg, flat = W.tiny("llama2")
    W.write_meta(tmp_path / "m", spec, flat, "fp32")
    W.write_hf(tmp_path / "h", spec, cfg, flat, "fp32")
    ids = [1, 2, 3, 4]
    write_reference(tmp_path / "r.npz", [(ids, W.transformers_logits(tmp_path / "h", ids))])
    assert json.loads((tmp_path / "m" / "params.json").read_text())["vocab_size"] == -1
    assert verify(tmp_path / "m", reference=tmp_path / "r.npz", out=io.StringIO())
