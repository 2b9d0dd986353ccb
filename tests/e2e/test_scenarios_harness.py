"""The end-to-end checks themselves: each per-test check really fails when its problem happens.

Why: the suite's promise "no unknown route, no broken Discord rule, no error in the bot's log" is only worth
something if those checks can fail.  These tests provoke each problem on the shared bot's fake and expect
``E2E.end_test`` to refuse; they use ``e2e_bot`` directly (not ``e2e``) because they call the checks themselves.
"""

from __future__ import annotations

import aiohttp
import pytest

from tests.e2e.botproc import alive, cmdline, descendants
from tests.e2e.scenario import E2E

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.timeout(120)]


async def test_an_unknown_route_fails_the_test(e2e_bot: E2E) -> None:
    e2e_bot.begin_test()
    async with aiohttp.ClientSession() as session, session.get(f"{e2e_bot.fake.rest_base}/no/such/route") as resp:
        assert resp.status == 404
    with pytest.raises(AssertionError, match="unknown routes"):
        e2e_bot.end_test()
    assert e2e_bot.fake.unhandled == []  # cleared, so later tests start clean


async def test_a_discord_limit_violation_fails_the_test(e2e_bot: E2E) -> None:
    fake = e2e_bot.fake
    e2e_bot.begin_test()
    # An interaction the bot answers; then a second, over-long answer sent for it with its token, as a buggy bot
    # would: the fake refuses it (400) and records the error on the interaction.
    rec = await fake.slash(user=fake.member_plain, name="hypernets list")
    await e2e_bot.ephemeral(rec)
    url = f"{fake.rest_base}/webhooks/{fake.application_id}/{rec.token}?wait=1"
    async with aiohttp.ClientSession() as session, session.post(url, json={"content": "x" * 2001}) as resp:
        assert resp.status == 400
    with pytest.raises(AssertionError, match="broke Discord rules"):
        e2e_bot.end_test()


async def test_an_error_in_the_bot_log_fails_the_test(e2e_bot: E2E) -> None:
    e2e_bot.begin_test()
    with e2e_bot.bot.log_path.open("a", encoding="utf-8") as log:
        log.write("2000-01-01 00:00:00,000 ERROR   tests: a line written by the harness self-test\n")
    with pytest.raises(AssertionError, match="logged errors"):
        e2e_bot.end_test()


async def test_the_worker_is_found_among_the_bots_children(e2e_bot: E2E) -> None:
    worker = await e2e_bot.bot.wait_worker()
    assert alive(worker) and worker in descendants(e2e_bot.bot.pid)
    assert cmdline(worker)[1:3] == ["-m", "engine.worker"]
