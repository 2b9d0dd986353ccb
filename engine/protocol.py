"""Typed, versioned messages between the bot process and the engine worker process.

Why a module of plain dataclasses: the bot imports this without torch (it must start fast and stay
light), and both sides agree on one definition of every message.  Messages travel through a transport
(:mod:`engine.client.transport`; today a socket pair to a child process); ``PROTOCOL_VERSION`` is checked in
the worker's hello so a bot and a worker from different releases refuse each other instead of misreading fields.
What a job renders is one :class:`engine.render_settings.RenderSettings` value, the same one the bot stores.
Over Redis (the scale-out transport) the same dataclasses travel encoded by :mod:`engine.codec`; the messages at
the end of this module exist for that deployment only (shared settings, the worker registry, claims, model fetches).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from engine.render_settings import HypernetRef, RenderSettings

__all__ = [
    "PROTOCOL_VERSION",
    "TERMINAL_EVENTS",
    "BatchClaimed",
    "BatchDone",
    "BatchRendered",
    "Cancel",
    "CheckpointSpec",
    "Envelope",
    "Failure",
    "FailureKind",
    "FetchModel",
    "FleetConfig",
    "GenerateRequest",
    "Health",
    "Hello",
    "HypernetRef",
    "JobEvent",
    "ModelBlob",
    "Ping",
    "Progress",
    "Queued",
    "RenderSettings",
    "ResidentCheckpoint",
    "Result",
    "Shutdown",
    "Started",
    "SubmitBatch",
    "WorkerConfig",
    "WorkerInfo",
    "wrap",
]

PROTOCOL_VERSION = 3


class FailureKind(enum.StrEnum):
    """Why a job failed; each kind gets its own message for the user."""

    BAD_REQUEST = "bad_request"
    OUT_OF_MEMORY = "out_of_memory"
    WORKER_CRASHED = "worker_crashed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    INTERNAL = "internal"
    SHUTDOWN = "shutdown"  # the engine stopped before the job ran; safe to submit again after a restart


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One job for the engine: who asked (the fair queue serves users round-robin) and what to render."""

    job_id: int
    user_id: int
    settings: RenderSettings

    def batch_key(self) -> tuple[object, ...]:
        """Jobs with equal keys can share one UNet batch (hypernets and seeds may differ)."""
        return self.settings.batch_key()


@dataclass(frozen=True, slots=True)
class CheckpointSpec:
    """A checkpoint a worker may load, by the name jobs use (``RenderSettings.checkpoint``).

    ``source``: a file, a diffusers folder, a hub id or ``tiny``; ``vae``: a separate VAE file or ""; ``prediction``:
    ``auto``, ``epsilon`` or ``v_prediction``.  Paths come from the owner's configuration, never from users.
    """

    name: str
    source: str
    vae: str = ""
    prediction: str = "auto"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """How the worker process sets itself up; built by the bot from its settings.

    Carries no secrets: the worker is spawned with an environment that lacks the bot token, and this
    is the only configuration it receives.
    """

    checkpoint: str = "tiny"  # the default checkpoint (a name in ``checkpoints``, or a source when that is empty)
    device: str = "auto"  # auto | cuda | cpu
    dtype: str = "auto"  # auto | float16 | bfloat16 | float32
    hypernet_dtype: str = "auto"  # auto = the UNet's dtype on GPU, float32 on CPU
    max_batch: int = 4  # images per UNet batch; 0 = auto (8 on CUDA, where the 16-row compiled bucket fills; 4 elsewhere)
    hypernet_cache_bytes: int = 512 * 1024 * 1024
    model_store_dir: str = "models/store"  # canonical hypernet files named <sha256>.safetensors
    progress_interval_s: float = 0.5
    checkpoints: tuple[CheckpointSpec, ...] = ()  # every checkpoint jobs may name (empty: ``checkpoint`` alone)
    checkpoint_device_bytes: int = 0  # device memory for resident checkpoints (0: keep one)
    checkpoint_host_bytes: int = 0  # CPU memory for checkpoints parked off the device (0: drop them)
    compile: str = "auto"  # the UNet: auto (compiled on CUDA) | on | off | cudagraphs (engine/worker/compile.py)
    compile_cache_dir: str = ""  # persistent inductor/Triton cache ("" = torch's default)
    warm_up_sizes: tuple[tuple[int, int], ...] = ((512, 512),)  # (width, height) compiled before the worker is ready
    checkpoint_hash_cache: str = ""  # A1111 file hashes remembered here (a JSON file; "" = hash on every load)


