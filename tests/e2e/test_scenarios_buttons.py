"""The result buttons end to end: Reroll, multiplier − / +, the Set-multiplier modal, and Info.

One /imagine result (seed 4242, ``waterElemental_10`` at 0.7) is made per module; every test presses a button on
it.  A job started from a button is a new job (new row, ``parent_job_id`` = the pressed job) answered in a new
message; what changed is read back from the new PNG's ``parameters`` and from the database.
"""

from __future__ import annotations

import pytest
import pytest_asyncio

from engine.infotext import parse_infotext
from tests.e2e.fake_discord import InteractionRecord, StoredMessage
from tests.e2e.scenario import E2E, job_id_of

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.timeout(180)]

NET = "waterElemental_10"
SEED = 4242


@pytest_asyncio.fixture(loop_scope="package", scope="module")
async def base(e2e_bot: E2E) -> StoredMessage:
    """The result message every test presses buttons on."""
    rec = await e2e_bot.imagine(e2e_bot.fake.member_plain, f"a stormy sea hypernet:{NET}:0.7", seed=SEED,
                                   steps=2)
    return await e2e_bot.result(rec)


def _multipliers(e2e: E2E, job_id: int) -> list[float]:
    rows = e2e.query("SELECT multiplier FROM job_hypernets WHERE job_id = ? ORDER BY position", (job_id,))
    return [r["multiplier"] for r in rows]


async def _derived(e2e: E2E, click: InteractionRecord, parent: StoredMessage) -> tuple[int, dict[str, str]]:
    """Wait for the job a button started; returns its id and the infotext of its PNG."""
    await e2e.wait(lambda: click.acknowledged, 10, "the button press to be acknowledged")
    assert click.response_type == 5, "a button that starts a job answers with a new (deferred) message"
    msg = await e2e.result(click)
    assert msg.id != parent.id
    job_id = job_id_of(msg)
    row = e2e.job(job_id)
    assert row["parent_job_id"] == job_id_of(parent) and row["status"] == "done"
    _, parameters = await e2e.image(msg)
    return job_id, parse_infotext(parameters)


async def test_reroll_keeps_the_multipliers_and_changes_the_seed(e2e: E2E, base: StoredMessage) -> None:
    click = await e2e.fake.click(user=e2e.fake.member_manager, message=base, label="Reroll")
    job_id, info = await _derived(e2e, click, base)
    assert info["Seed"] != str(SEED)
    assert f"<hypernet:{NET}:0.7>" in info["Prompt"]
    assert _multipliers(e2e, job_id) == [0.7]
    assert e2e.job(job_id)["user_id"] == e2e.fake.member_manager.id  # the job belongs to whoever pressed


@pytest.mark.parametrize(("sign", "expected"), [("+", 0.8), ("−", 0.6)], ids=["plus", "minus"])
async def test_multiplier_buttons_keep_the_seed(e2e: E2E, base: StoredMessage, sign: str, expected: float) -> None:
    click = await e2e.fake.click(user=e2e.fake.member_plain, message=base, label=f"{sign} {NET}")
    job_id, info = await _derived(e2e, click, base)
    assert info["Seed"] == str(SEED)
    assert f"<hypernet:{NET}:{expected}>" in info["Prompt"], info["Prompt"]
    assert _multipliers(e2e, job_id) == [pytest.approx(expected)]


async def test_set_multiplier_modal(e2e: E2E, base: StoredMessage) -> None:
    fake = e2e.fake
    click = await fake.click(user=fake.member_plain, message=base, prefix="hc:setmul:")
    await e2e.wait(lambda: click.modal is not None, 10, "the Set-multiplier modal")
    submit = await fake.submit_modal(user=fake.member_plain, source=click, values={"m0": "1.25"})
    job_id, info = await _derived(e2e, submit, base)
    assert info["Seed"] == str(SEED) and f"<hypernet:{NET}:1.25>" in info["Prompt"]
    assert _multipliers(e2e, job_id) == [1.25]


async def test_set_multiplier_modal_refuses_a_value_out_of_range(e2e: E2E, base: StoredMessage) -> None:
    fake = e2e.fake
    jobs_before = e2e.job_count()
    click = await fake.click(user=fake.member_plain, message=base, prefix="hc:setmul:")
    await e2e.wait(lambda: click.modal is not None, 10, "the Set-multiplier modal")
    submit = await fake.submit_modal(user=fake.member_plain, source=click, values={"m0": "7"})
    text = await e2e.ephemeral(submit)
    assert NET in text and "2" in text, text  # names the hypernet and the allowed bound
    assert e2e.job_count() == jobs_before


async def test_info_shows_the_png_parameters(e2e: E2E, base: StoredMessage) -> None:
    click = await e2e.fake.click(user=e2e.fake.member_admin, message=base, label="Info")
    text = await e2e.ephemeral(click)
    _, parameters = await e2e.image(base)
    assert f"job #{job_id_of(base)}" in text
    assert parameters and parameters in text, (parameters, text)
