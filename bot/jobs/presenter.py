"""What the job service tells the user about a job, as typed values, and the protocol of whoever shows it.

Why a protocol: the job lifecycle (store, submit, follow, record the outcome, resume after a restart) has rules of
its own that tests should check without Discord, and Discord's rules (interaction tokens, edit rate limits, upload
sizes, permissions) are the presentation's business.  :class:`~bot.jobs.service.JobService` reports
:data:`JobState` updates and one :data:`Outcome` per job; ``cogs`` implements :class:`JobPresenter` over Discord
messages, and tests implement it with a recorder.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bot.store import Job

__all__ = ["Cancelled", "Done", "Failed", "JobPresenter", "JobState", "Outcome", "Paused", "PresenterFor", "Rendering",
           "Waiting"]


@dataclass(frozen=True, slots=True)
class Waiting:
    """Queued; ``position`` jobs will be served first (0 = next), None until the engine has said."""

    position: int | None = None


@dataclass(frozen=True, slots=True)
class Rendering:
    """On the worker; ``step`` of ``total`` sampling steps done (both 0 until the first step)."""

    step: int = 0
    total: int = 0


JobState = Waiting | Rendering


@dataclass(frozen=True, slots=True)
class Done:
    """The images, in the order of their seeds.  The job passed with it is the record as stored (status done)."""

    images: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Failed:
    """The job did not render; ``kind`` is the stored ``error_kind``, ``message`` a complete text for the user.

    ``kind`` "restart": a job a previous bot process left unfinished that will not run (``message`` says why)."""

    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class Cancelled:
    """Cancelled on purpose; ``by`` names who did it (a mention), or is empty."""

    by: str = ""


@dataclass(frozen=True, slots=True)
class Paused:
    """The bot stopped before the job ran; it stays queued, and the next bot process resumes it — once: a job whose
    ``attempts`` show it was resumed already ends as :class:`Failed` ("restart") instead."""


Outcome = Done | Failed | Cancelled | Paused


class JobPresenter(Protocol):
    """Shows one job to its user (the cogs' Discord message; a recorder in tests)."""

    def show(self, job: Job, state: JobState) -> None:
        """A new state; called often, returns at once (a presenter may coalesce updates).  ``job.attempts`` above 0
        means a new bot process resumed the job (a presenter says so)."""

    async def finish(self, job: Job, outcome: Outcome) -> int | None:
        """The final state (called once; never for a job :meth:`JobService.start` refused — the caller answers that
        privately).  Returns the id of the message that now shows the job when that changed or became known, for
        buttons and ``/show``; None otherwise.  Must not raise for delivery problems."""


#: A presenter for a job found unfinished after a restart (None when it can no longer be shown anywhere).
PresenterFor = Callable[[Job], Awaitable[JobPresenter | None]]
