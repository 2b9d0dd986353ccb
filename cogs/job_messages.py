"""How a job's Discord message shows it: queue position, progress, then the images with their buttons.

Why here: :class:`~bot.jobs.service.JobService` reports states and outcomes without knowing Discord; this module is
its presenter.  One message per job (:class:`~cogs.delivery.JobMessage` does the posting under Discord's rules:
throttled edits, the 15-minute interaction token, upload limits, missing permissions).  Texts live here, so every
way of starting a job (``/imagine``, a button, a restart) words them the same.

A job that waits a long time without news would outlive its interaction token silently; so from the job's first
state on, while the token is fresh, the presenter arms a timer that moves the message to the channel (with a note
on the old one) a moment before the token expires, and later updates go there.

After a restart the job's states say it was resumed (``Job.attempts``), and the shutdown note says what really
happens: the job stays queued and runs only if the bot is started again, and a job is resumed once only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import discord

from bot.jobs import Cancelled, Done, Failed, JobPresenter, JobState, Outcome, Paused, Waiting
from bot.store import Job
from cogs.buttons import progress_view, result_view
from cogs.delivery import DEFAULT_UPLOAD_LIMIT, TOKEN_MARGIN_S, JobMessage
from cogs.embeds import checkpoint_label, result_embed
from cogs.ui import hypercord

if TYPE_CHECKING:
    from bot.app import HypercordBot

__all__ = ["DiscordJobPresenter", "DiscordPresenters", "post_result", "state_text"]

#: First line of every state of a job a new bot process took over (``Job.attempts`` counts those hand-overs).
RESUMED_HEADER = "🔁 Resumed after the bot restarted.\n"
#: A queued job when the bot shuts down: it stays queued, and only a restart runs it (once; see JobService.reconcile).
PAUSED = ("⏸ The bot is shutting down before this job could run. The job stays queued and runs when the bot is "
          "started again (a job is resumed after one restart only).")
WARNING_KINDS = ("rejected", "unavailable", "restart")  # did not render, nothing broke: a warning, not an error


def state_text(state: JobState) -> str:
    if isinstance(state, Waiting):
        return "⏳ Queued" if state.position is None else f"⏳ Queued — position {state.position + 1}"
    if state.total:
        return f"🎨 Rendering — step {state.step}/{state.total}"
    return "🎨 Rendering…"


async def post_result(client: HypercordBot, msg: JobMessage, job: Job, pngs: list[bytes], *, header: str = "",
                      new_message: bool = False) -> None:
    """The images, the embed and the result buttons (a finished job, and ``/show``)."""
    embed = result_embed(job, model_name=checkpoint_label(client, job.settings.checkpoint))
    await msg.final(content=header.strip(), embed=embed, pngs=pngs, view=result_view(job, client.settings.limits),
                    stem=f"hypercord_{job.id}", job_id=job.id, new_message=new_message)


def _prefix(header: str, job: Job, outcome: Outcome | None = None) -> str:
    """``header``, plus the resumed line for a job a new process took over — unless the outcome is that it was not."""
    not_resumed = isinstance(outcome, Failed) and outcome.kind == "restart"
    return f"{header}{RESUMED_HEADER}" if job.attempts and not not_resumed else header


class DiscordJobPresenter:
    """A :class:`~bot.jobs.presenter.JobPresenter` over one job's message; ``header`` goes before every state.

    Nothing is posted before the first :meth:`show` or :meth:`finish`: a presenter made for a job the service then
    refuses (the caller answers privately) leaves the message alone."""

    def __init__(self, client: HypercordBot, msg: JobMessage, *, header: str = "") -> None:
        self._client = client
        self._msg = msg
        self._header = header
        self._last = f"{header}{state_text(Waiting())}"
        self._job_id: int | None = None
        self._handover: asyncio.Task[None] | None = None

    def show(self, job: Job, state: JobState) -> None:
        self._job_id = job.id
        self._last = f"{_prefix(self._header, job)}{state_text(state)}"
        self._msg.status(self._last, progress_view(job.id))
        msg = self._msg
        if self._handover is None and msg.via_token and msg.token_created_at is not None:
            self._handover = asyncio.create_task(self._move_before_expiry(msg.token_created_at),
                                                 name="job-message-handover")

    async def _move_before_expiry(self, token_created_at: float) -> None:
        """Post the current state once more just as the token runs out, which moves the message to the channel."""
        await asyncio.sleep(max(0.0, token_created_at + TOKEN_MARGIN_S - time.time() + 1))
        self._msg.status(self._last, progress_view(self._job_id) if self._job_id is not None else None)

    async def finish(self, job: Job, outcome: Outcome) -> int | None:
        if self._handover is not None:
            self._handover.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._handover
        header = _prefix(self._header, job, outcome)
        if isinstance(outcome, Done):
            await post_result(self._client, self._msg, job, list(outcome.images), header=header)
        elif isinstance(outcome, Cancelled):
            await self._msg.final(content=f"{header}🚫 Cancelled{' by ' + outcome.by if outcome.by else ''}.",
                                  job_id=job.id)
        elif isinstance(outcome, Paused):
            await self._msg.final(content=f"{header}{PAUSED}", job_id=job.id)
        elif isinstance(outcome, Failed):
            icon = "⚠️" if outcome.kind in WARNING_KINDS else "❌"
            await self._msg.final(content=f"{header}{icon} {outcome.message}", job_id=job.id)
        return self._msg.current_message_id


class DiscordPresenters:
    """The :class:`bot.app.JobPresenters` the runner gives the bot: one Discord message per job.

    ``edit_interval_s`` spaces a message's progress edits (Discord rate-limits edits; tests lower it)."""

    def __init__(self, *, edit_interval_s: float) -> None:
        self.edit_interval_s = edit_interval_s

    def for_interaction(self, interaction: discord.Interaction[discord.Client], *, message_id: int | None,
                        header: str = "") -> JobPresenter:
        client = hypercord(interaction)
        msg = JobMessage(client, interaction.channel_id or 0, webhook=interaction.followup, message_id=message_id,
                         token_created_at=interaction.created_at.timestamp(), upload_limit=interaction.filesize_limit,
                         mention=interaction.user.id, min_interval=self.edit_interval_s)
        return DiscordJobPresenter(client, msg, header=header)

    async def resumed(self, bot: HypercordBot, job: Job) -> JobPresenter | None:
        """With a token still fresh the interaction's message is edited as before; otherwise the job posts in its
        channel, replying to its old message (None when that channel cannot be reached)."""
        fresh = bool(job.interaction_token and job.interaction_created_at
                     and time.time() - job.interaction_created_at < TOKEN_MARGIN_S)
        webhook = None
        if fresh:
            webhook = discord.Webhook.partial(bot.application_id or 0, job.interaction_token or "", client=bot)
        msg = JobMessage(bot, job.channel_id, webhook=webhook, message_id=job.message_id if fresh else None,
                         token_created_at=job.interaction_created_at, upload_limit=DEFAULT_UPLOAD_LIMIT,
                         reply_to=None if fresh else job.message_id, mention=job.user_id,
                         min_interval=self.edit_interval_s)
        if not fresh:
            try:
                await msg.channel()
            except discord.HTTPException:
                return None
        return DiscordJobPresenter(bot, msg)
