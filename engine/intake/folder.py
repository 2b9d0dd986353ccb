"""A1111's drop-in folder: hypernetwork files the bot owner puts in ``models/hypernetworks/`` (subfolders too).

Why a listing of its own: the owner may have downloaded those files from anywhere, so each goes through the same
intake as an upload (the bot's folder sync does that, :mod:`bot.models.folder_sync`); only the name comes from the
owner's choice of file stem (A1111's rule), still checked with :func:`engine.names.check_model_name`.
:func:`scan_folder` lists candidates cheaply: no file is read, only names, sizes and modification times, which
the folder sync compares with what it installed before so a rescan only touches what changed.

Rules: ``.pt`` and ``.safetensors`` (lower-case, as A1111 lists ``*.pt`` on Linux); hidden files and folders
are skipped; symlinked folders are not entered; a symlinked file counts only if it resolves inside the folder.
Entries are sorted case-insensitively by relative path, A1111's order (for duplicate stems the last one wins).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["EXTENSIONS", "FolderEntry", "scan_folder"]

EXTENSIONS = (".pt", ".safetensors")


@dataclass(frozen=True)
class FolderEntry:
    """One candidate file; ``relpath`` uses ``/`` and is relative to the scanned folder."""

    relpath: str
    stem: str
    size: int
    mtime: float


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