@dataclass(frozen=True, slots=True)
class ResidentCheckpoint:
    """A checkpoint a worker holds loaded: on its device (ready to render) or parked in CPU memory."""

    name: str
    on_device: bool
    nbytes: int


# ---- bot -> worker ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitBatch:
    """Render these requests together in one UNet batch."""

    batch_id: int
    requests: tuple[GenerateRequest, ...]


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop a job between steps (its batch-mates keep going)."""

    job_id: int


@dataclass(frozen=True, slots=True)
class Ping:
    """Heartbeat request; the worker answers with ``Health``."""

    nonce: int


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Finish nothing new; exit cleanly."""


# ---- worker -> bot ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First message from a worker once its pipeline is loaded."""

    protocol_version: int
    pid: int
    device: str
    checkpoint: str
    dtype: str
    context_dim: int
    attention_widths: tuple[int, ...] = ()  # self-attention widths of the UNet (what hypernet sizes can match)
    max_batch: int = 0  # images per batch the worker wants (``WorkerConfig.max_batch`` with auto resolved); 0: unknown
    checkpoints: tuple[ResidentCheckpoint, ...] = ()  # loaded checkpoints, most recently used last
    checkpoint_loads: int = 0  # checkpoints loaded from disk since the worker started


@dataclass(frozen=True, slots=True)
class Health:
    """Answer to ``Ping``; also carries the figures an owner's /status shows."""

    nonce: int
    busy: bool
    vram_used_bytes: int = 0
    hypernet_cache_bytes: int = 0
    hypernet_cache_names: tuple[str, ...] = ()
    unet_compiled_calls: int = 0  # UNet calls that ran a compiled graph (engine/worker/unet_runner.py)
    unet_eager_calls: int = 0  # ... that ran eager (compiling off, LoRAs, a layout waiting for an idle compile)
    unet_pending_layouts: int = 0  # hypernet layouts met that wait for an idle moment to compile
    unet_compile_failure: str = ""  # why compiling was turned off on this worker ("" = it was not)
    checkpoints: tuple[ResidentCheckpoint, ...] = ()
    checkpoint_loads: int = 0


@dataclass(frozen=True, slots=True)
class Progress:
    """Step ``step`` of ``total`` finished for a job (sent at a bounded rate)."""

    job_id: int
    step: int
    total: int


@dataclass(frozen=True, slots=True)
class Result:
    """A finished job: PNG bytes (with infotext) per image, the seeds used, and any warnings."""

    job_id: int
    images: tuple[bytes, ...]
    seeds: tuple[int, ...]
    duration_s: float
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Failure:
    """A job that did not finish; ``message`` is safe to show the user.

    ``retryable`` says whether submitting the same request again may succeed (crash, shutdown) as
    opposed to failing the same way (bad request, out of memory at this size).
    """

    job_id: int
    kind: FailureKind
    message: str
    hint: str = ""
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class BatchRendered:
    """The device work of a ``SubmitBatch`` is over (denoised and decoded); its PNGs are being encoded, its Results
    and then its ``BatchDone`` follow.

    Why: a client that waits for ``BatchDone`` before choosing the next batch leaves the device idle while PNGs are
    encoded and sent; on this message the local client sends the next batch at once, and it still chooses that
    batch as late as it can (jobs that arrived during this one's denoising can join it).  A standalone worker's Redis
    endpoint reads its next entry on it instead; it never reaches a bot over Redis.
    """

    batch_id: int


