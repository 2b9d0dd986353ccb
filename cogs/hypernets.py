"""/hypernets: list and inspect the installed hypernetworks; server admins add, edit, enable/disable, remove.

The group is the shared model command implementation (:mod:`cogs.model_commands`) for the hypernetwork kind; the
rules are :class:`bot.models.KindService`'s, the texts :mod:`cogs.model_views`'.  ``info`` also says whether the
checkpoint the file was trained on is installed (renders without a ``model`` use it then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord

from bot.checkpoints import CheckpointCatalog
from bot.models import HYPERNETS
from cogs.embeds import quote
from cogs.model_commands import ModelsCog, StrengthOptions

if TYPE_CHECKING:
    from bot.app import HypercordBot

__all__ = ["HypernetsCog"]


class HypernetsCog(StrengthOptions, ModelsCog, group_name="hypernets", group_description="Browse and manage hypernetworks"):
    """The ``/hypernets`` command group."""

    kind = HYPERNETS

    def annotate_info(self, embed: discord.Embed, model: Any) -> None:
        catalog = self.bot.jobs.catalog
        index = next((i for i, f in enumerate(embed.fields) if f.name == "Trained on"), None)
        if catalog is None or index is None:
            return
        embed.set_field_at(index, name="Trained on", value=trained_on_text(model.base_model, catalog))


def trained_on_text(base_model: str | None, catalog: CheckpointCatalog) -> str:
    """The recorded training checkpoint and whether it is installed (then renders without a ``model`` use it)."""
    if not base_model:
        return "unknown (the file does not record it)"
    entry = catalog.trained_on_record(base_model)
    shown = f"`{quote(base_model, 120)}`"
    if entry is None:
        return f"{shown}, not installed here (renders use the default model)"
    return f"{shown}, installed as model `{entry.name}` (renders without a `model` use it)"


async def setup(bot: HypercordBot) -> None:
    await bot.add_cog(HypernetsCog(bot))
