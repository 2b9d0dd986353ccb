"""/imagine through the fake Discord with the real bot and worker: valid requests, refusals, caps, delivery faults."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from bot.errors import NOT_COMPLETED
from bot.ratelimit import RateLimiter
from tests.harness import SLOW_MARKER, Harness, png_parameters

pytestmark = pytest.mark.asyncio(loop_scope="module")

WEBHOOK_MESSAGE = r"/webhooks/\d+/[^/]+/messages/\d+"


def job_id_of(msg) -> int:
    return int(re.search(r"Job #(\d+)", msg.embeds[0]["title"]).group(1))


async def test_valid_imagine_defers_shows_queue_and_progress_then_posts_png_embed_buttons(hc: Harness) -> None:
    fake = hc.fake
    rec = await fake.slash(fake.member_plain, "imagine", {"prompt": "a lighthouse at dusk", "steps": 3, "seed": 1234})
    msg = await hc.wait_result(rec)
    assert rec.response_type == 5 and rec.late_callbacks == 0  # deferred inside the 3 s window
    assert any(c.startswith("⏳ Queued — position 1") for c in msg.contents)
    assert any(re.search(r"step \d/3", c) for c in msg.contents)
    job = await hc.store.jobs.get(job_id_of(msg))
    assert job is not None and job.status == "done" and job.settings.seed == 1234 and job.user_id == fake.member_plain.id
    assert job.message_id == msg.id
    data = await fake.download(msg.attachments[0])
    params = png_parameters(data)
    assert params is not None and params.startswith("a lighthouse at dusk\n")
    assert "Steps: 3" in params and "Seed: 1234" in params and "Size: 64x64" in params
    assert (hc.root / "images" / job.image_paths[0]).read_bytes() == data
    fields = {f["name"]: f["value"] for f in msg.embeds[0]["fields"]}
    assert fields["Seed"] == "1234" and fields["Steps"] == "3" and fields["Sampler"] == "Euler a"
    assert [b["label"] for b in msg.buttons()] == ["Reroll", "Info"]
    assert not msg.loading


async def test_random_seed_is_picked_and_stored(hc: Harness) -> None:
    rec = await hc.fake.slash(hc.fake.member_plain, "imagine", {"prompt": "a fox", "steps": 1})
    msg = await hc.wait_result(rec)
    job = await hc.store.jobs.get(job_id_of(msg))
    assert job is not None and 0 <= job.settings.seed < 2**32
    assert f"Seed: {job.settings.seed}" in png_parameters(await hc.fake.download(msg.attachments[0]))


async def test_bare_and_bracketed_tags_stack_in_order(hc: Harness, nets) -> None:
    prompt = "woman hypernet:waterElemental:0.7, red hair <hypernet:fireSpirit:1.2>"
    rec = await hc.fake.slash(hc.fake.member_plain, "imagine", {"prompt": prompt, "steps": 2})
    msg = await hc.wait_result(rec)
    job = await hc.store.jobs.get(job_id_of(msg))
    assert [(h.name, h.multiplier) for h in job.settings.hypernets] == [("waterElemental", 0.7), ("fireSpirit", 1.2)]
    assert [h.sha256 for h in job.settings.hypernets] == [nets["water"].sha256, nets["fire"].sha256]
    params = png_parameters(await hc.fake.download(msg.attachments[0]))
    # The prompt as typed, each tag in A1111's bracketed form where it was typed.
    assert params.splitlines()[0] == "woman <hypernet:waterElemental:0.7>, red hair <hypernet:fireSpirit:1.2>"
    assert job.settings.prompt == prompt
    labels = [b["label"] for b in msg.buttons()]
    assert labels == ["Reroll", "Info", "Set multiplier…", "− waterElemental", "+ waterElemental", "− fireSpirit",
                      "+ fireSpirit"]
    hyper_field = next(f["value"] for f in msg.embeds[0]["fields"] if f["name"] == "Hypernetworks")
    assert "`waterElemental` × 0.7" in hyper_field and "`fireSpirit` × 1.2" in hyper_field


async def test_hypernet_option_with_and_without_multiplier(hc: Harness, nets) -> None:
    rec = await hc.fake.slash(hc.fake.member_plain, "imagine",
                              {"prompt": "a castle", "hypernet": "waterElemental", "multiplier": 1.5, "steps": 1})
    job = await hc.store.jobs.get(job_id_of(await hc.wait_result(rec)))
    assert [(h.name, h.multiplier) for h in job.settings.hypernets] == [("waterElemental", 1.5)]
    rec = await hc.fake.slash(hc.fake.member_plain, "imagine", {"prompt": "a castle", "hypernet": "fireSpirit", "steps": 1})
    job = await hc.store.jobs.get(job_id_of(await hc.wait_result(rec)))
    assert [(h.name, h.multiplier) for h in job.settings.hypernets] == [("fireSpirit", 0.6)]  # its default multiplier


async def test_hypernet_for_another_model_family_is_flagged_in_the_result(hc: Harness) -> None:
    sd2_file = Path(__file__).resolve().parents[1] / "fixtures" / "hypernetworks" / "pub_gelu_1-0.05-1_1024_sd2.pt"
    await hc.bot.models.hypernets.add_from_bytes(sd2_file.read_bytes(), filename="sd2Only.pt",
                                                 guild_id=hc.fake.guild.id, added_by=hc.fake.member_admin.id)
    rec = await hc.fake.slash(hc.fake.member_plain, "imagine", {"prompt": "a castle hypernet:sd2Only", "steps": 1})
    msg = await hc.wait_result(rec)
    warning = next(f["value"] for f in msg.embeds[0]["fields"] if f["name"] == "⚠️ Warnings")
    assert "'sd2Only' was made for" in warning and "(text context 1024)" in warning, warning
    assert "(text context 768)" in warning, warning
    job = await hc.store.jobs.get(job_id_of(msg))
    assert job is not None and job.warnings and "sd2Only" in job.warnings[0]


async def test_hypernet_autocomplete_lists_enabled_models(hc: Harness, nets) -> None:
    rec = await hc.fake.autocomplete(hc.fake.member_plain, "imagine", {"prompt": "x", "hypernet": "fire"}, "hypernet")
    await hc.fake.wait_for(lambda: rec.choices is not None)
    assert [c["value"] for c in rec.choices] == ["fireSpirit"]


@pytest.mark.parametrize(("options", "expected"), [
    ({"prompt": "a cat <hypernet:waterElementl:0.7>"}, "did you mean `waterElemental`"),
    ({"prompt": "a cat <hypernet:waterElemental:5>"}, "outside the allowed range -1 to 2"),
    ({"prompt": "a cat", "steps": 99}, "Steps must be between 1 and 8; you gave 99"),
    ({"prompt": "<hypernet:waterElemental:0.5>"}, "the prompt is empty"),
    ({"prompt": "   "}, "The prompt is empty"),
    ({"prompt": "a cat", "multiplier": 0.5}, "`multiplier` needs `hypernet` too"),
    ({"prompt": "a cat", "hypernet": "nope"}, "there is no hypernet named `nope`"),
    ({"prompt": "a cat", "width": 100}, "Width must be a multiple of 8"),
    ({"prompt": "a cat", "count": 9}, "Count must be between 1 and 4"),
])
async def test_invalid_input_is_refused_ephemerally_without_a_job(hc: Harness, nets, options, expected) -> None:
    before = await hc.job_count()
    rec = await hc.fake.slash(hc.fake.member_plain, "imagine", options)
    msg = await hc.wait_ephemeral(rec)
    assert expected.lower() in msg.content.lower()
    assert rec.response_type == 4 and rec.ephemeral
    assert await hc.job_count() == before


async def test_rate_limit_says_how_long_to_wait(hc: Harness) -> None:
    saved = hc.bot.jobs.ratelimiter
    hc.bot.jobs.ratelimiter = RateLimiter(rate_per_minute=1.0, burst=1, clock=lambda: 0.0)  # time stands still
    try:
        first = await hc.fake.slash(hc.fake.member_manager, "imagine", {"prompt": "one", "steps": 1})
        second = await hc.fake.slash(hc.fake.member_manager, "imagine", {"prompt": "two", "steps": 1})
        msg = await hc.wait_ephemeral(second)
        assert msg.content == ("You are starting jobs too quickly: this bot allows 1 in a row, then 1 a minute. Wait "
                               "60 s before starting another one.")
        assert second.response_type == 4 and second.ephemeral
        await hc.wait_result(first)
    finally:
        hc.bot.jobs.ratelimiter = saved


QUEUE_CAP = ("You already have 2 jobs queued or rendering; the limit is 2 at a time. The next slot frees up when one "
             "of them finishes; you can also cancel one.")


async def test_user_queue_cap_is_named_and_costs_no_token(hc: Harness) -> None:
    fake = hc.fake
    saved = hc.bot.jobs.ratelimiter
    hc.bot.jobs.ratelimiter = RateLimiter(rate_per_minute=1.0, burst=3, clock=lambda: 0.0)
    try:
        slow = [await fake.slash(fake.member_admin, "imagine", {"prompt": f"{SLOW_MARKER} {i}", "steps": 2})
                for i in range(2)]
        await fake.wait_for(lambda: all(r.original and "Queued" in " ".join(r.original.contents) for r in slow))
        before = await hc.job_count()
        third = await fake.slash(fake.member_admin, "imagine", {"prompt": "three", "steps": 1})
        assert (await hc.wait_ephemeral(third)).content == QUEUE_CAP
        assert not third.deferred  # refused privately before anything was written
        hc.bot.jobs.ratelimiter.consume(fake.member_admin.id)  # the last token: now both limits apply
        fourth = await fake.slash(fake.member_admin, "imagine", {"prompt": "four", "steps": 1})
        assert (await hc.wait_ephemeral(fourth)).content == (
            f"{QUEUE_CAP} You are also starting jobs too quickly: this bot allows 3 in a row, then 1 a minute, so wait "
            "at least 60 s in any case.")
        assert await hc.job_count() == before
        for r in slow:
            await hc.wait_result(r)
    finally:
        hc.bot.jobs.ratelimiter = saved


async def test_a_model_disabled_after_validation_is_explained_privately(hc: Harness, nets,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The command is already deferred publicly when the model turns out gone: the placeholder must not show the
    reason (Discord would make an "ephemeral" first follow-up public), so it gets a neutral line and the reason is
    sent privately."""
    registry = hc.store.hypernets
    real_usable = registry.usable
    water = nets["water"]

    async def usable_then_disabled(guild_id):  # an admin disables the model just after /imagine validated the tag
        rows = await real_usable(guild_id)
        monkeypatch.setattr(registry, "usable", real_usable)
        await registry.update(water.id, enabled=False)
        return rows

    monkeypatch.setattr(registry, "usable", usable_then_disabled)
    before = await hc.job_count()
    try:
        rec = await hc.fake.slash(hc.fake.member_plain, "imagine", {"prompt": "a cat hypernet:waterElemental:0.5"})
        private = await hc.wait_ephemeral(rec)
    finally:
        await registry.update(water.id, enabled=True)
    assert private.content == ("The hypernetwork `waterElemental` is no longer available here (it was removed, disabled "
                               "or replaced). Pick another one; `/hypernets list` shows those installed.")
    assert rec.response_type == 5 and not rec.original.ephemeral and not rec.original.loading
    assert rec.original.contents == ["", NOT_COMPLETED]  # the reason never appeared in public
    assert NOT_COMPLETED == ("⚠️ This request could not be completed. The reason was sent privately to the member who "
                             "made it.")
    assert await hc.job_count() == before


