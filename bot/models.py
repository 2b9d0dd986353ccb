"""The model service: the glue between Discord-side model management, safe intake and the registry.

Why a service separate from the cog: adding a model is a sequence with rules that hold whatever the source
(attachment, download link, the A1111-style drop-in folder) — check the name, skip files already installed,
run intake (sandboxed parse, canonical file by sha256), register, and on any refusal write nothing and say why
in one line.  Keeping it free of Discord IO lets tests drive it with a real store and the real intake, and
lets the cog stay a thin adapter.

Canonical files are shared between scopes (the same file added by two guilds is stored once), so a file is
deleted only by :meth:`ModelService.collect_garbage`, when no registry row references it any more.  One
asyncio lock serialises "intake + register" against "remove + collect garbage", so a file written by an
intake that is about to be registered is never collected in between.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from yarl import URL

from bot.config import Settings
from bot.errors import UserFacingError
from bot.model_compat import compatibility_note, engine_context_dim
from bot.store import DuplicateModel, Hypernet, InvalidName, NameTaken, NewHypernet, Store
from engine.download import download as safe_download
from engine.intake import IntakeLimits, IntakeRefused, IntakeResult, check_model_name, ingest_bytes

if TYPE_CHECKING:
    from bot.model_folder_sync import FolderSync, FolderSyncReport

__all__ = [
    "MAX_DESCRIPTION", "MAX_TRIGGER_WORDS", "AddOutcome", "ModelError", "ModelOptions",
    "ModelService", "compatibility_note", "engine_context_dim",
]

log = logging.getLogger(__name__)

MAX_DESCRIPTION = 500
MAX_TRIGGER_WORDS = 200
MiB = 1 << 20
_MODEL_SUFFIXES = (".pt", ".safetensors")
_CANONICAL = re.compile(r"^[0-9a-f]{64}\.safetensors$")

Progress = Callable[[int, int | None], Awaitable[None]]


class ModelError(UserFacingError):
    """A refusal whose one-line message is shown to the admin; nothing was written when it is raised."""


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """What an admin typed alongside the file (name None = the file stem, as in A1111)."""

    name: str | None = None
    description: str = ""
    trigger_words: str = ""
    default_multiplier: float = 1.0


@dataclass(frozen=True, slots=True)
class AddOutcome:
    """A registered model plus what the admin should know about it (intake warnings, size mismatch)."""

    hypernet: Hypernet
    notes: tuple[str, ...] = field(default=())


def _clean(text: str, limit: int, what: str) -> str:
    text = (text or "").strip()
    if len(text) > limit:
        raise ModelError(f"The {what} can be at most {limit} characters (this one has {len(text)}).")
    if any(not c.isprintable() and c not in "\n" for c in text):
        raise ModelError(f"The {what} cannot contain control characters.")
    return text


def _stem(filename: str) -> str:
    base = re.split(r"[/\\]", filename or "")[-1]
    return base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base


class ModelService:
    """Add (attachment bytes, link, drop-in folder), edit, enable/disable and remove hypernetworks.

    ``context_dim`` returns the running checkpoint's text-context width (768 SD1.x, 1024 SD2.x) or None while
    the engine is not up; ``download`` fetches a link (``engine.download`` by default).
    """

    def __init__(self, store: Store, settings: Settings, *, context_dim: Callable[[], int | None] = lambda: None,
                 download: Callable[..., Awaitable[bytes]] = safe_download) -> None:
        self.store = store
        self.settings = settings
        self._context_dim = context_dim
        self._download = download
        self._lock = asyncio.Lock()
        self._folder_sync: FolderSync | None = None  # made by the first sync_model_folder()

    # ---- paths and limits -------------------------------------------------------------------------------------

    @property
    def store_dir(self) -> Path:
        return Path(self.settings.models.store_dir)

    @property
    def folder(self) -> Path:
        return Path(self.settings.models.hypernetwork_dir)

    def _limits(self) -> IntakeLimits:
        return IntakeLimits.from_settings(self.settings.intake)

    def context_dim(self) -> int | None:
        try:
            return self._context_dim()
        except Exception:  # a flag must never break a listing
            log.debug("could not read the engine's context width", exc_info=True)
            return None

    def compatibility(self, hypernet: Hypernet) -> str | None:
        """The size-mismatch note for this model on the running checkpoint (see :func:`compatibility_note`)."""
        return compatibility_note(hypernet.sizes, self.context_dim())

    # ---- validation -------------------------------------------------------------------------------------------

    def check_options(self, options: ModelOptions) -> ModelOptions:
        """Options cleaned and in range; :class:`ModelError` otherwise."""
        limits = self.settings.limits
        multiplier = float(options.default_multiplier)
        if not math.isfinite(multiplier) or not limits.min_multiplier <= multiplier <= limits.max_multiplier:
            raise ModelError(f"The default multiplier must be between {limits.min_multiplier:g} and "
                             f"{limits.max_multiplier:g}.")
        name = options.name.strip() if options.name else None
        if name is not None:
            self._check_name(name)
        return ModelOptions(name=name or None, description=_clean(options.description, MAX_DESCRIPTION, "description"),
                            trigger_words=_clean(options.trigger_words, MAX_TRIGGER_WORDS, "trigger words"),
                            default_multiplier=multiplier)

    @staticmethod
    def _check_name(name: str) -> str:
        try:
            return check_model_name(name)
        except IntakeRefused as error:
            raise ModelError(f"`{name[:80]}` cannot be a model name: {error}.") from None

    async def _check_name_free(self, name: str, guild_id: int | None) -> None:
        """Refuse early (before the sandbox runs) when the name clashes with what this guild sees."""
        wanted = name.casefold()
        for existing in await self.store.hypernets.visible_names(guild_id, enabled_only=False):
            if existing.casefold() == wanted:
                raise ModelError(_name_taken(name, existing))

    async def _check_not_installed(self, sha256: str, guild_id: int | None) -> None:
        for row in await self.store.hypernets.by_sha256(sha256):
            if row.guild_id == guild_id:
                raise ModelError(f"This file is already installed here as `{row.name}`.")

    # ---- adding -----------------------------------------------------------------------------------------------

    async def add_from_bytes(self, data: bytes, *, filename: str, guild_id: int | None, added_by: int | None,
                             options: ModelOptions = ModelOptions(), source: str = "attachment",
                             source_detail: str | None = None) -> AddOutcome:
        """Validate ``data`` through intake and register it; :class:`ModelError` (nothing written) when refused."""
        try:
            return await self._add(data, filename=filename, guild_id=guild_id, added_by=added_by, options=options,
                                    source=source, source_detail=source_detail)
        except ModelError as error:
            log.info("model add refused (user %s, guild %s, %s %r): %s", added_by, guild_id, source,
                     source_detail or filename, error.message)
            raise

    async def add_from_url(self, url: str, *, guild_id: int | None, added_by: int | None,
                           options: ModelOptions = ModelOptions(), progress: Progress | None = None) -> AddOutcome:
        """Download ``url`` (https, allowed hosts only, size-capped) and add it like an attachment."""
        try:
            options = self.check_options(options)
            if options.name is not None:
                await self._check_name_free(options.name, guild_id)
            data, filename = await self._fetch(url, progress, named=options.name is not None)
        except ModelError as error:
            log.info("model add refused (user %s, guild %s, url %r): %s", added_by, guild_id, _public_url(url),
                     error.message)
            raise
        return await self.add_from_bytes(data, filename=filename, guild_id=guild_id, added_by=added_by,
                                         options=options, source="url", source_detail=_public_url(url))

    async def _fetch(self, url: str, progress: Progress | None, *, named: bool) -> tuple[bytes, str]:
        """The body and the file name the link ends with; refusals (host, size, status...) as one line."""
        filename = unquote(URL(url).path.rsplit("/", 1)[-1]) if url.strip() else ""
        if not named and not filename.lower().endswith(_MODEL_SUFFIXES):
            raise ModelError("The link does not end in a model file name: give the model a name with the `name` "
                             "option.")
        intake = self.settings.intake
        try:
            data = await self._download(url, allowed_hosts=list(intake.allowed_hosts),
                                        allow_private=intake.allow_private_addresses,
                                        max_bytes=intake.max_file_mb * MiB, timeout_s=intake.download_timeout_s,
                                        progress=progress)
        except IntakeRefused as error:
            raise ModelError(_refused(error)) from None
        return data, filename

    async def _add(self, data: bytes, *, filename: str, guild_id: int | None, added_by: int | None,
                   options: ModelOptions, source: str, source_detail: str | None) -> AddOutcome:
        options = self.check_options(options)
        name = options.name
        if name is None:
            stem = _stem(filename)
            try:
                name = check_model_name(stem)
            except IntakeRefused as error:
                raise ModelError(f"The file name `{stem[:80]}` cannot be a model name ({error}); give one with the "
                                 f"`name` option.") from None
        await self._check_name_free(name, guild_id)
        sha256 = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        await self._check_not_installed(sha256, guild_id)
        async with self._lock:
            result = await self._ingest(data, filename)
            hypernet = await self._register(result, name=name, guild_id=guild_id, added_by=added_by, options=options,
                                            source=source, source_detail=source_detail)
        notes = list(result.warnings)
        note = self.compatibility(hypernet)
        if note:
            notes.append(note)
        log.info("model %r added (id %s, guild %s, by %s, %s, sha256 %s)", hypernet.name, hypernet.id, guild_id,
                 added_by, source, hypernet.sha256[:10])
        return AddOutcome(hypernet, tuple(notes))

    async def _ingest(self, data: bytes | Path, filename: str) -> IntakeResult:
        try:
            return await ingest_bytes(data, filename=filename, store_dir=self.store_dir, limits=self._limits())
        except IntakeRefused as error:
            raise ModelError(_refused(error)) from None

    async def _register(self, result: IntakeResult, *, name: str, guild_id: int | None, added_by: int | None,
                        options: ModelOptions, source: str, source_detail: str | None,
                        enabled: bool = True) -> Hypernet:
        """Write the registry row; on a refusal, drop the canonical file again if nothing else uses it."""
        new = NewHypernet(
            name=name, guild_id=guild_id, sha256=result.sha256, file_name=f"{result.sha256}.safetensors",
            file_size=result.file_size, sizes=result.sizes, layer_structure=result.layer_structure,
            activation=result.activation, source=source, source_detail=source_detail, base_model=result.base_model,
            description=options.description, trigger_words=options.trigger_words,
            default_multiplier=options.default_multiplier, enabled=enabled, added_by=added_by)
        try:
            return await self.store.hypernets.add(new)
        except NameTaken as error:
            message = _name_taken(name, error.existing_name)
        except DuplicateModel as error:
            message = f"This file is already installed here as `{error.existing.name}`."
        except InvalidName as error:
            message = str(error)
        await self._collect(only={new.file_name})
        raise ModelError(message)

    # ---- the drop-in folder -----------------------------------------------------------------------------------

    async def sync_model_folder(self) -> FolderSyncReport:
        """Bring the folder's models (global, source ``folder``) in line with ``models.hypernetwork_dir``.

        Called at bot start and by the owners' ``/hypernets rescan``.  New files are added; changed files are
        re-validated and replace their model (keeping description, trigger words, default multiplier and
        enabled; a changed file that fails intake leaves the old model in place); models whose file vanished
        are removed; unreferenced canonical files are deleted.  As in A1111, of several files with the same
        stem the last in case-insensitive path order wins.  Refused files are logged and listed in the
        report; they never stop the scan.  Unchanged files are recognised by size and mtime, or after a
        restart by their sha256, so they are not parsed again.  The work is done by
        :class:`bot.model_folder_sync.FolderSync`.
        """
        if self._folder_sync is None:
            from bot.model_folder_sync import FolderSync  # it builds on this module, so it is imported when needed

            self._folder_sync = FolderSync(self)
        return await self._folder_sync.run()

    # ---- managing ---------------------------------------------------------------------------------------------

    async def find(self, name: str, guild_id: int | None, *, include_disabled: bool = True) -> Hypernet:
        """The model ``name`` (exact case, A1111's rule) visible in this guild; a "did you mean" otherwise."""
        found = await self.store.hypernets.by_name(name, guild_id)
        if found is not None and (include_disabled or found.enabled):
            return found
        names = await self.store.hypernets.visible_names(guild_id, enabled_only=not include_disabled)
        same = [n for n in names if n.casefold() == name.casefold()]
        hint = f" Did you mean `{same[0]}`? Names are case-sensitive." if same else ""
        raise ModelError(f"There is no hypernetwork named `{name[:80]}` here.{hint}")

    def require_manageable(self, hypernet: Hypernet, guild_id: int | None, *, is_owner: bool) -> None:
        """Guild admins manage their guild's models; global ones are the bot owners'."""
        if hypernet.guild_id is None and not is_owner:
            raise ModelError(f"`{hypernet.name}` is a global model: only the bot's owners can change it.")
        if hypernet.guild_id is not None and hypernet.guild_id != guild_id:
            raise ModelError(f"`{hypernet.name}` belongs to another server.")

    async def edit(self, hypernet: Hypernet, *, description: str | None = None, trigger_words: str | None = None,
                   default_multiplier: float | None = None) -> Hypernet:
        if description is None and trigger_words is None and default_multiplier is None:
            raise ModelError("Nothing to change: give a description, trigger words or a default multiplier.")
        checked = self.check_options(ModelOptions(
            description=description or "", trigger_words=trigger_words or "",
            default_multiplier=hypernet.default_multiplier if default_multiplier is None else default_multiplier))
        updated = await self.store.hypernets.update(
            hypernet.id, description=None if description is None else checked.description,
            trigger_words=None if trigger_words is None else checked.trigger_words,
            default_multiplier=None if default_multiplier is None else checked.default_multiplier)
        log.info("model %r (id %s) edited", hypernet.name, hypernet.id)
        return updated

    async def set_enabled(self, hypernet: Hypernet, enabled: bool) -> Hypernet:
        updated = await self.store.hypernets.update(hypernet.id, enabled=enabled)
        log.info("model %r (id %s) %s", hypernet.name, hypernet.id, "enabled" if enabled else "disabled")
        return updated

    async def remove(self, hypernet: Hypernet) -> Hypernet:
        """Delete the registry row (jobs keep the name and hash) and the canonical file if nothing else uses it."""
        if hypernet.source == "folder":
            raise ModelError(f"`{hypernet.name}` comes from the models folder (`{hypernet.source_detail}`): delete the "
                             f"file there and run `/hypernets rescan`, or disable it instead.")
        async with self._lock:
            removed = await self.store.hypernets.remove(hypernet.id)
            await self._collect(only={removed.file_name})
        log.info("model %r (id %s, guild %s) removed", removed.name, removed.id, removed.guild_id)
        return removed

    # ---- garbage collection -----------------------------------------------------------------------------------

    async def collect_garbage(self) -> list[str]:
        """Delete canonical files in the store dir that no registry row references; returns their names."""
        async with self._lock:
            return await self._collect()

    async def _collect(self, only: set[str] | None = None) -> list[str]:
        """(Lock held.) Delete unreferenced canonical files, all of them or only those named in ``only``."""
        referenced = await self.store.hypernets.all_files()

        def sweep() -> list[str]:
            if not self.store_dir.is_dir():
                return []
            candidates = [self.store_dir / n for n in only] if only is not None else list(self.store_dir.iterdir())
            deleted = []
            for path in candidates:
                if _CANONICAL.match(path.name) and path.name not in referenced and path.is_file() \
                        and not path.is_symlink():
                    path.unlink(missing_ok=True)
                    deleted.append(path.name)
            return deleted

        deleted = await asyncio.to_thread(sweep)
        for name in deleted:
            log.info("deleted unreferenced model file %s", name)
        return deleted


def _refused(error: IntakeRefused) -> str:
    text = str(error).strip()
    return f"Refused: {text}" + ("" if text.endswith((".", "!", "?")) else ".")


def _public_url(url: str) -> str:
    """The link without its query and fragment, which may hold access tokens (kept out of the database and logs)."""
    try:
        return str(URL(url.strip()).with_query(None).with_fragment(None))[:500]
    except (ValueError, TypeError):
        return "(invalid link)"


def _name_taken(name: str, existing: str) -> str:
    if name == existing:
        return f"A model named `{name}` already exists here."
    return (f"A model named `{existing}` already exists here; names must differ by more than upper/lower case, "
            f"so pick another name than `{name}`.")
