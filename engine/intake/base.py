"""What every intake step shares: the refusal error and the helpers that write its one-line messages.

Why a module of its own: the container checks (:mod:`engine.intake.containers`), the steps (:mod:`engine.intake.ingest`),
the sandbox child and the downloader all refuse with :class:`IntakeRefused` and quote user text the same way; this
is the bottom layer they can all import without importing each other.  Torch-free.
"""

from __future__ import annotations

from engine.errors import EngineError

__all__ = ["IntakeRefused", "MiB", "human_size", "quote_text"]

MiB = 1 << 20


class IntakeRefused(EngineError):
    """A file (or download, or name) that intake will not take; ``str(err)`` is one line saying why."""


def quote_text(text: str, limit: int = 80) -> str:
    """User-controlled text inside a message: printable, no backticks, bounded."""
    clean = "".join(c if c.isprintable() and c != "`" else "?" for c in text)
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def human_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"
