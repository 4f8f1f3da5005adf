"""``ollama:NAME[:TAG]`` on a small fake Ollama store (the layout of a real one, a tiny GGUF blob)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

pytest.importorskip("gguf")

from llama_np import forward, nest  # noqa: E402
from llama_np.weights import load_model, ollama  # noqa: E402
from llama_np.weights.errors import CheckpointError, CheckpointNotFound  # noqa: E402
from course.fixtures.tiny.configs import config, make_weights  # noqa: E402
from course.fixtures.tiny.make_fixtures import HERE as TINY  # noqa: E402
from tests.test_gguf import write_gguf  # noqa: E402


def add_model(root, name: str, tag: str, blob: bytes, media=ollama.MODEL_MEDIA_TYPE, namespace="library"):
    """Put ``blob`` in the store as model NAME:TAG, with a manifest like Ollama writes."""
    digest = hashlib.sha256(blob).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(blob)
    params = b'{"stop": ["<|eot_id|>"]}'
    pdigest = hashlib.sha256(params).hexdigest()
    (root / "blobs" / f"sha256-{pdigest}").write_bytes(params)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": "sha256:" + "0" * 64, "size": 2},
                "layers": [{"mediaType": media, "digest": f"sha256:{digest}", "size": len(blob)},
                           {"mediaType": "application/vnd.ollama.image.params",
                            "digest": f"sha256:{pdigest}", "size": len(params)}]}
    d = root / "manifests" / "registry.ollama.ai" / namespace / name
    d.mkdir(parents=True, exist_ok=True)
    (d / tag).write_text(json.dumps(manifest))
    return root / "blobs" / f"sha256-{digest}"


@pytest.fixture
def store(tmp_path, monkeypatch):
    root = tmp_path / "models"
    gguf_bytes = write_gguf(tmp_path / "m.gguf", config("llama3_gqa"), make_weights("llama3_gqa")).read_bytes()
    add_model(root, "tiny", "latest", gguf_bytes)
    add_model(root, "tiny", "q8", gguf_bytes)
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return root


def test_parse():
    assert ollama.parse("ollama:llama3.1:8b") == ("library", "llama3.1", "8b")
    assert ollama.parse("ollama:llama3.1") == ("library", "llama3.1", "latest")
    assert ollama.parse("ollama:someone/mymodel:q4_K_M") == ("someone", "mymodel", "q4_K_M")
    for bad in ("ollama:", "ollama:a b", "ollama:../../etc:passwd", "ollama:../x", "ollama:x:..", "ollama:x:y/z"):
        with pytest.raises(CheckpointError, match="not an Ollama model name"):
            ollama.parse(bad)


def test_store_locations(monkeypatch, tmp_path):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    assert ollama.stores() == [tmp_path]
    monkeypatch.delenv("OLLAMA_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ollama.stores() == [tmp_path / ".ollama" / "models", ollama.Path("/usr/share/ollama/.ollama/models")]


def test_load_by_name(store):
    """The blob is loaded in place and runs: transformers' logits for the same tiny weights."""
    assert ollama.resolve("ollama:tiny").parent == store / "blobs"
    assert ollama.resolve("ollama:tiny:q8") == ollama.resolve("ollama:tiny:latest")
    cfg, params, tok = load_model("ollama:tiny", progress=False)
    fx = np.load(TINY / "llama3_gqa.npz")
    np.testing.assert_allclose(forward(nest(params, cfg), cfg, fx["ids"]), fx["logits"], atol=1e-4, rtol=0)


def test_missing_model_lists_what_is_there(store):
    with pytest.raises(CheckpointNotFound, match=r"no Ollama model llama3.1:8b in .*models .*it has tiny:latest, tiny:q8") as e:
        load_model("ollama:llama3.1:8b")
    assert "\n" not in str(e.value)


def test_not_a_gguf_layer(store):
    add_model(store, "newer", "latest", b"\x93NUMPY safetensors-ish bytes")
    with pytest.raises(CheckpointError, match=r"newer:latest: its model layer .* is not a GGUF file \(starts with"):
        load_model("ollama:newer")
    add_model(store, "split", "latest", b"{}", media="application/vnd.ollama.image.tensor")
    with pytest.raises(CheckpointError, match=r"split:latest has no application/vnd.ollama.image.model layer "
                                              r"\(found: application/vnd.ollama.image.params, "
                                              r"application/vnd.ollama.image.tensor\)"):
        load_model("ollama:split")


def test_missing_blob_and_bad_manifest(store):
    blob = ollama.resolve("ollama:tiny:q8")
    blob.unlink()
    with pytest.raises(CheckpointNotFound, match=r"tiny:q8: its manifest names sha256-[0-9a-f]{64}, which is not in"):
        load_model("ollama:tiny:q8")
    (store / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest").write_text("not json")
    with pytest.raises(CheckpointError, match="not a readable Ollama manifest"):
        load_model("ollama:tiny")


def test_cli_one_line(store, capsys):
    from llama_np.cli import main
    assert main(["generate", "--model", "ollama:nothere", "hello"]) == 2   # found before loading
    err = capsys.readouterr().err
    assert "no Ollama model nothere:latest" in err and err.count("\n") == 1 and "Traceback" not in err
