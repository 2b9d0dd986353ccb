"""The CLIP tokenizer shipped in ``engine/assets/clip_tokenizer`` and the adapters the planner needs.

Shipping the tokenizer means no download at start-up or in tests; the files are SD1.5's, byte for byte (see the
README next to them).  Tokenization is A1111's: no start/end tokens, no truncation, each segment on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources

from transformers import CLIPTokenizer

from engine.conditioning.chunks import TokenIds

__all__ = ["TOKENIZER_FILES", "load_clip_tokenizer", "token_ids_of", "tokenize_function"]

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def load_clip_tokenizer() -> CLIPTokenizer:
    """The SD1.x CLIP tokenizer from the package's own files (never the network)."""
    folder = resources.files("engine") / "assets" / "clip_tokenizer"
    with resources.as_file(folder) as path:
        return CLIPTokenizer.from_pretrained(str(path), local_files_only=True)


def token_ids_of(tokenizer) -> TokenIds:
    """Start, end, pad and comma ids as this tokenizer defines them (SD2 tokenizers pad with 0)."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    return TokenIds(start=tokenizer.bos_token_id, end=tokenizer.eos_token_id,
                    pad=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                    comma=comma)


def tokenize_function(tokenizer) -> Callable[[str], Sequence[int]]:
    def tokenize(text: str) -> Sequence[int]:
        return tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]

    return tokenize
