"""The add-on model kinds the bot installs — hypernetworks, LoRAs, embeddings — each described once.

Why a table of kinds instead of a service per kind: adding, editing, listing and rescanning follow the same rules
whatever the kind (:mod:`bot.models.kind_service`, :mod:`bot.models.folder_sync`, and the one generic command
group in ``cogs``); what differs is data — the registry it lives in, what intake calls it, the words and command
group an admin reads, whether it has a strength, its drop-in folders and file extensions, how its row is built
from intake's facts, and when it does little on the running checkpoint.  No Discord here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.config import ModelSettings
from bot.store import (
    Embedding,
    Hypernet,
    Lora,
    ModelRepository,
    NewEmbedding,
    NewHypernet,
    NewLora,
    NewModel,
    Store,
)
from engine.fit import ModelShape, fit_note
from engine.intake import (
    EMBEDDING_EXTENSIONS,
    EXTENSIONS,
    LORA_EXTENSIONS,
    EmbeddingFacts,
    FileKind,
    HypernetFacts,
    IntakeResult,
    LoraFacts,
)
from engine.lora import LoraFileInfo, compatibility_problem

__all__ = ["EMBEDDINGS", "HYPERNETS", "KINDS", "LORAS", "FolderRoot", "ModelKind", "kind_for_file"]


@dataclass(frozen=True)
class FolderRoot:
    """One drop-in folder of a kind.  ``label`` None: rows store paths relative to it (a kind with one folder);
    else ``<label>/<relative path>``, so the rows of a kind with several folders say which one."""

    path: Path
    label: str | None = None

    def detail(self, relpath: str) -> str:
        return relpath if self.label is None else f"{self.label}/{relpath}"


@dataclass(frozen=True)
class ModelKind:
    """One installable kind.  ``key``: the registry's kind; ``command``: its command group (``/loras``);
    ``has_strength``: whether a default multiplier is offered (embeddings have none)."""

    key: str
    file_kind: FileKind
    noun: str
    plural: str
    title: str  # the plural as a heading: "Hypernetworks", "LoRAs", "Embeddings"
    command: str
    has_strength: bool
    extensions: tuple[str, ...]
    any_case: bool  # folder extensions compared ignoring case (A1111's listing for this kind)
    folder_setting: str  # the config key of its (first) drop-in folder, for messages
    repository: Callable[[Store], ModelRepository[Any, Any]]
    new_row: Callable[[IntakeResult, dict[str, Any]], NewModel]
    fit: Callable[[Any, ModelShape], str | None]  # why a row does little on this checkpoint; None when it fits
    folders: Callable[[ModelSettings], tuple[FolderRoot, ...]]

    @property
    def article(self) -> str:
        return f"{'an' if self.noun[0] in 'aeiou' else 'a'} {self.noun}"

    def fit_note(self, row: Any, shape: ModelShape | None) -> str | None:
        """Why ``row`` does little on a checkpoint of ``shape`` (a sentence without its full stop), or None."""
        return None if shape is None else self.fit(row, shape)


def _hypernet_row(result: IntakeResult, common: dict[str, Any]) -> NewModel:
    facts = result.facts
    assert isinstance(facts, HypernetFacts)
    return NewHypernet(**common, sizes=facts.sizes, layer_structure=facts.layer_structure, activation=facts.activation)


def _lora_row(result: IntakeResult, common: dict[str, Any]) -> NewModel:
    facts = result.facts
    assert isinstance(facts, LoraFacts)
    return NewLora(**common, lora_format=facts.label, family=facts.family, context_width=facts.context_width,
                   text_width=facts.text_width, unet_modules=facts.unet_modules, te_modules=facts.te_modules,
                   alias=facts.alias, short_hash=facts.short_hash)


def _embedding_row(result: IntakeResult, common: dict[str, Any]) -> NewModel:
    facts = result.facts
    assert isinstance(facts, EmbeddingFacts)
    return NewEmbedding(**{**common, "default_multiplier": 1.0}, vectors=facts.vectors, width=facts.width,
                        short_hash=facts.short_hash)


def _hypernet_fit(row: Hypernet, shape: ModelShape) -> str | None:
    note = fit_note(row.sizes, shape)
    return None if note is None else note[0].upper() + note[1:]


def _lora_fit(row: Lora, shape: ModelShape) -> str | None:
    """engine.lora's own check, on the widths intake recorded (the naming and module types passed intake)."""
    info = LoraFileInfo(naming=frozenset({"kohya"}), types=frozenset({"lora"}), family=row.family,
                        context_width=row.context_width, text_width=row.text_width, has_unet=row.unet_modules > 0,
                        has_text_encoder=row.touches_text_encoder, evidence=())
    problem = compatibility_problem(info, context_width=shape.context_dim, text_width=shape.context_dim)
    return None if problem is None else f"It {problem}, so its layers of that width are skipped (A1111 skips them too)"


def _embedding_fit(row: Embedding, shape: ModelShape) -> str | None:
    if row.width == shape.context_dim:
        return None
    return (f"Its vectors are {row.width} wide but this model's text encoder is {shape.context_dim} wide, so prompts "
            "cannot use it (A1111 skips it too)")


HYPERNETS = ModelKind(
    key="hypernet", file_kind=FileKind.HYPERNETWORK, noun="hypernetwork", plural="hypernetworks", title="Hypernetworks",
    command="hypernets", has_strength=True, extensions=EXTENSIONS, any_case=False, folder_setting="models.hypernetwork_dir",
    repository=lambda store: store.hypernets, new_row=_hypernet_row, fit=_hypernet_fit,
    folders=lambda models: (FolderRoot(Path(models.hypernetwork_dir)),))
LORAS = ModelKind(
    key="lora", file_kind=FileKind.LORA, noun="LoRA", plural="LoRAs", title="LoRAs", command="loras",
    has_strength=True, extensions=LORA_EXTENSIONS, any_case=True, folder_setting="models.lora_dir",
    repository=lambda store: store.loras,
    new_row=_lora_row, fit=_lora_fit,
    folders=lambda models: (FolderRoot(models.lora_folder, "Lora"), FolderRoot(models.lycoris_folder, "LyCORIS")))
EMBEDDINGS = ModelKind(
    key="embedding", file_kind=FileKind.EMBEDDING, noun="embedding", plural="embeddings", title="Embeddings",
    command="embeddings", has_strength=False, extensions=EMBEDDING_EXTENSIONS, any_case=True,
    folder_setting="models.embedding_dir", repository=lambda store: store.embeddings, new_row=_embedding_row, fit=_embedding_fit,
    folders=lambda models: (FolderRoot(models.embedding_folder),))
KINDS = (HYPERNETS, LORAS, EMBEDDINGS)


def kind_for_file(file_kind: FileKind) -> ModelKind | None:
    """The installable kind a file of intake's ``file_kind`` is, if any."""
    return next((k for k in KINDS if k.file_kind is file_kind), None)
