"""/loras: list and inspect the installed LoRAs (LoCon and LyCORIS too); server admins add, edit, enable/disable,
remove.

The group is the shared model command implementation (:mod:`cogs.model_commands`) for the LoRA kind; the rules are
:class:`bot.models.KindService`'s, the texts :mod:`cogs.model_views`'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.models import LORAS
from cogs.model_commands import ModelsCog, StrengthOptions

if TYPE_CHECKING:
    from bot.app import HypercordBot

__all__ = ["LorasCog"]


class LorasCog(StrengthOptions, ModelsCog, group_name="loras", group_description="Browse and manage LoRAs"):
    """The ``/loras`` command group."""

    kind = LORAS


async def setup(bot: HypercordBot) -> None:
    await bot.add_cog(LorasCog(bot))
