"""Shared fixtures of the LoRA tests: the trimmed A1111 fixture set and its small SD1.5-layout model."""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.lora import bias_delta, layer_delta
from engine.lora.batch import as_use

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "lora"


@pytest.fixture(scope="session")
def manifest() -> dict:
    return json.loads((FIXTURES / "manifest.json").read_text())


@pytest.fixture(scope="session")
def expected() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "expected.safetensors")


@pytest.fixture(scope="session")
def probe_inputs() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "inputs.safetensors")


@pytest.fixture(scope="session")
def model_weights(manifest: dict) -> dict[str, dict[str, torch.Tensor]]:
    return {part: load_file(FIXTURES / path) for part, path in manifest["model"].items()}


@pytest.fixture(scope="session")
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """(UNet, text encoder) of the fixture model, fp32, eval mode; tests must not modify them."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet = UNet2DConditionModel.from_pretrained(FIXTURES / "model" / "unet").eval()
        text_encoder = CLIPTextModel.from_pretrained(FIXTURES / "model" / "text_encoder").eval()
    return unet, text_encoder


def merged_copy(model: torch.nn.Module, part: str, row: Sequence) -> torch.nn.Module:
    """A copy of ``model`` with a row's LoRAs merged into its weights one after another, as A1111 does
    (``W += ΔW``, ``b += Δb`` per network, via the checker interface): the reference a row must equal."""
    merged = copy.deepcopy(model)
    modules = dict(merged.named_modules())
    for use in map(as_use, row):
        for path in use.lora.part_modules(part):
            module = modules.get(path)
            if module is None:
                continue
            name = f"{part}.{path}"
            with torch.no_grad():
                delta = layer_delta(use.lora, name, module.weight, use.unet, use.te, use.dyn)
                if delta is None:
                    continue
                module.weight += delta
                bias = bias_delta(use.lora, name, module.bias, use.unet, use.te)
                if bias is not None:
                    if module.bias is None:
                        module.bias = torch.nn.Parameter(bias.clone())
                    else:
                        module.bias += bias
    return merged


@pytest.fixture(scope="session")
def merge() -> Callable[[torch.nn.Module, str, Sequence], torch.nn.Module]:
    return merged_copy


def rel_err(got: torch.Tensor, want: torch.Tensor, scale: float | None = None) -> float:
    """max |got - want| relative to ``scale`` (default max |want|), as the shared checker measures."""
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = float((got.double() - want.double()).abs().max()) if got.numel() else 0.0
    return diff / max(scale if scale is not None else float(want.abs().max()), 1e-12)


@pytest.fixture(scope="session")
def rel() -> Callable[..., float]:
    return rel_err
