"""A kind's A1111-style drop-in folders kept in line with the registry (models of source ``folder``, global).

Why a class of its own: a rescan is a reconciliation (what is on disk against the rows of source ``folder``) with
rules of its own — the last file of a stem wins, changed files keep the admin's edits, unchanged files are not
parsed again — while every file still goes through the installer's steps (name check, sandboxed intake,
registration, garbage collection) under the installer's lock, so a folder file is held to the same rules as an
upload.  Each file is opened once (:func:`engine.intake.open_in_folder`) and that open file is hashed, checked and
installed, so a file swapped or a link re-pointed meanwhile cannot slip in.  One bad file never stops a scan: every
file's failure, expected or not, is caught, logged and reported, and the good files around it are installed.
One instance per kind (hypernetworks, LoRAs, embeddings; the LoRAs' two folders ``models/Lora`` and
``models/LyCORIS`` are one list, as in A1111).  Called at bot start and by the owners' ``/<kind> rescan``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.models.errors import ModelError, refused
from bot.models.install import ModelInstaller, ModelOptions
from bot.models.kinds import FolderRoot, ModelKind
from engine.intake import FolderEntry, IntakeRefused, clean_text, file_sha256, open_in_folder, scan_folder

__all__ = ["FolderSync", "FolderSyncReport"]

log = logging.getLogger("bot.models")

OUR_SIDE = ("Not checked: something went wrong on our side (the log has the details); the other files were scanned, "
            "run the rescan again later.")


@dataclass(slots=True)
class FolderSyncReport:
    """What one folder scan did: names of models; refused or skipped files as ``(relative path, reason)``, both
    safe to show (:func:`engine.intake.clean_text`)."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)
    deleted_files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.added)} added, {len(self.updated)} updated, {len(self.removed)} removed, "
                f"{self.unchanged} unchanged, {len(self.refused)} refused")

    def refuse(self, relpath: str, reason: str) -> None:
        self.refused.append((clean_text(relpath, 200), clean_text(reason, 400)))


@dataclass(frozen=True)
class _Found:
    """A listed file and the folder it is in; ``detail`` is what its row stores (:meth:`FolderRoot.detail`)."""

    root: FolderRoot
    entry: FolderEntry

    @property
    def detail(self) -> str:
        return self.root.detail(self.entry.relpath)


