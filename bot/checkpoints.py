"""The checkpoints this bot can render with: the owner's config entries and drop-in folder, checked and hashed.

Why a catalog in the bot: a request names its checkpoint (``/imagine model:``, a server's default, or the one a
hypernetwork was trained on), so the bot must know what is installed, what each is (family, A1111's hashes) and
its per-checkpoint defaults, all without loading a model.  The files are inspected with
:func:`engine.checkpoints.inspect_checkpoint` (torch-free: the safetensors header, hashes cached on disk); the
worker loads them by the same names (:class:`engine.protocol.CheckpointSpec`).

Sources, in order (a name seen earlier wins): ``[checkpoints.models.NAME]`` entries; every ``.safetensors`` file
and diffusers folder under ``checkpoints.folder`` (A1111's ``models/Stable-diffusion``; the name is the file stem,
subfolders fine; ``.ckpt`` files are listed with their refusal); and ``models.checkpoint`` under its own name
(the single checkpoint of earlier versions, so an old config keeps working).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from bot.config import CheckpointEntry, Settings
from engine.checkpoints import (
    BUILT_IN_CHECKPOINTS,
    CheckpointInfo,
    FileHashes,
    HashCache,
    inspect_checkpoint,
    recorded_hash_matches,
    split_checkpoint_title,
)
from engine.names import name_problem
from engine.protocol import CheckpointSpec

__all__ = ["CatalogEntry", "CheckpointCatalog", "CheckpointDefaults", "legacy_name"]

log = logging.getLogger(__name__)

Inspect = Callable[..., CheckpointInfo]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x"}


@dataclass(frozen=True, slots=True)
class CheckpointDefaults:
    """Per-checkpoint defaults for options the user left empty (None: the server-wide default)."""

    sampler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    clip_skip: int | None = None

    @classmethod
    def of(cls, entry: CheckpointEntry) -> CheckpointDefaults:
        return cls(entry.sampler or None, entry.steps or None, entry.cfg_scale or None, entry.width or None,
                   entry.height or None, entry.clip_skip or None)


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One installed checkpoint.  ``refusal`` says why it cannot be used (then it is listed but never offered)."""

    name: str
    source: str
    display_name: str = ""
    family: str | None = None  # "sd1" / "sd2"; None for a hub id (known once a worker loads it)
    hashes: FileHashes | None = None  # sha256 and A1111's old AutoV1 hash (what 2022 hypernetwork files record)
    sd_checkpoint_name: str | None = None  # A1111's model name, what hypernetworks record with the hash
    vae: str = ""
    prediction: str = "auto"
    defaults: CheckpointDefaults = CheckpointDefaults()
    refusal: str | None = None

    @property
    def label(self) -> str:
        return self.display_name or self.name

    @property
    def model_hash(self) -> str | None:
        """A1111's "Model hash" (AutoV2: the sha256's first 10 hex digits)."""
        return self.hashes.autov2 if self.hashes else None

    @property
    def family_label(self) -> str:
        return _FAMILY_LABELS.get(self.family or "", "unknown family")

    @property
    def usable(self) -> bool:
        return self.refusal is None

    def spec(self) -> CheckpointSpec:
        return CheckpointSpec(self.name, self.source, self.vae, self.prediction)


def legacy_name(source: str) -> str:
    """The name ``models.checkpoint`` gets in the catalog: ``tiny``, a file's stem, a folder's or hub id's last part."""
    if source in BUILT_IN_CHECKPOINTS:
        return source
    last = source.rstrip("/").rsplit("/", 1)[-1]
    return Path(last).stem if last.endswith((".safetensors", ".ckpt")) else last


