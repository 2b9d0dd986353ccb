"""Add-on model management on the bot's side (hypernetworks, LoRAs, embeddings): installing (uploads, links, the
drop-in folders) and administering.

* :mod:`bot.models.kinds` — :class:`ModelKind`: what differs between the kinds, as data;
* :mod:`bot.models.install` — :class:`ModelInstaller`: the steps every new model goes through, and the lock;
* :mod:`bot.models.kind_service` — :class:`KindService`: add, edit, enable/disable, remove, rescan, fit notes;
* :mod:`bot.models.service` — :class:`ModelService`: one KindService per kind, the start-up folder scan;
* :mod:`bot.models.folder_sync` — :class:`FolderSync`: a kind's drop-in folders against the registry;
* :mod:`bot.models.errors` — :class:`ModelError`, the one-line refusal.

No Discord here: the command groups in ``cogs`` (``/hypernets``, ``/loras``, ``/embeddings``) are the adapters.
"""

from bot.models.errors import ModelError
from bot.models.folder_sync import FolderSync, FolderSyncReport
from bot.models.install import ModelInstaller, ModelOptions
from bot.models.kind_service import AddOutcome, Downloader, KindService, folder_source_note
from bot.models.kinds import EMBEDDINGS, HYPERNETS, KINDS, LORAS, FolderRoot, ModelKind, kind_for_file
from bot.models.service import ModelService

__all__ = ["EMBEDDINGS", "HYPERNETS", "KINDS", "LORAS", "AddOutcome", "Downloader", "FolderRoot", "FolderSync",
           "FolderSyncReport", "KindService", "ModelError", "ModelInstaller", "ModelKind", "ModelOptions",
           "ModelService", "folder_source_note", "kind_for_file"]
