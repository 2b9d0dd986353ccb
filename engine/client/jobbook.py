"""The bookkeeping every engine client shares: admission, the fair queue, job handles, outcomes, figures.

Why a base class: the local client (one supervised child worker, :mod:`engine.client.client`) and the fleet client
over Redis (:mod:`engine.client.redis_client`) differ in how batches reach workers and how lost workers are
handled, but must admit, queue, report positions and deliver outcomes identically — the bot sees one behaviour,
whatever the deployment.  Subclasses say when they refuse work (:meth:`JobBook._refusal`) and react to a new job
(:meth:`JobBook._on_queued`).
"""

from __future__ import annotations

from engine.client.fair_queue import AFFINITY_WAIT_S, FairQueue, QueuedJob
from engine.client.handle import JobHandle
from engine.errors import UnknownJob, WorkerUnavailable
from engine.protocol import BatchDone, Failure, FailureKind, GenerateRequest, Queued, Result

__all__ = ["NOT_ACCEPTING", "JobBook"]

NOT_ACCEPTING = "The image engine is not taking jobs right now."


class JobBook:
    """Fair queue + handles + counters; the public non-blocking calls of an engine client."""

    def __init__(self, *, max_queue: int, max_per_user: int, affinity_wait_s: float = AFFINITY_WAIT_S) -> None:
        self._queue = FairQueue(max_queue=max_queue, max_per_user=max_per_user, affinity_wait_s=affinity_wait_s)
        self._handles: dict[int, JobHandle] = {}
        self._accepting = False
        self._done = self._failed = self._images = self._steps = 0
        self._busy_s = self._step_s = 0.0

    # ---- public, non-blocking -------------------------------------------------------------------

    def check_capacity(self, user_id: int) -> None:
        """Raise ``QueueFull`` / ``UserQueueFull`` / ``WorkerUnavailable`` if a job from this user would be refused."""
        refusal = self._refusal()
        if refusal:
            raise WorkerUnavailable(refusal)
        self._queue.check_capacity(user_id)

    def submit(self, request: GenerateRequest) -> JobHandle:
        """Queue a request; raises ``QueueFull`` / ``UserQueueFull`` / ``WorkerUnavailable`` at once."""
        refusal = self._refusal()
        if refusal:
            raise WorkerUnavailable(refusal)
        job = self._queue.submit(request)
        handle = self._new_handle(job)
        self._publish_positions()
        self._on_queued()
        return handle

    def position(self, job_id: int) -> int | None:
        """Jobs to be served before this one (0 = next); ``None`` once it runs or ended, or if unknown."""
        return self._queue.position(job_id)

    def handle(self, job_id: int) -> JobHandle:
        try:
            return self._handles[job_id]
        except KeyError:
            raise UnknownJob("That job is not known to the engine.") from None

    # ---- for subclasses -------------------------------------------------------------------------

    def _refusal(self) -> str:
        """Why new jobs are refused now ('' = they are taken)."""
        return "" if self._accepting else NOT_ACCEPTING

    def _on_queued(self) -> None:
        """A job was queued (wake the dispatcher)."""

    def _new_handle(self, job: QueuedJob) -> JobHandle:
        handle = JobHandle(job)
        self._handles[job.job_id] = handle
        return handle

    def _cancel_queued(self, job_id: int) -> bool:
        """Cancel a job still in the fair queue (``Failure(cancelled)`` at once); False when it is not queued."""
        job = self._queue.cancel(job_id)
        if job is None:
            return False
        self._terminal(job, Failure(job_id, FailureKind.CANCELLED, "Cancelled."), running=False)
        self._publish_positions()
        return True

    def _fail_queued_for_shutdown(self) -> None:
        for job in self._queue.drain():
            self._terminal(job, Failure(job.job_id, FailureKind.SHUTDOWN, "The image engine is shutting down.",
                                        hint="Please submit it again in a moment.", retryable=True), running=False)

    def _terminal(self, job: QueuedJob, outcome: Result | Failure, *, running: bool = True) -> None:
        if running:
            self._queue.finish(job.job_id)
        handle = self._handles.pop(job.job_id, None)
        if isinstance(outcome, Result):
            self._done += 1
        else:
            self._failed += 1
        if handle is not None:
            handle.emit(outcome)

    def _count_batch(self, done: BatchDone) -> None:
        self._busy_s += done.duration_s
        self._images += done.images
        self._steps += done.steps
        self._step_s += done.step_time_s

    def _publish_positions(self) -> None:
        for job_id, pos in self._queue.positions().items():
            handle = self._handles.get(job_id)
            if handle is not None:
                handle.emit(Queued(job_id, pos))

    @property
    def _images_per_s(self) -> float:
        return self._images / self._busy_s if self._busy_s else 0.0

    @property
    def _avg_step_s(self) -> float:
        return self._step_s / self._steps if self._steps else 0.0
