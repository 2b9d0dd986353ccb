"""Planning a prompt before encoding: AND parts, limits, token counts for messages, embeddings used."""

from __future__ import annotations

import pytest

from engine.conditioning import Limits, PromptPlanner, PromptTooLong
from engine.conditioning.chunks import EmbeddingIndex


def numbers(text: str) -> list[int]:
    return [int(word) for word in text.split()]


def words(count: int) -> str:
    return " ".join(str(1000 + k) for k in range(count))


def test_positive_prompts_split_on_and_negative_ones_do_not() -> None:
    planner = PromptPlanner(numbers)
    positive = planner.plan("5 AND 6:0.5", 10, positive=True)
    assert [(part.weight, part.entries[0].text) for part in positive.parts] == [(1.0, "5"), (0.5, " 6")]
    with pytest.raises(ValueError):  # "AND" is text in a negative prompt; the numeric tokenizer cannot read it
        planner.plan("5 AND 6:0.5", 10, positive=False)


def test_limit_on_chunks_per_text() -> None:
    planner = PromptPlanner(numbers, limits=Limits(max_chunks_per_text=2, max_distinct_chunks=64))
    assert planner.plan(words(150), 10, positive=False).length().chunks == 2
    with pytest.raises(PromptTooLong, match="needs 3 chunks of 75 tokens \\(151 tokens\\); at most 2") as refused:
        planner.plan(words(151), 10, positive=False)
    assert (refused.value.chunks, refused.value.limit) == (3, 2)


def test_limit_on_distinct_chunks_counts_every_schedule_text() -> None:
    planner = PromptPlanner(numbers, limits=Limits(max_chunks_per_text=8, max_distinct_chunks=3))
    assert planner.plan("[1|2|3] 9", 6, positive=False).distinct_chunks() == 3
    with pytest.raises(PromptTooLong, match="4 different chunks"):
        planner.plan("[1|2|3|4] 9", 6, positive=False)


def test_default_limit_refuses_a_huge_prompt_and_length_still_counts_it() -> None:
    planner = PromptPlanner(numbers)
    with pytest.raises(PromptTooLong):
        planner.plan(words(700), 20, positive=True)
    assert planner.length(words(700), 20, positive=True).chunks == 10
    assert PromptPlanner(numbers, limits=None).plan(words(700), 20, positive=True).length().tokens == 700


def test_length_is_the_longest_text_over_schedule_and_parts() -> None:
    planner = PromptPlanner(numbers)
    length = planner.length(f"[{words(80)}:5:3] AND 7", 10, positive=True)
    assert (length.tokens, length.chunks) == (80, 2)


def test_embedding_names_in_order_of_first_use_across_schedule() -> None:
    index = EmbeddingIndex([("x", 1), ("y", 2)], lambda name: [900] if name == "x" else [901])
    plan = PromptPlanner(numbers, index).plan("[901:5:3] 900 901", 10, positive=False)
    assert plan.embedding_names() == ["y", "x"]
