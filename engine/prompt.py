"""Hypernetwork tags in prompts: A1111's grammar, our stricter request rules, and the normalised written form.

Two layers, because A1111 parity and good user feedback pull in different directions:

* :func:`parse_hypernet_tags` is A1111's grammar (``modules/extra_networks.py``) plus the bare tutorial form.  It
  removes every ``<type:args>`` tag from the text exactly like A1111 (surrounding spaces stay), returns the hypernet
  tags in prompt order with their multipliers (``nan``/``inf`` included, as Python ``float()`` reads them) and is
  what ``check_parity.py --parse`` compares against A1111's own parses.
* :func:`parse_request_prompt` is what ``/imagine`` uses.  Where A1111 silently ignores or guesses, it raises
  :class:`PromptError` naming the offending tag: unreadable or non-finite multiplier, multiplier out of range, extra
  ``:`` parts, empty name, other tag types (``<foo:…>``; LoRA tags pass, :mod:`engine.lora_tags` reads them),
  tag-like leftovers (``(hypernet:x)``, ``<hypernet:>``), too many tags, a prompt with nothing left once the tags
  are gone.

Grammar (see the spec, section 3):

* bracketed, as A1111: ``<hypernet:NAME>`` or ``<hypernet:NAME:MULT>`` anywhere in the text;
* bare, our extension (tutorials print it this way, A1111 treats it as words): ``hypernet:NAME[:MULT]`` written as a
  word of its own, i.e. delimited by whitespace, commas or the ends of the prompt.  NAME cannot contain spaces here.

A missing multiplier means 1.0.  A multiplier of 0 is kept (as 0.0) in the result: A1111 loads the network and it
acts as an identity, so the caller decides whether to skip it (cheaper) or keep it (e.g. to show it in the reply).
Duplicates are kept: each tag applies with its own multiplier, in prompt order (A1111 does the same on a fresh
process; its cache bug on the second run is not reproduced).

Negative prompts: A1111 never parses them, so a ``<hypernet:…>`` there is just words for the text encoder.  We
refuse it instead (:func:`check_negative_prompt`): a user who writes one expects an effect that would not happen.

Names are matched as A1111 does, by exact, case-sensitive file stem (:func:`resolve_names`); what is unknown gets
"did you mean" suggestions.  A name that breaks the project's one name rule (:mod:`engine.names`) is refused at
parse time with that rule's reason.

Written form: :func:`write_tags` rewrites every hypernet tag of a prompt in place as ``<hypernet:NAME:MULT>``
(A1111's bracketed form, so the infotext pastes back into A1111), leaving the rest of the prompt as typed.
This module imports only the standard library and :mod:`engine.names`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from engine.names import is_valid_model_name, name_problem

__all__ = [
    "BRACKETED_TAG",
    "LIST_COMMAND",
    "LORA_TYPES",
    "TAG_TYPE",
    "HypernetTag",
    "ParsedPrompt",
    "PromptError",
    "UnknownHypernet",
    "check_negative_prompt",
    "closest_names",
    "format_multiplier",
    "format_tag",
    "parse_hypernet_tags",
    "parse_request_prompt",
    "resolve_names",
    "write_tags",
]

TAG_TYPE = "hypernet"
#: A1111's LoRA tag types (``lyco`` is an alias); :mod:`engine.lora_tags` reads them, this module lets them pass.
LORA_TYPES = ("lora", "lyco")
#: The command users are pointed to when a name is unknown.
LIST_COMMAND = "/hypernets list"

# A1111's pattern, verbatim in meaning: `<`, a word (the network type), `:`, anything up to the first `>`.
BRACKETED_TAG = r"<(?P<type>\w+):(?P<args>[^>]+)>"
# The bare tutorial form: a whole word starting with `hypernet:`; words end at whitespace or commas.  `<` and `>`
# are excluded so a bare word can never reach into a bracketed tag.
_BARE = r"(?<![^\s,])hypernet:(?P<bare>[^\s,<>]+)(?![^\s,])"
_TAG_RE = re.compile(f"{BRACKETED_TAG}|{_BARE}")
# What is left after tag removal must not still look like a tag: a stray `hypernet:` in any case, or the opening
# `<word:` of a tag (which could swallow a tag written after it, e.g. the one the `hypernet` option adds).
_LEFTOVER_RE = re.compile(r"hypernet:|<\w+:", re.IGNORECASE)
# "woman , red" -> "woman, red": CLIP splits letters/digits from punctuation anyway, so the tokens do not change.
# (After `_` or other punctuation the space does matter: ",," is one token, ", ," two.)
_SPACE_BEFORE_COMMA_RE = re.compile(r"(?<=[^\W_]) (?=,)")
_SHOWN_CHARS = 80


class _HasName(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def raw(self) -> str: ...


_Named = TypeVar("_Named", bound=_HasName)


class PromptError(ValueError):
    """A prompt the bot refuses; ``str(error)`` is a complete sentence meant for the user.

    ``tag`` is the offending tag as the user wrote it, or None when the problem is the prompt as a whole.
    """

    def __init__(self, message: str, *, tag: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.tag = tag


class UnknownHypernet(PromptError):
    """A tag names no installed model (a hypernet, or a LoRA: :func:`resolve_names` words it); ``suggestions``
    holds up to three installed names that are close."""

    def __init__(self, message: str, *, tag: str, name: str, suggestions: tuple[str, ...]) -> None:
        super().__init__(message, tag=tag)
        self.name = name
        self.suggestions = suggestions


@dataclass(frozen=True, slots=True)
class HypernetTag:
    """One hypernet request: file-stem name, multiplier, and the tag text as the user typed it.

    ``raw`` is kept for error messages only and takes no part in equality; it defaults to the normalised form.
    """

    name: str
    multiplier: float
    raw: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.raw:
            object.__setattr__(self, "raw", format_tag(self.name, self.multiplier))


@dataclass(frozen=True, slots=True)
class ParsedPrompt:
    """A validated request prompt: the text for the text encoder, and the hypernet tags in prompt order."""

    text: str
    tags: tuple[HypernetTag, ...]


@dataclass(frozen=True, slots=True)
class _Match:
    raw: str
    type: str
    items: tuple[str, ...]


def _scan(prompt: str) -> tuple[list[_Match], str]:
    """Find every tag (any type, bracketed or bare hypernet) in order and return them with the text minus tags."""
    found: list[_Match] = []

    def take(m: re.Match[str]) -> str:
        if m.group("type") is not None:
            found.append(_Match(m.group(0), m.group("type"), tuple(m.group("args").split(":"))))
        else:
            found.append(_Match(m.group(0), TAG_TYPE, tuple(m.group("bare").split(":"))))
        return ""

    return found, _TAG_RE.sub(take, prompt)


def _shown(text: str) -> str:
    """Quote user text as Discord inline code, defusing backticks and cutting very long text."""
    if len(text) > _SHOWN_CHARS:
        text = text[: _SHOWN_CHARS - 1] + "…"
    return "`" + text.replace("`", "ˋ") + "`"


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_hypernet_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Parse like A1111: return (text without any tags, [(name, multiplier), ...] in prompt order).

    The text keeps the spaces around removed tags, exactly as A1111 sends it to the text encoder.  Tags of other
    types (``<lora:…>``, ``<HYPERNET:…>``) are removed but not returned, as in A1111.  Names are verbatim (no
    trimming), extra ``:`` parts are ignored, ``nan``/``inf`` pass through.  The one difference: a multiplier that
    ``float()`` cannot read raises :class:`PromptError` (A1111 then drops every hypernet of the batch).
    """
    matches, clean = _scan(prompt)
    tags: list[tuple[str, float]] = []
    for m in matches:
        if m.type != TAG_TYPE:
            continue
        multiplier = 1.0
        if len(m.items) > 1:
            value = _float(m.items[1])
            if value is None:
                raise PromptError(f"{_shown(m.raw)} — multiplier {_shown(m.items[1])} is not a number", tag=m.raw)
            multiplier = value
        tags.append((m.items[0], multiplier))
    return clean, tags


