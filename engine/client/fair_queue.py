"""The fair queue: per-user FIFO queues served round-robin, capped, batched across users.

Why this shape: one user queueing many jobs must not starve others, and the GPU is far more
efficient with several images per UNet step (see design.md, "Performance facts"), so a batch may mix
users and hypernets as long as the jobs share size, steps and sampler (``GenerateRequest.batch_key``).

How round-robin is kept: each job gets a *round* number when queued — one more than its user's
previous queued job, and never earlier than the round being served now.  Serving in order of
(round, arrival) is exactly round-robin over per-user FIFO queues, and a job's position is simply
how many queued jobs sort before it.  A batch starts with the first job in that order and is filled
with later compatible jobs in the same order — but never a user's job ahead of that user's earlier one,
so each user's jobs leave in the order sent.  A job is never held back to wait for a fuller batch.
Jobs re-queued after a worker crash go before everything else (they already waited their turn).

Checkpoint affinity: a batch runs on one checkpoint (it is part of the batch key), and switching the worker to a
model it does not hold costs seconds.  So when the client says which checkpoints the worker holds on its device
(``prefer``), the batch starts with the first job in fair order on one of them whose user has no earlier job
waiting, instead of with a job that needs a load — unless a job on another checkpoint has already waited
``affinity_wait_s``: then fair order decides again, so affinity delays no job by more than that bound (plus its
ordinary fair wait).  Each user's jobs still leave in the order sent.

Pure Python, no asyncio, the clock injected: the client drives it and tests exercise it directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from engine.errors import QueueFull, UserQueueFull
from engine.protocol import GenerateRequest, ResidentCheckpoint

__all__ = ["FairQueue", "QueuedJob", "preferred_checkpoints"]

AFFINITY_WAIT_S = 20.0


def preferred_checkpoints(resident: Iterable[ResidentCheckpoint], default: str, *, several: bool = True
                          ) -> frozenset[str]:
    """The checkpoint settings a worker can render without loading: those on its device ("" when the default is).

    ``several=False`` (a worker with one checkpoint, which every name means): no preference."""
    if not several:
        return frozenset()
    names = {c.name for c in resident if c.on_device}
    return frozenset(names | {""}) if default in names else frozenset(names)


@dataclass(eq=False, slots=True)
class QueuedJob:
    """A request while the engine client owns it (queued or running).  ``attempts`` counts hand-overs to a worker."""

    request: GenerateRequest
    seq: int
    round: int
    retry: bool = False
    attempts: int = 0
    running: bool = field(default=False)
    queued_at: float = 0.0  # the queue's clock when it was submitted

    @property
    def job_id(self) -> int:
        return self.request.job_id

    @property
    def user_id(self) -> int:
        return self.request.user_id

    @property
    def rows(self) -> int:
        """Image rows this job adds to a UNet batch."""
        return max(1, self.request.settings.count)

    @property
    def checkpoint(self) -> str:
        return self.request.settings.checkpoint

    def order_key(self) -> tuple[int, int, int]:
        return (0 if self.retry else 1, self.round, self.seq)


class FairQueue:
    """Round-robin over users with caps; ``next_batch`` hands out jobs, ``finish`` releases them.

    ``max_queue`` caps jobs waiting (all users); ``max_per_user`` caps one user's waiting + running jobs;
    ``affinity_wait_s`` bounds how long a job may be passed over for jobs on a checkpoint the worker holds.
    """

    def __init__(self, *, max_queue: int, max_per_user: int, affinity_wait_s: float = AFFINITY_WAIT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_queue < 1 or max_per_user < 1:
            raise ValueError("max_queue and max_per_user must be at least 1")
        self.max_queue = max_queue
        self.max_per_user = max_per_user
        self.affinity_wait_s = affinity_wait_s
        self._clock = clock
        self._queued: dict[int, QueuedJob] = {}
        self._running: dict[int, QueuedJob] = {}
        self._current_round = 0
        self._seq = 0

    # ---- admission ------------------------------------------------------------------------------

    def check_capacity(self, user_id: int) -> None:
        """Raise ``QueueFull`` / ``UserQueueFull`` if a new job from this user would be refused now.

        Lets the bot answer a full queue privately before it defers and writes anything.
        """
        if len(self._queued) >= self.max_queue:
            raise QueueFull(
                f"The render queue is full: {self.max_queue} jobs are waiting, the most it holds.",
                retry_hint="A place frees up each time a job starts rendering; please try again in a minute or two.",
            )
        mine = self.user_jobs(user_id)
        if mine >= self.max_per_user:
            raise UserQueueFull(
                f"You already have {mine} {'job' if mine == 1 else 'jobs'} queued or rendering; "
                f"the limit is {self.max_per_user} at a time.",
                retry_hint="The next slot frees up when one of them finishes; you can also cancel one.",
            )

    def submit(self, request: GenerateRequest) -> QueuedJob:
        """Queue a new job or raise ``QueueFull`` / ``UserQueueFull``; never drops silently."""
        if request.job_id in self._queued or request.job_id in self._running:
            raise ValueError(f"job {request.job_id} is already in the engine")
        self.check_capacity(request.user_id)
        last = max((j.round for j in self._queued.values() if j.user_id == request.user_id and not j.retry), default=-1)
        rnd = max(self._current_round, last + 1)
        job = QueuedJob(request=request, seq=self._next_seq(), round=rnd, queued_at=self._clock())
        self._queued[job.job_id] = job
        return job

    def requeue_front(self, job: QueuedJob) -> None:
        """Put a job that was running back in front of the queue (its worker died); caps do not apply."""
        self._running.pop(job.job_id, None)
        job.running = False
        job.retry = True
        job.seq = self._next_seq()
        self._queued[job.job_id] = job

    def adopt(self, request: GenerateRequest) -> QueuedJob:
        """Register a job that already runs on a worker (handed out by a previous bot process); caps do not apply."""
        if request.job_id in self._queued or request.job_id in self._running:
            raise ValueError(f"job {request.job_id} is already in the engine")
        job = QueuedJob(request=request, seq=self._next_seq(), round=self._current_round, attempts=1, running=True)
        self._running[job.job_id] = job
        return job

    def give_back(self, jobs: Iterable[QueuedJob]) -> None:
        """Undo :meth:`next_batch` for jobs that could not be handed to a worker: queued again as they were."""
        for job in jobs:
            if self._running.pop(job.job_id, None) is not None:
                job.running = False
                job.attempts -= 1
                self._queued[job.job_id] = job

    # ---- serving --------------------------------------------------------------------------------

    def next_batch(self, max_batch: int, *, prefer: Collection[str] = ()) -> list[QueuedJob]:
        """Take the next fair job plus compatible jobs in fair order, ``sum(count) <= max_batch``.

        ``prefer``: the checkpoint settings the worker holds on its device (see the module's "affinity").
        A first job bigger than ``max_batch`` rows is still served, alone; so is a job re-queued after a
        worker crash (it may be what crashed it, and must not take batch-mates down again).  Returns
        ``[]`` only when nothing is queued.
        """
        order = self._fair_order()
        if not order:
            return []
        first = self._lead(order, prefer)
        batch = [first]
        rows = first.rows
        key = first.request.batch_key()
        blocked: set[int] = set()  # users with a job left behind: their later jobs wait too (per-user FIFO)
        for job in [] if first.retry else order:  # a crash suspect runs alone
            if job is first:
                continue
            if job.retry or rows >= max_batch:
                break
            if job.user_id not in blocked and job.request.batch_key() == key and rows + job.rows <= max_batch:
                batch.append(job)
                rows += job.rows
            else:
                blocked.add(job.user_id)
        if not order[0].retry:
            self._current_round = max(self._current_round, order[0].round)
        for job in batch:
            del self._queued[job.job_id]
            job.running = True
            job.attempts += 1
            self._running[job.job_id] = job
        return batch

    def finish(self, job_id: int) -> QueuedJob | None:
        """A running job ended (any outcome); frees its place in the user's cap."""
        job = self._running.pop(job_id, None)
        if job is not None:
            job.running = False
        return job

    def cancel(self, job_id: int) -> QueuedJob | None:
        """Remove a queued job; returns it, or ``None`` if it is not queued (running jobs are the caller's)."""
        return self._queued.pop(job_id, None)

    def drain(self) -> list[QueuedJob]:
        """Remove and return every queued job (shutdown)."""
        jobs = self._fair_order()
        self._queued.clear()
        return jobs

    # ---- views ----------------------------------------------------------------------------------

    def position(self, job_id: int) -> int | None:
        """How many queued jobs will be served before this one (0 = next); ``None`` if not queued."""
        job = self._queued.get(job_id)
        if job is None:
            return None
        key = job.order_key()
        return sum(1 for other in self._queued.values() if other.order_key() < key)

    def positions(self) -> dict[int, int]:
        """Every queued job's position, computed in one pass."""
        return {job.job_id: i for i, job in enumerate(self._fair_order())}

    def get(self, job_id: int) -> QueuedJob | None:
        return self._queued.get(job_id) or self._running.get(job_id)

    def is_queued(self, job_id: int) -> bool:
        return job_id in self._queued

    def user_jobs(self, user_id: int) -> int:
        """This user's queued + running jobs (what the per-user cap counts)."""
        return sum(1 for j in self._all() if j.user_id == user_id)

    @property
    def queued(self) -> int:
        return len(self._queued)

    @property
    def running(self) -> int:
        return len(self._running)

    def users_queued(self) -> int:
        return len({j.user_id for j in self._queued.values()})

    def running_jobs(self) -> list[QueuedJob]:
        return list(self._running.values())

    # ---- internals ------------------------------------------------------------------------------

    def _lead(self, order: list[QueuedJob], prefer: Collection[str]) -> QueuedJob:
        """The job a batch starts with: the first in fair order, or the first on a preferred checkpoint."""
        first = order[0]
        if first.retry or not prefer or first.checkpoint in prefer:
            return first
        now = self._clock()
        if any(now - j.queued_at >= self.affinity_wait_s for j in order if j.checkpoint not in prefer):
            return first  # someone has waited long enough for the model switch: plain fairness
        seen: set[int] = set()
        for job in order:
            if job.user_id not in seen and not job.retry and job.checkpoint in prefer:
                return job
            seen.add(job.user_id)
        return first

    def _fair_order(self) -> list[QueuedJob]:
        return sorted(self._queued.values(), key=QueuedJob.order_key)

    def _all(self) -> Iterable[QueuedJob]:
        yield from self._queued.values()
        yield from self._running.values()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq
