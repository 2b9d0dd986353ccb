"""Pipelined batches against the real worker process (tiny checkpoint, CPU): the next batch is sent on
``BatchRendered`` and starts while the previous one's PNGs are encoded and sent, and nothing is lost when the worker
dies with two batches in hand.

The transport is the real :class:`LocalWorkers`; it is only watched: every message the client sends and every
message that reaches its inbox is logged, in the event loop's order, so the test can say which came first.  The
first batch's PNG stage is made slow (a test fault, ``slow_finish_marker``): its ``BatchDone`` then comes seconds
after its ``BatchRendered``, and the order seen does not depend on how fast this machine is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import json

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from engine.client import EngineClient, LocalWorkers
from engine.client.transport import Inbox
from engine.protocol import (
    BatchDone,
    BatchRendered,
    Failure,
    FailureKind,
    GenerateRequest,
    Result,
    Started,
    SubmitBatch,
    WorkerConfig,
)
from tests.requests import request

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

_ids = itertools.count(5000)
SLOW_FINISH_S = 3.0  # a batch's PNG stage made slow, so its BatchDone comes well after its BatchRendered


class WatchedInbox:
    """Stands in front of the client's inbox: logs each worker message, then hands it on."""

    def __init__(self, inbox: Inbox, log: list[tuple[str, str, int]]) -> None:
        self._inbox, self._log = inbox, log

    def put_nowait(self, item: tuple[int, object]) -> None:
        message = item[1]
        batch_id = getattr(message, "batch_id", None)
        if isinstance(message, BatchRendered | BatchDone) and batch_id is not None:
            self._log.append(("got", type(message).__name__, batch_id))
        self._inbox.put_nowait(item)


class WatchedLink:
    def __init__(self, link, log: list[tuple[str, str, int]]) -> None:
        self._link, self._log = link, log

    @property
    def pid(self) -> int:
        return int(self._link.pid)

    def send(self, message: object) -> None:
        if isinstance(message, SubmitBatch):
            self._log.append(("sent", "SubmitBatch", message.batch_id))
        self._link.send(message)

    def kill(self) -> None:
        self._link.kill()

    async def wait_exit(self, timeout: float) -> int | None:
        return await self._link.wait_exit(timeout)


class WatchedWorkers:
    """The real child-process transport, with every batch sent and every batch signal received logged."""

    def __init__(self, extra_env: dict[str, str]) -> None:
        self._real = LocalWorkers(extra_env=extra_env)
        self.log: list[tuple[str, str, int]] = []

    def start(self, gen: int, config: WorkerConfig, inbox: Inbox) -> WatchedLink:
        return WatchedLink(self._real.start(gen, config, WatchedInbox(inbox, self.log)), self.log)  # type: ignore[arg-type]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine():
    config = WorkerConfig(checkpoint="tiny", device="cpu", dtype="float32", max_batch=4, progress_interval_s=1.0)
    faults = {"crash_marker": "@CRASH@", "slow_finish_marker": "@SLOWPNG@", "slow_finish_s": SLOW_FINISH_S}
    workers = WatchedWorkers({"OMP_NUM_THREADS": "1", "HYPERCORD_TEST_FAULTS": json.dumps(faults)})
    client = EngineClient(config, transport=workers, heartbeat_interval_s=0.3, heartbeat_timeout_s=5.0,
                          start_timeout_s=90.0, restart_backoff=(0.1,))
    await client.start()
    try:
        yield client, workers
    finally:
        await client.stop(grace_s=5)


def job(user: int, size: int, prompt: str = "a lighthouse at dusk", seed: int = 3) -> GenerateRequest:
    return request(next(_ids), user, prompt, seed=seed, steps=3, width=size, height=size, sampler="Euler a")


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def batch_of(client_events: list) -> int:
    return next(e.batch_id for e in client_events if isinstance(e, Started))


async def events(handle) -> list:
    return [ev async for ev in handle.events()]


async def test_the_next_batch_is_sent_on_batch_rendered_before_the_previous_one_is_done(engine) -> None:
    client, workers = engine
    first, second = job(1, 64, "@SLOWPNG@ a lighthouse at dusk"), job(2, 72)  # two sizes: two batches
    handles = [client.submit(first), client.submit(second)]
    outcomes = await asyncio.gather(*(events(h) for h in handles))
    assert all(isinstance(evs[-1], Result) for evs in outcomes)
    a, b = (batch_of(evs) for evs in outcomes)
    log = workers.log
    rendered, sent, done = (log.index(("got", "BatchRendered", a)), log.index(("sent", "SubmitBatch", b)),
                            log.index(("got", "BatchDone", a)))
    assert rendered < sent < done, f"the second batch should go out between the first one's signals: {log}"
    alone = await client.submit(dataclasses.replace(second, job_id=next(_ids))).result()
    assert np.array_equal(pixels(outcomes[1][-1].images[0]), pixels(alone.images[0])), \
        "a batch started while the previous one was finishing must render the same image"


async def test_a_worker_killed_with_two_batches_in_hand_loses_no_job(engine) -> None:
    client, _ = engine
    innocent, crasher = job(3, 64, "a quiet harbour"), job(4, 72, "@CRASH@ a storm")
    handles = [client.submit(innocent), client.submit(crasher)]
    innocent_events, crasher_events = await asyncio.gather(*(events(h) for h in handles))
    assert isinstance(innocent_events[-1], Result) and len(innocent_events[-1].images) == 1
    assert sum(isinstance(e, Result | Failure) for e in innocent_events) == 1, "exactly one outcome per job"
    failure = crasher_events[-1]
    assert isinstance(failure, Failure) and failure.kind == FailureKind.WORKER_CRASHED
    assert handles[1].attempts == 2
    follow = await client.submit(job(5, 64)).result()
    assert len(follow.images) == 1
