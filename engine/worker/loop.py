"""The worker's batch loop: owns the renderer and the device, renders the batches the client sends.

Why a separate process: a CUDA fault or a leak must never take the bot down, and a worker that dies
or hangs can be replaced with a clean one.  Started by the engine client as ``python -m engine.worker
--fd N`` (:mod:`engine.worker.__main__`) with a scrubbed environment (no bot token); ``N`` is its end of a
socket pair carrying pickled ``engine.protocol`` envelopes.  The first message it reads is its ``WorkerConfig``.
A standalone worker (``--redis URL``) gets the same messages through :mod:`engine.worker.redis_endpoint`, and
missing hypernet files through a ``ModelSource`` (:mod:`engine.worker.model_fetch`).

Checkpoints: a batch runs on the checkpoint its jobs name (:mod:`engine.worker.checkpoint_pool`: loaded on demand,
kept resident within a memory budget); a batch that mixes checkpoints is rendered group by group, and a checkpoint
that is unknown or fails to load fails only its jobs.

Threads: the main thread loads the default checkpoint at start and runs batches; a reader thread takes messages
while a batch runs, so ``Cancel`` lands between steps and ``Ping`` is answered with ``Health`` even
mid-batch (a worker that stops answering is presumed hung and is replaced by the client).  Because of
that, a render stuck inside the device does not stop the heartbeats; the client bounds each batch's time
instead (``job_timeout_s``) and kills the worker when it runs past it.  A finishing thread
(:mod:`engine.worker.finisher`) encodes each batch's PNGs and sends its Results and ``BatchDone``, in order, while the
main thread goes on: once a batch's device work is over the worker says ``BatchRendered``, the next batch is sent on
it (by the local client, or read by the Redis endpoint), and that batch denoises while the previous one's images are
encoded and sent.

Failures: out of memory → the batch is split in halves and retried, and only a single job that still
does not fit fails (``out_of_memory``); a bad request (missing hypernet file, invalid option) fails its
job only; any other device error ends the process with exit code 70 so the client restarts it clean.

``HYPERCORD_TEST_FAULTS`` (JSON, set by tests only) injects faults keyed on prompt markers
(:mod:`engine.worker.faults`).
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import torch

from engine.conditioning import Embedding, load_embedding_safetensors
from engine.errors import InvalidModelFile
from engine.hypernet import Hypernetwork, load_canonical
from engine.lora import LoraNetwork
from engine.protocol import (
    PROTOCOL_VERSION,
    BatchDone,
    BatchRendered,
    Cancel,
    Envelope,
    Failure,
    FailureKind,
    GenerateRequest,
    Health,
    Hello,
    Ping,
    Progress,
    ResidentCheckpoint,
    Result,
    Shutdown,
    SubmitBatch,
    WorkerConfig,
    wrap,
)
from engine.worker.checkpoint_pool import CheckpointPool, CheckpointUnavailable
from engine.worker.compile import auto_max_batch
from engine.worker.faults import Faults
from engine.worker.finisher import Finisher
from engine.worker.hypernet_cache import HypernetCache
from engine.worker.renderer import Cancelled, RenderedJob, Renderer, RequestError
from engine.worker.unet_runner import UNetRunner

__all__ = ["EXIT_DEVICE_ERROR", "EXIT_PROTOCOL", "Endpoint", "Worker"]

log = logging.getLogger("engine.worker")

EXIT_DEVICE_ERROR = 70
EXIT_PROTOCOL = 65
OOM_HINT = "Try a smaller size or fewer images per request."
_IDLE_COMPILE_AFTER_S = 2.0  # no batch for this long: compile one UNet layout that ran eager
_FINISH_GRACE_S = 30.0  # how long an ending worker waits for the Results still being encoded and sent


class Endpoint(Protocol):
    """The worker's end of its transport: a ``multiprocessing.connection.Connection`` fits."""

    def send(self, obj: object) -> None: ...

    def recv(self) -> object: ...


