"""User-facing errors and the one place that renders them, privately, whatever the interaction already answered.

Why one handler: every command raises ``UserFacingError`` (or an engine/store error with a safe message) for bad
input, and this module turns it into a private reply.  Anything else is a bug: it is logged with the command, user,
guild and a reference the user can quote, and the user sees a short apology with that reference instead of a silent
"The application did not respond".

Why the placeholder is edited first: after a *public* ``defer()`` Discord turns the first follow-up into an edit of
the public "thinking…" message, whatever its ephemeral flag says, so an "ephemeral" error would be shown to everyone
in place of the placeholder.  A public deferral therefore goes through :func:`defer_public`, which marks the
interaction; a private reply to a marked interaction first edits the placeholder into one neutral line
(:data:`NOT_COMPLETED`), and only then sends the reason as a second, really ephemeral follow-up.  If the placeholder
cannot be edited, the reason is not sent at all: a lost reason is better than one user's error shown in the channel.
"""

from __future__ import annotations

import logging
import uuid

import discord
from discord import app_commands

from bot.db import StoreError
from engine.errors import EngineError
from engine.prompt import PromptError

__all__ = ["NOT_COMPLETED", "UserFacingError", "answer_error", "defer_public", "install_error_handler",
           "send_ephemeral"]

log = logging.getLogger(__name__)

#: What the public placeholder of a request that failed after its deferral is edited into (the reason goes privately).
NOT_COMPLETED = "⚠️ This request could not be completed. The reason was sent privately to the member who made it."

# Marks, in ``Interaction.extras``, an interaction whose public placeholder still stands for the whole request.
_PUBLIC_PLACEHOLDER = "hypercord.public_placeholder"


class UserFacingError(Exception):
    """An error whose message is written for the user (shown ephemerally, not logged as a bug)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def defer_public(interaction: discord.Interaction[discord.Client]) -> int | None:
    """Defer with a public "thinking…" placeholder; returns its message id (None if Discord did not say).

    Every public deferral goes through here, so that :func:`send_ephemeral` knows the first follow-up would land in
    public and neutralises the placeholder before answering privately."""
    response = await interaction.response.defer(thinking=True)
    interaction.extras[_PUBLIC_PLACEHOLDER] = True
    return response.message_id if response is not None else None


async def send_ephemeral(interaction: discord.Interaction[discord.Client], content: str) -> None:
    """Reply privately whether or not the interaction was already answered or deferred (see the module docstring)."""
    content = content[:2000]
    if not interaction.response.is_done():
        await interaction.response.send_message(content, ephemeral=True)
        return
    if interaction.extras.pop(_PUBLIC_PLACEHOLDER, False):
        try:
            await interaction.edit_original_response(content=NOT_COMPLETED, embed=None, view=None, attachments=[])
        except discord.HTTPException as exc:
            log.warning("could not replace the public placeholder of interaction %s (%s %s); the private reply is "
                        "not sent, so that it cannot land in public", interaction.id, exc.status, exc.code)
            return
    await interaction.followup.send(content, ephemeral=True)


def _message_for(error: BaseException) -> str | None:
    """The user-safe text for known error types (app-command wrappers unwrapped); None for bugs."""
    original = getattr(error, "original", error)
    if isinstance(original, UserFacingError):
        return original.message
    # Engine, store and prompt errors carry user-safe messages by contract.
    if isinstance(original, (StoreError, EngineError, PromptError)):
        return str(original)
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: try again in {error.retry_after:.0f} s."
    if isinstance(error, app_commands.MissingPermissions):
        perms = ", ".join(p.replace("_", " ").title() for p in error.missing_permissions)
        return f"You need the {perms} permission to do that."
    if isinstance(error, app_commands.CheckFailure):
        return str(error) or "You are not allowed to use this command."
    if isinstance(error, app_commands.TransformerError):
        return f"`{error.value}` is not valid for this option."
    return None


async def answer_error(interaction: discord.Interaction[discord.Client], error: BaseException, *, where: str) -> None:
    """Tell the user privately what went wrong; a bug is logged (``where``: the command or button) with a reference."""
    message = _message_for(error)
    if message is None:
        ref = uuid.uuid4().hex[:8]
        log.error("%s failed (ref %s, user %s, guild %s)", where, ref, interaction.user.id, interaction.guild_id,
                  exc_info=getattr(error, "original", error))
        message = f"Something went wrong on our side (ref `{ref}`). The bot's owner can find it in the logs."
    try:
        await send_ephemeral(interaction, message)
    except discord.HTTPException:
        log.warning("could not deliver an error message to user %s", interaction.user.id, exc_info=True)


def install_error_handler(tree: app_commands.CommandTree) -> None:
    """Route every app-command error through one renderer."""

    @tree.error
    async def on_app_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        command = interaction.command.qualified_name if interaction.command else "?"
        await answer_error(interaction, error, where=f"command /{command}")
