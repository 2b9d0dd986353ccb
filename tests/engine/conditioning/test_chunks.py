"""77-token chunks (spec section 6): A1111's recorded chunks, and the rules one by one with a numeric tokenizer."""

from __future__ import annotations

import pytest

from engine.conditioning.chunks import (
    CHUNK_CONTENT,
    NO_EMBEDDINGS,
    EmbeddingIndex,
    TokenIds,
    chunk_segments,
    empty_chunk,
)
from engine.conditioning.emphasis import BREAK_MARKER, Segment, parse_emphasis
from engine.conditioning.tokenizer import tokenize_function

from .a1111_traces import text_traces

IDS = TokenIds()
COMMA = IDS.comma


def numbers(text: str) -> list[int]:
    """A tokenizer for rule tests: the text is its token ids."""
    return [int(word) for word in text.split()]


def words(count: int, first: int = 1000) -> str:
    return " ".join(str(first + k) for k in range(count))


def content(chunk) -> list[int]:
    """The chunk's tokens between start and the first end token."""
    return list(chunk.tokens[1 : chunk.tokens.index(IDS.end, 1)])


@pytest.fixture(scope="module")
def fixture_index(tokenizer, cases_doc) -> EmbeddingIndex:
    loaded = cases_doc["embeddings_dirs"]["embeddings"]["loaded"]
    return EmbeddingIndex([(name, info["vectors"]) for name, info in loaded.items()], tokenize_function(tokenizer))


@pytest.mark.parametrize(("case_id", "uses_embeddings", "text", "trace"), text_traces())
def test_chunks_match_a1111(case_id, uses_embeddings, text, trace, tokenizer, fixture_index) -> None:
    index = fixture_index if uses_embeddings else NO_EMBEDDINGS
    chunked = chunk_segments(parse_emphasis(text), tokenize_function(tokenizer), index)
    assert [list(chunk.tokens) for chunk in chunked.chunks] == [chunk["tokens"] for chunk in trace["chunks"]]
    assert [list(chunk.multipliers) for chunk in chunked.chunks] == [chunk["multipliers"] for chunk in trace["chunks"]]
    assert [[list(fix) for fix in chunk.fixes] for chunk in chunked.chunks] == [chunk["fixes"] for chunk in trace["chunks"]]
    assert chunked.token_count == trace["token_count"]


def test_layout_of_one_chunk() -> None:
    (chunk,), count = chunk_segments([Segment("5 6", 1.5)], numbers)
    assert chunk.tokens == (IDS.start, 5, 6, *[IDS.end] * 74)
    assert chunk.multipliers == (1.0, 1.5, 1.5, *[1.0] * 74)
    assert count == 2


def test_empty_text_is_one_empty_chunk() -> None:
    assert chunk_segments([Segment("", 1.0)], numbers).chunks == (empty_chunk(),)


@pytest.mark.parametrize(("count", "chunks"), [(75, 1), (76, 2), (150, 2), (151, 3)])
def test_75_tokens_per_chunk(count: int, chunks: int) -> None:
    assert len(chunk_segments([Segment(words(count), 1.0)], numbers).chunks) == chunks


def test_comma_in_the_last_20_slots_moves_the_tail() -> None:
    text = f"{words(60)} {COMMA} {words(20, 2000)}"  # comma at content index 60; 75 - 60 <= 20
    first, second = chunk_segments([Segment(text, 1.0)], numbers).chunks
    assert content(first) == [*range(1000, 1060), COMMA]
    assert content(second) == list(range(2000, 2020))


def test_comma_before_the_window_is_not_used() -> None:
    text = f"{words(54)} {COMMA} {words(30, 2000)}"  # comma at index 54; 75 - 54 = 21 > 20
    first, second = chunk_segments([Segment(text, 1.0)], numbers).chunks
    assert len(content(first)) == 75 and content(second) == list(range(2020, 2030))


def test_comma_as_token_76_opens_the_next_chunk_and_is_forgotten() -> None:
    text = f"{words(75)} {COMMA} {words(80, 2000)}"
    first, second, third = chunk_segments([Segment(text, 1.0)], numbers).chunks
    assert content(first) == list(range(1000, 1075))
    assert content(second) == [COMMA, *range(2000, 2074)]
    assert content(third) == list(range(2074, 2080))


def test_break_closes_even_an_empty_chunk() -> None:
    segments = parse_emphasis("BREAK 5 BREAK BREAK 6 BREAK")
    chunked = chunk_segments(segments, numbers)
    assert [content(chunk) for chunk in chunked.chunks] == [[], [5], [], [6]]
    assert chunked.token_count == 4 * CHUNK_CONTENT


def test_scaled_break_is_the_word() -> None:
    chunked = chunk_segments([Segment("5", 1.0), Segment("7", -1.1)], numbers)
    assert len(chunked.chunks) == 1 and chunked.chunks[0].multipliers[2] == -1.1
    assert len(chunk_segments([Segment("5", 1.0), BREAK_MARKER, Segment("7", 1.0)], numbers).chunks) == 2


def test_embedding_placeholders_and_fix() -> None:
    index = EmbeddingIndex([("emb", 3)], lambda name: [900, 901])
    (chunk,), count = chunk_segments([Segment("5 900 901 6", 1.2)], numbers, index)
    assert content(chunk) == [5, 0, 0, 0, 6]
    assert chunk.multipliers[1:6] == (1.2,) * 5
    assert chunk.fixes == ((1, "emb"),)
    assert count == 5


def test_longest_embedding_name_wins() -> None:
    index = EmbeddingIndex([("short", 1), ("long", 2)], lambda name: [900] if name == "short" else [900, 901])
    (chunk,), _ = chunk_segments([Segment("900 901 900 5", 1.0)], numbers, index)
    assert content(chunk) == [0, 0, 0, 5]
    assert chunk.fixes == ((0, "long"), (2, "short"))


def test_embedding_that_does_not_fit_starts_a_new_chunk() -> None:
    index = EmbeddingIndex([("emb", 3)], lambda name: [900])
    first, second = chunk_segments([Segment(f"{words(73)} 900", 1.0)], numbers, index).chunks
    assert len(content(first)) == 73 and first.fixes == ()
    assert second.fixes == ((0, "emb"),) and content(second) == [0, 0, 0]


def test_fixes_stay_behind_when_the_tail_moves() -> None:
    index = EmbeddingIndex([("emb", 2)], lambda name: [900])
    text = f"{words(60)} {COMMA} 900 {words(13, 2000)} 5"
    first, second = chunk_segments([Segment(text, 1.0)], numbers, index).chunks
    assert first.fixes == ((61, "emb"),)  # written into the first chunk's padding
    assert content(second)[:2] == [0, 0] and second.fixes == ()


def test_unreachable_embedding_names_are_reported() -> None:
    index = EmbeddingIndex([("a", 1), ("A", 1), ("", 1), ("big", 76)], lambda name: [ord(c) for c in name.lower()])
    assert [name for name, _ in index.unreachable] == ["A", "", "big"]


def test_sd2_pads_after_the_first_end_token() -> None:
    sd2 = TokenIds(pad=0)
    (chunk,), _ = chunk_segments([Segment("5 6", 1.0)], numbers, ids=sd2)
    assert chunk.tokens == (IDS.start, 5, 6, IDS.end, *[0] * 73)
