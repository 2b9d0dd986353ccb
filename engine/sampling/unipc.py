"""UniPC as A1111 runs it: multistep UniPC-bh1 predicting x0, order 3, time-uniform grid (docs §6).

Why not diffusers' UniPCMultistepScheduler: A1111 steps through continuous time t = linspace(1, 0.001, N + 1) of
a VP schedule interpolated from alphas_cumprod, and gives the model (t - 0.001) * 1000, not discrete timesteps.
N is the length of A1111's DDIM grid (len can exceed steps).  A1111 refuses N < order; here the order is lowered to
N instead (the only sane reading for 1 or 2 steps).
"""

from __future__ import annotations

import torch

from engine.sampling.timestep_samplers import TRun

__all__ = ["UNIPC_ORDER", "unipc"]

UNIPC_ORDER = 3


class _VPSchedule:
    """log alpha(t) piecewise-linear in t over knots linspace(0, 1, 1001)[1:] (extrapolated linearly outside)."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        ac = alphas_cumprod.detach().to("cpu", torch.float32)
        self.total = len(ac)
        self.knots = torch.linspace(0.0, 1.0, self.total + 1)[1:]
        self.values = 0.5 * torch.log(ac)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        k = len(self.knots)
        below = int(torch.searchsorted(self.knots, t.reshape(1))[0])
        start = 0 if below == 0 else k - 2 if below == k else below - 1
        x0, x1 = self.knots[start], self.knots[start + 1]
        y0, y1 = self.values[start], self.values[start + 1]
        return y0 + (t - x0) * (y1 - y0) / (x1 - x0)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lam(self, t: torch.Tensor) -> torch.Tensor:
        log_mean = self.log_alpha(t)
        return log_mean - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_mean))


def _weighted(rhos: torch.Tensor, terms: list[torch.Tensor]) -> torch.Tensor | int:
    total: torch.Tensor | int = 0
    for k, term in enumerate(terms):
        total = total + rhos[k] * term
    return total


class _UniPC:
    def __init__(self, run: TRun, alphas_cumprod: torch.Tensor) -> None:
        self.run = run
        self.ns = _VPSchedule(alphas_cumprod)

    def x0(self, x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        eps = self.run.eps(x, (t - 1.0 / self.ns.total) * 1000.0, step)
        return (x - self.ns.std(t) * eps) / self.ns.alpha(t)

    def _rhos(self, rks: list, h: torch.Tensor, order: int) -> tuple[torch.Tensor, torch.Tensor]:
        rk = torch.tensor([*rks, 1.0])
        hh = -h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial = 1
        rows, b = [], []
        for i in range(1, order + 1):
            rows.append(torch.pow(rk, i - 1))
            b.append(h_phi_k * factorial / hh)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r, bt = torch.stack(rows), torch.tensor(b)
        predictor = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(r[:-1, :-1], bt[:-1]) if order > 2 else None
        corrector = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r, bt)
        return predictor, corrector

    def update(self, x: torch.Tensor, models: list, times: list, t: torch.Tensor, order: int, corrector: bool,
               step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        ns = self.ns
        t_prev_0, model_prev_0 = times[-1], models[-1]
        lambda_prev_0 = ns.lam(t_prev_0)
        h = ns.lam(t) - lambda_prev_0
        alpha_t = torch.exp(ns.log_alpha(t))
        rks, d1s = [], []
        for i in range(1, order):
            rk = (ns.lam(times[-(i + 1)]) - lambda_prev_0) / h
            rks.append(rk)
            d1s.append((models[-(i + 1)] - model_prev_0) / rk)
        rhos_p, rhos_c = self._rhos(rks, h, order)
        hh = -h
        x_t_ = (ns.std(t) / ns.std(t_prev_0)) * x - (alpha_t * torch.expm1(hh)) * model_prev_0
        x_t = x_t_ - (alpha_t * hh) * (_weighted(rhos_p, d1s) if d1s else 0)
        if not corrector:
            return x_t, None
        model_t = self.x0(x_t, t, step)
        correction = _weighted(rhos_c[:-1], d1s) if d1s else 0
        return x_t_ - (alpha_t * hh) * (correction + rhos_c[-1] * (model_t - model_prev_0)), model_t


def unipc(run: TRun, x: torch.Tensor, steps: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``steps`` UniPC updates (A1111 passes the length of its timestep grid) from the unit start noise ``x``."""
    solver = _UniPC(run, alphas_cumprod)
    times_all = torch.linspace(1.0, 1.0 / solver.ns.total, steps + 1)
    order = min(UNIPC_ORDER, steps)
    times = [times_all[0]]
    models = [solver.x0(x, times_all[0], 0)]
    for init_order in range(1, order):
        t = times_all[init_order]
        x, model_x = solver.update(x, models, times, t, init_order, True, init_order - 1)
        run.report(init_order - 1, x, model_x)
        models.append(model_x)
        times.append(t)
    for step in range(order, steps + 1):
        t = times_all[step]
        x, model_x = solver.update(x, models, times, t, min(order, steps + 1 - step), step != steps, step - 1)
        run.report(step - 1, x, model_x if model_x is not None else models[-1])
        times, models = [*times[1:], t], [*models[1:], models[-1]]
        if step < steps:
            models[-1] = model_x if model_x is not None else solver.x0(x, t, step - 1)
    return x

