"""One image's start noise as A1111 makes it: seed, variation seed (slerp) and seed resize (docs §2.2-2.3).

Why a module of its own: the three options interact in a fixed order that decides which generator draws what,
and every later step-noise draw depends on how many draws the image's own generator has made (exactly one here).
The result is the unit-variance start noise; samplers scale it themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from engine.sampling.sources import RowGenerator

__all__ = ["RowSeed", "first_noise", "slerp"]


@dataclass(frozen=True, slots=True)
class RowSeed:
    """Everything that decides one image's randomness (A1111's infotext fields of that image).

    ``subseed`` None means no variation seed; ``seed_resize_from`` is (width, height) in pixels ("Seed resize
    from"); ``eta_noise_seed_delta`` is "ENSD"; ``source`` is "RNG" ("CPU", "NV" or "GPU").
    """

    seed: int
    subseed: int | None = None
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] | None = None
    eta_noise_seed_delta: int = 0
    source: str = "CPU"

    @property
    def step_seed(self) -> int:
        """The seed of the generator that draws this image's step noise (ENSD shifts it)."""
        return self.seed + self.eta_noise_seed_delta


def slerp(strength: float, base: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
    """A1111's variation blend of two (C, h, w) noises, normalised along dim 1, including its quirk.

    The quirk: when the two are nearly parallel A1111 returns ``base * strength + sub * (1 - strength)``, the
    weights the other way round from the spherical branch.  Kept, because pasted infotexts depend on it.
    """
    base_unit = base / torch.norm(base, dim=1, keepdim=True)
    sub_unit = sub / torch.norm(sub, dim=1, keepdim=True)
    dot = (base_unit * sub_unit).sum(1)
    if dot.mean() > 0.9995:
        return base * strength + sub * (1 - strength)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    base_weight = (torch.sin((1.0 - strength) * omega) / so).unsqueeze(1)
    return base_weight * base + (torch.sin(strength * omega) / so).unsqueeze(1) * sub


def _paste_centred(canvas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``noise`` (C, h', w') pasted into the centre of ``canvas`` (C, H, W), cropped where larger (A1111's maths)."""
    dx = (canvas.shape[2] - noise.shape[2]) // 2
    dy = (canvas.shape[1] - noise.shape[1]) // 2
    w = noise.shape[2] if dx >= 0 else noise.shape[2] + 2 * dx
    h = noise.shape[1] if dy >= 0 else noise.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    canvas[:, ty:ty + h, tx:tx + w] = noise[:, sy:sy + h, sx:sx + w]
    return canvas


def latent_dims(shape: Sequence[int]) -> tuple[int, int, int]:
    """One latent's (C, H, W) as ints (callers pass tuples, lists or torch sizes)."""
    c, h, w = (int(s) for s in shape)
    return c, h, w


def first_noise(row: RowSeed, shape: tuple[int, int, int], own: RowGenerator,
                fresh: Callable[[int], RowGenerator]) -> torch.Tensor:
    """The start noise (C, H, W) of one image.  ``own`` is the image's generator (it makes exactly one draw here);
    ``fresh(seed)`` makes a new generator of the same source for the variation and resize draws."""
    channels = shape[0]
    resize = row.seed_resize_from
    noise_shape = shape
    if resize is not None and resize[0] > 0 and resize[1] > 0:
        noise_shape = (channels, int(resize[1]) // 8, int(resize[0]) // 8)
    sub = None
    if row.subseed is not None and row.subseed_strength != 0:
        sub = fresh(row.subseed).draw(noise_shape)
    noise = fresh(row.seed).draw(noise_shape) if noise_shape != shape else own.draw(shape)
    if sub is not None:
        noise = slerp(row.subseed_strength, noise, sub.to(noise.device))
    if noise_shape != shape:
        noise = _paste_centred(own.draw(shape), noise)
    return noise
