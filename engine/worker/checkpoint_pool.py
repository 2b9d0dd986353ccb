"""The checkpoints one worker renders with: names resolved to the owner's specs, loaded on demand, kept resident.

Why its own module: a batch names its checkpoint (``RenderSettings.checkpoint``; "" = the default), and the worker
must turn that name into a loaded model without thrashing — loading takes seconds, moving a model between the
device and CPU memory a fraction of that.  :class:`engine.worker.resident.ResidentModels` does the LRU bookkeeping
within ``WorkerConfig.checkpoint_device_bytes`` / ``checkpoint_host_bytes``; this module adds what is specific to
checkpoints: which names exist, and the caches that depend on the model.  A LoRA is bound to the UNet and text
encoder it was mapped onto (:func:`engine.lora.table_for_models`), so each loaded checkpoint owns its LoRA cache,
dropped with it and emptied when it leaves the device; hypernets and embeddings depend only on the device and
dtype, which every checkpoint of a worker shares.

With no ``WorkerConfig.checkpoints`` (the single checkpoint of earlier versions) every name is that checkpoint, as
before; jobs stored then carry its source as their checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.checkpoints import HashCache
from engine.errors import EngineError
from engine.lora import LoraNetwork, load_lora_safetensors, table_for_models
from engine.protocol import CheckpointSpec, ResidentCheckpoint, WorkerConfig
from engine.worker.hypernet_cache import HypernetCache
from engine.worker.renderer import Renderer
from engine.worker.resident import ResidentModels

__all__ = ["CheckpointPool", "CheckpointUnavailable", "LoadedModel", "hash_cache", "specs_of"]


class CheckpointUnavailable(EngineError):
    """A batch's checkpoint is not one this worker may load, or loading it failed (the message says which)."""


@dataclass(eq=False, slots=True)
class LoadedModel:
    """One resident checkpoint: its renderer and the LoRAs mapped onto its modules."""

    name: str
    renderer: Renderer
    loras: HypernetCache[LoraNetwork]

    @property
    def nbytes(self) -> int:
        return self.renderer.nbytes

    def move(self, on_device: bool) -> None:
        if not on_device:
            self.loras.clear()  # their tensors live on the device; they are reloaded when the model returns
        self.renderer.move(on_device)


def specs_of(config: WorkerConfig) -> tuple[CheckpointSpec, ...]:
    """The checkpoints a worker may load: the configured ones, or the one ``checkpoint`` under its own name."""
    return config.checkpoints or (CheckpointSpec(name=config.checkpoint, source=config.checkpoint),)


def hash_cache(config: WorkerConfig) -> HashCache | None:
    """The bot's hash cache when this worker can write beside it (a standalone worker elsewhere may not: it hashes)."""
    path = Path(config.checkpoint_hash_cache) if config.checkpoint_hash_cache else None
    if path is None or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        return None
    return HashCache(path)


def load_renderer(spec: CheckpointSpec, config: WorkerConfig) -> Renderer:
    cache = hash_cache(config)
    return Renderer.load(spec.source, config.device, config.dtype, config.hypernet_dtype, vae=spec.vae,
                         prediction=spec.prediction, hash_cache=cache, compile=config.compile,
                         compile_cache_dir=config.compile_cache_dir or None)


class CheckpointPool:
    """``get(name)``: the loaded model a batch asks for, on the device; ``resident()``: what is held now."""

    def __init__(self, config: WorkerConfig, *,
                 load: Callable[[CheckpointSpec, WorkerConfig], Renderer] = load_renderer) -> None:
        self._config = config
        self._load = load
        self._specs = {s.name: s for s in specs_of(config)}
        self._single = not config.checkpoints
        self.default = self._default_name()
        self._models: ResidentModels[LoadedModel] = ResidentModels(
            self._build, LoadedModel.move, device_bytes=config.checkpoint_device_bytes,
            host_bytes=config.checkpoint_host_bytes)

    def _default_name(self) -> str:
        wanted = self._config.checkpoint
        if wanted in self._specs:
            return wanted
        by_source = [s.name for s in self._specs.values() if s.source == wanted]
        return by_source[0] if by_source else next(iter(self._specs))

    def resolve(self, name: str) -> str:
        """The spec name a job's checkpoint setting means ("" and, with one checkpoint, any name: the default)."""
        if self._single or not name:
            return self.default
        if name in self._specs:
            return name
        for spec in self._specs.values():
            if spec.source == name:  # a job stored before checkpoints had names carries the source
                return spec.name
        raise CheckpointUnavailable(f"The checkpoint `{name[:80]}` is not installed on this engine worker; "
                                    "choose another model (see /models list).")

    def get(self, name: str) -> LoadedModel:
        """The model for a resolved name, loaded or moved to the device (least recently used ones make room).

        When the device runs out of memory for it, every other model leaves the device and it is tried once more;
        a model that does not fit alone fails the batch's jobs (``CheckpointUnavailable``)."""
        try:
            return self._models.get(name)
        except torch.cuda.OutOfMemoryError:
            self._models.evict_all()
            _empty_cache()
        try:
            return self._models.get(name)
        except torch.cuda.OutOfMemoryError as exc:
            _empty_cache()
            raise CheckpointUnavailable(f"The checkpoint `{name}` does not fit in the GPU's memory on this engine "
                                        "worker; choose another model.") from exc

    def _build(self, name: str) -> LoadedModel:
        spec = self._specs[name]
        try:
            renderer = self._load(spec, self._config)
        except FileNotFoundError as exc:
            raise CheckpointUnavailable(f"The checkpoint `{name}` could not be loaded: its file is missing "
                                        f"({Path(exc.filename or spec.source).name}).") from exc
        except (EngineError, OSError, ValueError) as exc:
            detail = (str(exc).splitlines() or [type(exc).__name__])[0][:400]
            raise CheckpointUnavailable(f"The checkpoint `{name}` could not be loaded: {detail}") from exc
        table = table_for_models(renderer.unet, renderer.text_encoder)

        def load_lora(path: Path) -> LoraNetwork:
            return load_lora_safetensors(path, key=path.stem, table=table).to(renderer.device)

        loras: HypernetCache[LoraNetwork] = HypernetCache(self._config.model_store_dir,
                                                          self._config.hypernet_cache_bytes, load_lora, kind="LoRA")
        return LoadedModel(name, renderer, loras)

    def resident(self) -> tuple[ResidentCheckpoint, ...]:
        """Loaded checkpoints, parked ones first, then those on the device, least recently used first."""
        models = self._models
        held = [(n, False) for n in models.on_host] + [(n, True) for n in models.on_device]
        return tuple(ResidentCheckpoint(n, on, models.nbytes_of(n)) for n, on in held)

    @property
    def loads(self) -> int:
        return self._models.loads


def _empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
