"""Safe intake of model files from strangers: container checks, the sandboxed parse, the canonical store, downloads.

Torch-free entry points for the bot process; the parse itself runs in a child (:mod:`engine.intake.sandbox`, the
only module here that imports torch).  :mod:`engine.intake.download` (aiohttp) is imported by name where needed,
so the sandbox child never loads it.

* :mod:`engine.intake.base` — the refusal error and message helpers;
* :mod:`engine.intake.containers` — pure-Python checks of zip / pickle / safetensors structure, nothing executed;
* :mod:`engine.intake.ingest` — the steps (size, hash, checks, sandbox, verify, store by sha256);
* :mod:`engine.intake.folder` — listing A1111's drop-in folder;
* :mod:`engine.intake.download` — fetching a link from an allowed host, refusing internal addresses.
"""

from engine.intake.base import IntakeRefused, MiB, human_size, quote_text
from engine.intake.folder import FolderEntry, scan_folder
from engine.intake.ingest import (
    UNET_WIDTHS,
    IntakeLimits,
    IntakeResult,
    display_name,
    file_sha256,
    ingest_bytes,
    ingest_file,
    purge_temp,
    run_sandbox,
)

__all__ = [
    "UNET_WIDTHS", "FolderEntry", "IntakeLimits", "IntakeRefused", "IntakeResult", "MiB", "display_name", "file_sha256",
    "human_size", "ingest_bytes", "ingest_file", "purge_temp", "quote_text", "run_sandbox", "scan_folder",
]
