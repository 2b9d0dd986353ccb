"""The CPU-runnable parts of the GPU benchmark (bench/engine_gpu.py): options, the model it writes, its report.

The benchmark itself needs a CUDA machine; these keep the parts it is built from from rotting between GPU runs
(the whole ``--smoke`` run takes about a minute: see docs/performance.md).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import engine_gpu  # noqa: E402
import gpu_parts  # noqa: E402

from engine.prompt import format_tag  # noqa: E402
from engine.protocol import HypernetRef  # noqa: E402
from engine.worker.checkpoints import load_checkpoint  # noqa: E402
from engine.worker.unet_runner import attention_dims  # noqa: E402


def test_defaults_are_the_issue_workload() -> None:
    args = engine_gpu.parse_args([])
    assert (args.size, args.steps, args.users, args.deadline_s) == (512, 20, 8, 440.0)
    smoke = engine_gpu.parse_args(["--smoke", "--only", "ops,eager"])
    assert (smoke.size, smoke.steps) == (64, 2)


def test_smoke_model_is_sd15_shaped_and_written_as_a_loadable_folder(tmp_path: Path) -> None:
    parts = gpu_parts.build_parts(smoke=True, device=torch.device("cpu"), dtype=torch.float32)
    assert parts.unet.config.down_block_types == tuple(gpu_parts.UNET_SD15["down_block_types"])
    assert attention_dims(parts.unet) == {32, 64, 768}
    nets = gpu_parts.make_hypernets(2, sorted(attention_dims(parts.unet)))
    assert [n.sizes for n in nets] == [[32, 64, 768]] * 2
    assert nets[0].metadata["layer_structure"] == [1, 2, 1] and nets[0].metadata["activation_func"] == "relu"
    assert not torch.equal(nets[0].layers[768][0].linear[0].weight, nets[1].layers[768][0].linear[0].weight)
    gpu_parts.write_folder(parts, tmp_path / "sd15")
    loaded = load_checkpoint(str(tmp_path / "sd15"), torch.float32)
    assert torch.equal(loaded.unet.conv_in.weight, parts.unet.conv_in.weight)
    refs = [HypernetRef(name="net_a", sha256="a" * 64, multiplier=0.8), HypernetRef(name="net_b", sha256="b" * 64,
                                                                                     multiplier=0.8)]
    reqs = gpu_parts.requests_for(3, refs, 64, 2, seed=5)
    assert [r.settings.seed for r in reqs] == [5, 6, 7] and reqs[0].settings.sampler == "Euler a"
    assert [r.settings.hypernets[0].name for r in reqs] == ["net_a", "net_b", "net_a"]
    assert reqs[1].settings.prompt == f"{gpu_parts.PROMPT} {format_tag('net_b', 0.8)}"


def test_report_is_rewritten_after_each_section_and_skips_what_would_overrun(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    report = gpu_parts.Report(out, time.monotonic(), deadline_s=30)
    report.run("quick", 1, lambda: {"images_per_s": 1.5})
    assert json.loads(out.read_text())["sections"]["quick"] == {"images_per_s": 1.5}
    report.run("long", 3600, lambda: {"never": True})
    assert "not enough time left" in json.loads(out.read_text())["sections"]["long"]["skipped"]
    report.run("broken", 1, lambda: 1 / 0)
    assert "ZeroDivisionError" in json.loads(out.read_text())["sections"]["broken"]["error"]
