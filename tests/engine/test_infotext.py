"""A1111 `parameters` text: exact layout for the spec's example, and build -> parse round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.infotext import CORE_KEYS, build_infotext, parse_infotext
from engine.prompt import format_multiplier

BASE = {
    "steps": 20, "sampler": "Euler a", "cfg_scale": 7.0, "seed": 1, "width": 512, "height": 512,
    "model_name": "v1-5-pruned-emaonly", "model_hash": "6ce0161689",
}  # fmt: skip


def test_layout_of_the_spec_example() -> None:
    # Spec section 5's example line; extra keys are put in A1111's order whatever order they are given in.
    extra = {"Version": "v1.10.1", "Schedule type": "Karras"}
    text = build_infotext("a castle <hypernet:waterElemental_10:0.7>", "blurry", **BASE, extra=extra)
    assert text == (
        "a castle <hypernet:waterElemental_10:0.7>\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
    )


def test_empty_negative_and_missing_hash_are_left_out() -> None:
    text = build_infotext("a castle", "", **{**BASE, "model_hash": None, "cfg_scale": 7.5})
    assert text == (
        "a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: v1-5-pruned-emaonly"
    )


def test_extra_order_none_and_quoting() -> None:
    text = build_infotext(
        "p", "", **BASE,
        extra={"Version": "hypercord 0.1", "Hires upscaler": "Latent", "Clip skip": "2", "Denoising strength": None,
               "Note": 'a, b: "c"\nd'},
    )  # fmt: skip
    params = text.split("\n")[-1]
    assert params.endswith(
        'Model: v1-5-pruned-emaonly, Clip skip: 2, Hires upscaler: Latent, Note: "a, b: \\"c\\"\\nd", Version: hypercord 0.1'
    )
    assert parse_infotext(text)["Note"] == 'a, b: "c"\nd'
    assert "Denoising strength" not in parse_infotext(text)


@pytest.mark.parametrize("key", [*sorted(CORE_KEYS), "x", "bad:key", " lead"])
def test_extra_keys_refused(key: str) -> None:
    with pytest.raises(ValueError):
        build_infotext("p", "", **BASE, extra={key: "v"})


def test_parse_a1111_text_with_multiline_prompts() -> None:
    text = (
        "  first line\nsecond <hypernet:a:0.5>\nNegative prompt: ugly\n  and blurry\n"
        "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 42, Size: 768x512, "
        'Lora hashes: "x: 1, y: 2"'
    )
    assert parse_infotext(text) == {
        "Prompt": "first line\nsecond <hypernet:a:0.5>", "Negative prompt": "ugly\nand blurry", "Steps": "30",
        "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "6.5", "Seed": "42", "Size": "768x512",
        "Lora hashes": "x: 1, y: 2",
    }  # fmt: skip


def test_last_line_with_fewer_than_three_pairs_is_prompt() -> None:
    assert parse_infotext("a: b, c: d") == {"Prompt": "a: b, c: d", "Negative prompt": ""}


def test_old_hypernet_fields_become_a_tag() -> None:
    old = (
        "a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Hypernet: anime, "
        "Hypernet strength: 0.6"
    )
    assert parse_infotext(old)["Prompt"] == "a castle<hypernet:anime:0.6>"
    no_strength = old.replace(", Hypernet strength: 0.6", "")
    assert parse_infotext(no_strength)["Prompt"] == "a castle<hypernet:anime>"


line_chars = st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\n")
lines = st.text(line_chars, min_size=1, max_size=20).filter(
    lambda s: s == s.strip() and not s.startswith("Negative prompt:")
)
keys = st.from_regex(r"[A-Za-z][A-Za-z0-9 \-/]{1,12}", fullmatch=True).filter(
    lambda k: k not in CORE_KEYS and k != "Hypernet"
)


@given(
    st.lists(lines, min_size=1, max_size=3).map("\n".join),
    st.just("") | lines,
    st.integers(1, 150),
    st.text(max_size=20),
    st.floats(1.0, 30.0) | st.sampled_from([7.0, 7.5]),
    st.integers(0, 2**64 - 1),
    st.integers(8, 2048),
    st.integers(8, 2048),
    st.none() | st.text(max_size=20),
    st.none() | st.from_regex(r"[0-9a-f]{10}", fullmatch=True),
    st.dictionaries(keys, st.text(max_size=15), max_size=4),
)
def test_build_then_parse_round_trip(
    prompt: str, negative: str, steps: int, sampler: str, cfg: float, seed: int, width: int, height: int,
    model: str | None, model_hash: str | None, extra: dict[str, str],
) -> None:  # fmt: skip
    text = build_infotext(prompt, negative, steps, sampler, cfg, seed, width, height, model, model_hash, extra)
    expected = {
        "Prompt": prompt.strip(), "Negative prompt": negative, "Steps": str(steps), "Sampler": sampler,
        "CFG scale": format_multiplier(cfg), "Seed": str(seed), "Size": f"{width}x{height}", **extra,
    }  # fmt: skip
    if model_hash:
        expected["Model hash"] = model_hash
    if model:
        expected["Model"] = model
    assert parse_infotext(text) == expected
