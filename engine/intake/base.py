"""What every intake step shares: the refusal error, and the helpers that make text from strangers safe to show.

Why a module of its own: the container checks, the identification, the steps, the sandbox child and the downloader
all refuse with :class:`IntakeRefused` and quote user text the same way; this is the bottom layer they can all import
without importing each other.  File names, archive member names, server replies and library error texts come from
whoever made the file: :func:`clean_text` is the one place that makes them harmless before they reach a Discord
reply or a log line (no newline can forge a log line, no ANSI escape can drive the owner's terminal, no bidi override
can make ``evil.exe`` read as ``exe.live``).  Torch-free.
"""

from __future__ import annotations

import re

from engine.errors import EngineError
from engine.intake.kinds import FileIdentity

__all__ = ["IntakeRefused", "MiB", "clean_text", "damaged", "human_size", "quote_text"]

MiB = 1 << 20

# ESC-introduced terminal sequences: CSI (ESC [ ... final byte), OSC (ESC ] ... BEL or ESC \), and two-byte escapes.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]?|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -~]?)|\x9b[0-?]*[ -/]*[@-~]?")
_SPACES = frozenset("\t\n\r\v\f\u0085\u00a0\u2028\u2029")


class IntakeRefused(EngineError):
    """A file (or download, or name) that intake will not take; ``str(err)`` is one line saying why and what to do.

    ``identity`` says what the file looked like when that was found out (a LoRA, a web page...), so a caller can
    route the file elsewhere instead of only showing the message.
    """

    def __init__(self, message: str, identity: FileIdentity | None = None) -> None:
        super().__init__(message)
        self.identity = identity


def clean_text(text: object, limit: int = 200) -> str:
    """``text`` made safe for a reply or a log line: one line, no control characters, no terminal escapes, no bidi
    overrides or other invisible format characters; at most ``limit`` characters (an ellipsis marks a cut)."""
    raw = _ANSI.sub("", str(text))
    clean = "".join(" " if c in _SPACES else c if c.isprintable() else "?" for c in raw)
    return clean if len(clean) <= limit else clean[: max(limit - 1, 0)] + "…"


def quote_text(text: object, limit: int = 80) -> str:
    """User-controlled text inside a backtick span of a message: :func:`clean_text`, and no backticks (they would end
    the span)."""
    return clean_text(str(text).replace("`", "ˋ"), limit)


def human_size(n: int) -> str:
    """``1.5 GiB``, ``707 bytes``: sizes as an admin reads them."""
    for unit, size in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def damaged(problem: str) -> str:
    """The refusal for a broken file: what is wrong (a clause), and what to do."""
    return f"the file is damaged or incomplete ({problem}); download it again"
