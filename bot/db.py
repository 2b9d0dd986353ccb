"""The SQLite connection: PRAGMAs, one shared connection, and a lock so only one task writes at a time.

Why one connection and one lock: aiosqlite runs every statement of a connection on one thread, so two tasks sharing
it would interleave their statements inside each other's transactions (and a second ``BEGIN`` fails). The lock gives
each task the connection for a whole transaction. Reads take the same lock, so no task ever sees another task's
uncommitted rows. SQLite statements here take microseconds to milliseconds, so serialising them costs nothing at a
Discord bot's scale.

Why WAL and ``BEGIN IMMEDIATE``: WAL lets other processes (a backup, ``python -m bot db ...``, an operator's sqlite3
shell) read while the bot writes. ``BEGIN IMMEDIATE`` takes the write lock up front, so the busy timeout applies to
it; a deferred transaction that later upgrades to a writer can fail with "database is locked" without waiting.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

Params = Sequence[Any] | dict[str, Any]


class StoreError(Exception):
    """Base of every error the store raises on purpose; ``str(error)`` is safe to show to a Discord user."""


class DatabaseBusy(StoreError):
    """Another process held the write lock for longer than the busy timeout."""

    def __init__(self) -> None:
        super().__init__("The database is busy right now. Please try again in a moment.")


def _is_busy(error: sqlite3.OperationalError) -> bool:
    text = str(error).lower()
    return "database is locked" in text or "database is busy" in text


def _casefold(value: object) -> object:
    return value.casefold() if isinstance(value, str) else value


class Tx:
    """The connection as seen by the one task that holds the lock: small helpers over parameterised statements."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        async with self._conn.execute(sql, params) as cur:
            return cur.rowcount

    async def insert(self, sql: str, params: Params = ()) -> int:
        """Run one INSERT; returns the new row's rowid."""
        async with self._conn.execute(sql, params) as cur:
            rowid = cur.lastrowid
        if rowid is None:  # pragma: no cover - sqlite3 always sets it after an INSERT
            raise StoreError("The database did not report the new row's id.")
        return rowid

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        async with self._conn.execute(sql, params) as cur:
            return await cur.fetchone()

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        async with self._conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetchval(self, sql: str, params: Params = ()) -> Any:
        """First column of the first row, or None when there is no row."""
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]


class Database:
    """One aiosqlite connection with the project's PRAGMAs, used through :meth:`transaction` and :meth:`read`."""

    def __init__(self, conn: aiosqlite.Connection, path: Path, busy_timeout_ms: int) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms

    @classmethod
    async def open(cls, path: str | Path, *, busy_timeout_ms: int = 5000) -> Database:
        """Open (creating if needed) the database file and apply the connection PRAGMAs.

        The parent directory is created, so a fresh data dir needs no setup step.
        """
        if isinstance(busy_timeout_ms, bool) or not isinstance(busy_timeout_ms, int) or busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout_ms must be a non-negative integer, got {busy_timeout_ms!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the sqlite3 module never opens transactions behind our back; transaction() does.
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            # busy_timeout first, so that switching to WAL waits for another process instead of failing.
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            async with conn.execute("PRAGMA journal_mode = WAL") as cur:
                row = await cur.fetchone()
            if row is None or str(row[0]).lower() != "wal":
                raise StoreError(f"Could not switch {path.name} to WAL journal mode (got {row[0] if row else None!r}).")
            await conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: a crash loses at most the last commits
            await conn.execute("PRAGMA foreign_keys = ON")
            # SQLite's lower()/NOCASE fold ASCII only; this folds any script, for name rules and search.
            await conn.create_function("py_casefold", 1, _casefold, deterministic=True)
        except BaseException:
            await conn.close()
            raise
        return cls(conn, path, busy_timeout_ms)

    async def close(self) -> None:
        """Wait for the current user of the connection, then close it."""
        async with self._lock:
            await self._conn.close()

    @asynccontextmanager
    async def _hold(self) -> AsyncIterator[None]:
        task = asyncio.current_task()
        if task is not None and self._holder is task:
            # Waiting on our own lock would hang forever; say what went wrong instead.
            raise RuntimeError("nested use of the database inside a transaction; pass the Tx down instead")
        async with self._lock:
            self._holder = task
            try:
                yield
            finally:
                self._holder = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """Hold the connection for one write transaction: commit on success, roll back on any exception."""
        async with self._hold():
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:
                if _is_busy(error):
                    raise DatabaseBusy() from error
                raise
            try:
                yield Tx(self._conn)
            except BaseException:
                # Shielded: a second cancellation must not leave the transaction open for the next task. aiosqlite
                # runs requests in order, so the ROLLBACK is queued before whatever the next lock holder sends.
                await asyncio.shield(self._rollback())
                raise
            try:
                await self._conn.execute("COMMIT")
            except BaseException as error:
                await asyncio.shield(self._rollback())
                if isinstance(error, sqlite3.OperationalError) and _is_busy(error):
                    raise DatabaseBusy() from error
                raise

    async def _rollback(self) -> None:
        if self._conn.in_transaction:
            await self._conn.execute("ROLLBACK")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Tx]:
        """Hold the connection for reads; several statements see one snapshot (a deferred read transaction)."""
        async with self._hold():
            await self._conn.execute("BEGIN DEFERRED")
            try:
                yield Tx(self._conn)
            finally:
                await asyncio.shield(self._rollback())  # nothing was written; ending the snapshot is all this does

    async def pragma(self, name: str) -> Any:
        """Read one PRAGMA's value (for checks and tests); ``name`` is a fixed identifier, never user input."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"not a PRAGMA name: {name!r}")
        async with self.read() as tx:
            return await tx.fetchval(f"PRAGMA {name}")

    async def backup_to(self, target: Path) -> None:
        """Write a consistent copy of the whole database to ``target`` (which must not exist)."""
        async with self._hold():
            await self._conn.execute("VACUUM INTO ?", (str(target),))
