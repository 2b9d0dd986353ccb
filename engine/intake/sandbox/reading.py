"""Reading the input in the sandbox child: the pickle through PyTorch's safe loader, safetensors through a memory
file, and the checks every kind makes on what was read.

Why shared: a hypernetwork, a LoRA and an embedding arrive in the same containers, and the ways a hostile file
shows itself while it is read (a global the safe loader refuses, more weight bytes than the file holds, a
different kind of model than the admin meant) must be refused in the same words whatever is being added.  Runs
only in the child; torch is imported inside the functions, before the lock-down (the warm-up calls them once).
"""

from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Iterable
from typing import Any

from engine.intake.base import IntakeRefused, MiB, damaged, human_size
from engine.intake.containers import check_globals
from engine.intake.identify import identify_loaded, refusal
from engine.intake.kinds import Container, FileIdentity, FileKind, kind_noun

__all__ = ["CANONICAL_NAME", "check_weight_bytes", "expect_kind", "load_pt", "read_stdin", "stdin_as_memfd",
           "tensor_bytes"]

CANONICAL_NAME = "canonical.safetensors"  # written in the child's work folder; the parent copies it out
_UNSUPPORTED_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")


def read_stdin(limit: int) -> bytes:
    """The whole input (a pickle), at most ``limit`` + 1 bytes."""
    return sys.stdin.buffer.read(limit + 1)


def load_pt(data: bytes) -> object:
    """``torch.load(weights_only=True)`` of a PyTorch file; its refusals as one line (code, damage, memory)."""
    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as e:
        text = str(e)
        print(f"torch.load failed: {type(e).__name__}: {text[:2000]}", file=sys.stderr)
        if "can't allocate memory" in text or "Cannot allocate memory" in text:
            raise MemoryError from None
        if "nsupported global" in text.lower() or "Weights only load failed" in text:
            found = _UNSUPPORTED_GLOBAL.search(text)
            if found:
                check_globals([found[1]])  # says "runs code" or "unusual data", as the parent's scan would
            raise IntakeRefused("the file would run code when loaded (PyTorch's safe loader refused it); refused, do "
                                "not load it anywhere else either") from None
        raise IntakeRefused(damaged("PyTorch cannot read it")) from None


def stdin_as_memfd(limit: int) -> str:
    """The input copied into an anonymous memory file, as a path the safetensors reader can open (the input file
    itself may be closed to this process's user, and lies outside its Landlock folders)."""
    fd = os.memfd_create("intake-input")
    copied = 0
    while chunk := sys.stdin.buffer.read(4 * MiB):
        copied += len(chunk)
        if copied > limit:
            raise IntakeRefused(damaged("it is longer than it was when checked"))
        os.write(fd, chunk)
    return f"/proc/self/fd/{fd}"


def expect_kind(obj: object, file_size: int, container: Container, kind: FileKind, *, missing: str) -> FileIdentity:
    """What a loaded pickle is; refused (with that identity) unless it may be of ``kind``.  ``missing`` says what a
    PyTorch save of that kind holds, for one that holds nothing we know (``no LoRA or LyCORIS keys``)."""
    identity = identify_loaded(obj, file_size, container)
    if identity.kind is FileKind.UNKNOWN:
        noun = kind_noun(kind)
        raise IntakeRefused(f"the file is a PyTorch save but holds no {noun} ({missing}); check that you picked the "
                            f"{noun} file itself", identity)
    message = refusal(identity, kind)
    if message is not None:
        raise IntakeRefused(message, identity)
    return identity


def tensor_bytes(values: Iterable[Any]) -> int:
    """Bytes the tensors among ``values`` claim (views counted in full)."""
    import torch

    return sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))


def check_weight_bytes(declared: int, file_size: int) -> None:
    """More weight bytes than the file holds: views of one storage posing as many tensors (damaged or hostile)."""
    if declared > file_size:
        raise IntakeRefused(damaged(f"it declares {human_size(declared)} of weights but is only {human_size(file_size)} "
                                    "long"))
