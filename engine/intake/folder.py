"""A1111's drop-in folders: model files the bot owner puts in ``models/hypernetworks/``, ``models/Lora/``,
``models/embeddings/`` (subfolders too).

Why a listing of its own: the owner may have downloaded those files from anywhere, so each goes through the same
intake as an upload (the bot's folder sync does that, :mod:`bot.models.folder_sync`); only the name comes from the
owner's choice of file stem (A1111's rule), still checked with :func:`engine.names.check_model_name`.
:func:`scan_folder` lists candidates cheaply: no file is read, only names, sizes and modification times, which
the folder sync compares with what it installed before so a rescan only touches what changed.

Rules: the kind's extensions (hypernetworks ``.pt`` and ``.safetensors`` in lower case, as A1111 lists ``*.pt`` on
Linux; LoRAs ``.pt``/``.ckpt``/``.safetensors`` and embeddings ``.pt``/``.bin``/``.safetensors`` in any case, as
A1111's own listings compare them); hidden files and folders are skipped; linked folders are not entered; a
linked file counts only if it resolves inside the folder.  What is skipped for a reason the owner should know (a
link pointing outside, a dangling link, a linked folder, something that is not a regular file) is listed in
:attr:`FolderScan.skipped`, never dropped silently.  Entries are sorted case-insensitively by relative path,
A1111's order (for duplicate stems the last one wins).

:func:`open_in_folder` opens one listed file for the whole intake (hash, checks, install read that one open file)
and checks where the *open file* lives, not where the name pointed when listed, so a link re-pointed after the
listing cannot bring in a file from outside.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from engine.intake.base import IntakeRefused, clean_text
from engine.intake.files import open_regular

log = logging.getLogger(__name__)

__all__ = ["EMBEDDING_EXTENSIONS", "EXTENSIONS", "LORA_EXTENSIONS", "FolderEntry", "FolderScan", "open_in_folder",
           "scan_folder"]

EXTENSIONS = (".pt", ".safetensors")  # hypernetworks
LORA_EXTENSIONS = (".pt", ".ckpt", ".safetensors")
EMBEDDING_EXTENSIONS = (".pt", ".bin", ".safetensors")
OUTSIDE = "it is a link that points outside the models folder; move the file itself into the folder"


@dataclass(frozen=True)
class FolderEntry:
    """One candidate file; ``relpath`` uses ``/`` and is relative to the scanned folder."""

    relpath: str
    stem: str
    size: int
    mtime: float


@dataclass
class FolderScan:
    """The candidates, and what was skipped with the reason (``(relpath, reason)``, reason a clause)."""

    entries: list[FolderEntry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _extension(name: str, extensions: tuple[str, ...], any_case: bool) -> str | None:
    """The listed extension ``name`` ends with, or None."""
    compared = name.lower() if any_case else name
    return next((e for e in extensions if compared.endswith(e)), None)


def _candidate(root: str, dirpath: str, name: str, extension: str, scan: FolderScan) -> None:
    path = os.path.join(dirpath, name)
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    if os.path.islink(path):
        target = os.path.realpath(path)
        if not _inside(target, root):
            scan.skipped.append((rel, OUTSIDE))
            return
        if not os.path.exists(target):
            scan.skipped.append((rel, "it is a link to a file that does not exist"))
            return
    try:
        st = os.stat(path)
    except OSError:
        return  # vanished since the listing
    if not os.path.isfile(path):
        scan.skipped.append((rel, "it is not a regular file"))
        return
    stem = name[: -len(extension)]
    scan.entries.append(FolderEntry(relpath=rel, stem=stem, size=st.st_size, mtime=st.st_mtime))


def scan_folder(folder: Path, extensions: tuple[str, ...] = EXTENSIONS, *, any_case: bool = False) -> FolderScan:
    """List the model files under ``folder`` with one of ``extensions`` (lower case; ``any_case``: compared ignoring
    case); a missing folder: nothing."""
    root = os.path.realpath(folder)
    scan = FolderScan()
    if not os.path.isdir(root):
        return scan

    def unreadable(error: OSError) -> None:
        rel = os.path.relpath(error.filename or root, root).replace(os.sep, "/")
        scan.skipped.append((rel, f"the folder could not be read ({clean_text(error.strerror or error, 80)})"))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=unreadable):
        kept = []
        for d in dirnames:
            if d.startswith("."):
                continue
            if os.path.islink(os.path.join(dirpath, d)):
                rel = os.path.relpath(os.path.join(dirpath, d), root).replace(os.sep, "/")
                scan.skipped.append((rel, "it is a link to a folder, which the scan does not enter; move the files "
                                          "into the models folder"))
                continue
            kept.append(d)
        dirnames[:] = kept
        for name in filenames:
            extension = _extension(name, extensions, any_case)
            if not name.startswith(".") and extension is not None:
                _candidate(root, dirpath, name, extension, scan)
    scan.entries.sort(key=lambda e: e.relpath.lower())
    scan.skipped.sort(key=lambda s: s[0].lower())
    return scan


def _real_path(f: IO[bytes], opened_as: str) -> str | None:
    """Where the open file lives: from /proc (exact), else the name's target if it is still the same file."""
    try:
        return os.readlink(f"/proc/self/fd/{f.fileno()}")
    except OSError:
        pass
    target = os.path.realpath(opened_as)
    try:
        st, now = os.fstat(f.fileno()), os.stat(target)
    except OSError:
        return None
    return target if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino) else None


def open_in_folder(folder: Path, relpath: str) -> IO[bytes]:
    """The listed file ``relpath`` opened for reading, once it is known to be a regular file inside ``folder``."""
    root = os.path.realpath(folder)
    path = os.path.join(root, relpath)
    f = open_regular(Path(path))
    real = _real_path(f, path)
    if real is None or not _inside(real, root):
        f.close()
        raise IntakeRefused(OUTSIDE if real is not None else "the file changed while it was opened; run the rescan again")
    return f