class CheckpointCatalog:
    """The installed checkpoints by name, and the default one."""

    def __init__(self, entries: Iterable[CatalogEntry], default: str) -> None:
        self.entries: dict[str, CatalogEntry] = {}
        for entry in entries:
            self.entries.setdefault(entry.name, entry)
        if default not in self.entries:
            raise ValueError(f"the default checkpoint {default!r} is not installed")
        self.default = default

    @classmethod
    def build(cls, settings: Settings, *, inspect: Inspect = inspect_checkpoint,
              hash_cache: HashCache | None = None) -> CheckpointCatalog:
        """Scan the config entries and the folder (hashing files once; the cache keeps them)."""
        cfg = settings.checkpoints
        root = Path(cfg.folder)
        found: list[CatalogEntry] = []
        for name, entry in cfg.models.items():
            found.append(_with_vae(_entry(name, entry.source, entry, inspect, root, hash_cache), Path(cfg.vae_folder)))
        if root.is_dir():
            for path in _folder_models(root):
                found.append(_entry(path.stem if path.is_file() else path.name, str(path), None, inspect, root, hash_cache))
        legacy = settings.models.checkpoint
        found.append(_entry(legacy_name(legacy), legacy, None, inspect, root, hash_cache))
        default = cfg.default or legacy_name(legacy)
        return cls(found, default)

    def usable(self) -> list[CatalogEntry]:
        return [e for e in self.entries.values() if e.usable]

    def get(self, name: str) -> CatalogEntry | None:
        return self.entries.get(name)

    def worker_specs(self) -> tuple[CheckpointSpec, ...]:
        """What the workers may load, the default first."""
        ordered = sorted(self.usable(), key=lambda e: e.name != self.default)
        return tuple(e.spec() for e in ordered)

    def trained_on(self, recorded_hash: str | None, recorded_name: str | None) -> CatalogEntry | None:
        """The installed checkpoint a hypernetwork file says it was trained on (A1111's ``sd_checkpoint`` hash, else
        its ``sd_checkpoint_name``), or None."""
        for entry in self.usable():
            if entry.hashes is not None and recorded_hash_matches(recorded_hash, entry.hashes):
                return entry
        if recorded_name:
            for entry in self.usable():
                if recorded_name in (entry.sd_checkpoint_name, entry.name):
                    return entry
        return None

    def trained_on_record(self, base_model: str | None) -> CatalogEntry | None:
        """:meth:`trained_on` for what intake recorded as a model's ``base_model`` (A1111's ``name [hash]``, or one
        of the two; see :func:`engine.checkpoints.split_checkpoint_title`)."""
        name, recorded_hash = split_checkpoint_title(base_model)
        return self.trained_on(recorded_hash, name)


def _folder_models(root: Path) -> list[Path]:
    """Single files and diffusers folders under ``root`` (a folder with ``model_index.json`` is one model)."""
    out: list[Path] = []
    for path in sorted(root.rglob("*")):
        if any(parent in out for parent in path.parents):
            continue
        folder = path.is_dir() and (path / "model_index.json").is_file()
        if folder or (path.is_file() and path.suffix.lower() in (".safetensors", ".ckpt")):
            out.append(path)
    return out


def _with_vae(found: CatalogEntry, folder: Path) -> CatalogEntry:
    """A config entry's VAE: a path as given, else a file name in ``checkpoints.vae_folder``; a missing one refuses the
    checkpoint (rendering it without the VAE the owner chose would silently change its images)."""
    if not found.vae or found.refusal:
        return found
    given = Path(found.vae).expanduser()
    path = given if given.is_absolute() or given.exists() else folder / given
    if not path.is_file():
        return replace(found, refusal=f"its VAE `{found.vae[:120]}` does not exist (looked in `{folder}`); put the file "
                                      f"there or fix `checkpoints.models.{found.name}.vae`")
    return replace(found, vae=str(path))


def _entry(name: str, source: str, entry: CheckpointEntry | None, inspect: Inspect, root: Path,
           cache: HashCache | None) -> CatalogEntry:
    found = CatalogEntry(name=name, source=source, display_name=entry.display_name if entry else "",
                         vae=entry.vae if entry else "", prediction=entry.prediction if entry else "auto",
                         defaults=CheckpointDefaults.of(entry) if entry else CheckpointDefaults())
    problem = name_problem(name)
    if problem is not None:
        return replace(found, refusal=f"`{name[:80]}` cannot be a checkpoint name ({problem}); rename the file")
    if not source:
        return replace(found, refusal=f"`checkpoints.models.{name}` has no `source`; give a file, folder or hub id")
    if source in BUILT_IN_CHECKPOINTS:
        return replace(found, family="sd1")
    path = Path(source).expanduser()
    if not path.exists():
        if _HUB_ID.fullmatch(source):
            return found  # a hub id: loaded (and checked) by the worker on an owner's machine
        return replace(found, refusal=f"`{source}` does not exist; check the path")
    try:
        info = inspect(path, prediction=None if found.prediction == "auto" else found.prediction, root=root,
                       cache=cache)
    except (OSError, ValueError) as exc:
        return replace(found, refusal=f"`{path.name}` could not be read ({exc})")
    return replace(found, family=info.family, hashes=info.hashes, sd_checkpoint_name=info.sd_checkpoint_name,
                   refusal=info.refusal)
