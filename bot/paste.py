"""A pasted A1111 parameters block (from a model page or an image's PNG Info) as /imagine options.

Why: the settings that reproduce a civitai picture are a dozen fields; typing them into slash options is slow and
error-prone, pasting the block A1111 prints is not.  Every field that decides the pixels becomes the option of
the same meaning; fields we do not render (hires fix, face restoration, ADetailer, ...) are named back to the
user rather than silently dropped.  Pure: :func:`pasted_options` reads text, :func:`bot.options.build_settings`
still checks every value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bot.advanced_options import AdvancedOptions
from engine.infotext import parse_infotext

__all__ = ["PasteError", "PastedOptions", "paste_notes", "pasted_options"]

# Fields that only describe an image (or that Hypercord fills itself) and change nothing when rendering again.
_DESCRIPTIVE = frozenset({
    "Model", "Model hash", "Version", "User", "TI hashes", "Lora hashes", "Hypernet", "Hypernet strength",
    "Hypernet hash", "VAE", "VAE hash", "Emphasis", "Pad conds", "Token merging ratio", "Downcast alphas_cumprod",
    "NGMS", "Schedule max sigma", "Schedule min sigma", "Schedule rho", "Eta", "Hashes",
})
_USED = frozenset({
    "Prompt", "Negative prompt", "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Clip skip",
    "Variation seed", "Variation seed strength", "Seed resize from", "ENSD", "RNG",
})


class PasteError(ValueError):
    """The text is not an A1111 parameters block we can read; ``str()`` says what to paste instead."""


@dataclass(frozen=True, slots=True)
class PastedOptions:
    """/imagine's options from a parameters block; ``ignored`` lists the fields that do not carry over.

    ``model`` and ``model_hash`` say which checkpoint made the image (shown to the user; choosing it is the
    checkpoint option's job).
    """

    prompt: str
    negative_prompt: str
    steps: int | None
    sampler: str | None
    cfg_scale: float | None
    seed: int | None
    width: int | None
    height: int | None
    advanced: AdvancedOptions
    model: str | None = None
    model_hash: str | None = None
    ignored: tuple[str, ...] = field(default=())

    def build_options(self) -> dict[str, object]:
        """Keyword arguments for :func:`bot.options.build_settings` (fields the block lacks keep their defaults)."""
        return {"prompt": self.prompt, "negative_prompt": self.negative_prompt, "steps": self.steps,
                "sampler": self.sampler, "cfg_scale": self.cfg_scale, "seed": self.seed, "width": self.width,
                "height": self.height, "advanced": self.advanced}


def _int(fields: dict[str, str], key: str) -> int | None:
    value = fields.get(key)
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        raise PasteError(f"`{key}: {value[:30]}` is not a whole number.") from None


def _float(fields: dict[str, str], key: str) -> float | None:
    value = fields.get(key)
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        raise PasteError(f"`{key}: {value[:30]}` is not a number.") from None
    if not math.isfinite(number):
        raise PasteError(f"`{key}: {value[:30]}` is not a finite number.")
    return number


def _size(fields: dict[str, str]) -> tuple[int | None, int | None]:
    value = fields.get("Size")
    if value is None:
        return None, None
    w, sep, h = value.strip().lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise PasteError(f"`Size: {value[:30]}` is not of the form WIDTHxHEIGHT.")
    return int(w), int(h)


def pasted_options(text: str) -> PastedOptions:
    """Read an A1111 parameters block; raises :class:`PasteError` when it is not one."""
    fields = parse_infotext(text)
    if "Steps" not in fields or "Seed" not in fields:
        raise PasteError("That does not look like A1111 parameters: paste the whole block, from the prompt down to "
                         "the line that starts with `Steps:` (it has `Seed:`, `Sampler:` and `Size:` in it).")
    if not fields["Prompt"].strip():
        raise PasteError("The pasted parameters have no prompt line above `Steps:`.")
    width, height = _size(fields)
    advanced = AdvancedOptions(
        schedule=fields.get("Schedule type"), clip_skip=_int(fields, "Clip skip"),
        variation_seed=_int(fields, "Variation seed"), variation_strength=_float(fields, "Variation seed strength"),
        seed_resize_from=fields.get("Seed resize from"), ensd=_int(fields, "ENSD"),
        rng=fields.get("RNG", "GPU"))  # no RNG field: A1111's default, the GPU generator
    ignored = tuple(k for k in fields if k not in _USED and k not in _DESCRIPTIVE)
    return PastedOptions(
        prompt=fields["Prompt"], negative_prompt=fields["Negative prompt"], steps=_int(fields, "Steps"),
        sampler=fields.get("Sampler"), cfg_scale=_float(fields, "CFG scale"), seed=_int(fields, "Seed"),
        width=width, height=height, advanced=advanced, model=fields.get("Model"), model_hash=fields.get("Model hash"),
        ignored=ignored)


def paste_notes(pasted: PastedOptions, model_label: str) -> tuple[str, ...]:
    """What the user should know about the job a paste made: fields not rendered, and another model.

    Shown with the job's result, so that an image that differs from the model page says why.
    """
    notes = []
    if pasted.ignored:
        notes.append(f"Not rendered from the pasted parameters: {', '.join(pasted.ignored)} (Hypercord renders "
                     "txt2img without hires fix or extensions).")
    if pasted.model and pasted.model.casefold() != model_label.casefold():
        made_with = f"`{pasted.model}`" + (f" [{pasted.model_hash}]" if pasted.model_hash else "")
        notes.append(f"The pasted image was made with the model {made_with}; this render used `{model_label}`.")
    return tuple(notes)
