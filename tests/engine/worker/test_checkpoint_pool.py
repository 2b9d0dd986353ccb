"""The worker's checkpoint names and its out-of-memory rule, with a stand-in loader (no models are built)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from engine.checkpoints import CheckpointRefused
from engine.protocol import CheckpointSpec, WorkerConfig
from engine.worker.checkpoint_pool import CheckpointPool, CheckpointUnavailable, hash_cache


@dataclass
class FakeRenderer:
    """What the pool touches on a renderer: its size, where it lives, and the modules LoRAs are mapped onto."""

    source: str
    nbytes: int = 10
    moves: list[bool] = field(default_factory=list)
    unet: torch.nn.Module = field(default_factory=torch.nn.Module)
    text_encoder: torch.nn.Module = field(default_factory=torch.nn.Module)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def move(self, on_device: bool) -> None:
        self.moves.append(on_device)


SPECS = (CheckpointSpec("base", "/m/base.safetensors"), CheckpointSpec("anime", "/m/anime.safetensors"),
         CheckpointSpec("huge", "/m/huge.safetensors"))


def pool(*, fits: int = 10**9, specs=SPECS, checkpoint: str = "base") -> tuple[CheckpointPool, list[str]]:
    loaded: list[str] = []
    made: list[CheckpointPool] = []

    def load(spec: CheckpointSpec, config: WorkerConfig):
        size = 100 if spec.name == "huge" else 10
        if sum(c.nbytes for c in made[0].resident() if c.on_device) + size > fits:  # the "GPU" holds ``fits`` bytes
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        loaded.append(spec.name)
        return FakeRenderer(spec.source, size)

    config = WorkerConfig(checkpoint=checkpoint, checkpoints=specs, checkpoint_device_bytes=1000)
    made.append(CheckpointPool(config, load=load))  # type: ignore[arg-type]
    return made[0], loaded


def test_names_resolve_by_name_empty_default_and_old_source_and_unknown_ones_are_refused():
    p, _ = pool()
    assert (p.resolve("anime"), p.resolve(""), p.resolve("/m/anime.safetensors")) == ("anime", "base", "anime")
    with pytest.raises(CheckpointUnavailable) as info:
        p.resolve("sdxl-turbo")
    assert info.value.message == ("The checkpoint `sdxl-turbo` is not installed on this engine worker; choose another "
                                  "model (see /models list).")


def test_without_configured_checkpoints_every_name_is_the_one_checkpoint():
    p = CheckpointPool(WorkerConfig(checkpoint="tiny"))
    assert p.resolve("anything") == p.resolve("") == p.default == "tiny"


def test_out_of_memory_empties_the_device_and_retries_then_fails_only_that_model():
    p, loaded = pool(fits=25)
    p.get("base")
    p.get("anime")
    assert p.get("base").renderer.moves == []  # still resident, nothing moved
    with pytest.raises(CheckpointUnavailable) as info:
        p.get("huge")
    assert info.value.message == ("The checkpoint `huge` does not fit in the GPU's memory on this engine worker; "
                                  "choose another model.")
    assert [r.name for r in p.resident()] == [] and loaded == ["base", "anime"]
    p2, loaded2 = pool(fits=25, specs=(*SPECS[:2], CheckpointSpec("third", "/m/third.safetensors")))
    p2.get("base")
    p2.get("anime")
    p2.get("third")  # 30 > 25: the device is emptied, then it loads
    assert [(r.name, r.on_device) for r in p2.resident()] == [("third", True)] and loaded2 == ["base", "anime", "third"]


def test_a_load_refusal_or_a_missing_file_names_the_checkpoint_and_the_reason():
    def load(spec: CheckpointSpec, config: WorkerConfig):
        if spec.name == "anime":
            raise FileNotFoundError(2, "No such file", spec.source)
        raise CheckpointRefused("`huge.safetensors` is an SDXL base checkpoint; Hypercord runs SD 1.x and SD 2.x "
                                "checkpoints only.")

    p = CheckpointPool(WorkerConfig(checkpoint="base", checkpoints=SPECS), load=load)  # type: ignore[arg-type]
    messages = []
    for name in ("anime", "huge"):
        with pytest.raises(CheckpointUnavailable) as info:
            p.get(name)
        messages.append(info.value.message)
    assert messages == [
        "The checkpoint `anime` could not be loaded: its file is missing (anime.safetensors).",
        "The checkpoint `huge` could not be loaded: `huge.safetensors` is an SDXL base checkpoint; Hypercord runs "
        "SD 1.x and SD 2.x checkpoints only."]
    assert p.resident() == () and p.loads == 0


def test_the_hash_cache_is_used_only_where_the_worker_can_write_it(tmp_path):
    assert hash_cache(WorkerConfig()) is None
    assert hash_cache(WorkerConfig(checkpoint_hash_cache=str(tmp_path / "absent" / "hashes.json"))) is None
    found = hash_cache(WorkerConfig(checkpoint_hash_cache=str(tmp_path / "hashes.json")))
    assert found is not None and found.path == tmp_path / "hashes.json"


def test_each_resident_checkpoint_has_its_own_lora_cache():
    """LoRAs are mapped onto one model's modules: a cache shared by two checkpoints would apply one model's
    mapping to the other (the render test cannot see it: tiny and tiny-b have the same layout)."""
    p, _ = pool()
    base, anime = p.get("base"), p.get("anime")
    assert base.loras is not anime.loras and p.get("base").loras is base.loras  # kept while resident
