"""Each module type's update from the spec's formulas (docs/a1111-lora.md §4), for the forms the shared
fixtures do not cover: Tucker LoHa / LoKr, low-rank LoKr w1, (IA)³, scale rules, precision, DoRA, shapes."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from engine.lora import layer_delta, parse_state_dict
from engine.lora.modules import dora_delta

LINEAR = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
LINEAR_NAME = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"
CONV_NAME = "unet.down_blocks.0.resnets.0.conv1"


def rnd(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + sum(shape)))


def network(base: str, precision: str = "float32", dora: str = "apply", **parts: torch.Tensor):
    return parse_state_dict({f"{base}.{k.replace('__', '.')}": v for k, v in parts.items()}, "t", precision=precision,
                            dora=dora)


def test_loha_with_tucker_cores_on_a_conv() -> None:
    out, inp, r = 3, 2, 2
    w1a, w1b, w2a, w2b = rnd(r, out, seed=1), rnd(r, inp, seed=2), rnd(r, out, seed=3), rnd(r, inp, seed=4)
    t1, t2 = rnd(r, r, 3, 3, seed=5), rnd(r, r, 3, 3, seed=6)
    net = network(CONV, hada_w1_a=w1a, hada_w1_b=w1b, hada_w2_a=w2a, hada_w2_b=w2b, hada_t1=t1, hada_t2=t2,
                  alpha=torch.tensor(1.0))
    want = torch.zeros(out, inp, 3, 3)
    for p, q, kh, kw in itertools.product(range(out), range(inp), range(3), range(3)):
        a1 = sum(t1[a, b, kh, kw] * w1a[a, p] * w1b[b, q] for a in range(r) for b in range(r))
        a2 = sum(t2[a, b, kh, kw] * w2a[a, p] * w2b[b, q] for a in range(r) for b in range(r))
        want[p, q, kh, kw] = a1 * a2 * 0.5  # alpha 1 / dim 2 (hada_w1_b rows)
    got = layer_delta(net, CONV_NAME, torch.zeros(out, inp, 3, 3), 1.0)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_lokr_low_rank_w1_and_tucker_w2_on_a_conv() -> None:
    a, c, b, d, r = 2, 2, 3, 2, 2
    w1a, w1b = rnd(a, r, seed=1), rnd(r, c, seed=2)
    w2a, w2b, t2 = rnd(r, b, seed=3), rnd(r, d, seed=4), rnd(r, r, 3, 3, seed=5)
    net = network(CONV, lokr_w1_a=w1a, lokr_w1_b=w1b, lokr_w2_a=w2a, lokr_w2_b=w2b, lokr_t2=t2, alpha=torch.tensor(3.0))
    w1 = w1a @ w1b
    w2 = torch.zeros(b, d, 3, 3)
    for p, q, kh, kw in itertools.product(range(b), range(d), range(3), range(3)):
        w2[p, q, kh, kw] = sum(t2[x, y, kh, kw] * w2a[x, p] * w2b[y, q] for x in range(r) for y in range(r))
    want = torch.zeros(a * b, c * d, 3, 3)
    for i, j, ci, cj in itertools.product(range(a), range(b), range(c), range(d)):
        want[i * b + j, ci * d + cj] = w1[i, ci] * w2[j, cj]
    got = layer_delta(net, CONV_NAME, torch.zeros(a * b, c * d, 3, 3), 1.0)
    assert torch.allclose(got, want * 1.5, atol=1e-5, rtol=1e-5)  # scale alpha 3 / dim 2 (lokr_w2_b rows)


def test_lokr_scale_uses_w2_b_then_w1_b_and_ignores_alpha_for_full_factors() -> None:
    w = torch.zeros(6, 4)
    both = network(LINEAR, lokr_w1_a=rnd(2, 3), lokr_w1_b=rnd(3, 2), lokr_w2_a=rnd(3, 5), lokr_w2_b=rnd(5, 2),
                   alpha=torch.tensor(1.0))
    assert both.modules[LINEAR_NAME].scale == pytest.approx(1 / 5)
    only_w1 = network(LINEAR, lokr_w1_a=rnd(2, 3), lokr_w1_b=rnd(3, 2), lokr_w2=rnd(3, 2), alpha=torch.tensor(1.0))
    assert only_w1.modules[LINEAR_NAME].scale == pytest.approx(1 / 3)
    full = network(LINEAR, lokr_w1=rnd(2, 2), lokr_w2=rnd(3, 2), alpha=torch.tensor(7.0))
    assert full.modules[LINEAR_NAME].scale == 1.0
    assert torch.equal(layer_delta(full, LINEAR_NAME, w, 1.0), torch.kron(rnd(2, 2), rnd(3, 2)))


@pytest.mark.parametrize("on_input", [True, False])
def test_ia3_scales_the_weight_along_one_axis_and_ignores_alpha(on_input: bool) -> None:
    weight = rnd(3, 4, seed=9)
    vec = rnd(4 if on_input else 3, seed=8)
    net = network(LINEAR, weight=vec, on_input=torch.tensor(on_input), alpha=torch.tensor(8.0))
    got = layer_delta(net, LINEAR_NAME, weight, -0.5)
    want = weight * (vec[None, :] if on_input else vec[:, None]) * -0.5
    assert torch.allclose(got, want)
    assert layer_delta(net, LINEAR_NAME, rnd(5, 5), 1.0) is None  # does not broadcast: A1111 skips the module


def test_scale_part_wins_fp16_alpha_is_read_as_stored_and_no_alpha_is_one() -> None:
    up, down = rnd(3, 4, seed=1), rnd(4, 2, seed=2)
    w = torch.zeros(3, 2)
    plain = layer_delta(network(LINEAR, lora_up__weight=up, lora_down__weight=down), LINEAR_NAME, w, 1.0)
    assert torch.allclose(plain, up @ down)
    half = network(LINEAR, lora_up__weight=up, lora_down__weight=down, alpha=torch.tensor(2.7, dtype=torch.float16))
    assert half.modules[LINEAR_NAME].scale == 2.69921875 / 4
    scaled = network(LINEAR, lora_up__weight=up, lora_down__weight=down, alpha=torch.tensor(2.0), scale=torch.tensor(3.0))
    assert scaled.modules[LINEAR_NAME].scale == 3.0
    zero = network(LINEAR, lora_up__weight=up, lora_down__weight=down, alpha=torch.tensor(0.0))
    assert torch.count_nonzero(layer_delta(zero, LINEAR_NAME, w, 1.0)) == 0


def test_multiplier_order_is_a1111s_bit_for_bit() -> None:
    up, down = rnd(5, 3, seed=1), rnd(3, 7, seed=2)
    net = network(LINEAR, lora_up__weight=up, lora_down__weight=down, alpha=torch.tensor(1.7))
    got = layer_delta(net, LINEAR_NAME, torch.zeros(5, 7), 0.37)
    assert torch.equal(got, (up @ down) * (1.7 / 3) * 0.37)


def test_precision_policies() -> None:
    parts = {"hada_w1_a": rnd(3, 2).half(), "hada_w1_b": rnd(2, 4).half(), "hada_w2_a": rnd(3, 2, seed=1).half(),
             "hada_w2_b": rnd(2, 4, seed=1).half()}
    w = torch.zeros(3, 4)
    a1111 = layer_delta(network(LINEAR, "a1111", **parts), LINEAR_NAME, w, 1.0)
    ours = layer_delta(network(LINEAR, "float32", **parts), LINEAR_NAME, w, 1.0)
    assert a1111.dtype == torch.float16 and ours.dtype == torch.float32
    f = {k: v.float() for k, v in parts.items()}
    exact = (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])
    assert torch.equal(ours, exact)
    assert torch.allclose(a1111.float(), exact, rtol=3e-3, atol=3e-3 * float(exact.abs().max()))
    lora_half = network(LINEAR, "a1111", lora_up__weight=rnd(3, 2).half(), lora_down__weight=rnd(2, 4).half())
    assert layer_delta(lora_half, LINEAR_NAME, w, 1.0).dtype == torch.float32  # A1111 upcasts LoRA factors


def test_updates_that_do_not_fit_are_skipped_and_equal_counts_are_reshaped() -> None:
    net = network(LINEAR, lora_up__weight=rnd(4, 2), lora_down__weight=rnd(2, 3))
    assert layer_delta(net, LINEAR_NAME, torch.zeros(4, 4), 1.0) is None
    reshaped = layer_delta(net, LINEAR_NAME, torch.zeros(3, 4), 1.0)
    assert torch.equal(reshaped, (rnd(4, 2) @ rnd(2, 3)).reshape(3, 4))


def test_dyn_keeps_the_first_ranks_but_the_full_rank_scale() -> None:
    up, down = rnd(3, 4, seed=1), rnd(4, 5, seed=2)
    net = network(LINEAR, lora_up__weight=up, lora_down__weight=down, alpha=torch.tensor(2.0))
    w = torch.zeros(3, 5)
    assert torch.allclose(layer_delta(net, LINEAR_NAME, w, 1.0, dyn_dim=2), (up[:, :2] @ down[:2]) * 0.5)
    assert torch.count_nonzero(layer_delta(net, LINEAR_NAME, w, 1.0, dyn_dim=0)) == 0
    assert torch.equal(layer_delta(net, LINEAR_NAME, w, 1.0, dyn_dim=9), layer_delta(net, LINEAR_NAME, w, 1.0))


def test_lora_bias_part_is_added_before_scaling() -> None:
    up, down, bias = rnd(3, 2), rnd(2, 4), rnd(3, 4, seed=7)
    net = network(LINEAR, lora_up__weight=up, lora_down__weight=down, bias=bias, alpha=torch.tensor(1.0))
    assert torch.allclose(layer_delta(net, LINEAR_NAME, torch.zeros(3, 4), 2.0), (up @ down + bias) * 0.5 * 2.0)


def test_tucker_locon_factors_give_the_same_conv_as_the_update() -> None:
    up, mid, down = rnd(4, 2, 1, 1, seed=1), rnd(2, 2, 3, 3, seed=2), rnd(2, 3, 1, 1, seed=3)
    module = network(CONV, lora_up__weight=up, lora_mid__weight=mid, lora_down__weight=down).modules[CONV_NAME]
    weight = torch.zeros(4, 3, 3, 3)
    folded_down, flat_up = module.factors(weight.shape)
    x = rnd(1, 3, 6, 6, seed=4)
    via_factors = F.conv2d(F.conv2d(x, folded_down, stride=2, padding=1), flat_up[:, :, None, None])
    via_update = F.conv2d(x, module.update(weight), stride=2, padding=1)
    assert torch.allclose(via_factors, via_update, atol=1e-5)


@pytest.mark.parametrize("per_output", [True, False])
def test_dora_rescales_rows_or_columns_to_the_magnitude(per_output: bool) -> None:
    weight, up, down = rnd(4, 3, seed=1), rnd(4, 2, seed=2), rnd(2, 3, seed=3)
    magnitude = rnd(4, 1, seed=4).abs() + 0.5 if per_output else rnd(1, 3, seed=4).abs() + 0.5
    net = network(LINEAR, lora_up__weight=up, lora_down__weight=down, alpha=torch.tensor(1.0), dora_scale=magnitude)
    unit = layer_delta(net, LINEAR_NAME, weight, 1.0)
    merged = weight + unit
    norms = merged.norm(dim=1, keepdim=True) if per_output else merged.norm(dim=0, keepdim=True)
    assert torch.allclose(norms, magnitude, rtol=1e-5)
    direction = weight + (up @ down) * 0.5  # W + s·U, scaled to the magnitude: same direction
    assert torch.allclose(merged / norms, direction / (direction.norm(dim=1 if per_output else 0, keepdim=True)), atol=1e-6)
    assert torch.allclose(layer_delta(net, LINEAR_NAME, weight, -0.3), unit * -0.3)
    assert torch.count_nonzero(layer_delta(net, LINEAR_NAME, weight, 0.0)) == 0
    ignored = network(LINEAR, dora="ignore", lora_up__weight=up, lora_down__weight=down, alpha=torch.tensor(1.0),
                      dora_scale=magnitude)
    assert torch.allclose(layer_delta(ignored, LINEAR_NAME, weight, 1.0), (up @ down) * 0.5)
    assert dora_delta(weight, unit, torch.ones(5)) is None  # fits neither axis
