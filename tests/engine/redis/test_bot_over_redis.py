"""The real bot (``python -m bot``, ``engine.transport = "redis"``) against the fake Discord, with one standalone worker.

What only the whole bot shows: the settings reach the fleet client, ``/status`` lists the worker, and a bot killed
with SIGKILL while the worker renders its job gets that job's result after its restart — posted on the job's
message, rendered once (not queued again), from the answer that waited in Redis.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from cogs.job_messages import RESUMED_HEADER
from engine.client.redis_layout import RedisLayout
from engine.codec import decode
from engine.protocol import WorkerInfo
from tests.e2e.botproc import BotProcess, config_for
from tests.e2e.fake_discord import FakeDiscord
from tests.e2e.scenario import E2E
from tests.engine.redis.fleet import Fleet, RedisServer

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]

PREFIX = "e2e"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("bot-over-redis")
    server = RedisServer(root / "redis")
    server.start()
    fleet = Fleet(server.url, root / "fleet", prefix=PREFIX, faults={"slow_marker": "@SLOW@", "slow_step_s": 0.4})
    fleet.start("gpu0")
    raw = aioredis.Redis.from_url(server.url)
    async with FakeDiscord() as fake:
        engine = {"transport": "redis", "redis_url": server.url, "redis_prefix": PREFIX, "bot_id": "shard0",
                  "lease_s": 3.0, "heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 5.0}
        bot = BotProcess(root / "bot", fake, config_for(fake, engine=engine), folder_models={})
        try:
            await bot.start(90)
            yield {"fake": fake, "bot": bot, "fleet": fleet, "redis": raw}
        finally:
            await bot.stop()
            await fleet.stop_all()
            await raw.aclose()
            server.stop()


async def registry(raw: aioredis.Redis) -> dict[str, WorkerInfo]:
    entries = await raw.hgetall(RedisLayout(PREFIX).workers)
    return {k.decode(): info for k, v in entries.items() if isinstance(info := decode(v), WorkerInfo)}


def job_row(bot: BotProcess, job_id: int | None = None) -> sqlite3.Row | None:
    with sqlite3.connect(f"file:{bot.database}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM jobs ORDER BY id DESC").fetchall()
    return next((r for r in rows if job_id is None or r["id"] == job_id), None)


async def test_status_lists_the_standalone_worker(setup: dict[str, Any]) -> None:
    fake, bot, raw = setup["fake"], setup["bot"], setup["redis"]
    for _ in range(900):
        if any(i.state == "ready" for i in (await registry(raw)).values()):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.5)  # the bot reads the registry at each heartbeat
    rec = await fake.slash(fake.member_owner, "status")

    def embed() -> dict[str, Any] | None:
        return next((m.embeds[0] for m in [rec.original, *rec.followups] if m is not None and m.embeds), None)

    fields = {f["name"]: f["value"] for f in (await bot.wait(embed, 15, "the /status answer"))["fields"]}
    assert fields["Workers (1)"].startswith("`gpu0` ready · cpu · `tiny` · batch 2 · 0 done · heartbeat ")


async def test_bot_killed_while_the_worker_renders_gets_the_result_after_restart(setup: dict[str, Any]) -> None:
    fake, bot, raw = setup["fake"], setup["bot"], setup["redis"]
    rec = await fake.slash(fake.member_plain, "imagine", {"prompt": "@SLOW@ survives its bot", "steps": 8})
    row = await bot.wait(lambda: (r := job_row(bot)) is not None and r["status"] == "running" and r, 60, "job running")
    job_id = row["id"]
    await bot.crash()  # SIGKILL: the worker goes on rendering, its answers wait in Redis
    await fake.wait_for(lambda: not fake.gateway.connected, 15, what="the fake to notice the dead gateway session")
    await bot.start(90)
    msg = await E2E(fake, bot).result(rec, timeout=90)  # the image, with its buttons, on the job's message
    assert job_row(bot, job_id)["status"] == "done"  # type: ignore[index]
    assert msg.content.startswith(RESUMED_HEADER.strip()), msg.content
    done = {name: info.jobs_done for name, info in (await registry(raw)).items()}
    assert done == {"gpu0": 1}, f"rendered once, by the worker that had it: {done}"
