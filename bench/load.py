"""Load: many users send /imagine at once to the real bot; is every one answered in time, fairly, and none lost?

The real bot (``python -m bot``) runs against the fake Discord server on loopback with the ``tiny`` model.  USERS
plain members each send JOBS /imagine commands at random moments within SPREAD seconds, each prompt with one of the
drop-in hypernets (or none), mixed.  Queue caps and rate limits are raised for the run so nothing is refused for
being over a cap (printed as ``limits``).  A cheap interaction (autocomplete of /imagine's hypernet option, which
reads the registry) is sent every PROBE seconds throughout, as a user-visible responsiveness probe.

Figures (one JSON line on stdout; progress on stderr):

* ``answered``: interactions that got a first callback / sent; ``late_callbacks``: callbacks after Discord's 3 s.
* ``first_response_s``: inject → the bot's first callback (the defer), measured at the fake's REST middleware.
* ``first_image_s``: per user, their first inject → their first finished image message.
* ``fairness_ratio``: slowest user's median (inject → image) over the fastest user's median.
* ``jobs_lost``: interactions still "thinking"/queued/rendering at the end plus database rows not done/failed.
* ``bot_loop_lag_s``: from the bot's gateway heartbeats (see bench/common.py), during the run.
  ``observer_loop_lag_s`` is this process's own lag (it hosts the fake, so it can only inflate the former).

    OMP_NUM_THREADS=1 .venv/bin/python bench/load.py                 # 50 users x 5 jobs
    OMP_NUM_THREADS=1 .venv/bin/python bench/load.py --users 10 --jobs 2
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BotRun,
    bot_run,
    outcome,
    percentiles,
    proc_snapshot,
    progress,
    run_and_emit,
    zoo_models,
)
from tests.e2e.fake_discord import InteractionRecord


def db_status_counts(database: Path) -> dict[str, int]:
    """Jobs per status, read through a read-only connection."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as conn:
        return {status: n for status, n in conn.execute("SELECT status, count(*) FROM jobs GROUP BY status")}


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    models = zoo_models(args.models)
    total = args.users * args.jobs
    limits = {"queue_max": total + 10, "queue_per_user": args.jobs, "rate_per_minute": 10_000.0,
              "rate_burst": max(10, args.jobs * 2), "default_steps": args.steps, "max_steps": max(8, args.steps),
              "max_size": max(128, args.size)}
    engine = {"max_batch": args.max_batch}
    async with bot_run(root, users=args.users, limits=limits, engine=engine, folder_models=models,
                       heartbeat_ms=args.heartbeat_ms) as env:
        return await drive(env, args, list(models), limits)


