"""Loaded hypernetworks (and LoRAs: one cache per kind) kept on the device, bounded in bytes, least recently used out.

Why: loading and moving a hypernet to the GPU costs far more than a UNet step, and popular ones
are used again and again; but VRAM is finite, so the cache is capped in bytes rather than count.

Files come only from ``<store_dir>/<sha256>.safetensors`` with ``sha256`` checked to be exactly 64
lower-case hex characters: no user text ever becomes a path.  The loader is injected (the worker
passes ``engine.hypernet.load_canonical`` plus a move to the device), which keeps this module free
of torch and testable on its own.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from engine.errors import InvalidModelFile

_SHA256 = re.compile(r"[0-9a-f]{64}")


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


T = TypeVar("T", bound=Sized)


def store_path(store_dir: str | Path, sha256: str) -> Path:
    """The only way a hypernet file path is made: a validated digest inside the store folder."""
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise InvalidModelFile("A hypernetwork reference is malformed (not a sha256 digest).")
    return Path(store_dir) / f"{sha256}.safetensors"


class HypernetCache(Generic[T]):
    """LRU of loaded hypernets keyed by sha256, evicting until the byte total fits ``max_bytes``.

    Entries needed by the batch being prepared are never evicted for each other: ``get_many`` loads
    all of them first, then trims older entries.  One batch may therefore exceed the cap briefly; the
    excess goes as soon as the next batch no longer needs it.
    """

    def __init__(self, store_dir: str | Path, max_bytes: int, loader: Callable[[Path], T], *,
                 kind: str = "hypernetwork") -> None:
        self._kind = kind  # what the files are, for the user's message ("A LoRA used by this request ...")
        self._store_dir = Path(store_dir)
        self._max_bytes = max_bytes
        self._loader = loader
        self._entries: OrderedDict[str, T] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get_many(self, digests: Iterable[str]) -> Mapping[str, T]:
        """Return every requested hypernet (loading missing ones), marking them most recently used."""
        wanted = list(dict.fromkeys(digests))
        paths = {d: store_path(self._store_dir, d) for d in wanted}  # validate all before loading any
        out: dict[str, T] = {}
        for digest in wanted:
            net = self._entries.get(digest)
            if net is None:
                self.misses += 1
                net = self._load(paths[digest])
                self._entries[digest] = net
            else:
                self.hits += 1
            self._entries.move_to_end(digest)
            out[digest] = net
        self._trim(keep=set(wanted))
        return out

    def _load(self, path: Path) -> T:
        if not path.is_file():
            raise InvalidModelFile(f"A {self._kind} used by this request is no longer installed.")
        try:
            return self._loader(path)
        except InvalidModelFile:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidModelFile(f"A {self._kind} used by this request could not be read.") from exc

    def _trim(self, keep: set[str]) -> None:
        for digest in list(self._entries):
            if self.nbytes <= self._max_bytes:
                return
            if digest not in keep:
                del self._entries[digest]

    @property
    def nbytes(self) -> int:
        return sum(int(n.nbytes) for n in self._entries.values())

    def names(self) -> tuple[str, ...]:
        """Cached digests, least recently used first."""
        return tuple(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def __contains__(self, digest: object) -> bool:
        return digest in self._entries

    def __len__(self) -> int:
        return len(self._entries)
