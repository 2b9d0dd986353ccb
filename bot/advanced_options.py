"""A1111's settings beyond the basics — schedule type, clip skip, variation seed, seed resize, ENSD, noise source.

Why a module of its own: they are rarely typed but always pasted (an A1111 infotext carries them), so they arrive
together as one :class:`AdvancedOptions` value, from the slash command's optional fields or from a pasted
parameters block, and are checked here with one message per mistake.  Pure and torch-free, like
:mod:`bot.options`, which calls :func:`advanced_fields` while building a job's settings.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from engine.render_settings import MAX_CLIP_SKIP
from engine.samplers import NOISE_SOURCES, SCHEDULE_TYPES, UnknownSchedule, resolve_schedule

__all__ = ["MAX_SEED_RESIZE", "AdvancedOptions", "OptionProblem", "advanced_fields"]

#: The largest "Seed resize from" side A1111's slider offers.
MAX_SEED_RESIZE = 2048
_MAX_32 = 2**32 - 1


class OptionProblem(ValueError):
    """One advanced option is wrong; ``str()`` is a complete sentence (bot.options re-raises it as OptionError)."""


@dataclass(frozen=True, slots=True)
class AdvancedOptions:
    """The options as given; None means "the default" (A1111's own defaults)."""

    schedule: str | None = None
    clip_skip: int | None = None
    variation_seed: int | None = None
    variation_strength: float | None = None
    seed_resize_from: str | None = None  # "WIDTHxHEIGHT"
    ensd: int | None = None
    rng: str | None = None


def _schedule(label: str | None) -> str:
    if label is None or not label.strip():
        return "Automatic"
    try:
        return resolve_schedule(label)
    except UnknownSchedule:
        raise OptionProblem(f"Unknown schedule type `{label[:40]}`; choose one of: {', '.join(SCHEDULE_TYPES)}.") from None


def _rng(source: str | None) -> str:
    if source is None or not source.strip():
        return "GPU"
    folded = {s.casefold(): s for s in NOISE_SOURCES}.get(source.strip().casefold())
    if folded is None:
        raise OptionProblem(f"Unknown noise source `{source[:20]}`; choose one of: {', '.join(NOISE_SOURCES)} "
                            "(GPU is A1111's default).")
    return folded


def _resize(text: str | None) -> tuple[int, int] | None:
    if text is None or not text.strip():
        return None
    w_text, sep, h_text = text.strip().lower().partition("x")
    if not sep or not w_text.strip().isdigit() or not h_text.strip().isdigit():
        raise OptionProblem(f"Seed resize `{text[:20]}` is not of the form WIDTHxHEIGHT, e.g. `512x768`.")
    w, h = int(w_text), int(h_text)
    if w == 0 and h == 0:  # A1111's "off"
        return None
    for side in (w, h):
        if not 8 <= side <= MAX_SEED_RESIZE or side % 8:
            raise OptionProblem(f"Seed resize sides must be multiples of 8 between 8 and {MAX_SEED_RESIZE}; "
                                f"you gave {w}x{h}.")
    return w, h


def _variation(seed: int | None, strength: float | None) -> tuple[int | None, float]:
    value = 0.0 if strength is None else float(strength)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise OptionProblem(f"Variation strength must be between 0 and 1; you gave {strength}.")
    if seed is not None and seed > _MAX_32:
        raise OptionProblem(f"The variation seed must be between 0 and {_MAX_32} (or -1 for a random one); "
                            f"you gave {seed}.")
    if value == 0.0:
        return (None if seed is None or seed < 0 else seed), 0.0
    if seed is None or seed < 0:
        seed = random.SystemRandom().randint(0, _MAX_32)
    return seed, round(value, 4) + 0.0


def advanced_fields(options: AdvancedOptions) -> dict[str, object]:
    """The :class:`RenderSettings` fields these options give; raises :class:`OptionProblem`.

    A variation strength without a variation seed draws a random one (A1111's -1); a seed without a strength is
    kept but does nothing, as in A1111.
    """
    clip_skip = 1 if options.clip_skip is None else options.clip_skip
    if not 1 <= clip_skip <= MAX_CLIP_SKIP:
        raise OptionProblem(f"Clip skip must be between 1 and {MAX_CLIP_SKIP} (2 for most anime checkpoints); "
                            f"you gave {clip_skip}.")
    ensd = 0 if options.ensd is None else options.ensd
    if not 0 <= ensd <= _MAX_32:
        raise OptionProblem(f"ENSD must be between 0 and {_MAX_32} (31337 is the usual one); you gave {ensd}.")
    subseed, strength = _variation(options.variation_seed, options.variation_strength)
    return {"schedule": _schedule(options.schedule), "clip_skip": clip_skip, "subseed": subseed,
            "subseed_strength": strength, "seed_resize_from": _resize(options.seed_resize_from),
            "eta_noise_seed_delta": ensd, "rng": _rng(options.rng)}