async def test_cancel_by_owner_while_running(hc: Harness) -> None:
    fake = hc.fake
    rec = await fake.slash(fake.member_plain, "imagine", {"prompt": f"{SLOW_MARKER} cancel me", "steps": 8})
    await hc.wait_content(lambda: rec.original, "Rendering")
    click = await fake.click(fake.member_plain, rec.original, label="Cancel")
    answer = await hc.wait_ephemeral(click)
    assert "Cancelling job" in answer.content
    msg = await hc.wait_content(lambda: rec.original, "Cancelled by")
    assert msg.buttons() == [] and not msg.attachments
    job = (await hc.store.jobs.history(fake.member_plain.id, limit=1))[0]
    assert job.status == "cancelled"


async def test_cancel_refused_for_another_user_and_allowed_for_admin(hc: Harness) -> None:
    fake = hc.fake
    rec = await fake.slash(fake.member_manager, "imagine", {"prompt": f"{SLOW_MARKER} mine", "steps": 8})
    await hc.wait_content(lambda: rec.original, "Rendering")
    refused = await fake.click(fake.member_plain, rec.original, label="Cancel")
    assert "Only the person who started this job" in (await hc.wait_ephemeral(refused)).content
    allowed = await fake.click(fake.member_admin, rec.original, label="Cancel")
    await hc.wait_ephemeral(allowed)
    await hc.wait_content(lambda: rec.original, f"Cancelled by <@{fake.member_admin.id}>")
    await hc.wait_idle()


