"""/history list, /show and /history delete end to end, against the rows and image files the bot wrote.

The subject is the guild owner's member account, which no other scenario module uses (the bot is shared by the
modules): two jobs by them (the second with a hypernet), one by the admin (made by the ``jobs`` fixture).  The
delete test runs last in the file on purpose: it erases the owner's history.
"""

from __future__ import annotations

import pytest
import pytest_asyncio

from tests.e2e.fake_discord import StoredMessage
from tests.e2e.scenario import E2E, job_id_of

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.timeout(180)]


@pytest_asyncio.fixture(loop_scope="package", scope="module")
async def jobs(e2e_bot: E2E) -> dict[str, list[StoredMessage]]:
    fake = e2e_bot.fake
    recs = {"mine": [await e2e_bot.imagine(fake.member_owner, "history one", steps=1),
                     await e2e_bot.imagine(fake.member_owner, "history two hypernet:animeStyle", steps=1)],
            "theirs": [await e2e_bot.imagine(fake.member_admin, "history of someone else", steps=1)]}
    return {who: [await e2e_bot.result(r) for r in rs] for who, rs in recs.items()}


async def test_history_lists_only_the_callers_jobs(e2e: E2E, jobs: dict[str, list[StoredMessage]]) -> None:
    rec = await e2e.fake.slash(user=e2e.fake.member_owner, name="history list")
    text = await e2e.ephemeral(rec)
    mine = [job_id_of(m) for m in jobs["mine"]]
    theirs = job_id_of(jobs["theirs"][0])
    assert all(f"#{j}" in text for j in mine), text
    assert f"#{theirs}" not in text and "2 in all" in text, text
    assert text.index(f"#{mine[1]}") < text.index(f"#{mine[0]}"), "newest first"


async def test_history_filtered_by_hypernet(e2e: E2E, jobs: dict[str, list[StoredMessage]]) -> None:
    rec = await e2e.fake.slash(user=e2e.fake.member_owner, name="history list", options={"hypernet": "animeStyle"})
    text = await e2e.ephemeral(rec)
    assert f"#{job_id_of(jobs['mine'][1])}" in text and "1 in all" in text, text
    assert f"#{job_id_of(jobs['mine'][0])}" not in text, text


async def test_show_reposts_the_image_with_working_buttons(e2e: E2E, jobs: dict[str, list[StoredMessage]]) -> None:
    fake = e2e.fake
    original = jobs["mine"][0]
    job_id = job_id_of(original)
    rec = await fake.slash(user=fake.member_owner, name="show", options={"job_id": job_id})
    shown = await e2e.result(rec)
    assert shown.id != original.id and f"#{job_id}" in shown.content
    assert await fake.download(shown.attachments[0]) == await fake.download(original.attachments[0])
    assert job_id_of(shown) == job_id
    info = await fake.click(user=fake.member_manager, message=shown, label="Info")
    assert f"job #{job_id}" in await e2e.ephemeral(info)


async def test_show_of_a_missing_job_is_refused(e2e: E2E) -> None:
    rec = await e2e.fake.slash(user=e2e.fake.member_owner, name="show", options={"job_id": 999_999})
    text = await e2e.ephemeral(rec)
    assert "999999" in text, text


async def test_history_delete_erases_rows_and_images(e2e: E2E, jobs: dict[str, list[StoredMessage]]) -> None:
    fake = e2e.fake
    me = fake.member_owner
    mine = [job_id_of(m) for m in jobs["mine"]]
    ids_before = {r["id"] for r in e2e.query("SELECT id FROM jobs WHERE user_id = ?", (me.id,))}
    assert set(mine) <= ids_before
    rec = await fake.slash(user=me, name="history delete")
    await e2e.ephemeral(rec)
    assert rec.original is not None
    confirm = await fake.click(user=me, message=rec.original, label="Delete everything")
    await e2e.wait(lambda: "Deleted" in rec.original.content, 15, "the deletion to be confirmed")
    assert f"Deleted {len(ids_before)} job(s)" in rec.original.content, rec.original.content
    assert confirm.response_type == 7
    assert e2e.query("SELECT id FROM jobs WHERE user_id = ?", (me.id,)) == []
    assert not any((e2e.bot.images_dir / str(j)).exists() for j in mine)
    assert e2e.job(job_id_of(jobs["theirs"][0]))["status"] == "done", "other users' jobs stay"

    listing = await fake.slash(user=me, name="history list")
    assert "no generations" in await e2e.ephemeral(listing)
    reroll = await fake.click(user=me, message=jobs["mine"][0], label="Reroll")
    assert "no longer exists" in await e2e.ephemeral(reroll)
