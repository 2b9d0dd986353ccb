"""/history and /show first (they count a fresh user's jobs), then the result buttons (DynamicItems): Reroll,
multiplier − / +, Set multiplier modal, Info; after a bot restart too; and reconciling jobs a previous bot process
left unfinished.  One module, so one bot start serves them all."""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import time
from pathlib import Path

import pytest

from bot.errors import NOT_COMPLETED
from bot.jobs.persist import persist
from engine.render_settings import HypernetRef
from tests.bot.test_jobs_persist import locked_database
from tests.harness import SLOW_MARKER, Harness, png_parameters
from tests.requests import new_job

pytestmark = pytest.mark.asyncio(loop_scope="module")


def job_id_of(msg) -> int:
    return int(re.search(r"Job #(\d+)", msg.embeds[0]["title"]).group(1))


def job_id_of_progress(msg) -> int:
    """The job of a message still in progress, from its Cancel button's custom_id."""
    return int(msg.find_component(label="Cancel")["custom_id"].rsplit(":", 1)[1])


async def _make(hc: Harness, user, prompt: str) -> int:
    rec = await hc.fake.slash(user, "imagine", {"prompt": prompt, "steps": 1})
    return job_id_of(await hc.wait_result(rec))


async def test_history_pages_newest_first_and_filters(hc: Harness, nets) -> None:
    fake = hc.fake
    ids = [await _make(hc, fake.member_plain, f"picture {i}" + (" <hypernet:fireSpirit:0.5>" if i % 3 == 0 else ""))
           for i in range(7)]
    rec = await fake.slash(fake.member_plain, "history list")
    page1 = await hc.wait_ephemeral(rec)
    shown = [int(x) for x in re.findall(r"\*\*#(\d+)\*\*", page1.content)]
    assert shown == ids[::-1][:5] and "page 1/2 (7 in all)" in page1.content
    click = await fake.click(fake.member_plain, page1, label="Older ▶")
    await fake.wait_for(lambda: click.response_type == 7)
    assert [int(x) for x in re.findall(r"\*\*#(\d+)\*\*", page1.content)] == ids[::-1][5:]
    assert any(b["label"] == "Older ▶" and b.get("disabled") for b in page1.buttons())
    back = await fake.click(fake.member_plain, page1, label="◀ Newer")
    await fake.wait_for(lambda: back.response_type == 7)
    assert [int(x) for x in re.findall(r"\*\*#(\d+)\*\*", page1.content)] == ids[::-1][:5]

    filtered = await fake.slash(fake.member_plain, "history list", {"hypernet": "fireSpirit"})
    msg = await hc.wait_ephemeral(filtered)
    assert [int(x) for x in re.findall(r"\*\*#(\d+)\*\*", msg.content)] == [ids[6], ids[3], ids[0]]


async def test_show_reposts_with_working_buttons(hc: Harness, nets) -> None:
    fake = hc.fake
    job_id = await _make(hc, fake.member_plain, "show me <hypernet:fireSpirit:0.5>")
    rec = await fake.slash(fake.member_plain, "show", {"job_id": job_id})
    msg = await hc.wait_result(rec)
    assert job_id_of(msg) == job_id and not msg.ephemeral
    stored = (hc.root / "images" / (await hc.store.jobs.get(job_id)).image_paths[0]).read_bytes()
    assert await fake.download(msg.attachments[0]) == stored
    other = await fake.slash(fake.member_admin, "show", {"job_id": job_id})  # same guild: allowed, credited
    other_msg = await hc.wait_result(other)
    assert f"(by <@{fake.member_plain.id}>)" in other_msg.content
    click = await fake.click(fake.member_admin, other_msg, label="+ fireSpirit")
    child = await hc.store.jobs.get(job_id_of(await hc.wait_result(click)))
    assert child.user_id == fake.member_admin.id and child.settings.hypernets[0].multiplier == 0.6


async def test_show_unknown_job_is_explained(hc: Harness) -> None:
    rec = await hc.fake.slash(hc.fake.member_plain, "show", {"job_id": 999_999})
    assert "There is no job #999999" in (await hc.wait_ephemeral(rec)).content


