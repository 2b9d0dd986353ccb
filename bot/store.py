"""Typed repositories over the SQLite database: the only place in the project that writes SQL (with bot/db.py and
bot/migrations). Rows come out as frozen dataclasses, so callers can pass them around without touching the database.

``Store.open(path)`` opens the file, applies migrations and exposes ``.jobs`` (every /imagine and button press; the
user's history is this table) and ``.hypernets`` (the registry). Exceptions derive from :class:`StoreError`; their
``str()`` is safe to show to a Discord user.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from bot.db import Database, DatabaseBusy, StoreError, Tx
from bot.migrations import MigrationResult, migrate

__all__ = [
    "JOB_STATUSES", "DatabaseBusy", "DeletedUserData", "DuplicateModel", "Hypernet", "HypernetStore", "InvalidName", "Job",
    "JobHypernet", "JobStore", "NameTaken", "NewHypernet", "NewJob", "NotFound", "Store", "StoreError",
]

Clock = Callable[[], float]
JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")
_UNFINISHED = ("queued", "running")
_SOURCES = ("attachment", "url", "folder")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_INT64 = 2**63


class NotFound(StoreError):
    def __init__(self, what: str, key: object) -> None:
        self.what, self.key = what, key
        super().__init__(f"{what} #{key} was not found (it may have been deleted).")


class NameTaken(StoreError):
    def __init__(self, name: str, existing_name: str) -> None:
        self.name, self.existing_name = name, existing_name
        if name == existing_name:
            text = f"There is already a hypernetwork called “{name}” here. Please pick another name."
        else:
            text = (f"“{name}” clashes with the existing hypernetwork “{existing_name}”: names must differ by more "
                    f"than upper/lower case. Please pick another name.")
        super().__init__(text)


class InvalidName(StoreError):
    """A hypernetwork name that cannot be stored (empty, too long, padded, or with control characters)."""


class DuplicateModel(StoreError):
    def __init__(self, existing: Hypernet) -> None:
        self.existing = existing
        super().__init__(f"This file is already installed here as “{existing.name}”.")


# ---------------------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True, slots=True)
class JobHypernet:
    """One hypernetwork as a job used it, resolved at submit time (the registry may change later)."""

    name: str
    sha256: str
    multiplier: float


@dataclass(frozen=True, slots=True)
class NewJob:
    user_id: int
    guild_id: int | None
    channel_id: int
    prompt: str
    seed: int
    steps: int
    cfg_scale: float
    sampler: str
    width: int
    height: int
    checkpoint: str
    negative_prompt: str = ""
    hypernets: tuple[JobHypernet, ...] = ()
    count: int = 1
    origin: str = "command"
    parent_job_id: int | None = None
    interaction_token: str | None = field(default=None, repr=False)  # a credential for 15 minutes: keep out of logs
    interaction_created_at: float | None = None


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    user_id: int
    guild_id: int | None
    channel_id: int
    parent_job_id: int | None
    origin: str
    prompt: str
    negative_prompt: str
    hypernets: tuple[JobHypernet, ...]
    seed: int
    steps: int
    cfg_scale: float
    sampler: str
    width: int
    height: int
    count: int
    checkpoint: str
    status: str
    error_kind: str | None
    error_message: str | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
    interaction_token: str | None = field(repr=False)
    interaction_created_at: float | None
    message_id: int | None
    image_paths: tuple[str, ...]  # relative to the data dir
    warnings: tuple[str, ...]

    @property
    def finished(self) -> bool:
        return self.status not in _UNFINISHED


@dataclass(frozen=True, slots=True)
class DeletedUserData:
    """What :meth:`JobStore.delete_user_data` erased; the caller deletes ``image_paths`` (relative to the data dir)."""

    count: int
    image_paths: tuple[str, ...]


_CONVERTED_JOB_FIELDS = {"hypernets", "image_paths", "warnings"}


def _job(row: sqlite3.Row) -> Job:
    plain = {f.name: row[f.name] for f in dataclasses.fields(Job) if f.name not in _CONVERTED_JOB_FIELDS}
    hypernets = tuple(JobHypernet(h["name"], h["sha256"], float(h["multiplier"])) for h in json.loads(row["hypernets_json"]))
    return Job(**plain, hypernets=hypernets, image_paths=tuple(json.loads(row["image_paths_json"])),
               warnings=tuple(json.loads(row["warnings_json"])))


def _check_relative(paths: Sequence[str]) -> list[str]:
    """Image paths are stored relative to the data dir so the dir can move; refuse anything that could escape it."""
    out = []
    for p in paths:
        if not isinstance(p, str) or not p:
            raise ValueError(f"image path must be a non-empty string, got {p!r}")
        if PurePosixPath(p).is_absolute() or PureWindowsPath(p).is_absolute() or PureWindowsPath(p).drive or (
                ".." in PurePosixPath(p.replace("\\", "/")).parts):
            raise ValueError(f"image path must be relative to the data dir without '..': {p!r}")
        out.append(p)
    return out


class JobStore:
    """The jobs table: the system of record for every generation, and the users' history."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db, self._clock = db, clock

    async def create(self, new: NewJob) -> Job:
        if not -_INT64 <= new.seed < _INT64:
            raise ValueError(f"seed must fit in 64 bits, got {new.seed}")
        hypernets = [{"name": h.name, "sha256": h.sha256, "multiplier": float(h.multiplier)} for h in new.hypernets]
        async with self._db.transaction() as tx:
            if new.parent_job_id is not None and await tx.fetchval(
                    "SELECT 1 FROM jobs WHERE id = ?", (new.parent_job_id,)) is None:
                raise NotFound("Job", new.parent_job_id)
            job_id = await tx.insert(
                "INSERT INTO jobs (user_id, guild_id, channel_id, parent_job_id, origin, prompt, negative_prompt,"
                " hypernets_json, seed, steps, cfg_scale, sampler, width, height, count, checkpoint, created_at,"
                " interaction_token, interaction_created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (new.user_id, new.guild_id, new.channel_id, new.parent_job_id, new.origin, new.prompt,
                 new.negative_prompt, json.dumps(hypernets), new.seed, new.steps, float(new.cfg_scale), new.sampler,
                 new.width, new.height, new.count, new.checkpoint, self._clock(), new.interaction_token,
                 new.interaction_created_at),
            )
            await tx.executemany(
                "INSERT INTO job_hypernets (job_id, position, name, sha256, multiplier) VALUES (?,?,?,?,?)",
                [(job_id, i, h["name"], h["sha256"], h["multiplier"]) for i, h in enumerate(hypernets)],
            )
            return await self._get(tx, job_id)

    async def get(self, job_id: int) -> Job | None:
        async with self._db.read() as tx:
            row = await tx.fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else _job(row)

    @staticmethod
    async def _get(tx: Tx, job_id: int) -> Job:
        row = await tx.fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise NotFound("Job", job_id)
        return _job(row)

    async def _transition(self, job_id: int, from_statuses: Sequence[str], sets: str, params: Sequence[Any]) -> bool:
        """Apply ``sets`` only while the job is in one of ``from_statuses``; False when it had already moved on."""
        marks = ",".join("?" * len(from_statuses))
        async with self._db.transaction() as tx:
            changed = await tx.execute(
                f"UPDATE jobs SET {sets} WHERE id = ? AND status IN ({marks})", (*params, job_id, *from_statuses))
            if not changed:
                await self._get(tx, job_id)  # raises NotFound for an unknown id
            return changed > 0

    async def mark_running(self, job_id: int) -> bool:
        """queued/running → running (a retry after a worker crash starts again). False if already finished."""
        return await self._transition(job_id, _UNFINISHED, "status = 'running', started_at = ?", (self._clock(),))

    async def requeue(self, job_id: int) -> bool:
        """running → queued, for jobs found running after a restart and submitted again."""
        return await self._transition(job_id, ("running",), "status = 'queued', started_at = NULL", ())

    _FINISH = "finished_at = ?, interaction_token = NULL"

    async def mark_done(self, job_id: int, image_paths: Sequence[str], duration_s: float,
                        warnings: Sequence[str] = ()) -> bool:
        """Record success. ``image_paths`` are relative to the data dir. False if the job had already finished."""
        paths = _check_relative(image_paths)
        return await self._transition(
            job_id, _UNFINISHED,
            f"status = 'done', duration_s = ?, image_paths_json = ?, warnings_json = ?, {self._FINISH}",
            (float(duration_s), json.dumps(paths), json.dumps([str(w) for w in warnings]), self._clock()))

    async def mark_failed(self, job_id: int, kind: str, message: str) -> bool:
        return await self._transition(
            job_id, _UNFINISHED, f"status = 'failed', error_kind = ?, error_message = ?, {self._FINISH}",
            (kind, message, self._clock()))

    async def mark_cancelled(self, job_id: int) -> bool:
        return await self._transition(job_id, _UNFINISHED, f"status = 'cancelled', {self._FINISH}", (self._clock(),))

    async def set_message(self, job_id: int, message_id: int) -> None:
        async with self._db.transaction() as tx:
            if not await tx.execute("UPDATE jobs SET message_id = ? WHERE id = ?", (message_id, job_id)):
                raise NotFound("Job", job_id)

    async def bump_attempts(self, job_id: int) -> int:
        """Count one more attempt (a worker crash retries a job once); returns the new count."""
        async with self._db.transaction() as tx:
            attempts = await tx.fetchval("UPDATE jobs SET attempts = attempts + 1 WHERE id = ? RETURNING attempts",
                                         (job_id,))
        if attempts is None:
            raise NotFound("Job", job_id)
        return int(attempts)

    async def unfinished(self) -> list[Job]:
        """Queued and running jobs, oldest first: what to reconcile after the bot restarts."""
        async with self._db.read() as tx:
            rows = await tx.fetchall("SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY id")
        return [_job(r) for r in rows]

    @staticmethod
    def _history_where(user_id: int, guild_id: int | None, hypernet: str | None) -> tuple[str, list[Any]]:
        where, params = ["j.user_id = ?"], [user_id]
        if guild_id is not None:
            where.append("j.guild_id = ?")
            params.append(guild_id)
        if hypernet is not None:
            where.append("EXISTS (SELECT 1 FROM job_hypernets h WHERE h.job_id = j.id AND h.name = ? COLLATE NOCASE)")
            params.append(hypernet)
        return " AND ".join(where), params

    async def history(self, user_id: int, *, guild_id: int | None = None, hypernet: str | None = None,
                      before_id: int | None = None, limit: int = 10) -> list[Job]:
        """A user's jobs, newest first. ``guild_id=None`` means everywhere (DMs included); ``hypernet`` matches a
        name ignoring case. Page on with ``before_id`` = the last id of the previous page (keyset pagination)."""
        if not 1 <= limit <= 100:
            raise ValueError(f"limit must be between 1 and 100, got {limit}")
        where, params = self._history_where(user_id, guild_id, hypernet)
        if before_id is not None:
            where += " AND j.id < ?"
            params.append(before_id)
        async with self._db.read() as tx:
            rows = await tx.fetchall(f"SELECT j.* FROM jobs j WHERE {where} ORDER BY j.id DESC LIMIT ?", (*params, limit))
        return [_job(r) for r in rows]

    async def count_history(self, user_id: int, *, guild_id: int | None = None, hypernet: str | None = None) -> int:
        where, params = self._history_where(user_id, guild_id, hypernet)
        async with self._db.read() as tx:
            return int(await tx.fetchval(f"SELECT count(*) FROM jobs j WHERE {where}", params))

    async def delete_user_data(self, user_id: int) -> DeletedUserData:
        """Erase every job of this user (other users' reroll children keep their rows, with the parent unset)."""
        async with self._db.transaction() as tx:
            rows = await tx.fetchall("SELECT image_paths_json FROM jobs WHERE user_id = ? ORDER BY id", (user_id,))
            count = await tx.execute("DELETE FROM jobs WHERE user_id = ?", (user_id,))
        paths = tuple(p for r in rows for p in json.loads(r["image_paths_json"]))
        return DeletedUserData(count, paths)

    async def stats(self, since: float) -> dict[str, int]:
        """Jobs created at or after ``since`` by status; every status is present (0 when none)."""
        async with self._db.read() as tx:
            rows = await tx.fetchall("SELECT status, count(*) AS n FROM jobs WHERE created_at >= ? GROUP BY status",
                                     (since,))
        counts = dict.fromkeys(JOB_STATUSES, 0)
        counts.update({r["status"]: int(r["n"]) for r in rows})
        return counts


