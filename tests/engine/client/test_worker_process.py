"""The real engine: EngineClient + worker process + tiny checkpoint on the CPU.

One client (one worker process) is shared by the module; tests that kill or stop the worker leave a
fresh one behind.  Faults are injected through HYPERCORD_TEST_FAULTS, keyed on prompt markers, so the
same worker serves ordinary and faulty jobs.  Hypernet files are built in a temporary store from the
A1111 fixtures (see ``conftest``-free helper ``_store``), named by sha256 like the real model store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from engine.client import EngineClient, JobFailed, LocalWorkers, worker_env
from engine.errors import QueueFull, WorkerUnavailable
from engine.protocol import (
    Failure,
    FailureKind,
    GenerateRequest,
    HypernetRef,
    Progress,
    Queued,
    Result,
    Started,
    WorkerConfig,
)
from tests.requests import request

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hypernetworks"
HYPERNET_FILES = ("pub_relu_11_320_ln.pt", "pub_swish_1-0.1-1_768_actout.pt", "pub_sigmoid_1-0.5-1_320_fp16.pt")
FAULTS = {
    "oom_marker": "@OOM@",
    "oom_rows_over": 2,
    "oom_rows_marker": "@BIG@",
    "crash_marker": "@CRASH@",
    "device_error_marker": "@DEVERR@",
    "slow_marker": "@SLOW@",
    "slow_step_s": 0.25,
    "hang_marker": "@HANG@",
    "hang_s": 60.0,  # longer than any test; the client must not wait for it
}
FAKE_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.fake.token-for-tests"

_ids = itertools.count(1000)


def req(user: int = 1, prompt: str = "a cat", *, steps: int = 3, seed: int = 1, count: int = 1,
        hypernets: tuple[HypernetRef, ...] = (), size: int = 64) -> GenerateRequest:
    return request(next(_ids), user, prompt, seed=seed, steps=steps, width=size, height=size, count=count,
                   hypernets=hypernets, sampler="Euler a")


async def collect(handle) -> list:
    return [ev async for ev in handle.events()]


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, HypernetRef]:
    """Canonical hypernet files named <sha256>.safetensors, made from the A1111 fixture files."""
    from engine.hypernet import load, save_canonical

    root = tmp_path_factory.mktemp("store")
    refs = {}
    for name in HYPERNET_FILES:
        tmp = root / "tmp.safetensors"
        save_canonical(load(FIXTURES / name), tmp)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        shutil.move(tmp, root / f"{digest}.safetensors")
        refs[name] = HypernetRef(name=name.removesuffix(".pt"), sha256=digest, multiplier=1.0)
    refs["_dir"] = root  # type: ignore[assignment]
    return refs


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(store):
    saved = {k: os.environ.get(k) for k in ("DISCORD_TOKEN", "DISCORD_TOKEN_FILE")}
    os.environ["DISCORD_TOKEN"] = FAKE_TOKEN  # the bot's own environment has it; the worker must not
    os.environ["DISCORD_TOKEN_FILE"] = "/run/secrets/token"
    config = WorkerConfig(checkpoint="tiny", device="cpu", dtype="float32", max_batch=0,  # auto: 4 on the CPU
                          model_store_dir=str(store["_dir"]), progress_interval_s=0.0)
    transport = LocalWorkers(extra_env={"OMP_NUM_THREADS": "1", "HYPERCORD_TEST_FAULTS": json.dumps(FAULTS)})
    c = EngineClient(config, transport=transport, max_queue=12, max_per_user=12, heartbeat_interval_s=0.3,
                     heartbeat_timeout_s=3.0, start_timeout_s=90.0, restart_backoff=(0.1,))
    await c.start()
    try:
        yield c
    finally:
        await c.stop(grace_s=5)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def ready_pid(client) -> int:
    """The pid of a worker that is up (after a test that killed one, the next may still be starting)."""
    for _ in range(600):
        status = client.status()
        if status.state == "ready" and status.pid:
            return status.pid
        await asyncio.sleep(0.05)
    raise AssertionError(f"engine not ready: {client.status()}")


async def wait_for_progress(handle) -> list:
    seen = []
    async for ev in handle.events():
        seen.append(ev)
        if isinstance(ev, Progress):
            return seen
    raise AssertionError(f"job ended before any progress: {seen}")


async def test_progress_in_order_then_result(client):
    handle = client.submit(req(steps=4, count=2, seed=42))
    events = await collect(handle)
    kinds = [type(e) for e in events]
    assert kinds[0] is Queued and kinds[1] is Started
    steps = [e.step for e in events if isinstance(e, Progress)]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert steps[-1] == 4 and all(e.total == 4 for e in events if isinstance(e, Progress))
    result = events[-1]
    assert isinstance(result, Result) and kinds.count(Result) == 1
    assert result.seeds == (42, 43)
    assert [Image.open(io.BytesIO(p)).size for p in result.images] == [(64, 64), (64, 64)]
    assert await handle.result() is result
    assert handle.attempts == 1


async def test_cancel_mid_run_stops_the_job(client):
    handle = client.submit(req(prompt="@SLOW@ a slow cat", steps=30))
    await wait_for_progress(handle)
    assert client.cancel(handle.job_id)
    rest = await collect(handle)
    assert isinstance(rest[-1], Failure) and rest[-1].kind == FailureKind.CANCELLED
    last_step = max([e.step for e in rest if isinstance(e, Progress)], default=1)
    assert last_step < 30
    with pytest.raises(JobFailed) as err:
        await handle.result()
    assert err.value.kind == FailureKind.CANCELLED
    follow = await client.submit(req()).result()  # the worker is free again
    assert len(follow.images) == 1


async def test_cancel_queued_job_and_positions_move(client):
    blocker = client.submit(req(user=50, prompt="@SLOW@ blocker", steps=8))
    await wait_for_progress(blocker)
    queued = [client.submit(req(user=60 + i, size=72 + 8 * i)) for i in range(3)]  # incompatible: one per batch
    assert [client.position(h.job_id) for h in queued] == [0, 1, 2]
    assert client.cancel(queued[0].job_id)
    assert [client.position(h.job_id) for h in queued[1:]] == [0, 1]
    cancelled = await collect(queued[0])
    assert cancelled[-1].kind == FailureKind.CANCELLED
    last = await collect(queued[2])
    positions = [e.position for e in last if isinstance(e, Queued)]
    assert positions == [2, 1, 0]  # told each time it moved, and only then
    assert isinstance(last[-1], Result)
    await blocker.result()
    await queued[1].result()


async def test_full_queue_is_refused_with_a_message(client):
    blocker = client.submit(req(user=70, prompt="@SLOW@ blocker", steps=6))
    await wait_for_progress(blocker)
    handles = [client.submit(req(user=71 + i % 6)) for i in range(12)]
    with pytest.raises(QueueFull) as err:
        client.submit(req(user=99))
    assert "queue is full" in str(err.value)
    assert client.status().queue_length == 12
    for h in handles:
        client.cancel(h.job_id)
    await blocker.result()


async def test_fairness_second_user_in_first_two_batches(client):
    blocker = client.submit(req(user=80, prompt="@SLOW@ blocker", steps=4))
    await wait_for_progress(blocker)
    a_handles = [client.submit(req(user=1, prompt=f"a {i}")) for i in range(10)]
    b_handle = client.submit(req(user=2, prompt="b"))
    assert client.position(b_handle.job_id) == 1
    a_events = await asyncio.gather(*(collect(h) for h in a_handles))
    b_events = await collect(b_handle)
    batch_of = lambda evs: next(e.batch_id for e in evs if isinstance(e, Started))  # noqa: E731
    batches = sorted({batch_of(evs) for evs in a_events} | {batch_of(b_events)})
    assert batch_of(b_events) in batches[:2]
    assert all(isinstance(evs[-1], Result) for evs in [*a_events, b_events])
    await blocker.result()


async def test_batched_hypernets_match_one_by_one(client, store):
    nets = [store[n] for n in HYPERNET_FILES]
    requests = [req(user=10 + i, prompt="water elemental woman", seed=7, hypernets=(net,)) for i, net in enumerate(nets)]
    plain = req(user=20, prompt="water elemental woman", seed=7)
    handles = [client.submit(r) for r in requests]
    batched_events = await asyncio.gather(*(collect(h) for h in handles))
    batch_ids = {next(e.batch_id for e in evs if isinstance(e, Started)) for evs in batched_events}
    assert len(batch_ids) == 1, "the three jobs should have shared one batch"
    batched = [pixels(evs[-1].images[0]) for evs in batched_events]
    alone = []
    for r in [*requests, plain]:
        single = dataclasses.replace(r, job_id=next(_ids))
        alone.append(pixels((await client.submit(single).result()).images[0]))
    for got, want in zip(batched, alone[:3], strict=True):
        assert np.abs(got - want).max() <= 1
    for got in alone[:3]:
        assert np.abs(got - alone[3]).max() > 3, f"a hypernet should change the image ({np.abs(got - alone[3]).max()})"
    for _ in range(50):  # the cache list comes with the next heartbeat answer
        cached = {n.split(" ")[0] for n in client.status().cache_contents}
        if cached >= {r.name for r in nets}:
            break
        await asyncio.sleep(0.1)
    assert cached >= {r.name for r in nets}


async def test_missing_hypernet_is_a_bad_request(client):
    ghost = HypernetRef(name="ghost", sha256="0" * 64, multiplier=1.0)
    evil = HypernetRef(name="evil", sha256="../../../etc/passwd", multiplier=1.0)
    ok = req(user=31)
    handles = [client.submit(req(user=30, hypernets=(ghost,))), client.submit(req(user=32, hypernets=(evil,))),
               client.submit(ok)]
    outcomes = [(await collect(h))[-1] for h in handles]
    assert outcomes[0].kind == FailureKind.BAD_REQUEST and "no longer installed" in outcomes[0].message
    assert outcomes[1].kind == FailureKind.BAD_REQUEST and "malformed" in outcomes[1].message
    assert isinstance(outcomes[2], Result)


async def test_oom_fails_only_its_job(client):
    handles = [client.submit(req(user=40, prompt="@OOM@ huge")), client.submit(req(user=41)),
               client.submit(req(user=42))]
    events = await asyncio.gather(*(collect(h) for h in handles))
    assert len({next(e.batch_id for e in evs if isinstance(e, Started)) for evs in events}) == 1
    oom = events[0][-1]
    assert isinstance(oom, Failure) and oom.kind == FailureKind.OUT_OF_MEMORY and "smaller size" in oom.hint
    assert all(isinstance(evs[-1], Result) for evs in events[1:])


async def test_oom_resolved_by_splitting_the_batch(client):
    pid = await ready_pid(client)
    handles = [client.submit(req(user=43 + i, prompt=f"@BIG@ {i}")) for i in range(4)]  # 4 rows > 2: OOM until split
    events = await asyncio.gather(*(collect(h) for h in handles))
    assert len({next(e.batch_id for e in evs if isinstance(e, Started)) for evs in events}) == 1
    assert all(isinstance(evs[-1], Result) for evs in events)
    assert client.status().pid == pid  # the worker stayed up


async def test_kill_9_mid_job_is_retried_and_completes(client):
    pid = await ready_pid(client)
    before = client.status()
    handle = client.submit(req(prompt="@SLOW@ survivor", steps=6))
    await wait_for_progress(handle)
    os.kill(pid, signal.SIGKILL)
    events = await collect(handle)
    assert isinstance(events[-1], Result)
    assert [e.attempt for e in events if isinstance(e, Started)] == [2]
    assert handle.attempts == 2
    assert await ready_pid(client) != pid and client.status().restarts == before.restarts + 1


async def test_job_that_always_crashes_fails_and_spares_its_batch_mate(client):
    crasher = client.submit(req(user=90, prompt="@CRASH@ boom"))
    mate = client.submit(req(user=91, prompt="innocent"))
    crash_events, mate_events = await asyncio.gather(collect(crasher), collect(mate))
    failure = crash_events[-1]
    assert isinstance(failure, Failure) and failure.kind == FailureKind.WORKER_CRASHED
    assert "crashed" in failure.message
    assert crasher.attempts == 2
    assert isinstance(mate_events[-1], Result)  # re-run alone after the first crash


async def test_device_error_ends_the_worker_with_code_70(client, caplog):
    caplog.set_level(logging.WARNING, logger="engine.client")
    pid = await ready_pid(client)
    handle = client.submit(req(user=92, prompt="@DEVERR@ broken"))
    seen = []
    async for ev in handle.events():  # runs, the worker dies, the job is queued again for its retry
        seen.append(ev)
        if isinstance(ev, Queued) and any(isinstance(e, Started) for e in seen):
            break
    assert "exited with code 70" in caplog.text
    assert client.cancel(handle.job_id)  # spare the test a second crash
    assert (await collect(handle))[-1].kind == FailureKind.CANCELLED
    assert await ready_pid(client) != pid


async def test_hung_worker_is_detected_and_replaced(client):
    pid = await ready_pid(client)
    before = client.status()
    handle = client.submit(req(prompt="@SLOW@ patient", steps=6))
    await wait_for_progress(handle)
    os.kill(pid, signal.SIGSTOP)
    try:
        result = await handle.result()
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert len(result.images) == 1 and handle.attempts == 2
    after = client.status()
    assert await ready_pid(client) != pid and after.restarts == before.restarts + 1


async def test_stuck_batch_times_out_and_the_queue_moves_on(client, caplog):
    caplog.set_level(logging.WARNING, logger="engine.client")
    pid = await ready_pid(client)
    before = client.status()
    saved = client.job_timeout_s
    client.job_timeout_s = 4.0  # longer than heartbeat_timeout_s (3 s): the stuck worker keeps answering pings
    try:
        stuck = client.submit(req(user=93, prompt="@HANG@ stuck"))
        mate = client.submit(req(user=94, prompt="batch-mate"))
        seen = []
        async for ev in stuck.events():  # once its batch is on the worker, queue a job behind it
            seen.append(ev)
            if isinstance(ev, Started):
                break
        behind = client.submit(req(user=95, prompt="behind", size=72))  # another size: cannot join the stuck batch
        assert client.position(behind.job_id) == 0
        stuck_events = seen + await collect(stuck)
        mate_events = await collect(mate)
    finally:
        client.job_timeout_s = saved
    for events, handle in ((stuck_events, stuck), (mate_events, mate)):
        failure = events[-1]
        assert isinstance(failure, Failure) and failure.kind == FailureKind.TIMEOUT
        assert failure.message == "The render took longer than 4 s and was stopped."
        assert failure.hint == "Try fewer steps, a smaller size or fewer images." and not failure.retryable
        assert [e.attempt for e in events if isinstance(e, Started)] == [1] and handle.attempts == 1  # not retried
    assert next(e.batch_id for e in stuck_events if isinstance(e, Started)) == next(
        e.batch_id for e in mate_events if isinstance(e, Started)), "the two jobs should have shared one batch"
    assert "render time limit" in caplog.text and "stopped answering" not in caplog.text
    result = await behind.result()
    assert len(result.images) == 1 and behind.attempts == 1
    after = client.status()
    assert await ready_pid(client) != pid and after.restarts == before.restarts + 1
    assert after.jobs_failed == before.jobs_failed + 2


async def test_worker_environment_lacks_the_token(client):
    assert os.environ["DISCORD_TOKEN"] == FAKE_TOKEN
    raw = Path(f"/proc/{await ready_pid(client)}/environ").read_bytes()
    names = {entry.split(b"=", 1)[0].decode() for entry in raw.split(b"\0") if entry}
    assert "DISCORD_TOKEN" not in names and "DISCORD_TOKEN_FILE" not in names
    assert FAKE_TOKEN.encode() not in raw
    assert "OMP_NUM_THREADS" in names


async def test_worker_env_scrubs_secrets():
    base = {"PATH": "/bin", "DISCORD_TOKEN": "x", "DISCORD_TOKEN_FILE": "/t", "MY_API_KEY": "k", "HF_TOKEN": "h",
            "HYPERCORD_TEST_FAULTS": "{}"}
    env = worker_env(base)
    assert set(env) == {"PATH", "PYTHONPATH"}
    assert worker_env(base, {"HYPERCORD_TEST_FAULTS": "{}"})["HYPERCORD_TEST_FAULTS"] == "{}"
    with pytest.raises(AssertionError):
        worker_env(base, {"DISCORD_TOKEN": "sneaky"})


async def test_status_reports_figures(client):
    """Self-contained: the figures move by exactly what this test did (restart counting: see the kill tests)."""
    await ready_pid(client)
    before = client.status()
    await client.submit(req(user=96, count=2)).result()
    await client.submit(req(user=96)).result()
    status = client.status()
    assert status.state == "ready" and status.device == "cpu" and status.checkpoint == "tiny"
    assert status.context_dim == 768 and status.attention_widths == (320, 640) and status.dtype == "float32"
    assert status.jobs_done == before.jobs_done + 2 and status.jobs_failed == before.jobs_failed
    assert status.images_per_s > 0 and status.avg_step_s > 0
    assert status.restarts == before.restarts and status.uptime_s > before.uptime_s
    assert status.queue_length == 0 and status.running == 0
    assert [w.max_batch for w in status.workers] == [4]  # max_batch 0 (auto) as the worker resolved it: CPU, 4
    for _ in range(100):  # the UNet figures come with the next heartbeat (every 0.3 s here)
        if client.status().unet_eager_calls > before.unet_eager_calls:
            break
        await asyncio.sleep(0.05)
    assert client.status().unet_eager_calls > before.unet_eager_calls  # compile "auto" on the CPU: eager
    assert client.status().unet_compiled_calls == 0


async def test_submit_before_start_is_refused():
    idle = EngineClient(WorkerConfig(checkpoint="tiny", device="cpu"))
    with pytest.raises(WorkerUnavailable):
        idle.submit(req())
    with pytest.raises(ValueError, match="job_timeout_s must be positive"):
        EngineClient(WorkerConfig(checkpoint="tiny", device="cpu"), job_timeout_s=0)
