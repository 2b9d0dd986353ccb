"""Safe intake of model files from strangers (hypernetworks, LoRAs, embeddings): check, parse in a sandbox, store
canonically by sha256.

Why this module exists: a ``.pt`` file is a pickle, and unpickling runs code.  Intake is the only place that
reads user files, and it does so in steps that each refuse with a one-line reason (:class:`IntakeRefused`):

1. size cap and empty file, before anything else (a file over the cap is still named when a bounded look
   says what it is: "this is a Stable Diffusion checkpoint (2 GiB)");
2. **one snapshot**: the source (bytes, or a file the caller opened once) is copied into a private temp folder
   while its sha256 is computed; every later step reads that copy through the same open file, so nothing
   swapped in at the source meanwhile can be checked, hashed and installed as three different files;
3. identify it (:mod:`engine.intake.identify`): a file of another kind than the one asked for (a LoRA given as a
   hypernetwork), a checkpoint, a web page... is refused with its own message; then the container checks in pure
   Python, bounded (:mod:`engine.intake.containers`);
4. parse in a short-lived child (:mod:`engine.intake.sandbox` via :mod:`engine.intake.children`), which validates
   the file as the kind asked for and writes the canonical safetensors file; the parent copies it into a file of
   its own;
5. for pickled input, re-validate that copy in a *second*, fresh child that never sees the pickle, and take the
   reported facts only from it (``.safetensors`` input has no code path, so its one child is trusted);
6. move it to ``<store_dir>/<sha256 of the original file>.safetensors`` with ``os.replace``; the temp folder
   is deleted in every case.

The store key is the sha256 of the file as uploaded (A1111's and civitai's hash: its first 10 hex digits are
the "AutoV2" short hash users see), not of the canonical file, whose header order is not deterministic.  The
same file added twice is one stored model (``already_stored``).  A LoRA's infotext hash (A1111's ``Lora hashes``)
is computed here from the snapshot too (:func:`lora_short_hash`).  Torch-free, so the bot process can import it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from engine.intake.base import IntakeRefused, MiB, clean_text, human_size
from engine.intake.children import IntakeLimits, run_sandbox
from engine.intake.containers import check_legacy_pickle, check_torch_zip
from engine.intake.facts import EmbeddingFacts, HypernetFacts, LoraFacts, ModelFacts, facts_from_summary
from engine.intake.files import (
    CANONICAL,
    Source,
    copy_out,
    display_name,
    file_sha256,
    lora_short_hash,
    open_regular,
    opened,
    snapshot,
    stem,
)
from engine.intake.identify import identify, refusal
from engine.intake.kinds import INSTALLABLE, Container, FileIdentity, FileKind, kind_noun
from engine.names import is_valid_model_name

__all__ = ["UNET_WIDTHS", "IntakeLimits", "IntakeResult", "Source", "display_name", "file_sha256", "ingest_bytes",
           "ingest_file", "lora_short_hash", "open_regular", "precheck", "purge_temp"]

log = logging.getLogger(__name__)

# Context widths an SD UNet feeds to attention k/v: self-attention 320/640/1280 (SDXL refiner 384/768/1536),
# cross-attention 768 (SD1), 1024 (SD2), 1280 (SDXL refiner), 2048 (SDXL).
UNET_WIDTHS = frozenset({320, 384, 640, 768, 1024, 1280, 1536, 2048})
# Said when a file is over the size cap, per kind: how large such files usually are.
_USUAL_SIZE = {FileKind.HYPERNETWORK: "hypernetworks are rarely over 100 MiB",
               FileKind.LORA: "LoRA files for SD 1.x and 2.x are rarely over 200 MiB",
               FileKind.EMBEDDING: "embeddings are a few KiB"}


@dataclass(frozen=True)
class IntakeResult:
    """A validated model, stored as ``<store_dir>/<sha256>.safetensors``; the bot records these facts.

    ``facts`` is the kind's own description (:class:`~engine.intake.facts.HypernetFacts`, ``LoraFacts``,
    ``EmbeddingFacts``); ``sizes`` / ``layer_structure`` / ``activation`` read a hypernetwork's.
    """

    sha256: str  # of the original file; names the stored canonical file
    file_name: str  # the uploaded name, for display only (never a path)
    file_size: int  # bytes of the original file
    container: Container
    facts: ModelFacts
    base_model: str | None  # what the file says it was trained on (A1111's sd_checkpoint_name, kohya's ss_sd_model_name)
    suggested_name: str | None  # the file stem when it is a valid model name (engine.names), else None
    nbytes: int  # weight bytes once loaded (fp32)
    already_stored: bool = False
    warnings: tuple[str, ...] = ()  # oddities an admin should know about (e.g. batch-dependent activations)

    @property
    def kind(self) -> FileKind:
        return self.facts.kind

    @property
    def short_hash(self) -> str:
        """A1111's/civitai's 10-digit short hash of the original file."""
        return self.sha256[:10]

    def _hypernet(self) -> HypernetFacts:
        if not isinstance(self.facts, HypernetFacts):
            raise AttributeError(f"a {kind_noun(self.kind)} has no hypernetwork layers")
        return self.facts

    @property
    def sizes(self) -> tuple[int, ...]:
        return self._hypernet().sizes

    @property
    def layer_structure(self) -> tuple[float, ...]:
        return self._hypernet().layer_structure

    @property
    def activation(self) -> str:
        return self._hypernet().activation


def _too_large(f: IO[bytes], size: int, limits: IntakeLimits, kind: FileKind) -> IntakeRefused:
    """Over the cap: said with what the file is when a bounded look can tell (a checkpoint, a LoRA...)."""
    identity = identify(f, size)
    message = refusal(identity, kind)
    if identity.kind not in (FileKind.TORCH_PICKLE, FileKind.UNKNOWN, FileKind.DAMAGED, kind) or \
            (identity.kind is kind and message is not None):
        return IntakeRefused(message or "", identity)
    return IntakeRefused(f"the file is {human_size(size)}, larger than the {human_size(limits.max_bytes)} limit "
                         f"(intake.max_file_mb); {_USUAL_SIZE[kind]}, so check that it is one")


# ----------------------------------------------------------------------------------------------------- public API

def ingest_file(source: Source, *, filename: str, store_dir: Path, limits: IntakeLimits,
                kind: FileKind = FileKind.HYPERNETWORK) -> IntakeResult:
    """Synchronous intake (CLI, folder scan, worker threads).  See the module docstring for the steps.

    ``source``: the bytes of an upload, a path (opened once here), or a file the caller opened once (read from its
    start; not closed here).  ``kind``: what the admin is adding (:data:`engine.intake.kinds.INSTALLABLE`); a file
    of another kind is refused with what it is.
    """
    if kind not in INSTALLABLE:
        raise ValueError(f"{kind} cannot be installed")
    display = display_name(filename)
    try:
        return _ingest(source, display=display, store_dir=Path(store_dir), limits=limits, kind=kind)
    except IntakeRefused as e:
        log.info("intake refused %s: %s", display, clean_text(e, 400))
        raise


async def ingest_bytes(data: Source, *, filename: str, store_dir: Path, limits: IntakeLimits,
                       kind: FileKind = FileKind.HYPERNETWORK) -> IntakeResult:
    """Async intake for the bot: runs :func:`ingest_file` in a thread (the children do the heavy work).

    Cancelling the await does not stop a running child early; it ends at the latest after
    ``limits.sandbox_wall_s`` and its temp files are removed.
    """
    return await asyncio.to_thread(ingest_file, data, filename=filename, store_dir=store_dir, limits=limits, kind=kind)


def _ingest(source: Source, *, display: str, store_dir: Path, limits: IntakeLimits, kind: FileKind) -> IntakeResult:
    with opened(source) as (f, size):
        if size == 0:
            raise IntakeRefused(refusal(FileIdentity(FileKind.EMPTY, 0)) or "", FileIdentity(FileKind.EMPTY, 0))
        if size > limits.max_bytes:
            raise _too_large(f, size, limits, kind)
        store_dir = store_dir.resolve()
        store_dir.mkdir(parents=True, exist_ok=True)
        work_dir = Path(tempfile.mkdtemp(prefix=".intake-", dir=store_dir))
        try:
            copy, sha256, size = snapshot(f, work_dir / "source", limits)
            with copy:
                return _checked_and_stored(copy, sha256, size, display=display, store_dir=store_dir,
                                           work_dir=work_dir, limits=limits, kind=kind)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)


def precheck(f: IO[bytes], size: int, kind: FileKind = FileKind.HYPERNETWORK) -> Container:
    """The steps in this process, bounded and executing nothing: what the file is (refused unless it may be of
    ``kind``), then its container's structure.  Returns the container for the sandbox."""
    identity = identify(f, size)
    message = refusal(identity, kind)
    if message is not None or identity.container is None:
        raise IntakeRefused(message or f"the file is not a model file we know; check that you picked the "
                            f"{kind_noun(kind)} file itself", identity)
    if identity.container == "pt":
        check_torch_zip(f, size)
    elif identity.container == "pt-legacy":
        check_legacy_pickle(f, size)
    return identity.container