class FolderSync:
    """Rescans of one kind's folders; remembers ``(size, mtime)`` of each file last seen installed.

    Rules of a rescan: new files are added; changed files are re-validated and replace their model (keeping
    description, trigger words, default multiplier and enabled; a changed file that fails intake leaves the old
    model in place); models whose file vanished are removed; unreferenced canonical files are deleted.  As in
    A1111, of several files with the same stem the last in case-insensitive path order wins.  Refused files, and
    files the listing skipped for a reason (a link pointing outside the folder...), are logged and listed in the
    report; they never stop the scan.  Unchanged files are recognised by size and mtime, or after a restart by
    their sha256, so they are not parsed again.
    """

    def __init__(self, installer: ModelInstaller, kind: ModelKind, roots: Sequence[FolderRoot]) -> None:
        self._installer = installer
        self.kind = kind
        self.roots = tuple(roots)
        self._registry = kind.repository(installer.store)
        self._known: dict[str, tuple[int, float]] = {}

    async def run(self) -> FolderSyncReport:
        """One rescan (see the class docstring)."""
        installer, report = self._installer, FolderSyncReport()
        async with installer.lock:  # no intake runs meanwhile, so any temp folder in the store is a crash's leftover
            await installer.purge_temp()
            rows = {m.source_detail: m for m in await self._folder_rows() if m.source_detail}
            winners: dict[str, _Found] = {}
            for found in await self._listing(report):  # by folder, then by path ignoring case: the last of a stem wins
                previous = winners.get(found.entry.stem.casefold())
                if previous is not None:
                    report.refuse(previous.detail, f"Skipped: shadowed by `{clean_text(found.detail)}` (same name).")
                winners[found.entry.stem.casefold()] = found
            wanted = {found.detail: found for found in winners.values()}
            for detail, row in rows.items():
                if detail not in wanted:
                    await self._registry.remove(row.id)
                    self._known.pop(detail, None)
                    report.removed.append(row.name)
            for found in wanted.values():
                await self._sync_guarded(found, rows.get(found.detail), report)
            report.deleted_files = await installer.collect()
        for relpath, reason in report.refused:
            log.warning("%s folder: %s not installed: %s", self.kind.noun, relpath, reason)
        log.info("%s folders %s: %s", self.kind.noun, ", ".join(clean_text(r.path, 300) for r in self.roots),
                 report.summary())
        return report

    async def _listing(self, report: FolderSyncReport) -> list[_Found]:
        found: list[_Found] = []
        for root in self.roots:
            scan = await asyncio.to_thread(scan_folder, root.path, self.kind.extensions, any_case=self.kind.any_case)
            for relpath, reason in scan.skipped:
                report.refuse(root.detail(relpath), f"Skipped: {reason}.")
            found += [_Found(root, entry) for entry in scan.entries]
        return found

    async def _folder_rows(self) -> list[Any]:
        rows: list[Any] = []
        while page := await self._registry.search(None, include_disabled=True, offset=len(rows), limit=100):
            rows += page
        return [m for m in rows if m.source == "folder"]

    async def _sync_guarded(self, found: _Found, row: Any | None, report: FolderSyncReport) -> None:
        """One file, whatever happens to it: a refusal is reported, a bug is logged and reported too."""
        try:
            await self._sync_entry(found, row, report)
        except ModelError as error:
            report.refuse(found.detail, error.message)
        except IntakeRefused as error:
            report.refuse(found.detail, refused(error, self.kind, in_folder=True).message)
        except Exception as error:  # a bug: logged with its traceback, on one line (names in it came from the folder)
            trace = "".join(traceback.format_exception(error))
            log.error("%s folder: checking %s failed: %s", self.kind.noun, clean_text(found.detail, 300),
                      clean_text(trace, 8000))
            report.refuse(found.detail, OUR_SIDE)
        else:
            return
        if row is not None and await self._registry.get(row.id) is None:
            report.removed.append(row.name)  # replaced row was dropped but the new one could not be added

    async def _sync_entry(self, found: _Found, row: Any | None, report: FolderSyncReport) -> None:
        installer, entry, detail = self._installer, found.entry, found.detail
        stamp = (entry.size, entry.mtime)
        same_name = row is not None and row.name == entry.stem
        if same_name and self._known.get(detail) == stamp:
            report.unchanged += 1
            return
        with await asyncio.to_thread(open_in_folder, found.root.path, entry.relpath) as f:
            st = os.fstat(f.fileno())
            stamp = (st.st_size, st.st_mtime)  # of the file actually read, which may have changed since the listing
            if same_name:
                assert row is not None
                if await asyncio.to_thread(file_sha256, f) == row.sha256:
                    self._known[detail] = stamp
                    report.unchanged += 1
                    return
            installer.check_name(entry.stem)
            result = await installer.ingest(self.kind, f, entry.relpath.rsplit("/", 1)[-1], in_folder=True)
        options, enabled = ModelOptions(name=entry.stem), True
        if row is not None:  # the file changed: carry the admin's edits over, then replace the old row
            options = ModelOptions(name=entry.stem, description=row.description, trigger_words=row.trigger_words,
                                   default_multiplier=row.default_multiplier)
            enabled = row.enabled
            await self._registry.remove(row.id)
        await installer.register(self.kind, result, name=entry.stem, guild_id=None, added_by=None, options=options,
                                 source="folder", source_detail=detail, enabled=enabled)
        self._known[detail] = stamp
        (report.updated if row is not None else report.added).append(entry.stem)
