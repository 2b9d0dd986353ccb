"""What the two repositories share: the database and clock they hold, and turning a row into a frozen dataclass.

Why: rows leave the store as frozen dataclasses whose fields are named like the columns, except the few stored in
another form (JSON lists, 0/1 for booleans); one helper copies the plain columns so each repository only says how
its converted ones are read.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from bot.db import Database, Tx
from bot.store.errors import NotFound

__all__ = ["Clock", "Repository", "fetch_by_id", "from_row"]

Clock = Callable[[], float]
T = TypeVar("T")


class Repository:
    """One table's typed access; ``clock`` stamps the rows it writes (a test passes its own)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db, self._clock = db, clock


def from_row(kind: type[T], row: sqlite3.Row, **converted: Any) -> T:
    """``kind`` built from ``row``: every field not given in ``converted`` is copied from the column of its name."""
    plain = {f.name: row[f.name] for f in dataclasses.fields(kind) if f.name not in converted}  # type: ignore[arg-type]
    return kind(**plain, **converted)


async def fetch_by_id(tx: Tx, table: str, what: str, row_id: int) -> sqlite3.Row:
    """The row ``row_id`` of ``table`` (a fixed name, never user text); :class:`NotFound` names it ``what``."""
    row = await tx.fetchone(f"SELECT * FROM {table} WHERE id = ?", (row_id,))
    if row is None:
        raise NotFound(what, row_id)
    return row
