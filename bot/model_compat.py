"""Whether a hypernetwork does anything on the running checkpoint: the note shown next to a model that does not fit.

Why: A1111 silently skips the layers whose size matches no attention layer of the loaded model, so an SD2.x file on
an SD1.x checkpoint "works" and changes nothing.  Listings, ``/hypernets info`` and the add reply say so instead.
Pure functions of the model's layer sizes and the engine's text-context width; no IO.
"""

from __future__ import annotations

__all__ = ["compatibility_note", "engine_context_dim"]

# Text-context width → model family, and the self-attention widths each family's UNet feeds to k/v.
_FAMILIES = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}
_SELF_WIDTHS = {768: (320, 640, 1280), 1024: (320, 640, 1280), 2048: (640, 1280)}


def compatibility_note(sizes: tuple[int, ...] | list[int], context_dim: int | None) -> str | None:
    """Why a model with these layer sizes does little or nothing on the running checkpoint; None when it fits.

    A1111 matches each size against the width of the k/v input of an attention layer: the text context for
    cross-attention (768 SD1.x, 1024 SD2.x, 2048 SDXL) and the block width for self-attention.  A file
    without the running text width but with another family's is "made for" that family; self-attention
    sizes that still match keep part of its effect.  Files with only self-attention sizes are fine.
    """
    if context_dim is None:
        return None
    here = _FAMILIES.get(context_dim, f"{context_dim}-wide")
    have = set(sizes)
    if not have:
        return "has no layers; it changes nothing"
    if context_dim in have:
        return None
    self_widths = set(_SELF_WIDTHS.get(context_dim, ()))
    foreign = sorted(s for s in have if s in _FAMILIES and s != context_dim)
    matching = sorted(have & self_widths)
    if foreign:
        made_for = f"made for {_FAMILIES[foreign[0]]} ({foreign[0]})"
        if not matching:
            return f"{made_for}; no effect on this {here} model"
        return f"{made_for}; on this {here} model only its self-attention sizes ({'/'.join(map(str, matching))}) apply"
    if not matching:
        return f"its sizes ({'/'.join(map(str, sorted(have)))}) match no layer of this {here} model; no effect"
    return None


def engine_context_dim(engine: object) -> int | None:
    """The running checkpoint's text-context width from the engine client's status (None until it has started)."""
    status = getattr(engine, "status", None)
    if status is None:
        return None
    value = getattr(status(), "context_dim", None)
    return int(value) if isinstance(value, int) and value > 0 else None
