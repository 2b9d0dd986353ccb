"""What A1111 feeds the UNet for a prompt: schedules, emphasis, chunks, embeddings, clip skip (SD1.x/SD2.x).

The grammar modules (``and_split``, ``schedules``, ``emphasis``, ``chunks``, ``plan``) are pure Python and import
without torch; the rest is worker-side.  So that ``import engine.conditioning`` stays torch-free too, the
torch-backed names below are loaded on first access (PEP 562 ``__getattr__``) — ``from engine.conditioning
import PromptEncoder`` works as usual, and the shared checker finds ``learned_conditioning`` here.

Engine use::

    encoder = PromptEncoder(text_encoder, tokenizer, EmbeddingSet([...]))
    parts = encoder.encode([PromptRequest(prompt, steps, clip_skip), PromptRequest(negative, steps, clip_skip,
                                                                                   positive=False)])
    cond = cond_at_step(parts[0][0].schedule, call_index)

Semantics: ``/work/shared/docs/a1111-conditioning.md``; decisions and figures: ``docs/conditioning.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from engine.conditioning.and_split import AndPart, split_and
from engine.conditioning.emphasis import Segment, parse_emphasis
from engine.conditioning.errors import (
    ConditioningError,
    DuplicateEmbeddingName,
    InvalidEmbedding,
    InvalidEmphasisWeight,
    PromptTooLong,
)
from engine.conditioning.plan import DEFAULT_LIMITS, Limits, PromptLength, PromptPlanner
from engine.conditioning.schedules import ScheduleEntry, prompt_schedule

if TYPE_CHECKING:  # what the lazy names below are, for the type checker (importing them needs torch)
    from engine.conditioning.batch import PromptEncoder, PromptRequest, ScheduledCond, WeightedSchedule, cond_at_step
    from engine.conditioning.checker_api import learned_conditioning, multicond_learned_conditioning
    from engine.conditioning.embedding_dir import load_embeddings_dir
    from engine.conditioning.embeddings import (
        Embedding,
        EmbeddingSet,
        SkippedEmbedding,
        embedding_from_object,
        load_embedding_safetensors,
        save_embedding_safetensors,
    )
    from engine.conditioning.tokenizer import load_clip_tokenizer

_TORCH_BACKED = {
    "learned_conditioning": "checker_api",
    "multicond_learned_conditioning": "checker_api",
    "PromptEncoder": "batch",
    "PromptRequest": "batch",
    "ScheduledCond": "batch",
    "WeightedSchedule": "batch",
    "cond_at_step": "batch",
    "Embedding": "embeddings",
    "EmbeddingSet": "embeddings",
    "SkippedEmbedding": "embeddings",
    "embedding_from_object": "embeddings",
    "load_embedding_safetensors": "embeddings",
    "save_embedding_safetensors": "embeddings",
    "load_embeddings_dir": "embedding_dir",
    "load_clip_tokenizer": "tokenizer",
}

__all__ = [
    "DEFAULT_LIMITS",
    "AndPart",
    "ConditioningError",
    "DuplicateEmbeddingName",
    "Embedding",
    "EmbeddingSet",
    "InvalidEmbedding",
    "InvalidEmphasisWeight",
    "Limits",
    "PromptEncoder",
    "PromptLength",
    "PromptPlanner",
    "PromptRequest",
    "PromptTooLong",
    "ScheduleEntry",
    "ScheduledCond",
    "Segment",
    "SkippedEmbedding",
    "WeightedSchedule",
    "cond_at_step",
    "embedding_from_object",
    "learned_conditioning",
    "load_clip_tokenizer",
    "load_embedding_safetensors",
    "load_embeddings_dir",
    "multicond_learned_conditioning",
    "parse_emphasis",
    "prompt_schedule",
    "save_embedding_safetensors",
    "split_and",
]


def __getattr__(name: str) -> object:
    if name not in _TORCH_BACKED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_TORCH_BACKED[name]}"), name)
    globals()[name] = value
    return value
