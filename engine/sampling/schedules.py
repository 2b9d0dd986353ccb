"""The model's noise levels as the samplers see them, and A1111's sigma schedules and timestep grid (docs §3-4, §6).

Why exact float32 tensor maths in a fixed order: the SDE samplers query their Brownian noise at the schedule's
sigmas, and a one-ulp shift of a query time moves the final latents by ~1e-4; every expression here is written in
the order k-diffusion/A1111 evaluate it, on the CPU, in float32.
"""

from __future__ import annotations

import math

import torch

__all__ = ["SCHEDULES", "DiscreteSigmas", "schedule_sigmas", "timestep_grid"]

SCHEDULES: tuple[str, ...] = ("Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform")


class DiscreteSigmas:
    """k-diffusion's view of an eps-prediction model trained on 1000 discrete timesteps (its ``CompVisDenoiser``).

    ``sigmas[t] = sqrt((1 - ac[t]) / ac[t])`` increases with t; conversions between sigma and the continuous timestep
    interpolate linearly in log sigma.  ``sigma_min``/``sigma_max`` are Python floats, as A1111 passes them.
    """

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        ac = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float32)
        self.alphas_cumprod = ac
        self.sigmas = ((1 - ac) / ac) ** 0.5
        self.log_sigmas = self.sigmas.log()
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The continuous timestep of ``sigma`` (no quantisation, A1111's default)."""
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high = low + 1
        lo, hi = self.log_sigmas[low], self.log_sigmas[high]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        t = (1 - w) * low + w * high
        return t.view(sigma.shape)

    def c_in(self, sigma: torch.Tensor) -> torch.Tensor:
        """The model-input scaling 1 / sqrt(sigma^2 + 1)."""
        return 1 / (sigma ** 2 + 1.0 ** 2) ** 0.5


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def _uniform(view: DiscreteSigmas, n: int) -> torch.Tensor:
    t = torch.linspace(len(view.sigmas) - 1, 0, n)
    return _append_zero(view.t_to_sigma(t))


def _karras(view: DiscreteSigmas, n: int, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = view.sigma_min ** (1 / rho)
    max_inv_rho = view.sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def _exponential(view: DiscreteSigmas, n: int) -> torch.Tensor:
    return _append_zero(torch.linspace(math.log(view.sigma_max), math.log(view.sigma_min), n).exp())


def _polyexponential(view: DiscreteSigmas, n: int, rho: float = 1.0) -> torch.Tensor:
    ramp = torch.linspace(1, 0, n) ** rho
    log_min, log_max = math.log(view.sigma_min), math.log(view.sigma_max)
    return _append_zero(torch.exp(ramp * (log_max - log_min) + log_min))


def _sgm_uniform(view: DiscreteSigmas, n: int) -> torch.Tensor:
    start = view.sigma_to_t(torch.tensor(view.sigma_max))
    end = view.sigma_to_t(torch.tensor(view.sigma_min))
    sigmas = [view.t_to_sigma(t) for t in torch.linspace(start, end, n + 1)[:-1]]
    return torch.tensor([*(float(s) for s in sigmas), 0.0], dtype=torch.float32)


_BUILDERS = {"Uniform": _uniform, "Karras": _karras, "Exponential": _exponential, "Polyexponential": _polyexponential,
             "SGM Uniform": _sgm_uniform}


def schedule_sigmas(view: DiscreteSigmas, schedule: str, steps: int, *, discard_penultimate: bool = False) -> torch.Tensor:
    """The sigmas of ``steps`` k-diffusion steps (length steps + 1, ending in 0), float32 on the CPU.

    ``discard_penultimate``: DPM2, DPM2 a and DPM++ 3M SDE build steps + 1 sigmas and drop the next-to-last one.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    builder = _BUILDERS.get(schedule)
    if builder is None:
        raise ValueError(f"unknown schedule {schedule!r}; valid schedules: {', '.join(SCHEDULES)}")
    sigmas = builder(view, steps + 1 if discard_penultimate else steps)
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


def timestep_grid(steps: int) -> torch.Tensor:
    """DDIM/PLMS/UniPC timesteps: 1 + j * (1000 // steps) below 1000, clipped to 999 (may be longer than steps)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)
