"""The LoRAs in the model registry (:mod:`bot.store.models`): rows of kind ``lora`` (LoRA, LoCon, LyCORIS).

Why these details: the listing and ``/loras info`` show the format (``LoRA``, ``LoCon``, ``LyCORIS (LoHa)``), the
model family and how many UNet and text-encoder layers it changes (a text-encoder LoRA changes the prompt's
conditioning); the prompt may name it by its alias (kohya's ``ss_output_name``, as A1111 allows); and the infotext's
``Lora hashes`` field needs A1111's short hash (:func:`engine.intake.lora_short_hash`), which depends on the file
as uploaded and so must be kept.  ``default_multiplier`` is the strength a ``<lora:NAME>`` tag without one gets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from bot.db import Database
from bot.store.base import Clock
from bot.store.models import ModelRepository, NewModel, Registered

__all__ = ["Lora", "LoraStore", "NewLora", "prompt_names"]


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True, kw_only=True)
class NewLora(NewModel):
    """``lora_format``: ``LoRA`` / ``LoCon`` / ``LyCORIS (LoHa)``...; ``family``: ``sd1`` / ``sd2`` or None when the
    shapes do not tell; ``context_width`` / ``text_width``: the widths its layers were made for; ``short_hash``: the
    12 hex digits A1111 writes in ``Lora hashes``."""

    KIND: ClassVar[str] = "lora"

    lora_format: str
    family: str | None
    context_width: int | None
    text_width: int | None
    unet_modules: int
    te_modules: int
    alias: str | None
    short_hash: str

    @property
    def touches_text_encoder(self) -> bool:
        return self.te_modules > 0

    def details(self) -> dict[str, Any]:
        return {"format": self.lora_format, "family": self.family, "context_width": self.context_width,
                "text_width": self.text_width, "unet_modules": int(self.unet_modules),
                "te_modules": int(self.te_modules), "alias": self.alias, "short_hash": self.short_hash}

    @classmethod
    def fields_from_details(cls, details: Mapping[str, Any]) -> dict[str, Any]:
        return {"lora_format": str(details["format"]), "family": details["family"],
                "context_width": _optional_int(details["context_width"]),
                "text_width": _optional_int(details["text_width"]), "unet_modules": int(details["unet_modules"]),
                "te_modules": int(details["te_modules"]), "alias": details["alias"],
                "short_hash": str(details["short_hash"])}


@dataclass(frozen=True, kw_only=True)
class Lora(NewLora, Registered):
    """A registered LoRA: the :class:`NewLora` fields plus its id and when it was added and changed."""


class LoraStore(ModelRepository[NewLora, Lora]):
    """The registry of installed LoRAs, global (bot owners) or per guild (that guild's admins)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        super().__init__(db, clock, new_type=NewLora, row_type=Lora, what="LoRA")


def prompt_names(usable: Iterable[Lora]) -> dict[str, Lora]:
    """What a ``<lora:NAME>`` tag may name (exact case, A1111's rule): every registry name, then each alias (kohya's
    ``ss_output_name``) that is not a name itself; of two LoRAs with one alias, the first given wins (pass
    :meth:`LoraStore.usable`'s values, which are in name order)."""
    rows = list(usable)
    found = {row.name: row for row in rows}
    for row in rows:
        if row.alias:
            found.setdefault(row.alias, row)
    return found
