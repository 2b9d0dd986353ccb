"""The intake child process: parse one untrusted model file under tight confinement, then exit.

Run only by :mod:`engine.intake.children` as ``python -E -s -m engine.intake.sandbox MODE --kind KIND ...`` with an
empty environment and the file on stdin (never its path).  Why a fresh interpreter and not a fork of the bot: a fork
would inherit the bot's memory (token included), sockets and threads.  What the child does, in this order:

1. lower its limits (:func:`engine.intake.confine.set_limits`) before anything else;
2. import torch and the code of the kind being added (:mod:`~engine.intake.sandbox.hypernet`,
   :mod:`~engine.intake.sandbox.lora`, :mod:`~engine.intake.sandbox.embedding`) and run each of its code paths once
   on a tiny built-in model, so nothing needs importing after the lock-down (the new user may not be able to read the
   Python installation);
3. lock down (:mod:`engine.intake.confine`): its own work folder, another user when started as root, no network
   namespace, Landlock, the audit hook;
4. ``convert``: ``torch.load(stdin, weights_only=True, map_location="cpu")`` (or a safetensors reader), say what the
   file is when it is not of the kind asked for (:func:`engine.intake.identify.identify_loaded`), the kind's
   validation and the canonical file into the work folder; ``verify``: read a canonical file (stdin) and report
   what it holds; ``check``: report which guards are active, and whether the ``--try-read`` files can be opened
   (before and after the Python-level hooks).

The answer is one JSON line on the original stdout; fd 1 is pointed at stderr first, so nothing a payload prints
can pose as the answer.  Exit 0 = ok, 2 = refused (with a one-line reason), 3 = out of memory, 4 = could not start.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from engine.intake import confine
from engine.intake.base import IntakeRefused, damaged
from engine.intake.kinds import INSTALLABLE, FileIdentity, FileKind
from engine.intake.sandbox import embedding, hypernet, lora

__all__ = ["main"]


@dataclass(frozen=True)
class _KindCode:
    """What the child runs for one kind: warm-up before the lock-down, then convert or verify."""

    warm_up: Callable[[str], None]
    convert: Callable[[Any, int], dict[str, Any]]
    verify: Callable[[int], dict[str, Any]]

    @classmethod
    def of(cls, module: ModuleType) -> _KindCode:
        return cls(module.warm_up, module.convert, module.verify)


_CODE = {FileKind.HYPERNETWORK: _KindCode.of(hypernet), FileKind.LORA: _KindCode.of(lora),
         FileKind.EMBEDDING: _KindCode.of(embedding)}


def _answer(fd: int, payload: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(payload) + "\n").encode())


def _try_reads(paths: list[str]) -> dict[str, str]:
    """``path -> "readable"`` or the error's name, for each path the ``check`` mode was asked to try."""
    found = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                f.read(1)
            found[path] = "readable"
        except OSError as error:
            found[path] = type(error).__name__
    return found


def _probe(confinement: confine.Confinement, os_reads: dict[str, str], paths: list[str]) -> dict[str, Any]:
    """Try each forbidden thing; a guard is active when the attempt raises."""
    def blocked(fn: Any) -> bool:
        try:
            fn()
        except Exception:
            return True
        return False

    import resource

    return {
        **confinement.as_dict(),
        "socket": blocked(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
        "os_system": blocked(lambda: os.system("true")),
        "subprocess": blocked(lambda: subprocess.run(["true"], check=False)),
        "file_write": blocked(lambda: open("sandbox-probe.txt", "w").close()),
        "environment": sorted(os.environ),
        "reads_os_level": os_reads,
        "reads": _try_reads(paths),
        "limits": {name: resource.getrlimit(getattr(resource, name))[0]
                   for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE")},
    }


def _lock_down(args: argparse.Namespace) -> tuple[confine.Confinement, dict[str, str]]:
    confinement = confine.Confinement()
    confinement.uid_dropped = confine.drop_privileges(args.workdir, args.uid, args.gid)
    confinement.network_namespace = confine.leave_network()
    readable = confine.read_roots()
    confinement.no_new_privs, confinement.landlock_abi = confine.restrict_files(readable, ".")
    os_reads = _try_reads(args.try_read) if args.mode == "check" else {}
    confine.install_hooks(os.getcwd(), readable)
    return confinement, os_reads


def _refusal_answer(error: IntakeRefused) -> dict[str, Any]:
    answer: dict[str, Any] = {"ok": False, "refused": str(error)}
    identity: FileIdentity | None = error.identity
    if identity is not None:
        answer.update(kind=identity.kind.value, label=identity.label, family=identity.family)
    return answer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.intake.sandbox")
    parser.add_argument("mode", choices=("convert", "verify", "check"))
    parser.add_argument("--kind", choices=[k.value for k in INSTALLABLE], default=FileKind.HYPERNETWORK.value)
    parser.add_argument("--format", choices=("pt", "pt-legacy", "safetensors"), default="pt")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--weight-cap", type=int, default=1 << 30)
    parser.add_argument("--memory-bytes", type=int, required=True)
    parser.add_argument("--cpu-s", type=int, required=True)
    parser.add_argument("--fsize-bytes", type=int, required=True)
    parser.add_argument("--uid", type=int, default=65534, help="the user to become when started as root")
    parser.add_argument("--gid", type=int, default=65534)
    parser.add_argument("--try-read", action="append", default=[], help="check mode: try to open this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    code = _CODE[FileKind(args.kind)]

    answer_fd = os.dup(1)
    os.dup2(2, 1)  # whatever gets printed from now on lands in stderr, never in the answer
    try:
        confine.set_limits(args.memory_bytes, args.cpu_s, args.fsize_bytes)
        code.warm_up(args.workdir)
        confinement, os_reads = _lock_down(args)
    except Exception:  # before any input was read: a setup problem, not the file's fault
        traceback.print_exc()
        _answer(answer_fd, {"ok": False, "setup": True, "refused": (
            "the intake sandbox could not start, so no file can be checked now; the bot's owner should read the log "
            f"(is intake.sandbox_memory_mb = {args.memory_bytes >> 20} too low for torch?)")})
        return 4
    try:
        if args.mode == "check":
            summary = _probe(confinement, os_reads, args.try_read)
        elif args.mode == "convert":
            summary = code.convert(args.format, args.weight_cap)
        else:
            summary = code.verify(args.weight_cap)
    except IntakeRefused as e:
        _answer(answer_fd, _refusal_answer(e))
        return 2
    except MemoryError:
        _answer(answer_fd, {"ok": False, "memory": True, "refused": "out of memory"})
        return 3
    except Exception as e:  # a file that breaks the parser in some other way: still one line, still refused
        traceback.print_exc()
        _answer(answer_fd, {"ok": False, "refused": damaged(f"reading it failed with {type(e).__name__}")})
        return 2
    _answer(answer_fd, {"ok": True, "summary": summary})
    return 0
