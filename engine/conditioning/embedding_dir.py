"""An A1111 embeddings directory → an :class:`EmbeddingSet`.  FOR THE PARITY CHECKER AND THE INTAKE SANDBOX ONLY.

``.pt`` and ``.bin`` files are pickles, opened here with ``torch.load(weights_only=True)``; production code never
calls this and reads only the registry's safetensors (:func:`load_embedding_safetensors`).  The rules are
A1111's (spec section 5): walk recursively following symlinks, read ``.pt``/``.bin``/``.safetensors`` in any case,
ignore other extensions, name each embedding by its file stem.  Where A1111 depends on directory listing order
(two files with the same stem) we walk in sorted order and keep the first; every file not loaded is reported.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.conditioning.embeddings import (
    Embedding,
    EmbeddingSet,
    SkippedEmbedding,
    embedding_from_object,
    load_embedding_safetensors,
)
from engine.conditioning.errors import ConditioningError

__all__ = ["EMBEDDING_EXTENSIONS", "EmbeddingDirectory", "load_embeddings_dir"]

EMBEDDING_EXTENSIONS = (".pt", ".bin", ".safetensors")


@dataclass(frozen=True)
class EmbeddingDirectory:
    embeddings: EmbeddingSet
    skipped: tuple[SkippedEmbedding, ...]


def _files(root: Path) -> list[Path]:
    found, seen_dirs = [], set()
    for folder, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs:  # a symlink loop
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        found += [Path(folder) / name for name in sorted(filenames) if name.lower().endswith(EMBEDDING_EXTENSIONS)]
    return found


def _load_pickle(path: Path, name: str) -> Embedding:
    data = path.read_bytes()
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return embedding_from_object(obj, name, sha256=hashlib.sha256(data).hexdigest())


def load_embeddings_dir(root: str | Path | None) -> EmbeddingDirectory:
    """Every embedding under ``root`` (none when it is None or missing) and the files that were not used."""
    if root is None or not Path(root).is_dir():
        return EmbeddingDirectory(EmbeddingSet(), ())
    loaded: dict[str, Embedding] = {}
    skipped = []
    for path in _files(Path(root)):
        name, extension = os.path.splitext(path.name)
        source = str(path.relative_to(root))
        if name in loaded:
            skipped.append(SkippedEmbedding(name, f"another file already gave the name {name!r}", source))
            continue
        try:
            if path.stat().st_size == 0:
                skipped.append(SkippedEmbedding(name, "empty file", source))
                continue
            if extension.lower() == ".safetensors":
                loaded[name] = load_embedding_safetensors(path, name)
            else:
                loaded[name] = _load_pickle(path, name)
        except Exception as error:  # A1111 skips a file that fails to load, whatever the failure; so do we, saying why
            reason = str(error) if isinstance(error, ConditioningError) else f"{type(error).__name__}: {error}"
            skipped.append(SkippedEmbedding(name, reason[:300], source))
    return EmbeddingDirectory(EmbeddingSet(loaded.values()), tuple(skipped))
