"""Job-state writes that wait out a database locked by another process instead of losing the outcome.

Why: a job's outcome must reach the user even when SQLite is locked by another process for longer than the busy
timeout (a backup, an admin's sqlite3 shell).  The write is retried for about a minute; after that the caller still
posts what it has, so the user loses nothing and the owner sees one clear log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from bot.db import DatabaseBusy

__all__ = ["BUSY_RETRY_DELAYS_S", "persist"]

log = logging.getLogger("bot.jobs")

#: Waits between attempts of a job-state write while another process holds the database lock (~1 minute in all).
BUSY_RETRY_DELAYS_S = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


async def persist(what: str, write: Callable[[], Awaitable[object]],
                  delays: tuple[float, ...] = BUSY_RETRY_DELAYS_S) -> bool:
    """Run a job-state write, retrying while the database is locked; False (logged) if it never got through."""
    for delay in (*delays, None):
        try:
            await write()
            return True
        except DatabaseBusy:
            if delay is None:
                break
            log.warning("%s: the database is locked; retrying in %.2f s", what, delay)
            await asyncio.sleep(delay)
    log.error("%s: gave up after the database stayed locked for %.0f s", what, sum(delays))
    return False
