"""Sampling plans: A1111's step grids, schedule lengths and the counts the engine reads before a run."""

from __future__ import annotations

import pytest
import torch

from engine.sampling import evaluation_counts, plan_sampling, sd_alphas_cumprod
from engine.sampling.schedules import DiscreteSigmas, schedule_sigmas, timestep_grid


def test_timestep_grid_can_be_longer_than_steps(alphas_cumprod):
    grid = timestep_grid(21)                      # 1000 // 21 = 47: 22 timesteps, the first at 1 + 21 * 47
    assert len(grid) == 22 and int(grid[0]) == 1 and int(grid[-1]) == 988
    assert timestep_grid(1).tolist() == [1] and int(timestep_grid(1000)[-1]) == 999
    ddim, plms, unipc = (plan_sampling(n, "Automatic", 21, alphas_cumprod) for n in ("DDIM", "PLMS", "UniPC"))
    assert (ddim.sampler_steps, ddim.total_evaluations) == (21, 21)
    assert (plms.sampler_steps, plms.total_evaluations) == (21, 22)   # PLMS's first step evaluates twice
    assert (unipc.sampler_steps, unipc.total_evaluations) == (22, 22)
    assert unipc.evaluations_per_step[0] == 2 and unipc.evaluations_per_step[-1] == 0


@pytest.mark.parametrize(("sampler", "steps", "per_step"), [
    ("Heun", 4, (2, 2, 2, 1)), ("DPM++ SDE Karras", 3, (2, 2, 1)), ("DPM2 a", 3, (2, 2, 1)),
    ("DPM++ 2S a Karras", 2, (2, 1)), ("Euler a", 3, (1, 1, 1)), ("DPM++ 3M SDE", 3, (1, 1, 1)),
])
def test_evaluations_per_step(sampler, steps, per_step, alphas_cumprod):
    plan = plan_sampling(sampler, "Automatic", steps, alphas_cumprod)
    assert plan.evaluations_per_step == per_step and plan.total_evaluations == sum(per_step)


def test_prompt_editing_counts_evaluations_for_second_order_samplers(alphas_cumprod):
    assert plan_sampling("Heun", "Automatic", 20, alphas_cumprod).prompt_schedule_steps == 40
    assert plan_sampling("DPM++ 2M Karras", "Automatic", 20, alphas_cumprod).prompt_schedule_steps == 20


def test_discarding_samplers_drop_the_next_to_last_sigma(alphas_cumprod):
    view = DiscreteSigmas(alphas_cumprod)
    longer = schedule_sigmas(view, "Karras", 8)
    plan = plan_sampling("DPM2 Karras", "Automatic", 7, alphas_cumprod)
    assert torch.equal(plan.sigmas, torch.cat([longer[:-2], longer[-1:]]))
    assert len(plan_sampling("DPM++ 3M SDE", "Exponential", 7, alphas_cumprod).sigmas) == 8


@pytest.mark.parametrize("schedule", ["Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform"])
def test_schedules_run_from_sigma_max_to_zero(schedule, alphas_cumprod):
    view = DiscreteSigmas(alphas_cumprod)
    sigmas = schedule_sigmas(view, schedule, 9)
    assert sigmas.dtype == torch.float32 and len(sigmas) == 10 and float(sigmas[-1]) == 0.0
    assert float(sigmas[0]) == pytest.approx(view.sigma_max, rel=1e-6)
    assert bool((sigmas[1:] < sigmas[:-1]).all())


def test_schedule_type_overrides_the_name_and_is_ignored_by_timestep_samplers(alphas_cumprod):
    assert plan_sampling("DPM++ 2M Karras", "Exponential", 5, alphas_cumprod).schedule == "Exponential"
    assert plan_sampling("DPM++ 2M Karras", "automatic", 5, alphas_cumprod).schedule == "Karras"
    assert plan_sampling("DDIM", "Karras", 5, alphas_cumprod).schedule == "Automatic"


def test_out_of_range_steps_are_refused(alphas_cumprod):
    for steps in (0, 1001):
        with pytest.raises(ValueError, match="steps"):
            plan_sampling("Euler", "Automatic", steps, alphas_cumprod)


def test_evaluation_counts_without_a_checkpoint(alphas_cumprod):
    assert torch.equal(sd_alphas_cumprod(), alphas_cumprod)    # the references' model uses SD's schedule
    assert evaluation_counts("DPM++ SDE Karras", 20) == (2,) * 19 + (1,)
    assert sum(evaluation_counts("PLMS", 20)) == 20 and evaluation_counts("Euler a", 20, "Karras") == (1,) * 20
