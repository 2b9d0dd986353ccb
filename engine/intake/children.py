"""Running the intake sandbox child from the bot's side: command line, limits, and every way it can end.

Why a module of its own: a child can answer (a summary or a refusal), be killed by our wall-clock limit, die of
its CPU or file-size limit, be killed by the kernel for memory, crash in PyTorch's native code, or fail to start;
each ending is one line for the admin that says what happened and what to do, and whatever the child printed
reaches the log only through :func:`engine.intake.base.clean_text`.  The child reads its input from the open file
it is given on stdin, never from a path.  Torch-free.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from engine.intake.base import IntakeRefused, MiB, clean_text
from engine.intake.kinds import Container, FileIdentity, FileKind, kind_article

__all__ = ["IntakeLimits", "run_sandbox"]

log = logging.getLogger("engine.intake")

_ROOT = Path(__file__).resolve().parents[2]  # folder holding the `engine` package: the children's cwd
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE}
_FAMILIES = ("sd1", "sd2", "sdxl")


@dataclass(frozen=True)
class IntakeLimits:
    """Caps for one intake.  Build from settings: ``IntakeLimits.from_settings(settings.intake)``.

    ``sandbox_uid`` / ``sandbox_gid``: the user the child becomes when the bot runs as root (``nobody``).
    """

    max_bytes: int = 256 * MiB  # size of the uploaded file
    sandbox_memory_bytes: int = 2048 * MiB  # RLIMIT_AS of each child (torch alone maps ~700 MiB)
    sandbox_cpu_s: int = 60  # RLIMIT_CPU of each child
    sandbox_wall_s: float = 120.0  # the parent kills a child that runs longer
    sandbox_uid: int = 65534
    sandbox_gid: int = 65534

    def __post_init__(self) -> None:
        if self.sandbox_uid <= 0 or self.sandbox_gid <= 0:
            raise ValueError("the intake sandbox must not run as root: sandbox_uid and sandbox_gid must be above 0")

    @classmethod
    def from_settings(cls, intake: Any) -> IntakeLimits:
        """From ``bot.config.IntakeSettings`` (duck-typed: the engine never imports ``bot``)."""
        cpu = int(intake.sandbox_cpu_s)
        return cls(max_bytes=int(intake.max_file_mb) * MiB, sandbox_memory_bytes=int(intake.sandbox_memory_mb) * MiB,
                   sandbox_cpu_s=cpu, sandbox_wall_s=float(max(2 * cpu, cpu + 30)),
                   sandbox_uid=int(getattr(intake, "sandbox_uid", 65534)),
                   sandbox_gid=int(getattr(intake, "sandbox_gid", 65534)))


def _child_env() -> dict[str, str]:
    """An environment with nothing of the bot's: no token, no proxies, no HOME, one thread."""
    return {"PATH": os.defpath, "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}


def _read_answer(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()[: 1 * MiB]
        answer = json.loads(data.decode("utf-8").strip().splitlines()[-1]) if data.strip() else {}
    except (OSError, ValueError, IndexError, RecursionError):
        return {}
    return answer if isinstance(answer, dict) else {}


def _identity(answer: dict[str, Any], file_size: int, container: Container | None) -> FileIdentity | None:
    """The file's kind as the child saw it; only values from our own enum and tables are taken."""
    try:
        kind = FileKind(str(answer.get("kind")))
    except ValueError:
        return None
    family = answer.get("family") if answer.get("family") in _FAMILIES else None
    return FileIdentity(kind, file_size, container, label=clean_text(answer.get("label") or "", 60), family=family)


def _ending(rc: int, answer: dict[str, Any], limits: IntakeLimits, kind: FileKind = FileKind.HYPERNETWORK) -> str:
    """The admin's line for a child that did not answer with a summary or a refusal of its own."""
    one = kind_article(kind)
    if rc == 3 or answer.get("memory") is True:
        return (f"reading the file needed more than the {limits.sandbox_memory_bytes // MiB} MiB memory limit "
                f"(intake.sandbox_memory_mb); {one} needs far less, so the file is damaged or hostile")
    if rc == -signal.SIGXCPU:
        return (f"reading the file used more than the {limits.sandbox_cpu_s} s CPU limit (intake.sandbox_cpu_s); "
                f"{one} needs a few seconds, so the file is damaged or hostile")
    if rc == -signal.SIGKILL:
        return (f"reading the file was stopped by the system, most likely for using too much memory; {one} needs "
                "far less, so the file is damaged or hostile")
    if rc == -signal.SIGXFSZ:
        return "reading the file produced more data than the file holds; it is damaged or hostile, refused"
    if rc < 0 and -rc in _CRASH_SIGNALS:
        return (f"reading the file crashed PyTorch's loader ({signal.Signals(-rc).name}); the file is damaged or "
                "hostile, do not load it anywhere else either")
    return (f"the intake sandbox stopped unexpectedly (exit status {rc}); this is a problem on our side, the log has "
            "the details")


def _rewind(f: IO[bytes]) -> None:
    """Put the open file's OS offset at 0 with an empty buffer (a seek inside the buffer would not move the fd)."""
    f.seek(0, os.SEEK_END)
    f.seek(0)


def run_sandbox(args: list[str], *, stdin: IO[bytes] | Path | None, work_dir: Path, limits: IntakeLimits,
                fsize_bytes: int, file_size: int = 0, container: Container | None = None,
                kind: FileKind = FileKind.HYPERNETWORK) -> dict[str, Any]:
    """Run ``python -m engine.intake.sandbox <args>`` in ``work_dir``; return its JSON summary or refuse.

    ``stdin`` is the open input file (read from its start) or a path to open; the child answers with one JSON line
    on stdout.  Its stdout and stderr go to files in ``work_dir`` (so RLIMIT_FSIZE bounds them too).
    ``file_size`` / ``container`` describe the input for the refusal's :class:`FileIdentity`; ``kind`` is what the
    file is being checked as (for the wording of a limit's message).
    """
    cmd = [sys.executable, "-E", "-s", "-m", "engine.intake.sandbox", *args, "--workdir", str(work_dir),
           "--memory-bytes", str(limits.sandbox_memory_bytes), "--cpu-s", str(limits.sandbox_cpu_s),
           "--fsize-bytes", str(fsize_bytes), "--uid", str(limits.sandbox_uid), "--gid", str(limits.sandbox_gid)]
    out_path, err_path = work_dir / "child.out", work_dir / "child.err"
    source = stdin.open("rb") if isinstance(stdin, Path) else stdin
    timed_out = False
    try:
        if source is not None:
            _rewind(source)
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(cmd, stdin=source if source is not None else subprocess.DEVNULL, stdout=out,
                                    stderr=err, cwd=_ROOT, env=_child_env(), close_fds=True, start_new_session=True)
            try:
                rc = proc.wait(timeout=limits.sandbox_wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.kill()
                rc = proc.wait()
    finally:
        if isinstance(stdin, Path) and source is not None:
            source.close()
        elif source is not None:
            _rewind(source)  # the child moved the shared file offset under the buffer
    answer = _read_answer(out_path)
    if timed_out:
        raise IntakeRefused(f"reading the file took longer than {limits.sandbox_wall_s:g} s; {kind_article(kind)} takes "
                            "a few seconds, so the file is damaged or hostile (or the server is overloaded: try again "
                            "later)")
    if rc == 0 and answer.get("ok") is True and isinstance(answer.get("summary"), dict):
        return answer["summary"]
    _log_failure(rc, err_path)
    if isinstance(answer.get("refused"), str) and rc in (2, 4):
        raise IntakeRefused(clean_text(answer["refused"], 400), _identity(answer, file_size, container))
    raise IntakeRefused(_ending(rc, answer, limits, kind))


def _log_failure(rc: int, err_path: Path) -> None:
    try:
        tail = err_path.read_bytes()[-2000:].decode("utf-8", "replace")
    except OSError:
        tail = ""
    if rc not in (0, 2):
        log.warning("intake sandbox ended with status %s: %s", rc, clean_text(tail, 2000))
    elif tail.strip():
        log.debug("intake sandbox said: %s", clean_text(tail, 2000))

