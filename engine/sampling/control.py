"""What the caller sees of a sampling run while it goes: step reports, and a say before every model evaluation.

Why both: progress is per sampling step (what a user counts), while work is per model evaluation (second-order
samplers evaluate twice a step), so cancelling — the whole batch, or some rows whose job was cancelled — is checked
before each evaluation.  Dropped rows leave the model call at once; the sampler keeps their (now meaningless)
latents so that every tensor keeps its batch layout and no row's numbers depend on which others are still there.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch

__all__ = ["Evaluation", "OnStep", "SamplingCancelled", "ShouldStop", "StepReport", "apply_stop"]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Where a model evaluation falls: the sampler step (0-based) and the running evaluation index (0-based).

    ``index`` is A1111's CFG-denoiser step counter: its prompt-editing schedules switch on it, so a second-order
    sampler's ``[a:b:10]`` switches at evaluation 10, not at step 10 (A1111 1.6+ resolves the schedule against
    ``total_evaluations``, see :func:`engine.sampling.plan.prompt_schedule_steps`).
    """

    step: int
    index: int


@dataclass(frozen=True, slots=True)
class StepReport:
    """After sampling step ``done`` of ``total`` (1-based): the latents and the step's (first) model prediction.

    ``denoised`` is the CFG-combined prediction of x0 for k-diffusion samplers and DDIM/PLMS/UniPC alike (for
    live previews); both are full-batch tensors on the device (rows cancelled earlier hold stale values).
    """

    done: int
    total: int
    x: torch.Tensor
    denoised: torch.Tensor


OnStep = Callable[[StepReport], None]
#: Asked before every model evaluation: True cancels the run, a collection of batch-row indices drops those rows.
ShouldStop = Callable[[Evaluation], bool | Collection[int] | None]


class SamplingCancelled(Exception):
    """The run was cancelled (``should_stop`` said True, or every row was dropped)."""


def apply_stop(answer: bool | Collection[int] | None, active: list[int]) -> list[int]:
    """The rows still wanted after ``should_stop``'s answer; raises :class:`SamplingCancelled` when none are."""
    if answer is None or answer is False:
        return active
    if answer is True:
        raise SamplingCancelled()
    dropped = set(answer)
    keep = [row for row in active if row not in dropped]
    if not keep:
        raise SamplingCancelled()
    return keep