async def test_result_after_token_expiry_goes_to_the_channel(hc: Harness) -> None:
    fake = hc.fake
    rec = await fake.slash(fake.member_plain, "imagine", {"prompt": f"{SLOW_MARKER} late", "steps": 2})
    rec.expire()

    def channel_result():
        for m in fake.channel_messages(fake.channel_general):
            if "webhook_id" not in m.payload and m.attachments and f"<@{fake.member_plain.id}>" in m.content:
                return m
        return None

    msg = await fake.wait_for(channel_result, timeout=30)
    assert msg.embeds and [b["label"] for b in msg.buttons()][:2] == ["Reroll", "Info"]
    job_id = job_id_of(msg)

    async def recorded():  # the bot records the new message's id right after posting it
        job = await hc.store.jobs.get(job_id)
        return job if job is not None and job.message_id == msg.id else None

    job = await fake.wait_for(recorded, timeout=10, what="the job to point at its channel message")
    assert job.status == "done"
    assert any(e["status"] == 401 for e in rec.errors)


async def test_oversize_image_is_re_encoded_to_fit(hc: Harness) -> None:
    fake = hc.fake
    fake.attachment_size_limit = 1500
    try:
        rec = await fake.slash(fake.member_plain, "imagine", {"prompt": "lots of detail", "steps": 2, "size": "128x128"})
    finally:
        fake.attachment_size_limit = 10 * 1024 * 1024
    msg = await hc.wait_result(rec)
    att = msg.attachments[0]
    assert not att["filename"].endswith(".png") and att["size"] <= 1500
    assert "re-encoded" in msg.embeds[0]["footer"]["text"]
    job = await hc.store.jobs.get(job_id_of(msg))
    assert (hc.root / "images" / job.image_paths[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the PNG is kept


async def _queued_then(hc: Harness, prompt: str):
    """A slow job whose message already shows "Queued"; progress edits are held back so the next edit is the result."""
    presenters = hc.bot.presenters
    presenters.edit_interval_s = 100.0
    try:
        rec = await hc.fake.slash(hc.fake.member_plain, "imagine", {"prompt": f"{SLOW_MARKER} {prompt}", "steps": 2})
        await hc.wait_content(lambda: rec.original, "Queued")
    finally:
        presenters.edit_interval_s = 0.2
    return rec


async def test_server_error_and_rate_limit_on_the_result_post_are_retried(hc: Harness) -> None:
    rec = await _queued_then(hc, "retry")
    busy = hc.fake.inject("PATCH", WEBHOOK_MESSAGE, status=503, times=1)
    limited = hc.fake.inject("PATCH", WEBHOOK_MESSAGE, status=429, times=1)
    msg = await hc.wait_result(rec)
    assert busy.hits == 1 and limited.hits == 1
    assert msg.embeds and msg.buttons()


async def test_missing_permission_is_explained(hc: Harness) -> None:
    rec = await _queued_then(hc, "forbidden")
    denied = hc.fake.inject("PATCH", WEBHOOK_MESSAGE, status=403, times=1)
    msg = await hc.wait_content(lambda: rec.original, "Attach Files")
    assert denied.hits == 1 and not msg.loading
    job = (await hc.store.jobs.history(hc.fake.member_plain.id, limit=1))[0]
    assert job.status == "done" and f"/show {job.id}" in msg.content
    await asyncio.sleep(0)


# ---- A1111's advanced settings, pasting parameters ----------------------------------------------------------------


async def test_schedule_clip_skip_and_variation_reach_the_png(hc: Harness) -> None:
    options = {"prompt": "a harbour", "steps": 2, "seed": 9, "sampler": "DPM++ 2M", "schedule": "Karras",
               "clip_skip": 2, "variation_seed": 40, "variation_strength": 0.25, "count": 2}
    msg = await hc.wait_result(await hc.fake.slash(hc.fake.member_plain, "imagine", options))
    job = await hc.store.jobs.get(job_id_of(msg))
    s = job.settings
    assert (s.schedule, s.clip_skip, s.subseed, s.subseed_strength, s.rng) == ("Karras", 2, 40, 0.25, "GPU")
    second = png_parameters(await hc.fake.download(msg.attachments[1]))
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in second and "Seed: 9," in second
    assert "Variation seed: 41, Variation seed strength: 0.25" in second and "Clip skip: 2" in second
    fields = {f["name"]: f["value"] for f in msg.embeds[0]["fields"]}
    assert fields["Seed"] == "9 · variation 40–41 at 0.25 · clip skip 2" and fields["Sampler"] == "DPM++ 2M · Karras"


async def test_sampler_suggestions_offer_every_a1111_name_matching_the_text(hc: Harness) -> None:
    rec = await hc.fake.autocomplete(hc.fake.member_plain, "imagine", {"prompt": "x", "sampler": "zeta"}, "sampler")
    await hc.fake.wait_for(lambda: rec.choices is not None)
    assert rec.choices == []
    rec = await hc.fake.autocomplete(hc.fake.member_plain, "imagine", {"prompt": "x", "sampler": "sde karras"},
                                     "sampler")
    await hc.fake.wait_for(lambda: rec.choices is not None)
    assert [c["value"] for c in rec.choices] == ["DPM++ SDE Karras", "DPM++ 2M SDE Karras", "DPM++ 3M SDE Karras"]


PASTED = ("a lighthouse at dusk\nNegative prompt: fog\nSteps: 2, Sampler: Euler a, Schedule type: Karras, "
          "CFG scale: 6, Seed: 4321, Size: 64x64, Model: anything-v3, ENSD: 31337, Hires upscale: 2, Version: v1.9.4")


async def test_paste_opens_a_form_and_renders_the_block_with_notes_on_what_is_not_rendered(hc: Harness) -> None:
    fake = hc.fake
    ask = await fake.slash(fake.member_plain, "paste")
    await fake.wait_for(lambda: ask.modal is not None)
    submit = await fake.submit_modal(fake.member_plain, ask, {"parameters": PASTED})
    msg = await hc.wait_result(submit)
    job = await hc.store.jobs.get(job_id_of(msg))
    s = job.settings
    assert (s.prompt, s.negative_prompt, s.steps, s.sampler, s.schedule, s.cfg_scale, s.seed, s.width, s.height,
            s.eta_noise_seed_delta, s.rng, job.origin) == ("a lighthouse at dusk", "fog", 2, "Euler a", "Karras", 6.0,
                                                            4321, 64, 64, 31337, "GPU", "paste")
    params = png_parameters(await fake.download(msg.attachments[0]))
    assert "Seed: 4321" in params and "ENSD: 31337" in params and "RNG" not in params
    warnings = next(f["value"] for f in msg.embeds[0]["fields"] if f["name"] == "⚠️ Warnings")
    assert "Not rendered from the pasted parameters: Hires upscale" in warnings
    assert "made with the model `anything-v3`" in warnings


async def test_paste_that_is_not_a_parameters_block_is_refused_privately(hc: Harness) -> None:
    fake = hc.fake
    ask = await fake.slash(fake.member_plain, "paste")
    await fake.wait_for(lambda: ask.modal is not None)
    submit = await fake.submit_modal(fake.member_plain, ask, {"parameters": "a nice picture please"})
    reply = await hc.wait_ephemeral(submit)
    assert reply.content.startswith("That does not look like A1111 parameters: paste the whole block")
    assert not submit.deferred


async def test_render_these_parameters_on_a_posted_block(hc: Harness) -> None:
    fake = hc.fake
    posted = await fake.user_message(fake.member_plain, PASTED.replace("Seed: 4321", "Seed: 99"))
    rec = await fake.message_command(fake.member_plain, "Render these parameters", posted)
    job = await hc.store.jobs.get(job_id_of(await hc.wait_result(rec)))
    assert (job.settings.seed, job.settings.prompt, job.origin) == (99, "a lighthouse at dusk", "paste")
