"""Emphasis segments (spec section 3): weights as float products, escapes, stray brackets, BREAK; A1111's parses."""

from __future__ import annotations

import pytest

from engine.conditioning import InvalidEmphasisWeight, parse_emphasis
from engine.conditioning.emphasis import BREAK_MARKER, is_break

from .a1111_traces import text_traces

R, S = 1.1, 1 / 1.1


@pytest.mark.parametrize(("text", "segments"), [
    ("", [("", 1.0)]),
    ("a cat", [("a cat", 1.0)]),
    ("(a)", [("a", R)]),
    ("((a))", [("a", R * R)]),
    ("(a:1.21)", [("a", 1.21)]),
    ("[a]", [("a", S)]),
    ("[[a]]", [("a", S * S)]),
    ("(a:1.5) b", [("a", 1.5), (" b", 1.0)]),
    ("(a:  0.5  )", [("a", 0.5)]),
    ("(a:0)", [("a", 0.0)]),
    ("(a:-1)", [("a", -1.0)]),
    ("(a:+2)", [("a", 2.0)]),
    ("[(a:1.5)]", [("a", 1.5 * S)]),
    ("((a:1.3))", [("a", 1.3 * R)]),
    ("(sun)flower", [("sun", R), ("flower", 1.0)]),
    ("(wo)(rd)", [("word", R)]),
    (r"\(a\)", [("(a)", 1.0)]),
    (r"\[a\] \\", [("[a] \\", 1.0)]),
    (r"a \x b", [("a x b", 1.0)]),
    ("a\\", [("a", 1.0)]),
    ("(unclosed", [("unclosed", R)]),
    ("[unclosed (both", [("unclosed ", S), ("both", R * S)]),
    ("a ] b ) c", [("a ] b ) c", 1.0)]),
    ("a:1.5) b", [("a:1.5) b", 1.0)]),
    ("16:9", [("16:9", 1.0)]),
    ("a BREAK b", [("a", 1.0), BREAK_MARKER, ("b", 1.0)]),
    ("BREAK a", [("", 1.0), BREAK_MARKER, ("a", 1.0)]),
    ("a BREAKING b", [("a BREAKING b", 1.0)]),
    ("a break b", [("a break b", 1.0)]),
    ("(a BREAK b)", [("a", R), ("BREAK", -R), ("b", R)]),
    ("[x:y:5]", [("x:y:5", S)]),
])
def test_segments(text: str, segments: list) -> None:
    assert [tuple(segment) for segment in parse_emphasis(text)] == [tuple(segment) for segment in segments]


def test_weights_are_float_products_not_rounded() -> None:
    assert parse_emphasis("((a))")[0].weight == 1.2100000000000002
    assert parse_emphasis("((a))")[0].weight != parse_emphasis("(a:1.21)")[0].weight


def test_only_the_exact_marker_breaks() -> None:
    assert is_break(parse_emphasis("a BREAK b")[1])
    assert not any(is_break(segment) for segment in parse_emphasis("(a BREAK b)"))


@pytest.mark.parametrize("text", ["(a:1.2.3)", "(a:.)", "x (y:..) z"])
def test_unreadable_weight_is_refused(text: str) -> None:
    with pytest.raises(InvalidEmphasisWeight, match="not a number"):
        parse_emphasis(text)


@pytest.mark.parametrize(("case_id", "uses_embeddings", "text", "trace"), text_traces())
def test_segments_match_a1111(case_id: str, uses_embeddings: bool, text: str, trace: dict) -> None:
    assert [list(segment) for segment in parse_emphasis(text)] == trace["parsed"]
