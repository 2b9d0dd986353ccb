"""What the step loop does on the host after its first step: no tensor built from Python data, no random draw, and
no scalar read that grows with the batch (issue 18: on a GPU each of those is a copy or a sync per step).

A dispatch-mode counter watches every op of a real render (tiny model, CPU) between the end of step 1 and the end
of the last step.  Scalar reads (``.item()``) remain only in the samplers' schedule arithmetic, on 0-d CPU tensors
(``sigmas`` live on the CPU, as A1111's k-diffusion samplers compute them): host arithmetic, not a device sync; the
test pins that they come from there and that their number does not depend on the batch's size, prompts or nets.
"""

from __future__ import annotations

import hashlib
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

from engine.hypernet import load
from engine.protocol import GenerateRequest, HypernetRef
from engine.worker.renderer import Renderer
from tests.requests import request as make_request

ZOO = Path(__file__).resolve().parents[2] / "fixtures" / "hypernetworks" / "zoo"
ENGINE = str(Path(__file__).resolve().parents[3] / "engine")
RANDOM_OPS = ("randn", "normal", "uniform", "bernoulli", "rand.", "randint", "randperm", "multinomial")


class HostWork(TorchDispatchMode):
    """Counts, while ``watching``, ops that build tensors from Python data, draw random numbers or read a scalar."""

    def __init__(self) -> None:
        super().__init__()
        self.watching = False
        self.from_python: Counter[str] = Counter()
        self.random: Counter[str] = Counter()
        self.scalar_reads: Counter[str] = Counter()  # caller (engine file:line) -> count
        self.scalar_devices: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if self.watching:
            name = str(func)
            if "lift_fresh" in name:
                self.from_python[_caller()] += 1
            elif any(op in name for op in RANDOM_OPS):
                self.random[f"{name} at {_caller()}"] += 1
            elif "_local_scalar_dense" in name:
                self.scalar_reads[_caller()] += 1
                self.scalar_devices.add(f"{args[0].device.type}/{args[0].dim()}d")
        return func(*args, **(kwargs or {}))


def _caller() -> str:
    frames = [f for f in traceback.extract_stack() if f.filename.startswith(ENGINE)]
    return f"{Path(frames[-1].filename).relative_to(Path(ENGINE).parent)}:{frames[-1].lineno}" if frames else "?"


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer.load("tiny", device="cpu")


@pytest.fixture(scope="module")
def nets() -> dict[str, Any]:
    files = [ZOO / "pub_zoo_relu.pt", ZOO / "pub_zoo_tanh.pt"]
    return {hashlib.sha256(f.read_bytes()).hexdigest(): load(f) for f in files}


def watch(renderer: Renderer, requests: list[GenerateRequest], nets: dict[str, Any]) -> tuple[HostWork, int]:
    counter, evaluations = HostWork(), [0]

    def on_step(done: int, total: int) -> None:
        counter.watching = 1 <= done < total  # from the end of step 1 to the end of the last step
        evaluations[0] += counter.watching

    with counter:
        renderer.generate(requests, nets, on_step=on_step)
    return counter, evaluations[0]


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE Karras"])  # pre-drawn steps; Brownian queries
def test_steps_after_the_first_build_no_tensors_draw_nothing_and_read_only_schedule_scalars(renderer, nets, sampler):
    refs = [HypernetRef(name=f"net{i}", sha256=d, multiplier=0.8) for i, d in enumerate(nets)]
    mixed = [make_request(i + 1, 7 + i, prompt="water elemental " * (1 + 30 * i), seed=40 + i, steps=5, width=64,
                          height=64, sampler=sampler, hypernets=(refs[i],) if i < 2 else ()) for i in range(3)]
    plain = [make_request(9, 7, prompt="water elemental", seed=40, steps=5, width=64, height=64, sampler=sampler)]
    busy, steps = watch(renderer, mixed, nets)  # 3 rows, 2 hypernets, a 2-chunk prompt: two length groups
    alone, _ = watch(renderer, plain, nets)
    assert steps == 4  # steps 2 to 5 watched
    assert not busy.from_python and not busy.random, (busy.from_python, busy.random)
    assert busy.scalar_devices <= {"cpu/0d"}
    assert all(where.startswith("engine/sampling/") for where in busy.scalar_reads), busy.scalar_reads
    assert busy.scalar_reads == alone.scalar_reads  # per step, not per row, prompt, length group or hypernet
