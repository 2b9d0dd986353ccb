"""Textual-inversion embeddings: validation of loaded objects, the safetensors form, collections, the directory."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from safetensors.torch import save_file

from engine.conditioning import (
    DuplicateEmbeddingName,
    Embedding,
    EmbeddingSet,
    InvalidEmbedding,
    embedding_from_object,
    load_embedding_safetensors,
    load_embeddings_dir,
    save_embedding_safetensors,
)

from .conftest import EMBEDDINGS_DIR


def test_a1111_string_to_param_layout() -> None:
    obj = torch.load(EMBEDDINGS_DIR / "inkstyle.pt", map_location="cpu", weights_only=True)
    embedding = embedding_from_object(obj, "inkstyle", sha256="ab" * 32)
    assert (embedding.name, embedding.vector_count, embedding.width) == ("inkstyle", 2, 32)
    assert embedding.vectors.dtype == torch.float32
    assert embedding.short_hash == "ab" * 6
    assert embedding.step is None or isinstance(embedding.step, int)


@pytest.mark.parametrize(("obj", "shape"), [
    ({"emb_params": torch.ones(3, 8)}, (3, 8)),
    ({"<my-concept>": torch.ones(8)}, (1, 8)),
    ({"emb_params": torch.ones(2, 8, dtype=torch.float16)}, (2, 8)),
    ({"string_to_param": {"*": torch.nn.Parameter(torch.ones(4, 8))}, "step": 500}, (4, 8)),
])
def test_accepted_layouts(obj, shape) -> None:
    embedding = embedding_from_object(obj, "x")
    assert tuple(embedding.vectors.shape) == shape and embedding.vectors.dtype == torch.float32
    assert not embedding.vectors.requires_grad


def test_step_is_kept_from_a1111_files() -> None:
    assert embedding_from_object({"string_to_param": {"*": torch.ones(1, 4)}, "step": 500}, "x").step == 500


@pytest.mark.parametrize(("obj", "message"), [
    ([torch.ones(2, 8)], "expected a dict"),
    ({"string_to_param": [torch.ones(2, 8)]}, "string_to_param is list"),
    ({"string_to_param": {"a": torch.ones(2, 8), "b": torch.ones(2, 8)}}, "exactly one tensor"),
    ({"a": torch.ones(2, 8), "b": torch.ones(2, 8)}, "exactly one tensor"),
    ({"clip_g": torch.ones(2, 1280), "clip_l": torch.ones(2, 768)}, "SDXL"),
    ({"emb_params": "not a tensor"}, "exactly one tensor"),
    ({}, "exactly one tensor"),
    ({"string_to_param": {"*": torch.ones(8)}}, "expected a \\[vectors, width\\] tensor"),
    ({"emb_params": torch.ones(2, 3, 8)}, "expected a \\[vectors, width\\] tensor"),
    ({"emb_params": torch.ones(2, 8, dtype=torch.int64)}, "not floating point"),
    ({"emb_params": torch.ones(0, 8)}, "0 vectors"),
    ({"emb_params": torch.ones(76, 8)}, "76 vectors"),
    ({"emb_params": torch.tensor([[1.0, float("nan")]])}, "NaN"),
])
def test_refused_objects(obj, message: str) -> None:
    with pytest.raises(InvalidEmbedding, match=message):
        embedding_from_object(obj, "x")


def test_embedding_needs_a_name_and_float32_vectors() -> None:
    with pytest.raises(InvalidEmbedding):
        Embedding("", torch.ones(1, 4))
    with pytest.raises(InvalidEmbedding):
        Embedding("x", torch.ones(1, 4, dtype=torch.float64))


def test_safetensors_round_trip_and_hashes(tmp_path) -> None:
    original = embedding_from_object({"emb_params": torch.randn(2, 8)}, "x")
    path = tmp_path / "stored.safetensors"
    save_embedding_safetensors(original, path)
    loaded = load_embedding_safetensors(path, "my_name")
    assert loaded.name == "my_name" and torch.equal(loaded.vectors, original.vectors)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_embedding_safetensors(path, "n", sha256="cd" * 32).short_hash == "cd" * 6


def test_unreadable_safetensors_is_invalid(tmp_path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(InvalidEmbedding, match="not a readable safetensors"):
        load_embedding_safetensors(path, "bad")


def test_set_refuses_duplicates_and_splits_by_width() -> None:
    narrow, wide = Embedding("a", torch.ones(1, 32)), Embedding("b", torch.ones(2, 768))
    with pytest.raises(DuplicateEmbeddingName):
        EmbeddingSet([narrow, Embedding("a", torch.ones(1, 32))])
    usable, skipped = EmbeddingSet([narrow, wide]).for_width(32)
    assert list(usable) == ["a"]
    assert [(s.name, s.reason) for s in skipped] == [("b", "vectors are 768 wide, the text encoder's are 32")]


def test_fixture_directory(cases_doc) -> None:
    directory = load_embeddings_dir(EMBEDDINGS_DIR)
    assert directory.skipped == ()
    files = {entry["file"]: entry for entry in cases_doc["embeddings_dirs"]["embeddings"]["files"]}
    for name, info in cases_doc["embeddings_dirs"]["embeddings"]["loaded"].items():
        embedding = directory.embeddings[name]
        assert (embedding.vector_count, embedding.width) == (info["vectors"], info["shape"])
        assert embedding.sha256 == files[info["file"]]["sha256"]


def test_directory_rules(tmp_path) -> None:
    save_file({"emb_params": torch.ones(2, 8)}, str(tmp_path / "Upper.SAFETENSORS"))
    (tmp_path / "sub").mkdir()
    torch.save({"string_to_param": {"*": torch.ones(1, 8)}}, tmp_path / "sub" / "deep.PT")
    save_file({"emb_params": torch.ones(1, 8)}, str(tmp_path / "sub" / "Upper.safetensors"))  # same stem
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "broken.bin").write_bytes(b"not a pickle")
    save_file({"clip_g": torch.ones(1, 4), "clip_l": torch.ones(1, 2)}, str(tmp_path / "xl.safetensors"))
    (tmp_path / "notes.txt").write_text("ignored")
    os.symlink(tmp_path, tmp_path / "sub" / "loop")
    directory = load_embeddings_dir(tmp_path)
    assert sorted(directory.embeddings) == ["Upper", "deep"]
    assert directory.embeddings["Upper"].vector_count == 2  # the first in sorted order wins
    reasons = {skipped.source: skipped.reason for skipped in directory.skipped}
    assert set(reasons) == {"empty.pt", "broken.bin", "xl.safetensors", os.path.join("sub", "Upper.safetensors")}
    assert reasons["empty.pt"] == "empty file"
    assert "SDXL" in reasons["xl.safetensors"]
    assert "already gave the name" in reasons[os.path.join("sub", "Upper.safetensors")]


def test_pickle_with_code_is_refused(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled",))

    torch.save({"emb_params": Evil()}, tmp_path / "evil.pt")
    directory = load_embeddings_dir(tmp_path)
    assert len(directory.embeddings) == 0
    assert "Unsupported global" in directory.skipped[0].reason or "weights_only" in directory.skipped[0].reason


@pytest.mark.parametrize("root", [None, "/nonexistent/embeddings"])
def test_no_directory_means_no_embeddings(root) -> None:
    assert len(load_embeddings_dir(root).embeddings) == 0
