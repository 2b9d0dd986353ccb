"""The engine client for a fleet of standalone GPU workers reached through Redis Streams (``engine.transport = "redis"``).

Why this shape: the bot keeps the fair queue — round-robin over its users, the same caps, batches that mix users and
hypernets — and hands out a batch only when a worker asks for one: an idle worker puts its name on ``P:idle``, a
bot with work pops a name (atomically, so each idle worker goes to one bot) and forms a batch for that worker's
``max_batch``.  Nothing piles up in Redis, so a user arriving late still gets the next turn, positions stay exact
and a queued job is cancelled at once.  Keys and streams: :mod:`engine.client.redis_layout`.

What the workers own: a batch entry stays pending until its worker acknowledges it with the batch's end, so a lost
worker's batch is taken over by another (:mod:`engine.worker.redis_claims`); this client only follows the answers
on its own events stream.  That stream is a consumer group too: answers wait there while the bot is down, and the
jobs it had handed out are kept in ``P:bot:<id>:inflight`` — a restarted bot adopts them when its job service
re-submits them, and posts their results instead of rendering them again.  Several bot processes share the
workers, each with its own ``bot_id``.

Redis down: new jobs are refused with :data:`BROKER_DOWN`; queued jobs wait, running ones go on rendering, and
every loop here reconnects on its own.  Torch-free.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import re
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from engine.client.fair_queue import AFFINITY_WAIT_S, QueuedJob, preferred_checkpoints
from engine.client.fleet_status import fleet_status, worker_state
from engine.client.handle import JobHandle
from engine.client.jobbook import JobBook
from engine.client.redis_layout import BOT_GROUP, NAME_RULE, WORKER_GROUP, RedisLayout
from engine.client.status import EngineStatus
from engine.codec import CodecError, decode, decode_as, encode
from engine.errors import WorkerUnavailable
from engine.protocol import (
    BatchClaimed,
    BatchDone,
    Failure,
    FailureKind,
    FetchModel,
    FleetConfig,
    GenerateRequest,
    ModelBlob,
    Progress,
    Result,
    Started,
    SubmitBatch,
    WorkerConfig,
    WorkerInfo,
)

__all__ = ["BROKER_DOWN", "RedisEngineClient"]

log = logging.getLogger("engine.client")

BROKER_DOWN = ("The image engine cannot reach its job broker (Redis) right now, so it is not taking new jobs. "
               "Please try again in a minute.")
REDIS_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.BusyLoadingError, OSError)
_SHA256 = re.compile(r"[0-9a-f]{64}")
BLOB_TTL_S = 600
CANCEL_TTL_S = 3600
FORGET_GONE_S = 600.0  # a gone worker stays listed in /status this long


class RedisEngineClient(JobBook):
    """Fair queue in the bot, batches to whichever worker asks first, answers from this bot's events stream."""

    def __init__(self, config: WorkerConfig, redis_url: str, *, bot_id: str = "main", prefix: str = "hypercord",
                 max_queue: int = 100, max_per_user: int = 4, lease_s: float = 30.0, heartbeat_interval_s: float = 2.0,
                 heartbeat_timeout_s: float = 20.0, start_timeout_s: float = 60.0, job_timeout_s: float = 600.0,
                 adopt_ttl_s: float = 900.0, affinity_wait_s: float = AFFINITY_WAIT_S) -> None:
        super().__init__(max_queue=max_queue, max_per_user=max_per_user, affinity_wait_s=affinity_wait_s)
        if not NAME_RULE.fullmatch(bot_id):
            raise ValueError(f"bot_id may use letters, digits and _.:- only; got {bot_id!r}")
        self.config, self.bot_id, self.redis_url = config, bot_id, redis_url
        self._layout = RedisLayout(prefix)
        self._fleet = FleetConfig(config, lease_s=lease_s, heartbeat_interval_s=heartbeat_interval_s,
                                  job_timeout_s=job_timeout_s)
        self._hb_interval, self._hb_timeout = heartbeat_interval_s, heartbeat_timeout_s
        self._start_timeout, self._adopt_ttl = start_timeout_s, adopt_ttl_s
        self._r: Any = None  # redis.asyncio.Redis (its stream replies are loosely typed)
        self._running: dict[int, QueuedJob] = {}  # handed to the fleet, outcome not yet seen
        self._where: dict[int, str] = {}  # job id -> the worker that claimed it
        self._adopted: dict[int, float] = {}  # job id -> when: handed out by a previous process, not re-submitted yet
        self._early: dict[int, tuple[str, Result | Failure]] = {}  # outcomes of adopted jobs, kept pending until then
        self._workers: dict[str, WorkerInfo] = {}
        self._broker_ok = False
        self._closing = False
        self._work = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._batch_ids = itertools.count(int(time.time() * 1000))
        self._started_at = 0.0

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, publish the fleet settings, adopt jobs a previous process handed out; workers may come later."""
        if self._tasks:
            return
        self._closing = False
        self._r = aioredis.Redis.from_url(self.redis_url, socket_timeout=10, socket_connect_timeout=5)
        deadline = time.monotonic() + self._start_timeout
        while True:
            try:
                await self._prepare()
                break
            except REDIS_ERRORS as exc:
                if time.monotonic() > deadline:
                    await self._r.aclose()
                    raise WorkerUnavailable(f"The image engine cannot reach Redis ({exc}).") from None
                await asyncio.sleep(0.5)
        self._broker_ok = self._accepting = True
        self._started_at = time.monotonic()
        self._tasks = [asyncio.create_task(loop(), name=f"engine-redis-{loop.__name__}")
                       for loop in (self._events_loop, self._dispatch_loop, self._watch_loop)]

    async def _prepare_groups(self) -> None:
        lay = self._layout
        for stream, group in ((lay.work, WORKER_GROUP), (lay.events(self.bot_id), BOT_GROUP)):
            with contextlib.suppress(redis_errors.ResponseError):  # BUSYGROUP: it exists
                await self._r.xgroup_create(stream, group, id="0", mkstream=True)

    async def _prepare(self) -> None:
        r, lay = self._r, self._layout
        await self._prepare_groups()
        await r.set(lay.config, encode(self._fleet))
        inflight = await r.hkeys(lay.inflight(self.bot_id))
        now = time.monotonic()
        self._adopted = {int(k): now for k in inflight if int(k) not in self._running}
        if self._adopted:
            log.info("adopting %d jobs a previous bot process handed to the workers", len(self._adopted))
        await self._refresh_workers()

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop taking jobs, fail queued ones (``shutdown``), wait for running ones, then let go.

        Jobs still rendering stay on the workers: their answers wait in Redis for the next bot process."""
        self._accepting = False
        self._fail_queued_for_shutdown()
        deadline = time.monotonic() + grace_s
        while self._running and self._broker_ok and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self._tasks = []
        for job in list(self._running.values()):
            self._terminal(job, Failure(job.job_id, FailureKind.SHUTDOWN, "The bot stopped before this job finished.",
                                        hint="It will be picked up when the bot is back.", retryable=True))
        self._running.clear()
        if self._r is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._r.aclose()
            self._r = None

    # ---- public, non-blocking -------------------------------------------------------------------

    def submit(self, request: GenerateRequest) -> JobHandle:
        """Queue a request (``JobBook.submit``) — or adopt it when a previous process already handed it out."""
        if self._adopted.pop(request.job_id, None) is None:
            return super().submit(request)
        job = self._queue.adopt(request)
        handle = self._new_handle(job)
        self._running[job.job_id] = job
        handle.emit(Started(job.job_id, job.attempts, 0))
        early = self._early.pop(job.job_id, None)
        if early is not None:
            entry_id, outcome = early
            self._end(job.job_id, outcome)
            self._spawn(self._forget(job.job_id, entry_id))
        return handle

    def cancel(self, job_id: int) -> bool:
        """Cancel a queued job now, or flag a running one for its worker (it drops its rows between steps)."""
        if self._cancel_queued(job_id):
            return True
        if job_id not in self._running:
            return False
        self._spawn(self._r.set(self._layout.cancel(self.bot_id, job_id), b"1", ex=CANCEL_TTL_S))
        return True

    def status(self) -> EngineStatus:
        workers = sorted(self._workers.values(), key=lambda w: w.name)
        return fleet_status(self.config, workers, time.time(), self._hb_timeout, broker_ok=self._broker_ok,
                            queue_length=self._queue.queued, running=len(self._running),
                            users_queued=self._queue.users_queued(), jobs_done=self._done, jobs_failed=self._failed,
                            images_per_s=self._images_per_s, avg_step_s=self._avg_step_s,
                            uptime_s=time.monotonic() - self._started_at if self._started_at else 0.0)

    def worker_of(self, job_id: int) -> str | None:
        """The worker that claimed a running job (None while it is queued or unknown)."""
        return self._where.get(job_id)

    # ---- JobBook hooks --------------------------------------------------------------------------

    def _refusal(self) -> str:
        return super()._refusal() or ("" if self._broker_ok else BROKER_DOWN)

    def _on_queued(self) -> None:
        self._work.set()

    # ---- loops ----------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        """While jobs wait: take an idle worker's name, form a batch for it, hand it out."""
        while not self._closing:
            await self._work.wait()
            if not self._queue.queued:
                self._work.clear()
                continue
            try:
                popped = await self._r.blpop([self._layout.idle], timeout=1)
                if popped is not None:
                    await self._dispatch_to(popped[1].decode())
                self._up()
            except REDIS_ERRORS as exc:
                await self._down(exc)

    async def _dispatch_to(self, name: str) -> None:
        raw = await self._r.hget(self._layout.workers, name)
        info = decode_as(raw, WorkerInfo)
        if info is None or worker_state(info, time.time(), self._hb_timeout) not in ("ready", "busy"):
            return  # a stale name (the worker is gone or stopped): dropped; "busy" may be a registry lagging behind
        prefer = preferred_checkpoints(info.checkpoints, info.checkpoint, several=bool(self.config.checkpoints))
        jobs = self._queue.next_batch(info.max_batch, prefer=prefer)
        if not jobs:
            await self._r.lpush(self._layout.idle, name)
            return
        batch = SubmitBatch(next(self._batch_ids), tuple(j.request for j in jobs))
        pipe = self._r.pipeline(transaction=True)
        pipe.xadd(self._layout.work, {"bot": self.bot_id, "attempt": "1", "body": encode(batch)})
        pipe.hset(self._layout.inflight(self.bot_id), mapping={str(j.job_id): encode(j.request) for j in jobs})
        try:
            await pipe.execute()
        except REDIS_ERRORS:
            self._queue.give_back(jobs)
            raise
        for job in jobs:
            self._running[job.job_id] = job
            self._handles[job.job_id].emit(Started(job.job_id, job.attempts, batch.batch_id))
        self._publish_positions()

    async def _events_loop(self) -> None:
        """This bot's answers, oldest first: pending ones from before a restart, then new ones."""
        cursor = "0-0"
        events = self._layout.events(self.bot_id)
        while not self._closing:
            try:
                reply = await self._r.xreadgroup(BOT_GROUP, self.bot_id, {events: cursor}, count=100, block=1000)
                self._up()
                entries = reply[0][1] if reply else []
                if cursor != ">" and not entries:
                    cursor = ">"
                for entry_id, fields in entries:
                    eid = entry_id.decode()
                    if cursor != ">":
                        cursor = eid
                    if not await self._on_entry(eid, fields):
                        await self._ack(eid)
            except REDIS_ERRORS as exc:
                await self._down(exc)
            except redis_errors.ResponseError as exc:
                if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                    raise
                log.warning("this bot's answer stream is gone (Redis lost its data?): creating it again")
                await self._prepare_groups()
                cursor = "0-0"

    async def _watch_loop(self) -> None:
        """The registry for /status, connectivity, and adopted jobs nobody re-submitted."""
        while not self._closing:
            try:
                await self._refresh_workers()
                await self._r.set(self._layout.config, encode(self._fleet))
                self._up()
                await self._expire_adopted()
                await self._requeue_lost()
            except REDIS_ERRORS as exc:
                await self._down(exc)
            await asyncio.sleep(self._hb_interval)

    # ---- messages -------------------------------------------------------------------------------

    async def _on_entry(self, entry_id: str, fields: dict[bytes, bytes]) -> bool:
        """Handle one answer; True keeps it pending (an outcome for an adopted job not re-submitted yet)."""
        try:
            msg = decode(fields.get(b"body", b""))
        except CodecError as exc:
            log.error("dropping an unreadable answer %s: %s", entry_id, exc)
            return False
        if isinstance(msg, BatchClaimed):
            for job_id in msg.job_ids:
                self._claimed(job_id, msg)
        elif isinstance(msg, Progress):
            if msg.job_id in self._running and msg.job_id in self._handles:
                self._handles[msg.job_id].emit(msg)
        elif isinstance(msg, Result | Failure):
            if msg.job_id in self._adopted:
                self._early[msg.job_id] = (entry_id, msg)
                return True
            if self._end(msg.job_id, msg):
                await self._r.hdel(self._layout.inflight(self.bot_id), str(msg.job_id))
        elif isinstance(msg, BatchDone):
            self._count_batch(msg)
        elif isinstance(msg, FetchModel):
            await self._publish_blob(msg)
        return False

    def _claimed(self, job_id: int, msg: BatchClaimed) -> None:
        job = self._running.get(job_id)
        if job is None:
            return
        self._where[job_id] = msg.worker
        if msg.attempt > job.attempts:
            job.attempts = msg.attempt
            log.warning("job %s runs again (attempt %d) on worker %s after its worker was lost", job_id, msg.attempt,
                        msg.worker)
            self._handles[job_id].emit(Started(job_id, msg.attempt, msg.batch_id))

    def _end(self, job_id: int, outcome: Result | Failure) -> bool:
        """A job's outcome; False for one already ended (a re-run after a lost worker may answer twice)."""
        job = self._running.pop(job_id, None)
        self._where.pop(job_id, None)
        if job is None:  # queued again after Redis lost its data, yet its first worker did answer: take that
            job = self._queue.cancel(job_id)
            if job is None:
                return False
        self._terminal(job, outcome)
        return True

    async def _publish_blob(self, msg: FetchModel) -> None:
        """Put a canonical hypernet file where the asking worker polls for it (it checks the hash itself)."""
        path = Path(self.config.model_store_dir) / f"{msg.sha256}.safetensors"
        if not _SHA256.fullmatch(msg.sha256) or not path.is_file():
            log.warning("worker %s asked for hypernet %s, which this bot does not have", msg.worker, msg.sha256[:64])
            return
        data = await asyncio.to_thread(path.read_bytes)
        blob = ModelBlob(msg.sha256, hashlib.sha256(data).hexdigest(), data)
        await self._r.set(self._layout.blob(msg.sha256), encode(blob), ex=BLOB_TTL_S)
        log.info("sent hypernet %s (%d bytes) to worker %s", msg.sha256[:12], len(data), msg.worker)

    # ---- helpers --------------------------------------------------------------------------------

    async def _refresh_workers(self) -> None:
        raw = await self._r.hgetall(self._layout.workers)
        now, infos = time.time(), {}
        for name, value in raw.items():
            info = decode_as(value, WorkerInfo)
            if info is None or now - info.heartbeat_at > FORGET_GONE_S + self._hb_timeout:
                await self._r.hdel(self._layout.workers, name)
                continue
            infos[info.name] = info
        self._workers = infos

    async def _expire_adopted(self) -> None:
        """Adopted jobs the job service never re-submitted (it gave up on them): forget them and their answers."""
        cutoff = time.monotonic() - self._adopt_ttl
        for job_id in [j for j, since in self._adopted.items() if since < cutoff]:
            del self._adopted[job_id]
            early = self._early.pop(job_id, None)
            await self._forget(job_id, early[0] if early else None)

    async def _requeue_lost(self) -> None:
        """Jobs handed out whose records Redis no longer has (it restarted without its data): queued again, in front."""
        handed_out = list(self._running)  # before the read: jobs handed out meanwhile have their records
        if not handed_out:
            return
        known = {int(k) for k in await self._r.hkeys(self._layout.inflight(self.bot_id))}
        lost = [self._running[j] for j in handed_out if j not in known and j in self._running]
        for job in lost:
            log.warning("job %s was lost with Redis's data: queued again", job.job_id)
            del self._running[job.job_id]
            self._queue.requeue_front(job)
        if lost:
            self._publish_positions()
            self._work.set()

    async def _forget(self, job_id: int, entry_id: str | None) -> None:
        await self._r.hdel(self._layout.inflight(self.bot_id), str(job_id))
        if entry_id is not None:
            await self._ack(entry_id)

    async def _ack(self, entry_id: str) -> None:
        events = self._layout.events(self.bot_id)
        pipe = self._r.pipeline(transaction=True)
        pipe.xack(events, BOT_GROUP, entry_id)
        pipe.xdel(events, entry_id)
        await pipe.execute(raise_on_error=False)  # NOGROUP after a Redis that lost its data: nothing to acknowledge

    def _up(self) -> None:
        if not self._broker_ok:
            log.warning("Redis is reachable again: taking jobs")
        self._broker_ok = True

    async def _down(self, exc: BaseException) -> None:
        if self._broker_ok:
            log.error("Redis unreachable (%s): refusing new jobs until it is back", exc)
        self._broker_ok = False
        await asyncio.sleep(0.5)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._quietly(coro))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _quietly(self, coro: Any) -> None:
        try:
            await coro
        except REDIS_ERRORS as exc:
            log.warning("a Redis write failed (%s)", exc)

