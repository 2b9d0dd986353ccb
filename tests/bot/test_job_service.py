"""The job lifecycle without Discord or a worker: a fake engine scripts the events, a recorder stands for the message.

Everything else is real: the SQLite file, the images folder, the rate limiter.  Each test checks both sides of a
job's life — what the user is shown (the presenter's states and its one outcome) and what the database records.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.db import DatabaseBusy
from bot.jobs import Cancelled, Done, Failed, ImageStore, JobPresenter, JobRefused, JobService, Paused, Rendering, Waiting
from bot.jobs.persist import persist
from bot.jobs.service import CANNOT_POST, NOT_RESUMED_AGAIN, POSTING_FAILED, SHUTTING_DOWN
from bot.ratelimit import RateLimiter
from bot.store import Job, Store
from engine.errors import QueueFull, UserQueueFull, WorkerUnavailable
from engine.protocol import Failure, FailureKind, Progress, Queued, Result, Started
from engine.render_settings import HypernetRef
from tests.bot.test_jobs_persist import locked_database
from tests.fakes import FakeEngine, RecordingPresenter
from tests.requests import new_job

pytestmark = pytest.mark.asyncio

PNG = b"\x89PNG\r\n\x1a\nfake image bytes"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with await Store.open(tmp_path / "db.sqlite3") as s:
        yield s


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(store: Store, engine: FakeEngine, tmp_path: Path, clock: Clock) -> JobService:
    limiter = RateLimiter(rate_per_minute=60.0, burst=2, clock=clock)
    return JobService(store, engine, ImageStore(tmp_path / "images"), limiter)


async def started(service: JobService, presenter: JobPresenter, message_id: int | None = 900, **fields: object) -> Job:
    return await service.start(new_job(**fields), presenter, message_id=message_id)


async def test_a_job_from_queue_to_images(service: JobService, engine: FakeEngine, store: Store, tmp_path: Path) -> None:
    presenter = RecordingPresenter(message_id=901)  # e.g. the message moved to the channel
    job = await started(service, presenter, count=2)
    stored = await store.jobs.get(job.id)
    assert stored is not None and stored.status == "queued" and stored.message_id == 900
    assert engine.handles[job.id].request.settings == job.settings

    engine.handles[job.id].push(Queued(job.id, 1), Queued(job.id, 0), Started(job.id, 1), Progress(job.id, 1, 2),
                                Result(job.id, (PNG, PNG + b"2"), (5, 6), 1.5, ("a warning",)))
    done_job, outcome = await presenter.outcome()
    assert presenter.states == [Waiting(1), Waiting(0), Rendering(), Rendering(1, 2)]
    assert outcome == Done((PNG, PNG + b"2"))
    assert (done_job.status, done_job.image_paths, done_job.warnings) == ("done", (f"{job.id}/0.png", f"{job.id}/1.png"),
                                                                          ("a warning",))
    record = await store.jobs.get(job.id)
    assert record is not None and record.status == "done" and record.duration_s == 1.5
    assert record.message_id == 901  # the presenter said where the result now is
    assert (tmp_path / "images" / str(job.id) / "1.png").read_bytes() == PNG + b"2"


@pytest.mark.parametrize(("failure", "kind", "text"), [
    (Failure(0, FailureKind.OUT_OF_MEMORY, "Ran out of GPU memory.", hint="Try a smaller size."), "out_of_memory",
     "Ran out of GPU memory. Try a smaller size."),
    (Failure(0, FailureKind.WORKER_CRASHED, "The engine crashed twice."), "worker_crashed", "The engine crashed twice."),
])
async def test_an_engine_failure_is_recorded_and_shown(service: JobService, engine: FakeEngine, store: Store,
                                                       failure: Failure, kind: str, text: str) -> None:
    presenter = RecordingPresenter()
    job = await started(service, presenter)
    engine.handles[job.id].push(Started(job.id, 1), Failure(job.id, failure.kind, failure.message, failure.hint))
    _, outcome = await presenter.outcome()
    assert outcome == Failed(kind, text)
    record = await store.jobs.get(job.id)
    assert record is not None and (record.status, record.error_kind, record.error_message) == ("failed", kind, text)


async def test_cancel_says_who(service: JobService, engine: FakeEngine, store: Store) -> None:
    presenter = RecordingPresenter()
    job = await started(service, presenter)
    assert await service.cancel(job.id, "<@7>") is True
    _, outcome = await presenter.outcome()
    assert outcome == Cancelled("<@7>")
    assert (await store.jobs.get(job.id)).status == "cancelled"  # type: ignore[union-attr]
    assert await service.cancel(job.id, "<@7>") is False  # finished: nothing to cancel


async def test_shutdown_leaves_the_job_queued_for_the_next_process(service: JobService, engine: FakeEngine,
                                                                   store: Store) -> None:
    presenter = RecordingPresenter()
    job = await started(service, presenter)
    engine.handles[job.id].push(Failure(job.id, FailureKind.SHUTDOWN, "The image engine is shutting down.",
                                        retryable=True))
    _, outcome = await presenter.outcome()
    assert outcome == Paused()
    assert (await store.jobs.get(job.id)).status == "queued"  # type: ignore[union-attr]


@pytest.mark.parametrize(("error", "kind", "text"), [
    (QueueFull("The render queue is full: 4 jobs are waiting, the most it holds.", "Please try again in a minute or two."),
     "rejected", "The render queue is full: 4 jobs are waiting, the most it holds. Please try again in a minute or two."),
    (WorkerUnavailable("The image engine is not taking jobs right now."), "unavailable",
     "The image engine is not taking jobs right now. Please try again in a moment."),
])
async def test_a_submit_the_engine_refuses_is_recorded_and_raised_for_a_private_answer(
        service: JobService, engine: FakeEngine, store: Store, error: Exception, kind: str, text: str) -> None:
    service.admit(1)
    service.admit(1)  # the whole burst of 2 is taken
    engine.submit_error = error  # type: ignore[assignment]
    presenter = RecordingPresenter()
    with pytest.raises(JobRefused) as refused:
        await started(service, presenter)
    assert refused.value.message == text
    assert presenter.states == [] and presenter.outcomes == []  # the job's public message is not the place
    [record] = await store.jobs.history(1)
    assert (record.status, record.error_kind, record.error_message) == ("failed", kind, text)
    engine.submit_error = None
    service.admit(1)  # the refused job gave its rate-limit token back


async def test_a_hypernet_gone_since_validation_is_refused_before_anything_is_written(
        service: JobService, store: Store, engine: FakeEngine) -> None:
    ref = HypernetRef("gone", "ab" * 32, 0.5)
    service.admit(1)
    service.admit(1)
    with pytest.raises(JobRefused) as refused:
        await started(service, RecordingPresenter(), hypernets=(ref,))
    assert refused.value.message == ("The hypernetwork `gone` is no longer available here (it was removed, disabled or "
                                     "replaced). Pick another one; `/hypernets list` shows those installed.")
    assert await store.jobs.history(1) == [] and engine.handles == {}
    service.admit(1)  # token given back


async def test_a_database_that_stays_locked_is_raised_before_anything_exists(
        store: Store, engine: FakeEngine, tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bot.jobs.service.persist", functools.partial(persist, delays=(0.01,)))
    path = tmp_path / "busy.sqlite3"
    async with await Store.open(path, busy_timeout_ms=20) as busy_store:
        service = JobService(busy_store, engine, ImageStore(tmp_path / "images"),
                             RateLimiter(rate_per_minute=60.0, burst=1, clock=clock))
        service.admit(1)
        async with locked_database(path, 0.5):
            with pytest.raises(DatabaseBusy):
                await started(service, RecordingPresenter())
        assert await busy_store.jobs.history(1) == [] and engine.handles == {}
        service.admit(1)  # token given back


async def test_admit_names_the_limit_that_applies(service: JobService, engine: FakeEngine, clock: Clock) -> None:
    own_queue = UserQueueFull("You already have 2 jobs queued or rendering; the limit is 2 at a time.",
                              "The next slot frees up when one of them finishes; you can also cancel one.")
    engine.capacity_error = own_queue
    for _ in range(3):  # refusals for the queue take no rate-limit token
        with pytest.raises(JobRefused) as refused:
            service.admit(1)
        assert refused.value.message == ("You already have 2 jobs queued or rendering; the limit is 2 at a time. The "
                                         "next slot frees up when one of them finishes; you can also cancel one.")
    engine.capacity_error = None
    service.admit(1)
    service.admit(1)  # the burst of 2
    with pytest.raises(JobRefused) as refused:
        service.admit(1)
    assert refused.value.message == ("You are starting jobs too quickly: this bot allows 2 in a row, then 60 a minute. "
                                     "Wait 1 s before starting another one.")
    engine.capacity_error = own_queue  # both limits apply: both are named, with the wait
    with pytest.raises(JobRefused) as refused:
        service.admit(1)
    assert refused.value.message == (
        "You already have 2 jobs queued or rendering; the limit is 2 at a time. The next slot frees up when one of "
        "them finishes; you can also cancel one. You are also starting jobs too quickly: this bot allows 2 in a row, "
        "then 60 a minute, so wait at least 1 s in any case.")
    engine.capacity_error = QueueFull("The render queue is full: 4 jobs are waiting, the most it holds.",
                                      "Please try again in a minute or two.")
    with pytest.raises(JobRefused) as refused:
        service.admit(1)
    assert refused.value.message == "The render queue is full: 4 jobs are waiting, the most it holds. Please try again " \
                                    "in a minute or two."
    engine.capacity_error = None
    clock.now += 1.0
    service.admit(1)
    service.stop_accepting()
    with pytest.raises(JobRefused) as refused:
        service.admit(2)
    assert refused.value.message == SHUTTING_DOWN


async def test_a_full_disk_costs_only_the_copy_for_show(store: Store, engine: FakeEngine, tmp_path: Path) -> None:
    blocked = tmp_path / "images"
    blocked.write_text("a file where the folder should be")  # every write under it fails
    service = JobService(store, engine, ImageStore(blocked), RateLimiter(rate_per_minute=60.0, burst=5))
    presenter = RecordingPresenter()
    job = await started(service, presenter)
    engine.handles[job.id].push(Result(job.id, (PNG,), (1,), 0.5))
    done_job, outcome = await presenter.outcome()
    assert outcome == Done((PNG,))
    assert done_job.image_paths == () and done_job.warnings == (
        "The images could not be kept for /show (the bot's storage is unavailable).",)
    assert (await store.jobs.get(job.id)).status == "done"  # type: ignore[union-attr]


class BrokenPresenter(RecordingPresenter):
    def show(self, job: Job, state: object) -> None:
        if isinstance(state, Rendering):
            raise RuntimeError("the message went away")
        super().show(job, state)  # type: ignore[arg-type]


async def test_a_bug_while_following_still_ends_the_job(service: JobService, engine: FakeEngine, store: Store) -> None:
    presenter = BrokenPresenter()
    job = await started(service, presenter)
    engine.handles[job.id].push(Started(job.id, 1))
    _, outcome = await presenter.outcome()
    assert outcome == Failed("internal", POSTING_FAILED.format(job_id=job.id))
    record = await store.jobs.get(job.id)
    assert record is not None and (record.status, record.error_kind) == ("failed", "internal")


async def test_reconcile_resumes_once_and_fails_what_cannot_be_shown(service: JobService, engine: FakeEngine,
                                                                     store: Store) -> None:
    queued = await store.jobs.create(new_job(prompt="queued"))
    running = await store.jobs.create(new_job(prompt="running"))
    await store.jobs.mark_running(running.id)
    twice = await store.jobs.create(new_job(prompt="restarted before"))
    await store.jobs.bump_attempts(twice.id)
    unreachable = await store.jobs.create(new_job(prompt="its channel is gone", channel_id=404))
    finished = await store.jobs.create(new_job(prompt="done already"))
    await store.jobs.mark_done(finished.id, [], 1.0)
    presenters: dict[int, RecordingPresenter] = {}

    async def presenter_for(job: Job) -> JobPresenter | None:
        if job.channel_id == 404:
            return None
        presenters[job.id] = RecordingPresenter()
        return presenters[job.id]

    await service.reconcile(presenter_for)
    assert sorted(engine.handles) == [queued.id, running.id]
    for job_id in (queued.id, running.id):
        record = await store.jobs.get(job_id)
        assert record is not None and (record.status, record.attempts) == ("queued", 1)
    for job_id, message in ((twice.id, NOT_RESUMED_AGAIN), (unreachable.id, CANNOT_POST)):
        record = await store.jobs.get(job_id)
        assert record is not None and (record.status, record.error_kind, record.error_message) == (
            "failed", "restart", message)
    # The job that will not run again says why on its message.
    _, outcome = await presenters[twice.id].outcome()
    assert outcome == Failed("restart", "The bot stopped again before this job could run. A job is resumed after one "
                                        "restart only, so this one will not run; please start it again.")
    engine.handles[running.id].push(Result(running.id, (PNG,), (1,), 0.5))
    resumed_job, outcome = await presenters[running.id].outcome()
    assert outcome == Done((PNG,)) and resumed_job.attempts == 1  # what the presenter shows as "resumed"
    # Stopped again before the resumed job ran: it is not left queued for a third process.
    engine.handles[queued.id].push(Failure(queued.id, FailureKind.SHUTDOWN, "The image engine is shutting down.",
                                           retryable=True))
    _, outcome = await presenters[queued.id].outcome()
    assert outcome == Failed("restart", NOT_RESUMED_AGAIN)
    assert (await store.jobs.get(queued.id)).status == "failed"  # type: ignore[union-attr]
    await service.reconcile(presenter_for)  # a second pass finds nothing left to resume: nothing twice
    assert sorted(engine.handles) == [queued.id, running.id]


async def test_a_resume_the_engine_refuses_says_why(service: JobService, engine: FakeEngine, store: Store) -> None:
    left = await store.jobs.create(new_job(prompt="left queued"))
    engine.submit_error = UserQueueFull("You already have 5 jobs queued or rendering; the limit is 5 at a time.",
                                        "The next slot frees up when one of them finishes; you can also cancel one.")
    shown = RecordingPresenter()

    async def presenter_for(job: Job) -> JobPresenter | None:
        return shown

    await service.reconcile(presenter_for)
    text = ("The bot restarted but could not resume this job. You already have 5 jobs queued or rendering; the limit is "
            "5 at a time. The next slot frees up when one of them finishes; you can also cancel one.")
    _, outcome = await shown.outcome()
    assert outcome == Failed("restart", text)
    record = await store.jobs.get(left.id)
    assert record is not None and (record.status, record.error_message) == ("failed", text)


async def test_cancelling_a_job_a_dead_process_left_behind(service: JobService, store: Store) -> None:
    orphan = await store.jobs.create(new_job(prompt="left behind"))
    shown = RecordingPresenter()

    async def presenter_for(job: Job) -> JobPresenter | None:
        return shown

    assert await service.cancel(orphan.id, "<@8>", presenter_for) is True
    assert (await store.jobs.get(orphan.id)).status == "cancelled"  # type: ignore[union-attr]
    _, outcome = await shown.outcome()
    assert outcome == Cancelled("<@8>")


async def test_drain_waits_for_jobs_being_posted(service: JobService, engine: FakeEngine) -> None:
    presenter = RecordingPresenter()
    job = await started(service, presenter)
    drained = asyncio.create_task(service.drain(timeout=5.0))
    await asyncio.sleep(0.05)
    assert not drained.done()  # still following the job
    engine.handles[job.id].push(Result(job.id, (PNG,), (1,), 0.5))
    await asyncio.wait_for(drained, 5.0)
    assert presenter.outcomes
