"""Every random number of a sampling run, drawn per row before the loop starts (docs §2.2-2.5).

Why up front: each row's generator draws in A1111's order — its start noise, then (after the ENSD reseed) one
draw per ancestral step — and the draws of one row never depend on the others, so all of them can be made
before the first model call, stacked into one tensor and moved to the device once.  The sampler then reads them
in order through a :class:`NoiseStream` (A1111's ``rng.next()``), with no host work or sync per step.  The numbers
are the same as drawing step by step (tested).

The SDE samplers' Brownian noise comes from one tree per row (:class:`engine.sampling.brownian.BrownianNoise`).
Its query times are known from the sigma schedule, so the plan can evaluate them all up front too
(``precompute_brownian=True``, the default on the CPU: the same total work, and a run then does no host work).  A
query costs ~15 ms per 512x512 row (torchsde's bisection), so on a GPU the default is to query the trees when the
sampler asks: the host's tree work then overlaps the device's model evaluations (copies go through pinned memory,
without a sync).  Both give the same numbers (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.sampling.brownian import BrownianNoise
from engine.sampling.sources import generator_factory, make_generator, move_to
from engine.sampling.start_noise import RowSeed, first_noise, latent_dims

__all__ = ["NoiseNeeds", "NoisePlan", "NoiseStream"]


@dataclass(frozen=True)
class NoiseNeeds:
    """What a sampler will ask for: ``step_draws`` step-noise draws per row, and the Brownian increments between
    the sigma pairs ``brownian`` (0-dim float32 tensors, in query order) over ``brownian_span`` (min, max)."""

    step_draws: int = 0
    brownian: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()
    brownian_span: tuple[torch.Tensor, torch.Tensor] | None = None


class NoisePlan:
    """Start noise (rows, C, H, W), pre-drawn step noise (draws, rows, C, H, W) and Brownian increments."""

    def __init__(self, start: torch.Tensor, steps: torch.Tensor, needs: NoiseNeeds, brownian: BrownianNoise | None,
                 increments: torch.Tensor | None, device: torch.device) -> None:
        self.start = start
        self.steps = steps
        self.needs = needs
        self.trees = brownian
        self.increments = increments
        self.device = device

    @classmethod
    def draw(cls, rows: Sequence[RowSeed], shape: tuple[int, int, int], needs: NoiseNeeds,
             device: torch.device | str = "cpu", *, precompute_brownian: bool | None = None) -> NoisePlan:
        """Draw every row's noise in A1111's order; ``shape`` is one latent's (C, H, W).

        ``precompute_brownian``: evaluate all Brownian increments now (None: unless ``device`` is CUDA).
        """
        if not rows:
            raise ValueError("a batch needs at least one row")
        dev = torch.device(device)
        shape = latent_dims(shape)
        starts, steps = [], []
        for row in rows:
            own = make_generator(row.source, row.seed, dev)
            starts.append(move_to(first_noise(row, shape, own, generator_factory(row.source, dev)),
                                     dev))
            stream = make_generator(row.source, row.step_seed, dev) if row.eta_noise_seed_delta else own
            steps.append(move_to(stream.draws(needs.step_draws, shape), dev))
        trees = increments = None
        if needs.brownian_span is not None:
            trees = BrownianNoise([r.seed for r in rows], [r.source for r in rows], shape, *needs.brownian_span, device=dev)
            if precompute_brownian is None:
                precompute_brownian = dev.type != "cuda"
            if precompute_brownian and needs.brownian:
                increments = torch.stack([trees.increments(a, b, dev) for a, b in needs.brownian])
        return cls(torch.stack(starts), torch.stack(steps, dim=1), needs, trees, increments, dev)

    def stream(self) -> NoiseStream:
        """A fresh reader of this plan's noise, for one sampler run."""
        return NoiseStream(self)


class NoiseStream:
    """The sampler's view of a :class:`NoisePlan`: ``step()`` is A1111's ``rng.next()``, ``brownian(a, b)`` the
    SDE noise sampler; both hand out the plan's numbers in order."""

    def __init__(self, plan: NoisePlan) -> None:
        self.plan = plan
        self.draws_used = 0
        self.queries_used = 0

    def step(self) -> torch.Tensor:
        k, planned = self.draws_used, self.plan.steps.shape[0]
        if k >= planned:
            raise RuntimeError(f"the sampler asked for step-noise draw {k + 1} but the plan holds {planned}")
        self.draws_used += 1
        return self.plan.steps[k]

    def brownian(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        if self.plan.trees is None:
            raise RuntimeError("this plan has no Brownian trees (the sampler's NoiseNeeds did not ask for them)")
        k = self.queries_used
        self.queries_used += 1
        if self.plan.increments is None:
            return self.plan.trees.increments(sigma, sigma_next, self.plan.device)
        planned = self.plan.needs.brownian[k] if k < len(self.plan.needs.brownian) else None
        if planned is None or not (torch.equal(planned[0], sigma) and torch.equal(planned[1], sigma_next)):
            raise RuntimeError(f"Brownian query {k + 1} ({float(sigma)}, {float(sigma_next)}) was not planned")
        return self.plan.increments[k]