async def test_history_delete_after_confirmation(hc: Harness) -> None:
    fake = hc.fake
    job_id = await _make(hc, fake.member_manager, "to be deleted")
    image = hc.root / "images" / (await hc.store.jobs.get(job_id)).image_paths[0]
    assert image.exists()
    rec = await fake.slash(fake.member_manager, "history delete")
    prompt = await hc.wait_ephemeral(rec)
    keep = await fake.click(fake.member_manager, prompt, label="Keep my history")
    await fake.wait_for(lambda: keep.response_type == 7)
    assert "Nothing was deleted" in prompt.content and image.exists()

    rec = await fake.slash(fake.member_manager, "history delete")
    prompt = await hc.wait_ephemeral(rec)
    assert "Delete all 1 of your generations" in prompt.content
    confirm = await fake.click(fake.member_manager, prompt, label="Delete everything")
    await fake.wait_for(lambda: confirm.response_type == 7)
    assert "Deleted 1 job(s) and 1 image file(s)" in prompt.content
    assert await hc.store.jobs.get(job_id) is None and not image.exists()
    assert await hc.store.jobs.count_history(fake.member_plain.id) > 0  # other users keep theirs
    again = await fake.slash(fake.member_manager, "history delete")
    assert "no stored generations" in (await hc.wait_ephemeral(again)).content


async def _result(hc: Harness, user, options):
    rec = await hc.fake.slash(user, "imagine", options)
    msg = await hc.wait_result(rec)
    return msg, await hc.store.jobs.get(job_id_of(msg))


async def test_reroll_keeps_settings_new_seed_and_belongs_to_the_presser(hc: Harness, nets) -> None:
    fake = hc.fake
    msg, parent = await _result(hc, fake.member_plain, {"prompt": "a boat <hypernet:waterElemental:0.7>", "steps": 2,
                                                        "seed": 42})
    click = await fake.click(fake.member_admin, msg, label="Reroll")
    new_msg = await hc.wait_result(click)
    child = await hc.store.jobs.get(job_id_of(new_msg))
    assert child.parent_job_id == parent.id and child.origin == "reroll"
    assert child.user_id == fake.member_admin.id and child.settings.seed != parent.settings.seed
    assert child.settings == dataclasses.replace(parent.settings, seed=child.settings.seed)
    assert new_msg.id != msg.id and f"Reroll of [job #{parent.id}]" in new_msg.content
    assert f"Seed: {child.settings.seed}" in png_parameters(await fake.download(new_msg.attachments[0]))


async def test_multiplier_plus_and_minus_keep_the_seed(hc: Harness, nets) -> None:
    fake = hc.fake
    msg, parent = await _result(hc, fake.member_plain, {
        "prompt": "a tree hypernet:waterElemental:0.7 hypernet:fireSpirit:1", "steps": 2, "seed": 7})
    plus = await fake.click(fake.member_plain, msg, custom_id=f"hc:mul:{parent.id}:0:+")
    minus = await fake.click(fake.member_plain, msg, label="− fireSpirit")
    up = await hc.store.jobs.get(job_id_of(await hc.wait_result(plus)))
    down = await hc.store.jobs.get(job_id_of(await hc.wait_result(minus)))
    assert [(h.name, h.multiplier) for h in up.settings.hypernets] == [("waterElemental", 0.8), ("fireSpirit", 1.0)]
    assert [(h.name, h.multiplier) for h in down.settings.hypernets] == [("waterElemental", 0.7), ("fireSpirit", 0.9)]
    assert up.settings.seed == down.settings.seed == parent.settings.seed == 7 and up.origin == "multiplier"
    assert up.settings.prompt == "a tree <hypernet:waterElemental:0.8> <hypernet:fireSpirit:1>"


async def test_buttons_keep_every_a1111_setting(hc: Harness, nets) -> None:
    fake = hc.fake
    msg, parent = await _result(hc, fake.member_plain, {
        "prompt": "a boat <hypernet:waterElemental:0.7>", "steps": 2, "seed": 5, "sampler": "DPM++ 2M",
        "schedule": "Karras", "clip_skip": 2, "variation_seed": 8, "variation_strength": 0.3})
    reroll = await hc.store.jobs.get(job_id_of(await hc.wait_result(await fake.click(fake.member_plain, msg,
                                                                                      label="Reroll"))))
    assert reroll.settings == dataclasses.replace(parent.settings, seed=reroll.settings.seed)
    plus = await hc.store.jobs.get(job_id_of(await hc.wait_result(await fake.click(fake.member_plain, msg,
                                                                                    label="+ waterElemental"))))
    assert plus.settings == parent.settings.with_multipliers([0.8])
    assert (plus.settings.schedule, plus.settings.clip_skip, plus.settings.subseed, plus.settings.subseed_strength) == (
        "Karras", 2, 8, 0.3)


