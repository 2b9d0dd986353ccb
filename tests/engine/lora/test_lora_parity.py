"""Parity with A1111's own LoRA code on the trimmed shared fixtures: the checker's checks, run offline.

Per file: the modules it targets, the keys it ignores, untouched modules; per case (multipliers 1, 0.5,
-0.8, 0; te 0.3 / unet 1.2; dyn): every sampled module's update and bias update, and its layer output on
the probe input, against A1111's, with the checker's tolerances.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import engine.lora as lora
from engine.lora.names import normalize_name

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "lora"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
LOADED = [stem for stem, f in MANIFEST["files"].items() if f["loaded"]]
_NETS: dict[str, lora.LoraNetwork] = {}


def net(stem: str) -> lora.LoraNetwork:
    if stem not in _NETS:
        _NETS[stem] = lora.load(FIXTURES / MANIFEST["files"][stem]["file"])
    return _NETS[stem]


def forward(name: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    t = MANIFEST["modules"][name]
    if t["type"] == "Linear":
        return F.linear(x, w, b)
    if t["type"] == "Conv2d":
        return F.conv2d(x, w, b, tuple(t["stride"]), tuple(t["padding"]), tuple(t["dilation"]), t["groups"])
    if t["type"] == "GroupNorm":
        return F.group_norm(x, t["num_groups"], w, b, t["eps"])
    return F.layer_norm(x, tuple(t["normalized_shape"]), w, b, t["eps"])


def weight_and_bias(weights: dict, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    t, part = MANIFEST["modules"][name], weights[name.split(".", 1)[0]]
    return part[t["weight_key"]], None if t["bias_key"] is None else part[t["bias_key"]]


@pytest.mark.parametrize("stem", LOADED)
def test_targets_and_ignored_keys_are_a1111s(stem: str) -> None:
    f = MANIFEST["files"][stem]
    network = net(stem)
    got = {normalize_name(n) for n in lora.targets(network)} & set(MANIFEST["modules"])
    assert got == set(f["targets"])
    assert sorted(set(network.ignored_keys)) == f["ignored_keys"]


@pytest.mark.parametrize("stem", LOADED)
def test_untouched_modules_get_no_update(stem: str, model_weights: dict) -> None:
    network = net(stem)
    untouched = ["unet.conv_in", "unet.time_embedding.linear_1", "text_encoder.final_layer_norm",
                 "unet.down_blocks.3.resnets.1.conv2"]
    for name in untouched:
        if name not in MANIFEST["files"][stem]["targets"]:
            w, b = weight_and_bias(model_weights, name)
            assert lora.layer_delta(network, name, w, 1.0) is None
            assert lora.bias_delta(network, name, b, 1.0) is None


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=[c["id"] for c in MANIFEST["cases"]])
def test_updates_and_outputs_match_a1111(case: dict, model_weights: dict, expected: dict, probe_inputs: dict,
                                         rel) -> None:
    stem, m, te, dyn = case["file"], case["multiplier"], case["te_multiplier"], case["dyn_dim"]
    network = net(stem)
    checked = 0
    for name in MANIFEST["files"][stem]["dense"]:
        m_eff = (te if te is not None else m) if name.startswith("text_encoder.") else m
        w, b = weight_and_bias(model_weights, name)
        w_in = w.clone()
        d = lora.layer_delta(network, name, w_in, m, te, dyn_dim=dyn)
        assert torch.equal(w_in, w), "layer_delta modified the weight"
        key = f"d|{case['id']}|{name}"
        want = expected[key] if key in expected else expected[f"d1|{stem}|{name}"] * torch.tensor(m_eff)
        assert d is not None and d.shape == w.shape
        assert rel(d, want, max(float(w.abs().max()), float(want.abs().max()))) <= case["rtol"], name
        bd = lora.bias_delta(network, name, b, m, te)
        bias_key = f"b1|{stem}|{name}"
        if bias_key in expected:
            want_b = expected[bias_key] * torch.tensor(m_eff)
            assert bd is not None
            assert rel(bd, want_b, max(float(b.abs().max()) if b is not None else 0.0, float(want_b.abs().max()))) \
                <= case["rtol"]
        else:
            assert bd is None
        y_key = f"y|{case['id']}|{name}"
        if y_key in expected:
            bias = b if bd is None else (bd if b is None else b + bd)
            x = probe_inputs[MANIFEST["modules"][name]["input"]]
            y = forward(name, x, w + d.float(), bias).reshape(-1)
            assert rel(y, expected[y_key]) <= case["rtol"], name
            checked += 1
    assert checked or not any(k.startswith(f"y|{case['id']}|") for k in expected)


def test_the_refused_file_is_refused_with_a1111s_reason() -> None:
    f = MANIFEST["files"]["pub_err_missing_up"]
    assert not f["loaded"] and "would accept those keys: alpha, lora_down.weight" in f["load_errors"][0]
    message = ("pub_err_missing_up: module lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k "
               "has keys no LoRA type accepts: alpha, lora_down.weight")
    with pytest.raises(lora.LoraFormatError) as info:
        lora.load(FIXTURES / f["file"])
    assert str(info.value) == message


def test_alias_is_the_kohya_output_name() -> None:
    assert net("pub_kohya_r4_a2").alias == MANIFEST["files"]["pub_kohya_r4_a2"]["alias"] == "pubStyle"


def test_dora_fixture_is_a1111_18s_plain_lora_and_the_engine_applies_the_magnitude(model_weights: dict, expected) -> None:
    name = "unet.down_blocks.1.attentions.0.proj_in"
    w, _ = weight_and_bias(model_weights, name)
    plain = lora.layer_delta(net("pub_dora_r4"), name, w, 1.0)
    assert torch.allclose(plain, expected[f"d1|pub_dora_r4|{name}"], rtol=0, atol=1e-6)
    assert net("pub_dora_r4").warnings == (lora.DORA_IGNORED_WARNING,)
    engine_net = lora.load_lora_safetensors(FIXTURES / MANIFEST["files"]["pub_dora_r4"]["file"])
    assert engine_net.warnings == (lora.DORA_APPLIED_WARNING,) == ("applied DoRA magnitude; A1111 1.8 ignores it",)
    dora = lora.layer_delta(engine_net, name, w, 1.0)
    magnitude = engine_net.modules[name].dora_scale.reshape(-1)
    row_norms = (w + dora).reshape(w.shape[0], -1).norm(dim=1)
    assert torch.allclose(row_norms, magnitude, rtol=1e-5, atol=0)
    assert not torch.allclose(dora, plain)
