"""The Redis transport for real: redis-server on loopback, two standalone CPU workers (tiny model), the bot's client.

One server, one fleet of two workers and one client serve the whole module (a worker takes ~15 s to start on two
cores); the fleet restarts a worker that died, as a container's restart policy would.  Each worker has its own
empty model store, so the first job with a hypernet on a worker makes it fetch the file from the bot.  Tests run
in file order; the kill and crash tests leave restarted workers behind, the Redis restart comes last.

"Every job once" is checked where it can be seen: :class:`CountingClient` counts every Result that reaches the
bot from Redis, duplicates included (the client would drop a second one silently).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from engine.client import BROKER_DOWN, JobHandle, RedisEngineClient
from engine.client.redis_layout import RedisLayout
from engine.codec import decode, encode
from engine.errors import WorkerUnavailable
from engine.protocol import (
    Failure,
    FailureKind,
    GenerateRequest,
    HypernetRef,
    ModelBlob,
    Progress,
    Result,
    Started,
    WorkerConfig,
)
from engine.worker.model_fetch import HASH_MISMATCH
from tests.engine.redis.fleet import Fleet, RedisServer
from tests.requests import request

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hypernetworks"
PREFIX = "test"
FAULTS = {"crash_marker": "@CRASH@", "slow_marker": "@SLOW@", "slow_step_s": 0.3, "hang_marker": "@HANG@",
          "hang_s": 120.0}
LEASE_S = 2.0
JOB_TIMEOUT_S = 10.0  # the workers' render time limit (from the client's fleet settings)
_ids = itertools.count(5000)


def req(user: int, prompt: str = "a cat", *, steps: int = 2, hypernets: tuple[HypernetRef, ...] = ()) -> GenerateRequest:
    return request(next(_ids), user, prompt, seed=3, steps=steps, width=64, height=64, hypernets=hypernets,
                   sampler="Euler a")


class CountingClient(RedisEngineClient):
    """The real client, counting every Result that arrives from Redis per job (duplicates included)."""

    results: collections.Counter[int]

    async def _on_entry(self, entry_id: str, fields: dict[bytes, bytes]) -> bool:
        msg = decode(fields[b"body"])
        if isinstance(msg, Result):
            self.results[msg.job_id] += 1
        return await super()._on_entry(entry_id, fields)


def make_client(url: str, store: Path, bot_id: str = "b1") -> CountingClient:
    config = WorkerConfig(checkpoint="tiny", device="cpu", dtype="float32", max_batch=2, model_store_dir=str(store),
                          progress_interval_s=0.0)
    client = CountingClient(config, url, bot_id=bot_id, prefix=PREFIX, max_queue=30, max_per_user=12, lease_s=LEASE_S,
                            heartbeat_interval_s=0.3, heartbeat_timeout_s=3.0, start_timeout_s=20.0,
                            job_timeout_s=JOB_TIMEOUT_S)
    client.results = collections.Counter()
    return client


async def collect(handle: JobHandle, timeout: float = 120.0) -> list[Any]:
    async def gather() -> list[Any]:
        return [ev async for ev in handle.events()]

    return await asyncio.wait_for(gather(), timeout)


async def until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def bot_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, HypernetRef]]:
    """The bot's model store: canonical files named by sha256, made from the A1111 fixtures."""
    from engine.hypernet import load, save_canonical

    root = tmp_path_factory.mktemp("botstore")
    refs = {}
    for name in ("pub_relu_11_320_ln.pt", "pub_swish_1-0.1-1_768_actout.pt"):
        tmp = root / "tmp.safetensors"
        save_canonical(load(FIXTURES / name), tmp)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        shutil.move(tmp, root / f"{digest}.safetensors")
        refs[name] = HypernetRef(name=name.removesuffix(".pt"), sha256=digest, multiplier=1.0)
    return root, refs


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, bot_store: tuple[Path, dict[str, HypernetRef]]) -> Any:
    root = tmp_path_factory.mktemp("redis-tier")
    server = RedisServer(root / "redis")
    server.start()
    client = make_client(server.url, bot_store[0])
    await client.start()  # publishes the fleet settings the workers wait for
    fleet = Fleet(server.url, root / "fleet", prefix=PREFIX, faults=FAULTS)
    for name in ("w1", "w2"):
        fleet.start(name)
    fleet.keep_running()
    raw = aioredis.Redis.from_url(server.url)
    try:
        await until(lambda: sum(w.state == "ready" for w in client.status().workers) == 2, 90, "two ready workers")
        yield {"server": server, "client": client, "fleet": fleet, "redis": raw, "refs": bot_store[1],
               "store": bot_store[0], "root": root}
    finally:
        await client.stop(grace_s=2)
        await fleet.stop_all()
        await raw.aclose()
        server.stop()


