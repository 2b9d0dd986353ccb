"""The 33 A1111-made cases, run as the shared checker runs them, against our copy of the fixtures."""

from __future__ import annotations

import pytest
import torch

from engine.conditioning import learned_conditioning, multicond_learned_conditioning

from .conftest import EMBEDDINGS_DIR, fixture_cases

CASES = fixture_cases()


def assert_schedule_matches(got, expected, tensors, atol) -> float:
    assert [int(step) for step, _ in got] == [entry["end_at_step"] for entry in expected]
    worst = 0.0
    for (_, cond), entry in zip(got, expected, strict=True):
        assert list(cond.shape) == entry["shape"]
        error = float((cond.double() - tensors[entry["tensor"]].double()).abs().max())
        assert error <= atol, f"max abs error {error:.3e}"
        worst = max(worst, error)
    return worst


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_case_matches_a1111(case, text_encoder, tokenizer, cases_doc, expected_tensors) -> None:
    atol = cases_doc["tolerance"]["atol"]
    function = learned_conditioning if case["api"] == "learned_conditioning" else multicond_learned_conditioning
    with torch.no_grad():
        result = function(list(case["prompts"]), case["steps"], text_encoder=text_encoder, tokenizer=tokenizer,
                          clip_skip=case["clip_skip"],
                          embeddings_dir=str(EMBEDDINGS_DIR) if case["embeddings_dir"] else None)
    assert len(result) == len(case["prompts"])
    for got, expected in zip(result, case["expected"], strict=True):
        if case["api"] == "learned_conditioning":
            assert_schedule_matches(got, expected, expected_tensors, atol)
            continue
        assert [weight for weight, _ in got] == pytest.approx([part["weight"] for part in expected], abs=1e-12)
        for (_, schedule), part in zip(got, expected, strict=True):
            assert_schedule_matches(schedule, part["schedule"], expected_tensors, atol)
