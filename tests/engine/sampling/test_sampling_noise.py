"""Noise: NV (Philox) values, the pre-drawn noise plan against step-by-step draws, variation slerp, Brownian trees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchsde
from torchsde._brownian import brownian_interval

from engine.sampling import NoiseNeeds, NoisePlan, RowSeed, brownian, make_generator, plan_sampling
from engine.sampling.brownian import BrownianNoise
from engine.sampling.philox import PhiloxGenerator
from engine.sampling.start_noise import slerp

SHAPE = (4, 6, 10)


def test_nv_first_draw_equals_a1111s(reference):
    expected = reference[1]["rng_nv/Euler_a/Automatic/s1234/n12.noise"]  # A1111's NV start noise, seeds 1234, 1235
    got = torch.stack([torch.from_numpy(PhiloxGenerator(seed).randn(SHAPE)) for seed in (1234, 1235)])
    assert torch.equal(got, expected)


def test_nv_batched_draws_equal_consecutive_draws():
    one_by_one = PhiloxGenerator(2**40 + 17)
    together = PhiloxGenerator(2**40 + 17)
    first = together.randn((3, 5))
    assert np.array_equal(first, one_by_one.randn((3, 5)))
    many = together.randn_many(4, (3, 5))
    assert np.array_equal(many, np.stack([one_by_one.randn((3, 5)) for _ in range(4)]))
    assert together.offset == one_by_one.offset == 5
    assert not np.array_equal(many[0], many[1])


def _replay(row: RowSeed, count: int) -> torch.Tensor:
    """Step noise drawn the slow way: the image's own stream after its one start-noise draw, or the ENSD stream."""
    if row.source == "NV":
        gen = PhiloxGenerator(row.seed + row.eta_noise_seed_delta)
        if not row.eta_noise_seed_delta:
            gen.randn(SHAPE)
        return torch.stack([torch.from_numpy(gen.randn(SHAPE)) for _ in range(count)])
    gen = torch.Generator("cpu").manual_seed(row.seed + row.eta_noise_seed_delta)
    if not row.eta_noise_seed_delta:
        torch.randn(SHAPE, generator=gen)
    return torch.stack([torch.randn(SHAPE, generator=gen) for _ in range(count)])


ROWS = [RowSeed(1), RowSeed(2, source="NV"), RowSeed(3, eta_noise_seed_delta=31337), RowSeed(4, 9, 0.4),
        RowSeed(5, 8, 0.6, (96, 56), source="NV"), RowSeed(6, None, 0.0, (40, 24), 7)]


def test_pre_drawn_step_noise_equals_drawing_step_by_step():
    plan = NoisePlan.draw(ROWS, SHAPE, NoiseNeeds(step_draws=5))
    assert plan.steps.shape == (5, len(ROWS), *SHAPE)
    for r, row in enumerate(ROWS):
        assert torch.equal(plan.steps[:, r], _replay(row, 5)), row
    stream = plan.stream()
    assert torch.equal(stream.step(), plan.steps[0]) and torch.equal(stream.step(), plan.steps[1])


def test_a_sampler_asks_for_exactly_the_planned_draws(alphas_cumprod):
    plan = plan_sampling("Euler a", "Karras", 6, alphas_cumprod)
    assert plan.noise_needs.step_draws == 5     # every step but the last (it lands on sigma 0)
    noise = plan.draw_noise([RowSeed(1)], SHAPE)
    stream = noise.stream()
    for _ in range(5):
        stream.step()
    with pytest.raises(RuntimeError, match="draw 6"):
        stream.step()


def test_start_noise_without_options_is_the_first_draw():
    plan = NoisePlan.draw([RowSeed(11), RowSeed(12, source="NV")], SHAPE, NoiseNeeds())
    assert torch.equal(plan.start[0], torch.randn(SHAPE, generator=torch.Generator().manual_seed(11)))
    assert torch.equal(plan.start[1], torch.from_numpy(PhiloxGenerator(12).randn(SHAPE)))


def test_slerp_keeps_a1111s_reversed_weights_for_parallel_noise():
    base = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    # Parallel inputs take A1111's shortcut: base * strength + sub * (1 - strength), weights the "wrong" way round.
    assert torch.allclose(slerp(0.25, base, 2 * base), base * 0.25 + 2 * base * 0.75)
    sub = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(slerp(0.0, base, sub), base, atol=1e-6)
    assert torch.allclose(slerp(1.0, base, sub), sub, atol=1e-6)


def test_variation_strength_zero_or_no_subseed_changes_nothing():
    plain = NoisePlan.draw([RowSeed(21)], SHAPE, NoiseNeeds(step_draws=2))
    for row in (RowSeed(21, 5, 0.0), RowSeed(21, None, 0.5)):
        other = NoisePlan.draw([row], SHAPE, NoiseNeeds(step_draws=2))
        assert torch.equal(other.start, plain.start) and torch.equal(other.steps, plain.steps)


def _brownian_needs(alphas_cumprod, sampler: str) -> NoiseNeeds:
    return plan_sampling(sampler, "Karras", 5, alphas_cumprod).noise_needs


def test_brownian_increments_precomputed_equal_queried_live(alphas_cumprod):
    needs = _brownian_needs(alphas_cumprod, "DPM++ SDE")
    assert len(needs.brownian) == 2 * 4     # two queries per step, none on the final step to sigma 0
    rows = [RowSeed(31), RowSeed(32, source="NV")]
    eager = NoisePlan.draw(rows, SHAPE, needs).stream()
    lazy = NoisePlan.draw(rows, SHAPE, needs, precompute_brownian=False).stream()
    for a, b in needs.brownian:
        assert torch.equal(eager.brownian(a, b), lazy.brownian(a, b))
    with pytest.raises(RuntimeError, match="not planned"):
        eager.brownian(*needs.brownian[0])


@pytest.mark.filterwarnings("ignore:Should have")
def test_brownian_trees_use_the_rows_source_and_seed_only(alphas_cumprod, monkeypatch):
    (lo, hi) = _brownian_needs(alphas_cumprod, "DPM++ 2M SDE").brownian_span
    mid = torch.tensor(1.5)
    cpu = BrownianNoise([7, 7, 8], ["CPU", "NV", "CPU"], SHAPE, lo, hi)
    inc = cpu.increments(hi, mid)
    assert inc.shape == (3, *SHAPE)
    assert not torch.equal(inc[0], inc[1]) and not torch.equal(inc[0], inc[2])
    alone = BrownianNoise([8], ["CPU"], SHAPE, lo, hi).increments(hi, mid)
    assert torch.equal(alone[0], inc[2])
    # Outside our trees torchsde keeps its own normal draws.
    assert brownian_interval._randn is brownian._randn
    ours = torchsde.BrownianTree(lo, torch.zeros(SHAPE), hi, entropy=5)(mid, hi)
    monkeypatch.setattr(brownian_interval, "_randn", brownian._TORCHSDE_RANDN)
    theirs = torchsde.BrownianTree(lo, torch.zeros(SHAPE), hi, entropy=5)(mid, hi)
    assert torch.equal(ours, theirs)


def test_sources_refuse_what_they_cannot_reproduce():
    with pytest.raises(NotImplementedError, match="CUDA"):
        make_generator("GPU", 1, "cpu")
    with pytest.raises(ValueError, match="GPU, NV, CPU"):
        make_generator("XPU", 1)
