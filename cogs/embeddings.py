"""/embeddings: list and inspect the installed textual-inversion embeddings; server admins add, edit,
enable/disable, remove.

The group is the shared model command implementation (:mod:`cogs.model_commands`) for the embedding kind, without
a strength option; the rules are :class:`bot.models.KindService`'s, the texts :mod:`cogs.model_views`'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.models import EMBEDDINGS
from cogs.model_commands import ModelsCog, PlainOptions

if TYPE_CHECKING:
    from bot.app import HypercordBot

__all__ = ["EmbeddingsCog"]


class EmbeddingsCog(PlainOptions, ModelsCog, group_name="embeddings",
                    group_description="Browse and manage textual-inversion embeddings"):
    """The ``/embeddings`` command group."""

    kind = EMBEDDINGS


async def setup(bot: HypercordBot) -> None:
    await bot.add_cog(EmbeddingsCog(bot))
