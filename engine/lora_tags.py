"""LoRA tags in prompts: A1111's ``<lora:NAME:TE:UNET:DYN>`` grammar, our request rules, and rewriting them.

A1111's rules (``docs/a1111-lora.md`` §1 in the shared docs): ``<lora:…>`` and its alias ``<lyco:…>`` are one
network type; the list is every tag of whichever of the two appears first, in prompt order, then every tag of the
other.  An argument with ``=`` is named (``te=``, ``unet=``, ``dyn=``), the others positional: name, te (default
1), unet (default: te), dyn.  Extra positional and unknown named arguments are ignored.  When a name appears twice,
A1111 applies the file twice with the *last* tag's numbers for both; that is reproduced (a pasted prompt renders
as in A1111) by :func:`as_applied`.

Where A1111 silently drops every LoRA of the prompt (an unreadable number) or skips one (an unknown name), the
request rules refuse with a message naming the tag, as the hypernet rules in :mod:`engine.prompt` do.  The tag
stays in the prompt as typed (the text encoder never sees it: every ``<type:args>`` tag is removed first), and a
button that changes a LoRA's strength rewrites just that tag in place with :func:`write_lora_tags`.  Pure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.names import name_problem
from engine.prompt import BRACKETED_TAG, LORA_TYPES, PromptError, format_multiplier

__all__ = ["LoraTag", "as_applied", "checker_parse", "format_lora_tag", "lora_order", "parse_lora_tags", "scan_lora_tags",
           "write_lora_tags"]

_TAG_RE = re.compile(BRACKETED_TAG)
_SHOWN = 80


@dataclass(frozen=True, slots=True)
class LoraTag:
    """One LoRA request: file-stem name, text-encoder and UNet multipliers, optional dyn rank, the tag as typed."""

    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None
    raw: str = field(default="", compare=False)


def _shown(text: str) -> str:
    text = text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"
    return "`" + text.replace("`", "ˋ") + "`"


def _number(raw: str, key: str, text: str, *, integer: bool = False) -> float:
    try:
        value = float(int(text)) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise PromptError(f"{_shown(raw)} — {key} {_shown(text.strip())} is not {kind}", tag=raw) from None
    return value


def _read(raw: str, args: str) -> LoraTag:
    """One tag's arguments by A1111's rules; an unreadable number raises (A1111 would drop every LoRA)."""
    positional: list[str] = []
    named: dict[str, str] = {}
    for part in args.split(":"):
        if "=" in part:
            key, _, value = part.partition("=")
            named[key] = value
        else:
            positional.append(part)
    if not positional:
        raise PromptError(f"{_shown(raw)} — the LoRA name is missing; write `<lora:NAME:MULTIPLIER>`", tag=raw)
    te = _number(raw, "multiplier", positional[1]) if len(positional) > 1 else 1.0
    te = _number(raw, "te", named["te"]) if "te" in named else te
    unet = _number(raw, "unet multiplier", positional[2]) if len(positional) > 2 else te
    unet = _number(raw, "unet", named["unet"]) if "unet" in named else unet
    dyn_text = named.get("dyn", positional[3] if len(positional) > 3 else None)
    dyn = None if dyn_text is None else int(_number(raw, "dyn", dyn_text, integer=True))
    return LoraTag(positional[0], te, unet, dyn, raw)


def lora_order(tags: Sequence[tuple[str, LoraTag]]) -> list[LoraTag]:
    """A1111's list from ``(type, tag)`` in prompt order: the first type's tags, then the other's."""
    if not tags:
        return []
    first = tags[0][0]
    return [t for kind, t in tags if kind == first] + [t for kind, t in tags if kind != first]


def as_applied(tags: Sequence[LoraTag]) -> list[LoraTag]:
    """What A1111 applies for a tag list: a repeated name takes the last tag's numbers everywhere it appears (A1111
    loads the file once and each tag overwrites the same object's multipliers)."""
    last = {t.name: t for t in tags}
    return [LoraTag(t.name, last[t.name].te, last[t.name].unet, last[t.name].dyn, t.raw) for t in tags]


