"""Launch, kill and restart the real bot (``python -m bot``) as a child process pointed at the fake Discord.

Why a child process: the end-to-end suite checks what a server owner runs — the entry point, config loading,
logging, the engine worker as a grandchild, SQLite on disk — and crash recovery, which needs a process that can
really die (SIGKILL) and come back on the same files.  The bot only learns the fake's URLs through its ordinary
settings (``config.toml`` in its working directory, the token through ``DISCORD_TOKEN``).

Readiness is "logged in" in the bot's log *and* a gateway session on the fake; both are polled with deadlines,
never slept on.  Everything the process writes goes to ``bot.log`` in its folder; :meth:`BotProcess.log_tail` is
what a failing test prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.e2e.fake_discord import FakeDiscord

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_ZOO = REPO_ROOT / "tests" / "fixtures" / "hypernetworks" / "zoo"
#: Drop-in models the bot finds in its models folder at start: name users type -> fixture file (tiny SD1.x files).
FOLDER_MODELS: Mapping[str, str] = {
    "waterElemental_10": "pub_zoo_relu.pt",
    "animeStyle": "pub_zoo_gelu.pt",
}
READY_LINE = "logged in as"

#: Limits sized for speed on a 2-core CPU with the tiny checkpoint.
DEFAULT_LIMITS: Mapping[str, Any] = {
    "min_steps": 1, "max_steps": 8, "default_steps": 4, "min_size": 64, "max_size": 128,
    "default_width": 64, "default_height": 64, "max_count": 2, "min_multiplier": -1.0, "max_multiplier": 2.0,
    "multiplier_step": 0.1, "queue_max": 50, "queue_per_user": 5, "rate_per_minute": 10_000.0, "rate_burst": 1000,
}
DEFAULT_ENGINE: Mapping[str, Any] = {
    "device": "cpu", "dtype": "float32", "hypernet_dtype": "float32", "max_batch": 2, "progress_interval_s": 0.1,
    "heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 30.0, "start_timeout_s": 120.0,
}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def render_config(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """A config.toml text from ``{section: {key: value}}`` (only the small subset of TOML we need)."""
    lines: list[str] = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in keys.items())
        lines.append("")
    return "\n".join(lines)


def config_for(fake: FakeDiscord, *, limits: Mapping[str, Any] | None = None,
               engine: Mapping[str, Any] | None = None, intake: Mapping[str, Any] | None = None,
               log_level: str = "INFO") -> dict[str, dict[str, Any]]:
    """The bot's settings for one test module: the fake's URLs, guild and owner; relative paths in the bot's cwd."""
    return {
        "discord": {"owner_ids": [fake.member_owner.id], "dev_guild_ids": [fake.guild.id],
                    "rest_base_url": fake.rest_base, "gateway_url": fake.gateway_url},
        "storage": {"database": "data/hypercord.sqlite3", "images_dir": "data/images"},
        "models": {"hypernetwork_dir": "models/hypernetworks", "store_dir": "models/store", "checkpoint": "tiny",
                   "model_name": "tiny"},
        "checkpoints.models.tiny-b": {"source": "tiny-b", "display_name": "Tiny B"},  # a second built-in checkpoint
        "intake": {"allowed_hosts": ["127.0.0.1", "localhost"], "allow_private_addresses": True, "max_file_mb": 8,
                   "download_timeout_s": 30.0, "sandbox_cpu_s": 60, **(intake or {})},
        "engine": {**DEFAULT_ENGINE, **(engine or {})},
        "limits": {**DEFAULT_LIMITS, **(limits or {})},
        "logging": {"level": log_level, "status_interval_s": 0},
    }


def _read_children(pid: int) -> list[int]:
    """Direct children of ``pid`` from /proc (psutil is not available)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out.extend(int(p) for p in (task / "children").read_text().split())
    return out


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, parents before children."""
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in _read_children(stack.pop()):
            if child not in found:
                found.append(child)
                stack.append(child)
    return found


def cmdline(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return [p.decode(errors="replace") for p in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if p]
    return []


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] not in ("Z", "X")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the test process dies, so an aborted run leaves no bot behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class BotDied(AssertionError):
    """The bot process exited when the test expected it to run."""


