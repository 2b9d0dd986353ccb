"""Prompt-tag grammar: A1111's own parses (fixture), our request rules, name resolution, and properties."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from engine.names import MAX_NAME_LENGTH, is_valid_model_name
from engine.prompt import (
    HypernetTag,
    ParsedPrompt,
    PromptError,
    UnknownHypernet,
    check_negative_prompt,
    closest_names,
    format_multiplier,
    format_tag,
    parse_hypernet_tags,
    parse_request_prompt,
    resolve_names,
    write_tags,
)

CASES_DOC = json.loads((Path(__file__).parents[1] / "fixtures" / "prompt_cases.json").read_text(encoding="utf-8"))
CASES = CASES_DOC["cases"]
INSTALLED = sorted(CASES_DOC["list_hypernetworks_result"])  # A1111's {stem: path} for the fixture directory
LIMITS = {"min_multiplier": -2.0, "max_multiplier": 2.0, "max_tags": 4, "max_length": 200}
# The one deliberate difference: A1111 leaves the bare tutorial form as words; we read it as a tag.
OUR_EXTENSION = {"blog_style_no_brackets"}


def request(prompt: str, **overrides: float) -> ParsedPrompt:
    return parse_request_prompt(prompt, **{**LIMITS, **overrides})  # type: ignore[arg-type]


def a1111_expected(case: dict) -> list[tuple[str, float]] | None:
    """A1111's (name, multiplier) list for the first prompt, or None where its multiplier conversion failed."""
    if any("could not convert" in e for e in case["errors"]):
        return None
    items = case["parsed_extra_network_data"].get("hypernet", [])
    return [(it[0], float(it[1]) if len(it) > 1 else 1.0) for it in items]


def same_tags(got: list[tuple[str, float]], expected: list[tuple[str, float]]) -> bool:
    if len(got) != len(expected):
        return False
    pairs = zip(got, expected, strict=True)
    return all(gn == en and (gm == em or (math.isnan(gm) and math.isnan(em))) for (gn, gm), (en, em) in pairs)


# --- A1111 parity on the fixture --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if c["id"] not in OUR_EXTENSION], ids=lambda c: c["id"])
def test_parse_matches_a1111(case: dict) -> None:
    expected = a1111_expected(case)
    if expected is None:
        with pytest.raises(PromptError) as info:
            parse_hypernet_tags(case["prompts"][0])
        assert info.value.tag is not None and info.value.tag in case["prompts"][0]
        return
    _, got = parse_hypernet_tags(case["prompts"][0])
    assert same_tags(got, expected), (got, expected)
    # A1111 strips tags from every prompt of a batch (only the first prompt's tags are used).
    for prompt, after in zip(case["prompts"], case["prompts_after_tag_removal"], strict=True):
        assert parse_hypernet_tags(prompt)[0] == after


def test_bare_form_is_our_extension() -> None:
    (case,) = [c for c in CASES if c["id"] == "blog_style_no_brackets"]
    assert case["parsed_extra_network_data"] == {}  # A1111: plain words
    assert parse_hypernet_tags(case["prompts"][0]) == (" a castle", [("waterElemental_10", 0.7)])


@pytest.mark.parametrize(
    "case", [c for c in CASES if len(c["prompts"]) == 1 and a1111_expected(c)], ids=lambda c: c["id"]
)
def test_resolution_matches_a1111(case: dict) -> None:
    """A1111 loads a tag's file exactly when the name is an installed stem; we resolve those and refuse the rest."""
    tags = [HypernetTag(n, m, raw=f"<hypernet:{n}>") for n, m in parse_hypernet_tags(case["prompts"][0])[1]]
    loaded = [Path(entry["file"]).stem for entry in case["loaded_in_order"]]
    if len(loaded) == len(tags):
        assert [t.name for t in resolve_names(tags, INSTALLED)] == loaded
    else:
        with pytest.raises(UnknownHypernet):
            resolve_names(tags, INSTALLED)


