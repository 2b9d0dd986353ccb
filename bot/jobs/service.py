"""The life of one job after validation: store → submit → follow → record the outcome; and reconcile after a restart.

Why a service apart from the cogs: ``/imagine``, every result button and the restart path start jobs the same way,
and after a restart the same code picks up jobs a previous process left unfinished.  SQLite is the system of
record: a job row exists before the engine sees the job, and every outcome (done, failed, cancelled) is written
back, so nothing depends on memory surviving.  What the user sees is a :class:`~bot.jobs.presenter.JobPresenter`'s
business (the cogs implement it over Discord); every job that gets going gets exactly one final state, whatever
happens.  A job refused at :meth:`JobService.start` (a model gone since validation, the database locked, the engine
refusing) is raised to the caller instead, because only the caller can answer privately: the job's own message is
public.  After a restart a job is resumed once; one that will not run is failed with the reason, shown on its
message where it can still be reached.  No Discord here: the service is tested with a fake engine and a recording
presenter.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import AsyncIterator

from bot.checkpoints import CheckpointCatalog
from bot.db import DatabaseBusy
from bot.errors import UserFacingError
from bot.jobs.checkpoint_choice import entry_of
from bot.jobs.engine_api import EngineAPI, JobEvents
from bot.jobs.images import ImageStore, disk_problem
from bot.jobs.persist import persist
from bot.jobs.presenter import Cancelled, Done, Failed, JobPresenter, Paused, PresenterFor, Rendering, Waiting
from bot.ratelimit import RateDecision, RateLimiter
from bot.store import Job, NewJob, Store, prompt_names
from engine.errors import EngineError, QueueFull, UserQueueFull
from engine.protocol import Failure, FailureKind, GenerateRequest, JobEvent, Progress, Queued, Result, Started
from engine.render_settings import RenderSettings

__all__ = ["JobRefused", "JobService"]

log = logging.getLogger("bot.jobs")

SHUTTING_DOWN = "The bot is shutting down and not taking new jobs; try again in a minute."
RATE_LIMITED = ("You are starting jobs too quickly: this bot allows {burst} in a row, then {rate} a minute. "
                "Wait {wait} s before starting another one.")
ALSO_RATE_LIMITED = ("You are also starting jobs too quickly: this bot allows {burst} in a row, then {rate} a minute, "
                     "so wait at least {wait} s in any case.")
TRY_AGAIN_SOON = "Please try again in a moment."
HYPERNET_GONE = ("The hypernetwork `{name}` is no longer available here (it was removed, disabled or replaced). "
                 "Pick another one; `/hypernets list` shows those installed.")
LORA_GONE = ("The LoRA `{name}` is no longer available here (it was removed, disabled or replaced). Pick another one; "
             "`/loras list` shows those installed.")
CHECKPOINT_GONE = ("The model `{name}` is no longer available here (it was removed, or this server no longer offers it). "
                   "Pick another one with the `model` option; `/models list` shows those you can use.")
POSTING_FAILED = "Something went wrong on our side while posting this job (job #{job_id})."
NOT_RESUMED_AGAIN = ("The bot stopped again before this job could run. A job is resumed after one restart only, so this "
                     "one will not run; please start it again.")
CANNOT_POST = "The bot restarted and could not resume this job: it can no longer post in the job's channel."
NOT_RESUMED = "The bot restarted but could not resume this job."
NOT_RESUMED_BUG = f"{NOT_RESUMED} Something went wrong on our side; please start it again."


class JobRefused(UserFacingError):
    """A job refused before it could run (shutting down, queue full, rate limit, model gone); shown privately."""


def refusal_text(error: EngineError) -> str:
    """What the user reads when the engine will not take a job: a full queue says when to retry, anything else is
    an engine that is not taking jobs for a moment."""
    return str(error) if isinstance(error, QueueFull) else f"{error} {TRY_AGAIN_SOON}"


def _refusal_kind(error: EngineError) -> str:
    return "rejected" if isinstance(error, QueueFull) else "unavailable"


class JobService:
    """Starts, follows, cancels and resumes jobs; one per bot process."""

    def __init__(self, store: Store, engine: EngineAPI, images: ImageStore, ratelimiter: RateLimiter, *,
                 catalog: CheckpointCatalog | None = None) -> None:
        """``catalog``: the installed checkpoints (None: jobs' checkpoints are not checked, as in unit tests)."""
        self.store = store
        self.catalog = catalog
        self.engine = engine
        self.images = images
        self.ratelimiter = ratelimiter
        self.accepting = True
        self._runs: dict[int, asyncio.Task[None]] = {}
        self._cancelled_by: dict[int, str] = {}

    # ---- admission -----------------------------------------------------------------------------------

    def admit(self, user_id: int) -> None:
        """Raise :class:`JobRefused` if a new job of this user cannot start now; else take one rate-limit token.

        Called before the interaction is deferred, so refusals stay private and nothing is written.  Each refusal
        names the limit that applied: shutdown, the engine (whole queue full, not taking jobs), then this user's
        queue cap and the rate limit — both named when both apply, since the user has to wait for both.  Only an
        admitted request takes a token."""
        if not self.accepting:
            raise JobRefused(SHUTTING_DOWN)
        own_queue: str | None = None
        try:
            self.engine.check_capacity(user_id)
        except UserQueueFull as exc:
            own_queue = str(exc)
        except EngineError as exc:
            raise JobRefused(refusal_text(exc)) from None
        decision = self.ratelimiter.check(user_id)
        if own_queue is not None and not decision.allowed:
            raise JobRefused(f"{own_queue} {self._rate_text(ALSO_RATE_LIMITED, decision)}")
        if own_queue is not None:
            raise JobRefused(own_queue)
        if not decision.allowed:
            raise JobRefused(self._rate_text(RATE_LIMITED, decision))
        self.ratelimiter.consume(user_id)

    def _rate_text(self, template: str, decision: RateDecision) -> str:
        wait = max(1, math.ceil(round(decision.retry_after, 3)))
        return template.format(burst=f"{self.ratelimiter.burst:g}", rate=f"{self.ratelimiter.rate_per_minute:g}",
                               wait=wait)

    def stop_accepting(self) -> None:
        self.accepting = False

    async def check_hypernets(self, settings: RenderSettings, guild_id: int | None) -> None:
        """Raise :class:`JobRefused` if the checkpoint, a hypernet or a LoRA of ``settings`` is no longer installed and
        enabled in this guild as the same file (removed, disabled or replaced since the settings were made).
        Embeddings are not checked: one that went away is just a word of the prompt, as in A1111."""
        if self.catalog is not None:
            entry = entry_of(self.catalog, settings.checkpoint)
            if entry is None or entry.name in (await self.store.checkpoints.get(guild_id)).disallowed:
                raise JobRefused(CHECKPOINT_GONE.format(name=settings.checkpoint[:80]))
        if settings.hypernets:
            usable = await self.store.hypernets.usable(guild_id)
            for ref in settings.hypernets:
                row = usable.get(ref.name)
                if row is None or row.sha256 != ref.sha256:
                    raise JobRefused(HYPERNET_GONE.format(name=ref.name))
        if settings.loras:
            loras = prompt_names((await self.store.loras.usable(guild_id)).values())
            for lora in settings.loras:
                found = loras.get(lora.name)
                if found is None or found.sha256 != lora.sha256:
                    raise JobRefused(LORA_GONE.format(name=lora.name))

    # ---- starting ------------------------------------------------------------------------------------

    async def start(self, new: NewJob, presenter: JobPresenter, *, message_id: int | None) -> Job:
        """Store and submit an admitted job (its interaction already deferred; ``message_id`` is the deferred message).

        Raises, for the caller to tell the user privately (the presenter is then never used, and the user's
        rate-limit token is given back): :class:`JobRefused` when a hypernet went away since validation (nothing
        written) or the engine refused the job (recorded as failed); :class:`~bot.db.DatabaseBusy` when the job
        could not even be written (about a minute of retries; nothing exists)."""
        try:
            await self.check_hypernets(new.settings, new.guild_id)  # again: a model may have gone since validation
        except JobRefused:
            self.ratelimiter.refund(new.user_id)
            raise
        created: list[Job] = []

        async def create() -> None:
            created.append(await self.store.jobs.create(new))

        # A lock held by another process delays the job instead of refusing it.
        if not await persist(f"new job for user {new.user_id}", create):
            self.ratelimiter.refund(new.user_id)
            raise DatabaseBusy()
        job = created[0]
        if message_id is not None:
            await persist(f"job {job.id} message", lambda: self.store.jobs.set_message(job.id, message_id))
            job = dataclasses.replace(job, message_id=message_id)
        try:
            handle = self.engine.submit(GenerateRequest(job.id, job.user_id, job.settings))
        except EngineError as exc:
            kind, text = _refusal_kind(exc), refusal_text(exc)
            await persist(f"job {job.id} failed", lambda: self.store.jobs.mark_failed(job.id, kind, text))
            self.ratelimiter.refund(new.user_id)
            raise JobRefused(text) from None
        self._follow_in_background(job, handle, presenter)
        return job

    def _follow_in_background(self, job: Job, handle: JobEvents, presenter: JobPresenter) -> None:
        task = asyncio.create_task(self._follow(job, handle, presenter), name=f"job-{job.id}")
        self._runs[job.id] = task
        task.add_done_callback(functools.partial(self._forget, job.id))

    def _forget(self, job_id: int, _task: asyncio.Task[None]) -> None:
        self._runs.pop(job_id, None)

    # ---- following -----------------------------------------------------------------------------------

    async def _follow(self, job: Job, handle: JobEvents, presenter: JobPresenter) -> None:
        try:
            async for event in _until_outcome(handle.events()):
                if isinstance(event, Queued):
                    presenter.show(job, Waiting(event.position))
                elif isinstance(event, Started):
                    await persist(f"job {job.id} running", lambda: self.store.jobs.mark_running(job.id))
                    presenter.show(job, Rendering())
                elif isinstance(event, Progress):
                    presenter.show(job, Rendering(event.step, event.total))
                elif isinstance(event, Result):
                    await self._deliver(job, event, presenter)
                elif isinstance(event, Failure):
                    await self._failed(job, event, presenter)
        except Exception:
            log.exception("job %s: following it failed", job.id)
            # The user's message must end whatever happens to the record.
            with contextlib.suppress(Exception):
                await persist(f"job {job.id} failed", lambda: self.store.jobs.mark_failed(
                    job.id, FailureKind.INTERNAL.value, "The bot failed while posting this job."))
            await presenter.finish(job, Failed(FailureKind.INTERNAL.value, POSTING_FAILED.format(job_id=job.id)))

    async def _deliver(self, job: Job, result: Result, presenter: JobPresenter) -> None:
        paths, notes = await self._keep_images(job.id, result.images)
        warnings = (*result.warnings, *notes)
        await persist(f"job {job.id} done", lambda: self.store.jobs.mark_done(job.id, paths, result.duration_s, warnings))
        try:
            done = await self.store.jobs.get(job.id)
        except DatabaseBusy:
            done = None
        if done is None or done.status != "done":  # the record could not be updated: post from what we have
            done = dataclasses.replace(job, status="done", warnings=warnings, duration_s=result.duration_s)
        await self._finish(done, presenter, Done(result.images))

    async def _keep_images(self, job_id: int, pngs: tuple[bytes, ...]) -> tuple[list[str], tuple[str, ...]]:
        """Save the PNGs for /show and /history; a full or failing disk costs only that, never the result."""
        try:
            return await asyncio.to_thread(self.images.save, job_id, pngs), ()
        except OSError as exc:
            log.error("job %s: could not save its images under %s: %s (the user still gets them; /show will not)",
                      job_id, self.images.root, disk_problem(exc))
            return [], ("The images could not be kept for /show (the bot's storage is unavailable).",)

    async def _failed(self, job: Job, failure: Failure, presenter: JobPresenter) -> None:
        if failure.kind is FailureKind.CANCELLED:
            await persist(f"job {job.id} cancelled", lambda: self.store.jobs.mark_cancelled(job.id))
            await self._finish(job, presenter, Cancelled(self._cancelled_by.pop(job.id, "")))
        elif failure.kind is FailureKind.SHUTDOWN and job.attempts >= 1:
            # Already resumed once: the next process would not resume it again, so say so now.
            await self._record_failure(job, presenter, Failed("restart", NOT_RESUMED_AGAIN))
        elif failure.kind is FailureKind.SHUTDOWN:
            # Left queued on purpose: the next bot process re-submits it, once (see reconcile).
            await self._finish(job, presenter, Paused())
        else:
            await self._record_failure(job, presenter, Failed(failure.kind.value,
                                                              f"{failure.message} {failure.hint}".strip()))

    async def _record_failure(self, job: Job, presenter: JobPresenter, failed: Failed) -> None:
        await persist(f"job {job.id} failed", lambda: self.store.jobs.mark_failed(job.id, failed.kind, failed.message))
        await self._finish(job, presenter, failed)

    async def _finish(self, job: Job, presenter: JobPresenter, outcome: Done | Failed | Cancelled | Paused) -> None:
        message_id = await presenter.finish(job, outcome)
        if message_id is not None and message_id != job.message_id:
            with contextlib.suppress(Exception):  # only /show's link to the newest message is lost
                await self.store.jobs.set_message(job.id, message_id)

    async def drain(self, timeout: float) -> None:
        """Let jobs being posted finish their last edit (called while the bot shuts down)."""
        tasks = list(self._runs.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # ---- cancelling ------------------------------------------------------------------------------------

    async def cancel(self, job_id: int, by: str, presenter_for: PresenterFor | None = None) -> bool:
        """Cancel a queued or running job; False when it had already finished.

        A job the engine does not know but the database calls unfinished was left by a process that died: it is
        marked cancelled here, and shown so through ``presenter_for`` when given."""
        self._cancelled_by[job_id] = by
        if self.engine.cancel(job_id):
            return True
        self._cancelled_by.pop(job_id, None)
        job = await self.store.jobs.get(job_id)
        if job is None or job.finished or job_id in self._runs:
            return False
        await self.store.jobs.mark_cancelled(job_id)
        presenter = await presenter_for(job) if presenter_for is not None else None
        if presenter is not None:
            await self._finish(job, presenter, Cancelled(by))
        return True

    # ---- after a restart ---------------------------------------------------------------------------------

    async def reconcile(self, presenter_for: PresenterFor) -> None:
        """Re-submit (once) jobs a previous process left queued or running; fail the others, saying why where the
        job's message can still be reached."""
        for job in await self.store.jobs.unfinished():
            if job.id in self._runs:
                continue
            try:
                await self._resume(job, presenter_for)
            except Exception:
                log.exception("job %s: could not resume it after the restart", job.id)
                await self._not_resumed(job, presenter_for, FailureKind.INTERNAL.value, NOT_RESUMED_BUG)

    async def _resume(self, job: Job, presenter_for: PresenterFor) -> None:
        if job.attempts >= 1:
            await self._not_resumed(job, presenter_for, "restart", NOT_RESUMED_AGAIN)
            return
        job = dataclasses.replace(job, attempts=await self.store.jobs.bump_attempts(job.id))
        if job.status == "running":
            await self.store.jobs.requeue(job.id)
        presenter = await presenter_for(job)
        if presenter is None:
            log.warning("job %s: %s", job.id, CANNOT_POST)
            await self.store.jobs.mark_failed(job.id, "restart", CANNOT_POST)
            return
        try:
            handle = self.engine.submit(GenerateRequest(job.id, job.user_id, job.settings))
        except EngineError as exc:
            await self._record_failure(job, presenter, Failed("restart", f"{NOT_RESUMED} {refusal_text(exc)}"))
            return
        self._follow_in_background(job, handle, presenter)

    async def _not_resumed(self, job: Job, presenter_for: PresenterFor, kind: str, message: str) -> None:
        """Record that a job left by a previous process will not run, and show why on its message if possible."""
        await persist(f"job {job.id} failed", lambda: self.store.jobs.mark_failed(job.id, kind, message))
        try:
            presenter = await presenter_for(job)
        except Exception:
            log.exception("job %s: could not reach its message to say it was not resumed", job.id)
            return
        if presenter is not None:
            await self._finish(job, presenter, Failed(kind, message))


async def _until_outcome(events: AsyncIterator[JobEvent]) -> AsyncIterator[JobEvent]:
    """The events up to and including the Result or Failure (a handle ends there anyway; this makes it explicit)."""
    async for event in events:
        yield event
        if isinstance(event, Result | Failure):
            return
