"""UI parts the cogs share: a confirm question, a pager, and the rule that only the asker may press them.

Why one of each: ``/hypernets remove`` and ``/history delete`` ask the same kind of question, ``/hypernets list``
and ``/history list`` page the same way; one implementation keeps the behaviour (who may press, what a timeout
does, how an answer edits the question) identical everywhere.  Both live on ephemeral messages only for the asker's
session, so they are ordinary views, not the restart-proof buttons of results (:mod:`cogs.buttons`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import discord

from bot.app import HypercordBot
from bot.errors import UserFacingError, send_ephemeral

__all__ = ["ComponentInteraction", "ConfirmView", "Page", "Pager", "hypercord"]

#: What discord.py hands to a button, select or modal callback (typed over any client).
ComponentInteraction = discord.Interaction[discord.Client]


def hypercord(interaction: ComponentInteraction) -> HypercordBot:
    """The bot behind a component interaction, with its services (only a HypercordBot ever registers our views)."""
    client = interaction.client
    if not isinstance(client, HypercordBot):
        raise TypeError(f"expected the HypercordBot, got {type(client).__name__}")
    return client


class _OwnedView(discord.ui.View):
    """A view only ``user_id`` may use; others get ``not_yours`` privately."""

    def __init__(self, user_id: int, *, not_yours: str, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.user_id = user_id
        self.not_yours = not_yours

    async def interaction_check(self, interaction: ComponentInteraction) -> bool:
        if interaction.user.id != self.user_id:
            await send_ephemeral(interaction, self.not_yours)
            return False
        return True


class ConfirmView(_OwnedView):
    """Confirm / keep buttons under a question; the answer replaces the question.

    ``on_confirm`` does the work and returns the text to show; a :class:`UserFacingError` it raises is shown
    instead.  ``kept`` is shown when the other button is pressed.
    """

    def __init__(self, user_id: int, *, confirm: str, keep: str, kept: str,
                 on_confirm: Callable[[], Awaitable[str]], timeout: float = 120) -> None:
        super().__init__(user_id, not_yours="These buttons belong to someone else's question.", timeout=timeout)
        self._on_confirm, self._kept = on_confirm, kept
        self.confirm_button.label = confirm
        self.keep_button.label = keep

    @discord.ui.button(label="Confirm", style=discord.ButtonStyle.danger)
    async def confirm_button(self, interaction: ComponentInteraction, _button: discord.ui.Button[ConfirmView]) -> None:
        self.stop()
        try:
            text = await self._on_confirm()
        except UserFacingError as error:
            text = error.message
        await interaction.response.edit_message(content=text, view=None)

    @discord.ui.button(label="Keep", style=discord.ButtonStyle.secondary)
    async def keep_button(self, interaction: ComponentInteraction, _button: discord.ui.Button[ConfirmView]) -> None:
        self.stop()
        await interaction.response.edit_message(content=self._kept, view=None)


@dataclass(frozen=True, slots=True)
class Page:
    """One page's content (text and/or embed) and whether a next page exists."""

    content: str | None = None
    embed: discord.Embed | None = None
    has_next: bool = False


class Pager(_OwnedView):
    """Previous / Next over pages that ``render(page_number)`` produces (0-based); only the asker turns them."""

    def __init__(self, user_id: int, render: Callable[[int], Awaitable[Page]], *, not_yours: str,
                 labels: tuple[str, str] = ("Previous", "Next"), emojis: tuple[str | None, str | None] = ("◀️", "▶️"),
                 timeout: float = 600) -> None:
        super().__init__(user_id, not_yours=not_yours, timeout=timeout)
        self._render = render
        self.page = 0
        self.previous_button.label, self.next_button.label = labels
        self.previous_button.emoji, self.next_button.emoji = emojis

    async def show(self, page: int) -> Page:
        """Render ``page`` and set the buttons for it."""
        self.page = max(0, page)
        rendered = await self._render(self.page)
        self.previous_button.disabled = self.page == 0
        self.next_button.disabled = not rendered.has_next
        return rendered

    async def _turn(self, interaction: ComponentInteraction, delta: int) -> None:
        rendered = await self.show(self.page + delta)
        await interaction.response.edit_message(content=rendered.content, embed=rendered.embed, view=self)

    @discord.ui.button(label="Previous", style=discord.ButtonStyle.secondary)
    async def previous_button(self, interaction: ComponentInteraction, _button: discord.ui.Button[Pager]) -> None:
        await self._turn(interaction, -1)

    @discord.ui.button(label="Next", style=discord.ButtonStyle.secondary)
    async def next_button(self, interaction: ComponentInteraction, _button: discord.ui.Button[Pager]) -> None:
        await self._turn(interaction, +1)
