"""Safe intake of hypernetwork files from strangers: check, parse in a sandbox, store canonically by sha256.

Why this module exists: a ``.pt`` file is a pickle, and unpickling runs code.  Intake is the only place that
reads user files, and it does so in steps that each refuse with a one-line reason (:class:`IntakeRefused`):

1. size cap and empty file, before anything else (a file over the cap is still named when a bounded look
   says what it is: "this is a Stable Diffusion checkpoint (2 GiB)");
2. **one snapshot**: the source (bytes, or a file the caller opened once) is copied into a private temp folder
   while its sha256 is computed; every later step reads that copy through the same open file, so nothing
   swapped in at the source meanwhile can be checked, hashed and installed as three different files;
3. identify it (:mod:`engine.intake.identify`): a LoRA, an embedding, a checkpoint, a web page... is refused
   with its own message; then the container checks in pure Python, bounded (:mod:`engine.intake.containers`);
4. parse in a short-lived child (:mod:`engine.intake.sandbox` via :mod:`engine.intake.children`), which writes
   the canonical safetensors file; the parent copies it into a file of its own;
5. for pickled input, re-validate that copy in a *second*, fresh child that never sees the pickle, and take the
   reported facts only from it (``.safetensors`` input has no code path, so its one child is trusted);
6. move it to ``<store_dir>/<sha256 of the original file>.safetensors`` with ``os.replace``; the temp folder
   is deleted in every case.

The store key is the sha256 of the file as uploaded (A1111's and civitai's hash: its first 10 hex digits are
the "AutoV2" short hash users see), not of the canonical file, whose header order is not deterministic.  The
same file added twice is one stored model (``already_stored``).  Torch-free, so the bot process can import it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from engine.intake.base import IntakeRefused, MiB, clean_text, human_size
from engine.intake.children import IntakeLimits, run_sandbox
from engine.intake.containers import check_legacy_pickle, check_torch_zip
from engine.intake.identify import identify, refusal
from engine.intake.kinds import Container, FileIdentity, FileKind
from engine.names import is_valid_model_name

__all__ = ["UNET_WIDTHS", "IntakeLimits", "IntakeResult", "Source", "display_name", "file_sha256", "ingest_bytes",
           "ingest_file", "open_regular", "precheck", "purge_temp"]

log = logging.getLogger(__name__)

# Context widths an SD UNet feeds to attention k/v: self-attention 320/640/1280 (SDXL refiner 384/768/1536),
# cross-attention 768 (SD1), 1024 (SD2), 1280 (SDXL refiner), 2048 (SDXL).
UNET_WIDTHS = frozenset({320, 384, 640, 768, 1024, 1280, 1536, 2048})
_CHUNK = 4 * MiB
_CANONICAL = "canonical.safetensors"

#: What intake reads: the bytes of an upload, a path (opened once here), or a file the caller opened once.
Source = bytes | bytearray | Path | IO[bytes]


@dataclass(frozen=True)
class IntakeResult:
    """A validated hypernetwork, stored as ``<store_dir>/<sha256>.safetensors``; the bot records these facts."""

    sha256: str  # of the original file; names the stored canonical file
    file_name: str  # the uploaded name, for display only (never a path)
    file_size: int  # bytes of the original file
    container: Container
    sizes: tuple[int, ...]
    layer_structure: tuple[float, ...]
    activation: str  # A1111 name; "linear" when the file has none
    base_model: str | None  # sd_checkpoint_name, else the sd_checkpoint short hash, from the file's metadata
    suggested_name: str | None  # the file stem when it is a valid model name (engine.names), else None
    nbytes: int  # weight bytes once loaded (fp32)
    already_stored: bool = False
    warnings: tuple[str, ...] = ()  # oddities an admin should know about (e.g. batch-dependent activations)

    @property
    def short_hash(self) -> str:
        """A1111's/civitai's 10-digit short hash of the original file."""
        return self.sha256[:10]


# ------------------------------------------------------------------------------------------------ files, names

def display_name(filename: str) -> str:
    """The uploaded name reduced to something safe to show: last path part, :func:`clean_text`, at most 200 chars."""
    base = re.split(r"[/\\]", filename or "")[-1]
    return clean_text(base, 200).strip() or "unnamed"


def _stem(display_name: str) -> str:
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
def _opened(source: Source) -> Iterator[tuple[IO[bytes], int]]:
    """``(open file, size)``; a path is opened here (once) and closed afterwards, bytes are read in place."""
    if isinstance(source, bytes | bytearray):
        yield io.BytesIO(source), len(source)
    elif isinstance(source, Path):
        with open_regular(source) as f:
            yield f, os.fstat(f.fileno()).st_size
    else:
        yield source, os.fstat(source.fileno()).st_size


def _too_large(f: IO[bytes], size: int, limits: IntakeLimits) -> IntakeRefused:
    """Over the cap: said with what the file is when a bounded look can tell (a checkpoint, a LoRA...)."""
    identity = identify(f, size)
    if identity.kind not in (FileKind.TORCH_PICKLE, FileKind.UNKNOWN, FileKind.DAMAGED,
                                                      FileKind.HYPERNETWORK):
        return IntakeRefused(refusal(identity) or "", identity)
    return IntakeRefused(f"the file is {human_size(size)}, larger than the {human_size(limits.max_bytes)} limit "
                         "(intake.max_file_mb); hypernetworks are rarely over 100 MiB, so check that it is one")


def _new_file(path: Path, mode: int) -> IO[bytes]:
    return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode), "w+b")


def _snapshot(source: IO[bytes], dest: Path, limits: IntakeLimits) -> tuple[IO[bytes], str, int]:
    """Copy the source into a new private file while hashing it; ``(the copy, open and rewound, sha256, size)``."""
    h = hashlib.sha256()
    copy = _new_file(dest, 0o600)
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


def _copy_out(child_dir: Path, dest: Path, limit: int) -> IO[bytes]:
    """The child's canonical file copied into a file of the parent's own (the child may be another user)."""
    try:
        src = open_regular(child_dir / _CANONICAL, follow_links=False)
    except IntakeRefused:
        raise IntakeRefused("the intake sandbox wrote no result; this is a problem on our side, the log has the "
                            "details") from None
    own = _new_file(dest, 0o644)
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


# ----------------------------------------------------------------------------------------------------- public API

def ingest_file(source: Source, *, filename: str, store_dir: Path, limits: IntakeLimits) -> IntakeResult:
    """Synchronous intake (CLI, folder scan, worker threads).  See the module docstring for the steps.

    ``source``: the bytes of an upload, a path (opened once here), or a file the caller opened once (read from its
    start; not closed here).
    """
    display = display_name(filename)
    try:
        return _ingest(source, display=display, store_dir=Path(store_dir), limits=limits)
    except IntakeRefused as e:
        log.info("intake refused %s: %s", display, clean_text(e, 400))
        raise


async def ingest_bytes(data: Source, *, filename: str, store_dir: Path, limits: IntakeLimits) -> IntakeResult:
    """Async intake for the bot: runs :func:`ingest_file` in a thread (the children do the heavy work).

    Cancelling the await does not stop a running child early; it ends at the latest after
    ``limits.sandbox_wall_s`` and its temp files are removed.
    """
    return await asyncio.to_thread(ingest_file, data, filename=filename, store_dir=store_dir, limits=limits)


def _ingest(source: Source, *, display: str, store_dir: Path, limits: IntakeLimits) -> IntakeResult:
    with _opened(source) as (f, size):
        if size == 0:
            raise IntakeRefused(refusal(FileIdentity(FileKind.EMPTY, 0)) or "", FileIdentity(FileKind.EMPTY, 0))
        if size > limits.max_bytes:
            raise _too_large(f, size, limits)
        store_dir = store_dir.resolve()
        store_dir.mkdir(parents=True, exist_ok=True)
        work_dir = Path(tempfile.mkdtemp(prefix=".intake-", dir=store_dir))
        try:
            snapshot, sha256, size = _snapshot(f, work_dir / "source", limits)
            with snapshot:
                return _checked_and_stored(snapshot, sha256, size, display=display, store_dir=store_dir,
                                           work_dir=work_dir, limits=limits)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)


def precheck(f: IO[bytes], size: int) -> Container:
    """The steps in this process, bounded and executing nothing: what the file is (refused unless it may be a
    hypernetwork), then its container's structure.  Returns the container for the sandbox."""
    identity = identify(f, size)
    message = refusal(identity)
    if message is not None or identity.container is None:
        raise IntakeRefused(message or "the file is not a model file we know; check that you picked the hypernetwork "
                            "file itself", identity)
    if identity.container == "pt":
        check_torch_zip(f, size)
    elif identity.container == "pt-legacy":
        check_legacy_pickle(f, size)
    return identity.container


