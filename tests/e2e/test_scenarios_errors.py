"""Bad /imagine input end to end: a specific ephemeral error, and no job is created.

"No job" is checked in the bot's SQLite file (opened read-only) and by the engine never being asked: the command is
answered with an ephemeral message instead of the public deferral a job gets.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.scenario import E2E

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.timeout(120)]


async def _refused(e2e: E2E, prompt: str, **options: Any) -> str:
    """Run /imagine, expect an ephemeral refusal; returns its text after checking nothing was stored."""
    before = e2e.job_count()
    rec = await e2e.imagine(e2e.fake.member_plain, prompt, **options)
    text = await e2e.ephemeral(rec)
    assert rec.ephemeral or all(m.ephemeral for m in rec.followups), "the refusal must be visible only to the user"
    public = [m for m in e2e.fake.channel_messages(e2e.fake.channel_general) if m.payload.get("interaction_metadata", {})
              .get("id") == str(rec.id)]
    assert not public, "a refused request must not leave a public message behind"
    assert e2e.job_count() == before, "a refused request must not create a job"
    return text


async def test_unknown_hypernet_suggests_the_close_name(e2e: E2E) -> None:
    text = await _refused(e2e, "a cat hypernet:waterElemental_1")
    assert "waterElemental_1" in text and "did you mean" in text and "waterElemental_10" in text, text


async def test_unknown_hypernet_in_brackets_and_wrong_case(e2e: E2E) -> None:
    text = await _refused(e2e, "a cat <hypernet:animestyle:0.5>")
    assert "animeStyle" in text and "case" in text, text


async def test_multiplier_that_is_not_a_number(e2e: E2E) -> None:
    text = await _refused(e2e, "a cat hypernet:waterElemental_10:strong")
    assert "strong" in text and "not a number" in text, text


async def test_multiplier_outside_the_range(e2e: E2E) -> None:
    text = await _refused(e2e, "a cat <hypernet:waterElemental_10:5>")
    assert text == "`<hypernet:waterElemental_10:5>` — multiplier 5 is outside the allowed range -1 to 2.", text


@pytest.mark.parametrize("steps", [50, 0], ids=["too-many", "zero"])
async def test_steps_outside_the_range(e2e: E2E, steps: int) -> None:
    # The fake passes what a misbehaving client could send; the bot checks the range itself.
    text = await _refused(e2e, "a cat", steps=steps)
    assert str(steps) in text, text


async def test_the_bot_still_renders_after_the_refusals(e2e: E2E) -> None:
    rec = await e2e.imagine(e2e.fake.member_plain, "a cat", steps=1)
    msg = await e2e.result(rec)
    assert msg.attachments
