"""Errors of the conditioning package, all ``ValueError``s so callers can treat them as bad input.

Why a hierarchy: the worker turns a :class:`ConditioningError` into a "bad request" answer with the message
shown to the user, while anything else stays an internal failure.  The messages name the offending part of the
prompt or file; they never contain tensors or paths beyond the name given by the caller.
"""

from __future__ import annotations

__all__ = [
    "ConditioningError",
    "DuplicateEmbeddingName",
    "InvalidEmbedding",
    "InvalidEmphasisWeight",
    "PromptTooLong",
]


class ConditioningError(ValueError):
    """A prompt or an embedding that cannot be turned into conditioning."""


class PromptTooLong(ConditioningError):
    """A prompt needs more text-encoder work than the configured limits allow."""

    def __init__(self, message: str, *, chunks: int, limit: int) -> None:
        super().__init__(message)
        self.chunks = chunks
        self.limit = limit


class InvalidEmphasisWeight(ConditioningError):
    """An emphasis weight such as ``(cat:1.2.3)`` that is not a number (A1111 fails the whole generation too)."""


class InvalidEmbedding(ConditioningError):
    """A textual-inversion object that is not one embedding of the supported layouts."""


class DuplicateEmbeddingName(ConditioningError):
    """Two embeddings with the same name in one collection: which one a prompt means would be ambiguous."""
