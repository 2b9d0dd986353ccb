"""Turn /imagine's slash options into the :class:`RenderSettings` of one job; torch-free and free of Discord IO.

Why a pure module: every rule that decides "is this request acceptable" lives here, so the cog stays a thin
adapter, and the same rules apply to a slash command and to the Set-multiplier modal.  Ranges come from
``settings.limits`` (declared to Discord by the cog *and* checked here, because a client can send anything).
Every refusal is an :class:`OptionError` whose text says what is wrong and how to fix it.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Mapping
from typing import Any, Protocol

from bot.advanced_options import AdvancedOptions, OptionProblem, advanced_fields
from bot.checkpoints import CheckpointDefaults
from bot.config import LimitSettings
from bot.store import Hypernet
from engine.lora_tags import parse_lora_tags
from engine.names import name_problem
from engine.prompt import (
    LIST_COMMAND,
    PromptError,
    check_negative_prompt,
    format_multiplier,
    format_tag,
    parse_request_prompt,
    resolve_names,
)
from engine.render_settings import EmbeddingRef, HypernetRef, LoraRef, RenderSettings
from engine.samplers import UnknownSampler, UnsupportedSampler, resolve_sampler

__all__ = [
    "MAX_SEED",
    "SAMPLER_NAMES",
    "SIZE_PRESETS",
    "OptionError",
    "build_settings",
    "check_multiplier",
    "embedding_candidates",
    "embedding_hints",
    "random_seed",
    "size_choices",
    "step_multiplier",
    "with_checkpoint_defaults",
]

#: Samplers listed first in /imagine's suggestions (A1111 names; every name engine.samplers knows is accepted).
SAMPLER_NAMES: tuple[str, ...] = (
    "Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE Karras", "DDIM", "UniPC", "LMS", "Heun", "DPM2 a",
)
#: Sizes offered as choices, filtered by the configured limits (plus the configured default, always).
SIZE_PRESETS: tuple[tuple[int, int], ...] = (
    (512, 512), (512, 768), (768, 512), (768, 768), (640, 640), (576, 1024), (1024, 576), (1024, 1024),
    (64, 64), (64, 96), (96, 64), (128, 128),
)
#: Seeds are 32-bit, as A1111 shows them (and as users copy them around).
MAX_SEED = 2**32 - 1


class Installed(Protocol):
    """What the options need of an installed model: the file it names."""

    @property
    def sha256(self) -> str: ...


class OptionError(ValueError):
    """A refused option; ``str()`` is a complete sentence for the user."""


def random_seed() -> int:
    return random.SystemRandom().randint(0, MAX_SEED)


def size_choices(limits: LimitSettings) -> list[str]:
    """``"WxH"`` presets inside the configured size range, the default first; at most 25 (Discord's cap)."""
    default = (limits.default_width, limits.default_height)
    out = [f"{default[0]}x{default[1]}"]
    for w, h in SIZE_PRESETS:
        label = f"{w}x{h}"
        if label not in out and limits.min_size <= w <= limits.max_size and limits.min_size <= h <= limits.max_size:
            out.append(label)
    return out[:25]


def _parse_size(size: str, limits: LimitSettings) -> tuple[int, int]:
    w_text, sep, h_text = size.lower().partition("x")
    if not sep or not w_text.strip().isdigit() or not h_text.strip().isdigit():
        raise OptionError(f"Size `{size}` is not of the form WIDTHxHEIGHT, e.g. `{size_choices(limits)[0]}`.")
    return int(w_text), int(h_text)


def _check_range(what: str, value: float, low: float, high: float, fmt: str = "{}") -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise OptionError(f"{what} must be between {fmt.format(low)} and {fmt.format(high)}; you gave {fmt.format(value)}.")


def _check_dimension(what: str, value: int, limits: LimitSettings) -> None:
    _check_range(what, value, limits.min_size, limits.max_size)
    if value % 8:
        raise OptionError(f"{what} must be a multiple of 8 (e.g. {value - value % 8 or 8}); you gave {value}.")


def check_multiplier(value: float, limits: LimitSettings, name: str = "") -> float:
    """A multiplier within the configured range (rounded to 4 places, -0.0 folded to 0.0)."""
    if not math.isfinite(value) or not limits.min_multiplier <= value <= limits.max_multiplier:
        who = f" for `{name}`" if name else ""
        shown = format_multiplier(value) if math.isfinite(value) else str(value)
        raise OptionError(f"The multiplier{who} must be between {format_multiplier(limits.min_multiplier)} and "
                          f"{format_multiplier(limits.max_multiplier)}; you gave {shown}.")
    return round(value, 4) + 0.0


def step_multiplier(value: float, direction: int, limits: LimitSettings) -> float | None:
    """``value`` one configured step up (+1) or down (-1), clamped to the range; None when already at that bound."""
    low, high, step = limits.min_multiplier, limits.max_multiplier, limits.multiplier_step
    if (direction > 0 and value >= high - 1e-9) or (direction < 0 and value <= low + 1e-9):
        return None
    return round(min(high, max(low, value + direction * step)), 4) + 0.0


def build_settings(*, prompt: str, limits: LimitSettings, checkpoint: str, models: Mapping[str, Hypernet],
                   negative_prompt: str | None = None, seed: int | None = None, steps: int | None = None,
                   cfg_scale: float | None = None, sampler: str | None = None, size: str | None = None,
                   width: int | None = None, height: int | None = None, count: int | None = None,
                   hypernet: str | None = None, multiplier: float | None = None,
                   advanced: AdvancedOptions | None = None, loras: Mapping[str, Installed] | None = None,
                   embeddings: Mapping[str, Installed] | None = None) -> RenderSettings:
    """Validate everything and resolve the hypernet and LoRA tags; raise :class:`OptionError` otherwise.

    ``loras`` are the LoRAs usable in this guild by name (A1111's name: the file stem); a ``<lora:NAME:…>`` tag's
    file comes from there.  ``embeddings`` are the guild's textual inversions by name: those whose names occur in
    the prompts go with the job (:func:`embedding_candidates`).

    ``models`` are the hypernetworks usable in this guild (enabled ones) by name: a tag's sha256 comes from there,
    as does the default multiplier of the ``hypernet`` option given without ``multiplier``.  That option becomes a
    tag appended to the prompt, so the stored prompt names every hypernet the job applies, in order.
    """
    if not prompt or not prompt.strip():
        raise OptionError("The prompt is empty: describe the image you want, e.g. `a lighthouse at dusk`.")
    typed = prompt.strip()
    try:
        if multiplier is not None and not hypernet:
            raise OptionError("`multiplier` needs `hypernet` too: pick a hypernetwork, or put the multiplier in a "
                              "tag like `<hypernet:NAME:0.8>`.")
        if hypernet:
            name = hypernet.strip()
            row = models.get(name)
            mult = (row.default_multiplier if row is not None else 1.0) if multiplier is None else multiplier
            problem = name_problem(name)
            if problem is not None:
                raise OptionError(f"`{name[:80]}` cannot be a hypernetwork name ({problem}); `{LIST_COMMAND}` shows "
                                  f"the installed ones.")
            typed = f"{typed} {format_tag(name, check_multiplier(mult, limits, name))}"
        parsed = parse_request_prompt(typed, min_multiplier=limits.min_multiplier,
                                      max_multiplier=limits.max_multiplier, max_tags=limits.max_hypernets,
                                      max_length=limits.max_prompt_length)
        tags = resolve_names(parsed.tags, models)
        lora_tags = resolve_names(parse_lora_tags(typed, min_multiplier=limits.min_multiplier,
                                                  max_multiplier=limits.max_multiplier, max_tags=limits.max_loras),
                                  loras or {}, kind="LoRA", plural="LoRAs", list_command="/loras list")
        negative = check_negative_prompt(negative_prompt or "", max_length=limits.max_prompt_length)
    except PromptError as exc:
        raise OptionError(_sentence(str(exc))) from None
    steps = limits.default_steps if steps is None else steps
    _check_range("Steps", steps, limits.min_steps, limits.max_steps)
    cfg = limits.default_cfg_scale if cfg_scale is None else float(cfg_scale)
    _check_range("CFG scale", cfg, limits.min_cfg_scale, limits.max_cfg_scale, "{:g}")
    sampler = _sampler(sampler or limits.default_sampler)
    w, h = _parse_size(size, limits) if size else (limits.default_width, limits.default_height)
    w, h = width or w, height or h
    _check_dimension("Width", w, limits)
    _check_dimension("Height", h, limits)
    count = 1 if count is None else count
    _check_range("Count", count, 1, limits.max_count)
    if seed is None or seed < 0:
        seed = random_seed()
    elif seed > MAX_SEED:
        raise OptionError(f"Seed must be between 0 and {MAX_SEED} (or -1 for a random one); you gave {seed}.")
    try:
        extra = advanced_fields(advanced or AdvancedOptions())
    except OptionProblem as exc:
        raise OptionError(str(exc)) from None
    refs = tuple(HypernetRef(t.name, models[t.name].sha256, t.multiplier) for t in tags)
    lora_refs = tuple(LoraRef(t.name, (loras or {})[t.name].sha256, t.te, t.unet, t.dyn,
                              getattr((loras or {})[t.name], "short_hash", None)) for t in lora_tags)
    used = embedding_candidates(f"{typed}\n{negative}", embeddings or {})
    return RenderSettings(prompt=typed, negative_prompt=negative, hypernets=refs, seed=seed, steps=steps,
                          cfg_scale=cfg, sampler=sampler, width=w, height=h, count=count, checkpoint=checkpoint,
                          loras=lora_refs, embeddings=used, **extra)  # type: ignore[arg-type]


def embedding_candidates(text: str, embeddings: Mapping[str, Installed]) -> tuple[EmbeddingRef, ...]:
    """The embeddings whose names occur in ``text``, ignoring case (CLIP's tokens are lower-case), by name.

    A superset of what A1111 would use: the worker's tokenizer decides, so a name inside a longer word costs
    nothing but a file load."""
    folded = text.casefold()
    return tuple(EmbeddingRef(name, row.sha256, getattr(row, "short_hash", None))
                 for name, row in sorted(embeddings.items()) if name.casefold() in folded)


def embedding_hints(text: str, embeddings: Mapping[str, Installed]) -> tuple[str, ...]:
    """"Did you mean" notes for prompt words one edit away from an installed embedding's name (never an error)."""
    names = {name.casefold(): name for name in embeddings}
    notes: list[str] = []
    for word in dict.fromkeys(re.findall(r"[\w-]{4,}", text)):
        folded = word.casefold()
        if folded in names:
            continue
        close = [names[n] for n in names if _one_edit(folded, n)]
        if close:
            notes.append(f"`{word[:40]}` is not an installed embedding; did you mean `{close[0]}`?")
    return tuple(notes[:3])


def _one_edit(a: str, b: str) -> bool:
    """Whether ``a`` becomes ``b`` by one insertion, deletion or substitution (not equal)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i + (len(a) == len(b)):] == b[i + 1:]


def _sampler(name: str) -> str:
    """A1111's spelling of a sampler name (any letter case); refused with the common names when unknown."""
    try:
        return resolve_sampler(name).name
    except UnsupportedSampler:
        problem = f"A1111's sampler `{name.strip()}` is not supported here"
    except UnknownSampler:
        problem = f"Unknown sampler `{name[:40]}`"
    raise OptionError(f"{problem}; choose one of: {', '.join(SAMPLER_NAMES)} (or any other A1111 sampler name).")


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[0].upper() + text[1:] if text and text[0].islower() else text
    return text if text.endswith((".", "?", "!")) else text + "."


def with_checkpoint_defaults(options: Mapping[str, Any], defaults: CheckpointDefaults) -> dict[str, Any]:
    """``options`` with the checkpoint's own defaults (sampler, steps, CFG, size, clip skip) where the user gave
    none; what the user typed always wins, and a size preset or width/height keeps the checkpoint's size out."""
    filled = dict(options)
    for key in ("sampler", "steps", "cfg_scale"):
        if filled.get(key) is None and getattr(defaults, key) is not None:
            filled[key] = getattr(defaults, key)
    if not any(filled.get(k) for k in ("size", "width", "height")):
        filled["width"] = defaults.width or filled.get("width")
        filled["height"] = defaults.height or filled.get("height")
    advanced = filled.get("advanced") or AdvancedOptions()
    if advanced.clip_skip is None and defaults.clip_skip is not None:
        filled["advanced"] = dataclasses.replace(advanced, clip_skip=defaults.clip_skip)
    return filled
