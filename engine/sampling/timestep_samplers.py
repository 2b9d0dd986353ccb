"""DDIM and PLMS as A1111 1.6+ runs them on its own timestep grid (docs/a1111-sampling.md §6), eta 0.

Why not diffusers' schedulers: A1111 stops at t = 1 (never 0), starts at 1 + (len - 1) * (1000 // steps) — higher
than diffusers when 1000 // steps leaves timesteps over — and takes alphas_cumprod[prev] through float64.  The
model sees the unscaled latents and integer timesteps; CFG is on eps.  DDIM's step-noise draws are multiplied by
eta = 0, so they are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["TRun", "ddim", "plms"]


@dataclass(frozen=True)
class TRun:
    """What an eps sampler works with: ``eps(x, t, step)`` (CFG-combined), ``report(step, x, pred_x0)``."""

    eps: Callable[[torch.Tensor, torch.Tensor | float, int], torch.Tensor]
    report: Callable[[int, torch.Tensor, torch.Tensor], None]


class _Alphas:
    """alpha-bar at each grid timestep and at the one before (alphas_cumprod[0] before the first), A1111's dtypes."""

    def __init__(self, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> None:
        ac = alphas_cumprod.detach().to("cpu", torch.float32)
        self.at = ac[timesteps]
        self.prev = ac[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
        self.sqrt_one_minus = torch.sqrt(1 - self.at)

    def step(self, x: torch.Tensor, e_t: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The deterministic DDIM update from ``x`` with noise prediction ``e_t``: (x_prev, pred_x0)."""
        one = torch.ones((), dtype=torch.float32)
        a_t = self.at[index].item() * one
        a_prev = self.prev[index].item() * one
        sqrt_one_minus_at = self.sqrt_one_minus[index].item() * one
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev).sqrt() * e_t
        return a_prev.sqrt() * pred_x0 + dir_xt, pred_x0


def ddim(run: TRun, x: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    alphas = _Alphas(alphas_cumprod, timesteps)
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = run.eps(x, timesteps[index].item(), i)
        x, pred_x0 = alphas.step(x, e_t, index)
        run.report(i, x, pred_x0)
    return x


def _adams_bashforth(e_t: torch.Tensor, old: list[torch.Tensor]) -> torch.Tensor:
    if len(old) == 1:
        return (3 * e_t - old[-1]) / 2
    if len(old) == 2:
        return (23 * e_t - 16 * old[-1] + 5 * old[-2]) / 12
    return (55 * e_t - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24


def plms(run: TRun, x: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    alphas = _Alphas(alphas_cumprod, timesteps)
    old_eps: list[torch.Tensor] = []
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = run.eps(x, timesteps[index].item(), i)
        if not old_eps:
            x_prev, _ = alphas.step(x, e_t, index)
            e_t_next = run.eps(x_prev, timesteps[max(index - 1, 0)].item(), i)
            e_t_prime = (e_t + e_t_next) / 2
        else:
            e_t_prime = _adams_bashforth(e_t, old_eps)
        x, pred_x0 = alphas.step(x, e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        run.report(i, x, pred_x0)
    return x
