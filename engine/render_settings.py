"""The settings that decide a job's pixels: one value shared by the bot's job records and the wire request.

Why one value: a job's settings are written to SQLite when it is created, sent to the worker, written back into
the PNG's infotext, and copied with one change for a reroll or a multiplier button.  Spelled out field by field in
each of those places they drift; as one frozen dataclass, a reroll is ``replace(settings, seed=new)`` and every
layer sees the same names.  Pure (standard library, :mod:`engine.prompt` and :mod:`engine.samplers`), so the bot
imports it without torch.

The fields are A1111's txt2img settings of the same names (``docs/a1111-sampling.md`` §1 in the shared docs): the
noise ones (``rng``, ``eta_noise_seed_delta``, ``subseed``/``subseed_strength``, ``seed_resize_from``) decide an
image's random numbers exactly as there, so a pasted infotext gives A1111's latents.

Invariant (checked when a value is made): ``hypernets`` are the prompt's hypernet tags in tag order, resolved to
the files they named when the job was made (a registry change later does not change an old job).
:meth:`RenderSettings.with_multipliers` keeps the two in step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from engine.lora_tags import LoraTag, scan_lora_tags, write_lora_tags
from engine.prompt import parse_hypernet_tags, write_tags
from engine.samplers import NOISE_SOURCES, SCHEDULE_TYPES, resolve_sampler_and_schedule

__all__ = ["MAX_CLIP_SKIP", "EmbeddingRef", "HypernetRef", "ImageSeed", "LoraRef", "RenderSettings", "Strength"]

#: The deepest clip skip A1111's UI offers (its slider stops at 12, the layer count of SD1.x's text encoder).
MAX_CLIP_SKIP = 12


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
class LoraRef:
    """One LoRA applied to a request, in A1111's order: its text-encoder and UNet multipliers and optional dyn rank.

    ``sha256`` names the canonical file in the worker's model store, as for :class:`HypernetRef`.
    """

    name: str
    sha256: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None
    short_hash: str | None = None  # A1111's 12-hex hash of the source file, for the infotext's "Lora hashes"

    @property
    def tag(self) -> LoraTag:
        return LoraTag(self.name, self.te, self.unet, self.dyn)


@dataclass(frozen=True, slots=True)
class EmbeddingRef:
    """A textual-inversion embedding a job's prompts may use, by the name prompts write and its stored file.

    The bot lists the guild's embeddings whose names occur in the prompts (a superset: the worker's tokenizer
    decides which are really used, as A1111 does); ``short_hash`` is A1111's for the infotext's "TI hashes".
    """

    name: str
    sha256: str
    short_hash: str | None = None


@dataclass(frozen=True, slots=True)
class Strength:
    """One adjustable strength of a job, for the result's buttons: a hypernet's multiplier or a LoRA's weight."""

    kind: str  # "hypernet" | "LoRA"
    name: str
    value: float


@dataclass(frozen=True, slots=True)
class ImageSeed:
    """The seed and variation seed of one image of a job (``subseed`` None: no variation)."""

    seed: int
    subseed: int | None