def _checked_and_stored(snapshot: IO[bytes], sha256: str, size: int, *, display: str, store_dir: Path, work_dir: Path,
                        limits: IntakeLimits, kind: FileKind) -> IntakeResult:
    container = precheck(snapshot, size, kind)
    lora_hash = lora_short_hash(snapshot, sha256, container) if kind is FileKind.LORA else None

    def result(summary: dict[str, Any], already_stored: bool) -> IntakeResult:
        return _result_from_summary(summary, kind=kind, sha256=sha256, lora_hash=lora_hash, display=display, size=size,
                                    container=container, already_stored=already_stored)

    final = store_dir / f"{sha256}.safetensors"
    if final.is_file():
        try:
            with open_regular(final, follow_links=False) as stored:
                _refuse_other_kind(stored, kind)
                summary = _verify(stored, work_dir, limits, weight_cap=size, kind=kind)
            log.info("intake: %s is already stored as %s", display, final.name)
            return result(summary, already_stored=True)
        except _OtherKind as e:
            raise IntakeRefused(str(e), e.identity) from None
        except IntakeRefused as e:
            log.warning("stored file %s failed re-validation (%s); replacing it", final.name, clean_text(e, 300))
    with _child_dir(work_dir, "convert", limits) as child_dir:
        summary = run_sandbox(["convert", "--kind", kind.value, "--format", container, "--weight-cap", str(size)],
                              stdin=snapshot, work_dir=child_dir, limits=limits, fsize_bytes=size + 16 * MiB,
                              file_size=size, container=container, kind=kind)
        canonical = copy_out(child_dir, work_dir / CANONICAL, size + 16 * MiB)
    with canonical:
        if container != "safetensors":  # a pickle was parsed: trust only a fresh child's reading of the result
            summary = _verify(canonical, work_dir, limits, weight_cap=size, kind=kind)
    os.replace(work_dir / CANONICAL, final)
    log.info("intake: stored %s (%s, %s) as %s", display, container, human_size(size), final.name)
    return result(summary, already_stored=False)