def _checked_tag(m: _Match, min_multiplier: float, max_multiplier: float) -> HypernetTag:
    """Apply the request rules to one scanned tag; raise PromptError naming it."""
    shown = _shown(m.raw)
    if m.type != TAG_TYPE:
        if m.type.lower() in LORA_TYPES:
            raise PromptError(f"{shown} — write the tag type in lower case: `<lora:…>`", tag=m.raw)
        if m.type.lower() == TAG_TYPE:
            raise PromptError(f"{shown} — write the tag type in lower case: `<hypernet:…>`", tag=m.raw)
        raise PromptError(
            f"{shown} — `{m.type}` tags are not supported here; only hypernetworks (`<hypernet:NAME:MULTIPLIER>`) "
            "and LoRAs (`<lora:NAME:MULTIPLIER>`)",
            tag=m.raw,
        )
    name = m.items[0].strip()
    if not name:
        raise PromptError(f"{shown} — the hypernet name is missing", tag=m.raw)
    problem = name_problem(name)
    if problem is not None:
        raise PromptError(f"{shown} — {problem}", tag=m.raw)
    if len(m.items) > 2:
        raise PromptError(
            f"{shown} — unexpected extra part {_shown(':'.join(m.items[2:]))}; "
            "write `<hypernet:NAME>` or `<hypernet:NAME:MULTIPLIER>`",
            tag=m.raw,
        )
    multiplier = 1.0
    if len(m.items) == 2:
        text = m.items[1].strip()
        if not text:
            raise PromptError(f"{shown} — the multiplier after `:` is missing", tag=m.raw)
        value = _float(text)
        if value is None:
            raise PromptError(f"{shown} — multiplier {_shown(text)} is not a number", tag=m.raw)
        if not math.isfinite(value):
            raise PromptError(f"{shown} — multiplier {_shown(text)} is not a finite number", tag=m.raw)
        if not min_multiplier <= value <= max_multiplier:
            raise PromptError(
                f"{shown} — multiplier {format_multiplier(value)} is outside the allowed range "
                f"{format_multiplier(min_multiplier)} to {format_multiplier(max_multiplier)}",
                tag=m.raw,
            )
        multiplier = value + 0.0  # turns -0.0 into 0.0
    return HypernetTag(name, multiplier, m.raw)