# ----------------------------------------------------------------------------------------------------- hypernets


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


@dataclass(frozen=True, slots=True)
class Hypernet:
    id: int
    name: str
    guild_id: int | None
    sha256: str
    file_name: str
    file_size: int
    sizes: tuple[int, ...]
    layer_structure: tuple[float, ...]
    activation: str
    base_model: str | None
    description: str
    trigger_words: str
    default_multiplier: float
    preview_path: str | None
    enabled: bool
    added_by: int | None
    added_at: float
    source: str
    source_detail: str | None
    updated_at: float

    @property
    def is_global(self) -> bool:
        return self.guild_id is None


_CONVERTED_HYPERNET_FIELDS = {"sizes", "layer_structure", "enabled"}


def _hypernet(row: sqlite3.Row) -> Hypernet:
    plain = {f.name: row[f.name] for f in dataclasses.fields(Hypernet) if f.name not in _CONVERTED_HYPERNET_FIELDS}
    return Hypernet(**plain, sizes=tuple(json.loads(row["sizes_json"])),
                    layer_structure=tuple(json.loads(row["layer_structure_json"])), enabled=bool(row["enabled"]))


# Visible to a guild: its own models and the global ones. With guild_id NULL (a DM) only the global ones match.
_VISIBLE = "(guild_id IS NULL OR guild_id = ?)"


