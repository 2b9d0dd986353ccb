"""Test-only fault injection for the worker: out of memory, crashes, device errors, slow or stuck renders.

Why in the product at all: the worker's failure handling (split on OOM, exit 70 on device errors, the client's
restart and time limit) can only be tested against a real worker process, and real faults cannot be provoked on
demand.  ``HYPERCORD_TEST_FAULTS`` (JSON) arms them; the client strips that variable from the environment it
passes on, so it reaches a worker only when a test hands it over explicitly.  Empty means inert.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine.protocol import GenerateRequest

__all__ = ["FAULTS_ENV", "Faults"]

FAULTS_ENV = "HYPERCORD_TEST_FAULTS"


@dataclass(frozen=True, slots=True)
class Faults:
    """Faults keyed on markers in a job's prompt; each fires at the first step of a batch holding such a job
    (slow steps: at every step)."""

    oom_marker: str = ""  # any batch holding such a job runs out of memory
    oom_rows_over: int = 0  # a batch with more image rows than this runs out of memory (0 = off) ...
    oom_rows_marker: str = ""  # ... if it holds a job with this marker (or always, when empty)
    crash_marker: str = ""  # SIGKILL the worker itself
    device_error_marker: str = ""  # raise a device (CUDA-like) error
    slow_marker: str = ""  # sleep slow_step_s after every step
    slow_step_s: float = 0.0
    hang_marker: str = ""  # block the render for hang_s after the first step (a stuck kernel: pings still answered)
    hang_s: float = 3600.0
    slow_finish_marker: str = ""  # the finishing thread sleeps slow_finish_s before encoding such a batch's PNGs
    slow_finish_s: float = 0.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Faults:
        raw = environ.get(FAULTS_ENV, "")
        return cls(**json.loads(raw)) if raw else cls()

    def fire_finishing(self, requests: Sequence[GenerateRequest]) -> None:
        """On the finishing thread, before a batch's PNGs are encoded (a slow PNG stage, for pipelining tests)."""
        if _holds(requests, self.slow_finish_marker):
            time.sleep(self.slow_finish_s)

    def fire(self, requests: Sequence[GenerateRequest], step: int) -> None:
        def has(marker: str) -> bool:
            return _holds(requests, marker)

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
        too_big = self.oom_rows_over and sum(r.settings.count for r in requests) > self.oom_rows_over
        if has(self.oom_marker) or (too_big and (not self.oom_rows_marker or has(self.oom_rows_marker))):
            import torch

            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")


def _holds(requests: Sequence[GenerateRequest], marker: str) -> bool:
    return bool(marker) and any(marker in r.settings.prompt for r in requests)
