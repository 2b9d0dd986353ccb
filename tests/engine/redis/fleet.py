"""A real redis-server on loopback and a fleet of real standalone workers, for the Redis tier and bench/scale_out.py.

Why helpers and not fixtures only: the tests stop and restart both (Redis mid-run, a worker with ``kill -9``), and
the benchmark starts 1, 2 and 3 workers in one run.  The server runs in a temp folder on a free port, with an
append-only file so a restart keeps its streams, as the compose file configures it.  :class:`Fleet` restarts a
worker that died, like a container's restart policy does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``redis-server`` on 127.0.0.1:<free port> in ``folder``; ``stop`` + ``start`` keep its data (AOF)."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: `apt-get install -y redis-server` (.ci/run does this)")
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"]
        with (self.folder / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(64).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start; see {self.folder / 'redis.log'}")

    def stop(self) -> None:
        """SIGTERM: redis-server flushes its append-only file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class Fleet:
    """Standalone workers ``python -m engine.worker --redis URL``, each with its own (initially empty) model store."""

    def __init__(self, url: str, folder: Path, *, prefix: str, faults: Mapping[str, object] | None = None) -> None:
        self.url, self.folder, self.prefix = url, folder, prefix
        self.faults = json.dumps(dict(faults or {}))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: dict[str, int] = {}
        self._keeper: asyncio.Task[None] | None = None

    def store(self, name: str) -> Path:
        return self.folder / name / "store"

    def start(self, name: str) -> subprocess.Popen[bytes]:
        (self.folder / name).mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HYPERCORD_", "DISCORD_"))}
        env.update({"OMP_NUM_THREADS": "1", "HYPERCORD_TEST_FAULTS": self.faults, "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": str(REPO_ROOT)})
        args = [sys.executable, "-m", "engine.worker", "--redis", self.url, "--prefix", self.prefix, "--name", name,
                "--device", "cpu", "--store", str(self.store(name))]
        with (self.folder / name / "worker.log").open("ab") as log:
            proc = subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.procs[name] = proc
        self.starts[name] = self.starts.get(name, 0) + 1
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.procs[name].pid, sig)

    def log(self, name: str) -> str:
        return (self.folder / name / "worker.log").read_text(errors="replace")

    def keep_running(self) -> None:
        """Restart any worker that exits (a container's ``restart: unless-stopped``)."""

        async def keep() -> None:
            while True:
                for name, proc in list(self.procs.items()):
                    if proc.poll() is not None:
                        self.start(name)
                await asyncio.sleep(0.1)

        self._keeper = asyncio.get_running_loop().create_task(keep())

    async def stop_all(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()
