"""Soak: a thousand jobs through the whole bot; does anything grow that should not?

Jobs go **through the bot** (``/imagine`` on the fake Discord, the real ``python -m bot`` process and its engine
worker, SQLite on disk, images on disk), tiny model at 64x64 with 2 steps.  USERS members keep up to INFLIGHT jobs
each in flight until JOBS have been sent.  The hypernet cache is set to its smallest (1 MiB) and the prompts cycle
through large (~0.8 MiB) and small fixture hypernets, so the worker's LRU must evict all the time.

Measured at start (after WARMUP jobs), middle and end, from /proc: resident memory and open file descriptors of
the bot process and of the worker; the database's size (main file + WAL); the images folder.  Hypernet cache
evictions are counted from the bot's periodic status log line (``logging.status_interval_s`` = 1 s, which lists the
cache's contents): an entry present in one snapshot and gone in the next is an eviction, so the count is a lower
bound (several loads between two snapshots count once).

Pass/fail bounds (printed in ``bounds``), growth from start to end: bot RSS ≤ 40 MiB, worker RSS ≤ 120 MiB, open
fds ≤ 5 each; database main file ≤ 4 KiB per job; WAL ≤ 16 MiB (checkpoints keep it bounded); zero jobs lost; at
least one eviction; no worker restart.  The images folder grows by design (kept for /show) and is only reported.

    OMP_NUM_THREADS=1 .venv/bin/python bench/soak.py              # 1,000 jobs (~5 min on 2 cores)
    OMP_NUM_THREADS=1 .venv/bin/python bench/soak.py --jobs 300
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BotRun, bot_run, dir_bytes, outcome, proc_snapshot, progress, run_and_emit, zoo_models
from bench.load import db_status_counts
from tests.e2e.fake_discord import InteractionRecord

#: Larger SD1.x fixture hypernets (tests/fixtures/hypernetworks/, beside the zoo): ~0.8 MiB each once loaded.
LARGE_MODELS = {"big_relu": "../pub_relu_11_320_ln.pt", "big_elu": "../pub_elu_11_320_legacykeys.pt",
                "big_swish": "../pub_swish_1-0.1-1_768_actout.pt"}
BOUNDS = {"bot_rss_growth_mib": 40.0, "worker_rss_growth_mib": 120.0, "bot_fd_growth": 5, "worker_fd_growth": 5,
          "db_bytes_per_job": 4096, "wal_bytes": 16 * 2**20}


def status_snapshots(log_text: str) -> list[list[str]]:
    """The hypernet cache contents from each ``status {...}`` line the bot logged, in order."""
    out = []
    for line in log_text.splitlines():
        _head, sep, payload = line.partition(" status {")
        if sep:
            try:
                out.append(list(json.loads("{" + payload)["hypernet_cache"]))
            except (ValueError, KeyError):
                continue
    return out


def count_evictions(snapshots: list[list[str]]) -> int:
    return sum(len(set(a) - set(b)) for a, b in itertools.pairwise(snapshots))


def measure(env: BotRun, jobs_done: int) -> dict[str, Any]:
    db = env.bot.database
    wal = db.with_name(db.name + "-wal")
    worker = env.worker_pid()
    return {
        "jobs_done": jobs_done,
        "bot": proc_snapshot(env.bot.pid),
        "worker": proc_snapshot(worker) if worker else None,
        "worker_pid": worker,
        "db_bytes": db.stat().st_size,
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        "images_bytes": dir_bytes(env.bot.images_dir),
    }


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    models = {**zoo_models(3), **LARGE_MODELS}
    limits = {"queue_max": args.users * args.inflight + 10, "queue_per_user": args.inflight,
              "rate_per_minute": 10_000.0, "rate_burst": 1000, "default_steps": args.steps}
    engine = {"max_batch": args.max_batch, "hypernet_cache_mb": 1}
    async with bot_run(root, users=args.users, limits=limits, engine=engine, folder_models=models,
                       logging={"status_interval_s": 1.0}) as env:
        return await drive(env, args, list(models), limits)


async def drive(env: BotRun, args: argparse.Namespace, names: list[str], limits: dict[str, Any]) -> dict[str, Any]:
    fake = env.fake
    nets = itertools.cycle([*names, None])
    pending: dict[int, InteractionRecord] = {}
    per_user: dict[int, int] = dict.fromkeys(range(args.users), 0)
    states: dict[str, int] = {"image": 0, "failed": 0}
    failures: list[str] = []
    sent = 0
    samples: dict[str, dict[str, Any]] = {}
    marks = {"start": min(args.warmup, args.jobs), "middle": args.jobs // 2}
    t_start = time.monotonic()
    deadline = t_start + args.timeout
    while sum(states.values()) < args.jobs:
        if time.monotonic() > deadline:
            progress(f"timeout with {len(pending)} jobs pending")
            break
        env.bot.check_alive()
        for u in range(args.users):  # top every user up to INFLIGHT
            while sent < args.jobs and per_user[u] < args.inflight:
                net = next(nets)
                tag = f" hypernet:{net}:0.7" if net else ""
                rec = await fake.slash(user=env.members[u], name="imagine",
                                       options={"prompt": f"soak {sent}{tag}", "seed": sent, "steps": args.steps})
                pending[rec.id] = rec
                per_user[u] += 1
                sent += 1
        await asyncio.sleep(0.1)
        for iid, rec in list(pending.items()):
            state = outcome(rec)
            if state.state != "pending":
                del pending[iid]
                per_user[env.members.index(rec.user)] -= 1
                states[state.state] += 1
                if state.state == "failed":
                    failures.append(state.text)
        done = sum(states.values())
        for name, at in marks.items():
            if name not in samples and done >= at:
                samples[name] = measure(env, done)
                progress(f"{name}: {json.dumps(samples[name])}")
        if done and done % 100 == 0 and f"p{done}" not in samples:
            samples[f"p{done}"] = {}
            progress(f"{done}/{args.jobs} jobs ended ({time.monotonic() - t_start:.0f}s)")
    await asyncio.sleep(1.5)  # one more status line after the last job
    samples["end"] = measure(env, sum(states.values()))
    progress(f"end: {json.dumps(samples['end'])}")
    wall = time.monotonic() - t_start
    db = db_status_counts(env.bot.database)
    db_unfinished = sum(n for status, n in db.items() if status not in ("done", "failed", "cancelled"))
    snaps = status_snapshots(env.bot.log_text())
    start, end = samples["start"], samples["end"]
    worker_same = start["worker_pid"] == end["worker_pid"]
    growth = {
        "bot_rss_growth_mib": round(end["bot"]["rss_mib"] - start["bot"]["rss_mib"], 1),
        "worker_rss_growth_mib": round(end["worker"]["rss_mib"] - start["worker"]["rss_mib"], 1)
        if end["worker"] and start["worker"] else None,
        "bot_fd_growth": end["bot"]["fds"] - start["bot"]["fds"],
        "worker_fd_growth": end["worker"]["fds"] - start["worker"]["fds"] if end["worker"] and start["worker"] else None,
        "db_bytes_per_job": round((end["db_bytes"] - start["db_bytes"]) / max(1, end["jobs_done"] - start["jobs_done"])),
        "wal_bytes": end["wal_bytes"],
        "images_bytes_per_job": round(end["images_bytes"] / max(1, states["image"])),
    }
    checks = {key: growth[key] is not None and growth[key] <= bound for key, bound in BOUNDS.items()}
    checks["no_jobs_lost"] = not pending and db_unfinished == 0
    checks["evictions_happened"] = count_evictions(snaps) > 0
    checks["no_worker_restart"] = worker_same
    return {
        "jobs": args.jobs, "through": "bot (/imagine on the fake Discord)", "users": args.users,
        "inflight_per_user": args.inflight, "images": states["image"], "failed_with_message": states["failed"],
        "failure_samples": sorted(set(failures))[:5], "jobs_lost": len(pending) + db_unfinished, "db_jobs": db,
        "wall_s": round(wall, 1), "images_per_s": round(states["image"] / wall, 3),
        "hypernet_cache_mb": 1, "distinct_hypernets": len(names), "status_snapshots": len(snaps),
        "evictions_observed": count_evictions(snaps),
        "samples": {k: samples[k] for k in ("start", "middle", "end") if k in samples},
        "growth": growth, "bounds": BOUNDS, "checks": checks, "pass": all(checks.values()),
        "limits": limits, "steps": args.steps, "size": 64, "max_batch": args.max_batch, "checkpoint": "tiny",
        "device": "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--inflight", type=int, default=3, help="jobs each user keeps in flight")
    parser.add_argument("--warmup", type=int, default=50, help="jobs before the 'start' sample")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1800.0, help="stop sending and report after this")
    args = parser.parse_args()
    figures = run_and_emit("soak", run, args)
    sys.exit(0 if figures["pass"] else 1)


if __name__ == "__main__":
    main()
