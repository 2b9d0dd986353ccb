"""The one model-name rule: A1111's "file stem, exact case", narrowed so a name can never act as a path or break a tag."""

from __future__ import annotations

import pytest

from engine.names import InvalidModelName, check_model_name


@pytest.mark.parametrize("name", ["waterElemental_10", "WaterElemental_10", "dotted.name.v2", "a-b_c.d", "x" * 64, "7"])
def test_valid_names_come_back_unchanged(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize(("name", "message"), [
    ("", "a model name cannot be empty"),
    ("x" * 65, "model names are at most 64 characters (this one has 65)"),
    ("../x", "model names cannot contain path separators (`/` or `\\`)"),
    ("a/b", "model names cannot contain path separators (`/` or `\\`)"),
    ("C:\\x", "model names cannot contain path separators (`/` or `\\`)"),
    ("..", "model names cannot contain `..`"),
    ("a..b", "model names cannot contain `..`"),
    (".hidden", "model names cannot start with `.`"),
    ("two words", "model names cannot contain spaces (a tag would end there); use `_` or `-`"),
    ("tab\tname", "model names cannot contain control characters"),
    ("nul\x00", "model names cannot contain control characters"),
    ("name:0.5", "model names cannot contain `:` (it separates the name from the multiplier in tags)"),
    ("C:x", "model names cannot contain `:` (it separates the name from the multiplier in tags)"),
    ("a>b", "model names cannot contain `<` or `>` (they delimit tags)"),
    ("<a", "model names cannot contain `<` or `>` (they delimit tags)"),
    ("café", "model names may only use letters, digits, `_`, `.` and `-`, not `é`"),
    ("a*b", "model names may only use letters, digits, `_`, `.` and `-`, not `*`"),
    ("None", "`None` is reserved (A1111 uses it for \"no hypernetwork\")"),
])
def test_bad_names_are_refused_with_the_reason(name: str, message: str) -> None:
    with pytest.raises(InvalidModelName) as info:
        check_model_name(name)
    assert str(info.value) == message
