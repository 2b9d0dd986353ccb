"""The canonical safetensors form: exact round trip from .pt, and the same validation on hostile files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.hypernet import HypernetFormatError, apply, load, load_canonical, save_canonical

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hypernetworks"
ROUND_TRIP = ["pub_elu_11_320_legacykeys.pt", "pub_relu_11_320_ln.pt", "pub_sigmoid_1-0.5-1_320_fp16.pt",
              "pub_swish_1-0.1-1_768_actout.pt", "zoo/pub_zoo_prelu.pt", "zoo/pub_zoo_softmax.pt"]


@pytest.mark.parametrize("file", ROUND_TRIP)
def test_round_trip_is_exact(file: str, tmp_path: Path) -> None:
    src = FIXTURES / file
    hn = load(str(src))
    out = tmp_path / "a.safetensors"
    save_canonical(hn, out)
    back = load_canonical(out)
    assert back.name == hn.name and back.metadata == hn.metadata and back.sizes == hn.sizes
    raw = torch.load(src, map_location="cpu", weights_only=True)
    stored = load_file(out)
    for dim in hn.sizes:
        for i, kv in enumerate("kv"):
            for key, t in raw[dim][i].items():
                got = stored[f"{dim}.{kv}.{key}"]
                assert got.dtype == t.dtype and torch.equal(got, t)  # bit-identical, original dtype kept
    assert len(stored) == sum(len(raw[d][0]) + len(raw[d][1]) for d in hn.sizes)
    dim = hn.sizes[0]
    x = torch.randn(2, 3, dim, generator=torch.Generator().manual_seed(1))
    for a, b in zip(apply([(hn, 0.8)], x, dim), apply([(back, 0.8)], x, dim), strict=True):
        assert torch.equal(a, b)


def test_header_is_documented_layout_and_name_override(tmp_path: Path) -> None:
    hn = load(str(FIXTURES / "pub_relu_11_320_ln.pt"))
    out = tmp_path / ("0" * 64 + ".safetensors")
    save_canonical(hn, out)
    with safe_open(out, "pt") as f:
        meta = f.metadata()
        keys = sorted(f.keys())
    assert meta["format"] == "hypercord-hypernetwork" and meta["format_version"] == "1"
    assert meta["name"] == "pub_relu_11_320_ln" and json.loads(meta["sizes"]) == [320]
    assert json.loads(meta["a1111.is_layer_norm"]) is True and json.loads(meta["a1111.activate_output"]) is False
    assert keys == ["320.k.linear.0.bias", "320.k.linear.0.weight", "320.k.linear.1.bias", "320.k.linear.1.weight",
                    "320.v.linear.0.bias", "320.v.linear.0.weight", "320.v.linear.1.bias", "320.v.linear.1.weight"]
    assert load_canonical(out, name="shown").name == "shown"
    assert not list(tmp_path.glob("*.tmp*"))


def _canonical(tmp_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    hn = load(str(FIXTURES / "pub_relu_11_320_ln.pt"))
    save_canonical(hn, tmp_path / "good.safetensors")
    with safe_open(tmp_path / "good.safetensors", "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118


@pytest.mark.parametrize(("change", "message"), [
    (lambda t, m: m.__setitem__("format", "other"), "not a canonical hypernetwork file"),
    (lambda t, m: m.__setitem__("format_version", "2"), "canonical format version '2' is not supported"),
    (lambda t, m: m.__setitem__("a1111.evil", "1"), "unknown canonical metadata key"),
    (lambda t, m: m.__setitem__("a1111.layer_structure", "[1, 2"), "not valid JSON"),
    (lambda t, m: m.update({"a1111.layer_structure": "[1, 2, 1]", "a1111.dropout_structure": "[0, 0, 0]"}),
     r"^size 320 k: unexpected tensor 'linear.1.bias' for layer_structure \[1, 2, 1\], activation 'relu'"),
    (lambda t, m: m.__setitem__("sizes", "[320, 768]"), "do not match the tensors"),
    (lambda t, m: t.__setitem__("../etc.k.linear.0.weight", torch.zeros(1)), "unexpected tensor name"),
    (lambda t, m: t["320.v.linear.1.bias"].__setitem__(0, float("nan")), "contains NaN or Inf"),
    (lambda t, m: t.__setitem__("320.k.linear.0.bias", torch.zeros(320, dtype=torch.int32)), "unsupported dtype"),
])
def test_hostile_canonical_files_are_refused(tmp_path: Path, change, message: str) -> None:
    tensors, meta = _canonical(tmp_path)
    change(tensors, meta)
    save_file(tensors, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(HypernetFormatError, match=message):
        load_canonical(tmp_path / "bad.safetensors")


def test_non_safetensors_and_size_cap(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(HypernetFormatError, match="not a safetensors file"):
        load_canonical(junk)
    _canonical(tmp_path)
    with pytest.raises(HypernetFormatError, match="too large"):
        load_canonical(tmp_path / "good.safetensors", max_bytes=1000)
