"""Brownian noise of the SDE samplers: one torchsde ``BrownianTree`` per image, as A1111 builds it (docs §2.5).

Why torchsde itself: the tree's bisection, seeding (numpy ``SeedSequence``) and bridge arithmetic decide the
numbers, so an independent re-implementation would have to match it bit for bit; torchsde is a dependency anyway.
A1111 changes one thing: torchsde's internal normal draws come from a *fresh* generator of the chosen noise source
(CPU / NV / GPU) seeded with torchsde's own seed.  torchsde looks its ``_randn`` up at call time, so this module
installs one dispatcher that uses the source of the tree being built or queried (a context variable) and falls
back to torchsde's own behaviour otherwise, leaving every other torchsde user unaffected.

Trees of CPU- and NV-source images live on the CPU (their draws are made there anyway; the bridge arithmetic is
IEEE-exact elementwise, so the numbers equal A1111's device-side trees); trees of GPU-source images live on the
device, as A1111's do, so that no draw crosses to the host.  A tree is seeded with the image's seed (not seed +
ENSD) and spans [smallest positive sigma, largest sigma] of the schedule.
"""

from __future__ import annotations

import contextvars
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torchsde
from torchsde._brownian import brownian_interval

from engine.sampling.sources import make_generator, move_to

__all__ = ["BrownianNoise"]

_SOURCE: contextvars.ContextVar[tuple[str, torch.device] | None] = contextvars.ContextVar("brownian_source", default=None)
_TORCHSDE_RANDN = brownian_interval._randn


def _randn(size, dtype, device, seed):  # torchsde's signature
    source = _SOURCE.get()
    if source is None:
        return _TORCHSDE_RANDN(size, dtype, device, seed)
    name, draw_device = source
    return make_generator(name, int(seed), draw_device).draw(tuple(size)).to(device=device, dtype=dtype)


brownian_interval._randn = _randn


@contextmanager
def _drawing_from(source: str, device: torch.device) -> Iterator[None]:
    token = _SOURCE.set((source, device))
    try:
        with warnings.catch_warnings():
            # torchsde warns when a query time lies an ulp outside the tree's span and clamps it; A1111 gets the same.
            warnings.filterwarnings("ignore", message="Should have", category=UserWarning)
            yield
    finally:
        _SOURCE.reset(token)


class BrownianNoise:
    """Per-image Brownian trees over one sigma span; ``__call__(sigma, sigma_next)`` is k-diffusion's noise sampler.

    ``sigma_min``/``sigma_max`` are 0-dim float32 tensors (the schedule's smallest positive and largest sigma).
    ``device`` is the sampling device: GPU-source trees live there, the others on the CPU.
    """

    def __init__(self, seeds: Sequence[int], sources: Sequence[str], shape: tuple[int, ...], sigma_min: torch.Tensor,
                 sigma_max: torch.Tensor, device: torch.device | str = "cpu") -> None:
        self.sources = list(sources)
        self.device = torch.device(device)
        self.t0, self.t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        self.trees = []
        for seed, source in zip(seeds, self.sources, strict=True):
            w0 = torch.zeros(shape, dtype=torch.float32, device=self.device if source == "GPU" else "cpu")
            with _drawing_from(source, self.device):
                self.trees.append(torchsde.BrownianTree(self.t0, w0, self.t1, entropy=int(seed)))

    def increments(self, sigma: torch.Tensor, sigma_next: torch.Tensor, device: torch.device | str = "cpu",
                   rows: Sequence[int] | None = None) -> torch.Tensor:
        """(rows, *shape) on ``device``: each image's normalised increment between two sigmas (0-dim float32)."""
        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (a, b, 1) if a < b else (b, a, -1)
        out = torch.device(device)
        parts = []
        for i in range(len(self.trees)) if rows is None else rows:
            with _drawing_from(self.sources[i], self.device):
                parts.append(move_to(self.trees[i](lo, hi), out))
        return torch.stack(parts) * sign / (b - a).abs().sqrt()
