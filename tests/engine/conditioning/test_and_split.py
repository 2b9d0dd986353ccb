"""AND split of positive prompts (spec section 1), against examples and A1111's recorded splits."""

from __future__ import annotations

import pytest

from engine.conditioning import split_and

from .a1111_traces import and_split_traces


@pytest.mark.parametrize(("prompt", "parts"), [
    ("a cat", [("a cat", 1.0)]),
    ("photo of a cat:1.3", [("photo of a cat", 1.3)]),
    ("a cat AND a dog :0.7", [("a cat", 1.0), (" a dog", 0.7)]),
    ("a castle AND", [("a castle", 1.0), ("", 1.0)]),
    ("ANDROID and xANDy", [("ANDROID and xANDy", 1.0)]),
    ("a : 2. AND b:.5 AND c:-0.5  ", [("a", 2.0), (" b", 0.5), (" c", -0.5)]),
    ("  lead kept:+3", [("  lead kept", 3.0)]),
    ("[a fox AND a wolf:a bear:5]", [("[a fox", 1.0), (" a wolf:a bear:5]", 1.0)]),
    ("a:1.2.3", [("a:1.2.3", 1.0)]),
    ("a:1:2", [("a:1", 2.0)]),
    ("ratio 16:9 x", [("ratio 16:9 x", 1.0)]),
    ("line one\nline two:0.5", [("line one\nline two", 0.5)]),
])
def test_split(prompt: str, parts: list[tuple[str, float]]) -> None:
    assert [tuple(part) for part in split_and(prompt)] == parts


@pytest.mark.parametrize(("case_id", "prompt", "expected"), and_split_traces())
def test_split_matches_a1111(case_id: str, prompt: str, expected: list) -> None:
    assert [list(part) for part in split_and(prompt)] == expected
