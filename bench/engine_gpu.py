"""Engine speed on one CUDA GPU at SD1.5 size (random weights, nothing downloaded): issue 18's benchmark.

Side by side in one run: plain diffusers ``StableDiffusionPipeline`` one image at a time; our renderer eager; our
renderer with its UNet compiled (``engine.worker.unet_runner``: static hypernet slots per batch-size bucket, CUDA
graphs for the 1-image bucket); and, if time is left, the real worker process (eager) behind the engine client.
Workload: 512x512, 20 steps, Euler a, CFG 7; 8 users each with their own hypernet (A1111's default shape
``[1, 2, 1]``, ReLU, at every attention width of the model: 320/640/768/1280, weights drawn like A1111's "Normal"
init), end to end (encode, denoise, decode, PNG); the same batch without hypernets (the overhead ratio); one request
on an idle engine (3 runs).  Per-phase times come from CUDA events.

The renderer is driven as it is (``Renderer``, ``BatchUNet`` unchanged): the compiled run only swaps
``renderer.unet`` for ``RunnerUNet(runner)``.  The JSON is rewritten after every measurement (``--out``), so a run
killed by its time limit still reports what it finished; sections that would overrun ``--deadline-s`` are skipped
with the reason.  The last line on stdout is the whole JSON.

    python bench/engine_gpu.py --out bench-out/engine_gpu.json      # CUDA (see bench/gpu_run.sh)
    OMP_NUM_THREADS=1 .venv/bin/python bench/engine_gpu.py --smoke  # CPU: every section on a tiny SD1.5-shaped model
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shlex
import sys
import tempfile
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

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
    """The renderer's UNet (or a ``RunnerUNet``) with its calls timed as the ``unet`` phase."""

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
    renderer._png = clock.wrap("png", renderer._png)
    renderer.unet = TimedUNet(renderer.unet, clock)


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


# ---- sections -------------------------------------------------------------------------------------------------

def diffusers_baseline(parts: Any, args: argparse.Namespace, device: torch.device, images: int) -> dict[str, Any]:
    """``StableDiffusionPipeline`` one image at a time (its own Euler a), PNG included."""
    import io

    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=parts.unet, scheduler=EulerAncestralDiscreteScheduler.from_config(
                                       parts.scheduler_config), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def one(seed: int) -> None:
        generator = torch.Generator(device=device).manual_seed(seed)
        image = pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=7.0, height=args.size, width=args.size,
                     generator=generator).images[0]
        image.save(io.BytesIO(), format="PNG")

    with torch.inference_mode():
        one(0)  # warm-up (cuDNN/cuBLAS heuristics, allocator)
        sync(device)
        t0 = time.perf_counter()
        for seed in range(1, images + 1):
            one(seed)
        sync(device)
    wall = time.perf_counter() - t0
    return {"images": images, "wall_s": round(wall, 3), "images_per_s": round(images / wall, 3)}


def measure_engine(renderer: Any, clock: PhaseClock, refs: list[Any], nets: dict[str, Any],
                   args: argparse.Namespace, report: Report, name: str) -> None:
    """8 users x 8 hypernets end to end, the same without hypernets, and one idle request (3 runs)."""
    section = report.section(name)
    workloads = {"hypernets": refs, "plain": []}
    for use in workloads.values():  # warm-up: allocator, cuBLAS, any graph not warmed yet
        renderer.generate(requests_for(args.users, use, args.size, args.steps, seed=1), nets)
    renderer.generate(requests_for(1, refs, args.size, args.steps, seed=2), nets)
    for label, use in workloads.items():
        clock.reset()
        t0 = time.perf_counter()
        for b in range(args.batches):
            renderer.generate(requests_for(args.users, use, args.size, args.steps, seed=10 + b), nets)
        wall = time.perf_counter() - t0
        images = args.users * args.batches
        section[f"users{args.users}_{label}"] = {"images": images, "wall_s": round(wall, 3),
                                                  "images_per_s": round(images / wall, 3),
                                                  "per_batch": clock.summary(args.batches, wall)}
        report.save()
    hn, plain = section[f"users{args.users}_hypernets"], section[f"users{args.users}_plain"]
    section["hypernet_overhead"] = round(hn["wall_s"] / plain["wall_s"] - 1, 4)
    latencies = []
    for run in range(3):
        t0 = time.perf_counter()
        renderer.generate(requests_for(1, refs, args.size, args.steps, seed=50 + run), nets)
        latencies.append(round(time.perf_counter() - t0, 4))
    section["one_request_latency_s"] = latencies
    report.save()


