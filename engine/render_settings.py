"""The settings that decide a job's pixels: one value shared by the bot's job records and the wire request.

Why one value: a job's settings are written to SQLite when it is created, sent to the worker, written back into
the PNG's infotext, and copied with one change for a reroll or a multiplier button.  Spelled out field by field in
each of those places they drift; as one frozen dataclass, a reroll is ``replace(settings, seed=new)`` and every
layer sees the same names.  Pure (standard library and :mod:`engine.prompt`), so the bot imports it without torch.

Invariant (checked when a value is made): ``hypernets`` are the prompt's hypernet tags in tag order, resolved to
the files they named when the job was made (a registry change later does not change an old job).
:meth:`RenderSettings.with_multipliers` keeps the two in step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from engine.prompt import parse_hypernet_tags, write_tags

__all__ = ["HypernetRef", "RenderSettings"]


@dataclass(frozen=True, slots=True)
class HypernetRef:
    """One hypernetwork applied to a request, in application order.

    ``sha256`` names the canonical file in the worker's model store; the worker never builds a path
    from ``name`` (user text), only from a validated hex digest.
    """

    name: str
    sha256: str
    multiplier: float


@dataclass(frozen=True, slots=True)
class RenderSettings:
    """Everything that decides the images of one job (``count`` images with seeds ``seed``, ``seed + 1``, ...).

    ``prompt`` is the prompt as the user typed it, hypernet tags included (a tag from the ``hypernet`` option is
    appended to it); the worker removes the tags before the text encoder sees it, as A1111 does.
    ``checkpoint`` is the checkpoint setting the job was made with.
    """

    prompt: str
    negative_prompt: str = ""
    hypernets: tuple[HypernetRef, ...] = ()
    seed: int = 0
    steps: int = 20
    cfg_scale: float = 7.0
    sampler: str = "Euler a"
    width: int = 512
    height: int = 512
    count: int = 1
    checkpoint: str = "tiny"

    def __post_init__(self) -> None:
        _, tags = parse_hypernet_tags(self.prompt)
        if [name.strip() for name, _ in tags] != [h.name for h in self.hypernets]:
            raise ValueError(f"the prompt's hypernet tags {[n for n, _ in tags]} do not match its hypernetworks "
                             f"{[h.name for h in self.hypernets]}")

    def batch_key(self) -> tuple[object, ...]:
        """Settings with equal keys can share one UNet batch (prompts, hypernets and seeds may differ)."""
        return (self.width, self.height, self.steps, self.sampler)

    @property
    def encoder_prompt(self) -> str:
        """The text for the text encoder: the prompt without its tags (A1111's removal, spaces kept)."""
        return parse_hypernet_tags(self.prompt)[0]

    @property
    def infotext_prompt(self) -> str:
        """The prompt line of the PNG infotext: as typed, each hypernet tag in A1111's bracketed form."""
        return write_tags(self.prompt, [h.multiplier for h in self.hypernets])

    def with_multipliers(self, multipliers: Sequence[float]) -> RenderSettings:
        """The same settings with new multipliers, one per hypernet, in the refs and in the prompt's tags."""
        if len(multipliers) != len(self.hypernets):
            raise ValueError(f"{len(self.hypernets)} hypernets but {len(multipliers)} multipliers were given")
        refs = tuple(dataclasses.replace(h, multiplier=float(m)) for h, m in zip(self.hypernets, multipliers, strict=True))
        return dataclasses.replace(self, hypernets=refs, prompt=write_tags(self.prompt, list(multipliers)))