class ModelSource(Protocol):
    """Makes missing hypernet files available in the store (standalone workers fetch them from the bot)."""

    def ensure(self, digests: Iterable[str]) -> None: ...


class Worker:
    """One worker's state: the loaded renderer, the hypernet cache, and the endpoint to the client."""

    def __init__(self, conn: Endpoint, config: WorkerConfig, faults: Faults, models: ModelSource | None = None) -> None:
        self._conn = conn
        self._models = models
        self._config = config
        self._faults = faults
        self._send_lock = threading.Lock()
        self._client_gone = False
        self._work: queue.SimpleQueue[SubmitBatch | Shutdown] = queue.SimpleQueue()
        self._cancelled: set[int] = set()
        self._cancel_lock = threading.Lock()
        self._busy = False
        self._finisher = Finisher()  # PNGs, Results and BatchDone of rendered batches, in order, off the main thread
        self._runner: UNetRunner | None = None  # the renderer's UNet runner, for its figures in Health
        self._cache_snapshot: tuple[int, tuple[str, ...]] = (0, ())
        self._names: dict[str, str] = {}
        self._pool = CheckpointPool(config)
        self._loras: HypernetCache[LoraNetwork] | None = None  # the LoRA cache of the checkpoint being rendered
        self._embeddings: HypernetCache[Embedding] | None = None
        # The batch being rendered: per job, its LoRAs and embeddings by sha256.
        self._job_loras: dict[int, Mapping[str, LoraNetwork]] = {}
        self._job_embeddings: dict[int, Mapping[str, Embedding]] = {}
        self._device_is_cuda = False
        self._stats = _BatchStats()
        self._resident: tuple[ResidentCheckpoint, ...] = ()  # snapshot for the reader thread's Health

    # ---- plumbing -------------------------------------------------------------------------------

    def send(self, message: object) -> None:
        """Send to the bot; if the bot is gone (killed), stop quietly instead of raising mid-batch."""
        with self._send_lock:
            if self._client_gone:
                return
            try:
                self._conn.send(wrap(message))
            except OSError:  # BrokenPipeError, ConnectionResetError: nobody is listening any more
                self._client_gone = True
        if self._client_gone:
            self._abandon()

    def _abandon(self) -> None:
        """The client is gone: cancel everything running and finish nothing new."""
        self._work.put(Shutdown())
        with self._cancel_lock:
            self._cancelled.add(-1)  # -1 = everything

    def _reader(self) -> None:
        """Runs beside the batch loop: queue work, flag cancels, answer pings at once."""
        while True:
            try:
                env = self._conn.recv()
            except (EOFError, OSError):
                self._abandon()  # the client is gone: finish nothing new
                return
            msg = env.message if isinstance(env, Envelope) else None
            if isinstance(msg, SubmitBatch | Shutdown):
                self._work.put(msg)
            elif isinstance(msg, Cancel):
                with self._cancel_lock:
                    self._cancelled.add(msg.job_id)
            elif isinstance(msg, Ping):
                self.send(self._health(msg.nonce))

    def _health(self, nonce: int) -> Health:
        cache_bytes, names = self._cache_snapshot
        vram = int(torch.cuda.memory_allocated()) if self._device_is_cuda else 0
        stats = self._runner.stats if self._runner is not None else None
        busy = self._busy or self._finisher.pending > 0
        return Health(nonce=nonce, busy=busy, vram_used_bytes=vram, hypernet_cache_bytes=cache_bytes,
                      hypernet_cache_names=names, checkpoints=self._resident, checkpoint_loads=self._pool.loads,
                      unet_compiled_calls=stats.compiled_calls if stats else 0,
                      unet_eager_calls=stats.eager_calls if stats else 0,
                      unet_pending_layouts=len(self._runner.pending) if self._runner is not None else 0,
                      unet_compile_failure=stats.compile_failure if stats else "")

    def _is_cancelled(self, job_id: int) -> bool:
        with self._cancel_lock:
            return job_id in self._cancelled or -1 in self._cancelled

    # ---- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        """Load the checkpoint, say Hello, then render batches until ``Shutdown`` (returns the exit code)."""
        cfg = self._config
        renderer = self._pool.get(self._pool.default).renderer
        self._resident = self._pool.resident()
        self._device_is_cuda = renderer.device.type == "cuda"
        device, hypernet_dtype = renderer.device, renderer.hypernet_dtype  # shared by every checkpoint of the worker
        self._runner = renderer.unet_runner
        for what, seconds in renderer.warm_up(cfg.warm_up_sizes):  # the default checkpoint, before Hello
            log.info("warm-up: compiled the UNet for %s in %.1f s", what, seconds)

        def load(path: os.PathLike[str]) -> Hypernetwork:
            return load_canonical(str(path)).to(device, hypernet_dtype)

        cache: HypernetCache[Hypernetwork] = HypernetCache(cfg.model_store_dir, cfg.hypernet_cache_bytes, load)
        self._embeddings = HypernetCache(cfg.model_store_dir, cfg.hypernet_cache_bytes, _load_embedding,
                                         kind="embedding")
        self.send(Hello(protocol_version=PROTOCOL_VERSION, pid=os.getpid(), device=str(renderer.device),
                        checkpoint=self._pool.default, dtype=str(renderer.dtype).removeprefix("torch."),
                        context_dim=int(renderer.context_dim), attention_widths=tuple(sorted(renderer.attention_widths)),
                        checkpoints=self._resident, checkpoint_loads=self._pool.loads,
                        max_batch=auto_max_batch(cfg.max_batch, renderer.device)))
        threading.Thread(target=self._reader, name="worker-reader", daemon=True).start()
        while True:
            item = self._next_work()
            if isinstance(item, Shutdown):
                self._finisher.close(_FINISH_GRACE_S)  # the last batch's Results go out before the process ends
                return 0
            self._busy = True
            try:
                self._run_batch(item, cache)
            finally:
                self._busy = False

    def _next_work(self) -> SubmitBatch | Shutdown:
        """The next batch or Shutdown; while none comes, compile one UNet layout that ran eager (idle time only) on
        the checkpoint rendered last."""
        while True:
            runner = self._runner
            try:
                return self._work.get(timeout=_IDLE_COMPILE_AFTER_S if runner is not None and runner.pending else None)
            except queue.Empty:
                self._busy = True
                try:
                    if runner is not None:
                        runner.compile_pending(1)
                finally:
                    self._busy = False

    # ---- one batch ------------------------------------------------------------------------------

    def _run_batch(self, batch: SubmitBatch, cache: HypernetCache[Hypernetwork]) -> None:
        started = time.monotonic()
        self._stats = _BatchStats()
        groups: dict[str, list[GenerateRequest]] = {}  # per checkpoint (the client never mixes them; be safe)
        for req in batch.requests:
            if self._is_cancelled(req.job_id):
                self._fail(req, FailureKind.CANCELLED, "Cancelled.")
                continue
            try:
                groups.setdefault(self._pool.resolve(req.settings.checkpoint), []).append(req)
            except CheckpointUnavailable as exc:
                self._fail(req, FailureKind.BAD_REQUEST, exc.message)
        for name, live in groups.items():
            self._run_group(name, live, cache)
        with self._cancel_lock:
            self._cancelled.difference_update(r.job_id for r in batch.requests)
        stats = self._stats
        self.send(BatchRendered(batch_id=batch.batch_id))  # the device is free: the client may send the next batch
        done = BatchDone(batch_id=batch.batch_id, images=stats.images, steps=stats.steps, step_time_s=stats.step_s,
                         duration_s=time.monotonic() - started, checkpoints=self._resident,
                         checkpoint_loads=self._pool.loads)
        self._finisher.submit(lambda: self.send(done))  # after the batch's Results, which are queued before it

    def _run_group(self, checkpoint: str, live: list[GenerateRequest], cache: HypernetCache[Hypernetwork]) -> None:
        """The jobs of one checkpoint: the model made resident (a load failure fails these jobs only), then rendered."""
        try:
            model = self._pool.get(checkpoint)
        except CheckpointUnavailable as exc:
            for req in live:
                self._fail(req, FailureKind.BAD_REQUEST, exc.message)
            return
        finally:
            self._resident = self._pool.resident()
        self._loras = model.loras
        self._runner = model.renderer.unet_runner
        nets = self._resolve(live, cache)
        try:
            self._render(model.renderer, [r for r in live if r.job_id in nets], nets)
        finally:
            self._job_loras.clear()
            self._job_embeddings.clear()

    def _resolve(self, requests: Sequence[GenerateRequest], cache: HypernetCache[Hypernetwork]
                 ) -> dict[int, Mapping[str, Hypernetwork]]:
        """Per job, its hypernets from the cache (its LoRAs go to ``self._job_loras``); a job whose files are missing
        fails alone (bad request).

        Models at multiplier 0 are left out: A1111's ``x + y * 0`` is ``x``, so they need no file."""
        out: dict[int, Mapping[str, Hypernetwork]] = {}
        for req in requests:
            used = [ref for ref in req.settings.hypernets if ref.multiplier != 0]
            lora_files = [x.sha256 for x in req.settings.loras if x.te != 0 or x.unet != 0]
            embedding_files = [e.sha256 for e in req.settings.embeddings]
            try:
                if self._models is not None:
                    self._models.ensure([*(ref.sha256 for ref in used), *lora_files, *embedding_files])
                out[req.job_id] = cache.get_many(ref.sha256 for ref in used)
                if self._loras is not None and self._embeddings is not None:
                    self._job_loras[req.job_id] = self._loras.get_many(lora_files)
                    self._job_embeddings[req.job_id] = self._embeddings.get_many(embedding_files)
            except InvalidModelFile as exc:
                self._fail(req, FailureKind.BAD_REQUEST, exc.message)
                continue
            for ref in used:
                self._names[ref.sha256] = ref.name
        self._cache_snapshot = (cache.nbytes, tuple(f"{self._names.get(d, '?')} ({d[:10]})" for d in cache.names()))
        return out

    def _render(self, renderer: Renderer, requests: list[GenerateRequest],
                nets: Mapping[int, Mapping[str, Hypernetwork]]) -> None:
        """Render ``requests`` together; on out-of-memory retry in halves down to single jobs."""
        if not requests:
            return
        merged = {d: n for r in requests for d, n in nets[r.job_id].items()}
        loras = {d: n for r in requests for d, n in self._job_loras.get(r.job_id, {}).items()}
        embeddings = {d: e for r in requests for d, e in self._job_embeddings.get(r.job_id, {}).items()}
        done: set[int] = set()  # jobs already answered (cancelled mid-run)
        progress = _ProgressGate(self._config.progress_interval_s)
        step_started = [time.monotonic()]

        def on_step(i: int, n: int) -> None:
            now = time.monotonic()
            self._stats.steps += 1
            self._stats.step_s += now - step_started[0]
            step_started[0] = now
            self._faults.fire(requests, i)
            if progress.due(i, n, now):
                for r in requests:
                    if r.job_id not in done:
                        self.send(Progress(job_id=r.job_id, step=i, total=n))

        def should_stop(step: int) -> set[int]:
            """Jobs cancelled so far: the renderer drops their rows (and stops once none are left)."""
            for r in requests:
                if r.job_id not in done and self._is_cancelled(r.job_id):
                    done.add(r.job_id)
                    self._fail(r, FailureKind.CANCELLED, "Cancelled.")
            return set(done)

        try:
            rendered = renderer.render(requests, merged, loras=loras, embeddings=embeddings, on_step=on_step,
                                       should_stop=should_stop)
        except Cancelled:
            for r in requests:
                if r.job_id not in done:
                    self._fail(r, FailureKind.CANCELLED, "Cancelled.")
            return
        except torch.cuda.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(requests) == 1:
                self._fail(requests[0], FailureKind.OUT_OF_MEMORY, "Ran out of GPU memory rendering this job.",
                           hint=OOM_HINT)
                return
            log.warning("out of memory with %d jobs; retrying in halves", len(requests))
            self._split(renderer, requests, nets, done)
            return
        except RequestError as exc:  # the renderer refused an option: fail the job(s) at fault, spare the rest
            at_fault = [r for r in requests if r.job_id == exc.job_id]
            if at_fault:
                self._fail(at_fault[0], FailureKind.BAD_REQUEST, f"This request cannot be rendered: {_first_line(exc)}")
                done.add(at_fault[0].job_id)
                self._render(renderer, [r for r in requests if r.job_id not in done], nets)
                return
            if len(requests) > 1:
                self._split(renderer, requests, nets, done)
                return
            self._fail(requests[0], FailureKind.BAD_REQUEST, f"This request cannot be rendered: {_first_line(exc)}")
            return
        except Exception as exc:
            if _is_device_error(exc):
                log.critical("device error, exiting so the worker restarts clean: %s", _first_line(exc))
                self._finisher.drain(_FINISH_GRACE_S)  # earlier batches' Results are CPU work: still deliver them
                sys.stderr.flush()
                os._exit(EXIT_DEVICE_ERROR)
            log.exception("render failed")
            for r in requests:
                if r.job_id not in done:
                    self._fail(r, FailureKind.INTERNAL, "Rendering failed because of an internal error.")
            return
        by_id = {r.job_id: r for r in requests}
        finished = [job for job in rendered if job.job_id not in done and job.job_id in by_id]
        self._stats.images += sum(len(job.images) for job in finished)
        asked = [by_id[job.job_id] for job in finished]
        self._finisher.submit(lambda: self._send_results(renderer, finished, asked, progress.started))

    def _send_results(self, renderer: Renderer, jobs: list[RenderedJob], requests: list[GenerateRequest],
                      started: float) -> None:
        """On the finishing thread: encode the jobs' PNGs and send their Results (a failure fails those jobs only)."""
        try:
            self._faults.fire_finishing(requests)
            outputs = renderer.encode(jobs)
        except Exception:
            log.exception("encoding the PNGs failed")
            for job in jobs:
                self.send(Failure(job_id=job.job_id, kind=FailureKind.INTERNAL,
                                  message="Encoding the images failed because of an internal error."))
            return
        for out in outputs:
            self.send(Result(job_id=out.job_id, images=tuple(out.pngs), seeds=tuple(out.seeds),
                             duration_s=time.monotonic() - started, warnings=tuple(out.warnings)))

    def _split(self, renderer: Renderer, requests: list[GenerateRequest],
               nets: Mapping[int, Mapping[str, Hypernetwork]], done: set[int]) -> None:
        rest = [r for r in requests if r.job_id not in done]
        half = (len(rest) + 1) // 2
        self._render(renderer, rest[:half], nets)
        self._render(renderer, rest[half:], nets)

    def _fail(self, req: GenerateRequest, kind: FailureKind, message: str, hint: str = "") -> None:
        self.send(Failure(job_id=req.job_id, kind=kind, message=message, hint=hint))


class _BatchStats:
    """What one batch did, for the client's status figures."""

    __slots__ = ("images", "step_s", "steps")

    def __init__(self) -> None:
        self.images = 0
        self.steps = 0
        self.step_s = 0.0


class _ProgressGate:
    """Lets a progress report through at most every ``interval_s``, and always for the last step."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.started = time.monotonic()
        self._last = float("-inf")

    def due(self, step: int, total: int, now: float) -> bool:
        if step >= total or now - self._last >= self.interval_s:
            self._last = now
            return True
        return False


def _load_embedding(path: Path) -> Embedding:
    """An embedding file of the store; prompts know it by the name each job's guild gave it (set per job)."""
    return load_embedding_safetensors(path, path.stem)


def _is_device_error(exc: BaseException) -> bool:
    accel = getattr(torch, "AcceleratorError", None)
    if accel is not None and isinstance(exc, accel):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("CUDA error" in text or "CUBLAS_STATUS" in text or "cuDNN error" in text)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]
