"""Safe intake of model files from strangers: identification, container checks, the sandboxed parse, the canonical
store, downloads.

Torch-free entry points for the bot process; the parse itself runs in a child (:mod:`engine.intake.sandbox`, the
only module here that imports torch).  :mod:`engine.intake.download` (aiohttp) is imported by name where needed,
so the sandbox child never loads it.

* :mod:`engine.intake.base` — the refusal error, :func:`clean_text` for every text from strangers;
* :mod:`engine.intake.kinds` / :mod:`engine.intake.identify` — what a file is (a LoRA, a checkpoint, a web page...)
  and the refusal for a file that is not of the kind being added (a hypernetwork, a LoRA, an embedding);
* :mod:`engine.intake.facts` — what intake learned about each kind (the registry's details);
* :mod:`engine.intake.safetensors_header`, :mod:`engine.intake.pickles`, :mod:`engine.intake.containers` — bounded
  pure-Python checks of safetensors / pickle / zip structure, nothing executed;
* :mod:`engine.intake.ingest` — the steps (size, one snapshot + hash, checks, sandbox, verify, store by sha256);
  :mod:`engine.intake.files` — the files they work on (the snapshot, the hashes, opening a path once);
* :mod:`engine.intake.children` / :mod:`engine.intake.confine` — running the sandbox child, and its confinement;
* :mod:`engine.intake.folder` — listing A1111's drop-in folder, opening its files once;
* :mod:`engine.intake.download` — fetching a link from an allowed host, refusing internal addresses.
"""

from engine.intake.base import IntakeRefused, MiB, clean_text, human_size, quote_text
from engine.intake.children import IntakeLimits, run_sandbox
from engine.intake.facts import EmbeddingFacts, HypernetFacts, LoraFacts, ModelFacts
from engine.intake.folder import (
    EMBEDDING_EXTENSIONS,
    EXTENSIONS,
    LORA_EXTENSIONS,
    FolderEntry,
    FolderScan,
    open_in_folder,
    scan_folder,
)
from engine.intake.identify import identify, link_refusal, refusal, what_it_is
from engine.intake.ingest import (
    UNET_WIDTHS,
    IntakeResult,
    Source,
    display_name,
    file_sha256,
    ingest_bytes,
    ingest_file,
    purge_temp,
)
from engine.intake.kinds import INSTALLABLE, FileIdentity, FileKind, kind_article, kind_noun

__all__ = [
    "EMBEDDING_EXTENSIONS", "EXTENSIONS", "INSTALLABLE", "LORA_EXTENSIONS", "UNET_WIDTHS", "EmbeddingFacts",
    "FileIdentity", "FileKind", "FolderEntry", "FolderScan", "HypernetFacts", "IntakeLimits", "IntakeRefused",
    "IntakeResult", "LoraFacts", "MiB", "ModelFacts", "Source", "clean_text", "display_name", "file_sha256",
    "human_size", "identify", "ingest_bytes", "ingest_file", "kind_article", "kind_noun", "link_refusal",
    "open_in_folder", "purge_temp", "quote_text", "refusal", "run_sandbox", "scan_folder", "what_it_is",
]
