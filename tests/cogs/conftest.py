"""One running bot (fake Discord + real worker with the tiny model) per test module in tests/cogs/."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bot.store import Hypernet
from tests.harness import Harness, running_bot


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hc(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    async with running_bot(tmp_path_factory.mktemp("bot")) as harness:
        yield harness


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def nets(hc: Harness) -> dict[str, Hypernet]:
    """Two models: a global one and one of the fake guild (default multiplier 0.6)."""
    water = await hc.install_hypernet("pub_zoo_elu", "waterElemental")
    fire = await hc.install_hypernet("pub_zoo_gelu", "fireSpirit", guild_id=hc.fake.guild.id, default_multiplier=0.6)
    return {"water": water, "fire": fire}