def test_zero_multiplier_is_kept() -> None:
    assert request("a castle <hypernet:waterElemental_10:0>").tags == (HypernetTag("waterElemental_10", 0.0),)


# --- request rules: every problem is an error naming the tag ----------------------------------------------------


def test_tutorial_prompt() -> None:
    parsed = request("water elemental woman hypernet:waterElemental_10:0.7")
    assert parsed.text == "water elemental woman"
    assert parsed.tags == (HypernetTag("waterElemental_10", 0.7),)
    assert parsed.tags[0].raw == "hypernet:waterElemental_10:0.7"
    assert write_tags("water elemental woman hypernet:waterElemental_10:0.7", [0.7]) == (
        "water elemental woman <hypernet:waterElemental_10:0.7>")


def test_mixed_forms_keep_order_and_duplicates() -> None:
    parsed = request("<hypernet:b:0.3> castle, hypernet:a, <hypernet:b:0.9>\n\tat  night")
    assert [(t.name, t.multiplier) for t in parsed.tags] == [("b", 0.3), ("a", 1.0), ("b", 0.9)]
    assert parsed.text == "castle, , at night"


def test_unparsable_multiplier_message() -> None:
    with pytest.raises(PromptError) as info:
        request("x hypernet:foo:abc")
    assert str(info.value) == "`hypernet:foo:abc` — multiplier `abc` is not a number"
    assert info.value.tag == "hypernet:foo:abc"


@pytest.mark.parametrize(
    ("prompt", "tag", "phrase"),
    [
        ("x <hypernet:foo:nan>", "<hypernet:foo:nan>", "multiplier `nan` is not a finite number"),
        ("x <hypernet:foo:-inf>", "<hypernet:foo:-inf>", "multiplier `-inf` is not a finite number"),
        ("x <hypernet:foo:2.5>", "<hypernet:foo:2.5>", "multiplier 2.5 is outside the allowed range -2 to 2"),
        ("x <hypernet:foo:te=0.5>", "<hypernet:foo:te=0.5>", "multiplier `te=0.5` is not a number"),
        ("x <hypernet:foo:>", "<hypernet:foo:>", "the multiplier after `:` is missing"),
        ("x <hypernet::0.5>", "<hypernet::0.5>", "the hypernet name is missing"),
        ("x <hypernet: :0.5>", "<hypernet: :0.5>", "the hypernet name is missing"),
        ("x hypernet::1", "hypernet::1", "the hypernet name is missing"),
        ("x <hypernet:a:1:junk>", "<hypernet:a:1:junk>", "unexpected extra part `junk`"),
        ("x <embedding:someThing:0.8>", "<embedding:someThing:0.8>", "`embedding` tags are not supported here"),
        ("x <LORA:someLora:0.8>", "<LORA:someLora:0.8>", "write the tag type in lower case: `<lora:…>`"),
        ("x <HYPERNET:foo:1>", "<HYPERNET:foo:1>", "write the tag type in lower case"),
        ("x <hypernet:a\nb:1>", "<hypernet:a\nb:1>", "— model names cannot contain control characters"),
        ("x <hypernet:a<b:1>", "<hypernet:a<b:1>", "— model names cannot contain `<` or `>` (they delimit tags)"),
        ("x <hypernet:wäter:1>", "<hypernet:wäter:1>", "— model names may only use letters, digits, `_`, `.` and `-`"),
        ("x <hypernet:>", "<hypernet:>", "looks like a hypernet tag but could not be read"),
        ("x (hypernet:foo:0.7)", "(hypernet:foo:0.7)", "looks like a hypernet tag but could not be read"),
        ("x Hypernet:foo", "Hypernet:foo", "looks like a hypernet tag but could not be read"),
        ("x <lora<hypernet:q>:y>", "<lora:y>", "looks like a hypernet tag but could not be read"),
        ("x <hypernet:a> <hypernet:b> <hypernet:c> <hypernet:d> <hypernet:e>", "<hypernet:e>", "too many hypernet tags (5)"),
    ],
)
def test_errors_name_the_tag(prompt: str, tag: str, phrase: str) -> None:
    with pytest.raises(PromptError) as info:
        request(prompt)
    assert info.value.tag == tag
    assert phrase in str(info.value)