async def drive(env: BotRun, args: argparse.Namespace, names: list[str], limits: dict[str, Any]) -> dict[str, Any]:
    fake, rng = env.fake, random.Random(args.seed)
    schedule = sorted((rng.uniform(0, args.spread), u, j) for u in range(args.users) for j in range(args.jobs))
    sent: list[tuple[InteractionRecord, float, int]] = []  # record, inject time, user index
    finished: dict[int, tuple[float, str, str]] = {}        # interaction id -> (time, state, text)
    probes: list[tuple[InteractionRecord, float]] = []
    stop_probes = asyncio.Event()

    async def sender() -> None:
        t0 = time.monotonic()
        for offset, u, j in schedule:
            await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
            pick = rng.randrange(len(names) + 1)
            tag = f" hypernet:{names[pick]}:0.8" if pick < len(names) else ""
            t = time.monotonic()
            rec = await fake.slash(user=env.members[u], name="imagine",
                                   options={"prompt": f"load u{u} j{j}{tag}", "seed": u * 100 + j, "steps": args.steps,
                                            "width": args.size, "height": args.size})
            sent.append((rec, t, u))

    async def prober() -> None:
        while not stop_probes.is_set():
            t = time.monotonic()
            rec = await fake.autocomplete(user=fake.member_plain, name="imagine",
                                          options={"prompt": "probe", "hypernet": "net"}, focused="hypernet")
            probes.append((rec, t))
            try:
                await asyncio.wait_for(stop_probes.wait(), args.probe)
            except TimeoutError:
                pass

    async def watcher() -> None:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            for rec, _, _ in sent:
                if rec.id not in finished:
                    state = outcome(rec)
                    if state.state != "pending":
                        finished[rec.id] = (time.monotonic(), state.state, state.text)
            if len(sent) == len(schedule) and len(finished) == len(sent):
                return
            env.bot.check_alive()
            await asyncio.sleep(0.1)

    progress(f"sending {len(schedule)} /imagine from {args.users} users within {args.spread}s")
    start = time.monotonic()
    probe_task = asyncio.create_task(prober())
    mid: dict[str, Any] = {}

    async def sample_mid() -> None:  # memory while the queue is full
        await asyncio.sleep(args.spread + 2)
        mid["bot"] = proc_snapshot(env.bot.pid)
        if (wpid := env.worker_pid()) is not None:
            mid["worker"] = proc_snapshot(wpid)

    mid_task = asyncio.create_task(sample_mid())
    await sender()
    progress("all sent; waiting for every job to end")
    await watcher()
    end = time.monotonic()
    stop_probes.set()
    await probe_task
    mid_task.cancel()
    await asyncio.sleep(0.5)  # let the last probe's callback land

    timed = env.timed.first_callback
    first_response = [timed[rec.id] - t for rec, t, _ in sent if rec.id in timed]
    probe_latency = [timed[rec.id] - t for rec, t in probes if rec.id in timed]
    per_user: dict[int, list[tuple[float, float]]] = {}
    for rec, t, u in sent:
        done = finished.get(rec.id)
        if done is not None and done[1] == "image":
            per_user.setdefault(u, []).append((t, done[0]))
    first_inject = {u: min(t for _, t, uu in sent if uu == u) for u in range(args.users)}
    first_image = [min(d for _, d in jobs) - first_inject[u] for u, jobs in per_user.items()]
    medians = {u: statistics.median(d - t for t, d in jobs) for u, jobs in per_user.items()}
    failures = [text for _, state, text in finished.values() if state == "failed"]
    pending = [rec for rec, _, _ in sent if rec.id not in finished]
    db = db_status_counts(env.bot.database)
    db_unfinished = sum(n for status, n in db.items() if status not in ("done", "failed", "cancelled"))
    images = sum(1 for _, state, _ in finished.values() if state == "image")
    return {
        "users": args.users, "jobs_per_user": args.jobs, "interactions": len(sent),
        "answered": sum(1 for rec, _, _ in sent if rec.id in timed),
        "late_callbacks": sum(rec.late_callbacks for rec, _, _ in sent),
        "first_response_s": percentiles(first_response),
        "images": images, "failed_with_message": len(failures), "failure_samples": sorted(set(failures))[:5],
        "first_image_s": percentiles(first_image, (50, 95)),
        "fairness_ratio": round(max(medians.values()) / min(medians.values()), 3) if medians else None,
        "user_median_wait_s": {"min": round(min(medians.values()), 2), "max": round(max(medians.values()), 2)}
        if medians else {},
        "jobs_lost": len(pending) + db_unfinished, "db_jobs": db,
        "wall_s": round(end - start, 1), "images_per_s": round(images / (end - start), 3),
        "probe_autocomplete_s": percentiles(probe_latency),
        "bot_loop_lag_s": percentiles(env.heartbeats.lags(start, end), (50, 99)),
        "lag_method": f"gateway heartbeat gaps minus the {env.heartbeats.interval_s:.2f}s interval, at the fake",
        "observer_loop_lag_s": percentiles(env.loop_lag.samples, (50, 99)),
        "memory_under_load": mid, "limits": limits, "max_batch": args.max_batch, "steps": args.steps,
        "size": args.size, "distinct_hypernets": len(names), "checkpoint": "tiny", "device": "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=5, help="/imagine per user")
    parser.add_argument("--spread", type=float, default=5.0, help="seconds over which all commands are sent")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--models", type=int, default=6, help="distinct drop-in hypernets (zoo fixtures)")
    parser.add_argument("--probe", type=float, default=1.0, help="seconds between autocomplete probes")
    parser.add_argument("--heartbeat-ms", type=int, default=250, help="gateway heartbeat interval the fake asks for")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up waiting for results after this")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    run_and_emit("load", run, args)


if __name__ == "__main__":
    main()
