"""/models: the checkpoints (base models) this server may render with; admins choose the default and which to offer.

Why apart from the add-on model groups (/hypernets, /loras, /embeddings): checkpoints are installed by the bot's
owner (config.toml and the checkpoints folder, :mod:`bot.checkpoints`), never uploaded, so a server only chooses
among them: ``list`` for everyone (name, family, per-checkpoint defaults, the installed hypernetworks trained on
each), ``default``, ``allow`` and ``disallow`` for members with Manage Server (checked in code).  The choices live
in the store (:mod:`bot.store.guild_checkpoints`); how a request picks its model is :mod:`bot.jobs.checkpoint_choice`.
Also here: the ``model`` autocomplete of /imagine.  Answers are ephemeral.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

import discord
from discord import app_commands
from discord.ext import commands

from bot.checkpoints import CatalogEntry, CheckpointCatalog
from bot.checks import require_guild_manager
from bot.errors import UserFacingError
from bot.jobs.checkpoint_choice import available, find_installed, server_default
from bot.store import GuildCheckpoints, Hypernet
from cogs.embeds import quote

if TYPE_CHECKING:
    from bot.app import HypercordBot

__all__ = ["CheckpointsCog", "checkpoint_autocomplete", "list_text"]

Interaction = discord.Interaction["HypercordBot"]

log = logging.getLogger(__name__)
MAX_CHOICES = 25
LIST_LIMIT = 1900

NOT_INSTALLED = "There is no installed model named `{name}`. `/models list` shows the installed models."
DEFAULT_SET = ("`{name}` is now this server's default model: requests that name no model render with it, unless their "
               "hypernetwork was trained on another installed model.")
DEFAULT_CLEARED = "This server now uses the bot's default model, `{name}`."
ALLOWED = "`{name}` is offered on this server again."
DISALLOWED = "`{name}` is no longer offered on this server; requests naming it are refused."
NOT_THE_DEFAULT = ("`{name}` is the default model here, so it cannot be disallowed. Choose another default first "
                   "with `/models default`.")


def _defaults_text(entry: CatalogEntry) -> str:
    d = entry.defaults
    parts = [f"{d.sampler}" if d.sampler else "", f"{d.steps} steps" if d.steps else "",
             f"CFG {d.cfg_scale:g}" if d.cfg_scale else "", f"{d.width}x{d.height}" if d.width and d.height else "",
             f"clip skip {d.clip_skip}" if d.clip_skip else ""]
    return ", ".join(p for p in parts if p) or "the server-wide defaults"


def trained_on_each(catalog: CheckpointCatalog, hypernets: dict[str, Hypernet]) -> dict[str, list[str]]:
    """Per checkpoint name, the hypernetworks (of those given) whose file says they were trained on it."""
    found: dict[str, list[str]] = {}
    for hn in hypernets.values():
        entry = catalog.trained_on_record(hn.base_model) if hn.base_model else None
        if entry is not None:
            found.setdefault(entry.name, []).append(hn.name)
    return found


def list_text(catalog: CheckpointCatalog, guild: GuildCheckpoints, hypernets: dict[str, Hypernet]) -> str:
    """What ``/models list`` shows: every installed model, this server's default first."""
    default, whose = server_default(catalog, guild)
    trained = trained_on_each(catalog, hypernets)
    entries = sorted(catalog.usable(), key=lambda e: (e.name != default.name, e.name.casefold()))
    lines = [f"**Models** (use one with `/imagine model:`; the default is {whose}):"]
    for e in entries:
        marks = [" — default" if e.name == default.name else "",
                 " — not offered here" if e.name in guild.disallowed else ""]
        label = f" ({quote(e.display_name, 60)})" if e.display_name else ""
        line = f"• `{e.name}`{label}: {e.family_label}; defaults: {_defaults_text(e)}{''.join(marks)}"
        if trained.get(e.name):
            line += f"; trained on it: {', '.join(f'`{n}`' for n in sorted(trained[e.name])[:10])}"
        lines.append(line)
    text = "\n".join(lines)
    return text if len(text) <= LIST_LIMIT else text[:LIST_LIMIT - 1] + "…"


