"""/hypernets: list and inspect the installed hypernetworks; server admins add, edit, enable/disable, remove.

Why the cog is thin: every rule (names, scopes, intake, garbage collection, the size-compatibility flag) lives
in :class:`bot.models.ModelService` (``bot.models`` on the bot), which tests drive without Discord.  This module
turns options into calls and results into ephemeral replies.  Permissions are checked in code (``bot.checks``):
``default_permissions`` cannot even be set per subcommand, and is only a hint anyway.  Admin answers are
ephemeral; nothing an admin does is announced in the channel.  Every refusal is one line, written by the service
or by intake.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, Optional

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import bot_owner_only, guild_manager_only, is_bot_owner, is_guild_manager, require_bot_owner
from bot.errors import UserFacingError
from bot.models import AddOutcome, FolderSyncReport, ModelError, ModelOptions, ModelService, folder_source_note
from bot.store import Hypernet
from cogs.autocomplete import guarded_choices, hypernet_autocomplete
from cogs.embeds import clip, quote
from cogs.ui import ConfirmView, Page, Pager
from engine.intake import clean_text, quote_text
from engine.prompt import format_multiplier, format_tag

if TYPE_CHECKING:
    from bot.app import HypercordBot

Interaction = discord.Interaction["HypercordBot"]

log = logging.getLogger(__name__)

PAGE_SIZE = 10
PROGRESS_EVERY_S = 1.5
_COLOUR = discord.Colour(0x5865F2)
_MiB = 1 << 20


def _mult(value: float) -> str:
    return format_multiplier(value)


def example_tag(h: Hypernet) -> str:
    return format_tag(h.name, h.default_multiplier)


def _scope(h: Hypernet) -> str:
    return "global" if h.is_global else "this server"


def _listing_line(h: Hypernet, flag: str | None) -> str:
    line = f"**`{h.name}`** · {_scope(h)} · ×{_mult(h.default_multiplier)}"
    if h.description:
        line += f" — {quote(h.description, 90)}"
    if flag:
        line += f"\n⚠️ {flag}"
    return line


class ListPages:
    """Pages of ``/hypernets list``: models visible in a guild matching a query, by name, with fit flags."""

    def __init__(self, service: ModelService, guild_id: int | None, query: str | None) -> None:
        self.service, self.guild_id, self.query = service, guild_id, query

    async def render(self, page: int) -> Page:
        store = self.service.store.hypernets
        total = await store.count_search(self.guild_id, self.query)
        pages = max(1, math.ceil(total / PAGE_SIZE))
        page = min(page, pages - 1)
        rows = await store.search(self.guild_id, self.query, offset=page * PAGE_SIZE, limit=PAGE_SIZE)
        title = f"Hypernetworks ({total})" if not self.query else f"Hypernetworks matching “{clip(self.query, 60)}”"
        embed = discord.Embed(title=title, colour=_COLOUR)
        if rows:
            embed.description = "\n".join(_listing_line(h, self.service.compatibility(h)) for h in rows)[:4000]
        else:
            embed.description = ("No model matches that search." if self.query
                                 else "No hypernetworks are installed here yet.")
        embed.set_footer(text=f"Page {page + 1}/{pages} · use a model in /imagine with "
                              f"<hypernet:NAME:MULTIPLIER> · details: /hypernets info")
        return Page(embed=embed, has_next=page < pages - 1)


def info_embed(h: Hypernet, flag: str | None) -> discord.Embed:
    """Everything known about one model, within Discord's embed limits."""
    embed = discord.Embed(title=clip(h.name, 256), colour=_COLOUR,
                          description=quote(h.description, 1000) if h.description else None)
    embed.add_field(name="Use it", value=f"`{example_tag(h)}` in an /imagine prompt", inline=False)
    if flag:
        embed.add_field(name="⚠️ Compatibility", value=clip(flag, 1000), inline=False)
    embed.add_field(name="Sizes", value=", ".join(str(s) for s in h.sizes) or "none")
    embed.add_field(name="Layer structure", value=clip("[" + ", ".join(_mult(x) for x in h.layer_structure) + "]", 200))
    embed.add_field(name="Activation", value=clip(h.activation, 100))
    embed.add_field(name="Trained on", value=quote(h.base_model or "unknown", 200))
    embed.add_field(name="Default multiplier", value=_mult(h.default_multiplier))
    embed.add_field(name="Trigger words", value=quote(h.trigger_words, 500) if h.trigger_words else "none")
    embed.add_field(name="Scope", value="global (every server)" if h.is_global else "this server only")
    added_by = f"<@{h.added_by}>" if h.added_by is not None else "the bot owner (models folder)"
    embed.add_field(name="Added", value=f"by {added_by}, <t:{int(h.added_at)}:R>")
    embed.add_field(name="Status", value="enabled" if h.enabled else "disabled")
    embed.set_footer(text=f"sha256 {h.sha256[:10]} · {h.file_size / _MiB:.1f} MiB · source: {h.source}")
    return embed


