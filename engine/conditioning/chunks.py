"""Weighted segments → 77-token chunks: A1111's token layout, comma backtracking and embedding placeholders.

Each chunk is start token, 75 content slots, end token, padded with the end token, with one multiplier per slot
and the *fixes* (content offset, embedding name) saying where textual-inversion vectors replace token
embeddings.  The rules (spec section 6) are reproduced exactly, including A1111's quirk that fixes stay in the
old chunk when comma backtracking moves the tail of a chunk into the next one.

SD2 tokenizers pad with a different token than they end with; as A1111 does for them, every slot after the first
end token then holds the pad token.  For SD1 (pad = end) this changes nothing.  Pure Python: the tokenizer is
passed in as a function from text to token ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from engine.conditioning.emphasis import Segment, is_break

__all__ = [
    "CHUNK_CONTENT",
    "COMMA_BACKTRACK",
    "Chunk",
    "ChunkedText",
    "EmbeddingIndex",
    "IndexedEmbedding",
    "TokenIds",
    "chunk_segments",
    "empty_chunk",
]

CHUNK_CONTENT = 75  # content slots between the start and end tokens
COMMA_BACKTRACK = 20  # A1111's "prompt word wrap length limit" default
PLACEHOLDER_TOKEN = 0  # what an embedding's slots hold before its vectors replace them

Tokenize = Callable[[str], Sequence[int]]


@dataclass(frozen=True)
class TokenIds:
    """Special token ids of the CLIP BPE vocabulary (the same for SD1.x and SD2.x; SD2 pads with 0)."""

    start: int = 49406
    end: int = 49407
    pad: int = 49407
    comma: int = 267


@dataclass(frozen=True)
class Chunk:
    """77 token ids, their multipliers, and (content offset, embedding name) fixes."""

    tokens: tuple[int, ...]
    multipliers: tuple[float, ...]
    fixes: tuple[tuple[int, str], ...]

    @property
    def key(self) -> tuple[tuple[int, ...], tuple[tuple[int, str], ...]]:
        """What the text encoder sees: chunks with equal keys give equal hidden states."""
        return self.tokens, self.fixes


class ChunkedText(NamedTuple):
    """A text's chunks and A1111's token count for it: 75 for every chunk closed early (by BREAK or because it
    was full), the content of the chunk the text ended in — what A1111's token counter shows."""

    chunks: tuple[Chunk, ...]
    token_count: int


@dataclass(frozen=True)
class IndexedEmbedding:
    name: str
    name_tokens: tuple[int, ...]
    vector_count: int


class EmbeddingIndex:
    """Embeddings found by the token ids of their names, longest name first among those with the same first token.

    Matching on token ids inherits the tokenizer's lower-casing and splitting (``LineWork`` matches ``linework``).
    Names that tokenize to nothing, or exactly like an earlier name, cannot be found; they are listed in
    :attr:`unreachable` with the reason.
    """

    def __init__(self, embeddings: Iterable[tuple[str, int]], tokenize: Tokenize) -> None:
        self.by_first_token: dict[int, list[IndexedEmbedding]] = {}
        self.unreachable: list[tuple[str, str]] = []
        seen: dict[tuple[int, ...], str] = {}
        for name, vector_count in embeddings:
            tokens = tuple(tokenize(name))
            if not tokens:
                self.unreachable.append((name, "its name gives no tokens"))
            elif not 1 <= vector_count <= CHUNK_CONTENT:
                self.unreachable.append((name, f"{vector_count} vectors do not fit a chunk of {CHUNK_CONTENT}"))
            elif tokens in seen:
                self.unreachable.append((name, f"its name gives the same tokens as {seen[tokens]!r}"))
            else:
                seen[tokens] = name
                self.by_first_token.setdefault(tokens[0], []).append(IndexedEmbedding(name, tokens, vector_count))
        for candidates in self.by_first_token.values():
            candidates.sort(key=lambda entry: len(entry.name_tokens), reverse=True)

    def match(self, tokens: Sequence[int], i: int) -> IndexedEmbedding | None:
        for candidate in self.by_first_token.get(tokens[i], ()):
            if tuple(tokens[i : i + len(candidate.name_tokens)]) == candidate.name_tokens:
                return candidate
        return None


