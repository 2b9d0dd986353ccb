"""Faults: break things around running jobs and count what the bot recovers — "N injected, N recovered, 0 lost".

The real bot (``python -m bot``) runs against the fake Discord on loopback with the ``tiny`` model.  Each fault:

* ``worker_kill``: ``kill -9`` the engine worker while a job renders.  Injected = kills; recovered = kills after
  which a new worker took over and every job in flight ended.
* ``discord_storm``: the fake answers the interaction webhook (the progress edits and the final result) with a
  storm of 429, 500 and 503.  Injected = error answers actually served; recovered = those whose job still ended
  with its image posted.
* ``sqlite_locked``: another *process* holds ``BEGIN EXCLUSIVE`` on the bot's database for HOLD seconds, well past
  the bot's busy timeout (lowered to 500 ms for this run), while jobs finish and new /imagine arrive.
  Injected = jobs that touched the database during the lock; recovered = those that ended (image or a clear
  message) and whose database row is finished.
* ``disk_full``: a 256 KiB tmpfs is mounted over the bot's images folder and filled, so writing a result image
  fails with ENOSPC in the bot's own code path; then the space is freed.  Injected = jobs finished while full;
  recovered = those that ended with a clear message and a finished row.  Needs root (``mount``); skipped if not.
* ``bot_kill``: ``kill -9`` the bot process while jobs render, start it again on the same folder (the restart
  reconciles unfinished jobs from SQLite).  Injected = kills; recovered = kills after which every job ended.

Every fault ends by checking that a fresh job renders.  ``lost`` = jobs whose message is still thinking/queued/
rendering at the end of the fault's deadline, or whose database row is not done/failed/cancelled.

    OMP_NUM_THREADS=1 .venv/bin/python bench/faults.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/faults.py --only worker_kill,discord_storm --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BotRun, Outcome, bot_run, outcome, progress, run_and_emit, zoo_models
from tests.e2e.fake_discord import FakeMember, InteractionRecord

FAULTS = ("worker_kill", "discord_storm", "sqlite_locked", "disk_full", "bot_kill")
SLOW = {"steps": 8, "width": 128, "height": 128}   # a few seconds on one CPU thread: long enough to act on
QUICK = {"steps": 1}
WEBHOOK = r"/webhooks/\d+/[^/]+(/messages/[^/]+)?"


# ---- helpers -------------------------------------------------------------------------------------------------

class Jobs:
    """The /imagine interactions of one fault and how each ended."""

    def __init__(self, env: BotRun) -> None:
        self.env = env
        self.recs: list[InteractionRecord] = []
        self.n = 0

    async def send(self, user: FakeMember, options: dict[str, Any], prompt: str = "fault") -> InteractionRecord:
        self.n += 1
        rec = await self.env.fake.slash(user=user, name="imagine",
                                        options={"prompt": f"{prompt} {self.n}", "seed": self.n, **options})
        self.recs.append(rec)
        return rec

    async def wait_ended(self, timeout: float, recs: list[InteractionRecord] | None = None) -> dict[int, Outcome]:
        """Poll until every interaction ended or ``timeout``; returns the last outcome of each."""
        recs = self.recs if recs is None else recs
        deadline = time.monotonic() + timeout
        while True:
            states = {rec.id: outcome(rec) for rec in recs}
            if all(s.state != "pending" for s in states.values()) or time.monotonic() > deadline:
                return states
            if self.env.bot.running():
                self.env.bot.check_alive()
            await asyncio.sleep(0.2)


def db_rows(env: BotRun) -> list[sqlite3.Row]:
    with contextlib.closing(sqlite3.connect(f"file:{env.bot.database}?mode=ro", uri=True, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT id, status, interaction_token FROM jobs ORDER BY id").fetchall()


def unfinished_rows(env: BotRun, since_id: int) -> dict[int, str | None]:
    """Job id -> interaction token of rows above ``since_id`` not done/failed/cancelled (the token is kept until
    the job finishes, which ties a row to its interaction)."""
    return {r["id"]: r["interaction_token"] for r in db_rows(env)
            if r["id"] > since_id and r["status"] not in ("done", "failed", "cancelled")}


def last_job_id(env: BotRun) -> int:
    rows = db_rows(env)
    return rows[-1]["id"] if rows else 0


async def wait_running(env: BotRun, since_id: int, timeout: float = 90.0) -> int:
    """A job id above ``since_id`` that the bot marked running (the engine started it)."""

    def running() -> int | None:
        return next((r["id"] for r in db_rows(env) if r["id"] > since_id and r["status"] == "running"), None)

    return int(await env.bot.wait(running, timeout, "a job to be running"))


async def healthy_after(env: BotRun, jobs: Jobs) -> bool:
    """A fresh job renders to an image after the fault."""
    rec = await jobs.send(env.fake.member_plain, QUICK, "after the fault")
    return (await jobs.wait_ended(120, [rec]))[rec.id].state == "image"


def lost_jobs(jobs: Jobs, states: dict[int, Outcome], env: BotRun, since_id: int) -> tuple[set[int], list[int]]:
    """Interactions whose job is lost (message still pending, or its row unfinished) and unfinished rows that
    belong to no interaction of this fault."""
    stuck = unfinished_rows(env, since_id)
    stuck_tokens = {t for t in stuck.values() if t}
    recs = [rec for rec in jobs.recs if rec.id in states]
    bad = {rec.id for rec in recs if states[rec.id].state == "pending" or rec.token in stuck_tokens}
    known = {rec.token for rec in jobs.recs}
    return bad, [i for i, t in stuck.items() if t not in known]


def report(fault: str, method: str, injected: int, recovered: int | None, jobs: Jobs, states: dict[int, Outcome],
           env: BotRun, since_id: int, affected: list[InteractionRecord] | None = None, **extra: Any) -> dict[str, Any]:
    """One fault's figures; ``recovered=None`` means: the ``affected`` jobs that ended and are not lost."""
    stuck_rows = unfinished_rows(env, since_id)
    bad, orphans = lost_jobs(jobs, states, env, since_id)
    if recovered is None:
        recovered = sum(1 for rec in affected or [] if rec.id not in bad)
    pending = [iid for iid, s in states.items() if s.state == "pending"]
    failed = sorted({s.text.strip()[:160] for s in states.values() if s.state == "failed"})
    out = {"fault": fault, "method": method, "injected": injected, "recovered": recovered,
           "lost": len(bad) + len(orphans), "jobs": len(states),
           "images": sum(s.state == "image" for s in states.values()),
           "failed_with_message": sum(s.state == "failed" for s in states.values()), "messages": failed[:4],
           "stuck_messages": [states[i].text[:160] for i in pending][:4], "unfinished_db_rows": sorted(stuck_rows), **extra}
    out["summary"] = f"{injected} injected, {recovered} recovered, {out['lost']} lost"
    progress(f"{fault}: {out['summary']}")
    return out


