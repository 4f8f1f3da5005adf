"""The reference fixtures of lessons 09 (real weights) and 12 (capstone).

Without torch: the committed files and numbers are what llama_np's loaders, tokenizer and chat
template read and reproduce (so the two references the lessons check against agree), and the
greedy replies stored for lesson 12 were clear choices. With the reference extra: the make
scripts, rerun now, give the committed fixtures (they are what PyTorch and transformers say, not a
stale copy). Remaking anything that loads SmolLM2 into transformers is slow (~30 s).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.tolerance import REFERENCE_ULPS, assert_close

from course.fixtures import make_09_real_weights as m09
from course.fixtures import make_12_capstone as m12
from llama_np import forward, nest
from llama_np.rope import hf_to_meta
from llama_np.weights import load_model
from llama_np.weights import safetensors as st
from llama_np.weights import torch_zip
from llama_np.weights.packed import bf16_to_f32, f32_to_bf16


@pytest.fixture(scope="module")
def fx09():
    return m09.load()


@pytest.fixture(scope="module")
def fx12():
    return m12.load()


def write_tiny(fx, folder):
    """The fixture's tiny checkpoint files -> folder/hf and folder/meta (as the lesson does)."""
    hf, meta = folder / "hf", folder / "meta"
    hf.mkdir()
    meta.mkdir()
    (hf / "config.json").write_text(str(fx["tiny_hf_config"]))
    (hf / "model.safetensors").write_bytes(fx["tiny_hf_safetensors"].tobytes())
    (meta / "params.json").write_text(str(fx["tiny_meta_params"]))
    (meta / "consolidated.00.pth").write_bytes(fx["tiny_meta_pth"].tobytes())
    return hf, meta


def smollm2_path():
    from llama_np.assets import AssetError, fetch
    try:
        return fetch(m12.ASSET)
    except AssetError as e:   # no cached copy and no network
        pytest.skip(f"SmolLM2 not available: {e}")


# ------------------------------------------------------------------------- without torch
def test_09_bf16_numbers_agree_with_llama_np(fx09):
    np.testing.assert_array_equal(fx09["bf16_x"], m09.bf16_inputs())
    # widening is exact; NaN compares equal to NaN here
    np.testing.assert_array_equal(bf16_to_f32(fx09["bf16_bits"]), fx09["bf16_back"])
    num = ~np.isnan(fx09["bf16_x"])   # NaN's bit pattern is not unique (torch: 0xFFFF here, llama_np 0x7FC0)
    np.testing.assert_array_equal(f32_to_bf16(fx09["bf16_x"])[num], fx09["bf16_bits"][num])
    assert np.isnan(bf16_to_f32(fx09["bf16_bits"][~num])).all()


def test_09_safetensors_view_agrees_with_llama_np_reader(fx09, tmp_path):
    hf, _ = write_tiny(fx09, tmp_path)
    header, _ = st.read_header(hf / "model.safetensors")
    names = fx09["st_names"].tolist()
    assert sorted(header) == names
    assert [header[k]["dtype"] for k in names] == fx09["st_dtypes"].tolist()
    assert [header[k]["shape"] for k in names] == json.loads(str(fx09["st_shapes"]))
    tensors = st.load(hf / "model.safetensors")
    first = np.stack([bf16_to_f32(np.asarray(tensors[k]).reshape(-1)[:4]) for k in names])
    np.testing.assert_array_equal(first, fx09["st_first"])
    sums = [bf16_to_f32(np.asarray(tensors[k])).sum(dtype=np.float64) for k in names]
    # float64 sums of the same float32 numbers in another order
    np.testing.assert_allclose(sums, fx09["st_sum"], rtol=1e-9, atol=1e-9)


def test_09_tiny_checkpoints_give_transformers_logits(fx09, tmp_path):
    """Both formats, as transformers and torch.save wrote them, load to the same weights and
    reproduce transformers' logits."""
    assert json.loads(str(fx09["tiny_meta_params"])) == m09.TINY_PARAMS
    hf, meta = write_tiny(fx09, tmp_path)
    (hcfg, hflat, _), (mcfg, mflat, _) = (load_model(p, dtype="float32", progress=False) for p in (hf, meta))
    assert hcfg.hidden_dim == mcfg.hidden_dim == m09.TINY_HIDDEN and set(hflat) == set(mflat)
    for name in hflat:   # the same bf16 numbers, q/k un-permuted: identical
        np.testing.assert_array_equal(hflat[name], mflat[name], err_msg=name)
    for cfg, flat in ((hcfg, hflat), (mcfg, mflat)):
        logits = forward(nest(flat, cfg), cfg, fx09["tiny_ids"])
        # identical weights, float32 on both sides, 2 layers: measured ~4e-6 on logits up to ~7
        assert_close(logits, fx09["tiny_logits"], REFERENCE_ULPS)


