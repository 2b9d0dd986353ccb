"""The batched prompt encoder the denoising loop uses: many prompts, one text-encoder forward.

A batch holds positive prompts (split on AND) and negative ones, each with its own steps and clip skip.  All are
planned first (limits are checked before any tensor work), the distinct chunks of all of them go through the
text encoder in ONE forward pass — hidden states of every layer come out of it, so different clip skips share
it — and only then is each prompt's schedule assembled with the emphasis applied per schedule and chunk index,
exactly as A1111 does for a prompt alone.  Chunks repeat a lot (an alternation's texts, shared negative prompts,
the empty padding chunk), so the forward is usually much smaller than the sum of the prompts.

Encoding a prompt in a batch gives the same numbers as encoding it alone up to the text encoder's own batch-size
dependence (none measured on CPU fp32; see docs/conditioning.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from engine.conditioning.chunks import Chunk, EmbeddingIndex, empty_chunk
from engine.conditioning.embeddings import Embedding, EmbeddingSet, SkippedEmbedding
from engine.conditioning.encoder import apply_original_emphasis, encode_chunk_batch, encoder_width
from engine.conditioning.plan import DEFAULT_LIMITS, Limits, PartPlan, PromptLength, PromptPlan, PromptPlanner
from engine.conditioning.tokenizer import token_ids_of, tokenize_function
from engine.lora.batch import LoraUse, te_lora_key

__all__ = ["PromptEncoder", "PromptRequest", "ScheduledCond", "WeightedSchedule", "cond_at_step"]


@dataclass(frozen=True)
class PromptRequest:
    """One prompt of a batch: ``positive`` prompts are split on AND, negative ones are not.

    ``loras`` are the LoRAs active while it is encoded (A1111 applies a job's LoRAs to the text encoder for its
    prompt and its negative prompt alike); only their text-encoder modules and multipliers matter here.
    """

    text: str
    steps: int
    clip_skip: int = 1
    positive: bool = True
    loras: tuple[LoraUse, ...] = ()


class ScheduledCond(NamedTuple):
    end_at_step: int
    cond: torch.Tensor  # [77 * chunks, width] float32


class WeightedSchedule(NamedTuple):
    weight: float
    schedule: list[ScheduledCond]


def cond_at_step(schedule: Sequence[ScheduledCond], step: int) -> torch.Tensor:
    """The cond for denoiser call ``step`` (from 0): the first entry whose ``end_at_step`` is >= ``step``.

    A1111 silently falls back to the first entry for a step past the schedule; that is a caller's bug (steps not
    doubled for a second-order sampler), so it raises here.
    """
    for entry in schedule:
        if step <= entry.end_at_step:
            return entry.cond
    raise ValueError(f"step {step} is past the schedule, which ends at step {schedule[-1].end_at_step}")


class _Rows:
    """Distinct (chunk, text-encoder LoRA set) pairs of a batch, in first-seen order: the rows of the single
    text-encoder forward.  A chunk encoded under different LoRAs is a different row."""

    def __init__(self) -> None:
        self.index: dict[tuple, int] = {}
        self.chunks: list[Chunk] = []
        self.loras: list[tuple[LoraUse, ...]] = []

    def row(self, chunk: Chunk, loras: tuple[LoraUse, ...] = ()) -> int:
        key = (chunk.key, te_lora_key(loras))
        if key not in self.index:
            self.index[key] = len(self.chunks)
            self.chunks.append(chunk)
            self.loras.append(loras)
        return self.index[key]


@dataclass(frozen=True)
class _Column:
    """Chunk index c of one AND-part's schedule: the rows of its entries and their multipliers."""

    rows: list[int]
    multipliers: list[tuple[float, ...]]


