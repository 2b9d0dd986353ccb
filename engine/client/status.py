"""What an owner's status command shows about the engine: the queue, the figures, and every worker.

Why its own module: both engine clients (one local child worker, or a fleet over Redis) report the same shape, and
the bot's ``/status`` renders it without knowing which transport runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.protocol import ResidentCheckpoint

__all__ = ["EngineStatus", "WorkerStatus"]


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker as ``/status`` lists it; ``heartbeat_age_s`` is how long ago it was last heard from."""

    name: str
    state: str  # starting | ready | busy | gone | stopped
    device: str
    checkpoint: str
    max_batch: int
    jobs_done: int
    heartbeat_age_s: float | None
    pid: int | None = None
    host: str = ""
    checkpoints: tuple[ResidentCheckpoint, ...] = ()  # what it holds, on its device or parked in CPU memory


@dataclass(frozen=True, slots=True)
class EngineStatus:
    """What an owner's status command shows."""

    state: str
    pid: int | None
    device: str
    checkpoint: str
    dtype: str
    context_dim: int | None  # text-context width of the loaded checkpoint (768 SD1.x); None until it has started
    attention_widths: tuple[int, ...]  # self-attention widths of the loaded checkpoint; () until it has started
    queue_length: int
    running: int
    users_queued: int
    jobs_done: int
    jobs_failed: int
    images_per_s: float
    avg_step_s: float
    cache_bytes: int
    vram_used_bytes: int
    cache_contents: tuple[str, ...]
    uptime_s: float
    restarts: int
    workers: tuple[WorkerStatus, ...] = ()  # every worker known (one for the local transport)
    unet_compiled_calls: int = 0  # UNet calls that ran a compiled graph (engine/worker/unet_runner.py)
    unet_eager_calls: int = 0
    unet_pending_layouts: int = 0  # hypernet layouts waiting for an idle moment to be compiled
    unet_compile_failure: str = ""  # why the worker stopped compiling ("" = it did not)
    checkpoints: tuple[ResidentCheckpoint, ...] = ()  # checkpoints the worker holds (the local transport)
    checkpoint_loads: int = 0  # checkpoints it loaded from disk since it started
