"""A prompt → everything the text encoder will have to compute, before any tensor exists.

Planning is separate from encoding so that limits are checked, token counts reported and used embeddings listed
without touching the model, and so the batched encoder can collect the chunks of many prompts first and run
them through the text encoder once.  Pure Python: the tokenizer is passed in as a function.

Limits (:class:`Limits`), which A1111 does not have: a text (one schedule entry) may need at most 8 chunks
(600 tokens), and one prompt's schedules at most 64 distinct chunks.  The first keeps the UNet's cross-attention
context bounded; the second bounds what alternation can multiply (``[a|b][c|d]...`` makes a new text per step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.conditioning.and_split import AndPart, split_and
from engine.conditioning.chunks import (
    NO_EMBEDDINGS,
    Chunk,
    ChunkedText,
    EmbeddingIndex,
    TokenIds,
    Tokenize,
    chunk_segments,
)
from engine.conditioning.emphasis import parse_emphasis
from engine.conditioning.errors import PromptTooLong
from engine.conditioning.schedules import prompt_schedule

__all__ = ["DEFAULT_LIMITS", "EntryPlan", "Limits", "PartPlan", "PromptLength", "PromptPlan", "PromptPlanner"]


@dataclass(frozen=True)
class Limits:
    max_chunks_per_text: int = 8
    max_distinct_chunks: int = 64


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class EntryPlan:
    end_at_step: int
    text: str
    chunks: tuple[Chunk, ...]
    token_count: int  # as A1111's token counter shows it


@dataclass(frozen=True)
class PartPlan:
    """One AND-part (a negative prompt is one part of weight 1.0) and its schedule."""

    weight: float
    entries: tuple[EntryPlan, ...]

    @property
    def chunk_count(self) -> int:
        return max(len(entry.chunks) for entry in self.entries)


@dataclass(frozen=True)
class PromptLength:
    """For messages: the largest token count (as A1111's counter) and the most chunks of any text."""

    tokens: int
    chunks: int


@dataclass(frozen=True)
class PromptPlan:
    prompt: str
    parts: tuple[PartPlan, ...]

    def entries(self) -> list[EntryPlan]:
        return [entry for part in self.parts for entry in part.entries]

    def length(self) -> PromptLength:
        entries = self.entries()
        return PromptLength(
            tokens=max(entry.token_count for entry in entries),
            chunks=max(len(entry.chunks) for entry in entries),
        )

    def distinct_chunks(self) -> int:
        return len({chunk.key for entry in self.entries() for chunk in entry.chunks})

    def embedding_names(self) -> list[str]:
        """Embeddings the prompt uses, in order of first use (for the infotext's ``TI hashes``)."""
        names: dict[str, None] = {}
        for entry in self.entries():
            for chunk in entry.chunks:
                names.update((name, None) for _, name in chunk.fixes)
        return list(names)


class PromptPlanner:
    """Turns prompt texts into :class:`PromptPlan`; holds the tokenizer function and the embedding index."""

    def __init__(
        self,
        tokenize: Tokenize,
        index: EmbeddingIndex = NO_EMBEDDINGS,
        ids: TokenIds = TokenIds(),
        limits: Limits | None = DEFAULT_LIMITS,
    ) -> None:
        self._tokenize = tokenize
        self.index = index
        self.ids = ids
        self.limits = limits

    def plan(self, prompt: str, steps: int, *, positive: bool, enforce_limits: bool = True) -> PromptPlan:
        """Positive prompts are split on AND; raises :class:`PromptTooLong` beyond :attr:`limits`."""
        plan = self._plan(prompt, steps, positive)
        if enforce_limits and self.limits is not None:
            self._check(plan, self.limits)
        return plan

    def length(self, prompt: str, steps: int, *, positive: bool) -> PromptLength:
        """Token and chunk counts, also for prompts over the limits (to say by how much)."""
        return self._plan(prompt, steps, positive).length()

    def _plan(self, prompt: str, steps: int, positive: bool) -> PromptPlan:
        parts = split_and(prompt) if positive else [AndPart(prompt, 1.0)]
        token_cache: dict[str, Sequence[int]] = {}
        chunk_cache: dict[str, ChunkedText] = {}

        def tokenize(text: str) -> Sequence[int]:
            if text not in token_cache:
                token_cache[text] = self._tokenize(text)
            return token_cache[text]

        def entry_plan(end_at_step: int, text: str) -> EntryPlan:
            if text not in chunk_cache:
                chunk_cache[text] = chunk_segments(parse_emphasis(text), tokenize, self.index, self.ids)
            return EntryPlan(end_at_step, text, *chunk_cache[text])

        return PromptPlan(prompt, tuple(
            PartPlan(part.weight, tuple(
                entry_plan(entry.end_at_step, entry.text) for entry in prompt_schedule(part.text, steps)
            ))
            for part in parts
        ))

    @staticmethod
    def _check(plan: PromptPlan, limits: Limits) -> None:
        length = plan.length()
        if length.chunks > limits.max_chunks_per_text:
            raise PromptTooLong(
                f"the prompt needs {length.chunks} chunks of 75 tokens ({length.tokens} tokens); "
                f"at most {limits.max_chunks_per_text} are allowed",
                chunks=length.chunks, limit=limits.max_chunks_per_text)
        distinct = plan.distinct_chunks()
        if distinct > limits.max_distinct_chunks:
            raise PromptTooLong(
                f"the prompt's schedule needs {distinct} different chunks of 75 tokens; "
                f"at most {limits.max_distinct_chunks} are allowed",
                chunks=distinct, limit=limits.max_distinct_chunks)
