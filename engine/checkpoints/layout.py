"""A1111's single-file checkpoint layout: the key prefixes of its parts and lookups over tensor shapes.

Why a module of its own: family detection (:mod:`engine.checkpoints.families`) and the config derivation
(:mod:`engine.checkpoints.architecture`) read the same names, and the worker's loader filters a file's tensors by the
same prefixes.  A checkpoint is seen here only as ``{tensor name: shape}`` — from the safetensors header, never the
weights.  The prefixes are the original Stable Diffusion (ldm) module names that A1111 saves: ``model.diffusion_model.``
(UNet), ``first_stage_model.`` (VAE), ``cond_stage_model.transformer.`` (SD 1.x: Hugging Face CLIP) and
``cond_stage_model.model.`` (SD 2.x: OpenCLIP).  Torch-free.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

__all__ = ["CLIP_L", "OPEN_CLIP", "UNET", "VAE", "ArchitectureError", "Shapes", "indices", "shape_of",
           "with_prefix"]

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_L = "cond_stage_model.transformer."
OPEN_CLIP = "cond_stage_model.model."

#: A checkpoint's tensors as names and shapes (from its safetensors header).
Shapes = Mapping[str, tuple[int, ...]]


class ArchitectureError(ValueError):
    """The tensors do not form the architecture they claim; ``str(err)`` is a clause ("it has no tensor `x`")."""


def with_prefix(names: Collection[str], prefix: str) -> bool:
    """Whether any tensor name starts with ``prefix`` (``names``: a shapes mapping, a state dict, a list)."""
    return any(name.startswith(prefix) for name in names)


def shape_of(shapes: Shapes, name: str, ndim: int | None = None) -> tuple[int, ...]:
    """The shape of tensor ``name`` (with ``ndim`` dimensions when given); :class:`ArchitectureError` otherwise."""
    shape = shapes.get(name)
    if shape is None:
        raise ArchitectureError(f"it has no tensor `{name}`")
    if ndim is not None and len(shape) != ndim:
        raise ArchitectureError(f"its tensor `{name}` has {len(shape)} dimensions, not {ndim}")
    return shape


def indices(names: Collection[str], prefix: str) -> list[int]:
    """The sorted numbers ``n`` of every tensor named ``{prefix}{n}.…`` (the blocks of a numbered list)."""
    found: set[int] = set()
    for name in names:
        if name.startswith(prefix):
            head = name[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)
