"""Safe intake of hypernetwork files from strangers: check, parse in a sandbox, store canonically by sha256.

Why this module exists: a ``.pt`` file is a pickle, and unpickling runs code.  Intake is the only place that
reads user files, and it does so in steps that each refuse with a one-line reason (:class:`IntakeRefused`):

1. size cap and empty file (before anything else), sha256 of the raw bytes;
2. sniff the container (PyTorch zip, legacy PyTorch pickle, safetensors) and check its structure in this
   process, in pure Python (:mod:`engine.intake.containers`): zip members a ``torch.save`` writes and nothing
   else, stored not compressed, checksums; the pickle's global references scanned *without executing
   anything* against a short allow-list;
3. parse in a short-lived child process (``python -m engine.intake.sandbox``, see there for the limits:
   memory, CPU, file size, open files, no network, empty environment) with ``weights_only=True``, validate
   against the A1111 spec plus intake policy (UNet widths only, known activation, finite, sane size) and
   write the canonical safetensors file to a private temp folder;
4. for pickled input, re-validate that canonical file in a *second*, fresh child that never sees the pickle,
   and take the reported facts only from it (``.safetensors`` input has no code path, so its one child is
   trusted);
5. move it to ``<store_dir>/<sha256 of the original file>.safetensors`` with ``os.replace``.

The store key is the sha256 of the file as uploaded (A1111's and civitai's hash: its first 10 hex digits are
the "AutoV2" short hash users see), not of the canonical file, whose header order is not deterministic.  The
same file added twice is one stored model (``already_stored``).  This module stays torch-free so the bot
process can import it; torch only ever runs in the children.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.intake.base import IntakeRefused, MiB, human_size, quote_text
from engine.intake.containers import (
    ALLOWED_GLOBALS,
    Container,
    check_legacy_pickle,
    check_safetensors_header,
    check_torch_zip,
    pickle_globals,
    sniff,
)
from engine.names import is_valid_model_name

__all__ = [
    "ALLOWED_GLOBALS", "UNET_WIDTHS", "Container", "IntakeLimits", "IntakeRefused", "IntakeResult", "MiB",
    "check_legacy_pickle", "check_safetensors_header", "check_torch_zip", "display_name", "file_sha256", "human_size",
    "ingest_bytes", "ingest_file", "pickle_globals", "purge_temp", "quote_text", "run_sandbox", "sniff",
]

log = logging.getLogger(__name__)

# Context widths an SD UNet feeds to attention k/v: self-attention 320/640/1280 (SDXL refiner 384/768/1536),
# cross-attention 768 (SD1), 1024 (SD2), 1280 (SDXL refiner), 2048 (SDXL).
UNET_WIDTHS = frozenset({320, 384, 640, 768, 1024, 1280, 1536, 2048})
_ROOT = Path(__file__).resolve().parents[2]  # folder holding the `engine` package: the children's cwd


@dataclass(frozen=True)
class IntakeLimits:
    """Caps for one intake.  Build from settings: ``IntakeLimits.from_settings(settings.intake)``."""

    max_bytes: int = 256 * MiB  # size of the uploaded file
    sandbox_memory_bytes: int = 2048 * MiB  # RLIMIT_AS of each child (torch alone maps ~700 MiB)
    sandbox_cpu_s: int = 60  # RLIMIT_CPU of each child
    sandbox_wall_s: float = 120.0  # the parent kills a child that runs longer

    @classmethod
    def from_settings(cls, intake: Any) -> IntakeLimits:
        """From ``bot.config.IntakeSettings`` (duck-typed: the engine never imports ``bot``)."""
        cpu = int(intake.sandbox_cpu_s)
        return cls(max_bytes=int(intake.max_file_mb) * MiB, sandbox_memory_bytes=int(intake.sandbox_memory_mb) * MiB,
                   sandbox_cpu_s=cpu, sandbox_wall_s=float(max(2 * cpu, cpu + 30)))


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


# ---------------------------------------------------------------------------------------------------------- names

def display_name(filename: str) -> str:
    """The uploaded name reduced to something safe to show: last path part, printable, at most 200 chars."""
    base = re.split(r"[/\\]", filename or "")[-1]
    base = "".join(c for c in base if c.isprintable())[:200]
    return base or "unnamed"


def _stem(display_name: str) -> str:
    return display_name.rsplit(".", 1)[0] if "." in display_name.lstrip(".") else display_name


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in chunks (model files can be hundreds of MiB)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------- the children

def _child_env() -> dict[str, str]:
    """An environment with nothing of the bot's: no token, no proxies, no HOME, one thread."""
    return {"PATH": os.defpath, "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}


def run_sandbox(args: list[str], *, stdin_path: Path | None, work_dir: Path, limits: IntakeLimits,
                fsize_bytes: int) -> dict[str, Any]:
    """Run ``python -m engine.intake.sandbox <args>`` under ``limits``; return its JSON summary or refuse.

    The child's stdout and stderr go to files in ``work_dir`` (so RLIMIT_FSIZE bounds them too); the child
    answers with one JSON line on stdout.
    """
    cmd = [sys.executable, "-E", "-s", "-m", "engine.intake.sandbox", *args, "--workdir", str(work_dir),
           "--memory-bytes", str(limits.sandbox_memory_bytes), "--cpu-s", str(limits.sandbox_cpu_s),
           "--fsize-bytes", str(fsize_bytes)]
    out_path, err_path = work_dir / "child.out", work_dir / "child.err"
    stdin = stdin_path.open("rb") if stdin_path is not None else subprocess.DEVNULL
    timed_out = False
    try:
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(cmd, stdin=stdin, stdout=out, stderr=err, cwd=_ROOT, env=_child_env(),
                                    close_fds=True, start_new_session=True)
            try:
                rc = proc.wait(timeout=limits.sandbox_wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.kill()
                rc = proc.wait()
    finally:
        if not isinstance(stdin, int):
            stdin.close()
    answer = _read_answer(out_path)
    if timed_out:
        raise IntakeRefused(f"reading the file took longer than {limits.sandbox_wall_s:g} s; refused")
    if rc == 0 and answer.get("ok") is True and isinstance(answer.get("summary"), dict):
        return answer["summary"]
    if isinstance(answer.get("refused"), str):
        message = " ".join(answer["refused"].split())[:400]
        raise IntakeRefused(message)
    if rc == -signal.SIGXCPU:
        raise IntakeRefused(f"reading the file used more than the {limits.sandbox_cpu_s} s CPU limit; refused")
    if rc == -signal.SIGKILL:
        raise IntakeRefused(f"reading the file was killed, probably for needing more than the "
                            f"{limits.sandbox_memory_bytes // MiB} MiB memory limit; refused")
    tail = err_path.read_bytes()[-2000:].decode("utf-8", "replace") if err_path.exists() else ""
    log.warning("intake sandbox failed (exit %s): %s", rc, tail)
    raise IntakeRefused(f"the file could not be read safely (the sandbox stopped with exit status {rc})")


def _read_answer(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()[: 1 * MiB]
        answer = json.loads(data.decode("utf-8").strip().splitlines()[-1]) if data.strip() else {}
    except (OSError, ValueError, IndexError):
        return {}
    return answer if isinstance(answer, dict) else {}


def _result_from_summary(summary: dict[str, Any], *, sha256: str, display: str, size: int, container: Container,
                         already_stored: bool) -> IntakeResult:
    """Build the result from the verifier's summary, checking every type (it crossed a process boundary)."""
    try:
        sizes = tuple(int(s) for s in summary["sizes"] if type(s) is int)
        layers = tuple(float(x) for x in summary["layer_structure"] if type(x) in (int, float))
        activation, base_model, nbytes = summary["activation"], summary["base_model"], summary["nbytes"]
        warnings = tuple(str(w)[:300] for w in summary.get("warnings", []))
        if len(sizes) != len(summary["sizes"]) or not isinstance(activation, str) or type(nbytes) is not int \
                or not (base_model is None or isinstance(base_model, str)):
            raise TypeError
    except (KeyError, TypeError, ValueError):
        raise IntakeRefused("the file could not be read safely (the sandbox gave a malformed answer)") from None
    stem = _stem(display)
    suggested = stem if is_valid_model_name(stem) else None
    return IntakeResult(sha256=sha256, file_name=display, file_size=size, container=container, sizes=sizes,
                        layer_structure=layers, activation=activation, base_model=base_model,
                        suggested_name=suggested, nbytes=nbytes, already_stored=already_stored, warnings=warnings)


# ----------------------------------------------------------------------------------------------------- public API

def ingest_file(source: bytes | Path, *, filename: str, store_dir: Path, limits: IntakeLimits) -> IntakeResult:
    """Synchronous intake (CLI, folder scan, worker threads).  See the module docstring for the steps."""
    display = display_name(filename)
    try:
        return _ingest(source, display=display, store_dir=Path(store_dir), limits=limits)
    except IntakeRefused as e:
        log.info("intake refused %r: %s", display, e)
        raise


async def ingest_bytes(data: bytes | Path, *, filename: str, store_dir: Path, limits: IntakeLimits) -> IntakeResult:
    """Async intake for the bot: runs :func:`ingest_file` in a thread (the children do the heavy work).

    Cancelling the await does not stop a running child early; it ends at the latest after
    ``limits.sandbox_wall_s`` and its temp files are removed.
    """
    return await asyncio.to_thread(ingest_file, data, filename=filename, store_dir=store_dir, limits=limits)


def _ingest(source: bytes | Path, *, display: str, store_dir: Path, limits: IntakeLimits) -> IntakeResult:
    size = len(source) if isinstance(source, bytes | bytearray) else Path(source).stat().st_size
    if size > limits.max_bytes:
        raise IntakeRefused(f"the file is larger than the {human_size(limits.max_bytes)} limit")
    if size == 0:
        raise IntakeRefused("the file is empty")
    store_dir = Path(store_dir).resolve()  # the sandbox child runs in another cwd: give it absolute paths
    store_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=".intake-", dir=store_dir))
    try:
        if isinstance(source, bytes | bytearray):
            src = work_dir / "source"
            src.write_bytes(source)
        else:
            src = Path(source)
        sha256 = file_sha256(src)
        with src.open("rb") as f:
            head = f.read(16)
        container = sniff(head)
        if container == "pt":
            check_torch_zip(src, size)
        elif container == "pt-legacy":
            check_legacy_pickle(src)
        else:
            check_safetensors_header(src, size)
        final = store_dir / f"{sha256}.safetensors"
        if final.exists():
            try:
                summary = _verify(final, work_dir, limits, weight_cap=size)
                log.info("intake: %s is already stored as %s", display, final.name)
                return _result_from_summary(summary, sha256=sha256, display=display, size=size, container=container,
                                            already_stored=True)
            except IntakeRefused as e:
                log.warning("stored file %s failed re-validation (%s); replacing it", final.name, e)
        out = work_dir / "canonical.safetensors"
        summary = run_sandbox(["convert", "--format", container, "--out", str(out), "--weight-cap", str(size)],
                    stdin_path=src, work_dir=work_dir, limits=limits, fsize_bytes=size + 16 * MiB)
        if not out.is_file():
            raise IntakeRefused("the file could not be read safely (the sandbox wrote no result)")
        if container != "safetensors":  # a pickle was parsed: trust only a fresh child's reading of the result
            summary = _verify(out, work_dir, limits, weight_cap=size)
        os.chmod(out, 0o644)
        os.replace(out, final)
        log.info("intake: stored %s (%s, %s) as %s", display, container, human_size(size), final.name)
        return _result_from_summary(summary, sha256=sha256, display=display, size=size, container=container,
                                    already_stored=False)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _verify(canonical: Path, work_dir: Path, limits: IntakeLimits, *, weight_cap: int) -> dict[str, Any]:
    """Re-read a canonical file in a fresh child that never saw the pickle; its summary is what we trust."""
    return run_sandbox(["verify", "--weight-cap", str(weight_cap)], stdin_path=canonical, work_dir=work_dir,
                       limits=limits, fsize_bytes=1 * MiB)


def purge_temp(store_dir: Path) -> int:
    """Remove intake temp folders left by a crashed process (call at start-up); returns how many."""
    count = 0
    for entry in Path(store_dir).glob(".intake-*"):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            count += 1
    return count
