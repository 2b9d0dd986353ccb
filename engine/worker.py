"""The engine worker process: owns the pipeline and the device, renders batches sent by the client.

Why a separate process: a CUDA fault or a leak must never take the bot down, and a worker that dies
or hangs can be replaced with a clean one.  Started by ``engine.client`` as ``python -m engine.worker
--fd N`` with a scrubbed environment (no bot token); ``N`` is its end of a socket pair carrying
pickled ``engine.protocol`` envelopes.  The first message it reads is its ``WorkerConfig``.

Threads: the main thread loads the checkpoint once and runs batches; a reader thread takes messages
while a batch runs, so ``Cancel`` lands between steps and ``Ping`` is answered with ``Health`` even
mid-batch (a worker that stops answering is presumed hung and is replaced by the client).  Because of
that, a render stuck inside the device does not stop the heartbeats; the client bounds each batch's time
instead (``job_timeout_s``) and kills the worker when it runs past it.

Failures: out of memory → the batch is split in halves and retried, and only a single job that still
does not fit fails (``out_of_memory``); a bad request (missing hypernet file, invalid option) fails its
job only; any other device error ends the process with exit code 70 so the client restarts it clean.

``HYPERCORD_TEST_FAULTS`` (JSON, set by tests only) injects faults keyed on prompt markers, see ``Faults``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection

from engine.errors import InvalidModelFile
from engine.hypernet_cache import HypernetCache
from engine.protocol import (
    PROTOCOL_VERSION,
    BatchDone,
    Cancel,
    Envelope,
    Failure,
    FailureKind,
    GenerateRequest,
    Health,
    Hello,
    Ping,
    Progress,
    Result,
    Shutdown,
    SubmitBatch,
    WorkerConfig,
    wrap,
)

log = logging.getLogger("engine.worker")

EXIT_DEVICE_ERROR = 70
EXIT_PROTOCOL = 65
FAULTS_ENV = "HYPERCORD_TEST_FAULTS"
OOM_HINT = "Try a smaller size or fewer images per request."


@dataclass(frozen=True, slots=True)
class Faults:
    """Test-only fault injection, read from ``HYPERCORD_TEST_FAULTS``; empty (inert) in production.

    Markers are matched against a job's prompt; the fault fires at the first step of a batch holding it
    (slow steps: at every step).
    """

    oom_marker: str = ""  # any batch holding such a job runs out of memory
    oom_rows_over: int = 0  # a batch with more image rows than this runs out of memory (0 = off) ...
    oom_rows_marker: str = ""  # ... if it holds a job with this marker (or always, when empty)
    crash_marker: str = ""  # SIGKILL the worker itself
    device_error_marker: str = ""  # raise a device (CUDA-like) error
    slow_marker: str = ""  # sleep slow_step_s after every step
    slow_step_s: float = 0.0
    hang_marker: str = ""  # block the render for hang_s after the first step (a stuck kernel: pings still answered)
    hang_s: float = 3600.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Faults:
        raw = environ.get(FAULTS_ENV, "")
        return cls(**json.loads(raw)) if raw else cls()

    def fire(self, requests: Sequence[GenerateRequest], step: int) -> None:
        prompts = [r.prompt for r in requests]

        def has(marker: str) -> bool:
            return bool(marker) and any(marker in p for p in prompts)

        if has(self.slow_marker):
            time.sleep(self.slow_step_s)
        if step > 1:
            return
        if has(self.crash_marker):
            os.kill(os.getpid(), signal.SIGKILL)
        if has(self.hang_marker):
            time.sleep(self.hang_s)  # bounded, so a worker whose client died unexpectedly still ends one day
        if has(self.device_error_marker):
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        too_big = self.oom_rows_over and sum(r.count for r in requests) > self.oom_rows_over
        if has(self.oom_marker) or (too_big and (not self.oom_rows_marker or has(self.oom_rows_marker))):
            import torch

            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")


class Worker:
    """One worker's state: the loaded engine, the hypernet cache, and the link to the client."""

    def __init__(self, conn: Connection, config: WorkerConfig, faults: Faults) -> None:
        self._conn = conn
        self._config = config
        self._faults = faults
        self._send_lock = threading.Lock()
        self._client_gone = False
        self._work: queue.SimpleQueue[SubmitBatch | Shutdown] = queue.SimpleQueue()
        self._cancelled: set[int] = set()
        self._cancel_lock = threading.Lock()
        self._busy = False
        self._cache_snapshot: tuple[int, tuple[str, ...]] = (0, ())
        self._names: dict[str, str] = {}
        self._engine = None
        self._cache: HypernetCache | None = None
        self._device_is_cuda = False
        self._stats: list[float] = [0, 0, 0.0]  # this batch: images, steps, seconds in steps

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
        vram = 0
        if self._device_is_cuda:
            import torch

            vram = int(torch.cuda.memory_allocated())
        return Health(nonce=nonce, busy=self._busy, vram_used_bytes=vram, hypernet_cache_bytes=cache_bytes,
                      hypernet_cache_names=names)

    def _is_cancelled(self, job_id: int) -> bool:
        with self._cancel_lock:
            return job_id in self._cancelled or -1 in self._cancelled

    # ---- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:

        from engine.hypernet import load_canonical
        from engine.pipeline import Engine

        cfg = self._config
        engine = Engine.load(cfg.checkpoint, cfg.device, cfg.dtype, cfg.hypernet_dtype)
        self._engine = engine
        self._device_is_cuda = str(engine.device).startswith("cuda")

        def load(path: os.PathLike[str]) -> object:
            return load_canonical(str(path)).to(engine.device, engine.hypernet_dtype)

        self._cache = HypernetCache(cfg.model_store_dir, cfg.hypernet_cache_bytes, load)
        self.send(Hello(protocol_version=PROTOCOL_VERSION, pid=os.getpid(), device=str(engine.device),
                        checkpoint=cfg.checkpoint, dtype=str(engine.dtype).removeprefix("torch."),
                        context_dim=int(engine.context_dim)))
        threading.Thread(target=self._reader, name="worker-reader", daemon=True).start()
        while True:
            item = self._work.get()
            if isinstance(item, Shutdown):
                return 0
            self._busy = True
            try:
                self._run_batch(item)
            finally:
                self._busy = False

    # ---- one batch ------------------------------------------------------------------------------

    def _run_batch(self, batch: SubmitBatch) -> None:
        started = time.monotonic()
        self._stats = [0, 0, 0.0]  # images, steps, step seconds
        live: list[GenerateRequest] = []
        for req in batch.requests:
            if self._is_cancelled(req.job_id):
                self._fail(req, FailureKind.CANCELLED, "Cancelled.")
            else:
                live.append(req)
        nets = self._resolve(live)
        self._render([r for r in live if r.job_id in nets], nets)
        with self._cancel_lock:
            self._cancelled.difference_update(r.job_id for r in batch.requests)
        images, steps, step_s = self._stats
        self.send(BatchDone(batch_id=batch.batch_id, images=int(images), steps=int(steps), step_time_s=step_s,
                            duration_s=time.monotonic() - started))

    def _resolve(self, requests: Sequence[GenerateRequest]) -> dict[int, Mapping[str, object]]:
        """Per job, its hypernets from the cache; a job whose files are missing fails alone (bad request)."""
        assert self._cache is not None
        out: dict[int, Mapping[str, object]] = {}
        for req in requests:
            try:
                out[req.job_id] = self._cache.get_many(ref.sha256 for ref in req.hypernets)
            except InvalidModelFile as exc:
                self._fail(req, FailureKind.BAD_REQUEST, exc.message)
                continue
            for ref in req.hypernets:
                self._names[ref.sha256] = ref.name
        cache = self._cache
        self._cache_snapshot = (cache.nbytes, tuple(f"{self._names.get(d, '?')} ({d[:10]})" for d in cache.names()))
        return out

    def _render(self, requests: list[GenerateRequest], nets: Mapping[int, Mapping[str, object]]) -> None:
        """Render ``requests`` together; on out-of-memory retry in halves down to single jobs."""
        import torch

        from engine.pipeline import Cancelled, RequestError

        if not requests:
            return
        merged = {d: n for r in requests for d, n in nets[r.job_id].items()}
        done: set[int] = set()  # jobs already answered (cancelled mid-run)
        progress = _ProgressGate(self._config.progress_interval_s)
        step_started = [time.monotonic()]

        def on_step(i: int, n: int) -> None:
            now = time.monotonic()
            self._stats[1] += 1
            self._stats[2] += now - step_started[0]
            step_started[0] = now
            self._faults.fire(requests, i)
            if progress.due(i, n, now):
                for r in requests:
                    if r.job_id not in done:
                        self.send(Progress(job_id=r.job_id, step=i, total=n))

        def should_stop(step: int) -> set[int]:
            """Jobs cancelled so far: the pipeline drops their rows (and stops once none are left)."""
            for r in requests:
                if r.job_id not in done and self._is_cancelled(r.job_id):
                    done.add(r.job_id)
                    self._fail(r, FailureKind.CANCELLED, "Cancelled.")
            return set(done)

        try:
            outputs = self._engine.generate(requests, merged, on_step=on_step, should_stop=should_stop)
        except Cancelled:
            for r in requests:
                if r.job_id not in done:
                    self._fail(r, FailureKind.CANCELLED, "Cancelled.")
            return
        except torch.cuda.OutOfMemoryError:
            _free_device_memory(torch)
            if len(requests) == 1:
                self._fail(requests[0], FailureKind.OUT_OF_MEMORY, "Ran out of GPU memory rendering this job.",
                           hint=OOM_HINT)
                return
            log.warning("out of memory with %d jobs; retrying in halves", len(requests))
            self._split(requests, nets, done)
            return
        except RequestError as exc:  # the pipeline refused an option: find the job(s) at fault, spare the rest
            if len(requests) > 1:
                self._split(requests, nets, done)
                return
            self._fail(requests[0], FailureKind.BAD_REQUEST, f"This request cannot be rendered: {_first_line(exc)}")
            return
        except Exception as exc:
            if _is_device_error(torch, exc):
                log.critical("device error, exiting so the worker restarts clean: %s", _first_line(exc))
                sys.stderr.flush()
                os._exit(EXIT_DEVICE_ERROR)
            log.exception("render failed")
            for r in requests:
                if r.job_id not in done:
                    self._fail(r, FailureKind.INTERNAL, "Rendering failed because of an internal error.")
            return
        by_id = {r.job_id: r for r in requests}
        for out in outputs:
            if out.job_id in done or out.job_id not in by_id:
                continue
            self._stats[0] += len(out.pngs)
            self.send(Result(job_id=out.job_id, images=tuple(out.pngs), seeds=tuple(out.seeds),
                             duration_s=time.monotonic() - progress.started, warnings=tuple(out.warnings)))

    def _split(self, requests: list[GenerateRequest], nets: Mapping[int, Mapping[str, object]], done: set[int]) -> None:
        rest = [r for r in requests if r.job_id not in done]
        half = (len(rest) + 1) // 2
        self._render(rest[:half], nets)
        self._render(rest[half:], nets)

    def _fail(self, req: GenerateRequest, kind: FailureKind, message: str, hint: str = "") -> None:
        self.send(Failure(job_id=req.job_id, kind=kind, message=message, hint=hint))


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


def _free_device_memory(torch: object) -> None:
    if torch.cuda.is_available():  # type: ignore[attr-defined]
        torch.cuda.empty_cache()  # type: ignore[attr-defined]


def _is_device_error(torch: object, exc: BaseException) -> bool:
    accel = getattr(torch, "AcceleratorError", None)
    if accel is not None and isinstance(exc, accel):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("CUDA error" in text or "CUBLAS_STATUS" in text or "cuDNN error" in text)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True, help="inherited socket fd connected to the client")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker[%(process)d] %(levelname)s %(message)s")
    conn = Connection(args.fd)
    env = conn.recv()
    if not isinstance(env, Envelope) or env.version != PROTOCOL_VERSION or not isinstance(env.message, WorkerConfig):
        log.error("protocol mismatch: expected WorkerConfig v%d", PROTOCOL_VERSION)
        return EXIT_PROTOCOL
    worker = Worker(conn, env.message, Faults.from_env(os.environ))
    return worker.run()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown (torch thread pools): nothing is left to clean up
