"""The files one intake works on: the uploaded name made safe, the one snapshot of the source, the hash, the copy
of the child's result.

Why apart from the steps (:mod:`engine.intake.ingest`): these are the file-level rules every step relies on —
a path is opened once and only if it is a regular file (a FIFO would block, a device never end), the snapshot is
private and hashed while it is written, a child's output is copied into a file of our own and capped — and the
folder scan (:mod:`engine.intake.folder`) opens its files the same way.  Torch-free.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from engine.intake.base import IntakeRefused, MiB, clean_text, human_size
from engine.intake.children import IntakeLimits
from engine.intake.kinds import Container
from engine.intake.safetensors_header import header_length

__all__ = [
    "CANONICAL",
    "Source",
    "copy_out",
    "display_name",
    "file_sha256",
    "lora_short_hash",
    "new_file",
    "open_regular",
    "opened",
    "snapshot",
    "stem",
]

_CHUNK = 4 * MiB
CANONICAL = "canonical.safetensors"

#: What intake reads: the bytes of an upload, a path (opened once here), or a file the caller opened once.
Source = bytes | bytearray | Path | IO[bytes]


def display_name(filename: str) -> str:
    """The uploaded name reduced to something safe to show: last path part, :func:`clean_text`, at most 200 chars."""
    base = re.split(r"[/\\]", filename or "")[-1]
    return clean_text(base, 200).strip() or "unnamed"


def stem(display_name: str) -> str:
    return display_name.rsplit(".", 1)[0] if "." in display_name.lstrip(".") else display_name


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    f.seek(0)
    while chunk := f.read(_CHUNK):
        yield chunk


def file_sha256(source: Path | IO[bytes]) -> str:
    """The sha256 of a file (a path, or an open file read from its start), in chunks."""
    h = hashlib.sha256()
    if isinstance(source, Path):
        with open_regular(source) as f:
            for chunk in _chunks(f):
                h.update(chunk)
    else:
        for chunk in _chunks(source):
            h.update(chunk)
    return h.hexdigest()


def open_regular(path: Path, *, follow_links: bool = True) -> IO[bytes]:
    """``path`` opened for reading once it is known to be a regular file (a FIFO would block, a device never end)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        raise IntakeRefused(f"the file could not be opened ({clean_text(error.strerror or error, 80)})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IntakeRefused("it is not a regular file, so it cannot be a model file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


@contextmanager
def opened(source: Source) -> Iterator[tuple[IO[bytes], int]]:
    """``(open file, size)``; a path is opened here (once) and closed afterwards, bytes are read in place."""
    if isinstance(source, bytes | bytearray):
        yield io.BytesIO(source), len(source)
    elif isinstance(source, Path):
        with open_regular(source) as f:
            yield f, os.fstat(f.fileno()).st_size
    else:
        yield source, os.fstat(source.fileno()).st_size


def lora_short_hash(f: IO[bytes], sha256: str, container: Container) -> str:
    """A1111's ``Lora hashes`` entry for a LoRA file: for ``.safetensors`` the "addnet" hash (sha256 of the bytes
    after the 8-byte length and the JSON header, so editing the metadata keeps it), else the file's sha256; the
    first 12 hex digits."""
    if container != "safetensors":
        return sha256[:12]
    f.seek(0)
    length = header_length(f.read(9))
    if length is None:
        raise IntakeRefused("the file's safetensors header cannot be read; download it again")
    f.seek(8 + length)
    h = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    f.seek(0)
    return h.hexdigest()[:12]


def new_file(path: Path, mode: int) -> IO[bytes]:
    return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode), "w+b")


def snapshot(source: IO[bytes], dest: Path, limits: IntakeLimits) -> tuple[IO[bytes], str, int]:
    """Copy the source into a new private file while hashing it; ``(the copy, open and rewound, sha256, size)``."""
    h = hashlib.sha256()
    copy = new_file(dest, 0o600)
    size = 0
    for chunk in _chunks(source):
        size += len(chunk)
        if size > limits.max_bytes:
            copy.close()
            raise IntakeRefused(f"the file grew past the {human_size(limits.max_bytes)} limit while it was read; add "
                                "it again once it is complete")
        h.update(chunk)
        copy.write(chunk)
    copy.flush()
    copy.seek(0)
    return copy, h.hexdigest(), size


def copy_out(child_dir: Path, dest: Path, limit: int) -> IO[bytes]:
    """The child's canonical file copied into a file of the parent's own (the child may be another user)."""
    try:
        src = open_regular(child_dir / CANONICAL, follow_links=False)
    except IntakeRefused:
        raise IntakeRefused("the intake sandbox wrote no result; this is a problem on our side, the log has the "
                            "details") from None
    own = new_file(dest, 0o644)
    with src:
        copied = 0
        for chunk in _chunks(src):
            copied += len(chunk)
            if copied > limit:
                own.close()
                raise IntakeRefused("the converted file came out larger than the original; the file is damaged or "
                                    "hostile, refused")
            own.write(chunk)
    own.flush()
    own.seek(0)
    return own
