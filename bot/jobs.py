"""The life of one job after validation: store → submit → progress → deliver → store; and reconcile after a restart.

Why a service apart from the cogs: /imagine, every result button and /show's buttons start jobs the same way, and
after a restart the same code picks up jobs a previous process left unfinished.  SQLite is the system of record:
a job row exists before the engine sees the job, and every outcome (done, failed, cancelled) is written back, so
nothing depends on memory surviving.  A job's message is never left "thinking": every path ends in a final edit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import discord

from bot.db import DatabaseBusy
from bot.delivery import TOKEN_MARGIN_S, JobMessage
from bot.embeds import result_embed
from bot.options import request_for_job
from bot.store import Job, JobHypernet, NewJob
from engine.errors import EngineError, QueueFull
from engine.prompt import rebuild_prompt
from engine.protocol import Failure, FailureKind, JobEvent, Progress, Queued, Result, Started

if TYPE_CHECKING:
    from bot.app import HypercordBot
    from engine.client import JobHandle

__all__ = ["JobService", "derive_job", "job_service"]

log = logging.getLogger(__name__)
DEFAULT_UPLOAD_LIMIT = 10 * 2**20
# Waits between attempts of a job-state write while another process holds the database lock (~1 minute in all).
BUSY_RETRY_DELAYS_S = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


async def persist(what: str, write: Callable[[], Awaitable[object]],
                  delays: tuple[float, ...] = BUSY_RETRY_DELAYS_S) -> bool:
    """Run a job-state write, retrying while the database is locked; False (logged) if it never got through.

    Why: a job's outcome must reach the user even when SQLite is locked by another process for longer than the
    busy timeout (a backup, an admin's sqlite3 shell). The write is retried for about a minute; after that the
    caller still posts what it has, so the user loses nothing and the owner sees one clear log line.
    """
    for delay in (*delays, None):
        try:
            await write()
            return True
        except DatabaseBusy:
            if delay is None:
                break
            log.warning("%s: the database is locked; retrying in %.2f s", what, delay)
            await asyncio.sleep(delay)
    log.error("%s: gave up after the database stayed locked for %.0f s", what, sum(delays))
    return False


def job_service(client: discord.Client) -> JobService:
    """The JobService of the running bot (owned by the imagine cog; buttons and other cogs reach it here)."""
    cog = client.get_cog("Imagine")  # type: ignore[attr-defined]
    service = getattr(cog, "jobs", None)
    if not isinstance(service, JobService):
        raise RuntimeError("the imagine cog is not loaded")
    return service


def derive_job(parent: Job, *, user_id: int, channel_id: int, guild_id: int | None, origin: str, seed: int,
               hypernets: tuple[JobHypernet, ...] | None = None, text: str | None = None,
               interaction: discord.Interaction | None = None) -> NewJob:
    """A new job with the parent's settings (exact files included) and the given changes, owned by ``user_id``."""
    from bot.options import clean_text

    nets = parent.hypernets if hypernets is None else hypernets
    prompt = rebuild_prompt(text if text is not None else clean_text(parent.prompt), [(h.name, h.multiplier) for h in nets])
    return NewJob(user_id=user_id, guild_id=guild_id, channel_id=channel_id, prompt=prompt, seed=seed,
                  steps=parent.steps, cfg_scale=parent.cfg_scale, sampler=parent.sampler, width=parent.width,
                  height=parent.height, checkpoint=parent.checkpoint, negative_prompt=parent.negative_prompt,
                  hypernets=nets, count=parent.count, origin=origin, parent_job_id=parent.id,
                  interaction_token=interaction.token if interaction else None,
                  interaction_created_at=interaction.created_at.timestamp() if interaction else None)


class JobService:
    """Runs jobs for the cogs; one per bot."""

    def __init__(self, bot: HypercordBot) -> None:
        self.bot = bot
        self.store = bot.store
        self.engine = bot.engine
        self.settings = bot.settings
        #: Seconds between progress edits of one message (Discord rate limits; tests may lower it).
        self.edit_interval = 1.5
        self._runs: dict[int, asyncio.Task[None]] = {}
        self._cancelled_by: dict[int, str] = {}
        self._orphans: dict[int, JobMessage] = {}

    @property
    def model_name(self) -> str:
        return self.settings.models.model_name or self.settings.models.checkpoint

    @property
    def images_dir(self) -> Path:
        return Path(self.settings.storage.images_dir)

    def image_file(self, relative: str) -> Path:
        """The file of a stored image path, refusing anything that would leave the images folder."""
        root = self.images_dir.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"image path escapes the images folder: {relative!r}")
        return path

    # ---- starting ----------------------------------------------------------------------------------

    async def start(self, interaction: discord.Interaction, new: NewJob, *, message_id: int | None,
                    header: str = "") -> Job:
        """Store and submit a job whose interaction was already deferred; ``message_id`` is the deferred message."""
        created: list[Job] = []

        async def create() -> None:
            created.append(await self.store.jobs.create(new))

        # A lock held by another process delays the job instead of refusing it (up to about a minute).
        if not await persist(f"new job for user {new.user_id}", create):
            raise DatabaseBusy()
        job = created[0]
        if message_id is not None:
            await persist(f"job {job.id} message", lambda: self.store.jobs.set_message(job.id, message_id))
        msg = JobMessage(self.bot, job.channel_id, webhook=interaction.followup, message_id=message_id,
                         token_created_at=interaction.created_at.timestamp(), upload_limit=interaction.filesize_limit,
                         mention=job.user_id, min_interval=self.edit_interval)
        await self._submit(job, msg, header)
        return job

    async def _submit(self, job: Job, msg: JobMessage, header: str) -> None:
        try:
            handle = self.engine.submit(request_for_job(job))
        except QueueFull as exc:
            await self.store.jobs.mark_failed(job.id, "rejected", str(exc))
            await msg.final(content=f"{header}⚠️ {exc}", job_id=job.id)
            return
        except EngineError as exc:
            await self.store.jobs.mark_failed(job.id, "unavailable", str(exc))
            await msg.final(content=f"{header}⚠️ {exc} Please try again in a moment.", job_id=job.id)
            return
        task = asyncio.create_task(self._follow(job, handle, msg, header), name=f"job-{job.id}")
        self._runs[job.id] = task
        task.add_done_callback(lambda _t, jid=job.id: self._runs.pop(jid, None))

    # ---- following -----------------------------------------------------------------------------------

    async def _events(self, handle: JobHandle, msg: JobMessage) -> AsyncIterator[JobEvent | None]:
        """The handle's events; yields None when the interaction token is about to expire with nothing new."""
        events = handle.events()
        pending: asyncio.Task[JobEvent] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(events))
                timeout = None
                if msg.via_token and msg.token_created_at is not None:
                    timeout = max(0.0, msg.token_created_at + TOKEN_MARGIN_S - time.time() + 1)
                done, _ = await asyncio.wait({pending}, timeout=timeout)
                if not done:
                    yield None
                    continue
                event, pending = pending.result(), None
                yield event
                if isinstance(event, Result | Failure):
                    return
        finally:
            if pending is not None:
                pending.cancel()

    async def _follow(self, job: Job, handle: JobHandle, msg: JobMessage, header: str) -> None:
        from cogs.views import progress_view  # the cogs package imports this module

        cancel = progress_view(job.id)
        last = f"{header}⏳ Queued"
        try:
            async for event in self._events(handle, msg):
                if event is None:
                    msg.status(last, cancel)  # moves the message to the channel before the token dies
                elif isinstance(event, Queued):
                    last = f"{header}⏳ Queued — position {event.position + 1}"
                    msg.status(last, cancel)
                elif isinstance(event, Started):
                    await persist(f"job {job.id} running", lambda: self.store.jobs.mark_running(job.id))
                    last = f"{header}🎨 Rendering…"
                    msg.status(last, cancel)
                elif isinstance(event, Progress):
                    last = f"{header}🎨 Rendering — step {event.step}/{event.total}"
                    msg.status(last, cancel)
                elif isinstance(event, Result):
                    await self._deliver(job, event, msg, header)
                elif isinstance(event, Failure):
                    await self._failed(job, event, msg, header)
        except Exception:
            log.exception("job %s: following it failed", job.id)
            # The user's message must end whatever happens to the record.
            with contextlib.suppress(Exception):
                await persist(f"job {job.id} failed", lambda: self.store.jobs.mark_failed(
                    job.id, FailureKind.INTERNAL.value, "The bot failed while posting this job."))
            await msg.final(content=f"{header}❌ Something went wrong on our side while posting this job "
                            f"(job #{job.id}).", job_id=job.id)

    def _save_images(self, job_id: int, pngs: tuple[bytes, ...]) -> list[str]:
        folder = self.images_dir / str(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, png in enumerate(pngs):
            tmp = folder / f"{i}.png.tmp"
            tmp.write_bytes(png)
            tmp.replace(folder / f"{i}.png")
            paths.append(f"{job_id}/{i}.png")
        return paths

    async def _keep_images(self, job_id: int, pngs: tuple[bytes, ...]) -> tuple[list[str], tuple[str, ...]]:
        """Save the PNGs for /show and /history; a full or failing disk costs only that, never the result."""
        try:
            return await asyncio.to_thread(self._save_images, job_id, pngs), ()
        except OSError as exc:
            reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or str(exc)
            log.error("job %s: could not save its images under %s: %s (the user still gets them; /show will not)",
                      job_id, self.images_dir, reason)
            with contextlib.suppress(OSError):
                for leftover in (self.images_dir / str(job_id)).glob("*.tmp"):
                    leftover.unlink()
            return [], ("The images could not be kept for /show (the bot's storage is unavailable).",)

    async def _deliver(self, job: Job, result: Result, msg: JobMessage, header: str) -> None:
        paths, notes = await self._keep_images(job.id, result.images)
        warnings = (*result.warnings, *notes)
        await persist(f"job {job.id} done", lambda: self.store.jobs.mark_done(job.id, paths, result.duration_s, warnings))
        try:
            done = await self.store.jobs.get(job.id)
        except DatabaseBusy:
            done = None
        if done is None or done.status != "done":  # the record could not be updated: post from what we have
            done = dataclasses.replace(job, status="done", warnings=warnings, duration_s=result.duration_s)
        await self.post_result(done, msg, list(result.images), header=header)

    async def post_result(self, job: Job, msg: JobMessage, pngs: list[bytes], *, header: str = "",
                          new_message: bool = False) -> None:
        """The images, the embed and the result buttons (also used by /show)."""
        from cogs.views import result_view

        embed = result_embed(job, model_name=self.model_name)
        await msg.final(content=header.strip(), embed=embed, pngs=pngs, view=result_view(job, self.settings.limits),
                        stem=f"hypercord_{job.id}", job_id=job.id, new_message=new_message)
        if msg.current_message_id is not None and msg.current_message_id != job.message_id:
            with contextlib.suppress(Exception):
                await self.store.jobs.set_message(job.id, msg.current_message_id)

    async def _failed(self, job: Job, failure: Failure, msg: JobMessage, header: str) -> None:
        if failure.kind is FailureKind.CANCELLED:
            await persist(f"job {job.id} cancelled", lambda: self.store.jobs.mark_cancelled(job.id))
            who = self._cancelled_by.pop(job.id, "")
            await msg.final(content=f"{header}🚫 Cancelled{' by ' + who if who else ''}.", job_id=job.id)
        elif failure.kind is FailureKind.SHUTDOWN:
            # Left queued on purpose: the next bot process re-submits it (see reconcile).
            await msg.final(content=f"{header}⏸ The bot is restarting; this job will continue when it is back.",
                            job_id=job.id)
        else:
            await persist(f"job {job.id} failed", lambda: self.store.jobs.mark_failed(job.id, failure.kind.value,
                                                                                      failure.message))
            text = f"{failure.message} {failure.hint}".strip()
            await msg.final(content=f"{header}❌ {text}", job_id=job.id)

    async def drain(self, timeout: float) -> None:
        """Let jobs being posted finish their last edit (called while the bot shuts down)."""
        tasks = list(self._runs.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # ---- cancelling ------------------------------------------------------------------------------------

    async def cancel(self, job_id: int, by: str) -> bool:
        """Cancel a queued or running job; False when it had already finished."""
        self._cancelled_by[job_id] = by
        if self.engine.cancel(job_id):
            return True
        job = await self.store.jobs.get(job_id)
        if job is None or job.finished:
            self._cancelled_by.pop(job_id, None)
            return False
        # Unfinished in the database but unknown to the engine: left over from a process that died.
        await self.store.jobs.mark_cancelled(job_id)
        msg = self._orphans.pop(job_id, None)
        if msg is not None:
            await msg.final(content=f"🚫 Cancelled by {by}.", job_id=job_id)
        return True

    # ---- after a restart ---------------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Re-submit (once) jobs a previous process left queued or running; fail those that cannot be posted."""
        for job in await self.store.jobs.unfinished():
            if job.id in self._runs:
                continue
            try:
                await self._resume(job)
            except Exception:
                log.exception("job %s: could not resume it after the restart", job.id)
                await self.store.jobs.mark_failed(job.id, FailureKind.INTERNAL.value,
                                                  "The bot restarted and could not resume this job.")

    async def _resume(self, job: Job) -> None:
        if job.attempts >= 1:
            await self.store.jobs.mark_failed(job.id, "restart", "The bot restarted twice while this job was pending; "
                                              "please submit it again.")
            return
        await self.store.jobs.bump_attempts(job.id)
        if job.status == "running":
            await self.store.jobs.requeue(job.id)
        fresh = bool(job.interaction_token and job.interaction_created_at
                     and time.time() - job.interaction_created_at < TOKEN_MARGIN_S)
        webhook = None
        if fresh:
            webhook = discord.Webhook.partial(self.bot.application_id or 0, job.interaction_token or "", client=self.bot)
        msg = JobMessage(self.bot, job.channel_id, webhook=webhook, message_id=job.message_id if fresh else None,
                         token_created_at=job.interaction_created_at, upload_limit=DEFAULT_UPLOAD_LIMIT,
                         reply_to=None if fresh else job.message_id, mention=job.user_id, min_interval=self.edit_interval)
        if not fresh:
            try:
                await msg._channel()
            except discord.HTTPException as exc:
                reason = "the bot restarted and can no longer post in this job's channel"
                log.warning("job %s: %s (%s)", job.id, reason, exc.status)
                await self.store.jobs.mark_failed(job.id, "restart", reason[0].upper() + reason[1:] + ".")
                return
        header = "🔁 The bot restarted; this job was queued again.\n"
        self._orphans[job.id] = msg
        await self._submit(job, msg, header)
        self._orphans.pop(job.id, None)