def test_long_name_refused_with_the_name_rule() -> None:
    name = "n" * (MAX_NAME_LENGTH + 1)
    with pytest.raises(PromptError) as info:
        request(f"x <hypernet:{name}>")
    assert str(info.value).endswith(f"— model names are at most {MAX_NAME_LENGTH} characters (this one has "
                                    f"{MAX_NAME_LENGTH + 1})")


@pytest.mark.parametrize("prompt", ["<hypernet:foo:0.5>", "  hypernet:foo \n", "<hypernet:a><hypernet:b>"])
def test_prompt_empty_without_tags(prompt: str) -> None:
    with pytest.raises(PromptError, match="empty once the hypernet tags are removed") as info:
        request(prompt)
    assert info.value.tag is None


def test_length_counts_text_not_tags() -> None:
    assert request("abcde <hypernet:a_long_hypernet_name:1>", max_length=5).text == "abcde"
    with pytest.raises(PromptError, match="6 characters long"):
        request("abcdef", max_length=5)


def test_multiplier_range_is_inclusive() -> None:
    assert [t.multiplier for t in request("x <hypernet:a:-2> <hypernet:b:2>").tags] == [-2.0, 2.0]


def test_names_are_trimmed_and_exact_case() -> None:
    assert request("x <hypernet: waterElemental_10 :0.7>").tags == (HypernetTag("waterElemental_10", 0.7),)


def test_space_before_comma_is_tidied_only_after_letters() -> None:
    assert request("woman <hypernet:a>, red").text == "woman, red"
    assert request("a_ , b").text == "a_ , b"  # "_," would become one CLIP token


def test_bad_limits_are_programming_errors() -> None:
    with pytest.raises(ValueError):
        request("x", min_multiplier=2.0, max_multiplier=1.0)
    with pytest.raises(ValueError):
        request("x", max_multiplier=math.inf)


# --- negative prompt ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("negative", ["blurry <hypernet:foo:1>", "blurry, hypernet:foo", "<HYPERNET:x>"])
def test_negative_prompt_refuses_hypernets(negative: str) -> None:
    with pytest.raises(PromptError, match="go in the prompt, not in the negative prompt"):
        check_negative_prompt(negative, max_length=100)


def test_negative_prompt_passes_other_text() -> None:
    assert check_negative_prompt("  blurry,\n <foo:x:1>  ", max_length=100) == "blurry, <foo:x:1>"
    with pytest.raises(PromptError, match=r"^`<lora:x:1>` — LoRAs go in the prompt, not in the negative prompt"):
        check_negative_prompt("blurry <lora:x:1>", max_length=100)
    assert check_negative_prompt("", max_length=100) == ""
    with pytest.raises(PromptError, match="limit is 3"):
        check_negative_prompt("abcd", max_length=3)


# --- name resolution -----------------------------------------------------------------------------------------------


def test_unknown_name_suggests_case_match_first() -> None:
    with pytest.raises(UnknownHypernet) as info:
        tag = HypernetTag("waterelemental_10", 1.0, raw="hypernet:waterelemental_10")
        resolve_names([tag], ["WaterElemental_10", "animeStyle"])
    err = info.value
    assert err.suggestions == ("WaterElemental_10",)
    assert str(err) == (
        "`hypernet:waterelemental_10` — there is no hypernet named `waterelemental_10` (names are case-sensitive); "
        "did you mean `WaterElemental_10`?"
    )
    assert err.tag == "hypernet:waterelemental_10" and err.name == "waterelemental_10"


