"""How the engine client reaches its workers: the seam between job logic and processes, sockets or brokers.

Why an interface: the client (fair queue, batches, supervision) must not care whether its worker is a child
process on a socket pair (:mod:`engine.client.local_worker`, the default) or a GPU worker elsewhere behind a
broker.  A transport starts (or attaches to) a worker and hands back a :class:`WorkerLink`; everything the worker
says arrives in the client's inbox as ``(generation, message)``, and the link's end as :class:`Exited`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from engine.protocol import WorkerConfig

__all__ = ["Exited", "Inbox", "WorkerLink", "WorkerTransport"]

#: Messages from workers, tagged with the generation of the link that received them (older links are ignored).
Inbox = asyncio.Queue[tuple[int, object]]


@dataclass(frozen=True, slots=True)
class Exited:
    """The worker behind a link is gone (``code`` is its exit status when known)."""

    code: int | None


class WorkerLink(Protocol):
    """One started worker, as the client sees it."""

    @property
    def pid(self) -> int: ...

    def send(self, message: object) -> None:
        """Queue a protocol message for the worker (never blocks the event loop)."""

    def kill(self) -> None:
        """End the worker at once (it may be stuck) and close the link."""

    async def wait_exit(self, timeout: float) -> int | None:
        """The worker's exit code if it ends by itself within ``timeout`` seconds, else None."""


class WorkerTransport(Protocol):
    """Starts workers; the client asks for a new one after each loss."""

    def start(self, gen: int, config: WorkerConfig, inbox: Inbox) -> WorkerLink: ...
