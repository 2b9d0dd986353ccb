"""Owner tools: /status and /sync are for the configured owners only; the health file and status line stay fresh."""

from __future__ import annotations

import json
import logging

import pytest

from bot.health import check_health
from cogs.owner import collect_figures
from tests.harness import Harness

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_status_for_owner_shows_engine_and_queue(hc: Harness) -> None:
    await hc.wait_result(await hc.fake.slash(hc.fake.member_plain, "imagine", {"prompt": "warm up", "steps": 1}))
    rec = await hc.fake.slash(hc.fake.member_owner, "status")
    msg = await hc.wait_ephemeral(rec)
    (embed,) = msg.embeds
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert embed["title"] == "Hypercord status"
    assert fields["Worker"].startswith("ready (pid ") and "cpu" in fields["Worker"]
    (resident,) = hc.bot.engine.status().checkpoints
    assert fields["Checkpoints"] == (f"default `tiny`\n`tiny` on device · {resident.nbytes / 2**20:.0f} MiB\n"
                                     "loads since start: 1")
    assert "waiting from" in fields["Queue"] and "done" in fields["Last hour"]
    assert "images/s" in fields["Speed"] and "VRAM used" in fields["Memory"]


@pytest.mark.parametrize("command", ["status", "sync"])
async def test_owner_commands_refuse_everyone_else(hc: Harness, command: str) -> None:
    for member in (hc.fake.member_plain, hc.fake.member_admin):
        rec = await hc.fake.slash(member, command)
        msg = await hc.wait_ephemeral(rec)
        assert msg.content == "Only the bot's owners can do that."


async def test_sync_guilds_for_owner(hc: Harness) -> None:
    before = hc.fake.guild_sync_calls
    rec = await hc.fake.slash(hc.fake.member_owner, "sync", {"scope": "guilds"})
    msg = await hc.wait_ephemeral(rec)
    assert msg.content.startswith(f"Synced: guild {hc.fake.guild.id}: ")
    assert hc.fake.guild_sync_calls > before and hc.fake.global_sync_calls == 0


async def test_figures_and_status_log_line(hc: Harness, caplog: pytest.LogCaptureFixture) -> None:
    figures = await collect_figures(hc.bot)
    assert figures["worker"] == "ready" and figures["checkpoint"] == "tiny"
    assert figures["jobs_last_hour"]["done"] >= 1
    cog = hc.bot.get_cog("OwnerCog")
    with caplog.at_level(logging.INFO, logger="hypercord.status"):
        await cog.status_log.coro(cog)  # one tick of the periodic task
    line = next(r.getMessage() for r in caplog.records if r.name == "hypercord.status")
    assert line.startswith("status ")
    logged = json.loads(line.removeprefix("status "))
    assert logged["worker"] == "ready" and "images_per_s" in logged and "vram_used_bytes" in logged


async def test_health_file_reports_connected(hc: Harness) -> None:
    cog = hc.bot.get_cog("OwnerCog")
    await cog.health.coro(cog)
    healthy, reason = check_health(cog.health_file)
    assert healthy, reason
    assert reason.startswith("ok: connected, worker ready")