def test_unknown_name_close_matches_at_most_three() -> None:
    installed = ["animeStyle", "animeStyle2", "animeStyles", "animeStyle_v3", "zzz"]
    with pytest.raises(UnknownHypernet) as info:
        resolve_names([HypernetTag("animestyl", 1.0)], installed)
    assert len(info.value.suggestions) == 3
    assert set(info.value.suggestions) <= set(installed) - {"zzz"}
    assert " or " in str(info.value) and "did you mean" in str(info.value)


def test_unknown_name_without_close_match_points_to_list() -> None:
    with pytest.raises(UnknownHypernet, match="`/hypernets list` shows the installed ones"):
        resolve_names([HypernetTag("qqqq", 1.0)], ["animeStyle"])


def test_nothing_installed() -> None:
    with pytest.raises(UnknownHypernet, match="no hypernetworks are installed yet; `/hypernets list`") as info:
        resolve_names([HypernetTag("foo", 1.0)], [])
    assert info.value.suggestions == ()


def test_first_unknown_in_prompt_order_is_reported() -> None:
    tags = request("x <hypernet:a> <hypernet:b> <hypernet:c>").tags
    with pytest.raises(UnknownHypernet) as info:
        resolve_names(tags, {"a"})
    assert info.value.name == "b"
    assert resolve_names(tags, {"a", "b", "c"}) == tags


def test_closest_names_deterministic() -> None:
    assert closest_names(" ANIMESTYLE ", ["b", "animeStyle", "AnimeStyle"]) == ("AnimeStyle", "animeStyle")


# --- writing tags ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"), [(1.0, "1"), (0.0, "0"), (-0.0, "0"), (0.7, "0.7"), (-0.5, "-0.5"), (1e-7, "1e-07"), (2, "2")]
)
def test_format_multiplier(value: float, text: str) -> None:
    assert format_multiplier(value) == text


def test_format_tag_and_refusals() -> None:
    assert format_tag("water.Elemental-10_b", 0.5) == "<hypernet:water.Elemental-10_b:0.5>"
    for bad in ["", " x", "a:b", "a>b", "a<b", "a\nb", "name with spaces", "None", "n" * (MAX_NAME_LENGTH + 1)]:
        with pytest.raises(ValueError):
            format_tag(bad, 1.0)
    with pytest.raises(ValueError):
        format_tag("x", math.nan)


def test_write_tags_rewrites_each_tag_in_place() -> None:
    typed = "castle <hypernet:a:0.7>, at night hypernet:b <lora:x:0.5>"
    assert write_tags(typed, [0.8, 1.0]) == "castle <hypernet:a:0.8>, at night <hypernet:b:1> <lora:x:0.5>"
    assert write_tags("<hypernet: a >", [0]) == "<hypernet:a:0>"
    assert write_tags("no tags at all", []) == "no tags at all"
    with pytest.raises(ValueError, match="2 hypernet tags but 1 multipliers"):
        write_tags(typed, [1.0])


# --- properties -----------------------------------------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,29}", fullmatch=True).filter(is_valid_model_name)
bare_names = st.from_regex(r"[A-Za-z0-9_.\-]{1,20}", fullmatch=True).filter(is_valid_model_name)
multipliers = st.floats(min_value=-2.0, max_value=2.0, allow_nan=False) | st.sampled_from([0.0, 1.0, 0.7, 1e-7])
words = st.from_regex(r"[a-z]{1,8}", fullmatch=True)
# Text assembled from the grammar's own pieces finds the corners much faster than uniform random text.
pieces = st.sampled_from(
    ["<", ">", ":", ",", " ", "\n", "hypernet", "hypernet:", "<hypernet:", "HYPERNET", "lora", "a", "0.5", "nan",
     "-1", "e", "_", "`", "(", ")"]
)
tricky_text = st.lists(pieces | st.text(max_size=3), max_size=25).map("".join) | st.text()


