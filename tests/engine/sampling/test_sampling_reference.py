"""engine.sampling against A1111's own outputs: final latents, start noise, sigmas and model-evaluation counts.

The same checks as the shared acceptance checker, on the trimmed copy of its public references (48 cases:
every sampler family, all schedules, NV, ENSD, variation seeds, seed resize).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import engine.sampling as sampling

CASES_FILE = Path(__file__).resolve().parents[2] / "fixtures" / "sampling" / "cases.json"
CASES = json.loads(CASES_FILE.read_text(encoding="utf-8"))["cases"]
ATOL, RTOL = 1e-4, 1e-5   # the checker's pass rule: max |diff| <= atol + rtol * max |A1111's latents|


def case_kwargs(case: dict, tensors: dict[str, torch.Tensor]) -> dict:
    resize = case.get("seed_resize_from")
    return dict(sampler=case["sampler"], schedule=case["schedule"], steps=case["steps"], cfg_scale=case["cfg_scale"],
                seeds=list(case["seeds"]), shape=tuple(case["shape"]), cond=tensors[case["id"] + ".cond"],
                uncond=tensors[case["id"] + ".uncond"], alphas_cumprod=tensors["alphas_cumprod"],
                rng=case.get("rng", "CPU"), eta_noise_seed_delta=case.get("eta_noise_seed_delta", 0),
                subseeds=case.get("subseeds"), subseed_strength=case.get("subseed_strength", 0.0),
                seed_resize_from=tuple(resize) if resize else None)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_latents_match_a1111(case, reference, toy_unet):
    tensors = reference[1]
    expected = tensors[case["id"] + ".latents"]
    kwargs = case_kwargs(case, tensors)
    cond_before = kwargs["cond"].clone()
    latents = sampling.sample(toy_unet, **kwargs)
    assert latents.dtype == torch.float32 and latents.shape == expected.shape
    assert float((latents - expected).abs().max()) <= ATOL + RTOL * float(expected.abs().max())
    assert toy_unet.rows_seen == 2 * len(case["seeds"]) * case["evals"]   # cond + uncond per image and evaluation
    assert torch.equal(kwargs["cond"], cond_before)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_start_noise_and_sigmas_match_a1111(case, reference):
    tensors = reference[1]
    kwargs = case_kwargs(case, tensors)
    noise = sampling.initial_noise(kwargs["seeds"], kwargs["shape"], rng=kwargs["rng"], subseeds=kwargs["subseeds"],
                                   subseed_strength=kwargs["subseed_strength"],
                                   seed_resize_from=kwargs["seed_resize_from"])
    assert float((noise - tensors[case["id"] + ".noise"]).abs().max()) <= 1e-6
    if case["id"] + ".sigmas" in tensors:
        expected = tensors[case["id"] + ".sigmas"]
        got = sampling.sigmas(case["sampler"], case["schedule"], case["steps"], tensors["alphas_cumprod"])
        assert got.shape == expected.shape
        assert float(((got - expected).abs() / expected.clamp(min=1e-3)).max()) <= 1e-5
    else:
        with pytest.raises(NotImplementedError):
            sampling.sigmas(case["sampler"], case["schedule"], case["steps"], tensors["alphas_cumprod"])


def test_timestep_samplers_use_a1111s_grid(reference):
    for case in (c for c in CASES if "timesteps" in c):
        plan = sampling.plan_sampling(case["sampler"], "Automatic", case["steps"], reference[1]["alphas_cumprod"])
        assert plan.timesteps.tolist() == case["timesteps"]