async def ready_workers(client: RedisEngineClient, n: int = 2) -> None:
    await until(lambda: sum(w.state == "ready" for w in client.status().workers) >= n, 90, f"{n} ready workers")


async def test_burst_from_several_users_is_shared_fairly_by_both_workers(env: Any) -> None:
    client, refs = env["client"], env["refs"]
    blocker = client.submit(req(90, "@SLOW@ blocker", steps=3))  # keeps one worker busy while the burst queues
    blocker_progress = asyncio.create_task(_first_progress(blocker))
    await asyncio.wait_for(blocker_progress, 60)
    nets = list(refs.values())
    burst = [client.submit(req(1, f"a {i}", hypernets=(nets[i % 2],) if i % 3 == 0 else ())) for i in range(6)]
    late = client.submit(req(2, "b"))
    assert client.position(late.job_id) == 1, "a user arriving late is served right after the first queued job"
    events = await asyncio.gather(*(collect(h) for h in [*burst, late]))
    assert all(isinstance(evs[-1], Result) for evs in events), [evs[-1] for evs in events]
    batch_of = {h.job_id: next(e.batch_id for e in evs if isinstance(e, Started)) for h, evs in zip([*burst, late], events,
                                                                                                   strict=True)}
    batches = sorted(set(batch_of.values()))
    assert batch_of[late.job_id] in batches[:2], "the late user's job must go in one of the first two batches"
    await blocker.result()
    jobs = [blocker.job_id, *batch_of]
    assert all(client.results[j] == 1 for j in jobs), {j: client.results[j] for j in jobs}
    await asyncio.sleep(0.5)  # the registry's counts follow each batch's end
    done = {w.name: w.jobs_done for w in client.status().workers}
    assert done["w1"] > 0 and done["w2"] > 0, f"both workers should have rendered: {done}"


async def test_worker_killed_mid_batch_its_jobs_finish_on_the_other(env: Any) -> None:
    client, fleet = env["client"], env["fleet"]
    await ready_workers(client)
    handles = [client.submit(req(10 + i, "@SLOW@ survivor", steps=6)) for i in range(2)]
    progress = [asyncio.create_task(_first_progress(h)) for h in handles]
    await asyncio.wait_for(asyncio.gather(*progress), 60)
    victim = client.worker_of(handles[0].job_id)
    assert victim in ("w1", "w2")
    starts = fleet.starts[victim]
    fleet.kill(victim)
    results = await asyncio.gather(*(asyncio.wait_for(h.result(), 120) for h in handles))
    assert all(len(r.images) == 1 for r in results)
    assert all(client.results[h.job_id] == 1 for h in handles), "no job rendered twice, none lost"
    retried = [h for h in handles if h.attempts == 2]
    assert retried, "the killed worker's job must have been taken over (attempt 2)"
    assert fleet.starts[victim] == starts + 1, "the fleet restarted the killed worker"


async def _first_progress(handle: JobHandle) -> None:
    """Until the job reports a step (its outcome is still read with ``result()``)."""
    async for event in handle.events():
        if isinstance(event, Progress):
            return
    raise AssertionError(f"job {handle.job_id} ended before any progress")


async def test_job_that_kills_every_worker_is_dead_lettered(env: Any) -> None:
    client, raw = env["client"], env["redis"]
    await ready_workers(client)
    handle = client.submit(req(30, "@CRASH@ poison"))
    events = await collect(handle, timeout=150)
    outcome = events[-1]
    assert isinstance(outcome, Failure) and outcome.kind is FailureKind.WORKER_CRASHED
    assert (outcome.message, outcome.hint) == ("The image engine crashed while rendering this job, twice.",
                                               "Something in this request may be triggering it; try other settings.")
    assert [e.attempt for e in events if isinstance(e, Started)] == [1, 2]
    dead = await raw.xrange(RedisLayout(PREFIX).dead)
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert "its worker was lost 2 times" in reasons
    buried = [decode(fields[b"body"]) for _, fields in dead]
    assert any(handle.job_id in [r.job_id for r in b.requests] for b in buried)  # type: ignore[attr-defined]


