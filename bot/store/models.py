"""The model registry: every installed add-on model (hypernetwork, LoRA, embedding), global or for one guild.

Why one table and one repository class for all kinds: the rules an admin meets are the same whatever the kind —
names unique within what one guild sees (ignoring case), one file (sha256) one model per scope, global models for
the bot owners, enable/disable, edits — so they are written once, here, and each kind only says how its own
details (a hypernetwork's layer sizes, a LoRA's format and family, an embedding's vector count) are stored
(``details_json``, :meth:`NewModel.details` / :meth:`NewModel.fields_from_details`).  A repository serves one kind
(``store.hypernets``, ``store.loras``, ``store.embeddings``); names and files of different kinds never clash.
Both rules are checked inside the write transaction that adds a model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from bot.db import Database, StoreError, Tx
from bot.store.base import Clock, Repository, from_row
from bot.store.errors import DuplicateModel, InvalidName, NameTaken, NotFound
from engine.names import name_problem

__all__ = ["KINDS", "SOURCES", "ModelRepository", "NewModel", "Registered", "all_model_files"]

KINDS = ("hypernet", "lora", "embedding")
SOURCES = ("attachment", "url", "folder")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Visible to a guild: its own models and the global ones. With guild_id NULL (a DM) only the global ones match.
_VISIBLE = "(guild_id IS NULL OR guild_id = ?)"
_COLUMNS = ("kind", "name", "guild_id", "sha256", "file_name", "file_size", "details_json", "base_model", "description",
            "trigger_words", "default_multiplier", "preview_path", "enabled", "added_by", "added_at", "source",
            "source_detail", "updated_at")


@dataclass(frozen=True, kw_only=True)
class NewModel:
    """What every kind's new row has; a kind adds its details as fields and says how they are stored."""

    KIND: ClassVar[str] = ""

    name: str
    guild_id: int | None  # None = global
    sha256: str
    file_name: str
    file_size: int
    source: str  # 'attachment' | 'url' | 'folder'
    source_detail: str | None = None
    base_model: str | None = None
    description: str = ""
    trigger_words: str = ""
    default_multiplier: float = 1.0
    preview_path: str | None = None
    enabled: bool = True
    added_by: int | None = None

    @property
    def is_global(self) -> bool:
        return self.guild_id is None

    def details(self) -> dict[str, Any]:
        """The kind's own fields as the JSON object stored in ``details_json``."""
        raise NotImplementedError

    @classmethod
    def fields_from_details(cls, details: Mapping[str, Any]) -> dict[str, Any]:
        """The kind's own fields read back from ``details_json``."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class Registered:
    """What the registry adds to a row: its id and when it was added and last changed."""

    id: int
    added_at: float
    updated_at: float


NewT = TypeVar("NewT", bound=NewModel)
RowT = TypeVar("RowT", bound=NewModel)


def _check_new(new: NewModel) -> None:
    problem = name_problem(new.name)
    if problem is not None:
        raise InvalidName(f"`{new.name[:80]}` cannot be a model name: {problem}.")
    if not _SHA256_RE.match(new.sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {new.sha256!r}")
    if new.source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {new.source!r}")
    if not math.isfinite(new.default_multiplier):
        raise ValueError("default_multiplier must be a finite number")


async def all_model_files(db: Database) -> set[str]:
    """Canonical file names any registry row of any kind references; intake may delete any other file in its
    store (the kinds share one store folder)."""
    async with db.read() as tx:
        return {r[0] for r in await tx.fetchall("SELECT DISTINCT file_name FROM models")}


class ModelRepository(Repository, Generic[NewT, RowT]):
    """The registry rows of one kind.  ``row_type`` is the kind's row class (a subclass of its new-row class and of
    :class:`Registered`); ``what`` names one row in messages (``Hypernetwork #3 was not found``)."""

    def __init__(self, db: Database, clock: Clock, *, new_type: type[NewT], row_type: type[RowT], what: str) -> None:
        super().__init__(db, clock)
        self.new_type, self.row_type, self.what = new_type, row_type, what
        self.kind = new_type.KIND
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}")

    def _row(self, row: sqlite3.Row) -> RowT:
        details = self.row_type.fields_from_details(json.loads(row["details_json"]))
        return from_row(self.row_type, row, enabled=bool(row["enabled"]), **details)

    async def add(self, new: NewT) -> RowT:
        """Register a model. Within what one guild sees (global + its own), names of this kind differ ignoring case
        (:class:`NameTaken`), and the same file (sha256) in the same scope is one model (:class:`DuplicateModel`).
        Both checks run inside the write transaction, so two concurrent adds cannot both pass."""
        if not isinstance(new, self.new_type):
            raise TypeError(f"{type(new).__name__} is not a {self.new_type.__name__}")
        _check_new(new)
        async with self._db.transaction() as tx:
            same_file = await tx.fetchone(
                "SELECT name FROM models WHERE kind = ? AND ifnull(guild_id, 0) = ifnull(?, 0) AND sha256 = ?",
                (self.kind, new.guild_id, new.sha256))
            if same_file is not None:
                raise DuplicateModel(same_file["name"])
            # A global name is seen by every guild, so it must not clash with any guild's; a guild's name must not
            # clash with the global ones or its own. casefold() also folds non-ASCII case, which NOCASE does not.
            scope, params = ("1", ()) if new.guild_id is None else (_VISIBLE, (new.guild_id,))
            clash = await tx.fetchval(
                f"SELECT name FROM models WHERE kind = ? AND {scope} AND py_casefold(name) = ? LIMIT 1",
                (self.kind, *params, new.name.casefold()))
            if clash is not None:
                raise NameTaken(new.name, clash)
            now = self._clock()
            values = {**{f.name: getattr(new, f.name) for f in dataclasses.fields(NewModel)}, "kind": self.kind,
                      "details_json": json.dumps(new.details()), "enabled": int(new.enabled),
                      "default_multiplier": float(new.default_multiplier), "added_at": now, "updated_at": now}
            try:
                model_id = await tx.insert(f"INSERT INTO models ({', '.join(_COLUMNS)}) VALUES "
                                           f"({', '.join('?' * len(_COLUMNS))})", [values[c] for c in _COLUMNS])
            except sqlite3.IntegrityError as error:  # the unique indexes disagree with the checks above: a bug
                raise StoreError(f"Could not register “{new.name}”: it conflicts with an existing model.") from error
            return await self._get(tx, model_id)

    async def _get(self, tx: Tx, model_id: int) -> RowT:
        row = await tx.fetchone("SELECT * FROM models WHERE id = ? AND kind = ?", (model_id, self.kind))
        if row is None:
            raise NotFound(self.what, model_id)
        return self._row(row)

    async def _all(self, where: str, params: Sequence[Any] = (), tail: str = "") -> list[RowT]:
        async with self._db.read() as tx:
            rows = await tx.fetchall(f"SELECT * FROM models WHERE kind = ? AND {where} {tail}", (self.kind, *params))
        return [self._row(r) for r in rows]

    async def get(self, model_id: int) -> RowT | None:
        found = await self._all("id = ?", (model_id,))
        return found[0] if found else None

    async def by_name(self, name: str, guild_id: int | None) -> RowT | None:
        """The model a prompt names in this guild: exact case (A1111's rule), enabled or not (the caller says which)."""
        found = await self._all(f"name = ? AND {_VISIBLE}", (name, guild_id))
        return found[0] if found else None

    async def usable(self, guild_id: int | None) -> dict[str, RowT]:
        """The enabled models this guild can use, by name (what a prompt's names resolve against)."""
        rows = await self._all(f"{_VISIBLE} AND enabled = 1", (guild_id,), "ORDER BY name")
        return {m.name: m for m in rows}

    @staticmethod
    def _search_where(guild_id: int | None, query: str | None, include_disabled: bool) -> tuple[str, list[Any]]:
        where, params = [_VISIBLE], list[Any]([guild_id])
        if not include_disabled:
            where.append("enabled = 1")
        if query:
            needle = query.casefold()
            where.append("(instr(py_casefold(name), ?) OR instr(py_casefold(description), ?)"
                         " OR instr(py_casefold(trigger_words), ?))")
            params += [needle, needle, needle]
        return " AND ".join(where), params

    async def search(self, guild_id: int | None, query: str | None = None, include_disabled: bool = False,
                     offset: int = 0, limit: int = 25) -> list[RowT]:
        """Models this guild sees whose name, description or trigger words contain ``query`` (any case), by name."""
        if offset < 0 or not 1 <= limit <= 100:
            raise ValueError(f"need offset >= 0 and 1 <= limit <= 100, got offset={offset} limit={limit}")
        where, params = self._search_where(guild_id, query, include_disabled)
        return await self._all(where, (*params, limit, offset), "ORDER BY name COLLATE NOCASE, id LIMIT ? OFFSET ?")

    async def count_search(self, guild_id: int | None, query: str | None = None, include_disabled: bool = False) -> int:
        where, params = self._search_where(guild_id, query, include_disabled)
        async with self._db.read() as tx:
            return int(await tx.fetchval(f"SELECT count(*) FROM models WHERE kind = ? AND {where}",
                                         (self.kind, *params)))

    async def visible_names(self, guild_id: int | None, enabled_only: bool = True) -> list[str]:
        """Names this guild can use, sorted ignoring case (autocomplete, "did you mean")."""
        enabled = " AND enabled = 1" if enabled_only else ""
        async with self._db.read() as tx:
            rows = await tx.fetchall(f"SELECT name FROM models WHERE kind = ? AND {_VISIBLE}{enabled}"
                                     " ORDER BY name COLLATE NOCASE", (self.kind, guild_id))
        return [r["name"] for r in rows]

    async def update(self, model_id: int, *, description: str | None = None, trigger_words: str | None = None,
                     default_multiplier: float | None = None, enabled: bool | None = None) -> RowT:
        """Change only the fields given (None = leave as is); returns the row as it now is."""
        changes: dict[str, Any] = {}
        if description is not None:
            changes["description"] = description
        if trigger_words is not None:
            changes["trigger_words"] = trigger_words
        if default_multiplier is not None:
            if not math.isfinite(default_multiplier):
                raise ValueError("default_multiplier must be a finite number")
            changes["default_multiplier"] = float(default_multiplier)
        if enabled is not None:
            changes["enabled"] = int(enabled)
        async with self._db.transaction() as tx:
            if changes:
                sets = ", ".join(f"{column} = ?" for column in changes)  # column names are the fixed keys above
                await tx.execute(f"UPDATE models SET {sets}, updated_at = ? WHERE id = ? AND kind = ?",
                                 (*changes.values(), self._clock(), model_id, self.kind))
            return await self._get(tx, model_id)

    async def remove(self, model_id: int) -> RowT:
        """Delete a model and return what it was (jobs keep the name and hash in their own columns)."""
        async with self._db.transaction() as tx:
            existing = await self._get(tx, model_id)
            await tx.execute("DELETE FROM models WHERE id = ?", (model_id,))
        return existing

    async def by_sha256(self, sha256: str) -> list[RowT]:
        return await self._all("sha256 = ?", (sha256,), "ORDER BY id")

    async def all_files(self) -> set[str]:
        """Canonical file names still referenced by any kind (:func:`all_model_files`): the store folder is shared,
        so intake may delete only what no row of any kind references."""
        return await all_model_files(self._db)

    async def by_source_detail(self, source: str, detail: str) -> list[RowT]:
        """Models registered from one source, e.g. ``('folder', 'sub/foo.pt')`` to skip files already scanned."""
        return await self._all("source = ? AND source_detail = ?", (source, detail), "ORDER BY id")
