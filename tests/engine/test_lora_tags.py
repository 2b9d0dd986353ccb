"""LoRA tags: A1111's parse of every public prompt case, our request rules, and rewriting tags in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.lora_tags import LoraTag, checker_parse, format_lora_tag, parse_lora_tags, scan_lora_tags, write_lora_tags
from engine.prompt import PromptError, parse_hypernet_tags

CASES = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "lora" / "prompt_cases.json").read_text())["cases"]
# A1111 drops every LoRA of a prompt with an unreadable number; we refuse the prompt and say which tag (documented).
REFUSED = {"bad_multiplier_aborts_all"}


@pytest.mark.parametrize("case", [c for c in CASES if c["id"] not in REFUSED], ids=lambda c: c["id"])
def test_a1111s_own_parse_of_every_prompt_case(case):
    call = case["load_networks_call"]
    want = list(zip(call["names"], call["te_multipliers"], call["unet_multipliers"], call["dyn_dims"], strict=True))
    clean, got = checker_parse(case["prompts"][0])
    assert got == want
    assert clean == case["prompts_after_tag_removal"][0]


def test_the_text_encoder_sees_the_same_text_as_after_a1111s_tag_removal():
    for case in CASES:
        assert parse_hypernet_tags(case["prompts"][0])[0] == case["prompts_after_tag_removal"][0]


def test_an_unreadable_number_is_refused_naming_the_tag():
    with pytest.raises(PromptError, match=r"^`<lora:b:strong>` — multiplier `strong` is not a number$"):
        scan_lora_tags("<lora:a:0.5> <lora:b:strong>")
    with pytest.raises(PromptError, match=r"dyn `2.5` is not a whole number"):
        scan_lora_tags("<lora:a:1:1:2.5>")
    with pytest.raises(PromptError, match=r"the LoRA name is missing"):
        scan_lora_tags("<lora:te=0.5>")


def rules(prompt: str, **kw) -> tuple[LoraTag, ...]:
    return parse_lora_tags(prompt, **{"min_multiplier": -2.0, "max_multiplier": 2.0, "max_tags": 3, **kw})


def test_request_rules_apply_what_a1111_applies():
    # A repeated name: A1111 applies the file twice, both times with the last tag's numbers.
    assert [(t.name, t.te, t.unet) for t in rules("<lora:x:0.5> a <lora:x:1>")] == [("x", 1.0, 1.0), ("x", 1.0, 1.0)]
    assert rules("<lora: spaced :0.5>")[0].name == "spaced"
    assert rules("<lora:x:-0>")[0].te == 0.0 and str(rules("<lora:x:-0>")[0].te) == "0.0"


@pytest.mark.parametrize(("prompt", "message"), [
    ("<lora:x:3>", r"^`<lora:x:3>` — multiplier 3 is outside the allowed range -2 to 2$"),
    ("<lora:x:1:nan>", "the unet multiplier is not a finite number"),
    ("<lora:x:1:dyn=0>", "dyn must be a positive rank, got 0"),
    ("<lora:a<b:1>", "model names cannot contain"),
    ("<lora:a> <lora:b> <lora:c> <lora:d>", r"too many LoRA tags \(4\); at most 3 per prompt — `<lora:d>` is one too many"),
])
def test_request_refusals_name_the_tag(prompt, message):
    with pytest.raises(PromptError, match=message):
        rules(prompt)


def test_written_tags_read_back_and_rewrite_in_place():
    for tag in (LoraTag("x", 0.7, 0.7), LoraTag("x", 0.3, 1.2), LoraTag("x", 1.0, 1.0, 4)):
        assert scan_lora_tags(format_lora_tag(tag)) == [tag]
    prompt = "a <lyco:x:0.5> castle, <lora:y:0.3:1.2> <hypernet:h:0.7>"
    rewritten = write_lora_tags(prompt, [LoraTag("x", 0.6, 0.6), LoraTag("y", 0.3, 1.3)])
    assert rewritten == "a <lora:x:0.6> castle, <lora:y:0.3:1.3> <hypernet:h:0.7>"
    with pytest.raises(ValueError, match="no new numbers for the LoRA 'y'"):
        write_lora_tags(prompt, [LoraTag("x", 1.0, 1.0)])
