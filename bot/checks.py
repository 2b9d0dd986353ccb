"""Permission checks enforced in code (``default_permissions`` is only a UI hint to Discord).

Guild admins are members with Manage Server (Administrator implies it: Discord computes the bit
set for administrators, but we test both to be safe). Global models and owner tools are for the
ids listed in ``discord.owner_ids``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

#: What the decorators below accept: an app command or its callback (discord.py's own check typing).
T = TypeVar("T", bound=app_commands.Command[Any, ..., Any] | Callable[..., Any])


class NotAllowed(app_commands.CheckFailure):
    """Raised by the checks below; its message is shown to the user."""


def is_guild_manager(interaction: discord.Interaction) -> bool:
    """True for members with Manage Server or Administrator in this guild (never in DMs)."""
    if interaction.guild is None or not isinstance(interaction.user, discord.Member):
        return False
    perms = interaction.permissions
    return bool(perms.manage_guild or perms.administrator)


def is_bot_owner(interaction: discord.Interaction) -> bool:
    """True for the owners named in the settings (read from the bot instance, never a global)."""
    client = interaction.client
    owner_ids = (client.owner_ids or set()) if isinstance(client, commands.Bot) else set()
    return interaction.user.id in owner_ids


def require_guild_manager(interaction: discord.Interaction) -> None:
    if not is_guild_manager(interaction):
        raise NotAllowed("Only members with the **Manage Server** permission can do that.")


def require_bot_owner(interaction: discord.Interaction) -> None:
    if not is_bot_owner(interaction):
        raise NotAllowed("Only the bot's owners can do that.")


def guild_manager_only() -> Callable[[T], T]:
    """Decorator: app command check + Discord UI hint (Manage Server)."""

    def predicate(interaction: discord.Interaction) -> bool:
        require_guild_manager(interaction)
        return True

    def decorator(func: T) -> T:
        return app_commands.check(predicate)(app_commands.default_permissions(manage_guild=True)(func))

    return decorator


def bot_owner_only() -> Callable[[T], T]:
    """Decorator: app command check for the configured owners."""

    def predicate(interaction: discord.Interaction) -> bool:
        require_bot_owner(interaction)
        return True

    return app_commands.check(predicate)
