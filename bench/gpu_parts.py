"""The pieces of ``bench/engine_gpu.py``: the SD1.5-shaped random checkpoint, the hypernets, the report, the clock.

Why a module of its own: the benchmark script keeps only its sections; what builds the model and measures time
is here, each part small enough to read at once.  Nothing here runs anything by itself.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import traceback
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent

# Stable Diffusion 1.5's component configs (the published v1-5 values), so shapes and FLOPs match the real model.
UNET_SD15: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
}
VAE_SD15: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "sample_size": 512,
    "block_out_channels": (128, 256, 512, 512), "scaling_factor": 0.18215,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
}
CLIP_L: dict[str, Any] = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                          "projection_dim": 768}
# --smoke: the same architecture families at a size a CPU runs in seconds (text width 768 kept for the hypernets).
UNET_SMOKE = {**UNET_SD15, "block_out_channels": (32, 64, 64, 64), "layers_per_block": 1, "sample_size": 8}
VAE_SMOKE = {**VAE_SD15, "block_out_channels": (16, 32, 32, 32), "layers_per_block": 1, "norm_num_groups": 8,
             "sample_size": 64}
CLIP_SMOKE = {**CLIP_L, "intermediate_size": 1024, "num_hidden_layers": 1}
PROMPT = "water elemental woman, highly detailed, sharp focus"


# ---- the report: rewritten after every measurement ---------------------------------------------------------

class Report:
    """The JSON being built; ``save`` writes it atomically, so a killed run leaves the last complete state."""

    def __init__(self, path: Path | None, started: float, deadline_s: float) -> None:
        self.path = path
        self.started = started
        self.deadline_s = deadline_s
        self.data: dict[str, Any] = {"bench": "engine_gpu", "command": _command(), "sections": {}}

    def remaining(self) -> float:
        return self.deadline_s - (time.monotonic() - self.started)

    def section(self, name: str) -> dict[str, Any]:
        return self.data["sections"].setdefault(name, {})

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.started, 1)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)

    def run(self, name: str, needs_s: float, measure: Callable[[], dict[str, Any] | None]) -> None:
        """Run a section if it fits the time left; its figures (or its error, so later sections still run) go in."""
        if not self.fits(name, needs_s):
            return
        progress(name)
        try:
            figures = measure()
        except Exception as exc:  # a one-shot run on a borrowed machine: report and go on
            self.section(name)["error"] = "".join(traceback.format_exception_only(exc)).strip()[-2000:]
            progress(f"{name} failed: {traceback.format_exc()}")
        else:
            self.section(name).update(figures or {})
        self.save()

    def fits(self, name: str, needs_s: float) -> bool:
        """Whether a section estimated at ``needs_s`` fits the time left; records the skip otherwise."""
        if self.remaining() >= needs_s:
            return True
        self.section(name)["skipped"] = f"not enough time left ({self.remaining():.0f} s, needs ~{needs_s:.0f} s)"
        self.save()
        return False


def _command() -> str:
    return " ".join(shlex.quote(a) for a in ["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def progress(message: str) -> None:
    print(f"[engine_gpu] {message}", file=sys.stderr, flush=True)


# ---- timing -------------------------------------------------------------------------------------------------

class PhaseClock:
    """Time spent in each wrapped call: CUDA-event milliseconds on a GPU (what the device did), wall seconds always."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.events: dict[str, list[tuple[Any, Any]]] = defaultdict(list)
        self.wall: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = end = None
            if self.cuda:
                start = torch.cuda.Event(enable_timing=True)
                start.record()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if self.cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                self.events[name].append((start, end))
            self.wall[name] += time.perf_counter() - t0
            self.calls[name] += 1
            return out
        return timed

    def reset(self) -> None:
        self.events.clear()
        self.wall.clear()
        self.calls.clear()

    def summary(self, batches: int, wall_s: float) -> dict[str, Any]:
        """Per batch: each phase's device ms (CUDA events) and host wall ms; ``other_ms`` = the rest of the batch's
        wall time (sampler math, Python, waits between phases)."""
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, Any] = {}
        for name in sorted(self.wall):
            entry = {"calls_per_batch": round(self.calls[name] / batches, 2),
                     "wall_ms": round(1000 * self.wall[name] / batches, 2)}
            if self.events.get(name):
                entry["device_ms"] = round(sum(s.elapsed_time(e) for s, e in self.events[name]) / batches, 2)
            out[name] = entry
        out["other_ms"] = round(1000 * wall_s / batches - sum(v["wall_ms"] for v in out.values()), 2)
        return out


