"""Hypernet files a standalone worker lacks: asked of the bot, checked against their sha256, then stored.

Why here and like this: workers on other machines do not share the bot's model store unless the owner mounts it
(then every file is simply there).  Otherwise the worker asks the bot of the running batch for the canonical file
(``FetchModel``); the bot puts a :class:`engine.protocol.ModelBlob` under ``P:blob:<sha256>`` and the worker accepts
it only if it is the model asked for and its bytes hash to the ``content_sha256`` the bot stated — anything else
is refused, never written.  (The store key is the hash of the file as uploaded, A1111's hash; the canonical file
made from it has other bytes, so the bot states their hash.)  The files are our canonical safetensors
(:mod:`engine.hypernet.canonical`), read by the cache with safetensors only: nothing fetched is ever unpickled.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from engine.codec import CodecError, decode
from engine.errors import InvalidModelFile
from engine.protocol import ModelBlob
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
            raw = self._receive(digest, self._timeout_s)
            if raw is None:
                raise InvalidModelFile(NOT_RECEIVED)
            _write_atomically(path, _checked(raw, digest))


def _checked(raw: bytes, digest: str) -> bytes:
    """The file's bytes from a published blob, if it is the model asked for and its bytes hash as stated."""
    try:
        blob = decode(raw)
    except CodecError as exc:
        log.error("refused hypernet %s: the blob cannot be read (%s)", digest[:12], exc)
        raise InvalidModelFile(HASH_MISMATCH) from None
    if not isinstance(blob, ModelBlob) or blob.sha256 != digest:
        log.error("refused hypernet %s: the blob holds another model", digest[:12])
        raise InvalidModelFile(HASH_MISMATCH)
    if hashlib.sha256(blob.data).hexdigest() != blob.content_sha256:
        log.error("refused hypernet %s: the bytes received do not hash to the stated sha256", digest[:12])
        raise InvalidModelFile(HASH_MISMATCH)
    return blob.data


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
