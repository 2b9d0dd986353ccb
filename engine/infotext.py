"""A1111's PNG ``parameters`` text (spec section 5): write it for our images, read it back for the Info button.

Layout, as A1111's ``create_infotext`` writes it::

    <prompt line, hypernet tags still in it>
    Negative prompt: <negative prompt>          (line left out when the negative prompt is empty)
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 6ce0161689, Model: v1-5, ...

Hypernets have no field of their own: they appear only as ``<hypernet:name:mult>`` tags in the prompt line (build
it with ``engine.prompt.rebuild_prompt``).  The 2022 fields ``Hypernet`` / ``Hypernet strength`` are never written,
but :func:`parse_infotext` turns them into a tag appended to the prompt, as A1111 does when such an image is pasted.

Keeping A1111's exact layout lets users drop our PNGs into A1111's "PNG Info" tab and get the same settings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from engine.prompt import format_multiplier

__all__ = ["CORE_KEYS", "FIELD_ORDER", "build_infotext", "parse_infotext"]

NEGATIVE_PREFIX = "Negative prompt:"
#: The fields this module fills from its own arguments (and the reader's two prompt keys); ``extra`` may not set them.
CORE_KEYS = frozenset({"Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model", "Prompt", "Negative prompt"})
#: A1111's field order (create_infotext, v1.10).  ``extra`` keys found here go to their slot; any other extra key
#: follows these, in the order given, before the closing ``Version`` and ``User``.
FIELD_ORDER = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration", "Size",
    "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE", "Variation seed",
    "Variation seed strength", "Seed resize from", "Denoising strength", "Conditional mask weight", "Clip skip",
    "ENSD", "Token merging ratio", "Token merging ratio hr", "Init image hash", "RNG", "NGMS", "Tiling",
)  # fmt: skip
_TRAILING = ("Version", "User")
# Keys A1111's reader accepts: a word character, then at least one of word characters, space, `-`, `/`.
_KEY_RE = re.compile(r"\w[\w \-/]+")
_PAIR_RE = re.compile(r"\s*(\w[\w \-/]+):\s*")


def _number(value: float) -> str:
    """A1111 prints what the UI handed it; integral CFG scales read as ``7``, others as ``7.5``."""
    return format_multiplier(value)


def _quote(value: str) -> str:
    """JSON-quote a value the reader could not otherwise take back (A1111 quotes on `,`, `:` or newline).

    We also quote values with surrounding whitespace or a leading double quote, which A1111's reader would
    otherwise trim or mis-read; ordinary values come out exactly as A1111 writes them.
    """
    if any(c in value for c in ",:\n") or value != value.strip() or value.startswith('"'):
        return json.dumps(value, ensure_ascii=False)
    return value


def build_infotext(
    prompt_line: str,
    negative_prompt: str,
    steps: int,
    sampler: str,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    model_name: str | None,
    model_hash: str | None = None,
    extra: Mapping[str, str | None] | None = None,
) -> str:
    """Return the ``parameters`` text for one image in A1111's layout and key order.

    ``extra`` adds fields (``"Schedule type"``, ``"Clip skip"``, ``"Version"``, ...); a None value leaves the
    field out, as in A1111.  Keys must be ones A1111's reader accepts and must not repeat the core fields.
    """
    fields: dict[str, str | None] = {
        "Steps": str(steps),
        "Sampler": sampler,
        "CFG scale": _number(cfg_scale),
        "Seed": str(seed),
        "Size": f"{width}x{height}",
        "Model hash": model_hash or None,
        "Model": model_name or None,
    }
    extra = dict(extra or {})
    for key in extra:
        if key in CORE_KEYS:
            raise ValueError(f"infotext field {key!r} is reserved (set from build_infotext's own arguments)")
        if not _KEY_RE.fullmatch(key):
            raise ValueError(f"infotext key {key!r} would not read back")
    ordered = [k for k in FIELD_ORDER if k in fields or k in extra]
    ordered += [k for k in extra if k not in FIELD_ORDER and k not in _TRAILING]
    ordered += [k for k in _TRAILING if k in extra]
    values = {**fields, **extra}
    params = ", ".join(f"{k}: {_quote(v)}" for k in ordered if (v := values[k]) is not None)
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt_line}{negative}\n{params}".strip()


def _read_params(line: str) -> dict[str, str] | None:
    """Read ``Key: value, Key: value`` pairs; None when the line is not wholly made of pairs."""
    pairs: dict[str, str] = {}
    pos = 0
    decoder = json.JSONDecoder()
    while pos < len(line):
        m = _PAIR_RE.match(line, pos)
        if m is None:
            return None
        key, pos = m.group(1), m.end()
        if line.startswith('"', pos):
            try:
                value, pos = decoder.raw_decode(line, pos)
            except json.JSONDecodeError:
                return None
            if not isinstance(value, str):
                return None
        else:
            end = line.find(",", pos)
            end = len(line) if end < 0 else end
            value, pos = line[pos:end], end
        pairs[key] = value
        rest = line[pos:].lstrip(" ")
        if rest and not rest.startswith(","):
            return None
        if not rest[1:].strip():
            break
        pos = len(line) - len(rest) + 1
    return pairs


def parse_infotext(text: str) -> dict[str, str]:
    """Read A1111 ``parameters`` text into ``{"Prompt": ..., "Negative prompt": ..., "Steps": "20", ...}``.

    Values stay strings (``"Size": "512x512"``).  As in A1111, the last line counts as parameters only if it holds
    at least three pairs, prompt lines are stripped, and everything after a line starting with ``Negative prompt:``
    belongs to the negative prompt.  Old ``Hypernet``/``Hypernet strength`` fields become a tag on the prompt.
    """
    lines = text.strip().split("\n")
    params = _read_params(lines[-1]) if lines else None
    if params is None or len(params) < 3:
        params = {}
    else:
        lines = lines[:-1]
    prompt: list[str] = []
    negative: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not negative and line.startswith(NEGATIVE_PREFIX):
            negative.append(line[len(NEGATIVE_PREFIX) :].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    result.update(params)
    if params.get("Hypernet"):
        strength = params.get("Hypernet strength")
        result["Prompt"] += f"<hypernet:{params['Hypernet']}" + (f":{strength}>" if strength else ">")
    return result
