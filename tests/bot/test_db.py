"""bot/db.py on real SQLite files: PRAGMAs, the one-writer lock, rollback, and the busy timeout across processes."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
import pytest_asyncio

from bot.db import Database, DatabaseBusy


@pytest_asyncio.fixture
async def db(tmp_path: Path):
    database = await Database.open(tmp_path / "sub" / "t.db", busy_timeout_ms=1234)
    async with database.transaction() as tx:
        await tx.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    yield database
    await database.close()


@pytest.mark.asyncio
async def test_pragmas_are_set(db: Database) -> None:
    assert (db.path.parent.name, db.path.exists()) == ("sub", True)
    assert str(await db.pragma("journal_mode")).lower() == "wal"
    assert await db.pragma("foreign_keys") == 1
    assert await db.pragma("synchronous") == 1  # NORMAL
    assert await db.pragma("busy_timeout") == 1234


@pytest.mark.asyncio
async def test_exception_rolls_back_and_frees_the_connection(db: Database) -> None:
    with pytest.raises(ZeroDivisionError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (v) VALUES ('lost')")
            1 / 0  # noqa: B018
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO t (v) VALUES ('kept')")
    async with db.read() as tx:
        assert [r["v"] for r in await tx.fetchall("SELECT v FROM t")] == ["kept"]


@pytest.mark.asyncio
async def test_cancelled_transaction_is_rolled_back(db: Database) -> None:
    entered = asyncio.Event()

    async def writer() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (v) VALUES ('cancelled')")
            entered.set()
            await asyncio.Event().wait()  # never set: stays here until cancelled

    task = asyncio.create_task(writer())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO t (v) VALUES ('after')")
    async with db.read() as tx:
        assert [r["v"] for r in await tx.fetchall("SELECT v FROM t")] == ["after"]


@pytest.mark.asyncio
async def test_readers_never_see_another_tasks_uncommitted_rows(db: Database) -> None:
    inside = asyncio.Event()
    release = asyncio.Event()

    async def writer() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (v) VALUES ('pending')")
            inside.set()
            await release.wait()
            raise RuntimeError("abandon")

    task = asyncio.create_task(writer())
    await inside.wait()

    async def reader() -> list[str]:
        async with db.read() as tx:
            return [r["v"] for r in await tx.fetchall("SELECT v FROM t")]

    read = asyncio.create_task(reader())
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(RuntimeError, match="abandon"):
        await task
    assert await read == []


@pytest.mark.asyncio
async def test_nested_use_raises_instead_of_hanging(db: Database) -> None:
    async with db.transaction():
        with pytest.raises(RuntimeError, match="nested use of the database"):
            async with db.read():
                pass


@pytest.mark.asyncio
async def test_many_concurrent_writers_on_one_connection(db: Database) -> None:
    async def write(i: int) -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (v) VALUES (?)", (f"a{i}",))
            await asyncio.sleep(0)  # yield mid-transaction so the others pile up on the lock
            await tx.execute("INSERT INTO t (v) VALUES (?)", (f"b{i}",))

    await asyncio.gather(*(write(i) for i in range(60)))
    async with db.read() as tx:
        assert await tx.fetchval("SELECT count(*) FROM t") == 120


@pytest.mark.asyncio
async def test_busy_timeout_waits_for_another_process_and_zero_fails_fast(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    patient = await Database.open(path, busy_timeout_ms=30_000)
    impatient = await Database.open(path, busy_timeout_ms=0)
    other = sqlite3.connect(path, isolation_level=None)  # another process's connection (an operator's shell)
    try:
        async with patient.transaction() as tx:
            await tx.execute("CREATE TABLE t (v TEXT)")
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t VALUES ('other')")

        with pytest.raises(DatabaseBusy, match="busy right now"):
            async with impatient.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES ('impatient')")

        asyncio.get_running_loop().call_later(0.2, other.execute, "COMMIT")
        async with patient.transaction() as tx:  # waits in SQLite's busy handler until the COMMIT above
            await tx.execute("INSERT INTO t VALUES ('patient')")
        async with patient.read() as tx:
            assert sorted(r[0] for r in await tx.fetchall("SELECT v FROM t")) == ["other", "patient"]
    finally:
        other.close()
        await impatient.close()
        await patient.close()


@pytest.mark.asyncio
async def test_bad_busy_timeout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="busy_timeout_ms"):
        await Database.open(tmp_path / "t.db", busy_timeout_ms=-1)
