"""A standalone worker's end of the Redis transport: the same ``Endpoint`` the batch loop reads and writes.

Why an endpoint rather than a second worker: :class:`engine.worker.loop.Worker` already renders batches from an
endpoint (``recv`` / ``send`` of protocol envelopes) and answers pings from a reader thread; over Redis the
endpoint feeds it the same messages and routes its answers to the bot that sent each batch.  It takes a new entry
only while the device is free: when it holds none, or when the one it holds has said ``BatchRendered`` (its PNGs
and Results are still on their way, from the loop's finishing thread) — so a busy worker never holds work another
could start, and the next batch still starts without waiting for the previous one's PNGs.  It holds two entries at
most, and never two that share a batch id or a job id (two bots number their jobs apart): answers are routed by
those ids, so such an entry waits, claimed and renewed, until the one it collides with is done.

Threads (the batch loop's main thread is never blocked by Redis):

* *work*: while idle, advertise this worker in ``P:idle`` (the bots' signal that it wants a batch), take a stale
  entry of a lost worker (``XAUTOCLAIM``) or the next new one, and dead-letter exhausted entries at any time;
* *beat*: every ``heartbeat_interval_s`` a ``Ping`` for the loop (its ``Health`` becomes the registry entry),
  the held entries' claims renewed, their jobs' cancel flags polled, and the render time limit enforced;
* *send*: the loop's messages to Redis, in order, each retried until Redis takes it (an outage loses nothing:
  the render goes on and its answers wait here).
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from engine.client.outcomes import timed_out
from engine.client.redis_layout import RedisLayout
from engine.codec import encode
from engine.protocol import (
    PROTOCOL_VERSION,
    BatchClaimed,
    BatchDone,
    BatchRendered,
    Cancel,
    Envelope,
    Failure,
    FetchModel,
    FleetConfig,
    Health,
    Hello,
    Ping,
    Progress,
    Result,
    Shutdown,
    WorkerInfo,
    wrap,
)
from engine.worker.redis_claims import Entry, WorkStream, is_nogroup

__all__ = ["EXIT_STUCK", "RedisEndpoint"]

log = logging.getLogger("engine.worker")

EXIT_STUCK = 75  # the render ran past the time limit: its jobs were failed and the process ends to start clean
_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
_REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
_MAX_HELD = 2  # the entry being rendered and, once it is rendered, the next one


@dataclass(eq=False, slots=True)
class _Held:
    """An entry this worker claimed and fed to the loop: when it started, which of its jobs are answered."""

    entry: Entry
    started: float
    answered: set[int] = field(default_factory=set)
    cancel_sent: set[int] = field(default_factory=set)
    rendered: bool = False  # the loop said BatchRendered: the device is free for the next entry

    def pending(self) -> list[int]:
        return [j for j in self.entry.todo if j not in self.answered | self.cancel_sent]

    def collides(self, entry: Entry) -> bool:
        """Answers could not be told apart: the same batch id, or a job id in both."""
        return entry.batch.batch_id == self.entry.batch.batch_id or bool(set(entry.todo) & set(self.entry.todo))


class RedisEndpoint:
    """``send`` / ``recv`` for :class:`engine.worker.loop.Worker`, backed by the fleet's streams."""

    def __init__(self, r: redis.Redis, layout: RedisLayout, name: str, fleet: FleetConfig, *,
                 exit_process: Callable[[int], None] = os._exit) -> None:
        self._r: Any = r  # redis-py's replies are loosely typed
        self._layout, self._name, self._fleet = layout, name, fleet
        self._stream = WorkStream(r, layout, name, fleet.lease_s)
        self._exit = exit_process
        self._inbox: queue.SimpleQueue[Envelope] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._idle = threading.Event()  # set while the device is free for another entry
        self._stopping = threading.Event()  # take no new batch
        self._closed = threading.Event()  # every thread ends
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # an entry left: one waiting on a collision may go
        self._held: list[_Held] = []  # entries fed to the loop and not done, oldest first
        self._info = WorkerInfo(name=name, pid=os.getpid(), host=socket.gethostname(), state="starting",
                                protocol_version=PROTOCOL_VERSION, max_batch=fleet.worker.max_batch,
                                started_at=time.time())
        self._connected_since: float | None = None
        self._threads = [threading.Thread(target=self._guard(self._work_loop, self._stopping), name="redis-work",
                                          daemon=True),
                         threading.Thread(target=self._guard(self._beat_loop, self._closed), name="redis-beat",
                                          daemon=True),
                         threading.Thread(target=self._send_loop, name="redis-send", daemon=True)]

    # ---- the Endpoint the batch loop uses -------------------------------------------------------

    def start(self) -> None:
        self._call(self._stream.ensure_group)
        self._call(self._publish_info)
        for thread in self._threads:
            thread.start()

    def recv(self, timeout: float | None = None) -> Envelope:
        """The next message for the loop (``queue.Empty`` once ``timeout`` seconds pass without one)."""
        return self._inbox.get(timeout=timeout)

    def send(self, obj: object) -> None:
        self._outbox.put(obj.message if isinstance(obj, Envelope) else obj)

    # ---- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Take no new batch; the loop finishes the ones it was fed, then reads ``Shutdown``."""
        with self._lock:
            self._stopping.set()
            self._idle.clear()
            self._inbox.put(wrap(Shutdown()))

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush what the loop sent (up to ``timeout_s``), then leave the idle list and say ``stopped``."""
        self._stopping.set()
        self._outbox.put(None)
        self._threads[2].join(timeout_s)
        self._closed.set()
        try:
            self._r.lrem(self._layout.idle, 0, self._name)
            self._info = replace(self._info, state="stopped", busy=False)
            self._publish_info()
        except redis.RedisError as exc:
            log.warning("could not deregister from Redis: %s", exc)

    def request_model(self, sha256: str) -> None:
        """Ask the bot of the running batch for a model file (the answer lands at ``P:blob:<sha256>``)."""
        self.send(FetchModel(sha256=sha256, worker=self._name))

    def wait_blob(self, sha256: str, timeout_s: float) -> bytes | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                data = self._r.get(self._layout.blob(sha256))
            except _REDIS_ERRORS:
                data = None
            if data is not None:
                return bytes(data)
            time.sleep(0.1)
        return None

    # ---- threads --------------------------------------------------------------------------------

    def _work_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                held = {h.entry.entry_id for h in self._held}
            if self._may_claim():
                self._stream.dead_letter_exhausted(skip=held)
            if not self._idle.is_set():
                self._idle.wait(0.5)
                continue
            entry = self._stream.take_stale() if self._may_claim() else None
            if entry is None:
                if self._r.lpos(self._layout.idle, self._name) is None:
                    self._r.rpush(self._layout.idle, self._name)
                self._mark_connected()
                entry = self._stream.take_new(block_ms=1000)
            if entry is not None and self._stopping.is_set():
                self._call(functools.partial(self._stream.release, entry))
            elif entry is not None:
                self._begin(entry)

    def _begin(self, entry: Entry) -> None:
        """Feed a claimed entry to the loop, or hand it back if this worker is stopping (the loop would read
        ``Shutdown`` first: ``stop`` queues it under the same lock)."""
        self._idle.clear()
        self._wait_for_no_collision(entry)
        cancelled: set[int] = set()
        self._call(lambda: cancelled.update(self._stream.cancelled(entry.bot, entry.todo)))
        self._call(lambda: self._r.lrem(self._layout.idle, 0, self._name))
        todo = set(entry.todo)
        with self._lock:
            if not self._stopping.is_set():
                self._held.append(_Held(entry, time.monotonic(), cancel_sent=set(cancelled)))
                self._update_idle()  # not free again until this one says BatchRendered
                self.send(BatchClaimed(entry.batch.batch_id, self._name, entry.attempt, entry.todo))
                for job_id in cancelled:
                    self._inbox.put(wrap(Cancel(job_id)))
                self._inbox.put(wrap(replace(entry.batch, requests=tuple(r for r in entry.batch.requests
                                                                         if r.job_id in todo))))
                return
        self._call(functools.partial(self._stream.release, entry))

    def _wait_for_no_collision(self, entry: Entry) -> None:
        """Hold a claimed entry back (renewing its claim) while one still finishing shares its batch or job ids."""
        while True:
            with self._lock:
                if not any(h.collides(entry) for h in self._held) or self._closed.is_set():
                    return
                self._changed.wait(self._fleet.heartbeat_interval_s)
            self._call(functools.partial(self._stream.renew, entry.entry_id))

    def _beat_loop(self) -> None:
        nonce = 0
        while not self._closed.wait(self._fleet.heartbeat_interval_s):
            if self._info.state == "starting":
                self._publish_info()
            else:
                nonce += 1
                self._inbox.put(wrap(Ping(nonce)))  # the loop answers with Health -> the registry
            with self._lock:
                held = [(h, h.pending()) for h in self._held]
            for h, pending in held:
                if time.monotonic() - h.started > self._fleet.job_timeout_s:
                    self._give_up(h)
                    return
                self._stream.renew(h.entry.entry_id)
                for job_id in self._stream.cancelled(h.entry.bot, pending):
                    with self._lock:
                        h.cancel_sent.add(job_id)
                    self._inbox.put(wrap(Cancel(job_id)))

    def _give_up(self, held: _Held) -> None:
        """The batch ran past the time limit: fail what is unanswered (not retried), acknowledge it, exit.

        An entry still finishing beside it stays pending and is taken over like a lost worker's (its answered jobs
        are skipped)."""
        limit, entry = self._fleet.job_timeout_s, held.entry
        log.error("batch %s ran past the %g s render time limit: failing it and exiting", entry.batch.batch_id, limit)
        with self._lock:
            answered = set(held.answered)
        self._call(lambda: self._stream.fail_all(replace(entry, answered=entry.answered | answered),
                                                 lambda job_id: timed_out(job_id, limit)))
        self._exit(EXIT_STUCK)

    def _send_loop(self) -> None:
        while (message := self._outbox.get()) is not None:
            self._call(functools.partial(self._deliver, message))

    def _deliver(self, message: object) -> None:
        if isinstance(message, Hello):
            self._info = replace(self._info, state="ready", device=message.device, checkpoint=message.checkpoint,
                                 dtype=message.dtype, context_dim=message.context_dim,
                                 attention_widths=message.attention_widths, checkpoints=message.checkpoints,
                                 checkpoint_loads=message.checkpoint_loads)
            self._publish_info()
            log.info("worker %s ready on %s; waiting for batches", self._name, message.device)
            with self._lock:
                self._update_idle()
            return
        if isinstance(message, Health):
            self._info = replace(self._info, busy=message.busy, vram_used_bytes=message.vram_used_bytes,
                                 hypernet_cache_bytes=message.hypernet_cache_bytes,
                                 hypernet_cache_names=message.hypernet_cache_names, checkpoints=message.checkpoints,
                                 checkpoint_loads=message.checkpoint_loads)
            self._publish_info()
            return
        if isinstance(message, BatchRendered):  # not for the bot: the device is free, another entry may come
            with self._lock:
                for h in self._held:
                    if h.entry.batch.batch_id == message.batch_id:
                        h.rendered = True
                self._update_idle()
            return
        with self._lock:
            held = self._route(message)
        if held is None:
            log.warning("dropping a %s sent outside any batch", type(message).__name__)
            return
        entry = held.entry
        done = isinstance(message, BatchDone)
        self._stream.post(entry.bot, message, entry=entry, done=done)
        if isinstance(message, Result | Failure):
            with self._lock:
                held.answered.add(message.job_id)
            if isinstance(message, Result):
                self._info = replace(self._info, jobs_done=self._info.jobs_done + 1)
                log.info("job %d done: %d images sent to bot %s", message.job_id, len(message.images), entry.bot)
        if done:
            with self._lock:
                self._held.remove(held)
                left = len(self._held)
                self._changed.notify_all()
            if not left:
                self._info = replace(self._info, busy=False)
                self._publish_info()  # before asking for more, so a bot reading the registry sees it idle
            with self._lock:
                self._update_idle()

    def _route(self, message: object) -> _Held | None:
        """The held entry a message of the loop belongs to (``_held`` never holds two that share these ids)."""
        if isinstance(message, Result | Failure | Progress):
            return next((h for h in self._held if message.job_id in h.entry.todo), None)
        if isinstance(message, BatchDone | BatchClaimed):
            return next((h for h in self._held if h.entry.batch.batch_id == message.batch_id), None)
        return self._held[-1] if self._held else None  # FetchModel: for the batch the loop is preparing, the newest

    def _update_idle(self) -> None:
        """Under the lock: advertise for another entry when the device is free and there is room to hold one."""
        free = not self._held or (len(self._held) < _MAX_HELD and all(h.rendered for h in self._held))
        if free and not self._stopping.is_set():
            self._idle.set()
        else:
            self._idle.clear()

    # ---- helpers --------------------------------------------------------------------------------

    def _publish_info(self) -> None:
        self._info = replace(self._info, heartbeat_at=time.time())
        self._r.hset(self._layout.workers, self._name, encode(self._info))
        self._mark_connected()

    def _mark_connected(self) -> None:
        if self._connected_since is None:
            self._connected_since = time.monotonic()

    def _may_claim(self) -> bool:
        """Connected for a whole lease: every live worker had the chance to renew its claims (after an outage)."""
        since = self._connected_since
        return since is not None and time.monotonic() - since >= self._fleet.lease_s

    def _call(self, op: Callable[[], object]) -> None:
        """Run ``op`` until Redis takes it (backing off while it is unreachable)."""
        for attempt in range(1_000_000):
            try:
                op()
                return
            except _REDIS_ERRORS as exc:
                self._lost(exc, attempt)

    def _lost(self, exc: BaseException, attempt: int) -> None:
        if self._connected_since is not None or attempt == 0:
            log.warning("Redis unreachable (%s); retrying", exc)
        self._connected_since = None
        time.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])

    def _guard(self, loop: Callable[[], None], until: threading.Event) -> Callable[[], None]:
        """Keep a thread's loop running across Redis outages (until ``until`` is set)."""

        def run() -> None:
            attempt = 0
            while not until.is_set():
                try:
                    loop()
                    return
                except _REDIS_ERRORS as exc:
                    self._lost(exc, attempt)
                    attempt = attempt + 1 if self._connected_since is None else 0
                except redis.ResponseError as exc:
                    if not is_nogroup(exc):
                        raise
                    log.warning("the work stream's group is gone (Redis lost its data?): creating it again")
                    self._call(self._stream.ensure_group)

        return run
