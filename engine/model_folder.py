"""A1111's drop-in folder: hypernetwork files the bot owner puts in ``models/hypernetworks/`` (subfolders too).

Why through intake like uploads: the owner may have downloaded those files from anywhere, so they get the same
sandboxed parsing and validation; only the name comes from the owner's choice of file stem (A1111's rule),
still checked with :func:`engine.intake.check_model_name`.  :func:`scan_folder` lists candidates cheaply (no
file is read), :func:`ingest_folder` ingests the new or changed ones; the bot remembers ``(size, mtime)`` per
relative path and passes it back as ``known`` so a rescan only touches what changed.

Rules: ``.pt`` and ``.safetensors`` (lower-case, as A1111 lists ``*.pt`` on Linux); hidden files and folders
are skipped; symlinked folders are not entered; a symlinked file counts only if it resolves inside the folder.
Entries are sorted case-insensitively by relative path, A1111's order (for duplicate stems the last one wins).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.intake import IntakeLimits, IntakeRefused, IntakeResult, check_model_name, ingest_file

log = logging.getLogger(__name__)

EXTENSIONS = (".pt", ".safetensors")


@dataclass(frozen=True)
class FolderEntry:
    """One candidate file; ``relpath`` uses ``/`` and is relative to the scanned folder."""

    relpath: str
    stem: str
    size: int
    mtime: float


@dataclass(frozen=True)
class FolderIngest:
    """The outcome for one new or changed file: a result, or a one-line ``error`` (bad name, refused file)."""

    entry: FolderEntry
    result: IntakeResult | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.entry.stem


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def scan_folder(folder: Path) -> list[FolderEntry]:
    """List the hypernetwork files under ``folder`` (missing folder: empty list)."""
    root = Path(folder).resolve()
    if not root.is_dir():
        return []
    entries: list[FolderEntry] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or not name.endswith(EXTENSIONS):
                continue
            path = Path(dirpath) / name
            if path.is_symlink():
                target = path.resolve()
                if not _inside(target, root):
                    log.warning("model folder: skipping %s, a link that points outside the folder", path)
                    continue
            try:
                st = path.stat()
            except OSError:
                continue  # vanished or a dangling link
            if not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            stem = name[: -len(next(e for e in EXTENSIONS if name.endswith(e)))]
            entries.append(FolderEntry(relpath=rel, stem=stem, size=st.st_size, mtime=st.st_mtime))
    entries.sort(key=lambda e: e.relpath.lower())
    return entries


def ingest_folder(folder: Path, store_dir: Path, limits: IntakeLimits,
                  known: Mapping[str, tuple[int, float]] | None = None) -> list[FolderIngest]:
    """Ingest every file whose ``(size, mtime)`` differs from ``known[relpath]``; one outcome per such file.

    Synchronous (it runs sandbox children one after another): call it from a thread in the bot.
    """
    known = known or {}
    root = Path(folder).resolve()
    out: list[FolderIngest] = []
    for entry in scan_folder(root):
        if known.get(entry.relpath) == (entry.size, entry.mtime):
            continue
        try:
            check_model_name(entry.stem)
            result = ingest_file(root / entry.relpath, filename=entry.relpath.rsplit("/", 1)[-1],
                                 store_dir=store_dir, limits=limits)
        except IntakeRefused as e:
            log.warning("model folder: %s refused: %s", entry.relpath, e)
            out.append(FolderIngest(entry, error=str(e)))
        except OSError as e:
            out.append(FolderIngest(entry, error=f"the file could not be read ({e.strerror or type(e).__name__})"))
        else:
            out.append(FolderIngest(entry, result=result))
    return out
