"""What intake learned about a model, per kind: the facts the registry records and the admin is shown.

Why typed per kind: a hypernetwork is described by its layer sizes and activation, a LoRA by its format, model
family and module counts, an embedding by its vector count and width.  The sandbox child reports them as JSON (they
cross a process boundary, so :func:`facts_from_summary` checks every type), and the A1111 short hashes the infotext
writes (``Lora hashes``, ``TI hashes``) are computed in the bot process from the snapshot, never taken from the
child.  Imports nothing but the kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from engine.intake.kinds import FileKind

__all__ = ["EmbeddingFacts", "HypernetFacts", "LoraFacts", "ModelFacts", "facts_from_summary"]

_FAMILIES = ("sd1", "sd2")


@dataclass(frozen=True, slots=True)
class HypernetFacts:
    sizes: tuple[int, ...]
    layer_structure: tuple[float, ...]
    activation: str  # A1111 name; "linear" when the file has none

    kind: ClassVar[FileKind] = FileKind.HYPERNETWORK


@dataclass(frozen=True, slots=True)
class LoraFacts:
    """``label``: ``LoRA``, ``LoCon``, ``LyCORIS (LoHa)``...; ``family``: ``sd1`` / ``sd2`` or None when the shapes do
    not say; ``context_width`` / ``text_width``: as read from the shapes; ``alias``: kohya's ``ss_output_name``;
    ``short_hash``: A1111's 12-digit hash for ``Lora hashes`` (see :func:`engine.intake.ingest.lora_short_hash`)."""

    label: str
    family: str | None
    context_width: int | None
    text_width: int | None
    unet_modules: int
    te_modules: int
    ignored_keys: int
    alias: str | None
    short_hash: str

    kind: ClassVar[FileKind] = FileKind.LORA

    @property
    def touches_text_encoder(self) -> bool:
        return self.te_modules > 0


@dataclass(frozen=True, slots=True)
class EmbeddingFacts:
    """``short_hash``: the first 12 hex digits of the source file's sha256, A1111's ``TI hashes`` entry."""

    vectors: int
    width: int
    short_hash: str

    kind: ClassVar[FileKind] = FileKind.EMBEDDING


ModelFacts = HypernetFacts | LoraFacts | EmbeddingFacts


def _int(value: Any, *, optional: bool = False) -> Any:
    if optional and value is None:
        return None
    if type(value) is not int or value < 0:
        raise TypeError(f"expected a count, got {value!r}")
    return value


def _text(value: Any, limit: int, *, optional: bool = False) -> Any:
    if optional and value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise TypeError(f"expected a text of at most {limit} characters, got {type(value).__name__}")
    return value


def facts_from_summary(kind: FileKind, summary: Mapping[str, Any], *, sha256: str,
                       lora_hash: str | None = None) -> ModelFacts:
    """The kind's facts from a sandbox child's summary; ``KeyError`` / ``TypeError`` / ``ValueError`` when malformed.
    Texts are returned as the child wrote them; the caller cleans them for display."""
    if kind is FileKind.HYPERNETWORK:
        sizes, layers = summary["sizes"], summary["layer_structure"]
        if not isinstance(sizes, list) or not isinstance(layers, list):
            raise TypeError("sizes and layer_structure must be lists")
        return HypernetFacts(sizes=tuple(_int(s) for s in sizes),
                             layer_structure=tuple(float(x) for x in layers if type(x) in (int, float)),
                             activation=_text(summary["activation"], 200))
    if kind is FileKind.LORA:
        family = summary["family"]
        if family is not None and family not in _FAMILIES:
            raise ValueError(f"unknown family {family!r}")
        return LoraFacts(label=_text(summary["label"], 200), family=family,
                         context_width=_int(summary["context_width"], optional=True),
                         text_width=_int(summary["text_width"], optional=True),
                         unet_modules=_int(summary["unet_modules"]), te_modules=_int(summary["te_modules"]),
                         ignored_keys=_int(summary["ignored_keys"]), alias=_text(summary["alias"], 500, optional=True),
                         short_hash=(lora_hash or sha256)[:12])
    if kind is FileKind.EMBEDDING:
        return EmbeddingFacts(vectors=_int(summary["vectors"]), width=_int(summary["width"]), short_hash=sha256[:12])
    raise ValueError(f"{kind} is not an installable kind")
