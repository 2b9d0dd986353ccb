"""The part of the engine client the bot uses, as a protocol: what the job service and the bot may call.

Why a protocol rather than the concrete class: the bot depends on a handful of calls, and the light unit tests of
the job service replace the engine (the GPU side) with a fake that scripts events; the real
:class:`engine.client.EngineClient` satisfies this protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from engine.client import EngineStatus
from engine.protocol import GenerateRequest, JobEvent

__all__ = ["EngineAPI", "JobEvents"]


class JobEvents(Protocol):
    """One submitted job's events: Queued*, Started, Progress*, then exactly one Result or Failure."""

    def events(self) -> AsyncIterator[JobEvent]: ...


class EngineAPI(Protocol):
    async def start(self) -> None: ...

    async def stop(self, grace_s: float = ...) -> None: ...

    def check_capacity(self, user_id: int) -> None:
        """Raise an ``EngineError`` (queue full, engine not taking jobs) if a job of this user would be refused."""

    def submit(self, request: GenerateRequest) -> JobEvents:
        """Queue a request or raise an ``EngineError``; never blocks."""

    def cancel(self, job_id: int) -> bool:
        """Cancel a queued or running job; False when the engine does not know it."""

    def status(self) -> EngineStatus: ...