def _checked_and_stored(snapshot: IO[bytes], sha256: str, size: int, *, display: str, store_dir: Path, work_dir: Path,
                        limits: IntakeLimits) -> IntakeResult:
    container = precheck(snapshot, size)

    def result(summary: dict[str, Any], already_stored: bool) -> IntakeResult:
        return _result_from_summary(summary, sha256=sha256, display=display, size=size, container=container,
                                    already_stored=already_stored)

    final = store_dir / f"{sha256}.safetensors"
    if final.is_file():
        try:
            with open_regular(final, follow_links=False) as stored:
                summary = _verify(stored, work_dir, limits, weight_cap=size)
            log.info("intake: %s is already stored as %s", display, final.name)
            return result(summary, already_stored=True)
        except IntakeRefused as e:
            log.warning("stored file %s failed re-validation (%s); replacing it", final.name, clean_text(e, 300))
    with _child_dir(work_dir, "convert", limits) as child_dir:
        summary = run_sandbox(["convert", "--format", container, "--weight-cap", str(size)], stdin=snapshot,
                              work_dir=child_dir, limits=limits, fsize_bytes=size + 16 * MiB, file_size=size,
                              container=container)
        canonical = _copy_out(child_dir, work_dir / _CANONICAL, size + 16 * MiB)
    with canonical:
        if container != "safetensors":  # a pickle was parsed: trust only a fresh child's reading of the result
            summary = _verify(canonical, work_dir, limits, weight_cap=size)
    os.replace(work_dir / _CANONICAL, final)
    log.info("intake: stored %s (%s, %s) as %s", display, container, human_size(size), final.name)
    return result(summary, already_stored=False)


