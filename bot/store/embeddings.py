"""The textual-inversion embeddings in the model registry (:mod:`bot.store.models`): rows of kind ``embedding``.

Why these details: an embedding is a word in the prompt standing for ``vectors`` token vectors of ``width`` (768 for
SD 1.x, 1024 for SD 2.x; a checkpoint of another width skips it, as A1111 does), and the infotext's ``TI hashes``
field names it with A1111's short hash (the first 12 hex digits of the file's sha256).  An embedding has no
strength: ``default_multiplier`` stays 1 and is not offered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from bot.db import Database
from bot.store.base import Clock
from bot.store.models import ModelRepository, NewModel, Registered

__all__ = ["Embedding", "EmbeddingStore", "NewEmbedding"]


@dataclass(frozen=True, kw_only=True)
class NewEmbedding(NewModel):
    KIND: ClassVar[str] = "embedding"

    vectors: int
    width: int
    short_hash: str

    def details(self) -> dict[str, Any]:
        return {"vectors": int(self.vectors), "width": int(self.width), "short_hash": self.short_hash}

    @classmethod
    def fields_from_details(cls, details: Mapping[str, Any]) -> dict[str, Any]:
        return {"vectors": int(details["vectors"]), "width": int(details["width"]),
                "short_hash": str(details["short_hash"])}


@dataclass(frozen=True, kw_only=True)
class Embedding(NewEmbedding, Registered):
    """A registered embedding: the :class:`NewEmbedding` fields plus its id and when it was added and changed."""


class EmbeddingStore(ModelRepository[NewEmbedding, Embedding]):
    """The registry of installed embeddings, global (bot owners) or per guild (that guild's admins)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        super().__init__(db, clock, new_type=NewEmbedding, row_type=Embedding, what="Embedding")
