"""The local client sends the next batch on ``BatchRendered``: its books, against a scripted worker.

A light unit tier: the worker here is a script on the client's own transport seam (``WorkerTransport``), so each
step of the protocol is taken exactly when the test says — which batch is sent when, whose clock runs, what a lost
worker takes with it.  The same rules against the real worker process are in ``test_pipelined_worker.py``.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from engine.client import EngineClient
from engine.client.transport import Exited, Inbox
from engine.protocol import (
    PROTOCOL_VERSION,
    BatchDone,
    BatchRendered,
    Failure,
    FailureKind,
    Hello,
    Ping,
    Result,
    Started,
    SubmitBatch,
    WorkerConfig,
)
from tests.requests import request

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

_ids = itertools.count(1)


class ScriptedLink:
    """One 'worker': records what the client sends; the test answers through ``say``."""

    def __init__(self, gen: int, inbox: Inbox, pid: int) -> None:
        self.gen, self._inbox, self._pid = gen, inbox, pid
        self.sent: list[object] = []
        self.killed = False

    @property
    def pid(self) -> int:
        return self._pid

    def send(self, message: object) -> None:
        if not isinstance(message, Ping):
            self.sent.append(message)

    def say(self, message: object) -> None:
        self._inbox.put_nowait((self.gen, message))

    def kill(self) -> None:
        if not self.killed:
            self.killed = True
            self.say(Exited(-9))

    async def wait_exit(self, timeout: float) -> int | None:
        return None

    def batches(self) -> list[SubmitBatch]:
        return [m for m in self.sent if isinstance(m, SubmitBatch)]


class ScriptedWorkers:
    """The transport: every start is a new :class:`ScriptedLink` that says Hello at once (one image per batch)."""

    def __init__(self) -> None:
        self.links: list[ScriptedLink] = []

    def start(self, gen: int, config: WorkerConfig, inbox: Inbox) -> ScriptedLink:
        link = ScriptedLink(gen, inbox, pid=1000 + gen)
        self.links.append(link)
        link.say(Hello(protocol_version=PROTOCOL_VERSION, pid=link.pid, device="cpu", checkpoint="tiny",
                       dtype="float32", context_dim=32, max_batch=1))
        return link


async def until(condition: Any, what: str) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting until {what}")


def done(batch: SubmitBatch) -> BatchDone:
    return BatchDone(batch_id=batch.batch_id, images=1, steps=1, step_time_s=0.0, duration_s=0.01)


def result(batch: SubmitBatch) -> Result:
    return Result(job_id=batch.requests[0].job_id, images=(b"png",), seeds=(1,), duration_s=0.01)


async def started(pipeline: bool = True, job_timeout_s: float = 600.0) -> tuple[EngineClient, ScriptedWorkers]:
    workers = ScriptedWorkers()
    client = EngineClient(WorkerConfig(checkpoint="tiny", device="cpu", max_batch=1), transport=workers,
                          heartbeat_interval_s=0.05, heartbeat_timeout_s=30.0, job_timeout_s=job_timeout_s,
                          restart_backoff=(0.01,), pipeline=pipeline)
    await client.start()
    return client, workers


def jobs(client: EngineClient, n: int) -> list[Any]:
    return [client.submit(request(next(_ids), user)) for user in range(1, n + 1)]


async def test_the_next_batch_goes_out_on_batch_rendered_not_before() -> None:
    client, workers = await started()
    link = workers.links[0]
    handles = jobs(client, 3)
    await until(lambda: len(link.batches()) == 1, "the first batch is sent")
    await asyncio.sleep(0.05)
    assert len(link.batches()) == 1, "nothing more may go out while the first batch is still on the device"
    first = link.batches()[0]
    link.say(BatchRendered(first.batch_id))
    await until(lambda: len(link.batches()) == 2, "the second batch is sent ahead")
    await asyncio.sleep(0.05)
    assert len(link.batches()) == 2, "one batch ahead at most: the second one has not said BatchRendered"
    assert client.status().running == 2 and client.status().queue_length == 1
    link.say(result(first))
    link.say(done(first))
    assert isinstance((await handles[0].result()), Result)
    await asyncio.sleep(0.05)
    assert len(link.batches()) == 2, "the first batch's BatchDone does not free a slot the second one holds"
    second = link.batches()[1]
    link.say(BatchRendered(second.batch_id))
    await until(lambda: len(link.batches()) == 3, "the third batch follows the second's BatchRendered")
    await client.stop(grace_s=0.1)


async def test_without_pipelining_a_batch_waits_for_batch_done() -> None:
    client, workers = await started(pipeline=False)
    link = workers.links[0]
    jobs(client, 2)
    await until(lambda: len(link.batches()) == 1, "the first batch is sent")
    first = link.batches()[0]
    link.say(BatchRendered(first.batch_id))
    await asyncio.sleep(0.1)
    assert len(link.batches()) == 1
    link.say(result(first))
    link.say(done(first))
    await until(lambda: len(link.batches()) == 2, "the second batch follows BatchDone")
    await client.stop(grace_s=0.1)


async def test_a_batch_sent_ahead_is_on_the_clock_only_from_the_previous_batch_done() -> None:
    client, workers = await started(job_timeout_s=1.0)
    link = workers.links[0]
    handles = jobs(client, 2)
    await until(lambda: len(link.batches()) == 1, "the first batch is sent")
    first = link.batches()[0]
    link.say(BatchRendered(first.batch_id))
    await until(lambda: len(link.batches()) == 2, "the second batch is sent ahead")
    await asyncio.sleep(0.7)  # the first batch's PNGs take a while ...
    link.say(result(first))
    link.say(done(first))
    await asyncio.sleep(0.5)  # ... 1.2 s since the second was sent, but only 0.5 s of its own turn
    second = link.batches()[1]
    assert not link.killed, "the second batch was charged for the first one's time"
    link.say(result(second))
    link.say(done(second))
    outcomes = [await h.result() for h in handles]
    assert all(isinstance(o, Result) for o in outcomes)
    await client.stop(grace_s=0.1)


async def test_a_stuck_head_batch_times_out_and_the_batch_behind_it_is_requeued() -> None:
    client, workers = await started(job_timeout_s=0.3)
    link = workers.links[0]
    stuck, behind = jobs(client, 2)
    await until(lambda: len(link.batches()) == 1, "the first batch is sent")
    link.say(BatchRendered(link.batches()[0].batch_id))  # ... and then its PNG stage never ends
    await until(lambda: len(link.batches()) == 2, "the second batch is sent ahead")
    outcome = [ev async for ev in stuck.events()][-1]
    assert isinstance(outcome, Failure) and outcome.kind == FailureKind.TIMEOUT
    assert link.killed
    await until(lambda: len(workers.links) == 2 and workers.links[1].batches(), "a new worker gets the batch behind")
    fresh = workers.links[1]
    [again] = fresh.batches()
    assert [r.job_id for r in again.requests] == [behind.job_id]
    fresh.say(result(again))
    fresh.say(done(again))
    events = [ev async for ev in behind.events()]
    assert isinstance(events[-1], Result)
    assert [e.attempt for e in events if isinstance(e, Started)] == [1, 2]
    await client.stop(grace_s=0.1)


async def test_a_lost_worker_requeues_both_batches_it_held() -> None:
    client, workers = await started()
    link = workers.links[0]
    first_job, second_job = jobs(client, 2)
    await until(lambda: len(link.batches()) == 1, "the first batch is sent")
    link.say(BatchRendered(link.batches()[0].batch_id))
    await until(lambda: len(link.batches()) == 2, "the second batch is sent ahead")
    link.say(Exited(-9))  # the worker dies before any Result of either batch
    await until(lambda: len(workers.links) == 2, "a new worker is started")
    fresh = workers.links[1]
    for n in (1, 2):
        await until(lambda n=n: len(fresh.batches()) == n, f"retried batch {n} is sent")
        batch = fresh.batches()[n - 1]
        fresh.say(result(batch))
        fresh.say(BatchRendered(batch.batch_id))
        fresh.say(done(batch))
    for handle in (first_job, second_job):
        assert isinstance(await handle.result(), Result) and handle.attempts == 2
    assert sorted(r.job_id for b in fresh.batches() for r in b.requests) == sorted(
        [first_job.job_id, second_job.job_id])
    await client.stop(grace_s=0.1)
