"""The jobs table: every /imagine and button press, the system of record for a job's life and the users' history.

A job's :class:`~engine.render_settings.RenderSettings` are its columns (``prompt`` as the user typed it, seed,
steps, ...) plus its hypernetworks, one ``job_hypernets`` row each in tag order, by name and sha256 as resolved when
the job was made, so the registry can change or lose a model without rewriting history.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from bot.db import Tx
from bot.store.base import Repository, fetch_by_id
from bot.store.errors import NotFound
from engine.render_settings import EmbeddingRef, HypernetRef, LoraRef, RenderSettings

__all__ = ["JOB_STATUSES", "DeletedUserData", "Job", "JobStore", "NewJob"]

JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")
_UNFINISHED = ("queued", "running")
_INT64 = 2**63


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job about to be stored: who asked where, what to render, and where it came from."""

    user_id: int
    guild_id: int | None
    channel_id: int
    settings: RenderSettings
    origin: str = "command"
    parent_job_id: int | None = None
    interaction_token: str | None = field(default=None, repr=False)  # a credential for 15 minutes: keep out of logs
    interaction_created_at: float | None = None
    notes: tuple[str, ...] = ()  # shown with the result, e.g. pasted parameters that are not rendered


@dataclass(frozen=True, slots=True, kw_only=True)
class Job(NewJob):
    """A stored job: what was asked (the :class:`NewJob` fields) and what has happened to it since."""

    id: int
    status: str
    error_kind: str | None
    error_message: str | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
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


# Job fields read from the column of the same name; `settings`, `image_paths` and `warnings` are built below.
_PLAIN_FIELDS = ("id", "user_id", "guild_id", "channel_id", "parent_job_id", "origin", "status", "error_kind",
                 "error_message", "attempts", "created_at", "started_at", "finished_at", "duration_s",
                 "interaction_token", "interaction_created_at", "message_id")
# RenderSettings fields stored in the column of the same name (hypernets and seed_resize_from are built below).
_SETTINGS_COLUMNS = ("prompt", "negative_prompt", "seed", "steps", "cfg_scale", "sampler", "width", "height", "count",
                     "checkpoint", "schedule", "clip_skip", "rng", "eta_noise_seed_delta", "subseed",
                     "subseed_strength")
_INSERT_COLUMNS = ("user_id", "guild_id", "channel_id", "parent_job_id", "origin", *_SETTINGS_COLUMNS,
                   "seed_resize_width", "seed_resize_height", "created_at", "interaction_token",
                   "interaction_created_at", "notes_json")
_INSERT_JOB = f"INSERT INTO jobs ({', '.join(_INSERT_COLUMNS)}) VALUES ({','.join('?' * len(_INSERT_COLUMNS))})"


@dataclass(slots=True)
class _Attached:
    """A job's rows in the side tables (hypernets, LoRAs, embeddings), read for a page of jobs at once."""

    hypernets: list[HypernetRef] = field(default_factory=list)
    loras: list[LoraRef] = field(default_factory=list)
    embeddings: list[EmbeddingRef] = field(default_factory=list)


def _job(row: sqlite3.Row, attached: _Attached) -> Job:
    resize = row["seed_resize_width"], row["seed_resize_height"]
    settings = RenderSettings(**{c: row[c] for c in _SETTINGS_COLUMNS}, hypernets=tuple(attached.hypernets),
                              loras=tuple(attached.loras), embeddings=tuple(attached.embeddings),
                              seed_resize_from=None if None in resize else resize)
    return Job(**{f: row[f] for f in _PLAIN_FIELDS}, settings=settings, notes=tuple(json.loads(row["notes_json"])),
               image_paths=tuple(json.loads(row["image_paths_json"])), warnings=tuple(json.loads(row["warnings_json"])))


