"""Model name autocomplete (hypernetworks, LoRAs, embeddings), shared by /imagine, /history and the model cogs.

Why a function over the store rather than a cache: the registry query is indexed and small, and reading it at
each keystroke means a model added, disabled or removed by an admin shows up (or disappears) at once.  Discord
wants an answer within 3 seconds and at most 25 choices; the typed text is not limited to the choices, so the
commands validate the final value again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from bot.store import ModelRepository, Store

if TYPE_CHECKING:
    from bot.app import HypercordBot

__all__ = ["guarded_choices", "hypernet_autocomplete", "hypernet_choices", "model_choices"]

log = logging.getLogger(__name__)
MAX_CHOICES = 25


async def hypernet_choices(store: Store, guild_id: int | None, current: str, *,
                           include_disabled: bool = False) -> list[app_commands.Choice[str]]:
    """:func:`model_choices` over the hypernetworks."""
    return await model_choices(store.hypernets, guild_id, current, include_disabled=include_disabled)


async def model_choices(models: ModelRepository[Any, Any], guild_id: int | None, current: str, *,
                        include_disabled: bool = False) -> list[app_commands.Choice[str]]:
    """Up to 25 models of one kind visible in this guild whose name, description or trigger words contain
    ``current``.  Names that start with the typed text come first."""
    query = current.strip() or None
    found = await models.search(guild_id, query, include_disabled=include_disabled, limit=MAX_CHOICES)
    folded = (current or "").strip().casefold()
    found.sort(key=lambda h: (not h.name.casefold().startswith(folded), h.name.casefold()))
    choices = []
    for h in found[:MAX_CHOICES]:
        label = h.name if h.enabled else f"{h.name} (disabled)"
        if h.description:
            label = f"{label} — {h.description}"
        choices.append(app_commands.Choice(name=label[:100], value=h.name[:100]))
    return choices


async def hypernet_autocomplete(interaction: discord.Interaction[HypercordBot],
                                current: str) -> list[app_commands.Choice[str]]:
    """``@command.autocomplete("hypernet")`` callback: enabled models of the interaction's guild (and global ones)."""
    return await guarded_choices(interaction, current, include_disabled=False)


async def guarded_choices(interaction: discord.Interaction[HypercordBot], current: str, *,
                          include_disabled: bool) -> list[app_commands.Choice[str]]:
    """:func:`hypernet_choices` for an autocomplete callback: an error only shows an empty list, and is logged."""
    try:
        return await hypernet_choices(interaction.client.store, interaction.guild_id, current,
                                      include_disabled=include_disabled)
    except Exception:
        log.exception("hypernet autocomplete failed")
        return []