async def test_buttons_are_disabled_at_the_configured_bounds(hc: Harness, nets) -> None:
    msg, _ = await _result(hc, hc.fake.member_plain, {
        "prompt": "bounds <hypernet:waterElemental:2> <hypernet:fireSpirit:-1>", "steps": 1})
    state = {b["label"]: b.get("disabled", False) for b in msg.buttons()}
    assert state == {"Reroll": False, "Info": False, "Set multiplier…": False, "− waterElemental": False,
                     "+ waterElemental": True, "− fireSpirit": True, "+ fireSpirit": False}
    with pytest.raises(LookupError, match="disabled"):
        await hc.fake.click(hc.fake.member_plain, msg, label="+ waterElemental")


async def test_set_multiplier_modal(hc: Harness, nets) -> None:
    fake = hc.fake
    msg, parent = await _result(hc, fake.member_plain, {"prompt": "modal <hypernet:waterElemental:0.7>", "steps": 1})

    async def submit(value: str):
        click = await fake.click(fake.member_plain, msg, label="Set multiplier…")  # a modal closes on submit
        await fake.wait_for(lambda: click.modal is not None)
        assert click.modal["components"][0]["components"][0]["value"] == "0.7"
        return await fake.submit_modal(fake.member_plain, click, {"m0": value})

    assert "is not a number" in (await hc.wait_ephemeral(await submit("lots"))).content
    assert "between -1 and 2" in (await hc.wait_ephemeral(await submit("9"))).content
    assert "already used" in (await hc.wait_ephemeral(await submit("0.7"))).content
    ok = await submit("0.35")
    child = await hc.store.jobs.get(job_id_of(await hc.wait_result(ok)))
    assert [(h.name, h.multiplier) for h in child.settings.hypernets] == [("waterElemental", 0.35)]
    assert child.settings.seed == parent.settings.seed and child.parent_job_id == parent.id


async def test_info_shows_the_infotext_ephemerally(hc: Harness) -> None:
    msg, job = await _result(hc, hc.fake.member_plain, {"prompt": "info please", "negative_prompt": "blurry",
                                                         "steps": 2, "seed": 99})
    click = await hc.fake.click(hc.fake.member_manager, msg, label="Info")
    answer = await hc.wait_ephemeral(click)
    assert "```\ninfo please\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 99" in answer.content
    assert await hc.store.jobs.get(job.id + 1) is None  # Info starts no job


async def test_buttons_of_a_deleted_job_say_so(hc: Harness) -> None:
    msg, job = await _result(hc, hc.fake.member_owner, {"prompt": "soon gone", "steps": 1})
    await hc.store.jobs.delete_user_data(hc.fake.member_owner.id)
    click = await hc.fake.click(hc.fake.member_plain, msg, label="Reroll")
    assert f"Job #{job.id} no longer exists" in (await hc.wait_ephemeral(click)).content


async def test_reroll_of_a_model_that_is_gone_is_refused_before_deferring(hc: Harness, nets) -> None:
    msg, _ = await _result(hc, hc.fake.member_plain, {"prompt": "soon disabled <hypernet:waterElemental:0.5>",
                                                      "steps": 1})
    await hc.store.hypernets.update(nets["water"].id, enabled=False)
    try:
        click = await hc.fake.click(hc.fake.member_plain, msg, label="Reroll")
        answer = await hc.wait_ephemeral(click)
    finally:
        await hc.store.hypernets.update(nets["water"].id, enabled=True)
    assert answer.content == ("The hypernetwork `waterElemental` is no longer available here (it was removed, disabled "
                              "or replaced). Pick another one; `/hypernets list` shows those installed.")
    assert click.response_type == 4 and click.ephemeral


