"""/history list, /history delete and /show: a user's past generations, re-posted with working buttons.

Decisions: ``/history list`` and ``/history delete`` are ephemeral and only ever about the caller's own jobs.
``/show <id>`` re-posts a finished job publicly from the stored images, with the usual buttons (they read the job
from SQLite like any result).  Anyone may /show their own jobs anywhere; another member's job may be shown only in
the guild it was made in (it was posted publicly there already), never in another guild or a DM.  Pagination uses
ordinary buttons on the ephemeral message (it only lives for the viewer's session; results' buttons are the
restart-proof ones).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Optional

import discord
from discord import app_commands
from discord.ext import commands

from bot.autocomplete import hypernet_autocomplete
from bot.delivery import JobMessage
from bot.embeds import clip
from bot.errors import UserFacingError
from bot.jobs import job_service
from bot.store import Job

if TYPE_CHECKING:
    from bot.app import HypercordBot

log = logging.getLogger(__name__)
PAGE_SIZE = 5


def _line(job: Job) -> str:
    when = datetime.fromtimestamp(job.created_at, UTC).strftime("%Y-%m-%d %H:%M")
    status = "" if job.status == "done" else f" · {job.status}"
    prompt = clip(job.prompt.replace("`", "ˋ"), 120)
    return f"**#{job.id}** · {when} UTC · seed {job.seed}{status}\n`{prompt}`"


class HistoryPager(discord.ui.View):
    """Newest-first pages of the caller's jobs (keyset pagination on the job id)."""

    def __init__(self, cog: HistoryCog, user_id: int, guild_id: int | None, hypernet: str | None, total: int) -> None:
        super().__init__(timeout=600)
        self.cog, self.user_id, self.guild_id, self.hypernet, self.total = cog, user_id, guild_id, hypernet, total
        self.starts: list[int | None] = [None]  # before_id of each page seen so far
        self.page = 0
        self.has_next = False

    async def render(self) -> str:
        jobs = await self.cog.bot.store.jobs.history(self.user_id, guild_id=self.guild_id, hypernet=self.hypernet,
                                                     before_id=self.starts[self.page], limit=PAGE_SIZE + 1)
        self.has_next = len(jobs) > PAGE_SIZE
        jobs = jobs[:PAGE_SIZE]
        if self.has_next and len(self.starts) == self.page + 1:
            self.starts.append(jobs[-1].id)
        self.previous.disabled = self.page == 0
        self.next.disabled = not self.has_next
        pages = max(1, -(-self.total // PAGE_SIZE))
        where = f" with `{self.hypernet}`" if self.hypernet else ""
        head = f"Your generations{where} — page {self.page + 1}/{pages} ({self.total} in all). `/show ID` re-posts one."
        if not jobs:
            return f"You have no generations{where} here yet."
        return clip(head + "\n\n" + "\n".join(_line(j) for j in jobs), 2000)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.user_id

    @discord.ui.button(label="◀ Newer", style=discord.ButtonStyle.secondary)
    async def previous(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.page = max(0, self.page - 1)
        await interaction.response.edit_message(content=await self.render(), view=self)

    @discord.ui.button(label="Older ▶", style=discord.ButtonStyle.secondary)
    async def next(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        if self.has_next:
            self.page += 1
        await interaction.response.edit_message(content=await self.render(), view=self)


class ConfirmDelete(discord.ui.View):
    """Two buttons; only the caller can press them."""

    def __init__(self, cog: HistoryCog, user_id: int) -> None:
        super().__init__(timeout=120)
        self.cog, self.user_id = cog, user_id

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.user_id

    @discord.ui.button(label="Delete everything", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.stop()
        count, files = await self.cog.delete_user_data(self.user_id)
        await interaction.response.edit_message(
            content=f"Deleted {count} job(s) and {files} image file(s). Buttons on old messages of yours now say the "
                    "job no longer exists.", view=None)

    @discord.ui.button(label="Keep my history", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.stop()
        await interaction.response.edit_message(content="Nothing was deleted.", view=None)


class HistoryCog(commands.Cog, name="History"):
    history = app_commands.Group(name="history", description="Your past generations", guild_only=True)

    def __init__(self, bot: HypercordBot) -> None:
        self.bot = bot

    @history.command(name="list", description="Page through your generations here, newest first")
    @app_commands.describe(hypernet="Only jobs that used this hypernetwork")
    @app_commands.autocomplete(hypernet=hypernet_autocomplete)
    async def history_list(self, interaction: discord.Interaction, hypernet: Optional[str] = None) -> None:  # noqa: UP045
        name = hypernet.strip() if hypernet else None
        total = await self.bot.store.jobs.count_history(interaction.user.id, guild_id=interaction.guild_id, hypernet=name)
        pager = HistoryPager(self, interaction.user.id, interaction.guild_id, name, total)
        content = await pager.render()
        await interaction.response.send_message(content, view=pager if total else discord.utils.MISSING, ephemeral=True)

    @history.command(name="delete", description="Erase all your generations (rows and images), after a confirmation")
    async def history_delete(self, interaction: discord.Interaction) -> None:
        total = await self.bot.store.jobs.count_history(interaction.user.id)
        if not total:
            raise UserFacingError("You have no stored generations.")
        await interaction.response.send_message(
            f"Delete all {total} of your generations (in every server) and their images? This cannot be undone.",
            view=ConfirmDelete(self, interaction.user.id), ephemeral=True)

    async def delete_user_data(self, user_id: int) -> tuple[int, int]:
        """Rows first (the system of record), then the files they named; returns (jobs, files) deleted."""
        service = job_service(self.bot)
        deleted = await self.bot.store.jobs.delete_user_data(user_id)

        def unlink() -> int:
            removed = 0
            for rel in deleted.image_paths:
                try:
                    path = service.image_file(rel)
                    path.unlink()
                    removed += 1
                    if path.parent != service.images_dir.resolve() and not any(path.parent.iterdir()):
                        path.parent.rmdir()
                except (OSError, ValueError):
                    log.warning("could not delete image %r of user %s", rel, user_id)
            return removed

        return deleted.count, await asyncio.to_thread(unlink)

    @app_commands.command(name="show", description="Post one of your past generations again, with its buttons")
    @app_commands.describe(job_id="The job number (see /history list)")
    @app_commands.guild_only()
    async def show(self, interaction: discord.Interaction, job_id: app_commands.Range[int, 1]) -> None:
        job = await self.bot.store.jobs.get(job_id)
        if job is None:
            raise UserFacingError(f"There is no job #{job_id} (it may have been deleted). `/history list` shows yours.")
        if job.user_id != interaction.user.id and job.guild_id != interaction.guild_id:
            raise UserFacingError(f"Job #{job_id} was made by someone else in another server; you can only show "
                                  "other members' jobs in the server they were made in.")
        if job.status != "done" or not job.image_paths:
            raise UserFacingError(f"Job #{job_id} has no images to show (it is {job.status}).")
        service = job_service(self.bot)
        try:
            pngs = await asyncio.to_thread(lambda: [service.image_file(p).read_bytes() for p in job.image_paths])
        except (OSError, ValueError):
            raise UserFacingError(f"The images of job #{job_id} are no longer on disk.") from None
        response = await interaction.response.defer(thinking=True)
        msg = JobMessage(self.bot, interaction.channel_id or job.channel_id, webhook=interaction.followup,
                         message_id=getattr(response, "message_id", None),
                         token_created_at=interaction.created_at.timestamp(), upload_limit=interaction.filesize_limit)
        owner = "" if job.user_id == interaction.user.id else f" (by <@{job.user_id}>)"
        await msg.final(content=f"Job #{job.id}{owner}, shown by {interaction.user.mention}",
                        embed=_embed(service, job), pngs=pngs, view=_view(service, job),
                        stem=f"hypercord_{job.id}", job_id=job.id)


def _embed(service: Any, job: Job) -> discord.Embed:
    from bot.embeds import result_embed

    return result_embed(job, model_name=service.model_name)


def _view(service: Any, job: Job) -> discord.ui.View:
    from cogs.views import result_view

    return result_view(job, service.settings.limits)


async def setup(bot: HypercordBot) -> None:
    await bot.add_cog(HistoryCog(bot))
