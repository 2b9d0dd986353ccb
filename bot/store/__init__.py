"""Typed repositories over the SQLite database: the only place in the project that writes SQL (with bot/db.py and
bot/migrations). Rows come out as frozen dataclasses, so callers can pass them around without touching the database.

``Store.open(path)`` opens the file, applies migrations and exposes ``.jobs`` (every /imagine and button press; the
user's history is this table, :mod:`bot.store.jobs`) and the model registry (:mod:`bot.store.models`), one
repository per kind with the same API: ``.hypernets`` (:mod:`bot.store.hypernets`), ``.loras``
(:mod:`bot.store.loras`), ``.embeddings`` (:mod:`bot.store.embeddings`); ``.models(kind)`` picks one by name;
``.checkpoints``: each server's default checkpoint and the ones it disallowed (:mod:`bot.store.guild_checkpoints`).
Exceptions derive from :class:`StoreError` (:mod:`bot.store.errors`); their ``str()`` is safe to show to a Discord
user.  Import every name from here (``from bot.store import Job``): the submodules are an implementation detail.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bot.db import Database
from bot.migrations import MigrationResult, migrate
from bot.store.base import Clock
from bot.store.embeddings import Embedding, EmbeddingStore, NewEmbedding
from bot.store.errors import DatabaseBusy, DuplicateModel, InvalidName, NameTaken, NotFound, StoreError
from bot.store.guild_checkpoints import GuildCheckpoints, GuildCheckpointStore
from bot.store.hypernets import Hypernet, HypernetStore, NewHypernet
from bot.store.jobs import JOB_STATUSES, DeletedUserData, Job, JobStore, NewJob
from bot.store.loras import Lora, LoraStore, NewLora, prompt_names
from bot.store.models import KINDS, ModelRepository, NewModel, Registered

__all__ = [
    "JOB_STATUSES", "KINDS", "DatabaseBusy", "DeletedUserData", "DuplicateModel", "Embedding", "EmbeddingStore",
    "GuildCheckpointStore", "GuildCheckpoints", "Hypernet", "HypernetStore", "InvalidName", "Job", "JobStore", "Lora",
    "LoraStore", "ModelRepository", "NameTaken", "NewEmbedding", "NewHypernet", "NewJob", "NewLora", "NewModel",
    "NotFound", "Registered", "Store", "StoreError", "prompt_names",
]


class Store:
    """The database and its repositories. Open with :meth:`open`; close with :meth:`close` (or ``async with``)."""

    def __init__(self, db: Database, migration: MigrationResult, clock: Clock = time.time) -> None:
        self.db = db
        self.migration = migration
        self.jobs = JobStore(db, clock)
        self.hypernets = HypernetStore(db, clock)
        self.loras = LoraStore(db, clock)
        self.embeddings = EmbeddingStore(db, clock)
        self.checkpoints = GuildCheckpointStore(db, clock)

    def models(self, kind: str) -> ModelRepository[NewModel, NewModel]:
        """The registry of one kind (``hypernet``, ``lora``, ``embedding``)."""
        found: dict[str, ModelRepository[Any, Any]] = {"hypernet": self.hypernets, "lora": self.loras,
                                                       "embedding": self.embeddings}
        return found[kind]

    @classmethod
    async def open(cls, path: str | Path, busy_timeout_ms: int = 5000, *, clock: Clock = time.time) -> Store:
        """Open (creating parent dirs and the file if needed) and migrate to the newest schema.

        Raises :class:`bot.migrations.SchemaTooNew` for a database written by a newer Hypercord."""
        db = await Database.open(path, busy_timeout_ms=busy_timeout_ms)
        try:
            migration = await migrate(db)
        except BaseException:
            await db.close()
            raise
        return cls(db, migration, clock)

    async def close(self) -> None:
        await self.db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
