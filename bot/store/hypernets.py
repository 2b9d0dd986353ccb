"""The hypernetwork registry: which models are installed, for every guild (global) or for one guild.

Names are unique within what one guild sees, ignoring case, and one file (sha256) is one model per scope; both
rules are checked inside the write transaction that adds a model.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.db import StoreError, Tx
from bot.store.base import Repository, fetch_by_id, from_row
from bot.store.errors import DuplicateModel, InvalidName, NameTaken
from engine.names import name_problem

__all__ = ["Hypernet", "HypernetStore", "NewHypernet"]

_SOURCES = ("attachment", "url", "folder")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class NewHypernet:
    name: str
    guild_id: int | None  # None = global
    sha256: str
    file_name: str
    file_size: int
    sizes: tuple[int, ...]
    layer_structure: tuple[float, ...]
    activation: str
    source: str  # 'attachment' | 'url' | 'folder'
    source_detail: str | None = None
    base_model: str | None = None
    description: str = ""
    trigger_words: str = ""
    default_multiplier: float = 1.0
    preview_path: str | None = None
    enabled: bool = True
    added_by: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Hypernet(NewHypernet):
    """A registered model: the :class:`NewHypernet` fields plus its id and when it was added and last changed."""

    id: int
    added_at: float
    updated_at: float

    @property
    def is_global(self) -> bool:
        return self.guild_id is None


def _hypernet(row: sqlite3.Row) -> Hypernet:
    return from_row(Hypernet, row, sizes=tuple(json.loads(row["sizes_json"])),
                    layer_structure=tuple(json.loads(row["layer_structure_json"])), enabled=bool(row["enabled"]))


# Visible to a guild: its own models and the global ones. With guild_id NULL (a DM) only the global ones match.
_VISIBLE = "(guild_id IS NULL OR guild_id = ?)"


def _check_new(new: NewHypernet) -> None:
    problem = name_problem(new.name)
    if problem is not None:
        raise InvalidName(f"`{new.name[:80]}` cannot be a model name: {problem}.")
    if not _SHA256_RE.match(new.sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {new.sha256!r}")
    if new.source not in _SOURCES:
        raise ValueError(f"source must be one of {_SOURCES}, got {new.source!r}")
    if not math.isfinite(new.default_multiplier):
        raise ValueError("default_multiplier must be a finite number")


class HypernetStore(Repository):
    """The registry of installed hypernetworks, global (bot owners) or per guild (that guild's admins)."""

    async def add(self, new: NewHypernet) -> Hypernet:
        """Register a model. Within what one guild sees (global + its own), names differ ignoring case
        (:class:`NameTaken`), and the same file (sha256) in the same scope is one model (:class:`DuplicateModel`).
        Both checks run inside the write transaction, so two concurrent adds cannot both pass."""
        _check_new(new)
        async with self._db.transaction() as tx:
            same_file = await tx.fetchone(
                "SELECT * FROM hypernets WHERE ifnull(guild_id, 0) = ifnull(?, 0) AND sha256 = ?",
                (new.guild_id, new.sha256))
            if same_file is not None:
                raise DuplicateModel(same_file["name"])
            # A global name is seen by every guild, so it must not clash with any guild's; a guild's name must not
            # clash with the global ones or its own. casefold() also folds non-ASCII case, which NOCASE does not.
            scope, params = ("1", ()) if new.guild_id is None else (_VISIBLE, (new.guild_id,))
            clash = await tx.fetchval(f"SELECT name FROM hypernets WHERE {scope} AND py_casefold(name) = ? LIMIT 1",
                                      (*params, new.name.casefold()))
            if clash is not None:
                raise NameTaken(new.name, clash)
            now = self._clock()
            try:
                hypernet_id = await tx.insert(
                    "INSERT INTO hypernets (name, guild_id, sha256, file_name, file_size, sizes_json,"
                    " layer_structure_json, activation, base_model, description, trigger_words, default_multiplier,"
                    " preview_path, enabled, added_by, added_at, source, source_detail, updated_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (new.name, new.guild_id, new.sha256, new.file_name, new.file_size,
                     json.dumps([int(s) for s in new.sizes]), json.dumps([float(x) for x in new.layer_structure]),
                     new.activation, new.base_model, new.description, new.trigger_words,
                     float(new.default_multiplier), new.preview_path, int(new.enabled), new.added_by, now,
                     new.source, new.source_detail, now))
            except sqlite3.IntegrityError as error:  # the unique indexes disagree with the checks above: a bug
                raise StoreError(f"Could not register “{new.name}”: it conflicts with an existing model.") from error
            return await self._get(tx, hypernet_id)

    @staticmethod
    async def _get(tx: Tx, hypernet_id: int) -> Hypernet:
        return _hypernet(await fetch_by_id(tx, "hypernets", "Hypernetwork", hypernet_id))

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Hypernet]:
        async with self._db.read() as tx:
            return [_hypernet(r) for r in await tx.fetchall(sql, params)]

    async def get(self, hypernet_id: int) -> Hypernet | None:
        found = await self._all("SELECT * FROM hypernets WHERE id = ?", (hypernet_id,))
        return found[0] if found else None

    async def by_name(self, name: str, guild_id: int | None) -> Hypernet | None:
        """The model a tag names in this guild: exact case (A1111's rule), enabled or not (the caller says which)."""
        found = await self._all(f"SELECT * FROM hypernets WHERE name = ? AND {_VISIBLE}", (name, guild_id))
        return found[0] if found else None

    async def usable(self, guild_id: int | None) -> dict[str, Hypernet]:
        """The enabled models this guild can use, by name (what a prompt's tags resolve against)."""
        rows = await self._all(f"SELECT * FROM hypernets WHERE {_VISIBLE} AND enabled = 1 ORDER BY name", (guild_id,))
        return {h.name: h for h in rows}

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
                     offset: int = 0, limit: int = 25) -> list[Hypernet]:
        """Models this guild sees whose name, description or trigger words contain ``query`` (any case), by name."""
        if offset < 0 or not 1 <= limit <= 100:
            raise ValueError(f"need offset >= 0 and 1 <= limit <= 100, got offset={offset} limit={limit}")
        where, params = self._search_where(guild_id, query, include_disabled)
        return await self._all(f"SELECT * FROM hypernets WHERE {where} ORDER BY name COLLATE NOCASE, id LIMIT ? OFFSET ?",
                               (*params, limit, offset))

    async def count_search(self, guild_id: int | None, query: str | None = None, include_disabled: bool = False) -> int:
        where, params = self._search_where(guild_id, query, include_disabled)
        async with self._db.read() as tx:
            return int(await tx.fetchval(f"SELECT count(*) FROM hypernets WHERE {where}", params))

    async def visible_names(self, guild_id: int | None, enabled_only: bool = True) -> list[str]:
        """Names this guild can use, sorted ignoring case (autocomplete, "did you mean")."""
        enabled = " AND enabled = 1" if enabled_only else ""
        async with self._db.read() as tx:
            rows = await tx.fetchall(f"SELECT name FROM hypernets WHERE {_VISIBLE}{enabled} ORDER BY name COLLATE NOCASE",
                                     (guild_id,))
        return [r["name"] for r in rows]

    async def update(self, hypernet_id: int, *, description: str | None = None, trigger_words: str | None = None,
                     default_multiplier: float | None = None, enabled: bool | None = None) -> Hypernet:
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
                await tx.execute(f"UPDATE hypernets SET {sets}, updated_at = ? WHERE id = ?",
                                 (*changes.values(), self._clock(), hypernet_id))
            return await self._get(tx, hypernet_id)

    async def remove(self, hypernet_id: int) -> Hypernet:
        """Delete a model and return what it was (jobs keep the name and hash in their own columns)."""
        async with self._db.transaction() as tx:
            existing = await self._get(tx, hypernet_id)
            await tx.execute("DELETE FROM hypernets WHERE id = ?", (hypernet_id,))
        return existing

    async def by_sha256(self, sha256: str) -> list[Hypernet]:
        return await self._all("SELECT * FROM hypernets WHERE sha256 = ? ORDER BY id", (sha256,))

    async def all_files(self) -> set[str]:
        """Canonical file names still referenced; intake may delete any other file in its store."""
        async with self._db.read() as tx:
            return {r[0] for r in await tx.fetchall("SELECT DISTINCT file_name FROM hypernets")}

    async def by_source_detail(self, source: str, detail: str) -> list[Hypernet]:
        """Models registered from one source, e.g. ``('folder', 'sub/foo.pt')`` to skip files already scanned."""
        return await self._all("SELECT * FROM hypernets WHERE source = ? AND source_detail = ? ORDER BY id",
                               (source, detail))
