"""The one implementation of the model command groups: ``/hypernets``, ``/loras``, ``/embeddings`` share every verb.

Surface (each group): ``list [query]``, ``info name`` for everyone; ``add file|link [name] [description]
[trigger_words] [default_multiplier] [scope]``, ``edit``, ``enable``, ``disable``, ``remove`` for server admins
(Manage Server; global models: the bot's owners); ``rescan`` for the bot's owners.  Embeddings have no strength, so
their ``add`` and ``edit`` have no ``default_multiplier`` (:class:`PlainOptions` instead of
:class:`StrengthOptions`).

Why a base class and two option mixins rather than a cog per kind: every rule lives in the kind's
:class:`bot.models.KindService`, every text in :mod:`cogs.model_views`; the groups differ only in their
:class:`bot.models.ModelKind`, so a kind's cog is a class declaration (``cogs/hypernets.py``...).  Permissions are
checked in code (``bot.checks``): ``default_permissions`` cannot be set per subcommand and is only a hint anyway.
Admin answers are ephemeral; nothing an admin does is announced in the channel.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import bot_owner_only, guild_manager_only, is_bot_owner, is_guild_manager, require_bot_owner
from bot.errors import UserFacingError
from bot.models import KindService, ModelError, ModelKind, ModelOptions, folder_source_note
from cogs.autocomplete import model_choices
from cogs.model_views import ListPages, added_text, info_embed, rescan_text, scope_label
from cogs.ui import ConfirmView, Pager
from engine.intake import quote_text

if TYPE_CHECKING:
    from bot.app import HypercordBot

__all__ = ["ModelsCog", "PlainOptions", "StrengthOptions"]

Interaction = discord.Interaction["HypercordBot"]

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.5
_MiB = 1 << 20
_NAME = "The model's name, as typed in prompts (case-sensitive)"


def _descriptions(kind: ModelKind) -> dict[str, str]:
    """Each subcommand's description, in the kind's words."""
    files = {"hypernet": " (.pt)", "lora": " (.safetensors or .pt)", "embedding": " (.pt, .bin or .safetensors)"}
    strength = "trigger words or default" if kind.has_strength else "or trigger words"
    return {
        "list": f"List the {kind.plural} you can use here",
        "info": f"Details of one {kind.noun}",
        "add": f"Add {kind.article}{files[kind.key]} from an attachment or a download link",
        "edit": f"Change {kind.article}'s description, {strength}",
        "enable": f"Let members use a disabled {kind.noun} again",
        "disable": f"Hide {kind.article} from lists and prompts (keeps it installed)",
        "remove": f"Uninstall {kind.article} (asks for confirmation)",
        "rescan": f"Re-scan the {kind.noun} folders (bot owners)",
    }


class ModelsCog(commands.GroupCog):
    """The verbs every kind has; a kind's cog sets :attr:`kind` and mixes in its ``add``/``edit`` options."""

    kind: ClassVar[ModelKind]

    def __init__(self, bot: HypercordBot) -> None:
        self.bot = bot
        self.service: KindService = bot.models.kind(self.kind.key)
        super().__init__()
        texts = _descriptions(self.kind)
        for command in self.walk_app_commands():  # this cog's own copies: safe to reword per kind
            command.description = texts.get(command.name, command.description)

    async def cog_app_command_error(self, interaction: Interaction,  # type: ignore[override]
                                    error: app_commands.AppCommandError) -> None:
        """Log refusals (permissions, bad names...); the tree's handler shows them, and logs real bugs itself."""
        original = getattr(error, "original", error)
        if isinstance(error, app_commands.CheckFailure) or isinstance(original, UserFacingError):
            command = interaction.command.qualified_name if interaction.command else "?"
            log.info("/%s refused for user %s in guild %s: %s", command, interaction.user.id, interaction.guild_id,
                     getattr(original, "message", None) or str(error))

    # ---- helpers --------------------------------------------------------------------------------------------

    async def _managed(self, interaction: Interaction, name: str) -> Any:
        model = await self.service.find(name, interaction.guild_id)
        self.service.require_manageable(model, interaction.guild_id, is_owner=is_bot_owner(interaction))
        return model

    async def _choices(self, interaction: Interaction, current: str, *,
                       include_disabled: bool) -> list[app_commands.Choice[str]]:
        try:
            return await model_choices(self.service.registry, interaction.guild_id, current,
                                       include_disabled=include_disabled)
        except Exception:  # an autocomplete error only shows an empty list
            log.exception("%s autocomplete failed", self.kind.noun)
            return []

    async def _names(self, interaction: Interaction, current: str) -> list[app_commands.Choice[str]]:
        """Names members can use (enabled ones)."""
        return await self._choices(interaction, current, include_disabled=False)

    async def _admin_names(self, interaction: Interaction, current: str) -> list[app_commands.Choice[str]]:
        """Names an admin can act on: disabled ones included (to enable them again)."""
        return await self._choices(interaction, current, include_disabled=True)

    async def _add(self, interaction: Interaction, *, file: discord.Attachment | None, link: str | None,
                   options: ModelOptions, scope: str) -> None:
        if scope == "global":
            require_bot_owner(interaction)
        if (file is None) == (link is None):
            raise ModelError("Give either a file or a link (one of them).")
        guild_id = None if scope == "global" else interaction.guild_id
        max_bytes = self.service.installer.limits.max_bytes
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
        await interaction.edit_original_response(content=added_text(self.kind, outcome))

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

    async def _edit(self, interaction: Interaction, name: str, *, description: str | None, trigger_words: str | None,
                    default_multiplier: float | None) -> None:
        model = await self._managed(interaction, name)
        updated = await self.service.edit(model, description=description, trigger_words=trigger_words,
                                          default_multiplier=default_multiplier)
        await interaction.response.send_message(f"Updated `{updated.name}`.",
                                                embed=info_embed(self.kind, updated, self.service.compatibility(updated)),
                                                ephemeral=True)

    async def _set_enabled(self, interaction: Interaction, name: str, enabled: bool) -> None:
        model = await self._managed(interaction, name)
        if model.enabled == enabled:
            await interaction.response.send_message(f"`{model.name}` is already {'enabled' if enabled else 'disabled'}.",
                                                    ephemeral=True)
            return
        updated = await self.service.set_enabled(model, enabled)
        text = (f"Enabled `{updated.name}`." if enabled
                else f"Disabled `{updated.name}`: it no longer appears in lists and prompts using it are refused.")
        await interaction.response.send_message(text, ephemeral=True)

    # ---- everyone ---------------------------------------------------------------------------------------------

    @app_commands.command(name="list", description="List the models you can use here")
    @app_commands.describe(query="Only models whose name, description or trigger words contain this")
    async def list_models(self, interaction: Interaction,
                          query: Optional[app_commands.Range[str, 1, 100]] = None) -> None:  # noqa: UP045
        pages = ListPages(self.service, interaction.guild_id, query)
        pager = Pager(interaction.user.id, pages.render,
                      not_yours=f"These buttons belong to someone else's list; run `/{self.kind.command} list` "
                                "yourself.")
        first = await pager.show(0)
        assert first.embed is not None
        if first.has_next:
            await interaction.response.send_message(embed=first.embed, view=pager, ephemeral=True)
        else:
            await interaction.response.send_message(embed=first.embed, ephemeral=True)

    @app_commands.command(name="info", description="Details of one model")
    @app_commands.describe(name=_NAME)
    @app_commands.autocomplete(name=_names)
    async def info(self, interaction: Interaction, name: app_commands.Range[str, 1, 100]) -> None:
        manager = is_guild_manager(interaction) or is_bot_owner(interaction)
        model = await self.service.find(name, interaction.guild_id, include_disabled=manager)
        embed = info_embed(self.kind, model, self.service.compatibility(model))
        self.annotate_info(embed, model)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    def annotate_info(self, embed: discord.Embed, model: Any) -> None:
        """What a kind adds to ``info`` (hypernetworks: whether their training checkpoint is installed)."""

    # ---- server admins ----------------------------------------------------------------------------------------

    @app_commands.command(name="enable", description="Let members use a disabled model again")
    @app_commands.describe(name="The model to enable")
    @app_commands.autocomplete(name=_admin_names)
    @guild_manager_only()
    async def enable(self, interaction: Interaction, name: app_commands.Range[str, 1, 100]) -> None:
        await self._set_enabled(interaction, name, True)

    @app_commands.command(name="disable", description="Hide a model from lists and prompts (keeps it installed)")
    @app_commands.describe(name="The model to disable")
    @app_commands.autocomplete(name=_admin_names)
    @guild_manager_only()
    async def disable(self, interaction: Interaction, name: app_commands.Range[str, 1, 100]) -> None:
        await self._set_enabled(interaction, name, False)

    @app_commands.command(name="remove", description="Uninstall a model (asks for confirmation)")
    @app_commands.describe(name="The model to remove")
    @app_commands.autocomplete(name=_admin_names)
    @guild_manager_only()
    async def remove(self, interaction: Interaction, name: app_commands.Range[str, 1, 100]) -> None:
        model = await self._managed(interaction, name)
        if model.source == "folder":  # said before asking; the service refuses it too
            raise ModelError(folder_source_note(model, self.kind))

        async def remove() -> str:
            removed = await self.service.remove(model)
            return f"Removed `{removed.name}`. Past images keep its name in everyone's history."

        view = ConfirmView(interaction.user.id, confirm="Remove", keep="Keep", kept=f"Kept `{model.name}`.",
                           on_confirm=remove)
        await interaction.response.send_message(
            f"Remove `{model.name}` ({scope_label(model)})? Prompts using it will stop working; past images keep "
            f"their history.", view=view, ephemeral=True)

    # ---- bot owners -------------------------------------------------------------------------------------------

    @app_commands.command(name="rescan", description="Re-scan the models folder (bot owners)")
    @bot_owner_only()
    async def rescan(self, interaction: Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        report = await self.service.sync_model_folder()
        await interaction.edit_original_response(content=rescan_text(self.kind, report))


_ADD_DESCRIBE: dict[str, Any] = dict(
    file="The model file", link="A download link from an allowed host",
    name="Name to type in prompts (default: the file name without extension)", description="What it does",
    trigger_words="Words that work well with it", scope="Who can use it (global: bot owners only)")


class StrengthOptions:
    """``add`` and ``edit`` for kinds with a strength (hypernetworks, LoRAs): ``default_multiplier`` included."""

    @app_commands.command(name="add", description="Add a model from an attachment or a download link")
    @app_commands.describe(**_ADD_DESCRIBE, default_multiplier="Strength used when a prompt gives none (default 1)")
    @guild_manager_only()
    async def add(self: ModelsCog, interaction: Interaction, file: Optional[discord.Attachment] = None,  # noqa: UP045
                  link: Optional[app_commands.Range[str, 1, 1000]] = None,  # noqa: UP045
                  name: Optional[app_commands.Range[str, 1, 100]] = None,  # noqa: UP045
                  description: Optional[app_commands.Range[str, 1, 500]] = None,  # noqa: UP045
                  trigger_words: Optional[app_commands.Range[str, 1, 200]] = None,  # noqa: UP045
                  default_multiplier: Optional[float] = None,  # noqa: UP045
                  scope: Literal["server", "global"] = "server") -> None:
        options = ModelOptions(name=name, description=description or "", trigger_words=trigger_words or "",
                               default_multiplier=1.0 if default_multiplier is None else default_multiplier)
        await self._add(interaction, file=file, link=link, options=options, scope=scope)

    @app_commands.command(name="edit", description="Change a model's description, trigger words or default")
    @app_commands.describe(name="The model to change", description="New description",
                           trigger_words="New trigger words", default_multiplier="New default multiplier")
    @app_commands.autocomplete(name=ModelsCog._admin_names)
    @guild_manager_only()
    async def edit(self: ModelsCog, interaction: Interaction, name: app_commands.Range[str, 1, 100],
                   description: Optional[app_commands.Range[str, 0, 500]] = None,  # noqa: UP045
                   trigger_words: Optional[app_commands.Range[str, 0, 200]] = None,  # noqa: UP045
                   default_multiplier: Optional[float] = None) -> None:  # noqa: UP045
        await self._edit(interaction, name, description=description, trigger_words=trigger_words,
                         default_multiplier=default_multiplier)


class PlainOptions:
    """``add`` and ``edit`` for kinds without a strength (embeddings)."""

    @app_commands.command(name="add", description="Add a model from an attachment or a download link")
    @app_commands.describe(**_ADD_DESCRIBE)
    @guild_manager_only()
    async def add(self: ModelsCog, interaction: Interaction, file: Optional[discord.Attachment] = None,  # noqa: UP045
                  link: Optional[app_commands.Range[str, 1, 1000]] = None,  # noqa: UP045
                  name: Optional[app_commands.Range[str, 1, 100]] = None,  # noqa: UP045
                  description: Optional[app_commands.Range[str, 1, 500]] = None,  # noqa: UP045
                  trigger_words: Optional[app_commands.Range[str, 1, 200]] = None,  # noqa: UP045
                  scope: Literal["server", "global"] = "server") -> None:
        options = ModelOptions(name=name, description=description or "", trigger_words=trigger_words or "")
        await self._add(interaction, file=file, link=link, options=options, scope=scope)

    @app_commands.command(name="edit", description="Change a model's description or trigger words")
    @app_commands.describe(name="The model to change", description="New description",
                           trigger_words="New trigger words")
    @app_commands.autocomplete(name=ModelsCog._admin_names)
    @guild_manager_only()
    async def edit(self: ModelsCog, interaction: Interaction, name: app_commands.Range[str, 1, 100],
                   description: Optional[app_commands.Range[str, 0, 500]] = None,  # noqa: UP045
                   trigger_words: Optional[app_commands.Range[str, 0, 200]] = None) -> None:  # noqa: UP045
        await self._edit(interaction, name, description=description, trigger_words=trigger_words,
                         default_multiplier=None)
