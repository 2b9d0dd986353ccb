"""A1111 sampler names and the diffusers schedulers that implement them.

Torch-free on purpose: the bot imports this to offer the sampler choices and to reject unknown names before a job is
queued; the worker (``engine.pipeline.make_scheduler``) turns a :class:`SamplerSpec` into a scheduler.

Names are A1111's, including the pre-1.9 names that carry the schedule ("DPM++ 2M Karras"); A1111 1.9+ still reads
those when an image's parameters are pasted.  The k-diffusion family uses evenly spaced ("linspace") timesteps from
the last training step down, which is how A1111's default schedule discretizes; DDIM and PLMS keep the
checkpoint's own spacing, as A1111's CompVis samplers do.

How a sampler draws noise matters for per-image seeds inside a batch (see ``noise``): each image has its own
``torch.Generator`` (or Brownian tree seed), so an image is the same alone or batched with others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = ["DEFAULT_SAMPLER", "SAMPLERS", "SAMPLER_NAMES", "SamplerSpec", "UnknownSampler", "resolve_sampler"]

NoiseKind = Literal["none", "generator", "brownian"]


@dataclass(frozen=True, slots=True)
class SamplerSpec:
    """How to build one A1111 sampler from a checkpoint's scheduler config.

    ``scheduler_class`` is a class name in ``diffusers``; ``options`` override the checkpoint's scheduler config.
    ``noise``: "none" (deterministic given the start latents), "generator" (the scheduler's ``step()`` draws noise
    from the per-image generators passed to it) or "brownian" (a Brownian tree seeded per image).
    ``unet_calls_per_step``: 2 for second-order samplers (Heun, DPM2, DPM++ SDE) — a step costs two UNet passes.
    ``schedule_type``: what A1111 1.9+ writes as "Schedule type" for the pre-1.9 combined names.
    """

    name: str
    scheduler_class: str
    options: Mapping[str, object] = field(default_factory=dict)
    noise: NoiseKind = "none"
    unet_calls_per_step: int = 1
    schedule_type: str | None = None


_LINSPACE = {"timestep_spacing": "linspace"}
_KARRAS = {"use_karras_sigmas": True}
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2, **_LINSPACE}
_DPMPP_2M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, **_LINSPACE}

_SPECS = (
    SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", _LINSPACE, noise="generator"),
    SamplerSpec("Euler", "EulerDiscreteScheduler", _LINSPACE),
    SamplerSpec("LMS", "LMSDiscreteScheduler", _LINSPACE),
    SamplerSpec("LMS Karras", "LMSDiscreteScheduler", {**_LINSPACE, **_KARRAS}, schedule_type="Karras"),
    SamplerSpec("Heun", "HeunDiscreteScheduler", _LINSPACE, unet_calls_per_step=2),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler", _LINSPACE, unet_calls_per_step=2),
    SamplerSpec("DPM2 Karras", "KDPM2DiscreteScheduler", {**_LINSPACE, **_KARRAS}, unet_calls_per_step=2,
                schedule_type="Karras"),
    SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", _LINSPACE, noise="generator", unet_calls_per_step=2),
    SamplerSpec("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", {**_LINSPACE, **_KARRAS}, noise="generator",
                unet_calls_per_step=2, schedule_type="Karras"),
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", _DPMPP_2M),
    SamplerSpec("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {**_DPMPP_2M, **_KARRAS}, schedule_type="Karras"),
    SamplerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler", _DPMPP_2M_SDE, noise="generator"),
    SamplerSpec("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", {**_DPMPP_2M_SDE, **_KARRAS},
                noise="generator", schedule_type="Karras"),
    SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", _LINSPACE, noise="brownian", unet_calls_per_step=2),
    SamplerSpec("DPM++ SDE Karras", "DPMSolverSDEScheduler", {**_LINSPACE, **_KARRAS}, noise="brownian",
                unet_calls_per_step=2, schedule_type="Karras"),
    SamplerSpec("DDIM", "DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}),
    SamplerSpec("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
    SamplerSpec("UniPC", "UniPCMultistepScheduler"),
)

#: Every accepted name, in the order a menu should show them.
SAMPLERS: Mapping[str, SamplerSpec] = MappingProxyType({s.name: s for s in _SPECS})
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
DEFAULT_SAMPLER = "Euler a"
_BY_FOLDED = {name.casefold(): spec for name, spec in SAMPLERS.items()}


class UnknownSampler(ValueError):
    """A sampler name we do not know; the message lists the valid ones."""

    def __init__(self, name: str) -> None:
        shown = name if len(name) <= 40 else name[:40] + "…"
        super().__init__(f"unknown sampler {shown!r}; valid samplers: {', '.join(SAMPLER_NAMES)}")
        self.name = name


def resolve_sampler(name: str) -> SamplerSpec:
    """The spec for an A1111 sampler name (exact, or differing only in letter case / surrounding spaces)."""
    spec = SAMPLERS.get(name) or _BY_FOLDED.get(name.strip().casefold())
    if spec is None:
        raise UnknownSampler(name)
    return spec
