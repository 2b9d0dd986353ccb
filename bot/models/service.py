"""The model service: what admins and owners do with hypernetworks, free of Discord so tests drive it directly.

Why a service separate from the cog: adding a model has rules that hold whatever the source (attachment, download
link, the A1111-style drop-in folder), and those rules live in :class:`~bot.models.install.ModelInstaller`; this
module adds the admin-facing operations around it — option checks, downloads, edit, enable/disable, remove, the
folder rescan, and the note saying when a model does little on the running checkpoint (:func:`engine.fit.fit_note`).
Every refusal is a :class:`~bot.models.errors.ModelError` with one line for the admin, and nothing is written then.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote

from yarl import URL

from bot.config import Settings
from bot.models.errors import ModelError, refused
from bot.models.folder_sync import FolderSync, FolderSyncReport
from bot.models.install import ModelInstaller, ModelOptions
from bot.store import Hypernet, Store
from engine.fit import ModelShape, fit_note
from engine.intake import IntakeLimits, IntakeRefused, clean_text, quote_text
from engine.intake.download import download as safe_download

__all__ = ["MAX_DESCRIPTION", "MAX_TRIGGER_WORDS", "AddOutcome", "Downloader", "ModelService"]

log = logging.getLogger("bot.models")

MAX_DESCRIPTION = 500
MAX_TRIGGER_WORDS = 200
MiB = 1 << 20
_MODEL_SUFFIXES = (".pt", ".safetensors")

Progress = Callable[[int, int | None], Awaitable[None]]


class Downloader(Protocol):
    """:func:`engine.intake.download.download`'s signature (tests pass their own)."""

    def __call__(self, url: str, *, allowed_hosts: list[str], allow_private: bool, max_bytes: int, timeout_s: float,
                 progress: Progress | None = None) -> Awaitable[bytes]: ...


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


def folder_source_note(hypernet: Hypernet) -> str:
    """Why a folder model cannot be removed from Discord, and what to do instead."""
    return (f"`{hypernet.name}` comes from the models folder (`{hypernet.source_detail}`): delete the file there and "
            f"run `/hypernets rescan`, or disable it instead.")