async def test_a_stuck_render_times_out_on_its_worker(env: Any) -> None:
    client, fleet = env["client"], env["fleet"]
    await ready_workers(client)
    handle = client.submit(req(35, "@HANG@ stuck"))
    stuck = await until(lambda: client.worker_of(handle.job_id), 60, "a worker to claim the job")
    starts = fleet.starts[stuck]
    outcome = (await collect(handle, JOB_TIMEOUT_S + 20))[-1]
    assert isinstance(outcome, Failure) and outcome.kind is FailureKind.TIMEOUT
    assert (outcome.message, outcome.hint) == ("The render took longer than 10 s and was stopped.",
                                               "Try fewer steps, a smaller size or fewer images.")
    await until(lambda: fleet.starts[stuck] == starts + 1, 15, "the stuck worker to exit and be restarted")
    assert "ran past the 10 s render time limit" in fleet.log(stuck)


async def test_worker_fetches_a_missing_hypernet_and_checks_its_hash(env: Any) -> None:
    client, fleet, refs, store = env["client"], env["fleet"], env["refs"], env["store"]
    await ready_workers(client)
    net = refs["pub_swish_1-0.1-1_768_actout.pt"]
    result = await asyncio.wait_for(client.submit(req(40, "fetched", hypernets=(net,))).result(), 90)
    assert len(result.images) == 1
    fetched = [fleet.store(w) / f"{net.sha256}.safetensors" for w in ("w1", "w2")]
    have = [p for p in fetched if p.is_file()]
    assert have and all(p.read_bytes() == (store / f"{net.sha256}.safetensors").read_bytes() for p in have)

    # A blob whose bytes do not hash to what it states (corrupted or tampered with in Redis): refused, not written.
    forged = hashlib.sha256(b"another model").hexdigest()
    data = (store / f"{net.sha256}.safetensors").read_bytes()
    blob = ModelBlob(forged, hashlib.sha256(data).hexdigest(), data[:-1] + bytes([data[-1] ^ 1]))
    await env["redis"].set(RedisLayout(PREFIX).blob(forged), encode(blob))
    bad = HypernetRef(name=net.name, sha256=forged, multiplier=1.0)
    outcome = (await collect(client.submit(req(41, "tampered", hypernets=(bad,))), 90))[-1]
    assert isinstance(outcome, Failure) and outcome.kind is FailureKind.BAD_REQUEST
    assert outcome.message == HASH_MISMATCH
    assert not any((fleet.store(w) / f"{forged}.safetensors").exists() for w in ("w1", "w2"))


async def test_bot_restarted_while_workers_finish_its_jobs_gets_the_results(env: Any) -> None:
    client, store = env["client"], env["store"]
    await ready_workers(client)
    first = make_client(env["server"].url, store, bot_id="b2")
    await first.start()
    requests = [req(50 + i, "@SLOW@ outlives its bot", steps=5) for i in range(2)]
    handles = [first.submit(r) for r in requests]
    await asyncio.wait_for(asyncio.gather(*(_first_progress(h) for h in handles)), 60)
    await _die(first)  # no shutdown code runs: like SIGKILL of the bot process

    second = make_client(env["server"].url, store, bot_id="b2")
    await second.start()
    try:
        await asyncio.sleep(2.5)  # the workers finish meanwhile; their answers wait in Redis
        again = [second.submit(r) for r in requests]  # what the job service's reconcile does after a restart
        results = await asyncio.gather(*(asyncio.wait_for(h.result(), 60) for h in again))
        assert [len(r.images) for r in results] == [1, 1]
        assert sum(second.results.values()) + sum(first.results.values()) == 2, "rendered once each, not again"
    finally:
        await second.stop(grace_s=1)


async def _die(client: RedisEngineClient) -> None:
    """End a client the way a killed process ends: its tasks stop, nothing is cleaned up or answered."""
    for task in client._tasks:
        task.cancel()
    await asyncio.gather(*client._tasks, return_exceptions=True)
    await client._r.aclose()