NO_EMBEDDINGS = EmbeddingIndex((), lambda text: ())


def _padded(content: list[int], ids: TokenIds) -> tuple[int, ...]:
    tokens = [ids.start, *content, *[ids.end] * (CHUNK_CONTENT - len(content)), ids.end]
    if ids.pad != ids.end:
        first_end = tokens.index(ids.end)
        tokens[first_end + 1 :] = [ids.pad] * (len(tokens) - first_end - 1)
    return tuple(tokens)


def empty_chunk(ids: TokenIds = TokenIds()) -> Chunk:
    """The chunk of an empty text, also what shorter schedule entries are padded with."""
    return Chunk(_padded([], ids), (1.0,) * (CHUNK_CONTENT + 2), ())


@dataclass
class _Builder:
    ids: TokenIds
    chunks: list[Chunk] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, str]] = field(default_factory=list)
    last_comma: int = -1
    token_count: int = 0

    def close(self, *, at_end: bool = False) -> None:
        self.token_count += len(self.tokens) if at_end else CHUNK_CONTENT
        padding = CHUNK_CONTENT - len(self.tokens)
        multipliers = (1.0, *self.multipliers, *(1.0,) * padding, 1.0)
        self.chunks.append(Chunk(_padded(self.tokens, self.ids), multipliers, tuple(self.fixes)))
        self.tokens, self.multipliers, self.fixes, self.last_comma = [], [], [], -1

    def backtrack_to_comma(self) -> None:
        """Close the chunk right after its last comma; the tail (not its fixes) starts the next chunk."""
        cut = self.last_comma + 1
        moved_tokens, moved_multipliers = self.tokens[cut:], self.multipliers[cut:]
        del self.tokens[cut:], self.multipliers[cut:]
        self.close()
        self.tokens, self.multipliers = moved_tokens, moved_multipliers

    def add_segment(self, tokens: Sequence[int], weight: float, index: EmbeddingIndex) -> None:
        i = 0
        while i < len(tokens):
            full = len(self.tokens) == CHUNK_CONTENT
            if tokens[i] == self.ids.comma:
                self.last_comma = len(self.tokens)
            elif full and self.last_comma != -1 and CHUNK_CONTENT - self.last_comma <= COMMA_BACKTRACK:
                self.backtrack_to_comma()
            if len(self.tokens) == CHUNK_CONTENT:
                self.close()
            embedding = index.match(tokens, i)
            if embedding is None:
                self.tokens.append(tokens[i])
                self.multipliers.append(weight)
                i += 1
                continue
            if len(self.tokens) + embedding.vector_count > CHUNK_CONTENT:
                self.close()
            self.fixes.append((len(self.tokens), embedding.name))
            self.tokens += [PLACEHOLDER_TOKEN] * embedding.vector_count
            self.multipliers += [weight] * embedding.vector_count
            i += len(embedding.name_tokens)


def chunk_segments(
    segments: Iterable[Segment], tokenize: Tokenize, index: EmbeddingIndex = NO_EMBEDDINGS, ids: TokenIds = TokenIds()
) -> ChunkedText:
    """The chunks of one schedule entry's text, given its emphasis segments (at least one chunk)."""
    builder = _Builder(ids)
    for segment in segments:
        if is_break(segment):
            builder.close()
        else:
            builder.add_segment(tokenize(segment.text), segment.weight, index)
    if builder.tokens or not builder.chunks:
        builder.close(at_end=True)
    return ChunkedText(tuple(builder.chunks), builder.token_count)
