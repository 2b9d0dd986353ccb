"""What a checkpoint (or VAE) file or folder is, without loading it: family, prediction, hashes, refusal.

Why before loading: the bot lists ``models/checkpoints/`` and matches hypernetworks' training checkpoints without
torch, and the worker refuses a file before reading gigabytes of it.  Everything here reads bounded parts of a file:
the first 4 KiB, the safetensors header (at most 8 MiB, :mod:`engine.intake.safetensors_header`), a diffusers
folder's small JSON files; the hashes read the whole file once (then come from the :class:`HashCache`).

Prediction type (epsilon or v-prediction) is decided in this order: an explicit override (per-checkpoint setting);
an A1111 config next to the file (``NAME.yaml``, as A1111 reads it: ``parameterization: "v"`` means v-prediction,
any other config epsilon); a diffusers folder's scheduler config; SD 1.x is epsilon.  For an SD 2.x single file
with none of these, ``prediction`` is None here and the worker runs A1111's own test on the loaded UNet.
Torch-free.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from engine.checkpoints.architecture import DerivedConfigs, derive_configs, vae_config, vae_prefix
from engine.checkpoints.assets import config_folder, template
from engine.checkpoints.families import Detection, Kind, detect
from engine.checkpoints.hashes import FileHashes, HashCache, file_hashes
from engine.checkpoints.layout import ArchitectureError, Shapes
from engine.checkpoints.refusals import (
    FAMILY_LABELS,
    damaged_refusal,
    detection_refusal,
    folder_refusal,
    mismatch_refusal,
    not_safetensors_refusal,
    vae_refusal,
    with_article,
)
from engine.intake.identify import HEAD_BYTES, identify
from engine.intake.kinds import FileIdentity, FileKind
from engine.intake.safetensors_header import HeaderError, header_length, read_header

__all__ = ["PREDICTIONS", "CheckpointInfo", "VaeInfo", "inspect_checkpoint", "inspect_vae", "read_shapes"]

PREDICTIONS = ("epsilon", "v_prediction")
_YAML_BYTES = 64 << 10
_V_PARAMETERIZATION = re.compile(r"""^\s*parameterization:\s*["']?v["']?\s*(?:#.*)?$""", re.MULTILINE)
_WHAT = {Kind.SDXL_BASE: "SDXL base checkpoint", Kind.SDXL_REFINER: "SDXL refiner checkpoint",
         Kind.SD3: "Stable Diffusion 3 checkpoint", Kind.FLUX: "Flux checkpoint", Kind.VAE: "VAE",
         Kind.OTHER_INPUTS: "conditioned UNet (depth, pix2pix or upscaler)", Kind.UNKNOWN: "unknown file"}


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """One checkpoint as found on disk.

    ``name``: what A1111 writes as ``Model`` (the file stem, or the folder's name); ``sd_checkpoint_name``: A1111's
    ``model_name``, the path under the checkpoint folder without suffix and with ``/`` as ``_`` (what a hypernet
    records as ``sd_checkpoint_name``); ``format``: ``safetensors``, ``diffusers`` or ``other``; ``size``: bytes;
    ``kind`` / ``family`` (``sd1``, ``sd2``, or that of a refused file where known) / ``what`` (in words);
    ``prediction``: ``epsilon`` / ``v_prediction``, None = decided when loaded (A1111's test) and
    ``prediction_source`` (``override``, ``yaml``, ``scheduler``, ``family``, or ``""``); ``context_dim``: the text
    width the UNet attends to; ``has_vae``; ``hashes`` (single files that can be loaded, when asked for);
    ``refusal``: None, or the owner-facing reason it will not load; ``configs``: the derived diffusers configs.
    """

    path: Path
    name: str
    sd_checkpoint_name: str
    format: str
    size: int
    kind: Kind
    family: str | None
    what: str
    prediction: str | None = None
    prediction_source: str = ""
    context_dim: int | None = None
    has_vae: bool = False
    hashes: FileHashes | None = None
    refusal: str | None = None
    configs: DerivedConfigs | None = field(default=None, repr=False, compare=False)

    @property
    def usable(self) -> bool:
        return self.refusal is None

    @property
    def model_hash(self) -> str | None:
        """A1111's ``Model hash`` (AutoV2, 10 hex digits); None for folders and refused files."""
        return self.hashes.autov2 if self.hashes else None


@dataclass(frozen=True, slots=True)
class VaeInfo:
    """A separate VAE file: ``name`` (A1111's ``VAE`` in the infotext: the file's name, suffix included), ``size``,
    ``hashes`` (``VAE hash`` = AutoV2), ``refusal``, the derived diffusers ``config`` and where its tensors start
    (``prefix``)."""

    path: Path
    name: str
    size: int
    hashes: FileHashes | None = None
    refusal: str | None = None
    config: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    prefix: str = ""


def _what(found: Detection) -> str:
    label = FAMILY_LABELS.get(found.family or "", "")
    if found.kind is Kind.CHECKPOINT:
        return f"{label} checkpoint"
    if found.kind is Kind.INPAINTING:
        return f"{label} inpainting checkpoint".strip()
    if found.kind is Kind.UNET_ONLY:
        return f"{label} UNet without text encoder".strip()
    if found.kind in (Kind.LORA, Kind.EMBEDDING):
        what = found.label or ("LoRA" if found.kind is Kind.LORA else "textual-inversion embedding")
        return f"{what} for {label}" if label else what
    return _WHAT.get(found.kind, found.kind.value)


def read_shapes(f: IO[bytes], size: int) -> Shapes:
    """Tensor names and shapes from the open safetensors file's header (:class:`HeaderError` when it is broken)."""
    return {name: entry.shape for name, entry in read_header(f, size).tensors.items()}


def _sd_checkpoint_name(path: Path, root: Path | None) -> str:
    try:
        relative = path.relative_to(root) if root is not None else Path(path.name)
    except ValueError:
        relative = Path(path.name)
    return str(relative.with_suffix("") if path.is_file() else relative).replace(os.sep, "_").replace("/", "_")


def _prediction(path: Path, family: str | None, override: str | None) -> tuple[str | None, str]:
    if override not in (None, "", "auto"):
        if override not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {override!r}; use auto, epsilon or v_prediction")
        return override, "override"
    yaml = path.with_suffix(".yaml")
    if path.is_file() and yaml.is_file():
        with yaml.open("rb") as f:
            text = f.read(_YAML_BYTES).decode("utf-8", "replace")
        return ("v_prediction" if _V_PARAMETERIZATION.search(text) else "epsilon"), "yaml"
    return ("epsilon", "family") if family == "sd1" else (None, "")


def _open_safetensors(path: Path) -> tuple[Shapes | None, FileIdentity | None, str]:
    """``(shapes, None, "")`` for a readable safetensors file; ``(None, identity, "")`` for a file of another kind;
    ``(None, None, problem)`` for a safetensors file whose header is broken."""
    size = path.stat().st_size
    with path.open("rb") as f:
        if header_length(f.read(HEAD_BYTES)) is None:
            return None, identify(f, size), ""
        try:
            return read_shapes(f, size), None, ""
        except HeaderError as error:
            return None, None, str(error)


def _inspect_file(path: Path, base: dict[str, Any], override: str | None, cache: HashCache | None,
                  with_hashes: bool) -> CheckpointInfo:
    shapes, identity, problem = _open_safetensors(path)
    if shapes is None:
        refused = not_safetensors_refusal(path.name, identity) if identity else damaged_refusal(path.name, problem)
        return CheckpointInfo(**base, format="other", kind=Kind.UNKNOWN, family=None, what="unreadable file",
                              refusal=refused)
    found = detect(shapes)
    facts: dict[str, Any] = {**base, "format": "safetensors", "kind": found.kind, "family": found.family,
                             "what": _what(found), "context_dim": found.context_dim, "has_vae": found.has_vae}
    refusal = detection_refusal(path.name, found)
    if refusal is not None:
        return CheckpointInfo(**facts, refusal=refusal)
    family = found.family or ""
    prediction, source = _prediction(path, family, override)
    try:
        configs = derive_configs(shapes, family, config_folder(family, prediction))
    except ArchitectureError as error:
        return CheckpointInfo(**facts, refusal=mismatch_refusal(path.name, family, str(error)))
    hashes = file_hashes(path, cache) if with_hashes else None
    return CheckpointInfo(**facts, prediction=prediction, prediction_source=source, hashes=hashes, configs=configs)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _component_class(index: dict[str, Any], name: str) -> str | None:
    entry = index.get(name)
    return str(entry[1]) if isinstance(entry, list) and len(entry) == 2 else None


def _folder_detection(folder: Path) -> Detection | None:
    """A diffusers folder's family from its configs; None when it is not a Stable Diffusion pipeline folder."""
    index, unet = _read_json(folder / "model_index.json"), _read_json(folder / "unet" / "config.json")
    if not index or not unet:
        return None
    pipeline = str(index.get("_class_name", ""))
    context = unet.get("cross_attention_dim")
    if "XL" in pipeline or unet.get("addition_embed_type") == "text_time":
        return Detection(Kind.SDXL_REFINER if context == 1280 else Kind.SDXL_BASE, "sdxl", context_dim=context)
    if "StableDiffusion3" in pipeline:
        return Detection(Kind.SD3)
    if "Flux" in pipeline:
        return Detection(Kind.FLUX)
    if _component_class(index, "unet") != "UNet2DConditionModel" or \
            _component_class(index, "text_encoder") != "CLIPTextModel":
        return Detection(Kind.UNKNOWN)
    family = "sd2" if context == 1024 else "sd1"
    channels = unet.get("in_channels", 4)
    kind = Kind.INPAINTING if channels == 9 else Kind.OTHER_INPUTS if channels != 4 else Kind.CHECKPOINT
    return Detection(kind, family, in_channels=channels, context_dim=context, text_dim=context, has_vae=True)


def _inspect_folder(folder: Path, base: dict[str, Any], override: str | None) -> CheckpointInfo:
    found = _folder_detection(folder)
    if found is None:
        return CheckpointInfo(**base, format="other", kind=Kind.UNKNOWN, family=None, what="folder",
                              refusal=folder_refusal(folder.name))
    facts: dict[str, Any] = {**base, "format": "diffusers", "kind": found.kind, "family": found.family,
                             "what": f"{_what(found)} (diffusers folder)", "context_dim": found.context_dim,
                             "has_vae": found.has_vae}
    refusal = detection_refusal(folder.name, found)
    if refusal is not None:
        return CheckpointInfo(**facts, refusal=refusal)
    prediction, source = _prediction(folder, found.family, override)
    if source != "override":
        scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
        prediction, source = str(scheduler.get("prediction_type", "epsilon")), "scheduler"
    return CheckpointInfo(**facts, prediction=prediction, prediction_source=source)


def inspect_checkpoint(path: Path, *, prediction: str | None = None, root: Path | None = None,
                       cache: HashCache | None = None, with_hashes: bool = True) -> CheckpointInfo:
    """What the checkpoint file or diffusers folder at ``path`` is, and whether (and how) it can be loaded.

    ``prediction``: the owner's override (``epsilon`` / ``v_prediction``; None or ``auto`` = decide); ``root``: the
    checkpoint folder (for ``sd_checkpoint_name``; default: the file's own folder); ``cache``: where hashes are
    remembered; ``with_hashes=False`` skips hashing (seconds per GB without a cache).
    Raises ``FileNotFoundError`` for a path that does not exist and ``ValueError`` for an unknown ``prediction``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    base = {"path": path, "name": path.stem if path.is_file() else path.name,
            "sd_checkpoint_name": _sd_checkpoint_name(path, root), "size": size}
    if path.is_dir():
        return _inspect_folder(path, base, prediction)
    return _inspect_file(path, base, prediction, cache, with_hashes)


def inspect_vae(path: Path, *, cache: HashCache | None = None, with_hashes: bool = True) -> VaeInfo:
    """What the separate VAE file at ``path`` is (A1111's ``models/VAE``): a VAE that can be loaded, or a refusal."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VAE file not found: {path}")
    size = path.stat().st_size
    shapes, identity, problem = _open_safetensors(path)
    if shapes is None:
        if identity is None:
            return VaeInfo(path, path.name, size, refusal=damaged_refusal(path.name, problem))
        pickled = identity.kind in (FileKind.TORCH_PICKLE, FileKind.HYPERNETWORK)
        what = "a pickled PyTorch file" if pickled else "a file in another format than safetensors"
        return VaeInfo(path, path.name, size, refusal=vae_refusal(path.name, what))
    found = detect(shapes)
    prefix = vae_prefix(shapes)
    if found.kind is not Kind.VAE or prefix is None:
        return VaeInfo(path, path.name, size, refusal=vae_refusal(path.name, with_article(_what(found))))
    try:
        config = vae_config(shapes, prefix, template(config_folder("sd1", None), "vae"))
    except ArchitectureError as error:
        return VaeInfo(path, path.name, size, refusal=vae_refusal(path.name, f"a broken VAE ({error})"))
    hashes = file_hashes(path, cache) if with_hashes else None
    return VaeInfo(path, path.name, size, hashes=hashes, config=config, prefix=prefix)