# ---- the faults ----------------------------------------------------------------------------------------------

async def worker_kill(env: BotRun, args: argparse.Namespace) -> dict[str, Any]:
    since, jobs, recovered = last_job_id(env), Jobs(env), 0
    users = env.members
    for round_ in range(args.rounds):
        before = last_job_id(env)
        batch = [await jobs.send(users[i % len(users)], SLOW, "worker kill") for i in range(args.per_round)]
        await wait_running(env, before)
        old = env.worker_pid()
        assert old is not None
        os.kill(old, signal.SIGKILL)
        progress(f"worker_kill round {round_ + 1}: killed worker {old}")
        new = await env.bot.wait_worker(120, not_pid=old)
        states = await jobs.wait_ended(args.timeout, batch)
        ended = all(s.state != "pending" for s in states.values()) and not unfinished_rows(env, before)
        recovered += int(new != old and ended)
    states = await jobs.wait_ended(5)
    return report("worker_kill", "SIGKILL to the engine worker while a job renders", args.rounds, recovered, jobs,
                  states, env, since, healthy_after=await healthy_after(env, jobs))


async def discord_storm(env: BotRun, args: argparse.Namespace) -> dict[str, Any]:
    fake, since, jobs = env.fake, last_job_id(env), Jobs(env)
    hits: list[tuple[int, str]] = []  # (status, path) of every failure served
    original = fake.take_injection

    def take(method: str, path: str) -> Any:
        inj = original(method, path)
        if inj is not None:
            hits.append((inj.status, path))
        return inj

    fake.take_injection = take  # type: ignore[method-assign]
    try:
        n = args.per_round * args.rounds
        for status, times in ((429, 2 * n), (500, n), (503, n)):
            fake.inject("*", WEBHOOK, status=status, times=times, retry_after=0.2)
        for i in range(n):
            await jobs.send(env.members[i % len(env.members)], {"steps": 4}, "storm")
        states = await jobs.wait_ended(args.timeout)
    finally:
        fake.take_injection = original  # type: ignore[method-assign]
        fake.injections.clear()
    by_token = {rec.token: states[rec.id] for rec in jobs.recs}
    recovered = sum(1 for _, path in hits if any(t in path and s.state == "image" for t, s in by_token.items()))
    counts = {str(code): sum(1 for c, _ in hits if c == code) for code in (429, 500, 503)}
    return report("discord_storm", "fake answers 429/500/503 on the interaction webhook", len(hits), recovered, jobs,
                  states, env, since, served=counts, healthy_after=await healthy_after(env, jobs))


