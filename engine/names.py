"""The one rule for model names: what users type in tags, what the registry stores, what intake accepts.

Why one rule in one place: a name is typed inside a tag (``<hypernet:NAME:0.7>`` and the bare ``hypernet:NAME:0.7``
word), stored in the registry, shown in Discord and derived from a file stem by intake.  If those places disagree,
a model can be installed that no tag can reach, or a tag can be written that no model can carry.  A1111's rule is
"the file stem, exact case"; Hypercord narrows the characters to ``[A-Za-z0-9_.-]`` so a name survives both tag
forms, never looks like a path, and reads the same in every font.  The name is only ever a database value, never
a path.  Pure standard library (the bot, the engine and intake all import it).
"""

from __future__ import annotations

from engine.errors import EngineError

__all__ = ["MAX_NAME_LENGTH", "InvalidModelName", "check_model_name", "is_valid_model_name", "name_problem"]

MAX_NAME_LENGTH = 64
_ALLOWED_PUNCTUATION = "_.-"


class InvalidModelName(EngineError):
    """A string that cannot be a model name; ``str(err)`` is the reason, written for the person who chose it."""


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a model name (a lower-case phrase), or None when it can."""
    if not isinstance(name, str) or not name:
        return "a model name cannot be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"model names are at most {MAX_NAME_LENGTH} characters (this one has {len(name)})"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "model names cannot contain control characters"
    if "/" in name or "\\" in name:
        return "model names cannot contain path separators (`/` or `\\`)"
    if ".." in name:
        return "model names cannot contain `..`"
    if name.startswith("."):
        return "model names cannot start with `.`"
    if any(c.isspace() for c in name):
        return "model names cannot contain spaces (a tag would end there); use `_` or `-`"
    if ":" in name:
        return "model names cannot contain `:` (it separates the name from the multiplier in tags)"
    if "<" in name or ">" in name:
        return "model names cannot contain `<` or `>` (they delimit tags)"
    bad = next((c for c in name if not (c.isascii() and (c.isalnum() or c in _ALLOWED_PUNCTUATION))), None)
    if bad is not None:
        return f"model names may only use letters, digits, `_`, `.` and `-`, not `{bad}`"
    if name == "None":
        return "`None` is reserved (A1111 uses it for \"no hypernetwork\")"
    return None


def is_valid_model_name(name: object) -> bool:
    return name_problem(name) is None


def check_model_name(name: str) -> str:
    """Return ``name`` unchanged if it can be a model name, else raise :class:`InvalidModelName` saying why."""
    problem = name_problem(name)
    if problem is not None:
        raise InvalidModelName(problem)
    return name