def a1111_model(text: str) -> tuple[str, list[tuple[str, float]]]:
    """Spec section 3.1 written out plainly: remove every `<type:args>`, keep `hypernet` ones, float() item 1."""
    pattern = re.compile(r"<(\w+):([^>]+)>")
    tags = [args.split(":") for kind, args in pattern.findall(text) if kind == "hypernet"]
    return pattern.sub("", text), [(items[0], float(items[1]) if len(items) > 1 else 1.0) for items in tags]


@given(names, multipliers)
def test_format_then_parse_round_trip(name: str, multiplier: float) -> None:
    tag = format_tag(name, multiplier)
    assert parse_hypernet_tags(tag) == ("", [(name, multiplier)])
    assert request("x " + tag).tags == (HypernetTag(name, multiplier + 0.0),)


@given(st.lists(st.tuples(st.booleans(), bare_names, st.none() | multipliers), max_size=4),
       st.lists(words, min_size=1, max_size=10))  # at most 10 * 9 + 4 * 9 characters of text: under the limit
def test_order_preserved_and_tags_never_leak(specs: list, filler: list[str]) -> None:
    parts: list[str] = []
    expected: list[tuple[str, float]] = []
    for i, (bracketed, name, mult) in enumerate(specs):
        body = name if mult is None else f"{name}:{format_multiplier(mult)}"
        parts.append(f"<hypernet:{body}>" if bracketed else f"hypernet:{body}")
        parts.append(filler[i % len(filler)])
        expected.append((name, 1.0 if mult is None else mult))
    prompt = " ".join([*filler, *parts])
    parsed = request(prompt)
    assert [(t.name, t.multiplier) for t in parsed.tags] == expected
    assert parsed.text == " ".join([*filler, *(filler[i % len(filler)] for i in range(len(specs)))])
    assert "hypernet" not in parsed.text.lower()


@given(tricky_text)
@example("<hypernet:a:nan> x")
@example("<hypernet:a:1e309>")
@example("hypernet:" + "9" * 5000)
def test_arbitrary_text_only_raises_prompt_error(text: str) -> None:
    try:
        clean, tags = parse_hypernet_tags(text)
    except PromptError as e:
        assert e.tag is not None and e.tag in text
    else:
        assert all(name in text for name, _ in tags)
        if re.search(r"(?<![^\s,])hypernet:", text) is None:  # no bare form: exactly A1111's documented grammar
            model_clean, model_tags = a1111_model(text)
            assert clean == model_clean and same_tags(tags, model_tags)
    try:
        parsed = request(text)
    except PromptError as e:
        assert str(e)
    else:
        assert parsed.text and parsed.text == parsed.text.strip()
        assert re.search(r"hypernet:|<\w+:", parsed.text, re.IGNORECASE) is None
        assert parse_hypernet_tags(parsed.text) == (parsed.text, [])
        assert len(parsed.tags) <= LIMITS["max_tags"]
        assert all(LIMITS["min_multiplier"] <= t.multiplier <= LIMITS["max_multiplier"] for t in parsed.tags)
        # The prompt with its tags written in A1111's form (the infotext line) reads back as the same request.
        assert request(write_tags(text, [t.multiplier for t in parsed.tags])) == parsed
    try:
        check_negative_prompt(text, max_length=1000)
    except PromptError as e:
        assert str(e)


@given(names, st.sets(names, max_size=8))
def test_resolve_succeeds_exactly_for_installed_names(name: str, installed: set[str]) -> None:
    tag = HypernetTag(name, 1.0)
    if name in installed:
        assert resolve_names([tag], installed) == (tag,)
    else:
        with pytest.raises(UnknownHypernet) as info:
            resolve_names([tag], installed)
        assert len(info.value.suggestions) <= 3
        assert set(info.value.suggestions) <= installed


def test_imports_without_torch_discord_or_diffusers() -> None:
    code = (
        "import sys\n"
        "for name in ('torch', 'discord', 'diffusers', 'transformers'):\n"
        "    sys.modules[name] = None  # any import of them now fails\n"
        "import engine.prompt, engine.infotext\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
