"""Per-row LoRA inside one real UNet / CLIP text-encoder batch, against each row merged and run alone.

Rows: A = X at 0.8; B = none; C = X and Y stacked; D = Y with te 0.4 / unet 1.3; E = X at 0 (``<lora:X:0>``);
F = LoHa + LyCORIS full/norm (materialised deltas, norms, biases); G = Tucker LoCon + DoRA + LoKr at -0.5.
X is a kohya LoRA, Y a kohya LoCon (3x3 convs).  Every row must equal its own LoRAs merged into a copy of the
weights and run alone; B and E must be bit-identical to the model without LoRA.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import engine.lora as lora
from engine.lora.batch import LoraUse, as_use, build_lora_batch, te_lora_key
from engine.lora.hooks import HOOK_ATTRIBUTE, activate, deactivate, lora_batch_active, table_for_models

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "lora"
TOLERANCE = 1e-5  # relative to the row's max |output|; measured worst is 3.6e-6 (docs/lora.md)
STEMS = ("pub_kohya_r4_a2", "pub_locon_kohya_r4c2", "pub_loha_r4_a2", "pub_full_and_norm", "pub_locon_tucker_r4",
         "pub_dora_r4", "pub_lokr_w1_w2lr")


@pytest.fixture(scope="module")
def nets(models) -> dict[str, lora.LoraNetwork]:
    table = table_for_models(*models)
    return {stem.split("_", 1)[1]: lora.load_lora_safetensors(FIXTURES / "loras" / f"{stem}.safetensors", table=table,
                                                               key=f"sha-{stem}") for stem in STEMS}


@pytest.fixture(scope="module")
def rows(nets) -> list[list]:
    x, y = nets["kohya_r4_a2"], nets["locon_kohya_r4c2"]
    return [
        [(x, 0.8)],
        [],
        [(x, 1.0), (y, 0.6)],
        [LoraUse(y, unet=1.3, te=0.4)],
        [(x, 0.0)],
        [(nets["loha_r4_a2"], 0.7), (nets["full_and_norm"], 1.0, 0.5)],
        [(nets["locon_tucker_r4"], 1.0), (nets["dora_r4"], 0.9), (nets["lokr_w1_w2lr"], -0.5)],
    ]


def unet_inputs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(n, 4, 8, 8, generator=gen), torch.tensor(321), torch.randn(n, 7, 32, generator=gen)


def run_unet(unet, sample, t, context, batch=None) -> torch.Tensor:
    with torch.no_grad(), lora_batch_active(unet, batch):
        return unet(sample, t, encoder_hidden_states=context).sample


def test_each_unet_row_equals_its_loras_merged_and_run_alone(models, rows, merge, rel) -> None:
    unet = models[0]
    sample, t, context = unet_inputs(len(rows))
    plain = run_unet(unet, sample, t, context)
    batch = build_lora_batch(unet, "unet", rows)
    assert batch.plans and not batch.skipped
    mixed = run_unet(unet, sample, t, context, batch)
    for i, row in enumerate(rows):
        alone = run_unet(merge(unet, "unet", row), sample[i:i + 1], t, context[i:i + 1])
        assert rel(mixed[i:i + 1], alone) <= TOLERANCE, i
        if all(as_use(u).unet == 0.0 for u in row):
            assert torch.equal(mixed[i], plain[i]), i  # rows without (effective) LoRA: bit for bit
        else:
            assert rel(mixed[i:i + 1], run_unet(unet, sample[i:i + 1], t, context[i:i + 1])) > 1e-3, i


def test_a_row_alone_with_hooks_equals_merged_weights(models, rows, merge, rel) -> None:
    unet = models[0]
    sample, t, context = unet_inputs(1)
    for i, row in enumerate(rows):
        hooked = run_unet(unet, sample, t, context, build_lora_batch(unet, "unet", [row]))
        assert rel(hooked, run_unet(merge(unet, "unet", row), sample, t, context)) <= TOLERANCE, i


def test_each_text_encoder_row_and_its_conditioning_key(models, rows, merge, rel) -> None:
    text_encoder = models[1]
    ids = torch.randint(0, 128, (len(rows), 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = text_encoder(ids).last_hidden_state
        batch = build_lora_batch(text_encoder, "text_encoder", rows)
        with lora_batch_active(text_encoder, batch):
            mixed = text_encoder(ids).last_hidden_state
        for i, row in enumerate(rows):
            alone = merge(text_encoder, "text_encoder", row)(ids[i:i + 1]).last_hidden_state
            assert rel(mixed[i:i + 1], alone) <= TOLERANCE, i
    keys = [te_lora_key(row) for row in rows]
    assert keys[0] == (("sha-pub_kohya_r4_a2", 0.8, None),)
    assert keys[3] == (("sha-pub_locon_kohya_r4c2", 0.4, None),)
    assert keys[1] == keys[4] == ()  # no LoRA, X at 0
    assert keys[6] == (("sha-pub_lokr_w1_w2lr", -0.5, None),)  # the Tucker LoCon and the DoRA file have no text part
    assert keys[5] == (("sha-pub_loha_r4_a2", 0.7, None), ("sha-pub_full_and_norm", 0.5, None))
    for i, key in enumerate(keys):
        assert torch.equal(mixed[i], plain[i]) == (key == ()), i


def test_a_locon_conv_is_exact_per_row(models, nets, rel) -> None:
    unet = models[0]
    y = nets["locon_kohya_r4c2"]
    name = "down_blocks.1.resnets.0.conv1"
    conv = unet.get_submodule(name)
    assert conv.kernel_size == (3, 3) and y.modules[f"unet.{name}"].type_name == "lora"
    multipliers = [0.0, 1.0, -0.7, 2.5]
    batch = build_lora_batch(unet, "unet", [[(y, m)] for m in multipliers])
    x = torch.randn(4, conv.in_channels, 6, 6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), lora_batch_active(unet, batch):
        got = conv(x)
    with torch.no_grad():
        for i, m in enumerate(multipliers):
            weight = conv.weight + lora.layer_delta(y, f"unet.{name}", conv.weight, m)
            want = F.conv2d(x[i:i + 1], weight, conv.bias, conv.stride, conv.padding)
            assert rel(got[i:i + 1], want) <= 1e-6, m
        assert torch.equal(got[0], conv(x)[0])


def test_hooks_are_removable_and_exclusive(models, rows) -> None:
    unet = models[0]
    sample, t, context = unet_inputs(len(rows))
    plain = run_unet(unet, sample, t, context)
    batch = build_lora_batch(unet, "unet", rows)
    active = activate(unet, batch)
    try:
        assert getattr(unet, HOOK_ATTRIBUTE) is active and len(active.handles) == len(batch.plans)
        with pytest.raises(RuntimeError, match="already active"):
            activate(unet, batch)
        with pytest.raises(RuntimeError, match=f"^LoRA batch was built for {len(rows)} rows, .* got 1$"), torch.no_grad():
            unet(sample[:1], t, encoder_hidden_states=context[:1])
    finally:
        deactivate(unet)
    assert not hasattr(unet, HOOK_ATTRIBUTE)
    assert all(not m._forward_hooks for m in unet.modules())
    assert torch.equal(run_unet(unet, sample, t, context), plain)
    with lora_batch_active(unet, build_lora_batch(unet, "unet", [[] for _ in rows])):
        assert not hasattr(unet, HOOK_ATTRIBUTE)  # nothing to apply: no hooks at all


def test_rows_sharing_a_lora_share_its_columns_and_dyn_gets_its_own(models, nets) -> None:
    unet = models[0]
    x = nets["kohya_r4_a2"]
    batch = build_lora_batch(unet, "unet", [[(x, 1.0)], [(x, 0.5)], [], [(x, 1.0, None, 2)], [(x, 0.5), (x, 0.25)]])
    plan = batch.plans["down_blocks.1.attentions.0.proj_in"]
    assert plan.rows.tolist() == [0, 1, 3, 4]
    low = plan.low_rank
    assert low is not None and plan.dense is None
    assert low.down.shape[0] == low.up_t.shape[0] == 4 + 2  # rank 4 shared by rows 0, 1, 4; the dyn-2 slot of row 3
    assert low.col_index.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [4, 5, 0, 0], [0, 1, 2, 3]]
    scale = x.modules["unet.down_blocks.1.attentions.0.proj_in"].scale
    assert low.col_scale[:, 0].tolist() == pytest.approx([scale, 0.5 * scale, scale, 0.75 * scale])
    assert low.col_scale[2].tolist() == pytest.approx([scale, scale, 0.0, 0.0])  # padding columns count 0


def test_a_misfit_update_is_skipped_and_an_equal_count_one_is_reshaped(models, rel) -> None:
    unet = models[0]
    name = "down_blocks.1.attentions.0.proj_in"
    conv = unet.get_submodule(name)  # Conv2d 16 -> 16, 1x1
    base = "lora_unet_" + name.replace(".", "_")
    gen = torch.Generator().manual_seed(11)
    misfit = lora.parse_state_dict({f"{base}.lora_up.weight": torch.randn(8, 2, generator=gen),
                                    f"{base}.lora_down.weight": torch.randn(2, 8, generator=gen)}, "misfit")
    reshaped = lora.parse_state_dict({f"{base}.lora_up.weight": torch.randn(4, 2, generator=gen),
                                      f"{base}.lora_down.weight": torch.randn(2, 64, generator=gen)}, "reshaped")
    batch = build_lora_batch(unet, "unet", [[(misfit, 1.0)], [(reshaped, 0.5)]])
    assert batch.skipped == [("misfit", f"unet.{name}")]
    assert batch.warnings == ["LoRA misfit: 1 module(s) skipped, their update does not fit this model"]
    plan = batch.plans[name]
    assert plan.low_rank is None and plan.dense is not None and plan.rows.tolist() == [1]
    x = torch.randn(2, 16, 4, 4, generator=gen)
    with torch.no_grad():
        with lora_batch_active(unet, batch):
            got = conv(x)
        plain = conv(x)
        weight = conv.weight + lora.layer_delta(reshaped, f"unet.{name}", conv.weight, 0.5)
        assert torch.equal(got[0], plain[0])
        assert rel(got[1:], F.conv2d(x[1:], weight, conv.bias)) <= 1e-6
