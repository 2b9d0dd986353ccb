"""Fixtures for the e2e folder: the fake Discord server alone (its self-tests) and the real bot against it.

* ``fake``: a started FakeDiscord for one test; at teardown no unknown route may have been hit.
* ``e2e_bot``: one fake + one real bot process (``python -m bot``) shared by the scenario modules of this package.
  The resilience module (last in the package) kills the bot and starts it again on the same folder.  A module
  that needs other settings can define its own module-scoped ``e2e_bot`` with ``running_e2e(root, config=...)``.
* ``e2e``: the same object for one test; after the test it checks that no unknown route was called, no Discord
  rule was broken, the bot still runs and logged no error (see ``E2E.end_test``).  When a test fails, the tail of
  the bot's log is attached to the report.

Scenario modules use ``pytestmark = pytest.mark.asyncio(loop_scope="package")``: the fake lives in the package's
event loop, which must be the one the tests run in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.fake_discord import FakeDiscord
from tests.e2e.scenario import E2E, running_e2e


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    """A started fake; at teardown no unknown route may have been hit."""
    async with FakeDiscord() as server:
        yield server
        assert server.unhandled == [], f"unknown routes were called: {server.unhandled}"


@pytest_asyncio.fixture(loop_scope="package", scope="package")
async def e2e_bot(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[E2E]:
    """One fake + one real bot shared by the scenario modules that leave the bot running (starting one costs
    15-30 s on two cores: torch, the tiny checkpoint, the drop-in models' intake)."""
    async with running_e2e(tmp_path_factory.mktemp("bot")) as env:
        yield env


@pytest.fixture
def e2e(e2e_bot: E2E, request: pytest.FixtureRequest) -> Iterator[E2E]:
    e2e_bot.begin_test()
    yield e2e_bot
    call = getattr(request.node, "rep_call", None)
    if call is not None and call.failed:  # the report already carries the bot's log; don't pile on
        del e2e_bot.fake.unhandled[:]
        return
    e2e_bot.end_test()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    """Keep each phase's report on the item (the ``e2e`` fixture reads it) and attach the bot's log to failures."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    env = getattr(item, "funcargs", {}).get("e2e") or getattr(item, "funcargs", {}).get("e2e_bot")
    if report.failed and isinstance(env, E2E):
        report.sections.append(("bot log (tail)", env.bot.log_tail(120)))
    return report
