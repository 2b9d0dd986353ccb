"""One image's A1111 infotext from its job's :class:`RenderSettings`: every field A1111 writes for those settings.

Why one function for both sides: the worker writes it into the PNG, and the bot rebuilds it for the Info button
when the PNG is gone (or was re-encoded to fit Discord's upload limit).  Written in one place, the two cannot
disagree about which fields an image gets.  Pure, so the bot uses it without torch.

Field rules follow A1111's ``create_infotext``: ``Schedule type`` only when one was chosen (a combined name such as
"DPM++ 2M Karras" carries its schedule itself), variation fields only at a non-zero strength, ``Clip skip`` above 1,
``ENSD`` when it is set and the sampler draws step noise (the only samplers it changes), ``RNG`` unless it is A1111's
default GPU, ``TI hashes`` for the embeddings the prompts used and ``Lora hashes`` for the job's LoRAs (A1111's
short hashes, where the registry knows them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine.infotext import build_infotext
from engine.prompt import format_multiplier
from engine.render_settings import RenderSettings
from engine.samplers import UnknownSampler, resolve_sampler

__all__ = ["noise_fields", "settings_infotext"]


def _uses_ensd(sampler: str) -> bool:
    try:
        return resolve_sampler(sampler).uses_ensd
    except UnknownSampler:
        return False


def noise_fields(settings: RenderSettings, image: int) -> dict[str, str | None]:
    """The infotext fields (besides ``Seed``) that decide image ``image``'s random numbers."""
    s = settings
    subseed = s.image_seeds()[image].subseed
    return {
        "Schedule type": None if s.schedule == "Automatic" else s.schedule,
        "Variation seed": None if subseed is None else str(subseed),
        "Variation seed strength": format_multiplier(s.subseed_strength) if subseed is not None else None,
        "Seed resize from": f"{s.seed_resize_from[0]}x{s.seed_resize_from[1]}" if s.seed_resize_from else None,
        "Clip skip": str(s.clip_skip) if s.clip_skip > 1 else None,
        "ENSD": str(s.eta_noise_seed_delta) if s.eta_noise_seed_delta and _uses_ensd(s.sampler) else None,
        "RNG": None if s.rng == "GPU" else s.rng,
    }


def settings_infotext(settings: RenderSettings, image: int, *, model_name: str | None, model_hash: str | None = None,
                      embeddings: Sequence[tuple[str, str]] = (), extra: Mapping[str, str | None] | None = None) -> str:
    """A1111's ``parameters`` text for image ``image`` (0-based) of a job.

    ``embeddings`` are the (name, short hash) pairs of the textual inversions the prompts used, in order of use;
    ``extra`` adds fields A1111 writes for things these settings do not hold (``Lora hashes``, ``Version``...).
    """
    s = settings
    if not 0 <= image < s.count:
        raise ValueError(f"image {image} is not one of the job's {s.count}")
    fields = noise_fields(s, image)
    if embeddings:
        fields["TI hashes"] = ", ".join(f"{name}: {digest}" for name, digest in embeddings)
    loras = {x.name: x.short_hash for x in s.loras if x.short_hash}
    if loras:
        fields["Lora hashes"] = ", ".join(f"{name}: {digest}" for name, digest in loras.items())
    fields.update(extra or {})
    return build_infotext(s.infotext_prompt, s.negative_prompt, s.steps, s.sampler, s.cfg_scale,
                          s.image_seeds()[image].seed, s.width, s.height, model_name, model_hash, extra=fields)
