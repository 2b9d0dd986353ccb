"""Several checkpoints through the fake Discord with the real bot and worker: /imagine model:, /models, the
trained-on default, per-server choices, and buttons after a restart keeping (or explaining the loss of) the model.

Installed: ``tiny`` (the bot's default), ``tiny-b`` (a config entry with a display name and its own steps and
sampler) and ``lighthouse-v1`` (an A1111-layout single file in the checkpoints folder, written by the test).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bot.config import CheckpointEntry, CheckpointSettings
from tests.engine.checkpoints.files import write_sd1
from tests.harness import Harness, png_parameters, running_bot

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hm(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    root = tmp_path_factory.mktemp("bot")
    (root / "checkpoints").mkdir()
    write_sd1(root / "checkpoints" / "lighthouse-v1.safetensors", seed=3)
    checkpoints = CheckpointSettings(folder=str(root / "checkpoints"), models={
        "tiny-b": CheckpointEntry(source="tiny-b", display_name="Tiny B", steps=3, sampler="Euler")})
    async with running_bot(root, checkpoints=checkpoints) as harness:
        await harness.install_hypernet("pub_zoo_elu", "inCase", base_model="tiny-b")
        await harness.install_hypernet("pub_zoo_gelu", "gothic", base_model="protogenV22_2.2")
        yield harness


def job_id_of(msg) -> int:
    return int(re.search(r"Job #(\d+)", msg.embeds[0]["title"]).group(1))


def warnings_of(msg) -> str:
    return next((f["value"] for f in msg.embeds[0]["fields"] if f["name"] == "⚠️ Warnings"), "")


async def imagine(hm: Harness, options: dict, user=None):
    rec = await hm.fake.slash(user or hm.fake.member_plain, "imagine", options)
    msg = await hm.wait_result(rec)
    return msg, await hm.store.jobs.get(job_id_of(msg))


async def ephemeral(hm: Harness, user, command: str, options: dict | None = None) -> str:
    rec = await hm.fake.slash(user, command, options or {})
    return (await hm.wait_ephemeral(rec)).content


async def test_model_autocomplete_offers_the_servers_models_default_first(hm: Harness) -> None:
    rec = await hm.fake.autocomplete(hm.fake.member_plain, "imagine", {"prompt": "x", "model": ""}, "model")
    await hm.fake.wait_for(lambda: rec.choices is not None)
    assert [(c["name"], c["value"]) for c in rec.choices] == [
        ("tiny", "tiny"), ("lighthouse-v1", "lighthouse-v1"), ("tiny-b — Tiny B", "tiny-b")]
    typed = await hm.fake.autocomplete(hm.fake.member_plain, "imagine", {"prompt": "x", "model": "light"}, "model")
    await hm.fake.wait_for(lambda: typed.choices is not None)
    assert [c["value"] for c in typed.choices] == ["lighthouse-v1"]


async def test_models_list_shows_family_defaults_and_the_hypernets_trained_on_each(hm: Harness) -> None:
    text = await ephemeral(hm, hm.fake.member_plain, "models list")
    assert text == (
        "**Models** (use one with `/imagine model:`; the default is the bot's):\n"
        "• `tiny`: SD 1.x; defaults: the server-wide defaults — default\n"
        "• `lighthouse-v1`: SD 1.x; defaults: the server-wide defaults\n"
        "• `tiny-b` (Tiny B): SD 1.x; defaults: Euler, 3 steps; trained on it: `inCase`")


async def test_a_named_model_renders_with_its_defaults_and_infotext(hm: Harness) -> None:
    msg, job = await imagine(hm, {"prompt": "a lighthouse", "model": "tiny-b", "seed": 5})
    assert job.settings.checkpoint == "tiny-b" and job.settings.steps == 3 and job.settings.sampler == "Euler"
    params = png_parameters(await hm.fake.download(msg.attachments[0]))
    assert "Model: tiny-b" in params and "Steps: 3" in params and warnings_of(msg) == ""
    assert {f["name"]: f["value"] for f in msg.embeds[0]["fields"]}["Model"] == "Tiny B"  # its display name
    _, job = await imagine(hm, {"prompt": "a lighthouse", "model": "tiny-b", "steps": 2, "sampler": "Euler a"})
    assert (job.settings.steps, job.settings.sampler) == (2, "Euler a")  # what the user typed wins


async def test_unknown_and_disallowed_models_are_refused_privately(hm: Harness) -> None:
    fake = hm.fake
    before = await hm.job_count()
    assert await ephemeral(hm, fake.member_plain, "imagine", {"prompt": "x", "model": "nope"}) == (
        "There is no model named `nope` here. `/models list` shows the models you can use on this server.")
    assert await ephemeral(hm, fake.member_plain, "models disallow", {"name": "lighthouse-v1"}) == (
        "Only members with the **Manage Server** permission can do that.")
    assert await ephemeral(hm, fake.member_manager, "models disallow", {"name": "lighthouse-v1"}) == (
        "`lighthouse-v1` is no longer offered on this server; requests naming it are refused.")
    assert await ephemeral(hm, fake.member_plain, "imagine", {"prompt": "x", "model": "lighthouse-v1"}) == (
        "The model `lighthouse-v1` is not offered on this server. `/models list` shows the models you can use here.")
    assert await ephemeral(hm, fake.member_manager, "models disallow", {"name": "tiny"}) == (
        "`tiny` is the default model here, so it cannot be disallowed. Choose another default first with "
        "`/models default`.")
    assert await ephemeral(hm, fake.member_manager, "models allow", {"name": "lighthouse-v1"}) == (
        "`lighthouse-v1` is offered on this server again.")
    assert await hm.job_count() == before


async def test_the_hypernets_training_checkpoint_is_the_default_and_the_result_says_so(hm: Harness) -> None:
    msg, job = await imagine(hm, {"prompt": "a castle", "hypernet": "inCase"})
    assert job.settings.checkpoint == "tiny-b" and job.settings.steps == 3
    assert warnings_of(msg) == "Model `tiny-b`: the checkpoint the hypernetwork `inCase` was trained on."


async def test_an_absent_training_checkpoint_falls_back_to_the_server_default_with_the_reason(hm: Harness) -> None:
    fake = hm.fake
    assert await ephemeral(hm, fake.member_manager, "models default", {"name": "lighthouse-v1"}) == (
        "`lighthouse-v1` is now this server's default model: requests that name no model render with it, unless "
        "their hypernetwork was trained on another installed model.")
    try:
        plain_msg, plain = await imagine(hm, {"prompt": "a harbour"})
        assert plain.settings.checkpoint == "lighthouse-v1" and warnings_of(plain_msg) == ""
        msg, job = await imagine(hm, {"prompt": "a castle", "hypernet": "gothic"})
        assert job.settings.checkpoint == "lighthouse-v1"
        assert warnings_of(msg).startswith(
            "Model `lighthouse-v1` (this server's default): the hypernetwork `gothic` was trained on "
            "`protogenV22_2.2`, which is not installed here.")
    finally:
        assert await ephemeral(hm, fake.member_manager, "models default") == (
            "This server now uses the bot's default model, `tiny`.")


async def test_hypernets_info_says_whether_the_training_checkpoint_is_installed(hm: Harness) -> None:
    for name, expected in [("inCase", "`tiny-b`, installed as model `tiny-b` (renders without a `model` use it)"),
                           ("gothic", "`protogenV22_2.2`, not installed here (renders use the default model)")]:
        rec = await hm.fake.slash(hm.fake.member_plain, "hypernets info", {"name": name})
        (embed,) = (await hm.wait_ephemeral(rec)).embeds
        assert {f["name"]: f["value"] for f in embed["fields"]}["Trained on"] == expected


async def test_status_shows_the_resident_checkpoints_and_their_memory(hm: Harness) -> None:
    await imagine(hm, {"prompt": "a lamp", "model": "tiny-b"})
    await hm.fake.wait_for(lambda: hm.bot.engine.status().workers[0].state == "ready", what="the batch's end")
    status = hm.bot.engine.status()
    assert [c.name for c in status.checkpoints] == ["tiny-b"]  # no budget configured: one at a time
    (embed,) = (await hm.wait_ephemeral(await hm.fake.slash(hm.fake.member_owner, "status"))).embeds
    assert {f["name"]: f["value"] for f in embed["fields"]}["Checkpoints"] == (
        f"default `tiny`\n`tiny-b` on device · {status.checkpoints[0].nbytes / 2**20:.0f} MiB\n"
        f"loads since start: {status.checkpoint_loads}")
    assert status.checkpoint_loads >= 3


async def test_buttons_after_a_restart_keep_the_model_or_say_it_is_gone(hm: Harness) -> None:
    fake = hm.fake
    kept_msg, kept = await imagine(hm, {"prompt": "a boat", "model": "tiny-b", "seed": 9})
    gone_msg, gone = await imagine(hm, {"prompt": "a boat", "model": "lighthouse-v1", "seed": 9})
    (hm.root / "checkpoints" / "lighthouse-v1.safetensors").unlink()
    await hm.restart_bot()
    click = await fake.click(fake.member_plain, kept_msg, label="Reroll")
    child = await hm.store.jobs.get(job_id_of(await hm.wait_result(click)))
    assert child.parent_job_id == kept.id and child.settings.checkpoint == "tiny-b"
    refused = await fake.click(fake.member_plain, gone_msg, label="Reroll")
    assert (await hm.wait_ephemeral(refused)).content == (
        "The model `lighthouse-v1` is no longer available here (it was removed, or this server no longer offers it). "
        "Pick another one with the `model` option; `/models list` shows those you can use.")
    assert gone.settings.checkpoint == "lighthouse-v1"