async def test_status_lists_every_worker_and_marks_a_stopped_one_gone(env: Any) -> None:
    client, fleet = env["client"], env["fleet"]
    await ready_workers(client)
    workers = {w.name: w for w in client.status().workers}
    assert set(workers) >= {"w1", "w2"}
    assert all(w.device == "cpu" and w.checkpoint == "tiny" and w.max_batch == 2 for w in workers.values())
    fleet.kill("w2", 19)  # SIGSTOP: alive but silent
    try:
        await until(lambda: {w.name: w.state for w in client.status().workers}.get("w2") == "gone", 15, "w2 gone")
        result = await asyncio.wait_for(client.submit(req(60, "while w2 is silent")).result(), 60)
        assert len(result.images) == 1
    finally:
        fleet.kill("w2", 18)  # SIGCONT
    await until(lambda: {w.name: w.state for w in client.status().workers}.get("w2") in ("ready", "busy"), 15, "w2 back")


async def test_cancel_reaches_the_worker_rendering_the_job(env: Any) -> None:
    client = env["client"]
    await ready_workers(client)
    running = client.submit(req(80, "@SLOW@ cancelled while rendering", steps=30))
    queued_behind = [client.submit(req(81, "@SLOW@ keeps a worker", steps=30)) for _ in range(2)]
    await asyncio.wait_for(_first_progress(running), 60)
    worker = client.worker_of(running.job_id)
    assert worker in ("w1", "w2") and client.cancel(running.job_id)
    outcome = (await collect(running, 30))[-1]
    assert isinstance(outcome, Failure) and (outcome.kind, outcome.message) == (FailureKind.CANCELLED, "Cancelled.")
    for handle in queued_behind:  # one queued, one on the other worker: both cancelled, wherever they are
        assert client.cancel(handle.job_id)
    ends = [(await collect(h, 30))[-1] for h in queued_behind]
    assert [e.kind for e in ends] == [FailureKind.CANCELLED] * 2
    assert client.results[running.job_id] == 0


async def test_redis_stopped_and_restarted_mid_run_loses_no_job(env: Any) -> None:
    client, server = env["client"], env["server"]
    await ready_workers(client)
    handles = [client.submit(req(70 + i % 3, "@SLOW@ across an outage", steps=4)) for i in range(4)]
    await asyncio.wait_for(_first_progress(handles[0]), 60)
    server.stop()
    await until(lambda: client.status().state == "broker down", 15, "the client to notice Redis is down")
    with pytest.raises(WorkerUnavailable) as refused:
        client.check_capacity(99)
    assert str(refused.value) == BROKER_DOWN
    await asyncio.sleep(1.0)
    server.start()
    results = await asyncio.gather(*(asyncio.wait_for(h.result(), 150) for h in handles))
    assert all(len(r.images) == 1 for r in results)
    assert all(client.results[h.job_id] == 1 for h in handles), {h.job_id: client.results[h.job_id] for h in handles}
    client.check_capacity(99)  # taking jobs again


async def test_redis_that_lost_its_data_loses_no_job(env: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A Redis restarted without persistence: streams, groups and records gone; the bot queues its jobs again."""
    client, raw = env["client"], env["redis"]
    caplog.set_level(logging.WARNING, logger="engine.client")
    await ready_workers(client)
    handles = [client.submit(req(75 + i % 2, "@SLOW@ across a data loss", steps=4)) for i in range(4)]
    await asyncio.wait_for(_first_progress(handles[0]), 60)
    with contextlib.suppress(redis_errors.ConnectionError):
        await raw.ping()  # this test's own connection died with the server in the test before: reconnect
    await raw.flushall()
    results = await asyncio.gather(*(asyncio.wait_for(h.result(), 120) for h in handles))
    assert all(len(r.images) == 1 for r in results)
    assert await raw.hlen(RedisLayout(PREFIX).inflight("b1")) == 0, "every record was cleared once answered"
    await ready_workers(client)  # the workers registered again
    assert not any("Traceback" in env["fleet"].log(w) for w in ("w1", "w2")), "no worker thread died of it"
    assert "this bot's answer stream is gone (Redis lost its data?): creating it again" in caplog.text
