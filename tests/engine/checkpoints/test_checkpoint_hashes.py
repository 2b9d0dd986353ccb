"""A1111's AutoV2 / AutoV1 hashes of a file, the cache that saves re-hashing, and matching a recorded hash."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from engine.checkpoints import FileHashes, HashCache, autov1_hash, file_hashes, recorded_hash_matches
from engine.checkpoints import hashes as hashes_module

MiB = 1 << 20


def _file(path: Path, size: int, seed: int = 1) -> Path:
    """``size`` pseudo-random bytes (so every window's hash is its own)."""
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def test_hashes_are_a1111s(tmp_path: Path) -> None:
    path = _file(tmp_path / "model.safetensors", 3 * MiB + 123)
    data = path.read_bytes()
    found = file_hashes(path)
    assert found.sha256 == hashlib.sha256(data).hexdigest()
    assert found.autov2 == found.sha256[:10]
    assert found.autov1 == hashlib.sha256(data[MiB:MiB + 64 * 1024]).hexdigest()[:8]


def test_autov1_of_short_files_is_what_a1111_computes(tmp_path: Path) -> None:
    # Under 1 MiB A1111 hashes nothing (the empty string); between 1 MiB and 1 MiB + 64 KiB what is left.
    assert autov1_hash(_file(tmp_path / "small", 1000)) == hashlib.sha256(b"").hexdigest()[:8] == "e3b0c442"
    tail = _file(tmp_path / "tail", MiB + 100).read_bytes()[MiB:]
    assert autov1_hash(tmp_path / "tail") == hashlib.sha256(tail).hexdigest()[:8]


def test_the_cache_answers_until_size_or_mtime_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _file(tmp_path / "model.safetensors", 2 * MiB)
    cache = HashCache(tmp_path / "cache" / "hashes.json")
    first = file_hashes(path, cache)
    calls: list[Path] = []
    real = hashes_module.file_sha256
    monkeypatch.setattr(hashes_module, "file_sha256", lambda p: calls.append(p) or real(p))
    assert file_hashes(path, HashCache(cache.path)) == first and calls == []  # a new cache object reads the file
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert file_hashes(path, cache) == first and calls == [path]  # same bytes, new mtime: hashed again
    _file(path, 2 * MiB, seed=2)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    changed = file_hashes(path, cache)
    assert changed.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() != first.sha256
    entry = json.loads(cache.path.read_text(encoding="utf-8"))["files"][str(path.resolve())]
    assert (entry["sha256"], entry["size"]) == (changed.sha256, 2 * MiB)


def test_a_damaged_cache_is_ignored_and_rewritten(tmp_path: Path) -> None:
    path = _file(tmp_path / "model.safetensors", 10)
    cache = HashCache(tmp_path / "hashes.json")
    cache.path.write_text("{not json", encoding="utf-8")
    assert file_hashes(path, cache).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert cache.lookup(path) == file_hashes(path)


# Some file's hashes in A1111's forms (the values only need to be consistent with each other).
HASHES = FileHashes(sha256="6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa", autov1="7460a6fa")


@pytest.mark.parametrize(("recorded", "matches"), [
    ("6ce0161689", True),  # A1111 1.x: AutoV2 (hypernets' sd_checkpoint, infotext Model hash)
    (" 6CE0161689 ", True),
    ("7460a6fa", True),  # 2022 files: AutoV1
    (HASHES.sha256, True),
    ("6ce01616", False),  # 8 digits are AutoV1, not a sha256 prefix
    ("6ce0161688", False),
    ("6ce016168", False),
    ("", False),
    (None, False),
    ("zzzzzzzzzz", False),
])
def test_recorded_hashes_match_by_their_length(recorded: str | None, matches: bool) -> None:
    assert recorded_hash_matches(recorded, HASHES) is matches
