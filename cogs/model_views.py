"""What the model command groups show: listing pages, the info embed, the "added" and rescan replies, per kind.

Why one module for the three kinds: the layout is the same everywhere (name, scope, what it is, how to use it,
who added it, flags for a model that does little on the running checkpoint); only a few facts differ, and those
come from one small :class:`Presentation` per kind (a hypernetwork shows its sizes, a LoRA its format and layers, an
embedding its vectors).  Everything from a file or an admin passes through ``quote`` / ``clean_text`` here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import discord

from bot.models import EMBEDDINGS, HYPERNETS, LORAS, AddOutcome, FolderSyncReport, KindService, ModelKind
from cogs.embeds import clip, quote
from cogs.ui import Page
from engine.intake import clean_text, quote_text
from engine.intake.identify import FAMILY_LABELS
from engine.lora_tags import LoraTag, format_lora_tag
from engine.prompt import format_multiplier, format_tag

__all__ = ["PAGE_SIZE", "ListPages", "Presentation", "added_text", "info_embed", "presentation", "rescan_text",
           "scope_label"]

PAGE_SIZE = 10
_COLOUR = discord.Colour(0x5865F2)
_MiB = 1 << 20

Fields = list[tuple[str, str]]


@dataclass(frozen=True)
class Presentation:
    """How one kind reads: ``example`` (what to type in a prompt), ``summary`` (the facts in one clause, for the
    "added" reply), ``tag`` (the listing's short label), ``facts`` (the info embed's fields), ``how_to_use`` (the
    listing footer), ``folders`` (what a rescan looks at)."""

    example: Callable[[Any], str]
    summary: Callable[[Any], str]
    tag: Callable[[Any], str]
    facts: Callable[[Any], Fields]
    how_to_use: str
    folders: str


def _mult(value: float) -> str:
    return format_multiplier(value)


def _family(row: Any) -> str:
    return FAMILY_LABELS.get(row.family or "", "an unknown model")


def _hash_field(row: Any, infotext: str) -> tuple[str, str]:
    return "Hash", f"`{row.short_hash}` (A1111's {infotext})"


def _lora_facts(row: Any) -> Fields:
    fields = [("Format", f"{clip(row.lora_format, 60)} for {_family(row)}"),
              ("Layers", f"{row.unet_modules} UNet, {row.te_modules} text encoder"), _hash_field(row, "Lora hashes")]
    if row.alias and row.alias != row.name:
        fields.append(("Alias", quote(row.alias, 100)))
    return fields


def _lora_summary(row: Any) -> str:
    return (f"{clean_text(row.lora_format, 60)} for {_family(row)}, {row.unet_modules} UNet and {row.te_modules} "
            f"text-encoder layers")


_PRESENTATIONS = {
    HYPERNETS.key: Presentation(
        example=lambda h: format_tag(h.name, h.default_multiplier),
        summary=lambda h: (f"sizes {', '.join(map(str, h.sizes))}, {clean_text(h.activation, 40)}, "
                           f"layers [{', '.join(_mult(x) for x in h.layer_structure)}]"),
        tag=lambda h: f"×{_mult(h.default_multiplier)}",
        facts=lambda h: [("Sizes", ", ".join(str(s) for s in h.sizes) or "none"),
                         ("Layer structure", clip("[" + ", ".join(_mult(x) for x in h.layer_structure) + "]", 200)),
                         ("Activation", clip(h.activation, 100))],
        how_to_use="use a model in /imagine with <hypernet:NAME:MULTIPLIER>", folders="models folder"),
    LORAS.key: Presentation(
        example=lambda x: format_lora_tag(LoraTag(x.name, x.default_multiplier, x.default_multiplier)),
        summary=_lora_summary, tag=lambda x: f"{clean_text(x.lora_format, 40)} · ×{_mult(x.default_multiplier)}",
        facts=_lora_facts, how_to_use="use a LoRA in /imagine with <lora:NAME:MULTIPLIER>", folders="LoRA folders"),
    EMBEDDINGS.key: Presentation(
        example=lambda e: e.name,
        summary=lambda e: f"{e.vectors} vector{'' if e.vectors == 1 else 's'} of width {e.width}",
        tag=lambda e: f"{e.vectors} vector{'' if e.vectors == 1 else 's'}",
        facts=lambda e: [("Vectors", str(e.vectors)), ("Width", str(e.width)), _hash_field(e, "TI hashes")],
        how_to_use="use an embedding by writing its name in a prompt or negative prompt", folders="embeddings folder"),
}


def presentation(kind: ModelKind) -> Presentation:
    return _PRESENTATIONS[kind.key]


def scope_label(row: Any) -> str:
    return "global" if row.is_global else "this server"


def _usage(kind: ModelKind, row: Any) -> str:
    example = presentation(kind).example(row)
    if kind.has_strength:
        return f"`{example}` in an /imagine prompt"
    return f"`{example}` as a word in a prompt or negative prompt"


def _listing_line(kind: ModelKind, row: Any, flag: str | None) -> str:
    line = f"**`{row.name}`** · {scope_label(row)} · {presentation(kind).tag(row)}"
    if row.description:
        line += f" — {quote(row.description, 90)}"
    if flag:
        line += f"\n⚠️ {flag}"
    return line


class ListPages:
    """Pages of ``/<kind> list``: models visible in a guild matching a query, by name, with fit flags."""

    def __init__(self, service: KindService, guild_id: int | None, query: str | None) -> None:
        self.service, self.guild_id, self.query = service, guild_id, query

    async def render(self, page: int) -> Page:
        kind, registry = self.service.kind, self.service.registry
        total = await registry.count_search(self.guild_id, self.query)
        pages = max(1, math.ceil(total / PAGE_SIZE))
        page = min(page, pages - 1)
        rows = await registry.search(self.guild_id, self.query, offset=page * PAGE_SIZE, limit=PAGE_SIZE)
        title = f"{kind.title} ({total})" if not self.query else f"{kind.title} matching “{clip(self.query, 60)}”"
        embed = discord.Embed(title=title, colour=_COLOUR)
        if rows:
            embed.description = "\n".join(_listing_line(kind, r, self.service.compatibility(r)) for r in rows)[:4000]
        else:
            embed.description = ("No model matches that search." if self.query
                                 else f"No {kind.plural} are installed here yet.")
        embed.set_footer(text=f"Page {page + 1}/{pages} · {presentation(kind).how_to_use} · details: "
                              f"/{kind.command} info")
        return Page(embed=embed, has_next=page < pages - 1)


def info_embed(kind: ModelKind, row: Any, flag: str | None) -> discord.Embed:
    """Everything known about one model, within Discord's embed limits."""
    embed = discord.Embed(title=clip(row.name, 256), colour=_COLOUR,
                          description=quote(row.description, 1000) if row.description else None)
    embed.add_field(name="Use it", value=_usage(kind, row), inline=False)
    if flag:
        embed.add_field(name="⚠️ Compatibility", value=clip(flag, 1000), inline=False)
    for name, value in presentation(kind).facts(row):
        embed.add_field(name=name, value=value)
    embed.add_field(name="Trained on", value=quote(row.base_model or "unknown", 200))
    if kind.has_strength:
        embed.add_field(name="Default multiplier", value=_mult(row.default_multiplier))
    embed.add_field(name="Trigger words", value=quote(row.trigger_words, 500) if row.trigger_words else "none")
    embed.add_field(name="Scope", value="global (every server)" if row.is_global else "this server only")
    added_by = f"<@{row.added_by}>" if row.added_by is not None else "the bot owner (models folder)"
    embed.add_field(name="Added", value=f"by {added_by}, <t:{int(row.added_at)}:R>")
    embed.add_field(name="Status", value="enabled" if row.enabled else "disabled")
    embed.set_footer(text=f"sha256 {row.sha256[:10]} · {row.file_size / _MiB:.1f} MiB · source: {row.source}")
    return embed


