"""Hypernetwork management on the bot's side: installing (uploads, links, the drop-in folder) and administering.

* :mod:`bot.models.install` — :class:`ModelInstaller`: the steps every new model goes through, and the lock;
* :mod:`bot.models.service` — :class:`ModelService`: add, edit, enable/disable, remove, rescan, fit notes;
* :mod:`bot.models.folder_sync` — :class:`FolderSync`: the drop-in folder against the registry;
* :mod:`bot.models.errors` — :class:`ModelError`, the one-line refusal.

No Discord here: ``cogs/hypernets.py`` is the adapter.
"""

from bot.models.errors import ModelError
from bot.models.folder_sync import FolderSync, FolderSyncReport
from bot.models.install import ModelInstaller, ModelOptions
from bot.models.service import AddOutcome, Downloader, ModelService, folder_source_note

__all__ = ["AddOutcome", "Downloader", "FolderSync", "FolderSyncReport", "ModelError", "ModelInstaller", "ModelOptions",
           "ModelService", "folder_source_note"]