def worker_path(parts: Any, net_list: list[Any], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The real EngineClient + worker process (eager: the worker's renderer is not compiled yet), ``max_batch`` 8."""
    from engine_throughput import run

    from engine.hypernet import save_canonical
    from engine.protocol import HypernetRef

    with tempfile.TemporaryDirectory(prefix="hc-engine-gpu-") as tmp:
        folder, store = Path(tmp) / "sd15-random", Path(tmp) / "store"
        store.mkdir()
        write_folder(parts, folder)
        refs = []
        for net in net_list:
            path = store / "tmp.safetensors"
            save_canonical(net, path)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            path.rename(store / f"{digest}.safetensors")
            refs.append(HypernetRef(name=net.name, sha256=digest, multiplier=0.8))
        ns = argparse.Namespace(users=args.users, jobs=args.worker_jobs, steps=args.steps, size=args.size,
                                checkpoint=str(folder), device=str(device))
        return asyncio.run(run(8, ns, store, refs))


def write_folder(parts: Any, folder: Path) -> None:
    """The random checkpoint as a diffusers folder (fp16 safetensors on CUDA), as ``Renderer.load`` reads one."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(unet=parts.unet, vae=parts.vae, text_encoder=parts.text_encoder,
                                   tokenizer=parts.tokenizer, scheduler=DDIMScheduler.from_config(parts.scheduler_config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)


def summary(sections: dict[str, Any], users: int) -> dict[str, Any]:
    """The headline figures against issue 18's targets (one H100/H200): >= 8 img/s for 8 users on 8 hypernets (goal
    10), one request <= 0.3 s, hypernet cost <= its arithmetic share (12.7 % of the UNet's FLOPs) + 4 points."""
    out: dict[str, Any] = {}
    for name in ("engine_eager", "engine_compiled"):
        got = sections.get(name, {})
        if f"users{users}_hypernets" not in got:
            continue
        out[name] = {"images_per_s": got[f"users{users}_hypernets"]["images_per_s"],
                     "one_request_s": min(got["one_request_latency_s"]), "hypernet_overhead": got["hypernet_overhead"],
                     "meets": {"images_per_s>=8": got[f"users{users}_hypernets"]["images_per_s"] >= 8,
                               "one_request<=0.3s": min(got["one_request_latency_s"]) <= 0.3,
                               "overhead<=0.167": got["hypernet_overhead"] <= 0.167}}
    return out


# ---- main ---------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU: a tiny SD1.5-shaped model, 64x64, 2 steps")
    parser.add_argument("--out", type=Path, default=None, help="JSON file rewritten after every measurement")
    parser.add_argument("--deadline-s", type=float, default=440.0, help="skip sections that would end later")
    parser.add_argument("--users", type=int, default=8, help="users per batch, each with their own hypernet")
    parser.add_argument("--batches", type=int, default=3, help="measured batches per workload")
    parser.add_argument("--steps", type=int, default=None, help="default 20 (smoke: 2)")
    parser.add_argument("--size", type=int, default=None, help="default 512 (smoke: 64)")
    parser.add_argument("--baseline-images", type=int, default=4)
    parser.add_argument("--cudagraph-rows", type=int, default=2, help="CUDA graphs for buckets up to this many rows")
    parser.add_argument("--cache-dir", default=None, help="persistent compile cache (default: a temporary folder)")
    parser.add_argument("--worker-jobs", type=int, default=2, help="jobs per user in the worker section")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: baseline,eager,compiled,worker")
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.smoke else 20)
    args.size = args.size or (64 if args.smoke else 512)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    if not args.smoke and not torch.cuda.is_available():
        print("engine_gpu: no CUDA device here; run with --smoke for the CPU check (figures: bench/engine_throughput.py)",
              file=sys.stderr)
        return 2
    from engine.protocol import HypernetRef
    from engine.worker.compile import CompileSettings
    from engine.worker.renderer import Renderer
    from engine.worker.unet_runner import RunnerUNet, UNetRunner, attention_dims

    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.float16
    skip = set(filter(None, args.skip.split(",")))
    report = Report(args.out, started, args.deadline_s)
    report.data.update({
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (smoke)",
        "torch": torch.__version__, "model": f"SD1.5 architecture, random weights, {str(dtype).removeprefix('torch.')}"
        + (" (smoke size)" if args.smoke else ""), "size": args.size, "steps": args.steps, "sampler": "Euler a",
        "cfg_scale": 7.0, "users": args.users})
    progress("building the model")
    parts = build_parts(args.smoke, device, dtype)
    dims = sorted(attention_dims(parts.unet))
    net_list = make_hypernets(args.users, dims)
    report.data["hypernets"] = {"count": len(net_list), "shape": "[1, 2, 1] relu", "sizes": dims}
    report.save()

    if "baseline" not in skip and report.fits("diffusers_one_by_one", 60):
        progress("diffusers baseline")
        report.section("diffusers_one_by_one").update(diffusers_baseline(parts, args, device, args.baseline_images))
        report.save()

    renderer = Renderer(parts, checkpoint="sd15-random", device=device, dtype=dtype, hypernet_dtype=dtype)
    unet = renderer.unet
    digests = [hashlib.sha256(n.name.encode()).hexdigest() for n in net_list]
    nets = {d: n.to(device, dtype) for d, n in zip(digests, net_list, strict=True)}
    refs = [HypernetRef(name=n.name, sha256=d, multiplier=0.8) for n, d in zip(net_list, digests, strict=True)]
    clock = PhaseClock(device)
    instrument(renderer, clock)

    if "eager" not in skip and report.fits("engine_eager", 90):
        progress("engine, eager")
        measure_engine(renderer, clock, refs, nets, args, report, "engine_eager")

    if "compiled" not in skip and report.fits("engine_compiled", 150):
        progress("engine, compiled: warm-up")
        settings = CompileSettings(enabled=True, cudagraph_rows=args.cudagraph_rows if device.type == "cuda" else 0,
                                   backend="inductor" if device.type == "cuda" else "eager",
                                   cache_dir=args.cache_dir or tempfile.mkdtemp(prefix="hc-compile-"),
                                   compile_on_first_use=True)
        runner = UNetRunner(unet, device=device, hypernet_dtype=dtype, settings=settings)
        section = report.section("engine_compiled")
        section["settings"] = {"backend": settings.backend, "cudagraph_rows": settings.cudagraph_rows,
                               "buckets": list(settings.buckets)}
        latent = args.size // renderer.vae_scale_factor
        with torch.no_grad():
            for bucket in (2 * args.users, 2):  # the 8-user batch, then the one-image bucket
                section.setdefault("warm_up", []).extend(
                    runner.warm_up([(latent, latent)], dtype=dtype, buckets=(runner.buckets.bucket_for(bucket) or bucket,)))
                report.save()
        renderer.unet = TimedUNet(RunnerUNet(runner), clock)
        measure_engine(renderer, clock, refs, nets, args, report, "engine_compiled")
        section["runner"] = {k: v for k, v in vars(runner.stats).items() if k != "compiles"}
        section["compiles"] = runner.stats.compiles
        report.save()
        renderer.unet = TimedUNet(unet, clock)

    for name, base in (("engine_eager", "diffusers_one_by_one"), ("engine_compiled", "diffusers_one_by_one")):
        got, ref = report.data["sections"].get(name, {}), report.data["sections"].get(base, {})
        key = f"users{args.users}_hypernets"
        if key in got and "images_per_s" in ref:
            got["speedup_vs_diffusers"] = round(got[key]["images_per_s"] / ref["images_per_s"], 3)

    if "worker" not in skip and report.fits("worker_eager", 90):
        progress("worker process, eager")
        worker = report.section("worker_eager")
        worker.update(worker_path(parts, net_list, args, device))
        eager = report.data["sections"].get("engine_eager", {}).get(f"users{args.users}_hypernets")
        if eager:  # the worker's idle time between batches, against the same batches rendered back to back
            batches = -(-args.users * args.worker_jobs // 8)
            worker["estimated_gap_per_batch_s"] = round(
                (worker["wall_s"] - batches * eager["wall_s"] / args.batches) / batches, 3)
        report.save()

    report.data["summary"] = summary(report.data["sections"], args.users)
    report.save()
    print(json.dumps(report.data))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # engine_throughput, for the worker section
    sys.exit(main())
