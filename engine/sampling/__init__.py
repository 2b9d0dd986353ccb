"""A1111 1.8's txt2img sampling, reproduced exactly: noise sources, schedules, samplers and CFG (worker side).

Why our own: pasted A1111 infotexts must give A1111's images, which needs A1111's noise order, its sigma and
timestep grids, k-diffusion's update arithmetic and its CFG combination — diffusers' schedulers differ in all
four (docs/sampling.md lists where).  The maths follows docs/a1111-sampling.md (shared docs); no A1111 or
k-diffusion code is used.

Two ways in:

* the checker's: :func:`sample` (one A1111 batch), :func:`initial_noise`, :func:`sigmas`;
* the engine's: :func:`plan_sampling` -> :class:`SamplingPlan` (counts, ``draw_noise`` per :class:`RowSeed`,
  ``guided_model`` over the caller's model function with a :class:`RowGuidance` per row, ``run`` with step reports
  and a stop/drop check before every model evaluation).
"""

from engine.sampling.cfg import GuidedModel, ModelFn, ModelRows, RowGuidance, combine_guidance, model_rows
from engine.sampling.control import Evaluation, OnStep, SamplingCancelled, ShouldStop, StepReport
from engine.sampling.noise_plan import NoiseNeeds, NoisePlan, NoiseStream
from engine.sampling.plan import (
    SamplingPlan,
    alphas_cumprod_from_config,
    evaluation_counts,
    plan_sampling,
    sd_alphas_cumprod,
)
from engine.sampling.reference import batch_rows, initial_noise, sample, sigmas
from engine.sampling.sources import NOISE_SOURCES, make_generator
from engine.sampling.start_noise import RowSeed

__all__ = [
    "NOISE_SOURCES",
    "Evaluation",
    "GuidedModel",
    "ModelFn",
    "ModelRows",
    "NoiseNeeds",
    "NoisePlan",
    "NoiseStream",
    "OnStep",
    "RowGuidance",
    "RowSeed",
    "SamplingCancelled",
    "SamplingPlan",
    "ShouldStop",
    "StepReport",
    "alphas_cumprod_from_config",
    "batch_rows",
    "combine_guidance",
    "evaluation_counts",
    "initial_noise",
    "make_generator",
    "model_rows",
    "plan_sampling",
    "sample",
    "sd_alphas_cumprod",
    "sigmas",
]
