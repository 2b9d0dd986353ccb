"""A batch of requests flattened to image rows, with the distinct prompts they need.

Why a module of its own: the sampler, the noise plan, the text encoder and the output stage each read the batch as
rows (one per image), but want different things from it — seeds, CFG scales, prompt indices, hypernet chains.
Building the rows once, in request order, keeps them in step: row ``i`` is the same image everywhere.

A request contributes ``count`` rows with A1111's seeds (:meth:`RenderSettings.image_seeds`).  Prompts are
deduplicated by (text, clip skip, side), so a batch of four images of one prompt encodes it once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from engine.conditioning import PromptRequest
from engine.hypernet import Hypernetwork
from engine.lora import LoraNetwork, LoraUse
from engine.protocol import GenerateRequest
from engine.sampling import RowSeed

__all__ = ["BatchRows", "EmbeddingKey", "ImageRow", "embedding_key", "noise_source"]

HypernetChain = tuple[tuple[Hypernetwork, float], ...]


@dataclass(frozen=True, slots=True)
class ImageRow:
    """One image of the batch: its job, randomness, guidance scale, prompts (indices into
    :attr:`BatchRows.prompts`), hypernet chain (multiplier-0 entries left out: ``x + y * 0`` is ``x``) and LoRAs
    (A1111's order; the UNet reads their ``unet`` multipliers, the prompts carry the same list for the text
    encoder)."""

    job_id: int
    seed: RowSeed
    cfg_scale: float
    prompt: int
    negative: int
    chain: HypernetChain
    loras: tuple[LoraUse, ...] = ()


def noise_source(rng: str, device: torch.device) -> str:
    """The generator that draws a row's noise on ``device``.

    "GPU" is A1111's default and what a pasted infotext without ``RNG`` asks for: CUDA's own generator on a CUDA
    device, and elsewhere "NV", A1111's CPU emulation of that generator (the same stream, drawn without a GPU).
    """
    if rng == "GPU" and device.type != "cuda":
        return "NV"
    return rng


EmbeddingKey = tuple[tuple[str, str], ...]  # a job's embeddings as sorted (name, sha256): which encoder reads it


def embedding_key(request: GenerateRequest) -> EmbeddingKey:
    return tuple(sorted((e.name, e.sha256) for e in request.settings.embeddings))


@dataclass(frozen=True)
class BatchRows:
    """The rows of one batch and the distinct prompt requests they point at.

    ``encoders[p]`` says which embeddings prompt ``p`` is read with (jobs of different guilds may give one name
    to different files, so prompts are encoded per embedding set)."""

    rows: tuple[ImageRow, ...]
    prompts: tuple[PromptRequest, ...]
    encoders: tuple[EmbeddingKey, ...] = ()

    @classmethod
    def build(cls, requests: Sequence[GenerateRequest], hypernets: Mapping[str, Hypernetwork], *,
              prompt_steps: int, device: torch.device, loras: Mapping[str, LoraNetwork] | None = None) -> BatchRows:
        """Rows in request order; ``prompt_steps`` is the step count prompt editing resolves against.

        ``loras`` maps ``LoraRef.sha256`` to a loaded network (every ref with a non-zero multiplier)."""
        prompts: dict[tuple[PromptRequest, EmbeddingKey], int] = {}

        def index(text: str, clip_skip: int, positive: bool, uses: tuple[LoraUse, ...], key: EmbeddingKey) -> int:
            request = PromptRequest(text, prompt_steps, clip_skip, positive, uses)
            return prompts.setdefault((request, key), len(prompts))

        rows: list[ImageRow] = []
        for req in requests:
            s = req.settings
            chain = tuple((hypernets[ref.sha256], float(ref.multiplier)) for ref in s.hypernets if ref.multiplier != 0)
            uses = tuple(LoraUse((loras or {})[x.sha256], float(x.unet), float(x.te), x.dyn) for x in s.loras
                         if x.unet != 0 or x.te != 0)
            key = embedding_key(req)
            prompt = index(s.encoder_prompt, s.clip_skip, True, uses, key)
            negative = index(s.negative_prompt, s.clip_skip, False, uses, key)
            source = noise_source(s.rng, device)
            for image in s.image_seeds():
                seed = RowSeed(image.seed, image.subseed, float(s.subseed_strength) if image.subseed is not None else 0.0,
                               s.seed_resize_from, s.eta_noise_seed_delta, source)
                rows.append(ImageRow(req.job_id, seed, float(s.cfg_scale), prompt, negative, chain, uses))
        return cls(tuple(rows), tuple(p for p, _ in prompts), tuple(k for _, k in prompts))

    def __len__(self) -> int:
        return len(self.rows)

    def of_job(self, job_id: int) -> list[int]:
        """The row indices of one job, in image order."""
        return [i for i, row in enumerate(self.rows) if row.job_id == job_id]
