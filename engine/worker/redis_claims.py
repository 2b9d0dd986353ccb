"""A standalone worker's dealings with the shared work stream: take, renew, retry, split, dead-letter, acknowledge.

Why Redis Streams consumer groups: an entry read by a worker stays *pending* under that worker's name until it
is acknowledged, so a worker killed mid-batch (``kill -9``) loses nothing — after the visibility timeout
(``lease_s``) without a renewal another worker claims it (``XAUTOCLAIM``), or the same one once restarted.

The retry policy is the local client's, per job: a batch whose worker was lost is run again once, each job
alone (a batch of several is split into one-job entries at ``attempt`` 2, so a job that kills workers cannot take
its batch-mates down twice); a job lost again goes to the dead-letter stream and fails ``worker_crashed``.  Jobs
of an entry already answered before the loss are not rendered again (the ``answered`` set, written with each
outcome).  Dead-lettering needs no model, so any worker does it — busy, idle, or still loading its checkpoint.

Claims are only made by a worker that has been connected to Redis for at least ``lease_s``: after an outage every
pending entry looks idle, and the workers still rendering them must get the chance to renew first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from engine.client.outcomes import crashed_twice
from engine.client.redis_layout import WORKER_GROUP, RedisLayout, field_text
from engine.codec import CodecError, decode, encode
from engine.protocol import Failure, Result, SubmitBatch

__all__ = ["Entry", "WorkStream", "is_nogroup"]

log = logging.getLogger("engine.worker")

EVENTS_MAXLEN = 100_000
_OUTCOMES = (Result, Failure)
DEAD_MAXLEN = 10_000
ANSWERED_TTL_S = 86_400


@dataclass(frozen=True, slots=True)
class Entry:
    """One work entry as this worker holds it; ``attempt`` counts deliveries since the job was first handed out."""

    entry_id: str
    bot: str
    attempt: int
    batch: SubmitBatch
    answered: frozenset[int]

    @property
    def todo(self) -> tuple[int, ...]:
        return tuple(r.job_id for r in self.batch.requests if r.job_id not in self.answered)


class WorkStream:
    """The work stream as one worker (consumer ``name``) uses it; every call is one or a few Redis round trips."""

    def __init__(self, r: redis.Redis, layout: RedisLayout, name: str, lease_s: float) -> None:
        self._r: Any = r  # replies of stream commands are loosely typed in redis-py; checked where read
        self._layout, self._name = layout, name
        self._lease_ms = max(1, int(lease_s * 1000))

    def ensure_group(self) -> None:
        try:
            self._r.xgroup_create(self._layout.work, WORKER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ---- taking work ----------------------------------------------------------------------------

    def take_new(self, block_ms: int) -> Entry | None:
        """The next unread entry (blocks up to ``block_ms``); entries that cannot be run are handled on the way."""
        reply = self._r.xreadgroup(WORKER_GROUP, self._name, {self._layout.work: ">"}, count=1, block=block_ms)
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                return self._admit(_text(entry_id), fields, delivery=1)
        return None

    def take_stale(self) -> Entry | None:
        """An entry whose worker stopped renewing it for ``lease_s`` (``XAUTOCLAIM``), or None."""
        reply = self._r.xautoclaim(self._layout.work, WORKER_GROUP, self._name, self._lease_ms, "0-0", count=1)
        claimed = reply[1] if reply and len(reply) > 1 else []
        for entry_id, fields in claimed:
            eid = _text(entry_id)
            if not fields:  # trimmed or deleted meanwhile
                self._r.xack(self._layout.work, WORKER_GROUP, eid)
                return None
            log.warning("took over batch entry %s from a lost worker", eid)
            return self._admit(eid, fields, delivery=self._deliveries(eid))
        return None

    def dead_letter_exhausted(self, skip: Collection[str] = ()) -> None:
        """Dead-letter pending entries whose next delivery would be a third attempt (any worker may do this); the
        entries in ``skip`` (this worker's own) are left alone."""
        pending = self._r.xpending_range(self._layout.work, WORKER_GROUP, "-", "+", 20, idle=self._lease_ms)
        for item in pending:
            eid = _text(item["message_id"])
            if eid in skip:
                continue
            found = self._r.xrange(self._layout.work, eid, eid)
            if not found:
                self._r.xack(self._layout.work, WORKER_GROUP, eid)
                continue
            fields = found[0][1]
            if _base_attempt(fields) + int(item["times_delivered"]) <= 2:
                continue  # a retry is still due: an idle worker with the model takes it (take_stale)
            if self._r.xclaim(self._layout.work, WORKER_GROUP, self._name, self._lease_ms, [eid], justid=True):
                entry = self._admit(eid, fields, delivery=int(item["times_delivered"]) + 1)
                assert entry is None  # _admit dead-letters an exhausted entry itself

    # ---- while rendering ------------------------------------------------------------------------

    def renew(self, entry_id: str) -> None:
        """Reset the entry's idle time (the visibility timeout), unless another worker has taken it meanwhile."""
        owner = self._r.xpending_range(self._layout.work, WORKER_GROUP, entry_id, entry_id, 1)
        if owner and _text(owner[0]["consumer"]) == self._name:
            self._r.xclaim(self._layout.work, WORKER_GROUP, self._name, 0, [entry_id], justid=True)

    def cancelled(self, bot: str, job_ids: Iterable[int]) -> set[int]:
        """The jobs among ``job_ids`` their bot asked to cancel."""
        ids = list(job_ids)
        if not ids:
            return set()
        flags = self._r.mget([self._layout.cancel(bot, j) for j in ids])
        return {j for j, flag in zip(ids, flags, strict=True) if flag is not None}

    # ---- answering ------------------------------------------------------------------------------

    def post(self, bot: str, message: object, *, entry: Entry | None = None, done: bool = False) -> None:
        """Send a message to ``bot``; a job's outcome also marks it answered, ``done`` acknowledges the entry."""
        pipe = self._r.pipeline(transaction=True)
        pipe.xadd(self._layout.events(bot), {"body": encode(message)}, maxlen=EVENTS_MAXLEN, approximate=True)
        if entry is not None and isinstance(message, _OUTCOMES):
            key = self._layout.answered(entry.entry_id)
            pipe.sadd(key, message.job_id)
            pipe.expire(key, ANSWERED_TTL_S)
        if entry is not None and done:
            self._finish(pipe, entry.entry_id)
        _execute(pipe)

    def release(self, entry: Entry) -> None:
        """Hand back an entry this worker took but will not render (it is stopping): re-queued, the attempt uncounted."""
        pipe = self._r.pipeline(transaction=True)
        todo = tuple(r for r in entry.batch.requests if r.job_id in entry.todo)
        pipe.xadd(self._layout.work, {"bot": entry.bot, "attempt": str(entry.attempt),
                                      "body": encode(SubmitBatch(entry.batch.batch_id, todo))})
        self._finish(pipe, entry.entry_id)
        _execute(pipe)

    def finish(self, entry_id: str) -> None:
        pipe = self._r.pipeline(transaction=True)
        self._finish(pipe, entry_id)
        _execute(pipe)

    def _finish(self, pipe: Any, entry_id: str) -> None:
        pipe.xack(self._layout.work, WORKER_GROUP, entry_id)
        pipe.xdel(self._layout.work, entry_id)
        pipe.delete(self._layout.answered(entry_id))

    def fail_all(self, entry: Entry, failure_for: Any) -> None:
        """Answer every unanswered job of ``entry`` with ``failure_for(job_id)`` and acknowledge it, atomically."""
        pipe = self._r.pipeline(transaction=True)
        for job_id in entry.todo:
            pipe.xadd(self._layout.events(entry.bot), {"body": encode(failure_for(job_id))}, maxlen=EVENTS_MAXLEN,
                      approximate=True)
        self._finish(pipe, entry.entry_id)
        _execute(pipe)

    # ---- internals ------------------------------------------------------------------------------

    def _admit(self, entry_id: str, fields: Mapping[bytes, bytes], delivery: int) -> Entry | None:
        """The entry to render, or None when it was dealt with here (undecodable, exhausted, split, all answered)."""
        bot, base = field_text(fields, "bot"), _base_attempt(fields)
        try:
            batch = decode(fields.get(b"body", b""))
            if not isinstance(batch, SubmitBatch):
                raise CodecError(f"a work entry holds a {type(batch).__name__}, not a SubmitBatch")
        except CodecError as exc:
            self._bury(entry_id, fields, f"undecodable: {exc}")
            return None
        answered = frozenset(int(j) for j in self._r.smembers(self._layout.answered(entry_id)))
        entry = Entry(entry_id, bot, base + delivery - 1, batch, answered)
        if not entry.todo:
            self.finish(entry_id)
        elif entry.attempt > 2:
            log.error("batch %s (jobs %s) lost its worker twice: dead-lettered", batch.batch_id, entry.todo)
            self._bury(entry_id, fields, f"its worker was lost {entry.attempt - 1} times", entry)
        elif entry.attempt == 2 and len(entry.todo) > 1:
            self._split(entry)
        else:
            return entry
        return None

    def _split(self, entry: Entry) -> None:
        """Re-queue each unanswered job of a lost batch as its own entry (attempt 2), in one transaction."""
        pipe = self._r.pipeline(transaction=True)
        for req in entry.batch.requests:
            if req.job_id in entry.todo:
                pipe.xadd(self._layout.work, {"bot": entry.bot, "attempt": "2",
                                              "body": encode(SubmitBatch(entry.batch.batch_id, (req,)))})
        self._finish(pipe, entry.entry_id)
        _execute(pipe)
        log.warning("batch %s lost its worker: its jobs %s run again, each alone", entry.batch.batch_id, entry.todo)

    def _bury(self, entry_id: str, fields: Mapping[bytes, bytes], reason: str, entry: Entry | None = None) -> None:
        """Move an entry to the dead-letter stream; the unanswered jobs of ``entry`` fail ``worker_crashed``.

        Without ``entry`` (it could not be decoded, so its jobs are unknown) the entry is only moved and logged."""
        pipe = self._r.pipeline(transaction=True)
        pipe.xadd(self._layout.dead, {**{k.decode(): v for k, v in fields.items()}, "entry": entry_id, "reason": reason,
                                      "worker": self._name, "at": f"{time.time():.3f}"},
                  maxlen=DEAD_MAXLEN, approximate=True)
        if entry is not None:
            for job_id in entry.todo:
                pipe.xadd(self._layout.events(entry.bot), {"body": encode(crashed_twice(job_id))},
                          maxlen=EVENTS_MAXLEN, approximate=True)
        else:
            log.error("work entry %s dead-lettered: %s", entry_id, reason)
        self._finish(pipe, entry_id)
        _execute(pipe)

    def _deliveries(self, entry_id: str) -> int:
        info = self._r.xpending_range(self._layout.work, WORKER_GROUP, entry_id, entry_id, 1)
        return int(info[0]["times_delivered"]) if info else 1


def _execute(pipe: Any) -> None:
    """Run a transaction; an acknowledgement for a group Redis no longer has (it lost its data) is not an error."""
    for result in pipe.execute(raise_on_error=False):
        if isinstance(result, redis.ResponseError) and not is_nogroup(result):
            raise result


def is_nogroup(exc: BaseException) -> bool:
    """Redis answered that a stream or its consumer group is gone (a Redis that restarted without its data)."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(("NOGROUP", "UNBLOCKED"))


def _base_attempt(fields: Mapping[bytes, bytes]) -> int:
    text = field_text(fields, "attempt")
    return int(text) if text.isdigit() else 1


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

