"""Shared pieces of the sampling tests: the A1111 reference cases and the toy UNet they were made with.

The toy UNet (the references' model, parameters in tests/fixtures/sampling/cases.json → unet) is the optimal
denoiser for Gaussian data with a context-dependent mean, plus a small coupling between neighbouring pixels:
eps = s (x - mu) / (v + s^2) + a tanh(mix(neighbours of x_in)) / (1 + s), x = x_in sqrt(s^2 + 1),
s = exp(c0 + c1 u + c2 u^2), u = t / 999.  Strictly per row, so rows may be evaluated in any grouping.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sampling"


class ToyUNet:
    def __init__(self, params: dict) -> None:
        self.mix = torch.tensor(params["mix"], dtype=torch.float32)      # (C, C)
        self.proj = torch.tensor(params["proj"], dtype=torch.float32)    # (D, C)
        self.freq = torch.tensor(params["freq"], dtype=torch.float32)    # (C, 2)
        self.poly = [float(v) for v in params["log_sigma_poly"]]
        self.var = float(params["data_var"])
        self.mu_scale = float(params["mu_scale"])
        self.coupling = float(params["coupling"])
        self.rows_seen = 0

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, channels, h, w = x_in.shape
        self.rows_seen += n
        u = t.reshape(-1).to(torch.float32).expand(n) / 999.0
        s = torch.exp(self.poly[0] + self.poly[1] * u + self.poly[2] * u * u).view(n, 1, 1, 1)
        x = x_in * torch.sqrt(s * s + 1.0)
        means = torch.tanh((context.float().mean(dim=1)[:, :, None] * self.proj[None]).sum(dim=1))   # (N, C)
        rows = torch.arange(h, dtype=torch.float32) / h
        cols = torch.arange(w, dtype=torch.float32) / w
        pattern = torch.cos(2 * math.pi * (self.freq[:, 0, None, None] * rows[None, :, None]
                                           + self.freq[:, 1, None, None] * cols[None, None, :]))
        mu = self.mu_scale * means[:, :, None, None] * pattern[None]
        eps = s * (x - mu) / (self.var + s * s)
        neighbours = 0.5 * (torch.roll(x_in, 1, dims=3) + torch.roll(x_in, 1, dims=2))
        mixed = torch.stack([sum(self.mix[c, k] * neighbours[:, k] for k in range(channels)) for c in range(channels)],
                            dim=1)
        return eps + self.coupling * torch.tanh(mixed) / (1.0 + s)


@pytest.fixture(scope="session")
def reference() -> tuple[dict, dict[str, torch.Tensor]]:
    """(cases.json, tensors) of the A1111 references."""
    with open(FIXTURES / "cases.json", encoding="utf-8") as f:
        meta = json.load(f)
    return meta, load_file(FIXTURES / "tensors.safetensors")


@pytest.fixture()
def toy_unet(reference) -> ToyUNet:
    return ToyUNet(reference[0]["unet"])


@pytest.fixture(scope="session")
def alphas_cumprod(reference) -> torch.Tensor:
    return reference[1]["alphas_cumprod"]
