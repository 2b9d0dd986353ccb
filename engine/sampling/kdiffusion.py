"""The k-diffusion samplers A1111 1.8 runs, written from docs/a1111-sampling.md §5 (eta 1, s_churn 0, s_noise 1).

Why expressions look fussy: the results must match A1111's float32 arithmetic, so each update keeps k-diffusion's
order of operations (``a / b * c * x`` is not ``a * x / b * c`` in float32), its scalar maths on 0-dim float32
sigma tensors, and its Python-float constants.  Every function here takes a :class:`KRun` (the guided denoiser,
the noise stream and the step report), the start latents ``x`` (already scaled by sigmas[0]) and the sigmas, and
returns the final latents.  Draws the samplers make but never use (Euler, Heun and DPM2 at s_churn 0) are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.sampling.lms import lms_coefficients
from engine.sampling.noise_plan import NoiseStream

__all__ = ["SAMPLERS", "KRun", "ancestral_step", "dpmpp_sde_times"]


@dataclass(frozen=True)
class KRun:
    """What a k-diffusion sampler works with: ``denoise(x, sigma, step)`` (CFG-combined D), the row noise, and
    ``report(step, x, denoised)`` called once at the end of every step."""

    denoise: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
    noise: NoiseStream
    report: Callable[[int, torch.Tensor, torch.Tensor], None]


def _to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    return (x - denoised) / sigma


def _t_of(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


def _sigma_of(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up) of an ancestral step at eta 1."""
    sigma_up = min(sigma_to, 1.0 * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def _mid(sigma_a: torch.Tensor, sigma_b: torch.Tensor) -> torch.Tensor:
    return sigma_a.log().lerp(sigma_b.log(), 0.5).exp()


def euler(run: KRun, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        sigma_hat = sigmas[i] * (0.0 + 1)
        denoised = run.denoise(x, sigma_hat, i)
        x = x + _to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
        run.report(i, x, denoised)
    return x


def euler_ancestral(run: KRun, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = run.denoise(x, sigmas[i], i)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        x = x + _to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + run.noise.step() * 1.0 * sigma_up
        run.report(i, x, denoised)
    return x


def heun(run: KRun, x: torch.Tensor, sigmas: torch.Tensor, *, midpoint: bool = False) -> torch.Tensor:
    """Heun's method; ``midpoint=True`` is DPM2 (the second evaluation at the log-midpoint sigma)."""
    for i in range(len(sigmas) - 1):
        sigma_hat = sigmas[i] * (0.0 + 1)
        denoised = run.denoise(x, sigma_hat, i)
        d = _to_d(x, sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        elif midpoint:
            sigma_mid = _mid(sigma_hat, sigmas[i + 1])
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = _to_d(x_2, sigma_mid, run.denoise(x_2, sigma_mid, i))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
        else:
            dt = sigmas[i + 1] - sigma_hat
            x_2 = x + d * dt
            d_2 = _to_d(x_2, sigmas[i + 1], run.denoise(x_2, sigmas[i + 1], i))
            x = x + (d + d_2) / 2 * dt
        run.report(i, x, denoised)
    return x


def dpm_2_ancestral(run: KRun, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = run.denoise(x, sigmas[i], i)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        d = _to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = _mid(sigmas[i], sigma_down)
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = _to_d(x_2, sigma_mid, run.denoise(x_2, sigma_mid, i))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + run.noise.step() * 1.0 * sigma_up
        run.report(i, x, denoised)
    return x


def dpmpp_2s_ancestral(run: KRun, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = run.denoise(x, sigmas[i], i)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        if sigma_down == 0:
            x = x + _to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t_of(sigmas[i]), _t_of(sigma_down)
            h = t_next - t
            s = t + 1 / 2 * h
            x_2 = (_sigma_of(s) / _sigma_of(t)) * x - (-h * (1 / 2)).expm1() * denoised
            denoised_2 = run.denoise(x_2, _sigma_of(s), i)
            x = (_sigma_of(t_next) / _sigma_of(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + run.noise.step() * 1.0 * sigma_up
        run.report(i, x, denoised)
    return x


def lms(run: KRun, x: torch.Tensor, sigmas: torch.Tensor, order: int = 4) -> torch.Tensor:
    derivatives: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = run.denoise(x, sigmas[i], i)
        derivatives.append(_to_d(x, sigmas[i], denoised))
        if len(derivatives) > order:
            derivatives.pop(0)
        coefficients = lms_coefficients(sigmas, i, min(i + 1, order))
        x = x + sum(c * d for c, d in zip(coefficients, reversed(derivatives), strict=True))
        run.report(i, x, denoised)
    return x


def dpmpp_2m(run: KRun, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = run.denoise(x, sigmas[i], i)
        t, t_next = _t_of(sigmas[i]), _t_of(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma_of(t_next) / _sigma_of(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t_of(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma_of(t_next) / _sigma_of(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
        run.report(i, x, denoised)
    return x


def dpmpp_sde_times(sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t, s, t_next) of one DPM++ SDE step (r = 1/2); its Brownian queries are at sigma_of of these."""
    t, t_next = _t_of(sigma), _t_of(sigma_next)
    return t, t + (t_next - t) * (1 / 2), t_next


def dpmpp_sde(run: KRun, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = run.denoise(x, sigmas[i], i)
        if sigmas[i + 1] == 0:
            x = x + _to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        else:
            t, s, t_next = dpmpp_sde_times(sigmas[i], sigmas[i + 1])
            sd, su = ancestral_step(_sigma_of(t), _sigma_of(s))
            s_ = _t_of(sd)
            x_2 = (_sigma_of(s_) / _sigma_of(t)) * x - (t - s_).expm1() * denoised
            x_2 = x_2 + run.noise.brownian(_sigma_of(t), _sigma_of(s)) * 1.0 * su
            denoised_2 = run.denoise(x_2, _sigma_of(s), i)
            sd, su = ancestral_step(_sigma_of(t), _sigma_of(t_next))
            t_next_ = _t_of(sd)
            denoised_d = (1 - 1.0) * denoised + 1.0 * denoised_2
            x = (_sigma_of(t_next_) / _sigma_of(t)) * x - (t - t_next_).expm1() * denoised_d
            x = x + run.noise.brownian(_sigma_of(t), _sigma_of(t_next)) * 1.0 * su
        run.report(i, x, denoised)
    return x


def dpmpp_2m_sde(run: KRun, x: torch.Tensor, sigmas: torch.Tensor, *, heun_solver: bool = False) -> torch.Tensor:
    old_denoised, h_last, h = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = run.denoise(x, sigmas[i], i)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = 1.0 * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if heun_solver:
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            noise = run.noise.brownian(sigmas[i], sigmas[i + 1])
            x = x + noise * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * 1.0
        old_denoised, h_last = denoised, h
        run.report(i, x, denoised)
    return x


def dpmpp_3m_sde(run: KRun, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = run.denoise(x, sigmas[i], i)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (1.0 + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None and h_1 is not None and denoised_1 is not None and denoised_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None and denoised_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
            noise = run.noise.brownian(sigmas[i], sigmas[i + 1])
            x = x + noise * sigmas[i + 1] * (-2 * h * 1.0).expm1().neg().sqrt() * 1.0
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
        run.report(i, x, denoised)
    return x


SAMPLERS: dict[str, Callable[[KRun, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "dpm_2": lambda run, x, sigmas: heun(run, x, sigmas, midpoint=True),
    "dpm_2_ancestral": dpm_2_ancestral,
    "dpmpp_2s_ancestral": dpmpp_2s_ancestral,
    "lms": lms,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_sde": dpmpp_sde,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_2m_sde_heun": lambda run, x, sigmas: dpmpp_2m_sde(run, x, sigmas, heun_solver=True),
    "dpmpp_3m_sde": dpmpp_3m_sde,
}
