"""Scale-out: the load benchmark's workload through the real bot over Redis, with 1, 2 and 3 standalone CPU workers.

For each worker count: a fresh key prefix on one redis-server, N workers (``python -m engine.worker --redis``, the
``tiny`` model, each its own empty model store), the real bot (``engine.transport = "redis"``) against the fake
Discord, then USERS members each send JOBS /imagine within SPREAD seconds, a share of them with one of the
drop-in hypernets, as ``bench/load.py`` does.  A last round runs two workers and ``kill -9``\\ s one of them in the
middle of the burst (it is restarted, like a container would be).

Figures per round (one JSON line on stdout): ``jobs_per_s`` (finished images over the time from the first command
to the last image), ``latency_s`` (each command -> its image: p50/p95), ``lost`` (commands with no image nor clear
failure at the end + database rows not finished), ``duplicated`` (jobs answered by the workers more than once,
counted from the workers' own logs: one "job N done" line per result sent), ``batches_taken_over`` (batches of a
lost worker claimed by another) and ``scaling`` (jobs/s over the one-worker round).

On a 2-core machine the workers compete for the same two cores (each renders with one thread), so the ratio says
how much the fleet's overhead costs rather than what more GPUs give; what must hold in every round is lost = 0 and
duplicated = 0.

    OMP_NUM_THREADS=1 .venv/bin/python bench/scale_out.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/scale_out.py --users 10 --jobs 3 --workers 1,2
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis

from bench.common import add_members, outcome, percentiles, progress, run_and_emit, zoo_models
from bench.load import db_status_counts
from engine.client.redis_layout import RedisLayout
from engine.codec import decode
from engine.protocol import WorkerInfo
from tests.e2e.botproc import BotProcess, config_for
from tests.e2e.fake_discord import FakeDiscord, InteractionRecord
from tests.engine.redis.fleet import Fleet, RedisServer

DONE_LINE = re.compile(r"job (\d+) done: ")


async def registry(raw: aioredis.Redis, prefix: str) -> dict[str, WorkerInfo]:
    entries = await raw.hgetall(RedisLayout(prefix).workers)
    return {k.decode(): info for k, v in entries.items() if isinstance(info := decode(v), WorkerInfo)}


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


async def one_round(args: argparse.Namespace, root: Path, server: RedisServer, workers: int, kill: bool) -> dict[str, Any]:
    prefix = f"scale{workers}{'k' if kill else ''}"
    models = zoo_models(args.models)
    raw = aioredis.Redis.from_url(server.url)
    fleet = Fleet(server.url, root / prefix / "fleet", prefix=prefix)
    limits = {"queue_max": args.users * args.jobs + 10, "queue_per_user": args.jobs, "rate_per_minute": 10_000.0,
              "rate_burst": max(10, args.jobs * 2), "default_steps": args.steps, "max_steps": max(8, args.steps)}
    engine = {"transport": "redis", "redis_url": server.url, "redis_prefix": prefix, "bot_id": "bench",
              "max_batch": args.max_batch, "lease_s": 5.0, "heartbeat_interval_s": 1.0, "heartbeat_timeout_s": 10.0}
    async with FakeDiscord() as fake:
        members = add_members(fake, args.users)
        bot = BotProcess(root / prefix / "bot", fake, config_for(fake, limits=limits, engine=engine), folder_models=models)
        try:
            progress(f"round {prefix}: starting the bot and {workers} workers")
            await bot.start(180)
            for i in range(workers):
                fleet.start(f"w{i}")
            if kill:
                fleet.keep_running()
            await wait_for(lambda: _ready(raw, prefix, workers), 180, f"{workers} ready workers")
            await asyncio.sleep(2.0)  # the bot reads the registry each heartbeat
            figures = await drive(args, fake, members, list(models), fleet if kill else None)
            logs = [fleet.log(name) for name in fleet.procs]
            renders = collections.Counter(int(job) for text in logs for job in DONE_LINE.findall(text))
            taken_over = sum(text.count("took over batch entry") for text in logs)
        finally:
            await bot.stop()
            await fleet.stop_all()
            await raw.aclose()
    db = db_status_counts(bot.database)
    unfinished = sum(n for status, n in db.items() if status not in ("done", "failed", "cancelled"))
    return {"workers": workers, "killed_one": kill, **figures, "lost": figures.pop("pending") + unfinished,
            "duplicated": sum(n - 1 for n in renders.values() if n > 1), "batches_taken_over": taken_over, "db_jobs": db}


async def _ready(raw: aioredis.Redis, prefix: str, n: int) -> bool:
    return sum(i.state == "ready" for i in (await registry(raw, prefix)).values()) >= n


async def drive(args: argparse.Namespace, fake: FakeDiscord, members: list[Any], names: list[str],
                fleet: Fleet | None) -> dict[str, Any]:
    rng = random.Random(args.seed)
    schedule = sorted((rng.uniform(0, args.spread), u, j) for u in range(args.users) for j in range(args.jobs))
    sent: list[tuple[InteractionRecord, float]] = []
    finished: dict[int, tuple[float, str]] = {}
    failures: set[str] = set()
    t0 = time.monotonic()

    async def sender() -> None:
        for offset, u, j in schedule:
            await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
            pick = rng.randrange(len(names) + 1)
            tag = f" hypernet:{names[pick]}:0.8" if pick < len(names) else ""
            options = {"prompt": f"scale u{u} j{j}{tag}", "seed": u * 100 + j, "steps": args.steps, "width": 64,
                       "height": 64}
            stamp = time.monotonic()
            sent.append((await fake.slash(user=members[u], name="imagine", options=options), stamp))

    async def killer() -> None:
        await asyncio.sleep(args.spread / 2)
        assert fleet is not None
        progress("kill -9 of worker w0")
        fleet.kill("w0", signal.SIGKILL)

    tasks = [asyncio.create_task(sender())] + ([asyncio.create_task(killer())] if fleet is not None else [])
    deadline = t0 + args.timeout
    while time.monotonic() < deadline:
        for rec, _ in sent:
            if rec.id not in finished and (seen := outcome(rec)).state != "pending":
                finished[rec.id] = (time.monotonic(), seen.state)
                if seen.state == "failed":
                    failures.add(seen.text[:300])
        if len(sent) == len(schedule) and len(finished) == len(sent):
            break
        await asyncio.sleep(0.1)
    await asyncio.gather(*tasks)
    images = [(done, stamp) for rec, stamp in sent if (done := finished.get(rec.id)) and done[1] == "image"]
    end = max((d for (d, _), _ in images), default=time.monotonic())
    return {"jobs": len(schedule), "images": len(images), "failed": sum(s == "failed" for _, s in finished.values()),
            "failure_samples": sorted(failures)[:5],
            "pending": len(sent) - len(finished) + len(schedule) - len(sent),
            "jobs_per_s": round(len(images) / (end - t0), 3) if images else 0.0,
            "latency_s": percentiles((d - stamp for (d, _), stamp in images), (50, 95))}


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    server = RedisServer(root / "redis")
    server.start()
    rounds = []
    try:
        for n in args.workers:
            rounds.append(await one_round(args, root, server, n, kill=False))
            progress(f"{n} workers: {rounds[-1]['jobs_per_s']} jobs/s, lost {rounds[-1]['lost']}, "
                     f"duplicated {rounds[-1]['duplicated']}")
        if not args.no_kill:
            rounds.append(await one_round(args, root, server, 2, kill=True))
    finally:
        server.stop()
    base = next((r["jobs_per_s"] for r in rounds if r["workers"] == 1 and not r["killed_one"]), None)
    for r in rounds:
        r["scaling"] = round(r["jobs_per_s"] / base, 3) if base else None
    return {"rounds": rounds, "users": args.users, "jobs_per_user": args.jobs, "steps": args.steps, "size": 64,
            "max_batch": args.max_batch, "distinct_hypernets": args.models, "checkpoint": "tiny", "device": "cpu",
            "lost_total": sum(r["lost"] for r in rounds), "duplicated_total": sum(r["duplicated"] for r in rounds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=5, help="/imagine per user")
    parser.add_argument("--spread", type=float, default=5.0, help="seconds over which all commands are sent")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--models", type=int, default=4, help="distinct drop-in hypernets (zoo fixtures)")
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    parser.add_argument("--no-kill", action="store_true", help="skip the round that kill -9s a worker")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=1)
    run_and_emit("scale_out", run, parser.parse_args())


if __name__ == "__main__":
    main()