async def _jobs(tx: Tx, rows: Sequence[sqlite3.Row]) -> list[Job]:
    """Rows of ``jobs`` as Jobs, with their hypernets, LoRAs and embeddings read in one query each."""
    if not rows:
        return []
    ids = [r["id"] for r in rows]
    marks = ",".join("?" * len(ids))
    attached = {i: _Attached() for i in ids}
    for h in await tx.fetchall(f"SELECT job_id, name, sha256, multiplier FROM job_hypernets WHERE job_id IN ({marks})"
                               " ORDER BY job_id, position", ids):
        attached[h["job_id"]].hypernets.append(HypernetRef(h["name"], h["sha256"], float(h["multiplier"])))
    for x in await tx.fetchall("SELECT job_id, name, sha256, te, unet, dyn, short_hash FROM job_loras WHERE job_id IN "
                               f"({marks}) ORDER BY job_id, position", ids):
        attached[x["job_id"]].loras.append(LoraRef(x["name"], x["sha256"], float(x["te"]), float(x["unet"]), x["dyn"],
                                                   x["short_hash"]))
    for e in await tx.fetchall(f"SELECT job_id, name, sha256, short_hash FROM job_embeddings WHERE job_id IN ({marks})"
                               " ORDER BY job_id, name", ids):
        attached[e["job_id"]].embeddings.append(EmbeddingRef(e["name"], e["sha256"], e["short_hash"]))
    return [_job(r, attached[r["id"]]) for r in rows]


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


class JobStore(Repository):
    """The jobs table: the system of record for every generation, and the users' history."""

    async def create(self, new: NewJob) -> Job:
        s = new.settings
        for what, value in (("seed", s.seed), ("variation seed", s.subseed), ("ENSD", s.eta_noise_seed_delta)):
            if value is not None and not -_INT64 <= value < _INT64:
                raise ValueError(f"{what} must fit in 64 bits, got {value}")
        async with self._db.transaction() as tx:
            if new.parent_job_id is not None and await tx.fetchval(
                    "SELECT 1 FROM jobs WHERE id = ?", (new.parent_job_id,)) is None:
                raise NotFound("Job", new.parent_job_id)
            resize = s.seed_resize_from or (None, None)
            job_id = await tx.insert(_INSERT_JOB, (
                new.user_id, new.guild_id, new.channel_id, new.parent_job_id, new.origin,
                *(getattr(s, c) for c in _SETTINGS_COLUMNS), *resize, self._clock(), new.interaction_token,
                new.interaction_created_at, json.dumps([str(n) for n in new.notes])))
            await tx.executemany(
                "INSERT INTO job_hypernets (job_id, position, name, sha256, multiplier) VALUES (?,?,?,?,?)",
                [(job_id, i, h.name, h.sha256, float(h.multiplier)) for i, h in enumerate(s.hypernets)],
            )
            await tx.executemany(
                "INSERT INTO job_loras (job_id, position, name, sha256, te, unet, dyn, short_hash) VALUES "
                "(?,?,?,?,?,?,?,?)",
                [(job_id, i, x.name, x.sha256, float(x.te), float(x.unet), x.dyn, x.short_hash)
                 for i, x in enumerate(s.loras)],
            )
            await tx.executemany(
                "INSERT INTO job_embeddings (job_id, name, sha256, short_hash) VALUES (?,?,?,?)",
                [(job_id, e.name, e.sha256, e.short_hash) for e in s.embeddings],
            )
            return await self._get(tx, job_id)

    async def get(self, job_id: int) -> Job | None:
        async with self._db.read() as tx:
            row = await tx.fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
            return None if row is None else (await _jobs(tx, [row]))[0]

    @staticmethod
    async def _get(tx: Tx, job_id: int) -> Job:
        return (await _jobs(tx, [await fetch_by_id(tx, "jobs", "Job", job_id)]))[0]

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
            return await _jobs(tx, rows)

    @staticmethod
    def _history_where(user_id: int, guild_id: int | None, hypernet: str | None) -> tuple[str, list[Any]]:
        where, params = ["j.user_id = ?"], list[Any]([user_id])
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
            return await _jobs(tx, rows)

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
