"""The engine-facing API: a row's latents do not depend on its batch-mates, rows can be dropped mid-run, progress
and stop checks come at the promised moments, and CFG combines AND parts as A1111 does."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

import engine.sampling as sampling
from engine.sampling import Evaluation, RowGuidance, RowSeed, SamplingCancelled

SHAPE = (4, 6, 10)
CONTEXT = torch.randn(6, 3, 4, 8, generator=torch.Generator().manual_seed(0))  # row -> [uncond, part 0, part 1]
ROWS = [RowSeed(7), RowSeed(8, 99, 0.3, source="NV"), RowSeed(9, None, 0.0, (64, 40), 31337),
        RowSeed(10, 5, 0.7, (96, 56), 12), RowSeed(7, 3, 1.0), RowSeed(2**33 + 1, source="NV", eta_noise_seed_delta=1)]
GUIDANCE = [RowGuidance(7.0), RowGuidance(3.5), RowGuidance(12.0, (0.6, 0.4)), RowGuidance(1.0),
            RowGuidance(7.5, (1.0, -0.5)), RowGuidance(0.0)]
# One sampler of every kind of noise use and update rule (all of them are exact, this keeps the test short).
SAMPLERS = ["Euler a", "DPM2 a Karras", "DPM++ 2S a", "LMS", "DPM++ SDE", "DPM++ 2M SDE Heun Exponential",
            "DPM++ 3M SDE", "DDIM", "PLMS", "UniPC"]


def render(unet, alphas_cumprod, sampler: str, ids: Sequence[int], *, steps: int = 6, should_stop=None, on_step=None,
           seen: list | None = None) -> torch.Tensor:
    """Rows ``ids`` of ROWS/GUIDANCE sampled together; the model looks conditioning up by the original row id."""
    plan = sampling.plan_sampling(sampler, "Automatic", steps, alphas_cumprod)
    noise = plan.draw_noise([ROWS[i] for i in ids], SHAPE)

    def model(x_in, t, layout, at):
        if seen is not None:
            seen.append((at, [ids[r] for r in layout.rows]))
        context = torch.stack([CONTEXT[ids[r], part + 1] for r, part in zip(layout.rows, layout.parts, strict=True)])
        return unet(x_in, t, context)

    guided = plan.guided_model(model, [GUIDANCE[i] for i in ids], should_stop=should_stop)
    return plan.run(guided, noise, on_step)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_row_is_bit_identical_alone_and_in_a_mixed_batch(sampler, toy_unet, alphas_cumprod):
    batch = render(toy_unet, alphas_cumprod, sampler, [0, 1, 2, 3, 4, 5], steps=4)
    assert torch.isfinite(batch).all()
    for row in (1, 2, 3, 5):   # NV + variation; AND parts + resize + ENSD; variation + crop + ENSD; 64-bit seed
        alone = render(toy_unet, alphas_cumprod, sampler, [row], steps=4)
        assert torch.equal(alone[0], batch[row]), row
    reordered = render(toy_unet, alphas_cumprod, sampler, [5, 2, 0], steps=4)
    assert torch.equal(reordered[1], batch[2])


@pytest.mark.parametrize("sampler", ["Heun", "DPM++ SDE Karras", "PLMS", "UniPC"])
def test_dropped_rows_leave_the_model_call_and_the_rest_is_unchanged(sampler, toy_unet, alphas_cumprod):
    full = render(toy_unet, alphas_cumprod, sampler, [0, 2, 3])
    seen: list = []
    dropped = render(toy_unet, alphas_cumprod, sampler, [0, 2, 3], seen=seen,
                     should_stop=lambda at: {1} if at.index >= 3 else None)
    assert torch.equal(dropped[0], full[0]) and torch.equal(dropped[2], full[2])
    for at, model_rows in seen:
        assert (2 in model_rows) == (at.index < 3)
    assert sorted(set(seen[0][1])) == [0, 2, 3] and seen[0][1][-3:] == [0, 2, 3]   # conds first, then the unconds


def test_cancelling_raises(toy_unet, alphas_cumprod):
    with pytest.raises(SamplingCancelled):
        render(toy_unet, alphas_cumprod, "Euler a", [0, 1], should_stop=lambda at: at.index == 2)
    with pytest.raises(SamplingCancelled):
        render(toy_unet, alphas_cumprod, "Euler a", [0, 1], should_stop=lambda at: [0, 1] if at.step == 1 else ())


@pytest.mark.parametrize(("sampler", "steps"), [("Heun", 5), ("DPM2 a", 4), ("LMS Karras", 3), ("DDIM", 21),
                                                 ("PLMS", 21), ("UniPC", 21), ("UniPC", 2), ("DPM++ 3M SDE", 1)])
def test_one_report_per_step_and_one_stop_check_per_evaluation(sampler, steps, toy_unet, alphas_cumprod):
    plan = sampling.plan_sampling(sampler, "Automatic", steps, alphas_cumprod)
    reports, checks = [], []
    render(toy_unet, alphas_cumprod, sampler, [0, 1], steps=steps, on_step=reports.append,
           should_stop=lambda at: checks.append(at))
    assert [(r.done, r.total) for r in reports] == [(k + 1, plan.sampler_steps) for k in range(plan.sampler_steps)]
    assert all(r.x.shape == (2, *SHAPE) and r.denoised.shape == (2, *SHAPE) for r in reports)
    assert [at.index for at in checks] == list(range(plan.total_evaluations))
    per_step = [sum(1 for at in checks if at.step == s) for s in range(plan.sampler_steps)]
    assert tuple(per_step) == plan.evaluations_per_step
    assert toy_unet.rows_seen == 2 * 2 * plan.total_evaluations


def test_cfg_combines_and_parts_one_after_another():
    guidance = [RowGuidance(7.0), RowGuidance(3.0, (0.6, -0.2, 0.5)), RowGuidance(2.5, (1.0, 0.25))]
    layout = sampling.model_rows(guidance, [0, 1, 2])
    assert layout.rows == (0, 1, 1, 1, 2, 2, 0, 1, 2) and layout.parts == (0, 0, 1, 2, 0, 1, -1, -1, -1)
    out = torch.randn(9, 2, generator=torch.Generator().manual_seed(5)).double().float()
    got = sampling.combine_guidance(out.view(9, 2, 1, 1), layout).view(3, 2)
    u = out[6:]
    expected = torch.stack([
        u[0] + (out[0] - u[0]) * torch.tensor(7.0 * 1.0),
        u[1] + (out[1] - u[1]) * torch.tensor(0.6 * 3.0) + (out[2] - u[1]) * torch.tensor(-0.2 * 3.0)
        + (out[3] - u[1]) * torch.tensor(0.5 * 3.0),
        u[2] + (out[4] - u[2]) * torch.tensor(1.0 * 2.5) + (out[5] - u[2]) * torch.tensor(0.25 * 2.5)])
    assert torch.equal(got, expected)


def test_evaluation_is_a_step_and_an_index():
    at = Evaluation(step=2, index=5)
    assert (at.step, at.index) == (2, 5)