class PromptEncoder:
    """Encodes prompts for one text encoder + tokenizer + embeddings; build it once per loaded model.

    Embeddings the text encoder cannot use (another width) or prompts cannot reach (a name that tokenizes to
    nothing or like another name) are left out and listed in :attr:`skipped_embeddings` with the reason.
    ``limits=None`` encodes prompts of any length, as A1111.  ``rows_per_forward`` splits the forward pass; 1
    makes results bit-identical whatever else is in the batch, also where multi-threaded or GPU matrix kernels
    depend on the batch size (see docs/conditioning.md), at the cost of one forward per distinct chunk.
    """

    def __init__(self, text_encoder: torch.nn.Module, tokenizer, embeddings: EmbeddingSet | None = None, *,
                 limits: Limits | None = DEFAULT_LIMITS, rows_per_forward: int | None = None) -> None:
        if rows_per_forward is not None and rows_per_forward < 1:
            raise ValueError(f"rows_per_forward must be at least 1, got {rows_per_forward}")
        self.text_encoder = text_encoder
        self.rows_per_forward = rows_per_forward
        usable, skipped = (embeddings or EmbeddingSet()).for_width(encoder_width(text_encoder))
        tokenize = tokenize_function(tokenizer)
        index = EmbeddingIndex(((embedding.name, embedding.vector_count) for embedding in usable.values()), tokenize)
        unreachable = dict(index.unreachable)
        self.embeddings = EmbeddingSet(embedding for embedding in usable.values() if embedding.name not in unreachable)
        self.skipped_embeddings: tuple[SkippedEmbedding, ...] = (
            *skipped, *(SkippedEmbedding(name, reason) for name, reason in index.unreachable))
        self.token_ids = token_ids_of(tokenizer)
        self.planner = PromptPlanner(tokenize, index, self.token_ids, limits)

    def plan(self, request: PromptRequest) -> PromptPlan:
        """What :meth:`encode` will compute for this request; raises :class:`PromptTooLong` as it would."""
        return self.planner.plan(request.text, request.steps, positive=request.positive)

    def length(self, text: str, steps: int, *, positive: bool = True) -> PromptLength:
        """Tokens and chunks the prompt needs (for messages); never raises for length."""
        return self.planner.length(text, steps, positive=positive)

    def embeddings_used(self, requests: Sequence[PromptRequest]) -> list[Embedding]:
        """The embeddings these prompts use, in order of first use (what the infotext's ``TI hashes`` lists)."""
        names: dict[str, None] = {}
        for request in requests:
            plan = self.planner.plan(request.text, request.steps, positive=request.positive, enforce_limits=False)
            names.update((name, None) for name in plan.embedding_names())
        return [self.embeddings[name] for name in names]

    def encode(self, requests: Sequence[PromptRequest]) -> list[list[WeightedSchedule]]:
        """Per request its AND-parts ``(weight, [(end_at_step, cond), ...])``; a negative prompt has one part."""
        plans = [self.planner.plan(request.text, request.steps, positive=request.positive) for request in requests]
        if not plans:
            return []
        rows = _Rows()
        layouts = [[(part, self._columns(part, rows, request.loras)) for part in plan.parts]
                   for plan, request in zip(plans, requests, strict=True)]
        skips = [max(1, request.clip_skip) for request in requests]
        lora_rows = rows.loras if any(te_lora_key(loras) for loras in rows.loras) else None
        hidden = encode_chunk_batch(self.text_encoder, self._token_ids(rows), self._fixes(rows), set(skips),
                                    rows_per_forward=self.rows_per_forward, lora_rows=lora_rows)
        return [
            [WeightedSchedule(part.weight, self._schedule(part, columns, hidden[skip])) for part, columns in layout]
            for layout, skip in zip(layouts, skips, strict=True)
        ]

    def _columns(self, part: PartPlan, rows: _Rows, loras: tuple[LoraUse, ...]) -> list[_Column]:
        padding = empty_chunk(self.token_ids)
        columns = []
        for c in range(part.chunk_count):
            chunks = [entry.chunks[c] if c < len(entry.chunks) else padding for entry in part.entries]
            columns.append(_Column([rows.row(chunk, loras) for chunk in chunks],
                                   [chunk.multipliers for chunk in chunks]))
        return columns

    def _device(self) -> torch.device:
        return self.text_encoder.get_input_embeddings().weight.device

    def _token_ids(self, rows: _Rows) -> torch.Tensor:
        return torch.tensor([chunk.tokens for chunk in rows.chunks], dtype=torch.long, device=self._device())

    def _fixes(self, rows: _Rows) -> list[list[tuple[int, torch.Tensor]]]:
        return [[(offset, self.embeddings[name].vectors) for offset, name in chunk.fixes] for chunk in rows.chunks]

    @staticmethod
    def _schedule(part: PartPlan, columns: list[_Column], hidden: torch.Tensor) -> list[ScheduledCond]:
        per_column = []
        for column in columns:
            z = hidden[torch.tensor(column.rows, device=hidden.device)]
            per_column.append(apply_original_emphasis(z, torch.tensor(column.multipliers, dtype=torch.float32)))
        conds = torch.cat(per_column, dim=1)  # [entries, 77 * chunks, width]
        return [ScheduledCond(entry.end_at_step, conds[b]) for b, entry in enumerate(part.entries)]
