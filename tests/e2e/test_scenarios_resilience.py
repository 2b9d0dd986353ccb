"""Things going wrong around a job: gateway reconnects, Discord 429s, the engine worker or the whole bot dying.

The slow job used here (128x128, 8 steps on the tiny model: a few seconds on one CPU thread) is long enough to act
on while it runs; "running" is read from the bot's database (the bot marks a job running when the engine starts
it).  The tests run in file order; the bot-crash test kills the shared bot and starts it again on the same folder
(same database, same models), and comes last — as this module comes last in the package.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.e2e.fake_discord import InteractionRecord
from tests.e2e.scenario import E2E, job_id_of

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.timeout(240)]

SLOW = {"steps": 8, "width": 128, "height": 128}
#: The first line of every state of a job the restarted bot took over (the whole content once it has its images).
RESUMED = "🔁 Resumed after the bot restarted."


async def _running_job(e2e: E2E, rec: InteractionRecord) -> int:
    """The job id of a just-submitted /imagine once the engine runs it (its progress message has a Cancel button)."""

    def job_id() -> int | None:
        msg = rec.original
        if msg is None or not msg.buttons():
            return None
        return job_id_of(msg)

    jid = int(await e2e.wait(job_id, 30, "the job's progress message"))
    await e2e.wait(lambda: e2e.job(jid)["status"] == "running", 60, f"job {jid} to be running")
    return jid


async def test_gateway_reconnect_then_resume(e2e: E2E) -> None:
    gateway = e2e.fake.gateway
    identifies, resumes = gateway.identify_count, gateway.resume_count
    await gateway.reconnect()
    # Dispatched while the bot is away: buffered by the fake and replayed on RESUME.
    rec = await e2e.imagine(e2e.fake.member_plain, "sent during a reconnect", steps=1)
    await e2e.wait(lambda: gateway.resume_count > resumes and gateway.connected, 20, "the bot to RESUME")
    msg = await e2e.result(rec)
    assert msg.attachments
    assert gateway.identify_count == identifies, "a RECONNECT must be answered with RESUME, not a new IDENTIFY"
    assert gateway.replayed >= 1


async def test_429_on_the_interaction_webhook_is_waited_out(e2e: E2E) -> None:
    fake = e2e.fake
    # Every later edit of the deferred message goes through the interaction webhook; the next two answer 429.
    limited = fake.inject("*", r"/webhooks/\d+/[^/]+(/messages/[^/]+)?", status=429, times=2, retry_after=0.3)
    rec = await e2e.imagine(fake.member_plain, "patience with rate limits", steps=2)
    msg = await e2e.result(rec)
    assert limited.hits == 2
    webhook_calls = [p for m, p in fake.requests if p.startswith("/webhooks/") and rec.token in p]
    assert len(webhook_calls) > limited.hits, "the refused calls must have been sent again"
    _, parameters = await e2e.image(msg)
    assert "patience with rate limits" in parameters


async def test_engine_worker_killed_mid_job_is_retried(e2e: E2E) -> None:
    old_worker = await e2e.bot.wait_worker()
    rec = await e2e.imagine(e2e.fake.member_plain, "rendered twice hypernet:animeStyle:0.8", seed=99, **SLOW)
    job_id = await _running_job(e2e, rec)
    os.kill(old_worker, signal.SIGKILL)
    new_worker = await e2e.bot.wait_worker(90, not_pid=old_worker)
    assert new_worker != old_worker
    msg = await e2e.result(rec, timeout=120)
    assert e2e.job(job_id)["status"] == "done"
    img, parameters = await e2e.image(msg)
    assert img.size == (128, 128) and "Seed: 99" in parameters
    log = e2e.bot.log_text()
    assert "engine worker lost" in log, "the bot should say why the worker was replaced"


async def test_bot_killed_mid_job_then_restarted(e2e: E2E) -> None:
    fake = e2e.fake
    before = await e2e.result(await e2e.imagine(fake.member_plain, "made before the crash hypernet:animeStyle:0.5",
                                                seed=7, steps=1, model="tiny-b"))
    rec = await e2e.imagine(fake.member_plain, "interrupted by a crash", **SLOW)
    job_id = await _running_job(e2e, rec)

    leftovers = await e2e.bot.crash()  # SIGKILL: no shutdown code runs
    assert leftovers == [], "the engine worker must exit by itself when the bot process dies"
    assert e2e.job(job_id)["status"] == "running"  # what a crash leaves behind
    await fake.wait_for(lambda: not fake.gateway.connected, 15, what="the fake to notice the dead gateway session")
    # The orphaned worker may log a broken pipe on its way out; that is its exit path, not a fault of the new bot.
    e2e.skip_log()

    await e2e.bot.start()
    # The job was running once (attempts 0): the new process queues it again and renders it, on the same message
    # (its interaction token is still fresh), saying why it came back.
    await e2e.wait(lambda: e2e.job(job_id)["status"] == "done", 120, f"job {job_id} to be done after the restart")
    row = e2e.job(job_id)
    assert row["attempts"] == 1 and row["error_kind"] is None
    msg = await e2e.result(rec)
    assert msg.content == RESUMED, msg.content

    # A button on a message posted by the previous process still works (it carries only the job id), on its model.
    click = await fake.click(user=fake.member_plain, message=before, label="+ animeStyle")
    derived = await e2e.result(click)
    _, parameters = await e2e.image(derived)
    assert "Seed: 7" in parameters and "<hypernet:animeStyle:0.6>" in parameters, parameters
    assert "Model: tiny-b" in parameters and e2e.job(job_id_of(derived))["checkpoint"] == "tiny-b"


async def test_sigterm_finishes_the_running_job_and_hands_back_the_queued_one(e2e: E2E) -> None:
    """SIGTERM (docker stop): no new jobs; the running batch finishes and is posted; a job still waiting is left
    queued with a note that says what will happen, and runs after the restart, saying it was resumed; the database
    is closed."""
    fake = e2e.fake
    rec = await e2e.imagine(fake.member_plain, "interrupted by a clean shutdown", count=2, **SLOW)  # several seconds
    job_id = await _running_job(e2e, rec)
    waiting = await e2e.imagine(fake.member_plain, "waiting behind it", steps=8, width=64, height=128)  # other size
    waiting_id = int(await e2e.wait(lambda: waiting.original and waiting.original.buttons()
                                    and job_id_of(waiting.original), 30, "the second job's queued message"))
    assert e2e.job(waiting_id)["status"] == "queued"
    code = await e2e.bot.stop()
    assert code == 0, e2e.bot.log_tail()
    assert "stopped cleanly" in e2e.bot.log_text()
    assert e2e.job(job_id)["status"] == "done"  # the running batch was allowed to finish, and was posted
    assert rec.original is not None and len(rec.original.attachments) == 2 and rec.original.buttons()
    assert e2e.job(waiting_id)["status"] == "queued"  # handed back for the next process
    assert waiting.original is not None and not waiting.original.loading
    assert waiting.original.content == ("⏸ The bot is shutting down before this job could run. The job stays queued "
                                        "and runs when the bot is started again (a job is resumed after one restart "
                                        "only).")
    e2e.skip_log()

    await e2e.bot.start()
    await e2e.wait(lambda: e2e.job(waiting_id)["status"] == "done", 120, f"job {waiting_id} to be done after the restart")
    msg = await e2e.result(waiting)
    assert msg.attachments and msg.content == RESUMED, msg.content
    assert any(c.startswith(f"{RESUMED}\n") for c in msg.contents), msg.contents  # its states said so too
