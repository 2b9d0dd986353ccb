"""A sampling run planned before it starts: schedule, step and evaluation counts, noise needs; then the run itself.

Why a plan object: the engine needs the numbers before the loop — how many model evaluations (progress, prompt
editing, benchmarks), how many noise draws and which Brownian queries each row needs (the noise plan is drawn
from them) — and they all follow from (sampler, schedule, steps, alphas_cumprod) alone, as in A1111.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.samplers import SamplerSpec, resolve_sampler, resolve_schedule
from engine.sampling import kdiffusion
from engine.sampling.cfg import GuidedModel, ModelFn, RowGuidance
from engine.sampling.control import OnStep, ShouldStop, StepReport
from engine.sampling.noise_plan import NoiseNeeds, NoisePlan
from engine.sampling.schedules import DiscreteSigmas, schedule_sigmas, timestep_grid
from engine.sampling.start_noise import RowSeed
from engine.sampling.timestep_samplers import TRun, ddim, plms
from engine.sampling.unipc import unipc

__all__ = ["SamplingPlan", "alphas_cumprod_from_config", "evaluation_counts", "plan_sampling", "sd_alphas_cumprod"]

_NEXT_IS_ZERO = ("heun", "dpm_2", "dpmpp_sde")        # second order, but a plain Euler step onto sigma 0
_DOWN_IS_ZERO = ("dpm_2_ancestral", "dpmpp_2s_ancestral")  # ... onto sigma_down 0
_ANCESTRAL = ("euler_ancestral", "dpmpp_2s_ancestral", "dpm_2_ancestral")
_BROWNIAN = ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde")


def _k_evaluations(algorithm: str, sigmas: torch.Tensor) -> tuple[int, ...]:
    counts = []
    for i in range(len(sigmas) - 1):
        if algorithm in _NEXT_IS_ZERO:
            counts.append(1 if sigmas[i + 1] == 0 else 2)
        elif algorithm in _DOWN_IS_ZERO:
            counts.append(1 if kdiffusion.ancestral_step(sigmas[i], sigmas[i + 1])[0] == 0 else 2)
        else:
            counts.append(1)
    return tuple(counts)


def _step_draws(algorithm: str, sigmas: torch.Tensor) -> int:
    if algorithm not in _ANCESTRAL:
        return 0
    if algorithm == "dpm_2_ancestral":
        return sum(bool(kdiffusion.ancestral_step(sigmas[i], sigmas[i + 1])[0] != 0) for i in range(len(sigmas) - 1))
    return sum(bool(sigmas[i + 1] > 0) for i in range(len(sigmas) - 1))


def _brownian_queries(algorithm: str, sigmas: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    pairs = []
    for i in range(len(sigmas) - 1):
        if sigmas[i + 1] == 0:
            continue
        if algorithm == "dpmpp_sde":
            t, s, t_next = kdiffusion.dpmpp_sde_times(sigmas[i], sigmas[i + 1])
            pairs += [(t.neg().exp(), s.neg().exp()), (t.neg().exp(), t_next.neg().exp())]
        else:
            pairs.append((sigmas[i], sigmas[i + 1]))
    return tuple(pairs)


def _timestep_evaluations(algorithm: str, grid_length: int) -> tuple[int, ...]:
    if algorithm == "unipc":
        return (1,) if grid_length == 1 else (2, *([1] * (grid_length - 2)), 0)
    steps = grid_length - 1
    if algorithm == "plms" and steps:
        return (2, *([1] * (steps - 1)))
    return (1,) * steps


@dataclass(frozen=True, eq=False)
class SamplingPlan:
    """One sampler run's fixed facts.  Build with :func:`plan_sampling`.

    ``sigmas`` (k-diffusion) or ``timesteps`` (DDIM/PLMS/UniPC) on the CPU; ``evaluations_per_step`` has one entry
    per sampler step (its length can differ from ``steps``: DDIM/PLMS/UniPC use A1111's grid).
    """

    spec: SamplerSpec
    schedule: str
    steps: int
    view: DiscreteSigmas
    sigmas: torch.Tensor | None
    timesteps: torch.Tensor | None
    evaluations_per_step: tuple[int, ...]
    noise_needs: NoiseNeeds

    @property
    def sampler_steps(self) -> int:
        """Progress callbacks the run makes (one per sampler step)."""
        return len(self.evaluations_per_step)

    @property
    def total_evaluations(self) -> int:
        """Model evaluations (each is one cond + uncond pass over the batch)."""
        return sum(self.evaluations_per_step)

    @property
    def prompt_schedule_steps(self) -> int:
        """The step count A1111 resolves prompt editing against (``[a:b:0.5]``): twice the steps for second order.

        A1111's ``SamplerData.total_steps`` doubles the steps of a second-order sampler even though its last step
        makes one evaluation (Heun 20 steps: schedule over 40, 39 evaluations), so the fractions land as there."""
        return self.steps * 2 if self.spec.second_order else self.steps

    def guided_model(self, model: ModelFn, guidance: Sequence[RowGuidance], *,
                     should_stop: ShouldStop | None = None) -> GuidedModel:
        """The CFG-guided model for this run (it needs the model's sigma view for k-diffusion samplers)."""
        return GuidedModel(model, guidance, should_stop=should_stop, view=self.view)

    def draw_noise(self, rows: Sequence[RowSeed], shape: tuple[int, int, int], device: torch.device | str = "cpu", *,
                   precompute_brownian: bool | None = None) -> NoisePlan:
        """Every row's noise for this run, one :class:`RowSeed` per row (see :meth:`NoisePlan.draw`)."""
        return NoisePlan.draw(rows, shape, self.noise_needs, device, precompute_brownian=precompute_brownian)

    def run(self, guided: GuidedModel, noise: NoisePlan, on_step: OnStep | None = None) -> torch.Tensor:
        """Sample; returns the final latents (rows, C, H, W) float32 on the noise plan's device."""
        total = self.sampler_steps

        def report(i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
            if on_step is not None:
                on_step(StepReport(i + 1, total, x, denoised))

        algorithm = self.spec.algorithm
        if self.sigmas is not None:
            run = kdiffusion.KRun(guided.denoised, noise.stream(), report)
            return kdiffusion.SAMPLERS[algorithm](run, noise.start * self.sigmas[0], self.sigmas)
        if self.timesteps is None:
            raise ValueError(f"{self.spec.name} needs timesteps or sigmas; this plan has neither")
        eps_run = TRun(guided.eps, report)
        if algorithm == "unipc":
            return unipc(eps_run, noise.start, len(self.timesteps), self.view.alphas_cumprod)
        sampler = ddim if algorithm == "ddim" else plms
        return sampler(eps_run, noise.start, self.timesteps, self.view.alphas_cumprod)


def plan_sampling(sampler: str | SamplerSpec, schedule: str, steps: int, alphas_cumprod: torch.Tensor) -> SamplingPlan:
    """Plan a run of an A1111 sampler name (or spec) with a schedule type ("Automatic" = the name's own)."""
    spec = sampler if isinstance(sampler, SamplerSpec) else resolve_sampler(sampler)
    if not 1 <= steps <= 1000:
        raise ValueError(f"steps must lie between 1 and 1000, got {steps}")
    view = DiscreteSigmas(alphas_cumprod)
    label = resolve_schedule(schedule)
    if spec.family == "timesteps":
        timesteps = timestep_grid(steps)
        return SamplingPlan(spec, "Automatic", steps, view, None, timesteps,
                            _timestep_evaluations(spec.algorithm, len(timesteps)), NoiseNeeds())
    concrete = spec.default_schedule if label == "Automatic" else label
    sigmas = schedule_sigmas(view, concrete, steps, discard_penultimate=spec.discard_penultimate_sigma)
    needs = NoiseNeeds(step_draws=_step_draws(spec.algorithm, sigmas))
    if spec.algorithm in _BROWNIAN:
        span = (sigmas[sigmas > 0].min(), sigmas.max())
        needs = NoiseNeeds(0, _brownian_queries(spec.algorithm, sigmas), span)
    return SamplingPlan(spec, concrete, steps, view, sigmas, None, _k_evaluations(spec.algorithm, sigmas), needs)


def sd_alphas_cumprod() -> torch.Tensor:
    """Stable Diffusion 1.x/2.x's alphas_cumprod (ldm's scaled-linear betas, float64 cumprod, stored float32)."""
    return alphas_cumprod_from_config({})


def alphas_cumprod_from_config(config: Mapping[str, Any]) -> torch.Tensor:
    """A checkpoint's alphas_cumprod from its diffusers scheduler config (the betas its model was trained with).

    SD 1.x/2.x use ldm's scaled-linear betas, which gives exactly :func:`sd_alphas_cumprod`; "linear" betas are
    accepted too.  Anything else (trained betas, cosine) is refused: A1111's samplers are defined for these two.
    """
    schedule = config.get("beta_schedule", "scaled_linear")
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    count = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None or schedule not in ("scaled_linear", "linear"):
        raise ValueError(f"unsupported noise schedule {schedule!r} (SD 1.x/2.x checkpoints use scaled_linear)")
    if schedule == "scaled_linear":
        betas = torch.linspace(start ** 0.5, end ** 0.5, count, dtype=torch.float64) ** 2
    else:
        betas = torch.linspace(start, end, count, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0).float()


def evaluation_counts(sampler: str | SamplerSpec, steps: int, schedule: str = "Automatic",
                      alphas_cumprod: torch.Tensor | None = None) -> tuple[int, ...]:
    """Model evaluations per sampler step (their sum is the run's total), without a checkpoint at hand.

    The counts depend on the checkpoint only through its noise schedule; None means SD's.
    """
    ac = sd_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    return plan_sampling(sampler, schedule, steps, ac).evaluations_per_step
