"""What admins and owners do with the models of one kind, free of Discord so tests drive it directly.

Why one class for every kind: adding a model has rules that hold whatever the kind and source (attachment,
download link, the A1111-style drop-in folders), and those rules live in :class:`~bot.models.install.ModelInstaller`;
this class adds the admin-facing operations around it — option checks, downloads, edit, enable/disable, remove, the
folder rescan, and the note saying when a model does little on the running checkpoint — parameterised by the kind
(:class:`~bot.models.kinds.ModelKind`: its registry, its words, whether it has a strength).  Every refusal is a
:class:`~bot.models.errors.ModelError` with one line for the admin, and nothing is written then.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

from yarl import URL

from bot.config import Settings
from bot.models.errors import ModelError, refused
from bot.models.folder_sync import FolderSync, FolderSyncReport
from bot.models.install import ModelInstaller, ModelOptions
from bot.models.kinds import ModelKind
from engine.fit import ModelShape
from engine.intake import IntakeRefused, clean_text, quote_text

__all__ = ["MAX_DESCRIPTION", "MAX_TRIGGER_WORDS", "AddOutcome", "Downloader", "KindService", "folder_source_note"]

log = logging.getLogger("bot.models")

MAX_DESCRIPTION = 500
MAX_TRIGGER_WORDS = 200
MiB = 1 << 20
_MODEL_SUFFIXES = (".pt", ".ckpt", ".bin", ".safetensors")

Progress = Callable[[int, int | None], Awaitable[None]]


class Downloader(Protocol):
    """:func:`engine.intake.download.download`'s signature (tests pass their own)."""

    def __call__(self, url: str, *, allowed_hosts: list[str], allow_private: bool, max_bytes: int, timeout_s: float,
                 progress: Progress | None = None) -> Awaitable[bytes]: ...


@dataclass(frozen=True, slots=True)
class AddOutcome:
    """A registered model plus what the admin should know about it (intake warnings, a checkpoint mismatch)."""

    model: Any
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


def folder_source_note(model: Any, kind: ModelKind) -> str:
    """Why a folder model cannot be removed from Discord, and what to do instead."""
    return (f"`{model.name}` comes from the models folder (`{model.source_detail}`): delete the file there and "
            f"run `/{kind.command} rescan`, or disable it instead.")


def _public_url(url: str) -> str:
    """The link without its query and fragment, which may hold access tokens (kept out of the database and logs)."""
    try:
        return str(URL(url.strip()).with_query(None).with_fragment(None))[:500]
    except (ValueError, TypeError):
        return "(invalid link)"


