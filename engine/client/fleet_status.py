"""The fleet as ``/status`` shows it: each registered worker's state, and the engine figures summed over the live ones.

Why apart from the client: it is a pure function of the registry (``WorkerInfo`` entries with Unix heartbeat times)
and the client's counters, so it is read and tested without Redis.  A worker is ``gone`` once its heartbeat is
older than ``heartbeat_timeout_s``; ``busy`` while it renders; ``starting`` while it loads its checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.client.status import EngineStatus, WorkerStatus
from engine.protocol import WorkerConfig, WorkerInfo

__all__ = ["fleet_status", "worker_state"]


def worker_state(info: WorkerInfo, now: float, heartbeat_timeout_s: float) -> str:
    if info.state == "stopped":
        return "stopped"
    if now - info.heartbeat_at > heartbeat_timeout_s:
        return "gone"
    return "busy" if info.busy and info.state == "ready" else info.state


def fleet_status(config: WorkerConfig, workers: Sequence[WorkerInfo], now: float, heartbeat_timeout_s: float, *,
                 broker_ok: bool, queue_length: int, running: int, users_queued: int, jobs_done: int, jobs_failed: int,
                 images_per_s: float, avg_step_s: float, uptime_s: float) -> EngineStatus:
    """``EngineStatus`` of a fleet: state ``ready`` with a live worker, ``no workers``, or ``broker down``."""
    listed = tuple(WorkerStatus(name=w.name, state=worker_state(w, now, heartbeat_timeout_s), device=w.device,
                                checkpoint=w.checkpoint, max_batch=w.max_batch, jobs_done=w.jobs_done,
                                heartbeat_age_s=max(0.0, now - w.heartbeat_at), pid=w.pid, host=w.host,
                                checkpoints=w.checkpoints)
                   for w in workers)
    live = [w for w, shown in zip(workers, listed, strict=True) if shown.state in ("ready", "busy")]
    first = live[0] if live else None
    state = ("ready" if live else "no workers") if broker_ok else "broker down"
    return EngineStatus(
        state=state, pid=None, device=", ".join(sorted({w.device for w in live})),
        checkpoint=first.checkpoint if first else config.checkpoint, dtype=first.dtype if first else "",
        context_dim=first.context_dim if first else None, attention_widths=first.attention_widths if first else (),
        queue_length=queue_length, running=running, users_queued=users_queued, jobs_done=jobs_done,
        jobs_failed=jobs_failed, images_per_s=images_per_s, avg_step_s=avg_step_s,
        cache_bytes=sum(w.hypernet_cache_bytes for w in live), vram_used_bytes=sum(w.vram_used_bytes for w in live),
        cache_contents=tuple(sorted({n for w in live for n in w.hypernet_cache_names})), uptime_s=uptime_s,
        restarts=0, workers=listed, checkpoints=first.checkpoints if first else (),
        checkpoint_loads=sum(w.checkpoint_loads for w in live))
