"""Engine throughput on the CPU with the tiny model: cross-user batching against one job at a time.

K users each queue M jobs, every job with a different hypernet (cycled from the fixture files), all at
once; the same workload runs through a real EngineClient + worker with ``max_batch`` 4 and with 1, and with 4
but without pipelining (each batch sent only once the worker is idle), in the same run.  Prints one JSON line:
images/s for each, the ratios, per-job latency p50/p95 (submit to result) and the command that produced it.

    OMP_NUM_THREADS=1 .venv/bin/python bench/engine_throughput.py --users 4 --jobs 3
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.client import EngineClient, LocalWorkers  # noqa: E402
from engine.prompt import format_tag  # noqa: E402
from engine.protocol import GenerateRequest, HypernetRef, RenderSettings, WorkerConfig  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "hypernetworks"


def build_store(store: Path, fixtures: Path, limit: int) -> list[HypernetRef]:
    """Canonical copies of up to ``limit`` SD1-sized fixture hypernets, named by sha256."""
    from engine.hypernet import load, save_canonical

    refs = []
    for path in sorted(fixtures.glob("*.pt")):
        try:
            net = load(path)
        except ValueError:
            continue  # the fixture set holds files A1111 refuses, and SD2-sized ones
        if any(size not in (320, 640, 768, 1280) for size in net.sizes):
            continue
        tmp = store / "tmp.safetensors"
        save_canonical(net, tmp)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        tmp.rename(store / f"{digest}.safetensors")
        refs.append(HypernetRef(name=path.stem, sha256=digest, multiplier=0.8))
        if len(refs) >= limit:
            break
    return refs


async def run(max_batch: int, args: argparse.Namespace, store: Path, refs: list[HypernetRef], *,
              pipeline: bool = True) -> dict[str, float]:
    config = WorkerConfig(checkpoint=args.checkpoint, device=args.device, max_batch=max_batch, model_store_dir=str(store),
                          progress_interval_s=1.0, hypernet_cache_bytes=1 << 30,
                          compile="off")  # eager: a compiled worker's warm-up alone would take minutes
    transport = LocalWorkers(extra_env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    client = EngineClient(config, transport=transport, max_queue=10_000, max_per_user=10_000, heartbeat_timeout_s=120.0,
                          pipeline=pipeline)
    await client.start()
    ids = itertools.count(1)
    nets = itertools.cycle(refs or [None])

    def request(user: int) -> GenerateRequest:
        net = next(nets)
        tags = f" {format_tag(net.name, net.multiplier)}" if net else ""
        settings = RenderSettings(prompt=f"water elemental woman{tags}", hypernets=(net,) if net else (),
                                  seed=next(ids), steps=args.steps, width=args.size, height=args.size, count=1)
        return GenerateRequest(job_id=next(ids), user_id=user, settings=settings)

    try:
        await asyncio.gather(*(client.submit(request(u)).result() for u in range(min(4, args.users))))  # warm-up
        latencies: list[float] = []

        async def timed(handle, t0: float) -> None:
            await handle.result()
            latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        handles = [client.submit(request(u)) for _ in range(args.jobs) for u in range(args.users)]
        await asyncio.gather(*(timed(h, t0) for h in handles))
        wall = time.perf_counter() - t0
        status = client.status()
    finally:
        await client.stop()
    lat = sorted(latencies)
    return {
        "max_batch": max_batch,
        "pipeline": pipeline,
        "images": len(lat),
        "wall_s": round(wall, 3),
        "images_per_s": round(len(lat) / wall, 3),
        "latency_p50_s": round(statistics.median(lat), 3),
        "latency_p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3),
        "avg_step_ms": round(status.avg_step_s * 1000, 2),
    }


def engine_parser(description: str, *, jobs: int, steps: int, size: int) -> argparse.ArgumentParser:
    """The options both engine benchmarks take; the defaults differ (the tiny model on CPU, SD1.5 on a GPU)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=jobs, help="jobs per user")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    return parser


def main() -> None:
    parser = engine_parser(__doc__.splitlines()[0], jobs=3, steps=4, size=64)
    parser.add_argument("--checkpoint", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-hypernets", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        refs = [] if args.no_hypernets else build_store(store, args.fixtures, args.users * args.jobs)
        batched = asyncio.run(run(4, args, store, refs))
        single = asyncio.run(run(1, args, store, refs))
        unpipelined = asyncio.run(run(4, args, store, refs, pipeline=False))
    print(json.dumps({
        "bench": "engine_throughput",
        "device": args.device,
        "checkpoint": args.checkpoint,
        "size": args.size,
        "steps": args.steps,
        "users": args.users,
        "jobs_per_user": args.jobs,
        "distinct_hypernets": len(refs),
        "batched": batched,
        "one_by_one": single,
        "batched_unpipelined": unpipelined,
        "speedup": round(batched["images_per_s"] / single["images_per_s"], 3),
        "pipeline_speedup": round(batched["images_per_s"] / unpipelined["images_per_s"], 3),
        "command": " ".join(shlex.quote(a) for a in ["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", ""),
                                                     "python", *sys.argv]),
    }))


if __name__ == "__main__":
    main()