class TimedUNet:
    """The renderer's UNet runner (or a UNet) with its calls timed as the ``unet`` phase."""

    def __init__(self, unet: Any, clock: PhaseClock) -> None:
        self._unet = unet
        self._call = clock.wrap("unet", unet.__call__)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._unet, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)


def instrument(renderer: Any, clock: PhaseClock) -> None:
    """Time the renderer's phases without changing it: text encoding, UNet calls, VAE decodes, PNG encoding."""
    renderer.encoder.encode = clock.wrap("encode", renderer.encoder.encode)
    renderer.vae.decode = clock.wrap("decode", renderer.vae.decode)
    renderer.png_encoder.encode = clock.wrap("png", renderer.png_encoder.encode)
    renderer.unet_runner = TimedUNet(renderer.unet_runner, clock)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the model and the hypernets ----------------------------------------------------------------------------

def build_parts(smoke: bool, device: torch.device, dtype: torch.dtype) -> Any:
    """An SD1.5-shaped checkpoint with random weights, built on ``device`` (fast even at full size)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.conditioning import load_clip_tokenizer
    from engine.worker.checkpoints import LoadedCheckpoint
    from engine.worker.tiny import SCHEDULER_CONFIG

    tokenizer = load_clip_tokenizer()
    clip = CLIPTextConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          **(CLIP_SMOKE if smoke else CLIP_L))
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**(UNET_SMOKE if smoke else UNET_SD15))
        vae = AutoencoderKL(**(VAE_SMOKE if smoke else VAE_SD15))
        text = CLIPTextModel(clip)
    # A trained CLIP's final LayerNorm has a bias; with a zero one, A1111's emphasis rescaling divides by ~0.
    torch.nn.init.normal_(getattr(text, "text_model", text).final_layer_norm.bias, mean=0.3, std=0.1)
    for module in (unet, vae, text):
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return LoadedCheckpoint(unet, vae, text, tokenizer, dict(SCHEDULER_CONFIG), "sd15-random", None)


def make_hypernets(count: int, dims: list[int]) -> list[Any]:
    """``count`` distinct A1111-default hypernets: ``[1, 2, 1]``, ReLU, Normal init (std 0.01, zero bias)."""
    from engine.hypernet import from_state_dict

    nets = []
    for i in range(count):
        gen = torch.Generator().manual_seed(1000 + i)
        obj: dict[Any, Any] = {"layer_structure": [1, 2, 1], "activation_func": "relu", "activate_output": False,
                               "is_layer_norm": False, "weight_initialization": "Normal"}
        for dim in dims:
            pair = []
            for _ in "kv":
                pair.append(OrderedDict([
                    ("linear.0.weight", torch.randn(2 * dim, dim, generator=gen) * 0.01),
                    ("linear.0.bias", torch.zeros(2 * dim)),
                    ("linear.2.weight", torch.randn(dim, 2 * dim, generator=gen) * 0.01),
                    ("linear.2.bias", torch.zeros(dim))]))
            obj[dim] = tuple(pair)
        nets.append(from_state_dict(obj, f"bench_net_{i}"))
    return nets


def requests_for(users: int, refs: list[Any], size: int, steps: int, seed: int) -> list[Any]:
    """One request per user, user ``i`` with ``refs[i]`` (none when ``refs`` is empty)."""
    from engine.prompt import format_tag
    from engine.protocol import GenerateRequest, RenderSettings

    out = []
    for i in range(users):
        ref = refs[i % len(refs)] if refs else None
        prompt = f"{PROMPT} {format_tag(ref.name, ref.multiplier)}" if ref else PROMPT
        settings = RenderSettings(prompt=prompt, hypernets=(ref,) if ref else (), seed=seed + i, steps=steps,
                                  width=size, height=size, sampler="Euler a", cfg_scale=7.0)
        out.append(GenerateRequest(job_id=seed * 100 + i + 1, user_id=i + 1, settings=settings))
    return out


def write_folder(parts: Any, folder: Path) -> None:
    """The random checkpoint as a diffusers folder (fp16 safetensors on CUDA), as ``Renderer.load`` reads one."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(unet=parts.unet, vae=parts.vae, text_encoder=parts.text_encoder,
                                   tokenizer=parts.tokenizer, scheduler=DDIMScheduler.from_config(parts.scheduler_config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
