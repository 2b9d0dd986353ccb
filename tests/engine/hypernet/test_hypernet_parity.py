"""Parity with A1111's own outputs, on the fixture subset copied into tests/fixtures/hypernetworks.

The comparison mirrors ../shared/tools/check_parity.py (per-case atol/rtol from the manifest, dtype and shape
must match, the input must not be modified, error cases must raise).  The layout test checks the module list
we rebuild against what A1111 built for every one of the 37 files, from their saved metadata alone.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine import hypernet
from engine.hypernet.layout import build_sequential, resolve_metadata

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hypernetworks"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
INPUTS = load_file(FIXTURES / "inputs.safetensors")
EXPECTED = load_file(FIXTURES / "expected.safetensors")
VALUE_CASES = [c for c in MANIFEST["cases"] if c["expect"] == "values"]
ERROR_CASES = [c for c in MANIFEST["cases"] if c["expect"] == "error"]
FILES = MANIFEST["files"]


def _tensor(key: str) -> torch.Tensor:
    return INPUTS[key] if key in INPUTS else EXPECTED[key]


@pytest.fixture(scope="module")
def loaded() -> dict[str, hypernet.Hypernetwork]:
    return {}


def _get(cache: dict[str, hypernet.Hypernetwork], file: str) -> hypernet.Hypernetwork:
    if file not in cache:
        cache[file] = hypernet.load(str(FIXTURES / file))
    return cache[file]


def test_subset_is_meaningful() -> None:
    kinds = {c["kind"] for c in MANIFEST["cases"]}
    assert {"single", "single_zoo", "chain", "chain_fp16_upcast", "single_fp16_upcast", "absent_dim", "error"} <= kinds
    assert len(VALUE_CASES) >= 70


@pytest.mark.parametrize("case", VALUE_CASES, ids=[c["id"] for c in VALUE_CASES])
def test_matches_a1111(case: dict, loaded: dict[str, hypernet.Hypernetwork]) -> None:
    x = _tensor(case["input"])
    objs = [(_get(loaded, h["file"]), h["multiplier"]) for h in case["hypernets"]]
    x_in = x.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our softmax-family modules must not spam "Implicit dimension choice"
        k, v = hypernet.apply(objs, x_in, case["dim"])
    assert torch.equal(x_in, x), "apply() modified its input"
    for got, key in ((k, case["expected_k"]), (v, case["expected_v"])):
        exp = _tensor(key)
        assert got.shape == exp.shape and got.dtype == exp.dtype
        assert torch.allclose(got.float(), exp.float(), atol=case["atol"], rtol=case["rtol"], equal_nan=True), (
            f"max abs err {(got.double() - exp.double()).abs().max():.3e}")


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c["id"] for c in ERROR_CASES])
def test_refuses_what_a1111_refuses(case: dict) -> None:
    with pytest.raises(hypernet.HypernetFormatError, match="unsupported activation_func"):
        for h in case["hypernets"]:
            hypernet.load(str(FIXTURES / h["file"]))


LAYOUT_FILES = [k for k, v in FILES.items() if "a1111_loaded" in v]


@pytest.mark.parametrize("stem", LAYOUT_FILES)
def test_layout_and_resolved_options_match_a1111(stem: str) -> None:
    entry = FILES[stem]
    saved = {k: v for k, v in entry["saved_metadata"].items() if k != "int_keys"}
    meta = resolve_metadata(saved, stem)
    a1111 = entry["a1111_loaded"]
    for key in ("layer_structure", "activation_func", "add_layer_norm", "use_dropout", "activate_output",
                "last_layer_dropout", "dropout_structure", "name", "step", "sd_checkpoint", "sd_checkpoint_name"):
        assert meta[key] == a1111[key], key
    for dim, layout in a1111["layout"].items():
        seq = build_sequential(int(dim), meta)
        modules = [f"{i}:{type(m).__name__}" + (f"(p={m.p})" if isinstance(m, torch.nn.Dropout) else "")
                   for i, m in enumerate(seq)]
        assert modules == layout["modules"]
        shapes = {f"linear.{k}": list(t.shape) for k, t in seq.state_dict(keep_vars=True).items()}
        assert shapes == {k: v[0] for k, v in layout["state_dict"].items()}


def test_file_metadata_is_what_a1111_resolved(loaded: dict[str, hypernet.Hypernetwork]) -> None:
    hn = _get(loaded, "pub_elu_11_320_legacykeys.pt")
    a1111 = FILES["pub_elu_11_320_legacykeys"]["a1111_loaded"]
    assert hn.name == "pub_elu_11_320_legacykeys"
    assert hn.sizes == a1111["sizes"] == [320]
    assert hn.metadata["activate_output"] is True  # the legacy default: key absent -> True
    assert hn.metadata["step"] == a1111["step"] and hn.metadata["sd_checkpoint"] == a1111["sd_checkpoint"]
