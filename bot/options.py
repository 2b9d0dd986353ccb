"""Turn /imagine's slash options into a validated plan for one job; torch-free and free of Discord IO.

Why a pure module: every rule that decides "is this request acceptable" lives here, so the cog stays a thin
adapter, and the same rules apply to a slash command, to the Set-multiplier modal and to stored jobs being
re-run.  Ranges come from ``settings.limits`` (declared to Discord by the cog *and* checked here, because a
client can send anything).  Every refusal is an :class:`OptionError` whose text says what is wrong and how
to fix it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from bot.config import LimitSettings
from bot.store import Job
from engine.prompt import (
    HypernetTag,
    PromptError,
    check_negative_prompt,
    format_multiplier,
    parse_request_prompt,
    rebuild_prompt,
    resolve_names,
)
from engine.protocol import GenerateRequest, HypernetRef

__all__ = [
    "MAX_SEED",
    "SAMPLER_NAMES",
    "SIZE_PRESETS",
    "ImaginePlan",
    "OptionError",
    "build_plan",
    "check_multiplier",
    "clean_text",
    "random_seed",
    "request_for_job",
    "size_choices",
    "step_multiplier",
]

#: Samplers offered as /imagine choices (A1111 names; a test checks each one is known to engine.samplers).
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


class OptionError(ValueError):
    """A refused option; ``str()`` is a complete sentence for the user."""


@dataclass(frozen=True, slots=True)
class ImaginePlan:
    """A validated request, before hypernet names are tied to files (the cog resolves sha256 from the registry)."""

    text: str
    tags: tuple[HypernetTag, ...]
    negative_prompt: str
    seed: int
    steps: int
    cfg_scale: float
    sampler: str
    width: int
    height: int
    count: int

    @property
    def prompt_line(self) -> str:
        """Clean text plus every tag in normalised form: what is stored, shown and written to the infotext."""
        return rebuild_prompt(self.text, self.tags)


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


def build_plan(*, prompt: str, limits: LimitSettings, available: Collection[str], negative_prompt: str | None = None,
               seed: int | None = None, steps: int | None = None, cfg_scale: float | None = None,
               sampler: str | None = None, size: str | None = None, width: int | None = None,
               height: int | None = None, count: int | None = None, hypernet: str | None = None,
               multiplier: float | None = None, default_multipliers: Mapping[str, float] | None = None) -> ImaginePlan:
    """Validate everything; raise :class:`OptionError` (or engine.prompt's PromptError, a ValueError too).

    ``available`` is the set of hypernet names usable in this guild (enabled ones).  ``hypernet``/``multiplier``
    are the option alternative to a tag; without ``multiplier`` the model's default multiplier applies.
    """
    if not prompt or not prompt.strip():
        raise OptionError("The prompt is empty: describe the image you want, e.g. `a lighthouse at dusk`.")
    try:
        parsed = parse_request_prompt(prompt, min_multiplier=limits.min_multiplier,
                                      max_multiplier=limits.max_multiplier, max_tags=limits.max_hypernets,
                                      max_length=limits.max_prompt_length)
        tags = list(parsed.tags)
        if multiplier is not None and not hypernet:
            raise OptionError("`multiplier` needs `hypernet` too: pick a hypernetwork, or put the multiplier in a "
                              "tag like `<hypernet:NAME:0.8>`.")
        if hypernet:
            name = hypernet.strip()
            mult = (default_multipliers or {}).get(name, 1.0) if multiplier is None else multiplier
            tags.append(HypernetTag(name, check_multiplier(mult, limits, name)))
        if len(tags) > limits.max_hypernets:
            raise OptionError(f"Too many hypernetworks ({len(tags)}); at most {limits.max_hypernets} per image.")
        resolve_names(tags, available)
        negative = check_negative_prompt(negative_prompt or "", max_length=limits.max_prompt_length)
    except PromptError as exc:
        raise OptionError(_sentence(str(exc))) from None
    steps = limits.default_steps if steps is None else steps
    _check_range("Steps", steps, limits.min_steps, limits.max_steps)
    cfg = limits.default_cfg_scale if cfg_scale is None else float(cfg_scale)
    _check_range("CFG scale", cfg, limits.min_cfg_scale, limits.max_cfg_scale, "{:g}")
    sampler = sampler or limits.default_sampler
    if sampler not in SAMPLER_NAMES and sampler != limits.default_sampler:
        raise OptionError(f"Unknown sampler `{sampler}`; choose one of: {', '.join(SAMPLER_NAMES)}.")
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
    return ImaginePlan(parsed.text, tuple(tags), negative, seed, steps, cfg, sampler, w, h, count)


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[0].upper() + text[1:] if text and text[0].islower() else text
    return text if text.endswith((".", "?", "!")) else text + "."


def clean_text(prompt_line: str) -> str:
    """The text-encoder prompt of a stored job (its prompt line without the tags); wide limits, because the
    configured ones may have changed since the job was stored."""
    parsed = parse_request_prompt(prompt_line, min_multiplier=-1e9, max_multiplier=1e9, max_tags=10_000,
                                  max_length=1_000_000)
    return parsed.text


def request_for_job(job: Job) -> GenerateRequest:
    """The engine request for a stored job (jobs keep the exact files they used; zero multipliers are skipped)."""
    refs = tuple(HypernetRef(h.name, h.sha256, h.multiplier) for h in job.hypernets if h.multiplier != 0)
    return GenerateRequest(job_id=job.id, user_id=job.user_id, prompt=clean_text(job.prompt), prompt_line=job.prompt,
                           negative_prompt=job.negative_prompt, hypernets=refs, seed=job.seed, steps=job.steps,
                           cfg_scale=job.cfg_scale, sampler=job.sampler, width=job.width, height=job.height,
                           count=job.count)