def added_text(kind: ModelKind, outcome: AddOutcome) -> str:
    row, shown = outcome.model, presentation(kind)
    use = (f"Use it with `{shown.example(row)}`." if kind.has_strength
           else f"Use it by writing `{shown.example(row)}` in a prompt or negative prompt.")
    text = f"Added `{row.name}` ({scope_label(row)}): {shown.summary(row)}. {use}"
    for note in outcome.notes:
        text += f"\n⚠️ {clean_text(note, 300)}"
    return text[:2000]


def rescan_text(kind: ModelKind, report: FolderSyncReport) -> str:
    """The rescan report; every path and reason passes through clean_text (they come from the owner's folder)."""
    lines = [f"Rescanned the {presentation(kind).folders}: {report.summary()}."]
    for label, names in (("added", report.added), ("updated", report.updated), ("removed", report.removed)):
        if names:
            lines.append(f"{label.capitalize()}: " + ", ".join(f"`{quote_text(n, 64)}`" for n in names[:30]))
    lines += [f"✗ `{quote_text(path, 100)}`: {clean_text(reason, 300)}" for path, reason in report.refused[:15]]
    if len(report.refused) > 15:
        lines.append(f"…and {len(report.refused) - 15} more refused files (the log lists them all).")
    return "\n".join(lines)[:2000]