def scan_lora_tags(prompt: str) -> list[LoraTag]:
    """Every LoRA tag of ``prompt`` in A1111's order with each tag's own numbers (names verbatim, not checked)."""
    found = [(m.group("type"), _read(m.group(0), m.group("args"))) for m in _TAG_RE.finditer(prompt)
             if m.group("type") in LORA_TYPES]
    return lora_order(found)


def checker_parse(prompt: str) -> tuple[str, list[tuple[str, float, float, int | None]]]:
    """For ``check_lora.py --parse engine.lora_tags:checker_parse``: the prompt without tags and A1111's
    ``load_networks`` arguments (name, te, unet, dyn) in order."""
    clean = _TAG_RE.sub("", prompt)
    return clean, [(t.name, t.te, t.unet, t.dyn) for t in scan_lora_tags(prompt)]


def parse_lora_tags(prompt: str, *, min_multiplier: float, max_multiplier: float, max_tags: int) -> tuple[LoraTag, ...]:
    """The request rules on top of :func:`scan_lora_tags`: names follow the model-name rule, multipliers are finite
    and in range, dyn is positive, at most ``max_tags`` tags.  Raises :class:`PromptError` naming the tag.  The
    result is what A1111 applies (:func:`as_applied`)."""
    tags = as_applied(scan_lora_tags(prompt))
    for tag in tags:
        name = tag.name.strip()
        problem = name_problem(name) if name else "the LoRA name is missing"
        if problem is not None:
            raise PromptError(f"{_shown(tag.raw)} — {problem}", tag=tag.raw)
        for what, value in (("multiplier", tag.te), ("unet multiplier", tag.unet)):
            if not math.isfinite(value):
                raise PromptError(f"{_shown(tag.raw)} — the {what} is not a finite number", tag=tag.raw)
            if not min_multiplier <= value <= max_multiplier:
                raise PromptError(f"{_shown(tag.raw)} — {what} {format_multiplier(value)} is outside the allowed range "
                                  f"{format_multiplier(min_multiplier)} to {format_multiplier(max_multiplier)}",
                                  tag=tag.raw)
        if tag.dyn is not None and tag.dyn < 1:
            raise PromptError(f"{_shown(tag.raw)} — dyn must be a positive rank, got {tag.dyn}", tag=tag.raw)
    if len(tags) > max_tags:
        raise PromptError(f"too many LoRA tags ({len(tags)}); at most {max_tags} per prompt — "
                          f"{_shown(tags[max_tags].raw)} is one too many", tag=tags[max_tags].raw)
    return tuple(LoraTag(t.name.strip(), t.te + 0.0, t.unet + 0.0, t.dyn, t.raw) for t in tags)


def format_lora_tag(tag: LoraTag) -> str:
    """``<lora:NAME:TE>`` when both multipliers agree, else ``<lora:NAME:TE:UNET>``; ``:DYN`` when set."""
    parts = [tag.name, format_multiplier(tag.te)]
    if tag.unet != tag.te or tag.dyn is not None:
        parts.append(format_multiplier(tag.unet))
    if tag.dyn is not None:
        parts.append(str(tag.dyn))
    return f"<lora:{':'.join(parts)}>"


def write_lora_tags(prompt: str, tags: Sequence[LoraTag]) -> str:
    """``prompt`` with each LoRA tag rewritten in place with the numbers of the tag of the same name in ``tags``.

    Everything else stays as typed.  Every LoRA name of the prompt must be in ``tags`` (ValueError otherwise).
    """
    by_name = {t.name: t for t in tags}

    def rewrite(m: re.Match[str]) -> str:
        if m.group("type") not in LORA_TYPES:
            return m.group(0)
        name = _read(m.group(0), m.group("args")).name.strip()
        if name not in by_name:
            raise ValueError(f"no new numbers for the LoRA {name!r}")
        return format_lora_tag(by_name[name])

    return _TAG_RE.sub(rewrite, prompt)
