"""The worker's finishing thread: what is left of a batch once its device work is over, done beside the next batch.

Why: after the VAE decode a batch still needs its PNGs encoded (~40 ms of zlib per 512x512 image) and its Results
sent.  Done on the render thread, that is time the device sits idle between batches; done here, in submission order,
it overlaps the next batch's denoising.  Order matters on the wire: a batch's ``BatchDone`` must follow its
``Result`` messages (the client fails any job still unanswered at ``BatchDone``), so both go through this one FIFO.

The queue is bounded: if finishing ever falls behind rendering (a slow CPU beside a fast GPU), the render thread
waits instead of piling up decoded images in memory.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

__all__ = ["Finisher"]

log = logging.getLogger("engine.worker")

Task = Callable[[], None]


class Finisher:
    """Runs submitted tasks one at a time, in order, on a daemon thread; ``drain`` waits for those submitted."""

    def __init__(self, max_pending: int = 2, name: str = "worker-finish") -> None:
        self._tasks: queue.Queue[Task | None] = queue.Queue(maxsize=max(1, max_pending))
        self._pending = 0
        self._lock = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Tasks submitted and not finished yet (the running one included)."""
        with self._lock:
            return self._pending

    def submit(self, task: Task) -> None:
        """Queue ``task`` after those already queued; blocks while ``max_pending`` tasks are waiting."""
        with self._lock:
            self._pending += 1
        self._tasks.put(task)

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every task submitted so far has run; False if ``timeout_s`` passed first."""
        with self._lock:
            return self._lock.wait_for(lambda: self._pending == 0, timeout_s)

    def close(self, timeout_s: float | None = None) -> bool:
        """Run what is queued, then end the thread; False if that took longer than ``timeout_s``."""
        done = self.drain(timeout_s)
        self._tasks.put(None)
        return done

    def _run(self) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                task()
            except Exception:  # a task reports its own failures; this only keeps the thread alive for the next
                log.exception("a finishing task failed")
            finally:
                with self._lock:
                    self._pending -= 1
                    self._lock.notify_all()
