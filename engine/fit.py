"""Whether a hypernetwork does anything on a checkpoint: the one check behind result warnings and listing flags.

Why: A1111 silently skips the layers whose size matches no attention layer of the loaded model, so an SD 2.x file on
an SD 1.x checkpoint "works" and changes nothing.  The worker warns in the result, the bot flags listings,
``/hypernets info`` and the add reply; all of them say it with :func:`fit_note`, from the sizes stored with the
model and the shape of the running checkpoint as the worker reports it (:class:`ModelShape`).  Pure.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

__all__ = ["FAMILY_BY_CONTEXT", "ModelShape", "family_name", "fit_note"]

#: Text-context width -> model family, to tell a user which family a hypernet was made for.
FAMILY_BY_CONTEXT = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What a checkpoint offers hypernets: the text-context width (cross-attention) and self-attention widths."""

    context_dim: int
    attention_widths: frozenset[int]

    @property
    def widths(self) -> frozenset[int]:
        """Every k/v input width a hypernet size can match."""
        return self.attention_widths | {self.context_dim}


def family_name(context_dim: int) -> str:
    return FAMILY_BY_CONTEXT.get(context_dim, f"a {context_dim}-wide model")


def _sizes(sizes: Collection[int]) -> str:
    return "/".join(str(s) for s in sorted(sizes))


def fit_note(sizes: Collection[int], shape: ModelShape | None) -> str | None:
    """Why a hypernetwork with these layer sizes does less than expected on ``shape``; None when it fits.

    The phrase has no subject, so callers put the model's name (or "was") before it.  None while the shape is
    unknown (the engine has not started).  Sizes another family uses are "made for" that family, unless the
    file also has this model's text width; self-attention sizes that still match keep part of the effect.
    """
    if shape is None:
        return None
    have = set(sizes)
    if not have:
        return "made with no layers, so it changes nothing"
    applies = have & shape.widths
    here = f"{family_name(shape.context_dim)} (text context {shape.context_dim})"
    foreign = sorted(s for s in have if s in FAMILY_BY_CONTEXT and s != shape.context_dim)
    if foreign and shape.context_dim not in have:
        effect = f"so only its {_sizes(applies)} layers apply" if applies else "so it has no effect here"
        return f"made for {family_name(foreign[0])} (text context {foreign[0]}) but this model is {here}, {effect}"
    if not applies:
        return (f"made for other layer sizes ({_sizes(have)}); this model's attention widths are "
                f"{_sizes(shape.widths)}, so it has no effect here")
    return None