class KindService:
    """Add (attachment bytes, link, drop-in folders), edit, enable/disable and remove the models of one kind.

    ``settings`` returns the bot's settings as they are now; ``model_shape`` the running checkpoint's shape or None
    while the engine is not up; ``download`` fetches a link.
    """

    def __init__(self, kind: ModelKind, installer: ModelInstaller, *, settings: Callable[[], Settings],
                 model_shape: Callable[[], ModelShape | None], download: Downloader) -> None:
        self.kind = kind
        self.installer = installer
        self.registry = kind.repository(installer.store)
        self._settings, self._model_shape, self._download = settings, model_shape, download
        self.folder_sync = FolderSync(installer, kind, kind.folders(settings().models))

    # ---- the running checkpoint -------------------------------------------------------------------------------

    def compatibility(self, model: Any) -> str | None:
        """Why this model does little on the running checkpoint (a sentence of its own); None if it fits."""
        try:
            return self.kind.fit_note(model, self._model_shape())
        except Exception:  # a flag must never break a listing
            log.debug("could not judge %s %r against the engine's model", self.kind.noun, model.name, exc_info=True)
            return None

    # ---- validation -------------------------------------------------------------------------------------------

    def check_options(self, options: ModelOptions) -> ModelOptions:
        """Options cleaned and in range; :class:`ModelError` otherwise."""
        limits = self._settings().limits
        multiplier = float(options.default_multiplier) if self.kind.has_strength else 1.0
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
            log.info("%s add refused (user %s, guild %s, %s %s): %s", self.kind.noun, added_by, guild_id, source,
                     clean_text(source_detail or filename), clean_text(error.message, 500))
            raise

    async def add_from_url(self, url: str, *, guild_id: int | None, added_by: int | None,
                           options: ModelOptions = ModelOptions(), progress: Progress | None = None) -> AddOutcome:
        """Download ``url`` (https, allowed hosts only, size-capped) and add it like an attachment."""
        try:
            options = self.check_options(options)
            if options.name is not None:
                await self.installer.check_name_free(self.kind, options.name, guild_id)
            data, filename = await self._fetch(url, progress, named=options.name is not None)
        except ModelError as error:
            log.info("%s add refused (user %s, guild %s, url %s): %s", self.kind.noun, added_by, guild_id,
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
        intake = self._settings().intake
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
        installer, kind = self.installer, self.kind
        options = self.check_options(options)
        name = options.name or installer.check_name(_stem(filename), from_file=True)
        await installer.check_name_free(kind, name, guild_id)
        sha256 = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        await installer.check_not_installed(kind, sha256, guild_id)
        async with installer.lock:
            result = await installer.ingest(kind, data, filename)
            model = await installer.register(kind, result, name=name, guild_id=guild_id, added_by=added_by,
                                             options=options, source=source, source_detail=source_detail)
        notes = list(result.warnings)
        note = self.compatibility(model)
        if note:
            notes.append(note)
        log.info("%s %r added (id %s, guild %s, by %s, %s, sha256 %s)", kind.noun, model.name, model.id, guild_id,
                 added_by, source, model.sha256[:10])
        return AddOutcome(model, tuple(notes))

    # ---- the drop-in folders ----------------------------------------------------------------------------------

    async def sync_model_folder(self) -> FolderSyncReport:
        """Bring this kind's folder models in line with its drop-in folders (see :class:`FolderSync`)."""
        return await self.folder_sync.run()

    # ---- managing ---------------------------------------------------------------------------------------------

    async def find(self, name: str, guild_id: int | None, *, include_disabled: bool = True) -> Any:
        """The model ``name`` (exact case, A1111's rule) visible in this guild; a "did you mean" otherwise."""
        found = await self.registry.by_name(name, guild_id)
        if found is not None and (include_disabled or found.enabled):
            return found
        names = await self.registry.visible_names(guild_id, enabled_only=not include_disabled)
        same = [n for n in names if n.casefold() == name.casefold()]
        hint = f" Did you mean `{same[0]}`? Names are case-sensitive." if same else ""
        raise ModelError(f"There is no {self.kind.noun} named `{quote_text(name, 80)}` here.{hint}")

    def require_manageable(self, model: Any, guild_id: int | None, *, is_owner: bool) -> None:
        """Guild admins manage their guild's models; global ones are the bot owners'."""
        if model.guild_id is None and not is_owner:
            raise ModelError(f"`{model.name}` is a global model: only the bot's owners can change it.")
        if model.guild_id is not None and model.guild_id != guild_id:
            raise ModelError(f"`{model.name}` belongs to another server.")

    async def edit(self, model: Any, *, description: str | None = None, trigger_words: str | None = None,
                   default_multiplier: float | None = None) -> Any:
        if description is None and trigger_words is None and default_multiplier is None:
            strength = ", trigger words or a default multiplier" if self.kind.has_strength else " or trigger words"
            raise ModelError(f"Nothing to change: give a description{strength}.")
        checked = self.check_options(ModelOptions(
            description=description or "", trigger_words=trigger_words or "",
            default_multiplier=model.default_multiplier if default_multiplier is None else default_multiplier))
        updated = await self.registry.update(
            model.id, description=None if description is None else checked.description,
            trigger_words=None if trigger_words is None else checked.trigger_words,
            default_multiplier=None if default_multiplier is None else checked.default_multiplier)
        log.info("%s %r (id %s) edited", self.kind.noun, model.name, model.id)
        return updated

    async def set_enabled(self, model: Any, enabled: bool) -> Any:
        updated = await self.registry.update(model.id, enabled=enabled)
        log.info("%s %r (id %s) %s", self.kind.noun, model.name, model.id, "enabled" if enabled else "disabled")
        return updated

    async def remove(self, model: Any) -> Any:
        """Delete the registry row (jobs keep the name and hash) and the canonical file if nothing else uses it."""
        if model.source == "folder":
            raise ModelError(folder_source_note(model, self.kind))
        async with self.installer.lock:
            removed = await self.registry.remove(model.id)
            await self.installer.collect(only={removed.file_name})
        log.info("%s %r (id %s, guild %s) removed", self.kind.noun, removed.name, removed.id, removed.guild_id)
        return removed
