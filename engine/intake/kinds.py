"""What a file turned out to be: the kinds intake tells apart and the facts it keeps about each.

Why a module of pure data: the bot-side identification (:mod:`engine.intake.identify`), the sandbox child (which
learns a pickle's keys only after the safe load) and the refusal error (:class:`engine.intake.base.IntakeRefused`)
all speak of the same kinds, and a caller routes a file by :attr:`FileIdentity.kind` (an admin who gave a LoRA to the
hypernetwork command is told which command takes it) instead of parsing a message.  Imports nothing of ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

__all__ = ["INSTALLABLE", "Container", "FileIdentity", "FileKind", "kind_article", "kind_noun"]

#: The containers a model file can come in: PyTorch zip (``torch.save``), the pre-1.6 PyTorch pickle, safetensors.
Container = Literal["pt", "pt-legacy", "safetensors"]


class FileKind(StrEnum):
    """What a file is, as far as intake can tell."""

    HYPERNETWORK = "hypernetwork"  # Hypercord's safetensors layout, or (after the sandboxed load) an A1111 file
    TORCH_PICKLE = "torch_pickle"  # a PyTorch file whose contents only the sandboxed load can tell
    LORA = "lora"  # LoRA / LyCORIS (kohya, LyCORIS or diffusers key names)
    EMBEDDING = "embedding"  # textual inversion (string_to_param, emb_params, clip_l/clip_g)
    CHECKPOINT = "checkpoint"  # a full Stable Diffusion model (UNet key prefixes)
    SAFETENSORS_OTHER = "safetensors_other"  # safetensors holding something else
    ARCHIVE = "archive"  # a zip archive that is not a PyTorch save (a model packed for download)
    WEB_PAGE = "web_page"  # HTML
    ERROR_BODY = "error_body"  # a JSON reply (a website's error message)
    LFS_POINTER = "lfs_pointer"  # a Git LFS pointer instead of the file it points to
    TEXT = "text"  # other plain text
    IMAGE = "image"  # PNG / JPEG / WebP / GIF (a preview picture)
    EMPTY = "empty"
    DAMAGED = "damaged"  # a container that is broken or incomplete (``problem`` says how)
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """One file's kind and the facts behind it.  Every text field is already safe to show (see ``clean_text``).

    ``label``: the kind in words where it has variants ("LoRA", "LyCORIS (LoHa, LoKr)"); ``family``: ``sd1``,
    ``sd2`` or ``sdxl`` when the shapes tell; ``tensor_count`` / ``declared_bytes``: from a safetensors header;
    ``members``: the first member names of an archive; ``excerpt``: the start of a text reply; ``problem``: what is
    broken, for :attr:`FileKind.DAMAGED`.
    """

    kind: FileKind
    size: int
    container: Container | None = None
    label: str = ""
    family: str | None = None
    tensor_count: int | None = None
    declared_bytes: int | None = None
    members: tuple[str, ...] = ()
    excerpt: str = ""
    problem: str = ""


#: The kinds intake can install (each has its own registry entries and command group on the bot).
INSTALLABLE = (FileKind.HYPERNETWORK, FileKind.LORA, FileKind.EMBEDDING)
_NOUNS = {FileKind.HYPERNETWORK: "hypernetwork", FileKind.LORA: "LoRA", FileKind.EMBEDDING: "embedding"}


def kind_noun(kind: FileKind) -> str:
    """``hypernetwork``, ``LoRA``, ``embedding``: an installable kind as a message names it."""
    return _NOUNS[kind]


def kind_article(kind: FileKind) -> str:
    """``a hypernetwork``, ``a LoRA``, ``an embedding``."""
    noun = _NOUNS[kind]
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"
