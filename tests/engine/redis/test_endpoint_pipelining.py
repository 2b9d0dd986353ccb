"""A standalone worker's Redis endpoint takes its next entry while the previous one finishes: real redis-server,
the test playing the worker's batch loop (``recv`` / ``send``), so each step happens exactly when it says.

What is checked: no entry is taken while the device is busy; one is taken on ``BatchRendered``; answers go to the
entry (and the bot) they belong to while two are held; never more than two are held; an entry whose job or batch
ids collide with one still finishing waits, claimed, until that one is done.  The whole fleet with real workers is
``test_fleet.py``.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from engine.client.redis_layout import WORKER_GROUP, RedisLayout
from engine.codec import decode, encode
from engine.protocol import (
    PROTOCOL_VERSION,
    BatchClaimed,
    BatchDone,
    BatchRendered,
    FleetConfig,
    Hello,
    Result,
    SubmitBatch,
    WorkerConfig,
    wrap,
)
from engine.worker.redis_endpoint import RedisEndpoint
from tests.engine.redis.fleet import RedisServer
from tests.requests import request

pytestmark = pytest.mark.timeout(60)

_prefixes = itertools.count(1)
QUIET_S = 0.6  # how long "nothing is taken" is watched: several turns of the endpoint's work loop


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(Path(tmp_path_factory.mktemp("redis-endpoint")))
    srv.start()
    yield srv
    srv.stop()


class Loop:
    """The test's stand-in for the worker loop: reads batches from the endpoint, sends what the loop would."""

    def __init__(self, endpoint: RedisEndpoint, r: Any, layout: RedisLayout) -> None:
        self.endpoint, self.r, self.layout = endpoint, r, layout

    def add(self, bot: str, batch_id: int, *job_ids: int) -> SubmitBatch:
        """What a bot does: put a batch on the shared work stream."""
        batch = SubmitBatch(batch_id, tuple(request(j, 1) for j in job_ids))
        self.r.xadd(self.layout.work, {"bot": bot, "attempt": "1", "body": encode(batch)})
        return batch

    def next_batch(self, timeout: float = 10.0) -> SubmitBatch:
        """The next batch fed to the loop; ``queue.Empty`` if none comes within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:  # the endpoint also feeds the loop pings (and cancels)
            message = self.endpoint.recv(timeout=left).message
            if isinstance(message, SubmitBatch):
                return message
        raise queue.Empty

    def nothing_taken(self) -> bool:
        try:
            batch = self.next_batch(timeout=QUIET_S)
        except queue.Empty:
            return True
        raise AssertionError(f"batch {batch.batch_id} was taken while it should not have been")

    def claimed(self) -> int:
        """Entries of the work stream this worker has read and not acknowledged."""
        return int(self.r.xpending(self.layout.work, WORKER_GROUP)["pending"])

    def answer(self, batch: SubmitBatch) -> None:
        for req in batch.requests:
            self.endpoint.send(wrap(Result(job_id=req.job_id, images=(b"png",), seeds=(1,), duration_s=0.1)))
        self.endpoint.send(wrap(BatchDone(batch_id=batch.batch_id, images=len(batch.requests), steps=1,
                                          step_time_s=0.1, duration_s=0.1)))

    def events(self, bot: str) -> list[object]:
        return [decode(fields[b"body"]) for _, fields in self.r.xrange(self.layout.events(bot))]

    def wait(self, predicate: Any, what: str) -> None:
        for _ in range(200):
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting until {what}")


@pytest.fixture
def loop(server: RedisServer) -> Iterator[Loop]:
    r = redis.Redis.from_url(server.url)
    layout = RedisLayout(prefix=f"ep{next(_prefixes)}")
    fleet = FleetConfig(worker=WorkerConfig(checkpoint="tiny", device="cpu"), lease_s=30.0, heartbeat_interval_s=0.1,
                        job_timeout_s=60.0)
    exits: list[int] = []
    endpoint = RedisEndpoint(r, layout, "w1", fleet, exit_process=exits.append)
    endpoint.start()
    endpoint.send(wrap(Hello(protocol_version=PROTOCOL_VERSION, pid=1, device="cpu", checkpoint="tiny",
                             dtype="float32", context_dim=32)))
    try:
        yield Loop(endpoint, r, layout)
    finally:
        endpoint.stop()
        endpoint.close(5)  # (its work thread ends after its current blocking read; the connection goes with it)
    assert exits == [], "the endpoint gave up on a batch"


def test_the_next_entry_is_taken_on_batch_rendered_and_answers_go_to_their_own_entry(loop: Loop) -> None:
    first = loop.add("b1", 1, 11)
    assert loop.next_batch().batch_id == 1
    loop.add("b1", 2, 12)
    assert loop.nothing_taken(), "the device is busy with the first batch"
    assert loop.claimed() == 1
    loop.endpoint.send(wrap(BatchRendered(1)))
    second = loop.next_batch()
    assert second.batch_id == 2 and loop.claimed() == 2
    loop.answer(first)  # the first batch's PNGs and Results arrive while the second one renders
    loop.wait(lambda: loop.claimed() == 1, "the first entry is acknowledged with its BatchDone")
    loop.endpoint.send(wrap(BatchRendered(2)))
    loop.answer(second)
    loop.wait(lambda: loop.claimed() == 0, "the second entry is acknowledged")
    kinds = [(type(m).__name__, getattr(m, "batch_id", None) or getattr(m, "job_id", None)) for m in loop.events("b1")]
    assert kinds == [("BatchClaimed", 1), ("BatchClaimed", 2), ("Result", 11), ("BatchDone", 1), ("Result", 12),
                     ("BatchDone", 2)]
    assert not any(isinstance(m, BatchRendered) for m in loop.events("b1")), "BatchRendered is not the bot's business"


def test_no_more_than_two_entries_are_held(loop: Loop) -> None:
    first = loop.add("b1", 1, 21)
    loop.next_batch()
    loop.endpoint.send(wrap(BatchRendered(1)))
    loop.add("b1", 2, 22)
    second = loop.next_batch()
    loop.endpoint.send(wrap(BatchRendered(2)))  # both rendered, both still finishing
    third = loop.add("b1", 3, 23)
    assert loop.nothing_taken()
    loop.answer(first)
    assert loop.next_batch() == third
    loop.answer(second)
    loop.endpoint.send(wrap(BatchRendered(3)))
    loop.answer(third)
    loop.wait(lambda: loop.claimed() == 0, "every entry is acknowledged")


def test_an_entry_whose_job_id_is_still_finishing_waits_for_it(loop: Loop) -> None:
    first = loop.add("b1", 1, 7)
    loop.next_batch()
    loop.endpoint.send(wrap(BatchRendered(1)))
    other = loop.add("b2", 5, 7)  # another bot numbers its jobs apart: the same job id
    loop.wait(lambda: loop.claimed() == 2, "the entry of the other bot is claimed")
    assert loop.nothing_taken(), "answers for job 7 could not be told apart"
    loop.answer(first)
    assert loop.next_batch() == other
    loop.endpoint.send(wrap(BatchRendered(5)))
    loop.answer(other)
    loop.wait(lambda: loop.claimed() == 0, "both entries are acknowledged")
    for bot, batch_id in (("b1", 1), ("b2", 5)):
        events = loop.events(bot)
        assert [type(m) for m in events] == [BatchClaimed, Result, BatchDone], (bot, events)
        assert events[0].batch_id == batch_id and events[1].job_id == 7  # type: ignore[attr-defined]


def test_an_entry_held_back_when_the_worker_stops_is_handed_back_not_lost(loop: Loop) -> None:
    first = loop.add("b1", 1, 9)
    loop.next_batch()
    loop.endpoint.send(wrap(BatchRendered(1)))
    loop.add("b2", 6, 9)
    loop.wait(lambda: loop.claimed() == 2, "the colliding entry is claimed and held back")
    loop.endpoint.stop()  # SIGTERM: finish what was fed, take nothing new
    loop.answer(first)
    loop.wait(lambda: loop.claimed() == 0, "the held-back entry is handed back")
    left = [decode(fields[b"body"]) for _, fields in loop.r.xrange(loop.layout.work)]
    assert [(b.batch_id, [r.job_id for r in b.requests]) for b in left] == [(6, [9])], left  # type: ignore[attr-defined]
    fed = []
    deadline = time.monotonic() + QUIET_S
    with contextlib.suppress(queue.Empty):
        while (left := deadline - time.monotonic()) > 0:
            fed.append(type(loop.endpoint.recv(timeout=left).message).__name__)
    assert "Shutdown" in fed and "SubmitBatch" not in fed, fed
