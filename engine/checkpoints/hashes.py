"""A1111's checkpoint hashes, computed in chunks and cached, so files can be matched against what others recorded.

Why two hashes: A1111 1.8 writes ``Model hash: <10 hex>`` into every image's infotext and ``sd_checkpoint`` into
every hypernetwork it trains — the first 10 hex digits of the file's sha256 ("AutoV2", A1111's ``shorthash``).
Files from 2022 recorded the old hash instead ("AutoV1", A1111's ``model_hash``): the first 8 hex digits of the
sha256 of the 64 KiB at offset 1 MiB.  A hypernet's training checkpoint is found by comparing its recorded value
with both (:func:`recorded_hash_matches`).

Why a cache: the sha256 of a 2-7 GB checkpoint takes seconds.  :class:`HashCache` keeps results in one JSON file,
keyed by the resolved path and valid while the file's size and modification time (ns) are unchanged — the same
rule A1111's ``cache.json`` uses.  Writes are atomic (temp file + rename); a damaged cache file is ignored and
rewritten.  Two processes writing at once can lose one entry, which is then recomputed once.  Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AUTOV1_LENGTH", "AUTOV1_OFFSET", "FileHashes", "HashCache", "autov1_hash", "checkpoint_title",
           "file_hashes", "file_sha256", "recorded_hash_matches", "split_checkpoint_title"]

AUTOV1_OFFSET = 0x100000  # 1 MiB
AUTOV1_LENGTH = 0x10000  # 64 KiB
_CHUNK = 8 << 20
_CACHE_VERSION = 1
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True, slots=True)
class FileHashes:
    """A file's full sha256 (64 hex digits) and its AutoV1 hash (8 hex digits)."""

    sha256: str
    autov1: str

    @property
    def autov2(self) -> str:
        """A1111's short hash: the first 10 hex digits of the sha256 (``Model hash`` in the infotext)."""
        return self.sha256[:10]


def file_sha256(path: Path) -> str:
    """The sha256 of the whole file, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def autov1_hash(path: Path) -> str:
    """A1111's old hash: sha256 of the (up to) 64 KiB at offset 1 MiB, first 8 hex digits.

    As in A1111, a file shorter than 1 MiB hashes the empty string (``e3b0c442``) and a shorter tail what is there.
    """
    with path.open("rb") as f:
        f.seek(AUTOV1_OFFSET)
        return hashlib.sha256(f.read(AUTOV1_LENGTH)).hexdigest()[:8]


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


class HashCache:
    """Hashes of files by resolved path, in the JSON file ``path``, valid while size and mtime are unchanged."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _entries(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION or not isinstance(data.get("files"), dict):
            return {}
        return data["files"]

    def lookup(self, file: Path) -> FileHashes | None:
        """The cached hashes of ``file`` if its size and mtime still match, else None."""
        entry = self._entries().get(str(file.resolve()))
        if not isinstance(entry, dict) or [entry.get("size"), entry.get("mtime_ns")] != list(_stamp(file)):
            return None
        sha256, autov1 = entry.get("sha256"), entry.get("autov1")
        if not (isinstance(sha256, str) and isinstance(autov1, str)):
            return None
        return FileHashes(sha256, autov1)

    def store(self, file: Path, hashes: FileHashes, stamp: tuple[int, int]) -> None:
        """Remember ``hashes`` for ``file`` as it was at ``stamp`` (size, mtime_ns), atomically."""
        entries = self._entries()
        entries[str(file.resolve())] = {"size": stamp[0], "mtime_ns": stamp[1], "sha256": hashes.sha256,
                                        "autov1": hashes.autov1}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hashes-", suffix=".json", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": _CACHE_VERSION, "files": entries}, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def file_hashes(path: Path, cache: HashCache | None = None) -> FileHashes:
    """Both hashes of ``path``, from ``cache`` when it knows the file as it is now, else computed (and cached).

    A file that changes while it is being hashed is not cached (its hashes describe neither version reliably).
    """
    if cache is not None and (found := cache.lookup(path)) is not None:
        return found
    before = _stamp(path)
    hashes = FileHashes(file_sha256(path), autov1_hash(path))
    if cache is not None and _stamp(path) == before:
        cache.store(path, hashes, before)
    return hashes


def recorded_hash_matches(recorded: str | None, hashes: FileHashes) -> bool:
    """Whether a hash someone recorded (a hypernet's ``sd_checkpoint``, an infotext's ``Model hash``) names this file.

    10 hex digits compare with the AutoV2 short hash, 8 with the AutoV1 hash, 64 with the full sha256; case and
    surrounding spaces are ignored; anything else (None, other lengths, not hex) matches nothing.
    """
    value = (recorded or "").strip().lower()
    if not _HEX.fullmatch(value):
        return False
    expected = {10: hashes.autov2, 8: hashes.autov1, 64: hashes.sha256}.get(len(value))
    return expected == value


_TITLE = re.compile(r"(?P<name>.*\S)\s*\[(?P<hash>[0-9a-fA-F]{8}|[0-9a-fA-F]{10}|[0-9a-fA-F]{64})\]")


def checkpoint_title(name: str | None, recorded_hash: str | None) -> str | None:
    """What a hypernetwork records of its training checkpoint, in one string: A1111's checkpoint title
    ``name [hash]`` when it has both (the name survives a renamed file, the hash a renamed checkpoint), else the one
    it has, else None."""
    name, recorded_hash = (name or "").strip(), (recorded_hash or "").strip()
    if name and recorded_hash:
        return f"{name} [{recorded_hash}]"
    return name or recorded_hash or None


def split_checkpoint_title(title: str | None) -> tuple[str | None, str | None]:
    """``(name, hash)`` of :func:`checkpoint_title`'s string; a string without ``[hash]`` may be either, so it is
    returned as both."""
    text = (title or "").strip()
    if not text:
        return None, None
    found = _TITLE.fullmatch(text)
    if found is None:
        return text, text
    return found["name"], found["hash"]
