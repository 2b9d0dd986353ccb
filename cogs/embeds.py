"""The result embed and the Info text of a job, always inside Discord's embed limits.

Why separate: the same rendering serves the live result, ``/show`` and ``/history``, and the limits (title 256,
description 4096, field value 1024, 6000 characters in total) are easy to break with a long prompt, so every
user-supplied string passes through :func:`clip` here and nowhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord

from bot.jobs.checkpoint_choice import entry_of
from bot.store import Job
from engine.prompt import format_multiplier
from engine.render_settings import RenderSettings
from engine.settings_infotext import settings_infotext

if TYPE_CHECKING:
    from bot.app import HypercordBot

__all__ = ["EMBED_TOTAL", "checkpoint_label", "clip", "embed_chars", "infotext_for", "model_label", "quote",
           "result_embed", "seed_label", "status_label"]

EMBED_TOTAL = 6000
_DESCRIPTION = 4096
_FIELD = 1024
_COLOUR = discord.Colour(0x5865F2)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis; never empty (Discord refuses empty field values)."""
    text = text or "—"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quote(text: str, limit: int) -> str:
    """User text shown in an embed or a message: backticks defused (they would end our code spans), bounded."""
    return clip(text.replace("`", "ˋ"), limit)


def status_label(job: Job) -> str:
    return {"queued": "queued", "running": "rendering", "done": "done", "failed": "failed",
            "cancelled": "cancelled"}.get(job.status, job.status)


def _span(first: int, count: int) -> str:
    return str(first) if count == 1 else f"{first}–{first + count - 1}"


def seed_label(s: RenderSettings) -> str:
    """The seeds as A1111 assigns them, plus whatever else decides the noise (variation, ENSD, clip skip...)."""
    seeds = _span(s.seed, 1 if s.variation else s.count)
    if s.variation:
        assert s.subseed is not None
        seeds += f" · variation {_span(s.subseed, s.count)} at {format_multiplier(s.subseed_strength)}"
    extras = []
    if s.seed_resize_from:
        extras.append(f"resized from {s.seed_resize_from[0]}×{s.seed_resize_from[1]}")
    if s.eta_noise_seed_delta:
        extras.append(f"ENSD {s.eta_noise_seed_delta}")
    if s.rng != "GPU":
        extras.append(f"{s.rng} noise")
    if s.clip_skip > 1:
        extras.append(f"clip skip {s.clip_skip}")
    return clip(" · ".join([seeds, *extras]), 200)


def checkpoint_label(bot: HypercordBot, checkpoint: str) -> str:
    """How a job's checkpoint is shown: its display name, ``models.model_name`` for ``models.checkpoint`` (the one
    checkpoint of earlier versions), else its name ("" for a checkpoint no longer installed: the caller shows the
    job's setting)."""
    legacy = bot.settings.models
    entry = entry_of(bot.jobs.catalog, checkpoint) if bot.jobs.catalog is not None else None
    if entry is None:
        return legacy.model_name if checkpoint == legacy.checkpoint else ""
    if entry.display_name:
        return entry.display_name
    return legacy.model_name if entry.source == legacy.checkpoint and legacy.model_name else entry.name


def model_label(job: Job, model_name: str) -> str:
    """What the job's model is called: the configured display name, else the job's checkpoint setting."""
    return model_name or job.settings.checkpoint


def result_embed(job: Job, *, model_name: str, note: str = "") -> discord.Embed:
    """Prompt, negative prompt, hypernets with multipliers, seed, steps, CFG, sampler, size, model, time taken."""
    s = job.settings
    embed = discord.Embed(title=f"Job #{job.id}", colour=_COLOUR, description=quote(s.prompt, 1800))
    if s.negative_prompt:
        embed.add_field(name="Negative prompt", value=quote(s.negative_prompt, 900), inline=False)
    if s.hypernets:
        lines = [f"`{h.name}` × {format_multiplier(h.multiplier)}" for h in s.hypernets]
        embed.add_field(name="Hypernetworks", value=clip("\n".join(lines), 900), inline=False)
    if s.loras:
        lines = [f"`{x.name}` × {format_multiplier(x.unet)}" + (f" (text {format_multiplier(x.te)})" if x.te != x.unet
                                                                else "") for x in s.loras]
        embed.add_field(name="LoRAs", value=clip("\n".join(lines), 900), inline=False)
    embed.add_field(name="Seed", value=seed_label(s))
    embed.add_field(name="Steps", value=str(s.steps))
    embed.add_field(name="CFG scale", value=format_multiplier(s.cfg_scale))
    embed.add_field(name="Sampler", value=clip(s.sampler if s.schedule == "Automatic" else f"{s.sampler} · {s.schedule}",
                                               100))
    embed.add_field(name="Size", value=f"{s.width}×{s.height}")
    embed.add_field(name="Model", value=clip(model_label(job, model_name), 200))
    notes = (*job.notes, *job.warnings)
    if notes:  # e.g. a hypernet made for another model family: visible, not buried in the footer
        embed.add_field(name="⚠️ Warnings", value=clip("\n".join(notes), 1000), inline=False)
    footer = f"{job.duration_s:.1f} s" if job.duration_s is not None else status_label(job)
    if note:
        footer += " · " + note
    embed.set_footer(text=clip(footer, 500))
    assert embed_chars(embed) <= EMBED_TOTAL
    return embed


def embed_chars(embed: discord.Embed) -> int:
    """Characters Discord counts toward the 6000 total."""
    total = len(embed.title or "") + len(embed.description or "") + len(embed.footer.text or "")
    total += len(embed.author.name or "")
    return total + sum(len(f.name or "") + len(f.value or "") for f in embed.fields)


def infotext_for(job: Job, model_name: str, seed_offset: int = 0) -> str:
    """A1111's ``parameters`` text for image ``seed_offset`` of the job (what the PNG carries, less what only the
    worker knows: the model hash and the embeddings' hashes)."""
    return settings_infotext(job.settings, seed_offset, model_name=model_label(job, model_name))
