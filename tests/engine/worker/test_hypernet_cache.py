"""The byte-bounded LRU of loaded hypernets, with a recording loader (the cache is torch-free by design)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.errors import InvalidModelFile
from engine.worker.hypernet_cache import HypernetCache, store_path


@dataclass
class Net:
    path: Path
    nbytes: int


def make_store(tmp_path: Path, *sizes: int) -> list[str]:
    digests = []
    for i, size in enumerate(sizes):
        digest = f"{i:064x}"
        (tmp_path / f"{digest}.safetensors").write_bytes(size.to_bytes(4, "little"))
        digests.append(digest)
    return digests


def loader(calls: list[Path]):
    def load(path: Path) -> Net:
        calls.append(path)
        return Net(path, int.from_bytes(path.read_bytes(), "little"))
    return load


def test_loads_once_and_evicts_least_recently_used(tmp_path):
    a, b, c = make_store(tmp_path, 40, 40, 40)
    calls: list[Path] = []
    cache = HypernetCache(tmp_path, 100, loader(calls))
    cache.get_many([a])
    cache.get_many([b])
    cache.get_many([a])  # a is now the most recent
    assert len(calls) == 2 and cache.hits == 1
    cache.get_many([c])  # 120 > 100: b (least recent) goes
    assert cache.names() == (a, c) and cache.nbytes == 80
    cache.get_many([b])
    assert len(calls) == 4


def test_a_batch_keeps_everything_it_needs_even_over_the_cap(tmp_path):
    a, b, c = make_store(tmp_path, 60, 60, 60)
    cache = HypernetCache(tmp_path, 100, loader([]))
    got = cache.get_many([a, b])
    assert set(got) == {a, b} and cache.nbytes == 120  # both needed now
    cache.get_many([c])
    assert cache.names() == (c,)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "0" * 63, "0" * 64 + "/x", "", "g" * 64])
def test_only_hex_digests_become_paths(tmp_path, bad):
    cache = HypernetCache(tmp_path, 100, loader([]))
    with pytest.raises(InvalidModelFile, match="malformed"):
        cache.get_many([bad])
    with pytest.raises(InvalidModelFile):
        store_path(tmp_path, bad)


def test_missing_and_unreadable_files_are_invalid_model_files(tmp_path):
    (digest,) = make_store(tmp_path, 10)

    def broken(path: Path) -> Net:
        raise ValueError("not a canonical file")

    with pytest.raises(InvalidModelFile, match="no longer installed"):
        HypernetCache(tmp_path, 100, loader([])).get_many(["f" * 64])
    with pytest.raises(InvalidModelFile, match="could not be read"):
        HypernetCache(tmp_path, 100, broken).get_many([digest])
