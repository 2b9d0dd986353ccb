"""Hypernet files a standalone worker lacks: asked of the bot, checked against their sha256, then stored.

Why here and like this: workers on other machines do not share the bot's model store unless the owner mounts it
(then every file is simply there).  Otherwise the worker asks the bot of the running batch for the canonical file
(``FetchModel``); the bot puts its bytes under ``P:blob:<sha256>`` and the worker accepts them only if their
sha256 is the digest it asked for — a file that does not match is refused, never written.  The files are our
canonical safetensors (:mod:`engine.hypernet.canonical`); nothing fetched is ever unpickled.  Torch-free.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from engine.errors import InvalidModelFile
from engine.worker.hypernet_cache import store_path

__all__ = ["HASH_MISMATCH", "NOT_RECEIVED", "ModelFetcher"]

log = logging.getLogger("engine.worker")

HASH_MISMATCH = ("The hypernetwork file this worker received does not match its checksum, so it was refused. "
                 "Ask the bot owner to check the model store.")
NOT_RECEIVED = "This worker could not get a hypernetwork used by this request from the bot in time. Please try again."


class ModelFetcher:
    """Makes sure ``<store_dir>/<sha256>.safetensors`` exists before the hypernet cache reads it."""

    def __init__(self, store_dir: str | Path, request: Callable[[str], None],
                 receive: Callable[[str, float], bytes | None], timeout_s: float = 60.0) -> None:
        self._store_dir = Path(store_dir)
        self._request, self._receive, self._timeout_s = request, receive, timeout_s

    def ensure(self, digests: Iterable[str]) -> None:
        """Fetch every missing file; raises ``InvalidModelFile`` (the job fails ``bad_request``) if one cannot be had."""
        for digest in dict.fromkeys(digests):
            path = store_path(self._store_dir, digest)  # validates the digest before anything is asked
            if path.is_file():
                continue
            log.info("hypernet %s is not in %s: asking the bot for it", digest[:12], self._store_dir)
            self._request(digest)
            data = self._receive(digest, self._timeout_s)
            if data is None:
                raise InvalidModelFile(NOT_RECEIVED)
            if hashlib.sha256(data).hexdigest() != digest:
                log.error("refused hypernet %s: the bytes received hash to something else", digest[:12])
                raise InvalidModelFile(HASH_MISMATCH)
            _write_atomically(path, data)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fetch-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