def parse_request_prompt(
    prompt: str, *, min_multiplier: float, max_multiplier: float, max_tags: int, max_length: int
) -> ParsedPrompt:
    """Parse a user's prompt for a generation request, refusing anything doubtful with a specific PromptError.

    ``text`` has its whitespace collapsed to single spaces and no space between a letter or digit and a comma:
    CLIP's tokenizer ignores both, so the encoder sees the same tokens as A1111 would.  Commas themselves are left
    alone even when a removed tag leaves ``a, , b`` (each is a token; A1111 sends them too).  ``max_length``
    limits that text (tags not counted, they are bounded by ``max_tags`` and the name rule's length).
    Names are trimmed of surrounding spaces (A1111 would look up ``" name"`` and miss); they are not resolved
    here, see :func:`resolve_names`.
    """
    if not (math.isfinite(min_multiplier) and math.isfinite(max_multiplier) and min_multiplier <= max_multiplier):
        raise ValueError(f"bad multiplier range {min_multiplier!r}..{max_multiplier!r}")
    if max_tags < 0 or max_length < 1:
        raise ValueError("max_tags must be >= 0 and max_length >= 1")
    matches, clean = _scan(prompt)
    tags = [_checked_tag(m, min_multiplier, max_multiplier) for m in matches if m.type not in LORA_TYPES]
    leftover = _LEFTOVER_RE.search(clean)
    if leftover is not None:
        word = _word_at(clean, leftover.start())
        raise PromptError(
            f"{_shown(word)} looks like a hypernet tag but could not be read; write `<hypernet:NAME:MULTIPLIER>` "
            "(or `hypernet:NAME:MULTIPLIER` as a separate word)",
            tag=word,
        )
    if len(tags) > max_tags:
        raise PromptError(
            f"too many hypernet tags ({len(tags)}); at most {max_tags} per prompt — {_shown(tags[max_tags].raw)} "
            "is one too many",
            tag=tags[max_tags].raw,
        )
    text = _SPACE_BEFORE_COMMA_RE.sub("", " ".join(clean.split()))
    if not text:
        raise PromptError("the prompt is empty once the hypernet tags are removed; describe the image as well")
    if len(text) > max_length:
        raise PromptError(f"the prompt is {len(text)} characters long (without tags); the limit is {max_length}")
    return ParsedPrompt(text, tuple(tags))


def _word_at(text: str, index: int) -> str:
    """The whitespace-delimited word of ``text`` that contains position ``index``."""
    start = index
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    end = index
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[start:end]


def check_negative_prompt(negative: str, *, max_length: int) -> str:
    """Validate a negative prompt and return it with whitespace collapsed (see parse_request_prompt).

    Hypernet and LoRA tags are refused: they apply to the whole generation and A1111 reads them only from the
    positive prompt (there they would silently be words).  Other text, including other tag types, passes through
    unchanged, as in A1111.
    """
    for m in _scan(negative)[0]:
        kind = m.type.lower()
        if kind == TAG_TYPE or kind in LORA_TYPES:
            what = "hypernetworks" if kind == TAG_TYPE else "LoRAs"
            raise PromptError(f"{_shown(m.raw)} — {what} go in the prompt, not in the negative prompt; move the tag "
                              "there", tag=m.raw)
    text = " ".join(negative.split())
    if len(text) > max_length:
        raise PromptError(f"the negative prompt is {len(text)} characters long; the limit is {max_length}")
    return text