@dataclass(frozen=True, slots=True)
class BatchDone:
    """The worker finished a ``SubmitBatch`` (every job in it got a Result or Failure) and is idle.

    ``steps`` and ``step_time_s`` feed the owner's status figures (average time per UNet step).
    """

    batch_id: int
    images: int
    steps: int
    step_time_s: float
    duration_s: float
    checkpoints: tuple[ResidentCheckpoint, ...] = ()  # what the worker holds now (the client's affinity)
    checkpoint_loads: int = 0


# ---- client -> bot (events on a JobHandle; never sent over the pipe) -----------------------------


@dataclass(frozen=True, slots=True)
class Queued:
    """The job waits; ``position`` jobs will be served before it (0 = next).  Sent again when it moves."""

    job_id: int
    position: int


@dataclass(frozen=True, slots=True)
class Started:
    """The job was handed to the worker; ``attempt`` is 1 normally, 2 when re-run after a worker crash.

    Jobs with the same ``batch_id`` share one UNet batch.
    """

    job_id: int
    attempt: int
    batch_id: int = 0


JobEvent = Queued | Started | Progress | Result | Failure
TERMINAL_EVENTS = (Result, Failure)


@dataclass(frozen=True, slots=True)
class Envelope:
    """What goes over the pipe: a version stamp around one message."""

    version: int
    message: object = field(default=None)


def wrap(message: object) -> Envelope:
    return Envelope(PROTOCOL_VERSION, message)


# ---- the Redis deployment (standalone workers shared by bot processes) ------------------------------


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """What a bot publishes for standalone workers: their ``WorkerConfig`` and the fleet's timings.

    A worker started with ``--redis`` reads this (its own ``--device`` / ``--max-batch`` / ``--store`` win), so one
    config.toml still describes the deployment.
    """

    worker: WorkerConfig
    lease_s: float = 30.0  # a batch whose worker stopped renewing its claim for this long is taken over by another
    heartbeat_interval_s: float = 2.0  # registry updates and claim renewals
    job_timeout_s: float = 600.0  # a batch running longer is failed (``timeout``) by its worker, which then exits


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One standalone worker's entry in the fleet registry: what ``/status`` lists.  Times are Unix seconds."""

    name: str
    pid: int
    host: str
    state: str  # starting | ready | stopped
    protocol_version: int
    max_batch: int
    device: str = ""
    checkpoint: str = ""
    dtype: str = ""
    context_dim: int = 0
    attention_widths: tuple[int, ...] = ()
    busy: bool = False
    jobs_done: int = 0
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    vram_used_bytes: int = 0
    hypernet_cache_bytes: int = 0
    hypernet_cache_names: tuple[str, ...] = ()
    checkpoints: tuple[ResidentCheckpoint, ...] = ()
    checkpoint_loads: int = 0


@dataclass(frozen=True, slots=True)
class BatchClaimed:
    """worker -> bot: ``worker`` took this batch; ``attempt`` 2 means a re-run after its previous worker was lost."""

    batch_id: int
    worker: str
    attempt: int
    job_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class FetchModel:
    """worker -> bot: publish the canonical hypernet file with this digest (the worker checks the hash)."""

    sha256: str
    worker: str


@dataclass(frozen=True, slots=True)
class ModelBlob:
    """bot -> worker (at ``P:blob:<sha256>``): a canonical hypernet file and the sha256 of exactly these bytes.

    ``sha256`` is the model's key (the hash of the file as uploaded, which names it in the store); the canonical
    safetensors differ from that upload, so ``content_sha256`` is what the worker checks the bytes against.
    """

    sha256: str
    content_sha256: str
    data: bytes
