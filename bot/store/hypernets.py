"""The hypernetworks in the model registry (:mod:`bot.store.models`): rows of kind ``hypernet``.

Why a module per kind: each kind says what it records beyond the shared columns — for a hypernetwork, the layer
sizes (the attention widths it applies to), the layer structure and the activation, as intake read them from the
file — and keeps its row classes under the names callers use (``Hypernet``, ``NewHypernet``, ``HypernetStore``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from bot.db import Database
from bot.store.base import Clock
from bot.store.models import ModelRepository, NewModel, Registered

__all__ = ["Hypernet", "HypernetStore", "NewHypernet"]


@dataclass(frozen=True, kw_only=True)
class NewHypernet(NewModel):
    KIND: ClassVar[str] = "hypernet"

    sizes: tuple[int, ...]
    layer_structure: tuple[float, ...]
    activation: str

    def details(self) -> dict[str, Any]:
        return {"sizes": [int(s) for s in self.sizes], "layer_structure": [float(x) for x in self.layer_structure],
                "activation": self.activation}

    @classmethod
    def fields_from_details(cls, details: Mapping[str, Any]) -> dict[str, Any]:
        return {"sizes": tuple(int(s) for s in details["sizes"]),
                "layer_structure": tuple(float(x) for x in details["layer_structure"]),
                "activation": str(details["activation"])}


@dataclass(frozen=True, kw_only=True)
class Hypernet(NewHypernet, Registered):
    """A registered hypernetwork: the :class:`NewHypernet` fields plus its id and when it was added and changed."""


class HypernetStore(ModelRepository[NewHypernet, Hypernet]):
    """The registry of installed hypernetworks, global (bot owners) or per guild (that guild's admins)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        super().__init__(db, clock, new_type=NewHypernet, row_type=Hypernet, what="Hypernetwork")
