"""``verify`` on quantized GGUF files (the llama.cpp-quantized fixtures): it compares with
transformers on the same file or with a reference .npz, says which, and refuses the published
16-bit values for a quantized file."""
from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("gguf")

from llama_np.verify import quantized_types, verify, write_reference  # noqa: E402
from tests.fixtures.llamacpp import make_fixtures as mf  # noqa: E402


def test_quantized_types():
    assert quantized_types(mf.path("Q4_K_M")) == ["Q4_K", "Q6_K"]
    assert quantized_types(mf.path("Q8_0")) == ["Q8_0"]
    assert quantized_types(mf.HERE) == []


def test_reference_npz(tmp_path):
    ref = np.load(mf.FIXTURE)
    write_reference(tmp_path / "r.npz", [(list(ref["ids"]), ref["logits_Q4_K_M"])])
    out = io.StringIO()
    assert verify(mf.path("Q4_K_M"), reference=tmp_path / "r.npz", out=out)
    assert f"reference {tmp_path / 'r.npz'}: max abs difference" in out.getvalue() and "PASS" in out.getvalue()


@pytest.mark.reference
def test_transformers_on_the_same_file():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = io.StringIO()
    assert verify(mf.path("Q5_K_M"), prompts=["1,2,3,4,5,6,7,8"], out=out)
    assert "transformers on the same GGUF file (float32, eager): max abs difference" in out.getvalue()


def test_no_published_values_for_quantized_files():
    with pytest.raises(ValueError, match=r"tiny-Q6_K.gguf is quantized \(Q6_K\): the published Llama values "
                                         r"apply to 16-bit checkpoints only") as e:
        verify(mf.path("Q6_K"), use_transformers=False, out=io.StringIO())
    assert "\n" not in str(e.value) and "--reference" in str(e.value)