def test_09_meta_pth_holds_metas_layout(fx09, tmp_path):
    _, meta = write_tiny(fx09, tmp_path)
    sd = torch_zip.load(meta / "consolidated.00.pth")
    hf = st.load(tmp_path / "hf" / "model.safetensors")
    p = m09.TINY_PARAMS
    for i in range(p["n_layers"]):
        for hname, mname, heads in (("q_proj", "wq", p["n_heads"]), ("k_proj", "wk", p["n_kv_heads"])):
            got = hf_to_meta(np.asarray(hf[f"model.layers.{i}.self_attn.{hname}.weight"]), heads)
            np.testing.assert_array_equal(got, sd[f"layers.{i}.attention.{mname}.weight"])


def test_09_smollm2_columns_are_the_ggufs_rows_permuted(fx09):
    import gguf
    reader = gguf.GGUFReader(smollm2_path())
    for gname, key, heads in (("blk.0.attn_q.weight", "smol_wq_hf_cols", 9), ("blk.0.attn_k.weight", "smol_wk_hf_cols", 3)):
        t = next(t for t in reader.tensors if t.name == gname)
        rows = gguf.quants.dequantize(t.data, t.tensor_type)[:, :8]
        # both sides dequantize the same Q4_1 blocks with the same arithmetic: exact
        np.testing.assert_array_equal(hf_to_meta(fx09[key], heads), rows)


def test_12_conversation_is_llama_nps_template_and_clear_greedy(fx12):
    from llama_np.tokenizer import load_tokenizer
    from llama_np.tokenizer.chat import encode_chat
    tok = load_tokenizer(smollm2_path())
    messages = []
    for i in range(int(fx12["n_turns"])):
        messages.append({"role": "user", "content": str(fx12[f"turn{i}_user"])})
        assert encode_chat(tok, messages) == fx12[f"turn{i}_prompt_ids"].tolist()
        assert tok.decode(fx12[f"turn{i}_reply_ids"].tolist()) == str(fx12[f"turn{i}_reply"])
        # greedy replies are a fair test only where the winner is clear (float32 noise ~1e-4)
        assert fx12[f"turn{i}_margin"].min() > 1e-2
        messages.append({"role": "assistant", "content": str(fx12[f"turn{i}_reply"])})
    assert str(fx12["conversation"]).startswith(tok.decode(fx12["turn1_prompt_ids"].tolist()))


# ---------------------------------------------------------------- with the reference extra
def _compare(fresh, stored, skip=()):
    assert set(fresh) == set(stored)
    for key in sorted(set(fresh) - set(skip)):
        a, b = np.asarray(fresh[key]), stored[key]
        if a.dtype.kind == "f":
            # another torch build may round the last bit of a sum differently; real changes are far larger
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=key)
        else:
            np.testing.assert_array_equal(a, b, err_msg=key)


def test_09_remade_tiny_fixture_matches(fx09, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    fresh = m09.make(smollm2=False)
    stored = {k: v for k, v in fx09.items() if not k.startswith("smol_")}
    # Files: torch.save writes a random serialization id and transformers its version, so compare
    # what they hold rather than their bytes.
    skip = {"made_with", "tiny_meta_pth", "tiny_hf_config"}
    _compare(fresh, stored, skip)
    cfg_a, cfg_b = json.loads(str(fresh["tiny_hf_config"])), json.loads(str(stored["tiny_hf_config"]))
    cfg_a.pop("transformers_version"), cfg_b.pop("transformers_version")
    assert cfg_a == cfg_b
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(np.asarray(fresh["tiny_meta_pth"]).tobytes())
    b.write_bytes(stored["tiny_meta_pth"].tobytes())
    sa, sb = torch_zip.load(a), torch_zip.load(b)
    assert list(sa) == list(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


@pytest.mark.slow
def test_09_remade_smollm2_columns_match(fx09):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    smollm2_path()
    fresh = m09.smollm2_qk_columns()
    for key, value in fresh.items():
        np.testing.assert_allclose(value, fx09[key], rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.slow
def test_12_remade_fixture_matches(fx12):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    smollm2_path()
    fresh = m12.make()
    for i in range(int(fx12["n_turns"])):
        # margins are differences of float32 logits near 10-20: allow BLAS-order noise
        np.testing.assert_allclose(fresh[f"turn{i}_margin"], fx12[f"turn{i}_margin"], atol=1e-3)
    _compare(fresh, fx12, skip={"made_with"} | {k for k in fx12 if k.endswith("_margin")})
