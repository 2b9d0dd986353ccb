"""The sandbox child's embedding path: a textual-inversion embedding (A1111's ``.pt``, a diffusers ``.bin``, a
``.safetensors``) validated and written in the engine's canonical form (one ``emb_params`` tensor).

Why the engine's validator (:func:`engine.conditioning.embedding_from_object`): it refuses what A1111 would load as
garbage (non-finite vectors, more than 75 of them, SDXL's two-encoder files), and the worker reads the stored file
with :func:`engine.conditioning.load_embedding_safetensors`.  On top of it, a width no text encoder this bot runs
has (768 for SD 1.x, 1024 for SD 2.x) is refused: such an embedding could never be used.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from engine.intake.base import IntakeRefused, MiB, damaged
from engine.intake.kinds import Container, FileKind
from engine.intake.sandbox.reading import (
    CANONICAL_NAME,
    check_weight_bytes,
    expect_kind,
    load_pt,
    read_stdin,
    stdin_as_memfd,
    tensor_bytes,
)

__all__ = ["WIDTHS", "convert", "verify", "warm_up"]

_NAME = "x"  # the validator's messages name the embedding; that part is cut off again below
WIDTHS = {768: "SD 1.x", 1024: "SD 2.x"}


def _unusable(reason: object) -> IntakeRefused:
    text = " ".join(str(reason).removeprefix(f"embedding {_NAME!r}: ").split())[:300]
    return IntakeRefused(f"the file is not a usable embedding ({text}); use another version of it")


def summarize(obj: object) -> tuple[Any, dict[str, Any]]:
    """The validated embedding and what the bot records."""
    from engine.conditioning.embeddings import embedding_from_object
    from engine.conditioning.errors import InvalidEmbedding

    try:
        embedding = embedding_from_object(obj, _NAME)
    except InvalidEmbedding as e:
        raise _unusable(e) from None
    if embedding.width not in WIDTHS:
        known = ", ".join(f"{w} for {family}" for w, family in WIDTHS.items())
        raise IntakeRefused(f"the embedding's vectors are {embedding.width} wide, which matches no text encoder this "
                            f"bot can run ({known}); use its SD 1.x or SD 2.x version")
    return embedding, {"vectors": int(embedding.vector_count), "width": int(embedding.width), "base_model": None,
                       "nbytes": int(embedding.vectors.numel() * 4), "warnings": []}


def _read_safetensors(limit: int) -> dict[str, Any]:
    from safetensors.torch import load_file

    path = stdin_as_memfd(limit)
    try:
        return load_file(path)
    except (IntakeRefused, MemoryError):
        raise
    except Exception as e:
        print(f"safetensors failed: {type(e).__name__}: {str(e)[:2000]}", file=sys.stderr)
        raise IntakeRefused(damaged("its tensor data does not match its safetensors header")) from None


def convert(container: Container, weight_cap: int) -> dict[str, Any]:
    from engine.conditioning.embeddings import save_embedding_safetensors

    if container == "safetensors":
        obj: object = _read_safetensors(weight_cap)
    else:
        data = read_stdin(weight_cap)
        obj = load_pt(data)
        del data
        expect_kind(obj, weight_cap, container, FileKind.EMBEDDING,
                    missing="no string_to_param and no single vector tensor")
        params = obj.get("string_to_param") if isinstance(obj, dict) else None
        held = params if isinstance(params, dict) else obj if isinstance(obj, dict) else {}
        check_weight_bytes(tensor_bytes(held.values()), weight_cap)
    embedding, summary = summarize(obj)
    save_embedding_safetensors(embedding, CANONICAL_NAME)
    return summary


def verify(weight_cap: int) -> dict[str, Any]:
    return summarize(_read_safetensors(weight_cap + 16 * MiB))[1]


def warm_up(work_dir: str) -> None:
    """Run every code path once on a tiny embedding, so no import is left for after the lock-down."""
    import torch

    from engine.conditioning.embeddings import load_embedding_safetensors, save_embedding_safetensors

    tiny = {"string_to_token": {"*": 265}, "string_to_param": {"*": torch.zeros(1, 768)}, "name": "x", "step": 1}
    for zipped in (True, False):
        buf = io.BytesIO()
        torch.save(tiny, buf, _use_new_zipfile_serialization=zipped)
        loaded = load_pt(buf.getvalue())
    expect_kind(loaded, 1 << 20, "pt", FileKind.EMBEDDING, missing="")
    path = os.path.join(work_dir, "warm-up.safetensors")
    save_embedding_safetensors(summarize(loaded)[0], path)
    load_embedding_safetensors(path, _NAME)
    summarize(_read_file(path))
    os.remove(path)


def _read_file(path: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(path)
