"""User-facing texts of the failures the engine itself decides (not the worker's renderer): one wording everywhere.

Why shared: the same outcome — a batch past the render time limit, a job that kept taking its worker down — is
decided by the local client, by a standalone worker's watchdog or by the worker that dead-letters a batch, and the
user must read the same sentence whichever deployment runs.  Pure.
"""

from __future__ import annotations

from engine.protocol import Failure, FailureKind

__all__ = ["crashed_twice", "timed_out"]


def timed_out(job_id: int, limit_s: float) -> Failure:
    """The job's batch ran past ``job_timeout_s`` and was stopped (never retried: it would likely hang again)."""
    return Failure(job_id, FailureKind.TIMEOUT, f"The render took longer than {limit_s:g} s and was stopped.",
                   hint="Try fewer steps, a smaller size or fewer images.")


def crashed_twice(job_id: int) -> Failure:
    """The job's worker was lost twice while rendering it (the second time it ran alone)."""
    return Failure(job_id, FailureKind.WORKER_CRASHED, "The image engine crashed while rendering this job, twice.",
                   hint="Something in this request may be triggering it; try other settings.")
