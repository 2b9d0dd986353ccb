"""The steps every new model goes through, whatever its kind and source: name, duplicates, sandboxed intake,
registration.

Why one installer shared by uploads, links and the drop-in folders of every kind: the rules must hold whatever the
source — check the name, skip files already installed in that scope, run intake (sandboxed parse as the kind the
admin is adding, canonical file by sha256), register, and on any refusal write nothing and say why in one line.
Canonical files live in one store folder for all kinds and are shared between scopes (the same file added by two
guilds is stored once), so a file is deleted only by :meth:`ModelInstaller.collect`, when no registry row of any
kind references it any more.  :attr:`ModelInstaller.lock` serialises "intake + register" against "remove +
collect", so a file written by an intake that is about to be registered is never collected in between; callers
hold it around their whole sequence.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.models.errors import ModelError, bad_name, refused
from bot.models.kinds import ModelKind
from bot.store import DuplicateModel, InvalidName, NameTaken, Store
from bot.store.models import all_model_files
from engine.intake import IntakeLimits, IntakeRefused, IntakeResult, Source, ingest_bytes, purge_temp
from engine.names import InvalidModelName, check_model_name

__all__ = ["ModelInstaller", "ModelOptions"]

log = logging.getLogger("bot.models")

_CANONICAL = re.compile(r"^[0-9a-f]{64}\.safetensors$")


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """What an admin typed alongside the file (name None = the file stem, as in A1111)."""

    name: str | None = None
    description: str = ""
    trigger_words: str = ""
    default_multiplier: float = 1.0


class ModelInstaller:
    """Intake and registration against one store and one folder of canonical files."""

    def __init__(self, store: Store, store_dir: str | Path, limits: IntakeLimits) -> None:
        self.store = store
        self.store_dir = Path(store_dir)
        self.limits = limits
        self.lock = asyncio.Lock()

    # ---- checks (no lock needed) --------------------------------------------------------------------------

    @staticmethod
    def check_name(name: str, *, from_file: bool = False) -> str:
        """``name`` if it passes the name rule, else :class:`ModelError` saying why."""
        try:
            return check_model_name(name)
        except InvalidModelName as error:
            raise bad_name(name, error, from_file=from_file) from None

    async def check_name_free(self, kind: ModelKind, name: str, guild_id: int | None) -> None:
        """Refuse early (before the sandbox runs) when the name clashes with what this guild sees of the kind."""
        wanted = name.casefold()
        for existing in await kind.repository(self.store).visible_names(guild_id, enabled_only=False):
            if existing.casefold() == wanted:
                raise ModelError(str(NameTaken(name, existing)))

    async def check_not_installed(self, kind: ModelKind, sha256: str, guild_id: int | None) -> None:
        for row in await kind.repository(self.store).by_sha256(sha256):
            if row.guild_id == guild_id:
                raise ModelError(str(DuplicateModel(row.name)))

    # ---- steps (lock held) ----------------------------------------------------------------------------------

    async def ingest(self, kind: ModelKind, data: Source, filename: str, *, in_folder: bool = False) -> IntakeResult:
        """Run intake as ``kind`` on the bytes of an upload or on a file the caller opened once (``in_folder``: from a
        drop-in folder); a refusal becomes a :class:`ModelError`."""
        try:
            return await ingest_bytes(data, filename=filename, store_dir=self.store_dir, limits=self.limits,
                                      kind=kind.file_kind)
        except IntakeRefused as error:
            raise refused(error, kind, in_folder=in_folder) from None

    async def register(self, kind: ModelKind, result: IntakeResult, *, name: str, guild_id: int | None,
                       added_by: int | None, options: ModelOptions, source: str, source_detail: str | None,
                       enabled: bool = True) -> Any:
        """Write the registry row; on a refusal, drop the canonical file again if nothing else uses it."""
        common: dict[str, Any] = dict(
            name=name, guild_id=guild_id, sha256=result.sha256, file_name=f"{result.sha256}.safetensors",
            file_size=result.file_size, source=source, source_detail=source_detail, base_model=result.base_model,
            description=options.description, trigger_words=options.trigger_words,
            default_multiplier=options.default_multiplier, enabled=enabled, added_by=added_by)
        new = kind.new_row(result, common)
        try:
            return await kind.repository(self.store).add(new)
        except (NameTaken, DuplicateModel, InvalidName) as error:
            message = str(error)
        await self.collect(only={new.file_name})
        raise ModelError(message)

    async def collect(self, only: set[str] | None = None) -> list[str]:
        """Delete unreferenced canonical files, all of them or only those named in ``only``; returns their names."""
        referenced = await all_model_files(self.store.db)
        store_dir = self.store_dir

        def sweep() -> list[str]:
            if not store_dir.is_dir():
                return []
            candidates = [store_dir / n for n in only] if only is not None else list(store_dir.iterdir())
            deleted = []
            for path in candidates:
                if _CANONICAL.match(path.name) and path.name not in referenced and path.is_file() \
                        and not path.is_symlink():
                    path.unlink(missing_ok=True)
                    deleted.append(path.name)
            return deleted

        deleted = await asyncio.to_thread(sweep)
        for file_name in deleted:
            log.info("deleted unreferenced model file %s", file_name)
        return deleted

    async def purge_temp(self) -> int:
        """Remove intake temp folders a crashed process left (only safe while no intake runs: hold the lock)."""
        if not self.store_dir.is_dir():
            return 0
        return await asyncio.to_thread(purge_temp, self.store_dir)
