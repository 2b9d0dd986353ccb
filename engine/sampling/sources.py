"""Noise sources: one generator per image, as A1111 creates them (docs/a1111-sampling.md §2.1).

Why per image: an image must come out the same alone or inside any batch, so no two images share a random stream.
Three sources, named as A1111's "RNG" setting:

* ``CPU``: ``torch.Generator("cpu")`` and ``torch.randn`` on the CPU (torch's Mersenne Twister); reproducible on
  every machine, and what the project writes into its own infotexts.
* ``NV``: A1111's Philox imitation of CUDA's randn (:mod:`engine.sampling.philox`); reproducible anywhere.
* ``GPU``: ``torch.Generator("cuda")`` drawing on the device, A1111's default (an infotext without ``RNG`` means
  GPU).  It reproduces A1111 images made on CUDA only when run on CUDA; it is refused on other devices rather than
  silently giving other numbers.  Untested here (no CUDA in CI).

A draw is always float32 and lands on the CPU for CPU/NV and on the device for GPU; callers move it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from engine.samplers import NOISE_SOURCES
from engine.sampling.philox import PhiloxGenerator

__all__ = ["NOISE_SOURCES", "RowGenerator", "make_generator", "move_to"]



class RowGenerator(Protocol):
    """One image's random stream: each call is one A1111 "draw" (one ``randn`` call of that generator)."""

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor: ...

    def draws(self, count: int, shape: tuple[int, ...]) -> torch.Tensor:
        """``count`` consecutive draws stacked to (count, *shape): the same numbers as ``count`` calls of draw."""
        ...


class _TorchGenerator:
    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        self.generator = torch.Generator(device).manual_seed(int(seed))

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=torch.float32)

    def draws(self, count: int, shape: tuple[int, ...]) -> torch.Tensor:
        # torch's CPU normal sampler pairs values in blocks of 16 over the whole tensor, so one big randn would not
        # equal consecutive small ones: draw them one by one.
        if count == 0:
            return torch.zeros((0, *shape), device=self.device)
        return torch.stack([self.draw(shape) for _ in range(count)])


class _PhiloxRowGenerator:
    def __init__(self, seed: int) -> None:
        self.philox = PhiloxGenerator(seed)

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(self.philox.randn(shape))

    def draws(self, count: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(self.philox.randn_many(count, shape))


def move_to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; host-to-CUDA copies go through pinned memory without blocking (no sync with the GPU)."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def make_generator(source: str, seed: int, device: torch.device | str = "cpu") -> RowGenerator:
    """A fresh generator of ``source`` ("CPU", "NV" or "GPU") seeded with ``seed``; ``device`` matters for GPU only."""
    if source == "CPU":
        return _TorchGenerator(seed, torch.device("cpu"))
    if source == "NV":
        return _PhiloxRowGenerator(seed)
    if source == "GPU":
        dev = torch.device(device)
        if dev.type != "cuda":
            raise NotImplementedError(f"RNG source GPU needs a CUDA device (got {dev.type}); use CPU or NV")
        return _TorchGenerator(seed, dev)
    raise ValueError(f"unknown RNG source {source!r}; valid sources: {', '.join(NOISE_SOURCES)}")


def generator_factory(source: str, device: torch.device | str = "cpu") -> Callable[[int], RowGenerator]:
    """Fresh generators of one source on one device, by seed (variation seeds and seed resize draw from them)."""

    def make(seed: int) -> RowGenerator:
        return make_generator(source, seed, device)

    return make
