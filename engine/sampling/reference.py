"""One A1111 txt2img batch end to end, with the call shape the acceptance checker uses (shared/tools/check_sampling.py).

Why it exists next to the engine's API: it is the smallest complete use of the package (plan, noise plan, guided
model, run) with A1111's batch conventions — seeds per image, one subseed list, one CFG scale — so the checker
and the tests exercise exactly the code the engine runs.  It runs on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from engine.samplers import resolve_sampler_and_schedule
from engine.sampling.cfg import ModelRows, RowGuidance
from engine.sampling.control import Evaluation
from engine.sampling.plan import plan_sampling
from engine.sampling.sources import generator_factory, make_generator
from engine.sampling.start_noise import RowSeed, first_noise, latent_dims

__all__ = ["batch_rows", "initial_noise", "sample", "sigmas"]

UNet = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def batch_rows(seeds: Sequence[int], *, rng: str = "CPU", eta_noise_seed_delta: int = 0,
               subseeds: Sequence[int] | None = None, subseed_strength: float = 0.0,
               seed_resize_from: tuple[int, int] | None = None) -> list[RowSeed]:
    """A1111's per-image randomness of one batch (image k: seeds[k], subseeds[k] or 0 when the list is short)."""
    rows = []
    for k, seed in enumerate(seeds):
        subseed = None
        if subseeds is not None and subseed_strength != 0:
            subseed = int(subseeds[k]) if k < len(subseeds) else 0
        rows.append(RowSeed(int(seed), subseed, float(subseed_strength), seed_resize_from, int(eta_noise_seed_delta),
                            rng))
    return rows


def sample(unet: UNet, *, sampler: str, schedule: str, steps: int, cfg_scale: float, seeds: Sequence[int],
           shape: tuple[int, int, int], cond: torch.Tensor, uncond: torch.Tensor, alphas_cumprod: torch.Tensor,
           rng: str = "CPU", eta_noise_seed_delta: int = 0, subseeds: Sequence[int] | None = None,
           subseed_strength: float = 0.0, seed_resize_from: tuple[int, int] | None = None) -> torch.Tensor:
    """The final latents (len(seeds), *shape) of one A1111 txt2img batch; ``unet(x_in, t, context) -> eps``."""
    plan = plan_sampling(sampler, schedule, steps, alphas_cumprod)
    rows = batch_rows(seeds, rng=rng, eta_noise_seed_delta=eta_noise_seed_delta, subseeds=subseeds,
                      subseed_strength=subseed_strength, seed_resize_from=seed_resize_from)
    noise = plan.draw_noise(rows, shape)

    def model(x_in: torch.Tensor, t: torch.Tensor, layout: ModelRows, at: Evaluation) -> torch.Tensor:
        context = torch.stack([cond[r] if part >= 0 else uncond[r] for r, part in zip(layout.rows, layout.parts,
                                                                                        strict=True)])
        return unet(x_in, t, context)

    guided = plan.guided_model(model, [RowGuidance(float(cfg_scale))] * len(rows))
    return plan.run(guided, noise)


def initial_noise(seeds: Sequence[int], shape: tuple[int, int, int], *, rng: str = "CPU",
                  subseeds: Sequence[int] | None = None, subseed_strength: float = 0.0,
                  seed_resize_from: tuple[int, int] | None = None) -> torch.Tensor:
    """The unit-variance start noise (len(seeds), *shape) of one batch."""
    rows = batch_rows(seeds, rng=rng, subseeds=subseeds, subseed_strength=subseed_strength,
                      seed_resize_from=seed_resize_from)
    shape = latent_dims(shape)
    return torch.stack([first_noise(row, shape, make_generator(row.source, row.seed),
                                    generator_factory(row.source)) for row in rows])


def sigmas(sampler: str, schedule: str, steps: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The sigma schedule of a k-diffusion sampler (ending in 0); NotImplementedError for DDIM/PLMS/UniPC."""
    spec, _ = resolve_sampler_and_schedule(sampler)
    if spec.family != "k-diffusion":
        raise NotImplementedError(f"{spec.name} uses A1111's timestep grid, not a sigma schedule")
    plan = plan_sampling(spec, schedule, steps, alphas_cumprod)
    return plan.sigmas