def _check_new(new: NewHypernet) -> None:
    name = new.name
    if not name or name != name.strip() or any(not c.isprintable() for c in name):
        raise InvalidName("A hypernetwork name must be non-empty, printable, and must not start or end with a space.")
    if len(name) > 100:
        raise InvalidName("A hypernetwork name can be at most 100 characters long.")
    if not _SHA256_RE.match(new.sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {new.sha256!r}")
    if new.source not in _SOURCES:
        raise ValueError(f"source must be one of {_SOURCES}, got {new.source!r}")
    if not math.isfinite(new.default_multiplier):
        raise ValueError("default_multiplier must be a finite number")


class HypernetStore:
    """The registry of installed hypernetworks, global (bot owners) or per guild (that guild's admins)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db, self._clock = db, clock

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
                raise DuplicateModel(_hypernet(same_file))
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
        row = await tx.fetchone("SELECT * FROM hypernets WHERE id = ?", (hypernet_id,))
        if row is None:
            raise NotFound("Hypernetwork", hypernet_id)
        return _hypernet(row)

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

    @staticmethod
    def _search_where(guild_id: int | None, query: str | None, include_disabled: bool) -> tuple[str, list[Any]]:
        where, params = [_VISIBLE], [guild_id]
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


# --------------------------------------------------------------------------------------------------------- store


class Store:
    """The database and its repositories. Open with :meth:`open`; close with :meth:`close` (or ``async with``)."""

    def __init__(self, db: Database, migration: MigrationResult, clock: Clock = time.time) -> None:
        self.db = db
        self.migration = migration
        self.jobs = JobStore(db, clock)
        self.hypernets = HypernetStore(db, clock)

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