def closest_names(name: str, available: Iterable[str], limit: int = 3) -> tuple[str, ...]:
    """Installed names a user probably meant: case/space-insensitive equals first, then difflib's closest."""
    ordered = sorted(set(available))
    wanted = name.strip().casefold()
    folded: dict[str, list[str]] = {}
    for candidate in ordered:
        folded.setdefault(candidate.casefold(), []).append(candidate)
    picks: list[str] = list(folded.get(wanted, []))
    for close in difflib.get_close_matches(wanted, list(folded), n=limit, cutoff=0.6):
        picks.extend(n for n in folded[close] if n not in picks)
    return tuple(picks[:limit])


def resolve_names(tags: Iterable[_Named], available: Collection[str], *, kind: str = "hypernet",
                  plural: str = "hypernetworks", list_command: str = LIST_COMMAND) -> tuple[_Named, ...]:
    """Check every tag names an installed model of ``kind`` (exact, case-sensitive stem, as A1111); return the tags.

    The first unknown name, in prompt order, raises :class:`UnknownHypernet` with suggestions.  ``kind``,
    ``plural`` and ``list_command`` word the message ("there is no LoRA named …; `/loras list` shows …").
    """
    resolved = tuple(tags)
    for tag in resolved:
        if tag.name in available:
            continue
        shown = _shown(tag.raw)
        if not available:
            message = f"{shown} — no {plural} are installed yet; `{list_command}` shows what is available"
            suggestions: tuple[str, ...] = ()
        else:
            suggestions = closest_names(tag.name, available)
            message = f"{shown} — there is no {kind} named {_shown(tag.name)}"
            if suggestions:
                case_note = " (names are case-sensitive)" if suggestions[0].casefold() == tag.name.casefold() else ""
                listed = [_shown(s) for s in suggestions]
                options = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " or " + listed[-1]
                message += f"{case_note}; did you mean {options}?"
            else:
                message += f"; `{list_command}` shows the installed ones"
        raise UnknownHypernet(message, tag=tag.raw, name=tag.name, suggestions=suggestions)
    return resolved


def format_multiplier(multiplier: float) -> str:
    """The shortest text that reads back as exactly ``multiplier``: ``1``, ``0.7``, ``1e-07``.

    Integral values drop A1111's ``.0`` (``str(1.0)``); both forms parse the same.  Callers stepping a multiplier
    (buttons) should round first, e.g. ``round(m + 0.1, 2)``, or they will print ``0.7999999999999999``.
    """
    value = float(multiplier)
    if not math.isfinite(value):
        raise ValueError(f"multiplier must be finite, got {multiplier!r}")
    text = repr(value + 0.0)
    return text[:-2] if text.endswith(".0") else text


def format_tag(name: str, multiplier: float) -> str:
    """The normalised bracketed tag, e.g. ``<hypernet:waterElemental_10:0.7>``; refuses names a tag cannot carry."""
    if not is_valid_model_name(name):
        raise ValueError(f"hypernet name {name!r} cannot be written in a tag")
    return f"<{TAG_TYPE}:{name}:{format_multiplier(multiplier)}>"


def write_tags(prompt: str, multipliers: Sequence[float]) -> str:
    """``prompt`` with its hypernet tags rewritten in place as ``<hypernet:NAME:MULT>`` with ``multipliers`` in order.

    Everything else stays as typed (other tag types included), so the result is what the user wrote with each
    hypernet tag in A1111's bracketed form: the infotext line of an image, and the prompt of a job whose
    multipliers a button changed.  ``multipliers`` must give one value per hypernet tag (ValueError otherwise).
    """
    matches, _ = _scan(prompt)
    count = sum(1 for m in matches if m.type == TAG_TYPE)
    if count != len(multipliers):
        raise ValueError(f"the prompt has {count} hypernet tags but {len(multipliers)} multipliers were given")
    values = iter(multipliers)

    def rewrite(m: re.Match[str]) -> str:
        if m.group("type") is not None and m.group("type") != TAG_TYPE:
            return m.group(0)
        name = (m.group("args") if m.group("type") is not None else m.group("bare")).split(":")[0].strip()
        return format_tag(name, next(values))

    return _TAG_RE.sub(rewrite, prompt)
