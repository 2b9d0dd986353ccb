"""``AND`` in positive prompts: split into weighted parts (A1111 composable diffusion).

Only positive prompts are split; a negative prompt containing ``AND`` is plain text.  The split happens on the
raw text before any other grammar, even inside brackets, because that is what A1111 does (spec section 1).
Pure Python.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["AndPart", "split_and"]

_AND = re.compile(r"\bAND\b")
# Lazy text, then an optional ":number" with whitespace around the colon, then trailing whitespace.
_WEIGHTED = re.compile(r"(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*", re.DOTALL)


class AndPart(NamedTuple):
    text: str
    weight: float


def split_and(prompt: str) -> list[AndPart]:
    """The parts of a positive prompt in order; ``a cat:1.3`` (no AND) is one part of weight 1.3."""
    parts = []
    for piece in _AND.split(prompt):
        match = _WEIGHTED.fullmatch(piece)
        assert match is not None  # the pattern matches every string
        text, weight = match.group(1), match.group(2)
        parts.append(AndPart(text, float(weight) if weight is not None else 1.0))
    return parts
