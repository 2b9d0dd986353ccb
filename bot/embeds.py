"""The result embed and the Info text of a job, always inside Discord's embed limits.

Why separate: the same rendering serves the live result, ``/show`` and ``/history``, and the limits (title 256,
description 4096, field value 1024, 6000 characters in total) are easy to break with a long prompt, so every
user-supplied string passes through :func:`clip` here and nowhere else.
"""

from __future__ import annotations

import discord

from bot.store import Job
from engine.infotext import build_infotext
from engine.prompt import format_multiplier

__all__ = ["EMBED_TOTAL", "clip", "embed_chars", "infotext_for", "result_embed", "status_label"]

EMBED_TOTAL = 6000
_DESCRIPTION = 4096
_FIELD = 1024
_COLOUR = discord.Colour(0x5865F2)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis; never empty (Discord refuses empty field values)."""
    text = text or "—"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _code(text: str, limit: int) -> str:
    """Inline-quote user text so markdown in prompts cannot restyle the embed."""
    return clip(text.replace("`", "ˋ"), limit)


def status_label(job: Job) -> str:
    return {"queued": "queued", "running": "rendering", "done": "done", "failed": "failed",
            "cancelled": "cancelled"}.get(job.status, job.status)


def result_embed(job: Job, *, model_name: str, note: str = "") -> discord.Embed:
    """Prompt, negative prompt, hypernets with multipliers, seed, steps, CFG, sampler, size, model, time taken."""
    embed = discord.Embed(title=f"Job #{job.id}", colour=_COLOUR, description=_code(job.prompt, 1800))
    if job.negative_prompt:
        embed.add_field(name="Negative prompt", value=_code(job.negative_prompt, 900), inline=False)
    if job.hypernets:
        lines = [f"`{h.name}` × {format_multiplier(h.multiplier)}" for h in job.hypernets]
        embed.add_field(name="Hypernetworks", value=clip("\n".join(lines), 900), inline=False)
    seeds = str(job.seed) if job.count == 1 else f"{job.seed}–{job.seed + job.count - 1}"
    embed.add_field(name="Seed", value=seeds)
    embed.add_field(name="Steps", value=str(job.steps))
    embed.add_field(name="CFG scale", value=format_multiplier(job.cfg_scale))
    embed.add_field(name="Sampler", value=clip(job.sampler, 100))
    embed.add_field(name="Size", value=f"{job.width}×{job.height}")
    embed.add_field(name="Model", value=clip(model_name or job.checkpoint, 200))
    if job.warnings:  # e.g. a hypernet made for another model family: visible, not buried in the footer
        embed.add_field(name="⚠️ Warnings", value=clip("\n".join(job.warnings), 1000), inline=False)
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
    """A1111's ``parameters`` text for image ``seed_offset`` of the job (what the PNG carries)."""
    return build_infotext(job.prompt, job.negative_prompt, job.steps, job.sampler, job.cfg_scale,
                          job.seed + seed_offset, job.width, job.height, model_name or None)
