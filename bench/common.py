"""Shared pieces of the whole-bot benchmarks (load, soak, faults): launch, observe, measure, report.

Why one module: the three scripts run the same thing — the real bot (``python -m bot``) against the fake Discord
server on loopback, with the ``tiny`` model — and must measure it the same way.  The bot process and the fake come
from the end-to-end suite (``tests/e2e/botproc.py``, ``tests/e2e/fake_discord``) so a figure here and a test there
exercise the same code.  Nothing in this module talks to anything but 127.0.0.1.

Measurement choices (each script says which figures use which):

* **first response**: the fake's REST middleware appends every request to ``fake.requests``; we swap that list for
  :class:`TimedRequests`, which stamps the arrival of each ``/interactions/{id}/{token}/callback``.  Latency = that
  stamp minus the moment just before the interaction was dispatched on the gateway.
* **bot event-loop lag**: discord.py's heartbeat thread schedules each heartbeat on the bot's event loop and waits
  for it to be sent before sleeping ``heartbeat_interval`` again, so the gap between two heartbeats arriving at the
  fake is ``interval + time the bot's loop took to run the send``.  :class:`HeartbeatClock` stamps arrivals; lag =
  gap − interval.  The fake runs in *our* loop, whose own lag (:class:`LoopLag`) is reported next to it, because it
  can only add to what we see.
* **memory / file descriptors**: ``VmRSS`` from ``/proc/PID/status`` and the entries of ``/proc/PID/fd``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.botproc import FIXTURE_ZOO, FOLDER_MODELS, BotProcess, config_for  # noqa: E402
from tests.e2e.fake_discord import FakeDiscord, FakeMember, FakeUser, InteractionRecord, StoredMessage  # noqa: E402

__all__ = [
    "FIXTURE_ZOO", "FOLDER_MODELS", "ROOT", "BotProcess", "BotRun", "HeartbeatClock", "LoopLag", "Outcome",
    "TimedRequests", "add_members", "bot_run", "command_line", "dir_bytes", "emit", "outcome", "percentiles",
    "proc_snapshot", "progress", "run_and_emit", "zoo_models",
]

_T0 = time.monotonic()


# ---- reporting ---------------------------------------------------------------------------------------------

def progress(message: str) -> None:
    """Human-readable progress on stderr (stdout carries only the JSON line)."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def command_line() -> str:
    """The command that produced a figure, as a reader would type it from the repository root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    prefix = f"OMP_NUM_THREADS={threads} " if threads else ""
    return prefix + " ".join(shlex.quote(a) for a in [".venv/bin/python", script, *sys.argv[1:]])


def emit(bench: str, figures: Mapping[str, Any]) -> None:
    """The one JSON line a benchmark prints: its name, its figures, the command."""
    print(json.dumps({"bench": bench, **figures, "command": command_line()}), flush=True)


def run_and_emit(bench: str, run: Callable[[argparse.Namespace, Path], Awaitable[dict[str, Any]]],
                 args: argparse.Namespace, keep: Path | None = None) -> dict[str, Any]:
    """``run(args, folder)`` in a fresh temp folder (or in ``keep``, left in place), then :func:`emit` its figures."""
    if keep is not None:
        figures = asyncio.run(run(args, keep))
    else:
        with tempfile.TemporaryDirectory(prefix=f"hc-{bench}-") as tmp:
            figures = asyncio.run(run(args, Path(tmp)))
    emit(bench, figures)
    return figures


def percentiles(values: Iterable[float], qs: Iterable[int] = (50, 95, 99), digits: int = 3) -> dict[str, Any]:
    """Nearest-rank percentiles plus n and max; an empty input gives n=0 and nothing else."""
    data = sorted(values)
    out: dict[str, Any] = {"n": len(data)}
    if not data:
        return out
    for q in qs:
        rank = max(1, -(-q * len(data) // 100))  # ceil(q% of n), at least the first
        out[f"p{q}"] = round(data[rank - 1], digits)
    out["max"] = round(data[-1], digits)
    return out


# ---- processes and files -------------------------------------------------------------------------------------

def proc_snapshot(pid: int) -> dict[str, float]:
    """Resident memory (MiB) and open file descriptors of a live process, read from /proc."""
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    return {"rss_mib": round(rss_kib / 1024, 1), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def dir_bytes(path: Path) -> int:
    """Total size of the regular files under ``path`` (0 when it does not exist)."""
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def zoo_models(count: int) -> dict[str, str]:
    """``count`` drop-in names -> zoo fixture files (tiny SD1.x hypernets that apply to the ``tiny`` model)."""
    files = sorted(FIXTURE_ZOO.glob("*.pt"))
    return {f"net_{f.stem.removeprefix('pub_zoo_')}": f.name for f in files[:count]}


# ---- observing the fake --------------------------------------------------------------------------------------

class TimedRequests(list[tuple[str, str]]):
    """Drop-in for ``fake.requests`` that also stamps the first callback of each interaction (monotonic time)."""

    def __init__(self, existing: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(existing)
        self.first_callback: dict[int, float] = {}

    def append(self, item: tuple[str, str]) -> None:
        now = time.monotonic()
        super().append(item)
        method, path = item
        parts = path.split("/")
        if method == "POST" and len(parts) == 5 and parts[1] == "interactions" and parts[4] == "callback":
            with contextlib.suppress(ValueError):
                self.first_callback.setdefault(int(parts[2]), now)

    @classmethod
    def install(cls, fake: FakeDiscord) -> TimedRequests:
        timed = cls(fake.requests)
        fake.requests = timed
        return timed


class HeartbeatClock:
    """Stamps each gateway heartbeat (op 1) the bot sends; see the module docstring for what the gaps mean."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.interval_s = fake.gateway.heartbeat_interval_ms / 1000
        self.arrivals: list[float] = []
        gateway = fake.gateway
        original = gateway._on_frame

        async def on_frame(ws: Any, frame: dict[str, Any]) -> None:
            if frame.get("op") == 1:
                self.arrivals.append(time.monotonic())
            await original(ws, frame)

        gateway._on_frame = on_frame  # type: ignore[method-assign]

    def lags(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        """Excess of each inter-heartbeat gap over the interval, for gaps that end inside [since, until]."""
        pairs = zip(self.arrivals, self.arrivals[1:], strict=False)
        return [max(0.0, b - a - self.interval_s) for a, b in pairs if since <= b <= until and a >= since - 5]


class LoopLag:
    """This process's own event-loop lag: how late a 20 ms sleep wakes up (the fake shares this loop)."""

    def __init__(self, period_s: float = 0.02) -> None:
        self.period_s = period_s
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(self.period_s)
            self.samples.append(max(0.0, time.monotonic() - t - self.period_s))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def add_members(fake: FakeDiscord, count: int, prefix: str = "user") -> list[FakeMember]:
    """Plain members (only @everyone) added to the fake guild; call before the bot connects so GUILD_CREATE has
    them."""
    members = []
    for i in range(count):
        member = FakeMember(FakeUser(fake.ids.next(), f"{prefix}{i:03d}"), [])
        fake.guild.members[member.id] = member
        members.append(member)
    return members


# ---- how an /imagine ended ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """The state of an /imagine interaction as a user sees it: ``image``, ``failed`` (a clear message), or
    ``pending`` (still thinking / queued / rendering)."""

    state: str
    text: str = ""


FAILURE_MARKS = ("❌", "⚠️", "🚫")


def _messages(rec: InteractionRecord) -> list[StoredMessage]:
    return ([rec.original] if rec.original is not None else []) + list(rec.followups)


def outcome(rec: InteractionRecord) -> Outcome:
    """Classify ``rec``: a final image with buttons, a clear refusal/failure, or still pending.

    Only the interaction's own messages are read: these runs finish well inside the 15-minute token, so the bot
    never has to move a job to a channel message (a job that did would count as pending, i.e. lost)."""
    for msg in _messages(rec):
        if msg.loading:
            continue
        if msg.attachments and msg.buttons():
            return Outcome("image")
        if msg.ephemeral and msg.content:
            return Outcome("failed", msg.content)
        if any(line.lstrip().startswith(FAILURE_MARKS) for line in msg.content.splitlines()):
            return Outcome("failed", msg.content)
    return Outcome("pending", rec.original.content if rec.original is not None else "")


# ---- running the bot ---------------------------------------------------------------------------------------------

@dataclass
class BotRun:
    """A started fake + bot, and the instruments attached to the fake."""

    fake: FakeDiscord
    bot: BotProcess
    timed: TimedRequests
    heartbeats: HeartbeatClock
    loop_lag: LoopLag
    members: list[FakeMember] = field(default_factory=list)

    def worker_pid(self) -> int | None:
        pids = self.bot.worker_pids()
        return pids[0] if len(pids) == 1 else None


@contextlib.asynccontextmanager
async def bot_run(root: Path, *, users: int = 0, limits: Mapping[str, Any] | None = None,
                  engine: Mapping[str, Any] | None = None, storage: Mapping[str, Any] | None = None,
                  logging: Mapping[str, Any] | None = None, folder_models: Mapping[str, str] = FOLDER_MODELS,
                  heartbeat_ms: int = 41250, start_timeout: float = 180.0) -> AsyncIterator[BotRun]:
    """The fake Discord (with ``users`` extra plain members) and the real bot process in ``root``; stops both."""
    async with FakeDiscord(heartbeat_interval_ms=heartbeat_ms) as fake:
        members = add_members(fake, users)
        timed = TimedRequests.install(fake)
        heartbeats = HeartbeatClock(fake)
        config = config_for(fake, limits=limits, engine=engine)
        config["storage"].update(storage or {})
        config["logging"].update(logging or {})
        bot = BotProcess(root, fake, config, folder_models=folder_models)
        lag = LoopLag()
        lag.start()
        try:
            progress(f"starting the bot in {root}")
            await bot.start(start_timeout)
            await bot.wait_worker(start_timeout)
            await _wait_commands(fake, bot)
            progress("bot ready")
            yield BotRun(fake, bot, timed, heartbeats, lag, members)
        finally:
            await lag.stop()
            await bot.stop()


async def _wait_commands(fake: FakeDiscord, bot: BotProcess, timeout: float = 60.0) -> None:
    """Until /imagine is synced to the guild (the driver refuses commands the bot has not published)."""

    def synced() -> bool:
        return any(c.get("name") == "imagine" for c in fake.guild_commands.get(fake.guild.id, []))

    await bot.wait(synced, timeout, "/imagine to be synced to the fake guild")
