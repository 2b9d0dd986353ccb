"""Several checkpoints on one real worker: per-batch checkpoints, residency within a budget, per-job failures.

The worker holds the built-in ``tiny`` and ``tiny-b`` (same architecture, different weights) and one A1111-layout
single file written by the test; its device budget is the two largest models, so a third evicts the least recently
used one (no CPU tier: it is dropped and loaded again when needed).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from engine.client import EngineClient, LocalWorkers
from engine.protocol import CheckpointSpec, Failure, FailureKind, GenerateRequest, Result, Started, WorkerConfig
from engine.render_settings import LoraRef
from tests.engine.checkpoints.files import write_sd1
from tests.loras import write_tiny_lora
from tests.requests import request

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

_ids = itertools.count(5000)


def req(checkpoint: str, *, user: int = 1, seed: int = 11, lora: LoraRef | None = None) -> GenerateRequest:
    prompt = "a lighthouse at dusk" + (f" <lora:{lora.name}:1>" if lora else "")
    return request(next(_ids), user, prompt, seed=seed, steps=3, width=64, height=64, sampler="Euler a",
                   checkpoint=checkpoint, loras=(lora,) if lora else ())


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def model_bytes(source: str) -> int:
    """What a loaded checkpoint weighs (the worker's budget unit), measured by loading it here too."""
    import torch

    from engine.worker.checkpoints import load_checkpoint

    parts = load_checkpoint(source, torch.float32)
    return sum(t.numel() * t.element_size() for m in (parts.unet, parts.vae, parts.text_encoder)
               for t in (*m.parameters(), *m.buffers()))


@pytest.fixture(scope="module")
def single_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "lighthouse-v1.safetensors"
    write_sd1(path, seed=3)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def lora(store: Path) -> LoraRef:
    """A LoRA for the tiny models' layout in the store, named by its sha256 as the real store names files."""
    staged = write_tiny_lora(store / "staged.safetensors", seed=5, strength=1.0)
    digest = hashlib.sha256(staged.read_bytes()).hexdigest()
    staged.rename(store / f"{digest}.safetensors")
    return LoraRef("glow", digest)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(single_file, store):
    sources = {"tiny": "tiny", "tiny-b": "tiny-b", "single": str(single_file)}
    sizes = sorted((model_bytes(s) for s in sources.values()), reverse=True)
    config = WorkerConfig(checkpoint="tiny", device="cpu", dtype="float32", max_batch=4,
                          model_store_dir=str(store), progress_interval_s=0.0,
                          checkpoints=tuple(CheckpointSpec(n, s) for n, s in sources.items()),
                          checkpoint_device_bytes=sizes[0] + sizes[1])
    c = EngineClient(config, transport=LocalWorkers(extra_env={"OMP_NUM_THREADS": "1"}), max_queue=20,
                     max_per_user=20, heartbeat_interval_s=0.3, heartbeat_timeout_s=10.0, start_timeout_s=90.0)
    await c.start()
    try:
        yield c
    finally:
        await c.stop(grace_s=5)


async def collect(handle) -> list:
    return [ev async for ev in handle.events()]


async def settled(client: EngineClient):
    """The status once the worker's last BatchDone has been read (it follows the last Result)."""
    for _ in range(400):
        status = client.status()
        if status.workers[0].state == "ready":
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"worker still busy: {client.status()}")


async def render_alone(client: EngineClient, checkpoint: str, lora: LoraRef | None = None) -> np.ndarray:
    result = await client.submit(req(checkpoint, lora=lora)).result()
    await settled(client)
    return pixels(result.images[0])


async def test_budget_for_two_evicts_the_least_recently_used_and_reloads_it(client):
    status = await settled(client)
    assert [c.name for c in status.checkpoints] == ["tiny"] and status.checkpoint_loads == 1
    for name, on_device, loads in [("tiny-b", ["tiny", "tiny-b"], 2), ("single", ["tiny-b", "single"], 3),
                                   ("tiny", ["single", "tiny"], 4), ("single", ["tiny", "single"], 4)]:
        await render_alone(client, name)
        status = await settled(client)
        assert [c.name for c in status.checkpoints if c.on_device] == on_device, name
        assert status.checkpoint_loads == loads, name
    assert all(c.nbytes > 0 for c in status.checkpoints)


async def test_a_burst_over_three_checkpoints_matches_each_rendered_alone(client):
    names = ["tiny", "tiny-b", "single"]
    alone = {name: await render_alone(client, name) for name in names}
    assert min(np.abs(alone[a] - alone[b]).max() for a, b in itertools.combinations(names, 2)) > 3
    burst = [req(names[i % 3], user=100 + i) for i in range(7)]
    handles = [client.submit(r) for r in burst]
    events = await asyncio.gather(*(collect(h) for h in handles))
    checkpoints_of_batch: dict[int, set[str]] = {}
    for r, evs in zip(burst, events, strict=True):
        started = next(e for e in evs if isinstance(e, Started))
        checkpoints_of_batch.setdefault(started.batch_id, set()).add(r.settings.checkpoint)
        result = evs[-1]
        assert isinstance(result, Result), result
        assert np.abs(pixels(result.images[0]) - alone[r.settings.checkpoint]).max() <= 1
    assert all(len(found) == 1 for found in checkpoints_of_batch.values()), checkpoints_of_batch
    assert len(checkpoints_of_batch) < len(burst), "jobs on one checkpoint should have shared batches"


async def test_empty_checkpoint_means_the_default_and_an_unknown_one_fails_alone(client):
    default = await render_alone(client, "")
    assert np.abs(default - await render_alone(client, "tiny")).max() <= 1
    unknown, fine = client.submit(req("nowhere-v2", user=7)), client.submit(req("tiny-b", user=8))
    failure = (await collect(unknown))[-1]
    assert isinstance(failure, Failure) and failure.kind == FailureKind.BAD_REQUEST
    assert failure.message == ("The checkpoint `nowhere-v2` is not installed on this engine worker; choose another "
                               "model (see /models list).")
    assert isinstance(await fine.result(), Result)


async def test_a_lora_on_two_checkpoints_renders_as_it_does_alone(client, lora):
    """Each resident checkpoint has its own LoRA cache; a LoRA works on each, in a burst as alone."""
    with_lora = {name: await render_alone(client, name, lora) for name in ("tiny", "tiny-b")}
    plain = await render_alone(client, "tiny-b")
    assert np.abs(with_lora["tiny-b"] - plain).max() > 3, "the LoRA must change tiny-b's image"
    burst = [req("tiny", user=30, lora=lora), req("tiny-b", user=31, lora=lora)]
    results = await asyncio.gather(*(client.submit(r).result() for r in burst))
    for r, result in zip(burst, results, strict=True):
        assert np.abs(pixels(result.images[0]) - with_lora[r.settings.checkpoint]).max() <= 1
