"""Loading A1111 hypernetworks: every layout variant of the spec, and refusal of what A1111 cannot use.

Variants are built here as the dicts A1111 would save (keys and shapes written out from the spec's §1.4 table),
and outputs are checked against the forward math written out by hand, so the loader is not checked against itself.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.hypernet import MAX_WEIGHT_BYTES, HypernetFormatError, Hypernetwork, apply, from_state_dict, load


def rand_sd(shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype = torch.float32) -> OrderedDict:
    gen = torch.Generator().manual_seed(seed)
    return OrderedDict((k, (torch.randn(s, generator=gen) * 0.1).to(dtype)) for k, s in shapes.items())


def pair(shapes: dict[str, tuple[int, ...]], seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple:
    return (rand_sd(shapes, seed, dtype), rand_sd(shapes, seed + 1, dtype))


def lin(sd: OrderedDict, i: int, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, sd[f"linear.{i}.weight"].float(), sd[f"linear.{i}.bias"].float())


def ctx(dim: int, seed: int = 5) -> torch.Tensor:
    return torch.randn(2, 3, dim, generator=torch.Generator().manual_seed(seed))


def test_novelai_layout_renames_keys_and_has_no_activation() -> None:
    shapes = {"linear1.weight": (640, 320), "linear1.bias": (640,), "linear2.weight": (320, 640), "linear2.bias": (320,)}
    k_sd, v_sd = pair(shapes)
    hn = from_state_dict({320: (k_sd, v_sd)}, "anime")
    assert hn.sizes == [320] and hn.metadata["layer_structure"] == [1, 2, 1] and hn.metadata["activation_func"] is None
    x = ctx(320)
    k, v = apply([(hn, 0.7)], x, 320)
    for got, sd in ((k, k_sd), (v, v_sd)):
        hidden = F.linear(x, sd["linear1.weight"], sd["linear1.bias"])
        ref = x + F.linear(hidden, sd["linear2.weight"], sd["linear2.bias"]) * 0.7
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


def test_relu_without_output_activation_and_k_v_use_separate_weights() -> None:
    k_sd, v_sd = pair({"linear.0.weight": (640, 320), "linear.0.bias": (640,), "linear.2.weight": (320, 640),
                       "linear.2.bias": (320,)})
    hn = from_state_dict({320: (k_sd, v_sd), "layer_structure": [1, 2, 1], "activation_func": "relu",
                          "activate_output": False}, "r")
    x = ctx(320)
    k, v = apply([(hn, 1.0)], x, 320)
    torch.testing.assert_close(k, x + lin(k_sd, 2, torch.relu(lin(k_sd, 0, x))), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(v, x + lin(v_sd, 2, torch.relu(lin(v_sd, 0, x))), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(k, v)


def test_swish_is_hardswish_with_output_activation_and_int_truncation() -> None:
    # 768 * 0.35 = 268.8 -> 268 (truncation, not rounding)
    k_sd, v_sd = pair({"linear.0.weight": (268, 768), "linear.0.bias": (268,), "linear.2.weight": (768, 268),
                       "linear.2.bias": (768,)})
    hn = from_state_dict({768: (k_sd, v_sd), "layer_structure": [1, 0.35, 1], "activation_func": "swish",
                          "activate_output": True}, "s")
    x = ctx(768)
    k, _ = apply([(hn, 1.0)], x, 768)
    ref = x + F.hardswish(lin(k_sd, 2, F.hardswish(lin(k_sd, 0, x))))
    torch.testing.assert_close(k, ref, atol=1e-6, rtol=1e-6)


def test_layernorm_dropout_structure_shifts_keys() -> None:
    # [1,2,1], relu, LN, D=[0,0.3,0]: 0 Linear, 1 ReLU, 2 LN, 3 Dropout, 4 Linear, 5 LN (ao False)
    shapes = {"linear.0.weight": (64, 32), "linear.0.bias": (64,), "linear.2.weight": (64,), "linear.2.bias": (64,),
              "linear.4.weight": (32, 64), "linear.4.bias": (32,), "linear.5.weight": (32,), "linear.5.bias": (32,)}
    k_sd, v_sd = pair(shapes)
    hn = from_state_dict({32: (k_sd, v_sd), "layer_structure": [1, 2, 1], "activation_func": "relu",
                          "is_layer_norm": True, "activate_output": False, "dropout_structure": [0, 0.3, 0]}, "d")
    assert hn.metadata["use_dropout"] is True
    x = ctx(32)
    h = F.layer_norm(torch.relu(lin(k_sd, 0, x)), (64,), k_sd["linear.2.weight"], k_sd["linear.2.bias"])
    ref = x + F.layer_norm(lin(k_sd, 4, h), (32,), k_sd["linear.5.weight"], k_sd["linear.5.bias"]) * 1.5
    torch.testing.assert_close(apply([(hn, 1.5)], x, 32)[0], ref, atol=1e-5, rtol=1e-5)


def test_legacy_use_dropout_derives_structure() -> None:
    # [1,1,1,1], sigmoid, use_dropout, no structure -> D=[0,0.3,0,0]: keys linear.0, .3, .5 (activate_output default True
    # would add a Sigmoid at the end; the spec's example has it False)
    shapes = {"linear.0.weight": (16, 16), "linear.0.bias": (16,), "linear.3.weight": (16, 16), "linear.3.bias": (16,),
              "linear.5.weight": (16, 16), "linear.5.bias": (16,)}
    hn = from_state_dict({16: pair(shapes), "layer_structure": [1, 1, 1, 1], "activation_func": "sigmoid",
                          "use_dropout": True, "activate_output": False}, "legacy")
    assert hn.metadata["dropout_structure"] == [0, 0.3, 0, 0]
    modules = [type(m).__name__ for m in hn.layers[16][0].linear]
    assert modules == ["Linear", "Sigmoid", "Dropout", "Linear", "Sigmoid", "Linear"]
    assert not hn.layers[16][0].training  # eval: dropout inactive
    x = ctx(16)
    assert torch.equal(apply([(hn, 1.0)], x, 16)[0], apply([(hn, 1.0)], x, 16)[0])


def test_single_layer_last_layer_dropout_and_prelu_parameter() -> None:
    # [1,1] with last_layer_dropout: derived D has 3 entries, the single Linear gets a trailing Dropout.
    shapes = {"linear.0.weight": (8, 8), "linear.0.bias": (8,), "linear.1.weight": (1,)}
    hn = from_state_dict({8: pair(shapes), "layer_structure": [1, 1], "activation_func": "prelu", "use_dropout": True,
                          "last_layer_dropout": True}, "p")
    assert [type(m).__name__ for m in hn.layers[8][0].linear] == ["Linear", "PReLU", "Dropout"]
    assert hn.metadata["dropout_structure"] == [0, 0.3, 0]


def test_unknown_activation_is_only_checked_where_a1111_builds_it() -> None:
    shapes = {"linear.0.weight": (8, 8), "linear.0.bias": (8,)}
    hn = from_state_dict({8: pair(shapes), "layer_structure": [1, 1], "activation_func": "ReLU",
                          "activate_output": False}, "x")
    assert hn.sizes == [8]
    with pytest.raises(HypernetFormatError, match=r"^unsupported activation_func 'ReLU'"):
        from_state_dict({8: pair(shapes), "layer_structure": [1, 1], "activation_func": "ReLU"}, "x")


@pytest.mark.parametrize(("act", "message"), [
    ("threshold", "needs constructor arguments"),
    ("multiheadattention", "needs constructor arguments"),
    ("glu", "changes the layer width"),
    ("Swish", "unsupported activation_func"),
    ("swiglu", "unsupported activation_func"),
])
def test_activations_a1111_cannot_use(act: str, message: str) -> None:
    shapes = {"linear.0.weight": (8, 8), "linear.0.bias": (8,)}
    with pytest.raises(HypernetFormatError, match=message):
        from_state_dict({8: pair(shapes), "layer_structure": [1, 1], "activation_func": act}, "x")


def test_fp16_file_is_upcast_sd2_size_and_string_keys_ignored() -> None:
    shapes = {"linear.0.weight": (51, 1024), "linear.0.bias": (51,), "linear.1.weight": (1024, 51), "linear.1.bias": (1024,)}
    k_sd, v_sd = pair(shapes, dtype=torch.float16)
    hn = from_state_dict({1024: (k_sd, v_sd), "768": "ignored", "layer_structure": [1, 0.05, 1]}, "sd2")
    assert hn.sizes == [1024] and hn.dtype == torch.float32
    assert torch.equal(hn.layers[1024][0].linear[0].weight, k_sd["linear.0.weight"].float())
    x = ctx(1024).half()
    k, _ = apply([(hn, 1.0)], x, 1024)
    assert k.dtype == torch.float16
    torch.testing.assert_close(k, (x.float() + lin(k_sd, 1, lin(k_sd, 0, x.float()))).half())


def test_empty_dict_is_a_noop_hypernet() -> None:
    hn = from_state_dict({}, "empty")
    x = ctx(320)
    k, v = apply([(hn, 1.0)], x, 320)
    assert hn.sizes == [] and k is x and v is x and hn.nbytes == 0


def _ok_shapes() -> dict[str, tuple[int, ...]]:
    return {"linear.0.weight": (16, 8), "linear.0.bias": (16,), "linear.1.weight": (8, 16), "linear.1.bias": (8,)}


def _bad(mutate) -> dict:
    obj = {8: pair(_ok_shapes()), "layer_structure": [1, 2, 1]}
    mutate(obj)
    return obj


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda o: o[8][0].__setitem__("linear.0.weight", torch.full((16, 8), math.nan)),
     r"^size 8 k: tensor 'linear.0.weight' contains NaN or Inf$"),
    (lambda o: o[8][1].__setitem__("linear.1.bias", torch.tensor([math.inf] * 8)), "contains NaN or Inf"),
    (lambda o: o[8][0].__setitem__("linear.1.weight", torch.zeros(8, 15)), r"has shape \[8, 15\], expected \[8, 16\]"),
    (lambda o: o[8][0].pop("linear.1.bias"), "missing tensor 'linear.1.bias'"),
    (lambda o: o[8][1].__setitem__("linear.7.weight", torch.zeros(2)), "unexpected tensor 'linear.7.weight'"),
    (lambda o: o[8][1].__setitem__("linear.0.bias", torch.zeros(16, dtype=torch.int64)), "expected a float tensor"),
    (lambda o: o[8][1].__setitem__("linear.0.bias", [0.0] * 16), "is a list, expected a tensor"),
    (lambda o: o.__setitem__(-768, o[8]), "size -768 is not a context width"),
    (lambda o: o.__setitem__(8, o[8][:1]), r"expected a \(k, v\) pair of state dicts, got tuple of 1"),
    (lambda o: o.__setitem__(8, ("a", "b")), "expected a state dict, got str"),
    (lambda o: o.__setitem__("layer_structure", [2, 1]), "must start and end with 1"),
    (lambda o: o.__setitem__("layer_structure", [1, math.nan, 1]), r"layer_structure\[1\] must be a finite number"),
    (lambda o: o.__setitem__("layer_structure", "121"), "must be a list of numbers"),
    (lambda o: o.__setitem__("layer_structure", [1, 0.01, 1]), "gives a layer of width 0"),
    (lambda o: o.__setitem__("dropout_structure", [0, 1.5, 0]), r"dropout_structure\[1\] = 1.5"),
    (lambda o: o.__setitem__("dropout_structure", [0, 0.1]), "dropout_structure has 2 entries"),
    (lambda o: o.__setitem__("activation_func", 3), "'activation_func' must be a string"),
    (lambda o: o.__setitem__("is_layer_norm", "yes"), "'is_layer_norm' must be true/false"),
    (lambda o: o.__setitem__("skip_connection", True), "third-party extension"),
    (lambda o: o.__setitem__("step", "1000"), "'step' must be an integer"),
])
def test_refusals_are_specific_one_liners(mutate, message: str) -> None:
    with pytest.raises(HypernetFormatError, match=message) as info:
        from_state_dict(_bad(mutate), "bad")
    assert "\n" not in str(info.value)


def test_refuses_non_dict_and_oversized() -> None:
    with pytest.raises(HypernetFormatError, match="holds a list, expected a dict"):
        from_state_dict([1, 2], "x")  # type: ignore[arg-type]
    with pytest.raises(HypernetFormatError, match="too large"):
        from_state_dict({8: pair(_ok_shapes())}, "x", max_bytes=1000)
    assert MAX_WEIGHT_BYTES >= 200 * 2**20  # real files reach 170 MB


class _Planted:
    """Unpickling this would create a file: weights_only loading must refuse before calling anything."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pt_is_read_with_weights_only(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({768: pair(_ok_shapes()), "payload": _Planted(marker)}, evil)
    with pytest.raises(HypernetFormatError, match=r"^cannot read 'evil' safely as a torch file"):
        load(str(evil))
    assert not marker.exists()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(HypernetFormatError, match="cannot read 'garbage'"):
        load(garbage)


def test_to_returns_a_converted_copy() -> None:
    hn = from_state_dict({8: pair(_ok_shapes()), "layer_structure": [1, 2, 1]}, "c")
    half = hn.to(dtype=torch.float16)
    assert isinstance(half, Hypernetwork) and half is not hn
    assert hn.dtype == torch.float32 and half.dtype == torch.float16
    assert half.nbytes * 2 == hn.nbytes
    assert not half.layers[8][0].training and not any(p.requires_grad for p in half.layers[8][0].parameters())
    x = ctx(8)
    expected = apply([(hn, 1.0)], x, 8)[0].half()
    torch.testing.assert_close(apply([(half, 1.0)], x.half(), 8)[0], expected, atol=2e-3, rtol=2e-3)
