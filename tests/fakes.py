"""Fakes for the seams the light unit tests replace: the engine (the GPU side) and a job's presenter (Discord).

Why only these: everything else in those tests is real (a SQLite file, the images folder, the rate limiter).
:class:`FakeEngine` satisfies :class:`bot.jobs.EngineAPI`; a test scripts each job's events through its
:class:`FakeHandle`.  :class:`RecordingPresenter` satisfies :class:`bot.jobs.JobPresenter` and keeps what it was
told, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from bot.jobs import JobState, Outcome
from bot.store import Job
from engine.client import EngineStatus
from engine.errors import EngineError
from engine.protocol import Failure, FailureKind, GenerateRequest, JobEvent, Result


class FakeHandle:
    """One submitted job's event stream, fed by the test with :meth:`push`."""

    def __init__(self, request: GenerateRequest) -> None:
        self.request = request
        self._events: asyncio.Queue[JobEvent] = asyncio.Queue()
        self.finished = False

    def push(self, *events: JobEvent) -> None:
        for event in events:
            if isinstance(event, Result | Failure):
                self.finished = True
            self._events.put_nowait(event)

    async def events(self) -> AsyncIterator[JobEvent]:
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, Result | Failure):
                return


class FakeEngine:
    """The engine client's calls, recorded; refusals armed with ``capacity_error`` / ``submit_error``."""

    def __init__(self) -> None:
        self.handles: dict[int, FakeHandle] = {}
        self.capacity_error: EngineError | None = None
        self.submit_error: EngineError | None = None
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self, grace_s: float = 30.0) -> None:
        self.stopped = True

    def check_capacity(self, user_id: int) -> None:
        if self.capacity_error is not None:
            raise self.capacity_error

    def submit(self, request: GenerateRequest) -> FakeHandle:
        if self.submit_error is not None:
            raise self.submit_error
        handle = self.handles[request.job_id] = FakeHandle(request)
        return handle

    def cancel(self, job_id: int) -> bool:
        handle = self.handles.get(job_id)
        if handle is None or handle.finished:
            return False
        handle.push(Failure(job_id, FailureKind.CANCELLED, "Cancelled."))
        return True

    def status(self) -> EngineStatus:
        return EngineStatus(state="ready", pid=1, device="fake", checkpoint="tiny", dtype="float32", context_dim=768,
                            attention_widths=(320, 640), queue_length=0, running=0, users_queued=0,
                            jobs_done=0, jobs_failed=0, images_per_s=0.0, avg_step_s=0.0, cache_bytes=0,
                            vram_used_bytes=0, cache_contents=(), uptime_s=0.0, restarts=0)


class RecordingPresenter:
    """Keeps every state and the outcome it was given; ``finish`` answers ``message_id``."""

    def __init__(self, message_id: int | None = None) -> None:
        self.message_id = message_id
        self.states: list[JobState] = []
        self.outcomes: list[tuple[Job, Outcome]] = []
        self.done = asyncio.Event()

    def show(self, job: Job, state: JobState) -> None:
        self.states.append(state)

    async def finish(self, job: Job, outcome: Outcome) -> int | None:
        self.outcomes.append((job, outcome))
        self.done.set()
        return self.message_id

    async def outcome(self, timeout: float = 5.0) -> tuple[Job, Outcome]:
        await asyncio.wait_for(self.done.wait(), timeout)
        assert len(self.outcomes) == 1, f"a job must end exactly once, got {self.outcomes}"
        return self.outcomes[0]