async def checkpoint_autocomplete(interaction: Interaction, current: str) -> list[app_commands.Choice[str]]:
    """The models this server may use whose name or display name contains the typed text (its default first)."""
    try:
        bot = interaction.client
        catalog = bot.jobs.catalog
        if catalog is None:
            return []
        guild = await bot.store.checkpoints.get(interaction.guild_id)
        default, _ = server_default(catalog, guild)
        folded = current.strip().casefold()
        entries = [e for e in available(catalog, guild) if folded in e.name.casefold() or folded in e.label.casefold()]
        entries.sort(key=lambda e: (e.name != default.name, not e.name.casefold().startswith(folded), e.name.casefold()))
        return [app_commands.Choice(name=(e.name if e.label == e.name else f"{e.name} — {e.display_name}")[:100],
                                    value=e.name[:100]) for e in entries[:MAX_CHOICES]]
    except Exception:  # an autocomplete error only shows an empty list
        log.exception("model autocomplete failed")
        return []


async def installed_autocomplete(interaction: Interaction, current: str) -> list[app_commands.Choice[str]]:
    """Every installed model (an admin may allow one that is not offered now)."""
    catalog = interaction.client.jobs.catalog
    folded = current.strip().casefold()
    names = sorted(e.name for e in (catalog.usable() if catalog else []) if folded in e.name.casefold())
    return [app_commands.Choice(name=n[:100], value=n[:100]) for n in names[:MAX_CHOICES]]


class CheckpointsCog(commands.GroupCog, group_name="models", group_description="The models (checkpoints) you can use"):
    """The ``/models`` command group."""

    def __init__(self, bot: HypercordBot) -> None:
        self.bot = bot
        super().__init__()

    def _catalog(self) -> CheckpointCatalog:
        catalog = self.bot.jobs.catalog
        if catalog is None:
            raise UserFacingError("This bot has no model catalog; ask its owner to install checkpoints.")
        return catalog

    def _installed(self, name: str) -> CatalogEntry:
        entry = find_installed(self._catalog(), name)
        if entry is None:
            raise UserFacingError(NOT_INSTALLED.format(name=quote(name.strip(), 80)))
        return entry

    @app_commands.command(name="list", description="List the models you can use here")
    @app_commands.guild_only()
    async def list_models(self, interaction: Interaction) -> None:
        guild = await self.bot.store.checkpoints.get(interaction.guild_id)
        hypernets = await self.bot.store.hypernets.usable(interaction.guild_id)
        await interaction.response.send_message(list_text(self._catalog(), guild, hypernets), ephemeral=True)

    @app_commands.command(name="default", description="Choose this server's default model (Manage Server)")
    @app_commands.describe(name="The model; leave empty to use the bot's default again")
    @app_commands.autocomplete(name=checkpoint_autocomplete)
    @app_commands.guild_only()
    async def default(self, interaction: Interaction, name: Optional[str] = None) -> None:  # noqa: UP045
        require_guild_manager(interaction)
        assert interaction.guild_id is not None
        store = self.bot.store.checkpoints
        if not name or not name.strip():
            await store.set_default(interaction.guild_id, None, by=interaction.user.id)
            text = DEFAULT_CLEARED.format(name=self._catalog().default)
        else:
            entry = self._installed(name)
            await store.set_default(interaction.guild_id, entry.name, by=interaction.user.id)
            text = DEFAULT_SET.format(name=entry.name)
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="allow", description="Offer an installed model on this server again (Manage Server)")
    @app_commands.describe(name="The model")
    @app_commands.autocomplete(name=installed_autocomplete)
    @app_commands.guild_only()
    async def allow(self, interaction: Interaction, name: str) -> None:
        await self._set_allowed(interaction, name, allowed=True)

    @app_commands.command(name="disallow", description="Stop offering a model on this server (Manage Server)")
    @app_commands.describe(name="The model")
    @app_commands.autocomplete(name=checkpoint_autocomplete)
    @app_commands.guild_only()
    async def disallow(self, interaction: Interaction, name: str) -> None:
        await self._set_allowed(interaction, name, allowed=False)

    async def _set_allowed(self, interaction: Interaction, name: str, *, allowed: bool) -> None:
        require_guild_manager(interaction)
        assert interaction.guild_id is not None
        entry = self._installed(name)
        store = self.bot.store.checkpoints
        if not allowed and server_default(self._catalog(), await store.get(interaction.guild_id))[0].name == entry.name:
            raise UserFacingError(NOT_THE_DEFAULT.format(name=entry.name))
        await store.set_allowed(interaction.guild_id, entry.name, allowed, by=interaction.user.id)
        await interaction.response.send_message((ALLOWED if allowed else DISALLOWED).format(name=entry.name),
                                                ephemeral=True)


async def setup(bot: HypercordBot) -> None:
    await bot.add_cog(CheckpointsCog(bot))