def _reachable(folder: str, uid: int, gid: int) -> bool:
    """Whether user ``uid:gid`` (no other groups) may pass through every folder on the way to ``folder``."""
    path = os.path.realpath(folder)
    while True:
        try:
            st = os.stat(path)
        except OSError:
            return False
        bit = 0o100 if st.st_uid == uid else 0o010 if st.st_gid == gid else 0o001
        if not st.st_mode & bit:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def _children_parent(work_dir: Path, limits: IntakeLimits) -> Path:
    """Where the children's folders go: the work folder, or when the child changes user (we run as root), a temp
    folder that user can reach by its full path (the safetensors writer resolves it; the store may be closed)."""
    if os.geteuid() != 0:
        return work_dir
    for candidate in dict.fromkeys((tempfile.gettempdir(), "/tmp", "/var/tmp")):
        if _reachable(candidate, limits.sandbox_uid, limits.sandbox_gid):
            return Path(candidate)
    raise IntakeRefused(f"the intake sandbox's user (uid {limits.sandbox_uid}) cannot reach any temp folder, so no "
                        "file can be checked now; the bot's owner should make /tmp reachable (chmod 1777 /tmp)")


@contextmanager
def _child_dir(work_dir: Path, name: str, limits: IntakeLimits) -> Iterator[Path]:
    """A fresh folder for one child, removed afterwards (see :func:`_children_parent` for where)."""
    parent = _children_parent(work_dir, limits)
    path = Path(tempfile.mkdtemp(prefix=f"hypercord-intake-{name}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _verify(canonical: IO[bytes], work_dir: Path, limits: IntakeLimits, *, weight_cap: int) -> dict[str, Any]:
    """Re-read a canonical file in a fresh child that never saw the pickle; its summary is what we trust."""
    length = os.fstat(canonical.fileno()).st_size
    with _child_dir(work_dir, "verify", limits) as child_dir:
        return run_sandbox(["verify", "--weight-cap", str(weight_cap)], stdin=canonical, work_dir=child_dir,
                           limits=limits, fsize_bytes=length + 1 * MiB, file_size=length, container="safetensors")


def _result_from_summary(summary: dict[str, Any], *, sha256: str, display: str, size: int, container: Container,
                         already_stored: bool) -> IntakeResult:
    """Build the result from the verifier's summary, checking every type (it crossed a process boundary)."""
    try:
        sizes = tuple(int(s) for s in summary["sizes"] if type(s) is int)
        layers = tuple(float(x) for x in summary["layer_structure"] if type(x) in (int, float))
        activation, base_model, nbytes = summary["activation"], summary["base_model"], summary["nbytes"]
        warnings = tuple(clean_text(w, 300) for w in summary.get("warnings", []))
        if len(sizes) != len(summary["sizes"]) or not isinstance(activation, str) or type(nbytes) is not int \
                or not (base_model is None or isinstance(base_model, str)):
            raise TypeError
    except (KeyError, TypeError, ValueError):
        raise IntakeRefused("the intake sandbox gave a malformed answer; this is a problem on our side, the log has "
                            "the details") from None
    stem = _stem(display)
    suggested = stem if is_valid_model_name(stem) else None
    return IntakeResult(sha256=sha256, file_name=display, file_size=size, container=container, sizes=sizes,
                        layer_structure=layers, activation=clean_text(activation, 40),
                        base_model=None if base_model is None else clean_text(base_model, 200),
                        suggested_name=suggested, nbytes=nbytes, already_stored=already_stored, warnings=warnings)


def purge_temp(store_dir: Path) -> int:
    """Remove intake temp folders left by a crashed process (call at start-up); returns how many."""
    count = 0
    for entry in Path(store_dir).glob(".intake-*"):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            count += 1
    return count
