"""The model service: the bot's one handle on its add-on models, one :class:`KindService` per kind.

Why a facade over the kinds: the composition root builds one ``ModelService`` and the bot holds it as
``bot.models``; the cogs reach a kind's operations as ``bot.models.hypernets`` / ``.loras`` / ``.embeddings`` (or
``bot.models.kind("lora")``), and the start-up scan reconciles every kind's drop-in folders in one call.  All kinds
share one installer: one store folder, one lock, one garbage collector.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bot.config import Settings
from bot.models.folder_sync import FolderSyncReport
from bot.models.install import ModelInstaller
from bot.models.kind_service import AddOutcome, Downloader, KindService, folder_source_note
from bot.models.kinds import EMBEDDINGS, HYPERNETS, KINDS, LORAS
from bot.store import Store
from engine.fit import ModelShape
from engine.intake import IntakeLimits
from engine.intake.download import download as safe_download

__all__ = ["AddOutcome", "Downloader", "ModelService", "folder_source_note"]

log = logging.getLogger("bot.models")


class ModelService:
    """Every kind's service over one installer.  ``model_shape`` returns the running checkpoint's shape (text-context
    and attention widths) or None while the engine is not up; ``download`` fetches a link
    (:func:`engine.intake.download.download` by default).  ``settings`` may be replaced (tests do); the kinds read it
    when they act."""

    def __init__(self, store: Store, settings: Settings, *, model_shape: Callable[[], ModelShape | None] = lambda: None,
                 download: Downloader = safe_download) -> None:
        self.store = store
        self.settings = settings
        self.installer = ModelInstaller(store, settings.models.store_dir, IntakeLimits.from_settings(settings.intake))
        self._kinds = {kind.key: KindService(kind, self.installer, settings=lambda: self.settings,
                                             model_shape=model_shape, download=download) for kind in KINDS}
        self.hypernets = self._kinds[HYPERNETS.key]
        self.loras = self._kinds[LORAS.key]
        self.embeddings = self._kinds[EMBEDDINGS.key]

    def kind(self, key: str) -> KindService:
        """The service of one kind (``hypernet``, ``lora``, ``embedding``)."""
        return self._kinds[key]

    async def sync_model_folder(self) -> dict[str, FolderSyncReport]:
        """Reconcile every kind's drop-in folders with the registry (at start); the reports by kind."""
        return {key: await service.sync_model_folder() for key, service in self._kinds.items()}

    async def collect_garbage(self) -> list[str]:
        """Delete canonical files in the store dir that no registry row references; returns their names."""
        async with self.installer.lock:
            return await self.installer.collect()