class BotProcess:
    """One bot installation (a folder with config.toml, data/ and models/) and the process running it."""

    def __init__(self, root: Path, fake: FakeDiscord, config: Mapping[str, Mapping[str, Any]],
                 *, folder_models: Mapping[str, str] = FOLDER_MODELS, extra_env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.fake = fake
        self.config = config
        self.log_path = root / "bot.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log_offset = 0  # where the current process's log begins
        self._extra_env = dict(extra_env or {})
        self._install(folder_models)

    # ---- files ---------------------------------------------------------------------------------------

    def _install(self, folder_models: Mapping[str, str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "config.toml").write_text(render_config(self.config), encoding="utf-8")
        models = self.root / "models" / "hypernetworks"
        models.mkdir(parents=True, exist_ok=True)
        for name, fixture in folder_models.items():
            shutil.copyfile(FIXTURE_ZOO / fixture, models / f"{name}.pt")

    @property
    def database(self) -> Path:
        return self.root / "data" / "hypercord.sqlite3"

    @property
    def images_dir(self) -> Path:
        return self.root / "data" / "images"

    def env(self) -> dict[str, str]:
        """The bot's environment: ours minus any HYPERCORD_*/DISCORD_* setting, plus the fake's token."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HYPERCORD_", "DISCORD_"))}
        env.update({"DISCORD_TOKEN": self.fake.token, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)})
        env.update(self._extra_env)
        return env

    # ---- log -----------------------------------------------------------------------------------------

    def log_text(self, *, since: int = 0) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(since)
                return fh.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ---- process -------------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the bot was never started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BotDied(f"the bot exited with code {self.proc.returncode}; log tail:\n{self.log_tail()}")

    def launch(self) -> None:
        """Start ``python -m bot`` in the install folder (returns at once; see :meth:`wait_ready`)."""
        assert not self.running(), "the bot is already running"
        self._log_offset = self.log_size()
        with self.log_path.open("ab") as log:
            log.write(f"===== test launcher: start #{self.starts + 1} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen([sys.executable, "-m", "bot"], cwd=self.root, env=self.env(),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        self.starts += 1

    async def wait_ready(self, timeout: float = 90.0) -> None:
        """Until this process logged in (its log says so) and holds a gateway session on the fake."""
        offset = self._log_offset

        def ready() -> bool:
            self.check_alive()
            return READY_LINE in self.log_text(since=offset) and self.fake.gateway.connected

        await self.wait(ready, timeout, "the bot to log in and connect to the fake gateway")

    async def start(self, timeout: float = 90.0) -> None:
        self.launch()
        await self.wait_ready(timeout)

    async def wait(self, predicate: Any, timeout: float, what: str) -> Any:
        """``fake.wait_for`` that fails fast if the bot died, and says what the bot logged when it times out."""

        def checked() -> Any:
            self.check_alive()
            return predicate()

        try:
            return await self.fake.wait_for(checked, timeout=timeout, what=what)
        except BotDied:
            raise
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- bot log tail ---\n{self.log_tail()}") from None

    def kill(self, sig: int = signal.SIGKILL) -> list[int]:
        """Send ``sig`` to the bot alone (not its group); returns the descendants it had, for :meth:`reap`."""
        assert self.proc is not None
        kids = descendants(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        return kids

    async def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the bot did not exit within {timeout}s; log tail:\n{self.log_tail()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def reap(self, pids: Sequence[int], timeout: float = 15.0) -> list[int]:
        """Wait for processes the bot left behind to end by themselves; SIGKILL the stragglers. Returns those."""
        deadline = time.monotonic() + timeout
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stragglers = [p for p in pids if alive(p)]
        for pid in stragglers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return stragglers

    async def crash(self) -> list[int]:
        """SIGKILL the bot (no cleanup of any kind) and wait until it and its worker are gone.

        Returns processes that outlived their parent by more than the reap timeout (they were killed)."""
        kids = self.kill(signal.SIGKILL)
        await self.wait_exit()
        return await self.reap(kids)

    async def stop(self, timeout: float = 45.0) -> int | None:
        """SIGTERM and wait (the bot's own clean shutdown); SIGKILL after ``timeout``. Idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        kids = self.kill(signal.SIGTERM)
        try:
            code = await self.wait_exit(timeout)
        except AssertionError:
            kids = self.kill(signal.SIGKILL) + kids
            code = await self.wait_exit(10)
        await self.reap(kids)
        return code

    async def restart(self, timeout: float = 90.0) -> None:
        """Crash-free restart: SIGTERM, wait, start again on the same folder."""
        await self.stop()
        await self.start(timeout)

    # ---- the engine worker -------------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        """Live ``python -m engine.worker`` processes started by this bot."""
        if not self.running():
            return []
        return [p for p in descendants(self.pid) if "engine.worker" in cmdline(p) and alive(p)]

    async def wait_worker(self, timeout: float = 60.0, *, not_pid: int | None = None) -> int:
        """The engine worker's pid, once there is exactly one (and it is not ``not_pid``)."""

        def one() -> int | None:
            pids = [p for p in self.worker_pids() if p != not_pid]
            return pids[0] if len(pids) == 1 else None

        return int(await self.wait(one, timeout, "one engine worker process"))
