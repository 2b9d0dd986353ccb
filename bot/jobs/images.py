"""The folder that keeps every finished job's PNGs for ``/show`` and ``/history``.

Why a class of its own: three places touch these files (a finished job saves them, ``/show`` and Info read them,
``/history delete`` removes them) and all three must agree on one rule: paths stored in the database are relative
to this folder and a path that would leave it is refused.  A full or failing disk costs only the copy for
``/show``, never the result the user is waiting for.  The disk work is synchronous; callers run it in a thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ImageStore", "disk_problem"]

log = logging.getLogger("bot.jobs")


def disk_problem(error: OSError) -> str:
    """A short reason for a failed disk write: "the disk is full", or the OS's own words."""
    return "the disk is full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else error.strerror or str(error)


class ImageStore:
    """``<root>/<job id>/<n>.png``; stored paths are relative to ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, relative: str) -> Path:
        """The file of a stored image path, refusing anything that would leave the images folder (ValueError)."""
        root = self.root.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"image path escapes the images folder: {relative!r}")
        return path

    def save(self, job_id: int, pngs: Sequence[bytes]) -> list[str]:
        """Write the job's PNGs atomically (temp file + rename); returns their relative paths.

        Raises OSError (after removing its temp files) when the disk refuses."""
        folder = self.root / str(job_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            paths = []
            for i, png in enumerate(pngs):
                tmp = folder / f"{i}.png.tmp"
                tmp.write_bytes(png)
                tmp.replace(folder / f"{i}.png")
                paths.append(f"{job_id}/{i}.png")
            return paths
        except OSError:
            with contextlib.suppress(OSError):
                for leftover in folder.glob("*.tmp"):
                    leftover.unlink()
            raise

    def read(self, relative_paths: Sequence[str]) -> list[bytes]:
        """The stored PNGs (OSError or ValueError when one is gone or its path is bad)."""
        return [self.path(p).read_bytes() for p in relative_paths]

    def delete(self, relative_paths: Sequence[str]) -> int:
        """Remove these images (and their job folders once empty); returns how many files went."""
        removed = 0
        root = self.root.resolve()
        for rel in relative_paths:
            try:
                path = self.path(rel)
                path.unlink()
                removed += 1
                if path.parent != root and not any(path.parent.iterdir()):
                    path.parent.rmdir()
            except (OSError, ValueError):
                log.warning("could not delete image %r", rel)
        return removed