async def test_a_button_job_when_the_database_stays_locked_is_explained_privately(
        hc: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    msg, _ = await _result(hc, hc.fake.member_plain, {"prompt": "locked out", "steps": 1})
    monkeypatch.setattr("bot.jobs.service.persist", functools.partial(persist, delays=()))  # give up at once
    before = await hc.job_count()
    await _set_busy_timeout(hc, 100)
    try:
        async with locked_database(Path(hc.settings.storage.database), 1.0):  # another process holds the write lock
            click = await hc.fake.click(hc.fake.member_manager, msg, label="Reroll")
            private = await hc.wait_ephemeral(click)
    finally:
        await _set_busy_timeout(hc, 5000)
    assert private.content == "The database is busy right now. Please try again in a moment."
    # Deferred publicly (a new message); the reason did not land there: Discord makes the first follow-up public.
    assert click.response_type == 5 and not click.original.ephemeral
    assert click.original.contents == ["", NOT_COMPLETED]
    assert await hc.job_count() == before


async def _set_busy_timeout(hc: Harness, ms: int) -> None:
    """How long the bot's SQLite connection waits for another process's lock (the harness opens it with 5000)."""
    async with hc.store.db.transaction() as tx:
        await tx.execute(f"PRAGMA busy_timeout = {int(ms)}")


async def test_show_failing_after_its_deferral_answers_privately(hc: Harness, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    fake = hc.fake
    job_id = await _make(hc, fake.member_plain, "shown, then broken")

    async def broken_post(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug while posting")

    monkeypatch.setattr(sys.modules["cogs.history"], "post_result", broken_post)  # as the bot loaded the extension
    rec = await fake.slash(fake.member_plain, "show", {"job_id": job_id})
    private = await hc.wait_ephemeral(rec)
    ref = re.fullmatch(r"Something went wrong on our side \(ref `([0-9a-f]{8})`\)\. The bot's owner can find it in "
                       r"the logs\.", private.content)
    assert ref is not None, private.content
    assert f"command /show failed (ref {ref.group(1)}" in caplog.text
    assert rec.response_type == 5 and not rec.original.ephemeral and rec.original.contents == ["", NOT_COMPLETED]


async def test_buttons_work_after_restart_and_unfinished_jobs_are_reconciled(hc: Harness, nets) -> None:
    fake = hc.fake
    old_msg, old_job = await _result(hc, fake.member_plain, {"prompt": "before restart <hypernet:fireSpirit:0.5>",
                                                             "steps": 1})
    # A job waiting in the queue when the bot stops: left queued, resumed by the next process (token still fresh).
    running = await fake.slash(fake.member_manager, "imagine", {"prompt": f"{SLOW_MARKER} first", "steps": 3})
    await hc.wait_content(lambda: running.original, "Rendering")
    waiting = await fake.slash(fake.member_admin, "imagine", {"prompt": "second", "steps": 2})
    await hc.wait_content(lambda: waiting.original, "Queued")
    # One that was resumed once already (as after an earlier restart): the next process will not run it.
    again = await fake.slash(fake.member_plain, "imagine", {"prompt": "third", "steps": 2, "size": "128x128"})
    await hc.wait_content(lambda: again.original, "Queued")
    await hc.store.jobs.bump_attempts(job_id_of_progress(again.original))
    # Rows a dead process left behind: one whose token expired (goes to the channel), one whose channel is gone.
    stale = await hc.store.jobs.create(new_job(
        fake.member_plain.id, fake.guild.id, fake.channel_general.id, prompt="stale job", seed=5, steps=1, width=64,
        height=64, interaction_token="expired-token", interaction_created_at=time.time() - 3600))
    lost = await hc.store.jobs.create(new_job(
        fake.member_plain.id, fake.guild.id, 12345, prompt="lost job", seed=5, steps=1, width=64, height=64,
        hypernets=(HypernetRef("fireSpirit", nets["fire"].sha256, 1.0),)))

    await hc.restart_bot()

    paused = ("⏸ The bot is shutting down before this job could run. The job stays queued and runs when the bot is "
              "started again (a job is resumed after one restart only).")
    resumed = await hc.wait_result(waiting)
    assert paused in resumed.contents and resumed.content == "🔁 Resumed after the bot restarted."
    assert any(c.startswith("🔁 Resumed after the bot restarted.\n") for c in resumed.contents)  # its states too
    not_again = await hc.wait_content(lambda: again.original, "stopped again")
    assert paused in not_again.contents
    assert not_again.content == ("⚠️ The bot stopped again before this job could run. A job is resumed after one "
                                 "restart only, so this one will not run; please start it again.")

    def stale_post():
        return next((m for m in fake.channel_messages(fake.channel_general)
                     if "webhook_id" not in m.payload and m.attachments and f"Job #{stale.id}" in str(m.embeds)), None)

    await fake.wait_for(stale_post, timeout=30)
    assert (await hc.store.jobs.get(stale.id)).status == "done"
    lost_row = await fake.wait_for(lambda: _finished(hc, lost.id), timeout=10)
    assert (lost_row.status, lost_row.error_message) == (
        "failed", "The bot restarted and could not resume this job: it can no longer post in the job's channel.")

    click = await fake.click(fake.member_plain, old_msg, label="+ fireSpirit")
    child = await hc.store.jobs.get(job_id_of(await hc.wait_result(click)))
    assert child.parent_job_id == old_job.id and child.settings.hypernets[0].multiplier == 0.6
    assert child.settings.seed == old_job.settings.seed


async def _finished(hc: Harness, job_id: int):
    job = await hc.store.jobs.get(job_id)
    return job if job is not None and job.finished else None
