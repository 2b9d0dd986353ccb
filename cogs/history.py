"""/history list, /history delete and /show: a user's past generations, re-posted with working buttons.

Decisions: ``/history list`` and ``/history delete`` are ephemeral and only ever about the caller's own jobs.
``/show <id>`` re-posts a finished job publicly from the stored images, with the usual buttons (they read the job
from SQLite like any result).  Anyone may /show their own jobs anywhere; another member's job may be shown only in
the guild it was made in (it was posted publicly there already), never in another guild or a DM.  Pagination uses
the shared pager on the ephemeral message (it only lives for the viewer's session; results' buttons are the
restart-proof ones); pages go by job id (keyset), so new jobs arriving meanwhile do not shift them.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Optional

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import UserFacingError, defer_public
from bot.store import Job
from cogs.autocomplete import hypernet_autocomplete
from cogs.delivery import JobMessage
from cogs.embeds import clip, quote
from cogs.job_messages import post_result
from cogs.ui import ConfirmView, Page, Pager

if TYPE_CHECKING:
    from bot.app import HypercordBot

log = logging.getLogger(__name__)
PAGE_SIZE = 5

Interaction = discord.Interaction["HypercordBot"]


def _line(job: Job) -> str:
    when = datetime.fromtimestamp(job.created_at, UTC).strftime("%Y-%m-%d %H:%M")
    status = "" if job.status == "done" else f" · {job.status}"
    return f"**#{job.id}** · {when} UTC · seed {job.settings.seed}{status}\n`{quote(job.settings.prompt, 120)}`"


class HistoryPages:
    """Newest-first pages of one user's jobs; remembers where each page seen so far starts (keyset pagination)."""

    def __init__(self, bot: HypercordBot, user_id: int, guild_id: int | None, hypernet: str | None, total: int) -> None:
        self.bot, self.user_id, self.guild_id, self.hypernet, self.total = bot, user_id, guild_id, hypernet, total
        self.starts: list[int | None] = [None]  # before_id of each page seen so far

    async def render(self, page: int) -> Page:
        page = min(page, len(self.starts) - 1)
        jobs = await self.bot.store.jobs.history(self.user_id, guild_id=self.guild_id, hypernet=self.hypernet,
                                                 before_id=self.starts[page], limit=PAGE_SIZE + 1)
        has_next = len(jobs) > PAGE_SIZE
        jobs = jobs[:PAGE_SIZE]
        if has_next and len(self.starts) == page + 1:
            self.starts.append(jobs[-1].id)
        pages = max(1, -(-self.total // PAGE_SIZE))
        where = f" with `{self.hypernet}`" if self.hypernet else ""
        if not jobs:
            return Page(content=f"You have no generations{where} here yet.")
        head = f"Your generations{where} — page {page + 1}/{pages} ({self.total} in all). `/show ID` re-posts one."
        return Page(content=clip(head + "\n\n" + "\n".join(_line(j) for j in jobs), 2000), has_next=has_next)


class HistoryCog(commands.Cog, name="History"):
    history = app_commands.Group(name="history", description="Your past generations", guild_only=True)

    def __init__(self, bot: HypercordBot) -> None:
        self.bot = bot

    @history.command(name="list", description="Page through your generations here, newest first")
    @app_commands.describe(hypernet="Only jobs that used this hypernetwork")
    @app_commands.autocomplete(hypernet=hypernet_autocomplete)
    async def history_list(self, interaction: Interaction, hypernet: Optional[str] = None) -> None:  # noqa: UP045
        name = hypernet.strip() if hypernet else None
        total = await self.bot.store.jobs.count_history(interaction.user.id, guild_id=interaction.guild_id, hypernet=name)
        pages = HistoryPages(self.bot, interaction.user.id, interaction.guild_id, name, total)
        pager = Pager(interaction.user.id, pages.render, labels=("◀ Newer", "Older ▶"), emojis=(None, None),
                      not_yours="These buttons belong to someone else's history; run `/history list` yourself.")
        first = await pager.show(0)
        await interaction.response.send_message(first.content, view=pager if total else discord.utils.MISSING,
                                                ephemeral=True)

    @history.command(name="delete", description="Erase all your generations (rows and images), after a confirmation")
    async def history_delete(self, interaction: Interaction) -> None:
        user_id = interaction.user.id
        total = await self.bot.store.jobs.count_history(user_id)
        if not total:
            raise UserFacingError("You have no stored generations.")

        async def delete() -> str:
            count, files = await self.delete_user_data(user_id)
            return (f"Deleted {count} job(s) and {files} image file(s). Buttons on old messages of yours now say the "
                    "job no longer exists.")

        view = ConfirmView(user_id, confirm="Delete everything", keep="Keep my history", kept="Nothing was deleted.",
                           on_confirm=delete)
        await interaction.response.send_message(
            f"Delete all {total} of your generations (in every server) and their images? This cannot be undone.",
            view=view, ephemeral=True)

    async def delete_user_data(self, user_id: int) -> tuple[int, int]:
        """Rows first (the system of record), then the files they named; returns (jobs, files) deleted."""
        deleted = await self.bot.store.jobs.delete_user_data(user_id)
        removed = await asyncio.to_thread(self.bot.jobs.images.delete, deleted.image_paths)
        return deleted.count, removed

    @app_commands.command(name="show", description="Post one of your past generations again, with its buttons")
    @app_commands.describe(job_id="The job number (see /history list)")
    @app_commands.guild_only()
    async def show(self, interaction: Interaction, job_id: app_commands.Range[int, 1]) -> None:
        job = await self.bot.store.jobs.get(job_id)
        if job is None:
            raise UserFacingError(f"There is no job #{job_id} (it may have been deleted). `/history list` shows yours.")
        if job.user_id != interaction.user.id and job.guild_id != interaction.guild_id:
            raise UserFacingError(f"Job #{job_id} was made by someone else in another server; you can only show "
                                  "other members' jobs in the server they were made in.")
        if job.status != "done" or not job.image_paths:
            raise UserFacingError(f"Job #{job_id} has no images to show (it is {job.status}).")
        try:
            pngs = await asyncio.to_thread(self.bot.jobs.images.read, job.image_paths)
        except (OSError, ValueError):
            raise UserFacingError(f"The images of job #{job_id} are no longer on disk.") from None
        # Public: a failure after this point is answered by the tree's handler, privately (see bot.errors).
        message_id = await defer_public(interaction)
        msg = JobMessage(self.bot, interaction.channel_id or job.channel_id, webhook=interaction.followup,
                         message_id=message_id,
                         token_created_at=interaction.created_at.timestamp(), upload_limit=interaction.filesize_limit)
        owner = "" if job.user_id == interaction.user.id else f" (by <@{job.user_id}>)"
        await post_result(self.bot, msg, job, pngs, header=f"Job #{job.id}{owner}, shown by {interaction.user.mention}")


async def setup(bot: HypercordBot) -> None:
    await bot.add_cog(HistoryCog(bot))
