"""Prompt editing ``[a:b:N]`` and alternation ``[a|b]``: which text conditions which sampler step.

A1111 parses this grammar with lark's Earley parser.  We use our own greedy parser instead, written from the spec
(``a1111-conditioning.md`` section 2): at every ``(`` or ``[`` try to read a well-formed group, otherwise the
bracket is a stray character kept as text.  Where A1111 itself is ill-defined (its choice between two valid
readings follows the process's string-hash seed, the "undefined zone" of section 2.1) this reading — a
well-formed group is always a group — is the one the spec recommends; it matched one of A1111's outcomes for 96%
of the random prompts the spec's authors tried in that zone.

The parser is iterative (no recursion limit on nesting) and linear: a bracket that is not a group makes every
group it is nested in fail too (a group may hold only groups, text and its own separators), so after a failure
the scan restarts once, right after the outermost open bracket, which is now a stray character; groups that
closed inside the failed ones are remembered and not read again.

Emphasis brackets are kept in the text (the emphasis parser reads them later); editing inside them still applies.
A prompt that does not parse at all (a ``|`` outside every alternation, a trailing backslash or one before a
newline) is used unchanged as the single entry ``[(steps, prompt)]``.  Numbers that overflow to infinity are
clamped where A1111 raises ``OverflowError``.  Pure Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["ScheduleEntry", "prompt_schedule", "switch_step"]

# N of an editing group: whitespace, a number (ASCII digits, as lark's NUMBER), whitespace, then the closing "]".
_STEP_NUMBER = re.compile(r"\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*\]")
_SPECIAL = frozenset("\\[]():|")


@dataclass(frozen=True)
class ScheduleEntry:
    """Condition the sampler on ``text`` up to and including denoiser call ``end_at_step`` (counted from 0)."""

    end_at_step: int
    text: str


@dataclass(frozen=True)
class _Emphasis:
    """``(P)``, ``(P:P)`` or ``[P]``: written back with its brackets and colon."""

    opener: str
    parts: tuple[tuple, ...]
    closer: str


@dataclass(frozen=True)
class _Edit:
    """``[before:after:N]``; ``[after:N]`` has an empty ``before``."""

    before: tuple
    after: tuple
    number: str


@dataclass(frozen=True)
class _Alternation:
    options: tuple[tuple, ...]


class _Unparsable(Exception):
    """The whole prompt is not valid editing syntax."""


class _NotAGroup(Exception):
    """The innermost open bracket cannot become a group, so none of the open ones can."""


@dataclass
class _Open:
    """A bracket being read: ``parts`` are its ``:``- or ``|``-separated sequences so far."""

    opener: str
    start: int
    separator: str = ""  # "" while in the first part, then ":" or "|"
    parts: list[list] = field(default_factory=lambda: [[]])


def switch_step(number: str, steps: int) -> int:
    """The step an editing group switches at: a number with a ``.`` is a fraction of ``steps``."""
    value = float(number) * steps if "." in number else float(number)
    if value >= steps:
        return steps
    return int(value) if value > -1 else -1  # every value <= -1 behaves alike; avoids int(-inf)


def _check_backslashes(text: str) -> None:
    i = 0
    while (i := text.find("\\", i)) != -1:
        if i + 1 == len(text) or text[i + 1] == "\n":
            raise _Unparsable
        i += 2


def _plain_end(text: str, i: int) -> int:
    while i < len(text):
        if text[i] == "\\":  # an escaped pair is plain text (a character always follows, see above)
            i += 2
        elif text[i] in _SPECIAL:
            break
        else:
            i += 1
    return i


def _close(group: _Open, text: str, i: int) -> tuple[object, int]:
    """The group ended by ``text[i]`` (one of ``] ) : |``), or (None, i + 1) if it continues with a new part."""
    char, parts = text[i], group.parts
    if group.opener == "(":
        if char == ")":
            return _Emphasis("(", tuple(map(tuple, parts)), ")"), i + 1
        if char == ":" and not group.separator:
            return None, i + 1
        raise _NotAGroup
    if char == "]" and group.separator in ("", "|"):
        if group.separator == "|":
            return _Alternation(tuple(map(tuple, parts))), i + 1
        return _Emphasis("[", (tuple(parts[0]),), "]"), i + 1
    if char == "|" and group.separator in ("", "|"):
        return None, i + 1
    if char == ":" and group.separator in ("", ":"):
        number = _STEP_NUMBER.match(text, i + 1)
        if number is not None:
            before, after = ((), parts[0]) if len(parts) == 1 else parts
            return _Edit(tuple(before), tuple(after), number.group(1)), number.end()
        if not group.separator:
            return None, i + 1
    raise _NotAGroup


def _parse(text: str) -> tuple:
    _check_backslashes(text)
    top: list = []
    stack: list[_Open] = []
    closed: dict[int, tuple[object, int]] = {}  # start -> (group, end) of every group read so far
    stray: set[int] = set()  # brackets known not to start a group
    i: int | None = 0
    while i is not None:
        try:
            i = _step(text, i, top, stack, closed, stray)
        except _NotAGroup:
            stray.update(group.start for group in stack)
            i = stack[0].start
            stack.clear()
            top.append(text[i])
            i += 1
    return tuple(top)


def _step(text: str, i: int, top: list, stack: list[_Open], closed: dict, stray: set) -> int | None:
    """Read one token at ``i``; the next position, or None at the end of a fully read prompt."""
    if i == len(text):
        if stack:
            raise _NotAGroup
        return None
    char, current = text[i], stack[-1].parts[-1] if stack else top
    if char in "([" and i in closed:
        group, end = closed[i]
        current.append(group)
        return end
    if char in "([" and i not in stray:
        stack.append(_Open(char, i))
        return i + 1
    if char in "[]():|":
        if stack:
            if char in "([":  # a known stray bracket inside a group
                raise _NotAGroup
            group, end = _close(stack[-1], text, i)
            if group is None:
                stack[-1].separator = char
                stack[-1].parts.append([])
                return end
            closed[stack.pop().start] = (group, end)
            (stack[-1].parts[-1] if stack else top).append(group)
            return end
        if char == "|":
            raise _Unparsable
        top.append(char)
        return i + 1
    end = _plain_end(text, i)
    current.append(text[i:end])
    return end


def _walk(nodes: tuple):
    """Every node of the tree, branches not taken included."""
    pending = list(nodes)
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, _Emphasis):
            pending += [child for part in node.parts for child in part]
        elif isinstance(node, _Edit):
            pending += [*node.before, *node.after]
        elif isinstance(node, _Alternation):
            pending += [child for option in node.options for child in option]


def _schedule_points(nodes: tuple, steps: int) -> list[int]:
    points, has_alternation = {steps}, False
    for node in _walk(nodes):
        if isinstance(node, _Edit) and (when := switch_step(node.number, steps)) >= 1:
            points.add(when)
        has_alternation = has_alternation or isinstance(node, _Alternation)
    if has_alternation:
        points.update(range(1, steps + 1))
    return sorted(points)


def _render(nodes: tuple, step: int, steps: int) -> str:
    out, pending = [], list(reversed(nodes))
    while pending:
        node = pending.pop()
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Emphasis):
            written = [node.opener, *node.parts[0], *([":", *node.parts[1]] if len(node.parts) > 1 else []), node.closer]
            pending += reversed(written)
        elif isinstance(node, _Edit):
            pending += reversed(node.before if step <= switch_step(node.number, steps) else node.after)
        else:
            pending += reversed(node.options[(step - 1) % len(node.options)])
    return "".join(out)


def prompt_schedule(prompt: str, steps: int) -> list[ScheduleEntry]:
    """The prompt's texts over ``steps`` denoiser calls, in ``end_at_step`` order (consecutive equal texts kept)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    try:
        nodes = _parse(prompt)
    except _Unparsable:
        return [ScheduleEntry(steps, prompt)]
    return [ScheduleEntry(point, _render(nodes, point, steps)) for point in _schedule_points(nodes, steps)]
