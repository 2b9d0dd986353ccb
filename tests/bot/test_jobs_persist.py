"""Job-state writes survive another process holding the SQLite lock beyond the busy timeout."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.db import DatabaseBusy
from bot.jobs import persist
from bot.store import NewJob, Store
from tests.requests import new_job as make_job

pytestmark = pytest.mark.asyncio


def new_job() -> NewJob:
    return make_job(1, 2, 3, prompt="a castle", seed=7, steps=4, width=64, height=64)


def hold_exclusive_lock(path: Path, seconds: float, locked: threading.Event) -> None:
    """Another connection (as a backup tool or an admin's sqlite3 shell would) takes the write lock."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    locked.set()
    threading.Event().wait(seconds)
    conn.execute("ROLLBACK")
    conn.close()


@contextlib.asynccontextmanager
async def locked_database(path: Path, seconds: float) -> AsyncIterator[None]:
    """Another connection holds the write lock for ``seconds`` from entry; exit waits until it lets go."""
    locked = threading.Event()
    holder = threading.Thread(target=hold_exclusive_lock, args=(path, seconds, locked))
    holder.start()
    await asyncio.to_thread(locked.wait, 5)
    try:
        yield
    finally:
        await asyncio.to_thread(holder.join)


async def test_write_is_retried_until_the_lock_is_released(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "db.sqlite3", busy_timeout_ms=50)
    try:
        job = await store.jobs.create(new_job())
        async with locked_database(tmp_path / "db.sqlite3", 0.6):
            with pytest.raises(DatabaseBusy):  # a single attempt fails: the lock outlives the busy timeout
                await store.jobs.mark_done(job.id, ["1/0.png"], 1.0)
            ok = await persist("test", lambda: store.jobs.mark_done(job.id, ["1/0.png"], 1.0), delays=(0.2,) * 10)
        assert ok
        done = await store.jobs.get(job.id)
        assert done is not None and done.status == "done" and done.image_paths == ("1/0.png",)
    finally:
        await store.close()


async def test_gives_up_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = await Store.open(tmp_path / "db.sqlite3", busy_timeout_ms=20)
    try:
        job = await store.jobs.create(new_job())
        async with locked_database(tmp_path / "db.sqlite3", 1.0):
            ok = await persist(f"job {job.id} done", lambda: store.jobs.mark_done(job.id, [], 1.0),
                               delays=(0.05, 0.05))
        assert not ok
        assert f"job {job.id} done: gave up after the database stayed locked" in caplog.text
        still = await store.jobs.get(job.id)
        assert still is not None and still.status == "queued"
    finally:
        await store.close()
