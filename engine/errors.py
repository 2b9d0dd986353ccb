"""Errors the engine's torch-free side raises (client, fair queue, hypernet cache, intake, names).

Why a hierarchy with user-safe messages: the bot renders ``str(error)`` of any ``EngineError`` straight
to the user, so every message here is written for a Discord user (no paths, no tracebacks, no ids
beyond the job's own), and the bot's single error handler only needs ``except EngineError``.
This module imports nothing from the rest of the engine, so every other module can import it.
"""

from __future__ import annotations

__all__ = ["BadRequest", "EngineError", "InvalidModelFile", "QueueFull", "UnknownJob", "UserQueueFull",
           "WorkerUnavailable"]


class EngineError(Exception):
    """Base class; ``str(err)`` is safe to show a user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class QueueFull(EngineError):
    """The whole queue is at its cap; nothing was queued.  ``retry_hint`` says when trying again makes sense."""

    def __init__(self, message: str, retry_hint: str = "Try again in a minute.") -> None:
        super().__init__(message)
        self.retry_hint = retry_hint

    def __str__(self) -> str:
        return f"{self.message} {self.retry_hint}".strip()


class UserQueueFull(QueueFull):
    """This user already has as many jobs queued or running as allowed; nothing was queued."""


class WorkerUnavailable(EngineError):
    """The engine is not taking jobs (not started, shutting down, or its worker cannot start)."""


class UnknownJob(EngineError):
    """A job id that this client does not know (finished long ago, or never submitted here)."""


class BadRequest(EngineError):
    """A request the worker cannot render as asked (e.g. a hypernet file missing from the store)."""


class InvalidModelFile(BadRequest):
    """A model file that is missing, unreadable or not in the canonical layout."""