@dataclass(frozen=True, slots=True)
class RenderSettings:
    """Everything that decides the images of one job (``count`` images; seeds as :meth:`image_seeds` says).

    ``prompt`` is the prompt as the user typed it, hypernet tags included (a tag from the ``hypernet`` option is
    appended to it); the worker removes the tags before the text encoder sees it, as A1111 does.
    ``checkpoint`` is the checkpoint setting the job was made with.  ``schedule`` is A1111's "Schedule type"
    ("Automatic": the one the sampler name implies).  ``rng`` is A1111's noise source: "GPU" (A1111's default,
    and what an infotext without ``RNG`` means), "NV" or "CPU".  ``subseed``/``subseed_strength`` are the
    variation seed and its strength (0: none), ``seed_resize_from`` the (width, height) the noise is made for
    first ("Seed resize from"), ``eta_noise_seed_delta`` A1111's ENSD.
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
    schedule: str = "Automatic"
    clip_skip: int = 1
    rng: str = "GPU"
    eta_noise_seed_delta: int = 0
    subseed: int | None = None
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] | None = None
    loras: tuple[LoraRef, ...] = ()
    embeddings: tuple[EmbeddingRef, ...] = ()

    def __post_init__(self) -> None:
        _, tags = parse_hypernet_tags(self.prompt)
        if [name.strip() for name, _ in tags] != [h.name for h in self.hypernets]:
            raise ValueError(f"the prompt's hypernet tags {[n for n, _ in tags]} do not match its hypernetworks "
                             f"{[h.name for h in self.hypernets]}")
        lora_names = [t.name.strip() for t in scan_lora_tags(self.prompt)]
        if lora_names != [lora.name for lora in self.loras]:
            raise ValueError(f"the prompt's LoRA tags {lora_names} do not match its LoRAs {[x.name for x in self.loras]}")
        if self.rng not in NOISE_SOURCES:
            raise ValueError(f"unknown RNG source {self.rng!r}; valid sources: {', '.join(NOISE_SOURCES)}")
        if self.schedule not in SCHEDULE_TYPES:
            raise ValueError(f"unknown schedule type {self.schedule!r}; valid types: {', '.join(SCHEDULE_TYPES)}")
        if not 1 <= self.clip_skip <= MAX_CLIP_SKIP:
            raise ValueError(f"clip skip must lie between 1 and {MAX_CLIP_SKIP}, got {self.clip_skip}")
        if self.subseed_strength and self.subseed is None:
            raise ValueError("a variation strength needs a variation seed")
        if self.seed_resize_from is not None and min(self.seed_resize_from) <= 0:
            raise ValueError(f"seed resize sizes must be positive, got {self.seed_resize_from}")

    def batch_key(self) -> tuple[object, ...]:
        """Settings with equal keys can share one UNet batch (prompts, hypernets, seeds and noise may differ; the
        checkpoint may not: a batch runs on one model).

        The sampler counts by what it computes: "DPM++ 2M Karras" and "DPM++ 2M" with schedule Karras batch
        together.  Unknown names key by their text (the renderer refuses them with a message)."""
        try:
            spec, schedule = resolve_sampler_and_schedule(self.sampler, self.schedule)
        except ValueError:
            return (self.checkpoint, self.width, self.height, self.steps, self.sampler, self.schedule)
        return (self.checkpoint, self.width, self.height, self.steps, spec.algorithm, schedule)

    @property
    def variation(self) -> bool:
        """Whether a variation seed takes part (A1111 ignores the variation seed at strength 0)."""
        return self.subseed is not None and self.subseed_strength != 0

    def image_seeds(self) -> list[ImageSeed]:
        """Each image's seeds, A1111's rule: seeds ``seed + k``; with a variation, every image keeps ``seed`` and the
        variation seeds step instead (``subseed + k``) — a batch of variations of one picture."""
        if self.variation:
            assert self.subseed is not None
            return [ImageSeed(self.seed, self.subseed + k) for k in range(self.count)]
        return [ImageSeed(self.seed + k, None) for k in range(self.count)]

    @property
    def encoder_prompt(self) -> str:
        """The text for the text encoder: the prompt without its tags (A1111's removal, spaces kept)."""
        return parse_hypernet_tags(self.prompt)[0]

    @property
    def infotext_prompt(self) -> str:
        """The prompt line of the PNG infotext: as typed, each hypernet tag in A1111's bracketed form."""
        return write_tags(self.prompt, [h.multiplier for h in self.hypernets])

    @property
    def strengths(self) -> tuple[Strength, ...]:
        """The hypernets' multipliers, then the LoRAs' (UNet) weights, in prompt / A1111 order."""
        return (*(Strength("hypernet", h.name, h.multiplier) for h in self.hypernets),
                *(Strength("LoRA", x.name, x.unet) for x in self.loras))

    def with_strengths(self, values: Sequence[float]) -> RenderSettings:
        """The same settings with new :attr:`strengths` (one value each, same order)."""
        if len(values) != len(self.hypernets) + len(self.loras):
            raise ValueError(f"{len(self.strengths)} strengths but {len(values)} values were given")
        cut = len(self.hypernets)
        changed = self.with_multipliers(values[:cut]) if self.hypernets else self
        return changed.with_lora_weights(values[cut:]) if self.loras else changed

    def with_lora_weights(self, weights: Sequence[float]) -> RenderSettings:
        """The same settings with new LoRA strengths, one per LoRA (its UNet multiplier; the text-encoder one moves
        with it when the two were equal, as in ``<lora:x:0.8>``), in the refs and in the prompt's tags."""
        if len(weights) != len(self.loras):
            raise ValueError(f"{len(self.loras)} LoRAs but {len(weights)} weights were given")
        refs = tuple(dataclasses.replace(x, unet=float(w), te=float(w) if x.te == x.unet else x.te)
                     for x, w in zip(self.loras, weights, strict=True))
        names = {x.name for x in refs}
        if len(names) != len(refs):  # a name tagged twice shares its numbers (A1111 applies the last tag's twice)
            last = {x.name: x for x in refs}
            refs = tuple(last[x.name] for x in refs)
        return dataclasses.replace(self, loras=refs, prompt=write_lora_tags(self.prompt, [x.tag for x in refs]))

    def with_multipliers(self, multipliers: Sequence[float]) -> RenderSettings:
        """The same settings with new multipliers, one per hypernet, in the refs and in the prompt's tags."""
        if len(multipliers) != len(self.hypernets):
            raise ValueError(f"{len(self.hypernets)} hypernets but {len(multipliers)} multipliers were given")
        refs = tuple(dataclasses.replace(h, multiplier=float(m)) for h, m in zip(self.hypernets, multipliers, strict=True))
        return dataclasses.replace(self, hypernets=refs, prompt=write_tags(self.prompt, list(multipliers)))
