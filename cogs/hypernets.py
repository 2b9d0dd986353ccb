"""/hypernets: list and inspect the installed hypernetworks; server admins add, edit, enable/disable, remove.

The group is the shared model command implementation (:mod:`cogs.model_commands`) for the hypernetwork kind; the
rules are :class:`bot.models.KindService`'s, the texts :mod:`cogs.model_views`'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.models import HYPERNETS
from cogs.model_commands import ModelsCog, StrengthOptions

if TYPE_CHECKING:
    from bot.app import HypercordBot

__all__ = ["HypernetsCog"]


class HypernetsCog(StrengthOptions, ModelsCog, group_name="hypernets", group_description="Browse and manage hypernetworks"):
    """The ``/hypernets`` command group."""

    kind = HYPERNETS


async def setup(bot: HypercordBot) -> None:
    await bot.add_cog(HypernetsCog(bot))
