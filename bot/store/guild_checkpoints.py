"""Each server's checkpoint choices: its default checkpoint and the checkpoints its admins disallowed.

Why by name and not by file: checkpoints are installed by the owner (:mod:`bot.checkpoints`), and a name may
disappear from the catalog or come back with a new file; a server's choice stays with the name.  What a server may
use is every installed checkpoint but the disallowed ones (new installs are available at once); its default is
never disallowed.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.store.base import Repository

__all__ = ["GuildCheckpointStore", "GuildCheckpoints"]


@dataclass(frozen=True, slots=True)
class GuildCheckpoints:
    """One server's choices; ``default`` None: the owner's default."""

    default: str | None = None
    disallowed: frozenset[str] = frozenset()


class GuildCheckpointStore(Repository):
    """Reads and writes ``guild_checkpoints`` (rows only for checkpoints a server made a choice about)."""

    async def get(self, guild_id: int | None) -> GuildCheckpoints:
        if guild_id is None:
            return GuildCheckpoints()
        async with self._db.read() as tx:
            rows = await tx.fetchall("SELECT name, is_default, disallowed FROM guild_checkpoints WHERE guild_id = ?",
                                     (guild_id,))
        default = next((r["name"] for r in rows if r["is_default"]), None)
        return GuildCheckpoints(default, frozenset(r["name"] for r in rows if r["disallowed"]))

    async def set_default(self, guild_id: int, name: str | None, *, by: int | None = None) -> None:
        """Make ``name`` the server's default (allowing it again); None: back to the owner's default."""
        now = self._clock()
        async with self._db.transaction() as tx:
            await tx.execute("UPDATE guild_checkpoints SET is_default = 0, updated_by = ?, updated_at = ? "
                             "WHERE guild_id = ? AND is_default = 1", (by, now, guild_id))
            if name is not None:
                await tx.execute(
                    "INSERT INTO guild_checkpoints (guild_id, name, is_default, disallowed, updated_by, updated_at) "
                    "VALUES (?, ?, 1, 0, ?, ?) ON CONFLICT (guild_id, name) DO UPDATE SET is_default = 1, "
                    "disallowed = 0, updated_by = excluded.updated_by, updated_at = excluded.updated_at",
                    (guild_id, name, by, now))
            await tx.execute("DELETE FROM guild_checkpoints WHERE guild_id = ? AND is_default = 0 AND disallowed = 0",
                             (guild_id,))

    async def set_allowed(self, guild_id: int, name: str, allowed: bool, *, by: int | None = None) -> None:
        """Allow or disallow ``name`` on the server (the caller refuses disallowing the default first)."""
        now = self._clock()
        async with self._db.transaction() as tx:
            await tx.execute(
                "INSERT INTO guild_checkpoints (guild_id, name, is_default, disallowed, updated_by, updated_at) "
                "VALUES (?, ?, 0, ?, ?, ?) ON CONFLICT (guild_id, name) DO UPDATE SET disallowed = excluded.disallowed, "
                "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
                (guild_id, name, int(not allowed), by, now))
            await tx.execute("DELETE FROM guild_checkpoints WHERE guild_id = ? AND is_default = 0 AND disallowed = 0",
                             (guild_id,))
