"""The batches a local worker holds: the one it renders and, at most, the next one sent ahead of time.

Why its own module: with one batch in flight "is the worker busy" and "which jobs does a lost worker take with it"
were one attribute each; sending the next batch before the current one is done (on ``BatchRendered``) makes them
questions about an ordered pair of batches.  The answers are kept here, pure and unit-tested, so the client's
supervision reads the same as before:

* a job belongs to exactly one batch, and a Result or Failure removes it from there;
* only the *head* batch (the oldest) is on the clock: its ``deadline`` starts when it is sent to an idle worker or
  when the batch before it is done, so a batch queued behind a slow one is not charged for that one's time;
* the next batch may be sent when none is in flight, or when the only one in flight has said ``BatchRendered``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from engine.client.fair_queue import QueuedJob

__all__ = ["InFlight", "InFlightBatch"]


@dataclass(eq=False, slots=True)
class InFlightBatch:
    """One batch sent to the worker: its unanswered jobs by id, its time limit, and when it must be done (monotonic
    seconds; infinite while it waits behind another)."""

    batch_id: int
    jobs: dict[int, QueuedJob]
    time_limit_s: float
    deadline: float = math.inf
    rendered: bool = False  # the worker said BatchRendered: its device work is over


class InFlight:
    """Batches sent to one worker and not yet done, oldest first (at most ``depth`` of them)."""

    def __init__(self, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.depth = depth
        self._batches: list[InFlightBatch] = []

    # ---- questions ------------------------------------------------------------------------------

    @property
    def head(self) -> InFlightBatch | None:
        """The batch the worker renders now (the oldest in flight), or None when it is idle."""
        return self._batches[0] if self._batches else None

    @property
    def batches(self) -> int:
        return len(self._batches)

    def may_send(self) -> bool:
        """True when the worker can take another batch now: it holds none, or the last one sent is rendered."""
        if not self._batches:
            return True
        return len(self._batches) < self.depth and self._batches[-1].rendered

    def __contains__(self, job_id: object) -> bool:
        return any(job_id in batch.jobs for batch in self._batches)

    def __len__(self) -> int:
        """Unanswered jobs in all batches in flight."""
        return sum(len(batch.jobs) for batch in self._batches)

    # ---- changes --------------------------------------------------------------------------------

    def add(self, batch_id: int, jobs: Iterable[QueuedJob], now: float, time_limit_s: float) -> InFlightBatch:
        """A batch was sent; it is on the clock (``time_limit_s``) at once when the worker was idle."""
        batch = InFlightBatch(batch_id, {job.job_id: job for job in jobs}, time_limit_s)
        if not self._batches:
            batch.deadline = now + time_limit_s
        self._batches.append(batch)
        return batch

    def mark_rendered(self, batch_id: int) -> bool:
        """The worker said ``BatchRendered`` for this batch; False when it is not in flight (an old worker's)."""
        for batch in self._batches:
            if batch.batch_id == batch_id:
                batch.rendered = True
                return True
        return False

    def answer(self, job_id: int) -> QueuedJob | None:
        """A Result or Failure arrived: the job leaves its batch (None when it is not in flight)."""
        for batch in self._batches:
            job = batch.jobs.pop(job_id, None)
            if job is not None:
                return job
        return None

    def finish(self, batch_id: int, now: float) -> list[QueuedJob] | None:
        """``BatchDone``: the batch leaves, the next one goes on the clock; returns its still unanswered jobs (a worker
        bug: the caller fails them), or None when no such batch is in flight."""
        for index, batch in enumerate(self._batches):
            if batch.batch_id == batch_id:
                del self._batches[index]
                if index == 0 and self._batches:
                    head = self._batches[0]
                    head.deadline = now + head.time_limit_s
                return list(batch.jobs.values())
        return None

    def take_head(self) -> list[QueuedJob]:
        """The head batch's unanswered jobs, removed with it (its time ran out); later batches stay."""
        if not self._batches:
            return []
        return list(self._batches.pop(0).jobs.values())

    def clear(self) -> list[QueuedJob]:
        """Every unanswered job, oldest batch first, and nothing in flight afterwards (the worker is gone)."""
        jobs = [job for batch in self._batches for job in batch.jobs.values()]
        self._batches.clear()
        return jobs
