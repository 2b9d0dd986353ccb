"""One submitted job as the bot sees it: an async stream of its events and its final outcome.

Why a handle per job: the bot follows each job in its own task (edit the message as the position changes, then
post the result), while the client's supervisor produces events for all jobs at once; a queue per handle
decouples the two, and de-duplicates position updates so the bot never edits a message for nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from engine.client.fair_queue import QueuedJob
from engine.errors import EngineError
from engine.protocol import TERMINAL_EVENTS, Failure, FailureKind, JobEvent, Queued, Result, Started

__all__ = ["JobFailed", "JobHandle"]


class JobFailed(EngineError):
    """Raised by ``JobHandle.result()`` when the job ended with a ``Failure``; carries it unchanged."""

    def __init__(self, failure: Failure) -> None:
        text = failure.message if not failure.hint else f"{failure.message} {failure.hint}"
        super().__init__(text)
        self.failure = failure

    @property
    def kind(self) -> FailureKind:
        return self.failure.kind


class JobHandle:
    """One submitted job: its events (Queued*, Started, Progress*, then one Result or Failure) and outcome."""

    def __init__(self, job: QueuedJob) -> None:
        self._job = job
        self._events: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._done: asyncio.Future[Result | Failure] = asyncio.get_running_loop().create_future()
        self._last_position: int | None = None

    @property
    def job_id(self) -> int:
        return self._job.job_id

    @property
    def attempts(self) -> int:
        """Times the job was handed to a worker (2 after a crash retry); the bot may persist it."""
        return self._job.attempts

    def done(self) -> bool:
        return self._done.done()

    async def events(self) -> AsyncIterator[JobEvent]:
        """Yield events until (and including) the terminal Result or Failure."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, TERMINAL_EVENTS):
                return

    async def result(self) -> Result:
        """The job's Result; raises ``JobFailed`` (with the ``Failure``) if it did not finish."""
        outcome = await asyncio.shield(self._done)
        if isinstance(outcome, Failure):
            raise JobFailed(outcome)
        return outcome

    def emit(self, event: JobEvent) -> None:
        """(Client only.) Deliver an event; a repeated position and anything after the outcome are dropped."""
        if self._done.done():
            return
        if isinstance(event, Queued):
            if event.position == self._last_position:
                return
            self._last_position = event.position
        elif isinstance(event, Started):
            self._last_position = None  # if re-queued after a crash, its position is news again
        self._events.put_nowait(event)
        if isinstance(event, Result | Failure):
            self._done.set_result(event)
