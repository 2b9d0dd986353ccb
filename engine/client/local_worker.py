"""The local transport: one worker process as a child of the bot, and the socket pair between them.

Why separate from the client: this is the only code that touches OS processes, sockets and threads;
the client above it deals in jobs and batches through :class:`engine.client.transport.WorkerLink`. The worker is a
fresh interpreter (``python -m engine.worker``) started with an explicitly scrubbed environment, so the bot token
can never reach it.  Messages are pickled envelopes: both ends are our own processes from the same checkout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path

from engine.client.transport import Exited, Inbox
from engine.protocol import PROTOCOL_VERSION, Envelope, WorkerConfig, wrap

__all__ = ["LocalWorker", "LocalWorkers", "worker_env"]

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|CREDENTIAL|PRIVATE", re.IGNORECASE)
_FAULTS_ENV = "HYPERCORD_TEST_FAULTS"


def worker_env(base: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: ``base`` minus anything Discord- or secret-like, plus ``extra``.

    Test fault injection is dropped from ``base`` too: it reaches a worker only when a test passes
    it explicitly in ``extra``.
    """
    env = {k: v for k, v in base.items() if not (k.startswith("DISCORD_") or _SECRET_NAME.search(k) or k == _FAULTS_ENV)}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    leaked = [k for k in env if k.startswith("DISCORD_") or _SECRET_NAME.search(k)]
    assert not leaked, f"refusing to pass secret-like variables to the worker: {leaked}"
    return env


class LocalWorker:
    """One worker process and its two pipe threads; messages reach the loop tagged with ``gen``."""

    def __init__(self, gen: int, config: WorkerConfig, env: Mapping[str, str], loop: asyncio.AbstractEventLoop,
                 inbox: Inbox) -> None:
        self.gen = gen
        parent, child = socket.socketpair()
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "engine.worker", "--fd", str(child.fileno())],
                                         env=dict(env), pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self._out: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._loop, self._inbox = loop, inbox
        self.send(config)
        threading.Thread(target=self._read, name=f"engine-read-{gen}", daemon=True).start()
        threading.Thread(target=self._write, name=f"engine-write-{gen}", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit code once the process ended by itself within ``timeout`` seconds, else None."""
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            return None

    def send(self, message: object) -> None:
        self._out.put(wrap(message))

    def _write(self) -> None:
        while (env := self._out.get()) is not None:
            try:
                self.conn.send(env)
            except OSError:
                return

    def _read(self) -> None:
        while True:
            try:
                env = self.conn.recv()
            except (EOFError, OSError):
                break
            if isinstance(env, Envelope) and env.version == PROTOCOL_VERSION:
                self._post(env.message)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        self._post(Exited(code))

    def _post(self, message: object) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed during interpreter shutdown
            self._loop.call_soon_threadsafe(self._inbox.put_nowait, (self.gen, message))

    def kill(self) -> None:
        """SIGKILL (works on a SIGSTOPped process too) and close the pipe."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self._out.put(None)
        with contextlib.suppress(OSError):
            self.conn.close()


class LocalWorkers:
    """Starts workers as child processes (the default transport): ``python -m engine.worker --fd N``.

    ``extra_env`` is added to the scrubbed copy of this process's environment (tests pass fault injection here).
    """

    def __init__(self, extra_env: Mapping[str, str] | None = None) -> None:
        self._extra_env = dict(extra_env or {})

    def start(self, gen: int, config: WorkerConfig, inbox: Inbox) -> LocalWorker:
        return LocalWorker(gen, config, worker_env(os.environ, self._extra_env), asyncio.get_running_loop(), inbox)
