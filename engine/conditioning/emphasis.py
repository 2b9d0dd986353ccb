"""Emphasis ``(a)``, ``(a:1.5)``, ``[a]``, escapes and ``BREAK``: a text becomes weighted segments.

Written from the spec (``a1111-conditioning.md`` section 3), which states A1111's scanner rule by rule.  The
details matter for parity: weights are float products in the order the scalings happen (``((a))`` is
1.2100000000000002, not 1.21), unclosed brackets still scale everything after them, segments of equal weight
merge afterwards, and a ``BREAK`` inside brackets is scaled like any segment and so is the word "break", not a
chunk break.  Pure Python.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from engine.conditioning.errors import InvalidEmphasisWeight

__all__ = ["BREAK_MARKER", "ROUND_FACTOR", "SQUARE_FACTOR", "Segment", "is_break", "parse_emphasis"]

ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1

_ESCAPABLE = frozenset("()[]\\")
_WEIGHT_CLOSE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_TEXT_RUN = re.compile(r"[^\\()\[\]:]+")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


class Segment(NamedTuple):
    text: str
    weight: float


BREAK_MARKER = Segment("BREAK", -1.0)


def is_break(segment: Segment) -> bool:
    """Only the exact marker closes a chunk; a scaled one (``(BREAK)``) is the word "break"."""
    return segment.text == BREAK_MARKER.text and segment.weight == BREAK_MARKER.weight


class _Segments:
    def __init__(self) -> None:
        self.items: list[list] = []  # [text, weight], mutable while brackets close

    def add(self, text: str) -> None:
        self.items.append([text, 1.0])

    def add_text(self, text: str) -> None:
        """Ordinary text: split at BREAK, a marker between the pieces (empty pieces kept)."""
        for k, piece in enumerate(_BREAK.split(text)):
            if k:
                self.items.append(list(BREAK_MARKER))
            self.add(piece)

    def scale_from(self, start: int, factor: float) -> None:
        for item in self.items[start:]:
            item[1] *= factor

    def merged(self) -> list[Segment]:
        if not self.items:
            return [Segment("", 1.0)]
        out = [Segment(*self.items[0])]
        for text, weight in self.items[1:]:
            if out[-1].weight == weight:
                out[-1] = Segment(out[-1].text + text, weight)
            else:
                out.append(Segment(text, weight))
        return out


def _weight(number: str, text: str) -> float:
    try:
        return float(number)
    except ValueError:
        raise InvalidEmphasisWeight(f"emphasis weight {number!r} is not a number in {text!r}") from None


def parse_emphasis(text: str) -> list[Segment]:
    """``a (b:1.5) c`` → ``[("a ", 1.0), ("b", 1.5), (" c", 1.0)]``; BREAK gives :data:`BREAK_MARKER` segments."""
    segments, round_open, square_open = _Segments(), list[int](), list[int]()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            following = text[i + 1 : i + 2]
            if following and following in _ESCAPABLE:
                segments.add(following)
                i += 2
            else:  # the backslash disappears; what follows is read normally
                segments.add("")
                i += 1
        elif char in "([":
            (round_open if char == "(" else square_open).append(len(segments.items))
            i += 1
        elif char == ":":
            weighted = _WEIGHT_CLOSE.match(text, i)
            if weighted is None:
                segments.add_text(":")
                i += 1
            elif round_open:
                segments.scale_from(round_open.pop(), _weight(weighted.group(1), text))
                i = weighted.end()
            else:
                segments.add_text(weighted.group(0))
                i = weighted.end()
        elif char in ")]":
            still_open, factor = (round_open, ROUND_FACTOR) if char == ")" else (square_open, SQUARE_FACTOR)
            if still_open:
                segments.scale_from(still_open.pop(), factor)
            else:
                segments.add_text(char)
            i += 1
        else:
            run = _TEXT_RUN.match(text, i)
            assert run is not None  # char is none of the characters the run excludes
            segments.add_text(run.group(0))
            i = run.end()
    for start in round_open:
        segments.scale_from(start, ROUND_FACTOR)
    for start in square_open:
        segments.scale_from(start, SQUARE_FACTOR)
    return segments.merged()