def _added_text(outcome: AddOutcome) -> str:
    h = outcome.hypernet
    text = (f"Added `{h.name}` ({'global' if h.is_global else 'this server'}): sizes "
            f"{', '.join(map(str, h.sizes))}, {clean_text(h.activation, 40)}, "
            f"layers [{', '.join(_mult(x) for x in h.layer_structure)}]. Use it with `{example_tag(h)}`.")
    for note in outcome.notes:
        text += f"\n⚠️ {clean_text(note, 300)}"
    return text[:2000]


def _rescan_text(report: FolderSyncReport) -> str:
    """The rescan report; every path and reason passes through clean_text (they come from the owner's folder)."""
    lines = [f"Rescanned the models folder: {report.summary()}."]
    for label, names in (("added", report.added), ("updated", report.updated), ("removed", report.removed)):
        if names:
            lines.append(f"{label.capitalize()}: " + ", ".join(f"`{quote_text(n, 64)}`" for n in names[:30]))
    lines += [f"✗ `{quote_text(path, 100)}`: {clean_text(reason, 300)}" for path, reason in report.refused[:15]]
    if len(report.refused) > 15:
        lines.append(f"…and {len(report.refused) - 15} more refused files (the log lists them all).")
    return "\n".join(lines)[:2000]


class HypernetsCog(commands.GroupCog, group_name="hypernets", group_description="Browse and manage hypernetworks"):
    """The ``/hypernets`` command group."""

    def __init__(self, bot: HypercordBot) -> None:
        self.bot = bot
        self.service = bot.models
        super().__init__()

    async def cog_app_command_error(self, interaction: Interaction,  # type: ignore[override]
                                    error: app_commands.AppCommandError) -> None:
        """Log refusals (permissions, bad names...); the tree's handler shows them, and logs real bugs itself."""
        original = getattr(error, "original", error)
        if isinstance(error, app_commands.CheckFailure) or isinstance(original, UserFacingError):
            command = interaction.command.qualified_name if interaction.command else "?"
            log.info("/%s refused for user %s in guild %s: %s", command, interaction.user.id, interaction.guild_id,
                     getattr(original, "message", None) or str(error))

    # ---- helpers --------------------------------------------------------------------------------------------

    async def _managed(self, interaction: Interaction, name: str) -> Hypernet:
        hypernet = await self.service.find(name, interaction.guild_id)
        self.service.require_manageable(hypernet, interaction.guild_id, is_owner=is_bot_owner(interaction))
        return hypernet

    async def _admin_names(self, interaction: Interaction, current: str) -> list[app_commands.Choice[str]]:
        """Names an admin can act on: disabled ones included (to enable them again)."""
        return await guarded_choices(interaction, current, include_disabled=True)

    # ---- everyone ---------------------------------------------------------------------------------------------

    @app_commands.command(name="list", description="List the hypernetworks you can use here")
    @app_commands.describe(query="Only models whose name, description or trigger words contain this")
    async def list_models(self, interaction: Interaction,
                          query: Optional[app_commands.Range[str, 1, 100]] = None) -> None:  # noqa: UP045
        pages = ListPages(self.service, interaction.guild_id, query)
        pager = Pager(interaction.user.id, pages.render,
                      not_yours="These buttons belong to someone else's list; run `/hypernets list` yourself.")
        first = await pager.show(0)
        assert first.embed is not None
        if first.has_next:
            await interaction.response.send_message(embed=first.embed, view=pager, ephemeral=True)
        else:
            await interaction.response.send_message(embed=first.embed, ephemeral=True)

    @app_commands.command(name="info", description="Details of one hypernetwork")
    @app_commands.describe(name="The model's name, as typed in tags (case-sensitive)")
    @app_commands.autocomplete(name=hypernet_autocomplete)
    async def info(self, interaction: Interaction, name: app_commands.Range[str, 1, 100]) -> None:
        manager = is_guild_manager(interaction) or is_bot_owner(interaction)
        hypernet = await self.service.find(name, interaction.guild_id, include_disabled=manager)
        embed = info_embed(hypernet, self.service.compatibility(hypernet))
        await interaction.response.send_message(embed=embed, ephemeral=True)

    # ---- server admins ----------------------------------------------------------------------------------------

    @app_commands.command(name="add", description="Add a hypernetwork (.pt) from an attachment or a download link")
    @app_commands.describe(file="The .pt (or .safetensors) file", link="A download link from an allowed host",
                           name="Name to type in tags (default: the file name without extension)",
                           description="What it does", trigger_words="Words that work well with it",
                           default_multiplier="Strength used when a tag gives none (default 1)",
                           scope="Who can use it (global: bot owners only)")
    @guild_manager_only()
    async def add(self, interaction: Interaction, file: Optional[discord.Attachment] = None,  # noqa: UP045
                  link: Optional[app_commands.Range[str, 1, 1000]] = None,  # noqa: UP045
                  name: Optional[app_commands.Range[str, 1, 100]] = None,  # noqa: UP045
                  description: Optional[app_commands.Range[str, 1, 500]] = None,  # noqa: UP045
                  trigger_words: Optional[app_commands.Range[str, 1, 200]] = None,  # noqa: UP045
                  default_multiplier: Optional[float] = None,  # noqa: UP045
                  scope: Literal["server", "global"] = "server") -> None:
        if scope == "global":
            require_bot_owner(interaction)
        if (file is None) == (link is None):
            raise ModelError("Give either a file or a link (one of them).")
        options = ModelOptions(name=name, description=description or "", trigger_words=trigger_words or "",
                               default_multiplier=1.0 if default_multiplier is None else default_multiplier)
        guild_id = None if scope == "global" else interaction.guild_id
        max_bytes = self.service.settings.intake.max_file_mb * _MiB
        if file is not None and file.size > max_bytes:
            raise ModelError(f"Refused: the file is larger than the {max_bytes / _MiB:.1f} MiB limit.")
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            if file is not None:
                await interaction.edit_original_response(content=f"Checking `{quote_text(file.filename, 100)}`…")
                data = await file.read()
                outcome = await self.service.add_from_bytes(data, filename=file.filename, guild_id=guild_id,
                                                            added_by=interaction.user.id, options=options,
                                                            source="attachment", source_detail=file.filename[:200])
            else:
                assert link is not None
                outcome = await self.service.add_from_url(link.strip(), guild_id=guild_id,
                                                          added_by=interaction.user.id, options=options,
                                                          progress=self._progress(interaction))
        except ModelError as error:
            await interaction.edit_original_response(content=error.message)
            return
        await interaction.edit_original_response(content=_added_text(outcome))

    @staticmethod
    def _progress(interaction: Interaction) -> Callable[[int, int | None], Awaitable[None]]:
        """Download progress as edits of the deferred reply, at most one every PROGRESS_EVERY_S seconds."""
        last = [0.0]

        async def report(done: int, total: int | None) -> None:
            now = time.monotonic()
            if now - last[0] < PROGRESS_EVERY_S and not (total is not None and done >= total):
                return
            last[0] = now
            shown = f"{done / _MiB:.1f} MiB" + (f" of {total / _MiB:.1f} MiB ({100 * done // total}%)" if total else "")
            try:
                await interaction.edit_original_response(content=f"Downloading… {shown}")
            except discord.HTTPException:
                log.debug("could not show download progress", exc_info=True)

        return report

    @app_commands.command(name="edit", description="Change a hypernetwork's description, trigger words or default")
    @app_commands.describe(name="The model to change", description="New description",
                           trigger_words="New trigger words", default_multiplier="New default multiplier")
    @app_commands.autocomplete(name=_admin_names)
    @guild_manager_only()
    async def edit(self, interaction: Interaction, name: app_commands.Range[str, 1, 100],
                   description: Optional[app_commands.Range[str, 0, 500]] = None,  # noqa: UP045
                   trigger_words: Optional[app_commands.Range[str, 0, 200]] = None,  # noqa: UP045
                   default_multiplier: Optional[float] = None) -> None:  # noqa: UP045
        hypernet = await self._managed(interaction, name)
        updated = await self.service.edit(hypernet, description=description, trigger_words=trigger_words,
                                          default_multiplier=default_multiplier)
        await interaction.response.send_message(f"Updated `{updated.name}`.",
                                                embed=info_embed(updated, self.service.compatibility(updated)),
                                                ephemeral=True)

    @app_commands.command(name="enable", description="Let members use a disabled hypernetwork again")
    @app_commands.describe(name="The model to enable")
    @app_commands.autocomplete(name=_admin_names)
    @guild_manager_only()
    async def enable(self, interaction: Interaction, name: app_commands.Range[str, 1, 100]) -> None:
        await self._set_enabled(interaction, name, True)

    @app_commands.command(name="disable", description="Hide a hypernetwork from lists and prompts (keeps it installed)")
    @app_commands.describe(name="The model to disable")
    @app_commands.autocomplete(name=_admin_names)
    @guild_manager_only()
    async def disable(self, interaction: Interaction, name: app_commands.Range[str, 1, 100]) -> None:
        await self._set_enabled(interaction, name, False)

    async def _set_enabled(self, interaction: Interaction, name: str, enabled: bool) -> None:
        hypernet = await self._managed(interaction, name)
        if hypernet.enabled == enabled:
            await interaction.response.send_message(f"`{hypernet.name}` is already {'enabled' if enabled else 'disabled'}.",
                                                    ephemeral=True)
            return
        updated = await self.service.set_enabled(hypernet, enabled)
        text = (f"Enabled `{updated.name}`." if enabled
                else f"Disabled `{updated.name}`: it no longer appears in lists and prompts using it are refused.")
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="remove", description="Uninstall a hypernetwork (asks for confirmation)")
    @app_commands.describe(name="The model to remove")
    @app_commands.autocomplete(name=_admin_names)
    @guild_manager_only()
    async def remove(self, interaction: Interaction, name: app_commands.Range[str, 1, 100]) -> None:
        hypernet = await self._managed(interaction, name)
        if hypernet.source == "folder":  # said before asking; the service refuses it too
            raise ModelError(folder_source_note(hypernet))

        async def remove() -> str:
            removed = await self.service.remove(hypernet)
            return f"Removed `{removed.name}`. Past images keep its name in everyone's history."

        view = ConfirmView(interaction.user.id, confirm="Remove", keep="Keep", kept=f"Kept `{hypernet.name}`.",
                           on_confirm=remove)
        await interaction.response.send_message(
            f"Remove `{hypernet.name}` ({_scope(hypernet)})? Prompts using it will stop working; past images keep "
            f"their history.", view=view, ephemeral=True)

    # ---- bot owners -------------------------------------------------------------------------------------------

    @app_commands.command(name="rescan", description="Re-scan the models folder (bot owners)")
    @bot_owner_only()
    async def rescan(self, interaction: Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        report = await self.service.sync_model_folder()
        await interaction.edit_original_response(content=_rescan_text(report))


async def setup(bot: HypercordBot) -> None:
    await bot.add_cog(HypernetsCog(bot))
