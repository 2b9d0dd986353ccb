"""Engine speed on one CUDA GPU at SD1.5 size (random weights, nothing downloaded): issue 18's benchmark.

Side by side in one run: plain diffusers ``StableDiffusionPipeline`` one image at a time; our renderer eager; our
renderer with its UNet compiled (``engine.worker.unet_runner``: static hypernet slots per batch-size bucket, CUDA
graphs for the 1-image bucket); and, if time is left, the real worker process (eager) behind the engine client.
Workload: 512x512, 20 steps, Euler a, CFG 7; 8 users each with their own hypernet (A1111's default shape
``[1, 2, 1]``, ReLU, at every attention width of the model: 320/640/768/1280, weights drawn like A1111's "Normal"
init), end to end (encode, denoise, decode, PNG); the same batch without hypernets (the overhead ratio); one request
on an idle engine (3 runs).  Per-phase times come from CUDA events.

The renderer is driven as the worker drives it: the eager run uses the runner ``Renderer`` builds with compiling
off, the compiled run swaps ``renderer.unet_runner`` for one compiling with the section's settings (what
``Renderer.load(compile="on")`` builds).  The JSON is rewritten after every measurement (``--out``), so a run
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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):  # the engine; gpu_parts and engine_throughput beside this script
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
from gpu_parts import (  # noqa: E402
    PROMPT,
    PhaseClock,
    Report,
    TimedUNet,
    build_parts,
    instrument,
    make_hypernets,
    progress,
    requests_for,
    sync,
    write_folder,
)

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


def ops_and_graphs(unet: Any, net_list: list[Any], rows: int, latent: int, device: torch.device, dtype: torch.dtype,
                   explain: bool) -> dict[str, Any]:
    """Dispatched ops per UNet pass (a ``TorchDispatchMode`` counter) with 1 and ``len(net_list)`` distinct
    hypernets: the per-net loop from before issue 18, the stacked eager slots, the static slots; and what
    ``torch._dynamo.explain`` sees (graphs, breaks) with the static slots and with the per-net loop."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from engine.hypernet.attention import PerSampleHypernets, install_hypernet_processors
    from engine.hypernet.slot_pool import HypernetSlotPool
    from engine.worker.unet_runner import attention_dims

    class Counter(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.count += 1
            return func(*args, **(kwargs or {}))

    install_hypernet_processors(unet)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(rows, 4, latent, latent, generator=gen).to(device, dtype)
    t = torch.full((rows,), 500.0, device=device)
    text = torch.randn(rows, 77, int(unet.config.cross_attention_dim), generator=gen).to(device, dtype)
    nets = [n.to(device, dtype) for n in net_list]
    pool = HypernetSlotPool(device, dtype, dims=attention_dims(unet), text_dim=int(unet.config.cross_attention_dim))
    one = [[(nets[0], 0.8)]] * rows
    many = [[(nets[i % len(nets)], 0.8)] for i in range(rows)]

    def forms(chains: list[Any]) -> dict[str, Any]:
        static = pool.acquire(rows, chains)
        assert static is not None
        static.prepare_text(text)
        return {"per_net": PerSampleHypernets(chains, compute_dtype=dtype, batched=False),
                "stacked": PerSampleHypernets(chains, compute_dtype=dtype), "static": static}

    def call(hypernets: Any) -> Any:
        return unet(x, t, encoder_hidden_states=text, cross_attention_kwargs={"hypernets": hypernets}).sample

    out: dict[str, Any] = {"rows": rows}
    with torch.no_grad():
        for label, chains in (("none", [[]] * rows), ("1_distinct", one), (f"{len(nets)}_distinct", many)):
            for form, hypernets in forms(chains).items():
                call(hypernets)  # builds lazily-made tensors outside the count
                with Counter() as counter:
                    call(hypernets)
                out[f"ops_{form}_{label}"] = counter.count
        if explain:
            for form in ("static", "per_net"):
                hypernets = forms(many)[form]
                if form == "per_net":
                    hypernets.prepare(device, dtype)
                found = torch._dynamo.explain(call)(hypernets)
                out[f"dynamo_{form}_{len(nets)}_distinct"] = {"graphs": found.graph_count,
                                                             "breaks": found.graph_break_count}
                torch._dynamo.reset()
    return out


def worker_path(parts: Any, net_list: list[Any], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The real EngineClient + worker process, eager (a compiled worker's warm-up would not fit the budget), 8 images
    per batch, pipelined (the default) and not, in the same run."""
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
        out = asyncio.run(run(8, ns, store, refs))
        out["unpipelined"] = asyncio.run(run(8, ns, store, refs, pipeline=False))  # the same, each batch sent when idle
        out["pipeline_speedup"] = round(out["images_per_s"] / out["unpipelined"]["images_per_s"], 3)
        return out


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
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: ops,baseline,eager,compiled,worker")
    parser.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    parser.add_argument("--explain", action="store_true", help="torch._dynamo.explain in the ops section (on with "
                        "--smoke; on SD1.5 each trace takes tens of seconds, and the compiled section proves fullgraph)")
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
    from diffusers.models.attention_processor import AttnProcessor2_0

    from engine.protocol import HypernetRef
    from engine.worker.renderer import Renderer
    from engine.worker.unet_runner import attention_dims

    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.float16
    skip = set(filter(None, args.skip.split(",")))
    if args.only:
        skip |= set(SECTIONS) - set(args.only.split(","))
    report = Report(args.out, started, args.deadline_s)
    report.data.update({
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (smoke)",
        "torch": torch.__version__, "model": f"SD1.5 architecture, random weights, {str(dtype).removeprefix('torch.')}"
        + (" (smoke size)" if args.smoke else ""), "size": args.size, "steps": args.steps, "sampler": "Euler a",
        "cfg_scale": 7.0, "users": args.users})
    progress("building the model")
    parts = build_parts(args.smoke, device, dtype)
    net_list = make_hypernets(args.users, sorted(attention_dims(parts.unet)))
    report.data["hypernets"] = {"count": len(net_list), "shape": "[1, 2, 1] relu",
                                "sizes": sorted(attention_dims(parts.unet))}
    report.save()
    latent = args.size // 8
    if "ops" not in skip:
        report.run("ops_per_unet_pass", 20, lambda: ops_and_graphs(
            parts.unet, net_list, 2 * args.users, latent, device, dtype, explain=args.explain or args.smoke))
        parts.unet.set_attn_processor(AttnProcessor2_0())  # the diffusers baseline runs the stock processor
    if "baseline" not in skip:
        report.run("diffusers_one_by_one", 60, lambda: diffusers_baseline(parts, args, device, args.baseline_images))

    renderer = Renderer(parts, checkpoint="sd15-random", device=device, dtype=dtype, hypernet_dtype=dtype)
    digests = [hashlib.sha256(n.name.encode()).hexdigest() for n in net_list]
    nets = {d: n.to(device, dtype) for d, n in zip(digests, net_list, strict=True)}
    refs = [HypernetRef(name=n.name, sha256=d, multiplier=0.8) for n, d in zip(net_list, digests, strict=True)]
    clock = PhaseClock(device)
    unet, eager_runner = renderer.unet, renderer.unet_runner
    instrument(renderer, clock)
    if "eager" not in skip:
        report.run("engine_eager", 90, lambda: measure_engine(renderer, clock, refs, nets, args, report, "engine_eager"))
    if "compiled" not in skip:
        report.run("engine_compiled", 200, lambda: compiled_section(renderer, unet, clock, refs, nets, args, report))
        renderer.unet_runner = TimedUNet(eager_runner, clock)
    for name in ("engine_eager", "engine_compiled"):
        got, ref = report.data["sections"].get(name, {}), report.data["sections"].get("diffusers_one_by_one", {})
        if f"users{args.users}_hypernets" in got and "images_per_s" in ref:
            got["speedup_vs_diffusers"] = round(got[f"users{args.users}_hypernets"]["images_per_s"] / ref["images_per_s"], 3)
    if "worker" not in skip:
        report.run("worker_eager", 140, lambda: worker_section(parts, net_list, args, device, report))
    report.data["summary"] = summary(report.data["sections"], args.users)
    report.save()
    print(json.dumps(report.data))
    return 0


SECTIONS = ("ops", "baseline", "eager", "compiled", "worker")


def compiled_section(renderer: Any, unet: Any, clock: PhaseClock, refs: list[Any], nets: dict[str, Any],
                     args: argparse.Namespace, report: Report) -> dict[str, Any]:
    """Warm up the 8-user and the 1-image buckets (with and without the hypernets' layout), then measure."""
    from engine.worker.compile import CompileSettings
    from engine.worker.unet_runner import UNetRunner

    cuda = renderer.device.type == "cuda"
    settings = CompileSettings(enabled=True, cudagraph_rows=args.cudagraph_rows if cuda else 0,
                               backend="inductor" if cuda else "eager", compile_on_first_use=True,
                               cache_dir=args.cache_dir or tempfile.mkdtemp(prefix="hc-compile-"))
    runner = UNetRunner(unet, device=renderer.device, hypernet_dtype=renderer.hypernet_dtype, settings=settings)
    section = report.section("engine_compiled")
    section["settings"] = {"backend": settings.backend, "cudagraph_rows": settings.cudagraph_rows,
                           "buckets": list(settings.buckets)}
    latent = args.size // renderer.vae_scale_factor
    with torch.no_grad():
        for rows in (2 * args.users, 2):
            bucket = runner.buckets.bucket_for(rows) or settings.buckets[-1]
            section.setdefault("warm_up", []).extend(
                runner.warm_up([(latent, latent)], dtype=renderer.dtype, buckets=(bucket,)))
            report.save()
    renderer.unet_runner = TimedUNet(runner, clock)
    measure_engine(renderer, clock, refs, nets, args, report, "engine_compiled")
    return {"runner": {k: v for k, v in vars(runner.stats).items() if k != "compiles"},
            "compiles": runner.stats.compiles}


def worker_section(parts: Any, net_list: list[Any], args: argparse.Namespace, device: torch.device,
                   report: Report) -> dict[str, Any]:
    out = worker_path(parts, net_list, args, device)
    eager = report.data["sections"].get("engine_eager", {}).get(f"users{args.users}_hypernets")
    if eager:  # the worker's idle time between batches, against the same batches rendered back to back
        batches = -(-args.users * args.worker_jobs // 8)
        out["estimated_gap_per_batch_s"] = round((out["wall_s"] - batches * eager["wall_s"] / args.batches) / batches, 3)
    return out


if __name__ == "__main__":
    sys.exit(main())
