"""The bot's side of the engine: fair queue, worker supervision, per-job event streams.

Why it looks like this: the bot's event loop must never wait on the GPU.  Every public method returns
at once; the transport (:mod:`engine.client.transport`; by default a child process on a socket pair,
:mod:`engine.client.local_worker`) delivers the worker's messages into an asyncio queue.  One supervisor task
owns the worker's life: start it through the transport, feed it batches from the fair queue, ping it, and when it
exits or stops answering kill it, re-queue its in-flight jobs once at the front (each then runs alone) and start a
new one with backoff.

Batches are sent one ahead (``pipeline``): the next batch goes out when the worker says ``BatchRendered`` for the
current one (its device work is over, its PNGs are still being encoded and sent), so the worker starts it without
a round trip and the device does not wait for the PNG encoder; it is still chosen as late as it can be, so a job
that arrived while the current batch denoised joins it.  :mod:`engine.client.in_flight` keeps the books.
A batch that runs past ``job_timeout_s`` (counted from when the worker can start it) is treated differently: the
worker still answers pings (its reader thread does) but the render is stuck, so the client kills it and fails that
batch's jobs with ``timeout`` instead of re-queuing them — a job that hung the device once would hang it again.

Torch-free: imports only the protocol, the fair queue, the transport and the errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Sequence

from engine.client.fair_queue import AFFINITY_WAIT_S, preferred_checkpoints
from engine.client.in_flight import InFlight
from engine.client.jobbook import JobBook
from engine.client.local_worker import LocalWorkers
from engine.client.outcomes import crashed_twice, timed_out
from engine.client.status import EngineStatus, WorkerStatus
from engine.client.transport import Exited, Inbox, WorkerLink, WorkerTransport
from engine.errors import WorkerUnavailable
from engine.protocol import (
    PROTOCOL_VERSION,
    BatchDone,
    BatchRendered,
    Cancel,
    Failure,
    FailureKind,
    Health,
    Hello,
    Ping,
    Progress,
    ResidentCheckpoint,
    Result,
    Shutdown,
    Started,
    SubmitBatch,
    WorkerConfig,
)

__all__ = ["EngineClient", "EngineStatus"]

log = logging.getLogger("engine.client")

_WAKE = object()


class EngineClient(JobBook):
    """Queue + supervised worker process.  Construct, ``await start()``, ``submit``, ``await stop()``."""

    def __init__(self, config: WorkerConfig, *, transport: WorkerTransport | None = None, max_queue: int = 100,
                 max_per_user: int = 4, heartbeat_interval_s: float = 2.0, heartbeat_timeout_s: float = 20.0,
                 start_timeout_s: float = 300.0, job_timeout_s: float = 600.0,
                 restart_backoff: Sequence[float] = (0.5, 2.0, 5.0, 15.0, 60.0),
                 affinity_wait_s: float = AFFINITY_WAIT_S, pipeline: bool = True) -> None:
        """``transport`` starts workers (default: child processes, :class:`LocalWorkers`).

        ``job_timeout_s`` bounds one batch's wall-clock time on the worker, to its ``BatchDone``, from when it was
        sent to an idle worker or the batch before it was done.  It is a public attribute: a new value applies from
        the next batch dispatched.  ``pipeline=False`` sends a batch only to an idle worker (for comparisons).
        """
        if job_timeout_s <= 0:
            raise ValueError(f"job_timeout_s must be positive; got {job_timeout_s}")
        super().__init__(max_queue=max_queue, max_per_user=max_per_user, affinity_wait_s=affinity_wait_s)
        self.config = config
        self.job_timeout_s = job_timeout_s
        self._transport = transport or LocalWorkers()
        self._hb_interval, self._hb_timeout = heartbeat_interval_s, heartbeat_timeout_s
        self._start_timeout = start_timeout_s
        self._backoff = tuple(restart_backoff) or (1.0,)
        self._flight = InFlight(depth=2 if pipeline else 1)  # batches sent to the worker and not done
        self._batch_ids = itertools.count(1)
        self._link: WorkerLink | None = None
        self._hello: Hello | None = None
        self._health: Health | None = None
        self._resident: tuple[ResidentCheckpoint, ...] = ()  # what the worker last said it holds
        self._checkpoint_loads = 0
        self._state = "stopped"
        self._stopping = False
        self._inbox: Inbox | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._gen = 0
        self._last_seen = 0.0
        self._started_at = 0.0
        self.restarts = 0

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker and return once it has loaded its checkpoint (raises ``WorkerUnavailable`` if not)."""
        if self._task is not None:
            return
        self._inbox, self._ready = asyncio.Queue(), asyncio.Event()
        self._accepting, self._stopping, self._started_at = True, False, time.monotonic()
        self._task = asyncio.create_task(self._supervise(), name="engine-supervisor")
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._hello is None:
            await self.stop()
            raise WorkerUnavailable("The image engine could not start.")

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop taking jobs, fail queued ones (``shutdown``), let the running batch finish, end the worker."""
        self._accepting = False
        self._fail_queued_for_shutdown()
        deadline = time.monotonic() + grace_s
        while self._flight.batches and self._link is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._stopping = True
        link = self._link
        if link is not None:
            link.send(Shutdown())
            await link.wait_exit(10)
            link.kill()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._flight.clear():
            self._terminal(job, Failure(job.job_id, FailureKind.SHUTDOWN, "The image engine stopped before this job "
                                        "finished.", hint="Please submit it again in a moment.", retryable=True))
        self._link, self._task, self._state = None, None, "stopped"

    # ---- public, non-blocking -------------------------------------------------------------------

    def cancel(self, job_id: int) -> bool:
        """Cancel a queued job now, or ask the worker to stop a running one between steps."""
        if self._cancel_queued(job_id):
            return True
        if job_id in self._flight and self._link is not None:
            self._link.send(Cancel(job_id))
            return True
        return False

    def status(self) -> EngineStatus:
        hello, health = self._hello, self._health
        return EngineStatus(
            state=self._state, pid=self._link.pid if self._link else None, device=hello.device if hello else "",
            checkpoint=hello.checkpoint if hello else self.config.checkpoint, dtype=hello.dtype if hello else "",
            context_dim=hello.context_dim if hello else None,
            attention_widths=hello.attention_widths if hello else (), queue_length=self._queue.queued,
            running=len(self._flight), users_queued=self._queue.users_queued(), jobs_done=self._done,
            jobs_failed=self._failed, images_per_s=self._images_per_s, avg_step_s=self._avg_step_s,
            cache_bytes=health.hypernet_cache_bytes if health else 0,
            vram_used_bytes=health.vram_used_bytes if health else 0,
            cache_contents=health.hypernet_cache_names if health else (),
            uptime_s=time.monotonic() - self._started_at if self._started_at else 0.0, restarts=self.restarts,
            workers=(self._worker_status(),), checkpoints=self._resident, checkpoint_loads=self._checkpoint_loads,
            unet_compiled_calls=health.unet_compiled_calls if health else 0,
            unet_eager_calls=health.unet_eager_calls if health else 0,
            unet_pending_layouts=health.unet_pending_layouts if health else 0,
            unet_compile_failure=health.unet_compile_failure if health else "")

    def _max_batch(self) -> int:
        """Images per batch: what the worker asked for in its Hello (auto resolved for its device), else the config's."""
        hello = self._hello
        return (hello.max_batch if hello and hello.max_batch else self.config.max_batch) or 4

    def _worker_status(self) -> WorkerStatus:
        """The one child worker, in the shape /status lists every worker in."""
        hello = self._hello
        state = "busy" if self._state == "ready" and self._flight.head is not None else self._state
        return WorkerStatus(name="local", state=state, device=hello.device if hello else "",
                            checkpoint=hello.checkpoint if hello else self.config.checkpoint,
                            max_batch=self._max_batch(), jobs_done=self._done,
                            heartbeat_age_s=time.monotonic() - self._last_seen if self._last_seen else None,
                            pid=self._link.pid if self._link else None, checkpoints=self._resident)

    # ---- supervisor -----------------------------------------------------------------------------

    async def _supervise(self) -> None:
        failures = 0
        while not self._stopping:
            reason = await self._spawn()
            if reason is None:
                failures = 0
                self._state = "ready"
                assert self._ready is not None
                self._ready.set()
                reason = await self._serve()
            if self._stopping:
                return
            failures += 1
            self._on_worker_lost(reason)
            if self._ready is not None and not self._ready.is_set():
                return  # never came up: start() reports it
            self._state = "restarting"
            await asyncio.sleep(self._backoff[min(failures, len(self._backoff)) - 1])
            self.restarts += 1

    async def _spawn(self) -> str | None:
        """Start a worker and wait for its Hello; returns why it failed, or None."""
        assert self._inbox is not None
        self._state, self._gen = "starting", self._gen + 1
        self._link = self._transport.start(self._gen, self.config, self._inbox)
        deadline = time.monotonic() + self._start_timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                gen, msg = await asyncio.wait_for(self._inbox.get(), left)
            except TimeoutError:
                break
            if gen != self._gen:
                continue
            if isinstance(msg, Hello):
                if msg.protocol_version != PROTOCOL_VERSION:
                    return f"worker speaks protocol {msg.protocol_version}, expected {PROTOCOL_VERSION}"
                self._hello = msg
                self._note_resident(msg)
                log.info("engine worker %d ready on %s (%s)", msg.pid, msg.device, msg.checkpoint)
                return None
            if isinstance(msg, Exited):
                return f"worker exited during start (code {msg.code})"
        return "worker did not start in time"

    async def _serve(self) -> str:
        """Feed and watch a ready worker until it dies or hangs; returns the reason."""
        assert self._inbox is not None and self._link is not None
        last_seen = last_ping = time.monotonic()
        nonce = 0
        self._dispatch()
        while True:
            now = time.monotonic()
            if now - last_seen > self._hb_timeout:
                return f"worker {self._link.pid} stopped answering for {now - last_seen:.0f}s"
            head = self._flight.head
            if head is not None and now >= head.deadline and self._inbox.empty():
                return self._time_out_batch()  # (messages still waiting, e.g. its BatchDone, are read first)
            if now - last_ping >= self._hb_interval:
                nonce += 1
                last_ping = now
                self._link.send(Ping(nonce))
            wake_at = last_ping + self._hb_interval
            if head is not None:
                wake_at = min(wake_at, head.deadline)
            try:
                gen, msg = await asyncio.wait_for(self._inbox.get(), max(0.01, wake_at - now))
            except TimeoutError:
                continue
            if msg is _WAKE:
                self._dispatch()
                continue
            if gen != self._gen:
                continue
            last_seen = self._last_seen = time.monotonic()
            if isinstance(msg, Exited):
                return f"worker {self._link.pid} exited with code {msg.code}"
            self._on_message(msg)

    def _note_resident(self, msg: Hello | Health | BatchDone) -> None:
        self._resident, self._checkpoint_loads = msg.checkpoints, msg.checkpoint_loads

    def _on_message(self, msg: object) -> None:
        if isinstance(msg, Health):
            self._health = msg
            self._note_resident(msg)
        elif isinstance(msg, Progress):
            if msg.job_id in self._flight:
                self._handles[msg.job_id].emit(msg)
        elif isinstance(msg, Result | Failure):
            job = self._flight.answer(msg.job_id)
            if job is not None:
                self._terminal(job, msg)
        elif isinstance(msg, BatchRendered):
            if self._flight.mark_rendered(msg.batch_id):
                self._dispatch()
        elif isinstance(msg, BatchDone):
            unanswered = self._flight.finish(msg.batch_id, time.monotonic())
            if unanswered is None:
                return
            self._note_resident(msg)
            self._count_batch(msg)
            for job in unanswered:  # answered nothing: a worker bug, never hang the user
                self._terminal(job, Failure(job.job_id, FailureKind.INTERNAL, "The engine lost track of this job."))
            self._dispatch()

    def _dispatch(self) -> None:
        if not self._flight.may_send() or self._link is None or self._state != "ready" or not self._accepting:
            return
        jobs = self._queue.next_batch(self._max_batch(),
                                      prefer=preferred_checkpoints(self._resident, self.config.checkpoint,
                                                                   several=bool(self.config.checkpoints)))
        if not jobs:
            return
        batch_id = next(self._batch_ids)
        self._flight.add(batch_id, jobs, time.monotonic(), self.job_timeout_s)
        for job in jobs:
            self._handles[job.job_id].emit(Started(job.job_id, job.attempts, batch_id))
        self._link.send(SubmitBatch(batch_id, tuple(j.request for j in jobs)))
        self._publish_positions()

    def _time_out_batch(self) -> str:
        """The current batch ran too long: fail its jobs (``timeout``, not re-queued); returns why the worker goes.

        The caller's ``_on_worker_lost`` then kills the worker (SIGKILL: a stuck kernel ignores anything
        gentler) and a fresh one is started; only a batch sent ahead, which never got its turn, is re-queued.
        """
        assert self._link is not None and self._flight.head is not None
        head = self._flight.head
        for job in self._flight.take_head():
            self._terminal(job, timed_out(job.job_id, head.time_limit_s))
        limit = f"{head.time_limit_s:g} s"
        return f"batch {head.batch_id} on worker {self._link.pid} ran past the {limit} render time limit"

    def _on_worker_lost(self, reason: str) -> None:
        """Kill what is left of the worker; re-queue its jobs once (at the front), fail the rest."""
        log.warning("engine worker lost: %s", reason)
        if self._link is not None:
            self._link.kill()
        self._link, self._hello, self._health = None, None, None
        for job in self._flight.clear():
            if job.attempts < 2:
                self._queue.requeue_front(job)
            else:
                self._terminal(job, crashed_twice(job.job_id))
        self._publish_positions()

    # ---- helpers --------------------------------------------------------------------------------

    def _on_queued(self) -> None:
        self._wake()

    def _wake(self) -> None:
        if self._inbox is not None:
            self._inbox.put_nowait((0, _WAKE))
