"""The checkpoints a worker keeps loaded: several on the device within a memory budget, more parked in CPU memory.

Why two tiers: loading an SD checkpoint from disk takes seconds (hashing, reading, building modules), moving one
between the GPU and CPU memory a fraction of that, and a GPU holds many: about 30 SD 1.5 fp16 models fit an H200.
So the most recently used models stay on the device up to ``device_bytes``; the least recently used move to CPU
memory (up to ``host_bytes``) and are dropped after that.  The model a batch needs is never evicted for itself,
so one model larger than the budget still runs (the budget is exceeded while it is the only one).

The loader and the mover are injected (the worker passes :meth:`Renderer.load` and :meth:`Renderer.to`), so this
module is plain bookkeeping and is tested without torch models.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = ["Resident", "ResidentModels"]


class Resident(Protocol):
    @property
    def nbytes(self) -> int: ...


M = TypeVar("M", bound=Resident)


@dataclass(frozen=True, slots=True)
class _Counts:
    loads: int
    to_device: int
    to_host: int
    dropped: int


class ResidentModels(Generic[M]):
    """LRU of loaded models by name: ``get(name)`` returns it on the device, loading or moving it as needed.

    ``load(name)`` builds a model on the device; ``move(model, on_device)`` moves one between the device and host
    memory (a no-op on a CPU-only worker, where ``device_bytes`` is the one budget that matters).
    """

    def __init__(self, load: Callable[[str], M], move: Callable[[M, bool], None], *, device_bytes: int,
                 host_bytes: int = 0) -> None:
        self._load = load
        self._move = move
        self.device_bytes = device_bytes
        self.host_bytes = host_bytes
        self._device: OrderedDict[str, M] = OrderedDict()
        self._host: OrderedDict[str, M] = OrderedDict()
        self.loads = self.to_device = self.to_host = self.dropped = 0

    def get(self, name: str) -> M:
        """The model ``name`` on the device, most recently used from now on."""
        model = self._device.get(name)
        if model is None:
            model = self._host.pop(name, None)
            if model is not None:
                self._move(model, True)
                self.to_device += 1
            else:
                model = self._load(name)
                self.loads += 1
            self._device[name] = model
        self._device.move_to_end(name)
        self._trim(keep=name)
        return model

    def _trim(self, keep: str) -> None:
        while sum(m.nbytes for m in self._device.values()) > self.device_bytes and len(self._device) > 1:
            self._evict(next(n for n in self._device if n != keep))
        self._trim_host()

    def _evict(self, name: str) -> None:
        """Move ``name`` off the device: to host memory when it fits there, else drop it."""
        model = self._device.pop(name)
        if model.nbytes <= self.host_bytes:
            self._move(model, False)
            self.to_host += 1
            self._host[name] = model
        else:
            self.dropped += 1

    def evict_all(self) -> None:
        """Empty the device tier (the device ran out of memory loading a model: make all the room there is)."""
        for name in list(self._device):
            self._evict(name)
        self._trim_host()

    def _trim_host(self) -> None:
        while sum(m.nbytes for m in self._host.values()) > self.host_bytes:
            self._host.popitem(last=False)
            self.dropped += 1

    def forget(self, name: str) -> None:
        """Drop ``name`` from both tiers (its files changed, or it failed to load)."""
        if self._device.pop(name, None) is not None or self._host.pop(name, None) is not None:
            self.dropped += 1

    @property
    def on_device(self) -> tuple[str, ...]:
        """Names on the device, least recently used first."""
        return tuple(self._device)

    @property
    def on_host(self) -> tuple[str, ...]:
        return tuple(self._host)

    def nbytes_of(self, name: str) -> int:
        """Bytes of a held model (0 when it is not held)."""
        model = self._device.get(name)
        if model is None:
            model = self._host.get(name)
        return model.nbytes if model is not None else 0

    @property
    def device_used(self) -> int:
        return sum(m.nbytes for m in self._device.values())

    def counts(self) -> _Counts:
        return _Counts(self.loads, self.to_device, self.to_host, self.dropped)
