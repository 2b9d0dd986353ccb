"""Prompt editing and alternation (spec section 2): examples from the spec, tricky cases, A1111's schedules."""

from __future__ import annotations

import pytest

from engine.conditioning import prompt_schedule
from engine.conditioning.schedules import switch_step

from .a1111_traces import schedule_traces


def schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    return [(entry.end_at_step, entry.text) for entry in prompt_schedule(prompt, steps)]


@pytest.mark.parametrize(("prompt", "steps", "expected"), [
    # the spec's examples (section 2.3)
    ("a [b:3]", 10, [(3, "a "), (10, "a b")]),
    ("a [b:c:0.25] d", 10, [(2, "a b d"), (10, "a c d")]),
    ("[a:b:0]", 10, [(10, "b")]),
    ("[a:b:1.0]", 10, [(10, "a")]),
    ("[a:b:25]", 10, [(10, "a")]),
    ("[a:b:-3]", 10, [(10, "b")]),
    ("[a:b:0.55]", 25, [(13, "a"), (25, "b")]),
    # number forms: "1" absolute, "5." and ".5" fractions, exponent without a dot absolute
    ("[a:b:1]", 10, [(1, "a"), (10, "b")]),
    ("[a:b:5.]", 10, [(10, "a")]),
    ("[a:b:.5]", 10, [(5, "a"), (10, "b")]),
    ("[a:b:1e1]", 20, [(10, "a"), (20, "b")]),
    ("[a:b:.5e1]", 20, [(20, "a")]),
    ("[a:b:+4]", 10, [(4, "a"), (10, "b")]),
    ("[a:b: 5 ]", 10, [(5, "a"), (10, "b")]),
    ("[a: 5 :3]", 10, [(3, "a"), (10, " 5 ")]),
    ("[a:b:1e999]", 10, [(10, "a")]),
    ("[a:b:-1e999]", 10, [(10, "b")]),
    # add / remove
    ("[a::3]", 10, [(3, "a"), (10, "")]),
    ("[:b:3]", 10, [(3, ""), (10, "b")]),
    ("knight[ holding a sword::5][: wearing a helmet:8]", 12,
     [(5, "knight holding a sword"), (8, "knight"), (12, "knight wearing a helmet")]),
    # nesting: inside branches and inside emphasis, which keeps its brackets and colon
    ("[[a:b:2]:c:5]", 10, [(2, "a"), (5, "b"), (10, "c")]),
    ("(a [b:c:5]:1.2)", 10, [(5, "(a b:1.2)"), (10, "(a c:1.2)")]),
    ("[(red:1.4) apple:green pear:0.4] x", 10, [(4, "(red:1.4) apple x"), (10, "green pear x")]),
    ("[x]", 10, [(10, "[x]")]),
    # alternation: one entry per step, equal neighbours kept, empty options
    ("[cat|dog] x", 4, [(1, "cat x"), (2, "dog x"), (3, "cat x"), (4, "dog x")]),
    ("[a||b]", 3, [(1, "a"), (2, ""), (3, "b")]),
    ("[a|b][c|d|e]", 3, [(1, "ac"), (2, "bd"), (3, "ae")]),
    ("[a|b] [c:d:2]", 3, [(1, "a c"), (2, "b c"), (3, "a d")]),
    # stray brackets and colons stay text; a well-formed group is a group wherever it is
    ("((x][:y:z [w:3]", 10, [(3, "((x][:y:z "), (10, "((x][:y:z w")]),
    ("[a:b] [c:2]", 10, [(2, "[a:b] "), (10, "[a:b] c")]),
    ("[a:b:c:5]", 10, [(10, "[a:b:c:5]")]),
    ("[x [a:b:2]", 10, [(2, "[x a"), (10, "[x b")]),
    ("16:9 ratio", 10, [(10, "16:9 ratio")]),
    # escapes are text (the backslash stays for the emphasis parser)
    (r"\[a:b:5\]", 10, [(10, r"\[a:b:5\]")]),
    (r"[\:a:b:5]", 10, [(5, r"\:a"), (10, "b")]),
    # the ASCII digits of lark's NUMBER only
    ("[a:b:\u0665]", 10, [(10, "[a:b:\u0665]")]),
    # our reading of the spec's undefined zone: the group is a group
    ("x [a:b:2]:", 10, [(2, "x a:"), (10, "x b:")]),
    ("[a:b:2]]", 10, [(2, "a]"), (10, "b]")]),
])
def test_schedule(prompt: str, steps: int, expected: list[tuple[int, str]]) -> None:
    assert schedule(prompt, steps) == expected


@pytest.mark.parametrize("prompt", [
    "a [cat:dog:5] d|e",       # a stray | disables editing for the whole prompt
    "(a|b) [c:d:2]",           # | inside round brackets is stray too
    "[a:b|c:5] [x:y:2]",
    "[x:y:2] trailing \\",     # a backslash at the end
    "[x:y:2] a\\\nb",          # a backslash before a newline
])
def test_unparsable_prompt_is_one_entry_unchanged(prompt: str) -> None:
    assert schedule(prompt, 10) == [(10, prompt)]


def test_escaped_backslash_before_newline_parses() -> None:
    assert schedule("[a:b:2] \\\\\nc", 10) == [(2, "a \\\\\nc"), (10, "b \\\\\nc")]


def test_deep_nesting_has_no_recursion_limit() -> None:
    deep = "(" * 5000 + "[a:b:2]" + ")" * 5000
    assert schedule(deep, 4) == [(2, "(" * 5000 + "a" + ")" * 5000), (4, "(" * 5000 + "b" + ")" * 5000)]


def test_many_unclosed_brackets_are_stray_and_read_once() -> None:
    prompt = "(" * 20000 + "[a:b:2]"
    assert schedule(prompt, 4) == [(2, "(" * 20000 + "a"), (4, "(" * 20000 + "b")]


@pytest.mark.parametrize("steps", [0, -1, 2.5])
def test_steps_must_be_positive(steps) -> None:
    with pytest.raises(ValueError, match="steps"):
        prompt_schedule("a", steps)


@pytest.mark.parametrize(("number", "steps", "when"), [
    ("0.5", 20, 10), ("0.55", 25, 13), ("1", 20, 1), ("1.0", 20, 20), ("30", 20, 20), ("-0.5", 20, -1), ("0", 20, 0),
])
def test_switch_step(number: str, steps: int, when: int) -> None:
    assert switch_step(number, steps) == when


@pytest.mark.parametrize(("case_id", "steps", "prompt", "expected"), schedule_traces())
def test_schedule_matches_a1111(case_id: str, steps: int, prompt: str, expected: list) -> None:
    assert [list(entry) for entry in schedule(prompt, steps)] == expected
