"""User-facing errors and the one place that renders them.

Why one handler: every command raises ``UserFacingError`` (or an engine/store error with a safe
message) for bad input, and this handler turns it into an ephemeral reply. Anything else is a bug:
it is logged with the command, user, guild and a reference the user can quote, and the user sees a
short apology with that reference instead of a silent "The application did not respond".
"""

from __future__ import annotations

import logging
import uuid

import discord
from discord import app_commands

from bot.db import StoreError
from engine.errors import EngineError
from engine.prompt import PromptError

log = logging.getLogger(__name__)


class UserFacingError(Exception):
    """An error whose message is written for the user (shown ephemerally, not logged as a bug)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def send_ephemeral(interaction: discord.Interaction[discord.Client], content: str) -> None:
    """Reply ephemerally whether or not the interaction was already answered or deferred."""
    content = content[:2000]
    if interaction.response.is_done():
        await interaction.followup.send(content, ephemeral=True)
    else:
        await interaction.response.send_message(content, ephemeral=True)


def _message_for(error: app_commands.AppCommandError) -> str | None:
    """The user-safe text for known error types; None for bugs."""
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


def install_error_handler(tree: app_commands.CommandTree) -> None:
    """Route every app-command error through one renderer."""

    @tree.error
    async def on_app_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        message = _message_for(error)
        if message is None:
            ref = uuid.uuid4().hex[:8]
            command = interaction.command.qualified_name if interaction.command else "?"
            log.error("command /%s failed (ref %s, user %s, guild %s)", command, ref, interaction.user.id,
                      interaction.guild_id, exc_info=getattr(error, "original", error))
            message = f"Something went wrong on our side (ref `{ref}`). The bot's owner can find it in the logs."
        try:
            await send_ephemeral(interaction, message)
        except discord.HTTPException:
            log.warning("could not deliver an error message to user %s", interaction.user.id, exc_info=True)