class ModelService:
    """Add (attachment bytes, link, drop-in folder), edit, enable/disable and remove hypernetworks.

    ``model_shape`` returns the running checkpoint's shape (text-context and attention widths) or None while the
    engine is not up; ``download`` fetches a link (:func:`engine.intake.download.download` by default).
    """

    def __init__(self, store: Store, settings: Settings, *, model_shape: Callable[[], ModelShape | None] = lambda: None,
                 download: Downloader = safe_download) -> None:
        self.store = store
        self.settings = settings
        self.installer = ModelInstaller(store, settings.models.store_dir, IntakeLimits.from_settings(settings.intake))
        self.folder_sync = FolderSync(self.installer, settings.models.hypernetwork_dir)
        self._model_shape = model_shape
        self._download = download

    # ---- the running checkpoint -------------------------------------------------------------------------------

    def compatibility(self, hypernet: Hypernet) -> str | None:
        """Why this model does little on the running checkpoint (capitalised, for a line of its own); None if it fits."""
        try:
            shape = self._model_shape()
        except Exception:  # a flag must never break a listing
            log.debug("could not read the engine's model shape", exc_info=True)
            return None
        note = fit_note(hypernet.sizes, shape)
        return None if note is None else note[0].upper() + note[1:]

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
            self.installer.check_name(name)
        return ModelOptions(name=name or None, description=_clean(options.description, MAX_DESCRIPTION, "description"),
                            trigger_words=_clean(options.trigger_words, MAX_TRIGGER_WORDS, "trigger words"),
                            default_multiplier=multiplier)

    # ---- adding -----------------------------------------------------------------------------------------------

    async def add_from_bytes(self, data: bytes, *, filename: str, guild_id: int | None, added_by: int | None,
                             options: ModelOptions = ModelOptions(), source: str = "attachment",
                             source_detail: str | None = None) -> AddOutcome:
        """Validate ``data`` through intake and register it; :class:`ModelError` (nothing written) when refused."""
        detail = clean_text(source_detail, 200) if source_detail else None  # an attachment's name, a link: shown later
        try:
            return await self._add(data, filename=filename, guild_id=guild_id, added_by=added_by, options=options,
                                   source=source, source_detail=detail)
        except ModelError as error:
            log.info("model add refused (user %s, guild %s, %s %s): %s", added_by, guild_id, source,
                     clean_text(source_detail or filename), clean_text(error.message, 500))
            raise

    async def add_from_url(self, url: str, *, guild_id: int | None, added_by: int | None,
                           options: ModelOptions = ModelOptions(), progress: Progress | None = None) -> AddOutcome:
        """Download ``url`` (https, allowed hosts only, size-capped) and add it like an attachment."""
        try:
            options = self.check_options(options)
            if options.name is not None:
                await self.installer.check_name_free(options.name, guild_id)
            data, filename = await self._fetch(url, progress, named=options.name is not None)
        except ModelError as error:
            log.info("model add refused (user %s, guild %s, url %s): %s", added_by, guild_id,
                     clean_text(_public_url(url), 500), clean_text(error.message, 500))
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
            raise refused(error) from None
        return data, filename

    async def _add(self, data: bytes, *, filename: str, guild_id: int | None, added_by: int | None,
                   options: ModelOptions, source: str, source_detail: str | None) -> AddOutcome:
        installer = self.installer
        options = self.check_options(options)
        name = options.name or installer.check_name(_stem(filename), from_file=True)
        await installer.check_name_free(name, guild_id)
        sha256 = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        await installer.check_not_installed(sha256, guild_id)
        async with installer.lock:
            result = await installer.ingest(data, filename)
            hypernet = await installer.register(result, name=name, guild_id=guild_id, added_by=added_by,
                                                options=options, source=source, source_detail=source_detail)
        notes = list(result.warnings)
        note = self.compatibility(hypernet)
        if note:
            notes.append(note)
        log.info("model %r added (id %s, guild %s, by %s, %s, sha256 %s)", hypernet.name, hypernet.id, guild_id,
                 added_by, source, hypernet.sha256[:10])
        return AddOutcome(hypernet, tuple(notes))

    # ---- the drop-in folder -----------------------------------------------------------------------------------

    async def sync_model_folder(self) -> FolderSyncReport:
        """Bring the folder's models in line with ``models.hypernetwork_dir`` (see :class:`FolderSync`)."""
        return await self.folder_sync.run()

    # ---- managing ---------------------------------------------------------------------------------------------

    async def find(self, name: str, guild_id: int | None, *, include_disabled: bool = True) -> Hypernet:
        """The model ``name`` (exact case, A1111's rule) visible in this guild; a "did you mean" otherwise."""
        found = await self.store.hypernets.by_name(name, guild_id)
        if found is not None and (include_disabled or found.enabled):
            return found
        names = await self.store.hypernets.visible_names(guild_id, enabled_only=not include_disabled)
        same = [n for n in names if n.casefold() == name.casefold()]
        hint = f" Did you mean `{same[0]}`? Names are case-sensitive." if same else ""
        raise ModelError(f"There is no hypernetwork named `{quote_text(name, 80)}` here.{hint}")

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
            raise ModelError(folder_source_note(hypernet))
        async with self.installer.lock:
            removed = await self.store.hypernets.remove(hypernet.id)
            await self.installer.collect(only={removed.file_name})
        log.info("model %r (id %s, guild %s) removed", removed.name, removed.id, removed.guild_id)
        return removed

    async def collect_garbage(self) -> list[str]:
        """Delete canonical files in the store dir that no registry row references; returns their names."""
        async with self.installer.lock:
            return await self.installer.collect()


def _public_url(url: str) -> str:
    """The link without its query and fragment, which may hold access tokens (kept out of the database and logs)."""
    try:
        return str(URL(url.strip()).with_query(None).with_fragment(None))[:500]
    except (ValueError, TypeError):
        return "(invalid link)"
