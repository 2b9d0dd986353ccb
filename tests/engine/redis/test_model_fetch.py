"""A worker's missing hypernet files: asked for once, accepted only as the model asked for with bytes as stated."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from engine.codec import encode
from engine.errors import InvalidModelFile
from engine.protocol import ModelBlob, Progress
from engine.worker.model_fetch import HASH_MISMATCH, NOT_RECEIVED, ModelFetcher

KEY = hashlib.sha256(b"the file as uploaded").hexdigest()
DATA = b"canonical safetensors bytes"


def fetcher(tmp_path: Path, blob: bytes | None) -> tuple[ModelFetcher, list[str]]:
    asked: list[str] = []
    return ModelFetcher(tmp_path, asked.append, lambda digest, timeout: blob, timeout_s=0.1), asked


def test_a_missing_file_is_asked_for_checked_and_stored(tmp_path: Path) -> None:
    models, asked = fetcher(tmp_path, encode(ModelBlob(KEY, hashlib.sha256(DATA).hexdigest(), DATA)))
    models.ensure([KEY, KEY])
    assert asked == [KEY]
    assert (tmp_path / f"{KEY}.safetensors").read_bytes() == DATA
    models.ensure([KEY])  # present now: not asked again
    assert asked == [KEY]
    assert [p.name for p in tmp_path.iterdir()] == [f"{KEY}.safetensors"]  # no temporary file left


@pytest.mark.parametrize("blob", [
    encode(ModelBlob(KEY, hashlib.sha256(b"other bytes").hexdigest(), DATA)),  # bytes do not hash as stated
    encode(ModelBlob(hashlib.sha256(b"another").hexdigest(), hashlib.sha256(DATA).hexdigest(), DATA)),  # other model
    encode(Progress(1, 1, 1)),  # not a blob at all
    b"\x00garbage",
], ids=["wrong-hash", "other-model", "not-a-blob", "garbage"])
def test_anything_else_is_refused_and_nothing_written(tmp_path: Path, blob: bytes) -> None:
    models, _ = fetcher(tmp_path, blob)
    with pytest.raises(InvalidModelFile) as refused:
        models.ensure([KEY])
    assert refused.value.message == HASH_MISMATCH
    assert list(tmp_path.iterdir()) == []


def test_no_answer_in_time_says_so(tmp_path: Path) -> None:
    models, _ = fetcher(tmp_path, None)
    with pytest.raises(InvalidModelFile) as refused:
        models.ensure([KEY])
    assert refused.value.message == NOT_RECEIVED


def test_a_malformed_digest_is_refused_before_anything_is_asked(tmp_path: Path) -> None:
    models, asked = fetcher(tmp_path, None)
    with pytest.raises(InvalidModelFile):
        models.ensure(["../../etc/passwd"])
    assert asked == []
