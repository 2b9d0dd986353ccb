"""Textual-inversion embeddings as values: validation, the safe safetensors form, collections.

The engine holds embeddings it loaded itself (content-addressed safetensors from the registry), so the encoder
takes an :class:`EmbeddingSet` of :class:`Embedding` values rather than a directory.  The intake sandbox, which
is the only place that unpickles user files, hands what ``torch.load(weights_only=True)`` returned to
:func:`embedding_from_object` and re-saves the result with :func:`save_embedding_safetensors`.

Accepted layouts (spec section 5): A1111's ``{"string_to_param": {key: [n, width]}, "step": ...}`` and any dict
whose single value is a tensor ``[n, width]`` or ``[width]`` (diffusers ``learned_embeds.bin``,
``{"emb_params": ...}`` safetensors).  Refused, where A1111 would load and produce garbage: non-float or
non-finite vectors, and more than 75 vectors (they cannot fit in one chunk).  An embedding whose width differs
from the text encoder's is not an error here; :meth:`EmbeddingSet.for_width` sets it aside with the reason, as
A1111 skips it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from engine.conditioning.chunks import CHUNK_CONTENT
from engine.conditioning.errors import DuplicateEmbeddingName, InvalidEmbedding

__all__ = [
    "SAFETENSORS_KEY",
    "Embedding",
    "EmbeddingSet",
    "SkippedEmbedding",
    "embedding_from_object",
    "load_embedding_safetensors",
    "save_embedding_safetensors",
]

SAFETENSORS_KEY = "emb_params"


@dataclass(frozen=True, eq=False)
class Embedding:
    """``name`` is what prompts write (A1111: the file stem); ``sha256`` is the source file's, when known."""

    name: str
    vectors: torch.Tensor  # [n, width] float32 on the CPU
    sha256: str | None = None
    step: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidEmbedding("an embedding needs a non-empty name")
        if self.vectors.dim() != 2 or self.vectors.dtype != torch.float32:
            raise InvalidEmbedding(f"embedding {self.name!r}: vectors must be a float32 [n, width] tensor")

    @property
    def vector_count(self) -> int:
        return self.vectors.shape[0]

    @property
    def width(self) -> int:
        return self.vectors.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes its vectors hold (the worker's cache is bounded in bytes)."""
        return self.vectors.numel() * self.vectors.element_size()

    @property
    def short_hash(self) -> str | None:
        """The first 12 hex digits of the source file's sha256, as A1111's ``TI hashes`` infotext shows it."""
        return self.sha256[:12] if self.sha256 else None


@dataclass(frozen=True)
class SkippedEmbedding:
    name: str
    reason: str
    source: str | None = None  # a file name, when the embedding came from a file


class EmbeddingSet(Mapping[str, Embedding]):
    """Embeddings by name; names are unique (a duplicate would make a prompt ambiguous)."""

    def __init__(self, embeddings: Iterable[Embedding] = ()) -> None:
        self._by_name: dict[str, Embedding] = {}
        for embedding in embeddings:
            if embedding.name in self._by_name:
                raise DuplicateEmbeddingName(f"two embeddings are named {embedding.name!r}")
            self._by_name[embedding.name] = embedding

    def __getitem__(self, name: str) -> Embedding:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def for_width(self, width: int) -> tuple[EmbeddingSet, list[SkippedEmbedding]]:
        """The embeddings a text encoder of this width can use, and the others with the reason."""
        usable = [embedding for embedding in self.values() if embedding.width == width]
        skipped = [
            SkippedEmbedding(embedding.name, f"vectors are {embedding.width} wide, the text encoder's are {width}")
            for embedding in self.values() if embedding.width != width
        ]
        return EmbeddingSet(usable), skipped


def _single_tensor(values: Mapping, what: str) -> torch.Tensor:
    tensors = [value for value in values.values() if isinstance(value, torch.Tensor)]
    if len(values) != 1 or len(tensors) != 1:
        keys = ", ".join(sorted(map(str, values))[:5])
        hint = " (an SDXL embedding: SD1/SD2 models cannot use it)" if {"clip_g", "clip_l"} <= set(values) else ""
        raise InvalidEmbedding(f"{what} must hold exactly one tensor, found keys [{keys}]{hint}")
    return tensors[0]


def _vectors(tensor: torch.Tensor, name: str, *, allow_1d: bool) -> torch.Tensor:
    if tensor.dim() == 1 and allow_1d:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2:
        raise InvalidEmbedding(f"embedding {name!r}: expected a [vectors, width] tensor, got shape {list(tensor.shape)}")
    if not tensor.is_floating_point():
        raise InvalidEmbedding(f"embedding {name!r}: vectors are {tensor.dtype}, not floating point")
    count, width = tensor.shape
    if not 1 <= count <= CHUNK_CONTENT:
        raise InvalidEmbedding(f"embedding {name!r}: {count} vectors; between 1 and {CHUNK_CONTENT} fit a prompt")
    if width < 1:
        raise InvalidEmbedding(f"embedding {name!r}: vectors have no width")
    vectors = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
    if not torch.isfinite(vectors).all():
        raise InvalidEmbedding(f"embedding {name!r}: vectors contain NaN or infinite values")
    return vectors


def embedding_from_object(obj: object, name: str, *, sha256: str | None = None) -> Embedding:
    """Validate what ``torch.load(weights_only=True)`` or safetensors returned; raises :class:`InvalidEmbedding`."""
    if not isinstance(obj, Mapping):
        raise InvalidEmbedding(f"embedding {name!r}: expected a dict, got {type(obj).__name__}")
    if "string_to_param" in obj:
        params = obj["string_to_param"]
        if not isinstance(params, Mapping):
            raise InvalidEmbedding(f"embedding {name!r}: string_to_param is {type(params).__name__}, not a dict")
        vectors = _vectors(_single_tensor(params, "string_to_param"), name, allow_1d=False)
        step = obj.get("step")
        return Embedding(name, vectors, sha256, step if isinstance(step, int) and not isinstance(step, bool) else None)
    return Embedding(name, _vectors(_single_tensor(obj, "the file"), name, allow_1d=True), sha256)


def load_embedding_safetensors(path: str | Path, name: str, *, sha256: str | None = None) -> Embedding:
    """Read one embedding from a safetensors file (no pickle).  ``sha256`` defaults to the file's own hash; pass
    the original file's when this is a re-saved copy, so ``TI hashes`` match what A1111 would write."""
    data = Path(path).read_bytes()
    try:
        tensors = load_safetensors_bytes(data)
    except Exception as error:  # safetensors raises its own error types for malformed headers
        raise InvalidEmbedding(f"embedding {name!r}: not a readable safetensors file ({error})") from None
    return embedding_from_object(tensors, name, sha256=sha256 or hashlib.sha256(data).hexdigest())


def save_embedding_safetensors(embedding: Embedding, path: str | Path) -> None:
    """The canonical stored form: one ``emb_params`` tensor, which :func:`load_embedding_safetensors` reads."""
    save_file({SAFETENSORS_KEY: embedding.vectors}, str(path))