class _OtherKind(IntakeRefused):
    """The same file is already stored as another kind of model."""


def _refuse_other_kind(stored: IO[bytes], kind: FileKind) -> None:
    """Our canonical copy of this very file says what it is (a LoRA given as an embedding): no child needed."""
    identity = identify(stored, os.fstat(stored.fileno()).st_size)
    if identity.kind in INSTALLABLE and identity.kind is not kind:
        raise _OtherKind(refusal(identity, kind) or "", identity)
    stored.seek(0)


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


def _verify(canonical: IO[bytes], work_dir: Path, limits: IntakeLimits, *, weight_cap: int,
            kind: FileKind) -> dict[str, Any]:
    """Re-read a canonical file in a fresh child that never saw the pickle; its summary is what we trust."""
    length = os.fstat(canonical.fileno()).st_size
    with _child_dir(work_dir, "verify", limits) as child_dir:
        return run_sandbox(["verify", "--kind", kind.value, "--weight-cap", str(weight_cap)], stdin=canonical,
                           work_dir=child_dir, limits=limits, fsize_bytes=length + 1 * MiB, file_size=length,
                           container="safetensors", kind=kind)


def _result_from_summary(summary: dict[str, Any], *, kind: FileKind, sha256: str, lora_hash: str | None, display: str,
                         size: int, container: Container, already_stored: bool) -> IntakeResult:
    """Build the result from the verifier's summary, checking every type (it crossed a process boundary)."""
    try:
        facts = _cleaned(facts_from_summary(kind, summary, sha256=sha256, lora_hash=lora_hash))
        base_model, nbytes = summary["base_model"], summary["nbytes"]
        warnings = tuple(clean_text(w, 300) for w in summary.get("warnings", []))
        if type(nbytes) is not int or not (base_model is None or isinstance(base_model, str)):
            raise TypeError
    except (KeyError, TypeError, ValueError):
        raise IntakeRefused("the intake sandbox gave a malformed answer; this is a problem on our side, the log has "
                            "the details") from None
    name = stem(display)
    suggested = name if is_valid_model_name(name) else None
    return IntakeResult(sha256=sha256, file_name=display, file_size=size, container=container, facts=facts,
                        base_model=None if base_model is None else clean_text(base_model, 200),
                        suggested_name=suggested, nbytes=nbytes, already_stored=already_stored, warnings=warnings)


def _cleaned(facts: ModelFacts) -> ModelFacts:
    """The texts among the facts made safe to show (they came from the file)."""
    if isinstance(facts, HypernetFacts):
        return dataclasses.replace(facts, activation=clean_text(facts.activation, 40))
    if isinstance(facts, LoraFacts):
        return dataclasses.replace(facts, label=clean_text(facts.label, 60),
                                   alias=None if facts.alias is None else clean_text(facts.alias, 100))
    assert isinstance(facts, EmbeddingFacts)
    return facts


def purge_temp(store_dir: Path) -> int:
    """Remove intake temp folders left by a crashed process (call at start-up); returns how many."""
    count = 0
    for entry in Path(store_dir).glob(".intake-*"):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            count += 1
    return count