async def sqlite_locked(env: BotRun, args: argparse.Namespace) -> dict[str, Any]:
    since, jobs, events = last_job_id(env), Jobs(env), 0
    holder_code = ("import sqlite3, sys, time\n"
                   "conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
                   "conn.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\n"
                   "time.sleep(float(sys.argv[2]))\nconn.execute('COMMIT')\n")
    affected: list[InteractionRecord] = []
    for _ in range(args.rounds):
        # Jobs that will finish (mark_running / mark_done) while the lock is held...
        affected += [await jobs.send(env.members[i % len(env.members)], {"steps": 4}, "under lock")
                     for i in range(args.per_round)]
        await wait_running(env, last_job_id(env) - args.per_round)
        holder = subprocess.Popen([sys.executable, "-c", holder_code, str(env.bot.database), str(args.hold)],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        progress(f"sqlite_locked: exclusive lock held by pid {holder.pid} for {args.hold}s")
        # ...and new commands arriving while it is held (the bot's first write is the job row).
        affected += [await jobs.send(env.members[i % len(env.members)], QUICK, "while locked")
                     for i in range(args.per_round)]
        await asyncio.to_thread(holder.wait, args.hold + 30)
        events += 1
    states = await jobs.wait_ended(args.timeout)
    return report("sqlite_locked", f"another process holds BEGIN EXCLUSIVE for {args.hold}s; bot busy_timeout 500 ms",
                  len(affected), None, jobs, states, env, since, affected, lock_episodes=events,
                  healthy_after=await healthy_after(env, jobs))


async def disk_full(env: BotRun, args: argparse.Namespace) -> dict[str, Any]:
    since, jobs = last_job_id(env), Jobs(env)
    images = env.bot.images_dir
    images.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(images)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        return {"fault": "disk_full", "skipped": f"cannot mount a tmpfs: {mounted.stderr.strip()}"}
    try:
        filler = images / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        progress(f"disk_full: {images} is a full 256 KiB tmpfs")
        n = args.per_round * args.rounds
        for i in range(n):
            await jobs.send(env.members[i % len(env.members)], QUICK, "disk full")
        states = await jobs.wait_ended(args.timeout)
        affected = list(jobs.recs)
        filler.unlink()
        progress("disk_full: space freed")
        healthy = await healthy_after(env, jobs)
    finally:
        subprocess.run(["umount", "-l", str(images)], check=False)
    return report("disk_full", "256 KiB tmpfs over data/images, filled (ENOSPC on the image write)", n, None, jobs,
                  states, env, since, affected, healthy_after=healthy)


async def bot_kill(env: BotRun, args: argparse.Namespace) -> dict[str, Any]:
    fake, since, jobs, recovered = env.fake, last_job_id(env), Jobs(env), 0
    for round_ in range(args.rounds):
        before = last_job_id(env)
        batch = [await jobs.send(env.members[i % len(env.members)], SLOW, "bot kill") for i in range(args.per_round)]
        await wait_running(env, before)
        leftovers = await env.bot.crash()
        progress(f"bot_kill round {round_ + 1}: bot killed (worker stragglers killed: {leftovers})")
        await fake.wait_for(lambda: not fake.gateway.connected, 15, what="the fake to see the session drop")
        await env.bot.start(180)
        await env.bot.wait_worker(180)
        states = await jobs.wait_ended(args.timeout, batch)
        ok = all(s.state != "pending" for s in states.values()) and not unfinished_rows(env, before)
        recovered += int(ok)
    states = await jobs.wait_ended(5)
    return report("bot_kill", "SIGKILL to the bot while jobs render, then start it again on the same folder",
                  args.rounds, recovered, jobs, states, env, since, healthy_after=await healthy_after(env, jobs))


RUNNERS: dict[str, Callable[[BotRun, argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "worker_kill": worker_kill, "discord_storm": discord_storm, "sqlite_locked": sqlite_locked,
    "disk_full": disk_full, "bot_kill": bot_kill,
}


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    limits = {"queue_max": 100, "queue_per_user": 20, "rate_per_minute": 10_000.0, "rate_burst": 1000,
              "max_size": 128}
    results = []
    async with bot_run(root, users=4, limits=limits, storage={"busy_timeout_ms": 500},
                       folder_models=zoo_models(2)) as env:
        for name in args.only:  # bot_kill last: it replaces the process
            progress(f"--- {name}")
            try:
                results.append(await RUNNERS[name](env, args))
            except Exception as exc:  # a fault the bot did not survive is a result, not a crash of the bench
                progress(f"{name} aborted: {exc!r}")
                results.append({"fault": name, "aborted": repr(exc)[:500], "log_tail": env.bot.log_tail(20)})
        errors = [line for line in env.bot.log_text().splitlines() if " ERROR " in line]
    return {"faults": results, "all_recovered": all(r.get("lost") == 0 and r.get("injected") == r.get("recovered")
                                                     for r in results if "skipped" not in r),
            "bot_error_lines": len(errors), "bot_error_samples": errors[:6], "checkpoint": "tiny", "device": "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(FAULTS), help=f"comma-separated subset of {','.join(FAULTS)}")
    parser.add_argument("--rounds", type=int, default=2, help="fault events per fault")
    parser.add_argument("--per-round", type=int, default=3, help="jobs in flight per event")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds the SQLite lock is held")
    parser.add_argument("--timeout", type=float, default=180.0, help="deadline for the jobs of one event to end")
    parser.add_argument("--keep", type=Path, help="run the bot in this new folder and keep it (log, database)")
    args = parser.parse_args()
    args.only = [f for f in FAULTS if f in set(args.only.split(","))]
    run_and_emit("faults", run, args, keep=args.keep)


if __name__ == "__main__":
    main()
