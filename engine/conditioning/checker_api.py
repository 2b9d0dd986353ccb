"""The two functions the shared parity checker calls (``tools/check_conditioning.py``), with A1111's signatures.

FOR THE CHECKER ONLY: they read a textual-inversion directory with :func:`load_embeddings_dir`, which unpickles
``.pt``/``.bin`` fixture files with ``torch.load(weights_only=True)``.  The engine builds a
:class:`PromptEncoder` from embeddings it loaded itself instead.  No length limits here: parity with A1111, which
has none.
"""

from __future__ import annotations

import torch

from engine.conditioning.batch import PromptEncoder, PromptRequest
from engine.conditioning.embedding_dir import load_embeddings_dir

__all__ = ["learned_conditioning", "multicond_learned_conditioning"]


def _encode(prompts: list[str], steps: int, text_encoder, tokenizer, clip_skip: int, embeddings_dir: str | None,
            positive: bool):
    embeddings = load_embeddings_dir(embeddings_dir).embeddings
    encoder = PromptEncoder(text_encoder, tokenizer, embeddings, limits=None)
    return encoder.encode([PromptRequest(prompt, steps, clip_skip, positive) for prompt in prompts])


def learned_conditioning(prompts: list[str], steps: int, *, text_encoder, tokenizer, clip_skip: int,
                         embeddings_dir: str | None) -> list[list[tuple[int, torch.Tensor]]]:
    """A1111's negative-prompt path: per prompt its schedule ``[(end_at_step, cond), ...]``; AND is text."""
    results = _encode(prompts, steps, text_encoder, tokenizer, clip_skip, embeddings_dir, positive=False)
    return [parts[0].schedule for parts in results]


def multicond_learned_conditioning(prompts: list[str], steps: int, *, text_encoder, tokenizer, clip_skip: int,
                                   embeddings_dir: str | None) -> list[list[tuple[float, list[tuple[int, torch.Tensor]]]]]:
    """A1111's positive-prompt path: per prompt ``[(weight, schedule), ...]``, one per AND-part."""
    return _encode(prompts, steps, text_encoder, tokenizer, clip_skip, embeddings_dir, positive=True)
