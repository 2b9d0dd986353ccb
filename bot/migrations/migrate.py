"""Apply the schema migrations by ``PRAGMA user_version``.

Rules, so that a half-migrated database cannot exist:
* the version lives in the database header (``PRAGMA user_version``), which SQLite changes inside the same
  transaction as the schema, so each migration and its version bump commit together or not at all;
* a database newer than this code is refused before anything is written (an older bot would misread it);
* before migrating a database that already holds data, a consistent copy is written next to it
  (``<name>.v<from>-<UTC time>.bak``), so a bad upgrade can be undone by copying the file back.

Migration files must not contain their own BEGIN/COMMIT, and cannot toggle ``PRAGMA foreign_keys`` (a no-op inside a
transaction); a migration that rebuilds a table should use ``PRAGMA defer_foreign_keys = ON`` instead. Foreign keys
are checked with ``PRAGMA foreign_key_check`` before each migration commits.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bot.db import Database, StoreError, Tx

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_TX_CONTROL_RE = re.compile(r"^\s*(BEGIN|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE)\b", re.IGNORECASE)


class MigrationError(StoreError):
    """A migration could not be loaded or applied; the database was left at the version it had before."""


class SchemaTooNew(MigrationError):
    """The database was written by a newer version of Hypercord."""

    def __init__(self, path: Path, found: int, latest: int) -> None:
        self.path, self.found, self.latest = path, found, latest
        super().__init__(
            f"Database {path} has schema version {found}, but this version of Hypercord only knows versions up to "
            f"{latest}. It was written by a newer Hypercord: upgrade Hypercord, or restore a backup made before the "
            f"upgrade. Refusing to open it."
        )


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: the SQL that takes the database from ``version - 1`` to ``version``."""

    version: int
    name: str
    sql: str


@dataclass(frozen=True, slots=True)
class MigrationResult:
    """What :func:`migrate` did: versions before and after, and the backup file if one was made."""

    from_version: int
    to_version: int
    backup_path: Path | None

    @property
    def applied(self) -> int:
        return self.to_version - self.from_version


def load_migrations() -> list[Migration]:
    """Read the packaged ``NNNN_*.sql`` files; versions must run 1, 2, 3 ... with no gap or duplicate."""
    migrations: list[Migration] = []
    for entry in resources.files("bot.migrations").iterdir():
        match = _FILE_RE.match(entry.name)
        if match is None:
            if entry.name.endswith(".sql"):
                raise MigrationError(f"Migration file {entry.name!r} is not named NNNN_description.sql.")
            continue
        migrations.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    migrations.sort(key=lambda m: m.version)
    _check_sequence(migrations)
    return migrations


def _check_sequence(migrations: list[Migration]) -> None:
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"Migrations must be numbered 1, 2, 3 ... without gaps; expected {expected:04d}, "
                f"found {migration.version:04d}_{migration.name}."
            )


def split_statements(sql: str) -> list[str]:
    """Split a script into single statements (``CREATE TRIGGER ... BEGIN ...; END;`` stays whole)."""
    statements: list[str] = []
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if _strip_comments(buffer):
        raise MigrationError(f"Migration ends with an unfinished statement: {buffer.strip()[:80]!r}")
    return [s for s in statements if _strip_comments(s)]


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--")).strip()


async def _is_empty(tx: Tx) -> bool:
    return await tx.fetchval("SELECT count(*) FROM sqlite_master") == 0


async def migrate(db: Database, migrations: list[Migration] | None = None) -> MigrationResult:
    """Bring ``db`` to the newest schema version; see the module docstring for the guarantees."""
    if migrations is None:
        migrations = load_migrations()
    else:
        migrations = sorted(migrations, key=lambda m: m.version)
        _check_sequence(migrations)
    latest = migrations[-1].version if migrations else 0

    async with db.read() as tx:
        current = int(await tx.fetchval("PRAGMA user_version"))
        empty = await _is_empty(tx)
    if current > latest:
        raise SchemaTooNew(db.path, current, latest)
    if current == latest:
        return MigrationResult(current, current, None)

    backup: Path | None = None
    if not empty:
        backup = _backup_name(db.path, current)
        await db.backup_to(backup)
        log.info("backed up %s (schema version %d) to %s before migrating", db.path, current, backup)

    version = current
    for migration in migrations[current:]:
        await _apply(db, migration)
        version = migration.version
        log.info("applied migration %04d_%s to %s", migration.version, migration.name, db.path)
    return MigrationResult(current, version, backup)


async def _apply(db: Database, migration: Migration) -> None:
    statements = split_statements(migration.sql)
    for statement in statements:
        if _TX_CONTROL_RE.match(_strip_comments(statement)):
            raise MigrationError(
                f"Migration {migration.version:04d}_{migration.name} controls transactions itself; remove its "
                f"BEGIN/COMMIT (each migration already runs in one transaction)."
            )
    try:
        async with db.transaction() as tx:
            for statement in statements:
                await tx.execute(statement)
            violations = await tx.fetchall("PRAGMA foreign_key_check")
            if violations:
                raise MigrationError(
                    f"Migration {migration.version:04d}_{migration.name} left {len(violations)} foreign key "
                    f"violation(s), first in table {violations[0][0]!r}; nothing was changed."
                )
            # A PRAGMA cannot take a bound parameter; the version is an int from the file name.
            await tx.execute(f"PRAGMA user_version = {int(migration.version)}")
    except sqlite3.Error as error:
        raise MigrationError(
            f"Migration {migration.version:04d}_{migration.name} failed and was rolled back: {error}"
        ) from error


def _backup_name(path: Path, version: int) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    candidate = path.with_name(f"{path.name}.v{version}-{stamp}.bak")
    counter = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.v{version}-{stamp}-{counter}.bak")
        counter += 1
    return candidate
