"""/imagine end to end: the real bot process renders with the tiny checkpoint and answers through the fake Discord.

Each test checks what a user sees: the command is deferred at once, the message shows the queue/progress, then the
final PNG (downloaded over HTTP and decoded, its A1111 ``parameters`` text read back) with the embed and buttons.
"""

from __future__ import annotations

import re

import pytest

from engine.infotext import parse_infotext
from tests.e2e.scenario import E2E, job_id_of

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.timeout(180)]

PROGRESS_WORDS = ("Queued", "Rendering")


def _labels(msg) -> list[str]:
    return [str(b.get("label")) for b in msg.buttons()]


@pytest.mark.parametrize(("written", "expected_tag"), [
    ("a lighthouse at dusk hypernet:waterElemental_10:0.7", "<hypernet:waterElemental_10:0.7>"),
    ("a lighthouse at dusk <hypernet:waterElemental_10:0.7>", "<hypernet:waterElemental_10:0.7>"),
], ids=["bare-tag", "bracketed-tag"])
async def test_imagine_with_a_hypernet_tag(e2e: E2E, written: str, expected_tag: str) -> None:
    fake = e2e.fake
    rec = await e2e.imagine(fake.member_plain, written, seed=1234, steps=3)
    await e2e.wait(lambda: rec.acknowledged, 10, "the command to be acknowledged")
    assert rec.response_type == 5 and not rec.ephemeral, "the bot must defer publicly before rendering"

    msg = await e2e.result(rec)
    # Progress before the result: at least one "queued"/"rendering" version precedes the final one.
    assert any(word in c for c in msg.contents[:-1] for word in PROGRESS_WORDS), msg.contents
    img, parameters = await e2e.image(msg)
    assert img.format == "PNG" and img.size == (64, 64)
    info = parse_infotext(parameters)
    assert expected_tag in info["Prompt"] and "a lighthouse at dusk" in info["Prompt"], parameters
    assert (info["Seed"], info["Steps"], info["Size"]) == ("1234", "3", "64x64"), parameters

    job_id = job_id_of(msg)
    embed = msg.embeds[0]
    assert embed["title"] == f"Job #{job_id}"
    fields = {f["name"]: f["value"] for f in embed.get("fields", [])}
    assert "waterElemental_10" in fields["Hypernetworks"] and "0.7" in fields["Hypernetworks"]
    assert fields["Seed"] == "1234" and fields["Steps"] == "3"
    labels = _labels(msg)
    assert {"Reroll", "Info"} <= set(labels), labels
    assert any(lbl.startswith("−") and "waterElemental_10" in lbl for lbl in labels), labels
    assert any(lbl.startswith("+") and "waterElemental_10" in lbl for lbl in labels), labels

    row = e2e.job(job_id)
    assert (row["status"], row["user_id"], row["seed"]) == ("done", fake.member_plain.id, 1234)
    assert row["interaction_token"] is None, "the token must be forgotten once the job is finished"
    assert (e2e.bot.images_dir / f"{job_id}" / "0.png").is_file()


async def test_imagine_without_hypernet_uses_the_configured_defaults(e2e: E2E) -> None:
    rec = await e2e.imagine(e2e.fake.member_admin, "a plain teapot")
    msg = await e2e.result(rec)
    _, parameters = await e2e.image(msg)
    info = parse_infotext(parameters)
    assert info["Prompt"] == "a plain teapot" and "hypernet" not in parameters
    assert (info["Steps"], info["Size"], info["Sampler"]) == ("4", "64x64", "Euler a")  # default_steps 4, 64x64
    labels = _labels(msg)
    assert "Reroll" in labels and not any(lbl.startswith(("−", "+")) for lbl in labels), labels


async def test_two_tags_stack_and_count_gives_two_images(e2e: E2E) -> None:
    rec = await e2e.imagine(e2e.fake.member_plain, "koi pond hypernet:animeStyle <hypernet:waterElemental_10:0.5>",
                            steps=2, count=2, seed=77)
    msg = await e2e.result(rec)
    assert len(msg.attachments) == 2
    seeds = []
    for i in range(2):
        _, parameters = await e2e.image(msg, i)
        info = parse_infotext(parameters)
        assert "<hypernet:animeStyle:1>" in info["Prompt"], parameters
        assert "<hypernet:waterElemental_10:0.5>" in info["Prompt"], parameters
        seeds.append(info["Seed"])
    assert seeds == ["77", "78"]
    labels = _labels(msg)
    assert any("animeStyle" in lbl for lbl in labels) and any("waterElemental_10" in lbl for lbl in labels), labels


async def test_two_users_each_see_their_queue_position_and_nobody_is_starved(e2e: E2E) -> None:
    fake = e2e.fake
    busy, other = fake.member_plain, fake.member_manager
    flood = [await e2e.imagine(busy, f"queue filler {i}", steps=4, seed=i) for i in range(5)]
    late = await e2e.imagine(other, "just one for me", steps=4)
    results = [await e2e.result(rec) for rec in [*flood, late]]

    def positions(rec) -> list[int]:
        return [int(m.group(1)) for c in rec.original.contents if (m := re.search(r"position (\d+)", c))]

    # Each message shows its own job's place in the queue; the latecomer is served next, not after all five.
    assert positions(late) and max(positions(late)) <= 2, late.original.contents
    assert positions(flood[-1]) and max(positions(flood[-1])) > max(positions(late)), flood[-1].original.contents
    ids = {rec.id: job_id_of(msg) for rec, msg in zip([*flood, late], results, strict=True)}
    finished = {rec.id: e2e.job(ids[rec.id])["finished_at"] for rec in [*flood, late]}
    assert finished[late.id] < finished[flood[-1].id], "the second user's job waited for all of the first user's jobs"
    assert {e2e.job(ids[rec.id])["user_id"] for rec in flood} == {busy.id}
    assert e2e.job(ids[late.id])["user_id"] == other.id
